// The L2-norm op (kernels/ops.h; MODEL.md 3: L2norm(u) = u/sqrt(Σu² + 1e-6) on the delta-rule
// q and k) on the CPU backend: forward and backward against an fp64 oracle in f32 and f64 on
// poisoned outputs, the backward against central finite differences of the op's forward (f64),
// the zero row that eps keeps finite, and the launcher's argument checks.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

using i64 = std::int64_t;
using Vec = std::vector<double>;

constexpr double kEps = 1e-6;  // MODEL.md 3
const DType kDtypes[] = {DType::f32, DType::f64};
// [N, d]: one element, odd and prime widths, a single column, and one big enough for 2 threads.
const i64 kShapes[][2] = {{1, 1}, {1, 7}, {6, 1}, {13, 5}, {24, 16}, {257, 131}};

struct Oracle {
  Vec y, r, dx;
};

// y = x r, r = 1/sqrt(Σx² + eps); dx = ∂⟨y, dy⟩/∂x written out element by element:
// ∂y_i/∂x_j = r δ_ij − x_i x_j r³.
Oracle oracle(const Vec& x, const Vec& dy, i64 N, i64 d, double eps) {
  Oracle o;
  o.y.resize(x.size());
  o.dx.assign(x.size(), 0.0);
  o.r.resize(static_cast<std::size_t>(N));
  for (i64 n = 0; n < N; ++n) {
    double ss = 0;
    for (i64 j = 0; j < d; ++j) ss += x[n * d + j] * x[n * d + j];
    const double r = 1.0 / std::sqrt(ss + eps);
    o.r[n] = r;
    for (i64 j = 0; j < d; ++j) o.y[n * d + j] = x[n * d + j] * r;
    for (i64 i = 0; i < d; ++i) {
      for (i64 j = 0; j < d; ++j) {
        const double jac = (i == j ? r : 0.0) - x[n * d + i] * x[n * d + j] * r * r * r;
        o.dx[n * d + j] += dy[n * d + i] * jac;
      }
    }
  }
  return o;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

TEST_CASE("l2_norm forward and backward against fp64", "[ops][lsm][l2_norm]") {
  CpuBackend backend(2);
  std::uint64_t seed = 9100;
  for (DType dt : kDtypes) {
    for (const auto& nd : kShapes) {
      const i64 N = nd[0], d = nd[1];
      CAPTURE(dtype_name(dt), N, d);
      const Shape s{N, d};
      HostTensor x = random_tensor(dt, s, ++seed, -2.0, 2.0);
      HostTensor dy = random_tensor(dt, s, ++seed);
      const Oracle want = oracle(x.to_f64(), dy.to_f64(), N, d, kEps);

      HostTensor y = poisoned_tensor(dt, s);
      HostTensor r = poisoned_tensor(stat_dtype(dt), Shape{N});
      backend.l2_norm_forward(x, kEps, y, r);
      CHECK(rel_error(y.to_f64(), want.y) <= op_bound(dt));
      CHECK(rel_error(r.to_f64(), want.r) <= op_bound(dt));

      HostTensor dx = poisoned_tensor(dt, s);
      backend.l2_norm_backward(x, r, dy, dx);
      // dx = r (dy − y⟨y,dy⟩) cancels when dy is nearly parallel to y (d = 1: dx ∝ eps), so the
      // error is measured against the size of its first term r·dy as well.
      Vec term = dy.to_f64();
      for (std::size_t i = 0; i < term.size(); ++i)
        term[i] *= want.r[i / static_cast<std::size_t>(d)];
      const Vec got = dx.to_f64();
      double num = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        num += (got[i] - want.dx[i]) * (got[i] - want.dx[i]);
      }
      const double err =
          std::sqrt(num) / std::sqrt(std::max({dot(want.dx, want.dx), dot(term, term), 1e-300}));
      CAPTURE(err);
      CHECK(err <= op_bound(dt));  // NaN (a read of the poisoned output) fails too
    }
  }
}

