// The bf16 tensor-core path of the scalar-decay LSM core (MODEL.md section 3; contract in
// kernels/ops.h; included by lsm_scalar_decay.cu only): mma.sync.m16n8k16 with bf16 operands and
// fp32 accumulation, chunks of 64 tokens, head dims Dk, Dv ∈ {64, 128}. The mathematics is
// lsm_decay_chunk.cuh's (read its header for the formulas); per chunk of L ≤ 64 tokens with
// b_i = Σ_{s≤i} g_s inside the chunk (fp32), e_i = exp(b_i), f_j = exp(b_{L−1} − b_j),
// M_ij = exp(b_i − b_j): only differences ≤ 0 are exponentiated, safe for any T.
//
// Forward, two launches:
//   chunk_state_kernel   grid (B·H, Dv/64, Dk/64), 4 warps, one 64 × 64 state tile per block;
//                        sequential over the chunks: writes the
//                        state entering every chunk P_c (bf16, [B,H,NC,Dk,Dv]) and the final state
//                        (fp32); S ← e_{L−1} S + (K ⊙ f)ᵀ V, fp32 in the accumulators.
//   chunk_output_kernel  grid B·H·NC, 4 warps (16 query rows each):
//                        O = scale·diag(e)·Q P_c + (scale·Q Kᵀ ⊙ M) V.
// Backward, three launches (chunk states recomputed, as bf16 scratch):
//   chunk_state_kernel   the forward's P_c again;
//   chunk_state_kernel   reverse over the chunks: G_c, the gradient of the state leaving chunk c
//                        (bf16), d_initial_state (fp32), G ← e_{L−1} G + scale (Q ⊙ e)ᵀ dO, and
//                        the decay gradient's through term e_{L−1}·Σ G_c ⊙ P_c (per state tile);
//   chunk_grad_kernel    grid B·H·NC, 4 warps: with D = scale·(dO Vᵀ) ⊙ M, A = scale·(Q Kᵀ) ⊙ M
//                        (each warp forms D for its rows i, Dᵀ and Aᵀ for its rows j, in
//                        registers; P_c and then G_c share one tile, so two blocks fit an SM),
//                        dq = D K + scale·diag(e)·dO P_cᵀ, dk = Dᵀ Q + diag(f)·V G_cᵀ,
//                        dv = Aᵀ dO + diag(f)·K G_c, and
//                        dg_u = through + Σ_v q_v·dq_v^inter − Σ_{v<u} (q_v·dq_v − k_v·dk_v)
//                        (lsm_decay_chunk.cuh's identity with the diagonal terms cancelled).
// Values are rounded to bf16 where they become mma operands: K ⊙ f, scale·Q ⊙ e, the scores, the
// chunk states; everything else is fp32. Tiles live in shared memory with rows padded by 8 values
// (16 bytes: ldmatrix without bank conflicts); every fragment comes through ldmatrix (.trans for
// the transposed operands), the chunk kernels fill their tiles with cp.async, and the state
// passes fetch the next chunk into registers while the current one is multiplied. The score
// products of a warp stop at its diagonal block. tests/unit/test_lsm_scalar_tiled_reference.cpp
// runs the same algorithm with the same rounding points on the host. With Hk < H, dq and dk go
// through fp32 per-head scratch and lsm_decay::group_sum_kernel.
// The launchers are in lsm_scalar_decay_mma_launch.cuh; this file holds the kernels alone and
// also compiles on the host under LINMOE_WARP_EMULATION (tests/unit/test_lsm_scalar_tiled_reference
// runs them there).
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/lsm_scalar_decay_tiles.cuh"
#include "kernels/cuda/mma_bf16.cuh"
#include "kernels/cuda/mma_rows.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_mma {

