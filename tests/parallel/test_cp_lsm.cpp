// Context parallelism of every LSM family (PARALLEL.md, LASP-2; layers/lasp2.h) against one
// rank. Every rank builds the same mixer with whole parameters, runs the one-rank reference on
// the whole sequences (ctx.groups = nullptr), then the cp version on its contiguous piece with
// the world as one cp group, and compares its piece of the output and of dx, and the parameter
// gradients summed over cp, with the reference: fp64 to 1e-10, fp32 to 1e-5 (relative L2 per
// tensor). Pieces are not multiples of the chunk (one is shorter than a chunk), B = 2, several
// heads, conv_size 4 for the delta rules and mamba2 (halo exchange), and strong finite decays.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/config.h"
#include "core/memory.h"
#include "core/parameter_store.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"
#include "layers/layer.h"
#include "layers/model_spec.h"
#include "layers/sublayers.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;
using Vec = std::vector<double>;
using testing::HostTensor;

const char* const kPrefix = "layers.0.mixer.";
constexpr i64 kD = 12;

struct Case {
  std::string type;  // lsm.type
  int H, dk, dv;     // wrapper heads and head dims (mamba2: H = expand·D/dv, dk = state_size)
  int conv;          // lsm.conv_size (delta rules, mamba2)
  int chunk;
  i64 B, T_local;  // tokens per rank and sequence
  bool strong;     // decays of several nats per token
  bool mamba2() const { return type == "mamba2"; }
  bool delta() const { return type == "deltanet" || type == "gated_deltanet"; }
  std::string name() const {
    return type + " H=" + std::to_string(H) + " dk=" + std::to_string(dk) +
           " dv=" + std::to_string(dv) + " conv=" + std::to_string(conv) +
           " chunk=" + std::to_string(chunk) + " B=" + std::to_string(B) +
           " T_local=" + std::to_string(T_local) + (strong ? " strong decay" : "");
  }
};

ModelConfig model_for(const Case& c) {
  std::string lsm;
  if (c.mamba2()) {
    lsm = "type: mamba2, expand: 2, head_dim_v: " + std::to_string(c.dv) +
          ", state_size: " + std::to_string(c.dk) +
          ", num_groups: 2, conv_size: " + std::to_string(c.conv) +
          ", chunk_size: " + std::to_string(c.chunk);
  } else {
    lsm = "type: " + c.type + ", num_heads: " + std::to_string(c.H) +
          ", head_dim_k: " + std::to_string(c.dk) + ", head_dim_v: " + std::to_string(c.dv) +
          ", output_gate: " + (c.type == "hgrn2" ? "false" : "true") +
          ", chunk_size: " + std::to_string(c.chunk);
    if (c.delta()) lsm += ", conv_size: " + std::to_string(c.conv);
  }
  const std::string yaml = "model: {vocab_size: 16, hidden_size: " + std::to_string(kD) +
                           ", num_layers: 1, layer_pattern: L, attention: {num_heads: 2}, lsm: {" +
                           lsm + "}}\n";
  return load_config_from_string(yaml, {}, "test_cp_lsm").model;
}

std::vector<Case> cases() {
  return {
      {"linear_attention", 2, 4, 6, 0, 4, 2, 7, false},
      {"lightning", 3, 4, 4, 0, 4, 2, 7, false},
      {"lightning", 2, 4, 3, 0, 8, 2, 3, false},  // a piece shorter than one chunk
      {"retention", 4, 3, 3, 0, 4, 2, 6, false},
      {"gla", 2, 4, 6, 0, 4, 2, 7, false},
      {"gla", 2, 4, 6, 0, 4, 2, 7, true},
      {"hgrn2", 3, 4, 3, 0, 4, 2, 7, false},
      {"deltanet", 2, 4, 6, 4, 4, 2, 7, false},
      {"deltanet", 3, 4, 3, 0, 4, 2, 5, false},
      {"gated_deltanet", 3, 4, 3, 4, 4, 2, 7, false},
      {"gated_deltanet", 2, 4, 6, 4, 4, 2, 7, true},
      {"mamba2", 4, 5, 6, 4, 4, 2, 7, false},
      {"mamba2", 4, 5, 6, 4, 4, 2, 6, true},
  };
}

