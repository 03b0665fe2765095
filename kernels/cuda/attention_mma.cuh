// The bf16 tensor-core path of causal GQA attention (included by kernels/cuda/attention.cu only):
// FlashAttention-2 on mma.sync.m16n8k16 (bf16 operands, fp32 accumulation), ldmatrix from
// padded shared-memory tiles, cp.async double buffering. Head dims up to 128 in multiples of 8
// (padded with zeros to 32, 64 or 128); attention.cu sends the rest to the SIMT path.
//
// Every kernel runs 4 warps (128 threads); each warp owns 16 rows of the block's tile, so the
// softmax statistics of a row live in the 4 lanes of one quad (lane / 4 picks the row, lane % 4
// the column pair, as in the mma accumulator layout).
//   forward:  block = 64 queries of one (b, h); sweeps 64-key tiles up to the diagonal.
//   dK/dV:    block = 64 keys of one (b, kv head); sweeps the query heads of the group and their
//             query tiles (64 rows, 32 for head dim 128) from the diagonal on; dK, dV in registers.
//   dQ:       block = 64 queries of one (b, h); sweeps key tiles (64, 32 for head dim 128).
// D_i = Σ_x dO_ix·O_ix is computed first by its own kernel and parked, as one fp32 value, in the
// first 4 bytes of row (b, i, h) of dq: dq is an output, each of its rows is read back only by
// the dK/dV kernel and by the dQ block that later overwrites that row, so the op needs no
// scratch memory and stays deterministic.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/tensor.h"
#include "kernels/cuda/cuda_check.h"

namespace linmoe {
namespace cuda {
namespace mma {

using i64 = std::int64_t;
using bf = __nv_bfloat16;

struct Problem {
  i64 B, Tq, Tk, Hq, Hkv, d, q_offset;
  double scale;
};

constexpr int kThreads = 128;  // 4 warps
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Head dims this path takes (16-byte rows of whole bf16 octets, at most 128).
inline bool supports(i64 d) {
  return d >= 8 && d <= 128 && d % 8 == 0;
}

// ---- PTX wrappers -------------------------------------------------------------------------------
__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global → shared, asynchronously; zero-fills the destination when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const bf* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const bf* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
// c += a · b for one 16×8×16 step (a: 16×16 row-major fragment, b: 16×8 column fragment).
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4],
                                          std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two floats as a bf16 pair (lo in the low half: the lower column of a fragment).
__device__ __forceinline__ std::uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

// ---- fragment loads (ldmatrix address patterns) -------------------------------------------------
// A operand (16 rows × 16 of k) from a row-major tile: rows row0.., k columns k0...
__device__ __forceinline__ void load_a(std::uint32_t (&a)[4], const bf* tile, int ld, int row0,
                                       int k0, int lane) {
  ldmatrix_x4(a, tile + (row0 + lane % 16) * ld + k0 + 8 * (lane / 16));
}
// B operands of two 8-column blocks n0.., n0+8.. for k0..k0+15 when the tile is stored [n][k]
// (B = tileᵀ, e.g. K for S = Q·Kᵀ): b[0], b[1] for block n0; b[2], b[3] for block n0 + 8.
__device__ __forceinline__ void load_b_nk(std::uint32_t (&b)[4], const bf* tile, int ld, int n0,
                                          int k0, int lane) {
  const int m = lane / 8, r = lane % 8;
  ldmatrix_x4(b, tile + (n0 + r + 8 * (m / 2)) * ld + k0 + 8 * (m % 2));
}
// The same when the tile is stored [k][n] (B = tile, e.g. V for O = P·V).
__device__ __forceinline__ void load_b_kn(std::uint32_t (&b)[4], const bf* tile, int ld, int k0,
                                          int n0, int lane) {
  const int m = lane / 8, r = lane % 8;
  ldmatrix_x4_trans(b, tile + (k0 + r + 8 * (m % 2)) * ld + n0 + 8 * (m / 2));
}
// The A operand for k block kk (16 columns) of a 16×N fp32 accumulator, rounded to bf16: the
// accumulator layout of two 8-column blocks is the A fragment layout.
template <int NB>
__device__ __forceinline__ void acc_to_a(std::uint32_t (&a)[4], const float (&c)[NB][4], int kk) {
  a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// ROWS rows of d bf16 (rows `step` elements apart) into a [ROWS][D + 8] tile, asynchronously;
// rows ≥ n and columns ≥ d are zero-filled.
template <int ROWS, int D>
__device__ __forceinline__ void load_tile_async(bf* dst, const bf* src, i64 step, int n, int d) {
  constexpr int chunks = D / 8, ld = D + 8;
  for (int idx = threadIdx.x; idx < ROWS * chunks; idx += kThreads) {
    const int r = idx / chunks, c = idx % chunks;
    const bool ok = r < n && c * 8 < d;
    cp_async16(dst + r * ld + c * 8, ok ? src + r * step + c * 8 : src, ok);
  }
}

template <class T>
__device__ __forceinline__ void zero_acc(T& c) {
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(T) / sizeof(float[4])); ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) c[i][e] = 0.f;
  }
}