using frag::acc_to_a;
using frag::bf16_to_float;
using frag::c_col;
using frag::c_row;
using frag::ldsm_a;
using frag::ldsm_a_t;
using frag::ldsm_b2;
using frag::ldsm_b2_t;
using frag::mma_16816;
using frag::pack_floats;
using u16 = std::uint16_t;
using u32 = std::uint32_t;

using mma_rows::OutRows;
using mma_rows::Rows;

struct Problem {
  i64 B, T, H, Hk, NC;
  float scale;
  __device__ __forceinline__ i64 qk_head(i64 h) const { return h * Hk / H; }
};

// ---- block-level helpers ----------------------------------------------------------------------

// ROWS rows of D bf16 (row r at src + r·step, 16-byte aligned) into a [ROWS][D + 8] tile; rows
// ≥ n are zero. Split in two so that the loads of the next tile can fly during this one's math:
// fetch() into registers (each thread's 16-byte pieces idx = threadIdx.x + i·NT), put() into
// shared memory, there times weight(r) (rounded back to bf16) unless the weight is NoWeight.
struct NoWeight {
  __device__ __forceinline__ float operator()(int) const { return 1.0f; }
};
template <int ROWS, int D, int NT>
struct TileLoad {
  static constexpr int V = D / 8, LD = D + 8, N = ROWS * V / NT;
  static_assert(ROWS * V % NT == 0, "whole pieces per thread");
  uint4 piece[N];
  __device__ __forceinline__ void fetch(const u16* src, i64 step, int n) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int idx = threadIdx.x + i * NT, r = idx / V, c = idx % V;
      piece[i] = r < n ? __ldg(reinterpret_cast<const uint4*>(src + r * step + 8 * c))
                       : make_uint4(0, 0, 0, 0);
    }
  }
  template <class W>
  __device__ __forceinline__ void put(u16* dst, W weight) const {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int idx = threadIdx.x + i * NT, r = idx / V, c = idx % V;
      uint4 val = piece[i];
      if constexpr (!std::is_same<W, NoWeight>::value) {
        const float w = weight(r);
        u32* h = reinterpret_cast<u32*>(&val);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          h[e] = pack_floats(bf16_to_float(frag::lo_half(h[e])) * w,
                             bf16_to_float(frag::hi_half(h[e])) * w);
        }
      }
      *reinterpret_cast<uint4*>(dst + r * LD + 8 * c) = val;
    }
  }
};
// The same without registers, asynchronously (cp.async, zero-filling rows ≥ n): all tiles of a
// block are issued at once, then stage_wait() before the barrier that publishes them.
template <int ROWS, int D, int NT>
__device__ __forceinline__ void stage(u16* dst, const u16* src, i64 step, int n) {
  constexpr int V = D / 8, LD = D + 8;
#pragma unroll
  for (int i = 0; i < ROWS * V / NT; ++i) {
    const int idx = threadIdx.x + i * NT, r = idx / V, c = idx % V;
    const bool ok = r < n;
    frag::cp_async16(dst + r * LD + 8 * c, ok ? src + r * step + 8 * c : src, ok);
  }
}
__device__ __forceinline__ void stage_wait() {
  frag::cp_async_wait_all();
}

// Run by one warp: bs[j] = x_j + Σ_{s<j} x_s for the 64 values x_{2·lane} = x0, x_{2·lane+1} = x1.
__device__ __forceinline__ void cumsum_pairs(float* bs, float x0, float x1, int lane) {
  float incl = x0 + x1;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const float y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  float excl = __shfl_up_sync(0xffffffffu, incl, 1);
  if (lane == 0) excl = 0.0f;
  bs[2 * lane] = excl + x0;
  bs[2 * lane + 1] = excl + x0 + x1;
}
// A lane's two log decays g_{2·lane}, g_{2·lane+1} of a chunk (0 past its L tokens); g points at
// the chunk's first, `step` elements apart.
__device__ __forceinline__ float2 chunk_decays(const u16* g, i64 step, int L, int lane) {
  const int j = 2 * lane;
  return make_float2(j < L ? bf16_to_float(g[j * step]) : 0.0f,
                     j + 1 < L ? bf16_to_float(g[(j + 1) * step]) : 0.0f);
}
// Run by one warp: bs[j] = Σ_{s≤j} g_s of the chunk (positions ≥ L add 0).
__device__ __forceinline__ void chunk_cumsum(float* bs, const u16* g, i64 step, int L, int lane) {
  const float2 x = chunk_decays(g, step, L, lane);
  cumsum_pairs(bs, x.x, x.y, lane);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}
