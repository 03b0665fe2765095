// The MoE router of MODEL.md 4: softmax over the experts in the statistics dtype, top-k,
// norm_topk_prob, capacity dropping, the aux and z losses; and its backward. Internal to the MoE
// block (layers/moe.cpp), which adds dispatch, the experts and the combine.
//
// The statistics and the capacity are properties of the whole micro-batch (MODEL.md 1, 4): when
// its tokens are spread over several ranks (context pieces, tensor-parallel token split), the
// routing of each rank's rows is local but the sums behind f_e, P_e, aux, z and N are all-reduced
// over the group holding the micro-batch (tp_cp) and the capacity keep decision is taken on the
// gathered micro-batch in global token order, so every rank gets one rank's numbers.
#pragma once
#include <cstdint>
#include <vector>

#include "layers/layer.h"
#include "parallel/communicator.h"

namespace linmoe {

// What routing decided for one micro-batch, kept in ctx.saved for backward.
struct MoeRouting {
  Tensor probs;       // [N, E] stat: p = softmax(x routerᵀ)
  Tensor lse;         // [N] stat: logsumexp_e of the router logits (z loss)
  Tensor expert_ids;  // [N, k] i32: I_t in descending p, ties to the lower expert
  Tensor weights;     // [N, k] activation dtype: the combine weights w (renormalised over I_t
                      // when norm_topk_prob, before any drop)
  Tensor keep;        // [N, k] i32: 0 where capacity dropped the assignment; undefined = dropless
  std::int64_t capacity = -1;     // assignments an expert keeps; -1 = dropless
  std::vector<double> load;       // [E] f_e: fraction of the N·k assignments, before dropping
  std::vector<double> mean_prob;  // [E] P_e = (1/N) Σ_t p_{t,e}
  double aux = 0.0;               // E · Σ_e f_e P_e
  double z = 0.0;                 // (1/N) Σ_t lse_t²
  double tokens = 0.0;            // N of the whole micro-batch (all ranks of the group)
};

// Where the routed rows sit in their micro-batch. The default (no group): x holds all of it, in
// token order.
struct MoeTokenShard {
  // The ranks holding the micro-batch's tokens (tp_cp). Host memory (ProcessGroups::group, MPI):
  // the router communicates only host vectors and scalars over it.
  Communicator* group = nullptr;
  std::vector<std::int64_t>
      token_index;  // [N] global n = b·T + t of each local row (capacity ties)
};

// x: [N, D] in the activation dtype. Fills every field of MoeRouting. With a shard group this is
// collective over it (every member calls it, with any N ≥ 0 of its own).
MoeRouting moe_route(LayerContext& ctx, const MoeConfig& cfg, int router_param, const Tensor& x,
                     const MoeTokenShard& shard = MoeTokenShard{});

// Router backward given the combine weights' gradient d_weights [N, k] (activation dtype; zero for
// dropped slots): through the top-k selection (and renormalisation) to p, plus the aux and z loss
// gradients scaled by ctx.loss_scale × their coefficients (with the micro-batch's N and f_e),
// through the softmax to the logits, then dx += dlogits · router and d router += dlogitsᵀ x.
void moe_route_backward(LayerContext& ctx, const MoeConfig& cfg, int router_param, const Tensor& x,
                        const MoeRouting& r, const Tensor& d_weights, const Tensor& dx);

}  // namespace linmoe
