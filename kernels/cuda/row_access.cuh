// Row walks for the row kernels (norms, cross-entropy): a block strides over a row either one
// element per thread or, when the row length and every pointer allow it, one 16-byte vector per
// thread (4 f32, 8 bf16 or 2 f64 values per load/store), converted to the compute type.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/cuda/cuda_context.cuh"

namespace linmoe::cuda::rows {

// Elements of T in one 16-byte vector.
template <class T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

// v[0..W) = p[0..W) in the compute type; W is 1 (any p) or kVec<T> (p 16-byte aligned).
template <int W, class T>
__device__ __forceinline__ void load_n(const T* p, compute_t<T> (&v)[W]) {
  if constexpr (W == 1) {
    v[0] = load(p);
  } else {
    static_assert(W == kVec<T>, "a vector load reads 16 bytes");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] = load(e + k);
  }
}

// p[0..W) = v[0..W) converted to T; same rules as load_n.
template <int W, class T>
__device__ __forceinline__ void store_n(T* p, const compute_t<T> (&v)[W]) {
  if constexpr (W == 1) {
    store(p, v[0]);
  } else {
    static_assert(W == kVec<T>, "a vector store writes 16 bytes");
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int k = 0; k < W; ++k) store(e + k, v[k]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
}

// Calls f(j, std::integral_constant<int, W>{}) for the pieces [j, j + W) of a row of length D
// that this thread owns (W = kVec<T> when kVector, else 1).
template <class T, int kThreads, bool kVector, class F>
__device__ __forceinline__ void for_each_piece(i64 D, F&& f) {
  if constexpr (kVector) {
    constexpr int W = kVec<T>;
    for (i64 q = threadIdx.x; q < D / W; q += kThreads) f(q * W, std::integral_constant<int, W>{});
  } else {
    for (i64 j = threadIdx.x; j < D; j += kThreads) f(j, std::integral_constant<int, 1>{});
  }
}

// Whether rows of length D over these base pointers can use 16-byte vectors: every row start is
// then 16-byte aligned too.
template <class T>
bool vectorizable(i64 D, std::initializer_list<const void*> ptrs) {
  if (D % kVec<T> != 0) return false;
  for (const void* p : ptrs) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

// Calls f(std::bool_constant<vector>{}).
template <class F>
void with_vector(bool vector, F&& f) {
  if (vector) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace linmoe::cuda::rows