// Sum over the 4 lanes of a quad (one accumulator row's lanes).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

template <int NB>
__device__ __forceinline__ void zero(float (&c)[NB][4]) {
#pragma unroll
  for (int n = 0; n < NB; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) c[n][e] = 0.0f;
  }
}
// Rows gid and gid + 8 of a warp's accumulators times s0 and s1.
template <int NB>
__device__ __forceinline__ void scale_rows(float (&c)[NB][4], float s0, float s1) {
#pragma unroll
  for (int n = 0; n < NB; ++n) c[n][0] *= s0, c[n][1] *= s0, c[n][2] *= s1, c[n][3] *= s1;
}
// c += A·B for a warp's 16 rows: A rows r0.. of tile `as` ([m][k], or [k][m] when kAT),
// B columns 8·n_begin..8·n_end of tile `bs` ([n][k], or [k][n] when kBT; even block bounds),
// k blocks [k_begin, k_end); all fragments through ldmatrix.
template <bool kAT, bool kBT, int NB>
__device__ __forceinline__ void warp_product(float (&c)[NB][4], const u16* as, int lda, int r0,
                                             const u16* bs, int ldb, int k_begin, int k_end,
                                             int lane, int n_end = NB, int n_begin = 0) {
  static_assert(NB % 2 == 0, "B blocks go in pairs");
  for (int kk = k_begin; kk < k_end; ++kk) {
    u32 a[4];
    if constexpr (kAT) {
      ldsm_a_t(a, as, lda, r0, 16 * kk, lane);
    } else {
      ldsm_a(a, as, lda, r0, 16 * kk, lane);
    }
#pragma unroll
    for (int n = 0; n < NB; n += 2) {
      if (n < n_begin) continue;
      if (n >= n_end) break;
      u32 b[4];
      if constexpr (kBT) {
        ldsm_b2_t(b, bs, ldb, 16 * kk, 8 * n, lane);
      } else {
        ldsm_b2(b, bs, ldb, 16 * kk, 8 * n, lane);
      }
      mma_16816(c[n], a, b[0], b[1]);
      mma_16816(c[n + 1], a, b[2], b[3]);
    }
  }
}
// Σ_x t[row][x]·c[row][x] for the warp's rows gid (s0) and gid + 8 (s1), x over 8·NB columns;
// t is a bf16 tile with pitch ld, rows r0...
template <int NB>
__device__ __forceinline__ void row_dots(const float (&c)[NB][4], const u16* t, int ld, int r0,
                                         int lane, float& s0, float& s1) {
  s0 = 0.0f, s1 = 0.0f;
#pragma unroll
  for (int n = 0; n < NB; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float v =
          bf16_to_float(t[(r0 + c_row(lane, e)) * ld + 8 * n + c_col(lane, e)]) * c[n][e];
      if (e < 2) {
        s0 += v;
      } else {
        s1 += v;
      }
    }
  }
  s0 = quad_sum(s0), s1 = quad_sum(s1);
}
// A warp's 16 × 8·NB accumulators as bf16 rows of a [B,T,heads,D] tensor (rows ≥ L skipped).
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
// The same in fp32 (the per-head scratch of grouped q/k heads).
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
// A warp's 16 × 64 scores (rows r0.., columns 0..63): c ← scale·c·M_ij where (i, j) is causal
// inside the chunk, else 0, with (i, j) = (row, column), or (column, row) when kT (a transposed
// score block: rows are keys j, columns queries i).
template <bool kT>
__device__ __forceinline__ void decay_mask(float (&c)[kChunk / 8][4], const float* bs, float scale,
                                           int r0, int L, int lane) {
#pragma unroll
  for (int n = 0; n < kChunk / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = r0 + c_row(lane, e), col = 8 * n + c_col(lane, e);
      const int i = kT ? col : row, j = kT ? row : col;
      c[n][e] = causal_keep(i, j, L) ? c[n][e] * scale * decay_factor(bs[i] - bs[j]) : 0.0f;
    }
  }
}
// c += S·B with S a warp's 16 × 64 scores in registers (rounded to bf16 as the A operand) and B
// the [k][n] tile `bs` (64 rows), over the 16-column blocks [k_begin, k_end) of S.
template <int NB>
__device__ __forceinline__ void scores_product(float (&c)[NB][4], const float (&sc)[kChunk / 8][4],
                                               const u16* bs, int ldb, int k_begin, int k_end,
                                               int lane) {
#pragma unroll
  for (int kk = 0; kk < kChunk / 16; ++kk) {
    if (kk < k_begin || kk >= k_end) continue;
    u32 a[4];
    acc_to_a(a, sc[2 * kk], sc[2 * kk + 1]);
#pragma unroll
    for (int n = 0; n < NB; n += 2) {
      u32 b[4];
      ldsm_b2_t(b, bs, ldb, 16 * kk, 8 * n, lane);
      mma_16816(c[n], a, b[0], b[1]);
      mma_16816(c[n + 1], a, b[2], b[3]);
    }
  }
}

