// The scalar-decay LSM core (kernels/ops.h, MODEL.md section 3) on the CPU backend against an
// fp64 token-by-token recurrence and its hand-written reverse pass, against central finite
// differences of the op itself, across chunk sizes, and on a long sequence with strong decay.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <ios>
#include <memory>
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
  i64 B, T, H, Hk, Dk, Dv;
  Shape qk() const { return Shape{B, T, Hk, Dk}; }
  Shape vo() const { return Shape{B, T, H, Dv}; }
  Shape g() const { return Shape{B, T, H}; }
  Shape state() const { return Shape{B, H, Dk, Dv}; }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(Dk)); }
};

// Inputs as doubles; s0 / dfs empty means "not given" (Tensor{}).
struct Data {
  Vec q, k, v, g, s0, d_o, dfs;
};

struct Result {
  Vec o, fs, dq, dk, dv, dg, ds0;
};

Vec uniform(i64 n, std::uint64_t seed, double lo, double hi) {
  CounterRng rng(seed, "test.lsm_scalar_decay");
  Vec x(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = lo + (hi - lo) * rng.uniform(i);
  return x;
}

// log decays −exp(u), u uniform in [log lo, log hi]: every order of magnitude equally likely.
Vec log_decays(i64 n, std::uint64_t seed, double lo, double hi) {
  Vec u = uniform(n, seed, std::log(lo), std::log(hi));
  for (double& x : u) x = -std::exp(x);
  return u;
}

// Values exactly representable in dtype, so the oracle sees what the op sees.
Vec rounded(DType dt, Vec x) {
  if (dt == DType::f32) {
    for (double& e : x) e = static_cast<double>(static_cast<float>(e));
  }
  return x;
}

// Log decays −exp(u), u uniform in [log lo, log hi]. With `resets`, tokens t ≡ 3 (mod 10) get
// −650 instead: below exp's range in f32 and f64 (the state is wiped), which sends their chunk
// down the kernel's one-exp-per-pair path.
struct Decays {
  double lo = 0.01, hi = 1.5;
  bool resets = false;
};

Data make_data(const Problem& p, DType dt, std::uint64_t seed, bool with_init, bool with_dfinal,
               Decays decays = {}) {
  Data x;
  x.q = rounded(dt, uniform(p.qk().numel(), seed + 1, -1, 1));
  x.k = rounded(dt, uniform(p.qk().numel(), seed + 2, -1, 1));
  x.v = rounded(dt, uniform(p.vo().numel(), seed + 3, -1, 1));
  x.g = log_decays(p.g().numel(), seed + 4, decays.lo, decays.hi);
  for (std::size_t i = 0; decays.resets && i < x.g.size(); ++i) {
    if ((static_cast<i64>(i) / p.H) % p.T % 10 == 3) x.g[i] = -650.0;
  }
  x.g = rounded(dt, x.g);
  x.d_o = rounded(dt, uniform(p.vo().numel(), seed + 5, -1, 1));
  if (with_init) x.s0 = rounded(dt, uniform(p.state().numel(), seed + 6, -1, 1));
  if (with_dfinal) x.dfs = rounded(dt, uniform(p.state().numel(), seed + 7, -1, 1));
  return x;
}

// ---- the oracle: S_t = exp(g_t) S_{t−1} + k_t v_tᵀ, o_t = scale S_tᵀ q_t, in fp64 -------------
Result oracle(const Problem& p, const Data& x) {
  const i64 n = p.Dk * p.Dv;
  const double scale = p.scale();
  Result r;
  r.o.assign(static_cast<std::size_t>(p.vo().numel()), 0.0);
  r.fs.assign(static_cast<std::size_t>(p.state().numel()), 0.0);
  r.dq.assign(static_cast<std::size_t>(p.qk().numel()), 0.0);
  r.dk = r.dq;
  r.dv = r.o;
  r.dg.assign(static_cast<std::size_t>(p.g().numel()), 0.0);
  r.ds0 = r.fs;
  auto qk_at = [&](i64 b, i64 t, i64 hk) {
    return static_cast<std::size_t>(((b * p.T + t) * p.Hk + hk) * p.Dk);
  };
  auto vo_at = [&](i64 b, i64 t, i64 h) {
    return static_cast<std::size_t>(((b * p.T + t) * p.H + h) * p.Dv);
  };
  auto g_at = [&](i64 b, i64 t, i64 h) {
    return static_cast<std::size_t>((b * p.T + t) * p.H + h);
  };
  for (i64 b = 0; b < p.B; ++b) {
    for (i64 h = 0; h < p.H; ++h) {
      const i64 hk = h * p.Hk / p.H;
      const auto s_at = static_cast<std::size_t>((b * p.H + h) * n);
      // states[t] = S_{t−1}: the state before token t; states[T] = S_T.
      std::vector<Vec> states(static_cast<std::size_t>(p.T + 1),
                              Vec(static_cast<std::size_t>(n), 0.0));
      if (!x.s0.empty()) std::copy_n(&x.s0[s_at], n, states[0].begin());
      for (i64 t = 0; t < p.T; ++t) {
        const Vec& prev = states[static_cast<std::size_t>(t)];
        Vec& S = states[static_cast<std::size_t>(t + 1)];
        const double a = std::exp(x.g[g_at(b, t, h)]);
        const double* kt = &x.k[qk_at(b, t, hk)];
        const double* vt = &x.v[vo_at(b, t, h)];
        const double* qt = &x.q[qk_at(b, t, hk)];
        for (i64 i = 0; i < p.Dk; ++i) {
          for (i64 e = 0; e < p.Dv; ++e) {
            const auto ie = static_cast<std::size_t>(i * p.Dv + e);
            S[ie] = a * prev[ie] + kt[i] * vt[e];
          }
        }
        for (i64 e = 0; e < p.Dv; ++e) {
          double acc = 0;
          for (i64 i = 0; i < p.Dk; ++i) acc += S[static_cast<std::size_t>(i * p.Dv + e)] * qt[i];
          r.o[vo_at(b, t, h) + static_cast<std::size_t>(e)] = scale * acc;
        }
      }
      std::copy_n(states.back().begin(), n, &r.fs[s_at]);
      // Reverse pass: dS is dL/dS_t, gathering o_t's and S_{t+1}'s contributions.
      Vec dS(static_cast<std::size_t>(n), 0.0);
      if (!x.dfs.empty()) std::copy_n(&x.dfs[s_at], n, dS.begin());
      for (i64 t = p.T - 1; t >= 0; --t) {
        const Vec& S = states[static_cast<std::size_t>(t + 1)];
        const Vec& prev = states[static_cast<std::size_t>(t)];
        const double a = std::exp(x.g[g_at(b, t, h)]);
        const double* kt = &x.k[qk_at(b, t, hk)];
        const double* vt = &x.v[vo_at(b, t, h)];
        const double* qt = &x.q[qk_at(b, t, hk)];
        const double* dot = &x.d_o[vo_at(b, t, h)];
        for (i64 i = 0; i < p.Dk; ++i) {
          double dq = 0;
          for (i64 e = 0; e < p.Dv; ++e) {
            const auto ie = static_cast<std::size_t>(i * p.Dv + e);
            dq += S[ie] * dot[e];
            dS[ie] += scale * qt[i] * dot[e];
          }
          r.dq[qk_at(b, t, hk) + static_cast<std::size_t>(i)] += scale * dq;
        }
        double dg = 0;
        for (i64 i = 0; i < p.Dk; ++i) {
          double dk = 0;
          for (i64 e = 0; e < p.Dv; ++e) {
            const auto ie = static_cast<std::size_t>(i * p.Dv + e);
            dk += dS[ie] * vt[e];
            r.dv[vo_at(b, t, h) + static_cast<std::size_t>(e)] += dS[ie] * kt[i];
            dg += dS[ie] * prev[ie];
          }
          r.dk[qk_at(b, t, hk) + static_cast<std::size_t>(i)] += dk;
        }
        r.dg[g_at(b, t, h)] = a * dg;
        for (double& e : dS) e *= a;
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

struct OpOptions {
  bool want_dg = true;
  bool want_ds0 = true;
};

Result run_op(DType dt, const Problem& p, const Data& x, int chunk, bool backward = true,
              OpOptions opt = {}) {
  const DType st = stat_dtype(dt);
  HostTensor q = host(dt, p.qk(), x.q), k = host(dt, p.qk(), x.k), v = host(dt, p.vo(), x.v);
  HostTensor g = host(dt, p.g(), x.g);
  HostTensor s0 = host(st, x.s0.empty() ? Shape{0} : p.state(), x.s0);
  const Tensor s0_t = x.s0.empty() ? Tensor{} : s0.t();
  HostTensor o = poisoned(dt, p.vo()), fs = poisoned(st, p.state());
  cpu().lsm_scalar_decay_forward(q, k, v, g, p.scale(), chunk, s0_t, o, fs);
  Result r;
  r.o = o.to_f64();
  r.fs = fs.to_f64();
  if (!backward) return r;
  HostTensor d_o = host(dt, p.vo(), x.d_o);
  HostTensor dfs = host(st, x.dfs.empty() ? Shape{0} : p.state(), x.dfs);
  HostTensor dq = poisoned(dt, p.qk()), dk = poisoned(dt, p.qk()), dv = poisoned(dt, p.vo());
  HostTensor dg = poisoned(dt, p.g()), ds0 = poisoned(st, p.state());
  cpu().lsm_scalar_decay_backward(
      q, k, v, g, p.scale(), chunk, s0_t, d_o, x.dfs.empty() ? Tensor{} : dfs.t(), dq, dk, dv,
      opt.want_dg ? dg.t() : Tensor{}, opt.want_ds0 ? ds0.t() : Tensor{});
  r.dq = dq.to_f64();
  r.dk = dk.to_f64();
  r.dv = dv.to_f64();
  if (opt.want_dg) r.dg = dg.to_f64();
  if (opt.want_ds0) r.ds0 = ds0.to_f64();
  return r;
}

bool all_finite(const Vec& x) {
  for (double e : x) {
    if (!std::isfinite(e)) return false;
  }
  return true;
}

// Every output and gradient of `got` within `bound` (‖got − ref‖/‖ref‖) of `ref`.
void compare(const Result& got, const Result& ref, double bound) {
  const std::pair<const char*, std::pair<const Vec*, const Vec*>> fields[] = {
      {"o", {&got.o, &ref.o}},
      {"final_state", {&got.fs, &ref.fs}},
      {"dq", {&got.dq, &ref.dq}},
      {"dk", {&got.dk, &ref.dk}},
      {"dv", {&got.dv, &ref.dv}},
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

TEST_CASE("lsm_scalar_decay matches the fp64 recurrence", "[lsm][ops]") {
  struct Heads {
    i64 H, Hk;
  };
  int run = 0;
  for (DType dt : {DType::f32, DType::f64}) {
    // TESTING.md: fp32 CPU ≤ 1e-5; fp64 ≤ 1e-10.
    const double bound = dt == DType::f32 ? 1e-5 : 1e-10;
    for (i64 T : {1, 7, 63, 65, 130, 200}) {
      for (int chunk : {16, 64}) {
        for (Heads heads : {Heads{4, 4}, Heads{4, 1}, Heads{4, 2}}) {
          for (int flags = 0; flags < 8; ++flags) {
            const bool with_init = flags & 1, with_dfinal = flags & 2, resets = flags & 4;
            const Problem p{2, T, heads.H, heads.Hk, 8, 6};
            INFO(name(dt) << " T=" << T << " C=" << chunk << " H=" << p.H << " Hk=" << p.Hk
                          << " init=" << with_init << " d_final=" << with_dfinal
                          << " resets=" << resets);
            const Data x = make_data(p, dt, 1000 + static_cast<std::uint64_t>(run++) * 16,
                                     with_init, with_dfinal, Decays{0.01, 1.5, resets});
            compare(run_op(dt, p, x, chunk), oracle(p, x), bound);
          }
        }
      }
    }
  }
}

TEST_CASE("lsm_scalar_decay: no decay and constant decay match the recurrence", "[lsm][ops]") {
  // linear_attention (g = 0, the state only grows) and lightning-like constant per-head decays.
  const Problem p{1, 100, 3, 3, 5, 7};
  for (DType dt : {DType::f32, DType::f64}) {
    const double bound = dt == DType::f32 ? 1e-5 : 1e-10;
    for (int variant = 0; variant < 2; ++variant) {
      INFO(name(dt) << (variant == 0 ? " g = 0" : " constant decay"));
      Data x = make_data(p, dt, 77, true, true);
      for (i64 t = 0; t < p.T; ++t) {
        for (i64 h = 0; h < p.H; ++h) {
          x.g[static_cast<std::size_t>(t * p.H + h)] =
              variant == 0 ? 0.0 : rounded(dt, {-std::pow(2.0, -8.0 * (h + 1) / p.H)})[0];
        }
      }
      compare(run_op(dt, p, x, 16), oracle(p, x), bound);
    }
  }
}

TEST_CASE("lsm_scalar_decay: optional gradients may be left out", "[lsm][ops]") {
  const Problem p{2, 37, 4, 2, 6, 5};
  const Data x = make_data(p, DType::f64, 5, true, true);
  const Result full = run_op(DType::f64, p, x, 16);
  const Result part = run_op(DType::f64, p, x, 16, true, OpOptions{false, false});
  CHECK(rel_error(part.dq, full.dq) == 0.0);
  CHECK(rel_error(part.dk, full.dk) == 0.0);
  CHECK(rel_error(part.dv, full.dv) == 0.0);
}

TEST_CASE("lsm_scalar_decay reads strided q/k/v views of a fused projection", "[lsm][ops]") {
  // One [B, T, 2·Hk·Dk + H·Dv] buffer holding q, k and v side by side per token.
  const Problem p{2, 29, 4, 2, 4, 3};
  const Data x = make_data(p, DType::f64, 11, true, false);
  const i64 F = 2 * p.Hk * p.Dk + p.H * p.Dv;
  HostTensor fused(DType::f64, Shape{p.B, p.T, F});
  double* f = fused.data<double>();
  for (i64 bt = 0; bt < p.B * p.T; ++bt) {
    for (i64 c = 0; c < p.Hk * p.Dk; ++c) {
      f[bt * F + c] = x.q[static_cast<std::size_t>(bt * p.Hk * p.Dk + c)];
      f[bt * F + p.Hk * p.Dk + c] = x.k[static_cast<std::size_t>(bt * p.Hk * p.Dk + c)];
    }
    for (i64 c = 0; c < p.H * p.Dv; ++c) {
      f[bt * F + 2 * p.Hk * p.Dk + c] = x.v[static_cast<std::size_t>(bt * p.H * p.Dv + c)];
    }
  }
  auto view = [&](i64 offset, i64 heads, i64 dim) {
    Tensor t = fused.t().slice(2, offset, heads * dim);
    t.shape = Shape{p.B, p.T, heads, dim};
    t.strides = {p.T * F, F, dim, 1, 0, 0};
    return t;
  };
  const Tensor q = view(0, p.Hk, p.Dk), k = view(p.Hk * p.Dk, p.Hk, p.Dk);
  const Tensor v = view(2 * p.Hk * p.Dk, p.H, p.Dv);
  HostTensor g = host(DType::f64, p.g(), x.g), s0 = host(DType::f64, p.state(), x.s0);
  HostTensor o = poisoned(DType::f64, p.vo());
  cpu().lsm_scalar_decay_forward(q, k, v, g, p.scale(), 8, s0, o, Tensor{});
  HostTensor d_o = host(DType::f64, p.vo(), x.d_o);
  HostTensor dq = poisoned(DType::f64, p.qk()), dk = poisoned(DType::f64, p.qk());
  HostTensor dv = poisoned(DType::f64, p.vo()), dg = poisoned(DType::f64, p.g());
  cpu().lsm_scalar_decay_backward(q, k, v, g, p.scale(), 8, s0, d_o, Tensor{}, dq, dk, dv, dg,
                                  Tensor{});
  const Result ref = oracle(p, x);
  CHECK(rel_error(o.to_f64(), ref.o) <= 1e-12);
  CHECK(rel_error(dq.to_f64(), ref.dq) <= 1e-12);
  CHECK(rel_error(dk.to_f64(), ref.dk) <= 1e-12);
  CHECK(rel_error(dv.to_f64(), ref.dv) <= 1e-12);
  CHECK(rel_error(dg.to_f64(), ref.dg) <= 1e-12);
}

// L = Σ o·R + Σ final_state·R2 through the op's forward; its gradient is the op's backward with
// d_o = R and d_final_state = R2.
double loss(const Problem& p, const Data& x, int chunk) {
  const Result r = run_op(DType::f64, p, x, chunk, false);
  double l = 0;
  for (std::size_t i = 0; i < r.o.size(); ++i) l += r.o[i] * x.d_o[i];
  for (std::size_t i = 0; i < r.fs.size(); ++i) l += r.fs[i] * x.dfs[i];
  return l;
}

Vec finite_differences(const Problem& p, Data x, Vec Data::*field, int chunk) {
  const double h = 1e-5;
  Vec& values = x.*field;
  Vec grad(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double keep = values[i];
    values[i] = keep + h;
    const double up = loss(p, x, chunk);
    values[i] = keep - h;
    const double down = loss(p, x, chunk);
    values[i] = keep;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

TEST_CASE("lsm_scalar_decay gradients match central finite differences (fp64)", "[lsm][ops]") {
  struct Case {
    Problem p;
    int chunk;
    bool resets;
  };
  for (const Case& c : {Case{{2, 9, 4, 2, 3, 2}, 4, false}, Case{{1, 11, 2, 2, 2, 3}, 16, false},
                        Case{{1, 1, 2, 1, 3, 2}, 4, false}, Case{{1, 13, 3, 1, 2, 2}, 1, false},
                        Case{{1, 15, 2, 1, 3, 2}, 16, true}}) {
    const Problem& p = c.p;
    INFO("T=" << p.T << " C=" << c.chunk << " H=" << p.H << " Hk=" << p.Hk
              << " resets=" << c.resets);
    const Data x = make_data(p, DType::f64, 31, true, true, Decays{0.05, 1.5, c.resets});
    const Result op = run_op(DType::f64, p, x, c.chunk);
    // TESTING.md: relative error ≤ 1e-6.
    const std::pair<const char*, std::pair<const Vec*, Vec Data::*>> inputs[] = {
        {"q", {&op.dq, &Data::q}},
        {"k", {&op.dk, &Data::k}},
        {"v", {&op.dv, &Data::v}},
        {"log_decay", {&op.dg, &Data::g}},
        {"initial_state", {&op.ds0, &Data::s0}}};
    for (const auto& in : inputs) {
      const double err =
          rel_error(*in.second.first, finite_differences(p, x, in.second.second, c.chunk));
      INFO("d " << in.first << ": relative error " << std::scientific << err);
      CHECK(err <= 1e-6);
    }
  }
}

TEST_CASE("lsm_scalar_decay does not depend on the chunk size", "[lsm][ops]") {
  const Problem p{2, 150, 4, 2, 8, 12};
  for (DType dt : {DType::f32, DType::f64}) {
    const double bound = dt == DType::f32 ? 1e-5 : 1e-12;
    const Data x = make_data(p, dt, 99, true, true);
    const Result base = run_op(dt, p, x, 16);
    for (int chunk : {1, 64, 150, 1000}) {
      INFO(name(dt) << " C=" << chunk << " vs C=16");
      compare(run_op(dt, p, x, chunk), base, bound);
    }
  }
}

TEST_CASE("lsm_scalar_decay: long sequence with strong decay stays finite and exact",
          "[lsm][ops]") {
  // log decays from −5 to −0.001: per-chunk exponents reach −320, far below exp's f32 range,
  // and across the sequence −20000: only the chunk form's differences b_i − b_j ≤ 0 are safe.
  const Problem p{1, 8192, 2, 1, 16, 8};
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(name(dt));
    const Data x = make_data(p, dt, 4242, true, true, Decays{0.001, 5.0, false});
    const Result ref = oracle(p, x);
    compare(run_op(dt, p, x, 64), ref, dt == DType::f32 ? 1e-4 : 1e-10);
  }
}

}  // namespace
}  // namespace linmoe
