// The FFN sublayers (MODEL.md 1 dense SwiGLU, MODEL.md 4 MoE block): fp64 gradients against
// central finite differences, routing cases with hand-set routers and hand-computed answers, and a
// naive fp64 oracle of MODEL.md 4 against the MoE sublayer's forward and statistics.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "common/test_util.h"
#include "grad/sublayer_harness.h"
#include "layers/sublayers.h"

namespace linmoe::testing {
namespace {

const std::string kPrefix = "layers.0.ffn.";

struct MoeCase {
  int E = 4, k = 2, D = 6, F = 5, Fs = 0;
  bool norm = false;
  double aux = 0.01, z = 0.001;
  std::string capacity;  // the decimal text of moe.capacity_factor; empty = dropless
};

MoeCase moe_case(int E, int k, int D, int F, int Fs, bool norm, std::string capacity = "") {
  MoeCase c;
  c.E = E;
  c.k = k;
  c.D = D;
  c.F = F;
  c.Fs = Fs;
  c.norm = norm;
  c.capacity = std::move(capacity);
  return c;
}

ModelConfig moe_model(const MoeCase& c) {
  ModelConfig m;
  m.hidden_size = c.D;
  m.num_layers = 1;
  m.layer_pattern = "N";
  m.ffn_hidden_size = c.F;
  m.moe.num_experts = c.E;
  m.moe.top_k = c.k;
  m.moe.ffn_hidden_size = c.F;
  m.moe.shared_ffn_hidden_size = c.Fs;
  m.moe.norm_topk_prob = c.norm;
  m.moe.aux_loss_coeff = c.aux;
  m.moe.z_loss_coeff = c.z;
  if (!c.capacity.empty()) {
    m.moe.capacity_factor = std::stod(c.capacity);
    m.moe.capacity_factor_text = c.capacity;
  }
  return m;
}

ModelConfig dense_model(int D, int F) {
  ModelConfig m;
  m.hidden_size = D;
  m.num_layers = 1;
  m.layer_pattern = "N";
  m.ffn_hidden_size = F;
  return m;
}

const double* param(SublayerHarness& h, const std::string& name) {
  ParameterStore& s = h.params();
  return s.param(s.index(kPrefix + name)).ptr<double>();
}

double silu(double v) {
  return v / (1.0 + std::exp(-v));
}
double sigmoid(double v) {
  return 1.0 / (1.0 + std::exp(-v));
}

// SwiGLU(x) = (silu(x w1ᵀ) ⊙ (x w3ᵀ)) w2ᵀ for one token; w1, w3 [F, D], w2 [D, F].
std::vector<double> ref_swiglu(const double* x, const double* w1, const double* w3,
                               const double* w2, int D, int F) {
  std::vector<double> h(static_cast<std::size_t>(F)), y(static_cast<std::size_t>(D), 0.0);
  for (int f = 0; f < F; ++f) {
    double a = 0, b = 0;
    for (int d = 0; d < D; ++d) {
      a += w1[f * D + d] * x[d];
      b += w3[f * D + d] * x[d];
    }
    h[f] = silu(a) * b;
  }
  for (int d = 0; d < D; ++d) {
    for (int f = 0; f < F; ++f) y[d] += w2[d * F + f] * h[f];
  }
  return y;
}

// Routed expert e of the harness's MoE on token x.
std::vector<double> ref_expert(SublayerHarness& h, const MoeCase& c, int e, const double* x) {
  const std::size_t FD = static_cast<std::size_t>(c.F) * c.D;
  return ref_swiglu(x, param(h, "experts.w1") + e * FD, param(h, "experts.w3") + e * FD,
                    param(h, "experts.w2") + e * FD, c.D, c.F);
}

// sigmoid(x shared_gateᵀ) · SwiGLU_shared(x), or zeros without a shared expert.
std::vector<double> ref_shared(SublayerHarness& h, const MoeCase& c, const double* x) {
  if (c.Fs == 0) return std::vector<double>(static_cast<std::size_t>(c.D), 0.0);
  std::vector<double> s = ref_swiglu(x, param(h, "shared.w1.weight"), param(h, "shared.w3.weight"),
                                     param(h, "shared.w2.weight"), c.D, c.Fs);
  double gl = 0;
  for (int d = 0; d < c.D; ++d) gl += param(h, "shared_gate.weight")[d] * x[d];
  for (double& v : s) v *= sigmoid(gl);
  return s;
}

// MODEL.md 4, naively in fp64: the output, the statistics, and how close the routing is to a
// flip (the smallest top-k or capacity gap in p), so finite differences can be trusted.
struct Oracle {
  std::vector<double> y;     // [N, D]
  std::vector<double> load;  // [E] f_e, before dropping
  double aux = 0, z = 0;
  int dropped = 0;
  double margin = std::numeric_limits<double>::infinity();
};

Oracle ref_moe(SublayerHarness& h, const MoeCase& c, std::int64_t capacity /* -1: dropless */) {
  const int D = c.D, E = c.E, k = c.k;
  const int N = static_cast<int>(h.input().numel() / D);
  const double* x = h.input().ptr<double>();
  const double* router = param(h, "router.weight");
  Oracle o;
  std::vector<double> p(static_cast<std::size_t>(N * E));
  std::vector<int> ids(static_cast<std::size_t>(N * k));
  std::vector<double> w(static_cast<std::size_t>(N * k));
  std::vector<double> P(static_cast<std::size_t>(E), 0.0);
  o.load.assign(static_cast<std::size_t>(E), 0.0);
  for (int t = 0; t < N; ++t) {
    std::vector<double> l(static_cast<std::size_t>(E));
    for (int e = 0; e < E; ++e) {
      l[e] = 0;
      for (int d = 0; d < D; ++d) l[e] += router[e * D + d] * x[t * D + d];
    }
    const double mx = *std::max_element(l.begin(), l.end());
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += std::exp(l[e] - mx);
    const double lse = mx + std::log(sum);
    o.z += lse * lse / N;
    for (int e = 0; e < E; ++e) {
      p[t * E + e] = std::exp(l[e] - lse);
      P[e] += p[t * E + e] / N;
    }
    std::vector<int> idx(static_cast<std::size_t>(E));
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](int a, int b) {
      return p[t * E + a] > p[t * E + b] || (p[t * E + a] == p[t * E + b] && a < b);
    });
    if (k < E) o.margin = std::min(o.margin, p[t * E + idx[k - 1]] - p[t * E + idx[k]]);
    double S = 0;
    for (int s = 0; s < k; ++s) S += p[t * E + idx[s]];
    for (int s = 0; s < k; ++s) {
      ids[t * k + s] = idx[s];
      w[t * k + s] = c.norm ? p[t * E + idx[s]] / S : p[t * E + idx[s]];
      o.load[idx[s]] += 1.0 / (N * k);
    }
  }
  for (int e = 0; e < E; ++e) o.aux += E * o.load[e] * P[e];
  // Capacity: per expert, the highest p kept, ties to the lower token.
  std::vector<int> keep(static_cast<std::size_t>(N * k), 1);
  if (capacity >= 0) {
    for (int e = 0; e < E; ++e) {
      std::vector<int> mine;  // assignments t·k + s
      for (int a = 0; a < N * k; ++a) {
        if (ids[a] == e) mine.push_back(a);
      }
      std::sort(mine.begin(), mine.end(), [&](int a, int b) {
        const double pa = p[(a / k) * E + e], pb = p[(b / k) * E + e];
        return pa > pb || (pa == pb && a < b);
      });
      for (std::size_t j = static_cast<std::size_t>(capacity); j < mine.size(); ++j) {
        keep[mine[j]] = 0;
        ++o.dropped;
      }
      if (capacity > 0 && static_cast<std::size_t>(capacity) < mine.size()) {
        o.margin = std::min(o.margin,
                            p[(mine[capacity - 1] / k) * E + e] - p[(mine[capacity] / k) * E + e]);
      }
    }
  }
  o.y.assign(static_cast<std::size_t>(N * D), 0.0);
  for (int t = 0; t < N; ++t) {
    const double* xt = x + t * D;
    std::vector<double> yt = ref_shared(h, c, xt);
    for (int s = 0; s < k; ++s) {
      if (!keep[t * k + s]) continue;  // a dropped assignment contributes nothing
      const std::vector<double> ye = ref_expert(h, c, ids[t * k + s], xt);
      for (int d = 0; d < D; ++d) yt[d] += w[t * k + s] * ye[d];
    }
    std::copy(yt.begin(), yt.end(), o.y.begin() + t * D);
  }
  return o;
}

