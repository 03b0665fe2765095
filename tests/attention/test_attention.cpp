// Causal GQA softmax attention (kernels/ops.h, MODEL.md 2) on the CPU backend against an fp64
// oracle that builds each query's full softmax row, against central finite differences of the
// op itself, with logits that overflow without the running max, for determinism across runs and
// thread counts, and for loud rejection of bad arguments.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common/test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

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

// One attention call: q [B, Tq, Hq, d], k/v [B, Tk, Hkv, d], queries at q_offset + i.
struct Case {
  i64 B, Tq, Tk, Hq, Hkv, d, q_offset;
  Shape q() const { return Shape{B, Tq, Hq, d}; }
  Shape kv() const { return Shape{B, Tk, Hkv, d}; }
  Shape stat() const { return Shape{B, Hq, Tq}; }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(d)); }
};

struct Inputs {
  Vec q, k, v, d_o;
};
struct Outputs {
  Vec o, lse, dq, dk, dv;
};

// Uniform values exactly representable in dt, so the oracle sees what the op sees.
Vec uniform(DType dt, i64 n, std::uint64_t seed, double lo, double hi) {
  HostTensor t(dt, Shape{n});
  testing::fill_uniform(t.t(), seed, lo, hi);
  return t.to_f64();
}

Inputs make_inputs(const Case& c, DType dt, std::uint64_t seed, double range = 1.0) {
  return Inputs{uniform(dt, c.q().numel(), seed + 1, -range, range),
                uniform(dt, c.kv().numel(), seed + 2, -range, range),
                uniform(dt, c.kv().numel(), seed + 3, -1, 1),
                uniform(dt, c.q().numel(), seed + 4, -1, 1)};
}

// The oracle, in fp64: per query the full row of logits over keys 0..q_offset+i, a max-shifted
// softmax, and the textbook reverse pass (D_i = Σ_j P_ij dP_ij, not dO·O as the op uses).
Outputs oracle(const Case& c, const Inputs& x, double scale) {
  Outputs r{Vec(x.q.size()), Vec(static_cast<std::size_t>(c.stat().numel())), Vec(x.q.size()),
            Vec(x.k.size(), 0.0), Vec(x.v.size(), 0.0)};
  const i64 d = c.d;
  auto qi = [&](i64 b, i64 i, i64 h) {
    return static_cast<std::size_t>(((b * c.Tq + i) * c.Hq + h) * d);
  };
  auto kj = [&](i64 b, i64 j, i64 h) {
    return static_cast<std::size_t>(((b * c.Tk + j) * c.Hkv + h) * d);
  };
  for (i64 b = 0; b < c.B; ++b) {
    for (i64 h = 0; h < c.Hq; ++h) {
      const i64 hk = h * c.Hkv / c.Hq;
      for (i64 i = 0; i < c.Tq; ++i) {
        const i64 n = c.q_offset + i + 1;  // visible keys
        Vec s(static_cast<std::size_t>(n)), dp(s.size());
        double mx = -INFINITY;
        for (i64 j = 0; j < n; ++j) {
          double dot = 0;
          for (i64 e = 0; e < d; ++e) dot += x.q[qi(b, i, h) + e] * x.k[kj(b, j, hk) + e];
          s[j] = scale * dot;
          mx = std::max(mx, s[j]);
        }
        double l = 0;
        for (double& e : s) l += (e = std::exp(e - mx));
        for (double& e : s) e /= l;  // P_i·
        r.lse[static_cast<std::size_t>((b * c.Hq + h) * c.Tq + i)] = mx + std::log(l);
        double delta = 0;
        for (i64 j = 0; j < n; ++j) {
          double o_dot = 0;
          for (i64 e = 0; e < d; ++e) {
            r.o[qi(b, i, h) + e] += s[j] * x.v[kj(b, j, hk) + e];
            o_dot += x.d_o[qi(b, i, h) + e] * x.v[kj(b, j, hk) + e];
          }
          dp[j] = o_dot;
          delta += s[j] * o_dot;
        }
        for (i64 j = 0; j < n; ++j) {
          const double ds = s[j] * (dp[j] - delta);
          for (i64 e = 0; e < d; ++e) {
            r.dq[qi(b, i, h) + e] += scale * ds * x.k[kj(b, j, hk) + e];
            r.dk[kj(b, j, hk) + e] += scale * ds * x.q[qi(b, i, h) + e];
            r.dv[kj(b, j, hk) + e] += s[j] * x.d_o[qi(b, i, h) + e];
          }
        }
      }
    }
  }
  return r;
}

