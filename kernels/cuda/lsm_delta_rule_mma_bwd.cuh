// The bf16 tensor-core backward of the delta-rule LSM core (the forward and its symbols:
// lsm_delta_rule_mma.cuh; the mathematics: kernels/cpu/lsm_delta_rule.cpp's header; the algorithm
// and its rounding points: tiled_backward in tests/unit/test_lsm_delta_tiled_reference.cpp).
// Five launches after delta_prep_kernel<kWide> (r(X), W, Ũ in fp32 from hi + lo of β v):
//   delta_bwd_state_kernel    grid (B·H, Dv/64): the forward state pass again, U = Ũ − W r(P_c)
//                             in fp32 (hi + lo operands of the update), P_c stored in fp32.
//   delta_bwd_reverse_kernel  grid (B·H, Dv/64), G = dL/dN in fp32 registers, chunks in reverse:
//                             G_c stored; dU = diag(η) K r(G_c) + attnᵀ dO (attn as hi + lo);
//                             R_v = Xᵀ dU (dU as hi + lo), dv = diag(β) R_v;
//                             G ← γ_{L−1} G + r(scale diag(γ) Q)ᵀ dO + r(−diag(βγ) K)ᵀ R_v.
//   delta_bwd_rows_kernel     grid B·H·NC: dO Pᵀ, R_v Pᵀ, U Gᵀ (P_c, G_c, R_v, U as hi + lo):
//                             the state parts of dq and dk and the row dots of dβ and dg.
//   delta_bwd_chunk_kernel    grid B·H·NC: Dq = scale M ⊙ dO Uᵀ, Dm = −diag(β) M ⊙ R_v Uᵀ (hi +
//   lo),
//                             dq, dk, dβ, and dg by one scan over E's row and column sums.
// Each product with a hi + lo operand is two mma (three when both operands are pairs).
#pragma once
#include <cstdint>

#include "kernels/cuda/lsm_delta_rule_mma.cuh"

