// The sequential state passes of the tensor-core vector-decay LSM path
// (lsm_vector_decay_mma.cuh has the design): forward S ← e_L ⊙ S + (K ⊙ F)ᵀ V, reverse
// G ← e_L ⊙ G + scale (Q ⊙ E)ᵀ dO with the decay gradient's base term.
#pragma once
#include <cstdint>

#include "kernels/cuda/lsm_vector_decay_scores.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_vmma {

// ---- state passes ----

struct StateArgs {
  Problem p;
  int Dv;
  Rows x;           // [B,T,H,Dk]: k (forward) or q (reverse)
  Rows y;           // [B,T,H,Dv]: v or dO
  const float* bc;  // [B,H,NC·64,Dk]
  bool reverse;  // false: S ← e_L S + (K ⊙ F)ᵀ V; true: G ← e_L G + scale (Q ⊙ E)ᵀ dO
  const float* init;  // [B,H,Dk,Dv] or null
  float* fin;         // [B,H,Dk,Dv] or null
  u16* states;        // [B,H,NC,Dk,Dv]: the state before each chunk's update (bf16)
  const u16* P;       // reverse only: the forward's P for the base term
  float* base;        // reverse only: [B,H,NC,Dv/64,Dk]: Σ_y over this block's columns
};

// A block owns a kXTile × kVTile tile of the state: 4 warps of 16 rows.
struct StateTiles {
  static constexpr int kThreads = 2 * kXTile;
  static constexpr int LDX = kXTile + 8, LDY = kVTile + 8, LDB = kXTile + 4;
  static constexpr std::size_t buffer =
      sizeof(u16) * kChunk * (LDX + LDY) + sizeof(float) * kChunk * LDB;
  static constexpr std::size_t smem = 2 * buffer;
};

