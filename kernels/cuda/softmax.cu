// Row softmax and its backward on the GPU (kernels/cpu/softmax.cpp): rows of [N, C].
// Short rows (C ≤ 1024, the router's experts) take one warp each, eight rows per block; longer
// rows one block of 512 threads each. The row maximum is subtracted before exponentiating; sums
// accumulate in the compute type (f32 for f32/bf16, f64 for f64). A row is read two or three
// times; the later reads hit the L1/L2 caches.
#include <cub/block/block_reduce.cuh>

#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/pointwise.cuh"

namespace linmoe {
namespace {

using cuda::compute_t;
using cuda::i64;
using cuda::load;
using cuda::store;

constexpr int kWarpRows = 8;            // rows per block in the warp-per-row kernels
constexpr i64 kWarpRowMaxC = 1024;      // longer rows take a block
constexpr int kRowThreads = 512;        // threads of the block-per-row kernels
constexpr i64 kMaxBlocks = 65535 * 32;  // more rows loop inside the grid

template <class C>
__device__ __forceinline__ C max_of(C a, C b) {
  return a > b ? a : b;
}

template <class C>
__device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class C>
__device__ __forceinline__ C warp_max(C v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_of(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

struct SumOp {
  template <class C>
  __device__ __forceinline__ C operator()(C a, C b) const {
    return a + b;
  }
};
struct MaxOp {
  template <class C>
  __device__ __forceinline__ C operator()(C a, C b) const {
    return a > b ? a : b;
  }
};

// A block-wide reduction returned to every thread; `op` is a cub reduction functor.
template <class C, int kThreads, class Op>
__device__ __forceinline__ C block_all_reduce(C v, Op op) {
  using Reduce = cub::BlockReduce<C, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ C result;
  v = Reduce(tmp).Reduce(v, op);
  if (threadIdx.x == 0) result = v;
  __syncthreads();
  v = result;
  __syncthreads();  // tmp and result may be reused by the next call
  return v;
}

// ---- forward ---------------------------------------------------------------------------------

// x, y: [N, C]; one warp per row (threadIdx.y picks the row within the block).
template <class T>
__global__ void softmax_forward_warp_kernel(const T* x, T* y, i64 N, i64 C) {
  using F = compute_t<T>;
  const int lane = threadIdx.x;
  for (i64 n = static_cast<i64>(blockIdx.x) * kWarpRows + threadIdx.y; n < N;
       n += static_cast<i64>(gridDim.x) * kWarpRows) {
    const T* xr = x + n * C;  // [C]
    T* yr = y + n * C;
    F m = load(xr);
    for (i64 c = lane; c < C; c += 32) m = max_of(m, load(xr + c));
    m = warp_max(m);
    F sum = 0;
    for (i64 c = lane; c < C; c += 32) sum += cuda::exp_of(load(xr + c) - m);
    const F inv = F(1) / warp_sum(sum);
    for (i64 c = lane; c < C; c += 32) store(yr + c, cuda::exp_of(load(xr + c) - m) * inv);
  }
}

// x, y: [N, C]; one block per row.
template <class T>
__global__ void softmax_forward_block_kernel(const T* x, T* y, i64 N, i64 C) {
  using F = compute_t<T>;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const T* xr = x + n * C;  // [C]
    T* yr = y + n * C;
    F m = load(xr);
    for (i64 c = threadIdx.x; c < C; c += kRowThreads) m = max_of(m, load(xr + c));
    m = block_all_reduce<F, kRowThreads>(m, MaxOp{});
    F sum = 0;
    for (i64 c = threadIdx.x; c < C; c += kRowThreads) sum += cuda::exp_of(load(xr + c) - m);
    const F inv = F(1) / block_all_reduce<F, kRowThreads>(sum, SumOp{});
    for (i64 c = threadIdx.x; c < C; c += kRowThreads) {
      store(yr + c, cuda::exp_of(load(xr + c) - m) * inv);
    }
  }
}

// ---- backward: dx = y ⊙ (dy − Σ_c dy·y) ------------------------------------------------------

template <class T>
__global__ void softmax_backward_warp_kernel(const T* y, const T* dy, T* dx, i64 N, i64 C) {
  using F = compute_t<T>;
  const int lane = threadIdx.x;
  for (i64 n = static_cast<i64>(blockIdx.x) * kWarpRows + threadIdx.y; n < N;
       n += static_cast<i64>(gridDim.x) * kWarpRows) {
    const T* yr = y + n * C;  // [C]
    const T* dyr = dy + n * C;
    T* dxr = dx + n * C;
    F dot = 0;
    for (i64 c = lane; c < C; c += 32) dot += load(dyr + c) * load(yr + c);
    dot = warp_sum(dot);
    for (i64 c = lane; c < C; c += 32) store(dxr + c, load(yr + c) * (load(dyr + c) - dot));
  }
}

template <class T>
__global__ void softmax_backward_block_kernel(const T* y, const T* dy, T* dx, i64 N, i64 C) {
  using F = compute_t<T>;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const T* yr = y + n * C;  // [C]
    const T* dyr = dy + n * C;
    T* dxr = dx + n * C;
    F dot = 0;
    for (i64 c = threadIdx.x; c < C; c += kRowThreads) dot += load(dyr + c) * load(yr + c);
    dot = block_all_reduce<F, kRowThreads>(dot, SumOp{});
    for (i64 c = threadIdx.x; c < C; c += kRowThreads) {
      store(dxr + c, load(yr + c) * (load(dyr + c) - dot));
    }
  }
}

int warp_row_blocks(i64 N) {
  const i64 b = (N + kWarpRows - 1) / kWarpRows;
  return static_cast<int>(b < kMaxBlocks ? b : kMaxBlocks);
}
int row_blocks(i64 N) {
  return static_cast<int>(N < kMaxBlocks ? N : kMaxBlocks);
}

void check_like(const Tensor& t, const Tensor& ref, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, ref.dtype, op, arg);
  check_shape(t, ref.shape, op, arg);
}

}  // namespace