__device__ __forceinline__ i64 min64(i64 a, i64 b) {
  return a < b ? a : b;
}

// ---- forward ------------------------------------------------------------------------------------
template <int D>
struct ForwardTiles {
  static constexpr int BQ = 64, BK = 64, LD = D + 8;
  static constexpr std::size_t smem = sizeof(bf) * static_cast<std::size_t>((BQ + 4 * BK) * LD);
};

template <int D>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const bf* __restrict__ q, const bf* __restrict__ k, const bf* __restrict__ v,
                   bf* __restrict__ o, float* __restrict__ lse, Problem p) {
  using Tiles = ForwardTiles<D>;
  constexpr int BQ = Tiles::BQ, BK = Tiles::BK, LD = Tiles::LD;
  constexpr int NB = BK / 8, ND = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf* qs = reinterpret_cast<bf*>(smem_raw);  // [BQ][LD]
  bf* ks = qs + BQ * LD;                     // [2][BK][LD]
  bf* vs = ks + 2 * BK * LD;                 // [2][BK][LD]

  const i64 nqb = (p.Tq + BQ - 1) / BQ, bh_count = p.B * p.Hq;
  const i64 qb = nqb - 1 - static_cast<i64>(blockIdx.x) / bh_count;  // heavy tiles first
  const i64 bh = static_cast<i64>(blockIdx.x) % bh_count, b = bh / p.Hq, h = bh % p.Hq;
  const i64 hk = h / (p.Hq / p.Hkv), i0 = qb * BQ;
  const int nq = static_cast<int>(min64(BQ, p.Tq - i0)), d = static_cast<int>(p.d);
  const i64 q_step = p.Hq * p.d, kv_step = p.Hkv * p.d;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bf* kbase = k + (b * p.Tk * p.Hkv + hk) * p.d;  // key 0 of (b, hk)
  const bf* vbase = v + (b * p.Tk * p.Hkv + hk) * p.d;

  const i64 kend = p.q_offset + i0 + nq;  // keys seen by the tile's last query (≤ Tk)
  const int ntiles = static_cast<int>((kend + BK - 1) / BK);
  load_tile_async<BQ, D>(qs, q + ((b * p.Tq + i0) * p.Hq + h) * p.d, q_step, nq, d);
  load_tile_async<BK, D>(ks, kbase, kv_step, static_cast<int>(min64(BK, kend)), d);
  load_tile_async<BK, D>(vs, vbase, kv_step, static_cast<int>(min64(BK, kend)), d);
  cp_async_commit();

  const float sl2 = static_cast<float>(p.scale) * kLog2e;  // logits in log2 units
  const i64 pos0 = p.q_offset + i0 + warp * 16 + g;        // position of this lane's row g
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float acc[ND][4];
  zero_acc(acc);
  std::uint32_t qf[D / 16][4];

  for (int tile = 0; tile < ntiles; ++tile) {
    if (tile + 1 < ntiles) {  // prefetch the next key tile into the other stage
      const i64 jn = static_cast<i64>(tile + 1) * BK;
      const int nn = static_cast<int>(min64(BK, kend - jn));
      const int st = (tile + 1) & 1;
      load_tile_async<BK, D>(ks + st * BK * LD, kbase + jn * kv_step, kv_step, nn, d);
      load_tile_async<BK, D>(vs + st * BK * LD, vbase + jn * kv_step, kv_step, nn, d);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) load_a(qf[kk], qs, LD, warp * 16, kk * 16, lane);
    }
    const bf* kt = ks + (tile & 1) * BK * LD;
    const bf* vt = vs + (tile & 1) * BK * LD;
    const i64 j0 = static_cast<i64>(tile) * BK;

    float s[NB][4];
    zero_acc(s);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < NB; nb += 2) {
        std::uint32_t bk[4];
        load_b_nk(bk, kt, LD, nb * 8, kk * 16, lane);
        mma_16816(s[nb], qf[kk], bk[0], bk[1]);
        mma_16816(s[nb + 1], qf[kk], bk[2], bk[3]);
      }
    }
    // Causal mask (only tiles that reach past the warp's first row), then the online softmax.
    const bool masked = j0 + BK - 1 > p.q_offset + i0 + warp * 16;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nb][e] * sl2;
        if (masked && j0 + nb * 8 + 2 * t + (e & 1) > pos0 + 8 * (e >> 1)) x = -INFINITY;
        s[nb][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m[r], mx[r]);  // finite: key 0 is visible to every row
      alpha[r] = exp2f(m[r] - m_new);
      m[r] = m_new;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = exp2f(s[nb][e] - m[e >> 1]);
        s[nb][e] = pv;
        l[e >> 1] += pv;  // this lane's part of the row sum; the quad is summed at the end
      }
    }
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      acc[nd][0] *= alpha[0];
      acc[nd][1] *= alpha[0];
      acc[nd][2] *= alpha[1];
      acc[nd][3] *= alpha[1];
    }
    // acc += P·V with P rounded to bf16.
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      std::uint32_t a[4];
      acc_to_a(a, s, kk);