// Router weights [E, D] from the logits each basis token should get: column t of the router is
// the logit vector of token x_t = e_t.
std::vector<double> router_from_columns(const std::vector<std::vector<double>>& cols, int E,
                                        int D) {
  std::vector<double> w(static_cast<std::size_t>(E * D), 0.0);
  for (std::size_t t = 0; t < cols.size(); ++t) {
    for (int e = 0; e < E; ++e) w[e * D + t] = cols[t][e];
  }
  return w;
}

void set_basis_input(SublayerHarness& h, int D) {
  double* x = h.input().ptr<double>();
  const std::int64_t N = h.input().numel() / D;
  for (std::int64_t t = 0; t < N; ++t) {
    for (int d = 0; d < D; ++d) x[t * D + d] = (d == t) ? 1.0 : 0.0;
  }
}

std::vector<double> softmax(const std::vector<double>& l) {
  std::vector<double> p(l.size());
  double sum = 0;
  for (double v : l) sum += std::exp(v);
  for (std::size_t e = 0; e < l.size(); ++e) p[e] = std::exp(l[e]) / sum;
  return p;
}

// The expected output of basis tokens routed by hand: routes[t] = (expert, weight) pairs.
std::vector<double> expected_output(
    SublayerHarness& h, const MoeCase& c,
    const std::vector<std::vector<std::pair<int, double>>>& routes) {
  std::vector<double> y;
  const double* x = h.input().ptr<double>();
  for (std::size_t t = 0; t < routes.size(); ++t) {
    std::vector<double> yt = ref_shared(h, c, x + t * c.D);
    for (const auto& [e, weight] : routes[t]) {
      const std::vector<double> ye = ref_expert(h, c, e, x + t * c.D);
      for (int d = 0; d < c.D; ++d) yt[d] += weight * ye[d];
    }
    y.insert(y.end(), yt.begin(), yt.end());
  }
  return y;
}

