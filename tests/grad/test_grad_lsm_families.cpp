// The LSM wrapper ('L', MODEL.md 3) for the vector-decay (gla, hgrn2) and delta-rule (deltanet,
// gated_deltanet) variants: backward against central finite differences of every parameter and
// the input in fp64 (TESTING.md 3), and forward against a naive fp64 token-by-token
// implementation of MODEL.md 3 written here (projections, low-rank gate, causal convolutions,
// L2 norms, the recurrences, output norm, gate and projection).
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
#include "core/rng.h"
#include "grad/sublayer_harness.h"
#include "kernels/cpu/cpu_backend.h"
#include "layers/model.h"
#include "layers/sublayers.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;
using Vec = std::vector<double>;

const char* const kPrefix = "layers.0.mixer.";
constexpr int kD = 12;

struct Case {
  std::string type;  // lsm.type
  int H, dk, dv;     // heads, head dims (D = 12 throughout)
  std::string feature_map;
  bool norm, gate;
  int conv;  // lsm.conv_size (delta rule only)
  int chunk;
  i64 B, T;
  bool delta() const { return type == "deltanet" || type == "gated_deltanet"; }
  std::string name() const {
    return type + " H=" + std::to_string(H) + " dk=" + std::to_string(dk) +
           " dv=" + std::to_string(dv) + " phi=" + feature_map + " norm=" + (norm ? "on" : "off") +
           " gate=" + (gate ? "on" : "off") + " conv=" + std::to_string(conv) +
           " chunk=" + std::to_string(chunk) + " B=" + std::to_string(B) +
           " T=" + std::to_string(T);
  }
};

ModelConfig model_for(const Case& c) {
  std::string lsm =
      "type: " + c.type + ", num_heads: " + std::to_string(c.H) +
      ", head_dim_k: " + std::to_string(c.dk) + ", head_dim_v: " + std::to_string(c.dv) +
      ", feature_map: " + c.feature_map + ", output_norm: " + (c.norm ? "true" : "false") +
      ", output_gate: " + (c.gate ? "true" : "false") + ", chunk_size: " + std::to_string(c.chunk);
  if (c.delta()) lsm += ", conv_size: " + std::to_string(c.conv);
  const std::string yaml = "model: {vocab_size: 16, hidden_size: " + std::to_string(kD) +
                           ", num_layers: 1, layer_pattern: L, attention: {num_heads: 2}, lsm: {" +
                           lsm + "}}\n";
  return load_config_from_string(yaml, {}, "test_grad_lsm_families").model;
}

// Per variant: output_norm × output_gate (hgrn2: no gate) × conv 4/0 (delta rule) × chunk, with
// the head geometry and feature map rotating (H = 2..4, d_k ≠ d_v, silu/elu1/identity).
// T = 13 is a multiple of neither chunk size.
std::vector<Case> grad_cases(const std::string& type) {
  const bool delta = type == "deltanet" || type == "gated_deltanet";
  const char* maps[] = {"silu", "elu1", "identity"};
  struct Dims {
    int H, dk, dv;
  };
  const Dims dims[] = {{2, 4, 6}, {3, 4, 3}, {4, 3, 3}, {3, 2, 5}};
  std::vector<Case> out;
  int n = 0;
  for (int norm = 0; norm < 2; ++norm) {
    for (int gate = 0; gate < 2; ++gate) {
      if (type == "hgrn2" && gate == 1) continue;
      for (int conv : delta ? std::vector<int>{4, 0} : std::vector<int>{0}) {
        for (int chunk : {4, 16}) {
          if (delta && chunk == 16 && conv == 0) continue;  // keep the delta-rule runs short
          const Dims d = dims[n % 4];
          const std::string phi = maps[n % 3];
          out.push_back(Case{type, d.H, d.dk, d.dv, phi, norm == 1, gate == 1, conv, chunk, 2, 13});
          ++n;
        }
      }
    }
  }
  return out;
}

// ---- the oracle: MODEL.md 3, token by token, in fp64 --------------------------------------------

double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}
double softplus(double z) {
  return z > 0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z));
}
double logsigmoid(double z) {
  return -softplus(-z);
}

