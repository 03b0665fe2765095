// The chunked scalar- and vector-decay LSM cores on the GPU (MODEL.md section 3; contracts in
// kernels/ops.h), shared by lsm_scalar_decay.cu and lsm_vector_decay.cu. The mathematics is the
// CPU backend's (kernels/cpu/lsm_scalar_decay.cpp, lsm_vector_decay.cpp): per batch b and head h,
//   S_t = Diag(exp(g_t)) S_{t−1} + k_t v_tᵀ,   o_t = scale · S_tᵀ q_t,
// with g_t one log decay per token (scalar family, kVector = false: the same for every channel
// of Dk) or one per channel (vector family). A chunk of L ≤ C tokens starting at t0 uses the
// cumulative log decays from its start, b_ic = Σ_{t0≤s≤i} g_sc, and only ever exponentiates
// differences that are ≤ 0 (safe for any T and any decay strength):
//   e_ic = exp(b_ic),  f_jc = exp(b_{L−1,c} − b_jc),  M_ijc = exp(b_ic − b_jc) for j ≤ i.
//   A_ij = scale Σ_c q_ic k_jc M_ijc   (j ≤ i, else 0)
//   o_i  = Σ_{j≤i} A_ij v_j + scale Pᵀ (q_i ⊙ e_i)                     P: the state entering
//   N    = Diag(e_{L−1}) P + Σ_j (k_j ⊙ f_j) v_jᵀ                        the state leaving
// Backward, with G = dL/dN and D_ij = scale do_i·v_j (j ≤ i):
//   dq_i = Σ_{j≤i} D_ij (k_j ⊙ M_ij) + scale e_i ⊙ (P do_i)
//   dk_j = Σ_{i≥j} D_ij (q_i ⊙ M_ij) + f_j ⊙ (G v_j)
//   dv_j = Σ_{i≥j} A_ij do_i + Gᵀ (k_j ⊙ f_j)
//   dP   = Diag(e_{L−1}) G + scale Σ_i (q_i ⊙ e_i) do_iᵀ                 (G of the previous chunk)
//   dg_u = Σ_{i≥u} Σ_{j<u} W_ij + Σ_{i≥u} w_in_i + Σ_{j<u} w_out_j + e_{L−1} ⊙ rowsum(G ⊙ P)
//     W_ij = q_i ⊙ D_ij (k_j ⊙ M_ij),  w_in_i = q_i ⊙ scale e_i ⊙ (P do_i),
//     w_out_j = k_j ⊙ f_j ⊙ (G v_j)   (summed over the channels for the scalar family).
// The rectangle sum Σ_{i≥u} Σ_{j<u} W_ij is Σ_{v<u} (y_v − x_v) with the strictly-triangular row
// and column sums x_v = Σ_{j<v} W_vj = q_v ⊙ (strict part of dq_v) and y_v = Σ_{i>v} W_iv =
// k_v ⊙ (strict part of dk_v): a chunk-local prefix sum, never a difference of sums over the
// sequence.
//
// Launch layout (every kernel is a grid-stride loop over its items, whose body is a
// __host__ __device__ function so that it can also be run item by item on the host; SIMT, fp32
// accumulation for f32/bf16 and f64 for f64):
//   decay_factors   one thread per (b, h, chunk, channel): b (cumulative), e, f      [B,H,T,Dg]
//   state_contrib   one thread per (b, h, chunk, x, y): U_c = Σ_j (k_j ⊙ f_j) v_jᵀ
//   state_scan      one thread per (b, h, x, y), sequential over chunks: the chunk-start states
//                   (in place over U), the final state
//   scores          one thread per (b, h, chunk, i, j): A (and D, or D ⊙ M for scalar decay)
//   output          one thread per (b, t, h, y)
//   dstate_contrib  one thread per (b, h, chunk, x, y): scale Σ_i (q_i ⊙ e_i) do_iᵀ
//   dstate_scan     one thread per (b, h, x, y), reverse over chunks: G of every chunk (in place),
//                   d_initial_state
//   dq, dk          one thread per (b, t, h, x); dv one per (b, t, h, y)
//   decay_grad      one thread per (b, h, chunk, channel), sequential over the chunk's tokens
//   group_sum       (Hk < H) dq, dk summed over the heads sharing a q/k head, in head order
// Temporaries (one stream-ordered ScratchBuffer per call): b [B,H,T,Dg] in f64 (differences of
// cumulative log decays keep their precision), e/f [B,H,T,Dg], chunk states and state gradients
// [B,H,NC,Dk,Dv], A and D [B,H,NC,C,C], decay-gradient weights 3·[B,H,T,Dk], and per-head dq/dk
// [B,T,H,Dk] each when Hk < H, all in the compute type otherwise.
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_context.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_decay {

// Decay factors exp(x) with x below this are flushed to zero, as on the CPU
// (kernels/cpu/lsm_chunk_common.h): far below the rounding of what they scale, no subnormals.
template <class A>
__host__ __device__ __forceinline__ A decay_exp(A x);
template <>
__host__ __device__ __forceinline__ float decay_exp<float>(float x) {
  return x < -60.0f ? 0.0f : expf(x);
}
template <>
__host__ __device__ __forceinline__ double decay_exp<double>(double x) {
  return x < -600.0 ? 0.0 : exp(x);
}

// The factor exp(x) of a log-decay span x ≤ 0 formed in f64 (differences of cumulative sums
// keep their precision however long or strong the decay before them).
template <class A>
__host__ __device__ __forceinline__ A factor(double x) {
  return decay_exp<A>(static_cast<A>(x));
}

// Loads and stores in the compute type (as cuda_context.cuh's, callable on the host too).
__host__ __device__ __forceinline__ float load_value(const float* p) {
  return *p;
}
__host__ __device__ __forceinline__ float load_value(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
__host__ __device__ __forceinline__ double load_value(const double* p) {
  return *p;
}
__host__ __device__ __forceinline__ void store_value(float* p, float v) {
  *p = v;
}
__host__ __device__ __forceinline__ void store_value(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16(v);
}
__host__ __device__ __forceinline__ void store_value(double* p, double v) {
  *p = v;
}

// A [B, T, H(, D)] tensor with a contiguous last dimension (rows may be strided).
template <class T>
struct Rows {
  T* data = nullptr;
  i64 sb = 0, st = 0, sh = 0;
  __host__ __device__ __forceinline__ T* at(i64 b, i64 t, i64 h) const {
    return data + b * sb + t * st + h * sh;
  }
};

template <class T>
Rows<T> rows_of(const Tensor& x) {
  Rows<T> r;
  r.data = static_cast<T*>(x.data);
  r.sb = x.stride(0), r.st = x.stride(1), r.sh = x.stride(2);
  return r;
}

struct Dims {
  i64 B = 0, T = 0, H = 0, Hk = 0, Dk = 0, Dv = 0, C = 0;
  i64 chunks() const { return (T + C - 1) / C; }
};

// Everything a kernel reads. S: storage type; A: compute type. Dg: log decays per token (1 for
// the scalar family, Dk for the vector family).
template <class S, class A>
struct Args {
  i64 B, T, H, Hk, Dk, Dv, C, NC, Dg;
  A scale;
  Rows<const S> q, k, v, g, d_o;  // [B,T,Hk,Dk] ×2, [B,T,H,Dv], [B,T,H(,Dk)], [B,T,H,Dv]
  double* cb;                     // [B,H,T,Dg]: b (cumulative log decay within the chunk)
  A *ce, *cf;                     // [B,H,T,Dg]: e = exp(b), f = exp(b_{L−1} − b)
  A* states;                      // [B,H,NC,Dk,Dv]: state entering each chunk
  A* dstates;                     // [B,H,NC,Dk,Dv]: gradient of the state leaving each chunk
  A *attn, *dattn;                // [B,H,NC,C,C]: A; D (vector) or D ⊙ M (scalar)
  A *wx, *wy, *win;               // [B,H,T,Dk]: x_v, y_v + w_out_v, w_in_v (decay gradient)

  __host__ __device__ __forceinline__ i64 qk_head(i64 h) const { return h * Hk / H; }
  // Index of (b, h, t, channel c) in the [B,H,T,Dg] factor arrays.
  __host__ __device__ __forceinline__ i64 fidx(i64 bh, i64 t, i64 c) const {
    return (bh * T + t) * Dg + c;
  }
  __host__ __device__ __forceinline__ i64 chunk_len(i64 c) const {
    const i64 rest = T - c * C;
    return rest < C ? rest : C;
  }
};

// Grid-stride loop bounds.
#define LSM_DECAY_FOR(idx, n)                                                        \
  for (i64 idx = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; idx < (n); \
       idx += static_cast<i64>(gridDim.x) * blockDim.x)

constexpr int kThreads = 256;

// ---- forward pieces ---------------------------------------------------------------------------

// b, e, f per (b, h, chunk, channel); the cumulative sum runs in f64.
template <bool kVector, class T, class A>
__host__ __device__ inline void decay_factors_item(const Args<T, A>& a, i64 idx) {
  const i64 c = idx % a.Dg;
  const i64 chunk = (idx / a.Dg) % a.NC;
  const i64 bh = idx / (a.Dg * a.NC);
  const i64 b = bh / a.H, h = bh % a.H;
  const i64 t0 = chunk * a.C, L = a.chunk_len(chunk);
  double s = 0;
  for (i64 t = t0; t < t0 + L; ++t) {
    const T* g = a.g.at(b, t, h);
    s += static_cast<double>(load_value(g + (kVector ? c : 0)));
    a.cb[a.fidx(bh, t, c)] = s;
  }
  const double last = a.cb[a.fidx(bh, t0 + L - 1, c)];
  for (i64 t = t0; t < t0 + L; ++t) {
    const double bt = a.cb[a.fidx(bh, t, c)];
    a.ce[a.fidx(bh, t, c)] = factor<A>(bt);
    a.cf[a.fidx(bh, t, c)] = factor<A>(last - bt);
  }
}
template <bool kVector, class T, class A>
__global__ void decay_factors_kernel(Args<T, A> a) {
  const i64 n = a.B * a.H * a.NC * a.Dg;
  LSM_DECAY_FOR(idx, n) decay_factors_item<kVector, T, A>(a, idx);
}

// U_c[x, y] = Σ_j k_jx f_jx v_jy, written over the chunk's slot of `states`.
template <bool kVector, class T, class A>
__host__ __device__ inline void state_contrib_item(const Args<T, A>& a, i64 idx) {
  const i64 y = idx % a.Dv;
  const i64 x = (idx / a.Dv) % a.Dk;
  const i64 chunk = (idx / (a.Dv * a.Dk)) % a.NC;
  const i64 bh = idx / (a.Dv * a.Dk * a.NC);
  const i64 b = bh / a.H, h = bh % a.H, hk = a.qk_head(h);
  const i64 t0 = chunk * a.C, L = a.chunk_len(chunk);
  const i64 gc = kVector ? x : 0;
  A u = 0;
  for (i64 t = t0; t < t0 + L; ++t) {
    const A kf = load_value(a.k.at(b, t, hk) + x) * a.cf[a.fidx(bh, t, gc)];
    u += kf * load_value(a.v.at(b, t, h) + y);
  }
  a.states[idx] = u;
}
template <bool kVector, class T, class A>
__global__ void state_contrib_kernel(Args<T, A> a) {
  const i64 n = a.B * a.H * a.NC * a.Dk * a.Dv;
  LSM_DECAY_FOR(idx, n) state_contrib_item<kVector, T, A>(a, idx);
}

// Sequential over chunks per state element: states[c] ← the state entering chunk c (read U_c
// first), S ← e_{L−1} S + U_c. final_state (may be null) gets the last S.
template <bool kVector, class T, class A>
__host__ __device__ inline void state_scan_item(const Args<T, A>& a, const A* initial_state,
                                                A* final_state, i64 idx) {
  const i64 y = idx % a.Dv;
  const i64 x = (idx / a.Dv) % a.Dk;
  const i64 bh = idx / (a.Dv * a.Dk);
  const i64 gc = kVector ? x : 0;
  A s = initial_state ? initial_state[idx] : A(0);
  for (i64 chunk = 0; chunk < a.NC; ++chunk) {
    A* slot = a.states + ((bh * a.NC + chunk) * a.Dk + x) * a.Dv + y;
    const A u = *slot;
    *slot = s;
    const i64 last = chunk * a.C + a.chunk_len(chunk) - 1;
    s = a.ce[a.fidx(bh, last, gc)] * s + u;
  }
  if (final_state) final_state[idx] = s;
}
template <bool kVector, class T, class A>
__global__ void state_scan_kernel(Args<T, A> a, const A* initial_state, A* final_state) {
  const i64 n = a.B * a.H * a.Dk * a.Dv;
  LSM_DECAY_FOR(idx, n) state_scan_item<kVector, T, A>(a, initial_state, final_state, idx);
}

// attn[i, j] = scale Σ_x q_ix k_jx M_ijx for j ≤ i < L (else 0). With `with_d` also
// dattn[i, j] = scale do_i·v_j, times M_ij for the scalar family (j ≤ i < L, else 0).
template <bool kVector, class T, class A>
__host__ __device__ inline void scores_item(const Args<T, A>& a, bool with_d, i64 idx) {
  const i64 j = idx % a.C;
  const i64 i = (idx / a.C) % a.C;
  const i64 chunk = (idx / (a.C * a.C)) % a.NC;
  const i64 bh = idx / (a.C * a.C * a.NC);
  const i64 b = bh / a.H, h = bh % a.H, hk = a.qk_head(h);
  const i64 t0 = chunk * a.C, L = a.chunk_len(chunk);
  A s = 0, d = 0;
  if (j <= i && i < L) {
    const T* qi = a.q.at(b, t0 + i, hk);
    const T* kj = a.k.at(b, t0 + j, hk);
    if constexpr (kVector) {
      const double* bi = a.cb + a.fidx(bh, t0 + i, 0);
      const double* bj = a.cb + a.fidx(bh, t0 + j, 0);
      for (i64 x = 0; x < a.Dk; ++x)
        s += load_value(qi + x) * load_value(kj + x) * factor<A>(bi[x] - bj[x]);
      s *= a.scale;
    } else {
      for (i64 x = 0; x < a.Dk; ++x) s += load_value(qi + x) * load_value(kj + x);
      const A m = factor<A>(a.cb[a.fidx(bh, t0 + i, 0)] - a.cb[a.fidx(bh, t0 + j, 0)]);
      s *= a.scale * m;
    }
    if (with_d) {
      const T* doi = a.d_o.at(b, t0 + i, h);
      const T* vj = a.v.at(b, t0 + j, h);
      for (i64 y = 0; y < a.Dv; ++y) d += load_value(doi + y) * load_value(vj + y);
      d *= a.scale;
      if constexpr (!kVector) {
        d *= factor<A>(a.cb[a.fidx(bh, t0 + i, 0)] - a.cb[a.fidx(bh, t0 + j, 0)]);
      }
    }
  }
  a.attn[idx] = s;
  if (with_d) a.dattn[idx] = d;
}
template <bool kVector, class T, class A>
__global__ void scores_kernel(Args<T, A> a, bool with_d) {
  const i64 n = a.B * a.H * a.NC * a.C * a.C;
  LSM_DECAY_FOR(idx, n) scores_item<kVector, T, A>(a, with_d, idx);
}

// o_iy = Σ_{j≤i} A_ij v_jy + scale Σ_x q_ix e_ix P_xy.
template <bool kVector, class T, class A>
__host__ __device__ inline void output_item(const Args<T, A>& a, Rows<T> o, i64 idx) {
  const i64 y = idx % a.Dv;
  const i64 h = (idx / a.Dv) % a.H;
  const i64 t = (idx / (a.Dv * a.H)) % a.T;
  const i64 b = idx / (a.Dv * a.H * a.T);
  const i64 bh = b * a.H + h, hk = a.qk_head(h);
  const i64 chunk = t / a.C, t0 = chunk * a.C, i = t - t0;
  const A* arow = a.attn + ((bh * a.NC + chunk) * a.C + i) * a.C;
  A intra = 0;
  for (i64 j = 0; j <= i; ++j) intra += arow[j] * load_value(a.v.at(b, t0 + j, h) + y);
  const T* qi = a.q.at(b, t, hk);
  const A* P = a.states + (bh * a.NC + chunk) * a.Dk * a.Dv;
  A inter = 0;
  for (i64 x = 0; x < a.Dk; ++x) {
    inter += load_value(qi + x) * a.ce[a.fidx(bh, t, kVector ? x : 0)] * P[x * a.Dv + y];
  }
  store_value(o.at(b, t, h) + y, intra + a.scale * inter);
}
template <bool kVector, class T, class A>
__global__ void output_kernel(Args<T, A> a, Rows<T> o) {
  const i64 n = a.B * a.T * a.H * a.Dv;
  LSM_DECAY_FOR(idx, n) output_item<kVector, T, A>(a, o, idx);
}

// ---- backward pieces --------------------------------------------------------------------------

// W_c[x, y] = scale Σ_i q_ix e_ix do_iy, written over the chunk's slot of `dstates`.
template <bool kVector, class T, class A>
__host__ __device__ inline void dstate_contrib_item(const Args<T, A>& a, i64 idx) {
  const i64 y = idx % a.Dv;
  const i64 x = (idx / a.Dv) % a.Dk;
  const i64 chunk = (idx / (a.Dv * a.Dk)) % a.NC;
  const i64 bh = idx / (a.Dv * a.Dk * a.NC);
  const i64 b = bh / a.H, h = bh % a.H, hk = a.qk_head(h);
  const i64 t0 = chunk * a.C, L = a.chunk_len(chunk);
  const i64 gc = kVector ? x : 0;
  A w = 0;
  for (i64 t = t0; t < t0 + L; ++t) {
    const A qe = load_value(a.q.at(b, t, hk) + x) * a.ce[a.fidx(bh, t, gc)];
    w += qe * load_value(a.d_o.at(b, t, h) + y);
  }
  a.dstates[idx] = a.scale * w;
}
template <bool kVector, class T, class A>
__global__ void dstate_contrib_kernel(Args<T, A> a) {
  const i64 n = a.B * a.H * a.NC * a.Dk * a.Dv;
  LSM_DECAY_FOR(idx, n) dstate_contrib_item<kVector, T, A>(a, idx);
}

// Reverse over chunks per element: dstates[c] ← G leaving chunk c (read W_c first),
// G ← e_{L−1} G + W_c. d_initial_state (may be null) gets the last G.
template <bool kVector, class T, class A>
__host__ __device__ inline void dstate_scan_item(const Args<T, A>& a, const A* d_final_state,
                                                 A* d_initial_state, i64 idx) {
  const i64 y = idx % a.Dv;
  const i64 x = (idx / a.Dv) % a.Dk;
  const i64 bh = idx / (a.Dv * a.Dk);
  const i64 gc = kVector ? x : 0;
  A g = d_final_state ? d_final_state[idx] : A(0);
  for (i64 chunk = a.NC - 1; chunk >= 0; --chunk) {
    A* slot = a.dstates + ((bh * a.NC + chunk) * a.Dk + x) * a.Dv + y;
    const A w = *slot;
    *slot = g;
    const i64 last = chunk * a.C + a.chunk_len(chunk) - 1;
    g = a.ce[a.fidx(bh, last, gc)] * g + w;
  }
  if (d_initial_state) d_initial_state[idx] = g;
}
template <bool kVector, class T, class A>
__global__ void dstate_scan_kernel(Args<T, A> a, const A* d_final_state, A* d_initial_state) {
  const i64 n = a.B * a.H * a.Dk * a.Dv;
  LSM_DECAY_FOR(idx, n) dstate_scan_item<kVector, T, A>(a, d_final_state, d_initial_state, idx);
}

// Where dq/dk go: the output rows (Hk == H), or per-head compute-type scratch [B,T,H,Dk].
template <class T, class A>
struct QkOut {
  Rows<T> out;
  A* scratch = nullptr;
  __host__ __device__ __forceinline__ void put(const Args<T, A>& a, i64 b, i64 t, i64 h, i64 x,
                                               A value) const {
    if (scratch) {
      scratch[((b * a.T + t) * a.H + h) * a.Dk + x] = value;
    } else {
      store_value(out.at(b, t, h) + x, value);
    }
  }
};

// dq_ix = Σ_{j≤i} D_ij k_jx M_ijx + scale e_ix (P do_i)_x; wx = q ⊙ (strict part), win = q ⊙
// (state part).
template <bool kVector, class T, class A>
__host__ __device__ inline void dq_item(const Args<T, A>& a, QkOut<T, A> dq, i64 idx) {
  const i64 x = idx % a.Dk;
  const i64 h = (idx / a.Dk) % a.H;
  const i64 t = (idx / (a.Dk * a.H)) % a.T;
  const i64 b = idx / (a.Dk * a.H * a.T);
  const i64 bh = b * a.H + h, hk = a.qk_head(h);
  const i64 chunk = t / a.C, t0 = chunk * a.C, i = t - t0;
  const A* drow = a.dattn + ((bh * a.NC + chunk) * a.C + i) * a.C;
  const double bi = kVector ? a.cb[a.fidx(bh, t, x)] : 0.0;
  A strict = 0;
  for (i64 j = 0; j < i; ++j) {
    A term = drow[j] * load_value(a.k.at(b, t0 + j, hk) + x);
    if constexpr (kVector) term *= factor<A>(bi - a.cb[a.fidx(bh, t0 + j, x)]);
    strict += term;
  }
  const A diag = drow[i] * load_value(a.k.at(b, t, hk) + x);
  const A* P = a.states + (bh * a.NC + chunk) * a.Dk * a.Dv + x * a.Dv;
  const T* doi = a.d_o.at(b, t, h);
  A pd = 0;
  for (i64 y = 0; y < a.Dv; ++y) pd += P[y] * load_value(doi + y);
  const A inter = a.scale * a.ce[a.fidx(bh, t, kVector ? x : 0)] * pd;
  const A qx = load_value(a.q.at(b, t, hk) + x);
  const i64 w = (bh * a.T + t) * a.Dk + x;
  a.wx[w] = qx * strict;
  a.win[w] = qx * inter;
  dq.put(a, b, t, h, x, strict + diag + inter);
}
template <bool kVector, class T, class A>
__global__ void dq_kernel(Args<T, A> a, QkOut<T, A> dq) {
  const i64 n = a.B * a.T * a.H * a.Dk;
  LSM_DECAY_FOR(idx, n) dq_item<kVector, T, A>(a, dq, idx);
}

// dk_jx = Σ_{i≥j} D_ij q_ix M_ijx + f_jx (G v_j)_x; wy = k ⊙ (strict part + state part).
template <bool kVector, class T, class A>
__host__ __device__ inline void dk_item(const Args<T, A>& a, QkOut<T, A> dk, i64 idx) {
  const i64 x = idx % a.Dk;
  const i64 h = (idx / a.Dk) % a.H;
  const i64 t = (idx / (a.Dk * a.H)) % a.T;
  const i64 b = idx / (a.Dk * a.H * a.T);
  const i64 bh = b * a.H + h, hk = a.qk_head(h);
  const i64 chunk = t / a.C, t0 = chunk * a.C, j = t - t0, L = a.chunk_len(chunk);
  const A* dblock = a.dattn + (bh * a.NC + chunk) * a.C * a.C;
  const double bj = kVector ? a.cb[a.fidx(bh, t, x)] : 0.0;
  A strict = 0;
  for (i64 i = j + 1; i < L; ++i) {
    A term = dblock[i * a.C + j] * load_value(a.q.at(b, t0 + i, hk) + x);
    if constexpr (kVector) term *= factor<A>(a.cb[a.fidx(bh, t0 + i, x)] - bj);
    strict += term;
  }
  const A diag = dblock[j * a.C + j] * load_value(a.q.at(b, t, hk) + x);
  const A* G = a.dstates + (bh * a.NC + chunk) * a.Dk * a.Dv + x * a.Dv;
  const T* vj = a.v.at(b, t, h);
  A gv = 0;
  for (i64 y = 0; y < a.Dv; ++y) gv += G[y] * load_value(vj + y);
  const A inter = a.cf[a.fidx(bh, t, kVector ? x : 0)] * gv;
  const A kx = load_value(a.k.at(b, t, hk) + x);
  a.wy[(bh * a.T + t) * a.Dk + x] = kx * (strict + inter);
  dk.put(a, b, t, h, x, strict + diag + inter);
}
template <bool kVector, class T, class A>
__global__ void dk_kernel(Args<T, A> a, QkOut<T, A> dk) {
  const i64 n = a.B * a.T * a.H * a.Dk;
  LSM_DECAY_FOR(idx, n) dk_item<kVector, T, A>(a, dk, idx);
}

// dv_jy = Σ_{i≥j} A_ij do_iy + Σ_x k_jx f_jx G_xy.
template <bool kVector, class T, class A>
__host__ __device__ inline void dv_item(const Args<T, A>& a, Rows<T> dv, i64 idx) {
  const i64 y = idx % a.Dv;
  const i64 h = (idx / a.Dv) % a.H;
  const i64 t = (idx / (a.Dv * a.H)) % a.T;
  const i64 b = idx / (a.Dv * a.H * a.T);
  const i64 bh = b * a.H + h, hk = a.qk_head(h);
  const i64 chunk = t / a.C, t0 = chunk * a.C, j = t - t0, L = a.chunk_len(chunk);
  const A* ablock = a.attn + (bh * a.NC + chunk) * a.C * a.C;
  A intra = 0;
  for (i64 i = j; i < L; ++i) intra += ablock[i * a.C + j] * load_value(a.d_o.at(b, t0 + i, h) + y);
  const A* G = a.dstates + (bh * a.NC + chunk) * a.Dk * a.Dv;
  const T* kj = a.k.at(b, t, hk);
  A inter = 0;
  for (i64 x = 0; x < a.Dk; ++x) {
    inter += load_value(kj + x) * a.cf[a.fidx(bh, t, kVector ? x : 0)] * G[x * a.Dv + y];
  }
  store_value(dv.at(b, t, h) + y, intra + inter);
}
template <bool kVector, class T, class A>
__global__ void dv_kernel(Args<T, A> a, Rows<T> dv) {
  const i64 n = a.B * a.T * a.H * a.Dv;
  LSM_DECAY_FOR(idx, n) dv_item<kVector, T, A>(a, dv, idx);
}

// dg_u per (b, h, chunk, channel) (the scalar family sums the weights over the channels):
//   through + Σ_{v<u} (wy_v − wx_v) + Σ_{i≥u} win_i, through = e_{L−1} ⊙ rowsum(G ⊙ P).
// The suffix sums of win are formed in place first.
template <bool kVector, class T, class A>
__host__ __device__ inline void decay_grad_item(const Args<T, A>& a, Rows<T> dg, i64 idx) {
  const i64 c = idx % a.Dg;
  const i64 chunk = (idx / a.Dg) % a.NC;
  const i64 bh = idx / (a.Dg * a.NC);
  const i64 b = bh / a.H, h = bh % a.H;
  const i64 t0 = chunk * a.C, L = a.chunk_len(chunk);
  const i64 x0 = kVector ? c : 0, x1 = kVector ? c + 1 : a.Dk;  // channels summed
  const A* P = a.states + (bh * a.NC + chunk) * a.Dk * a.Dv;
  const A* G = a.dstates + (bh * a.NC + chunk) * a.Dk * a.Dv;
  A gp = 0;
  for (i64 x = x0; x < x1; ++x) {
    for (i64 y = 0; y < a.Dv; ++y) gp += G[x * a.Dv + y] * P[x * a.Dv + y];
  }
  const A through = a.ce[a.fidx(bh, t0 + L - 1, c)] * gp;
  // Σ_{i≥u} win_i over the summed channels, into win[u, x0].
  A suffix = 0;
  for (i64 u = L - 1; u >= 0; --u) {
    A* w = a.win + (bh * a.T + t0 + u) * a.Dk;
    for (i64 x = x0; x < x1; ++x) suffix += w[x];
    w[x0] = suffix;
  }
  A prefix = through;
  for (i64 u = 0; u < L; ++u) {
    const i64 w = (bh * a.T + t0 + u) * a.Dk;
    store_value(dg.at(b, t0 + u, h) + (kVector ? c : 0), prefix + a.win[w + x0]);
    for (i64 x = x0; x < x1; ++x) prefix += a.wy[w + x] - a.wx[w + x];
  }
}
template <bool kVector, class T, class A>
__global__ void decay_grad_kernel(Args<T, A> a, Rows<T> dg) {
  const i64 n = a.B * a.H * a.NC * a.Dg;
  LSM_DECAY_FOR(idx, n) decay_grad_item<kVector, T, A>(a, dg, idx);
}

// out[b, t, hk, x] = Σ_{r<group} scratch[b, t, hk·group + r, x], in head order.
template <class T, class A>
__host__ __device__ inline void group_sum_item(i64 B, i64 Tn, i64 H, i64 Hk, i64 Dk,
                                               const A* scratch, Rows<T> out, i64 idx) {
  const i64 group = H / Hk;
  const i64 x = idx % Dk;
  const i64 hk = (idx / Dk) % Hk;
  const i64 t = (idx / (Dk * Hk)) % Tn;
  const i64 b = idx / (Dk * Hk * Tn);
  A s = 0;
  for (i64 r = 0; r < group; ++r) s += scratch[((b * Tn + t) * H + hk * group + r) * Dk + x];
  store_value(out.at(b, t, hk) + x, s);
}
template <class T, class A>
__global__ void group_sum_kernel(i64 B, i64 Tn, i64 H, i64 Hk, i64 Dk, const A* scratch,
                                 Rows<T> out) {
  const i64 n = B * Tn * Hk * Dk;
  LSM_DECAY_FOR(idx, n) group_sum_item<T, A>(B, Tn, H, Hk, Dk, scratch, out, idx);
}

#undef LSM_DECAY_FOR

// ---- host side --------------------------------------------------------------------------------

inline int grid_for(i64 n) {
  return blocks_for(n, kThreads);
}

// Temporaries of one call, carved out of one stream-ordered ScratchBuffer (cuda_context.cuh:
// freed on the stream after the kernels queued here, nothing synchronises); each piece 16-byte
// aligned.
class Workspace {
 public:
  Workspace(cudaStream_t stream, std::size_t bytes)
      : buffer_(stream, bytes), next_(buffer_.as<char>()) {}
  template <class U>
  U* take(i64 count) {
    U* p = reinterpret_cast<U*>(next_);
    next_ += padded(static_cast<std::size_t>(count) * sizeof(U));
    return p;
  }
  static std::size_t padded(std::size_t bytes) { return (bytes + 15) / 16 * 16; }

 private:
  ScratchBuffer buffer_;
  char* next_;
};

template <class T, class A>
Args<T, A> make_args(const Dims& d, bool vector_decay, const Tensor& q, const Tensor& k,
                     const Tensor& v, const Tensor& log_decay, double scale) {
  Args<T, A> a{};
  a.B = d.B, a.T = d.T, a.H = d.H, a.Hk = d.Hk, a.Dk = d.Dk, a.Dv = d.Dv, a.C = d.C;
  a.NC = d.chunks();
  a.Dg = vector_decay ? d.Dk : 1;
  a.scale = static_cast<A>(scale);
  a.q = rows_of<const T>(q), a.k = rows_of<const T>(k), a.v = rows_of<const T>(v);
  a.g = rows_of<const T>(log_decay);
  return a;
}

// Element counts of the temporaries.
struct Sizes {
  i64 factors, states, scores, weights, scratch;
  Sizes(const Dims& d, i64 Dg) {
    const i64 bh = d.B * d.H;
    factors = bh * d.T * Dg;
    states = bh * d.chunks() * d.Dk * d.Dv;
    scores = bh * d.chunks() * d.C * d.C;
    weights = bh * d.T * d.Dk;
    scratch = d.B * d.T * d.H * d.Dk;
  }
  // Bytes of `count` elements of U, padded as Workspace::take pads them.
  template <class U>
  static std::size_t bytes(i64 count) {
    return Workspace::padded(static_cast<std::size_t>(count) * sizeof(U));
  }
};

// Factors, chunk-start states (and the final state): the first half of forward and backward.
template <bool kVector, class T, class A>
void run_states(cudaStream_t stream, Args<T, A>& a, const Tensor& initial_state,
                const Tensor& final_state) {
  const i64 nf = a.B * a.H * a.NC * a.Dg;
  decay_factors_kernel<kVector><<<grid_for(nf), kThreads, 0, stream>>>(a);
  CUDA_CHECK_LAUNCH();
  const i64 ns = a.B * a.H * a.NC * a.Dk * a.Dv;
  if (ns > 0) {
    state_contrib_kernel<kVector><<<grid_for(ns), kThreads, 0, stream>>>(a);
    CUDA_CHECK_LAUNCH();
  }
  const i64 ne = a.B * a.H * a.Dk * a.Dv;
  const A* init = initial_state.defined() ? static_cast<const A*>(initial_state.data) : nullptr;
  A* fin = final_state.defined() ? static_cast<A*>(final_state.data) : nullptr;
  state_scan_kernel<kVector><<<grid_for(ne), kThreads, 0, stream>>>(a, init, fin);
  CUDA_CHECK_LAUNCH();
}

template <bool kVector, class T>
void forward(CudaBackend& be, const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& log_decay, double scale, const Tensor& initial_state, const Tensor& o,
             const Tensor& final_state) {
  using A = compute_t<T>;
  cudaStream_t stream = be.context().stream;
  Args<T, A> a = make_args<T, A>(d, kVector, q, k, v, log_decay, scale);
  const Sizes s(d, a.Dg);
  Workspace ws(stream, s.bytes<double>(s.factors) + 2 * s.bytes<A>(s.factors) +
                           s.bytes<A>(s.states) + s.bytes<A>(s.scores));
  a.cb = ws.take<double>(s.factors);
  a.ce = ws.take<A>(s.factors), a.cf = ws.take<A>(s.factors);
  a.states = ws.take<A>(s.states);
  a.attn = ws.take<A>(s.scores);
  run_states<kVector>(stream, a, initial_state, final_state);
  if (d.B * d.H * d.T == 0) return;
  scores_kernel<kVector><<<grid_for(s.scores), kThreads, 0, stream>>>(a, false);
  CUDA_CHECK_LAUNCH();
  const i64 no = d.B * d.T * d.H * d.Dv;
  output_kernel<kVector><<<grid_for(no), kThreads, 0, stream>>>(a, rows_of<T>(o));
  CUDA_CHECK_LAUNCH();
}

template <bool kVector, class T>
void backward(CudaBackend& be, const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& log_decay, double scale, const Tensor& initial_state, const Tensor& d_o,
              const Tensor& d_final_state, const Tensor& dq, const Tensor& dk, const Tensor& dv,
              const Tensor& d_log_decay, const Tensor& d_initial_state) {
  using A = compute_t<T>;
  cudaStream_t stream = be.context().stream;
  Args<T, A> a = make_args<T, A>(d, kVector, q, k, v, log_decay, scale);
  a.d_o = rows_of<const T>(d_o);
  const Sizes s(d, a.Dg);
  const bool grouped = d.Hk < d.H;
  const std::size_t bytes = s.bytes<double>(s.factors) + 2 * s.bytes<A>(s.factors) +
                            2 * s.bytes<A>(s.states) + 2 * s.bytes<A>(s.scores) +
                            3 * s.bytes<A>(s.weights) + (grouped ? 2 * s.bytes<A>(s.scratch) : 0);
  Workspace ws(stream, bytes);
  a.cb = ws.take<double>(s.factors);
  a.ce = ws.take<A>(s.factors), a.cf = ws.take<A>(s.factors);
  a.states = ws.take<A>(s.states), a.dstates = ws.take<A>(s.states);
  a.attn = ws.take<A>(s.scores), a.dattn = ws.take<A>(s.scores);
  a.wx = ws.take<A>(s.weights), a.wy = ws.take<A>(s.weights), a.win = ws.take<A>(s.weights);
  QkOut<T, A> dq_out, dk_out;
  dq_out.out = rows_of<T>(dq), dk_out.out = rows_of<T>(dk);
  if (grouped) dq_out.scratch = ws.take<A>(s.scratch), dk_out.scratch = ws.take<A>(s.scratch);

  run_states<kVector>(stream, a, initial_state, Tensor{});
  const i64 ns = a.B * a.H * a.NC * a.Dk * a.Dv;
  if (ns > 0) {
    dstate_contrib_kernel<kVector><<<grid_for(ns), kThreads, 0, stream>>>(a);
    CUDA_CHECK_LAUNCH();
  }
  const i64 ne = a.B * a.H * a.Dk * a.Dv;
  const A* dfin = d_final_state.defined() ? static_cast<const A*>(d_final_state.data) : nullptr;
  A* dinit = d_initial_state.defined() ? static_cast<A*>(d_initial_state.data) : nullptr;
  dstate_scan_kernel<kVector><<<grid_for(ne), kThreads, 0, stream>>>(a, dfin, dinit);
  CUDA_CHECK_LAUNCH();
  if (d.B * d.H * d.T == 0) return;

  scores_kernel<kVector><<<grid_for(s.scores), kThreads, 0, stream>>>(a, true);
  CUDA_CHECK_LAUNCH();
  const i64 nk = d.B * d.T * d.H * d.Dk;
  dq_kernel<kVector><<<grid_for(nk), kThreads, 0, stream>>>(a, dq_out);
  CUDA_CHECK_LAUNCH();
  dk_kernel<kVector><<<grid_for(nk), kThreads, 0, stream>>>(a, dk_out);
  CUDA_CHECK_LAUNCH();
  const i64 nv = d.B * d.T * d.H * d.Dv;
  dv_kernel<kVector><<<grid_for(nv), kThreads, 0, stream>>>(a, rows_of<T>(dv));
  CUDA_CHECK_LAUNCH();
  if (d_log_decay.defined()) {
    const i64 ng = a.B * a.H * a.NC * a.Dg;
    decay_grad_kernel<kVector><<<grid_for(ng), kThreads, 0, stream>>>(a, rows_of<T>(d_log_decay));
    CUDA_CHECK_LAUNCH();
  }
  if (grouped) {
    const i64 nq = d.B * d.T * d.Hk * d.Dk;
    group_sum_kernel<T, A><<<grid_for(nq), kThreads, 0, stream>>>(d.B, d.T, d.H, d.Hk, d.Dk,
                                                                  dq_out.scratch, rows_of<T>(dq));
    CUDA_CHECK_LAUNCH();
    group_sum_kernel<T, A><<<grid_for(nq), kThreads, 0, stream>>>(d.B, d.T, d.H, d.Hk, d.Dk,
                                                                  dk_out.scratch, rows_of<T>(dk));
    CUDA_CHECK_LAUNCH();
  }
}

// ---- launcher checks (mirroring kernels/cpu/lsm_chunk_common.h) --------------------------------

inline void check_rows(const Tensor& t, const Shape& shape, DType dtype, const char* op,
                       const char* arg) {
  check_device(t, op, arg);
  check_dtype(t, dtype, op, arg);
  check_shape(t, shape, op, arg);
  LINMOE_CHECK(t.ndim() < 4 || t.shape[3] <= 1 || t.strides[3] == 1, op, ": ", arg, " ", t.str(),
               " needs a contiguous last dimension");
}

inline void check_state(const Tensor& t, const Dims& d, DType dtype, const char* op,
                        const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, stat_dtype(dtype), op, arg);
  check_shape(t, Shape{d.B, d.H, d.Dk, d.Dv}, op, arg);
}

// The chunk used: chunk_size, or T when that is shorter (one chunk of T is the same math).
inline i64 effective_chunk(int chunk_size, i64 T, const char* op) {
  LINMOE_CHECK(chunk_size >= 1, op, ": chunk_size must be ≥ 1, got ", chunk_size);
  return std::min<i64>(chunk_size, std::max<i64>(T, 1));
}

}  // namespace lsm_decay
}  // namespace cuda
}  // namespace linmoe