// Runs the gradient check and reports the worst relative error per tensor.
void require_gradients(SublayerHarness& h, const std::string& label, std::size_t tensors) {
  const std::vector<GradCheckResult> results = h.check(12, 1e-5);
  REQUIRE(results.size() == tensors + 1);  // every parameter and the input
  std::string line = label + ":";
  for (const GradCheckResult& r : results) {
    CAPTURE(label, r.name, r.rel_error, r.probed);
    CHECK(r.rel_error <= 1e-6);
    const bool prefixed = r.name.rfind(kPrefix, 0) == 0;
    char buf[96];
    std::snprintf(buf, sizeof buf, " %s=%.1e", r.name.substr(prefixed ? kPrefix.size() : 0).c_str(),
                  r.rel_error);
    line += buf;
  }
  std::printf("%s\n", line.c_str());
}

// The first seed whose random routing is at least 1e-3 in p from any flip (top-k boundary or
// capacity boundary), and drops at least min_dropped assignments: finite differences with
// h = 1e-5 then never change the routing.
std::uint64_t stable_seed(const ModelConfig& m, const MoeCase& c, std::int64_t B, std::int64_t T,
                          std::int64_t capacity, int min_dropped) {
  for (std::uint64_t seed = 1; seed <= 64; ++seed) {
    SublayerHarness h(m, 0, kPrefix, make_moe, B, T, seed);
    const Oracle o = ref_moe(h, c, capacity);
    if (o.margin >= 1e-3 && o.dropped >= min_dropped) return seed;
  }
  FAIL("no seed in 1..64 gives a routing margin >= 1e-3");
  return 0;
}

