// The chunk kernels' common pieces for the tensor-core vector-decay LSM path
// (lsm_vector_decay_mma.cuh has the design): row views, the cumulative log2 decays, the tiles of a
// chunk block, and the intra-chunk scores: A by mma between sub-chunks and on the SIMT path inside
// them, D = scale·dO Vᵀ by mma.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/lsm_vector_decay_frag.cuh"
#include "kernels/cuda/lsm_vector_decay_tiles.cuh"
#include "kernels/cuda/mma_bf16.cuh"
#include "kernels/cuda/mma_rows.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_vmma {

using mma_rows::OutRows;
using mma_rows::Rows;

struct Problem {
  i64 B, T, H, NC;
  float scale;
  // Row 0 of chunk c of head bh in the [B,H,NC·64,Dk] cumulative decays.
  __device__ __forceinline__ i64 brow(i64 bh, i64 c) const { return (bh * NC + c) * kChunk; }
};

// ---- cumulative log2 decays ----

constexpr int kCumsumThreads = 256;

// One thread per (b, h, chunk, channel), channels fastest (coalesced).
__global__ void __launch_bounds__(kCumsumThreads)
    cumsum_kernel(Problem p, int Dk, Rows g, float* bc) {  // bc: [B,H,NC·64,Dk]
  const i64 n = p.B * p.H * p.NC * Dk;
  for (i64 idx = static_cast<i64>(blockIdx.x) * kCumsumThreads + threadIdx.x; idx < n;
       idx += static_cast<i64>(gridDim.x) * kCumsumThreads) {
    const int x = static_cast<int>(idx % Dk);
    const i64 c = (idx / Dk) % p.NC, bh = idx / (Dk * p.NC);
    const int L = chunk_len(p.T, c);
    const u16* gp = g.at(bh / p.H, c * kChunk, bh % p.H) + x;
    float* out = bc + p.brow(bh, c) * Dk + x;
    float acc = 0.0f;
    for (int j = 0; j < kChunk; ++j) {
      if (j < L) acc += bf16_to_float(gp[j * g.st]) * kLog2e;
      out[j * Dk] = acc;
    }
  }
}

// ---- scores (the diagonal blocks on the SIMT path) ----

// The warp's own 16 × 16 diagonal block of A (rows and columns r0..r0+15), from the one-step
// decays al[s][x] = 2^(b_sx − b_{s−1,x}) ≤ 1, with no ex2 per term: lane (j = lane % 16,
// half = lane / 16) runs over its half of the channels, carrying kw_x = k_jx·Π_{j<s≤i} al[s][x]
// down the rows (kw ← kw·al[i] once i > j) and summing q_i·kw for i ≥ j. The halves meet by one
// shuffle per row; half 0 writes bf16(scale·A_ij) (0 outside causal_keep) into `out`.
template <int DK>
__device__ __forceinline__ void diagonal_scores(const u16* qs, const u16* ks, int ldk,
                                                const float* al, int ldb, float scale, int r0,
                                                int L, u16* out, int lane) {
  const int j = lane % 16, half = lane / 16;
  float acc[kSub];
  LSM_VD_UNROLL
  for (int i = 0; i < kSub; ++i) acc[i] = 0.0f;
  for (int x0 = half * (DK / 2); x0 < (half + 1) * (DK / 2); x0 += 8) {
    float kw[8];
    unpack8(kw, *reinterpret_cast<const uint4*>(ks + (r0 + j) * ldk + x0));
    LSM_VD_UNROLL
    for (int i = 0; i < kSub; ++i) {
      float q[8];
      unpack8(q, *reinterpret_cast<const uint4*>(qs + (r0 + i) * ldk + x0));
      const float2* a = reinterpret_cast<const float2*>(al + (r0 + i) * ldb + x0);
      float dot = 0.0f;
      LSM_VD_UNROLL
      for (int c = 0; c < 8; c += 2) {
        const float2 ac = a[c / 2];
        kw[c] = i > j ? kw[c] * ac.x : kw[c];
        kw[c + 1] = i > j ? kw[c + 1] * ac.y : kw[c + 1];
        dot += q[c] * kw[c] + q[c + 1] * kw[c + 1];
      }
      acc[i] += i >= j ? dot : 0.0f;
    }
  }
  LSM_VD_UNROLL
  for (int i = 0; i < kSub; ++i) {
    acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], 16);
    if (half == 0) {
      const bool keep = causal_keep(r0 + i, r0 + j, L);
      out[(r0 + i) * kScoreLd + r0 + j] = frag::bf16_bits(keep ? acc[i] * scale : 0.0f);
    }
  }
}

