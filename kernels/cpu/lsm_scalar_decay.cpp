// The scalar-decay LSM core on the CPU (MODEL.md section 3: linear_attention, lightning,
// retention, mamba2), forward and backward, chunk-parallel as in flash-linear-attention and
// Lightning Attention. Per batch b and head h:
//   S_t = exp(g_t) S_{t−1} + k_t v_tᵀ,   o_t = scale · S_tᵀ q_t,   g_t = log_decay[b, t, h].
// A chunk of L ≤ C tokens entering with state P uses the cumulative log decays from its start,
// b_i = Σ_{j≤i} g_j (i = 0..L−1), and M_ij = exp(b_i − b_j) for j ≤ i:
//   o_i = scale (Σ_{j≤i} M_ij (q_i·k_j) v_j + exp(b_i) Pᵀ q_i)
//   N   = exp(b_L−1) P + Σ_j exp(b_L−1 − b_j) k_j v_jᵀ                   (the state leaving it)
// Only differences within one chunk are exponentiated, so nothing overflows however long T is or
// however strong the decay (see kFactorLimit for the one exponent that may be positive).
//
// Backward, per chunk in reverse with G = dL/dN (d_final_state for the last chunk):
//   A_ij = scale M_ij (q_i·k_j),  dA_ij = do_i·v_j  (j ≤ i)
//   dq_i = scale Σ_{j≤i} M_ij dA_ij k_j + scale exp(b_i) P do_i
//   dk_j = scale Σ_{i≥j} M_ij dA_ij q_i + exp(b_L−1 − b_j) G v_j
//   dv_j = Σ_{i≥j} A_ij do_i + exp(b_L−1 − b_j) Gᵀ k_j
//   dP   = scale Σ_i exp(b_i) q_i do_iᵀ + exp(b_L−1) G           (the G of the previous chunk)
// The decay gradient: every term of the chunk carries a factor exp(b_t − b_s) ("from s to t",
// with P as a source before the chunk and N as a target at its last token), and dg_u picks up
// the weight w = (term) · (its upstream gradient) of every term with s < u ≤ t:
//   dg_u = Σ_{i≥u} Σ_{j<u} A_ij dA_ij  +  Σ_{i≥u} scale exp(b_i) q_iᵀ P do_i
//        + Σ_{j<u} exp(b_L−1 − b_j) k_jᵀ G v_j  +  exp(b_L−1) ⟨G, P⟩.
// (The same numbers as fla's ⟨q, dq⟩ − ⟨k, dk⟩ followed by a reverse cumulative sum, but each
// dg is a sum of chunk-local weights rather than a difference of partial sums over the sequence.)
// Chunk states are recomputed by a forward state pass at the start of the backward.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/lsm_chunk_common.h"

