// MoE token permutation on the GPU (MODEL.md 4): gather token rows into expert order, combine the
// expert outputs back with the routing weights, and the gradients of both. As in
// kernels/cpu/moe_permute.cpp every op first checks the plan's order and inverts it
// (row_of[n·k + s] = the expert row of token n's slot s, −1 when dropped); the token-side ops then
// run one thread block per token and sum its slots in slot order, so no two threads write one
// element and the result is the same on every run (no atomics on floats).
#include <algorithm>
#include <cstdint>
#include <limits>

#include "core/memory.h"
#include "kernels/cuda/cuda_context.cuh"

namespace linmoe {
namespace {

using cuda::i64;
using i32 = std::int32_t;
using ull = unsigned long long;

constexpr ull kNoIndex = ~0ull;  // "no offending index" in a check slot (atomicMin target)
constexpr int kThreads = 256;
constexpr int kMaxRowBlocks = 1 << 20;  // grid cap of the row loops (grid-stride beyond it)

// The order checks of ops.h, one slot each: the lowest offending position i.
enum OrderCheck : int {
  kOutOfRange = 0,  // order[i] outside [−1, N·k)
  kNegative = 1,    // order[i] = −1 at i < A
  kPastA = 2,       // order[i] ≠ −1 at i ≥ A
  kRepeat = 3,      // order[i] repeats an earlier assignment
  kNumChecks = 4
};

// row_of starts at −1; every in-range entry i < A claims row_of[order[i]] (the largest i wins,
// so a repeated assignment leaves every other occurrence to fail the second pass).
__global__ void invert_order_kernel(const i32* __restrict__ order, i64 NK, i64 A,
                                    i32* __restrict__ row_of, ull* __restrict__ bad) {
  for (i64 i = blockIdx.x * i64{blockDim.x} + threadIdx.x; i < NK;
       i += i64{blockDim.x} * gridDim.x) {
    const i64 a = order[i];
    if (a < -1 || a >= NK) {
      atomicMin(bad + kOutOfRange, static_cast<ull>(i));
    } else if (i < A) {
      if (a < 0) {
        atomicMin(bad + kNegative, static_cast<ull>(i));
      } else {
        atomicMax(row_of + a, static_cast<i32>(i));
      }
    } else if (a != -1) {
      atomicMin(bad + kPastA, static_cast<ull>(i));
    }
  }
}

__global__ void check_repeats_kernel(const i32* __restrict__ order, i64 NK, i64 A,
                                     const i32* __restrict__ row_of, ull* __restrict__ bad) {
  for (i64 i = blockIdx.x * i64{blockDim.x} + threadIdx.x; i < A;
       i += i64{blockDim.x} * gridDim.x) {
    const i64 a = order[i];
    if (a >= 0 && a < NK && row_of[a] != i) atomicMin(bad + kRepeat, static_cast<ull>(i));
  }
}

// Checks order: [N·k] i32 against A expert rows (the plan's kept count) like the CPU backend, and
// returns its inverse in device scratch (valid until the op returns). Synchronises to read the
// check results.
class OrderInverse {
 public:
  OrderInverse(CudaBackend& backend, const Tensor& order, i64 N, i64 k, i64 A, const char* op) {
    cuda::check_contiguous(order, op, "order");
    check_dtype(order, DType::i32, op, "order");
    LINMOE_CHECK(k >= 1, op, ": k = ", k, " must be >= 1");
    const i64 NK = N * k;
    check_shape(order, Shape{NK}, op, "order");
    LINMOE_CHECK(NK <= std::numeric_limits<i32>::max(), op, ": N·k = ", NK,
                 " assignments do not fit the i32 order");
    LINMOE_CHECK(A >= 0 && A <= NK, op, ": ", A, " expert rows, more than N·k = ", NK,
                 " assignments");
    const std::size_t check_bytes = align_up(kNumChecks * sizeof(ull));
    scratch_ = Buffer(backend.allocator(),
                      check_bytes + static_cast<std::size_t>(std::max<i64>(NK, 1)) * sizeof(i32),
                      str_cat(op, " order inverse"));
    ull* bad = static_cast<ull*>(scratch_.data());
    row_of_ = reinterpret_cast<i32*>(static_cast<char*>(scratch_.data()) + check_bytes);
    const cudaStream_t stream = backend.context().stream;
    CUDA_CHECK(cudaMemsetAsync(bad, 0xff, kNumChecks * sizeof(ull), stream));
    if (NK == 0) return;
    CUDA_CHECK(cudaMemsetAsync(row_of_, 0xff, static_cast<std::size_t>(NK) * sizeof(i32), stream));
    const i32* po = static_cast<const i32*>(order.data);
    invert_order_kernel<<<cuda::blocks_for(NK, kThreads), kThreads, 0, stream>>>(po, NK, A, row_of_,
                                                                                 bad);
    CUDA_CHECK_LAUNCH();
    if (A > 0) {
      check_repeats_kernel<<<cuda::blocks_for(A, kThreads), kThreads, 0, stream>>>(po, NK, A,
                                                                                   row_of_, bad);
      CUDA_CHECK_LAUNCH();
    }
    ull host[kNumChecks];
    CUDA_CHECK(cudaMemcpyAsync(host, bad, sizeof(host), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    auto value_at = [&](const i32* base, ull index) {
      i32 v = 0;
      CUDA_CHECK(cudaMemcpyAsync(&v, base + index, sizeof(i32), cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));
      return v;
    };
    if (host[kOutOfRange] != kNoIndex) {
      LINMOE_CHECK(false, op, ": order[", host[kOutOfRange],
                   "] = ", value_at(po, host[kOutOfRange]), " is outside [-1, N·k = ", NK, ")");
    }
    if (host[kNegative] != kNoIndex) {
      LINMOE_CHECK(false, op, ": order[", host[kNegative],
                   "] = -1 but the expert rows number A = ", A,
                   " (A must be the plan's kept count)");
    }
    if (host[kPastA] != kNoIndex) {
      LINMOE_CHECK(false, op, ": order[", host[kPastA], "] = ", value_at(po, host[kPastA]),
                   " is past the A = ", A, " expert rows (A must be the plan's kept count)");
    }
    if (host[kRepeat] != kNoIndex) {
      const i32 a = value_at(po, host[kRepeat]);
      LINMOE_CHECK(false, op, ": order[", host[kRepeat], "] = ", a, " repeats order[",
                   value_at(row_of_, static_cast<ull>(a)), "]");
    }
  }
  const i32* row_of() const { return row_of_; }  // [N·k]

 private:
  Buffer scratch_;
  i32* row_of_ = nullptr;
};

// A float tensor [rows, cols] on the device, contiguous, with the given dtype.
void check_rows(const Tensor& t, DType dtype, i64 rows, i64 cols, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, dtype, op, arg);
  check_shape(t, Shape{rows, cols}, op, arg);
}

// Threads of a row block: the row width rounded up to warps, at most kThreads.
int row_threads(i64 cols) {
  const i64 warps = std::min<i64>((std::max<i64>(cols, 1) + 31) / 32, kThreads / 32);
  return static_cast<int>(warps * 32);
}
int row_blocks(i64 rows) {
  return static_cast<int>(std::clamp<i64>(rows, 1, kMaxRowBlocks));
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// out[i] = x[order[i] / k] for i < A, rows of `width` words V (16-byte vectors when the rows
// allow, else single elements): a plain copy, no arithmetic.
template <class V>
__global__ void permute_kernel(const V* __restrict__ x, const i32* __restrict__ order, int k, i64 A,
                               i64 width, V* __restrict__ out) {
  for (i64 i = blockIdx.x; i < A; i += gridDim.x) {
    const V* src = x + (order[i] / k) * width;  // [width] the token of assignment order[i]
    V* dst = out + i * width;                   // [width]
    for (i64 j = threadIdx.x; j < width; j += blockDim.x) dst[j] = src[j];
  }
}

// dx[n] += Σ_s dout[row_of[n·k + s]] over the kept slots, in slot order (ACCUMULATES).
template <class T>
__global__ void permute_backward_kernel(const T* __restrict__ dout, const i32* __restrict__ row_of,
                                        i64 N, int k, i64 D, T* __restrict__ dx) {
  using C = cuda::compute_t<T>;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const i32* rows = row_of + n * k;  // [k]
    T* g = dx + n * D;                 // [D]
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
      C acc = cuda::load(g + j);
      for (int s = 0; s < k; ++s) {
        const i64 i = rows[s];
        if (i >= 0) acc += cuda::load(dout + i * D + j);
      }
      cuda::store(g + j, acc);
    }
  }
}

// out[n] (+)= Σ_s weights[n·k + s] · y[row_of[n·k + s]] over the kept slots, in slot order.
template <class T>
__global__ void unpermute_kernel(const T* __restrict__ y, const i32* __restrict__ row_of,
                                 const T* __restrict__ weights, i64 N, int k, i64 D,
                                 bool accumulate, T* __restrict__ out) {
  using C = cuda::compute_t<T>;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const i32* rows = row_of + n * k;  // [k]
    const T* w = weights + n * k;      // [k]
    T* o = out + n * D;                // [D]
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
      C acc = accumulate ? cuda::load(o + j) : C(0);
      // Dropped slots add nothing and their weights are not read (MODEL.md 4).
      for (int s = 0; s < k; ++s) {
        const i64 i = rows[s];
        if (i >= 0) acc += cuda::load(w + s) * cuda::load(y + i * D + j);
      }
      cuda::store(o + j, acc);
    }
  }
}

