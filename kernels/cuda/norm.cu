// RMSNorm (MODEL.md 1) and L2 row normalisation (MODEL.md 3) on the GPU.
//   rms:  y = x · rstd · w,  rstd = 1/sqrt(mean_j x_j² + eps)
//   l2:   y = x · r,         r    = 1/sqrt(Σ_j x_j² + eps)
// One block per row (16-byte loads when the row length and pointers allow); row sums accumulate in
// the compute type (f32 for f32/bf16, f64 for f64). The RMSNorm weight gradient is deterministic
// without atomics: column-tile blocks write per-row-chunk partial sums [P, D] that a second kernel
// adds up in chunk order.
#include <cmath>
#include <cub/block/block_reduce.cuh>
#include <type_traits>

#include "core/memory.h"
#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/row_access.cuh"

namespace linmoe {
namespace {

using cuda::compute_t;
using cuda::i64;
using cuda::load;
using cuda::store;
namespace rows = cuda::rows;

// ---- checks (mirror kernels/cpu/norm.cpp and l2_norm.cpp) -------------------------------------

void check_like(const Tensor& t, const Tensor& ref, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, ref.dtype, op, arg);
  check_shape(t, ref.shape, op, arg);
}

void check_rows(const Tensor& x, const char* op, const char* shape) {
  cuda::check_contiguous(x, op, "x");
  LINMOE_CHECK(x.ndim() == 2, op, ": x ", x.str(), " must be ", shape);
}

void check_stat(const Tensor& t, const Tensor& x, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, stat_dtype(x.dtype), op, arg);
  check_shape(t, Shape{x.size(0)}, op, arg);
}

// ---- launch shapes ---------------------------------------------------------------------------

// Rows one block each; more rows than this loop inside the block.
constexpr i64 kMaxRowBlocks = 65535LL * 32;

int row_blocks(i64 N) {
  return static_cast<int>(N < kMaxRowBlocks ? N : kMaxRowBlocks);
}

// Calls f(std::integral_constant<int, threads>, std::bool_constant<vector>) with a block size
// that suits a row of D (counted in 16-byte pieces when vector).
template <class F>
void with_row_threads(i64 D, bool vector, F&& f) {
  rows::with_vector(vector, [&](auto vec) {
    const i64 pieces = decltype(vec)::value ? D / 4 : D;  // ~4 elements per vector load
    if (pieces <= 128) {
      f(std::integral_constant<int, 32>{}, vec);
    } else if (pieces <= 1024) {
      f(std::integral_constant<int, 128>{}, vec);
    } else if (pieces <= 4096) {
      f(std::integral_constant<int, 256>{}, vec);
    } else {
      f(std::integral_constant<int, 512>{}, vec);
    }
  });
}

__device__ __forceinline__ float inv_sqrt(float v) {
  return 1.0f / sqrtf(v);
}
__device__ __forceinline__ double inv_sqrt(double v) {
  return 1.0 / sqrt(v);
}

// Sum of v over the block, returned to every thread.
template <class C, int kThreads>
__device__ __forceinline__ C block_sum_all(C v) {
  using Reduce = cub::BlockReduce<C, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ C total;
  v = Reduce(tmp).Sum(v);
  if (threadIdx.x == 0) total = v;
  __syncthreads();
  const C r = total;
  __syncthreads();  // `tmp` and `total` are reused by the next row
  return r;
}

// ---- RMSNorm ---------------------------------------------------------------------------------

