// Token dispatch of the MoE block: local, alltoall and allgather (see moe_dispatch.h). The plan
// and the row movements are backend ops (moe_dispatch_plan, moe_permute with k = 1 as a row
// gather); the small per-expert counts cross to the host to size the exchanges. Device tensors
// travel over placement.ep (the tensor group), host counts over placement.ep_host (MPI).
#include "layers/moe_dispatch.h"

#include <cstdint>
#include <vector>

#include "core/check.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

Tensor host_i64(std::vector<i64>& v) {
  return Tensor(v.data(), DType::i64, Device::cpu, Shape{static_cast<i64>(v.size())});
}
Tensor host_i32(std::vector<std::int32_t>& v, const Shape& s) {
  return Tensor(v.data(), DType::i32, Device::cpu, s);
}

// The plan over `ids` [Nt, k] with `keep` (or undefined): order saved, counts returned [E].
i64 make_plan(LayerContext& ctx, const Tensor& ids, const Tensor& keep, int E, MoeDispatch& d,
              std::vector<i64>& counts) {
  d.order = ctx.saved.allocate(DType::i32, Shape{ids.numel()});
  ScratchScope scope(ctx.scratch);
  Tensor c = ctx.temp(DType::i64, Shape{E});  // [E]
  const i64 rows = ctx.backend.moe_dispatch_plan(ids, keep, E, d.order, c);
  counts.assign(static_cast<std::size_t>(E), 0);
  ctx.backend.copy(c, host_i64(counts));
  return rows;
}

// Element counts and displacements of row blocks of width D.
struct Blocks {
  std::vector<i64> counts, displs;
};
Blocks blocks(const std::vector<i64>& rows, i64 D) {
  Blocks b;
  i64 at = 0;
  for (i64 r : rows) {
    b.counts.push_back(r * D);
    b.displs.push_back(at);
    at += r * D;
  }
  return b;
}

// Rows of `from` (blocks of from_rows per ep rank) to `to` (blocks of to_rows): the exchange.
void exchange_rows(Communicator& ep, const Tensor& from, const std::vector<i64>& from_rows,
                   const Tensor& to, const std::vector<i64>& to_rows) {
  const i64 D = from.size(1);
  const Blocks s = blocks(from_rows, D), r = blocks(to_rows, D);
  ep.all_to_all_v(from.reshape(Shape{from.numel()}), s.counts, s.displs,
                  to.reshape(Shape{to.numel()}), r.counts, r.displs);
}