#pragma unroll
      for (int nd = 0; nd < ND; nd += 2) {
        std::uint32_t bv[4];
        load_b_kn(bv, vt, LD, kk * 16, nd * 8, lane);
        mma_16816(acc[nd], a, bv[0], bv[1]);
        mma_16816(acc[nd + 1], a, bv[2], bv[3]);
      }
    }
    __syncthreads();  // this stage is consumed before the next iteration refills it
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = 1.f / l[r];
    const int row = warp * 16 + g + 8 * r;
    if (t == 0 && row < nq) lse[(b * p.Hq + h) * p.Tq + i0 + row] = m[r] * kLn2 + logf(l[r]);
  }
  // Stage the output tile in qs (each warp its own rows), then 16-byte stores.
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
    bf* r0 = qs + (warp * 16 + g) * LD + nd * 8 + 2 * t;
    *reinterpret_cast<std::uint32_t*>(r0) = pack_bf16(acc[nd][0] * inv[0], acc[nd][1] * inv[0]);
    *reinterpret_cast<std::uint32_t*>(r0 + 8 * LD) =
        pack_bf16(acc[nd][2] * inv[1], acc[nd][3] * inv[1]);
  }
  __syncthreads();
  constexpr int chunks = D / 8;
  bf* obase = o + ((b * p.Tq + i0) * p.Hq + h) * p.d;
  for (int idx = threadIdx.x; idx < BQ * chunks; idx += kThreads) {
    const int r = idx / chunks, c = idx % chunks;
    if (r < nq && c * 8 < d) {
      *reinterpret_cast<uint4*>(obase + r * q_step + c * 8) =
          *reinterpret_cast<const uint4*>(qs + r * LD + c * 8);
    }
  }
}

