// The bf16 tensor-core forward of the delta-rule LSM core (MODEL.md section 3: deltanet,
// gated_deltanet; contract in kernels/ops.h; the mathematics and symbols of
// kernels/cpu/lsm_delta_rule.cpp's header): mma.sync.m16n8k16 with bf16 operands and fp32
// accumulation, chunks of 64 tokens, head dims Dk, Dv ∈ {64, 128}. Per chunk of L ≤ 64 tokens
// entering with state P, b_i = Σ_{s≤i} g_s inside the chunk (fp32, 0 for deltanet), γ_i = exp(b_i),
// η_j = exp(b_{L−1} − b_j), M_ij = exp(b_i − b_j) (only exponents ≤ 0: safe for any T):
//   X = (I + A)⁻¹, A_ij = β_i M_ij (k_i·k_j) (j < i),   W = X diag(βγ) K,   Ũ = X diag(β) V,
//   U = Ũ − W P,   O = scale (diag(γ) Q P + (Q Kᵀ ⊙ M) U),   P ← γ_{L−1} P + (diag(η) K)ᵀ U.
// Three launches:
//   delta_prep_kernel    grid B·H·NC, 4 warps: K Kᵀ on the tensor cores, A and the triangular
//                        solve in fp32 (16 × 16 diagonal blocks by forward substitution, one
//                        warp each, then the block rows below them: X_ij = −X_ii Σ_p A_ip X_pj),
//                        then W and Ũ (bf16 scratch [B,H,NC·64,D]), both chunk-parallel.
//   delta_state_kernel   grid (B·H, Dv/64), 4 warps, the state tile [Dk × 64] in fp32 registers,
//                        sequential over the chunks: stores P_c (bf16), U = Ũ − W P_c (bf16, in
//                        place of Ũ) and the final state (fp32); two cp.async stages, so that the
//                        next chunk's W, k and Ũ load while this one is multiplied.
//   delta_output_kernel  grid B·H·NC, 4 warps of 16 query rows: O from Q, K, P_c and U.
// Values are rounded to bf16 where they become mma operands or scratch: X, diag(βγ) K, diag(β) V,
// W, Ũ, P_c, U, diag(η) K; the output's scores enter as a pair of bf16 operands hi + lo (nearly
// fp32); A, X, the state and every accumulator are fp32.
// tests/unit/test_lsm_delta_tiled_reference.cpp runs the same algorithm with the same rounding
// points on the host, and these kernels on emulated blocks.
#pragma once
#include <cstdint>

#include "kernels/cuda/lsm_delta_rule_mma_tiles.cuh"