double phi(const std::string& f, double z) {
  if (f == "identity") return z;
  if (f == "silu") return z * sigmoid(z);
  if (f == "elu1") return z > 0 ? z + 1.0 : std::exp(z);
  if (f == "relu") return z > 0 ? z : 0.0;
  FAIL("unknown feature map " << f);
  return 0;
}

// y = W x (+ b) for W [out, in] row-major.
Vec matvec(const double* w, i64 out, i64 in, const double* x, const double* b = nullptr) {
  Vec y(static_cast<std::size_t>(out), 0.0);
  for (i64 r = 0; r < out; ++r) {
    y[r] = b ? b[r] : 0.0;
    for (i64 c = 0; c < in; ++c) y[r] += w[r * in + c] * x[c];
  }
  return y;
}

// Causal depthwise conv over time of rows[t][c] with w [C, 1, K]:
// y_{t,c} = Σ_j w[c,0,j] · x_{t−K+1+j, c}, zero before the start.
std::vector<Vec> causal_conv(const std::vector<Vec>& rows, const double* w, i64 K) {
  std::vector<Vec> out(rows.size(), Vec(rows[0].size(), 0.0));
  const i64 T = static_cast<i64>(rows.size()), C = static_cast<i64>(rows[0].size());
  for (i64 t = 0; t < T; ++t) {
    for (i64 c = 0; c < C; ++c) {
      for (i64 j = 0; j < K; ++j) {
        const i64 s = t - K + 1 + j;
        if (s >= 0) out[t][c] += w[c * K + j] * rows[s][c];
      }
    }
  }
  return out;
}

// The per-token inputs of one head's recurrence.
struct Token {
  Vec q, k, v;  // [H·dk], [H·dk], [H·dv]
  Vec alpha;    // vector decay: [H·dk]; delta rule: [H] (1 for deltanet)
  Vec beta;     // delta rule: [H]
};

