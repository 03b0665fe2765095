// Causal GQA softmax attention on the GPU (kernels/ops.h, MODEL.md 2), FlashAttention-2 style:
// no Tq×Tk matrix exists in device memory.
//
// Forward: one thread block per (batch, query head, query tile) sweeps the visible key tiles with
// an online softmax (running max m and sum l per query; the output accumulator is rescaled by
// e^{m_old − m_new} when the max grows), then o = acc / l and lse = m + log l.
// Backward (P recomputed from lse; D_i = Σ_x dO_ix·O_ix): two kernels that each own their
// outputs, so there are no atomics and results are bit-identical run to run:
//   dK/dV: one block per (batch, kv head, key tile) loops over the query heads sharing the kv
//          head and over the query tiles that see the key tile, accumulating in registers;
//   dQ:    one block per (batch, query head, query tile) loops over the visible key tiles.
// Tiles fully hidden by the causal mask are never visited (the loops start or end at the
// diagonal); diagonal and ragged tiles are masked element by element.
//
// Two paths:
// - bf16 with a head dim that is a multiple of 8 up to 128 and 16-byte aligned tensors: tensor
//   cores (mma.sync m16n8k16, fp32 accumulation), attention_mma.cuh.
// - everything else (f32 — the check mode —, f64 in double, other bf16 shapes): SIMT kernels
//   below. 256 threads as a 16×16 grid; thread (ty, tx) owns rows ty + 16i and columns tx + 16j
//   of every tile product in registers; operand tiles live in shared memory in the compute type,
//   rows padded by one element (column reads without bank conflicts); a row's softmax reductions
//   are half-warp shuffles. D_i is recomputed per query tile from O and dO (no scratch memory).
//   The head dim is a template (32, 64, 128, 256); smaller head dims are zero-padded up.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/cuda_context.cuh"

