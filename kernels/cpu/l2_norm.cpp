// L2 normalisation of rows (MODEL.md 3: the delta-rule variants' q and k, per head over d_k):
//   y = x · r,  r = 1/sqrt(Σ_j x_j² + eps)   (eps inside the square root)
// Its Jacobian is r (I − y yᵀ) (symmetric), so dx = r · (dy − y ⟨y, dy⟩). Row sums accumulate in
// double; each row has one writer, so results do not depend on the thread count.
#include <cmath>
#include <cstdint>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

void check_rows(const Tensor& x, const char* op) {
  cpu::check_host_contiguous(x, x.dtype, op, "x");
  LINMOE_CHECK(x.ndim() == 2, op, ": x ", x.str(), " must be [N, d]");
}

}  // namespace

void CpuBackend::l2_norm_forward(const Tensor& x, double eps, const Tensor& y,
                                 const Tensor& inv_norm) {
  const char* op = "l2_norm_forward";
  check_rows(x, op);
  const i64 N = x.size(0), d = x.size(1);
  cpu::check_like(y, x, op, "y");
  cpu::check_host_contiguous(inv_norm, stat_dtype(x.dtype), op, "inv_norm");
  check_shape(inv_norm, Shape{N}, op, "inv_norm");
  LINMOE_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps = ", eps, " must be finite and ≥ 0");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data);
    T* py = static_cast<T*>(y.data);
    T* pr = static_cast<T*>(inv_norm.data);  // stat dtype == T for f32 and f64
#pragma omp parallel for num_threads(cpu::threads_for(N* d, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const T* xr = px + n * d;  // [d]
      double ss = 0;
      for (i64 j = 0; j < d; ++j) ss += static_cast<double>(xr[j]) * xr[j];
      const double r = 1.0 / std::sqrt(ss + eps);
      pr[n] = static_cast<T>(r);
      T* yr = py + n * d;
      for (i64 j = 0; j < d; ++j) yr[j] = static_cast<T>(xr[j] * r);
    }
  });
}

void CpuBackend::l2_norm_backward(const Tensor& x, const Tensor& inv_norm, const Tensor& dy,
                                  const Tensor& dx) {
  const char* op = "l2_norm_backward";
  check_rows(x, op);
  const i64 N = x.size(0), d = x.size(1);
  cpu::check_host_contiguous(inv_norm, stat_dtype(x.dtype), op, "inv_norm");
  check_shape(inv_norm, Shape{N}, op, "inv_norm");
  cpu::check_like(dy, x, op, "dy");
  cpu::check_like(dx, x, op, "dx");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data);
    const T* pr = static_cast<const T*>(inv_norm.data);
    const T* pdy = static_cast<const T*>(dy.data);
    T* pdx = static_cast<T*>(dx.data);
#pragma omp parallel for num_threads(cpu::threads_for(N* d, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const T* xr = px + n * d;
      const T* dyr = pdy + n * d;
      const double r = pr[n];
      double dot = 0;  // ⟨y, dy⟩ with y = x·r
      for (i64 j = 0; j < d; ++j) dot += static_cast<double>(xr[j]) * dyr[j];
      dot *= r;
      T* dxr = pdx + n * d;
      for (i64 j = 0; j < d; ++j) dxr[j] = static_cast<T>(r * (dyr[j] - xr[j] * r * dot));
    }
  });
}

}  // namespace linmoe
