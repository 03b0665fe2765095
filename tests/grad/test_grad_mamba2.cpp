// The mamba2 block (MODEL.md 3 "mamba2" and "mamba2 details"): its backward against central
// finite differences in fp64 (TESTING.md 3) for every parameter and the input, its forward
// against a naive fp64 token-by-token implementation written here, and the accumulate contract
// of layers/layer.h. Groups G = 1, 2, H (head h reads group ⌊h·G/H⌋), conv widths 0..4 with
// T < K, chunk sizes that do and do not divide T.
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
#include "grad/sublayer_harness.h"
#include "layers/sublayers.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;
using Vec = std::vector<double>;

const char* const kPrefix = "layers.0.mixer.";
constexpr i64 kD = 16;

struct Case {
  int G, K, expand, P, N, chunk;  // num_groups, conv_size, expand, head_dim_v, state_size
  i64 B, T;
  i64 d_inner() const { return expand * kD; }
  i64 H() const { return d_inner() / P; }
  std::string name() const {
    return "G=" + std::to_string(G) + " K=" + std::to_string(K) +
           " expand=" + std::to_string(expand) + " P=" + std::to_string(P) +
           " N=" + std::to_string(N) + " H=" + std::to_string(H()) +
           " chunk=" + std::to_string(chunk) + " B=" + std::to_string(B) +
           " T=" + std::to_string(T);
  }
};

ModelConfig model_for(const Case& c) {
  const std::string yaml =
      "model: {vocab_size: 16, hidden_size: " + std::to_string(kD) +
      ", num_layers: 1, layer_pattern: L, attention: {num_heads: 2}, lsm: {type: mamba2, expand: " +
      std::to_string(c.expand) + ", head_dim_v: " + std::to_string(c.P) +
      ", state_size: " + std::to_string(c.N) + ", num_groups: " + std::to_string(c.G) +
      ", conv_size: " + std::to_string(c.K) + ", chunk_size: " + std::to_string(c.chunk) + "}}\n";
  return load_config_from_string(yaml, {}, "test_grad_mamba2").model;
}

std::vector<Case> grad_cases() {
  return {
      {1, 4, 2, 8, 4, 4, 2, 13},  // the default shape of the block
      {2, 4, 2, 8, 4, 4, 2, 7},   // two groups: heads 0,1 read group 0, heads 2,3 group 1
      {1, 0, 2, 8, 4, 4, 2, 13},  // no convolution
      {2, 0, 2, 8, 4, 4, 2, 7},   //
      {4, 3, 2, 8, 3, 5, 2, 13},  // one group per head, odd N, chunk not dividing T
      {2, 4, 1, 4, 5, 16, 2, 3},  // T < K: the conv reaches before the start; one chunk
      {1, 1, 1, 8, 6, 2, 1, 9},   // K = 1: a per-channel scale plus bias
  };
}

// dt in [0.2, 1.4] (through dt_bias = softplus⁻¹(dt)) so the decays exp(dt·A) span strong and
// weak; the harness's default dt ~ 0.05 would barely exercise the recurrence.
void set_dt_bias(testing::SublayerHarness& h, const Case& c) {
  Vec bias(static_cast<std::size_t>(c.H()));
  for (std::size_t i = 0; i < bias.size(); ++i) {
    const double dt = 0.2 + 1.2 * static_cast<double>((i * 5) % bias.size()) /
                                static_cast<double>(std::max<std::size_t>(bias.size() - 1, 1));
    bias[i] = std::log(std::expm1(dt));
  }
  h.set_param(std::string(kPrefix) + "dt_bias", bias);
}

// ---- the oracle: MODEL.md 3 mamba2, token by token, in fp64 ----------------------------------

double silu(double z) {
  return z / (1.0 + std::exp(-z));
}
double softplus(double z) {
  return z > 30 ? z : std::log1p(std::exp(z));
}