// Grid (B·H, Dv/64, DK/64): state rows xb.. and columns y0.. of head bh.
template <int DK>
__global__ void __launch_bounds__(StateTiles::kThreads) state_kernel(StateArgs a) {
  using Tiles = StateTiles;
  constexpr int NT = Tiles::kThreads, LDX = Tiles::LDX, LDY = Tiles::LDY, LDB = Tiles::LDB;
  constexpr int NB = kVTile / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int vt = static_cast<int>(blockIdx.y), y0 = kVTile * vt, xb = kXTile * blockIdx.z;
  const int x0 = xb + 16 * warp, xl = 16 * warp;  // the warp's rows: global, within the tiles
  const i64 bh = blockIdx.x, b = bh / a.p.H, h = bh % a.p.H, NC = a.p.NC;
  auto xs_of = [&](int buf) {  // [64][LDX]
    return reinterpret_cast<u16*>(smem_raw + buf * Tiles::buffer);
  };
  auto ys_of = [&](int buf) { return xs_of(buf) + kChunk * LDX; };  // [64][LDY]
  auto bs_of = [&](int buf) {                                       // [64][LDB]
    return reinterpret_cast<float*>(ys_of(buf) + kChunk * LDY);
  };
  auto stage = [&](i64 c, int buf) {
    const i64 t0 = c * kChunk;
    const int L = chunk_len(a.p.T, c);
    stage_bf16<kChunk, kXTile, NT>(xs_of(buf), LDX, a.x.at(b, t0, h) + xb, a.x.st, L);
    stage_bf16<kChunk, kVTile, NT>(ys_of(buf), LDY, a.y.at(b, t0, h) + y0, a.y.st, L);
    stage_f32<kChunk, kXTile, NT>(bs_of(buf), LDB, a.bc + a.p.brow(bh, c) * DK + xb, DK);
  };

  float acc[NB][4];  // state rows x0 + c_row, columns y0 + 8n + c_col
  LSM_VD_UNROLL
  for (int n = 0; n < NB; ++n) {
    LSM_VD_UNROLL
    for (int e = 0; e < 4; ++e) {
      const i64 at = (bh * DK + x0 + c_row(lane, e)) * a.Dv + y0 + 8 * n + c_col(lane, e);
      acc[n][e] = a.init ? a.init[at] : 0.0f;
    }
  }
  stage(a.reverse ? NC - 1 : 0, 0);
  for (i64 s = 0; s < NC; ++s) {
    const i64 c = a.reverse ? NC - 1 - s : s;
    const int L = chunk_len(a.p.T, c), buf = static_cast<int>(s % 2);
    frag::cp_async_wait_all();
    __syncthreads();  // this chunk's tiles are in; everyone is done with the other buffer
    if (s + 1 < NC) stage(a.reverse ? c - 1 : c + 1, buf ^ 1);
    const u16* xs = xs_of(buf);
    const u16* ys = ys_of(buf);
    const float* bs = bs_of(buf);
    const float* bl = bs + (L - 1) * LDB;

    const i64 slot = (bh * NC + c) * DK * a.Dv + y0;
    LSM_VD_UNROLL
    for (int n = 0; n < NB; ++n) {
      LSM_VD_UNROLL
      for (int e = 0; e < 4; e += 2) {
        const i64 at = slot + (x0 + c_row(lane, e)) * a.Dv + 8 * n + c_col(lane, e);
        *reinterpret_cast<u32*>(a.states + at) = pack_floats(acc[n][e], acc[n][e + 1]);
      }
    }
    // Reverse: the forward's P_c for the base term, fetched now so that the loads fly during the
    // products.
    u32 pc[NB][2];
    LSM_VD_UNROLL
    for (int n = 0; n < NB; ++n) {
      LSM_VD_UNROLL
      for (int e = 0; e < 4; e += 2) {
        const i64 at = slot + (x0 + c_row(lane, e)) * a.Dv + 8 * n + c_col(lane, e);
        pc[n][e / 2] = a.P ? frag::load_pair(a.P + at) : 0u;
      }
    }
    const float e_lo = decay2(bl[xl + lane / 4]), e_hi = decay2(bl[xl + lane / 4 + 8]);
    LSM_VD_UNROLL
    for (int n = 0; n < NB; ++n) {
      acc[n][0] *= e_lo, acc[n][1] *= e_lo, acc[n][2] *= e_hi, acc[n][3] *= e_hi;
    }
    // acc[x][y] += Σ_j X[j][x]·Y[j][y] with X the decayed x rows: A = Xᵀ, B = Y.
    const float scale = a.p.scale;
    for (int kk = 0; kk < kChunk / 16; ++kk) {
      u32 af[4];
      if (a.reverse) {
        decayed_a_t(af, xs, LDX, xl, 16 * kk, lane,
                    [&](int j, int x) { return scale * decay2(bs[j * LDB + x]); });
      } else {
        decayed_a_t(af, xs, LDX, xl, 16 * kk, lane,
                    [&](int j, int x) { return decay2(bl[x] - bs[j * LDB + x]); });
      }
      LSM_VD_UNROLL
      for (int n = 0; n < NB; n += 2) {
        u32 bf[4];
        frag::ldsm_b2_t(bf, ys, LDY, 16 * kk, 8 * n, lane);
        mma_16816(acc[n], af, bf[0], bf[1]);
        mma_16816(acc[n + 1], af, bf[2], bf[3]);
      }
    }
    if (a.P) {  // base[x] over this block's columns: Σ_y G_entering[x][y]·P_c[x][y]
      float lo = 0.0f, hi = 0.0f;
      LSM_VD_UNROLL
      for (int n = 0; n < NB; ++n) {
        LSM_VD_UNROLL
        for (int e = 0; e < 4; e += 2) {
          const u32 pp = pc[n][e / 2];
          const float part = acc[n][e] * bf16_to_float(frag::lo_half(pp)) +
                             acc[n][e + 1] * bf16_to_float(frag::hi_half(pp));
          if (e == 0) {
            lo += part;
          } else {
            hi += part;
          }
        }
      }
      lo = quad_sum(lo), hi = quad_sum(hi);
      if (lane % 4 == 0) {
        float* out = a.base + ((bh * NC + c) * gridDim.y + vt) * DK + x0 + lane / 4;
        out[0] = lo, out[8] = hi;
      }
    }
  }
  if (a.fin) {
    LSM_VD_UNROLL
    for (int n = 0; n < NB; ++n) {
      LSM_VD_UNROLL
      for (int e = 0; e < 4; ++e) {
        a.fin[(bh * DK + x0 + c_row(lane, e)) * a.Dv + y0 + 8 * n + c_col(lane, e)] = acc[n][e];
      }
    }
  }
}

}  // namespace lsm_vmma
}  // namespace cuda
}  // namespace linmoe
