// The op contracts. Layers call these through a Backend and never branch on the device.
//
// Conventions for every op unless its comment says otherwise:
// - Row-major tensors; shapes in the comments use MODEL.md's letters ([N, D] = rows, channels).
// - All float tensors of one call share a dtype. The CPU backend computes f32 and f64 (f64 is
//   what the finite-difference tests run); the CUDA backend computes f32 and bf16.
// - "stat" tensors (rstd, lse, per-row losses) have the statistics dtype: f64 for f64 inputs,
//   else f32 (see stat_dtype).
// - Outputs are OVERWRITTEN (never read first, so NaN-poisoned outputs are fine), except where
//   the contract says "accumulates" (+=), which is used for parameter gradients.
// - Launchers check shapes, dtypes and devices and fail loudly (LINMOE_CHECK) on a mismatch.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/tensor.h"

namespace linmoe {

enum class Activation { identity, silu, sigmoid, elu1, relu, softplus, logsigmoid };
const char* activation_name(Activation f);

inline DType stat_dtype(DType x) {
  return x == DType::f64 ? DType::f64 : DType::f32;
}

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "cpu (2 threads)", "cuda (NVIDIA H100 ...)"
  virtual Allocator& allocator() = 0;
  virtual void synchronize() = 0;
  // Dense peak of the device for the training precision, for MFU; 0 = unknown (the CPU).
  virtual double peak_flops_per_second() const { return 0.0; }
  // The device queue the ops run on (a cudaStream_t for CUDA), for communicators that must be
  // ordered with the kernels; null on the CPU.
  virtual void* stream_handle() { return nullptr; }

  // ---- memory ---------------------------------------------------------------------------------
  // dst = src, element by element, between any two devices; converts between float dtypes
  // (f64/f32/bf16, round to nearest even) and requires equal integer dtypes. Equal numel; both
  // contiguous.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  // dst[...] = value (converted to dst's dtype). Any contiguous tensor.
  virtual void fill(const Tensor& dst, double value) = 0;