// Sub-chunk w's 16 score rows r0 = 16w.. of A = scale Σ_x q_ix k_jx 2^(b_ix − b_jx), rounded to
// bf16 into the [64][kScoreLd] tile `out`, zero outside causal_keep, all but the diagonal block
// (diagonal_scores, run by another warp): the earlier sub-chunks by mma through the reference row.
template <int DK>
__device__ __forceinline__ void offdiagonal_scores(const u16* qs, const u16* ks, int ldk,
                                                   const float* bs, int ldb, float scale, int w,
                                                   int L, u16* out, int lane) {
  const int r0 = kSub * w;
  const float* bn = bs + row_ref(w) * ldb;
  float s[kChunk / 8][4];
  zero(s);
  // Earlier sub-chunks: (q ⊙ 2^(b − b_n))(k ⊙ 2^(b_n − b))ᵀ.
  if (w > 0) {
    for (int kk = 0; kk < DK / 16; ++kk) {
      u32 a[4];
      decayed_a(a, qs, ldk, r0, 16 * kk, lane,
                [&](int i, int x) { return decay2(bs[i * ldb + x] - bn[x]); });
      LSM_VD_UNROLL
      for (int n = 0; n < kChunk / 8 - 2; ++n) {
        if (n < 2 * w) {
          u32 b[2];
          decayed_b(b, ks, ldk, 16 * kk, 8 * n, lane,
                    [&](int j, int x) { return decay2(bn[x] - bs[j * ldb + x]); });
          mma_16816(s[n], a, b);
        }
      }
    }
  }
  LSM_VD_UNROLL
  for (int n = 0; n < kChunk / 8; ++n) {
    if (n / 2 == w) continue;  // the diagonal block, below
    LSM_VD_UNROLL
    for (int e = 0; e < 4; e += 2) {
      const int i = r0 + c_row(lane, e), j = 8 * n + c_col(lane, e);
      const float v0 = causal_keep(i, j, L) ? s[n][e] * scale : 0.0f;
      const float v1 = causal_keep(i, j + 1, L) ? s[n][e + 1] * scale : 0.0f;
      *reinterpret_cast<u32*>(out + i * kScoreLd + j) = pack_floats(v0, v1);
    }
  }
}

// The warp's 16 rows of D = scale·dO Vᵀ (causal), rounded to bf16 into `out`.
template <int DV>
__device__ __forceinline__ void plain_scores(const u16* dos, const u16* vs, int ldv, float scale,
                                             int w, int L, u16* out, int lane) {
  const int r0 = kSub * w;
  float s[kChunk / 8][4];
  zero(s);
  for (int kk = 0; kk < DV / 16; ++kk) {
    u32 a[4];
    frag::ldsm_a(a, dos, ldv, r0, 16 * kk, lane);
    LSM_VD_UNROLL
    for (int n = 0; n < kChunk / 8; n += 2) {
      if (n <= 2 * w) {
        u32 b[4];
        frag::ldsm_b2(b, vs, ldv, 16 * kk, 8 * n, lane);
        mma_16816(s[n], a, b[0], b[1]);
        mma_16816(s[n + 1], a, b[2], b[3]);
      }
    }
  }
  LSM_VD_UNROLL
  for (int n = 0; n < kChunk / 8; ++n) {
    LSM_VD_UNROLL
    for (int e = 0; e < 4; e += 2) {
      const int i = r0 + c_row(lane, e), j = 8 * n + c_col(lane, e);
      const float v0 = causal_keep(i, j, L) ? s[n][e] * scale : 0.0f;
      const float v1 = causal_keep(i, j + 1, L) ? s[n][e + 1] * scale : 0.0f;
      *reinterpret_cast<u32*>(out + i * kScoreLd + j) = pack_floats(v0, v1);
    }
  }
}

// al[u][x] = 2^(b_ux − b_{u−1,x}) (b_{−1} = 0) for the chunk's 64 rows, by the block's NT threads.
template <int DK, int NT>
__device__ __forceinline__ void one_step_decays(float* al, const float* bs, int ldb) {
  for (int idx = static_cast<int>(threadIdx.x); idx < kChunk * DK; idx += NT) {
    const int u = idx / DK, x = idx % DK;
    al[u * ldb + x] = decay2(bs[u * ldb + x] - (u > 0 ? bs[(u - 1) * ldb + x] : 0.0f));
  }
}

template <int DK, int DV>
struct ChunkTiles {
  static constexpr int kThreads = kChunkThreads;
  static constexpr int LDK = DK + 8, LDV = DV + 8, LDB = DK + 4;
  static constexpr std::size_t bf16_tile(int rows, int ld) { return sizeof(u16) * rows * ld; }
  static constexpr std::size_t b_tile = sizeof(float) * kChunk * LDB;
  static constexpr std::size_t score_tile = bf16_tile(kChunk, kScoreLd);
  static constexpr std::size_t output_smem = 2 * bf16_tile(kChunk, LDK) + bf16_tile(kChunk, LDV) +
                                             bf16_tile(DK, LDV) + 2 * b_tile + score_tile;
  static constexpr std::size_t grad_smem = 2 * bf16_tile(kChunk, LDK) + 2 * bf16_tile(kChunk, LDV) +
                                           2 * bf16_tile(DK, LDV) + 2 * b_tile + 2 * score_tile +
                                           sizeof(float) * 5 * DK;
  // Blocks per SM the grad kernel is built for: two when their shared memory fits (Dk = Dv = 64).
  static constexpr int grad_blocks = 2 * (grad_smem + 1024) <= 228 * 1024 ? 2 : 1;
};

}  // namespace lsm_vmma
}  // namespace cuda
}  // namespace linmoe
