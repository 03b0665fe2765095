// The vector-decay LSM core (kernels/ops.h, MODEL.md section 3: gla, hgrn2) on the CPU backend
// against an fp64 token-by-token recurrence and its hand-written reverse pass, against central
// finite differences of the op itself, across chunk sizes, and on a long sequence with strong
// per-channel decays.
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
  Shape qk() const { return Shape{B, T, H, Dk}; }  // q, k, log_decay
  Shape vo() const { return Shape{B, T, H, Dv}; }
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
  CounterRng rng(seed, "test.lsm_vector_decay");
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

// Log decays −exp(u) per token and channel, u uniform in [log lo, log hi]: every order of
// magnitude equally likely. With `resets`, even channels of tokens t ≡ 3 (mod 10) get −650:
// below exp's range in f32 and f64 (that channel of the state is wiped, the others are not).
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
  x.g = uniform(p.qk().numel(), seed + 4, std::log(decays.lo), std::log(decays.hi));
  for (std::size_t i = 0; i < x.g.size(); ++i) {
    const i64 c = static_cast<i64>(i) % p.Dk, t = static_cast<i64>(i) / (p.H * p.Dk) % p.T;
    x.g[i] = decays.resets && t % 10 == 3 && c % 2 == 0 ? -650.0 : -std::exp(x.g[i]);
  }
  x.g = rounded(dt, x.g);
  x.d_o = rounded(dt, uniform(p.vo().numel(), seed + 5, -1, 1));
  if (with_init) x.s0 = rounded(dt, uniform(p.state().numel(), seed + 6, -1, 1));
  if (with_dfinal) x.dfs = rounded(dt, uniform(p.state().numel(), seed + 7, -1, 1));
  return x;
}