std::size_t tensor_count(const MoeCase& c) {
  return c.Fs > 0 ? 8 : 4;
}

TEST_CASE("dense SwiGLU FFN: forward against naive fp64, gradients against finite differences",
          "[grad][ffn]") {
  const int D = 6, F = 7;
  const ModelConfig m = dense_model(D, F);
  SublayerHarness h(m, 0, kPrefix, make_dense_ffn, 2, 3, 3);
  h.loss();
  const std::vector<double> y = h.output();
  std::vector<double> ref;
  const double* x = h.input().ptr<double>();
  for (int t = 0; t < 6; ++t) {
    const std::vector<double> yt = ref_swiglu(x + t * D, param(h, "w1.weight"),
                                              param(h, "w3.weight"), param(h, "w2.weight"), D, F);
    ref.insert(ref.end(), yt.begin(), yt.end());
  }
  CHECK(rel_error(y, ref) <= 1e-12);
  require_gradients(h, "dense", 3);
}

TEST_CASE("MoE gradients against finite differences (fp64)", "[grad][moe]") {
  struct GradCase {
    const char* label;
    MoeCase c;
    std::int64_t capacity;  // hand-computed ⌈c·N·k/E⌉ with N = 10; -1 dropless
    int min_dropped;
  };
  // B = 2, T = 5: N = 10 tokens. aux 0.01 and z 0.001 throughout, so their gradients are checked;
  // top-1 with norm_topk_prob has w ≡ 1, so there the router learns ONLY from aux and z.
  const GradCase cases[] = {
      {"top1", moe_case(4, 1, 6, 5, 0, false), -1, 0},
      {"top1 norm shared", moe_case(4, 1, 6, 5, 3, true), -1, 0},
      {"top2", moe_case(4, 2, 6, 5, 0, false), -1, 0},
      {"top2 shared", moe_case(4, 2, 6, 5, 3, false), -1, 0},
      {"top2 norm", moe_case(4, 2, 6, 5, 0, true), -1, 0},
      {"top2 norm shared", moe_case(4, 2, 6, 5, 3, true), -1, 0},
      // 0.75·10·2/4 = 3.75 → 4 of the 20 assignments per expert: at least 4 dropped.
      {"top2 norm shared capacity 0.75", moe_case(4, 2, 6, 5, 3, true, "0.75"), 4, 4},
      // 0.5·10·1/4 = 1.25 → 2: at least 2 of the 10 dropped.
      {"top1 capacity 0.5", moe_case(4, 1, 6, 5, 0, false, "0.5"), 2, 2},
  };
  for (const GradCase& g : cases) {
    CAPTURE(g.label);
    const ModelConfig m = moe_model(g.c);
    const std::uint64_t seed = stable_seed(m, g.c, 2, 5, g.capacity, g.min_dropped);
    SublayerHarness h(m, 0, kPrefix, make_moe, 2, 5, seed);
    require_gradients(h, g.label, tensor_count(g.c));
  }
}

