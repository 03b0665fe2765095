// The tiling of the tensor-core vector-decay LSM path (lsm_vector_decay_mma.cuh): chunk and
// sub-chunk bounds, the reference rows of the factorised decays, the decay factor, and which
// shapes take the path. Pure arithmetic, __host__ __device__ and g++-compilable, so that the host
// test (tests/unit/test_lsm_vector_tiled_reference.cpp) runs exactly these functions.
//
// Cumulative log decays are kept in log2 units (b = Σ g·log2 e within a chunk, fp32) so that every
// factor is one ex2. A factor is only ever formed as 2^(b_late − b_early) with the later position
// first, and decay2 clamps its argument at 0 besides: no positive exponent is ever formed.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mma_bf16.cuh"

// `#pragma unroll` for nvcc only: the host test compiles these kernels with g++ (block emulation),
// which would warn about an unknown pragma.
#if defined(__CUDACC__) && !defined(LINMOE_WARP_EMULATION)
#define LSM_VD_UNROLL _Pragma("unroll")
#else
#define LSM_VD_UNROLL
#endif

namespace linmoe {
namespace cuda {
namespace lsm_vmma {

using i64 = std::int64_t;

constexpr int kChunk = 64;             // tokens per chunk: 4 sub-chunks × 16 rows
constexpr int kSub = 16;               // sub-chunk: one warp's rows, one reference point
constexpr int kWarps = kChunk / kSub;  // sub-chunks per chunk
// Threads of the chunk kernels: two warps per sub-chunk, each with half of the output columns.
constexpr int kChunkThreads = 2 * 32 * kWarps;
constexpr int kVTile = 64;            // state columns (of Dv) per block of the state passes
constexpr int kXTile = 64;            // state rows (of Dk) per block of the state passes
constexpr int kScoreLd = kChunk + 8;  // pitch of the [64][64] bf16 score tiles
constexpr float kLog2e = 1.4426950408889634f;

// Head dims this path takes (the rest stays on the SIMT kernels of lsm_decay_chunk.cuh).
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

// 2^x for a log2-decay span x ≤ 0 (clamped at 0 for safety). The device uses ex2.approx.ftz
// (relative error ~2^-22; results below 2^-126 flush to 0).
LINMOE_HD float decay2(float x) {
  x = x < 0.0f ? x : 0.0f;
#if defined(__CUDA_ARCH__) && !defined(LINMOE_WARP_EMULATION)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

// Score (i, j) of a chunk of L tokens is kept when causal and inside the chunk.
LINMOE_HD bool causal_keep(int i, int j, int L) {
  return j <= i && i < L;
}

// Warp w owns the rows of sub-chunk w: [16w, 16w + 16). Its rows see the earlier sub-chunks
// through the reference row 16w (row_ref): q_i·2^(b_i − b_n) against k_j·2^(b_n − b_j), j < n ≤ i.
// Its key rows are seen by the later sub-chunks through the reference row col_ref(w) = 16(w + 1)
// (63 for the last warp, which has no later sub-chunk): k_j·2^(b_r − b_j) against
// q_i·2^(b_i − b_r), j < r ≤ i. Rows past a partial chunk's end carry its last b (g = 0 there), so
// every reference row is defined.
LINMOE_HD int row_ref(int w) {
  return kSub * w;
}
LINMOE_HD int col_ref(int w) {
  return w + 1 < kWarps ? kSub * (w + 1) : kChunk - 1;
}

}  // namespace lsm_vmma
}  // namespace cuda
}  // namespace linmoe
