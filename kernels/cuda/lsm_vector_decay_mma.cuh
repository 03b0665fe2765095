// The bf16 tensor-core path of the vector-decay LSM core (MODEL.md section 3: gla, hgrn2; contract
// in kernels/ops.h; launched from lsm_vector_decay.cu): mma.sync.m16n8k16, bf16 operands, fp32
// accumulation, chunks of 64 tokens in 4 sub-chunks of 16, Dk, Dv ∈ {64, 128}. The chunk kernels
// run 8 warps: two per sub-chunk's 16 rows, each with half of the output columns.
// The mathematics is lsm_decay_chunk.cuh's (its header has the formulas). With b the cumulative
// log2 decay inside a chunk (fp32, per token and key channel) every decay factor is
// 2^(b_late − b_early) ≤ 1 (lsm_vector_decay_tiles.cuh):
//   A_ij = scale Σ_x q_ix k_jx 2^(b_ix − b_jx) (j ≤ i). Between sub-chunks (j < n = 16w ≤ i) this
//          is scale·(q_i ⊙ 2^(b_i − b_n))·(k_j ⊙ 2^(b_n − b_j)): an mma with operands decayed to
//          the sub-chunk's first row. Inside a sub-chunk (the 16 × 16 diagonal blocks) no reference
//          row keeps both factors ≤ 1, so those 136 scores are summed over x by the warp's lanes
//          (the secondary, SIMT path) as products of one-step decays 2^(b_u − b_{u−1}) ≤ 1,
//          carried down the rows: no ex2 per term.
// Launches (every kernel also runs on the emulated block of tests/unit/cuda_block_emulation.h):
//   cumsum_kernel   b [B,H,NC·64,Dk] fp32 (rows past T repeat the chunk's last b).
//   state_kernel    grid (B·H, Dv/64, Dk/64), 4 warps (a 64 × 64 tile of the state; its rows
//                   are independent), sequential over the chunks, the next chunk's tiles in
//                   flight (cp.async, double-buffered) during this one's products.
//                   Forward: S ← e_L ⊙ S + (K ⊙ F)ᵀ V (F_jx = 2^(b_Lx − b_jx)); writes the state
//                   entering every chunk P_c (bf16) and the final state. Reverse (backward):
//                   G ← e_L ⊙ G + scale (Q ⊙ E)ᵀ dO (E = 2^b); writes G_c (bf16, the gradient of
//                   the state leaving chunk c), d_initial_state, and the decay gradient's base
//                   Σ_y P_c ⊙ G_entering (= e_L ⊙ rowsum(G_c ⊙ P_c) + Σ_i q_i ⊙ scale e_i ⊙ (P
//                   do_i)).
//   output_kernel   grid B·H·NC, 8 warps: O = scale (Q ⊙ E) P_c + A V (of each pair of warps
//                   one forms the sub-chunk's off-diagonal score blocks, the other its diagonal
//                   block).
//   grad_kernel     grid B·H·NC, 8 warps (of each pair one forms D's rows and A's off-diagonal
//                   blocks, the other A's diagonal block), with D = scale·dO Vᵀ (causal):
//                   dv = (K ⊙ F) G_c + Aᵀ dO;
//                   dq = [scale 2^b_n ⊙ dO P_cᵀ + D_{<n} (K ⊙ 2^(b_n − b))] ⊙ 2^(b − b_n) + diag;
//                   dk = [2^(b_L − b_r) ⊙ V G_cᵀ + D_{>}ᵀ (Q ⊙ 2^(b − b_r))] ⊙ 2^(b_r − b) + diag
//                   (r = col_ref(w): the first row after the warp's sub-chunk); the diagonal blocks
//                   by Horner's rule over the one-step decays 2^(b_u − b_{u−1}) (a tile formed
//                   once per chunk; no ex2 per term); dg_u = base − Σ_{v<u} (q_v ⊙ dq_v −
//                   k_v ⊙ dk_v), the prefix per channel over the chunk by shuffles and one
//                   barrier.
// Shared memory per block (Dk = Dv = 128 / 64): state 70 KiB (two buffers), output
// 160 / 79 KiB, grad 222.5 / 107 KiB (two grad blocks per SM at 64). Registers (ptxas, sm_90):
// grad 255 with 20 bytes of spill at 128/128, 236 at 128/64, ≤ 142 at Dk = 64 (126 at 64/64);
// output ≤ 116; state 166.
// Values are rounded to bf16 where they become mma operands (the decayed q and k, the scores, the
// chunk states) and at the outputs; the rest is fp32. Tiles are padded by 8 bf16 (4 floats) per
// row against bank conflicts; plain operands come through ldmatrix. The host test
// tests/unit/test_lsm_vector_tiled_reference.cpp transcribes the algorithm with the same rounding
// points and runs these kernels on the emulated block.
#pragma once
#include <cstdint>

