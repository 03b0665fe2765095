// The backward chunk kernel of the tensor-core vector-decay LSM path (lsm_vector_decay_mma.cuh
// has the design): dq, dk, dv and d_log_decay of one chunk from its state and state gradient.
#pragma once
#include <cstdint>

#include "kernels/cuda/lsm_vector_decay_scores.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_vmma {

// ---- backward chunk gradients ----

struct GradArgs {
  Problem p;
  Rows q, k, v, d_o;
  const float* bc;    // [B,H,NC·64,Dk]
  const u16 *P, *G;   // [B,H,NC,Dk,Dv]: state entering / gradient leaving each chunk
  const float* base;  // [B,H,NC,nvt,Dk]
  int nvt;
  OutRows dq, dk, dv;
  u16* dg;  // [B,T,H,Dk] rows of d_log_decay or null
  i64 dg_sb, dg_st, dg_sh;
};

// The diagonal blocks of dq and dk for a warp's 16 rows r0.. and channels c0.. (8·NB), from the
// one-step factors al[s][x] = 2^(b_sx − b_{s−1,x}) ≤ 1 by Horner's rule (no ex2 in the loop, and
// only products of factors ≤ 1):
//   dq (kTransposed = false): acc[i][x] += Σ_{r0≤u≤i} D[i][u]·k[u][x]·Π_{u<s≤i} al[s][x],
//       u ascending: S ← S·al[u] + D[i][u]·k[u], frozen once u > i;
//   dk (true): acc[j][x] += Σ_{j≤u<r0+16} D[u][j]·q[u][x]·Π_{j<s≤u} al[s][x],
//       u descending: S ← S·al[u+1] + D[u][j]·q[u], frozen once u < j.
// Rows r0 + gid never see u ≥ r0 + 8 in dq, rows r0 + 8 + gid never see u < r0 + 8 in dk: those
// halves are skipped.
template <bool kTransposed, int NB>
__device__ __forceinline__ void diagonal_grads(float (&acc)[NB][4], const u16* dsc, const u16* t,
                                               int ldt, const float* al, int ldb, int r0, int c0,
                                               int lane) {
  const int gid = lane / 4;
  LSM_VD_UNROLL
  for (int n = 0; n < NB; ++n) {
    const int x = c0 + 8 * n + 2 * (lane % 4);
    float s[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};  // [row gid + 8h][column x + cc]
    LSM_VD_UNROLL  // the loads of every step can fly ahead of the Horner chain
        for (int step = 0; step < kSub; ++step) {
      const int uu = kTransposed ? kSub - 1 - step : step, u = r0 + uu;
      const u32 tp = frag::load_pair(t + u * ldt + x);
      const float t0 = bf16_to_float(frag::lo_half(tp)), t1 = bf16_to_float(frag::hi_half(tp));
      const float* a_row = al + (kTransposed ? u + 1 : u) * ldb + x;
      const float a0 = step > 0 ? a_row[0] : 1.0f, a1 = step > 0 ? a_row[1] : 1.0f;
      LSM_VD_UNROLL
      for (int h = 0; h < 2; ++h) {
        if (kTransposed ? (h == 1 && uu < 8) : (h == 0 && uu >= 8)) continue;
        const int row = r0 + gid + 8 * h;
        const bool live = kTransposed ? u >= row : u <= row;
        const float dd =
            bf16_to_float(kTransposed ? dsc[u * kScoreLd + row] : dsc[row * kScoreLd + u]);
        const float n0 = s[h][0] * a0 + dd * t0, n1 = s[h][1] * a1 + dd * t1;
        s[h][0] = live ? n0 : s[h][0];
        s[h][1] = live ? n1 : s[h][1];
      }
    }
    acc[n][0] += s[0][0], acc[n][1] += s[0][1], acc[n][2] += s[1][0], acc[n][3] += s[1][1];
  }
}