TEST_CASE("MoE forward and statistics against a naive fp64 MODEL.md 4", "[grad][moe]") {
  struct OracleCase {
    const char* label;
    MoeCase c;
    std::int64_t B, T;
    std::int64_t capacity;  // hand-computed ⌈c·N·k/E⌉; -1 dropless
    int min_dropped;
  };
  const OracleCase cases[] = {
      {"top1", moe_case(4, 1, 6, 5, 0, false), 2, 5, -1, 0},
      {"top2 norm shared", moe_case(4, 2, 6, 5, 3, true), 2, 5, -1, 0},
      // N = 15, k = 3, E = 5, D = 7: 0.8·45/5 = 7.2 → 8 < the mean load 9, so some drop.
      {"top3 shared capacity 0.8", moe_case(5, 3, 7, 5, 3, false, "0.8"), 3, 5, 8, 1},
      {"top3 norm capacity 0.8", moe_case(5, 3, 7, 5, 0, true, "0.8"), 3, 5, 8, 1},
      // 1.1·15·3/5 = 9.9 → 10 (the decimal text, not the double, decides).
      {"top3 capacity 1.1", moe_case(5, 3, 7, 5, 0, false, "1.1"), 3, 5, 10, 0},
  };
  for (const OracleCase& oc : cases) {
    CAPTURE(oc.label);
    const ModelConfig m = moe_model(oc.c);
    SublayerHarness h(m, 0, kPrefix, make_moe, oc.B, oc.T, 7);
    h.loss();
    const Oracle o = ref_moe(h, oc.c, oc.capacity);
    CHECK(o.dropped >= oc.min_dropped);
    CHECK(rel_error(h.output(), o.y) <= 1e-12);
    const SublayerStats s = h.last_stats();
    CHECK(std::abs(s.aux_loss - o.aux) <= 1e-12 * std::abs(o.aux));
    CHECK(std::abs(s.z_loss - o.z) <= 1e-12 * std::abs(o.z));
    REQUIRE(s.expert_load.size() == o.load.size());
    for (std::size_t e = 0; e < o.load.size(); ++e) CHECK(s.expert_load[e] == Approx(o.load[e]));
  }
}

TEST_CASE("MoE routing: exact ties go to the lower expert index", "[grad][moe][routing]") {
  const MoeCase c = moe_case(4, 2, 4, 3, 0, false);
  SublayerHarness h(moe_model(c), 0, kPrefix, make_moe, 1, 4, 5);
  // Logits of the basis tokens: exactly equal logits give exactly equal probabilities.
  const std::vector<std::vector<double>> logits = {
      {2, 1, 1, 0},  // tie for the second place: expert 1, not 2
      {0, 1, 3, 3},  // tie for the first place: 2 then 3
      {1, 0, 1, 1},  // three-way tie: 0 and 2
      {0, 0, 0, 5},  // 3, then the lowest of three tied: 0
  };
  h.set_param(kPrefix + "router.weight", router_from_columns(logits, c.E, c.D));
  set_basis_input(h, c.D);
  h.loss();
  std::vector<std::vector<std::pair<int, double>>> routes;
  const std::vector<std::vector<int>> chosen = {{0, 1}, {2, 3}, {0, 2}, {3, 0}};
  for (std::size_t t = 0; t < logits.size(); ++t) {
    const std::vector<double> p = softmax(logits[t]);
    routes.push_back({{chosen[t][0], p[chosen[t][0]]}, {chosen[t][1], p[chosen[t][1]]}});
  }
  CHECK(rel_error(h.output(), expected_output(h, c, routes)) <= 1e-12);
  // Assignments per expert: 0 ← tokens 0, 2, 3; 1 ← 0; 2 ← 1, 2; 3 ← 1, 3 (of 8).
  const std::vector<double> load = {3.0 / 8, 1.0 / 8, 2.0 / 8, 2.0 / 8};
  CHECK(h.last_stats().expert_load == load);
}