namespace linmoe {
namespace cuda {
namespace delta_mma {

// ---- helpers
// ------------------------------------------------------------------------------------

// fp32 rows (row r at src + r·step; rows ≥ n zero) into hi + lo bf16 tiles of pitch ld.
template <int ROWS, int COLS>
__device__ __forceinline__ void split_stage(u16* hi, u16* lo, int ld, const float* src, i64 step,
                                            int n) {
  for (int idx = static_cast<int>(threadIdx.x); idx < ROWS * COLS / 2; idx += kThreads) {
    const int r = idx / (COLS / 2), c = 2 * (idx % (COLS / 2));
    const float x0 = r < n ? src[r * step + c] : 0.0f, x1 = r < n ? src[r * step + c + 1] : 0.0f;
    *reinterpret_cast<u32*>(hi + r * ld + c) = pack_floats(x0, x1);
    *reinterpret_cast<u32*>(lo + r * ld + c) =
        pack_floats(x0 - frag::round_bf16(x0), x1 - frag::round_bf16(x1));
  }
}
// A warp's accumulators (rows r0.., 8·NB columns) as hi + lo tiles.
template <int NB>
__device__ __forceinline__ void store_hl(const float (&c)[NB][4], u16* hi, u16* lo, int ld, int r0,
                                         int lane) {
#pragma unroll
  for (int n = 0; n < NB; ++n) {
#pragma unroll
    for (int e = 0; e < 4; e += 2) {
      const int at = (r0 + c_row(lane, e)) * ld + 8 * n + c_col(lane, e);
      const float x0 = c[n][e], x1 = c[n][e + 1];
      *reinterpret_cast<u32*>(hi + at) = pack_floats(x0, x1);
      *reinterpret_cast<u32*>(lo + at) =
          pack_floats(x0 - frag::round_bf16(x0), x1 - frag::round_bf16(x1));
    }
  }
}
// Sum over the four lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// ---- the state pass again, wide
// ------------------------------------------------------------------

struct BwdStateArgs {
  Problem p;
  i64 Dv;
  Rows k, g;          // [B,T,H,Dk], [B,T,H]
  const u16* w;       // [B,H,NC·64,Dk]: W
  float* u;           // [B,H,NC·64,Dv]: Ũ in, U out (fp32)
  const float* init;  // [B,H,Dk,Dv] or null
  float* states;      // [B,H,NC,Dk,Dv]: P_c (fp32)
};

template <int DK>
struct BwdStateTiles {
  static constexpr int LDK = DK + 8;
  static constexpr std::size_t smem =
      sizeof(u16) * (DK * kLdC + 2 * kChunk * LDK + 2 * kChunk * kLdC) + sizeof(float) * kChunk;
};

// grid (B·H, Dv/64); warp w owns state rows [w·Dk/4, (w + 1)·Dk/4) of the columns 64·blockIdx.y..
template <int DK>
__global__ void __launch_bounds__(kThreads) delta_bwd_state_kernel(BwdStateArgs a) {
  using Tiles = BwdStateTiles<DK>;
  constexpr int LDK = Tiles::LDK, MT = DK / 64, NB = kVTile / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* ps = reinterpret_cast<u16*>(smem_raw);                // [DK][kLdC]: r(P_c)
  u16* ws = ps + DK * kLdC;                                  // [64][LDK]: W
  u16* ks = ws + kChunk * LDK;                               // [64][LDK]: r(η k)
  u16* uh = ks + kChunk * LDK;                               // [64][kLdC]: U hi
  u16* ul = uh + kChunk * kLdC;                              // [64][kLdC]: U lo
  float* bs = reinterpret_cast<float*>(ul + kChunk * kLdC);  // [64]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, x0 = 16 * MT * warp;
  const i64 bh = blockIdx.x, b = bh / a.p.H, h = bh % a.p.H, NC = a.p.NC, Dv = a.Dv;
  const int y0 = kVTile * static_cast<int>(blockIdx.y);

  float acc[MT][NB][4];  // state rows x0 + 16m + c_row, columns y0 + 8n + c_col
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int n = 0; n < NB; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const i64 at = (bh * DK + x0 + 16 * m + c_row(lane, e)) * Dv + y0 + 8 * n + c_col(lane, e);
        acc[m][n][e] = a.init ? a.init[at] : 0.0f;
      }
    }
  }
  for (i64 c = 0; c < NC; ++c) {
    const i64 t0 = c * kChunk, row = bh * NC * kChunk + t0;
    const int L = chunk_len(a.p.T, c);
    stage<kChunk, DK>(ws, LDK, a.w + row * DK, DK, L);
    stage<kChunk, DK>(ks, LDK, a.k.at(b, t0, h), a.k.st, L);
    if (warp == 0) chunk_cumsum(bs, a.g, a.p.gated, b, t0, h, L, lane);
    float* slot = a.states + (bh * NC + c) * DK * Dv + y0;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int x = x0 + 16 * m + c_row(lane, e), y = 8 * n + c_col(lane, e);
          *reinterpret_cast<u32*>(ps + x * kLdC + y) = pack_floats(acc[m][n][e], acc[m][n][e + 1]);
          *reinterpret_cast<float2*>(slot + x * Dv + y) =
              make_float2(acc[m][n][e], acc[m][n][e + 1]);
        }
      }
    }
    stage_wait();
    __syncthreads();
    const float blast = bs[L - 1];
    weight_rows<DK>(ks, LDK, [&](int r) { return r < L ? decay_factor(blast - bs[r]) : 0.0f; });
    {  // U = Ũ − W r(P_c) for the warp's 16 token rows, in fp32 and as hi + lo tiles.
      float wp[NB][4];
      zero(wp);
      warp_product<false, true>(wp, ws, LDK, 16 * warp, ps, kLdC, 0, DK / 16, lane);
      float* io = a.u + row * Dv + y0;
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int r = 16 * warp + c_row(lane, e), y = 8 * n + c_col(lane, e);
          float2 v = r < L ? *reinterpret_cast<const float2*>(io + r * Dv + y) : make_float2(0, 0);
          v.x -= wp[n][e], v.y -= wp[n][e + 1];
          wp[n][e] = v.x, wp[n][e + 1] = v.y;
          if (r < L) *reinterpret_cast<float2*>(io + r * Dv + y) = v;
        }
      }
      store_hl(wp, uh, ul, kLdC, 16 * warp, lane);
    }
    __syncthreads();
    const float el = decay_factor(blast);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][n][e] *= el;
      }
      warp_product<true, true>(acc[m], ks, LDK, x0 + 16 * m, uh, kLdC, 0, kChunk / 16, lane);
      warp_product<true, true>(acc[m], ks, LDK, x0 + 16 * m, ul, kLdC, 0, kChunk / 16, lane);
    }
    __syncthreads();  // the tiles are restaged next chunk
  }
}

// ---- the reverse pass
// ----------------------------------------------------------------------------

