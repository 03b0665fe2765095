// LASP-2H context parallelism of the softmax attention mixer (PARALLEL.md, layers/attention.cpp)
// against one rank. Every rank runs the one-rank attention sublayer with the whole parameters on
// the whole sequence (ctx.groups = null), then the parallel one on its piece (position_offset =
// cp_rank·T_local) with its parameter slices (layers/sharding.h: heads split over tp) and compares
// y and dx of its piece, summed over tp as the model does, and the parameter gradients summed
// over cp (the engine's dp_cp reduction) with the matching slices of the reference's. Layouts:
// cp = world, and tp2 cp2 on 4 ranks. GQA and MHA, with and without qkv_bias, odd T_local, f64
// and f32. Every rank checks; failures are reduced over the ranks.
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

const char* const kPrefix = "layers.0.mixer.";

struct CpCase {
  const char* name;
  const char* yaml;
  i64 B, T_local;
};

const CpCase kCases[] = {
    {"gqa, no bias, T_local=5",
     "model: {hidden_size: 16, num_layers: 1, layer_pattern: N, "
     "attention: {num_heads: 4, num_kv_heads: 2}}",
     2, 5},
    {"gqa, bias, T_local=3",
     "model: {hidden_size: 16, num_layers: 1, layer_pattern: N, "
     "attention: {num_heads: 4, num_kv_heads: 2, qkv_bias: true, rope_theta: 500}}",
     3, 3},
    {"mha, bias, head_dim 6, T_local=7",
     "model: {hidden_size: 12, num_layers: 1, layer_pattern: N, "
     "attention: {num_heads: 2, head_dim: 6, qkv_bias: true}, lsm: {num_heads: 2}}",
     1, 7},
};

Vec to_vec(const Tensor& t) {
  Vec v(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) {
    v[i] = t.dtype == DType::f64 ? t.ptr<double>()[i] : t.ptr<float>()[i];
  }
  return v;
}

// Deterministic values of a global [B, T, D] tensor, the same on every rank.
Vec global_values(i64 n, std::uint64_t seed) {
  HostTensor t(DType::f64, Shape{n});
  fill_uniform(t, seed);
  return t.to_f64();
}

// Rows [t0, t0 + Tl) of every sequence of a [B, T, D] tensor.
Vec piece(const Vec& full, i64 B, i64 T, i64 D, i64 t0, i64 Tl) {
  Vec out;
  for (i64 b = 0; b < B; ++b) {
    const auto first = full.begin() + (b * T + t0) * D;
    out.insert(out.end(), first, first + Tl * D);
  }
  return out;
}

struct Run {
  Vec y, dx;
  bool scratch_released = true;
};

