// Context parallelism of the LSM cores, LASP-2 without a ring (PARALLEL.md "Context (sequence)
// parallel"), for every kernel family (internal to layers/). Rank r of the cp group holds the
// contiguous piece r of every sequence. Per layer and per (batch b, head h) the core is linear in
// its incoming state:
//   S_out(r) = P_r(S_in(r)) + M_r
// M_r [Dk, Dv] is the state the piece builds from zero, P_r its transition: nothing
// (linear_attention), a scalar (lightning, retention, mamba2), a Dk-vector acting on the rows
// (gla, hgrn2) or a Dk×Dk matrix (deltanet, gated_deltanet).
// Forward: ONE all-gather of (M_j, P_j) and S_in(r) = Σ_{j<r} P_{r−1}…P_{j+1}(M_j).
// Backward: h_r = ∂L/∂S_in(r) through this piece's outputs alone; ONE all-gather of (h_j, P_j)
// and the suffix g_r = h_r + P_rᵀ(g_{r+1}), g_cp = 0: ∂L/∂S_out(r) = g_{r+1}.
// The composition runs on the host in f64 over the gathered summaries (the wire carries the
// stat dtype: f32, f64 in gradient checks); the cp communicator must hold host memory (MPI).
// The short convolutions take the previous rank's last K−1 inputs (a halo exchange) and send
// the halo's gradient back.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "layers/layer.h"

namespace linmoe::lasp2 {

using i64 = std::int64_t;

// True when ctx asks for context parallelism: process groups with cp > 1.
bool enabled(const LayerContext& ctx);

enum class Transition { identity, scalar, vector, matrix };

// One layer's state geometry: states [B, H, Dk, Dv] in the stat dtype; P [B, H] (scalar),
// [B, H, Dk] (vector), [B, H, Dk, Dk] (matrix) or none (identity).
struct StateDims {
  i64 B = 0, H = 0, Dk = 0, Dv = 0;
  Transition kind = Transition::identity;
  i64 state_numel() const { return B * H * Dk * Dv; }
  i64 transition_numel() const;
  Shape transition_shape() const;  // only for kind != identity
};

// ---- host composition (pure; arrays in the layouts of StateDims) -------------------------------
// s = P(s) in place (transpose: s = Pᵀ(s); the same for scalar and vector transitions).
// p: [B, H(, Dk(, Dk))], s: [B, H, Dk, Dv].
void apply_transition(const StateDims& d, const double* p, double* s, bool transpose);
// packed: cp blocks of [M_j | P_j] (state_numel + transition_numel each). Returns
// S_in(rank) [B, H, Dk, Dv] = Σ_{j<rank} P_{rank−1}…P_{j+1}(M_j).
std::vector<double> compose_incoming(const StateDims& d, const std::vector<double>& packed,
                                     int rank);
// packed: cp blocks of [h_j | P_j]. Returns ∂L/∂S_out(rank) = g_{rank+1} [B, H, Dk, Dv] with
// g_j = h_j + P_jᵀ(g_{j+1}), g_cp = 0.
std::vector<double> compose_outgoing_gradient(const StateDims& d, const std::vector<double>& packed,
                                              int rank);

// ---- the core under LASP-2 ----------------------------------------------------------------------
// run(initial_state, final_state): the family's core forward on this piece (undefined initial =
// zeros, undefined final = not wanted); its outputs are overwritten by the caller's final run.
using CoreForward = std::function<void(const Tensor& initial_state, const Tensor& final_state)>;
// run(d_final_state, d_initial_state): the family's core backward on this piece, from the saved
// S_in; it overwrites its other gradient outputs, so a second call replaces the first's.
using CoreBackward =
    std::function<void(const Tensor& d_final_state, const Tensor& d_initial_state)>;

// Runs the core from zero for M_r, all-gathers (M, P) over cp once and returns S_in(r)
// [B, H, Dk, Dv] stat, allocated in ctx.saved (the cache keeps it). transition: P_r (undefined
// for identity). The caller then runs the core again from S_in for its outputs: a re-run, since
// the kernels have no op that only adds an incoming state's contribution.
Tensor incoming_state(LayerContext& ctx, const StateDims& d, const Tensor& transition,
                      const CoreForward& run);
// Runs the core backward with d_final_state = 0 for h_r, all-gathers (h, P) over cp once and
// returns ∂L/∂S_out(r) [B, H, Dk, Dv] stat in scratch (the caller's scope), for the caller's
// real backward.
Tensor outgoing_state_gradient(LayerContext& ctx, const StateDims& d, const Tensor& transition,
                               const CoreBackward& run);

// P[b, w] = exp(Σ_t log_decay[b, t, w]): log_decay [B, T, W] contiguous (ctx.dtype), P [B, W]
// stat. The scalar (W = H) and vector (W = H·Dk) transitions.
void decay_transition(LayerContext& ctx, const Tensor& log_decay, const Tensor& transition);
// [B, H, Dk, Dk] stat identities in scratch: the delta rule's P_r is the final state of its core
// run from this with v = 0.
Tensor identity_states(LayerContext& ctx, i64 B, i64 H, i64 Dk);

// ---- halo exchange of the short convolutions (one send_recv per call) --------------------------
// x[i]: [B·T, C_i] contiguous, this rank's conv inputs; halo[i]: [B, K−1, C_i] contiguous,
// overwritten with the previous cp rank's last K−1 rows of x[i] per sequence (zeros on rank 0).
// Needs T ≥ K−1.
void exchange_halo(LayerContext& ctx, i64 B, i64 T, i64 K, const std::vector<Tensor>& x,
                   const std::vector<Tensor>& halo);
// d_halo[i]: [B, K−1, C_i], ∂L/∂halo[i], goes to the previous rank; the next rank's is ADDED to
// the last K−1 rows per sequence of dx[i]: [B·T, C_i] contiguous.
void return_halo_gradient(LayerContext& ctx, i64 B, i64 T, i64 K, const std::vector<Tensor>& d_halo,
                          const std::vector<Tensor>& dx);

}  // namespace linmoe::lasp2
