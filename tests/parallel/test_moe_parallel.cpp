// The parallel MoE block (layers/moe.cpp, moe_router.cpp, moe_dispatch.cpp) against one rank.
//
// For every layout of the world with tp, cp, dp and ep (PARALLEL.md), both dispatchers, with and
// without capacity dropping and the shared expert, in f64 and f32: each rank runs the one-rank
// MoE (ctx.groups = null, whole parameters) on its data-parallel replica's whole micro-batch, and
// the parallel MoE on its own piece (cp) with its expert slice (ep) and its tp token share. Then
//  - y and dx of its piece, summed over tp (what the model's all-reduce does), match the
//    reference's rows;
//  - the statistics (aux, z, expert load) match the replica's one-rank values on every rank;
//  - the parameter gradients after the engine's reductions (sum over tp, then over dp_cp for the
//    router and shared expert, over expert_dp for the experts) match the sum over replicas of the
//    one-rank gradients (experts: the matching slice).
// Every rank checks; the failure count is reduced over the ranks (tests/common/test_main.cpp).
#include <mpi.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/config.h"
#include "core/memory.h"
#include "core/parameter_store.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"
#include "layers/model_spec.h"
#include "layers/sharding.h"
#include "layers/sublayers.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"

namespace linmoe::testing {
namespace {

using i64 = std::int64_t;
using Vec = std::vector<double>;

const std::string kPrefix = "layers.0.ffn.";
constexpr int kE = 8, kK = 2, kD = 8, kF = 6;

struct MoeCase {
  Dispatcher dispatcher = Dispatcher::alltoall;
  std::string capacity;  // moe.capacity_factor as written; empty = dropless
  int shared = 0;        // moe.shared_ffn_hidden_size (and norm_topk_prob with it)
  DType dtype = DType::f64;
  i64 B = 3, T_local = 3;  // N = 9 tokens per rank: uneven tp shares
  std::string str() const {
    return std::string(dispatcher == Dispatcher::alltoall ? "alltoall" : "allgather") +
           (capacity.empty() ? ", dropless" : ", capacity " + capacity) +
           (shared ? ", shared+norm" : "") + ", " + dtype_name(dtype) + ", B" + std::to_string(B) +
           " T_local" + std::to_string(T_local);
  }
};

ModelConfig moe_model(const MoeCase& c) {
  ModelConfig m;
  m.hidden_size = kD;
  m.num_layers = 1;
  m.layer_pattern = "N";
  m.ffn_hidden_size = kF;
  m.moe.num_experts = kE;
  m.moe.top_k = kK;
  m.moe.ffn_hidden_size = kF;
  m.moe.shared_ffn_hidden_size = c.shared;
  m.moe.norm_topk_prob = c.shared > 0;
  m.moe.aux_loss_coeff = 0.01;
  m.moe.z_loss_coeff = 0.001;
  m.moe.dispatcher = c.dispatcher;
  if (!c.capacity.empty()) {
    m.moe.capacity_factor = std::stod(c.capacity);
    m.moe.capacity_factor_text = c.capacity;
  }
  return m;
}

Layout layout(int tp, int cp, int dp, int ep) {
  Layout l;
  l.tp = tp;
  l.cp = cp;
  l.dp = dp;
  l.ep = ep;
  return l;
}

// The layouts this world runs (tp·cp·dp = world, ep | cp·dp).
std::vector<Layout> layouts_of(int world) {
  switch (world) {
    case 1:
      return {layout(1, 1, 1, 1)};
    case 2:
      return {layout(1, 1, 2, 2), layout(2, 1, 1, 1), layout(1, 2, 1, 2), layout(1, 2, 1, 1),
              layout(1, 1, 2, 1)};
    case 4:
      return {layout(1, 1, 4, 4), layout(1, 1, 4, 2), layout(2, 1, 2, 2), layout(1, 2, 2, 2),
              layout(1, 2, 2, 4), layout(2, 2, 1, 1), layout(2, 2, 1, 2), layout(4, 1, 1, 1)};
    default:
      return {layout(1, 1, world, 1)};
  }
}

Vec to_vec(const Tensor& t) {
  Vec v(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) {
    v[i] = t.dtype == DType::f64 ? t.ptr<double>()[i] : t.ptr<float>()[i];
  }
  return v;
}

Vec all_reduce(Communicator& comm, const Vec& v) {
  HostTensor t(DType::f64, Shape{static_cast<i64>(v.size())});
  t.from_f64(v);
  comm.all_reduce(t.t());
  return t.to_f64();
}

// Parameter values as a function of (name, global element index): every slice sees its part of
// the same whole tensor. The router is scaled up so that routing is decisive.
void fill_params(ParameterStore& store) {
  for (int i = 0; i < static_cast<int>(store.size()); ++i) {
    const ParamSpec& s = store.spec(i);
    const Tensor w = store.param(i);
    CounterRng rng(5, s.name);
    const i64 fan_in = s.global_shape[s.global_shape.ndim() - 1];
    const double a = std::sqrt(3.0 / static_cast<double>(fan_in)) *
                     (s.name.find("router") != std::string::npos ? 3.0 : 1.0);
    // Slices are along dim 0, so the local elements are a contiguous range of the whole tensor.
    const i64 start =
        (s.offset.empty() ? 0 : s.offset[0]) * (s.global_shape.numel() / s.global_shape[0]);
    for (i64 j = 0; j < w.numel(); ++j) {
      const double v = a * (2.0 * rng.uniform(static_cast<std::uint64_t>(start + j)) - 1.0);
      if (w.dtype == DType::f64) {
        w.ptr<double>()[j] = v;
      } else {
        w.ptr<float>()[j] = static_cast<float>(v);
      }
    }
  }
}

// A rank's MoE parameters as the engine shards them (layers/sharding.h): experts.* sliced along
// dim 0 over ep, the rest whole (replicated over tp, gradients partial over tp). tp = ep = 1: the
// whole parameters.
std::unique_ptr<ParameterStore> make_store(const ModelConfig& m, DType dt, const Layout& l,
                                           const Coordinates& at) {
  ShardingPlan plan;
  plan.tp = l.tp;
  plan.tp_rank = at.tp_rank;
  plan.ep = l.ep;
  plan.ep_rank = at.ep_rank;
  plan.stage_layers = {m.num_layers};
  auto store = std::make_unique<ParameterStore>();
  for (const ShardedParam& p : shard_parameters(m, plan)) {
    if (p.spec.name.rfind(kPrefix, 0) != 0) continue;
    const bool expert = p.spec.name.find(".experts.") != std::string::npos;
    CHECK(p.expert == expert);
    CHECK(p.tp_replicated);
    CHECK((l.tp == 1 || p.tp_partial_grad));
    store->add(p.spec);
  }
  store->allocate(host_allocator(), dt, dt);
  fill_params(*store);
  return store;
}

struct Run {
  Vec y, dx;
  SublayerStats stats;
  bool scratch_released = true;
};

// Forward and backward on x [B, T, D] with upstream gradient dy; dx and the parameter gradients
// start at 0.25 (backward accumulates) and that is taken off again.
Run run_layer(Sublayer& layer, Backend& be, ParameterStore& store, DType dt, const Vec& x,
              const Vec& dy, i64 B, i64 T, const ProcessGroups* groups, i64 position_offset) {
  const Shape shape{B, T, kD};
  HostTensor xt(dt, shape), yt(dt, shape), dyt(dt, shape), dxt(dt, shape);
  xt.from_f64(x);
  dyt.from_f64(dy);
  poison(yt.t());
  be.fill(dxt.t(), 0.25);
  be.fill(store.flat_grads(), 0.25);
  Arena saved(host_allocator(), 1 << 16, "saved"), scratch(host_allocator(), 1 << 16, "scratch");
  LayerContext ctx{be, store, saved, scratch, dt};
  ctx.groups = groups;
  ctx.position_offset = position_offset;
  Run r;
  std::unique_ptr<Sublayer::Cache> cache = layer.forward(ctx, xt.t(), yt.t(), &r.stats);
  r.scratch_released &= scratch.used() == 0;
  layer.backward(ctx, *cache, dyt.t(), dxt.t());
  r.scratch_released &= scratch.used() == 0;
  r.y = yt.to_f64();
  r.dx = dxt.to_f64();
  for (double& v : r.dx) v -= 0.25;
  return r;
}

Vec grad_of(ParameterStore& store, int i) {
  Vec g = to_vec(store.grad(i));
  for (double& v : g) v -= 0.25;
  return g;
}

// Rows [t0, t0 + Tl) of every sequence of a [B, T, D] tensor.
Vec piece(const Vec& full, i64 B, i64 T, i64 t0, i64 Tl) {
  Vec out;
  for (i64 b = 0; b < B; ++b) {
    const auto first = full.begin() + (b * T + t0) * kD;
    out.insert(out.end(), first, first + Tl * kD);
  }
  return out;
}

Vec values(i64 n, std::uint64_t seed) {
  HostTensor t(DType::f64, Shape{n});
  fill_uniform(t, seed);
  return t.to_f64();
}

struct Worst {
  double out = 0, grad = 0, stat = 0;
};

void check_case(const MoeCase& c, const ProcessGroups& g, Worst& worst) {
  const ModelConfig m = moe_model(c);
  const Layout& l = g.layout();
  const Coordinates& at = g.coords();
  const i64 B = c.B, Tl = c.T_local, T = Tl * l.cp, El = kE / l.ep, e0 = at.ep_rank * El;
  std::unique_ptr<Backend> be = make_cpu_backend(1);

  // The replica's micro-batch (its own per dp rank), and this rank's piece of it.
  const Vec x = values(B * T * kD, 1000 + static_cast<std::uint64_t>(at.dp_rank));
  const Vec dy = values(B * T * kD, 2000 + static_cast<std::uint64_t>(at.dp_rank));
  auto ref_store = make_store(m, c.dtype, Layout{}, Coordinates{});
  auto ref_layer = make_moe(m, 0, *ref_store);
  const Run ref = run_layer(*ref_layer, *be, *ref_store, c.dtype, x, dy, B, T, nullptr, 0);

  auto par_store = make_store(m, c.dtype, l, at);
  auto par_layer = make_moe(m, 0, *par_store);
  const i64 t0 = at.cp_rank * Tl;
  const Run par = run_layer(*par_layer, *be, *par_store, c.dtype, piece(x, B, T, t0, Tl),
                            piece(dy, B, T, t0, Tl), B, Tl, &g, t0);

  const double tol = c.dtype == DType::f64 ? 1e-10 : 1e-5;
  INFO(l.str() << ", " << c.str() << ", rank tp" << at.tp_rank << " cp" << at.cp_rank << " dp"
               << at.dp_rank << " ep" << at.ep_rank);
  CHECK(par.scratch_released);
  // y and dx: partial sums over tp.
  const double ey = rel_error(all_reduce(g.tp(), par.y), piece(ref.y, B, T, t0, Tl));
  const double edx = rel_error(all_reduce(g.tp(), par.dx), piece(ref.dx, B, T, t0, Tl));
  CHECK(ey < tol);
  CHECK(edx < tol);
  worst.out = std::max({worst.out, ey, edx});

  // Statistics: the replica's, on every rank.
  const auto stat_err = [](double a, double b) {
    return std::abs(a - b) / std::max(1.0, std::abs(b));
  };
  double es = std::max(stat_err(par.stats.aux_loss, ref.stats.aux_loss),
                       stat_err(par.stats.z_loss, ref.stats.z_loss));
  // (No REQUIRE here: a rank leaving early would hang the others' collectives.)
  CHECK(par.stats.expert_load.size() == ref.stats.expert_load.size());
  for (std::size_t e = 0; e < std::min(ref.stats.expert_load.size(), par.stats.expert_load.size());
       ++e) {
    es = std::max(es, stat_err(par.stats.expert_load[e], ref.stats.expert_load[e]));
  }
  CHECK(es < tol);
  worst.stat = std::max(worst.stat, es);

  // Gradients after the engine's reductions against the sum over replicas of the reference's.
  for (int i = 0; i < static_cast<int>(par_store->size()); ++i) {
    const std::string& name = par_store->spec(i).name;
    const bool expert = name.find(".experts.") != std::string::npos;
    Vec gp = all_reduce(g.tp(), grad_of(*par_store, i));
    gp = all_reduce(expert ? g.expert_dp() : g.dp_cp(), gp);
    Vec gr = all_reduce(g.dp(), grad_of(*ref_store, ref_store->index(name)));
    if (expert) {
      const i64 per = static_cast<i64>(gr.size()) / kE;
      gr = Vec(gr.begin() + e0 * per, gr.begin() + (e0 + El) * per);
    }
    const double eg = rel_error(gp, gr);
    INFO(name << ": relative error " << eg);
    CHECK(eg < tol);
    worst.grad = std::max(worst.grad, eg);
  }
  if (!c.capacity.empty() && B * T >= 9) {
    // The capacity really drops assignments here (else the dropping paths go untested).
    ModelConfig dropless = m;
    dropless.moe.capacity_factor.reset();
    dropless.moe.capacity_factor_text.clear();
    auto layer = make_moe(dropless, 0, *ref_store);  // (after the gradients are compared)
    const Run all = run_layer(*layer, *be, *ref_store, c.dtype, x, dy, B, T, nullptr, 0);
    CHECK(rel_error(all.y, ref.y) > 1e-3);
  }
}

void report(MpiCommunicator& world, Worst (&worst)[2], const char* what) {
  for (Worst& w : worst) {
    w.out = world.all_reduce_max(w.out);
    w.grad = world.all_reduce_max(w.grad);
    w.stat = world.all_reduce_max(w.stat);
  }
  if (world.rank() == 0) {
    std::printf(
        "parallel MoE (%s) on %d ranks, worst relative errors: f64 y/dx %.3g grads %.3g stats "
        "%.3g; f32 y/dx %.3g grads %.3g stats %.3g\n",
        what, world.size(), worst[0].out, worst[0].grad, worst[0].stat, worst[1].out, worst[1].grad,
        worst[1].stat);
  }
}

TEST_CASE("parallel MoE on every layout of this world matches one rank per replica",
          "[mpi][moe][ep]") {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  Worst worst[2];
  for (const Layout& l : layouts_of(world.size())) {
    ProcessGroups groups(world, l);
    for (DType dt : {DType::f64, DType::f32}) {
      for (Dispatcher d : {Dispatcher::alltoall, Dispatcher::allgather}) {
        if (l.ep == 1 && d == Dispatcher::allgather) continue;  // no dispatch without ep
        for (const char* cap : {"", "0.75"}) {
          for (int shared : {0, 5}) {
            MoeCase c;
            c.dispatcher = d;
            c.capacity = cap;
            c.shared = shared;
            c.dtype = dt;
            check_case(c, groups, worst[dt == DType::f64 ? 0 : 1]);
          }
        }
      }
    }
  }
  report(world, worst, "B3 T_local3");
}

// One token per rank: tp shares and ep exchanges with no rows at all on some ranks.
TEST_CASE("parallel MoE with one token per rank (empty shares and exchanges)", "[mpi][moe][ep]") {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  Worst worst[2];
  for (const Layout& l : layouts_of(world.size())) {
    ProcessGroups groups(world, l);
    for (Dispatcher d : {Dispatcher::alltoall, Dispatcher::allgather}) {
      if (l.ep == 1 && d == Dispatcher::allgather) continue;
      for (const char* cap : {"", "0.5"}) {
        MoeCase c;
        c.dispatcher = d;
        c.capacity = cap;
        c.shared = 3;
        c.B = 1;
        c.T_local = 1;
        check_case(c, groups, worst[0]);
      }
    }
  }
  report(world, worst, "B1 T_local1");
}

}  // namespace
}  // namespace linmoe::testing