// Forward and backward of `layer` on x [B, T, D] with upstream gradient dy; dx and the gradients
// start at 0.25 (the contract accumulates), which is subtracted again.
Run run_layer(Sublayer& layer, Backend& be, ParameterStore& store, DType dt, const Vec& x,
              const Vec& dy, i64 B, i64 T, i64 D, const ProcessGroups* groups,
              i64 position_offset) {
  HostTensor xt(dt, Shape{B, T, D}), yt(dt, Shape{B, T, D}), dyt(dt, Shape{B, T, D}),
      dxt(dt, Shape{B, T, D});
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
  std::unique_ptr<Sublayer::Cache> cache = layer.forward(ctx, xt.t(), yt.t(), nullptr);
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

// The global flat index of each element of a parameter slice (a box of the global tensor).
std::vector<i64> global_indices(const ParamSpec& s) {
  const int nd = s.global_shape.ndim();
  std::vector<i64> out(static_cast<std::size_t>(s.shape.numel()));
  std::vector<i64> at(static_cast<std::size_t>(nd), 0);  // local multi-index
  for (std::size_t i = 0; i < out.size(); ++i) {
    i64 g = 0;
    for (int d = 0; d < nd; ++d) {
      g = g * s.global_shape[d] + (s.offset.empty() ? 0 : s.offset[static_cast<std::size_t>(d)]) +
          at[static_cast<std::size_t>(d)];
    }
    out[i] = g;
    for (int d = nd - 1; d >= 0; --d) {
      if (++at[static_cast<std::size_t>(d)] < s.shape[d]) break;
      at[static_cast<std::size_t>(d)] = 0;
    }
  }
  return out;
}

// The attention parameters of a tp rank (tp = 1: the whole ones), random (biases too): each
// element a function of (parameter, global index), so every slice is part of the same tensors.
std::unique_ptr<ParameterStore> make_store(const ModelConfig& m, DType dt, int tp, int tp_rank) {
  ShardingPlan plan;
  plan.tp = tp;
  plan.tp_rank = tp_rank;
  plan.stage_layers = {m.num_layers};
  auto store = std::make_unique<ParameterStore>();
  for (const ShardedParam& p : shard_parameters(m, plan)) {
    if (p.spec.name.rfind(kPrefix, 0) == 0) store->add(p.spec);
  }
  store->allocate(host_allocator(), dt, dt);
  for (int i = 0; i < static_cast<int>(store->size()); ++i) {
    const ParamSpec& s = store->spec(i);
    const Vec all = global_values(s.global_shape.numel(), 100 + static_cast<std::uint64_t>(i));
    const double a =
        std::sqrt(3.0 / static_cast<double>(s.global_shape[s.global_shape.ndim() - 1]));
    const std::vector<i64> idx = global_indices(s);
    const Tensor w = store->param(i);
    for (std::size_t j = 0; j < idx.size(); ++j) {
      const double v = a * all[static_cast<std::size_t>(idx[j])];
      if (dt == DType::f64) {
        w.ptr<double>()[j] = v;
      } else {
        w.ptr<float>()[j] = static_cast<float>(v);
      }
    }
  }
  return store;
}

Vec all_reduce(Communicator& comm, const Vec& v) {
  HostTensor t(DType::f64, Shape{static_cast<i64>(v.size())});
  t.from_f64(v);
  comm.all_reduce(t.t());
  return t.to_f64();
}

void check_case(const CpCase& c, DType dt, const ProcessGroups& groups, double& worst) {
  const ModelConfig m = load_config_from_string(c.yaml, {}, "test_cp_attention").model;
  const Layout& l = groups.layout();
  const int cp = l.cp, r = groups.coords().cp_rank;
  const i64 B = c.B, Tl = c.T_local, T = Tl * cp, D = m.hidden_size;
  std::unique_ptr<Backend> be = make_cpu_backend(1);

  const Vec x = global_values(B * T * D, 7), dy = global_values(B * T * D, 8);
  auto ref_store = make_store(m, dt, 1, 0);
  auto ref_layer = make_attention(m, 0, *ref_store);
  const Run ref = run_layer(*ref_layer, *be, *ref_store, dt, x, dy, B, T, D, nullptr, 0);
  auto par_store = make_store(m, dt, l.tp, groups.coords().tp_rank);
  auto par_layer = make_attention(m, 0, *par_store);
  const Run par = run_layer(*par_layer, *be, *par_store, dt, piece(x, B, T, D, r * Tl, Tl),
                            piece(dy, B, T, D, r * Tl, Tl), B, Tl, D, &groups, r * Tl);

  const double tol = dt == DType::f64 ? 1e-10 : 1e-5;
  // y and dx are partial sums over tp (the model all-reduces them).
  const double ey = rel_error(all_reduce(groups.tp(), par.y), piece(ref.y, B, T, D, r * Tl, Tl));
  const double edx = rel_error(all_reduce(groups.tp(), par.dx), piece(ref.dx, B, T, D, r * Tl, Tl));
  INFO(c.name << " " << dtype_name(dt) << " " << l.str() << " rank " << groups.world().rank()
              << ": y " << ey << ", dx " << edx);
  CHECK(ey < tol);
  CHECK(edx < tol);
  CHECK(par.scratch_released);
  worst = std::max({worst, ey, edx});
  // Gradients: the engine sums them over dp_cp (here: cp); the reference's matching slice.
  for (int i = 0; i < static_cast<int>(par_store->size()); ++i) {
    const ParamSpec& s = par_store->spec(i);
    const Vec gp = all_reduce(groups.dp_cp(), grad_of(*par_store, i));
    const Vec gr_all = grad_of(*ref_store, ref_store->index(s.name));
    Vec gr;
    for (i64 g : global_indices(s)) gr.push_back(gr_all[static_cast<std::size_t>(g)]);
    const double eg = rel_error(gp, gr);
    INFO(s.name << ": relative error " << eg);
    CHECK(eg < tol);
    worst = std::max(worst, eg);
  }
}

TEST_CASE("LASP-2H attention (cp = world; tp2 cp2) matches one rank", "[mpi][attention][cp]") {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  std::vector<Layout> layouts(1);
  layouts[0].cp = world.size();
  if (world.size() == 4) {
    layouts.emplace_back();
    layouts.back().tp = 2;
    layouts.back().cp = 2;
  }
  double worst[2] = {0.0, 0.0};
  for (const Layout& l : layouts) {
    ProcessGroups groups(world, l);
    for (const CpCase& c : kCases) check_case(c, DType::f64, groups, worst[0]);
    for (const CpCase& c : kCases) check_case(c, DType::f32, groups, worst[1]);
  }
  const double w64 = world.all_reduce_max(worst[0]), w32 = world.all_reduce_max(worst[1]);
  if (world.rank() == 0) {
    std::printf("cp attention on %d ranks: worst relative error f64 %.3g, f32 %.3g\n", world.size(),
                w64, w32);
  }
}

}  // namespace
}  // namespace linmoe::testing
