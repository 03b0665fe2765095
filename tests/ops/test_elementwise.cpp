// add, mul, axpy, scale and the activations against fp64 oracles; activation derivatives also
// against central finite differences of the backend's own forward in f64.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

const DType kDtypes[] = {DType::f32, DType::f64};
// Awkward element counts: 1, primes, and one large enough to run on both threads.
const Shape kShapes[] = {Shape{1}, Shape{7}, Shape{3, 13}, Shape{2, 5, 7}, Shape{257, 131}};

const Activation kActivations[] = {Activation::identity,  Activation::silu, Activation::sigmoid,
                                   Activation::elu1,      Activation::relu, Activation::softplus,
                                   Activation::logsigmoid};

double act_ref(Activation f, double x) {
  switch (f) {
    case Activation::identity:
      return x;
    case Activation::silu:
      return x / (1 + std::exp(-x));
    case Activation::sigmoid:
      return 1 / (1 + std::exp(-x));
    case Activation::elu1:
      return x > 0 ? x + 1 : std::exp(x);
    case Activation::relu:
      return x > 0 ? x : 0;
    case Activation::softplus:
      return std::log1p(std::exp(x));
    case Activation::logsigmoid:
      return -std::log1p(std::exp(-x));
  }
  return NAN;
}

double act_grad_ref(Activation f, double x) {
  const double s = 1 / (1 + std::exp(-x));
  switch (f) {
    case Activation::identity:
      return 1;
    case Activation::silu:
      return s + x * s * (1 - s);
    case Activation::sigmoid:
      return s * (1 - s);
    case Activation::elu1:
      return x > 0 ? 1 : std::exp(x);
    case Activation::relu:
      return x > 0 ? 1 : 0;
    case Activation::softplus:
      return s;
    case Activation::logsigmoid:
      return 1 - s;
  }
  return NAN;
}

TEST_CASE("add, mul, axpy, scale", "[ops][elementwise]") {
  CpuBackend backend(2);
  std::uint64_t seed = 1000;
  for (DType dt : kDtypes) {
    for (const Shape& s : kShapes) {
      CAPTURE(dtype_name(dt), s.str());
      HostTensor a = random_tensor(dt, s, ++seed), b = random_tensor(dt, s, ++seed);
      const std::vector<double> va = a.to_f64(), vb = b.to_f64();
      std::vector<double> sum(va.size()), prod(va.size()), axpy(va.size()), scaled(va.size());
      for (std::size_t i = 0; i < va.size(); ++i) {
        sum[i] = va[i] + vb[i];
        prod[i] = va[i] * vb[i];
        axpy[i] = vb[i] - 0.375 * va[i];
        scaled[i] = va[i] * 1.75;
      }
      HostTensor out = poisoned_tensor(dt, s);
      backend.add(a, b, out);
      CHECK(rel_error(out.to_f64(), sum) <= op_bound(dt));
      poison(out.t());
      backend.mul(a, b, out);
      CHECK(rel_error(out.to_f64(), prod) <= op_bound(dt));
      backend.axpy(-0.375, a, b);  // b += -0.375 · a
      CHECK(rel_error(b.to_f64(), axpy) <= op_bound(dt));
      backend.scale(a, 1.75);
      CHECK(rel_error(a.to_f64(), scaled) <= op_bound(dt));
      backend.add(a, a, a);  // in place: out aliases both inputs
      for (double& v : scaled) v *= 2;
      CHECK(rel_error(a.to_f64(), scaled) <= op_bound(dt));
    }
  }
}

