// The MoE router (MODEL.md 4). The dense parts (router GEMM, softmax, lse, the loss gradients)
// run on the backend; the small per-token routing tensors ([N, k], [N, E], [E]) cross to the host
// for the statistics and for the top-k gradient, a scatter that the backend has no op for.
#include "layers/moe_router.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/moe_capacity.h"
#include "layers/linear.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

// Host views for copies between the backend and the host (Backend::copy converts float dtypes).
Tensor host_view(std::vector<double>& v, const Shape& s) {
  LINMOE_CHECK(static_cast<i64>(v.size()) == s.numel(), "host_view: size ", v.size(), " vs ",
               s.str());
  return Tensor(v.data(), DType::f64, Device::cpu, s);
}
Tensor host_view(std::vector<std::int32_t>& v, const Shape& s) {
  LINMOE_CHECK(static_cast<i64>(v.size()) == s.numel(), "host_view: size ", v.size(), " vs ",
               s.str());
  return Tensor(v.data(), DType::i32, Device::cpu, s);
}

// t itself when it has `dtype`, else a converted copy allocated from `arena`.
Tensor as_dtype(LayerContext& ctx, Arena& arena, const Tensor& t, DType dtype) {
  if (t.dtype == dtype) return t;
  Tensor out = arena.allocate(dtype, t.shape);
  ctx.backend.copy(t, out);
  return out;
}

// ∂L/∂p [N, E] (overwritten) from ∂L/∂w [N, k], through the top-k selection and, with
// norm_topk_prob, w_s = p_s / S with S = Σ_{j∈I_t} p_j over all of I_t (dropped slots included:
// the renormalisation happens before dropping): ∂L/∂p_j = (∂L/∂w_j − Σ_s ∂L/∂w_s · w_s) / S.
// Unselected experts get 0 here (the aux and z losses add to them).
void topk_backward(LayerContext& ctx, const MoeRouting& r, bool renormalize, const Tensor& d_w,
                   const Tensor& dp) {
  const i64 N = r.probs.size(0), E = r.probs.size(1), k = r.expert_ids.size(1);
  std::vector<double> p(static_cast<std::size_t>(N * E));          // [N, E]
  std::vector<double> dw(static_cast<std::size_t>(N * k));         // [N, k]
  std::vector<std::int32_t> ids(static_cast<std::size_t>(N * k));  // [N, k]
  std::vector<double> g(static_cast<std::size_t>(N * E), 0.0);     // [N, E]
  ctx.backend.copy(r.probs, host_view(p, r.probs.shape));
  ctx.backend.copy(d_w, host_view(dw, d_w.shape));
  ctx.backend.copy(r.expert_ids, host_view(ids, r.expert_ids.shape));
  for (i64 n = 0; n < N; ++n) {
    const double* pn = p.data() + n * E;
    const double* dwn = dw.data() + n * k;
    const std::int32_t* in = ids.data() + n * k;
    double* gn = g.data() + n * E;
    double sum = 0.0;
    for (i64 s = 0; s < k; ++s) sum += pn[in[s]];
    if (renormalize && sum > 0.0) {  // moe_topk leaves the zeros when the sum underflows
      double dot = 0.0;              // Σ_s ∂L/∂w_s · w_s
      for (i64 s = 0; s < k; ++s) dot += dwn[s] * pn[in[s]] / sum;
      for (i64 s = 0; s < k; ++s) gn[in[s]] += (dwn[s] - dot) / sum;
    } else if (!renormalize) {
      for (i64 s = 0; s < k; ++s) gn[in[s]] += dwn[s];
    }
  }
  ctx.backend.copy(host_view(g, dp.shape), dp);
}