namespace linmoe {
namespace cuda {
namespace delta_mma {

struct Problem {
  i64 B, T, H, NC;
  float scale;
  bool gated;  // log_decay given (gated_deltanet); otherwise every g is 0
};

// ---- chunk preparation: X, W, Ũ ----------------------------------------------------------------

struct PrepArgs {
  Problem p;
  Rows k, v, beta, g;  // [B,T,H,Dk], [B,T,H,Dv], [B,T,H] × 2
  u16* w;              // [B,H,NC·64,Dk]: W (rows ≥ L of a chunk not written)
  u16* u;              // [B,H,NC·64,Dv]: Ũ (forward)
  // The backward's recomputation (kWide): Ũ from r(β v) as hi + lo pairs, in fp32, and r(X).
  float* u_wide = nullptr;  // [B,H,NC·64,Dv]: Ũ
  u16* x = nullptr;         // [B,H,NC,64,64]: r(X)
};

template <int DK, int DV, bool kWide = false>
struct PrepTiles {
  static constexpr int LDK = DK + 8, LDV = DV + 8;
  static constexpr std::size_t smem =
      sizeof(u16) * (kChunk * (LDK + (kWide ? 2 : 1) * LDV + kLdC)) +
      sizeof(float) * (2 * kChunk * kLdF + 16 * kLdF + 2 * kChunk);
};

// In fp32 from the strictly lower A (af): the inverse of I + A into xf ([64][kLdF] both).
// Warp w inverts the diagonal block w (lane l < 16: column l, by forward substitution), then the
// block rows i = 1..3 in turn: T = Σ_{j≤p<i} A_ip X_pj (into tf), X_ij = −X_ii T.
__device__ __forceinline__ void invert_unit_lower(const float* af, float* xf, float* tf, int warp,
                                                  int lane) {
  const int r0 = 16 * warp;
  if (lane < 16) {
    float x[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      float s = i == lane ? 1.0f : 0.0f;
#pragma unroll
      for (int p = 0; p < i; ++p) s -= af[(r0 + i) * kLdF + r0 + p] * x[p];
      x[i] = s;
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) xf[(r0 + i) * kLdF + r0 + lane] = x[i];
  }
  for (int bi = 1; bi < kChunk / 16; ++bi) {
    const int cols = 16 * bi, row0 = 16 * bi;
    __syncthreads();  // the block rows above and the diagonal blocks are complete
    for (int idx = static_cast<int>(threadIdx.x); idx < 16 * cols; idx += kThreads) {
      const int r = idx / cols, col = idx % cols;
      float s = 0.0f;
      for (int p = col / 16 * 16; p < row0; ++p)
        s += af[(row0 + r) * kLdF + p] * xf[p * kLdF + col];
      tf[r * kLdF + col] = s;
    }
    __syncthreads();
    for (int idx = static_cast<int>(threadIdx.x); idx < 16 * cols; idx += kThreads) {
      const int r = idx / cols, col = idx % cols;
      float s = 0.0f;
      for (int p = 0; p <= r; ++p) s += xf[(row0 + r) * kLdF + row0 + p] * tf[p * kLdF + col];
      xf[(row0 + r) * kLdF + col] = -s;
    }
  }
  __syncthreads();
}

// kWide (the backward): r(X) stored, and Ũ = X (hi + lo of β v) kept in fp32.
template <int DK, int DV, bool kWide = false>
__global__ void __launch_bounds__(kThreads, 2) delta_prep_kernel(PrepArgs a) {
  using Tiles = PrepTiles<DK, DV, kWide>;
  constexpr int LDK = Tiles::LDK, LDV = Tiles::LDV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* ks = reinterpret_cast<u16*>(smem_raw);                // [64][LDK]: k, then r(β γ k)
  u16* vs = ks + kChunk * LDK;                               // [64][LDV]: v, then r(β v)
  u16* xs = vs + kChunk * LDV;                               // [64][kLdC]: r(X)
  float* af = reinterpret_cast<float*>(xs + kChunk * kLdC);  // [64][kLdF]: A
  float* xf = af + kChunk * kLdF;                            // [64][kLdF]: X
  float* tf = xf + kChunk * kLdF;                            // [16][kLdF]: solve temporaries
  float* bs = tf + 16 * kLdF;                                // [64]: cumulative log decays
  float* bt = bs + kChunk;                                   // [64]: β
  u16* vl = reinterpret_cast<u16*>(bt + kChunk);             // kWide: [64][LDV]: lo of β v

  const i64 NC = a.p.NC, bh = blockIdx.x / NC, c = blockIdx.x % NC;
  const i64 b = bh / a.p.H, h = bh % a.p.H, t0 = c * kChunk;
  const int L = chunk_len(a.p.T, c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * warp;
  stage<kChunk, DK>(ks, LDK, a.k.at(b, t0, h), a.k.st, L);
  stage<kChunk, DV>(vs, LDV, a.v.at(b, t0, h), a.v.st, L);
  if (warp == 0) chunk_cumsum(bs, a.g, a.p.gated, b, t0, h, L, lane);
  if (threadIdx.x < kChunk) {
    const int j = threadIdx.x;
    bt[j] = j < L ? bf16_to_float(*a.beta.at(b, t0 + j, h)) : 0.0f;
  }
  stage_wait();
  __syncthreads();

  // A_ij = β_i M_ij (k_i·k_j) for j < i < L (else 0), from K Kᵀ up to the warp's diagonal.
  {
    float s[kChunk / 8][4];
    zero(s);
    warp_product<false, false>(s, ks, LDK, r0, ks, LDK, 0, DK / 16, lane, 2 * warp + 2);
#pragma unroll
    for (int n = 0; n < kChunk / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + c_row(lane, e), j = 8 * n + c_col(lane, e);
        af[i * kLdF + j] = j < i && i < L ? bt[i] * decay_factor(bs[i] - bs[j]) * s[n][e] : 0.0f;
      }
    }
  }
  __syncthreads();
  invert_unit_lower(af, xf, tf, warp, lane);  // ends synchronised

  // The mma operands: r(X) (lower), r(β γ k), r(β v); K and V are no longer needed raw.
  for (int idx = static_cast<int>(threadIdx.x); idx < kChunk * kChunk; idx += kThreads) {
    const int i = idx / kChunk, j = idx % kChunk;
    xs[i * kLdC + j] = j <= i ? frag::bf16_bits(xf[i * kLdF + j]) : u16{0};
  }
  weight_rows<DK>(ks, LDK, [&](int r) { return bt[r] * decay_factor(bs[r]); });
  if constexpr (kWide) {
    split_rows<DV>(vs, vl, LDV, [&](int r) { return bt[r]; });
  } else {
    weight_rows<DV>(vs, LDV, [&](int r) { return bt[r]; });
  }
  __syncthreads();
  if constexpr (kWide) {  // r(X) for the reverse pass (R_v = Xᵀ dU)
    u16* xo = a.x + blockIdx.x * kChunk * kChunk;
    for (int idx = static_cast<int>(threadIdx.x); idx < kChunk * kChunk / 8; idx += kThreads) {
      const int i = idx / 8, j = 8 * (idx % 8);
      *reinterpret_cast<uint4*>(xo + i * kChunk + j) =
          *reinterpret_cast<const uint4*>(xs + i * kLdC + j);
    }
  }

  // W = X diag(βγ) K and Ũ = X diag(β) V, the warp's 16 rows (X is lower: k blocks ≤ warp).
  const i64 row = bh * NC * kChunk + t0;
  {
    float acc[DK / 8][4];
    zero(acc);
    warp_product<false, true>(acc, xs, kLdC, r0, ks, LDK, 0, warp + 1, lane);
    store_rows(acc, a.w + row * DK, DK, r0, L, lane);
  }
  {
    float acc[DV / 8][4];
    zero(acc);
    warp_product<false, true>(acc, xs, kLdC, r0, vs, LDV, 0, warp + 1, lane);
    if constexpr (kWide) {
      warp_product<false, true>(acc, xs, kLdC, r0, vl, LDV, 0, warp + 1, lane);
      store_rows_f32(acc, a.u_wide + row * DV, DV, r0, L, lane);
    } else {
      store_rows(acc, a.u + row * DV, DV, r0, L, lane);
    }
  }
}

// ---- the sequential state pass -----------------------------------------------------------------

struct StateArgs {
  Problem p;
  i64 Dv;
  Rows k, g;          // [B,T,H,Dk], [B,T,H]
  const u16* w;       // [B,H,NC·64,Dk]: W
  u16* u;             // [B,H,NC·64,Dv]: Ũ in, U out (rows < L)
  const float* init;  // [B,H,Dk,Dv] or null
  float* fin;         // [B,H,Dk,Dv] or null
  u16* states;        // [B,H,NC,Dk,Dv]: P_c, the state entering chunk c (bf16)
};

template <int DK>
struct StateTiles {
  static constexpr int LDK = DK + 8;
  // Per stage (two: the next chunk's tiles load during this one's products): W, k, Ũ, b.
  static constexpr std::size_t stage_elems = 2 * kChunk * LDK + kChunk * kLdC;
  static constexpr std::size_t smem =
      sizeof(u16) * (DK * kLdC + 2 * stage_elems) + sizeof(float) * 2 * kChunk;
};

// grid (B·H, Dv/64): block (bh, vt) runs the state columns 64·vt.. of head bh; warp w owns the
// state rows [w·Dk/4, (w + 1)·Dk/4) (MT tiles of 16). Two stages of tiles: chunk c + 1's W, k
// and Ũ are in flight (cp.async) while chunk c is multiplied.
template <int DK>
__global__ void __launch_bounds__(kThreads) delta_state_kernel(StateArgs a) {
  using Tiles = StateTiles<DK>;
  constexpr int LDK = Tiles::LDK, MT = DK / 64, NB = kVTile / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* ps = reinterpret_cast<u16*>(smem_raw);  // [DK][kLdC]: r(P_c)
  u16* stages = ps + DK * kLdC;                // 2 × {W [64][LDK], k [64][LDK], Ũ [64][kLdC]}
  float* bss = reinterpret_cast<float*>(stages + 2 * Tiles::stage_elems);  // 2 × [64]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, x0 = 16 * MT * warp;
  const i64 bh = blockIdx.x, b = bh / a.p.H, h = bh % a.p.H, NC = a.p.NC, Dv = a.Dv;
  const int y0 = kVTile * static_cast<int>(blockIdx.y);
  auto ws_of = [&](i64 c) { return stages + (c & 1) * Tiles::stage_elems; };  // [64][LDK]: W
  auto ks_of = [&](i64 c) { return ws_of(c) + kChunk * LDK; };  // [64][LDK]: k, then r(η k)
  auto us_of = [&](i64 c) { return ks_of(c) + kChunk * LDK; };  // [64][kLdC]: Ũ, then r(U)
  // Issues chunk c's tiles (cp.async; stage_wait and a barrier publish them); returns the
  // lane's two log decays (warp 0's are used).
  auto issue = [&](i64 c) {
    const i64 t0 = c * kChunk, row = bh * NC * kChunk + t0;
    const int L = chunk_len(a.p.T, c);
    stage<kChunk, DK>(ws_of(c), LDK, a.w + row * DK, DK, L);
    stage<kChunk, DK>(ks_of(c), LDK, a.k.at(b, t0, h), a.k.st, L);
    stage<kChunk, kVTile>(us_of(c), kLdC, a.u + row * Dv + y0, Dv, L);
    return chunk_decays(a.g, a.p.gated, b, t0, h, L, lane);
  };

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
  float2 gl = issue(0);
  for (i64 c = 0; c < NC; ++c) {
    const i64 row = bh * NC * kChunk + c * kChunk;
    const int L = chunk_len(a.p.T, c);
    u16 *ws = ws_of(c), *kes = ks_of(c), *us = us_of(c);
    float* bs = bss + (c & 1) * kChunk;
    // ps was last read before the previous chunk's second barrier, bs two chunks ago.
    if (warp == 0) cumsum_pairs(bs, gl, lane);
    // P_c leaves as bf16, to the tile and to the scratch of the output kernel.
    u16* slot = a.states + (bh * NC + c) * DK * Dv + y0;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int x = x0 + 16 * m + c_row(lane, e), y = 8 * n + c_col(lane, e);
          const u32 pair = pack_floats(acc[m][n][e], acc[m][n][e + 1]);
          *reinterpret_cast<u32*>(ps + x * kLdC + y) = pair;
          *reinterpret_cast<u32*>(slot + x * Dv + y) = pair;
        }
      }
    }
    stage_wait();  // chunk c's tiles (the only copies in flight)
    __syncthreads();
    // The other stage was last read by the previous chunk's update, before this barrier.
    if (c + 1 < NC) gl = issue(c + 1);
    const float blast = bs[L - 1];
    weight_rows<DK>(kes, LDK, [&](int r) { return r < L ? decay_factor(blast - bs[r]) : 0.0f; });
    // U = Ũ − W P_c for the warp's 16 token rows, rounded in place of Ũ and stored.
    {
      float wp[NB][4];
      zero(wp);
      warp_product<false, true>(wp, ws, LDK, 16 * warp, ps, kLdC, 0, DK / 16, lane);
      u16* out = a.u + row * Dv + y0;
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int r = 16 * warp + c_row(lane, e), y = 8 * n + c_col(lane, e);
          u32* pair = reinterpret_cast<u32*>(us + r * kLdC + y);
          const u32 val = pack_floats(bf16_to_float(frag::lo_half(*pair)) - wp[n][e],
                                      bf16_to_float(frag::hi_half(*pair)) - wp[n][e + 1]);
          *pair = val;
          if (r < L) *reinterpret_cast<u32*>(out + r * Dv + y) = val;
        }
      }
    }
    __syncthreads();  // r(η k) and r(U) complete; every warp is done with ps
    // P ← γ_{L−1} P + (diag(η) K)ᵀ U.
    const float el = decay_factor(blast);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][n][e] *= el;
      }
      warp_product<true, true>(acc[m], kes, LDK, x0 + 16 * m, us, kLdC, 0, kChunk / 16, lane);
    }
  }
  if (a.fin) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int n = 0; n < NB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const i64 at =
              (bh * DK + x0 + 16 * m + c_row(lane, e)) * Dv + y0 + 8 * n + c_col(lane, e);
          a.fin[at] = acc[m][n][e];
        }
      }
    }
  }
}