// The op on poisoned outputs; the backward reads the forward's own o and lse.
Outputs run_op(Backend& be, const Case& c, DType dt, const Inputs& x, double scale, bool backward) {
  HostTensor q(dt, c.q()), k(dt, c.kv()), v(dt, c.kv()), o(dt, c.q());
  HostTensor lse(stat_dtype(dt), c.stat());
  q.from_f64(x.q);
  k.from_f64(x.k);
  v.from_f64(x.v);
  testing::poison(o.t());
  testing::poison(lse.t());
  be.attention_forward(q, k, v, scale, c.q_offset, o, lse);
  Outputs r{o.to_f64(), lse.to_f64(), {}, {}, {}};
  if (!backward) return r;
  HostTensor d_o(dt, c.q()), dq(dt, c.q()), dk(dt, c.kv()), dv(dt, c.kv());
  d_o.from_f64(x.d_o);
  testing::poison(dq.t());
  testing::poison(dk.t());
  testing::poison(dv.t());
  be.attention_backward(q, k, v, o, lse, d_o, scale, c.q_offset, dq, dk, dv);
  r.dq = dq.to_f64();
  r.dk = dk.to_f64();
  r.dv = dv.to_f64();
  return r;
}

// ‖got − want‖/‖want‖, or ‖got‖ when want is exactly 0 (a single visible key: the softmax is
// constant, so dq and dk vanish and only rounding noise of inputs of size 1 may remain).
double norm(const Vec& a) {
  double s = 0;
  for (double e : a) s += e * e;
  return std::sqrt(s);
}
double error(const Vec& got, const Vec& want) {
  return norm(want) == 0 ? norm(got) : rel_error(got, want);
}

void check_against(const Outputs& got, const Outputs& want, double bound) {
  const double e_o = error(got.o, want.o), e_lse = error(got.lse, want.lse);
  const double e_dq = error(got.dq, want.dq), e_dk = error(got.dk, want.dk);
  const double e_dv = error(got.dv, want.dv);
  CAPTURE(e_o, e_lse, e_dq, e_dk, e_dv, bound);
  CHECK(e_o <= bound);  // NaN (an unwritten, poisoned output) fails too
  CHECK(e_lse <= bound);
  CHECK(e_dq <= bound);
  CHECK(e_dk <= bound);
  CHECK(e_dv <= bound);
}

const std::vector<Case>& oracle_cases() {
  static const std::vector<Case> cases = {
      // B, Tq, Tk, Hq, Hkv, d, q_offset
      {2, 1, 1, 4, 1, 8, 0},       // one token, multi-query
      {1, 3, 3, 2, 2, 16, 0},      // plain multi-head
      {2, 37, 37, 4, 2, 32, 0},    // GQA, less than one block
      {1, 100, 100, 4, 1, 16, 0},  // two blocks, a ragged last one
      {1, 131, 131, 2, 2, 8, 0},   // three blocks (an odd count)
      {2, 37, 100, 4, 2, 32, 63},  // the last context-parallel piece: Tk = q_offset + Tq
      {1, 20, 100, 4, 4, 16, 30},  // a middle piece: keys past position 49 get zero gradients
      {1, 70, 130, 4, 1, 8, 60},   // query blocks straddle key blocks
      {1, 1, 50, 2, 1, 16, 49},    // a single query at the end
  };
  return cases;
}