Vec oracle_forward(const Case& c, testing::SublayerHarness& h) {
  ParameterStore& p = h.params();
  auto w = [&](const char* name) -> const double* {
    const int i = p.find(std::string(kPrefix) + name);
    return i < 0 ? nullptr : p.param(i).ptr<double>();
  };
  const double* w_in = w("in_proj.weight");
  const double* conv_w = w("conv1d.weight");
  const double* conv_b = w("conv1d.bias");
  const double* dt_bias = w("dt_bias");
  const double* a_log = w("A_log");
  const double* d_skip = w("D");
  const double* norm_w = w("norm.weight");
  const double* w_out = w("out_proj.weight");
  REQUIRE((c.K == 0) == (conv_w == nullptr));
  const double* x = h.input().ptr<double>();
  const i64 DI = c.d_inner(), H = c.H(), P = c.P, N = c.N, G = c.G, K = c.K, GN = G * N;
  const i64 conv_dim = DI + 2 * GN, rows = 2 * DI + 2 * GN + H;
  Vec y(static_cast<std::size_t>(c.B * c.T * kD));
  for (i64 b = 0; b < c.B; ++b) {
    // in_proj of every token of the sequence: [T, rows].
    Vec proj(static_cast<std::size_t>(c.T * rows), 0.0);
    for (i64 t = 0; t < c.T; ++t) {
      for (i64 r = 0; r < rows; ++r) {
        double acc = 0;
        for (i64 j = 0; j < kD; ++j) acc += w_in[r * kD + j] * x[(b * c.T + t) * kD + j];
        proj[static_cast<std::size_t>(t * rows + r)] = acc;
      }
    }
    std::vector<Vec> S(static_cast<std::size_t>(H), Vec(static_cast<std::size_t>(N * P), 0.0));
    for (i64 t = 0; t < c.T; ++t) {
      const double* pt = proj.data() + t * rows;  // [z | xBC | dt]
      // xBC = silu(conv(xBC) + bias), zeros before the sequence start.
      Vec xbc(static_cast<std::size_t>(conv_dim));
      for (i64 ch = 0; ch < conv_dim; ++ch) {
        double v = pt[DI + ch];
        if (K > 0) {
          v = conv_b[ch];
          for (i64 j = 0; j < K; ++j) {
            const i64 s = t - K + 1 + j;
            if (s >= 0)
              v += conv_w[ch * K + j] * proj[static_cast<std::size_t>(s * rows + DI + ch)];
          }
        }
        xbc[static_cast<std::size_t>(ch)] = silu(v);
      }
      const double* xs = xbc.data();
      const double* Bm = xbc.data() + DI;
      const double* Cm = xbc.data() + DI + GN;
      Vec yt(static_cast<std::size_t>(DI));
      for (i64 hh = 0; hh < H; ++hh) {
        const i64 g = hh * G / H;
        const double dt = softplus(pt[2 * DI + 2 * GN + hh] + dt_bias[hh]);
        const double decay = std::exp(-dt * std::exp(a_log[hh]));
        // S_t = exp(dt A) S_{t−1} + dt Bm_t xs_tᵀ;  y_t = S_tᵀ Cm_t + D xs_t.
        Vec& s = S[static_cast<std::size_t>(hh)];
        for (i64 n = 0; n < N; ++n) {
          for (i64 q = 0; q < P; ++q) {
            s[n * P + q] = decay * s[n * P + q] + dt * Bm[g * N + n] * xs[hh * P + q];
          }
        }
        for (i64 q = 0; q < P; ++q) {
          double acc = 0;
          for (i64 n = 0; n < N; ++n) acc += s[n * P + q] * Cm[g * N + n];
          yt[hh * P + q] = acc + d_skip[hh] * xs[hh * P + q];
        }
      }
      // Gated RMSNorm: each group of DI/G channels normalised separately, eps 1e-5.
      for (i64 ch = 0; ch < DI; ++ch) yt[ch] *= silu(pt[ch]);
      const i64 gs = DI / G;
      for (i64 g = 0; g < G; ++g) {
        double ms = 0;
        for (i64 ch = g * gs; ch < (g + 1) * gs; ++ch) ms += yt[ch] * yt[ch];
        const double r = 1.0 / std::sqrt(ms / static_cast<double>(gs) + 1e-5);
        for (i64 ch = g * gs; ch < (g + 1) * gs; ++ch) yt[ch] *= r * norm_w[ch];
      }
      for (i64 o = 0; o < kD; ++o) {
        double acc = 0;
        for (i64 ch = 0; ch < DI; ++ch) acc += w_out[o * DI + ch] * yt[ch];
        y[static_cast<std::size_t>((b * c.T + t) * kD + o)] = acc;
      }
    }
  }
  return y;
}