namespace linmoe {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // a 16×16 thread grid: ty = tid / 16 (rows), tx = tid % 16 (cols)
constexpr int kGrid = 16;

// Tile sizes of the SIMT kernels for compute type C and (padded) head dim D: the big tile is
// the one a block owns, the small one what it sweeps in the backward; sized so that every
// kernel's shared memory stays under ~150 KB (one or two blocks per SM).
template <class C, int D>
struct SimtTiles {
  static constexpr bool kDouble = sizeof(C) == 8;
  static constexpr int kBig = kDouble ? (D <= 32 ? 64 : D <= 128 ? 32 : 16) : (D <= 128 ? 64 : 32);
  static constexpr int kSmall = kDouble ? (D <= 32 ? 32 : 16) : (D <= 64 ? 64 : 32);
  static constexpr int kLd = D + 1;  // padded row of a [rows, D] tile
};

// Shared-memory bytes of each SIMT kernel.
template <class C, int D>
constexpr std::size_t simt_forward_smem() {
  using S = SimtTiles<C, D>;
  return sizeof(C) * (static_cast<std::size_t>(3 * S::kBig * S::kLd) + S::kBig * (S::kBig + 1));
}
template <class C, int D>
constexpr std::size_t simt_dkv_smem() {
  using S = SimtTiles<C, D>;
  return sizeof(C) * (static_cast<std::size_t>(2 * S::kBig * S::kLd + 2 * S::kSmall * S::kLd) +
                      2 * S::kBig * (S::kSmall + 1) + 2 * S::kSmall);
}
template <class C, int D>
constexpr std::size_t simt_dq_smem() {
  using S = SimtTiles<C, D>;
  return sizeof(C) * (static_cast<std::size_t>(2 * S::kBig * S::kLd + 2 * S::kSmall * S::kLd) +
                      S::kBig * (S::kSmall + 1) + 2 * S::kBig);
}

__device__ __forceinline__ i64 min64(i64 a, i64 b) {
  return a < b ? a : b;
}

__device__ __forceinline__ float exp_c(float x) {
  return expf(x);
}
__device__ __forceinline__ double exp_c(double x) {
  return exp(x);
}
__device__ __forceinline__ float log_c(float x) {
  return logf(x);
}
__device__ __forceinline__ double log_c(double x) {
  return log(x);
}

template <class C>
__device__ __forceinline__ C neg_inf() {
  return -std::numeric_limits<C>::infinity();
}

// Reductions over the 16 lanes of a half-warp (the 16 threads of one tile row).
template <class C>
__device__ __forceinline__ C row_max16(C v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
template <class C>
__device__ __forceinline__ C row_sum16(C v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
template <class C>
__device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// dst[r][x] (row stride kLd) = s · src row r (rows `step` elements apart), x < d; zero padding
// for rows ≥ n and columns ≥ d.
template <class T, class C, int ROWS, int D>
__device__ __forceinline__ void load_tile(C* dst, const T* src, i64 step, int n, int d, C s) {
  constexpr int ld = D + 1;
  for (int idx = threadIdx.x; idx < ROWS * D; idx += kThreads) {
    const int r = idx / D, x = idx % D;
    C val = 0;
    if (r < n && x < d) val = s * static_cast<C>(load(src + r * step + x));
    dst[r * ld + x] = val;
  }
}

// dO rows into dos (as load_tile) and D_r = Σ_x dO_rx·O_rx into delta[r] (0 for rows ≥ n): one
// warp per row, in the compute type.
template <class T, class C, int ROWS, int D>
__device__ __forceinline__ void load_do_delta(C* dos, C* delta, const T* d_o, const T* o, i64 step,
                                              int n, int d) {
  constexpr int ld = D + 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < ROWS; r += kThreads / 32) {
    C dot = 0;
    for (int x = lane; x < D; x += 32) {
      C g = 0;
      if (r < n && x < d) {
        g = static_cast<C>(load(d_o + r * step + x));
        dot += g * static_cast<C>(load(o + r * step + x));
      }
      dos[r * ld + x] = g;
    }
    dot = warp_sum(dot);
    if (lane == 0) delta[r] = dot;
  }
}

struct Dims {
  i64 B, Tq, Tk, Hq, Hkv, d, q_offset;
  double scale;
  // Query heads per kv head: query head h reads kv head h / group() (= ⌊h·Hkv/Hq⌋).
  __host__ __device__ i64 group() const { return Hq / Hkv; }
};

// ---- SIMT forward -------------------------------------------------------------------------------
template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    forward_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                 T* __restrict__ o, compute_t<T>* __restrict__ lse, Dims p) {
  using C = compute_t<T>;
  using S = SimtTiles<C, D>;
  constexpr int BQ = S::kBig, BK = S::kBig, ld = S::kLd;
  constexpr int RQ = BQ / kGrid, CK = BK / kGrid, CD = D / kGrid;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  C* qs = reinterpret_cast<C*>(smem_raw);  // [BQ][ld] scale·q
  C* ks = qs + BQ * ld;                    // [BK][ld]
  C* vs = ks + BK * ld;                    // [BK][ld]
  C* ps = vs + BK * ld;                    // [BQ][BK + 1] probabilities

  const i64 nqb = (p.Tq + BQ - 1) / BQ, bh_count = p.B * p.Hq;
  const i64 qb = nqb - 1 - static_cast<i64>(blockIdx.x) / bh_count;  // heavy tiles first
  const i64 bh = static_cast<i64>(blockIdx.x) % bh_count, b = bh / p.Hq, h = bh % p.Hq;
  const i64 hk = h / p.group(), i0 = qb * BQ;
  const int nq = static_cast<int>(min64(BQ, p.Tq - i0)), d = static_cast<int>(p.d);
  const i64 q_step = p.Hq * p.d, kv_step = p.Hkv * p.d;
  const int tx = threadIdx.x % kGrid, ty = threadIdx.x / kGrid;

  load_tile<T, C, BQ, D>(qs, q + ((b * p.Tq + i0) * p.Hq + h) * p.d, q_step, nq, d,
                         static_cast<C>(p.scale));
  C acc[RQ][CD], m[RQ], l[RQ];
#pragma unroll
  for (int i = 0; i < RQ; ++i) {
    m[i] = neg_inf<C>();
    l[i] = 0;
#pragma unroll
    for (int x = 0; x < CD; ++x) acc[i][x] = 0;
  }
  const i64 kend = p.q_offset + i0 + nq;  // keys seen by the tile's last query (≤ Tk)
  for (i64 j0 = 0; j0 < kend; j0 += BK) {
    const int nk = static_cast<int>(min64(BK, kend - j0));
    __syncthreads();  // the previous tile's ks, vs, ps are consumed
    load_tile<T, C, BK, D>(ks, k + ((b * p.Tk + j0) * p.Hkv + hk) * p.d, kv_step, nk, d, C(1));
    load_tile<T, C, BK, D>(vs, v + ((b * p.Tk + j0) * p.Hkv + hk) * p.d, kv_step, nk, d, C(1));
    __syncthreads();
    C s[RQ][CK];
#pragma unroll
    for (int i = 0; i < RQ; ++i) {
#pragma unroll
      for (int j = 0; j < CK; ++j) s[i][j] = 0;
    }
#pragma unroll 4
    for (int x = 0; x < D; ++x) {
      C a[RQ], bk[CK];
#pragma unroll
      for (int i = 0; i < RQ; ++i) a[i] = qs[(ty + kGrid * i) * ld + x];
#pragma unroll
      for (int j = 0; j < CK; ++j) bk[j] = ks[(tx + kGrid * j) * ld + x];
#pragma unroll
      for (int i = 0; i < RQ; ++i) {
#pragma unroll
        for (int j = 0; j < CK; ++j) s[i][j] += a[i] * bk[j];
      }
    }
    // Online softmax per row; a row's 16 threads are one half-warp.
#pragma unroll
    for (int i = 0; i < RQ; ++i) {
      const int r = ty + kGrid * i;
      const i64 last = p.q_offset + i0 + r - j0;  // the row sees tile columns c ≤ last
      C mx = neg_inf<C>();
#pragma unroll
      for (int j = 0; j < CK; ++j) {
        const int c = tx + kGrid * j;
        if (c >= nk || c > last) s[i][j] = neg_inf<C>();
        mx = fmax(mx, s[i][j]);
      }
      const C m_new = fmax(m[i], row_max16(mx));
      const bool none = m_new == neg_inf<C>();  // nothing visible yet (cannot happen: key 0)
      const C alpha = none ? C(1) : exp_c(m[i] - m_new);
      C sum = 0;
#pragma unroll
      for (int j = 0; j < CK; ++j) {
        const C pv = none ? C(0) : exp_c(s[i][j] - m_new);
        sum += pv;
        ps[r * (BK + 1) + tx + kGrid * j] = pv;
      }
      l[i] = l[i] * alpha + row_sum16(sum);
      m[i] = m_new;
#pragma unroll
      for (int x = 0; x < CD; ++x) acc[i][x] *= alpha;
    }
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < BK; ++c) {
      C a[RQ], bv[CD];
#pragma unroll
      for (int i = 0; i < RQ; ++i) a[i] = ps[(ty + kGrid * i) * (BK + 1) + c];
#pragma unroll
      for (int x = 0; x < CD; ++x) bv[x] = vs[c * ld + tx + kGrid * x];
#pragma unroll
      for (int i = 0; i < RQ; ++i) {
#pragma unroll
        for (int x = 0; x < CD; ++x) acc[i][x] += a[i] * bv[x];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < RQ; ++i) {
    const int r = ty + kGrid * i;
    if (r >= nq) continue;
    const C inv = C(1) / l[i];
    T* orow = o + ((b * p.Tq + i0 + r) * p.Hq + h) * p.d;
#pragma unroll
    for (int x = 0; x < CD; ++x) {
      const int col = tx + kGrid * x;
      if (col < d) store(orow + col, acc[i][x] * inv);
    }
    if (tx == 0) lse[(b * p.Hq + h) * p.Tq + i0 + r] = m[i] + log_c(l[i]);
  }
}

// ---- SIMT backward: dK, dV ----------------------------------------------------------------------
template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    backward_dkv_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                      const T* __restrict__ o, const compute_t<T>* __restrict__ lse,
                      const T* __restrict__ d_o, T* __restrict__ dk, T* __restrict__ dv, Dims p) {
  using C = compute_t<T>;
  using S = SimtTiles<C, D>;
  constexpr int BK = S::kBig, BQ = S::kSmall, ld = S::kLd, ldp = BQ + 1;
  constexpr int RK = BK / kGrid, CQ = BQ / kGrid, CD = D / kGrid;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  C* ks = reinterpret_cast<C*>(smem_raw);  // [BK][ld]
  C* vs = ks + BK * ld;                    // [BK][ld]
  C* qs = vs + BK * ld;                    // [BQ][ld] scale·q
  C* dos = qs + BQ * ld;                   // [BQ][ld] dO
  C* pt = dos + BQ * ld;                   // [BK][ldp] Pᵀ
  C* dst = pt + BK * ldp;                  // [BK][ldp] dSᵀ
  C* lse_s = dst + BK * ldp;               // [BQ]
  C* delta = lse_s + BQ;                   // [BQ]

  const i64 nkb = (p.Tk + BK - 1) / BK, bh_count = p.B * p.Hkv;
  const i64 kb = static_cast<i64>(blockIdx.x) / bh_count;  // light (late) key tiles last
  const i64 bh = static_cast<i64>(blockIdx.x) % bh_count, b = bh / p.Hkv, hk = bh % p.Hkv;
  const i64 j0 = kb * BK;
  const int nk = static_cast<int>(min64(BK, p.Tk - j0)), d = static_cast<int>(p.d);
  const i64 q_step = p.Hq * p.d, kv_step = p.Hkv * p.d, G = p.group();
  const int tx = threadIdx.x % kGrid, ty = threadIdx.x / kGrid;
  (void)nkb;

  load_tile<T, C, BK, D>(ks, k + ((b * p.Tk + j0) * p.Hkv + hk) * p.d, kv_step, nk, d, C(1));
  load_tile<T, C, BK, D>(vs, v + ((b * p.Tk + j0) * p.Hkv + hk) * p.d, kv_step, nk, d, C(1));
  C gk[RK][CD], gv[RK][CD];
#pragma unroll
  for (int i = 0; i < RK; ++i) {
#pragma unroll
    for (int x = 0; x < CD; ++x) gk[i][x] = gv[i][x] = 0;
  }
  // The first query that sees key j0; keys past every query's horizon get zero gradients.
  const i64 i_first = j0 > p.q_offset ? j0 - p.q_offset : 0;
  const i64 nqb = (p.Tq + BQ - 1) / BQ;
  for (i64 g = 0; g < G && i_first < p.Tq; ++g) {
    const i64 h = hk * G + g;
    for (i64 qb = i_first / BQ; qb < nqb; ++qb) {
      const i64 i0 = qb * BQ;
      const int nq = static_cast<int>(min64(BQ, p.Tq - i0));
      const i64 row0 = ((b * p.Tq + i0) * p.Hq + h) * p.d;
      __syncthreads();  // the previous query tile's qs, dos, pt, dst, lse_s, delta are consumed
      load_tile<T, C, BQ, D>(qs, q + row0, q_step, nq, d, static_cast<C>(p.scale));
      load_do_delta<T, C, BQ, D>(dos, delta, d_o + row0, o + row0, q_step, nq, d);
      for (int r = threadIdx.x; r < BQ; r += kThreads) {
        lse_s[r] = r < nq ? lse[(b * p.Hq + h) * p.Tq + i0 + r] : C(0);
      }
      __syncthreads();
      C st[RK][CQ], dpt[RK][CQ];
#pragma unroll
      for (int i = 0; i < RK; ++i) {
#pragma unroll
        for (int j = 0; j < CQ; ++j) st[i][j] = dpt[i][j] = 0;
      }
#pragma unroll 4
      for (int x = 0; x < D; ++x) {
        C a[RK], av[RK], bq[CQ], bg[CQ];
#pragma unroll
        for (int i = 0; i < RK; ++i) {
          a[i] = ks[(ty + kGrid * i) * ld + x];
          av[i] = vs[(ty + kGrid * i) * ld + x];
        }
#pragma unroll
        for (int j = 0; j < CQ; ++j) {
          bq[j] = qs[(tx + kGrid * j) * ld + x];
          bg[j] = dos[(tx + kGrid * j) * ld + x];
        }
#pragma unroll
        for (int i = 0; i < RK; ++i) {
#pragma unroll
          for (int j = 0; j < CQ; ++j) {
            st[i][j] += a[i] * bq[j];
            dpt[i][j] += av[i] * bg[j];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < RK; ++i) {
        const int c = ty + kGrid * i;
#pragma unroll
        for (int j = 0; j < CQ; ++j) {
          const int r = tx + kGrid * j;
          // Query i0 + r sees key j0 + c iff j0 + c ≤ q_offset + i0 + r.
          const bool visible = r < nq && c < nk && j0 + c <= p.q_offset + i0 + r;
          const C pv = visible ? exp_c(st[i][j] - lse_s[r]) : C(0);
          pt[c * ldp + r] = pv;
          dst[c * ldp + r] = pv * (dpt[i][j] - delta[r]);
        }
      }
      __syncthreads();
#pragma unroll 4
      for (int r = 0; r < BQ; ++r) {
        C a[RK], as[RK], bg[CD], bq[CD];
#pragma unroll
        for (int i = 0; i < RK; ++i) {
          a[i] = pt[(ty + kGrid * i) * ldp + r];
          as[i] = dst[(ty + kGrid * i) * ldp + r];
        }
#pragma unroll
        for (int x = 0; x < CD; ++x) {
          bg[x] = dos[r * ld + tx + kGrid * x];
          bq[x] = qs[r * ld + tx + kGrid * x];
        }
#pragma unroll
        for (int i = 0; i < RK; ++i) {
#pragma unroll
          for (int x = 0; x < CD; ++x) {
            gv[i][x] += a[i] * bg[x];
            gk[i][x] += as[i] * bq[x];
          }
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < RK; ++i) {
    const int c = ty + kGrid * i;
    if (c >= nk) continue;
    const i64 row = ((b * p.Tk + j0 + c) * p.Hkv + hk) * p.d;
#pragma unroll
    for (int x = 0; x < CD; ++x) {
      const int col = tx + kGrid * x;
      if (col < d) {
        store(dk + row + col, gk[i][x]);
        store(dv + row + col, gv[i][x]);
      }
    }
  }
}

// ---- SIMT backward: dQ --------------------------------------------------------------------------
template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    backward_dq_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     const T* __restrict__ o, const compute_t<T>* __restrict__ lse,
                     const T* __restrict__ d_o, T* __restrict__ dq, Dims p) {
  using C = compute_t<T>;
  using S = SimtTiles<C, D>;
  constexpr int BQ = S::kBig, BK = S::kSmall, ld = S::kLd, ldp = BK + 1;
  constexpr int RQ = BQ / kGrid, CK = BK / kGrid, CD = D / kGrid;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  C* qs = reinterpret_cast<C*>(smem_raw);  // [BQ][ld] scale·q
  C* dos = qs + BQ * ld;                   // [BQ][ld] dO
  C* ks = dos + BQ * ld;                   // [BK][ld]
  C* vs = ks + BK * ld;                    // [BK][ld]
  C* dss = vs + BK * ld;                   // [BQ][ldp] dS
  C* lse_s = dss + BQ * ldp;               // [BQ]
  C* delta = lse_s + BQ;                   // [BQ]

  const i64 nqb = (p.Tq + BQ - 1) / BQ, bh_count = p.B * p.Hq;
  const i64 qb = nqb - 1 - static_cast<i64>(blockIdx.x) / bh_count;  // heavy tiles first
  const i64 bh = static_cast<i64>(blockIdx.x) % bh_count, b = bh / p.Hq, h = bh % p.Hq;
  const i64 hk = h / p.group(), i0 = qb * BQ;
  const int nq = static_cast<int>(min64(BQ, p.Tq - i0)), d = static_cast<int>(p.d);
  const i64 q_step = p.Hq * p.d, kv_step = p.Hkv * p.d;
  const int tx = threadIdx.x % kGrid, ty = threadIdx.x / kGrid;
  const i64 row0 = ((b * p.Tq + i0) * p.Hq + h) * p.d;

  load_tile<T, C, BQ, D>(qs, q + row0, q_step, nq, d, static_cast<C>(p.scale));
  load_do_delta<T, C, BQ, D>(dos, delta, d_o + row0, o + row0, q_step, nq, d);
  for (int r = threadIdx.x; r < BQ; r += kThreads) {
    lse_s[r] = r < nq ? lse[(b * p.Hq + h) * p.Tq + i0 + r] : C(0);
  }
  C acc[RQ][CD];
#pragma unroll
  for (int i = 0; i < RQ; ++i) {
#pragma unroll
    for (int x = 0; x < CD; ++x) acc[i][x] = 0;
  }
  const i64 kend = p.q_offset + i0 + nq;
  for (i64 j0 = 0; j0 < kend; j0 += BK) {
    const int nk = static_cast<int>(min64(BK, kend - j0));
    __syncthreads();  // the previous tile's ks, vs, dss are consumed
    load_tile<T, C, BK, D>(ks, k + ((b * p.Tk + j0) * p.Hkv + hk) * p.d, kv_step, nk, d, C(1));
    load_tile<T, C, BK, D>(vs, v + ((b * p.Tk + j0) * p.Hkv + hk) * p.d, kv_step, nk, d, C(1));
    __syncthreads();
    C s[RQ][CK], dp[RQ][CK];
#pragma unroll
    for (int i = 0; i < RQ; ++i) {
#pragma unroll
      for (int j = 0; j < CK; ++j) s[i][j] = dp[i][j] = 0;
    }
#pragma unroll 4
    for (int x = 0; x < D; ++x) {
      C a[RQ], ag[RQ], bk[CK], bv[CK];
#pragma unroll
      for (int i = 0; i < RQ; ++i) {
        a[i] = qs[(ty + kGrid * i) * ld + x];
        ag[i] = dos[(ty + kGrid * i) * ld + x];
      }
#pragma unroll
      for (int j = 0; j < CK; ++j) {
        bk[j] = ks[(tx + kGrid * j) * ld + x];
        bv[j] = vs[(tx + kGrid * j) * ld + x];
      }
#pragma unroll
      for (int i = 0; i < RQ; ++i) {
#pragma unroll
        for (int j = 0; j < CK; ++j) {
          s[i][j] += a[i] * bk[j];
          dp[i][j] += ag[i] * bv[j];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < RQ; ++i) {
      const int r = ty + kGrid * i;
      const i64 last = p.q_offset + i0 + r - j0;
#pragma unroll
      for (int j = 0; j < CK; ++j) {
        const int c = tx + kGrid * j;
        const bool visible = r < nq && c < nk && c <= last;
        const C pv = visible ? exp_c(s[i][j] - lse_s[r]) : C(0);
        dss[r * ldp + c] = pv * (dp[i][j] - delta[r]);
      }
    }
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < BK; ++c) {
      C a[RQ], bk[CD];
#pragma unroll
      for (int i = 0; i < RQ; ++i) a[i] = dss[(ty + kGrid * i) * ldp + c];
#pragma unroll
      for (int x = 0; x < CD; ++x) bk[x] = ks[c * ld + tx + kGrid * x];
#pragma unroll
      for (int i = 0; i < RQ; ++i) {
#pragma unroll
        for (int x = 0; x < CD; ++x) acc[i][x] += a[i] * bk[x];
      }
    }
  }
  const C scale = static_cast<C>(p.scale);
#pragma unroll
  for (int i = 0; i < RQ; ++i) {
    const int r = ty + kGrid * i;
    if (r >= nq) continue;
    T* grow = dq + ((b * p.Tq + i0 + r) * p.Hq + h) * p.d;
#pragma unroll
    for (int x = 0; x < CD; ++x) {
      const int col = tx + kGrid * x;
      if (col < d) store(grow + col, scale * acc[i][x]);
    }
  }
}

// ---- launchers ----------------------------------------------------------------------------------

// Raises a kernel's dynamic shared-memory limit once per process (one device per process).
template <class K>
void allow_smem(K* kernel, std::size_t bytes) {
  if (bytes > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
  }
}

i64 ceil_div(i64 a, i64 b) {
  return (a + b - 1) / b;
}

template <class T, int D>
void launch_simt_forward(const Dims& p, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& o, const Tensor& lse, cudaStream_t stream) {
  using C = compute_t<T>;
  constexpr std::size_t smem = simt_forward_smem<C, D>();
  static const bool ready = (allow_smem(forward_simt<T, D>, smem), true);
  (void)ready;
  const i64 blocks = ceil_div(p.Tq, SimtTiles<C, D>::kBig) * p.B * p.Hq;
  forward_simt<T, D><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
      static_cast<T*>(q.data), static_cast<T*>(k.data), static_cast<T*>(v.data),
      static_cast<T*>(o.data), static_cast<C*>(lse.data), p);
  CUDA_CHECK_LAUNCH();
}

template <class T, int D>
void launch_simt_backward(const Dims& p, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& o, const Tensor& lse, const Tensor& d_o, const Tensor& dq,
                          const Tensor& dk, const Tensor& dv, cudaStream_t stream) {
  using C = compute_t<T>;
  constexpr std::size_t smem_kv = simt_dkv_smem<C, D>(), smem_q = simt_dq_smem<C, D>();
  static const bool ready = (allow_smem(backward_dkv_simt<T, D>, smem_kv),
                             allow_smem(backward_dq_simt<T, D>, smem_q), true);
  (void)ready;
  constexpr int big = SimtTiles<C, D>::kBig;
  const i64 kv_blocks = ceil_div(p.Tk, big) * p.B * p.Hkv;
  backward_dkv_simt<T, D><<<static_cast<unsigned>(kv_blocks), kThreads, smem_kv, stream>>>(
      static_cast<T*>(q.data), static_cast<T*>(k.data), static_cast<T*>(v.data),
      static_cast<T*>(o.data), static_cast<C*>(lse.data), static_cast<T*>(d_o.data),
      static_cast<T*>(dk.data), static_cast<T*>(dv.data), p);
  CUDA_CHECK_LAUNCH();
  const i64 q_blocks = ceil_div(p.Tq, big) * p.B * p.Hq;
  backward_dq_simt<T, D><<<static_cast<unsigned>(q_blocks), kThreads, smem_q, stream>>>(
      static_cast<T*>(q.data), static_cast<T*>(k.data), static_cast<T*>(v.data),
      static_cast<T*>(o.data), static_cast<C*>(lse.data), static_cast<T*>(d_o.data),
      static_cast<T*>(dq.data), p);
  CUDA_CHECK_LAUNCH();
}

// Calls f(std::integral_constant<int, D>) with D the padded head dim of the SIMT kernels.
template <class F>
void dispatch_head_dim(i64 d, F&& f) {
  if (d <= 32) {
    f(std::integral_constant<int, 32>{});
  } else if (d <= 64) {
    f(std::integral_constant<int, 64>{});
  } else if (d <= 128) {
    f(std::integral_constant<int, 128>{});
  } else {
    f(std::integral_constant<int, 256>{});
  }
}

constexpr i64 kMaxHeadDim = 256;

void check_like_device(const Tensor& t, const Tensor& like, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  LINMOE_CHECK(t.dtype == like.dtype && t.shape == like.shape, op, ": ", arg, " ", t.str(),
               " must match ", like.str());
}

// Checks q, k, v, lse (and the scalars) like the CPU backend and returns the problem's sizes.
Dims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                    const Tensor& lse, double scale, i64 q_offset) {
  cuda::check_contiguous(q, op, "q");
  LINMOE_CHECK(q.ndim() == 4, op, ": q ", q.str(), " must be [B, Tq, Hq, d]");
  cuda::check_contiguous(k, op, "k");
  LINMOE_CHECK(k.ndim() == 4, op, ": k ", k.str(), " must be [B, Tk, Hkv, d]");
  LINMOE_CHECK(k.dtype == q.dtype, op, ": k ", k.str(), " must have q's dtype ",
               dtype_name(q.dtype));
  Dims p{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), q_offset, scale};
  LINMOE_CHECK(k.size(0) == p.B && k.size(3) == p.d, op, ": k ", k.str(), " must match q ", q.str(),
               " in B and d");
  LINMOE_CHECK(p.Hkv >= 1 && p.Hq % p.Hkv == 0, op, ": the kv heads of k ", k.str(),
               " must divide the query heads of q ", q.str());
  check_like_device(v, k, op, "v");
  cuda::check_contiguous(lse, op, "lse");
  LINMOE_CHECK(lse.dtype == stat_dtype(q.dtype), op, ": lse ", lse.str(), " must have dtype ",
               dtype_name(stat_dtype(q.dtype)));
  LINMOE_CHECK(lse.shape == (Shape{p.B, p.Hq, p.Tq}), op, ": lse ", lse.str(),
               " must be [B, Hq, Tq] = [", p.B, ", ", p.Hq, ", ", p.Tq, "]");
  LINMOE_CHECK(std::isfinite(scale), op, ": scale = ", scale, " is not finite");
  LINMOE_CHECK(q_offset >= 0 && q_offset + p.Tq <= p.Tk, op, ": q_offset = ", q_offset,
               " with Tq = ", p.Tq, " needs 0 <= q_offset and q_offset + Tq <= Tk = ", p.Tk);
  LINMOE_CHECK(p.d <= kMaxHeadDim, op, ": head dim ", p.d, " of q ", q.str(),
               " is over the CUDA kernels' limit ", kMaxHeadDim);
  return p;
}

}  // namespace
}  // namespace cuda

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                    std::int64_t q_offset, const Tensor& o, const Tensor& lse) {
  const char* op = "attention_forward";
  const cuda::Dims p = cuda::attention_dims(op, q, k, v, lse, scale, q_offset);
  cuda::check_like_device(o, q, op, "o");
  if (q.numel() == 0) return;
  cudaStream_t stream = context().stream;
  if (q.dtype == DType::bf16 && cuda::mma::takes(p.d, q, k, v, o)) {
    cuda::mma::forward(cuda::mma::Problem{p.B, p.Tq, p.Tk, p.Hq, p.Hkv, p.d, p.q_offset, p.scale},
                       q, k, v, o, lse, stream);
    return;
  }
  cuda::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::dispatch_head_dim(p.d, [&](auto dim) {
      cuda::launch_simt_forward<T, decltype(dim)::value>(p, q, k, v, o, lse, stream);
    });
  });
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& o, const Tensor& lse, const Tensor& d_o,
                                     double scale, std::int64_t q_offset, const Tensor& dq,
                                     const Tensor& dk, const Tensor& dv) {
  const char* op = "attention_backward";
  const cuda::Dims p = cuda::attention_dims(op, q, k, v, lse, scale, q_offset);
  cuda::check_like_device(o, q, op, "o");
  cuda::check_like_device(d_o, q, op, "d_o");
  cuda::check_like_device(dq, q, op, "dq");
  cuda::check_like_device(dk, k, op, "dk");
  cuda::check_like_device(dv, k, op, "dv");
  cudaStream_t stream = context().stream;
  if (q.numel() == 0) {  // no queries: no key receives a gradient (all-zero bits are 0.0)
    if (dk.numel() > 0) {
      CUDA_CHECK(cudaMemsetAsync(dk.data, 0, dk.nbytes(), stream));
      CUDA_CHECK(cudaMemsetAsync(dv.data, 0, dv.nbytes(), stream));
    }
    return;
  }
  if (q.dtype == DType::bf16 && cuda::mma::takes(p.d, q, k, v, o) &&
      cuda::mma::takes(p.d, d_o, dq, dk, dv)) {
    cuda::mma::backward(cuda::mma::Problem{p.B, p.Tq, p.Tk, p.Hq, p.Hkv, p.d, p.q_offset, p.scale},
                        q, k, v, o, lse, d_o, dq, dk, dv, stream);
    return;
  }
  cuda::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::dispatch_head_dim(p.d, [&](auto dim) {
      cuda::launch_simt_backward<T, decltype(dim)::value>(p, q, k, v, o, lse, d_o, dq, dk, dv,
                                                          stream);
    });
  });
}

}  // namespace linmoe