TEST_CASE("MoE routing: capacity drops the lowest probability, ties keep the lower token",
          "[grad][moe][routing]") {
  for (bool norm : {false, true}) {
    CAPTURE(norm);
    // E = 4, k = 2, N = 4: 0.5·4·2/4 = 1 assignment per expert.
    const MoeCase c = moe_case(4, 2, 4, 3, 0, norm, "0.5");
    SublayerHarness h(moe_model(c), 0, kPrefix, make_moe, 1, 4, 6);
    const std::vector<std::vector<double>> logits = {
        {1, 0, 3, 0},  // token 0: experts 2, 0
        {2, 0, 0, 3},  // token 1: experts 3, 0, with a higher p for expert 0 than token 0's
        {0, 3, 1, 0},  // token 2: experts 1, 2
        {0, 3, 1, 0},  // token 3: the same as token 2, so exact ties with it
    };
    h.set_param(kPrefix + "router.weight", router_from_columns(logits, c.E, c.D));
    set_basis_input(h, c.D);
    h.loss();
    std::vector<std::vector<double>> p;
    for (const auto& l : logits) p.push_back(softmax(l));
    // Weights are renormalised over all of I_t before dropping, never after.
    auto w = [&](int t, int e, int other) {
      return norm ? p[t][e] / (p[t][e] + p[t][other]) : p[t][e];
    };
    // Expert 0: token 1 (higher p, though the later token) stays, token 0's slot goes.
    // Expert 1: tokens 2 and 3 tie: token 2 stays. Expert 2: token 0 (p ≈ 0.81) beats 2 and 3.
    // Token 0 keeps expert 2; token 3 loses both slots and gets 0 (it keeps its residual).
    const std::vector<std::vector<std::pair<int, double>>> routes = {
        {{2, w(0, 2, 0)}},
        {{3, w(1, 3, 0)}, {0, w(1, 0, 3)}},
        {{1, w(2, 1, 2)}},
        {},
    };
    const std::vector<double> y = h.output();
    CHECK(rel_error(y, expected_output(h, c, routes)) <= 1e-12);
    for (int d = 0; d < c.D; ++d) CHECK(y[3 * c.D + d] == 0.0);
    // f_e counts the assignments before dropping: 2, 2, 3, 1 of 8.
    const std::vector<double> load = {2.0 / 8, 2.0 / 8, 3.0 / 8, 1.0 / 8};
    CHECK(h.last_stats().expert_load == load);
    double aux = 0;
    for (int e = 0; e < c.E; ++e) {
      double P = 0;
      for (const auto& pt : p) P += pt[e] / 4;
      aux += c.E * load[e] * P;
    }
    CHECK(h.last_stats().aux_loss == Approx(aux).epsilon(1e-12));
  }
}

TEST_CASE("MoE routing: norm_topk_prob renormalises the combine weights over the top k",
          "[grad][moe][routing]") {
  const std::vector<std::vector<double>> logits = {{1, 0, 2, 0.5}, {0.25, 3, 0, 1}};
  std::vector<double> y[2];
  for (bool norm : {false, true}) {
    CAPTURE(norm);
    const MoeCase c = moe_case(4, 2, 4, 3, 0, norm);
    SublayerHarness h(moe_model(c), 0, kPrefix, make_moe, 1, 2, 8);
    h.set_param(kPrefix + "router.weight", router_from_columns(logits, c.E, c.D));
    set_basis_input(h, c.D);
    h.loss();
    const std::vector<double> p0 = softmax(logits[0]), p1 = softmax(logits[1]);
    const double s0 = p0[2] + p0[0], s1 = p1[1] + p1[3];
    const std::vector<std::vector<std::pair<int, double>>> routes = {
        {{2, norm ? p0[2] / s0 : p0[2]}, {0, norm ? p0[0] / s0 : p0[0]}},
        {{1, norm ? p1[1] / s1 : p1[1]}, {3, norm ? p1[3] / s1 : p1[3]}},
    };
    y[norm ? 1 : 0] = h.output();
    CHECK(rel_error(y[norm ? 1 : 0], expected_output(h, c, routes)) <= 1e-12);
  }
  CHECK(rel_error(y[0], y[1]) > 0.1);  // the flag matters
}

TEST_CASE("MoE shared expert: y adds sigmoid(x shared_gateᵀ) · SwiGLU_shared(x)",
          "[grad][moe][routing]") {
  const MoeCase c = moe_case(2, 1, 2, 3, 4, false);
  SublayerHarness h(moe_model(c), 0, kPrefix, make_moe, 1, 3, 9);
  // Routed experts output zero (w2 = 0), so y is the gated shared expert alone.
  h.set_param(kPrefix + "experts.w2", std::vector<double>(2 * 2 * 3, 0.0));
  h.set_param(kPrefix + "shared_gate.weight", {std::log(3.0), 0.0});
  const std::vector<double> xs = {1.0, 0.5, 0.0, 1.0, -1.0, 2.0};
  std::copy(xs.begin(), xs.end(), h.input().ptr<double>());
  h.loss();
  const double gate[3] = {0.75, 0.5, 0.25};  // sigmoid(ln 3), sigmoid(0), sigmoid(−ln 3)
  std::vector<double> ref;
  for (int t = 0; t < 3; ++t) {
    const std::vector<double> s =
        ref_swiglu(xs.data() + 2 * t, param(h, "shared.w1.weight"), param(h, "shared.w3.weight"),
                   param(h, "shared.w2.weight"), c.D, c.Fs);
    for (double v : s) ref.push_back(gate[t] * v);
  }
  CHECK(rel_error(h.output(), ref) <= 1e-12);
}