// ---- state passes ------------------------------------------------------------------------------

struct StateArgs {
  Problem p;
  i64 Dk, Dv;
  Rows x;              // [B,T,Hk,Dk]: k (forward) or q (reverse)
  Rows y;              // [B,T,H,Dv]: v or do
  Rows g;              // [B,T,H]
  bool reverse;        // false: S ← e S + (K ⊙ f)ᵀ V; true: G ← e G + scale (Q ⊙ e)ᵀ dO
  const float* init;   // [B,H,Dk,Dv] or null
  float* fin;          // [B,H,Dk,Dv] or null
  u16* states;         // [B,H,NC,Dk,Dv]: the state before each chunk's update (bf16)
  const u16* partner;  // reverse only, or null: P [B,H,NC,Dk,Dv] for the through term
  float* through;      // [B,H,NC,parts]: e_{L−1} Σ G_c ⊙ P_c over each block's 64 × 64 tile
};

// A block owns a 64 × 64 tile of the state (rows x0.., columns y0..): 4 warps of 16 rows.
struct StateTiles {
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int LDX = kSTile + 8, LDY = kSTile + 8;
  static constexpr std::size_t smem =
      sizeof(u16) * kChunk * (LDX + LDY) + sizeof(float) * (kChunk + kWarps);
};

