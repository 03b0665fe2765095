// Token dispatch of the MoE block (MODEL.md 4, PARALLEL.md "Expert parallel"): which rows the
// local experts process and how their outputs come back to the tokens.
//
// Three ways, one interface:
//  - local (one rank, or ep = 1): the plan (a stable sort of the kept assignments by expert)
//    gathers the token rows; the combine unpermutes them with the routing weights.
//  - alltoall (moe.dispatcher: alltoall, ep > 1): the same local plan over all E experts, whose
//    rows for ep rank j (experts [j·E/ep, (j+1)·E/ep)) are contiguous; the per-expert counts are
//    all-gathered over the ep group, the rows all-to-all'ed to the experts' owners and reordered
//    by local expert; the outputs travel back the same way and are combined locally.
//  - allgather (moe.dispatcher: allgather, ep > 1): the tokens and their routing are all-gathered
//    over the ep group; each rank runs its local experts on every gathered token routed to them
//    and combines those partial outputs, which a reduce-scatter sums back to the tokens' owners.
// Backward mirrors each: the combine's gradient goes to the experts' rows, and their input
// gradients come back to the tokens.
#pragma once
#include <cstdint>
#include <vector>

#include "layers/layer.h"
#include "layers/moe_router.h"

namespace linmoe {

// This rank's experts and its ep group (the experts.* parameter slices decide the range). The
// group comes twice: `ep` moves the token rows and routing tensors on the compute device
// (ProcessGroups::tensor_group: NCCL with the CUDA backend), `ep_host` the small host-side counts
// (ProcessGroups::group: MPI, host memory). Both are set or both null; on the CPU they are one.
struct ExpertPlacement {
  Communicator* ep = nullptr;       // device tensors; null: every expert is here (local dispatch)
  Communicator* ep_host = nullptr;  // host vectors and scalars
  Dispatcher dispatcher = Dispatcher::alltoall;
  int num_experts = 0;     // E
  std::int64_t first = 0;  // global index of this rank's first expert
  std::int64_t count = 0;  // local experts (E / ep)
  bool local() const { return ep == nullptr; }
};

// What the dispatch decided, kept in ctx.saved for backward.
struct MoeDispatch {
  // The plan over the tokens it covers (this rank's rows, or the ep group's gathered rows under
  // allgather): kept assignments n·k + s grouped by expert, then −1s.
  Tensor order;                           // [Nt·k] i32
  Tensor weights;                         // [Nt, k] the combine weights of those tokens
  std::int64_t plan_rows = 0;             // A: kept assignments in the plan
  std::vector<std::int64_t> expert_rows;  // [count] rows of x_exp per local expert
  Tensor x_exp;                           // [R, D] rows for the local experts, by local expert
  // alltoall: rows sent to / received from each ep rank, the reorder between the received
  // (source-major) rows and x_exp's expert-major rows, and the outputs returned in plan order.
  std::vector<std::int64_t> send_rows, recv_rows;  // [ep]
  Tensor to_experts;    // [R] i32: x_exp row i = received row to_experts[i]
  Tensor from_experts;  // [R] i32: received row j = x_exp row from_experts[j]
  Tensor y_plan;        // [A, D] the experts' outputs in plan order (alltoall: returned rows)
  // allgather: the gathered tokens.
  std::int64_t gathered_tokens = 0;
};

// x [N, D] this rank's routed rows. Collective over placement.ep unless local.
MoeDispatch moe_dispatch(LayerContext& ctx, const ExpertPlacement& placement, const MoeRouting& r,
                         const Tensor& x);

// y_exp [R, D] the local experts' outputs (rows of x_exp); y [N, D] overwritten with
// Σ_{e∈I_t, kept} w_{t,e} · SwiGLU_e(x_t) for this rank's rows.
void moe_combine(LayerContext& ctx, const ExpertPlacement& placement, MoeDispatch& d,
                 const Tensor& y_exp, const Tensor& y);

// Combine backward: dy [N, D] -> dy_exp [R, D] (overwritten) for the local experts' rows, and
// d_weights [N, k] (overwritten; 0 for dropped slots) for this rank's rows.
void moe_combine_backward(LayerContext& ctx, const ExpertPlacement& placement, const MoeDispatch& d,
                          const Tensor& y_exp, const Tensor& dy, const Tensor& dy_exp,
                          const Tensor& d_weights);

// Dispatch backward: dx [N, D] += the gradients of this rank's rows from dx_exp [R, D].
void moe_dispatch_backward(LayerContext& ctx, const ExpertPlacement& placement,
                           const MoeDispatch& d, const Tensor& dx_exp, const Tensor& dx);

}  // namespace linmoe
