// Private helpers of the CPU backend's op files: argument checks and the closed dtype switch.
#pragma once
#include <cstdint>

#include "core/check.h"
#include "core/tensor.h"

namespace linmoe::cpu {

// Calls body(T{}) with T = float or double for `dtype`; any other dtype fails loudly.
template <class Body>
void dispatch_float(DType dtype, const char* op, Body&& body) {
  switch (dtype) {
    case DType::f32:
      body(float{});
      return;
    case DType::f64:
      body(double{});
      return;
    case DType::bf16:
    case DType::i32:
    case DType::i64:
      break;
  }
  LINMOE_CHECK(false, op, ": dtype ", dtype_name(dtype),
               " is not supported by the CPU backend (f32 and f64 only)");
}

inline void check_cpu(const Tensor& t, const char* op, const char* arg) {
  LINMOE_CHECK(t.device == Device::cpu, op, ": ", arg, " ", t.str(),
               " is not on the CPU (the CPU backend reads host memory only)");
}

// A host, contiguous tensor with the given dtype.
inline void check_host_contiguous(const Tensor& t, DType dtype, const char* op, const char* arg) {
  check_cpu(t, op, arg);
  check_dtype(t, dtype, op, arg);
  check_contiguous(t, op, arg);
}

// A host, contiguous tensor with `ref`'s shape and dtype.
inline void check_like(const Tensor& t, const Tensor& ref, const char* op, const char* arg) {
  check_host_contiguous(t, ref.dtype, op, arg);
  check_shape(t, ref.shape, op, arg);
}

// Rows below this many elements of work run on one thread: a parallel region costs microseconds.
constexpr std::int64_t kParallelGrain = 1 << 15;

inline int threads_for(std::int64_t work, int threads) {
  return work >= kParallelGrain ? threads : 1;
}

}  // namespace linmoe::cpu