// grid (B·H, Dv/64, Dk/64): block (bh, vt, kt) runs state rows 64·kt.., columns 64·vt...
__global__ void __launch_bounds__(StateTiles::kThreads) chunk_state_kernel(StateArgs a) {
  using Tiles = StateTiles;
  constexpr int NT = Tiles::kThreads, LDX = Tiles::LDX, LDY = Tiles::LDY, NB = kSTile / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* xs = reinterpret_cast<u16*>(smem_raw);  // [64][LDX]: this block's 64 channels of x, weighted
  u16* ys = xs + kChunk * LDX;                 // [64][LDY]: this block's 64 columns of y
  float* bs = reinterpret_cast<float*>(ys + kChunk * LDY);  // [64]: cumulative log decays
  float* red = bs + kChunk;                                 // [warps]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, x0 = 16 * warp;
  const i64 bh = blockIdx.x, b = bh / a.p.H, h = bh % a.p.H, hk = a.p.qk_head(h);
  const int vt = blockIdx.y, y0 = kSTile * vt, kt = blockIdx.z, xg = kSTile * kt + x0;
  const i64 NC = a.p.NC;

  float acc[NB][4];  // state rows xg + c_row, columns y0 + 8n + c_col
#pragma unroll
  for (int n = 0; n < NB; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const i64 at = (bh * a.Dk + xg + c_row(lane, e)) * a.Dv + y0 + 8 * n + c_col(lane, e);
      acc[n][e] = a.init ? a.init[at] : 0.0f;
    }
  }
  // The next chunk's rows and log decays are fetched into registers while this one computes.
  TileLoad<kChunk, kSTile, NT> xl;
  TileLoad<kChunk, kSTile, NT> yl;
  float2 gl = make_float2(0.0f, 0.0f);
  auto fetch = [&](i64 c) {
    const i64 t0 = c * kChunk;
    const int L = chunk_len(a.p.T, c);
    xl.fetch(a.x.at(b, t0, hk) + kSTile * kt, a.x.st, L);
    yl.fetch(a.y.at(b, t0, h) + y0, a.y.st, L);
    if (warp == 0) gl = chunk_decays(a.g.at(b, t0, h), a.g.st, L, lane);
  };
  fetch(a.reverse ? NC - 1 : 0);
  for (i64 s = 0; s < NC; ++s) {
    const i64 c = a.reverse ? NC - 1 - s : s;
    const int L = chunk_len(a.p.T, c);
    __syncthreads();  // the previous step is done with xs, ys, bs and red
    if (warp == 0) cumsum_pairs(bs, gl.x, gl.y, lane);
    __syncthreads();
    const float blast = bs[L - 1], scale = a.p.scale;
    if (a.reverse) {
      xl.put(xs, [&](int r) { return scale * decay_factor(bs[r]); });
    } else {
      xl.put(xs, [&](int r) { return decay_factor(blast - bs[r]); });
    }
    yl.put(ys, NoWeight{});
    if (s + 1 < NC) fetch(a.reverse ? c - 1 : c + 1);

    // The state before this chunk's update leaves as bf16 (and meets P for the through term).
    const i64 slot = (bh * NC + c) * a.Dk * a.Dv + y0;
    float part = 0.0f;
#pragma unroll
    for (int n = 0; n < NB; ++n) {
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        const i64 at = slot + (xg + c_row(lane, e)) * a.Dv + 8 * n + c_col(lane, e);
        *reinterpret_cast<u32*>(a.states + at) = pack_floats(acc[n][e], acc[n][e + 1]);
        if (a.partner) {
          const u32 pp = *reinterpret_cast<const u32*>(a.partner + at);
          part += acc[n][e] * bf16_to_float(frag::lo_half(pp)) +
                  acc[n][e + 1] * bf16_to_float(frag::hi_half(pp));
        }
      }
    }
    if (a.partner) {
      part = warp_sum(part);
      if (lane == 0) red[warp] = part;
    }
    __syncthreads();  // xs, ys staged; red written
    const float el = decay_factor(blast);
    if (a.partner && threadIdx.x == 0) {
      float sum = 0.0f;
      for (int w = 0; w < NT / 32; ++w) sum += red[w];
      a.through[(bh * NC + c) * (gridDim.y * gridDim.z) + kt * gridDim.y + vt] = el * sum;
    }
#pragma unroll
    for (int n = 0; n < NB; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[n][e] *= el;
    }
    // acc[x][y] += Σ_j xs[j][x]·ys[j][y]: A = xsᵀ, B = ys.
    warp_product<true, true>(acc, xs, LDX, x0, ys, LDY, 0, kChunk / 16, lane);
  }
  if (a.fin) {
#pragma unroll
    for (int n = 0; n < NB; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        a.fin[(bh * a.Dk + xg + c_row(lane, e)) * a.Dv + y0 + 8 * n + c_col(lane, e)] = acc[n][e];
      }
    }
  }
}