// ---- alltoall ----------------------------------------------------------------------------------
void alltoall_dispatch(LayerContext& ctx, const ExpertPlacement& pl, const MoeRouting& r,
                       const Tensor& x, MoeDispatch& d) {
  Communicator& ep = *pl.ep;
  Communicator& ep_host = *pl.ep_host;
  const i64 D = x.size(1), k = r.expert_ids.size(1), E = pl.num_experts, El = pl.count;
  const int P = ep.size();
  std::vector<i64> counts;  // [E] this rank's kept assignments per (global) expert
  d.plan_rows = make_plan(ctx, r.expert_ids, r.keep, pl.num_experts, d, counts);
  d.weights = r.weights;

  ScratchScope scope(ctx.scratch);
  // Every ep rank's counts (host): rank p sends its rows for expert e to e's owner e / El.
  std::vector<i64> all(static_cast<std::size_t>(P * E));  // [P, E]
  ep_host.all_gather(counts.data(), all.data(), E, DType::i64);
  auto count = [&](int p, i64 e) { return all[static_cast<std::size_t>(p * E + e)]; };
  d.send_rows.assign(static_cast<std::size_t>(P), 0);
  d.recv_rows.assign(static_cast<std::size_t>(P), 0);
  d.expert_rows.assign(static_cast<std::size_t>(El), 0);
  for (int q = 0; q < P; ++q) {
    for (i64 e = q * El; e < (q + 1) * El; ++e)
      d.send_rows[static_cast<std::size_t>(q)] += counts[static_cast<std::size_t>(e)];
  }
  for (int p = 0; p < P; ++p) {
    for (i64 el = 0; el < El; ++el) {
      d.recv_rows[static_cast<std::size_t>(p)] += count(p, pl.first + el);
      d.expert_rows[static_cast<std::size_t>(el)] += count(p, pl.first + el);
    }
  }
  i64 R = 0;
  for (i64 n : d.recv_rows) R += n;

  // The received rows come source-major (then by local expert); the experts want them
  // expert-major (then by source, token order within each).
  std::vector<std::int32_t> to(static_cast<std::size_t>(R)), from(static_cast<std::size_t>(R));
  {
    std::vector<i64> src_begin(static_cast<std::size_t>(P), 0);  // first received row of source p
    for (int p = 1; p < P; ++p) {
      src_begin[static_cast<std::size_t>(p)] =
          src_begin[static_cast<std::size_t>(p - 1)] + d.recv_rows[static_cast<std::size_t>(p - 1)];
    }
    i64 i = 0;
    for (i64 el = 0; el < El; ++el) {
      for (int p = 0; p < P; ++p) {
        i64 src = src_begin[static_cast<std::size_t>(p)];
        for (i64 e = 0; e < el; ++e) src += count(p, pl.first + e);
        for (i64 j = 0; j < count(p, pl.first + el); ++j, ++i) {
          to[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(src + j);
          from[static_cast<std::size_t>(src + j)] = static_cast<std::int32_t>(i);
        }
      }
    }
  }
  d.to_experts = ctx.saved.allocate(DType::i32, Shape{R});
  d.from_experts = ctx.saved.allocate(DType::i32, Shape{R});
  ctx.backend.copy(host_i32(to, Shape{R}), d.to_experts);
  ctx.backend.copy(host_i32(from, Shape{R}), d.from_experts);

  Tensor x_plan = ctx.temp(Shape{d.plan_rows, D});  // [A, D] this rank's rows in plan order
  ctx.backend.moe_permute(x, d.order, static_cast<int>(k), x_plan);
  Tensor x_src = ctx.temp(Shape{R, D});  // [R, D] received, source-major
  exchange_rows(ep, x_plan, d.send_rows, x_src, d.recv_rows);
  d.x_exp = ctx.save(Shape{R, D});
  ctx.backend.moe_permute(x_src, d.to_experts, 1, d.x_exp);
}

// ---- allgather ---------------------------------------------------------------------------------
void allgather_dispatch(LayerContext& ctx, const ExpertPlacement& pl, const MoeRouting& r,
                        const Tensor& x, MoeDispatch& d) {
  Communicator& ep = *pl.ep;
  const i64 N = x.size(0), D = x.size(1), k = r.expert_ids.size(1);
  for (i64 n : pl.ep_host->all_gather(N)) {
    LINMOE_CHECK(n == N, "moe: the allgather dispatcher needs the same number of tokens on every ",
                 "rank of the ep group; this rank has ", N, ", another ", n);
  }
  const i64 G = ep.size() * N;
  d.gathered_tokens = G;
  d.weights = ctx.save(Shape{G, k});
  ep.all_gather(r.weights, d.weights);

  ScratchScope scope(ctx.scratch);
  Tensor ids = ctx.temp(DType::i32, Shape{G, k});  // [G, k]
  ep.all_gather(r.expert_ids, ids);
  // Keep only the assignments to this rank's experts (and those capacity kept).
  std::vector<std::int32_t> id_h(static_cast<std::size_t>(G * k)), keep_h(id_h.size(), 1);
  ctx.backend.copy(ids, host_i32(id_h, ids.shape));
  if (r.keep.data != nullptr) {
    Tensor kept = ctx.temp(DType::i32, Shape{G, k});  // [G, k]
    ep.all_gather(r.keep, kept);
    ctx.backend.copy(kept, host_i32(keep_h, kept.shape));
  }
  for (std::size_t a = 0; a < id_h.size(); ++a) {
    if (id_h[a] < pl.first || id_h[a] >= pl.first + pl.count) keep_h[a] = 0;
  }
  Tensor keep = ctx.temp(DType::i32, Shape{G, k});  // [G, k]
  ctx.backend.copy(host_i32(keep_h, keep.shape), keep);
  std::vector<i64> counts;
  d.plan_rows = make_plan(ctx, ids, keep, pl.num_experts, d, counts);
  d.expert_rows.assign(counts.begin() + pl.first, counts.begin() + pl.first + pl.count);

  Tensor x_all = ctx.temp(Shape{G, D});  // [G, D]
  ep.all_gather(x, x_all);
  d.x_exp = ctx.save(Shape{d.plan_rows, D});
  ctx.backend.moe_permute(x_all, d.order, static_cast<int>(k), d.x_exp);
}

}  // namespace

MoeDispatch moe_dispatch(LayerContext& ctx, const ExpertPlacement& placement, const MoeRouting& r,
                         const Tensor& x) {
  MoeDispatch d;
  if (placement.local()) {
    std::vector<i64> counts;
    d.plan_rows = make_plan(ctx, r.expert_ids, r.keep, placement.num_experts, d, counts);
    d.expert_rows = counts;
    d.weights = r.weights;
    d.x_exp = ctx.save(Shape{d.plan_rows, x.size(1)});
    ctx.backend.moe_permute(x, d.order, static_cast<int>(r.expert_ids.size(1)), d.x_exp);
  } else if (placement.dispatcher == Dispatcher::alltoall) {
    alltoall_dispatch(ctx, placement, r, x, d);
  } else {
    allgather_dispatch(ctx, placement, r, x, d);
  }
  return d;
}