TEST_CASE("MoE aux and z losses by hand", "[grad][moe][routing]") {
  // E = 3, k = 2, N = 2 basis tokens. Logits (ln 4, ln 2, ln 2): p = (1/2, 1/4, 1/4), I = {0, 1},
  // lse = ln 8. Logits (0, ln 3, 0): p = (1/5, 3/5, 1/5), I = {1, 0}, lse = ln 5.
  // f = (1/2, 1/2, 0); P = (0.35, 0.425, 0.225); aux = 3·(0.175 + 0.2125) = 1.1625.
  // With capacity 0.5 (⌈0.5·2·2/3⌉ = 1) both experts 0 and 1 drop one assignment; f and aux are
  // counted before dropping, so they do not change.
  const double l2 = std::log(2.0), l3 = std::log(3.0), l4 = std::log(4.0);
  for (const char* capacity : {"", "0.5"}) {
    CAPTURE(capacity);
    const MoeCase c = moe_case(3, 2, 2, 3, 0, false, capacity);
    SublayerHarness h(moe_model(c), 0, kPrefix, make_moe, 1, 2, 10);
    h.set_param(kPrefix + "router.weight", router_from_columns({{l4, l2, l2}, {0, l3, 0}}, 3, 2));
    set_basis_input(h, c.D);
    h.loss();
    const SublayerStats s = h.last_stats();
    CHECK(s.aux_loss == Approx(1.1625).epsilon(1e-12));
    const double z = (std::pow(std::log(8.0), 2) + std::pow(std::log(5.0), 2)) / 2;
    CHECK(s.z_loss == Approx(z).epsilon(1e-12));
    REQUIRE(s.expert_load.size() == 3);
    CHECK(s.expert_load[0] == 0.5);
    CHECK(s.expert_load[1] == 0.5);
    CHECK(s.expert_load[2] == 0.0);
  }
}

TEST_CASE("MoE aux and z gradients scale with ctx.loss_scale", "[grad][moe]") {
  // The harness runs with loss_scale 1; here dy = 0, so every gradient is that of
  // loss_scale · (aux_coeff · aux + z_coeff · z), and it must scale with loss_scale.
  const MoeCase c = moe_case(4, 2, 6, 5, 0, false);
  const ModelConfig m = moe_model(c);
  SublayerHarness h(m, 0, kPrefix, make_moe, 2, 5, 11);
  ParameterStore& store = h.params();
  std::unique_ptr<Sublayer> layer = make_moe(m, 0, store);
  Arena saved(host_allocator(), 1 << 20, "saved"), scratch(host_allocator(), 1 << 20, "scratch");
  const Shape shape = h.input().shape;
  HostTensor y(DType::f64, shape), dy(DType::f64, shape), dx(DType::f64, shape);
  const Tensor router_grad = store.grad(store.index(kPrefix + "router.weight"));
  const Tensor w1_grad = store.grad(store.index(kPrefix + "experts.w1"));
  auto gradients = [&](double loss_scale) {
    saved.reset();
    scratch.reset();
    LayerContext ctx{h.backend(), store, saved, scratch, DType::f64};
    ctx.loss_scale = loss_scale;
    h.backend().fill(store.flat_grads(), 0.0);
    h.backend().fill(dy, 0.0);
    poison(y);
    h.backend().fill(dx, 0.0);
    std::unique_ptr<Sublayer::Cache> cache = layer->forward(ctx, h.input(), y, nullptr);
    layer->backward(ctx, *cache, dy, dx);
    std::vector<double> g(router_grad.ptr<double>(),
                          router_grad.ptr<double>() + router_grad.numel());
    const std::vector<double> gx = dx.to_f64();
    g.insert(g.end(), gx.begin(), gx.end());
    CHECK(h.backend().max_abs(w1_grad) == 0.0);  // the experts see no gradient
    return g;
  };
  const std::vector<double> g1 = gradients(1.0), g4 = gradients(0.25);
  std::vector<double> expected;
  for (double v : g1) expected.push_back(0.25 * v);
  CHECK(h.backend().max_abs(router_grad) > 1e-6);
  CHECK(rel_error(g4, expected) <= 1e-14);
}

