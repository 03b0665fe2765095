// Row access of the tensor-core LSM kernels (scalar decay, vector decay, delta rule): a
// [B, T, heads, D] (or [B, T, heads]) bf16 tensor whose rows may be strided (last dimension
// contiguous), and the host check that its rows suit 16-byte tile loads. Host-compilable, so the
// kernels also build under tests/unit/cuda_block_emulation.h.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace linmoe {
namespace cuda {
namespace mma_rows {

struct Rows {
  const std::uint16_t* p = nullptr;
  std::int64_t sb = 0, st = 0, sh = 0;
  __device__ __forceinline__ const std::uint16_t* at(std::int64_t b, std::int64_t t,
                                                     std::int64_t h) const {
    return p + b * sb + t * st + h * sh;
  }
};
struct OutRows {
  std::uint16_t* p = nullptr;
  std::int64_t sb = 0, st = 0, sh = 0;
  __device__ __forceinline__ std::uint16_t* at(std::int64_t b, std::int64_t t,
                                               std::int64_t h) const {
    return p + b * sb + t * st + h * sh;
  }
};

// Rows of 16-byte multiples starting on 16-byte boundaries (the tiles load 8 bf16 at a time);
// an undefined tensor passes.
inline bool aligned_rows(const Tensor& t) {
  if (!t.defined() || t.data == nullptr) return true;
  if (reinterpret_cast<std::uintptr_t>(t.data) % 16 != 0) return false;
  for (int dim = 0; dim + 1 < t.ndim(); ++dim) {
    if (t.stride(dim) % 8 != 0) return false;
  }
  return true;
}

}  // namespace mma_rows
}  // namespace cuda
}  // namespace linmoe
