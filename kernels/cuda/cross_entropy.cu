// Vocab-parallel cross-entropy on the GPU: per-row log-sum-exp and target logit over this
// shard's vocabulary, and the backward from the global lse. Probabilities are never stored: the
// stats pass keeps an online (max, Σ exp) pair per thread, merged across the block; the backward
// recomputes exp(logit − lse) in one pass.
#include <cmath>
#include <cstdint>
#include <cub/block/block_reduce.cuh>

#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/row_access.cuh"

namespace linmoe {
namespace {

using cuda::compute_t;
using cuda::i64;
using cuda::load;
using cuda::store;
namespace rows = cuda::rows;

constexpr int kStatsThreads = 256;
constexpr int kBackwardThreads = 256, kBackwardColumns = 2048;
constexpr i64 kMaxRowBlocks = 65535LL * 32;

__device__ __forceinline__ float dev_exp(float v) {
  return expf(v);
}
__device__ __forceinline__ double dev_exp(double v) {
  return exp(v);
}
__device__ __forceinline__ float dev_log(float v) {
  return logf(v);
}
__device__ __forceinline__ double dev_log(double v) {
  return log(v);
}

// A running softmax denominator: Σ exp(x − m) over the values seen, m their maximum.
template <class C>
struct MaxSum {
  C m, s;
};

template <class C>
struct MergeMaxSum {
  __device__ __forceinline__ MaxSum<C> operator()(const MaxSum<C>& a, const MaxSum<C>& b) const {
    const C m = a.m > b.m ? a.m : b.m;
    // Nothing but −inf (and NaN) seen: exp(−inf + inf) would be NaN; keep a NaN that is there.
    if (m == C(-INFINITY)) return {m, a.s + b.s};
    return {m, a.s * dev_exp(a.m - m) + b.s * dev_exp(b.m - m)};
  }
};

// logits: [N, Vl]; targets: [N]; lse, target_logit: [N] (stat dtype). kVector: 16-byte pieces.
template <class T, bool kVector>
__global__ void __launch_bounds__(kStatsThreads)
    cross_entropy_stats_kernel(const T* __restrict__ logits,
                               const std::int32_t* __restrict__ targets,
                               compute_t<T>* __restrict__ lse,
                               compute_t<T>* __restrict__ target_logit, i64 N, i64 Vl,
                               i64 vocab_start) {
  using C = compute_t<T>;
  using Reduce = cub::BlockReduce<MaxSum<C>, kStatsThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const i64 t = targets[n];
    if (t < 0) {  // ignored position (block-uniform branch)
      if (threadIdx.x == 0) {
        lse[n] = C(0);
        target_logit[n] = C(0);
      }
      continue;
    }
    const T* x = logits + n * Vl;  // [Vl]
    C m = C(-INFINITY), s = 0;
    rows::for_each_piece<T, kStatsThreads, kVector>(Vl, [&](i64 v, auto width) {
      constexpr int W = decltype(width)::value;
      C xv[W];
      rows::load_n<W>(x + v, xv);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        if (xv[k] > m) {
          s = s * dev_exp(m - xv[k]) + C(1);
          m = xv[k];
        } else {
          // −inf adds 0 (also while m is −inf); a NaN logit makes s NaN.
          s += xv[k] == C(-INFINITY) ? C(0) : dev_exp(xv[k] - m);
        }
      }
    });
    const MaxSum<C> r = Reduce(tmp).Reduce(MaxSum<C>{m, s}, MergeMaxSum<C>{});
    if (threadIdx.x == 0) {
      lse[n] = r.m + dev_log(r.s);
      const i64 local = t - vocab_start;
      target_logit[n] = local >= 0 && local < Vl ? load(x + local) : C(0);
    }
    __syncthreads();  // `tmp` is reused by the next row
  }
}