struct ReverseArgs {
  Problem p;
  i64 Dv;
  Rows q, k, beta, g, d_o;  // [B,T,H,Dk] × 2, [B,T,H] × 2, [B,T,H,Dv]
  const u16* x;             // [B,H,NC,64,64]: r(X)
  const float* dfs;         // [B,H,Dk,Dv] or null: d_final_state
  float* gstates;           // [B,H,NC,Dk,Dv]: G_c (fp32)
  float* rv;                // [B,H,NC·64,Dv]: R_v (fp32)
  OutRows dv;               // [B,T,H,Dv]
  float* ds0;               // [B,H,Dk,Dv] or null: d_initial_state
};

template <int DK>
struct ReverseTiles {
  static constexpr int LDK = DK + 8;
  static constexpr std::size_t smem =
      sizeof(u16) * (5 * kChunk * LDK + 6 * kChunk * kLdC + DK * kLdC) + sizeof(float) * 2 * kChunk;
};

template <int DK>
__global__ void __launch_bounds__(kThreads) delta_bwd_reverse_kernel(ReverseArgs a) {
  using Tiles = ReverseTiles<DK>;
  constexpr int LDK = Tiles::LDK, MT = DK / 64, NB = kVTile / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* qs = reinterpret_cast<u16*>(smem_raw);            // [64][LDK]: q
  u16* ks = qs + kChunk * LDK;                           // [64][LDK]: k
  u16* qw = ks + kChunk * LDK;                           // [64][LDK]: r(scale γ q)
  u16* ke = qw + kChunk * LDK;                           // [64][LDK]: r(η k)
  u16* kb = ke + kChunk * LDK;                           // [64][LDK]: r(−β γ k)
  u16* xs = kb + kChunk * LDK;                           // [64][kLdC]: r(X)
  u16* dos = xs + kChunk * kLdC;                         // [64][kLdC]: dO (the block's 64 columns)
  u16* dh = dos + kChunk * kLdC;                         // [64][kLdC]: dU hi
  u16* dl = dh + kChunk * kLdC;                          // [64][kLdC]: dU lo
  u16* rh = dl + kChunk * kLdC;                          // [64][kLdC]: R_v hi
  u16* rl = rh + kChunk * kLdC;                          // [64][kLdC]: R_v lo
  u16* gs = rl + kChunk * kLdC;                          // [DK][kLdC]: r(G_c)
  float* bs = reinterpret_cast<float*>(gs + DK * kLdC);  // [64]
  float* bt = bs + kChunk;                               // [64]: β

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, x0 = 16 * MT * warp, r0 = 16 * warp;
  const i64 bh = blockIdx.x, b = bh / a.p.H, h = bh % a.p.H, NC = a.p.NC, Dv = a.Dv;
  const int y0 = kVTile * static_cast<int>(blockIdx.y);
  const float scale = a.p.scale;

  float acc[MT][NB][4];  // G: rows x0 + 16m + c_row, columns y0 + 8n + c_col
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int n = 0; n < NB; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const i64 at = (bh * DK + x0 + 16 * m + c_row(lane, e)) * Dv + y0 + 8 * n + c_col(lane, e);
        acc[m][n][e] = a.dfs ? a.dfs[at] : 0.0f;
      }
    }
  }
  for (i64 c = NC - 1; c >= 0; --c) {
    const i64 t0 = c * kChunk, row = bh * NC * kChunk + t0;
    const int L = chunk_len(a.p.T, c);
    stage<kChunk, DK>(qs, LDK, a.q.at(b, t0, h), a.q.st, L);
    stage<kChunk, DK>(ks, LDK, a.k.at(b, t0, h), a.k.st, L);
    stage<kChunk, kVTile>(dos, kLdC, a.d_o.at(b, t0, h) + y0, a.d_o.st, L);
    stage<kChunk, kChunk>(xs, kLdC, a.x + (bh * NC + c) * kChunk * kChunk, kChunk, kChunk);
    if (warp == 0) chunk_cumsum(bs, a.g, a.p.gated, b, t0, h, L, lane);
    if (threadIdx.x < kChunk) {
      const int j = threadIdx.x;
      bt[j] = j < L ? bf16_to_float(*a.beta.at(b, t0 + j, h)) : 0.0f;
    }
    float* slot = a.gstates + (bh * NC + c) * DK * Dv + y0;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int x = x0 + 16 * m + c_row(lane, e), y = 8 * n + c_col(lane, e);
          *reinterpret_cast<u32*>(gs + x * kLdC + y) = pack_floats(acc[m][n][e], acc[m][n][e + 1]);
          *reinterpret_cast<float2*>(slot + x * Dv + y) =
              make_float2(acc[m][n][e], acc[m][n][e + 1]);
        }
      }
    }
    stage_wait();
    __syncthreads();
    const float blast = bs[L - 1];
    // The weighted operands of dU and of the G update.
    for (int idx = static_cast<int>(threadIdx.x); idx < kChunk * DK / 2; idx += kThreads) {
      const int r = idx / (DK / 2), col = 2 * (idx % (DK / 2));
      const float gr = decay_factor(bs[r]), eta = r < L ? decay_factor(blast - bs[r]) : 0.0f;
      const u32 qp = *reinterpret_cast<const u32*>(qs + r * LDK + col);
      const u32 kp = *reinterpret_cast<const u32*>(ks + r * LDK + col);
      const float q0 = bf16_to_float(frag::lo_half(qp)), q1 = bf16_to_float(frag::hi_half(qp));
      const float k0 = bf16_to_float(frag::lo_half(kp)), k1 = bf16_to_float(frag::hi_half(kp));
      const float wq = scale * gr, wb = -bt[r] * gr;
      *reinterpret_cast<u32*>(qw + r * LDK + col) = pack_floats(q0 * wq, q1 * wq);
      *reinterpret_cast<u32*>(ke + r * LDK + col) = pack_floats(k0 * eta, k1 * eta);
      *reinterpret_cast<u32*>(kb + r * LDK + col) = pack_floats(k0 * wb, k1 * wb);
    }
    __syncthreads();
    {  // dU rows j of the warp: attnᵀ dO + diag(η) K r(G_c); attnᵀ_ji = scale M_ij (k_j·q_i), i ≥
       // j.
      float s[kChunk / 8][4];
      zero(s);
      warp_product<false, false>(s, ks, LDK, r0, qs, LDK, 0, DK / 16, lane);
#pragma unroll
      for (int n = 0; n < kChunk / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = r0 + c_row(lane, e), i = 8 * n + c_col(lane, e);
          s[n][e] = i >= j && i < L ? s[n][e] * scale * decay_factor(bs[i] - bs[j]) : 0.0f;
        }
      }
      float du[NB][4];
      zero(du);