#include "kernels/cuda/lsm_vector_decay_grad.cuh"
#include "kernels/cuda/lsm_vector_decay_scores.cuh"
#include "kernels/cuda/lsm_vector_decay_state.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_vmma {

// ---- forward output ----

struct OutputArgs {
  Problem p;
  Rows q, k, v;       // [B,T,H,Dk] ×2, [B,T,H,Dv]
  const float* bc;    // [B,H,NC·64,Dk]
  const u16* states;  // [B,H,NC,Dk,Dv]: P_c
  OutRows o;          // [B,T,H,Dv]
};

template <int DK, int DV>
__global__ void __launch_bounds__(kChunkThreads, 1) output_kernel(OutputArgs a) {
  using Tiles = ChunkTiles<DK, DV>;
  constexpr int NT = Tiles::kThreads, LDK = Tiles::LDK, LDV = Tiles::LDV, LDB = Tiles::LDB;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* qs = reinterpret_cast<u16*>(smem_raw);            // [64][LDK]
  u16* ks = qs + kChunk * LDK;                           // [64][LDK]
  u16* vs = ks + kChunk * LDK;                           // [64][LDV]
  u16* ps = vs + kChunk * LDV;                           // [DK][LDV]: P_c
  float* bs = reinterpret_cast<float*>(ps + DK * LDV);   // [64][LDB]
  float* al = bs + kChunk * LDB;                         // [64][LDB]: 2^(b_u − b_{u−1})
  u16* asc = reinterpret_cast<u16*>(al + kChunk * LDB);  // [64][kScoreLd]

  const i64 NC = a.p.NC, bh = blockIdx.x / NC, c = blockIdx.x % NC;
  const i64 b = bh / a.p.H, h = bh % a.p.H, t0 = c * kChunk;
  const int L = chunk_len(a.p.T, c);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  // Sub-chunk w's rows r0.., output columns y0.. (half of Dv).
  const int w = warp % kWarps, half = warp / kWarps, r0 = kSub * w, y0 = half * (DV / 2);
  stage_bf16<kChunk, DK, NT>(qs, LDK, a.q.at(b, t0, h), a.q.st, L);
  stage_bf16<kChunk, DK, NT>(ks, LDK, a.k.at(b, t0, h), a.k.st, L);
  stage_bf16<kChunk, DV, NT>(vs, LDV, a.v.at(b, t0, h), a.v.st, L);
  stage_bf16<DK, DV, NT>(ps, LDV, a.states + (bh * NC + c) * DK * DV, DV, DK);
  stage_f32<kChunk, DK, NT>(bs, LDB, a.bc + a.p.brow(bh, c) * DK, DK);
  frag::cp_async_wait_all();
  __syncthreads();

  one_step_decays<DK, NT>(al, bs, LDB);
  __syncthreads();
  // Inter-chunk part: scale·(Q ⊙ 2^b) P_c (while the other half forms the scores).
  float o[DV / 16][4];
  zero(o);
  for (int kk = 0; kk < DK / 16; ++kk) {
    u32 af[4];
    decayed_a(af, qs, LDK, r0, 16 * kk, lane,
              [&](int i, int x) { return decay2(bs[i * LDB + x]); });
    LSM_VD_UNROLL
    for (int n = 0; n < DV / 16; n += 2) {
      u32 bf[4];
      frag::ldsm_b2_t(bf, ps, LDV, 16 * kk, y0 + 8 * n, lane);
      mma_16816(o[n], af, bf[0], bf[1]);
      mma_16816(o[n + 1], af, bf[2], bf[3]);
    }
  }
  const float scale = a.p.scale;
  scale_each(o, r0, y0, lane, [&](int, int) { return scale; });
  if (half == 0) {
    offdiagonal_scores<DK>(qs, ks, LDK, bs, LDB, scale, w, L, asc, lane);
  } else {
    diagonal_scores<DK>(qs, ks, LDK, al, LDB, scale, kSub * w, L, asc, lane);
  }
  __syncthreads();  // both halves read the scores
  // Intra-chunk part: A V over the key blocks up to the diagonal.
  warp_product<false, true>(o, asc, kScoreLd, r0, vs, LDV, y0, 0, w + 1, lane);
  store_rows(o, a.o.at(b, t0, h) + y0, a.o.st, r0, L, lane);
}

}  // namespace lsm_vmma
}  // namespace cuda
}  // namespace linmoe