// ---- backward: D_i into dq ----------------------------------------------------------------------
// delta(row n) = Σ_x dO·O over row n = (b·Tq + i)·Hq + h of [B, Tq, Hq, d], parked in dq row n.
__global__ void __launch_bounds__(256)
    delta_kernel(const bf* __restrict__ o, const bf* __restrict__ d_o, bf* __restrict__ dq,
                 i64 rows, int d) {
  const i64 n = static_cast<i64>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= rows) return;
  const bf* orow = o + n * d;
  const bf* grow = d_o + n * d;
  float dot = 0.f;
  for (int x = 2 * lane; x < d; x += 64) {  // d is even: bf16 pairs
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(orow + x));
    const float2 c = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(grow + x));
    dot += a.x * c.x + a.y * c.y;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
  if (lane == 0) *reinterpret_cast<float*>(dq + n * d) = dot;
}

__device__ __forceinline__ float parked_delta(const bf* dq, i64 row, i64 d) {
  return *reinterpret_cast<const float*>(dq + row * d);
}

// ---- backward: dK, dV ---------------------------------------------------------------------------
template <int D>
struct DkvTiles {
  static constexpr int BK = 64, BQ = D <= 64 ? 64 : 32, LD = D + 8;
  static constexpr std::size_t smem =
      sizeof(bf) * static_cast<std::size_t>((2 * BK + 4 * BQ) * LD) + sizeof(float) * 4 * BQ;
};