// rr[row][x] += sign·t[row][x]·acc[row][x] for the warp's rows and columns x = c0...
template <int NB>
__device__ __forceinline__ void add_products(float (&rr)[NB][4], const float (&acc)[NB][4],
                                             const u16* t, int ldt, int r0, int c0, float sign,
                                             int lane) {
  LSM_VD_UNROLL
  for (int n = 0; n < NB; ++n) {
    LSM_VD_UNROLL
    for (int e = 0; e < 4; e += 2) {
      const u32 tp = frag::load_pair(t + (r0 + c_row(lane, e)) * ldt + c0 + 8 * n + c_col(lane, e));
      rr[n][e] += sign * bf16_to_float(frag::lo_half(tp)) * acc[n][e];
      rr[n][e + 1] += sign * bf16_to_float(frag::hi_half(tp)) * acc[n][e + 1];
    }
  }
}

// Per column x = c0 + 8n + c_col: the exclusive prefix over the chunk's rows of rr (rows
// 16w + c_row of sub-chunk w), into rr, with the column totals of the earlier sub-chunks (tot:
// [kWarps][DK]; one barrier inside, reached by every thread of the block).
template <int DK, int NB>
__device__ __forceinline__ void column_prefix(float (&rr)[NB][4], float* tot, int w, int c0,
                                              int lane) {
  const int gid = lane / 4;
  LSM_VD_UNROLL
  for (int n = 0; n < NB; ++n) {
    LSM_VD_UNROLL
    for (int p = 0; p < 2; ++p) {
      float lo = rr[n][p], hi = rr[n][2 + p];
      float incl_lo = lo, incl_hi = hi;
      LSM_VD_UNROLL
      for (int off = 1; off < 8; off *= 2) {  // lanes of one column differ by 4 per row
        const float yl = __shfl_up_sync(0xffffffffu, incl_lo, 4 * off);
        const float yh = __shfl_up_sync(0xffffffffu, incl_hi, 4 * off);
        if (gid >= off) incl_lo += yl, incl_hi += yh;
      }
      float sum_lo = lo, sum_hi = hi;
      LSM_VD_UNROLL
      for (int m = 4; m < 32; m *= 2) {
        sum_lo += __shfl_xor_sync(0xffffffffu, sum_lo, m);
        sum_hi += __shfl_xor_sync(0xffffffffu, sum_hi, m);
      }
      rr[n][p] = incl_lo - lo;
      rr[n][2 + p] = sum_lo + incl_hi - hi;
      if (gid == 0) tot[w * DK + c0 + 8 * n + 2 * (lane % 4) + p] = sum_lo + sum_hi;
    }
  }
  __syncthreads();
  LSM_VD_UNROLL
  for (int n = 0; n < NB; ++n) {
    LSM_VD_UNROLL
    for (int p = 0; p < 2; ++p) {
      float before = 0.0f;
      for (int v = 0; v < w; ++v) before += tot[v * DK + c0 + 8 * n + 2 * (lane % 4) + p];
      rr[n][p] += before, rr[n][2 + p] += before;
    }
  }
}

