// Small helpers shared by the CPU LSM chunk kernels (scalar decay, vector decay, delta rule).
#pragma once
#include <cmath>
#include <cstdint>

#include "core/tensor.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace linmoe::cpu {

using i64 = std::int64_t;

// Decay factors exp(x) with x below this are flushed to zero, well before the subnormal range
// (subnormal arithmetic is slow, and such a factor is far below the rounding of what it scales).
template <class T>
constexpr double kMinLogDecay = -600.0;
template <>
constexpr double kMinLogDecay<float> = -60.0;

// exp(x) for x ≤ 0 (a decay over a span of tokens), flushed to zero below kMinLogDecay.
template <class T>
inline T decay_factor(double x) {
  return x < kMinLogDecay<T> ? T(0) : static_cast<T>(std::exp(x));
}

template <class T>
inline T dot(const T* a, const T* b, i64 n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (i64 i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <class T>
inline void copy(const T* x, T* y, i64 n) {
#pragma omp simd
  for (i64 i = 0; i < n; ++i) y[i] = x[i];
}

// y[r, :] = 0 for r < rows (row stride ld).
template <class T>
inline void zero_rows(T* y, i64 rows, i64 cols, i64 ld) {
  for (i64 r = 0; r < rows; ++r) {
#pragma omp simd
    for (i64 c = 0; c < cols; ++c) y[r * ld + c] = T(0);
  }
}

// A [B, T, H, D] tensor whose last dimension is contiguous (rows may be strided: q, k and v
// can be views of a fused projection), or a [B, T, H] tensor (D = 1).
template <class T>
struct Rows {
  T* data = nullptr;
  i64 sb = 0, st = 0, sh = 0;
  Rows() = default;
  explicit Rows(const Tensor& x)
      : data(static_cast<T*>(x.data)), sb(x.stride(0)), st(x.stride(1)), sh(x.stride(2)) {}
  T* at(i64 b, i64 t, i64 h) const { return data + b * sb + t * st + h * sh; }
};

// Optional tensors of the LSM ops: "not given" is Tensor{}.
inline bool given(const Tensor& t) {
  return t.defined();
}

// A [B, T, H(, D)] input or gradient: on the CPU, the op's dtype, the given shape, and a
// contiguous last dimension (rows may be strided).
inline void check_rows(const Tensor& t, const Shape& shape, DType dtype, const char* op,
                       const char* arg) {
  check_cpu(t, op, arg);
  check_dtype(t, dtype, op, arg);
  check_shape(t, shape, op, arg);
  LINMOE_CHECK(t.ndim() < 4 || t.shape[3] <= 1 || t.strides[3] == 1, op, ": ", arg, " ", t.str(),
               " needs a contiguous last dimension");
}

// A state [B, H, Dk, Dv]: contiguous, in the statistics dtype. Dims: the family's sizes.
template <class Dims>
void check_state(const Tensor& t, const Dims& d, DType dtype, const char* op, const char* arg) {
  check_cpu(t, op, arg);
  check_dtype(t, stat_dtype(dtype), op, arg);
  check_shape(t, Shape{d.B, d.H, d.Dk, d.Dv}, op, arg);
  check_contiguous(t, op, arg);
}

// Threads for a parallel loop over (batch, head) pairs, sized by the work.
template <class Dims>
int threads_for_heads(const Dims& d, int threads) {
  return threads_for(d.B * d.T * d.H * (d.Dk + d.Dv), threads);
}

}  // namespace linmoe::cpu
