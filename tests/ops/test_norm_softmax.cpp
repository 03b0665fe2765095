// RMSNorm, softmax and SwiGLU, forward and backward, against fp64 oracles and (backward, f64)
// central finite differences of the backend's forward.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

const DType kDtypes[] = {DType::f32, DType::f64};
// [N, D] with odd and prime sizes, 1, and one large enough for both threads.
const std::int64_t kRowShapes[][2] = {{1, 1}, {1, 7}, {5, 1}, {3, 13}, {17, 64}, {131, 257}};

// Central differences of the scalar loss(x) with respect to every element of x (f64).
std::vector<double> finite_differences(HostTensor& x, const std::function<double()>& loss) {
  const double h = 1e-5;
  std::vector<double> v = x.to_f64(), g(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + h;
    x.from_f64(v);
    const double lp = loss();
    v[i] = keep - h;
    x.from_f64(v);
    const double lm = loss();
    v[i] = keep;
    g[i] = (lp - lm) / (2 * h);
  }
  x.from_f64(v);
  return g;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

double squared_distance(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return std::isnan(s) ? INFINITY : s;
}

TEST_CASE("rms_norm forward and backward against fp64", "[ops][norm]") {
  CpuBackend backend(2);
  const double eps = 1e-6;
  std::uint64_t seed = 4000;
  for (DType dt : kDtypes) {
    for (const auto& nd : kRowShapes) {
      const std::int64_t N = nd[0], D = nd[1];
      CAPTURE(dtype_name(dt), N, D);
      HostTensor x = random_tensor(dt, Shape{N, D}, ++seed, -2.0, 2.0);
      HostTensor w = random_tensor(dt, Shape{D}, ++seed, 0.5, 1.5);
      HostTensor dy = random_tensor(dt, Shape{N, D}, ++seed);
      const auto vx = x.to_f64(), vw = w.to_f64(), vdy = dy.to_f64();
      std::vector<double> y(vx.size()), r(static_cast<std::size_t>(N)), dx(vx.size());
      HostTensor dw = random_tensor(dt, Shape{D}, ++seed);  // pre-filled: dw accumulates
      std::vector<double> vdw = dw.to_f64();
      for (std::int64_t n = 0; n < N; ++n) {
        double ss = 0, g = 0;
        for (std::int64_t j = 0; j < D; ++j) ss += vx[n * D + j] * vx[n * D + j];
        const double rs = 1 / std::sqrt(ss / D + eps);
        r[n] = rs;
        for (std::int64_t j = 0; j < D; ++j) g += vdy[n * D + j] * vw[j] * vx[n * D + j];
        for (std::int64_t j = 0; j < D; ++j) {
          const std::size_t i = static_cast<std::size_t>(n * D + j);
          y[i] = vx[i] * rs * vw[j];
          dx[i] = rs * vw[j] * vdy[i] - vx[i] * rs * rs * rs * g / D;
          vdw[j] += vdy[i] * vx[i] * rs;
        }
      }
      HostTensor out = poisoned_tensor(dt, Shape{N, D}), rstd = poisoned_tensor(dt, Shape{N});
      backend.rms_norm_forward(x, w, eps, out, rstd);
      CHECK(rel_error(out.to_f64(), y) <= op_bound(dt));
      CHECK(rel_error(rstd.to_f64(), r) <= op_bound(dt));
      HostTensor gx = poisoned_tensor(dt, Shape{N, D});
      backend.rms_norm_backward(dy, x, w, rstd, gx, dw);
      // dx is a difference of two terms that nearly cancel when D is tiny (D = 1: dx ∝ eps), so
      // its error is measured against the size of the first term, rstd · w · dy, as well.
      std::vector<double> term(vx.size());
      for (std::size_t i = 0; i < vx.size(); ++i) {
        term[i] = r[i / static_cast<std::size_t>(D)] * vw[i % static_cast<std::size_t>(D)] * vdy[i];
      }
      const std::vector<double> got = gx.to_f64();
      const double dx_err =
          std::sqrt(squared_distance(got, dx)) / std::sqrt(std::max(dot(dx, dx), dot(term, term)));
      CAPTURE(dx_err);
      CHECK(dx_err <= op_bound(dt));
      CHECK(rel_error(dw.to_f64(), vdw) <= op_bound(dt));
    }
  }
}

// The fused residual forms are the unfused ops exactly: x ← x + residual then the norm; and
// dx += the norm's gradient. Bit for bit on the CPU (the same arithmetic in the same order).
TEST_CASE("rms_norm with a fused residual add and an accumulated dx", "[ops][norm]") {
  CpuBackend backend(2);
  std::uint64_t seed = 4500;
  for (DType dt : kDtypes) {
    for (const auto& nd : kRowShapes) {
      const std::int64_t N = nd[0], D = nd[1];
      CAPTURE(dtype_name(dt), N, D);
      const HostTensor x = random_tensor(dt, Shape{N, D}, ++seed, -2.0, 2.0);
      const HostTensor res = random_tensor(dt, Shape{N, D}, ++seed, -2.0, 2.0);
      const HostTensor w = random_tensor(dt, Shape{D}, ++seed, 0.5, 1.5);
      // Unfused: sum = x + residual; y = norm(sum).
      HostTensor sum = random_tensor(dt, Shape{N, D}, 0);
      backend.copy(x, sum);
      backend.axpy(1.0, res, sum);
      HostTensor y = poisoned_tensor(dt, Shape{N, D}), r = poisoned_tensor(dt, Shape{N});
      backend.rms_norm_forward(sum, w, 1e-6, y, r);
      // Fused, in place.
      HostTensor xf = random_tensor(dt, Shape{N, D}, 0);
      backend.copy(x, xf);
      HostTensor yf = poisoned_tensor(dt, Shape{N, D}), rf = poisoned_tensor(dt, Shape{N});
      backend.rms_norm_forward(xf, w, 1e-6, yf, rf, res);
      CHECK(xf.to_f64() == sum.to_f64());
      CHECK(yf.to_f64() == y.to_f64());
      CHECK(rf.to_f64() == r.to_f64());

      // dx accumulated into a running gradient g: g + (the overwritten dx).
      const HostTensor dy = random_tensor(dt, Shape{N, D}, ++seed);
      const HostTensor g0 = random_tensor(dt, Shape{N, D}, ++seed);
      HostTensor dw1 = random_tensor(dt, Shape{D}, 0), dw2 = random_tensor(dt, Shape{D}, 0);
      backend.fill(dw1, 0.0);
      backend.fill(dw2, 0.0);
      HostTensor dx = poisoned_tensor(dt, Shape{N, D});
      backend.rms_norm_backward(dy, sum, w, r, dx, dw1);
      HostTensor expected = random_tensor(dt, Shape{N, D}, 0);
      backend.copy(g0, expected);
      backend.axpy(1.0, dx, expected);
      HostTensor g = random_tensor(dt, Shape{N, D}, 0);
      backend.copy(g0, g);
      backend.rms_norm_backward(dy, sum, w, r, g, dw2, true);
      CHECK(g.to_f64() == expected.to_f64());
      CHECK(dw2.to_f64() == dw1.to_f64());
    }
  }
}

TEST_CASE("rms_norm backward matches finite differences (f64)", "[ops][norm][grad]") {
  CpuBackend backend(1);
  const std::int64_t N = 3, D = 7;
  const double eps = 1e-6;
  HostTensor x = random_tensor(DType::f64, Shape{N, D}, 4100, -2.0, 2.0);
  HostTensor w = random_tensor(DType::f64, Shape{D}, 4101, 0.5, 1.5);
  HostTensor dy = random_tensor(DType::f64, Shape{N, D}, 4102);
  HostTensor y(DType::f64, Shape{N, D}), rstd(DType::f64, Shape{N});
  auto loss = [&] {
    backend.rms_norm_forward(x, w, eps, y, rstd);
    return dot(y.to_f64(), dy.to_f64());
  };
  const auto num_dx = finite_differences(x, loss);
  const auto num_dw = finite_differences(w, loss);
  backend.rms_norm_forward(x, w, eps, y, rstd);
  HostTensor dx = poisoned_tensor(DType::f64, Shape{N, D}), dw(DType::f64, Shape{D});
  backend.fill(dw, 0.0);
  backend.rms_norm_backward(dy, x, w, rstd, dx, dw);
  CHECK(rel_error(dx.to_f64(), num_dx) <= kFiniteDifferenceBound);
  CHECK(rel_error(dw.to_f64(), num_dw) <= kFiniteDifferenceBound);
}

TEST_CASE("softmax forward and backward against fp64", "[ops][softmax]") {
  CpuBackend backend(2);
  std::uint64_t seed = 5000;
  for (DType dt : kDtypes) {
    for (const auto& nc : kRowShapes) {
      const std::int64_t N = nc[0], C = nc[1];
      CAPTURE(dtype_name(dt), N, C);
      // Large logits: a softmax that forgets to subtract the max overflows.
      HostTensor x = random_tensor(dt, Shape{N, C}, ++seed, -40.0, 90.0);
      HostTensor dy = random_tensor(dt, Shape{N, C}, ++seed);
      const auto vx = x.to_f64(), vdy = dy.to_f64();
      std::vector<double> y(vx.size()), dx(vx.size());
      for (std::int64_t n = 0; n < N; ++n) {
        double m = -INFINITY, s = 0, d = 0;
        for (std::int64_t c = 0; c < C; ++c) m = std::max(m, vx[n * C + c]);
        for (std::int64_t c = 0; c < C; ++c) s += std::exp(vx[n * C + c] - m);
        for (std::int64_t c = 0; c < C; ++c) y[n * C + c] = std::exp(vx[n * C + c] - m) / s;
        for (std::int64_t c = 0; c < C; ++c) d += vdy[n * C + c] * y[n * C + c];
        for (std::int64_t c = 0; c < C; ++c) dx[n * C + c] = y[n * C + c] * (vdy[n * C + c] - d);
      }
      HostTensor out = poisoned_tensor(dt, Shape{N, C});
      backend.softmax_forward(x, out);
      CHECK(rel_error(out.to_f64(), y) <= op_bound(dt));
      // The backward from a moderate softmax (large logits make y one-hot, where dx is a
      // cancellation whose relative error any f32 implementation loses).
      HostTensor yin(dt, Shape{N, C});
      HostTensor xmod = random_tensor(dt, Shape{N, C}, ++seed, -3.0, 3.0);
      backend.softmax_forward(xmod, yin);
      const auto vy = yin.to_f64();
      for (std::int64_t n = 0; n < N; ++n) {
        double d = 0;
        for (std::int64_t c = 0; c < C; ++c) d += vdy[n * C + c] * vy[n * C + c];
        for (std::int64_t c = 0; c < C; ++c) dx[n * C + c] = vy[n * C + c] * (vdy[n * C + c] - d);
      }
      HostTensor gx = poisoned_tensor(dt, Shape{N, C});
      backend.softmax_backward(yin, dy, gx);
      // One-column rows have an exactly zero gradient: compare absolutely there.
      if (C == 1) {
        CHECK(max_abs_diff(gx.to_f64(), dx) <= 1e-6);
      } else {
        CHECK(rel_error(gx.to_f64(), dx) <= op_bound(dt));
      }
    }
  }
}

TEST_CASE("softmax backward matches finite differences (f64)", "[ops][softmax][grad]") {
  CpuBackend backend(1);
  const std::int64_t N = 4, C = 9;
  HostTensor x = random_tensor(DType::f64, Shape{N, C}, 5100, -3.0, 3.0);
  HostTensor dy = random_tensor(DType::f64, Shape{N, C}, 5101);
  HostTensor y(DType::f64, Shape{N, C});
  auto loss = [&] {
    backend.softmax_forward(x, y);
    return dot(y.to_f64(), dy.to_f64());
  };
  const auto numeric = finite_differences(x, loss);
  backend.softmax_forward(x, y);
  HostTensor dx = poisoned_tensor(DType::f64, Shape{N, C});
  backend.softmax_backward(y, dy, dx);
  CHECK(rel_error(dx.to_f64(), numeric) <= kFiniteDifferenceBound);
}

TEST_CASE("swiglu forward and backward against fp64", "[ops][swiglu]") {
  CpuBackend backend(2);
  std::uint64_t seed = 6000;
  for (DType dt : kDtypes) {
    for (const auto& nf : kRowShapes) {
      const Shape s{nf[0], nf[1]};
      CAPTURE(dtype_name(dt), s.str());
      HostTensor g = random_tensor(dt, s, ++seed, -5.0, 5.0), u = random_tensor(dt, s, ++seed);
      HostTensor d = random_tensor(dt, s, ++seed);
      const auto vg = g.to_f64(), vu = u.to_f64(), vd = d.to_f64();
      std::vector<double> out(vg.size()), dg(vg.size()), du(vg.size());
      for (std::size_t i = 0; i < vg.size(); ++i) {
        const double sg = 1 / (1 + std::exp(-vg[i]));
        out[i] = vg[i] * sg * vu[i];
        dg[i] = vd[i] * vu[i] * (sg + vg[i] * sg * (1 - sg));
        du[i] = vd[i] * vg[i] * sg;
      }
      HostTensor o = poisoned_tensor(dt, s), gg = poisoned_tensor(dt, s),
                 gu = poisoned_tensor(dt, s);
      backend.swiglu_forward(g, u, o);
      CHECK(rel_error(o.to_f64(), out) <= op_bound(dt));
      backend.swiglu_backward(g, u, d, gg, gu);
      CHECK(rel_error(gg.to_f64(), dg) <= op_bound(dt));
      CHECK(rel_error(gu.to_f64(), du) <= op_bound(dt));
    }
  }
}

TEST_CASE("swiglu backward matches finite differences (f64)", "[ops][swiglu][grad]") {
  CpuBackend backend(1);
  const Shape s{3, 11};
  HostTensor g = random_tensor(DType::f64, s, 6100, -4.0, 4.0);
  HostTensor u = random_tensor(DType::f64, s, 6101), d = random_tensor(DType::f64, s, 6102);
  HostTensor out(DType::f64, s);
  auto loss = [&] {
    backend.swiglu_forward(g, u, out);
    return dot(out.to_f64(), d.to_f64());
  };
  const auto num_dg = finite_differences(g, loss);
  const auto num_du = finite_differences(u, loss);
  HostTensor dg = poisoned_tensor(DType::f64, s), du = poisoned_tensor(DType::f64, s);
  backend.swiglu_backward(g, u, d, dg, du);
  CHECK(rel_error(dg.to_f64(), num_dg) <= kFiniteDifferenceBound);
  CHECK(rel_error(du.to_f64(), num_du) <= kFiniteDifferenceBound);
}

}  // namespace
}  // namespace linmoe::testing