// Random values that keep activations O(1) (as tests/grad/sublayer_harness.cpp), identical on
// every rank: they depend only on the seed and the name.
Vec param_values(const ModelParam& p, std::uint64_t seed) {
  CounterRng rng(seed, p.name);
  Vec v(static_cast<std::size_t>(p.shape.numel()));
  const i64 fan_in = p.shape[p.shape.ndim() - 1];
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double u = rng.uniform(static_cast<std::uint64_t>(i));
    switch (p.init) {
      case InitKind::ones:
        v[i] = 1.0 + 0.4 * (u - 0.5);
        break;
      case InitKind::mamba_a_log:
        v[i] = std::log(1.0 + 3.0 * u);
        break;
      case InitKind::mamba_dt_bias: {
        const double dt = 0.01 + 0.09 * u;
        v[i] = dt + std::log(-std::expm1(-dt));  // softplus⁻¹(dt)
        break;
      }
      case InitKind::zeros:
        v[i] = 0.2 * (u - 0.5);
        break;
      default:
        v[i] = (2.0 * u - 1.0) * std::sqrt(3.0 / double(fan_in));
    }
  }
  return v;
}

// Strong but finite decays: gla log α ≈ −2.5 per token and channel; gated_deltanet and mamba2
// A = −20 with dt ≈ 0.2, log α ≈ −4 per token.
void make_strong(const Case& c, const std::string& name, Vec& v) {
  const double sp_inv = 0.2 + std::log(-std::expm1(-0.2));  // softplus⁻¹(0.2)
  const std::string local = name.substr(std::string(kPrefix).size());
  if (c.type == "gla" && local == "gk_proj.1.bias") std::fill(v.begin(), v.end(), -40.0);
  if ((c.type == "gated_deltanet" || c.mamba2()) && local == "A_log") {
    std::fill(v.begin(), v.end(), std::log(20.0));
  }
  if ((c.type == "gated_deltanet" || c.mamba2()) && local == "dt_bias") {
    std::fill(v.begin(), v.end(), sp_inv);
  }
}

// Rows [t0, t0 + n) of every sequence of a [B, T, D] array.
Vec piece(const Vec& full, i64 B, i64 T, i64 t0, i64 n) {
  Vec out;
  for (i64 b = 0; b < B; ++b) {
    const auto first = full.begin() + (b * T + t0) * kD;
    out.insert(out.end(), first, first + n * kD);
  }
  return out;
}

// y, dx, then every parameter gradient in store order (as doubles).
struct Run {
  Vec y, dx;
  std::vector<Vec> grads;
};

class Fixture {
 public:
  Fixture(const Case& c, DType dt) : c_(c), m_(model_for(c)), dt_(dt), be_(make_cpu_backend(1)) {
    std::vector<ModelParam> specs;
    for (const ModelParam& p : model_parameters(m_)) {
      if (p.name.rfind(kPrefix, 0) == 0) {
        store_.add(whole_param(p.name, p.shape));
        specs.push_back(p);
      }
    }
    store_.allocate(host_allocator(), dt, dt);
    for (std::size_t i = 0; i < specs.size(); ++i) {
      Vec v = param_values(specs[i], 17);
      if (c.strong) make_strong(c, specs[i].name, v);
      HostTensor h(DType::f64, specs[i].shape);
      h.from_f64(v);
      be_->copy(h.t(), store_.param(static_cast<int>(i)));
    }
    layer_ = make_lsm(m_, 0, store_);
    saved_ = Arena(host_allocator(), 1 << 20, "cp saved");
    scratch_ = Arena(host_allocator(), 1 << 20, "cp scratch");
  }