template <int D>
__global__ void __launch_bounds__(kThreads)
    dkv_kernel(const bf* __restrict__ q, const bf* __restrict__ k, const bf* __restrict__ v,
               const float* __restrict__ lse, const bf* __restrict__ d_o, const bf* dq_parked,
               bf* __restrict__ dk, bf* __restrict__ dv, Problem p) {
  using Tiles = DkvTiles<D>;
  constexpr int BK = Tiles::BK, BQ = Tiles::BQ, LD = Tiles::LD;
  constexpr int NQ = BQ / 8, ND = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf* ks = reinterpret_cast<bf*>(smem_raw);                    // [BK][LD]
  bf* vs = ks + BK * LD;                                       // [BK][LD]
  bf* qs = vs + BK * LD;                                       // [2][BQ][LD]
  bf* dos = qs + 2 * BQ * LD;                                  // [2][BQ][LD]
  float* lse_s = reinterpret_cast<float*>(dos + 2 * BQ * LD);  // [2][BQ], log2 units
  float* del_s = lse_s + 2 * BQ;                               // [2][BQ]

  const i64 bh_count = p.B * p.Hkv;
  const i64 kb = static_cast<i64>(blockIdx.x) / bh_count;  // early (heavy) key tiles first
  const i64 bh = static_cast<i64>(blockIdx.x) % bh_count, b = bh / p.Hkv, hk = bh % p.Hkv;
  const i64 j0 = kb * BK, G = p.Hq / p.Hkv;
  const int nk = static_cast<int>(min64(BK, p.Tk - j0)), d = static_cast<int>(p.d);
  const i64 q_step = p.Hq * p.d, kv_step = p.Hkv * p.d;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  // The query tiles that see this key tile: from the one holding query j0 − q_offset on, for
  // each of the G query heads of the group.
  const i64 i_first = j0 > p.q_offset ? j0 - p.q_offset : 0;
  const i64 nqb = (p.Tq + BQ - 1) / BQ;
  const i64 qb_first = i_first < p.Tq ? i_first / BQ : nqb;
  const i64 per_head = nqb - qb_first, n_it = G * per_head;

  auto issue = [&](i64 it, int st) {  // loads of iteration `it` into stage st
    const i64 h = hk * G + it / per_head, i0 = (qb_first + it % per_head) * BQ;
    const int nq = static_cast<int>(min64(BQ, p.Tq - i0));
    const i64 row0 = (b * p.Tq + i0) * p.Hq + h;
    load_tile_async<BQ, D>(qs + st * BQ * LD, q + row0 * p.d, q_step, nq, d);
    load_tile_async<BQ, D>(dos + st * BQ * LD, d_o + row0 * p.d, q_step, nq, d);
    for (int r = threadIdx.x; r < BQ; r += kThreads) {
      const bool ok = r < nq;
      lse_s[st * BQ + r] = ok ? lse[(b * p.Hq + h) * p.Tq + i0 + r] * kLog2e : 0.f;
      del_s[st * BQ + r] = ok ? parked_delta(dq_parked, row0 + r * p.Hq, p.d) : 0.f;
    }
    cp_async_commit();
  };

  const i64 key0 = (b * p.Tk + j0) * p.Hkv + hk;
  load_tile_async<BK, D>(ks, k + key0 * p.d, kv_step, nk, d);
  load_tile_async<BK, D>(vs, v + key0 * p.d, kv_step, nk, d);
  if (n_it > 0) {
    issue(0, 0);  // commits K, V with the first query tile
  } else {
    cp_async_commit();
  }

  const float sl2 = static_cast<float>(p.scale) * kLog2e;
  const i64 key_g = j0 + warp * 16 + g;  // this lane's key rows: key_g and key_g + 8
  float gk[ND][4], gv[ND][4];
  zero_acc(gk);
  zero_acc(gv);

  for (i64 it = 0; it < n_it; ++it) {
    const int st = static_cast<int>(it & 1);
    if (it + 1 < n_it) {
      issue(it + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const i64 i0 = (qb_first + it % per_head) * BQ;
    const bf* qt = qs + st * BQ * LD;
    const bf* dot = dos + st * BQ * LD;
    const float* lse_t = lse_s + st * BQ;
    const float* del_t = del_s + st * BQ;

    // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for the warp's 16 keys × BQ queries.
    float s[NQ][4], dp[NQ][4];
    zero_acc(s);
    zero_acc(dp);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      std::uint32_t ak[4], av[4];
      load_a(ak, ks, LD, warp * 16, kk * 16, lane);
      load_a(av, vs, LD, warp * 16, kk * 16, lane);
#pragma unroll
      for (int nb = 0; nb < NQ; nb += 2) {
        std::uint32_t bq[4], bg[4];
        load_b_nk(bq, qt, LD, nb * 8, kk * 16, lane);
        load_b_nk(bg, dot, LD, nb * 8, kk * 16, lane);
        mma_16816(s[nb], ak, bq[0], bq[1]);
        mma_16816(s[nb + 1], ak, bq[2], bq[3]);
        mma_16816(dp[nb], av, bg[0], bg[1]);
        mma_16816(dp[nb + 1], av, bg[2], bg[3]);
      }
    }
    // Pᵀ = exp(scale·s − lse) where query i0 + c sees key j (j ≤ q_offset + i0 + c, c < nq:
    // rows past Tq have lse = D = 0 and zero q, dO, and are masked here), dSᵀ = Pᵀ ⊙ (dPᵀ − D).
    const int nq = static_cast<int>(min64(BQ, p.Tq - i0));
#pragma unroll
    for (int nb = 0; nb < NQ; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = nb * 8 + 2 * t + (e & 1);
        const i64 key = key_g + 8 * (e >> 1);
        const bool visible = c < nq && key <= p.q_offset + i0 + c;
        const float pv = visible ? exp2f(s[nb][e] * sl2 - lse_t[c]) : 0.f;
        s[nb][e] = pv;
        dp[nb][e] = pv * (dp[nb][e] - del_t[c]);
      }
    }
    // dV += Pᵀ·dO, dK += dSᵀ·Q (scale applied at the end).
#pragma unroll
    for (int kq = 0; kq < BQ / 16; ++kq) {
      std::uint32_t ap[4], ads[4];
      acc_to_a(ap, s, kq);
      acc_to_a(ads, dp, kq);
#pragma unroll
      for (int nd = 0; nd < ND; nd += 2) {
        std::uint32_t bg[4], bq[4];
        load_b_kn(bg, dot, LD, kq * 16, nd * 8, lane);
        load_b_kn(bq, qt, LD, kq * 16, nd * 8, lane);
        mma_16816(gv[nd], ap, bg[0], bg[1]);
        mma_16816(gv[nd + 1], ap, bg[2], bg[3]);
        mma_16816(gk[nd], ads, bq[0], bq[1]);
        mma_16816(gk[nd + 1], ads, bq[2], bq[3]);
      }
    }
    __syncthreads();  // this stage is consumed before the next iteration refills it
  }
  cp_async_wait<0>();  // nothing in flight at exit (the n_it == 0 case)

  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp * 16 + g + 8 * r;
    if (row >= nk) continue;
    bf* krow = dk + (key0 + static_cast<i64>(row) * p.Hkv) * p.d;
    bf* vrow = dv + (key0 + static_cast<i64>(row) * p.Hkv) * p.d;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      const int col = nd * 8 + 2 * t;
      if (col < d) {
        *reinterpret_cast<std::uint32_t*>(krow + col) =
            pack_bf16(gk[nd][2 * r] * scale, gk[nd][2 * r + 1] * scale);
        *reinterpret_cast<std::uint32_t*>(vrow + col) = pack_bf16(gv[nd][2 * r], gv[nd][2 * r + 1]);
      }
    }
  }
}