// ---- chunk outputs
// -------------------------------------------------------------------------------

struct OutputArgs {
  Problem p;
  Rows q, k, g;       // [B,T,H,Dk] × 2, [B,T,H]
  const u16* u;       // [B,H,NC·64,Dv]: U
  const u16* states;  // [B,H,NC,Dk,Dv]: P_c
  OutRows o;          // [B,T,H,Dv]
};

template <int DK, int DV>
struct OutputTiles {
  static constexpr int LDK = DK + 8, LDV = DV + 8;
  static constexpr std::size_t smem =
      sizeof(u16) * (2 * kChunk * LDK + kChunk * LDV + DK * LDV) + sizeof(float) * kChunk;
};

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) delta_output_kernel(OutputArgs a) {
  using Tiles = OutputTiles<DK, DV>;
  constexpr int LDK = Tiles::LDK, LDV = Tiles::LDV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* qs = reinterpret_cast<u16*>(smem_raw);           // [64][LDK]
  u16* ks = qs + kChunk * LDK;                          // [64][LDK]
  u16* us = ks + kChunk * LDK;                          // [64][LDV]: U
  u16* ps = us + kChunk * LDV;                          // [DK][LDV]: P_c
  float* bs = reinterpret_cast<float*>(ps + DK * LDV);  // [64]

  const i64 NC = a.p.NC, bh = blockIdx.x / NC, c = blockIdx.x % NC;
  const i64 b = bh / a.p.H, h = bh % a.p.H, t0 = c * kChunk;
  const int L = chunk_len(a.p.T, c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = 16 * warp;
  stage<kChunk, DK>(qs, LDK, a.q.at(b, t0, h), a.q.st, L);
  stage<kChunk, DK>(ks, LDK, a.k.at(b, t0, h), a.k.st, L);
  stage<kChunk, DV>(us, LDV, a.u + (bh * NC * kChunk + t0) * DV, DV, L);
  stage<DK, DV>(ps, LDV, a.states + (bh * NC + c) * DK * DV, DV, DK);
  if (warp == 0) chunk_cumsum(bs, a.g, a.p.gated, b, t0, h, L, lane);
  stage_wait();
  __syncthreads();

  // Inter-chunk part: scale·γ_i·(Q P_c)_i.
  float o[DV / 8][4];
  zero(o);
  warp_product<false, true>(o, qs, LDK, r0, ps, LDV, 0, DK / 16, lane);
  const int i_lo = r0 + lane / 4, i_hi = i_lo + 8;
  const float s_lo = a.p.scale * decay_factor(bs[i_lo]), s_hi = a.p.scale * decay_factor(bs[i_hi]);
#pragma unroll
  for (int n = 0; n < DV / 8; ++n)
    o[n][0] *= s_lo, o[n][1] *= s_lo, o[n][2] *= s_hi, o[n][3] *= s_hi;
  // Intra-chunk: the scores scale·(q_i·k_j)·M_ij (j ≤ i < L), in registers, times U.
  float s[kChunk / 8][4];
  zero(s);
  warp_product<false, false>(s, qs, LDK, r0, ks, LDK, 0, DK / 16, lane, 2 * warp + 2);
#pragma unroll
  for (int n = 0; n < kChunk / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = r0 + c_row(lane, e), j = 8 * n + c_col(lane, e);
      s[n][e] = j <= i && i < L ? s[n][e] * a.p.scale * decay_factor(bs[i] - bs[j]) : 0.0f;
    }
  }
#pragma unroll
  for (int kk = 0; kk < kChunk / 16; ++kk) {
    if (kk > warp) break;  // the scores are zero right of the diagonal block
    // The scores as two bf16 operands, hi = r(s) and lo = r(s − hi): near-fp32 scores for a
    // second mma (with correlated keys their rounding dominated the error of o).
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
    for (int n = 0; n < DV / 8; n += 2) {
      u32 bb[4];
      frag::ldsm_b2_t(bb, us, LDV, 16 * kk, 8 * n, lane);
      mma_16816(o[n], hi, bb[0], bb[1]);
      mma_16816(o[n + 1], hi, bb[2], bb[3]);
      mma_16816(o[n], lo, bb[0], bb[1]);
      mma_16816(o[n + 1], lo, bb[2], bb[3]);
    }
  }
  store_rows(o, a.o.at(b, t0, h), a.o.st, r0, L, lane);
}

}  // namespace delta_mma
}  // namespace cuda
}  // namespace linmoe
