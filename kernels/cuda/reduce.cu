// Reductions on the GPU (kernels/cpu/reduce.cpp): sum, sum_squares, max_abs and all_finite to a
// host double, and the row sum of bias gradients.
// Full reductions: a grid of P blocks (P a function of n only) reduces grid-strided elements in
// double into P partials, one block combines them in order; the result is copied to the host
// (these ops synchronise). sum_rows: blocks of 32 columns × a chunk of rows write per-chunk
// column sums [R, C] in double, a second kernel adds the chunks in order. Both deterministic.
#include <cub/block/block_reduce.cuh>

#include "kernels/cuda/cuda_context.cuh"

namespace linmoe {
namespace {

using cuda::compute_t;
using cuda::i64;
using cuda::load;
using cuda::store;

constexpr int kThreads = 256;
constexpr i64 kMaxPartials = 1024;
constexpr i64 kItemsPerBlock = 2048;  // below this a block's share, fewer blocks

// Reductions as (init, term, combine), the CPU's.
struct SumReduction {
  static constexpr double kInit = 0.0;
  __device__ static double term(double v) { return v; }
  __device__ static double combine(double a, double b) { return a + b; }
};
struct SumSquaresReduction {
  static constexpr double kInit = 0.0;
  __device__ static double term(double v) { return v * v; }
  __device__ static double combine(double a, double b) { return a + b; }
};
struct MaxAbsReduction {  // NaN wins over every number
  static constexpr double kInit = 0.0;
  __device__ static double term(double v) { return fabs(v); }
  __device__ static double combine(double a, double b) { return isnan(a) || a > b ? a : b; }
};
struct NonFiniteCount {
  static constexpr double kInit = 0.0;
  __device__ static double term(double v) { return isfinite(v) ? 0.0 : 1.0; }
  __device__ static double combine(double a, double b) { return a + b; }
};

template <class R>
struct CombineOp {  // cub's reduction functor
  __device__ __forceinline__ double operator()(double a, double b) const {
    return R::combine(a, b);
  }
};

// partial[blockIdx.x] = the reduction of x[i] for the block's grid-strided i.
template <class R, class T>
__global__ void __launch_bounds__(kThreads)
    reduce_partial_kernel(const T* x, i64 n, double* partial) {
  double acc = R::kInit;
  const i64 stride = static_cast<i64>(gridDim.x) * kThreads;
  for (i64 i = static_cast<i64>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    acc = R::combine(acc, R::term(static_cast<double>(load(x + i))));
  }
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  acc = Reduce(tmp).Reduce(acc, CombineOp<R>{});
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// *out = the reduction of partial[0..P); one block.
template <class R>
__global__ void __launch_bounds__(kThreads)
    reduce_final_kernel(const double* partial, int P, double* out) {
  double acc = R::kInit;
  for (int i = threadIdx.x; i < P; i += kThreads) acc = R::combine(acc, partial[i]);
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  acc = Reduce(tmp).Reduce(acc, CombineOp<R>{});
  if (threadIdx.x == 0) *out = acc;
}

template <class R>
double reduce_to_host(CudaContext& ctx, const Tensor& x, const char* op) {
  cuda::check_contiguous(x, op, "x");
  const i64 n = x.numel();
  double result = R::kInit;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    if (n == 0) return;
    i64 P = (n + kItemsPerBlock - 1) / kItemsPerBlock;
    P = P < kMaxPartials ? P : kMaxPartials;
    cuda::ScratchBuffer scratch(ctx.stream, static_cast<std::size_t>(P + 1) * sizeof(double));
    double* partial = scratch.as<double>();  // [P], then the result
    reduce_partial_kernel<R, T><<<static_cast<int>(P), kThreads, 0, ctx.stream>>>(
        static_cast<const T*>(x.data), n, partial);
    CUDA_CHECK_LAUNCH();
    reduce_final_kernel<R>
        <<<1, kThreads, 0, ctx.stream>>>(partial, static_cast<int>(P), partial + P);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(
        cudaMemcpyAsync(&result, partial + P, sizeof(double), cudaMemcpyDeviceToHost, ctx.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  });
  return result;
}

// ---- sum_rows
// ------------------------------------------------------------------------------------

constexpr int kColTile = 32;  // columns per block (one warp wide)
constexpr int kRowLanes = 8;  // threads along the rows of a chunk

// partial[r, c] = Σ_{n in chunk r} x[n, c]. x: [N, C]; grid (column tiles, R chunks).
template <class T>
__global__ void sum_rows_partial_kernel(const T* x, i64 N, i64 C, i64 rows_per_chunk,
                                        double* partial) {
  __shared__ double lane_sums[kRowLanes][kColTile + 1];
  const i64 c = static_cast<i64>(blockIdx.x) * kColTile + threadIdx.x;
  const i64 r0 = static_cast<i64>(blockIdx.y) * rows_per_chunk;
  const i64 r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
  double acc = 0;
  if (c < C) {
    for (i64 n = r0 + threadIdx.y; n < r1; n += kRowLanes) acc += load(x + n * C + c);
  }
  lane_sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double total = 0;
#pragma unroll
    for (int l = 0; l < kRowLanes; ++l) total += lane_sums[l][threadIdx.x];
    partial[static_cast<i64>(blockIdx.y) * C + c] = total;
  }
}

// out[c] (+)= Σ_r partial[r, c], chunks in order.
template <class T>
__global__ void sum_rows_final_kernel(const double* partial, i64 R, i64 C, T* out,
                                      bool accumulate) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 c = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += stride) {
    double total = 0;
    for (i64 r = 0; r < R; ++r) total += partial[r * C + c];
    if (accumulate) total += static_cast<double>(load(out + c));
    store(out + c, static_cast<compute_t<T>>(total));
  }
}

}  // namespace