// x, y: [N, D]; w: [D]; rstd: [N]. kVector: 16-byte pieces (rows::vectorizable). kResidual:
// x ← x + residual first (in place), the stored (rounded) sum normalised; each thread reads back
// in the second pass exactly the pieces it wrote in the first, so no barrier is needed for them.
template <class T, int kThreads, bool kVector, bool kResidual>
__global__ void __launch_bounds__(kThreads)
    rms_norm_forward_kernel(T* __restrict__ x, const T* __restrict__ residual,
                            const T* __restrict__ w, T* __restrict__ y,
                            compute_t<T>* __restrict__ rstd, i64 N, i64 D, compute_t<T> eps) {
  using C = compute_t<T>;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    T* xr = x + n * D;  // [D]
    T* yr = y + n * D;
    C ss = 0;
    rows::for_each_piece<T, kThreads, kVector>(D, [&](i64 j, auto width) {
      constexpr int W = decltype(width)::value;
      C xv[W];
      rows::load_n<W>(xr + j, xv);
      if constexpr (kResidual) {
        C rv[W];
        rows::load_n<W>(residual + n * D + j, rv);
#pragma unroll
        for (int k = 0; k < W; ++k) {
          T stored;  // the sum as x will hold it
          store(&stored, xv[k] + rv[k]);
          xv[k] = load(&stored);
        }
        rows::store_n<W>(xr + j, xv);
      }
#pragma unroll
      for (int k = 0; k < W; ++k) ss += xv[k] * xv[k];
    });
    ss = block_sum_all<C, kThreads>(ss);
    const C r = inv_sqrt(ss / static_cast<C>(D) + eps);
    if (threadIdx.x == 0) rstd[n] = r;
    rows::for_each_piece<T, kThreads, kVector>(D, [&](i64 j, auto width) {
      constexpr int W = decltype(width)::value;
      C xv[W], wv[W];
      rows::load_n<W>(xr + j, xv);
      rows::load_n<W>(w + j, wv);
#pragma unroll
      for (int k = 0; k < W; ++k) xv[k] = xv[k] * r * wv[k];
      rows::store_n<W>(yr + j, xv);
    });
  }
}

// dx_j = rstd · w_j dy_j − x_j · rstd³ · (1/D) Σ_i dy_i w_i x_i (added to dx when kAccumulate).
template <class T, int kThreads, bool kVector, bool kAccumulate>
__global__ void __launch_bounds__(kThreads)
    rms_norm_backward_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                const T* __restrict__ w, const compute_t<T>* __restrict__ rstd,
                                T* __restrict__ dx, i64 N, i64 D) {
  using C = compute_t<T>;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const T* xr = x + n * D;
    const T* dyr = dy + n * D;
    T* dxr = dx + n * D;
    C dot = 0;
    rows::for_each_piece<T, kThreads, kVector>(D, [&](i64 j, auto width) {
      constexpr int W = decltype(width)::value;
      C xv[W], wv[W], gv[W];
      rows::load_n<W>(xr + j, xv);
      rows::load_n<W>(w + j, wv);
      rows::load_n<W>(dyr + j, gv);
#pragma unroll
      for (int k = 0; k < W; ++k) dot += gv[k] * wv[k] * xv[k];
    });
    dot = block_sum_all<C, kThreads>(dot);
    const C r = rstd[n];
    const C c = r * r * r * dot / static_cast<C>(D);
    rows::for_each_piece<T, kThreads, kVector>(D, [&](i64 j, auto width) {
      constexpr int W = decltype(width)::value;
      C xv[W], wv[W], gv[W];
      rows::load_n<W>(xr + j, xv);
      rows::load_n<W>(w + j, wv);
      rows::load_n<W>(dyr + j, gv);
#pragma unroll
      for (int k = 0; k < W; ++k) gv[k] = r * wv[k] * gv[k] - c * xv[k];
      if constexpr (kAccumulate) {
        C old[W];
        rows::load_n<W>(dxr + j, old);
#pragma unroll
        for (int k = 0; k < W; ++k) gv[k] += old[k];
      }
      rows::store_n<W>(dxr + j, gv);
    });
  }
}

// Column partials of the weight gradient: partial[p, j] = Σ_{n in chunk p} dy[n, j] x[n, j]
// rstd[n]. Block (32, 8): 32 columns, 8 row lanes summed in lane order.
constexpr int kColTile = 32, kRowLanes = 8;