template <int DK, int DV>
__global__ void __launch_bounds__(kChunkThreads, ChunkTiles<DK, DV>::grad_blocks)
    grad_kernel(GradArgs a) {
  using Tiles = ChunkTiles<DK, DV>;
  constexpr int NT = Tiles::kThreads, LDK = Tiles::LDK, LDV = Tiles::LDV, LDB = Tiles::LDB;
  constexpr int LDS = kScoreLd;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* qs = reinterpret_cast<u16*>(smem_raw);                // [64][LDK]
  u16* ks = qs + kChunk * LDK;                               // [64][LDK]
  u16* vs = ks + kChunk * LDK;                               // [64][LDV]
  u16* dos = vs + kChunk * LDV;                              // [64][LDV]
  u16* ps = dos + kChunk * LDV;                              // [DK][LDV]: P_c
  u16* gs = ps + DK * LDV;                                   // [DK][LDV]: G_c
  u16* dsc = gs + DK * LDV;                                  // [64][LDS]: D
  u16* asc = dsc + kChunk * LDS;                             // [64][LDS]: A
  float* bs = reinterpret_cast<float*>(asc + kChunk * LDS);  // [64][LDB]
  float* tot = bs + kChunk * LDB;                            // [kWarps][DK]
  float* base = tot + kWarps * DK;                           // [DK]
  float* al = base + DK;  // [64][LDB]: one-step decays 2^(b_u − b_{u−1})

  const i64 NC = a.p.NC, bh = blockIdx.x / NC, c = blockIdx.x % NC;
  const i64 b = bh / a.p.H, h = bh % a.p.H, t0 = c * kChunk;
  const int L = chunk_len(a.p.T, c);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  // Sub-chunk w's rows r0..; half of the output columns: x0.. of Dk, y0.. of Dv.
  const int w = warp % kWarps, half = warp / kWarps, r0 = kSub * w;
  const int x0 = half * (DK / 2), y0 = half * (DV / 2);
  const float scale = a.p.scale;
  const i64 slot = (bh * NC + c) * DK * DV;
  stage_bf16<kChunk, DK, NT>(qs, LDK, a.q.at(b, t0, h), a.q.st, L);
  stage_bf16<kChunk, DK, NT>(ks, LDK, a.k.at(b, t0, h), a.k.st, L);
  stage_bf16<kChunk, DV, NT>(vs, LDV, a.v.at(b, t0, h), a.v.st, L);
  stage_bf16<kChunk, DV, NT>(dos, LDV, a.d_o.at(b, t0, h), a.d_o.st, L);
  stage_bf16<DK, DV, NT>(ps, LDV, a.P + slot, DV, DK);
  stage_bf16<DK, DV, NT>(gs, LDV, a.G + slot, DV, DK);
  stage_f32<kChunk, DK, NT>(bs, LDB, a.bc + a.p.brow(bh, c) * DK, DK);
  for (int x = static_cast<int>(threadIdx.x); x < DK; x += NT) {
    float sum = 0.0f;
    for (int vt = 0; vt < a.nvt; ++vt) sum += a.base[((bh * NC + c) * a.nvt + vt) * DK + x];
    base[x] = sum;
  }
  frag::cp_async_wait_all();
  __syncthreads();

  one_step_decays<DK, NT>(al, bs, LDB);
  __syncthreads();
  if (half == 0) {
    plain_scores<DV>(dos, vs, LDV, scale, w, L, dsc, lane);
    offdiagonal_scores<DK>(qs, ks, LDK, bs, LDB, scale, w, L, asc, lane);
  } else {
    diagonal_scores<DK>(qs, ks, LDK, al, LDB, scale, kSub * w, L, asc, lane);
  }
  __syncthreads();  // every warp reads score rows of others
  const float* bl = bs + (L - 1) * LDB;

  // dv (rows j, columns y0..) = (K ⊙ F) G_c + Aᵀ dO.
  {
    float acc[DV / 16][4];
    zero(acc);
    for (int kk = 0; kk < DK / 16; ++kk) {
      u32 af[4];
      decayed_a(af, ks, LDK, r0, 16 * kk, lane,
                [&](int j, int x) { return decay2(bl[x] - bs[j * LDB + x]); });
      LSM_VD_UNROLL
      for (int n = 0; n < DV / 16; n += 2) {
        u32 bf[4];
        frag::ldsm_b2_t(bf, gs, LDV, 16 * kk, y0 + 8 * n, lane);
        mma_16816(acc[n], af, bf[0], bf[1]);
        mma_16816(acc[n + 1], af, bf[2], bf[3]);
      }
    }
    warp_product<true, true>(acc, asc, LDS, r0, dos, LDV, y0, w, kWarps, lane);
    store_rows(acc, a.dv.at(b, t0, h) + y0, a.dv.st, r0, L, lane);
  }

  float rr[DK / 16][4];  // q ⊙ dq − k ⊙ dk, fp32, for the decay gradient
  zero(rr);
  // dq (rows i, columns x0..) = [scale 2^b_n ⊙ dO P_cᵀ + D_{<n} (K ⊙ 2^(b_n − b))] ⊙ 2^(b_i − b_n)
  // + diagonal.
  {
    const float* bn = bs + row_ref(w) * LDB;
    float acc[DK / 16][4];
    zero(acc);
    warp_product<false, false>(acc, dos, LDV, r0, ps, LDV, x0, 0, DV / 16, lane);
    scale_each(acc, r0, x0, lane, [&](int, int x) { return scale * decay2(bn[x]); });
    for (int kk = 0; kk < w; ++kk) {
      u32 af[4];
      frag::ldsm_a(af, dsc, LDS, r0, 16 * kk, lane);
      LSM_VD_UNROLL
      for (int n = 0; n < DK / 16; ++n) {
        u32 bf[2];
        decayed_b_t(bf, ks, LDK, 16 * kk, x0 + 8 * n, lane,
                    [&](int j, int x) { return decay2(bn[x] - bs[j * LDB + x]); });
        mma_16816(acc[n], af, bf);
      }
    }
    scale_each(acc, r0, x0, lane, [&](int i, int x) { return decay2(bs[i * LDB + x] - bn[x]); });
    diagonal_grads<false>(acc, dsc, ks, LDK, al, LDB, r0, x0, lane);
    store_rows(acc, a.dq.at(b, t0, h) + x0, a.dq.st, r0, L, lane);
    add_products(rr, acc, qs, LDK, r0, x0, 1.0f, lane);
  }
  // dk (rows j) = [2^(b_L − b_r) ⊙ V G_cᵀ + D_{>}ᵀ (Q ⊙ 2^(b − b_r))] ⊙ 2^(b_r − b_j) + diagonal.
  {
    const float* br = bs + col_ref(w) * LDB;
    float acc[DK / 16][4];
    zero(acc);
    warp_product<false, false>(acc, vs, LDV, r0, gs, LDV, x0, 0, DV / 16, lane);
    scale_each(acc, r0, x0, lane, [&](int, int x) { return decay2(bl[x] - br[x]); });
    for (int kk = w + 1; kk < kWarps; ++kk) {
      u32 af[4];
      frag::ldsm_a_t(af, dsc, LDS, r0, 16 * kk, lane);
      LSM_VD_UNROLL
      for (int n = 0; n < DK / 16; ++n) {
        u32 bf[2];
        decayed_b_t(bf, qs, LDK, 16 * kk, x0 + 8 * n, lane,
                    [&](int i, int x) { return decay2(bs[i * LDB + x] - br[x]); });
        mma_16816(acc[n], af, bf);
      }
    }
    scale_each(acc, r0, x0, lane, [&](int j, int x) { return decay2(br[x] - bs[j * LDB + x]); });
    diagonal_grads<true>(acc, dsc, qs, LDK, al, LDB, r0, x0, lane);
    store_rows(acc, a.dk.at(b, t0, h) + x0, a.dk.st, r0, L, lane);
    add_products(rr, acc, ks, LDK, r0, x0, -1.0f, lane);
  }
  if (a.dg == nullptr) return;
  // dg_u = base − Σ_{v<u} (q_v ⊙ dq_v − k_v ⊙ dk_v), per channel.
  column_prefix<DK>(rr, tot, w, x0, lane);
  u16* dg = a.dg + b * a.dg_sb + t0 * a.dg_st + h * a.dg_sh;
  LSM_VD_UNROLL
  for (int n = 0; n < DK / 16; ++n) {
    LSM_VD_UNROLL
    for (int e = 0; e < 4; e += 2) {
      const int row = r0 + c_row(lane, e), x = x0 + 8 * n + c_col(lane, e);
      if (row < L) {
        *reinterpret_cast<u32*>(dg + row * a.dg_st + x) =
            pack_floats(base[x] - rr[n][e], base[x + 1] - rr[n][e + 1]);
      }
    }
  }
}

}  // namespace lsm_vmma
}  // namespace cuda
}  // namespace linmoe
