// The delta-rule LSM core (kernels/ops.h, MODEL.md section 3: deltanet, gated_deltanet) on the
// CPU backend against an fp64 token-by-token recurrence and its hand-written reverse pass (itself
// checked against finite differences of the recurrence), against central finite differences of
// the op itself, across chunk sizes, and on a long sequence with strong decay and β near 1.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <ios>
#include <memory>
#include <utility>
#include <vector>

#include "common/test_util.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"

namespace linmoe {
namespace {

using testing::HostTensor;
using testing::rel_error;
using i64 = std::int64_t;
using Vec = std::vector<double>;

Backend& cpu() {
  static std::unique_ptr<Backend> backend = make_cpu_backend(2);
  return *backend;
}

struct Problem {
  i64 B, T, H, Dk, Dv;
  Shape qk() const { return Shape{B, T, H, Dk}; }
  Shape vo() const { return Shape{B, T, H, Dv}; }
  Shape g() const { return Shape{B, T, H}; }
  Shape state() const { return Shape{B, H, Dk, Dv}; }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(Dk)); }
};

// Inputs as doubles; g empty: deltanet (no decay); s0 / dfs empty: not given (Tensor{}).
struct Data {
  Vec q, k, v, beta, g, s0, d_o, dfs;
};

struct Result {
  Vec o, fs, dq, dk, dv, dbeta, dg, ds0;
};

