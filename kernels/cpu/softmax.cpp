// Row softmax and its backward. The max is subtracted before exponentiating; sums in double.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {

using i64 = std::int64_t;

void CpuBackend::softmax_forward(const Tensor& x, const Tensor& y) {
  const char* op = "softmax_forward";
  cpu::check_host_contiguous(x, x.dtype, op, "x");
  LINMOE_CHECK(x.ndim() == 2, op, ": x ", x.str(), " must be [N, C]");
  cpu::check_like(y, x, op, "y");
  const i64 N = x.size(0), C = x.size(1);
  if (C == 0) return;
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data);
    T* py = static_cast<T*>(y.data);
#pragma omp parallel for num_threads(cpu::threads_for(N* C, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const T* xr = px + n * C;  // [C]
      T* yr = py + n * C;
      T m = xr[0];
      for (i64 c = 1; c < C; ++c) m = std::max(m, xr[c]);
      double sum = 0;
      for (i64 c = 0; c < C; ++c) {
        yr[c] = std::exp(xr[c] - m);
        sum += yr[c];
      }
      const T inv = static_cast<T>(1.0 / sum);
      for (i64 c = 0; c < C; ++c) yr[c] *= inv;
    }
  });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  const char* op = "softmax_backward";
  cpu::check_host_contiguous(y, y.dtype, op, "y");
  LINMOE_CHECK(y.ndim() == 2, op, ": y ", y.str(), " must be [N, C]");
  cpu::check_like(dy, y, op, "dy");
  cpu::check_like(dx, y, op, "dx");
  const i64 N = y.size(0), C = y.size(1);
  cpu::dispatch_float(y.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* py = static_cast<const T*>(y.data);
    const T* pdy = static_cast<const T*>(dy.data);
    T* pdx = static_cast<T*>(dx.data);
#pragma omp parallel for num_threads(cpu::threads_for(N* C, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const T* yr = py + n * C;
      const T* dyr = pdy + n * C;
      double dot = 0;  // Σ_c dy·y
      for (i64 c = 0; c < C; ++c) dot += static_cast<double>(dyr[c]) * yr[c];
      const T d = static_cast<T>(dot);
      T* dxr = pdx + n * C;
      for (i64 c = 0; c < C; ++c) dxr[c] = yr[c] * (dyr[c] - d);
    }
  });
}

}  // namespace linmoe