#pragma unroll
      for (int kk = 0; kk < kChunk / 16; ++kk) {
        if (kk < warp) continue;  // attnᵀ is zero left of the diagonal block
        u32 hi[4], lo[4];
        frag::acc_to_a(hi, s[2 * kk], s[2 * kk + 1]);
        float rest[2][4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          rest[0][e] = s[2 * kk][e] - frag::round_bf16(s[2 * kk][e]);
          rest[1][e] = s[2 * kk + 1][e] - frag::round_bf16(s[2 * kk + 1][e]);
        }
        frag::acc_to_a(lo, rest[0], rest[1]);
#pragma unroll
        for (int n = 0; n < NB; n += 2) {
          u32 bb[4];
          frag::ldsm_b2_t(bb, dos, kLdC, 16 * kk, 8 * n, lane);
          mma_16816(du[n], hi, bb[0], bb[1]);
          mma_16816(du[n + 1], hi, bb[2], bb[3]);
          mma_16816(du[n], lo, bb[0], bb[1]);
          mma_16816(du[n + 1], lo, bb[2], bb[3]);
        }
      }
      warp_product<false, true>(du, ke, LDK, r0, gs, kLdC, 0, DK / 16, lane);
      store_hl(du, dh, dl, kLdC, r0, lane);
    }
    __syncthreads();
    {  // R_v rows j = Σ_{i≥j} X_ij dU_i; dv = diag(β) R_v.
      float rv[NB][4];
      zero(rv);
      warp_product<true, true>(rv, xs, kLdC, r0, dh, kLdC, warp, kChunk / 16, lane);
      warp_product<true, true>(rv, xs, kLdC, r0, dl, kLdC, warp, kChunk / 16, lane);
      float* out = a.rv + row * Dv + y0;
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int j = r0 + c_row(lane, e), y = 8 * n + c_col(lane, e);
          if (j < L) {
            *reinterpret_cast<float2*>(out + j * Dv + y) = make_float2(rv[n][e], rv[n][e + 1]);
            *reinterpret_cast<u32*>(a.dv.at(b, t0 + j, h) + y0 + y) =
                pack_floats(bt[j] * rv[n][e], bt[j] * rv[n][e + 1]);
          }
        }
      }
      store_hl(rv, rh, rl, kLdC, r0, lane);
    }
    __syncthreads();
    // G ← γ_{L−1} G + r(scale diag(γ) Q)ᵀ dO + r(−diag(βγ) K)ᵀ R_v.
    const float el = decay_factor(blast);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][n][e] *= el;
      }
      warp_product<true, true>(acc[m], qw, LDK, x0 + 16 * m, dos, kLdC, 0, kChunk / 16, lane);
      warp_product<true, true>(acc[m], kb, LDK, x0 + 16 * m, rh, kLdC, 0, kChunk / 16, lane);
      warp_product<true, true>(acc[m], kb, LDK, x0 + 16 * m, rl, kLdC, 0, kChunk / 16, lane);
    }
    __syncthreads();  // the tiles are restaged next chunk
  }
  if (a.ds0) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const i64 at =
              (bh * DK + x0 + 16 * m + c_row(lane, e)) * Dv + y0 + 8 * n + c_col(lane, e);
          a.ds0[at] = acc[m][n][e];
        }
      }
    }
  }
}