void moe_combine(LayerContext& ctx, const ExpertPlacement& placement, MoeDispatch& d,
                 const Tensor& y_exp, const Tensor& y) {
  Backend& be = ctx.backend;
  if (placement.local()) {
    d.y_plan = y_exp;
    be.moe_unpermute(y_exp, d.order, d.weights, y, false);
    return;
  }
  Communicator& ep = *placement.ep;
  ScratchScope scope(ctx.scratch);
  if (placement.dispatcher == Dispatcher::alltoall) {
    Tensor y_src = ctx.temp(y_exp.shape);  // [R, D] source-major
    be.moe_permute(y_exp, d.from_experts, 1, y_src);
    d.y_plan = ctx.save(Shape{d.plan_rows, y.size(1)});  // [A, D]
    exchange_rows(ep, y_src, d.recv_rows, d.y_plan, d.send_rows);
    be.moe_unpermute(d.y_plan, d.order, d.weights, y, false);
  } else {
    d.y_plan = y_exp;
    Tensor y_all = ctx.temp(Shape{d.gathered_tokens, y.size(1)});  // [G, D] partial sums
    be.moe_unpermute(y_exp, d.order, d.weights, y_all, false);
    ep.reduce_scatter(y_all, y);
  }
}

void moe_combine_backward(LayerContext& ctx, const ExpertPlacement& placement, const MoeDispatch& d,
                          const Tensor& y_exp, const Tensor& dy, const Tensor& dy_exp,
                          const Tensor& d_weights) {
  Backend& be = ctx.backend;
  if (placement.local()) {
    be.moe_unpermute_backward(dy, y_exp, d.order, d.weights, dy_exp, d_weights);
    return;
  }
  Communicator& ep = *placement.ep;
  ScratchScope scope(ctx.scratch);
  if (placement.dispatcher == Dispatcher::alltoall) {
    Tensor dy_plan = ctx.temp(d.y_plan.shape);  // [A, D]
    be.moe_unpermute_backward(dy, d.y_plan, d.order, d.weights, dy_plan, d_weights);
    Tensor dy_src = ctx.temp(dy_exp.shape);  // [R, D] source-major
    exchange_rows(ep, dy_plan, d.send_rows, dy_src, d.recv_rows);
    be.moe_permute(dy_src, d.to_experts, 1, dy_exp);
  } else {
    Tensor dy_all = ctx.temp(Shape{d.gathered_tokens, dy.size(1)});  // [G, D]
    ep.all_gather(dy, dy_all);
    Tensor dw_all = ctx.temp(d.weights.shape);  // [G, k] nonzero only for the local experts
    be.moe_unpermute_backward(dy_all, y_exp, d.order, d.weights, dy_exp, dw_all);
    ep.reduce_scatter(dw_all, d_weights);
  }
}

void moe_dispatch_backward(LayerContext& ctx, const ExpertPlacement& placement,
                           const MoeDispatch& d, const Tensor& dx_exp, const Tensor& dx) {
  Backend& be = ctx.backend;
  const int k = static_cast<int>(d.weights.size(1));
  if (placement.local()) {
    be.moe_permute_backward(dx_exp, d.order, k, dx);
    return;
  }
  Communicator& ep = *placement.ep;
  ScratchScope scope(ctx.scratch);
  if (placement.dispatcher == Dispatcher::alltoall) {
    Tensor dx_src = ctx.temp(dx_exp.shape);  // [R, D] source-major
    be.moe_permute(dx_exp, d.from_experts, 1, dx_src);
    Tensor dx_plan = ctx.temp(Shape{d.plan_rows, dx.size(1)});  // [A, D]
    exchange_rows(ep, dx_src, d.recv_rows, dx_plan, d.send_rows);
    be.moe_permute_backward(dx_plan, d.order, k, dx);
  } else {
    Tensor dx_all = ctx.temp(Shape{d.gathered_tokens, dx.size(1)});  // [G, D]
    be.fill(dx_all, 0.0);
    be.moe_permute_backward(dx_exp, d.order, k, dx_all);
    Tensor part = ctx.temp(dx.shape);  // [N, D]
    ep.reduce_scatter(dx_all, part);
    be.axpy(1.0, part, dx);
  }
}

}  // namespace linmoe