void CudaBackend::softmax_forward(const Tensor& x, const Tensor& y) {
  const char* op = "softmax_forward";
  cuda::check_contiguous(x, op, "x");
  LINMOE_CHECK(x.ndim() == 2, op, ": x ", x.str(), " must be [N, C]");
  check_like(y, x, op, "y");
  const i64 N = x.size(0), C = x.size(1);
  if (N == 0 || C == 0) return;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data);
    T* py = static_cast<T*>(y.data);
    if (C <= kWarpRowMaxC) {
      softmax_forward_warp_kernel<T>
          <<<warp_row_blocks(N), dim3(32, kWarpRows), 0, ctx_->stream>>>(px, py, N, C);
    } else {
      softmax_forward_block_kernel<T>
          <<<row_blocks(N), kRowThreads, 0, ctx_->stream>>>(px, py, N, C);
    }
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  const char* op = "softmax_backward";
  cuda::check_contiguous(y, op, "y");
  LINMOE_CHECK(y.ndim() == 2, op, ": y ", y.str(), " must be [N, C]");
  check_like(dy, y, op, "dy");
  check_like(dx, y, op, "dx");
  const i64 N = y.size(0), C = y.size(1);
  if (N == 0 || C == 0) return;
  cuda::dispatch_float(y.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* py = static_cast<const T*>(y.data);
    const T* pdy = static_cast<const T*>(dy.data);
    T* pdx = static_cast<T*>(dx.data);
    if (C <= kWarpRowMaxC) {
      softmax_backward_warp_kernel<T>
          <<<warp_row_blocks(N), dim3(32, kWarpRows), 0, ctx_->stream>>>(py, pdy, pdx, N, C);
    } else {
      softmax_backward_block_kernel<T>
          <<<row_blocks(N), kRowThreads, 0, ctx_->stream>>>(py, pdy, pdx, N, C);
    }
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace linmoe
