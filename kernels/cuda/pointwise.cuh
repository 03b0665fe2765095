// Element-wise maps for the op files that work element by element (elementwise.cu, swiglu.cu,
// optimizer.cu): y_0..y_{kOut−1} = op(x_0..x_{kIn−1}) at every index of n contiguous elements.
//
//   struct AddOp {
//     template <class C> __device__ void operator()(const C* x, C* y) const { y[0] = x[0] + x[1]; }
//   };
//   cuda::launch_map<T, 2, 1>(stream, AddOp{}, {a, b}, {out}, n);
//
// The op sees values in the compute type C (float for f32/bf16, double for f64). An output may
// be one of the inputs (in place: axpy, optimizer state): each thread reads all inputs of an
// element before writing its outputs. When every pointer is 16-byte aligned each thread moves
// 16-byte packs (4 f32, 8 bf16, 2 f64); otherwise single elements.
#pragma once
#include <cstdint>

#include "kernels/cuda/cuda_context.cuh"

namespace linmoe::cuda {

template <class T, int kIn, int kOut>
struct MapPointers {
  const T* in[kIn];
  T* out[kOut];
};

template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <class T, int kIn, int kOut, int V, class Op>
__global__ void map_kernel(Op op, MapPointers<T, kIn, kOut> p, i64 n) {
  using C = compute_t<T>;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  const i64 first = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  const i64 packs = n / V;
  for (i64 q = first; q < packs; q += stride) {
    Pack<T, V> in[kIn];
#pragma unroll
    for (int j = 0; j < kIn; ++j) in[j] = reinterpret_cast<const Pack<T, V>*>(p.in[j])[q];
    Pack<T, V> out[kOut];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      C x[kIn], y[kOut];
#pragma unroll
      for (int j = 0; j < kIn; ++j) x[j] = load(&in[j].v[e]);
      op(x, y);
#pragma unroll
      for (int j = 0; j < kOut; ++j) store(&out[j].v[e], y[j]);
    }
#pragma unroll
    for (int j = 0; j < kOut; ++j) reinterpret_cast<Pack<T, V>*>(p.out[j])[q] = out[j];
  }
  // The last n mod V elements.
  for (i64 i = packs * V + first; i < n; i += stride) {
    C x[kIn], y[kOut];
#pragma unroll
    for (int j = 0; j < kIn; ++j) x[j] = load(p.in[j] + i);
    op(x, y);
#pragma unroll
    for (int j = 0; j < kOut; ++j) store(p.out[j] + i, y[j]);
  }
}

template <class T, int kIn, int kOut, class Op>
void launch_map(cudaStream_t stream, const Op& op, const MapPointers<T, kIn, kOut>& p, i64 n) {
  if (n <= 0) return;
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  bool aligned = true;
  for (int j = 0; j < kIn; ++j)
    aligned = aligned && reinterpret_cast<std::uintptr_t>(p.in[j]) % 16 == 0;
  for (int j = 0; j < kOut; ++j)
    aligned = aligned && reinterpret_cast<std::uintptr_t>(p.out[j]) % 16 == 0;
  constexpr int kThreads = 256;
  if (aligned) {
    map_kernel<T, kIn, kOut, V, Op>
        <<<blocks_for((n + V - 1) / V, kThreads), kThreads, 0, stream>>>(op, p, n);
  } else {
    map_kernel<T, kIn, kOut, 1, Op><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(op, p, n);
  }
  CUDA_CHECK_LAUNCH();
}

// Numerically stable scalar functions in the compute type (the CPU's kernels/cpu/cpu_math.h).
__device__ __forceinline__ float exp_of(float x) {
  return expf(x);
}
__device__ __forceinline__ double exp_of(double x) {
  return exp(x);
}
__device__ __forceinline__ float log1p_of(float x) {
  return log1pf(x);
}
__device__ __forceinline__ double log1p_of(double x) {
  return log1p(x);
}

// 1/(1 + e^{−x}) without exponentiating a positive number.
template <class C>
__device__ __forceinline__ C sigmoid(C x) {
  if (x >= C(0)) return C(1) / (C(1) + exp_of(-x));
  const C e = exp_of(x);
  return e / (C(1) + e);
}

// log(1 + e^x) = max(x, 0) + log1p(e^{−|x|}).
template <class C>
__device__ __forceinline__ C softplus(C x) {
  return (x > C(0) ? x : C(0)) + log1p_of(exp_of(x > C(0) ? -x : x));
}

}  // namespace linmoe::cuda