namespace linmoe {
namespace {

using namespace cpu;  // lsm_chunk_common.h helpers

// y[c, r] = s[r] · x[r, c] (s null: 1); x: [R, Cx] with row stride ldx, y with row stride ldy.
template <class T>
void transpose(const T* x, i64 R, i64 Cx, i64 ldx, T* y, i64 ldy, const T* s = nullptr) {
  for (i64 r = 0; r < R; ++r) {
    const T f = s ? s[r] : T(1);
    for (i64 c = 0; c < Cx; ++c) y[c * ldy + r] = f * x[r * ldx + c];
  }
}

// y[r, :] = s0 · s[r] · x[r, :] for r < R; x, y: row strides ldx, ldy.
template <class T>
void scale_rows(const T* x, i64 R, i64 cols, i64 ldx, T s0, const T* s, T* y, i64 ldy) {
  for (i64 r = 0; r < R; ++r) {
    const T f = s0 * s[r];
#pragma omp simd
    for (i64 c = 0; c < cols; ++c) y[r * ldy + c] = f * x[r * ldx + c];
  }
}

// Which part of a GEMM operand is known to be zero (or not needed), to skip it.
enum class Tri {
  none,
  a_lower,  // a[i, p] = 0 for p > i
  a_upper,  // a[i, p] = 0 for p < i
  c_lower,  // only c[i, j] for j ≤ i is needed (entries above may be written)
};

// c[i, :] += Σ_p a[i, p] · b[p, :]  for a: [M, K], b: [K, N], c: [M, N], row-major with leading
// dimensions. Register tiles of 4 rows × kTile columns of c, accumulated over all p, then added.
template <class T>
void gemm_acc(i64 M, i64 N, i64 K, const T* a, i64 lda, const T* b, i64 ldb, T* c, i64 ldc,
              Tri tri = Tri::none) {
  constexpr i64 kTile = 128 / static_cast<i64>(sizeof(T));  // 128 bytes: two AVX-512 vectors
  for (i64 i0 = 0; i0 < M; i0 += 4) {
    const i64 rows = std::min<i64>(4, M - i0);
    const i64 p0 = tri == Tri::a_upper ? i0 : 0;
    const i64 p1 = tri == Tri::a_lower ? std::min(K, i0 + rows) : K;
    const i64 n = tri == Tri::c_lower ? std::min(N, i0 + rows) : N;
    const T* ar[4];
    for (i64 r = 0; r < 4; ++r) ar[r] = a + (i0 + std::min(r, rows - 1)) * lda;
    for (i64 j0 = 0; j0 < n; j0 += kTile) {
      const i64 width = std::min(kTile, n - j0);
      T acc[4][kTile] = {};
      for (i64 p = p0; p < p1; ++p) {
        const T x0 = ar[0][p], x1 = ar[1][p], x2 = ar[2][p], x3 = ar[3][p];
        const T* bp = b + p * ldb + j0;
        if (width == kTile) {
#pragma omp simd
          for (i64 j = 0; j < kTile; ++j) {
            const T y = bp[j];
            acc[0][j] += x0 * y, acc[1][j] += x1 * y, acc[2][j] += x2 * y, acc[3][j] += x3 * y;
          }
        } else {
#pragma omp simd
          for (i64 j = 0; j < width; ++j) {
            const T y = bp[j];
            acc[0][j] += x0 * y, acc[1][j] += x1 * y, acc[2][j] += x2 * y, acc[3][j] += x3 * y;
          }
        }
      }
      for (i64 r = 0; r < rows; ++r) {
        T* cr = c + (i0 + r) * ldc + j0;
#pragma omp simd
        for (i64 j = 0; j < width; ++j) cr[j] += acc[r][j];
      }
    }
  }
}

struct Dims {
  i64 B = 0, T = 0, H = 0, Hk = 0, Dk = 0, Dv = 0, C = 0;
  i64 q_head(i64 h) const { return h * Hk / H; }  // mamba2's groups: head h reads ⌊h·Hk/H⌋
  i64 chunks() const { return (T + C - 1) / C; }
};

// Per-thread scratch for one chunk of one head, carved out of two allocations.
template <class T>
class ChunkWork {
 public:
  T *q, *k, *kt, *v, *vt, *d_o;  // [C, Dk], [C, Dk], [Dk, C], [C, Dv], [Dv, C], [C, Dv]
  T *rows, *cols;                // [C, max(Dk, Dv)], [max(Dk, Dv), C]: scaled copies
  T *mask, *attn, *d_attn, *sq;  // [C, C]: M (0 above the diagonal), attn, d_attn, a transpose
  T *e_in, *e_out, *e_neg;       // [C] exp(b_i), exp(b_L−1 − b_i), exp(−b_i)
  T* tr;                         // [Dv, Dk] P or G transposed
  T *state, *chunk_states;       // [Dk, Dv] S or G; [chunks, Dk, Dv] states entering chunks
  double *b, *weight;            // [C] cumulative log decay; [C, C] attn⊙dA (decay gradient)
  double *w_in, *w_out, *dg;     // [C] per-token weights of P and N; the decay gradient

  ChunkWork(const Dims& d, bool backward) {
    const i64 C = d.C, Dk = d.Dk, Dv = d.Dv, Dm = std::max(Dk, Dv), n = Dk * Dv;
    const i64 states = backward ? d.chunks() * n : 0;
    values_.resize(static_cast<std::size_t>(3 * C * Dk + 3 * C * Dv + 2 * C * Dm + 4 * C * C +
                                            3 * C + 3 * n + states));
    wide_.resize(static_cast<std::size_t>(4 * C + C * C));
    T* p = values_.data();
    auto take = [&p](i64 count) { return std::exchange(p, p + count); };
    q = take(C * Dk), k = take(C * Dk), kt = take(Dk * C);
    v = take(C * Dv), vt = take(Dv * C), d_o = take(C * Dv);
    rows = take(C * Dm), cols = take(Dm * C);
    mask = take(C * C), attn = take(C * C), d_attn = take(C * C), sq = take(C * C);
    e_in = take(C), e_out = take(C), e_neg = take(C);
    tr = take(n), state = take(n), chunk_states = take(states);
    double* w = wide_.data();
    b = w, weight = w + C, w_in = w + C + C * C, w_out = w_in + C, dg = w_out + C;
  }