// The sum of v over the block (blockDim.x a multiple of 32, at most 1024), in a fixed tree:
// the same bits on every run. Every thread gets the sum. shared: [32].
template <class C>
__device__ C block_sum(C v, C* shared) {
  constexpr unsigned kAll = 0xffffffffu;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kAll, v, offset);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  __syncthreads();  // shared may still be read by the previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : C(0);
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kAll, v, offset);
  return v;
}

// dy[row] = w · dout[n]; d_weights[n·k + s] = ⟨dout[n], y[row]⟩ (0 for a dropped slot).
// Each expert row belongs to exactly one (n, s), so every row of dy is written once.
template <class T>
__global__ void unpermute_backward_kernel(const T* __restrict__ dout, const T* __restrict__ y,
                                          const i32* __restrict__ row_of,
                                          const T* __restrict__ weights, i64 N, int k, i64 D,
                                          T* __restrict__ dy, T* __restrict__ d_weights) {
  using C = cuda::compute_t<T>;
  __shared__ C shared[32];
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const T* g = dout + n * D;  // [D]
    for (int s = 0; s < k; ++s) {
      const i64 a = n * k + s, i = row_of[a];
      if (i < 0) {  // a dropped slot contributed nothing
        if (d_weights && threadIdx.x == 0) cuda::store(d_weights + a, C(0));
        continue;
      }
      const C w = cuda::load(weights + a);
      const T* yr = y + i * D;  // [D]
      T* dyr = dy + i * D;      // [D]
      C dot = 0;
      for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        const C gj = cuda::load(g + j);
        cuda::store(dyr + j, w * gj);
        dot += gj * cuda::load(yr + j);
      }
      if (d_weights) {  // uniform across the block: the reduction's barriers are safe
        dot = block_sum(dot, shared);
        if (threadIdx.x == 0) cuda::store(d_weights + a, dot);
      }
    }
  }
}

}  // namespace

