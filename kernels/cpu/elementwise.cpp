// Elementwise ops: add, mul, axpy, scale, and the activations with their derivatives.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_math.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

using cpu::sigmoid;
using cpu::softplus;

// f(x) and f'(x) of each activation (MODEL.md conventions; elu1 = elu(x) + 1).
template <class T>
struct ActivationMath {
  static T value(Activation f, T x) {
    switch (f) {
      case Activation::identity:
        return x;
      case Activation::silu:
        return x * sigmoid(x);
      case Activation::sigmoid:
        return sigmoid(x);
      case Activation::elu1:
        return x > T(0) ? x + T(1) : std::exp(x);
      case Activation::relu:
        return x > T(0) ? x : T(0);
      case Activation::softplus:
        return softplus(x);
      case Activation::logsigmoid:
        return -softplus(-x);
    }
    return x;
  }
  static T derivative(Activation f, T x) {
    switch (f) {
      case Activation::identity:
        return T(1);
      case Activation::silu: {
        T s = sigmoid(x);
        return s * (T(1) + x * (T(1) - s));
      }
      case Activation::sigmoid: {
        T s = sigmoid(x);
        return s * (T(1) - s);
      }
      case Activation::elu1:
        return x > T(0) ? T(1) : std::exp(x);
      case Activation::relu:
        return x > T(0) ? T(1) : T(0);
      case Activation::softplus:
        return sigmoid(x);
      case Activation::logsigmoid:
        return sigmoid(-x);
    }
    return T(1);
  }
};

// Runs body(i) for i in [0, n) over the threads when n is large enough.
template <class Body>
void parallel_elements(i64 n, int threads, Body&& body) {
#pragma omp parallel for num_threads(cpu::threads_for(n, threads)) schedule(static)
  for (i64 i = 0; i < n; ++i) body(i);
}

void check_activation(Activation f, const char* op) {
  switch (f) {
    case Activation::identity:
    case Activation::silu:
    case Activation::sigmoid:
    case Activation::elu1:
    case Activation::relu:
    case Activation::softplus:
    case Activation::logsigmoid:
      return;
  }
  LINMOE_CHECK(false, op, ": unknown activation ", static_cast<int>(f));
}

}  // namespace

void CpuBackend::add(const Tensor& a, const Tensor& b, const Tensor& out) {
  cpu::check_host_contiguous(a, a.dtype, "add", "a");
  cpu::check_like(b, a, "add", "b");
  cpu::check_like(out, a, "add", "out");
  cpu::dispatch_float(a.dtype, "add", [&](auto zero) {
    using T = decltype(zero);
    const T* pa = static_cast<const T*>(a.data);
    const T* pb = static_cast<const T*>(b.data);
    T* po = static_cast<T*>(out.data);
    parallel_elements(a.numel(), threads_, [=](i64 i) { po[i] = pa[i] + pb[i]; });
  });
}

void CpuBackend::mul(const Tensor& a, const Tensor& b, const Tensor& out) {
  cpu::check_host_contiguous(a, a.dtype, "mul", "a");
  cpu::check_like(b, a, "mul", "b");
  cpu::check_like(out, a, "mul", "out");
  cpu::dispatch_float(a.dtype, "mul", [&](auto zero) {
    using T = decltype(zero);
    const T* pa = static_cast<const T*>(a.data);
    const T* pb = static_cast<const T*>(b.data);
    T* po = static_cast<T*>(out.data);
    parallel_elements(a.numel(), threads_, [=](i64 i) { po[i] = pa[i] * pb[i]; });
  });
}

void CpuBackend::axpy(double alpha, const Tensor& x, const Tensor& y) {
  cpu::check_host_contiguous(x, x.dtype, "axpy", "x");
  cpu::check_like(y, x, "axpy", "y");
  cpu::dispatch_float(x.dtype, "axpy", [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data);
    T* py = static_cast<T*>(y.data);
    const T a = static_cast<T>(alpha);
    parallel_elements(x.numel(), threads_, [=](i64 i) { py[i] += a * px[i]; });
  });
}

void CpuBackend::scale(const Tensor& x, double s) {
  cpu::check_host_contiguous(x, x.dtype, "scale", "x");
  cpu::dispatch_float(x.dtype, "scale", [&](auto zero) {
    using T = decltype(zero);
    T* px = static_cast<T*>(x.data);
    const T v = static_cast<T>(s);
    parallel_elements(x.numel(), threads_, [=](i64 i) { px[i] *= v; });
  });
}

void CpuBackend::activation_forward(Activation f, const Tensor& x, const Tensor& y) {
  const char* op = "activation_forward";
  check_activation(f, op);
  cpu::check_host_contiguous(x, x.dtype, op, "x");
  cpu::check_like(y, x, op, "y");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data);
    T* py = static_cast<T*>(y.data);
    parallel_elements(x.numel(), threads_,
                      [=](i64 i) { py[i] = ActivationMath<T>::value(f, px[i]); });
  });
}

void CpuBackend::activation_backward(Activation f, const Tensor& x, const Tensor& dy,
                                     const Tensor& dx, bool accumulate) {
  const char* op = "activation_backward";
  check_activation(f, op);
  cpu::check_host_contiguous(x, x.dtype, op, "x");
  cpu::check_like(dy, x, op, "dy");
  cpu::check_like(dx, x, op, "dx");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data);
    const T* pdy = static_cast<const T*>(dy.data);
    T* pdx = static_cast<T*>(dx.data);
    if (accumulate) {
      parallel_elements(x.numel(), threads_,
                        [=](i64 i) { pdx[i] += pdy[i] * ActivationMath<T>::derivative(f, px[i]); });
    } else {
      parallel_elements(x.numel(), threads_,
                        [=](i64 i) { pdx[i] = pdy[i] * ActivationMath<T>::derivative(f, px[i]); });
    }
  });
}

}  // namespace linmoe