// ---- backward: dQ -------------------------------------------------------------------------------
template <int D>
struct DqTiles {
  static constexpr int BQ = 64, BK = D <= 64 ? 64 : 32, LD = D + 8;
  static constexpr std::size_t smem = sizeof(bf) * static_cast<std::size_t>((2 * BQ + 4 * BK) * LD);
};

template <int D>
__global__ void __launch_bounds__(kThreads)
    dq_kernel(const bf* __restrict__ q, const bf* __restrict__ k, const bf* __restrict__ v,
              const float* __restrict__ lse, const bf* __restrict__ d_o, bf* dq, Problem p) {
  using Tiles = DqTiles<D>;
  constexpr int BQ = Tiles::BQ, BK = Tiles::BK, LD = Tiles::LD;
  constexpr int NB = BK / 8, ND = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf* qs = reinterpret_cast<bf*>(smem_raw);  // [BQ][LD]
  bf* dos = qs + BQ * LD;                    // [BQ][LD]
  bf* ks = dos + BQ * LD;                    // [2][BK][LD]
  bf* vs = ks + 2 * BK * LD;                 // [2][BK][LD]

  const i64 nqb = (p.Tq + BQ - 1) / BQ, bh_count = p.B * p.Hq;
  const i64 qb = nqb - 1 - static_cast<i64>(blockIdx.x) / bh_count;  // heavy tiles first
  const i64 bh = static_cast<i64>(blockIdx.x) % bh_count, b = bh / p.Hq, h = bh % p.Hq;
  const i64 hk = h / (p.Hq / p.Hkv), i0 = qb * BQ;
  const int nq = static_cast<int>(min64(BQ, p.Tq - i0)), d = static_cast<int>(p.d);
  const i64 q_step = p.Hq * p.d, kv_step = p.Hkv * p.d;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bf* kbase = k + (b * p.Tk * p.Hkv + hk) * p.d;
  const bf* vbase = v + (b * p.Tk * p.Hkv + hk) * p.d;
  const i64 row0 = (b * p.Tq + i0) * p.Hq + h;  // row of query i0 in [B, Tq, Hq, d]

  // This lane's rows warp·16 + g and + 8: lse (log2 units) and the parked D, read before any
  // thread of the block overwrites its dq row (the barriers of the loop order the two).
  float lse_r[2], del_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp * 16 + g + 8 * r;
    const bool ok = row < nq;
    lse_r[r] = ok ? lse[(b * p.Hq + h) * p.Tq + i0 + row] * kLog2e : 0.f;
    del_r[r] = ok ? parked_delta(dq, row0 + static_cast<i64>(row) * p.Hq, p.d) : 0.f;
  }

  const i64 kend = p.q_offset + i0 + nq;
  const int ntiles = static_cast<int>((kend + BK - 1) / BK);
  load_tile_async<BQ, D>(qs, q + row0 * p.d, q_step, nq, d);
  load_tile_async<BQ, D>(dos, d_o + row0 * p.d, q_step, nq, d);
  load_tile_async<BK, D>(ks, kbase, kv_step, static_cast<int>(min64(BK, kend)), d);
  load_tile_async<BK, D>(vs, vbase, kv_step, static_cast<int>(min64(BK, kend)), d);
  cp_async_commit();

  const float sl2 = static_cast<float>(p.scale) * kLog2e;
  const i64 pos0 = p.q_offset + i0 + warp * 16 + g;
  float acc[ND][4];
  zero_acc(acc);

  for (int tile = 0; tile < ntiles; ++tile) {
    if (tile + 1 < ntiles) {
      const i64 jn = static_cast<i64>(tile + 1) * BK;
      const int nn = static_cast<int>(min64(BK, kend - jn));
      const int st = (tile + 1) & 1;
      load_tile_async<BK, D>(ks + st * BK * LD, kbase + jn * kv_step, kv_step, nn, d);
      load_tile_async<BK, D>(vs + st * BK * LD, vbase + jn * kv_step, kv_step, nn, d);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf* kt = ks + (tile & 1) * BK * LD;
    const bf* vt = vs + (tile & 1) * BK * LD;
    const i64 j0 = static_cast<i64>(tile) * BK;

    float s[NB][4], dp[NB][4];
    zero_acc(s);
    zero_acc(dp);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      std::uint32_t aq[4], ag[4];
      load_a(aq, qs, LD, warp * 16, kk * 16, lane);
      load_a(ag, dos, LD, warp * 16, kk * 16, lane);
#pragma unroll
      for (int nb = 0; nb < NB; nb += 2) {
        std::uint32_t bk[4], bv[4];
        load_b_nk(bk, kt, LD, nb * 8, kk * 16, lane);
        load_b_nk(bv, vt, LD, nb * 8, kk * 16, lane);
        mma_16816(s[nb], aq, bk[0], bk[1]);
        mma_16816(s[nb + 1], aq, bk[2], bk[3]);
        mma_16816(dp[nb], ag, bv[0], bv[1]);
        mma_16816(dp[nb + 1], ag, bv[2], bv[3]);
      }
    }
    const bool masked = j0 + BK - 1 > p.q_offset + i0 + warp * 16;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const bool hidden = masked && j0 + nb * 8 + 2 * t + (e & 1) > pos0 + 8 * r;
        const float pv = hidden ? 0.f : exp2f(s[nb][e] * sl2 - lse_r[r]);
        dp[nb][e] = pv * (dp[nb][e] - del_r[r]);  // dS
      }
    }
    // dQ += dS·K (scale applied at the end).
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      std::uint32_t a[4];
      acc_to_a(a, dp, kk);