template <class T>
__global__ void __launch_bounds__(kColTile* kRowLanes)
    rms_norm_dw_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                               const compute_t<T>* __restrict__ rstd,
                               compute_t<T>* __restrict__ partial, i64 N, i64 D,
                               i64 rows_per_chunk) {
  using C = compute_t<T>;
  __shared__ C lanes[kRowLanes][kColTile + 1];
  const i64 j = static_cast<i64>(blockIdx.x) * kColTile + threadIdx.x;
  const i64 r0 = static_cast<i64>(blockIdx.y) * rows_per_chunk;
  const i64 r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
  C acc = 0;
  if (j < D) {
    for (i64 n = r0 + threadIdx.y; n < r1; n += kRowLanes) {
      acc += load(dy + n * D + j) * load(x + n * D + j) * rstd[n];
    }
  }
  lanes[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < D) {
    C s = lanes[0][threadIdx.x];
    for (int l = 1; l < kRowLanes; ++l) s += lanes[l][threadIdx.x];
    partial[static_cast<i64>(blockIdx.y) * D + j] = s;
  }
}

// out[j] += Σ_p partial[p, j], chunks in order. partial: [P, D].
template <class T>
__global__ void add_column_partials_kernel(const compute_t<T>* __restrict__ partial, i64 P, i64 D,
                                           T* __restrict__ out) {
  using C = compute_t<T>;
  for (i64 j = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; j < D;
       j += static_cast<i64>(gridDim.x) * blockDim.x) {
    C s = 0;
    for (i64 p = 0; p < P; ++p) s += partial[p * D + j];
    store(out + j, load(out + j) + s);
  }
}

// ---- L2 normalisation --------------------------------------------------------------------------

// x, y: [N, d]; inv_norm: [N].
template <class T, int kThreads, bool kVector>
__global__ void __launch_bounds__(kThreads)
    l2_norm_forward_kernel(const T* __restrict__ x, T* __restrict__ y,
                           compute_t<T>* __restrict__ inv_norm, i64 N, i64 d, compute_t<T> eps) {
  using C = compute_t<T>;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const T* xr = x + n * d;
    T* yr = y + n * d;
    C ss = 0;
    rows::for_each_piece<T, kThreads, kVector>(d, [&](i64 j, auto width) {
      constexpr int W = decltype(width)::value;
      C xv[W];
      rows::load_n<W>(xr + j, xv);
#pragma unroll
      for (int k = 0; k < W; ++k) ss += xv[k] * xv[k];
    });
    ss = block_sum_all<C, kThreads>(ss);
    const C r = inv_sqrt(ss + eps);
    if (threadIdx.x == 0) inv_norm[n] = r;
    rows::for_each_piece<T, kThreads, kVector>(d, [&](i64 j, auto width) {
      constexpr int W = decltype(width)::value;
      C xv[W];
      rows::load_n<W>(xr + j, xv);
#pragma unroll
      for (int k = 0; k < W; ++k) xv[k] *= r;
      rows::store_n<W>(yr + j, xv);
    });
  }
}

// dx = r · (dy − y ⟨y, dy⟩) with y = x·r.
template <class T, int kThreads, bool kVector>
__global__ void __launch_bounds__(kThreads)
    l2_norm_backward_kernel(const T* __restrict__ x, const compute_t<T>* __restrict__ inv_norm,
                            const T* __restrict__ dy, T* __restrict__ dx, i64 N, i64 d) {
  using C = compute_t<T>;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const T* xr = x + n * d;
    const T* dyr = dy + n * d;
    T* dxr = dx + n * d;
    C dot = 0;
    rows::for_each_piece<T, kThreads, kVector>(d, [&](i64 j, auto width) {
      constexpr int W = decltype(width)::value;
      C xv[W], gv[W];
      rows::load_n<W>(xr + j, xv);
      rows::load_n<W>(dyr + j, gv);
#pragma unroll
      for (int k = 0; k < W; ++k) dot += xv[k] * gv[k];
    });
    dot = block_sum_all<C, kThreads>(dot);
    const C r = inv_norm[n];
    dot *= r;
    rows::for_each_piece<T, kThreads, kVector>(d, [&](i64 j, auto width) {
      constexpr int W = decltype(width)::value;
      C xv[W], gv[W];
      rows::load_n<W>(xr + j, xv);
      rows::load_n<W>(dyr + j, gv);
#pragma unroll
      for (int k = 0; k < W; ++k) gv[k] = r * (gv[k] - xv[k] * r * dot);
      rows::store_n<W>(dxr + j, gv);
    });
  }
}

}  // namespace