Vec uniform(i64 n, std::uint64_t seed, double lo, double hi) {
  CounterRng rng(seed, "test.lsm_delta_rule");
  Vec x(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = lo + (hi - lo) * rng.uniform(i);
  return x;
}

// Values exactly representable in dtype, so the oracle sees what the op sees.
Vec rounded(DType dt, Vec x) {
  if (dt == DType::f32) {
    for (double& e : x) e = static_cast<double>(static_cast<float>(e));
  }
  return x;
}

// Rows of length d scaled to unit L2 norm (as the layer's L2norm does before the core).
Vec l2_rows(Vec x, i64 d) {
  for (std::size_t r = 0; r < x.size(); r += static_cast<std::size_t>(d)) {
    double s = 0;
    for (i64 i = 0; i < d; ++i) s += x[r + static_cast<std::size_t>(i)] * x[r + i];
    for (i64 i = 0; i < d; ++i) x[r + static_cast<std::size_t>(i)] /= std::sqrt(s);
  }
  return x;
}

struct Options {
  bool gated = true;       // log_decay given (gated_deltanet) or not (deltanet)
  bool init = false;       // initial_state given
  bool dfinal = false;     // d_final_state given
  bool normalised = true;  // k (and q) L2-normalised rows; else k uniform in ±k_range
  double k_range = 1.0;    // for un-normalised k
  double decay_lo = 0.01;  // log decays −exp(u), u uniform in [log lo, log hi]
  double decay_hi = 1.5;
  double beta_lo = 0.0, beta_hi = 1.0;
};

Data make_data(const Problem& p, DType dt, std::uint64_t seed, const Options& opt) {
  Data x;
  Vec q = uniform(p.qk().numel(), seed + 1, -1, 1);
  Vec k = uniform(p.qk().numel(), seed + 2, -opt.k_range, opt.k_range);
  x.q = rounded(dt, opt.normalised ? l2_rows(q, p.Dk) : q);
  x.k = rounded(dt, opt.normalised ? l2_rows(k, p.Dk) : k);
  x.v = rounded(dt, uniform(p.vo().numel(), seed + 3, -1, 1));
  x.beta = rounded(dt, uniform(p.g().numel(), seed + 4, opt.beta_lo, opt.beta_hi));
  if (opt.gated) {
    Vec u = uniform(p.g().numel(), seed + 5, std::log(opt.decay_lo), std::log(opt.decay_hi));
    for (double& e : u) e = -std::exp(e);
    x.g = rounded(dt, u);
  }
  x.d_o = rounded(dt, uniform(p.vo().numel(), seed + 6, -1, 1));
  if (opt.init) x.s0 = rounded(dt, uniform(p.state().numel(), seed + 7, -1, 1));
  if (opt.dfinal) x.dfs = rounded(dt, uniform(p.state().numel(), seed + 8, -1, 1));
  return x;
}

// ---- the oracle: S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = scale S_tᵀ q_t ------
Result oracle(const Problem& p, const Data& x) {
  const i64 Dk = p.Dk, Dv = p.Dv, n = Dk * Dv;
  const double scale = p.scale();
  const auto sz = [](i64 v) { return static_cast<std::size_t>(v); };
  Result r;
  r.o.assign(sz(p.vo().numel()), 0.0);
  r.fs.assign(sz(p.state().numel()), 0.0);
  r.dq.assign(sz(p.qk().numel()), 0.0);
  r.dk = r.dq;
  r.dv = r.o;
  r.dbeta.assign(sz(p.g().numel()), 0.0);
  if (!x.g.empty()) r.dg = r.dbeta;
  r.ds0 = r.fs;
  auto qk_at = [&](i64 b, i64 t, i64 h) { return sz(((b * p.T + t) * p.H + h) * Dk); };
  auto vo_at = [&](i64 b, i64 t, i64 h) { return sz(((b * p.T + t) * p.H + h) * Dv); };
  auto g_at = [&](i64 b, i64 t, i64 h) { return sz((b * p.T + t) * p.H + h); };
  for (i64 b = 0; b < p.B; ++b) {
    for (i64 h = 0; h < p.H; ++h) {
      const std::size_t s_at = sz((b * p.H + h) * n);
      // states[t] = S_{t−1}, the state before token t; states[T] = S_T.
      std::vector<Vec> states(sz(p.T + 1), Vec(sz(n), 0.0));
      if (!x.s0.empty()) std::copy_n(&x.s0[s_at], n, states[0].begin());
      for (i64 t = 0; t < p.T; ++t) {
        const Vec& prev = states[sz(t)];
        Vec& S = states[sz(t + 1)];
        const double a = x.g.empty() ? 1.0 : std::exp(x.g[g_at(b, t, h)]);
        const double beta = x.beta[g_at(b, t, h)];
        const double* kt = &x.k[qk_at(b, t, h)];
        const double* vt = &x.v[vo_at(b, t, h)];
        const double* qt = &x.q[qk_at(b, t, h)];
        // (I − β k kᵀ) S_{t−1}, directly: S − β k (kᵀ S).
        Vec kS(sz(Dv), 0.0);
        for (i64 i = 0; i < Dk; ++i) {
          for (i64 e = 0; e < Dv; ++e) kS[sz(e)] += kt[i] * prev[sz(i * Dv + e)];
        }
        for (i64 i = 0; i < Dk; ++i) {
          for (i64 e = 0; e < Dv; ++e) {
            const std::size_t ie = sz(i * Dv + e);
            S[ie] = a * (prev[ie] - beta * kt[i] * kS[sz(e)]) + beta * kt[i] * vt[e];
          }
        }
        for (i64 e = 0; e < Dv; ++e) {
          double acc = 0;
          for (i64 i = 0; i < Dk; ++i) acc += S[sz(i * Dv + e)] * qt[i];
          r.o[vo_at(b, t, h) + sz(e)] = scale * acc;
        }
      }
      std::copy_n(states.back().begin(), n, &r.fs[s_at]);
      // Reverse pass. dS = dL/dS_t. With P = I − β k kᵀ (symmetric), S_t = α P S_{t−1} + β k vᵀ:
      //   dL/dS_{t−1} = α P dS,  dv = β dSᵀ k,  dβ = −α kᵀ dS (S_{t−1}ᵀ k) + kᵀ dS v,
      //   dk = −αβ (dS S_{t−1}ᵀ k + S_{t−1} dSᵀ k) + β dS v,  dα = ⟨dS, P S_{t−1}⟩.
      Vec dS(sz(n), 0.0);
      if (!x.dfs.empty()) std::copy_n(&x.dfs[s_at], n, dS.begin());
      for (i64 t = p.T - 1; t >= 0; --t) {
        const Vec& S = states[sz(t + 1)];
        const Vec& prev = states[sz(t)];
        const double a = x.g.empty() ? 1.0 : std::exp(x.g[g_at(b, t, h)]);
        const double beta = x.beta[g_at(b, t, h)];
        const double* kt = &x.k[qk_at(b, t, h)];
        const double* vt = &x.v[vo_at(b, t, h)];
        const double* qt = &x.q[qk_at(b, t, h)];
        const double* dot = &x.d_o[vo_at(b, t, h)];
        for (i64 i = 0; i < Dk; ++i) {
          double dq = 0;
          for (i64 e = 0; e < Dv; ++e) {
            const std::size_t ie = sz(i * Dv + e);
            dq += S[ie] * dot[e];
            dS[ie] += scale * qt[i] * dot[e];
          }
          r.dq[qk_at(b, t, h) + sz(i)] = scale * dq;
        }
        Vec dSk(sz(Dv), 0.0), Sk(sz(Dv), 0.0);  // dSᵀ k, S_{t−1}ᵀ k
        Vec dSv(sz(Dk), 0.0), dSSk(sz(Dk), 0.0), SdSk(sz(Dk), 0.0);
        for (i64 i = 0; i < Dk; ++i) {
          for (i64 e = 0; e < Dv; ++e) {
            const std::size_t ie = sz(i * Dv + e);
            dSk[sz(e)] += dS[ie] * kt[i];
            Sk[sz(e)] += prev[ie] * kt[i];
            dSv[sz(i)] += dS[ie] * vt[e];
          }
        }
        double kdSv = 0, kdSSk = 0, dalpha = 0;
        for (i64 i = 0; i < Dk; ++i) {
          for (i64 e = 0; e < Dv; ++e) {
            const std::size_t ie = sz(i * Dv + e);
            dSSk[sz(i)] += dS[ie] * Sk[sz(e)];
            SdSk[sz(i)] += prev[ie] * dSk[sz(e)];
            dalpha += dS[ie] * (prev[ie] - beta * kt[i] * Sk[sz(e)]);
          }
          kdSv += kt[i] * dSv[sz(i)];
          kdSSk += kt[i] * dSSk[sz(i)];
        }
        for (i64 e = 0; e < Dv; ++e) r.dv[vo_at(b, t, h) + sz(e)] = beta * dSk[sz(e)];
        for (i64 i = 0; i < Dk; ++i) {
          r.dk[qk_at(b, t, h) + sz(i)] =
              -a * beta * (dSSk[sz(i)] + SdSk[sz(i)]) + beta * dSv[sz(i)];
        }
        r.dbeta[g_at(b, t, h)] = -a * kdSSk + kdSv;
        if (!x.g.empty()) r.dg[g_at(b, t, h)] = a * dalpha;
        // dS ← α (dS − β k (kᵀ dS)).
        for (i64 i = 0; i < Dk; ++i) {
          for (i64 e = 0; e < Dv; ++e) {
            const std::size_t ie = sz(i * Dv + e);
            dS[ie] = a * (dS[ie] - beta * kt[i] * dSk[sz(e)]);
          }
        }
      }
      std::copy_n(dS.begin(), n, &r.ds0[s_at]);
    }
  }
  return r;
}

// ---- the op ------------------------------------------------------------------------------------
HostTensor host(DType dt, const Shape& s, const Vec& values) {
  HostTensor t(dt, s);
  t.from_f64(values);
  return t;
}

HostTensor poisoned(DType dt, const Shape& s) {
  HostTensor t(dt, s);
  testing::poison(t.t());
  return t;
}

Result run_op(DType dt, const Problem& p, const Data& x, int chunk, bool backward = true,
              bool want_ds0 = true) {
  const DType st = stat_dtype(dt);
  HostTensor q = host(dt, p.qk(), x.q), k = host(dt, p.qk(), x.k), v = host(dt, p.vo(), x.v);
  HostTensor beta = host(dt, p.g(), x.beta);
  HostTensor g = host(dt, x.g.empty() ? Shape{0} : p.g(), x.g);
  const Tensor g_t = x.g.empty() ? Tensor{} : g.t();
  HostTensor s0 = host(st, x.s0.empty() ? Shape{0} : p.state(), x.s0);
  const Tensor s0_t = x.s0.empty() ? Tensor{} : s0.t();
  HostTensor o = poisoned(dt, p.vo()), fs = poisoned(st, p.state());
  cpu().lsm_delta_rule_forward(q, k, v, beta, g_t, p.scale(), chunk, s0_t, o, fs);
  Result r;
  r.o = o.to_f64();
  r.fs = fs.to_f64();
  if (!backward) return r;
  HostTensor d_o = host(dt, p.vo(), x.d_o);
  HostTensor dfs = host(st, x.dfs.empty() ? Shape{0} : p.state(), x.dfs);
  HostTensor dq = poisoned(dt, p.qk()), dk = poisoned(dt, p.qk()), dv = poisoned(dt, p.vo());
  HostTensor dbeta = poisoned(dt, p.g()), dg = poisoned(dt, p.g());
  HostTensor ds0 = poisoned(st, p.state());
  cpu().lsm_delta_rule_backward(q, k, v, beta, g_t, p.scale(), chunk, s0_t, d_o,
                                x.dfs.empty() ? Tensor{} : dfs.t(), dq, dk, dv, dbeta,
                                x.g.empty() ? Tensor{} : dg.t(), want_ds0 ? ds0.t() : Tensor{});
  r.dq = dq.to_f64();
  r.dk = dk.to_f64();
  r.dv = dv.to_f64();
  r.dbeta = dbeta.to_f64();
  if (!x.g.empty()) r.dg = dg.to_f64();
  if (want_ds0) r.ds0 = ds0.to_f64();
  return r;
}

bool all_finite(const Vec& x) {
  return std::all_of(x.begin(), x.end(), [](double e) { return std::isfinite(e); });
}

// Every output and gradient of `got` within `bound` (‖got − ref‖/‖ref‖) of `ref`.
void compare(const Result& got, const Result& ref, double bound) {
  const std::pair<const char*, std::pair<const Vec*, const Vec*>> fields[] = {
      {"o", {&got.o, &ref.o}},
      {"final_state", {&got.fs, &ref.fs}},
      {"dq", {&got.dq, &ref.dq}},
      {"dk", {&got.dk, &ref.dk}},
      {"dv", {&got.dv, &ref.dv}},
      {"d_beta", {&got.dbeta, &ref.dbeta}},
      {"d_log_decay", {&got.dg, &ref.dg}},
      {"d_initial_state", {&got.ds0, &ref.ds0}}};
  for (const auto& f : fields) {
    INFO(f.first);
    REQUIRE(f.second.first->size() == f.second.second->size());
    CHECK(all_finite(*f.second.first));
    const double err = rel_error(*f.second.first, *f.second.second);
    INFO("relative error " << std::scientific << err);
    CHECK(err <= bound);
  }
}

const char* name(DType dt) {
  return dtype_name(dt);
}

TEST_CASE("lsm_delta_rule matches the fp64 recurrence", "[lsm][ops]") {
  int run = 0;
  for (DType dt : {DType::f32, DType::f64}) {
    // TESTING.md: fp32 CPU ≤ 1e-5; fp64 ≤ 1e-10.
    const double bound = dt == DType::f32 ? 1e-5 : 1e-10;
    for (i64 T : {1, 7, 63, 65, 130}) {
      for (int chunk : {16, 64}) {
        for (int flags = 0; flags < 8; ++flags) {
          Options opt;
          opt.gated = flags & 1, opt.init = flags & 2, opt.dfinal = flags & 4;
          const Problem p{2, T, 3, 8, 6};
          INFO(name(dt) << " T=" << T << " C=" << chunk << " gated=" << opt.gated
                        << " init=" << opt.init << " d_final=" << opt.dfinal);
          const Data x = make_data(p, dt, 1000 + static_cast<std::uint64_t>(run++) * 16, opt);
          compare(run_op(dt, p, x, chunk), oracle(p, x), bound);
        }
      }
    }
  }
}

TEST_CASE("lsm_delta_rule: un-normalised keys match the recurrence", "[lsm][ops]") {
  // The op must be right for any k: small un-normalised keys (‖k‖ < 1, so (I − β k kᵀ) stays a
  // contraction and the recurrence itself is tame), Dk > Dv and Dk < Dv.
  for (DType dt : {DType::f32, DType::f64}) {
    const double bound = dt == DType::f32 ? 1e-5 : 1e-10;
    for (const Problem& p : {Problem{2, 100, 2, 9, 4}, Problem{1, 77, 3, 3, 10}}) {
      for (bool gated : {false, true}) {
        INFO(name(dt) << " Dk=" << p.Dk << " Dv=" << p.Dv << " gated=" << gated);
        Options opt;
        opt.gated = gated, opt.init = true, opt.dfinal = true, opt.normalised = false;
        opt.k_range = 0.3;
        const Data x = make_data(p, dt, 555, opt);
        compare(run_op(dt, p, x, 16), oracle(p, x), bound);
      }
    }
  }
}

TEST_CASE("lsm_delta_rule: d_initial_state may be left out", "[lsm][ops]") {
  const Problem p{2, 37, 2, 6, 5};
  Options opt;
  opt.init = true, opt.dfinal = true;
  const Data x = make_data(p, DType::f64, 5, opt);
  const Result full = run_op(DType::f64, p, x, 16);
  const Result part = run_op(DType::f64, p, x, 16, true, false);
  CHECK(rel_error(part.dq, full.dq) == 0.0);
  CHECK(rel_error(part.dk, full.dk) == 0.0);
  CHECK(rel_error(part.dv, full.dv) == 0.0);
  CHECK(rel_error(part.dbeta, full.dbeta) == 0.0);
  CHECK(rel_error(part.dg, full.dg) == 0.0);
}

TEST_CASE("lsm_delta_rule reads strided q/k/v views of a fused projection", "[lsm][ops]") {
  // One [B, T, 2·H·Dk + H·Dv] buffer holding q, k and v side by side per token.
  const Problem p{2, 29, 2, 4, 3};
  Options opt;
  opt.init = true;
  const Data x = make_data(p, DType::f64, 11, opt);
  const i64 F = 2 * p.H * p.Dk + p.H * p.Dv, E = p.H * p.Dk;
  HostTensor fused(DType::f64, Shape{p.B, p.T, F});
  double* f = fused.data<double>();
  for (i64 bt = 0; bt < p.B * p.T; ++bt) {
    for (i64 c = 0; c < E; ++c) {
      f[bt * F + c] = x.q[static_cast<std::size_t>(bt * E + c)];
      f[bt * F + E + c] = x.k[static_cast<std::size_t>(bt * E + c)];
    }
    for (i64 c = 0; c < p.H * p.Dv; ++c) {
      f[bt * F + 2 * E + c] = x.v[static_cast<std::size_t>(bt * p.H * p.Dv + c)];
    }
  }
  auto view = [&](i64 offset, i64 dim) {
    Tensor t = fused.t().slice(2, offset, p.H * dim);
    t.shape = Shape{p.B, p.T, p.H, dim};
    t.strides = {p.T * F, F, dim, 1, 0, 0};
    return t;
  };
  const Tensor q = view(0, p.Dk), k = view(E, p.Dk), v = view(2 * E, p.Dv);
  HostTensor beta = host(DType::f64, p.g(), x.beta), g = host(DType::f64, p.g(), x.g);
  HostTensor s0 = host(DType::f64, p.state(), x.s0);
  HostTensor o = poisoned(DType::f64, p.vo());
  cpu().lsm_delta_rule_forward(q, k, v, beta, g, p.scale(), 8, s0, o, Tensor{});
  HostTensor d_o = host(DType::f64, p.vo(), x.d_o);
  HostTensor dq = poisoned(DType::f64, p.qk()), dk = poisoned(DType::f64, p.qk());
  HostTensor dv = poisoned(DType::f64, p.vo()), dbeta = poisoned(DType::f64, p.g());
  HostTensor dg = poisoned(DType::f64, p.g());
  cpu().lsm_delta_rule_backward(q, k, v, beta, g, p.scale(), 8, s0, d_o, Tensor{}, dq, dk, dv,
                                dbeta, dg, Tensor{});
  const Result ref = oracle(p, x);
  CHECK(rel_error(o.to_f64(), ref.o) <= 1e-12);
  CHECK(rel_error(dq.to_f64(), ref.dq) <= 1e-12);
  CHECK(rel_error(dk.to_f64(), ref.dk) <= 1e-12);
  CHECK(rel_error(dv.to_f64(), ref.dv) <= 1e-12);
  CHECK(rel_error(dbeta.to_f64(), ref.dbeta) <= 1e-12);
  CHECK(rel_error(dg.to_f64(), ref.dg) <= 1e-12);
}

// Central finite differences of L = Σ o·R + Σ S_T·R2 with respect to one input field, through
// `forward` (the op, or the oracle).
template <class Forward>
Vec finite_differences(Data x, Vec Data::*field, Forward forward) {
  auto loss = [&](const Data& y) {
    const Result r = forward(y);
    double l = 0;
    for (std::size_t i = 0; i < r.o.size(); ++i) l += r.o[i] * y.d_o[i];
    for (std::size_t i = 0; i < r.fs.size(); ++i) l += r.fs[i] * y.dfs[i];
    return l;
  };
  const double h = 1e-5;
  Vec& values = x.*field;
  Vec grad(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double keep = values[i];
    values[i] = keep + h;
    const double up = loss(x);
    values[i] = keep - h;
    const double down = loss(x);
    values[i] = keep;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

struct GradCase {
  Problem p;
  int chunk;
  bool gated;
  bool normalised;
};

const GradCase kGradCases[] = {
    {{2, 9, 2, 3, 2}, 4, true, true},   {{1, 11, 2, 2, 3}, 16, true, true},
    {{1, 1, 2, 3, 2}, 4, true, true},   {{1, 13, 1, 2, 2}, 1, true, true},
    {{2, 10, 2, 3, 4}, 4, false, true}, {{1, 12, 1, 4, 3}, 5, true, false}};

// Each gradient of `grads` within 1e-6 (TESTING.md) of finite differences through `forward`.
template <class Forward>
void check_gradients(const Data& x, const Result& grads, Forward forward) {
  const std::pair<const char*, std::pair<const Vec*, Vec Data::*>> inputs[] = {
      {"q", {&grads.dq, &Data::q}},         {"k", {&grads.dk, &Data::k}},
      {"v", {&grads.dv, &Data::v}},         {"beta", {&grads.dbeta, &Data::beta}},
      {"log_decay", {&grads.dg, &Data::g}}, {"initial_state", {&grads.ds0, &Data::s0}}};
  for (const auto& in : inputs) {
    const Vec fd = finite_differences(x, in.second.second, forward);
    REQUIRE(fd.size() == in.second.first->size());
    const double err = rel_error(*in.second.first, fd);
    INFO("d " << in.first << ": relative error " << std::scientific << err);
    CHECK(err <= 1e-6);
  }
}

TEST_CASE("lsm_delta_rule gradients match central finite differences of the op (fp64)",
          "[lsm][ops]") {
  for (const GradCase& c : kGradCases) {
    const Problem& p = c.p;
    INFO("T=" << p.T << " C=" << c.chunk << " Dk=" << p.Dk << " Dv=" << p.Dv << " gated=" << c.gated
              << " normalised=" << c.normalised);
    Options opt;
    opt.gated = c.gated, opt.init = true, opt.dfinal = true, opt.normalised = c.normalised;
    opt.k_range = 0.5, opt.decay_lo = 0.05;
    const Data x = make_data(p, DType::f64, 31, opt);
    check_gradients(x, run_op(DType::f64, p, x, c.chunk),
                    [&](const Data& y) { return run_op(DType::f64, p, y, c.chunk, false); });
  }
}

TEST_CASE("lsm_delta_rule oracle's reverse pass matches its finite differences", "[lsm][ops]") {
  // The hand-written reverse pass of the oracle is itself checked, so an error shared by the
  // oracle and the op cannot hide.
  for (const GradCase& c : kGradCases) {
    const Problem& p = c.p;
    INFO("T=" << p.T << " gated=" << c.gated << " normalised=" << c.normalised);
    Options opt;
    opt.gated = c.gated, opt.init = true, opt.dfinal = true, opt.normalised = c.normalised;
    opt.k_range = 0.5, opt.decay_lo = 0.05;
    const Data x = make_data(p, DType::f64, 77, opt);
    check_gradients(x, oracle(p, x), [&](const Data& y) { return oracle(p, y); });
  }
}

TEST_CASE("lsm_delta_rule does not depend on the chunk size", "[lsm][ops]") {
  const Problem p{2, 150, 2, 8, 12};
  for (DType dt : {DType::f32, DType::f64}) {
    for (bool gated : {false, true}) {
      const double bound = dt == DType::f32 ? 1e-5 : 1e-12;
      Options opt;
      opt.gated = gated, opt.init = true, opt.dfinal = true;
      const Data x = make_data(p, dt, 99, opt);
      const Result base = run_op(dt, p, x, 16);
      for (int chunk : {1, 7, 64, 150, 1000}) {
        INFO(name(dt) << " gated=" << gated << " C=" << chunk << " vs C=16");
        compare(run_op(dt, p, x, chunk), base, bound);
      }
    }
  }
}

TEST_CASE("lsm_delta_rule: long sequence, strong decay, beta near 1: finite and exact",
          "[lsm][ops]") {
  // log α from −5 to −0.001 (per-chunk cumulative decays down to −320, far below exp's f32 range;
  // across the sequence ≈ −20000) and β in [0.9, 1): the triangular solve is at its most
  // ill-conditioned with unit keys and β → 1, and only in-chunk differences b_i − b_j ≤ 0 are
  // safe to exponentiate. Deltanet (no decay) as well: the state is a product of projections.
  const Problem p{1, 8192, 2, 16, 8};
  for (DType dt : {DType::f32, DType::f64}) {
    for (bool gated : {true, false}) {
      INFO(name(dt) << " gated=" << gated);
      Options opt;
      opt.gated = gated, opt.init = true, opt.dfinal = true;
      opt.decay_lo = 0.001, opt.decay_hi = 5.0, opt.beta_lo = 0.9, opt.beta_hi = 1.0;
      const Data x = make_data(p, dt, 4242, opt);
      compare(run_op(dt, p, x, 64), oracle(p, x), dt == DType::f32 ? 1e-4 : 1e-10);
    }
  }
}

}  // namespace
}  // namespace linmoe
