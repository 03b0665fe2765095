// The softmax attention mixer ('N', layers/attention.cpp) in fp64 on the CPU backend: every
// parameter's and the input's gradient against central finite differences (TESTING.md 3), the
// forward against a naive implementation of MODEL.md 2 written here (projections, the RoPE
// formula, full causal softmax rows), global RoPE positions, and the backward's accumulation
// contract (layers/layer.h: dx += and parameter gradients +=).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/config.h"
#include "core/memory.h"
#include "grad/sublayer_harness.h"
#include "layers/sublayers.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;
using Vec = std::vector<double>;

constexpr double kGradTolerance = 1e-6;     // TESTING.md 3: FD vs analytic, fp64
constexpr double kOracleTolerance = 1e-12;  // fp64 forward vs the naive oracle
const char* const kPrefix = "layers.0.mixer.";

struct AttnCase {
  const char* name;
  const char* yaml;
  i64 B, T;
};

// GQA and MHA (and MQA), bias on and off, T not a multiple of anything, a head_dim with
// Hq·d ≠ D so o_proj's shape is not square.
const AttnCase kCases[] = {
    {"gqa, no bias, T=7",
     "model: {hidden_size: 32, num_layers: 1, layer_pattern: N, "
     "attention: {num_heads: 4, num_kv_heads: 2}}",
     2, 7},
    {"gqa, bias, T=13",
     "model: {hidden_size: 32, num_layers: 1, layer_pattern: N, "
     "attention: {num_heads: 4, num_kv_heads: 2, qkv_bias: true}}",
     2, 13},
    {"mha, no bias, T=13",
     "model: {hidden_size: 32, num_layers: 1, layer_pattern: N, attention: {num_heads: 4}}", 2, 13},
    {"mha, bias, T=7",
     "model: {hidden_size: 32, num_layers: 1, layer_pattern: N, "
     "attention: {num_heads: 4, qkv_bias: true}}",
     2, 7},
    {"mqa, bias, head_dim 6, theta 500, T=13",
     "model: {hidden_size: 20, num_layers: 1, layer_pattern: N, "
     "attention: {num_heads: 6, num_kv_heads: 1, head_dim: 6, rope_theta: 500, qkv_bias: true}, "
     "lsm: {num_heads: 4}}",
     2, 13},
    {"gqa 6/3, head_dim 10, T=5",
     "model: {hidden_size: 24, num_layers: 1, layer_pattern: N, "
     "attention: {num_heads: 6, num_kv_heads: 3, head_dim: 10}}",
     2, 5},
};

ModelConfig model_config(const char* yaml) {
  return load_config_from_string(yaml, {}, "test_grad_attention").model;
}

Vec values(const Tensor& t) {
  const double* p = t.ptr<double>();
  return Vec(p, p + t.numel());
}

Vec param(ParameterStore& s, const std::string& name) {
  const int i = s.find(kPrefix + name);
  return i < 0 ? Vec{} : values(s.param(i));
}