void CudaBackend::rms_norm_forward(const Tensor& x, const Tensor& w, double eps, const Tensor& y,
                                   const Tensor& rstd, const Tensor& residual) {
  const char* op = "rms_norm_forward";
  check_rows(x, op, "[N, D]");
  const i64 N = x.size(0), D = x.size(1);
  cuda::check_contiguous(w, op, "w");
  check_dtype(w, x.dtype, op, "w");
  check_shape(w, Shape{D}, op, "w");
  check_like(y, x, op, "y");
  check_stat(rstd, x, op, "rstd");
  LINMOE_CHECK(eps >= 0, op, ": eps = ", eps, " must be ≥ 0");
  const bool fused = residual.defined();
  if (fused) check_like(residual, x, op, "residual");
  if (N == 0) return;
  cudaStream_t stream = context().stream;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using C = compute_t<T>;
    const void* res = fused ? residual.data : x.data;  // any aligned pointer when not fused
    const bool vec = rows::vectorizable<T>(D, {x.data, w.data, y.data, res});
    with_row_threads(D, vec, [&](auto threads, auto vector) {
      constexpr int kT = decltype(threads)::value;
      constexpr bool kV = decltype(vector)::value;
      auto* px = static_cast<T*>(x.data);
      const auto* pr = static_cast<const T*>(res);
      const auto* pw = static_cast<const T*>(w.data);
      auto* py = static_cast<T*>(y.data);
      auto* ps = static_cast<C*>(rstd.data);
      if (fused) {
        rms_norm_forward_kernel<T, kT, kV, true>
            <<<row_blocks(N), kT, 0, stream>>>(px, pr, pw, py, ps, N, D, static_cast<C>(eps));
      } else {
        rms_norm_forward_kernel<T, kT, kV, false>
            <<<row_blocks(N), kT, 0, stream>>>(px, nullptr, pw, py, ps, N, D, static_cast<C>(eps));
      }
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                    const Tensor& rstd, const Tensor& dx, const Tensor& dw,
                                    bool accumulate_dx) {
  const char* op = "rms_norm_backward";
  check_rows(x, op, "[N, D]");
  const i64 N = x.size(0), D = x.size(1);
  check_like(dy, x, op, "dy");
  cuda::check_contiguous(w, op, "w");
  check_dtype(w, x.dtype, op, "w");
  check_shape(w, Shape{D}, op, "w");
  check_stat(rstd, x, op, "rstd");
  check_like(dx, x, op, "dx");
  check_like(dw, w, op, "dw");
  if (N == 0 || D == 0) return;
  cudaStream_t stream = context().stream;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using C = compute_t<T>;
    const T* pdy = static_cast<const T*>(dy.data);
    const T* px = static_cast<const T*>(x.data);
    const C* pr = static_cast<const C*>(rstd.data);
    const bool vec = rows::vectorizable<T>(D, {dy.data, x.data, w.data, dx.data});
    with_row_threads(D, vec, [&](auto threads, auto vector) {
      constexpr int kT = decltype(threads)::value;
      constexpr bool kV = decltype(vector)::value;
      const auto* pw = static_cast<const T*>(w.data);
      auto* pdx = static_cast<T*>(dx.data);
      if (accumulate_dx) {
        rms_norm_backward_dx_kernel<T, kT, kV, true>
            <<<row_blocks(N), kT, 0, stream>>>(pdy, px, pw, pr, pdx, N, D);
      } else {
        rms_norm_backward_dx_kernel<T, kT, kV, false>
            <<<row_blocks(N), kT, 0, stream>>>(pdy, px, pw, pr, pdx, N, D);
      }
      CUDA_CHECK_LAUNCH();
    });
    // dw: about 2048 blocks of 32 columns; P row chunks (a function of N and D only, so the
    // summation order and the result do not depend on the GPU).
    const i64 col_tiles = (D + kColTile - 1) / kColTile;
    i64 P = (2048 + col_tiles - 1) / col_tiles;
    const i64 max_chunks = (N + 63) / 64;  // at least 64 rows (8 per lane) per chunk
    if (P > max_chunks) P = max_chunks;
    if (P > 65535) P = 65535;
    const i64 rows_per_chunk = (N + P - 1) / P;
    P = (N + rows_per_chunk - 1) / rows_per_chunk;
    // Freed when the op returns: the allocator's deallocation must be ordered after the queued
    // kernels (stream-ordered, or synchronising like cudaFree).
    Buffer partial(allocator(), static_cast<std::size_t>(P * D) * sizeof(C),
                   "rms_norm_backward dw partials");
    C* pp = static_cast<C*>(partial.data());
    rms_norm_dw_partial_kernel<T>
        <<<dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(P)),
           dim3(kColTile, kRowLanes), 0, stream>>>(pdy, px, pr, pp, N, D, rows_per_chunk);
    CUDA_CHECK_LAUNCH();
    add_column_partials_kernel<T>
        <<<cuda::blocks_for(D), 256, 0, stream>>>(pp, P, D, static_cast<T*>(dw.data));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::l2_norm_forward(const Tensor& x, double eps, const Tensor& y,
                                  const Tensor& inv_norm) {
  const char* op = "l2_norm_forward";
  check_rows(x, op, "[N, d]");
  const i64 N = x.size(0), d = x.size(1);
  check_like(y, x, op, "y");
  check_stat(inv_norm, x, op, "inv_norm");
  LINMOE_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps = ", eps, " must be finite and ≥ 0");
  if (N == 0) return;
  cudaStream_t stream = context().stream;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using C = compute_t<T>;
    const bool vec = rows::vectorizable<T>(d, {x.data, y.data});
    with_row_threads(d, vec, [&](auto threads, auto vector) {
      l2_norm_forward_kernel<T, decltype(threads)::value, decltype(vector)::value>
          <<<row_blocks(N), decltype(threads)::value, 0, stream>>>(
              static_cast<const T*>(x.data), static_cast<T*>(y.data),
              static_cast<C*>(inv_norm.data), N, d, static_cast<C>(eps));
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::l2_norm_backward(const Tensor& x, const Tensor& inv_norm, const Tensor& dy,
                                   const Tensor& dx) {
  const char* op = "l2_norm_backward";
  check_rows(x, op, "[N, d]");
  const i64 N = x.size(0), d = x.size(1);
  check_stat(inv_norm, x, op, "inv_norm");
  check_like(dy, x, op, "dy");
  check_like(dx, x, op, "dx");
  if (N == 0) return;
  cudaStream_t stream = context().stream;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using C = compute_t<T>;
    const bool vec = rows::vectorizable<T>(d, {x.data, dy.data, dx.data});
    with_row_threads(d, vec, [&](auto threads, auto vector) {
      l2_norm_backward_kernel<T, decltype(threads)::value, decltype(vector)::value>
          <<<row_blocks(N), decltype(threads)::value, 0, stream>>>(
              static_cast<const T*>(x.data), static_cast<const C*>(inv_norm.data),
              static_cast<const T*>(dy.data), static_cast<T*>(dx.data), N, d);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace linmoe