// Capacity dropping over a micro-batch spread across `shard.group` (a host communicator): every
// member's rows (global token index, I_t and the selected p_{t,e}, all the keep decision reads)
// are all-gathered on the host, put in global token order, and the backend's keep decision on the
// whole micro-batch is taken on every rank; each keeps its own rows' entries.
void sharded_capacity_keep(LayerContext& ctx, const MoeTokenShard& shard, const MoeRouting& r,
                           i64 tokens, const Tensor& keep) {
  Communicator& group = *shard.group;
  const i64 N = r.probs.size(0), E = r.probs.size(1), k = r.expert_ids.size(1);
  LINMOE_CHECK(static_cast<i64>(shard.token_index.size()) == N, "moe: ", shard.token_index.size(),
               " token indices for ", N, " rows");
  // One row per token: [n, I_t (k), p_{t,I_t} (k)] in f64 (exact for the stat dtype and the
  // indices); ranks with fewer rows pad with n = −1.
  const i64 W = 1 + 2 * k, rows = group.all_reduce_max_i64(N);
  std::vector<double> p(static_cast<std::size_t>(N * E));
  std::vector<std::int32_t> ids(static_cast<std::size_t>(N * k));
  ctx.backend.copy(r.probs, host_view(p, r.probs.shape));
  ctx.backend.copy(r.expert_ids, host_view(ids, r.expert_ids.shape));
  std::vector<double> mine(static_cast<std::size_t>(rows * W), -1.0);  // [rows, W]
  for (i64 n = 0; n < N; ++n) {
    double* row = mine.data() + n * W;
    row[0] = static_cast<double>(shard.token_index[static_cast<std::size_t>(n)]);
    for (i64 s = 0; s < k; ++s) {
      const std::int32_t e = ids[static_cast<std::size_t>(n * k + s)];
      row[1 + s] = e;
      row[1 + k + s] = p[static_cast<std::size_t>(n * E + e)];
    }
  }
  std::vector<double> all(static_cast<std::size_t>(group.size() * rows * W));  // [size·rows, W]
  group.all_gather(mine.data(), all.data(), rows * W, DType::f64);             // host (MPI) group
  // The micro-batch in global token order (p only where selected: all the decision reads).
  std::vector<double> gp(static_cast<std::size_t>(tokens * E), 0.0);         // [tokens, E]
  std::vector<std::int32_t> gids(static_cast<std::size_t>(tokens * k), -1);  // [tokens, k]
  i64 placed = 0;
  for (i64 i = 0; i < group.size() * rows; ++i) {
    const double* row = all.data() + i * W;
    if (row[0] < 0) continue;
    const auto n = static_cast<i64>(row[0]);
    LINMOE_CHECK(n < tokens && gids[static_cast<std::size_t>(n * k)] < 0, "moe: token index ", n,
                 " is out of range or held twice in a micro-batch of ", tokens);
    for (i64 s = 0; s < k; ++s) {
      const auto e = static_cast<std::int32_t>(row[1 + s]);
      gids[static_cast<std::size_t>(n * k + s)] = e;
      gp[static_cast<std::size_t>(n * E + e)] = row[1 + k + s];
    }
    ++placed;
  }
  LINMOE_CHECK(placed == tokens, "moe: the group holds ", placed, " tokens, expected ", tokens);
  std::vector<std::int32_t> gkeep(static_cast<std::size_t>(tokens * k));  // [tokens, k]
  {
    ScratchScope scope(ctx.scratch);
    Tensor probs = ctx.temp(r.probs.dtype, Shape{tokens, E});  // [tokens, E] stat
    Tensor experts = ctx.temp(DType::i32, Shape{tokens, k});   // [tokens, k]
    Tensor kept = ctx.temp(DType::i32, Shape{tokens, k});      // [tokens, k]
    ctx.backend.copy(host_view(gp, probs.shape), probs);
    ctx.backend.copy(host_view(gids, experts.shape), experts);
    ctx.backend.moe_capacity_keep(probs, experts, r.capacity, kept);
    ctx.backend.copy(kept, host_view(gkeep, kept.shape));
  }
  std::vector<std::int32_t> local(static_cast<std::size_t>(N * k));  // [N, k]
  for (i64 n = 0; n < N; ++n) {
    const i64 g = shard.token_index[static_cast<std::size_t>(n)];
    for (i64 s = 0; s < k; ++s) {
      local[static_cast<std::size_t>(n * k + s)] = gkeep[static_cast<std::size_t>(g * k + s)];
    }
  }
  ctx.backend.copy(host_view(local, keep.shape), keep);
}

}  // namespace