  // ---- GEMM -------------------------------------------------------------------------------------
  // c = alpha · op(a) · op(b) + beta · c, where op(a) is [M, K] (a is [K, M] when trans_a) and
  // op(b) is [K, N] (b is [N, K] when trans_b); c is [M, N].
  // Batched: c may be [Bt, M, N]; a and b are then [Bt, ., .] or 2-D (the same matrix for every
  // batch). The last dimension of each operand has stride 1; row and batch strides are free
  // (strided views of larger tensors work).
  // beta == 0 overwrites c without reading it; beta == 1 accumulates.
  virtual void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                    double alpha = 1.0, double beta = 0.0) = 0;

  // ---- grouped GEMM (the MoE experts, MODEL.md 4: one call per projection) ---------------------
  // Rows are split into G = group_rows.size() consecutive groups (a host vector: the dispatch's
  // rows per local expert): group g holds group_rows[g] ≥ 0 rows (zeros allowed),
  // Σ group_rows == R (checked), and starts at row Σ_{h<g} group_rows[h]. Each group has its own
  // matrix b[g] of a stacked b (an expert's weight):
  //   c_g = alpha · a_g · op(b[g]) + beta · c_g
  // a: [R, K]; c: [R, N]; b: [G, N, K] when trans_b (op(b[g]) = b[g]ᵀ: y_g = x_g · W_gᵀ, the
  // forward), else [G, K, N] (dx_g = dy_g · W_g, the input gradient). Every product of one group
  // equals gemm(a_g, false, b[g], trans_b, c_g, alpha, beta) on the slices.
  // Same float dtype for all; bf16 reads and writes bf16 and accumulates in fp32. The last
  // dimension of each operand has stride 1; row strides (and b's group stride) are free. beta == 0
  // overwrites c without reading it; a group with no rows touches nothing.
  virtual void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b,
                            const std::vector<std::int64_t>& group_rows, const Tensor& c,
                            double alpha = 1.0, double beta = 0.0) = 0;
  // The weight gradient of the product above: K (the rows) varies per group.
  //   c[g] = alpha · a_gᵀ · b_g + beta · c[g]        (dW_g += dy_gᵀ · x_g with beta = 1)
  // a: [R, M] and b: [R, N], grouped by group_rows as above; c: [G, M, N]. Each group equals
  // gemm(a_g, true, b_g, false, c[g], alpha, beta). A group with no rows gets c[g] = beta · c[g],
  // as gemm does for K == 0: untouched when beta == 1 (accumulating), zeros when beta == 0.
  // Strides, dtypes and beta == 0 as above; c's group stride is free.
  virtual void grouped_gemm_wgrad(const Tensor& a, const Tensor& b,
                                  const std::vector<std::int64_t>& group_rows, const Tensor& c,
                                  double alpha = 1.0, double beta = 1.0) = 0;

  // ---- elementwise (same shape, contiguous) -----------------------------------------------------
  virtual void add(const Tensor& a, const Tensor& b, const Tensor& out) = 0;  // out = a + b
  virtual void mul(const Tensor& a, const Tensor& b, const Tensor& out) = 0;  // out = a * b
  virtual void axpy(double alpha, const Tensor& x, const Tensor& y) = 0;      // y += alpha · x
  virtual void scale(const Tensor& x, double s) = 0;                          // x *= s (in place)
  // y = f(x)
  virtual void activation_forward(Activation f, const Tensor& x, const Tensor& y) = 0;
  // dx = dy · f'(x), or dx += dy · f'(x) when accumulate.
  virtual void activation_backward(Activation f, const Tensor& x, const Tensor& dy,
                                   const Tensor& dx, bool accumulate) = 0;

  // ---- normalisation, softmax, SwiGLU -----------------------------------------------------------
  // x, y: [N, D]; w: [D]; rstd: [N] stat. y = x · rstd · w, rstd = 1/sqrt(mean_j x_j² + eps).
  // With a residual [N, D]: first x ← x + residual in place, and the sum as stored is normalised
  // (a block's residual add fused with the next norm: one pass over x fewer).
  virtual void rms_norm_forward(const Tensor& x, const Tensor& w, double eps, const Tensor& y,
                                const Tensor& rstd, const Tensor& residual = Tensor{}) = 0;
  // dx overwritten, or dx += when accumulate_dx (the residual stream's gradient: one pass and one
  // temporary fewer); dw ACCUMULATES (dw += Σ_n dy·x·rstd).
  virtual void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                 const Tensor& rstd, const Tensor& dx, const Tensor& dw,
                                 bool accumulate_dx = false) = 0;
  // Row softmax of x: [N, C] into y: [N, C].
  virtual void softmax_forward(const Tensor& x, const Tensor& y) = 0;
  // dx = y ⊙ (dy − Σ_c dy·y), rows of [N, C].
  virtual void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) = 0;
  // out = silu(gate) ⊙ up; all [N, F].
  virtual void swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  // dgate, dup overwritten.
  virtual void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout,
                               const Tensor& dgate, const Tensor& dup) = 0;

  // ---- embedding (vocab-parallel aware) ---------------------------------------------------------
  // ids: [N] i32; table: [Vl, D] holding vocabulary ids [vocab_start, vocab_start + Vl).
  // out[n] = table[ids[n] − vocab_start] when that row is local, else 0. out: [N, D].
  virtual void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out,
                                 std::int64_t vocab_start = 0) = 0;
  // dtable[ids[n] − vocab_start] += dout[n] for local ids (ACCUMULATES; deterministic order).
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable,
                                  std::int64_t vocab_start = 0) = 0;

  // ---- cross-entropy (vocab-parallel aware; probabilities never stored) -------------------------
  // logits: [N, Vl] for vocabulary ids [vocab_start, vocab_start + Vl); targets: [N] i32.
  // lse[n] = log Σ_v exp(logits[n, v]) over the local ids; target_logit[n] = logits[n, t − start]
  // when t = targets[n] is local, else 0. Rows with t < 0 (ignored positions) give 0 and 0.
  // One rank: loss[n] = lse[n] − target_logit[n]. Across vocab shards the layer combines lse
  // with a max/sum reduction and target_logit with a sum.
  virtual void cross_entropy_stats(const Tensor& logits, const Tensor& targets,
                                   std::int64_t vocab_start, const Tensor& lse,
                                   const Tensor& target_logit) = 0;
  // dlogits[n, v] = dloss[n] · (exp(logits[n, v] − lse[n]) − [v + vocab_start == targets[n]])
  // with the GLOBAL lse; rows with targets[n] < 0 get 0. dloss, lse: [N] stat.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                      std::int64_t vocab_start, const Tensor& lse,
                                      const Tensor& dloss, const Tensor& dlogits) = 0;

  // ---- LSM core, scalar-decay family (MODEL.md 3: linear_attention, lightning, retention, mamba2)
  // Per batch b and head h, with S_0 = initial_state (zeros when undefined):
  //   S_t = exp(log_decay[t, h]) · S_{t−1} + k_t v_tᵀ,   o_t = scale · S_tᵀ q_t
  // q, k: [B, T, Hk, Dk]; v, o: [B, T, H, Dv]; log_decay: [B, T, H] (≤ 0; constant-decay
  // variants pass log λ_h in every position); H % Hk == 0 and head h reads q/k head
  // ⌊h·Hk/H⌋ (mamba2's groups; Hk == H otherwise). initial_state, final_state: [B, H, Dk, Dv]
  // in the stat dtype, either may be undefined (Tensor{}). Computed chunk by chunk (chunk_size
  // tokens: intra-chunk attention-like GEMMs plus an inter-chunk state pass); the result does not
  // depend on chunk_size beyond rounding. Any T ≥ 1 (not a multiple of the chunk is fine).
  // log_decay must be finite (−inf would give NaN; positive values are not checked). q, k, v, o
  // and the gradients may be row-strided views (last dimension contiguous), e.g. slices of a
  // fused projection; the states must be contiguous.
  virtual void lsm_scalar_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Tensor& log_decay, double scale, int chunk_size,
                                        const Tensor& initial_state, const Tensor& o,
                                        const Tensor& final_state) = 0;
  // Gradients of the forward above given do (and d_final_state, undefined = zeros). All gradient
  // outputs are overwritten; d_log_decay and d_initial_state may be undefined when not needed.
  // Chunk states are recomputed rather than stored.
  virtual void lsm_scalar_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& log_decay, double scale, int chunk_size,
                                         const Tensor& initial_state, const Tensor& d_o,
                                         const Tensor& d_final_state, const Tensor& dq,
                                         const Tensor& dk, const Tensor& dv,
                                         const Tensor& d_log_decay,
                                         const Tensor& d_initial_state) = 0;

  // ---- LSM core, vector-decay family (MODEL.md 3: gla, hgrn2) -----------------------------------
  // Per batch b and head h, S_0 = initial_state (zeros when undefined):
  //   S_t = Diag(exp(log_decay[t, h, :])) · S_{t−1} + k_t v_tᵀ,   o_t = scale · S_tᵀ q_t
  // q, k, log_decay: [B, T, H, Dk] (log_decay finite and ≤ 0); v, o: [B, T, H, Dv]; states
  // [B, H, Dk, Dv] in the stat dtype, each optional. Chunked with a reference point inside each
  // (sub-)chunk so that no exponent of a positive cumulative log-decay is ever formed: safe for
  // any T and decay strength. chunk_size never changes the mathematics.
  virtual void lsm_vector_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Tensor& log_decay, double scale, int chunk_size,
                                        const Tensor& initial_state, const Tensor& o,
                                        const Tensor& final_state) = 0;
  // Gradients (all overwritten; d_log_decay and d_initial_state may be undefined). Chunk states
  // are recomputed, not stored.
  virtual void lsm_vector_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& log_decay, double scale, int chunk_size,
                                         const Tensor& initial_state, const Tensor& d_o,
                                         const Tensor& d_final_state, const Tensor& dq,
                                         const Tensor& dk, const Tensor& dv,
                                         const Tensor& d_log_decay,
                                         const Tensor& d_initial_state) = 0;

  // ---- LSM core, delta-rule family (MODEL.md 3: deltanet, gated_deltanet) -----------------------
  // Per batch b and head h, S_0 = initial_state (zeros when undefined), α_t = exp(log_decay[t, h])
  // (α_t = 1 when log_decay is undefined: deltanet):
  //   S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,   o_t = scale · S_tᵀ q_t
  // q, k: [B, T, H, Dk] (the caller L2-normalises them); v, o: [B, T, H, Dv]; beta, log_decay:
  // [B, T, H] (log_decay finite and ≤ 0); states [B, H, Dk, Dv] stat dtype, optional. q, k, v, o,
  // beta and the gradients may be row-strided views (last dimension contiguous); states are
  // contiguous. Chunked with the WY/UT representation
  // (a triangular solve per chunk, in fp32 or wider) and a sequential pass over chunk states.
  virtual void lsm_delta_rule_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const Tensor& beta, const Tensor& log_decay, double scale,
                                      int chunk_size, const Tensor& initial_state, const Tensor& o,
                                      const Tensor& final_state) = 0;
  // Gradients (overwritten; d_beta is required; d_log_decay must be undefined when log_decay is;
  // d_initial_state
  // may be undefined). Chunk states are recomputed, not stored.
  virtual void lsm_delta_rule_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& beta, const Tensor& log_decay, double scale,
                                       int chunk_size, const Tensor& initial_state,
                                       const Tensor& d_o, const Tensor& d_final_state,
                                       const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                       const Tensor& d_beta, const Tensor& d_log_decay,
                                       const Tensor& d_initial_state) = 0;

  // ---- L2 normalisation (MODEL.md 3: delta-rule q and k)
  // ------------------------------------------ Rows of x: [N, d]: y = x / sqrt(Σ x² + eps);
  // inv_norm: [N] stat = 1/sqrt(Σ x² + eps).
  virtual void l2_norm_forward(const Tensor& x, double eps, const Tensor& y,
                               const Tensor& inv_norm) = 0;
  // dx = inv_norm · (dy − y ⟨y, dy⟩) per row, overwritten.
  virtual void l2_norm_backward(const Tensor& x, const Tensor& inv_norm, const Tensor& dy,
                                const Tensor& dx) = 0;

  // ---- RoPE and causal softmax attention (MODEL.md 2) ------------------------------------------
  // Rotate-half RoPE on x: [B, T, H, d] (d even), token t at global position position_offset + t:
  // for j < d/2, θ_j = theta^(−2j/d): (x_j, x_{j+d/2}) → (x_j cos − x_{j+d/2} sin,
  // x_{j+d/2} cos + x_j sin) with angle (position_offset + t)·θ_j. y may alias x (in place).
  virtual void rope_forward(const Tensor& x, const Tensor& y, double theta,
                            std::int64_t position_offset) = 0;
  // The transpose (inverse rotation): dx from dy. dx may alias dy.
  virtual void rope_backward(const Tensor& dy, const Tensor& dx, double theta,
                             std::int64_t position_offset) = 0;
  // Causal attention with GQA. q, o: [B, Tq, Hq, d]; k, v: [B, Tk, Hkv, d]; lse: [B, Hq, Tq] stat.
  // Query i sits at global position q_offset + i and sees keys j ≤ q_offset + i (keys sit at
  // positions 0..Tk−1: with context parallelism K and V are all-gathered, Tk = q_offset + Tq at
  // the last piece); query head h reads kv head ⌊h·Hkv/Hq⌋. o_i = Σ_j softmax_j(scale·q_i·k_j) v_j;
  // lse_i = log Σ_j exp(scale·q_i·k_j) over the visible keys. No Tq×Tk matrix is stored.
  // Requires Hq % Hkv == 0, 0 ≤ q_offset and q_offset + Tq ≤ Tk.
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                 std::int64_t q_offset, const Tensor& o, const Tensor& lse) = 0;
  // dq, dk, dv overwritten (dk, dv: [B, Tk, Hkv, d], summed over the query heads sharing them;
  // under context parallelism the layer then reduce-scatters them). Recomputes probabilities
  // from lse.
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& o, const Tensor& lse, const Tensor& d_o,
                                  double scale, std::int64_t q_offset, const Tensor& dq,
                                  const Tensor& dk, const Tensor& dv) = 0;

  // ---- MoE routing and token permutation (MODEL.md 4)
  // --------------------------------------------- Top-k of each row of probs: [N, E] (the router
  // softmax, stat dtype). expert_ids: [N, k] i32 in descending probability, ties to the lower
  // expert index; weights: [N, k] (probs' dtype) = the selected probabilities, renormalised to sum
  // 1 over the k when `renormalize`.
  virtual void moe_topk(const Tensor& probs, int k, bool renormalize, const Tensor& expert_ids,
                        const Tensor& weights) = 0;
  // Capacity dropping: each expert keeps at most `capacity` of its assignments, those with the
  // highest selected probability probs[n, expert_ids[n, s]] (before renormalisation), ties to the
  // lower token index n. keep: [N, k] i32, 1 = kept, 0 = dropped.
  virtual void moe_capacity_keep(const Tensor& probs, const Tensor& expert_ids,
                                 std::int64_t capacity, const Tensor& keep) = 0;
  // The dispatch plan. Assignment a = n·k + s (token n, slot s) goes to expert expert_ids[n, s]
  // unless keep[n, s] == 0 (keep may be undefined: all kept). order: [N·k] i32 lists the kept
  // assignments grouped by expert (expert 0 first), token order within an expert, then −1 for
  // the dropped ones at the end; counts: [E] i64 kept assignments per expert. Returns the number
  // of kept assignments A.
  virtual std::int64_t moe_dispatch_plan(const Tensor& expert_ids, const Tensor& keep,
                                         int num_experts, const Tensor& order,
                                         const Tensor& counts) = 0;
  // In the three permutation ops A is exactly the plan's kept count: order's first A entries are
  // distinct and ≥ 0, the rest −1 (checked, so a wrongly sized y/out never loses assignments).
  // Gather rows for the experts: out[i] = x[order[i] / k] for i < A. x: [N, D], out: [A, D].
  virtual void moe_permute(const Tensor& x, const Tensor& order, int k, const Tensor& out) = 0;
  // Its gradient: dx[n] += Σ_{i: order[i]/k == n} dout[i] (ACCUMULATES; deterministic order).
  virtual void moe_permute_backward(const Tensor& dout, const Tensor& order, int k,
                                    const Tensor& dx) = 0;
  // Combine expert outputs: out[n] (+)= Σ_{i: order[i]/k == n} weights.flat[order[i]] · y[i].
  // y: [A, D]; weights: [N, k]; out: [N, D] overwritten unless accumulate (tokens with no kept
  // assignment get 0, or keep their value when accumulating).
  virtual void moe_unpermute(const Tensor& y, const Tensor& order, const Tensor& weights,
                             const Tensor& out, bool accumulate) = 0;
  // Its gradients: dy[i] = w·dout[n], d_weights.flat[order[i]] = ⟨dout[n], y[i]⟩ (overwritten;
  // dropped slots get 0). d_weights may be undefined.
  virtual void moe_unpermute_backward(const Tensor& dout, const Tensor& y, const Tensor& order,
                                      const Tensor& weights, const Tensor& dy,
                                      const Tensor& d_weights) = 0;

  // ---- optimizer updates (MODEL.md 5), in place on one contiguous parameter range
  // ----------------- AdamW, PyTorch semantics, step s ≥ 1: p ← p·(1 − lr·wd); m ← β1 m + (1−β1) g;
  // v ← β2 v + (1−β2) g²; p ← p − lr · (m / (1−β1^s)) / (sqrt(v / (1−β2^s)) + eps).
  // p, g, m, v: same shape; p/m/v f32 (master weights and state), g f32.
  virtual void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                            double lr, double beta1, double beta2, double eps, double weight_decay,
                            std::int64_t step) = 0;
  // SGD as torch.optim.SGD (dampening 0, no Nesterov): d = g + wd·p; buf ← μ·buf + d (buf starts
  // at 0, so step 1 sets buf = d); p ← p − lr·buf. With μ = 0 buf may be undefined: p ← p − lr·d.
  virtual void sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, double lr,
                          double momentum, double weight_decay, std::int64_t step) = 0;

  // ---- causal depthwise convolution over time (MODEL.md 3) --------------------------------------
  // mamba2's conv1d and the delta-rule q/k/v convolutions. x: [B, T, C]; w: [C, K] (the [C, 1, K]
  // weight); bias: [C] or undefined; halo: [B, K−1, C], the K−1 inputs before this sequence piece
  // (context parallelism), or undefined = zeros.
  //   y[b, t, c] = bias[c] + Σ_{j<K} w[c, j] · x[b, t − K + 1 + j, c]   (t − K + 1 + j < 0: halo)
  // y: [B, T, C] overwritten. x, y, halo (and dy, dx, d_halo below) may be row-strided views
  // (last dimension contiguous), e.g. column slices of a fused projection; w, bias contiguous.
  virtual void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                     const Tensor& halo, const Tensor& y) = 0;
  // dx overwritten; dw and dbias ACCUMULATE (either may be undefined when not needed); d_halo:
  // [B, K−1, C], the gradient of the halo, overwritten when defined (context parallelism sends
  // it to the previous rank).
  virtual void causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& halo,
                                      const Tensor& dy, const Tensor& dx, const Tensor& dw,
                                      const Tensor& dbias, const Tensor& d_halo) = 0;

  // ---- reductions (accumulated in f64; results on the host) -------------------------------------
  virtual double sum(const Tensor& x) = 0;
  virtual double sum_squares(const Tensor& x) = 0;
  virtual double max_abs(const Tensor& x) = 0;  // NaN if x holds a NaN
  virtual bool all_finite(const Tensor& x) = 0;
  // out[c] = Σ_n x[n, c] (or += when accumulate). x: [N, C], out: [C]. Bias gradients.
  virtual void sum_rows(const Tensor& x, const Tensor& out, bool accumulate) = 0;
};

enum class BackendKind { automatic, cpu, cuda };
// Parses "auto|cpu|cuda"; throws UserError naming `key` otherwise.
BackendKind parse_backend_kind(const std::string& s, const std::string& key);
// True when this build has CUDA and a usable device is present.
bool cuda_device_available();
// The backend for `kind`: automatic picks CUDA when available, else the CPU. Asking for cuda
// without a device is a UserError. cpu_threads 0 = all cores.
// device: the GPU index for the CUDA backend (a rank uses its node-local rank modulo the GPUs).
std::unique_ptr<Backend> make_backend(BackendKind kind, int cpu_threads = 0, int device = 0);

}  // namespace linmoe
