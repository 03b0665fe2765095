// AdamW and SGD updates of one contiguous parameter range (MODEL.md 5). Element-wise, so any
// split of the parameters (per tensor, per ZeRO shard) gives the same result.
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {

void CpuBackend::adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                              double lr, double beta1, double beta2, double eps,
                              double weight_decay, std::int64_t step) {
  const char* op = "adamw_update";
  LINMOE_CHECK(step >= 1, op, ": step ", step, " must be >= 1");
  for (const Tensor* t : {&g, &m, &v}) {
    check_shape(*t, p.shape, op, "state");
    cpu::check_host_contiguous(*t, p.dtype, op, "state");
  }
  cpu::check_host_contiguous(p, p.dtype, op, "p");
  // Bias corrections in double: 1 − β^s loses digits in f32 for large s.
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  const std::int64_t n = p.numel();
  cpu::dispatch_float(p.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    T* pp = static_cast<T*>(p.data);
    const T* gp = static_cast<const T*>(g.data);
    T* mp = static_cast<T*>(m.data);
    T* vp = static_cast<T*>(v.data);
    // 1 − β is formed in double: 1 − 0.999f in f32 is off by 1e-5 relative.
    const T decay = static_cast<T>(1.0 - lr * weight_decay), b1 = static_cast<T>(beta1),
            b2 = static_cast<T>(beta2), c1 = static_cast<T>(1.0 - beta1),
            c2 = static_cast<T>(1.0 - beta2), step_size = static_cast<T>(lr / bc1),
            inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2)), e = static_cast<T>(eps);
#pragma omp parallel for simd num_threads(threads_) schedule(static) if (n > 32768)
    for (std::int64_t i = 0; i < n; ++i) {
      const T gi = gp[i];
      const T mi = b1 * mp[i] + c1 * gi;
      const T vi = b2 * vp[i] + c2 * gi * gi;
      mp[i] = mi;
      vp[i] = vi;
      // p·(1 − lr·wd) − lr·m̂/(sqrt(v̂) + eps), with m̂ = m/bc1, sqrt(v̂) = sqrt(v)/sqrt(bc2).
      pp[i] = pp[i] * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + e);
    }
  });
}

void CpuBackend::sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, double lr,
                            double momentum, double weight_decay, std::int64_t step) {
  const char* op = "sgd_update";
  LINMOE_CHECK(step >= 1, op, ": step ", step, " must be >= 1");
  cpu::check_host_contiguous(p, p.dtype, op, "p");
  check_shape(g, p.shape, op, "g");
  cpu::check_host_contiguous(g, p.dtype, op, "g");
  const bool use_buf = momentum != 0.0;
  if (use_buf) {
    check_shape(buf, p.shape, op, "buf");
    cpu::check_host_contiguous(buf, p.dtype, op, "buf");
  }
  const std::int64_t n = p.numel();
  cpu::dispatch_float(p.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    T* pp = static_cast<T*>(p.data);
    const T* gp = static_cast<const T*>(g.data);
    T* bp = use_buf ? static_cast<T*>(buf.data) : nullptr;
    const T wd = static_cast<T>(weight_decay), mu = static_cast<T>(momentum),
            rate = static_cast<T>(lr);
    const bool first = step == 1;  // torch: the buffer starts as d itself
#pragma omp parallel for simd num_threads(threads_) schedule(static) if (n > 32768)
    for (std::int64_t i = 0; i < n; ++i) {
      const T d = gp[i] + wd * pp[i];
      T upd = d;
      if (bp) {
        upd = first ? d : mu * bp[i] + d;
        bp[i] = upd;
      }
      pp[i] -= rate * upd;
    }
  });
}

}  // namespace linmoe