// dlogits[n, v] = dloss[n] · exp(logits[n, v] − lse[n]) − dloss[n]·[v + vocab_start == t];
// rows with t < 0 get 0. Block (x: a column range of kBackwardColumns, y: rows); each thread
// takes kBackwardColumns / kBackwardThreads columns as pieces of W (16-byte vectors when
// kVector, else single elements).
template <class T, bool kVector>
__global__ void __launch_bounds__(kBackwardThreads)
    cross_entropy_backward_kernel(const T* __restrict__ logits,
                                  const std::int32_t* __restrict__ targets,
                                  const compute_t<T>* __restrict__ lse,
                                  const compute_t<T>* __restrict__ dloss, T* __restrict__ dlogits,
                                  i64 N, i64 Vl, i64 vocab_start) {
  using C = compute_t<T>;
  constexpr int W = kVector ? rows::kVec<T> : 1;
  constexpr int kPieces = kBackwardColumns / kBackwardThreads / W;  // per thread
  static_assert(kPieces * W * kBackwardThreads == kBackwardColumns, "pieces tile the range");
  const i64 v0 = static_cast<i64>(blockIdx.x) * kBackwardColumns;
  for (i64 n = blockIdx.y; n < N; n += gridDim.y) {
    const i64 t = targets[n];
    T* dx = dlogits + n * Vl;  // [Vl]
    const T* x = logits + n * Vl;
    const C l = t < 0 ? C(0) : lse[n], d = t < 0 ? C(0) : dloss[n];
    const i64 local = t - vocab_start;
#pragma unroll
    for (int k = 0; k < kPieces; ++k) {
      const i64 v = v0 + (static_cast<i64>(k) * kBackwardThreads + threadIdx.x) * W;
      if (v >= Vl) break;  // Vl is a multiple of W when kVector
      C g[W];
      if (t < 0) {
#pragma unroll
        for (int e = 0; e < W; ++e) g[e] = C(0);
      } else {
        rows::load_n<W>(x + v, g);
#pragma unroll
        for (int e = 0; e < W; ++e) {
          g[e] = d * dev_exp(g[e] - l);
          if (v + e == local) g[e] -= d;
        }
      }
      rows::store_n<W>(dx + v, g);
    }
  }
}

void check_logits_targets(const Tensor& logits, const Tensor& targets, std::int64_t vocab_start,
                          const char* op) {
  cuda::check_contiguous(logits, op, "logits");
  LINMOE_CHECK(logits.ndim() == 2, op, ": logits ", logits.str(), " must be [N, Vl]");
  cuda::check_contiguous(targets, op, "targets");
  check_dtype(targets, DType::i32, op, "targets");
  check_shape(targets, Shape{logits.size(0)}, op, "targets");
  LINMOE_CHECK(vocab_start >= 0, op, ": vocab_start = ", vocab_start, " is negative");
}

void check_stat(const Tensor& t, const Tensor& logits, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, stat_dtype(logits.dtype), op, arg);
  check_shape(t, Shape{logits.size(0)}, op, arg);
}

}  // namespace

void CudaBackend::cross_entropy_stats(const Tensor& logits, const Tensor& targets,
                                      std::int64_t vocab_start, const Tensor& lse,
                                      const Tensor& target_logit) {
  const char* op = "cross_entropy_stats";
  check_logits_targets(logits, targets, vocab_start, op);
  check_stat(lse, logits, op, "lse");
  check_stat(target_logit, logits, op, "target_logit");
  const i64 N = logits.size(0), Vl = logits.size(1);
  LINMOE_CHECK(Vl > 0, op, ": logits ", logits.str(), " has an empty vocabulary shard");
  if (N == 0) return;
  cudaStream_t stream = context().stream;
  cuda::dispatch_float(logits.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using C = compute_t<T>;
    rows::with_vector(rows::vectorizable<T>(Vl, {logits.data}), [&](auto vector) {
      cross_entropy_stats_kernel<T, decltype(vector)::value>
          <<<static_cast<int>(N < kMaxRowBlocks ? N : kMaxRowBlocks), kStatsThreads, 0, stream>>>(
              static_cast<const T*>(logits.data), static_cast<const std::int32_t*>(targets.data),
              static_cast<C*>(lse.data), static_cast<C*>(target_logit.data), N, Vl, vocab_start);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                         std::int64_t vocab_start, const Tensor& lse,
                                         const Tensor& dloss, const Tensor& dlogits) {
  const char* op = "cross_entropy_backward";
  check_logits_targets(logits, targets, vocab_start, op);
  check_stat(lse, logits, op, "lse");
  check_stat(dloss, logits, op, "dloss");
  cuda::check_contiguous(dlogits, op, "dlogits");
  check_dtype(dlogits, logits.dtype, op, "dlogits");
  check_shape(dlogits, logits.shape, op, "dlogits");
  const i64 N = logits.size(0), Vl = logits.size(1);
  if (N == 0 || Vl == 0) return;
  cudaStream_t stream = context().stream;
  const i64 col_blocks = (Vl + kBackwardColumns - 1) / kBackwardColumns;
  LINMOE_CHECK(col_blocks <= INT32_MAX, op, ": logits ", logits.str(), " has too many columns");
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(N < 65535 ? N : 65535));
  cuda::dispatch_float(logits.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using C = compute_t<T>;
    const bool vec = rows::vectorizable<T>(Vl, {logits.data, dlogits.data});
    rows::with_vector(vec, [&](auto vector) {
      cross_entropy_backward_kernel<T, decltype(vector)::value>
          <<<grid, kBackwardThreads, 0, stream>>>(
              static_cast<const T*>(logits.data), static_cast<const std::int32_t*>(targets.data),
              static_cast<const C*>(lse.data), static_cast<const C*>(dloss.data),
              static_cast<T*>(dlogits.data), N, Vl, vocab_start);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace linmoe