// MODEL.md 2 written out: y[b, t] for x [B, T, D] with the store's parameters, token t at global
// position position_offset + t, keys the same tokens.
Vec naive_attention(const ModelConfig& m, ParameterStore& s, const Vec& x, i64 B, i64 T,
                    i64 position_offset) {
  const i64 D = m.hidden_size, Hq = m.attention.num_heads, Hkv = m.attention.num_kv_heads,
            d = m.attention.head_dim;
  const Vec wq = param(s, "q_proj.weight"), wk = param(s, "k_proj.weight"),
            wv = param(s, "v_proj.weight"), wo = param(s, "o_proj.weight");
  const Vec bq = param(s, "q_proj.bias"), bk = param(s, "k_proj.bias"),
            bv = param(s, "v_proj.bias");
  REQUIRE(bq.empty() == !m.attention.qkv_bias);

  // z[b, t, r] = Σ_c x[b, t, c] W[r, c] + b[r], rows r = head·d + j.
  auto project = [&](const Vec& w, const Vec& bias, i64 rows) {
    Vec z(static_cast<std::size_t>(B * T * rows));
    for (i64 n = 0; n < B * T; ++n) {
      for (i64 r = 0; r < rows; ++r) {
        double acc = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(r)];
        for (i64 c = 0; c < D; ++c) {
          acc += x[static_cast<std::size_t>(n * D + c)] * w[static_cast<std::size_t>(r * D + c)];
        }
        z[static_cast<std::size_t>(n * rows + r)] = acc;
      }
    }
    return z;
  };
  // Rotate-half RoPE: (x_j, x_{j+d/2}) by the angle pos·θ_j, θ_j = theta^(−2j/d).
  auto rope = [&](Vec& z, i64 heads) {
    for (i64 b = 0; b < B; ++b) {
      for (i64 t = 0; t < T; ++t) {
        const double pos = static_cast<double>(position_offset + t);
        for (i64 h = 0; h < heads; ++h) {
          double* u = z.data() + ((b * T + t) * heads + h) * d;
          for (i64 j = 0; j < d / 2; ++j) {
            const double theta =
                std::pow(m.attention.rope_theta, -2.0 * static_cast<double>(j) / double(d));
            const double cs = std::cos(pos * theta), sn = std::sin(pos * theta);
            const double a = u[j], c = u[j + d / 2];
            u[j] = a * cs - c * sn;
            u[j + d / 2] = c * cs + a * sn;
          }
        }
      }
    }
  };
  Vec q = project(wq, bq, Hq * d), k = project(wk, bk, Hkv * d), v = project(wv, bv, Hkv * d);
  rope(q, Hq);
  rope(k, Hkv);

  // o_t = Σ_{s≤t} softmax_s(q_t·k_s/√d) v_s; query head h reads kv head ⌊h·Hkv/Hq⌋.
  Vec o(static_cast<std::size_t>(B * T * Hq * d), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  for (i64 b = 0; b < B; ++b) {
    for (i64 h = 0; h < Hq; ++h) {
      const i64 g = h * Hkv / Hq;
      for (i64 t = 0; t < T; ++t) {
        const double* qt = q.data() + ((b * T + t) * Hq + h) * d;
        Vec logit(static_cast<std::size_t>(t + 1));
        double mx = -std::numeric_limits<double>::infinity();
        for (i64 s2 = 0; s2 <= t; ++s2) {
          const double* ks = k.data() + ((b * T + s2) * Hkv + g) * d;
          double dot = 0;
          for (i64 j = 0; j < d; ++j) dot += qt[j] * ks[j];
          logit[static_cast<std::size_t>(s2)] = dot * scale;
          mx = std::max(mx, dot * scale);
        }
        double sum = 0;
        for (double& l : logit) sum += (l = std::exp(l - mx));
        double* ot = o.data() + ((b * T + t) * Hq + h) * d;
        for (i64 s2 = 0; s2 <= t; ++s2) {
          const double p = logit[static_cast<std::size_t>(s2)] / sum;
          const double* vs = v.data() + ((b * T + s2) * Hkv + g) * d;
          for (i64 j = 0; j < d; ++j) ot[j] += p * vs[j];
        }
      }
    }
  }
  // y = concat_h(o) o_projᵀ, o_proj [D, Hq·d].
  Vec y(static_cast<std::size_t>(B * T * D));
  for (i64 n = 0; n < B * T; ++n) {
    for (i64 c = 0; c < D; ++c) {
      double acc = 0;
      for (i64 r = 0; r < Hq * d; ++r) {
        acc += o[static_cast<std::size_t>(n * Hq * d + r)] *
               wo[static_cast<std::size_t>(c * Hq * d + r)];
      }
      y[static_cast<std::size_t>(n * D + c)] = acc;
    }
  }
  return y;
}

// A forward (and optionally backward) of the sublayer on the harness's parameters and input, in
// our own context so position_offset and the accumulation contract can be set and observed.
struct OwnRun {
  Arena saved{host_allocator(), 1 << 20, "test saved"};
  Arena scratch{host_allocator(), 1 << 20, "test scratch"};
  testing::HostTensor y, dx;
  OwnRun(i64 B, i64 T, i64 D) : y(DType::f64, Shape{B, T, D}), dx(DType::f64, Shape{B, T, D}) {}
};

TEST_CASE("attention mixer: gradients match central finite differences", "[grad][attention]") {
  for (const AttnCase& c : kCases) {
    const ModelConfig m = model_config(c.yaml);
    testing::SublayerHarness h(m, 0, kPrefix, make_attention, c.B, c.T, /*seed=*/11);
    const std::vector<testing::GradCheckResult> results = h.check(/*max_probes=*/48);
    const std::size_t expected = m.attention.qkv_bias ? 8u : 5u;  // parameters + input
    CHECK(results.size() == expected);
    std::printf("%-40s", c.name);
    for (const testing::GradCheckResult& r : results) {
      INFO(c.name << ": " << r.name << " rel error " << r.rel_error << " over " << r.probed
                  << " probes");
      CHECK(r.probed > 0);
      CHECK(r.rel_error <= kGradTolerance);
      const std::string short_name =
          r.name.rfind(kPrefix, 0) == 0 ? r.name.substr(std::string(kPrefix).size()) : r.name;
      std::printf(" %s %.1e", short_name.c_str(), r.rel_error);
    }
    std::printf("\n");
  }
}

