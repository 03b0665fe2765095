// Vocab-parallel cross-entropy: per-row log-sum-exp and target logit over this shard's
// vocabulary, and the backward from the global lse. Probabilities are never stored.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

void check_logits_targets(const Tensor& logits, const Tensor& targets, std::int64_t vocab_start,
                          const char* op) {
  cpu::check_host_contiguous(logits, logits.dtype, op, "logits");
  LINMOE_CHECK(logits.ndim() == 2, op, ": logits ", logits.str(), " must be [N, Vl]");
  cpu::check_host_contiguous(targets, DType::i32, op, "targets");
  check_shape(targets, Shape{logits.size(0)}, op, "targets");
  LINMOE_CHECK(vocab_start >= 0, op, ": vocab_start = ", vocab_start, " is negative");
}

void check_stat(const Tensor& t, const Tensor& logits, const char* op, const char* arg) {
  cpu::check_host_contiguous(t, stat_dtype(logits.dtype), op, arg);
  check_shape(t, Shape{logits.size(0)}, op, arg);
}

}  // namespace

void CpuBackend::cross_entropy_stats(const Tensor& logits, const Tensor& targets,
                                     std::int64_t vocab_start, const Tensor& lse,
                                     const Tensor& target_logit) {
  const char* op = "cross_entropy_stats";
  check_logits_targets(logits, targets, vocab_start, op);
  check_stat(lse, logits, op, "lse");
  check_stat(target_logit, logits, op, "target_logit");
  const i64 N = logits.size(0), Vl = logits.size(1);
  LINMOE_CHECK(Vl > 0, op, ": logits ", logits.str(), " has an empty vocabulary shard");
  const std::int32_t* pt = static_cast<const std::int32_t*>(targets.data);
  cpu::dispatch_float(logits.dtype, op, [&](auto zero) {
    using T = decltype(zero);  // the stat dtype is T for f32 and f64
    const T* px = static_cast<const T*>(logits.data);
    T* plse = static_cast<T*>(lse.data);
    T* ptl = static_cast<T*>(target_logit.data);
#pragma omp parallel for num_threads(cpu::threads_for(N* Vl, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const i64 t = pt[n];
      if (t < 0) {  // ignored position
        plse[n] = T(0);
        ptl[n] = T(0);
        continue;
      }
      const T* x = px + n * Vl;  // [Vl]
      T m = x[0];
      for (i64 v = 1; v < Vl; ++v) m = std::max(m, x[v]);
      double sum = 0;
      for (i64 v = 0; v < Vl; ++v) sum += std::exp(static_cast<double>(x[v] - m));
      plse[n] = static_cast<T>(static_cast<double>(m) + std::log(sum));
      const i64 local = t - vocab_start;
      ptl[n] = local >= 0 && local < Vl ? x[local] : T(0);
    }
  });
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                        std::int64_t vocab_start, const Tensor& lse,
                                        const Tensor& dloss, const Tensor& dlogits) {
  const char* op = "cross_entropy_backward";
  check_logits_targets(logits, targets, vocab_start, op);
  check_stat(lse, logits, op, "lse");
  check_stat(dloss, logits, op, "dloss");
  cpu::check_like(dlogits, logits, op, "dlogits");
  const i64 N = logits.size(0), Vl = logits.size(1);
  const std::int32_t* pt = static_cast<const std::int32_t*>(targets.data);
  cpu::dispatch_float(logits.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(logits.data);
    const T* plse = static_cast<const T*>(lse.data);
    const T* pdl = static_cast<const T*>(dloss.data);
    T* pdx = static_cast<T*>(dlogits.data);
#pragma omp parallel for num_threads(cpu::threads_for(N* Vl, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      T* dx = pdx + n * Vl;  // [Vl]
      const i64 t = pt[n];
      if (t < 0) {
        std::fill(dx, dx + Vl, T(0));
        continue;
      }
      const T* x = px + n * Vl;
      const T l = plse[n], d = pdl[n];
      for (i64 v = 0; v < Vl; ++v) dx[v] = d * std::exp(x[v] - l);
      const i64 local = t - vocab_start;
      if (local >= 0 && local < Vl) dx[local] -= d;
    }
  });
}

}  // namespace linmoe