void CudaBackend::moe_permute(const Tensor& x, const Tensor& order, int k, const Tensor& out) {
  const char* op = "moe_permute";
  cuda::check_contiguous(x, op, "x");
  LINMOE_CHECK(x.ndim() == 2, op, ": x ", x.str(), " must be [N, D]");
  LINMOE_CHECK(out.ndim() == 2, op, ": out ", out.str(), " must be [A, D]");
  const i64 N = x.size(0), D = x.size(1), A = out.size(0);
  check_rows(out, x.dtype, A, D, op, "out");
  const OrderInverse inverse(*this, order, N, k, A, op);
  if (A == 0 || D == 0) return;
  const i32* po = static_cast<const i32*>(order.data);
  const cudaStream_t stream = ctx_->stream;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const i64 row_bytes = D * static_cast<i64>(sizeof(T));
    if (row_bytes % 16 == 0 && aligned16(x.data) && aligned16(out.data)) {
      const i64 width = row_bytes / 16;
      permute_kernel<uint4><<<row_blocks(A), row_threads(width), 0, stream>>>(
          static_cast<const uint4*>(x.data), po, k, A, width, static_cast<uint4*>(out.data));
    } else {
      permute_kernel<T><<<row_blocks(A), row_threads(D), 0, stream>>>(
          static_cast<const T*>(x.data), po, k, A, D, static_cast<T*>(out.data));
    }
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::moe_permute_backward(const Tensor& dout, const Tensor& order, int k,
                                       const Tensor& dx) {
  const char* op = "moe_permute_backward";
  cuda::check_contiguous(dx, op, "dx");
  LINMOE_CHECK(dx.ndim() == 2, op, ": dx ", dx.str(), " must be [N, D]");
  LINMOE_CHECK(dout.ndim() == 2, op, ": dout ", dout.str(), " must be [A, D]");
  const i64 N = dx.size(0), D = dx.size(1), A = dout.size(0);
  check_rows(dout, dx.dtype, A, D, op, "dout");
  const OrderInverse inverse(*this, order, N, k, A, op);
  if (N == 0 || D == 0) return;
  cuda::dispatch_float(dx.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    permute_backward_kernel<T><<<row_blocks(N), row_threads(D), 0, ctx_->stream>>>(
        static_cast<const T*>(dout.data), inverse.row_of(), N, k, D, static_cast<T*>(dx.data));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::moe_unpermute(const Tensor& y, const Tensor& order, const Tensor& weights,
                                const Tensor& out, bool accumulate) {
  const char* op = "moe_unpermute";
  cuda::check_contiguous(y, op, "y");
  LINMOE_CHECK(y.ndim() == 2, op, ": y ", y.str(), " must be [A, D]");
  cuda::check_contiguous(weights, op, "weights");
  check_dtype(weights, y.dtype, op, "weights");
  LINMOE_CHECK(weights.ndim() == 2, op, ": weights ", weights.str(), " must be [N, k]");
  const i64 A = y.size(0), D = y.size(1), N = weights.size(0), k = weights.size(1);
  check_rows(out, y.dtype, N, D, op, "out");
  LINMOE_CHECK(k <= std::numeric_limits<int>::max(), op, ": k = ", k, " is too large");
  const OrderInverse inverse(*this, order, N, k, A, op);
  if (N == 0 || D == 0) return;
  cuda::dispatch_float(y.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    unpermute_kernel<T><<<row_blocks(N), row_threads(D), 0, ctx_->stream>>>(
        static_cast<const T*>(y.data), inverse.row_of(), static_cast<const T*>(weights.data), N,
        static_cast<int>(k), D, accumulate, static_cast<T*>(out.data));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::moe_unpermute_backward(const Tensor& dout, const Tensor& y, const Tensor& order,
                                         const Tensor& weights, const Tensor& dy,
                                         const Tensor& d_weights) {
  const char* op = "moe_unpermute_backward";
  cuda::check_contiguous(y, op, "y");
  LINMOE_CHECK(y.ndim() == 2, op, ": y ", y.str(), " must be [A, D]");
  cuda::check_contiguous(weights, op, "weights");
  check_dtype(weights, y.dtype, op, "weights");
  LINMOE_CHECK(weights.ndim() == 2, op, ": weights ", weights.str(), " must be [N, k]");
  const i64 A = y.size(0), D = y.size(1), N = weights.size(0), k = weights.size(1);
  check_rows(dout, y.dtype, N, D, op, "dout");
  check_rows(dy, y.dtype, A, D, op, "dy");
  const bool want_dw = d_weights.defined();
  if (want_dw) check_rows(d_weights, y.dtype, N, k, op, "d_weights");
  LINMOE_CHECK(k <= std::numeric_limits<int>::max(), op, ": k = ", k, " is too large");
  const OrderInverse inverse(*this, order, N, k, A, op);
  if (N == 0) return;
  cuda::dispatch_float(y.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    unpermute_backward_kernel<T><<<row_blocks(N), row_threads(D), 0, ctx_->stream>>>(
        static_cast<const T*>(dout.data), static_cast<const T*>(y.data), inverse.row_of(),
        static_cast<const T*>(weights.data), N, static_cast<int>(k), D, static_cast<T*>(dy.data),
        want_dw ? static_cast<T*>(d_weights.data) : nullptr);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace linmoe