 private:
  std::vector<T> values_;
  std::vector<double> wide_;
};

// Within a chunk whose total log decay is at least kMinLogDecay (so that no factor flushes),
// exp(b_i − b_j) is computed as exp(b_i) · exp(−b_j): 2L exps instead of L²/2, and
// exp(−b_j) ≤ exp(−kMinLogDecay) is far from overflow. Stronger chunks take one exp per pair.
template <class T>
void build_mask(const Dims& d, i64 L, ChunkWork<T>& w) {
  const i64 C = d.C;
  if (w.b[L - 1] >= kMinLogDecay<T>) {
    for (i64 j = 0; j < L; ++j) w.e_neg[j] = static_cast<T>(std::exp(-w.b[j]));
    for (i64 i = 0; i < L; ++i) {
      T* m = w.mask + i * C;
      const T ei = w.e_in[i];
#pragma omp simd
      for (i64 j = 0; j < L; ++j) m[j] = j < i ? ei * w.e_neg[j] : T(0);
      m[i] = T(1);
    }
    return;
  }
  // b is non-increasing: once exp(b_i − b_j) flushes to zero it stays zero for smaller j.
  for (i64 i = 0; i < L; ++i) {
    T* m = w.mask + i * C;
    for (i64 j = i + 1; j < L; ++j) m[j] = T(0);
    i64 j = i;
    for (; j >= 0; --j) {
      m[j] = decay_factor<T>(w.b[i] - w.b[j]);
      if (m[j] == T(0)) break;
    }
    for (; j >= 0; --j) m[j] = T(0);
  }
}

template <class T>
struct Inputs {
  Rows<const T> q, k, v, g;  // [B, T, Hk, Dk], [B, T, Hk, Dk], [B, T, H, Dv], [B, T, H]
  const T* initial_state;    // [B, H, Dk, Dv] or null
  T scale;
};

// Gathers the chunk [t0, t0 + L) of head h into w.q, w.k, w.kt = Kᵀ, w.v, and builds b,
// exp(b_i) and exp(b_L−1 − b_i); with `attention` also the decay mask M and attn = scale M⊙QKᵀ.
template <class T>
void load_chunk(const Dims& d, const Inputs<T>& in, i64 bi, i64 h, i64 t0, i64 L, bool attention,
                ChunkWork<T>& w) {
  const i64 hk = d.q_head(h), Dk = d.Dk, Dv = d.Dv, C = d.C;
  double acc = 0;
  for (i64 i = 0; i < L; ++i) {
    copy(in.q.at(bi, t0 + i, hk), w.q + i * Dk, Dk);
    copy(in.k.at(bi, t0 + i, hk), w.k + i * Dk, Dk);
    copy(in.v.at(bi, t0 + i, h), w.v + i * Dv, Dv);
    acc += static_cast<double>(*in.g.at(bi, t0 + i, h));
    w.b[i] = acc;
  }
  for (i64 i = 0; i < L; ++i) {
    w.e_in[i] = decay_factor<T>(w.b[i]);
    w.e_out[i] = decay_factor<T>(w.b[L - 1] - w.b[i]);
  }
  transpose(w.k, L, Dk, Dk, w.kt, C);
  if (!attention) return;
  build_mask(d, L, w);
  zero_rows(w.attn, L, L, C);
  gemm_acc(L, L, Dk, w.q, Dk, w.kt, C, w.attn, C, Tri::c_lower);
  for (i64 i = 0; i < L; ++i) {
    T* a = w.attn + i * C;
    const T* m = w.mask + i * C;
#pragma omp simd
    for (i64 j = 0; j < L; ++j) a[j] *= in.scale * m[j];
  }
}

// S ← exp(b_L−1) S + Σ_j exp(b_L−1 − b_j) k_j v_jᵀ for the loaded chunk. S: [Dk, Dv].
template <class T>
void advance_state(const Dims& d, i64 L, ChunkWork<T>& w, T* S) {
  const T e_all = w.e_in[L - 1];
  for (i64 x = 0; x < d.Dk * d.Dv; ++x) S[x] *= e_all;
  // cols = Kᵀ diag(exp(b_L−1 − b)): [Dk, L]
  for (i64 x = 0; x < d.Dk; ++x) {
#pragma omp simd
    for (i64 j = 0; j < L; ++j) w.cols[x * d.C + j] = w.kt[x * d.C + j] * w.e_out[j];
  }
  gemm_acc(d.Dk, d.Dv, L, w.cols, d.C, w.v, d.Dv, S, d.Dv);
}

template <class T>
void load_initial_state(const Dims& d, const Inputs<T>& in, i64 bi, i64 h, T* S) {
  const i64 n = d.Dk * d.Dv;
  if (in.initial_state) {
    copy(in.initial_state + (bi * d.H + h) * n, S, n);
  } else {
    zero_rows(S, 1, n, n);
  }
}

// One (batch, head): o[bi, :, h, :] and final_state[bi, h] (when not null).
template <class T>
void forward_head(const Dims& d, const Inputs<T>& in, i64 bi, i64 h, Rows<T> o, T* final_state,
                  ChunkWork<T>& w) {
  const i64 Dk = d.Dk, Dv = d.Dv, C = d.C;
  T* S = w.state;  // [Dk, Dv]
  load_initial_state(d, in, bi, h, S);
  for (i64 t0 = 0; t0 < d.T; t0 += C) {
    const i64 L = std::min(C, d.T - t0);
    load_chunk(d, in, bi, h, t0, L, true, w);
    T* out = o.at(bi, t0, h);  // [L, Dv], row stride o.st
    zero_rows(out, L, Dv, o.st);
    // Intra-chunk: attn V.  Inter-chunk: scale diag(exp(b)) Q P.
    gemm_acc(L, Dv, L, w.attn, C, w.v, Dv, out, o.st, Tri::a_lower);
    scale_rows(w.q, L, Dk, Dk, in.scale, w.e_in, w.rows, Dk);
    gemm_acc(L, Dv, Dk, w.rows, Dk, S, Dv, out, o.st);
    advance_state(d, L, w, S);
  }
  if (final_state) copy(S, final_state + (bi * d.H + h) * Dk * Dv, Dk * Dv);
}

template <class T>
struct Grads {
  Rows<const T> d_o;       // [B, T, H, Dv]
  const T* d_final_state;  // [B, H, Dk, Dv] or null
  Rows<T> dq, dk;          // [B, T, Hk, Dk], or per head h when per_head_qk
  bool per_head_qk;        // dq/dk rows go to per-head scratch (summed over heads afterwards)
  Rows<T> dv;              // [B, T, H, Dv]
  Rows<T> dg;              // [B, T, H] or data == null
  T* d_initial_state;      // [B, H, Dk, Dv] or null
};

// One (batch, head): dv, dg, d_initial_state, and this head's dq/dk (see Grads::per_head_qk).
template <class T>
void backward_head(const Dims& d, const Inputs<T>& in, const Grads<T>& gr, i64 bi, i64 h,
                   ChunkWork<T>& w) {
  const i64 nc = d.chunks(), Dk = d.Dk, Dv = d.Dv, C = d.C, n = Dk * Dv;
  const T scale = in.scale;

  // Forward state pass: the state entering every chunk.
  T* states = w.chunk_states;  // [nc, Dk, Dv]
  if (nc > 0) load_initial_state(d, in, bi, h, states);
  for (i64 c = 0; c + 1 < nc; ++c) {
    load_chunk(d, in, bi, h, c * C, C, false, w);
    copy(states + c * n, states + (c + 1) * n, n);
    advance_state(d, C, w, states + (c + 1) * n);
  }

  T* G = w.state;  // [Dk, Dv] dL/dN
  if (gr.d_final_state) {
    copy(gr.d_final_state + (bi * d.H + h) * n, G, n);
  } else {
    zero_rows(G, 1, n, n);
  }
  const i64 qk_head = gr.per_head_qk ? h : d.q_head(h);
  for (i64 c = nc - 1; c >= 0; --c) {
    const i64 t0 = c * C, L = std::min(C, d.T - t0);
    const T* P = states + c * n;  // [Dk, Dv]
    load_chunk(d, in, bi, h, t0, L, true, w);
    for (i64 i = 0; i < L; ++i) copy(gr.d_o.at(bi, t0 + i, h), w.d_o + i * Dv, Dv);
    // dA = dO Vᵀ; weight = attn⊙dA; d_attn = scale M⊙dA (0 above the diagonal).
    transpose(w.v, L, Dv, Dv, w.vt, C);
    zero_rows(w.d_attn, L, L, C);
    gemm_acc(L, L, Dv, w.d_o, Dv, w.vt, C, w.d_attn, C, Tri::c_lower);
    for (i64 i = 0; i < L; ++i) {
      T* da = w.d_attn + i * C;
      const T* a = w.attn + i * C;
      const T* m = w.mask + i * C;
      double* wt = w.weight + i * C;
      for (i64 j = 0; j <= i; ++j) wt[j] = static_cast<double>(a[j]) * static_cast<double>(da[j]);
#pragma omp simd
      for (i64 j = 0; j < L; ++j) da[j] *= scale * m[j];
    }
    // dq = scale diag(exp(b)) dO Pᵀ + d_attn K;  w_in_i = q_i · (row i of the first term).
    T* dq = gr.dq.at(bi, t0, qk_head);  // [L, Dk], row stride gr.dq.st
    const i64 ldq = gr.dq.st;
    zero_rows(dq, L, Dk, ldq);
    transpose(P, Dk, Dv, Dv, w.tr, Dk);
    scale_rows(w.d_o, L, Dv, Dv, scale, w.e_in, w.rows, Dv);
    gemm_acc(L, Dk, Dv, w.rows, Dv, w.tr, Dk, dq, ldq);
    for (i64 i = 0; i < L; ++i)
      w.w_in[i] = static_cast<double>(dot(w.q + i * Dk, dq + i * ldq, Dk));
    gemm_acc(L, Dk, L, w.d_attn, C, w.k, Dk, dq, ldq, Tri::a_lower);
    // dk = diag(exp(b_L−1 − b)) V Gᵀ + d_attnᵀ Q;  w_out_j = k_j · (row j of the first term).
    T* dk = gr.dk.at(bi, t0, qk_head);
    const i64 ldk = gr.dk.st;
    zero_rows(dk, L, Dk, ldk);
    transpose(G, Dk, Dv, Dv, w.tr, Dk);
    scale_rows(w.v, L, Dv, Dv, T(1), w.e_out, w.rows, Dv);
    gemm_acc(L, Dk, Dv, w.rows, Dv, w.tr, Dk, dk, ldk);
    for (i64 j = 0; j < L; ++j)
      w.w_out[j] = static_cast<double>(dot(w.k + j * Dk, dk + j * ldk, Dk));
    transpose(w.d_attn, L, L, C, w.sq, C);
    gemm_acc(L, Dk, L, w.sq, C, w.q, Dk, dk, ldk, Tri::a_upper);
    // dv = diag(exp(b_L−1 − b)) K G + attnᵀ dO.
    T* dv = gr.dv.at(bi, t0, h);
    const i64 ldv = gr.dv.st;
    zero_rows(dv, L, Dv, ldv);
    scale_rows(w.k, L, Dk, Dk, T(1), w.e_out, w.rows, Dk);
    gemm_acc(L, Dv, Dk, w.rows, Dk, G, Dv, dv, ldv);
    transpose(w.attn, L, L, C, w.sq, C);
    gemm_acc(L, Dv, L, w.sq, C, w.d_o, Dv, dv, ldv, Tri::a_upper);
    // dg_u (see the top of the file), accumulated in f64.
    const T e_all = w.e_in[L - 1];
    const double through = static_cast<double>(e_all) * static_cast<double>(dot(G, P, n));
    for (i64 u = 0; u < L; ++u) w.dg[u] = through;
    for (i64 i = 0; i < L; ++i) {  // Σ_{i≥u} Σ_{j<u} weight_ij
      double prefix = 0;
      const double* wt = w.weight + i * C;
      for (i64 u = 0; u <= i; ++u) {
        w.dg[u] += prefix;
        prefix += wt[u];
      }
    }
    double suffix_in = 0, prefix_out = 0;
    for (i64 u = L - 1; u >= 0; --u) {
      suffix_in += w.w_in[u];
      w.dg[u] += suffix_in;
    }
    for (i64 u = 0; u < L; ++u) {
      w.dg[u] += prefix_out;
      prefix_out += w.w_out[u];
    }
    if (gr.dg.data) {
      for (i64 u = 0; u < L; ++u) *gr.dg.at(bi, t0 + u, h) = static_cast<T>(w.dg[u]);
    }
    // G ← exp(b_L−1) G + scale Qᵀ diag(exp(b)) dO: the gradient of the state entering the chunk.
    for (i64 x = 0; x < n; ++x) G[x] *= e_all;
    transpose(w.q, L, Dk, Dk, w.cols, C, w.e_in);
    for (i64 x = 0; x < Dk * C; ++x) w.cols[x] *= scale;
    gemm_acc(Dk, Dv, L, w.cols, C, w.d_o, Dv, G, Dv);
  }
  if (gr.d_initial_state) copy(G, gr.d_initial_state + (bi * d.H + h) * n, n);
}

// ---- launchers -------------------------------------------------------------------------------

// Checks q, k, v, log_decay and chunk_size (and the optional initial state); returns the sizes.
Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_decay,
                  int chunk_size, const Tensor& initial_state, const char* op) {
  LINMOE_CHECK(q.ndim() == 4, op, ": q must be [B, T, Hk, Dk], got ", q.str());
  LINMOE_CHECK(v.ndim() == 4, op, ": v must be [B, T, H, Dv], got ", v.str());
  Dims d;
  d.B = q.shape[0], d.T = q.shape[1], d.Hk = q.shape[2], d.Dk = q.shape[3];
  d.H = v.shape[2], d.Dv = v.shape[3];
  LINMOE_CHECK(chunk_size >= 1, op, ": chunk_size must be ≥ 1, got ", chunk_size);
  d.C = std::min<i64>(chunk_size, std::max<i64>(d.T, 1));  // one chunk of T is the same math
  LINMOE_CHECK(d.Hk >= 1 && d.H % d.Hk == 0, op, ": ", d.H, " heads cannot share ", d.Hk,
               " q/k heads (H % Hk must be 0)");
  const DType dt = q.dtype;
  check_rows(q, q.shape, dt, op, "q");
  check_rows(k, Shape{d.B, d.T, d.Hk, d.Dk}, dt, op, "k");
  check_rows(v, Shape{d.B, d.T, d.H, d.Dv}, dt, op, "v");
  check_rows(log_decay, Shape{d.B, d.T, d.H}, dt, op, "log_decay");
  if (given(initial_state)) check_state(initial_state, d, dt, op, "initial_state");
  return d;
}

template <class T>
Inputs<T> make_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_decay,
                      const Tensor& initial_state, double scale) {
  Inputs<T> in;
  in.q = Rows<const T>(q), in.k = Rows<const T>(k), in.v = Rows<const T>(v);
  in.g = Rows<const T>(log_decay);
  in.initial_state = given(initial_state) ? static_cast<const T*>(initial_state.data) : nullptr;
  in.scale = static_cast<T>(scale);
  return in;
}