#pragma unroll
      for (int nd = 0; nd < ND; nd += 2) {
        std::uint32_t bk[4];
        load_b_kn(bk, kt, LD, kk * 16, nd * 8, lane);
        mma_16816(acc[nd], a, bk[0], bk[1]);
        mma_16816(acc[nd + 1], a, bk[2], bk[3]);
      }
    }
    __syncthreads();
  }

  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp * 16 + g + 8 * r;
    if (row >= nq) continue;
    bf* grow = dq + (row0 + static_cast<i64>(row) * p.Hq) * p.d;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      const int col = nd * 8 + 2 * t;
      if (col < d) {
        *reinterpret_cast<std::uint32_t*>(grow + col) =
            pack_bf16(acc[nd][2 * r] * scale, acc[nd][2 * r + 1] * scale);
      }
    }
  }
}

// ---- launchers ----------------------------------------------------------------------------------
template <class K>
void allow_smem_mma(K* kernel, std::size_t bytes) {
  if (bytes > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
  }
}

inline bool aligned16(const Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data) % 16 == 0;
}

// Whether the tensor-core path takes this call: a head dim it supports and 16-byte aligned
// tensors (rows are then 16-byte aligned too, d being a multiple of 8).
inline bool takes(i64 d, const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& e) {
  return supports(d) && aligned16(a) && aligned16(b) && aligned16(c) && aligned16(e);
}