TEST_CASE("activations: forward and backward against fp64 formulas", "[ops][elementwise]") {
  CpuBackend backend(2);
  std::uint64_t seed = 2000;
  for (DType dt : kDtypes) {
    for (Activation f : kActivations) {
      for (const Shape& s : kShapes) {
        CAPTURE(dtype_name(dt), activation_name(f), s.str());
        HostTensor x = random_tensor(dt, s, ++seed, -6.0, 6.0);
        HostTensor dy = random_tensor(dt, s, ++seed);
        const std::vector<double> vx = x.to_f64(), vdy = dy.to_f64();
        std::vector<double> y(vx.size()), dx(vx.size());
        for (std::size_t i = 0; i < vx.size(); ++i) {
          y[i] = act_ref(f, vx[i]);
          dx[i] = vdy[i] * act_grad_ref(f, vx[i]);
        }
        HostTensor out = poisoned_tensor(dt, s);
        backend.activation_forward(f, x, out);
        CHECK(rel_error(out.to_f64(), y) <= op_bound(dt));
        HostTensor grad = poisoned_tensor(dt, s);
        backend.activation_backward(f, x, dy, grad, false);
        CHECK(rel_error(grad.to_f64(), dx) <= op_bound(dt));
        // accumulate: dx += dy · f'(x) over a pre-filled dx
        HostTensor acc = random_tensor(dt, s, ++seed);
        std::vector<double> expect = acc.to_f64();
        for (std::size_t i = 0; i < expect.size(); ++i) expect[i] += dx[i];
        backend.activation_backward(f, x, dy, acc, true);
        CHECK(rel_error(acc.to_f64(), expect) <= op_bound(dt));
      }
    }
  }
}

TEST_CASE("activations: extreme inputs stay finite and exact", "[ops][elementwise]") {
  CpuBackend backend(1);
  const std::vector<double> xs = {-1000, -80, -30, -1e-8, 0, 1e-8, 30, 80, 1000};
  for (DType dt : kDtypes) {
    for (Activation f : kActivations) {
      CAPTURE(dtype_name(dt), activation_name(f));
      HostTensor x(dt, Shape{static_cast<std::int64_t>(xs.size())});
      x.from_f64(xs);
      HostTensor y = poisoned_tensor(dt, x.t().shape), dx = poisoned_tensor(dt, x.t().shape);
      HostTensor ones(dt, x.t().shape);
      backend.fill(ones, 1.0);
      backend.activation_forward(f, x, y);
      backend.activation_backward(f, x, ones, dx, false);
      CHECK(backend.all_finite(y));
      CHECK(backend.all_finite(dx));
      const std::vector<double> vy = y.to_f64(), vd = dx.to_f64();
      // Stable forms: softplus(1000) = 1000, logsigmoid(-1000) = -1000, sigmoid(±1000) = 1, 0.
      if (f == Activation::softplus) CHECK(vy.back() == 1000.0);
      if (f == Activation::logsigmoid) CHECK(vy.front() == -1000.0);
      if (f == Activation::sigmoid) CHECK((vy.front() == 0.0 && vy.back() == 1.0));
      if (f == Activation::silu) CHECK((vd.back() == 1.0 && vy.front() == 0.0));
    }
  }
}

TEST_CASE("activation_backward matches finite differences of activation_forward (f64)",
          "[ops][elementwise][grad]") {
  CpuBackend backend(1);
  const Shape s{5, 11};
  const double h = 1e-5;
  for (Activation f : kActivations) {
    CAPTURE(activation_name(f));
    HostTensor x = random_tensor(DType::f64, s, 3000 + static_cast<int>(f), -3.0, 3.0);
    HostTensor dy = random_tensor(DType::f64, s, 3100 + static_cast<int>(f));
    // Keep relu/elu1 away from their kink at 0 where the derivative is one-sided.
    std::vector<double> vx = x.to_f64();
    for (double& v : vx) {
      if (std::fabs(v) < 1e-3) v = 0.5;
    }
    x.from_f64(vx);
    HostTensor xp(DType::f64, s), xm(DType::f64, s), yp(DType::f64, s), ym(DType::f64, s);
    std::vector<double> vp = vx, vm = vx;
    for (std::size_t i = 0; i < vx.size(); ++i) vp[i] += h, vm[i] -= h;
    xp.from_f64(vp);
    xm.from_f64(vm);
    backend.activation_forward(f, xp, yp);  // elementwise: perturb every element at once
    backend.activation_forward(f, xm, ym);
    const std::vector<double> fp = yp.to_f64(), fm = ym.to_f64(), vdy = dy.to_f64();
    std::vector<double> numeric(vx.size());
    for (std::size_t i = 0; i < vx.size(); ++i) numeric[i] = vdy[i] * (fp[i] - fm[i]) / (2 * h);
    HostTensor dx = poisoned_tensor(DType::f64, s);
    backend.activation_backward(f, x, dy, dx, false);
    CHECK(rel_error(dx.to_f64(), numeric) <= kFiniteDifferenceBound);
  }
}

}  // namespace
}  // namespace linmoe::testing