TEST_CASE("attention forward and backward match the fp64 oracle", "[ops][attention]") {
  for (DType dt : {DType::f32, DType::f64}) {
    // TESTING.md: the CPU backend in f32 within 1e-5 relative, in f64 within 1e-12.
    const double bound = testing::op_bound(dt);
    std::uint64_t seed = 100;
    for (const Case& c : oracle_cases()) {
      CAPTURE(dtype_name(dt), c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.d, c.q_offset);
      const Inputs x = make_inputs(c, dt, seed += 10);
      check_against(run_op(cpu(), c, dt, x, c.scale(), true), oracle(c, x, c.scale()), bound);
    }
  }
}

// Logits in the hundreds: e^{logit} overflows f32 (and the block sums would) unless every block
// is shifted by the running max and rescaled when it grows.
TEST_CASE("attention stays exact when the logits are large", "[ops][attention]") {
  const Case c{1, 150, 150, 2, 1, 32, 0};
  for (DType dt : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dt));
    const Inputs x = make_inputs(c, dt, 7, 3.0);
    const double scale = 4.0;
    // The logits' own rounding is relative to their size (~200 here, so ~1e-5 absolute in f32);
    // the bound scales the usual one by that size.
    const double bound = dt == DType::f64 ? 1e-11 : 2e-4;
    check_against(run_op(cpu(), c, dt, x, scale, true), oracle(c, x, scale), bound);
  }
}

double loss(const Vec& o, const Vec& w) {
  double s = 0;
  for (std::size_t i = 0; i < o.size(); ++i) s += o[i] * w[i];
  return s;
}

// L = Σ o·R through the op itself; its gradient is the backward with dO = R.
TEST_CASE("attention gradients match central finite differences of the op (fp64)",
          "[grad][attention]") {
  const std::vector<Case> cases = {{1, 5, 9, 4, 2, 8, 4}, {2, 6, 8, 2, 1, 4, 0}};
  for (const Case& c : cases) {
    CAPTURE(c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.d, c.q_offset);
    Inputs x = make_inputs(c, DType::f64, 33, 1.5);
    const Outputs g = run_op(cpu(), c, DType::f64, x, c.scale(), true);
    const double h = 1e-5;
    auto numeric = [&](Vec* param) {
      Vec grad(param->size());
      for (std::size_t i = 0; i < param->size(); ++i) {
        const double keep = (*param)[i];
        (*param)[i] = keep + h;
        const double up = loss(run_op(cpu(), c, DType::f64, x, c.scale(), false).o, x.d_o);
        (*param)[i] = keep - h;
        const double down = loss(run_op(cpu(), c, DType::f64, x, c.scale(), false).o, x.d_o);
        (*param)[i] = keep;
        grad[i] = (up - down) / (2 * h);
      }
      return grad;
    };
    const double e_q = rel_error(g.dq, numeric(&x.q));
    const double e_k = rel_error(g.dk, numeric(&x.k));
    const double e_v = rel_error(g.dv, numeric(&x.v));
    CAPTURE(e_q, e_k, e_v);
    CHECK(e_q <= testing::kFiniteDifferenceBound);
    CHECK(e_k <= testing::kFiniteDifferenceBound);
    CHECK(e_v <= testing::kFiniteDifferenceBound);
  }
}

