// RMSNorm forward and backward (MODEL.md 1): y = x · rstd · w, rstd = 1/sqrt(mean_j x_j² + eps).
// Row statistics accumulate in double.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

void check_rows(const Tensor& x, const char* op) {
  cpu::check_host_contiguous(x, x.dtype, op, "x");
  LINMOE_CHECK(x.ndim() == 2, op, ": x ", x.str(), " must be [N, D]");
}

}  // namespace

void CpuBackend::rms_norm_forward(const Tensor& x, const Tensor& w, double eps, const Tensor& y,
                                  const Tensor& rstd, const Tensor& residual) {
  const char* op = "rms_norm_forward";
  check_rows(x, op);
  const i64 N = x.size(0), D = x.size(1);
  cpu::check_host_contiguous(w, x.dtype, op, "w");
  check_shape(w, Shape{D}, op, "w");
  cpu::check_like(y, x, op, "y");
  cpu::check_host_contiguous(rstd, stat_dtype(x.dtype), op, "rstd");
  check_shape(rstd, Shape{N}, op, "rstd");
  LINMOE_CHECK(eps >= 0, op, ": eps = ", eps, " must be ≥ 0");
  if (residual.defined()) cpu::check_like(residual, x, op, "residual");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    T* px = static_cast<T*>(x.data);
    const T* pres = residual.defined() ? static_cast<const T*>(residual.data) : nullptr;
    const T* pw = static_cast<const T*>(w.data);
    T* py = static_cast<T*>(y.data);
    T* pr = static_cast<T*>(rstd.data);  // stat dtype == T for f32 and f64
#pragma omp parallel for num_threads(cpu::threads_for(N* D, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      T* xr = px + n * D;  // [D]
      if (pres) {
        for (i64 j = 0; j < D; ++j) xr[j] += pres[n * D + j];  // the residual add, in place
      }
      double ss = 0;
      for (i64 j = 0; j < D; ++j) ss += static_cast<double>(xr[j]) * xr[j];
      const double r = 1.0 / std::sqrt(ss / static_cast<double>(D) + eps);
      pr[n] = static_cast<T>(r);
      T* yr = py + n * D;
      const T rt = static_cast<T>(r);
      for (i64 j = 0; j < D; ++j) yr[j] = xr[j] * rt * pw[j];
    }
  });
}

// dx_j = rstd · (w_j dy_j − x_j · rstd² · (1/D) Σ_i dy_i w_i x_i);  dw_j += Σ_n dy_nj x_nj rstd_n.
void CpuBackend::rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                   const Tensor& rstd, const Tensor& dx, const Tensor& dw,
                                   bool accumulate_dx) {
  const char* op = "rms_norm_backward";
  check_rows(x, op);
  const i64 N = x.size(0), D = x.size(1);
  cpu::check_like(dy, x, op, "dy");
  cpu::check_host_contiguous(w, x.dtype, op, "w");
  check_shape(w, Shape{D}, op, "w");
  cpu::check_host_contiguous(rstd, stat_dtype(x.dtype), op, "rstd");
  check_shape(rstd, Shape{N}, op, "rstd");
  cpu::check_like(dx, x, op, "dx");
  cpu::check_like(dw, w, op, "dw");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* pdy = static_cast<const T*>(dy.data);
    const T* px = static_cast<const T*>(x.data);
    const T* pw = static_cast<const T*>(w.data);
    const T* pr = static_cast<const T*>(rstd.data);
    T* pdx = static_cast<T*>(dx.data);
    T* pdw = static_cast<T*>(dw.data);
    const int nt = cpu::threads_for(N * D, threads_);
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
      for (i64 n = 0; n < N; ++n) {
        const T* xr = px + n * D;
        const T* dyr = pdy + n * D;
        double dot = 0;  // Σ_i dy_i w_i x_i
        for (i64 j = 0; j < D; ++j) dot += static_cast<double>(dyr[j]) * pw[j] * xr[j];
        const double r = pr[n];
        const T c = static_cast<T>(r * r * r * dot / static_cast<double>(D));
        const T rt = static_cast<T>(r);
        T* dxr = pdx + n * D;
        if (accumulate_dx) {
          for (i64 j = 0; j < D; ++j) dxr[j] += rt * pw[j] * dyr[j] - c * xr[j];
        } else {
          for (i64 j = 0; j < D; ++j) dxr[j] = rt * pw[j] * dyr[j] - c * xr[j];
        }
      }
      // dw: each thread owns a column range and walks the rows in order (deterministic).
#pragma omp for schedule(static)
      for (i64 j0 = 0; j0 < D; j0 += 64) {
        const i64 j1 = std::min(D, j0 + 64);
        double acc[64] = {};
        for (i64 n = 0; n < N; ++n) {
          const T* xr = px + n * D;
          const T* dyr = pdy + n * D;
          const double r = pr[n];
          for (i64 j = j0; j < j1; ++j) acc[j - j0] += static_cast<double>(dyr[j]) * xr[j] * r;
        }
        for (i64 j = j0; j < j1; ++j) pdw[j] += static_cast<T>(acc[j - j0]);
      }
    }
  });
}

}  // namespace linmoe