// ---- the state parts of the chunk gradients
// ---------------------------------------------------------

struct GradArgs {
  Problem p;
  Rows q, k, v, beta, g, d_o;      // [B,T,H,Dk] × 2, [B,T,H,Dv], [B,T,H] × 2, [B,T,H,Dv]
  const float *u, *rv;             // [B,H,NC·64,Dv]: U, R_v
  const float *pstates, *gstates;  // [B,H,NC,Dk,Dv]: P_c, G_c
  float *dq_part, *dk_part;        // [B,H,NC·64,Dk]
  float* dots;                // [B,H,NC·64,4]: q·dOPᵀ, k·R_vPᵀ, k·UGᵀ, R_v·v per token
  OutRows dq, dk, dbeta, dg;  // dg.p null: not wanted
};

template <int DK, int DV>
struct RowsTiles {
  static constexpr int LDV = DV + 8;
  static constexpr std::size_t smem =
      sizeof(u16) * (2 * DK * LDV + 3 * kChunk * LDV) + sizeof(float) * 2 * kChunk;
};

// One product of 16 rows × 64 state columns (x), summed over Dv: A rows (hi, lo or null) times
// the [x][y] tiles (hi, lo).
template <int DV>
__device__ __forceinline__ void row_product(float (&c)[8][4], const u16* ah, const u16* al,
                                            const u16* bh, const u16* bl, int ld, int r0,
                                            int lane) {
  warp_product<false, false>(c, ah, ld, r0, bh, ld, 0, DV / 16, lane);
  warp_product<false, false>(c, ah, ld, r0, bl, ld, 0, DV / 16, lane);
  if (al) warp_product<false, false>(c, al, ld, r0, bh, ld, 0, DV / 16, lane);
}

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) delta_bwd_rows_kernel(GradArgs a) {
  using Tiles = RowsTiles<DK, DV>;
  constexpr int LDV = Tiles::LDV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* sh = reinterpret_cast<u16*>(smem_raw);               // [DK][LDV]: P_c hi, then G_c hi
  u16* sl = sh + DK * LDV;                                  // [DK][LDV]: P_c lo, then G_c lo
  u16* dos = sl + DK * LDV;                                 // [64][LDV]: dO
  u16* ah = dos + kChunk * LDV;                             // [64][LDV]: R_v hi, then U hi
  u16* al = ah + kChunk * LDV;                              // [64][LDV]: R_v lo, then U lo
  float* bs = reinterpret_cast<float*>(al + kChunk * LDV);  // [64]
  float* bt = bs + kChunk;                                  // [64]

  const i64 NC = a.p.NC, bh = blockIdx.x / NC, c = blockIdx.x % NC;
  const i64 b = bh / a.p.H, h = bh % a.p.H, t0 = c * kChunk, row = bh * NC * kChunk + t0;
  const int L = chunk_len(a.p.T, c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * warp;
  const i64 st = (bh * NC + c) * DK * DV;
  stage<kChunk, DV>(dos, LDV, a.d_o.at(b, t0, h), a.d_o.st, L);
  split_stage<DK, DV>(sh, sl, LDV, a.pstates + st, DV, DK);
  split_stage<kChunk, DV>(ah, al, LDV, a.rv + row * DV, DV, L);
  if (warp == 0) chunk_cumsum(bs, a.g, a.p.gated, b, t0, h, L, lane);
  if (threadIdx.x < kChunk) {
    const int j = threadIdx.x;
    bt[j] = j < L ? bf16_to_float(*a.beta.at(b, t0 + j, h)) : 0.0f;
  }
  stage_wait();
  __syncthreads();
  if (threadIdx.x < kChunk) {  // R_v·v
    const int i = threadIdx.x;
    float s = 0.0f;
    if (i < L) {
      const u16* vr = a.v.at(b, t0 + i, h);
      for (int y = 0; y < DV; ++y) {
        s += (bf16_to_float(ah[i * LDV + y]) + bf16_to_float(al[i * LDV + y])) *
             bf16_to_float(vr[y]);
      }
      a.dots[(row + i) * 4 + 3] = s;
    }
  }
  const int i_lo = r0 + lane / 4, i_hi = i_lo + 8;
  // Phase 1: dO Pᵀ and R_v Pᵀ, 64 state columns at a time.
  float qd[2] = {0, 0}, kr[2] = {0, 0};
  for (int xh = 0; xh < DK / 64; ++xh) {
    float dop[8][4], rp[8][4];
    zero(dop), zero(rp);
    row_product<DV>(dop, dos, nullptr, sh + 64 * xh * LDV, sl + 64 * xh * LDV, LDV, r0, lane);
    row_product<DV>(rp, ah, al, sh + 64 * xh * LDV, sl + 64 * xh * LDV, LDV, r0, lane);
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + c_row(lane, e), x = 64 * xh + 8 * n + c_col(lane, e);
        if (i >= L) continue;
        const float gi = decay_factor(bs[i]);
        a.dq_part[(row + i) * DK + x] = a.p.scale * gi * dop[n][e];
        a.dk_part[(row + i) * DK + x] = -bt[i] * gi * rp[n][e];
        qd[e / 2] += bf16_to_float(a.q.at(b, t0 + i, h)[x]) * dop[n][e];
        kr[e / 2] += bf16_to_float(a.k.at(b, t0 + i, h)[x]) * rp[n][e];
      }
    }
  }
  for (int hf = 0; hf < 2; ++hf) {
    const int i = hf ? i_hi : i_lo;
    const float q = quad_sum(qd[hf]), k = quad_sum(kr[hf]);
    if (lane % 4 == 0 && i < L) a.dots[(row + i) * 4 + 0] = q, a.dots[(row + i) * 4 + 1] = k;
  }
  __syncthreads();  // phase 2 restages the tiles
  split_stage<DK, DV>(sh, sl, LDV, a.gstates + st, DV, DK);
  split_stage<kChunk, DV>(ah, al, LDV, a.u + row * DV, DV, L);
  __syncthreads();
  // Phase 2: U Gᵀ.
  float ku[2] = {0, 0};
  const float blast = bs[L - 1];
  for (int xh = 0; xh < DK / 64; ++xh) {
    float ug[8][4];
    zero(ug);
    row_product<DV>(ug, ah, al, sh + 64 * xh * LDV, sl + 64 * xh * LDV, LDV, r0, lane);
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + c_row(lane, e), x = 64 * xh + 8 * n + c_col(lane, e);
        if (i >= L) continue;
        a.dk_part[(row + i) * DK + x] += decay_factor(blast - bs[i]) * ug[n][e];
        ku[e / 2] += bf16_to_float(a.k.at(b, t0 + i, h)[x]) * ug[n][e];
      }
    }
  }
  for (int hf = 0; hf < 2; ++hf) {
    const int i = hf ? i_hi : i_lo;
    const float k = quad_sum(ku[hf]);
    if (lane % 4 == 0 && i < L) a.dots[(row + i) * 4 + 2] = k;
  }
}