// ---- forward output ----------------------------------------------------------------------------

struct OutputArgs {
  Problem p;
  Rows q, k, v, g;    // [B,T,Hk,Dk] ×2, [B,T,H,Dv], [B,T,H]
  const u16* states;  // [B,H,NC,Dk,Dv]: P_c
  OutRows o;          // [B,T,H,Dv]
};

template <int DK, int DV>
struct ChunkTiles {
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int LDK = DK + 8, LDV = DV + 8;
  static constexpr std::size_t output_smem =
      sizeof(u16) * (2 * kChunk * LDK + kChunk * LDV + DK * LDV) + sizeof(float) * kChunk;
  static constexpr std::size_t grad_smem =
      sizeof(u16) * (2 * kChunk * LDK + 2 * kChunk * LDV + DK * LDV) + sizeof(float) * 4 * kChunk;
};

template <int DK, int DV>
__global__ void __launch_bounds__(32 * kWarps, 1) chunk_output_kernel(OutputArgs a) {
  using Tiles = ChunkTiles<DK, DV>;
  constexpr int NT = Tiles::kThreads, LDK = Tiles::LDK, LDV = Tiles::LDV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* qs = reinterpret_cast<u16*>(smem_raw);           // [64][LDK]
  u16* ks = qs + kChunk * LDK;                          // [64][LDK]
  u16* vs = ks + kChunk * LDK;                          // [64][LDV]
  u16* ps = vs + kChunk * LDV;                          // [DK][LDV]: P_c
  float* bs = reinterpret_cast<float*>(ps + DK * LDV);  // [64]

  const i64 NC = a.p.NC, bh = blockIdx.x / NC, c = blockIdx.x % NC;
  const i64 b = bh / a.p.H, h = bh % a.p.H, hk = a.p.qk_head(h), t0 = c * kChunk;
  const int L = chunk_len(a.p.T, c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * warp;
  stage<kChunk, DK, NT>(qs, a.q.at(b, t0, hk), a.q.st, L);
  stage<kChunk, DK, NT>(ks, a.k.at(b, t0, hk), a.k.st, L);
  stage<kChunk, DV, NT>(vs, a.v.at(b, t0, h), a.v.st, L);
  stage<DK, DV, NT>(ps, a.states + (bh * NC + c) * DK * DV, DV, DK);
  if (warp == 0) chunk_cumsum(bs, a.g.at(b, t0, h), a.g.st, L, lane);
  stage_wait();
  __syncthreads();

  // Inter-chunk part: scale·e_i·(Q P)_i.
  float o[DV / 8][4];
  zero(o);
  warp_product<false, true>(o, qs, LDK, r0, ps, LDV, 0, DK / 16, lane);
  const int i_lo = r0 + lane / 4, i_hi = i_lo + 8;
  scale_rows(o, a.p.scale * decay_factor(bs[i_lo]), a.p.scale * decay_factor(bs[i_hi]));
  // Intra-chunk scores scale·(Q Kᵀ ⊙ M), rounded to bf16 in registers, times V.
  float s[kChunk / 8][4];
  zero(s);
  warp_product<false, false>(s, qs, LDK, r0, ks, LDK, 0, DK / 16, lane, score_col_blocks(warp));
  decay_mask<false>(s, bs, a.p.scale, r0, L, lane);
  scores_product(o, s, vs, LDV, 0, lower_k_blocks(warp), lane);
  store_rows(o, a.o.at(b, t0, h), a.o.st, r0, L, lane);
}

// ---- backward chunk gradients ------------------------------------------------------------------

struct GradArgs {
  Problem p;
  Rows q, k, v, g, d_o;
  const u16 *P, *G;      // [B,H,NC,Dk,Dv]: state entering / gradient leaving each chunk
  const float* through;  // [B,H,NC,parts]: the through term of each state tile
  int parts;
  OutRows dq, dk, dv;  // bf16 rows (dq, dk unused when grouped)
  float *dq32, *dk32;  // [B,T,H,Dk] per-head fp32 scratch when Hk < H, else null
  u16* dg;             // [B,T,H] rows of d_log_decay or null
  i64 dg_sb, dg_st, dg_sh;
};

template <int DK, int DV>
__global__ void __launch_bounds__(32 * kWarps, 2) chunk_grad_kernel(GradArgs a) {
  using Tiles = ChunkTiles<DK, DV>;
  constexpr int NT = Tiles::kThreads, LDK = Tiles::LDK, LDV = Tiles::LDV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* qs = reinterpret_cast<u16*>(smem_raw);  // [64][LDK]
  u16* ks = qs + kChunk * LDK;                 // [64][LDK]
  u16* vs = ks + kChunk * LDK;                 // [64][LDV]
  u16* dos = vs + kChunk * LDV;                // [64][LDV]
  u16* ss = dos + kChunk * LDV;                // [DK][LDV]: P_c for dq, then G_c for dk, dv
  float* bs = reinterpret_cast<float*>(ss + DK * LDV);  // [64]
  float* rq = bs + kChunk;                              // [64]: q_i·dq_i
  float* rk = rq + kChunk;                              // [64]: k_j·dk_j
  float* rin = rk + kChunk;                             // [64]: q_i·dq_i^inter

  const i64 NC = a.p.NC, bh = blockIdx.x / NC, c = blockIdx.x % NC;
  const i64 b = bh / a.p.H, h = bh % a.p.H, hk = a.p.qk_head(h), t0 = c * kChunk;
  const int L = chunk_len(a.p.T, c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * warp;
  const float scale = a.p.scale;
  const i64 slot = (bh * NC + c) * DK * DV;
  stage<kChunk, DK, NT>(qs, a.q.at(b, t0, hk), a.q.st, L);
  stage<kChunk, DK, NT>(ks, a.k.at(b, t0, hk), a.k.st, L);
  stage<kChunk, DV, NT>(vs, a.v.at(b, t0, h), a.v.st, L);
  stage<kChunk, DV, NT>(dos, a.d_o.at(b, t0, h), a.d_o.st, L);
  stage<DK, DV, NT>(ss, a.P + slot, DV, DK);
  if (warp == 0) chunk_cumsum(bs, a.g.at(b, t0, h), a.g.st, L, lane);
  stage_wait();
  __syncthreads();
  const int i_lo = r0 + lane / 4, i_hi = i_lo + 8;
  const bool grouped = a.dq32 != nullptr;
  float dot_lo, dot_hi;
  // Each warp forms the score blocks it needs in registers: D = scale·(dO Vᵀ) ⊙ M for its rows i
  // (dq), Dᵀ and Aᵀ = scale·(K Qᵀ) ⊙ Mᵀ for its rows j (dk, dv).
  float sc[kChunk / 8][4];

  // dq (rows i of this warp) = scale·diag(e)·dO P_cᵀ + D K.
  {
    zero(sc);
    warp_product<false, false>(sc, dos, LDV, r0, vs, LDV, 0, DV / 16, lane, score_col_blocks(warp));
    decay_mask<false>(sc, bs, scale, r0, L, lane);
    float acc[DK / 8][4];
    zero(acc);
    warp_product<false, false>(acc, dos, LDV, r0, ss, LDV, 0, DV / 16, lane);
    scale_rows(acc, scale * decay_factor(bs[i_lo]), scale * decay_factor(bs[i_hi]));
    row_dots(acc, qs, LDK, r0, lane, dot_lo, dot_hi);
    if (lane % 4 == 0) rin[i_lo] = dot_lo, rin[i_hi] = dot_hi;
    scores_product(acc, sc, ks, LDK, 0, lower_k_blocks(warp), lane);
    row_dots(acc, qs, LDK, r0, lane, dot_lo, dot_hi);
    if (lane % 4 == 0) rq[i_lo] = dot_lo, rq[i_hi] = dot_hi;
    if (grouped) {
      store_rows_f32(acc, a.dq32 + ((b * a.p.T + t0) * a.p.H + h) * DK, a.p.H * DK, r0, L, lane);
    } else {
      store_rows(acc, a.dq.at(b, t0, hk), a.dq.st, r0, L, lane);
    }
  }
  __syncthreads();  // every warp is done with P_c: G_c takes its place
  stage<DK, DV, NT>(ss, a.G + slot, DV, DK);
  stage_wait();
  __syncthreads();
  const float f_lo = i_lo < L ? decay_factor(bs[L - 1] - bs[i_lo]) : 0.0f;
  const float f_hi = i_hi < L ? decay_factor(bs[L - 1] - bs[i_hi]) : 0.0f;
  // dk (rows j of this warp) = diag(f)·V G_cᵀ + Dᵀ Q.
  {
    zero(sc);
    warp_product<false, false>(sc, vs, LDV, r0, dos, LDV, 0, DV / 16, lane, kChunk / 8, 2 * warp);
    decay_mask<true>(sc, bs, scale, r0, L, lane);
    float acc[DK / 8][4];
    zero(acc);
    warp_product<false, false>(acc, vs, LDV, r0, ss, LDV, 0, DV / 16, lane);
    scale_rows(acc, f_lo, f_hi);
    scores_product(acc, sc, qs, LDK, upper_k_begin(warp), kChunk / 16, lane);
    row_dots(acc, ks, LDK, r0, lane, dot_lo, dot_hi);
    if (lane % 4 == 0) rk[i_lo] = dot_lo, rk[i_hi] = dot_hi;
    if (grouped) {
      store_rows_f32(acc, a.dk32 + ((b * a.p.T + t0) * a.p.H + h) * DK, a.p.H * DK, r0, L, lane);
    } else {
      store_rows(acc, a.dk.at(b, t0, hk), a.dk.st, r0, L, lane);
    }
  }
  // dv (rows j) = diag(f)·K G_c + Aᵀ dO.
  {
    zero(sc);
    warp_product<false, false>(sc, ks, LDK, r0, qs, LDK, 0, DK / 16, lane, kChunk / 8, 2 * warp);
    decay_mask<true>(sc, bs, scale, r0, L, lane);
    float acc[DV / 8][4];
    zero(acc);
    warp_product<false, true>(acc, ks, LDK, r0, ss, LDV, 0, DK / 16, lane);
    scale_rows(acc, f_lo, f_hi);
    scores_product(acc, sc, dos, LDV, upper_k_begin(warp), kChunk / 16, lane);
    store_rows(acc, a.dv.at(b, t0, h), a.dv.st, r0, L, lane);
  }
  if (a.dg == nullptr) return;
  __syncthreads();  // rq, rk, rin complete
  if (warp == 0) {
    // dg_u = through + Σ_v rin_v − Σ_{v<u} (rq_v − rk_v), u = 2·lane, 2·lane + 1.
    const int u = 2 * lane;
    const float r_a = rq[u] - rk[u], r_b = rq[u + 1] - rk[u + 1];
    float incl = r_a + r_b;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const float y = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += y;
    }
    float excl = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 0) excl = 0.0f;
    float base = warp_sum(rin[u] + rin[u + 1]);
    for (int t = 0; t < a.parts; ++t) base += a.through[(bh * NC + c) * a.parts + t];
    u16* dg = a.dg + b * a.dg_sb + t0 * a.dg_st + h * a.dg_sh;
    if (u < L) dg[u * a.dg_st] = frag::bf16_bits(base - excl);
    if (u + 1 < L) dg[(u + 1) * a.dg_st] = frag::bf16_bits(base - (excl + r_a));
  }
}

}  // namespace lsm_mma
}  // namespace cuda
}  // namespace linmoe