template <class T>
void forward_typed(const Dims& d, const Inputs<T>& in, const Tensor& o, const Tensor& final_state,
                   int threads) {
  const Rows<T> out(o);
  T* fs = given(final_state) ? static_cast<T*>(final_state.data) : nullptr;
#pragma omp parallel num_threads(threads_for_heads(d, threads))
  {
    ChunkWork<T> w(d, false);
#pragma omp for schedule(dynamic, 1)
    for (i64 task = 0; task < d.B * d.H; ++task) {
      forward_head(d, in, task / d.H, task % d.H, out, fs, w);
    }
  }
}

template <class T>
void backward_typed(const Dims& d, const Inputs<T>& in, const Tensor& d_o,
                    const Tensor& d_final_state, const Tensor& dq, const Tensor& dk,
                    const Tensor& dv, const Tensor& d_log_decay, const Tensor& d_initial_state,
                    int threads) {
  Grads<T> gr;
  gr.d_o = Rows<const T>(d_o);
  gr.d_final_state = given(d_final_state) ? static_cast<const T*>(d_final_state.data) : nullptr;
  gr.dv = Rows<T>(dv);
  if (given(d_log_decay)) gr.dg = Rows<T>(d_log_decay);
  gr.d_initial_state = given(d_initial_state) ? static_cast<T*>(d_initial_state.data) : nullptr;
  // Heads sharing a q/k head (Hk < H) write their dq/dk to scratch [B, H, T, Dk], summed after.
  gr.per_head_qk = d.Hk < d.H;
  std::vector<T> scratch;
  if (gr.per_head_qk) {
    scratch.resize(static_cast<std::size_t>(2 * d.B * d.H * d.T * d.Dk));
    const i64 half = d.B * d.H * d.T * d.Dk;
    for (int which = 0; which < 2; ++which) {
      Rows<T>& r = which == 0 ? gr.dq : gr.dk;
      r.data = scratch.data() + which * half;
      r.sb = d.H * d.T * d.Dk, r.sh = d.T * d.Dk, r.st = d.Dk;
    }
  } else {
    gr.dq = Rows<T>(dq), gr.dk = Rows<T>(dk);
  }
  const int nt = threads_for_heads(d, threads);
#pragma omp parallel num_threads(nt)
  {
    ChunkWork<T> w(d, true);
#pragma omp for schedule(dynamic, 1)
    for (i64 task = 0; task < d.B * d.H; ++task) {
      backward_head(d, in, gr, task / d.H, task % d.H, w);
    }
  }
  if (!gr.per_head_qk) return;
  // dq/dk of q/k head hk = Σ over its heads h ∈ [hk·H/Hk, (hk+1)·H/Hk), in head order.
  const Rows<T> dq_out(dq), dk_out(dk);
  const i64 group = d.H / d.Hk;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 bt = 0; bt < d.B * d.T; ++bt) {
    const i64 bi = bt / d.T, t = bt % d.T;
    for (int which = 0; which < 2; ++which) {
      const Rows<T>& src = which == 0 ? gr.dq : gr.dk;
      const Rows<T>& dst = which == 0 ? dq_out : dk_out;
      for (i64 hk = 0; hk < d.Hk; ++hk) {
        T* out = dst.at(bi, t, hk);
        copy(src.at(bi, t, hk * group), out, d.Dk);
        for (i64 r = 1; r < group; ++r) {
          const T* x = src.at(bi, t, hk * group + r);
#pragma omp simd
          for (i64 e = 0; e < d.Dk; ++e) out[e] += x[e];
        }
      }
    }
  }
}

}  // namespace

