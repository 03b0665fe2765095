// The tiling of the tensor-core scalar-decay LSM path (lsm_scalar_decay_mma.cuh): chunk bounds,
// the causal block ranges each warp visits, the decay factor, and which shapes take the path.
// Pure index arithmetic, __host__ __device__ and g++-compilable, so that the host tests
// (tests/unit/test_lsm_scalar_tiled_reference.cpp) run exactly these functions.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mma_bf16.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_mma {

using i64 = std::int64_t;

constexpr int kChunk = 64;  // tokens per chunk: 4 warps × 16 rows
constexpr int kWarps = 4;   // warps of the chunk-parallel kernels
constexpr int kSTile = 64;  // state rows and columns per block of the state passes

// Head dims and chunk sizes this path takes; the rest stays on the SIMT kernels.
LINMOE_HD bool head_dim_supported(i64 d) {
  return d == 64 || d == 128;
}

LINMOE_HD i64 chunk_count(i64 T) {
  return (T + kChunk - 1) / kChunk;
}
// Tokens in chunk c (the last one may be partial).
LINMOE_HD int chunk_len(i64 T, i64 c) {
  const i64 rest = T - c * kChunk;
  return static_cast<int>(rest < kChunk ? rest : kChunk);
}

// exp(x) for a log-decay span x ≤ 0, flushed to zero below −60 as the CPU backend does
// (kernels/cpu/lsm_chunk_common.h): no subnormals, far below the rounding of what it scales.
LINMOE_HD float decay_factor(float x) {
  return x < -60.0f ? 0.0f : expf(x);
}

// Score (i, j) of a chunk of L tokens is kept when causal and inside the chunk.
LINMOE_HD bool causal_keep(int i, int j, int L) {
  return j <= i && i < L;
}

// Warp w owns rows 16w..16w+15 of a chunk. Its causal scores need the 8-column blocks
// [0, score_col_blocks(w)) (columns up to its last row); a product over j ≤ i (dq, o) the
// 16-column k blocks [0, lower_k_blocks(w)); a product over i ≥ j (dk, dv) the blocks
// [upper_k_begin(w), kChunk / 16).
LINMOE_HD int score_col_blocks(int w) {
  return 2 * w + 2;
}
LINMOE_HD int lower_k_blocks(int w) {
  return w + 1;
}
LINMOE_HD int upper_k_begin(int w) {
  return w;
}

}  // namespace lsm_mma
}  // namespace cuda
}  // namespace linmoe