double CudaBackend::sum(const Tensor& x) {
  return reduce_to_host<SumReduction>(*ctx_, x, "sum");
}

double CudaBackend::sum_squares(const Tensor& x) {
  return reduce_to_host<SumSquaresReduction>(*ctx_, x, "sum_squares");
}

double CudaBackend::max_abs(const Tensor& x) {
  return reduce_to_host<MaxAbsReduction>(*ctx_, x, "max_abs");
}

bool CudaBackend::all_finite(const Tensor& x) {
  // Counts non-finite values (a sum of the values could turn inf − inf into NaN; a count is plain).
  return reduce_to_host<NonFiniteCount>(*ctx_, x, "all_finite") == 0.0;
}

void CudaBackend::sum_rows(const Tensor& x, const Tensor& out, bool accumulate) {
  const char* op = "sum_rows";
  cuda::check_contiguous(x, op, "x");
  LINMOE_CHECK(x.ndim() == 2, op, ": x ", x.str(), " must be [N, C]");
  const i64 N = x.size(0), C = x.size(1);
  cuda::check_contiguous(out, op, "out");
  check_dtype(out, x.dtype, op, "out");
  check_shape(out, Shape{C}, op, "out");
  if (C == 0) return;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    if (N == 0) {  // an empty sum: zeros, or out unchanged
      if (!accumulate) CUDA_CHECK(cudaMemsetAsync(out.data, 0, out.nbytes(), ctx_->stream));
      return;
    }
    // Enough chunks of rows to give the GPU about a thousand blocks, each at least 32 rows.
    const i64 col_tiles = (C + kColTile - 1) / kColTile;
    i64 chunks = (1024 + col_tiles - 1) / col_tiles;
    const i64 max_chunks = (N + 31) / 32;
    chunks = chunks < max_chunks ? chunks : max_chunks;
    const i64 rows_per_chunk = (N + chunks - 1) / chunks;
    const i64 R = (N + rows_per_chunk - 1) / rows_per_chunk;
    LINMOE_CHECK(col_tiles <= 0x7fffffff, op, ": x ", x.str(), " has too many columns");
    cuda::ScratchBuffer scratch(ctx_->stream, static_cast<std::size_t>(R * C) * sizeof(double));
    sum_rows_partial_kernel<T><<<dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(R)),
                                 dim3(kColTile, kRowLanes), 0, ctx_->stream>>>(
        static_cast<const T*>(x.data), N, C, rows_per_chunk, scratch.as<double>());
    CUDA_CHECK_LAUNCH();
    sum_rows_final_kernel<T><<<cuda::blocks_for(C), 256, 0, ctx_->stream>>>(
        scratch.as<double>(), R, C, static_cast<T*>(out.data), accumulate);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace linmoe