// ---- the oracle: S_t = Diag(exp(g_t)) S_{t−1} + k_t v_tᵀ, o_t = scale S_tᵀ q_t, in fp64 -------
Result oracle(const Problem& p, const Data& x) {
  const i64 n = p.Dk * p.Dv;
  const double scale = p.scale();
  Result r;
  r.o.assign(static_cast<std::size_t>(p.vo().numel()), 0.0);
  r.fs.assign(static_cast<std::size_t>(p.state().numel()), 0.0);
  r.dq.assign(static_cast<std::size_t>(p.qk().numel()), 0.0);
  r.dk = r.dq;
  r.dg = r.dq;
  r.dv = r.o;
  r.ds0 = r.fs;
  auto qk_at = [&](i64 b, i64 t, i64 h) {
    return static_cast<std::size_t>(((b * p.T + t) * p.H + h) * p.Dk);
  };
  auto vo_at = [&](i64 b, i64 t, i64 h) {
    return static_cast<std::size_t>(((b * p.T + t) * p.H + h) * p.Dv);
  };
  auto ie = [&](i64 i, i64 e) { return static_cast<std::size_t>(i * p.Dv + e); };
  for (i64 b = 0; b < p.B; ++b) {
    for (i64 h = 0; h < p.H; ++h) {
      const auto s_at = static_cast<std::size_t>((b * p.H + h) * n);
      // states[t] = S_{t−1}: the state before token t; states[T] = S_T.
      std::vector<Vec> states(static_cast<std::size_t>(p.T + 1),
                              Vec(static_cast<std::size_t>(n), 0.0));
      if (!x.s0.empty()) std::copy_n(&x.s0[s_at], n, states[0].begin());
      for (i64 t = 0; t < p.T; ++t) {
        const Vec& prev = states[static_cast<std::size_t>(t)];
        Vec& S = states[static_cast<std::size_t>(t + 1)];
        const double* gt = &x.g[qk_at(b, t, h)];
        const double* kt = &x.k[qk_at(b, t, h)];
        const double* vt = &x.v[vo_at(b, t, h)];
        const double* qt = &x.q[qk_at(b, t, h)];
        for (i64 i = 0; i < p.Dk; ++i) {
          const double a = std::exp(gt[i]);
          for (i64 e = 0; e < p.Dv; ++e) S[ie(i, e)] = a * prev[ie(i, e)] + kt[i] * vt[e];
        }
        for (i64 e = 0; e < p.Dv; ++e) {
          double acc = 0;
          for (i64 i = 0; i < p.Dk; ++i) acc += S[ie(i, e)] * qt[i];
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
        const std::size_t at = qk_at(b, t, h);
        const double* gt = &x.g[at];
        const double* kt = &x.k[at];
        const double* vt = &x.v[vo_at(b, t, h)];
        const double* qt = &x.q[at];
        const double* dot = &x.d_o[vo_at(b, t, h)];
        for (i64 i = 0; i < p.Dk; ++i) {
          double dq = 0;
          for (i64 e = 0; e < p.Dv; ++e) {
            dq += S[ie(i, e)] * dot[e];
            dS[ie(i, e)] += scale * qt[i] * dot[e];
          }
          r.dq[at + static_cast<std::size_t>(i)] = scale * dq;
        }
        for (i64 i = 0; i < p.Dk; ++i) {
          const double a = std::exp(gt[i]);
          double dk = 0, dg = 0;
          for (i64 e = 0; e < p.Dv; ++e) {
            dk += dS[ie(i, e)] * vt[e];
            r.dv[vo_at(b, t, h) + static_cast<std::size_t>(e)] += dS[ie(i, e)] * kt[i];
            dg += dS[ie(i, e)] * prev[ie(i, e)];
          }
          r.dk[at + static_cast<std::size_t>(i)] = dk;
          r.dg[at + static_cast<std::size_t>(i)] = a * dg;
          for (i64 e = 0; e < p.Dv; ++e) dS[ie(i, e)] *= a;
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

struct OpOptions {
  bool want_dg = true;
  bool want_ds0 = true;
};

Result run_op(DType dt, const Problem& p, const Data& x, int chunk, bool backward = true,
              OpOptions opt = {}) {
  const DType st = stat_dtype(dt);
  HostTensor q = host(dt, p.qk(), x.q), k = host(dt, p.qk(), x.k), v = host(dt, p.vo(), x.v);
  HostTensor g = host(dt, p.qk(), x.g);
  HostTensor s0 = host(st, x.s0.empty() ? Shape{0} : p.state(), x.s0);
  const Tensor s0_t = x.s0.empty() ? Tensor{} : s0.t();
  HostTensor o = poisoned(dt, p.vo()), fs = poisoned(st, p.state());
  cpu().lsm_vector_decay_forward(q, k, v, g, p.scale(), chunk, s0_t, o, fs);
  Result r;
  r.o = o.to_f64();
  r.fs = fs.to_f64();
  if (!backward) return r;
  HostTensor d_o = host(dt, p.vo(), x.d_o);
  HostTensor dfs = host(st, x.dfs.empty() ? Shape{0} : p.state(), x.dfs);
  HostTensor dq = poisoned(dt, p.qk()), dk = poisoned(dt, p.qk()), dv = poisoned(dt, p.vo());
  HostTensor dg = poisoned(dt, p.qk()), ds0 = poisoned(st, p.state());
  cpu().lsm_vector_decay_backward(
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

TEST_CASE("lsm_vector_decay matches the fp64 recurrence", "[lsm][ops]") {
  int run = 0;
  for (DType dt : {DType::f32, DType::f64}) {
    // TESTING.md: fp32 CPU ≤ 1e-5; fp64 ≤ 1e-10.
    const double bound = dt == DType::f32 ? 1e-5 : 1e-10;
    for (i64 T : {1, 7, 63, 65, 130}) {
      for (int chunk : {16, 64}) {
        for (int flags = 0; flags < 8; ++flags) {
          const bool with_init = flags & 1, with_dfinal = flags & 2, resets = flags & 4;
          const Problem p{2, T, 3, 8, 6};
          INFO(name(dt) << " T=" << T << " C=" << chunk << " init=" << with_init
                        << " d_final=" << with_dfinal << " resets=" << resets);
          const Data x = make_data(p, dt, 1000 + static_cast<std::uint64_t>(run++) * 16, with_init,
                                   with_dfinal, Decays{0.01, 1.5, resets});
          compare(run_op(dt, p, x, chunk), oracle(p, x), bound);
        }
      }
    }
  }
}

TEST_CASE("lsm_vector_decay: no decay and hgrn2-like decays match the recurrence", "[lsm][ops]") {
  // g = 0 (the state only grows), and logsigmoid-like decays with k = 1 − exp(g) as in hgrn2.
  const Problem p{1, 100, 2, 5, 7};
  for (DType dt : {DType::f32, DType::f64}) {
    const double bound = dt == DType::f32 ? 1e-5 : 1e-10;
    for (int variant = 0; variant < 2; ++variant) {
      INFO(name(dt) << (variant == 0 ? " g = 0" : " hgrn2"));
      Data x = make_data(p, dt, 77, true, true, Decays{0.001, 3.0, false});
      if (variant == 0) {
        for (double& e : x.g) e = 0.0;
      } else {
        for (std::size_t i = 0; i < x.k.size(); ++i) x.k[i] = 1.0 - std::exp(x.g[i]);
        x.k = rounded(dt, x.k);
      }
      compare(run_op(dt, p, x, 16), oracle(p, x), bound);
    }
  }
}

TEST_CASE("lsm_vector_decay: optional gradients may be left out", "[lsm][ops]") {
  const Problem p{2, 37, 3, 6, 5};
  const Data x = make_data(p, DType::f64, 5, true, true);
  const Result full = run_op(DType::f64, p, x, 16);
  const Result part = run_op(DType::f64, p, x, 16, true, OpOptions{false, false});
  CHECK(rel_error(part.dq, full.dq) == 0.0);
  CHECK(rel_error(part.dk, full.dk) == 0.0);
  CHECK(rel_error(part.dv, full.dv) == 0.0);
}

TEST_CASE("lsm_vector_decay reads strided views of a fused projection", "[lsm][ops]") {
  // One [B, T, 3·H·Dk + H·Dv] buffer holding q, k, g and v side by side per token; the outputs
  // and gradients are strided views too.
  const Problem p{2, 29, 3, 4, 3};
  const Data x = make_data(p, DType::f64, 11, true, false);
  const i64 Q = p.H * p.Dk, F = 3 * Q + p.H * p.Dv;
  auto fused = [&](const Vec* parts[4]) {
    HostTensor t(DType::f64, Shape{p.B, p.T, F});
    double* f = t.data<double>();
    for (i64 bt = 0; bt < p.B * p.T; ++bt) {
      for (int which = 0; which < 4; ++which) {
        const i64 width = which < 3 ? Q : p.H * p.Dv;
        for (i64 c = 0; c < width; ++c) {
          f[bt * F + which * Q + c] =
              parts[which] ? (*parts[which])[static_cast<std::size_t>(bt * width + c)]
                           : std::nan("");
        }
      }
    }
    return t;
  };
  auto view = [&](const HostTensor& t, int which) {
    const i64 dim = which < 3 ? p.Dk : p.Dv;
    Tensor v = t.t().slice(2, which * Q, p.H * dim);
    v.shape = Shape{p.B, p.T, p.H, dim};
    v.strides = {p.T * F, F, dim, 1, 0, 0};
    return v;
  };
  const Vec* in_parts[4] = {&x.q, &x.k, &x.g, &x.v};
  const Vec* none[4] = {nullptr, nullptr, nullptr, nullptr};
  const HostTensor in = fused(in_parts), outs = fused(none), grads = fused(none);
  const Tensor q = view(in, 0), k = view(in, 1), g = view(in, 2), v = view(in, 3);
  HostTensor s0 = host(DType::f64, p.state(), x.s0);
  cpu().lsm_vector_decay_forward(q, k, v, g, p.scale(), 8, s0, view(outs, 3), Tensor{});
  HostTensor d_o = host(DType::f64, p.vo(), x.d_o);
  cpu().lsm_vector_decay_backward(q, k, v, g, p.scale(), 8, s0, d_o, Tensor{}, view(grads, 0),
                                  view(grads, 1), view(grads, 3), view(grads, 2), Tensor{});
  // Reads a [B, T, H, D] view back as a dense vector.
  auto dense = [&](const Tensor& t) {
    Vec out;
    const double* base = t.ptr<double>();
    for (i64 bt = 0; bt < p.B * p.T; ++bt) {
      for (i64 c = 0; c < t.shape[2] * t.shape[3]; ++c) out.push_back(base[bt * F + c]);
    }
    return out;
  };
  const Result ref = oracle(p, x);
  CHECK(rel_error(dense(view(outs, 3)), ref.o) <= 1e-12);
  CHECK(rel_error(dense(view(grads, 0)), ref.dq) <= 1e-12);
  CHECK(rel_error(dense(view(grads, 1)), ref.dk) <= 1e-12);
  CHECK(rel_error(dense(view(grads, 2)), ref.dg) <= 1e-12);
  CHECK(rel_error(dense(view(grads, 3)), ref.dv) <= 1e-12);
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

TEST_CASE("lsm_vector_decay gradients match central finite differences (fp64)", "[lsm][ops]") {
  struct Case {
    Problem p;
    int chunk;
    bool resets;
  };
  // Chunks of 1 to 64 tokens: one sub-chunk of 16, and three (every kind of block pair).
  for (const Case& c : {Case{{2, 9, 2, 3, 2}, 4, false}, Case{{1, 11, 2, 2, 3}, 16, false},
                        Case{{1, 1, 2, 3, 2}, 4, false}, Case{{1, 13, 1, 2, 2}, 1, false},
                        Case{{1, 23, 1, 3, 2}, 16, true}, Case{{1, 40, 1, 2, 3}, 64, false},
                        Case{{1, 45, 1, 2, 2}, 32, true}}) {
    const Problem& p = c.p;
    INFO("T=" << p.T << " C=" << c.chunk << " H=" << p.H << " resets=" << c.resets);
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

TEST_CASE("lsm_vector_decay does not depend on the chunk size", "[lsm][ops]") {
  const Problem p{2, 150, 2, 8, 12};
  for (DType dt : {DType::f32, DType::f64}) {
    const double bound = dt == DType::f32 ? 1e-5 : 1e-12;
    const Data x = make_data(p, dt, 99, true, true);
    const Result base = run_op(dt, p, x, 16);
    for (int chunk : {1, 5, 64, 150, 1000}) {
      INFO(name(dt) << " C=" << chunk << " vs C=16");
      compare(run_op(dt, p, x, chunk), base, bound);
    }
  }
}

TEST_CASE("lsm_vector_decay: long sequence with strong decays stays finite and exact",
          "[lsm][ops]") {
  // Per-channel log decays from −5 to −1e-4 per step: within a chunk of 64 the cumulative
  // exponents reach −320 (far below exp's f32 range), across the sequence −40000; the slowest
  // channels keep a memory of thousands of tokens. Only exponents ≤ 0 are safe.
  const Problem p{1, 8192, 2, 16, 8};
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(name(dt));
    const Data x = make_data(p, dt, 4242, true, true, Decays{1e-4, 5.0, false});
    const Result ref = oracle(p, x);
    compare(run_op(dt, p, x, 64), ref, dt == DType::f32 ? 1e-4 : 1e-10);
  }
}

}  // namespace
}  // namespace linmoe