// One forward and backward of the MoE layer on `store` in its dtype, as doubles: y, each
// parameter's gradient, dx, and {aux, z}.
std::vector<std::vector<double>> run_moe(const ModelConfig& m, ParameterStore& store,
                                         Backend& backend, DType dtype, const Tensor& x64,
                                         const Tensor& dy64) {
  std::unique_ptr<Sublayer> layer = make_moe(m, 0, store);
  Arena saved(host_allocator(), 1 << 20, "saved"), scratch(host_allocator(), 1 << 20, "scratch");
  HostTensor x(dtype, x64.shape), y(dtype, x64.shape), dy(dtype, x64.shape), dx(dtype, x64.shape);
  backend.copy(x64, x);
  backend.copy(dy64, dy);
  poison(y);
  backend.fill(dx, 0.0);
  backend.fill(store.flat_grads(), 0.0);
  LayerContext ctx{backend, store, saved, scratch, dtype};
  SublayerStats stats;
  std::unique_ptr<Sublayer::Cache> cache = layer->forward(ctx, x, y, &stats);
  layer->backward(ctx, *cache, dy, dx);
  std::vector<std::vector<double>> out = {y.to_f64()};
  for (std::size_t i = 0; i < store.size(); ++i) {
    const Tensor g = store.grad(static_cast<int>(i));
    HostTensor g64(DType::f64, g.shape);
    backend.copy(g, g64);
    out.push_back(g64.to_f64());
  }
  out.push_back(dx.to_f64());
  out.push_back({stats.aux_loss, stats.z_loss});
  return out;
}

TEST_CASE("MoE in f32 (the training dtype) agrees with f64", "[grad][moe]") {
  // Shared expert, norm_topk_prob and capacity drops on; the seed's routing is at least 1e-3 from
  // a flip, so f32 rounding cannot change it. Bound: relative 1e-5 (fp32 CPU, TESTING.md).
  const MoeCase c = moe_case(4, 2, 6, 5, 3, true, "0.75");
  const ModelConfig m = moe_model(c);
  const std::uint64_t seed = stable_seed(m, c, 2, 5, 4, 4);
  SublayerHarness h(m, 0, kPrefix, make_moe, 2, 5, seed);
  HostTensor dy(DType::f64, h.input().shape);
  fill_uniform(dy, 12);
  ParameterStore f32_store;
  for (std::size_t i = 0; i < h.params().size(); ++i) {
    const ParamSpec& spec = h.params().spec(static_cast<int>(i));
    f32_store.add(whole_param(spec.name, spec.shape));
  }
  f32_store.allocate(host_allocator(), DType::f32, DType::f32);
  for (std::size_t i = 0; i < h.params().size(); ++i) {
    h.backend().copy(h.params().param(static_cast<int>(i)), f32_store.param(static_cast<int>(i)));
  }
  const auto ref = run_moe(m, h.params(), h.backend(), DType::f64, h.input(), dy);
  const auto got = run_moe(m, f32_store, h.backend(), DType::f32, h.input(), dy);
  REQUIRE(got.size() == ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) {
    CAPTURE(i);  // 0: y, then each parameter's gradient in store order, dx, {aux, z}
    CHECK(rel_error(got[i], ref[i]) <= 1e-5);
  }
}

}  // namespace
}  // namespace linmoe::testing