  // One forward + backward of x, dy [B, T, D] (as doubles) with the given groups.
  Run run(const Vec& x, const Vec& dy, i64 T, const ProcessGroups* groups, i64 offset) {
    const Shape shape{c_.B, T, kD};
    HostTensor xt(dt_, shape), yt(dt_, shape), dyt(dt_, shape), dxt(dt_, shape);
    xt.from_f64(x);
    dyt.from_f64(dy);
    testing::poison(yt.t());
    be_->fill(dxt.t(), 0.0);
    be_->fill(store_.flat_grads(), 0.0);
    saved_.reset();
    scratch_.reset();
    LayerContext ctx{*be_, store_, saved_, scratch_, dt_};
    ctx.groups = groups;
    ctx.position_offset = offset;
    std::unique_ptr<Sublayer::Cache> cache = layer_->forward(ctx, xt.t(), yt.t(), nullptr);
    CHECK(scratch_.used() == 0);
    layer_->backward(ctx, *cache, dyt.t(), dxt.t());
    CHECK(scratch_.used() == 0);
    cache.reset();
    // Every rank of the cp group holds whole parameters: the gradient is the sum of the pieces'.
    if (groups) groups->cp().all_reduce(store_.flat_grads());
    Run r{yt.to_f64(), dxt.to_f64(), {}};
    for (std::size_t i = 0; i < store_.size(); ++i) {
      const Tensor g = store_.grad(static_cast<int>(i));
      HostTensor g64(DType::f64, g.shape);
      be_->copy(g, g64.t());
      r.grads.push_back(g64.to_f64());
    }
    return r;
  }

  std::string param_name(std::size_t i) const { return store_.spec(static_cast<int>(i)).name; }

 private:
  Case c_;
  ModelConfig m_;
  DType dt_;
  std::unique_ptr<Backend> be_;
  ParameterStore store_;
  std::unique_ptr<Sublayer> layer_;
  Arena saved_, scratch_;
};

struct Errors {
  double y = 0, dx = 0, grad = 0;  // relative L2 errors; grad: the worst parameter
};

Errors compare_case(const Case& c, DType dt, const ProcessGroups& groups) {
  const int cp = groups.layout().cp, r = groups.coords().cp_rank;
  const i64 T = c.T_local * cp, n = c.B * T * kD;
  HostTensor x(DType::f64, {c.B, T, kD}), dy(DType::f64, {c.B, T, kD});
  testing::fill_uniform(x.t(), 101);
  testing::fill_uniform(dy.t(), 202);
  const Vec xv = x.to_f64(), dyv = dy.to_f64();
  REQUIRE(static_cast<i64>(xv.size()) == n);

  Fixture f(c, dt);
  const Run ref = f.run(xv, dyv, T, nullptr, 0);
  const i64 t0 = r * c.T_local;
  const Run got = f.run(piece(xv, c.B, T, t0, c.T_local), piece(dyv, c.B, T, t0, c.T_local),
                        c.T_local, &groups, t0);

  Errors e;
  e.y = testing::rel_error(got.y, piece(ref.y, c.B, T, t0, c.T_local));
  e.dx = testing::rel_error(got.dx, piece(ref.dx, c.B, T, t0, c.T_local));
  const double tol = dt == DType::f64 ? 1e-10 : 1e-5;
  CHECK(e.y <= tol);
  CHECK(e.dx <= tol);
  for (std::size_t i = 0; i < ref.grads.size(); ++i) {
    const double err = testing::rel_error(got.grads[i], ref.grads[i]);
    INFO("gradient of " << f.param_name(i));
    CHECK(err <= tol);
    e.grad = std::max(e.grad, err);
  }
  return e;
}

double max_over_ranks(double v) {
  double out = v;
  MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

TEST_CASE("LASP-2: every LSM family on cp pieces matches one rank (fp64 and fp32)",
          "[mpi][cp][lsm]") {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  Layout layout;
  layout.cp = world.size();
  ProcessGroups groups(world, layout);
  for (const Case& c : cases()) {
    for (DType dt : {DType::f64, DType::f32}) {
      INFO(c.name() << " " << dtype_name(dt) << " cp=" << layout.cp
                    << " rank=" << groups.coords().cp_rank);
      const Errors e = compare_case(c, dt, groups);
      const double y = max_over_ranks(e.y), dx = max_over_ranks(e.dx), g = max_over_ranks(e.grad);
      if (world.rank() == 0) {
        std::printf("cp=%d %-42s %s  rel err y %.2e  dx %.2e  grads %.2e\n", layout.cp,
                    c.name().c_str(), dtype_name(dt), y, dx, g);
      }
    }
  }
}

}  // namespace
}  // namespace linmoe