bool bitwise_equal(const Vec& a, const Vec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

TEST_CASE("attention is bitwise deterministic across runs and thread counts", "[ops][attention]") {
  const Case c{2, 150, 200, 4, 2, 16, 50};
  const Inputs x = make_inputs(c, DType::f32, 900);
  std::unique_ptr<Backend> one_thread = make_cpu_backend(1);
  const Outputs a = run_op(cpu(), c, DType::f32, x, c.scale(), true);
  const Outputs b = run_op(cpu(), c, DType::f32, x, c.scale(), true);
  const Outputs s = run_op(*one_thread, c, DType::f32, x, c.scale(), true);
  for (const Outputs* r : {&b, &s}) {
    CHECK(bitwise_equal(a.o, r->o));
    CHECK(bitwise_equal(a.lse, r->lse));
    CHECK(bitwise_equal(a.dq, r->dq));
    CHECK(bitwise_equal(a.dk, r->dk));
    CHECK(bitwise_equal(a.dv, r->dv));
  }
}

// A NaN in one query must reach that query's output (not be clamped away by the exp or max).
TEST_CASE("attention propagates a NaN in a query to its output", "[ops][attention]") {
  const Case c{1, 70, 70, 2, 1, 16, 0};
  for (DType dt : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dt));
    Inputs x = make_inputs(c, dt, 55);
    const i64 i = 66, h = 1;  // in the second query block
    x.q[static_cast<std::size_t>((i * c.Hq + h) * c.d + 3)] = std::nan("");
    const Outputs r = run_op(cpu(), c, dt, x, c.scale(), false);
    i64 nan_rows = 0, finite_rows = 0;
    for (i64 t = 0; t < c.Tq; ++t) {
      for (i64 g = 0; g < c.Hq; ++g) {
        const double e = r.o[static_cast<std::size_t>((t * c.Hq + g) * c.d)];
        if (std::isnan(e)) {
          ++nan_rows;
        } else if (std::isfinite(e)) {
          ++finite_rows;
        }
      }
    }
    CHECK(nan_rows == 1);
    CHECK(finite_rows == c.Tq * c.Hq - 1);
    CHECK(std::isnan(r.o[static_cast<std::size_t>((i * c.Hq + h) * c.d)]));
  }
}

void expect_rejected(const std::function<void()>& call, const std::string& must_mention) {
  bool failed = false;
  const std::string err = testing::run_expecting_failure(call, &failed);
  CAPTURE(must_mention, err);
  CHECK(failed);
  CHECK(err.find(must_mention) != std::string::npos);
}

TEST_CASE("attention rejects bad shapes, dtypes and offsets", "[ops][attention][checks]") {
  CpuBackend be(1);
  const Case c{1, 4, 6, 4, 2, 8, 2};
  HostTensor q(DType::f32, c.q()), k(DType::f32, c.kv()), v(DType::f32, c.kv());
  HostTensor o(DType::f32, c.q()), lse(DType::f32, c.stat()), lse64(DType::f64, c.stat());
  HostTensor k3(DType::f32, Shape{1, 6, 3, 8}), v64(DType::f64, c.kv());
  HostTensor dq(DType::f32, c.q()), dk(DType::f32, c.kv()), dv_bad(DType::f32, Shape{1, 5, 2, 8});
  expect_rejected([&] { be.attention_forward(q, k, v, 0.5, 2, o, lse64); },
                  "attention_forward: lse");
  expect_rejected([&] { be.attention_forward(q, k3, k3, 0.5, 2, o, lse); },
                  "attention_forward: the kv heads");
  expect_rejected([&] { be.attention_forward(q, k, v64, 0.5, 2, o, lse); }, "attention_forward: v");
  expect_rejected([&] { be.attention_forward(q, k, v, 0.5, 3, o, lse); }, "q_offset = 3");
  expect_rejected([&] { be.attention_forward(q, k, v, 0.5, -1, o, lse); }, "q_offset = -1");
  expect_rejected([&] { be.attention_backward(q, k, v, o, lse, o, 0.5, 2, dq, dk, dv_bad); },
                  "attention_backward: dv");
  bool failed = true;  // a good call in the child is not a rejection
  testing::run_expecting_failure([&] { be.attention_forward(q, k, v, 0.5, 2, o, lse); }, &failed);
  CHECK_FALSE(failed);
}

}  // namespace
}  // namespace linmoe
