// The tiling and the warp-level pieces of the tensor-core delta-rule LSM kernels
// (lsm_delta_rule_mma.cuh): chunk bounds, which shapes take the path, the decay factor, tile
// staging (cp.async), the chunk's cumulative log decays, and mma products over shared-memory
// tiles. Written against kernels/cuda/mma_bf16.cuh only, so that the kernels also run on the
// emulated block of tests/unit/cuda_block_emulation.h (LINMOE_WARP_EMULATION); the index
// functions are __host__ __device__ and the host reference of the tests uses them too.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mma_bf16.cuh"
#include "kernels/cuda/mma_rows.cuh"

namespace linmoe {
namespace cuda {
namespace delta_mma {

using frag::bf16_to_float;
using frag::c_col;
using frag::c_row;
using frag::mma_16816;
using frag::pack_floats;
using i64 = std::int64_t;
using u16 = std::uint16_t;
using u32 = std::uint32_t;

constexpr int kChunk = 64;             // tokens per chunk: 4 warps × 16 rows
constexpr int kWarps = 4;              // warps of every kernel of the path
constexpr int kThreads = 32 * kWarps;  // threads of every kernel of the path
constexpr int kVTile = 64;             // state columns (of Dv) per block of the state pass
constexpr int kLdC = kChunk + 8;       // pitch of [·][64] bf16 tiles (16-byte padded rows)
constexpr int kLdF = kChunk + 1;       // pitch of the [64][64] fp32 tiles of the solve

// Head dims this path takes (the rest stays on the SIMT kernels of lsm_delta_rule.cu).
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
// (kernels/cpu/lsm_chunk_common.h).
LINMOE_HD float decay_factor(float x) {
  return x < -60.0f ? 0.0f : expf(x);
}

using mma_rows::OutRows;
using mma_rows::Rows;

// ---- block-level staging
// -------------------------------------------------------------------------

// ROWS rows of COLS bf16 (row r at src + r·step, 16-byte aligned) into a tile of pitch ld, rows
// ≥ n zero-filled; asynchronous: stage_wait() then a barrier publishes the tiles.
template <int ROWS, int COLS>
__device__ __forceinline__ void stage(u16* dst, int ld, const u16* src, i64 step, int n) {
  constexpr int V = COLS / 8;
  static_assert(ROWS * V % kThreads == 0, "whole pieces per thread");
#pragma unroll
  for (int i = 0; i < ROWS * V / kThreads; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + i * kThreads, r = idx / V, c = idx % V;
    const bool ok = r < n;
    frag::cp_async16(dst + r * ld + 8 * c, ok ? src + r * step + 8 * c : src, ok);
  }
}
__device__ __forceinline__ void stage_wait() {
  frag::cp_async_wait_all();
}

// Rows r of a [64][COLS] bf16 tile (pitch ld) times weight(r), rounded back to bf16, in place.
template <int COLS, class W>
__device__ __forceinline__ void weight_rows(u16* tile, int ld, W weight) {
  for (int idx = static_cast<int>(threadIdx.x); idx < kChunk * COLS / 2; idx += kThreads) {
    const int r = idx / (COLS / 2), c = 2 * (idx % (COLS / 2));
    const float w = weight(r);
    u32* pair = reinterpret_cast<u32*>(tile + r * ld + c);
    *pair = pack_floats(bf16_to_float(frag::lo_half(*pair)) * w,
                        bf16_to_float(frag::hi_half(*pair)) * w);
  }
}

// The same rows times weight(r) as a hi + lo pair: hi = r(x) in place, lo = r(x − hi) into lo.
template <int COLS, class W>
__device__ __forceinline__ void split_rows(u16* tile, u16* lo, int ld, W weight) {
  for (int idx = static_cast<int>(threadIdx.x); idx < kChunk * COLS / 2; idx += kThreads) {
    const int r = idx / (COLS / 2), c = 2 * (idx % (COLS / 2));
    const float w = weight(r);
    u32* pair = reinterpret_cast<u32*>(tile + r * ld + c);
    const float x0 = bf16_to_float(frag::lo_half(*pair)) * w;
    const float x1 = bf16_to_float(frag::hi_half(*pair)) * w;
    *pair = pack_floats(x0, x1);
    *reinterpret_cast<u32*>(lo + r * ld + c) =
        pack_floats(x0 - frag::round_bf16(x0), x1 - frag::round_bf16(x1));
  }
}

// A lane's two log decays g_{2·lane}, g_{2·lane+1} of the chunk starting at t0 (0 past its L
// tokens, and everywhere when not gated: deltanet).
__device__ __forceinline__ float2 chunk_decays(const Rows& g, bool gated, i64 b, i64 t0, i64 h,
                                               int L, int lane) {
  const int j = 2 * lane;
  return make_float2(gated && j < L ? bf16_to_float(*g.at(b, t0 + j, h)) : 0.0f,
                     gated && j + 1 < L ? bf16_to_float(*g.at(b, t0 + j + 1, h)) : 0.0f);
}
// Run by one warp: bs[j] = Σ_{s≤j} g_s from the lanes' chunk_decays x. fp32, relative to the
// chunk start, so b_i ≤ 0 and every exponent formed from it (b_i, b_i − b_j for j ≤ i,
// b_{L−1} − b_j) is ≤ 0.
__device__ __forceinline__ void cumsum_pairs(float* bs, float2 x, int lane) {
  float incl = x.x + x.y;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const float y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  float excl = __shfl_up_sync(0xffffffffu, incl, 1);
  if (lane == 0) excl = 0.0f;
  bs[2 * lane] = excl + x.x;
  bs[2 * lane + 1] = excl + x.x + x.y;
}
__device__ __forceinline__ void chunk_cumsum(float* bs, const Rows& g, bool gated, i64 b, i64 t0,
                                             i64 h, int L, int lane) {
  cumsum_pairs(bs, chunk_decays(g, gated, b, t0, h, L, lane), lane);
}

// ---- warp-level products
// -------------------------------------------------------------------------

template <int NB>
__device__ __forceinline__ void zero(float (&c)[NB][4]) {
#pragma unroll
  for (int n = 0; n < NB; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) c[n][e] = 0.0f;
  }
}
// c += A·B for a warp's 16 rows: A rows r0.. of tile `as` ([m][k], or [k][m] when kAT), B columns
// 0..8·n_end of tile `bs` ([n][k], or [k][n] when kBT; n_end even), k blocks [k_begin, k_end);
// every fragment through ldmatrix.
template <bool kAT, bool kBT, int NB>
__device__ __forceinline__ void warp_product(float (&c)[NB][4], const u16* as, int lda, int r0,
                                             const u16* bs, int ldb, int k_begin, int k_end,
                                             int lane, int n_end = NB) {
  static_assert(NB % 2 == 0, "B blocks go in pairs");
  for (int kk = k_begin; kk < k_end; ++kk) {
    u32 a[4];
    if constexpr (kAT) {
      frag::ldsm_a_t(a, as, lda, r0, 16 * kk, lane);
    } else {
      frag::ldsm_a(a, as, lda, r0, 16 * kk, lane);
    }
#pragma unroll
    for (int n = 0; n < NB; n += 2) {
      if (n >= n_end) break;
      u32 b[4];
      if constexpr (kBT) {
        frag::ldsm_b2_t(b, bs, ldb, 16 * kk, 8 * n, lane);
      } else {
        frag::ldsm_b2(b, bs, ldb, 16 * kk, 8 * n, lane);
      }
      mma_16816(c[n], a, b[0], b[1]);
      mma_16816(c[n + 1], a, b[2], b[3]);
    }
  }
}
// A warp's 16 × 8·NB accumulators as bf16 rows (row r0 + i at row0 + (r0 + i)·step; rows ≥ L
// skipped).
template <int NB>
__device__ __forceinline__ void store_rows(const float (&c)[NB][4], u16* row0, i64 step, int r0,
                                           int L, int lane) {
#pragma unroll
  for (int n = 0; n < NB; ++n) {
#pragma unroll
    for (int e = 0; e < 4; e += 2) {
      const int r = r0 + c_row(lane, e);
      if (r < L) {
        *reinterpret_cast<u32*>(row0 + r * step + 8 * n + c_col(lane, e)) =
            pack_floats(c[n][e], c[n][e + 1]);
      }
    }
  }
}

// The same in fp32 (the backward's scratch).
template <int NB>
__device__ __forceinline__ void store_rows_f32(const float (&c)[NB][4], float* row0, i64 step,
                                               int r0, int L, int lane) {
#pragma unroll
  for (int n = 0; n < NB; ++n) {
#pragma unroll
    for (int e = 0; e < 4; e += 2) {
      const int r = r0 + c_row(lane, e);
      if (r < L) {
        *reinterpret_cast<float2*>(row0 + r * step + 8 * n + c_col(lane, e)) =
            make_float2(c[n][e], c[n][e + 1]);
      }
    }
  }
}

}  // namespace delta_mma
}  // namespace cuda
}  // namespace linmoe