MoeRouting moe_route(LayerContext& ctx, const MoeConfig& cfg, int router_param, const Tensor& x,
                     const MoeTokenShard& shard) {
  const i64 N = x.size(0);
  const int E = cfg.num_experts, k = cfg.top_k;
  const DType st = stat_dtype(ctx.dtype);
  LINMOE_CHECK(k >= 1 && k <= E, "moe: top_k = ", k, " must be in [1, ", E, "]");
  ScratchScope scope(ctx.scratch);
  MoeRouting r;

  // p = softmax(x routerᵀ), in the statistics dtype: fp32 or wider (MODEL.md 4).
  Tensor logits = ctx.temp(Shape{N, E});  // [N, E]
  linear_forward(ctx, x, ctx.param(router_param), Tensor{}, logits);
  const Tensor logits_st = as_dtype(ctx, ctx.scratch, logits, st);  // [N, E] stat
  r.probs = ctx.saved.allocate(st, Shape{N, E});
  ctx.backend.softmax_forward(logits_st, r.probs);
  // lse_t for the z loss: the cross-entropy statistics give it (the target logit is unused).
  Tensor targets = ctx.temp(DType::i32, Shape{N});  // [N]
  ctx.backend.fill(targets, 0.0);
  Tensor target_logit = ctx.temp(st, Shape{N});  // [N]
  r.lse = ctx.saved.allocate(st, Shape{N});
  ctx.backend.cross_entropy_stats(logits_st, targets, 0, r.lse, target_logit);

  // I_t and w (MODEL.md 4): top-k, ties to the lower expert; renormalised over all of I_t.
  r.expert_ids = ctx.saved.allocate(DType::i32, Shape{N, k});
  Tensor w_st = st == ctx.dtype ? ctx.save(Shape{N, k}) : ctx.temp(st, Shape{N, k});
  ctx.backend.moe_topk(r.probs, k, cfg.norm_topk_prob, r.expert_ids, w_st);
  r.weights = as_dtype(ctx, ctx.saved, w_st, ctx.dtype);

  // The micro-batch's N: this rank's rows, or all the group's.
  const i64 tokens = shard.group ? shard.group->all_reduce_sum_i64(N) : N;
  r.tokens = static_cast<double>(tokens);

  // Capacity: each expert keeps its ⌈c·N·k/E⌉ highest-p assignments, ties to the lower token.
  if (cfg.capacity_factor) {
    r.capacity = moe_capacity(cfg.capacity_factor_text, tokens, k, E);
    r.keep = ctx.saved.allocate(DType::i32, Shape{N, k});
    if (shard.group) {
      sharded_capacity_keep(ctx, shard, r, tokens, r.keep);
    } else {
      ctx.backend.moe_capacity_keep(r.probs, r.expert_ids, r.capacity, r.keep);
    }
  }

  // Statistics over the micro-batch's tokens. f_e counts assignments BEFORE dropping and is not
  // differentiated. With a shard group the sums are all-reduced over it first (MODEL.md 1).
  std::vector<std::int32_t> ids(static_cast<std::size_t>(N * k));  // [N, k]
  ctx.backend.copy(r.expert_ids, host_view(ids, r.expert_ids.shape));
  // [count_e (E), Σ_t p_{t,e} (E), Σ_t lse_t²] in f64.
  std::vector<double> sums(static_cast<std::size_t>(2 * E + 1), 0.0);
  for (std::int32_t e : ids) sums[static_cast<std::size_t>(e)] += 1.0;
  {
    Tensor prob_sum = ctx.temp(st, Shape{E});  // [E] Σ_t p_{t,e}
    ctx.backend.sum_rows(r.probs, prob_sum, false);
    std::vector<double> ps(static_cast<std::size_t>(E));
    ctx.backend.copy(prob_sum, host_view(ps, prob_sum.shape));
    std::copy(ps.begin(), ps.end(), sums.begin() + E);
  }
  sums[static_cast<std::size_t>(2 * E)] = ctx.backend.sum_squares(r.lse);
  if (shard.group) {  // host (MPI) group: [2E + 1] f64
    shard.group->all_reduce(sums.data(), static_cast<i64>(sums.size()), DType::f64);
  }

  const double total = static_cast<double>(tokens);
  r.load.assign(static_cast<std::size_t>(E), 0.0);
  r.mean_prob.assign(static_cast<std::size_t>(E), 0.0);
  r.aux = 0.0;
  for (std::size_t e = 0; e < static_cast<std::size_t>(E); ++e) {
    r.load[e] = tokens > 0 ? sums[e] / (total * k) : 0.0;
    r.mean_prob[e] = tokens > 0 ? sums[static_cast<std::size_t>(E) + e] / total : 0.0;
    r.aux += r.load[e] * r.mean_prob[e];
  }
  r.aux *= E;
  r.z = tokens > 0 ? sums[static_cast<std::size_t>(2 * E)] / total : 0.0;
  return r;
}