// ---- the chunk matrices and the gradients
// -----------------------------------------------------------

template <int DK, int DV>
struct ChunkTiles {
  static constexpr int LDK = DK + 8, LDV = DV + 8;
  static constexpr std::size_t smem =
      sizeof(u16) * (2 * kChunk * LDK + 5 * kChunk * LDV + 4 * kChunk * kLdC) +
      sizeof(float) * (kChunk * kLdF + 5 * kChunk + kThreads);
};

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) delta_bwd_chunk_kernel(GradArgs a) {
  using Tiles = ChunkTiles<DK, DV>;
  constexpr int LDK = Tiles::LDK, LDV = Tiles::LDV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* qs = reinterpret_cast<u16*>(smem_raw);                // [64][LDK]
  u16* ks = qs + kChunk * LDK;                               // [64][LDK]
  u16* dos = ks + kChunk * LDK;                              // [64][LDV]: dO
  u16* uh = dos + kChunk * LDV;                              // [64][LDV]: U hi
  u16* ul = uh + kChunk * LDV;                               // [64][LDV]: U lo
  u16* rh = ul + kChunk * LDV;                               // [64][LDV]: R_v hi
  u16* rl = rh + kChunk * LDV;                               // [64][LDV]: R_v lo
  u16* qh = rl + kChunk * LDV;                               // [64][kLdC]: Dq hi
  u16* ql = qh + kChunk * kLdC;                              // [64][kLdC]: Dq lo
  u16* mh = ql + kChunk * kLdC;                              // [64][kLdC]: Dm hi
  u16* ml = mh + kChunk * kLdC;                              // [64][kLdC]: Dm lo
  float* ef = reinterpret_cast<float*>(ml + kChunk * kLdC);  // [64][kLdF]: E
  float* bs = ef + kChunk * kLdF;                            // [64]
  float* bt = bs + kChunk;                                   // [64]: β
  float* db = bt + kChunk;                                   // [64]: Σ_j −z M kk
  float* cv = db + kChunk;                                   // [64]: the scan's terms
  float* wi = cv + kChunk;                                   // [64]: w_in
  float* red = wi + kChunk;                                  // [kThreads]: ⟨G_c, P_c⟩ parts

  const i64 NC = a.p.NC, bh = blockIdx.x / NC, c = blockIdx.x % NC;
  const i64 b = bh / a.p.H, h = bh % a.p.H, t0 = c * kChunk, row = bh * NC * kChunk + t0;
  const int L = chunk_len(a.p.T, c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * warp;
  const float scale = a.p.scale;
  stage<kChunk, DK>(qs, LDK, a.q.at(b, t0, h), a.q.st, L);
  stage<kChunk, DK>(ks, LDK, a.k.at(b, t0, h), a.k.st, L);
  stage<kChunk, DV>(dos, LDV, a.d_o.at(b, t0, h), a.d_o.st, L);
  split_stage<kChunk, DV>(uh, ul, LDV, a.u + row * DV, DV, L);
  split_stage<kChunk, DV>(rh, rl, LDV, a.rv + row * DV, DV, L);
  if (warp == 0) chunk_cumsum(bs, a.g, a.p.gated, b, t0, h, L, lane);
  if (threadIdx.x < kChunk) {
    const int j = threadIdx.x;
    bt[j] = j < L ? bf16_to_float(*a.beta.at(b, t0 + j, h)) : 0.0f;
  }
  {  // ⟨G_c, P_c⟩ (fp32)
    const i64 st = (bh * NC + c) * DK * DV;
    float s = 0.0f;
    for (int e = static_cast<int>(threadIdx.x); e < DK * DV; e += kThreads) {
      s += a.gstates[st + e] * a.pstates[st + e];
    }
    red[threadIdx.x] = s;
  }
  stage_wait();
  __syncthreads();
  {  // Dq = scale M ⊙ dO Uᵀ (j ≤ i), E = scale M ⊙ Q Kᵀ ⊙ dO Uᵀ (j < i), warp rows i.
    float dm[8][4], qk[8][4];
    zero(dm), zero(qk);
    warp_product<false, false>(dm, dos, LDV, r0, uh, LDV, 0, DV / 16, lane);
    warp_product<false, false>(dm, dos, LDV, r0, ul, LDV, 0, DV / 16, lane);
    warp_product<false, false>(qk, qs, LDK, r0, ks, LDK, 0, DK / 16, lane);
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + c_row(lane, e), j = 8 * n + c_col(lane, e);
        const float x = j <= i && i < L ? dm[n][e] * scale * decay_factor(bs[i] - bs[j]) : 0.0f;
        dm[n][e] = x;
        ef[i * kLdF + j] = j < i ? x * qk[n][e] : 0.0f;
      }
    }
    store_hl(dm, qh, ql, kLdC, r0, lane);
  }
  {  // Dm = −diag(β) M ⊙ R_v Uᵀ, E −= diag(β) M ⊙ K Kᵀ ⊙ R_v Uᵀ (j < i); db.
    float z[8][4], kk[8][4];
    zero(z), zero(kk);
    row_product<DV>(z, rh, rl, uh, ul, LDV, r0, lane);
    warp_product<false, false>(kk, ks, LDK, r0, ks, LDK, 0, DK / 16, lane);
    float d[2] = {0, 0};
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + c_row(lane, e), j = 8 * n + c_col(lane, e);
        const float zm = j < i && i < L ? z[n][e] * decay_factor(bs[i] - bs[j]) : 0.0f;
        z[n][e] = -bt[i] * zm;
        ef[i * kLdF + j] -= bt[i] * zm * kk[n][e];
        d[e / 2] -= zm * kk[n][e];
      }
    }
    store_hl(z, mh, ml, kLdC, r0, lane);
    for (int hf = 0; hf < 2; ++hf) {
      const float s = quad_sum(d[hf]);
      if (lane % 4 == 0) db[r0 + lane / 4 + 8 * hf] = s;
    }
  }
  __syncthreads();
  // dq = dq_part + Dq K; dk = dk_part + Dqᵀ Q + Dmᵀ K + Dm K; 64 columns at a time.
  for (int xh = 0; xh < DK / 64; ++xh) {
    const u16 *qx = qs + 64 * xh, *kx = ks + 64 * xh;
    float acc[8][4];
    zero(acc);
    warp_product<false, true>(acc, qh, kLdC, r0, kx, LDK, 0, warp + 1, lane);
    warp_product<false, true>(acc, ql, kLdC, r0, kx, LDK, 0, warp + 1, lane);
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + c_row(lane, e), x = 64 * xh + 8 * n + c_col(lane, e);
        if (i < L) acc[n][e] += a.dq_part[(row + i) * DK + x];
      }
    }
    store_rows(acc, a.dq.at(b, t0, h) + 64 * xh, a.dq.st, r0, L, lane);
    zero(acc);
    warp_product<true, true>(acc, qh, kLdC, r0, qx, LDK, warp, kChunk / 16, lane);
    warp_product<true, true>(acc, ql, kLdC, r0, qx, LDK, warp, kChunk / 16, lane);
    warp_product<true, true>(acc, mh, kLdC, r0, kx, LDK, warp, kChunk / 16, lane);
    warp_product<true, true>(acc, ml, kLdC, r0, kx, LDK, warp, kChunk / 16, lane);
    warp_product<false, true>(acc, mh, kLdC, r0, kx, LDK, 0, warp + 1, lane);
    warp_product<false, true>(acc, ml, kLdC, r0, kx, LDK, 0, warp + 1, lane);
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + c_row(lane, e), x = 64 * xh + 8 * n + c_col(lane, e);
        if (i < L) acc[n][e] += a.dk_part[(row + i) * DK + x];
      }
    }
    store_rows(acc, a.dk.at(b, t0, h) + 64 * xh, a.dk.st, r0, L, lane);
  }
  // dβ and the scan's terms, one thread per token.
  const float blast = bs[L - 1];
  if (threadIdx.x < kChunk) {
    const int i = threadIdx.x;
    float rows = 0.0f, cols = 0.0f;
    for (int j = 0; j < kChunk; ++j) rows += ef[i * kLdF + j], cols += ef[j * kLdF + i];
    float qd = 0, kr = 0, ku = 0, rvv = 0;
    if (i < L) {
      const float* dt = a.dots + (row + i) * 4;
      qd = dt[0], kr = dt[1], ku = dt[2], rvv = dt[3];
    }
    const float gi = decay_factor(bs[i]), eta = decay_factor(blast - bs[i]);
    const float w_in = scale * gi * qd - bt[i] * gi * kr, w_out = eta * ku;
    wi[i] = i < L ? w_in : 0.0f;
    cv[i] = i < L ? cols - rows - w_in + w_out : 0.0f;
    if (i < L) *a.dbeta.at(b, t0 + i, h) = frag::bf16_bits(db[i] + rvv - gi * kr);
  }
  __syncthreads();
  // dg_u = γ_{L−1}⟨G_c, P_c⟩ + Σ_i w_in_i + Σ_{v<u} cv_v (warp 0).
  if (warp == 0 && a.dg.p) {
    const float through = decay_factor(blast) *
                          warp_sum(red[lane] + red[lane + 32] + red[lane + 64] + red[lane + 96]);
    const float total_in = warp_sum(wi[2 * lane] + wi[2 * lane + 1]);
    const float2 x = make_float2(cv[2 * lane], cv[2 * lane + 1]);
    float* incl = bs;  // bs is no longer needed
    cumsum_pairs(incl, x, lane);
    for (int hf = 0; hf < 2; ++hf) {
      const int u = 2 * lane + hf;
      const float excl = incl[u] - (hf ? x.y : x.x);
      if (u < L) *a.dg.at(b, t0 + u, h) = frag::bf16_bits(through + total_in + excl);
    }
  }
}

}  // namespace delta_mma
}  // namespace cuda
}  // namespace linmoe