template <class F>
void dispatch_dim(i64 d, F&& f) {
  if (d <= 32) {
    f(std::integral_constant<int, 32>{});
  } else if (d <= 64) {
    f(std::integral_constant<int, 64>{});
  } else {
    f(std::integral_constant<int, 128>{});
  }
}

inline void forward(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v,
                    const Tensor& o, const Tensor& lse, cudaStream_t stream) {
  dispatch_dim(p.d, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    constexpr std::size_t smem = ForwardTiles<D>::smem;
    static const bool ready = (allow_smem_mma(forward_kernel<D>, smem), true);
    (void)ready;
    const i64 blocks = (p.Tq + ForwardTiles<D>::BQ - 1) / ForwardTiles<D>::BQ * p.B * p.Hq;
    forward_kernel<D><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
        static_cast<const bf*>(q.data), static_cast<const bf*>(k.data),
        static_cast<const bf*>(v.data), static_cast<bf*>(o.data), static_cast<float*>(lse.data), p);
    CUDA_CHECK_LAUNCH();
  });
}

inline void backward(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& o, const Tensor& lse, const Tensor& d_o, const Tensor& dq,
                     const Tensor& dk, const Tensor& dv, cudaStream_t stream) {
  const i64 rows = p.B * p.Tq * p.Hq;
  delta_kernel<<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(
      static_cast<const bf*>(o.data), static_cast<const bf*>(d_o.data), static_cast<bf*>(dq.data),
      rows, static_cast<int>(p.d));
  CUDA_CHECK_LAUNCH();
  dispatch_dim(p.d, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    constexpr std::size_t smem_kv = DkvTiles<D>::smem, smem_q = DqTiles<D>::smem;
    static const bool ready =
        (allow_smem_mma(dkv_kernel<D>, smem_kv), allow_smem_mma(dq_kernel<D>, smem_q), true);
    (void)ready;
    const i64 kv_blocks = (p.Tk + DkvTiles<D>::BK - 1) / DkvTiles<D>::BK * p.B * p.Hkv;
    dkv_kernel<D><<<static_cast<unsigned>(kv_blocks), kThreads, smem_kv, stream>>>(
        static_cast<const bf*>(q.data), static_cast<const bf*>(k.data),
        static_cast<const bf*>(v.data), static_cast<const float*>(lse.data),
        static_cast<const bf*>(d_o.data), static_cast<const bf*>(dq.data),
        static_cast<bf*>(dk.data), static_cast<bf*>(dv.data), p);
    CUDA_CHECK_LAUNCH();
    const i64 q_blocks = (p.Tq + DqTiles<D>::BQ - 1) / DqTiles<D>::BQ * p.B * p.Hq;
    dq_kernel<D><<<static_cast<unsigned>(q_blocks), kThreads, smem_q, stream>>>(
        static_cast<const bf*>(q.data), static_cast<const bf*>(k.data),
        static_cast<const bf*>(v.data), static_cast<const float*>(lse.data),
        static_cast<const bf*>(d_o.data), static_cast<bf*>(dq.data), p);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mma
}  // namespace cuda
}  // namespace linmoe