void moe_route_backward(LayerContext& ctx, const MoeConfig& cfg, int router_param, const Tensor& x,
                        const MoeRouting& r, const Tensor& d_weights, const Tensor& dx) {
  const i64 N = r.probs.size(0), E = r.probs.size(1);
  if (N == 0) return;
  const DType st = r.probs.dtype;
  ScratchScope scope(ctx.scratch);

  Tensor dp = ctx.temp(st, Shape{N, E});  // [N, E] ∂L/∂p
  topk_backward(ctx, r, cfg.norm_topk_prob, as_dtype(ctx, ctx.scratch, d_weights, st), dp);

  // Aux loss: ∂aux/∂p_{t,e} = E·f_e/N for every token (f_e is a constant), a broadcast row.
  const double c_aux = ctx.loss_scale * cfg.aux_loss_coeff;
  if (c_aux != 0.0) {
    std::vector<double> row(static_cast<std::size_t>(E));  // [E]
    for (std::size_t e = 0; e < row.size(); ++e) {
      row[e] = c_aux * static_cast<double>(E) * r.load[e] / r.tokens;
    }
    Tensor row_t = ctx.temp(st, Shape{1, E});  // [1, E]
    ctx.backend.copy(host_view(row, row_t.shape), row_t);
    Tensor ones = ctx.temp(st, Shape{N, 1});  // [N, 1]
    ctx.backend.fill(ones, 1.0);
    ctx.backend.gemm(ones, false, row_t, false, dp, 1.0, 1.0);  // dp += 1 ⊗ row
  }

  Tensor dlogits = ctx.temp(st, Shape{N, E});  // [N, E]
  ctx.backend.softmax_backward(r.probs, dp, dlogits);

  // z loss: ∂z/∂logit_{t,e} = 2·lse_t·p_{t,e}/N.
  const double c_z = ctx.loss_scale * cfg.z_loss_coeff;
  if (c_z != 0.0) {
    Tensor ones = ctx.temp(st, Shape{1, E});  // [1, E]
    ctx.backend.fill(ones, 1.0);
    Tensor lse_p = ctx.temp(st, Shape{N, E});  // [N, E] lse_t·p_{t,e}
    ctx.backend.gemm(r.lse.reshape(Shape{N, 1}), false, ones, false, lse_p, 1.0, 0.0);
    ctx.backend.mul(lse_p, r.probs, lse_p);
    ctx.backend.axpy(2.0 * c_z / r.tokens, lse_p, dlogits);
  }

  const Tensor dl = as_dtype(ctx, ctx.scratch, dlogits, ctx.dtype);  // [N, E]
  linear_backward(ctx, x, ctx.param(router_param), dl, dx, true, ctx.grad(router_param), Tensor{});
}

}  // namespace linmoe