void CpuBackend::lsm_scalar_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& log_decay, double scale, int chunk_size,
                                          const Tensor& initial_state, const Tensor& o,
                                          const Tensor& final_state) {
  const char* op = "lsm_scalar_decay_forward";
  const Dims d = check_inputs(q, k, v, log_decay, chunk_size, initial_state, op);
  check_rows(o, v.shape, q.dtype, op, "o");
  if (given(final_state)) check_state(final_state, d, q.dtype, op, "final_state");
  cpu::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    forward_typed<T>(d, make_inputs<T>(q, k, v, log_decay, initial_state, scale), o, final_state,
                     threads_);
  });
}

void CpuBackend::lsm_scalar_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& log_decay, double scale, int chunk_size,
                                           const Tensor& initial_state, const Tensor& d_o,
                                           const Tensor& d_final_state, const Tensor& dq,
                                           const Tensor& dk, const Tensor& dv,
                                           const Tensor& d_log_decay,
                                           const Tensor& d_initial_state) {
  const char* op = "lsm_scalar_decay_backward";
  const Dims d = check_inputs(q, k, v, log_decay, chunk_size, initial_state, op);
  const DType dt = q.dtype;
  check_rows(d_o, v.shape, dt, op, "d_o");
  if (given(d_final_state)) check_state(d_final_state, d, dt, op, "d_final_state");
  check_rows(dq, q.shape, dt, op, "dq");
  check_rows(dk, q.shape, dt, op, "dk");
  check_rows(dv, v.shape, dt, op, "dv");
  if (given(d_log_decay)) check_rows(d_log_decay, log_decay.shape, dt, op, "d_log_decay");
  if (given(d_initial_state)) check_state(d_initial_state, d, dt, op, "d_initial_state");
  cpu::dispatch_float(dt, op, [&](auto zero) {
    using T = decltype(zero);
    backward_typed<T>(d, make_inputs<T>(q, k, v, log_decay, initial_state, scale), d_o,
                      d_final_state, dq, dk, dv, d_log_decay, d_initial_state, threads_);
  });
}

}  // namespace linmoe