Vec oracle_forward(const Case& c, testing::SublayerHarness& h) {
  ParameterStore& p = h.params();
  auto w = [&](const std::string& name) {
    return p.param(p.index(std::string(kPrefix) + name)).ptr<double>();
  };
  const i64 H = c.H, dk = c.dk, dv = c.dv, D = kD, K = c.conv;
  const bool gla = c.type == "gla", hgrn2 = c.type == "hgrn2", delta = c.delta();
  const bool gated = c.type == "gated_deltanet";
  const double* wq = w("q_proj.weight");
  const double* wk = hgrn2 ? w("f_proj.weight") : w("k_proj.weight");
  const double* wv = w("v_proj.weight");
  const double* wo = w("o_proj.weight");
  const double* wg = c.gate ? w("g_proj.weight") : nullptr;
  const double* wn = c.norm ? w("o_norm.weight") : nullptr;
  const double* x = h.input().ptr<double>();
  const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
  Vec y(static_cast<std::size_t>(c.B * c.T * D));
  for (i64 b = 0; b < c.B; ++b) {
    auto xt = [&](i64 t) { return x + (b * c.T + t) * D; };
    // Projections of every token, then (delta rule) the convolutions over time.
    std::vector<Vec> pq, pk, pv;
    for (i64 t = 0; t < c.T; ++t) {
      pq.push_back(matvec(wq, H * dk, D, xt(t)));
      pk.push_back(matvec(wk, H * dk, D, xt(t)));
      pv.push_back(matvec(wv, H * dv, D, xt(t)));
    }
    if (delta && K > 0) {
      pq = causal_conv(pq, w("q_conv.weight"), K);
      pk = causal_conv(pk, w("k_conv.weight"), K);
      pv = causal_conv(pv, w("v_conv.weight"), K);
    }
    std::vector<Token> tok(static_cast<std::size_t>(c.T));
    for (i64 t = 0; t < c.T; ++t) {
      Token& z = tok[t];
      z.q = pq[t];
      for (double& e : z.q) e = phi(c.feature_map, e);
      z.v = pv[t];
      if (gla) {
        // k = φ(x Wkᵀ); log α = logsigmoid(x W1ᵀ W2ᵀ + b)/16.
        z.k = pk[t];
        for (double& e : z.k) e = phi(c.feature_map, e);
        const Vec low = matvec(w("gk_proj.0.weight"), 16, D, xt(t));
        const Vec g = matvec(w("gk_proj.1.weight"), H * dk, 16, low.data(), w("gk_proj.1.bias"));
        for (double e : g) z.alpha.push_back(std::exp(logsigmoid(e) / 16.0));
      } else if (hgrn2) {
        // α = exp(logsigmoid(x Wfᵀ)), k = 1 − α.
        for (double e : pk[t]) {
          z.alpha.push_back(std::exp(logsigmoid(e)));
          z.k.push_back(1.0 - z.alpha.back());
        }
      } else {
        // q, k = L2norm(φ(conv(·))) per head; v = silu(conv(·)); β = sigmoid(x Wbᵀ).
        z.k = pk[t];
        for (double& e : z.k) e = phi(c.feature_map, e);
        for (Vec* u : {&z.q, &z.k}) {
          for (i64 hh = 0; hh < H; ++hh) {
            double ss = 0;
            for (i64 i = 0; i < dk; ++i) ss += (*u)[hh * dk + i] * (*u)[hh * dk + i];
            for (i64 i = 0; i < dk; ++i) (*u)[hh * dk + i] /= std::sqrt(ss + 1e-6);
          }
        }
        for (double& e : z.v) e = phi("silu", e);
        for (double e : matvec(w("b_proj.weight"), H, D, xt(t))) z.beta.push_back(sigmoid(e));
        if (gated) {
          // log α = −exp(A_log_h)·softplus(x Waᵀ + dt_bias)_h.
          const Vec a = matvec(w("a_proj.weight"), H, D, xt(t), w("dt_bias"));
          for (i64 hh = 0; hh < H; ++hh) {
            z.alpha.push_back(std::exp(-std::exp(w("A_log")[hh]) * softplus(a[hh])));
          }
        } else {
          z.alpha.assign(static_cast<std::size_t>(H), 1.0);
        }
      }
    }
    std::vector<Vec> S(static_cast<std::size_t>(H), Vec(static_cast<std::size_t>(dk * dv), 0.0));
    for (i64 t = 0; t < c.T; ++t) {
      const Token& z = tok[t];
      Vec o(static_cast<std::size_t>(H * dv), 0.0);
      for (i64 hh = 0; hh < H; ++hh) {
        Vec& s = S[hh];
        const double* q = &z.q[hh * dk];
        const double* k = &z.k[hh * dk];
        const double* v = &z.v[hh * dv];
        if (delta) {
          // S_t = α_t (I − β_t k kᵀ) S_{t−1} + β_t k vᵀ.
          const double a = z.alpha[hh], be = z.beta[hh];
          for (i64 j = 0; j < dv; ++j) {
            double ks = 0;  // (kᵀ S)_j
            for (i64 i = 0; i < dk; ++i) ks += k[i] * s[i * dv + j];
            for (i64 i = 0; i < dk; ++i) {
              s[i * dv + j] = a * (s[i * dv + j] - be * k[i] * ks) + be * k[i] * v[j];
            }
          }
        } else {
          // S_t = Diag(α_t) S_{t−1} + k vᵀ.
          for (i64 i = 0; i < dk; ++i) {
            for (i64 j = 0; j < dv; ++j) {
              s[i * dv + j] = z.alpha[hh * dk + i] * s[i * dv + j] + k[i] * v[j];
            }
          }
        }
        // o_t = scale · S_tᵀ q_t, then RMSNorm over the head (eps 1e-5).
        for (i64 j = 0; j < dv; ++j) {
          double acc = 0;
          for (i64 i = 0; i < dk; ++i) acc += s[i * dv + j] * q[i];
          o[hh * dv + j] = scale * acc;
        }
        if (wn) {
          double ms = 0;
          for (i64 j = 0; j < dv; ++j) ms += o[hh * dv + j] * o[hh * dv + j];
          const double r = 1.0 / std::sqrt(ms / static_cast<double>(dv) + 1e-5);
          for (i64 j = 0; j < dv; ++j) o[hh * dv + j] *= r * wn[j];
        }
      }
      if (wg) {
        const Vec g = matvec(wg, H * dv, D, xt(t));
        for (i64 j = 0; j < H * dv; ++j) o[j] *= phi("silu", g[j]);
      }
      const Vec out = matvec(wo, D, H * dv, o.data());
      std::copy(out.begin(), out.end(), y.begin() + (b * c.T + t) * D);
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
  return std::isnan(num) ? INFINITY : std::sqrt(num / std::max(den, 1e-300));
}

// The parameters of each variant's wrapper (MODEL.md 3 names), without the prefix.
std::vector<std::string> expected_params(const Case& c) {
  std::vector<std::string> n = {
      "q_proj.weight", c.type == "hgrn2" ? "f_proj.weight" : "k_proj.weight", "v_proj.weight"};
  if (c.type == "gla") {
    for (const char* s : {"gk_proj.0.weight", "gk_proj.1.weight", "gk_proj.1.bias"}) n.push_back(s);
  }
  if (c.delta()) n.push_back("b_proj.weight");
  if (c.type == "gated_deltanet") {
    for (const char* s : {"a_proj.weight", "A_log", "dt_bias"}) n.push_back(s);
  }
  if (c.delta() && c.conv > 0) {
    for (const char* s : {"q_conv.weight", "k_conv.weight", "v_conv.weight"}) n.push_back(s);
  }
  if (c.gate) n.push_back("g_proj.weight");
  if (c.norm) n.push_back("o_norm.weight");
  n.push_back("o_proj.weight");
  return n;
}

// Runs the FD check of every case; returns the largest error per tensor (without the prefix).
std::map<std::string, double> check_gradients(const std::vector<Case>& cases) {
  std::map<std::string, double> worst;
  for (const Case& c : cases) {
    INFO(c.name());
    testing::SublayerHarness h(model_for(c), 0, kPrefix, make_lsm, c.B, c.T, /*seed=*/11);
    // h = 3e-6 as in test_grad_lsm.cpp: balances the O(h²) truncation of the strongly curved
    // per-head RMSNorm over d_v = 3..6 against rounding (ε/h).
    const std::vector<testing::GradCheckResult> results = h.check(/*max_probes=*/16, /*h=*/3e-6);
    std::vector<std::string> names;
    for (const testing::GradCheckResult& r : results) {
      INFO(r.name << ": rel error " << r.rel_error << " over " << r.probed << " probes");
      CHECK(r.rel_error <= 1e-6);
      CHECK(r.probed > 0);
      const std::string key =
          r.name.rfind(kPrefix, 0) == 0 ? r.name.substr(std::string(kPrefix).size()) : r.name;
      if (key != "input") names.push_back(key);
      worst[key] = std::max(worst[key], r.rel_error);
    }
    // Every parameter of the variant was probed, and nothing else: results are in store order.
    std::vector<std::string> want = expected_params(c);
    std::sort(want.begin(), want.end());
    std::sort(names.begin(), names.end());
    CHECK(names == want);
  }
  return worst;
}

void print_worst(const std::string& what, const std::map<std::string, double>& worst) {
  double all = 0;
  std::printf("max FD rel error per tensor (%s):\n", what.c_str());
  for (const auto& [name, err] : worst) {
    std::printf("  %-18s %.3e\n", name.c_str(), err);
    all = std::max(all, err);
  }
  std::printf("  %-18s %.3e\n", "(all)", all);
}

void run_gradient_test(const std::string& type) {
  const std::vector<Case> cases = grad_cases(type);
  print_worst(type + ", " + std::to_string(cases.size()) + " cases", check_gradients(cases));
}

}  // namespace

TEST_CASE("lsm families: forward matches the token-by-token oracle of MODEL.md 3 (fp64)",
          "[grad][lsm]") {
  std::vector<Case> cases;
  for (const char* type : {"gla", "hgrn2", "deltanet", "gated_deltanet"}) {
    for (const Case& c : grad_cases(type)) cases.push_back(c);
  }
  // Beyond the gradient cases: relu, a single token, a long sequence over many chunks, chunk 1,
  // one chunk larger than T, conv width 1 and 3, and B = 3.
  cases.push_back(Case{"gla", 4, 3, 3, "relu", true, true, 0, 4, 2, 13});
  cases.push_back(Case{"hgrn2", 2, 6, 6, "silu", true, false, 0, 4, 3, 1});
  cases.push_back(Case{"gla", 3, 4, 4, "silu", true, true, 0, 16, 1, 77});
  cases.push_back(Case{"hgrn2", 3, 4, 4, "silu", false, false, 0, 16, 1, 77});
  cases.push_back(Case{"deltanet", 3, 4, 4, "silu", true, true, 4, 16, 1, 77});
  cases.push_back(Case{"gated_deltanet", 3, 4, 4, "silu", true, true, 4, 16, 1, 77});
  cases.push_back(Case{"gla", 3, 4, 3, "elu1", false, true, 0, 1, 2, 9});
  cases.push_back(Case{"deltanet", 2, 6, 6, "silu", true, false, 3, 1, 2, 9});
  cases.push_back(Case{"gated_deltanet", 2, 6, 6, "relu", true, true, 1, 64, 3, 13});
  cases.push_back(Case{"hgrn2", 2, 6, 6, "identity", true, false, 0, 64, 2, 13});
  std::map<std::string, double> worst;
  for (const Case& c : cases) {
    INFO(c.name());
    testing::SublayerHarness h(model_for(c), 0, kPrefix, make_lsm, c.B, c.T, /*seed=*/5);
    h.loss();
    const Vec got = h.output(), want = oracle_forward(c, h);
    const double err = rel_err(got, want);
    INFO("rel error " << err);
    CHECK(err <= 1e-12);
    worst[c.type] = std::max(worst[c.type], err);
  }
  for (const auto& [type, err] : worst) {
    std::printf("forward vs oracle, %s: max rel error %.3e\n", type.c_str(), err);
  }
}

TEST_CASE("lsm families: the chunk size never changes the output", "[grad][lsm]") {
  // The same weights and input through chunk 1, 5 and 64 (MODEL.md 3: chunk_size never changes
  // the mathematics); the harness seeds make the parameters identical across the three.
  for (const char* type : {"gla", "hgrn2", "deltanet", "gated_deltanet"}) {
    Vec ref;
    for (int chunk : {1, 5, 64}) {
      const Case c{type, 2, 4, 3, "silu", true, std::string(type) != "hgrn2", 4, chunk, 2, 21};
      INFO(c.name());
      testing::SublayerHarness h(model_for(c), 0, kPrefix, make_lsm, c.B, c.T, /*seed=*/9);
      h.loss();
      if (ref.empty()) {
        ref = h.output();
      } else {
        CHECK(rel_err(h.output(), ref) <= 1e-12);
      }
    }
  }
}

TEST_CASE("lsm families: gla backward matches finite differences (fp64)", "[grad][lsm]") {
  run_gradient_test("gla");
}

TEST_CASE("lsm families: hgrn2 backward matches finite differences (fp64)", "[grad][lsm]") {
  run_gradient_test("hgrn2");
}

TEST_CASE("lsm families: deltanet backward matches finite differences (fp64)", "[grad][lsm]") {
  run_gradient_test("deltanet");
}

TEST_CASE("lsm families: gated_deltanet backward matches finite differences (fp64)",
          "[grad][lsm]") {
  run_gradient_test("gated_deltanet");
}

// Each variant inside the whole model (embedding, mixer norm, dense FFN, head): the model's loss
// gradient against central differences on a few elements of every parameter (fp64).
TEST_CASE("lsm families: whole-model backward matches finite differences (fp64)",
          "[grad][lsm][model]") {
  for (const char* type : {"gla", "hgrn2", "deltanet", "gated_deltanet"}) {
    INFO(type);
    const std::string yaml =
        std::string(
            "model: {vocab_size: 11, hidden_size: 8, num_layers: 2, layer_pattern: LN,"
            " ffn_hidden_size: 12, attention: {num_heads: 2}, lsm: {type: ") +
        type + ", num_heads: 2, chunk_size: 4}}\n";
    const Config cfg = load_config_from_string(yaml, {}, "test_grad_lsm_families");
    std::unique_ptr<Backend> backend = make_cpu_backend(1);
    Model model(cfg.model, *backend, DType::f64);
    model.initialize(7);
    // O(1) weights instead of the 0.02 init, so every path carries signal; norms near 1.
    ParameterStore& p = model.params();
    CounterRng rng(21, "grad-lsm-families-model");
    for (std::size_t i = 0; i < p.size(); ++i) {
      const Tensor t = p.param(static_cast<int>(i));
      const bool norm = p.spec(static_cast<int>(i)).name.find("norm") != std::string::npos;
      for (i64 j = 0; j < t.numel(); ++j) {
        const double u = rng.uniform(static_cast<std::uint64_t>(p.offset_of(int(i)) + j));
        t.ptr<double>()[j] = norm ? 1.0 + 0.4 * (u - 0.5) : 0.8 * (u - 0.5);
      }
    }
    const i64 B = 2, T = 9;
    testing::HostTensor tokens(DType::i32, Shape{B, T}), targets(DType::i32, Shape{B, T});
    testing::fill_ints(tokens.t(), 4, cfg.model.vocab_size);
    testing::fill_ints(targets.t(), 5, cfg.model.vocab_size);
    backend->fill(p.flat_grads(), 0.0);
    model.forward_backward(tokens.t(), targets.t(), 1.0);
    const double h = 1e-5;
    double num = 0, den = 0;
    int mixer_params = 0;
    for (std::size_t i = 0; i < p.size(); ++i) {
      const Tensor t = p.param(static_cast<int>(i)), g = p.grad(static_cast<int>(i));
      const std::string& name = p.spec(static_cast<int>(i)).name;
      if (name.rfind("layers.0.mixer.", 0) == 0) ++mixer_params;
      for (int k = 0; k < 3; ++k) {
        const i64 j = (k * 7919 + t.numel() / 2) % t.numel();
        double* v = t.ptr<double>() + j;
        const double keep = *v;
        *v = keep + h;
        const double lp = model.forward(tokens.t(), targets.t()).loss;
        *v = keep - h;
        const double lm = model.forward(tokens.t(), targets.t()).loss;
        *v = keep;
        const double fd = (lp - lm) / (2 * h), an = g.ptr<double>()[j];
        num += (fd - an) * (fd - an);
        den += fd * fd;
      }
    }
    const double err = std::sqrt(num / den);
    INFO("rel error " << err);
    CHECK(err <= 1e-6);
    CHECK(mixer_params >= 5);  // the LSM layer's parameters were among those probed (hgrn2: 5)
    std::printf("whole model with %s: FD rel error %.3e\n", type, err);
  }
}

// A second forward/backward from the same layer gives the same output and gradients, and every
// temporary went back to the scratch arena.
TEST_CASE("lsm families: forward/backward are repeatable and release their scratch",
          "[grad][lsm]") {
  for (const char* type : {"gla", "hgrn2", "deltanet", "gated_deltanet"}) {
    const Case c{type, 3, 4, 3, "silu", true, std::string(type) != "hgrn2", 4, 4, 2, 13};
    INFO(c.name());
    const ModelConfig m = model_for(c);
    testing::SublayerHarness h(m, 0, kPrefix, make_lsm, c.B, c.T, /*seed=*/3);
    Backend& be = h.backend();
    ParameterStore& store = h.params();
    std::unique_ptr<Sublayer> layer = make_lsm(m, 0, store);
    Arena saved(host_allocator(), 1 << 20, "saved"), scratch(host_allocator(), 1 << 20, "scratch");
    LayerContext ctx{be, store, saved, scratch, DType::f64};
    const Shape shape{c.B, c.T, kD};
    testing::HostTensor y(DType::f64, shape), dy(DType::f64, shape), dx(DType::f64, shape);
    testing::fill_uniform(dy.t(), 17);
    auto run = [&] {
      be.fill(store.flat_grads(), 0.0);
      be.fill(dx.t(), 0.0);
      saved.reset();
      testing::poison(y.t());
      std::unique_ptr<Sublayer::Cache> cache = layer->forward(ctx, h.input(), y.t(), nullptr);
      layer->backward(ctx, *cache, dy.t(), dx.t());
      Vec g = y.to_f64();
      const Vec d = dx.to_f64();
      g.insert(g.end(), d.begin(), d.end());
      const Tensor grads = store.flat_grads();
      for (i64 i = 0; i < grads.numel(); ++i) g.push_back(grads.ptr<double>()[i]);
      return g;
    };
    const Vec first = run(), second = run();
    CHECK(first == second);
    CHECK(std::all_of(first.begin(), first.end(), [](double v) { return std::isfinite(v); }));
    CHECK(scratch.used() == 0);
  }
}

}  // namespace linmoe