TEST_CASE("l2_norm backward matches finite differences (f64)", "[ops][lsm][l2_norm][grad]") {
  CpuBackend backend(1);
  for (const auto& nd : {std::array<i64, 2>{3, 7}, std::array<i64, 2>{4, 2}}) {
    const i64 N = nd[0], d = nd[1];
    CAPTURE(N, d);
    const Shape s{N, d};
    HostTensor x = random_tensor(DType::f64, s, 9200 + static_cast<std::uint64_t>(d), -1.0, 1.0);
    HostTensor dy = random_tensor(DType::f64, s, 9300 + static_cast<std::uint64_t>(d));
    HostTensor y(DType::f64, s), r(DType::f64, Shape{N});
    auto loss = [&] {
      backend.l2_norm_forward(x, kEps, y, r);
      return dot(y.to_f64(), dy.to_f64());
    };
    const double h = 1e-5;
    Vec v = x.to_f64(), fd(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      const double keep = v[i];
      v[i] = keep + h;
      x.from_f64(v);
      const double lp = loss();
      v[i] = keep - h;
      x.from_f64(v);
      const double lm = loss();
      v[i] = keep;
      x.from_f64(v);
      fd[i] = (lp - lm) / (2 * h);
    }
    backend.l2_norm_forward(x, kEps, y, r);
    HostTensor dx = poisoned_tensor(DType::f64, s);
    backend.l2_norm_backward(x, r, dy, dx);
    const double err = rel_error(dx.to_f64(), fd);
    CAPTURE(err);
    CHECK(err <= kFiniteDifferenceBound);
  }
}

TEST_CASE("l2_norm: eps sits inside the square root (zero and tiny rows)", "[ops][lsm][l2_norm]") {
  CpuBackend backend(1);
  for (DType dt : kDtypes) {
    CAPTURE(dtype_name(dt));
    HostTensor x(dt, Shape{2, 3});
    x.from_f64({0.0, 0.0, 0.0, 1e-4, 0.0, 0.0});
    HostTensor y = poisoned_tensor(dt, Shape{2, 3}), r = poisoned_tensor(dt, Shape{2});
    backend.l2_norm_forward(x, kEps, y, r);
    const Vec vy = y.to_f64(), vr = r.to_f64();
    // Row 0: r = 1/sqrt(1e-6) = 1000, y = 0. Row 1: r = 1/sqrt(1e-8 + 1e-6), y_0 = 1e-4·r ≈ 0.0995
    // (not 1: the eps is not added to the norm after the root, nor left out).
    CHECK(vr[0] == Approx(1000.0).epsilon(1e-6));
    for (int j = 0; j < 3; ++j) CHECK(vy[static_cast<std::size_t>(j)] == 0.0);
    CHECK(vy[3] == Approx(1e-4 / std::sqrt(1e-8 + 1e-6)).epsilon(1e-6));
    HostTensor dy(dt, Shape{2, 3});
    dy.from_f64({1.0, -2.0, 3.0, 1.0, 1.0, 1.0});
    HostTensor dx = poisoned_tensor(dt, Shape{2, 3});
    backend.l2_norm_backward(x, r, dy, dx);
    const Vec g = dx.to_f64();
    CHECK(g[0] == Approx(1000.0).epsilon(1e-6));  // at x = 0 the Jacobian is r·I
    CHECK(g[2] == Approx(3000.0).epsilon(1e-6));
  }
}

TEST_CASE("l2_norm: the launchers reject bad arguments", "[ops][lsm][l2_norm]") {
  CpuBackend backend(1);
  HostTensor x = random_tensor(DType::f32, Shape{4, 3}, 1);
  HostTensor y(DType::f32, Shape{4, 3}), r(DType::f32, Shape{4});
  HostTensor r_wrong(DType::f32, Shape{3}), r_f64(DType::f64, Shape{4});
  HostTensor y_wrong(DType::f32, Shape{4, 4}), x3(DType::f32, Shape{2, 2, 3});
  struct Bad {
    const char* what;
    std::function<void()> call;
  };
  const std::vector<Bad> bad = {
      {"inv_norm", [&] { backend.l2_norm_forward(x, kEps, y, r_wrong); }},
      {"inv_norm", [&] { backend.l2_norm_forward(x, kEps, y, r_f64); }},
      {"y", [&] { backend.l2_norm_forward(x, kEps, y_wrong, r); }},
      {"[N, d]", [&] { backend.l2_norm_forward(x3, kEps, y, r); }},
      {"eps", [&] { backend.l2_norm_forward(x, -1.0, y, r); }},
      {"dx", [&] { backend.l2_norm_backward(x, r, y, y_wrong); }},
      {"inv_norm", [&] { backend.l2_norm_backward(x, r_wrong, y, y); }},
  };
  for (const Bad& b : bad) {
    bool failed = false;
    const std::string err = run_expecting_failure(b.call, &failed);
    INFO(err);
    CHECK(failed);
    CHECK(err.find(b.what) != std::string::npos);
  }
}

}  // namespace
}  // namespace linmoe::testing