double rel_err(const Vec& a, const Vec& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace

TEST_CASE("mamba2: forward matches the token-by-token oracle of MODEL.md 3 (fp64)",
          "[grad][mamba2]") {
  std::vector<Case> cases = grad_cases();
  // Beyond the gradient cases: one token, a long sequence over many chunks, chunk 1.
  cases.push_back(Case{2, 4, 2, 8, 4, 4, 3, 1});
  cases.push_back(Case{2, 4, 2, 4, 8, 4, 1, 77});
  cases.push_back(Case{1, 2, 2, 16, 4, 1, 2, 9});
  double max_err = 0;
  for (const Case& c : cases) {
    INFO(c.name());
    testing::SublayerHarness h(model_for(c), 0, kPrefix, make_mamba2, c.B, c.T, /*seed=*/5);
    set_dt_bias(h, c);
    h.loss();
    const Vec got = h.output(), want = oracle_forward(c, h);
    const double err = rel_err(got, want);
    INFO("rel error " << err);
    CHECK(err <= 1e-12);
    max_err = std::max(max_err, err);
  }
  std::printf("mamba2 forward vs oracle: max rel error %.3e over %zu cases\n", max_err,
              cases.size());
}

TEST_CASE("mamba2: backward matches finite differences (fp64)", "[grad][mamba2]") {
  std::map<std::string, double> worst;
  for (const Case& c : grad_cases()) {
    INFO(c.name());
    testing::SublayerHarness h(model_for(c), 0, kPrefix, make_mamba2, c.B, c.T, /*seed=*/11);
    set_dt_bias(h, c);
    const std::vector<testing::GradCheckResult> results = h.check(/*max_probes=*/16, /*h=*/1e-5);
    // in_proj, (conv1d weight and bias,) dt_bias, A_log, D, norm, out_proj, and the input.
    CHECK(results.size() == std::size_t{6} + (c.K > 0 ? 2 : 0) + 1);
    for (const testing::GradCheckResult& r : results) {
      INFO(r.name << ": rel error " << r.rel_error << " over " << r.probed << " probes");
      CHECK(r.rel_error <= 1e-6);
      const std::string key =
          r.name.rfind(kPrefix, 0) == 0 ? r.name.substr(std::string(kPrefix).size()) : r.name;
      worst[key] = std::max(worst[key], r.rel_error);
    }
  }
  std::printf("mamba2 max FD rel error per tensor:\n");
  for (const auto& [name, err] : worst) std::printf("  %-16s %.3e\n", name.c_str(), err);
}

// layers/layer.h: backward ACCUMULATES into dx and the parameter gradients. The harness starts
// both at zero, where overwriting looks the same, so run backward from two starting values.
TEST_CASE("mamba2: backward accumulates into dx and the parameter gradients", "[grad][mamba2]") {
  for (const Case& c : {Case{2, 4, 2, 8, 4, 4, 2, 7}, Case{1, 0, 2, 8, 4, 4, 2, 5}}) {
    INFO(c.name());
    const ModelConfig m = model_for(c);
    testing::SublayerHarness h(m, 0, kPrefix, make_mamba2, c.B, c.T, /*seed=*/3);
    const testing::AccumulationResult r = h.check_accumulation();
    CHECK(r.worst_diff <= 1e-12);
    CHECK(r.scratch_released_after_forward);
    CHECK(r.scratch_released_after_backward);
  }
}

// The training dtype: the same block in f32 (parameters, activations, the host-computed A and the
// stat dtype all switch) against the f64 run of the harness, forward and backward.
TEST_CASE("mamba2: f32 forward and backward agree with f64", "[grad][mamba2]") {
  for (const Case& c : {Case{2, 4, 2, 8, 4, 4, 2, 13}, Case{1, 0, 2, 8, 4, 5, 2, 9}}) {
    INFO(c.name());
    const ModelConfig m = model_for(c);
    testing::SublayerHarness h(m, 0, kPrefix, make_mamba2, c.B, c.T, /*seed=*/7);
    set_dt_bias(h, c);
    Backend& be = h.backend();
    ParameterStore& p64 = h.params();
    ParameterStore p32;
    for (std::size_t i = 0; i < p64.size(); ++i) {
      p32.add(whole_param(p64.spec(static_cast<int>(i)).name, p64.spec(static_cast<int>(i)).shape));
    }
    p32.allocate(host_allocator(), DType::f32, DType::f32);
    for (std::size_t i = 0; i < p64.size(); ++i) {
      be.copy(p64.param(static_cast<int>(i)), p32.param(static_cast<int>(i)));
    }
    const Shape shape{c.B, c.T, kD};
    testing::HostTensor dy64(DType::f64, shape);
    testing::fill_uniform(dy64.t(), 19);

    // One forward + backward per dtype; returns y, dx and every gradient as doubles.
    auto run = [&](ParameterStore& store, DType dt) {
      std::unique_ptr<Sublayer> layer = make_mamba2(m, 0, store);
      Arena saved(host_allocator(), 1 << 18, "saved"), scratch(host_allocator(), 1 << 18, "s");
      LayerContext ctx{be, store, saved, scratch, dt};
      testing::HostTensor x(dt, shape), y(dt, shape), dy(dt, shape), dx(dt, shape);
      be.copy(h.input(), x.t());
      be.copy(dy64.t(), dy.t());
      be.fill(dx.t(), 0.0);
      be.fill(store.flat_grads(), 0.0);
      std::unique_ptr<Sublayer::Cache> cache = layer->forward(ctx, x.t(), y.t(), nullptr);
      layer->backward(ctx, *cache, dy.t(), dx.t());
      std::vector<Vec> out = {y.to_f64(), dx.to_f64()};
      for (std::size_t i = 0; i < store.size(); ++i) {
        const Tensor g = store.grad(static_cast<int>(i));
        testing::HostTensor g64(DType::f64, g.shape);
        be.copy(g, g64.t());
        out.push_back(g64.to_f64());
      }
      return out;
    };
    const std::vector<Vec> want = run(p64, DType::f64), got = run(p32, DType::f32);
    REQUIRE(want.size() == got.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      INFO("tensor " << i << " (0: y, 1: dx, then the parameters' gradients in store order)");
      // f32 through a recurrence, a norm and a GEMM chain: a few f32 ulps of the outputs' scale.
      CHECK(rel_err(got[i], want[i]) <= 1e-5);
    }
  }
}

TEST_CASE("mamba2: parameter names and shapes of MODEL.md 3", "[grad][mamba2]") {
  // D = 16, expand 2, P 8: d_inner 32, H 4; N 4, G 2: 2GN = 16; in_proj rows 2·32 + 16 + 4.
  const Case c{2, 4, 2, 8, 4, 4, 1, 1};
  testing::SublayerHarness h(model_for(c), 0, kPrefix, make_mamba2, 1, 1);
  const std::map<std::string, Shape> want = {{"in_proj.weight", {84, 16}},
                                             {"conv1d.weight", {48, 1, 4}},
                                             {"conv1d.bias", {48}},
                                             {"dt_bias", {4}},
                                             {"A_log", {4}},
                                             {"D", {4}},
                                             {"norm.weight", {32}},
                                             {"out_proj.weight", {16, 32}}};
  CHECK(h.params().size() == want.size());
  for (const auto& [name, shape] : want) {
    INFO(name);
    const int i = h.params().find(std::string(kPrefix) + name);
    REQUIRE(i >= 0);
    CHECK(h.params().spec(i).shape == shape);
  }
}

}  // namespace linmoe