TEST_CASE("attention mixer: forward equals the naive MODEL.md 2 oracle", "[grad][attention]") {
  for (const AttnCase& c : kCases) {
    const ModelConfig m = model_config(c.yaml);
    testing::SublayerHarness h(m, 0, kPrefix, make_attention, c.B, c.T, /*seed=*/5);
    h.loss();
    const Vec y = h.output();
    const Vec ref = naive_attention(m, h.params(), values(h.input()), c.B, c.T, 0);
    INFO(c.name << ": rel error " << testing::rel_error(y, ref));
    CHECK(testing::rel_error(y, ref) <= kOracleTolerance);
    // The output is not trivially small (the comparison means something).
    double sq = 0;
    for (double v : ref) sq += v * v;
    CHECK(std::sqrt(sq / double(ref.size())) > 1e-2);
  }
}

TEST_CASE("attention mixer: RoPE at global positions, backward accumulates, scratch rewound",
          "[grad][attention]") {
  const AttnCase& c = kCases[1];  // GQA with biases: every parameter kind
  const ModelConfig m = model_config(c.yaml);
  testing::SublayerHarness h(m, 0, kPrefix, make_attention, c.B, c.T, /*seed=*/3);
  ParameterStore& store = h.params();
  Backend& be = h.backend();
  const i64 D = m.hidden_size;
  std::unique_ptr<Sublayer> layer = make_attention(m, 0, store);

  OwnRun run(c.B, c.T, D);
  LayerContext ctx{be, store, run.saved, run.scratch, DType::f64};
  ctx.position_offset = 37;  // as on a later context-parallel rank (keys still local here)

  testing::poison(run.y.t());  // forward must overwrite y
  std::unique_ptr<Sublayer::Cache> cache = layer->forward(ctx, h.input(), run.y.t(), nullptr);
  CHECK(run.scratch.used() == 0);
  const Vec y = values(run.y.t());
  const Vec ref = naive_attention(m, store, values(h.input()), c.B, c.T, 37);
  CHECK(testing::rel_error(y, ref) <= kOracleTolerance);

  // Backward twice on the same cache, the second time onto non-zero dx and gradients: the
  // second call must add exactly what the first produced.
  testing::HostTensor dy(DType::f64, Shape{c.B, c.T, D});
  testing::fill_uniform(dy.t(), 99);
  be.fill(store.flat_grads(), 0.0);
  be.fill(run.dx.t(), 0.0);
  layer->backward(ctx, *cache, dy.t(), run.dx.t());
  CHECK(run.scratch.used() == 0);
  const Vec dx1 = values(run.dx.t()), g1 = values(store.flat_grads());
  layer->backward(ctx, *cache, dy.t(), run.dx.t());
  const Vec dx2 = values(run.dx.t()), g2 = values(store.flat_grads());
  Vec twice_dx(dx1.size()), twice_g(g1.size());
  for (std::size_t i = 0; i < dx1.size(); ++i) twice_dx[i] = 2 * dx1[i];
  for (std::size_t i = 0; i < g1.size(); ++i) twice_g[i] = 2 * g1[i];
  CHECK(testing::rel_error(dx2, twice_dx) <= 1e-14);
  CHECK(testing::rel_error(g2, twice_g) <= 1e-14);
  double sq = 0;
  for (double v : g1) sq += v * v;
  CHECK(sq > 0);

  // The saved tensors live in `saved` only: the caller may overwrite x after forward.
  const Vec x_orig = values(h.input());
  be.fill(run.dx.t(), 0.0);
  be.fill(store.flat_grads(), 0.0);
  std::unique_ptr<Sublayer::Cache> cache2 = layer->forward(ctx, h.input(), run.y.t(), nullptr);
  be.fill(h.input(), 1e3);
  layer->backward(ctx, *cache2, dy.t(), run.dx.t());
  CHECK(testing::rel_error(values(run.dx.t()), dx1) <= 1e-14);
  CHECK(testing::rel_error(values(store.flat_grads()), g1) <= 1e-14);
  for (std::size_t i = 0; i < x_orig.size(); ++i) h.input().ptr<double>()[i] = x_orig[i];
}

}  // namespace
}  // namespace linmoe
