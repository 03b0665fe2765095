// The delta-rule LSM core on the GPU (MODEL.md section 3: deltanet, gated_deltanet), forward and
// backward; the same chunked WY/UT mathematics as kernels/cpu/lsm_delta_rule.cpp (read its header
// first: the symbols below are its symbols). Per batch b and head h, α_t = exp(g_t):
//   S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,   o_t = scale · S_tᵀ q_t.
//
// Per chunk of L ≤ C tokens entering with state P, X = (I + A)⁻¹ with A_ij = β_i M_ij (k_i·k_j)
// (j < i) is the only chunk-local quantity that needs a sequential algorithm; it depends on k, β
// and g only, so one launch computes every chunk's X in parallel (delta_solve_kernel, the
// triangular inverse by forward substitution in fp32, f64 for f64 inputs). The sequential pass
// over the chunks then needs no further solve:
//   U = X (diag(β) (V − diag(γ) K P))          (= Ũ − W P of the CPU: W P folded into one product)
//   O = scale (diag(γ) Q P + (Q Kᵀ ⊙ M) U),    N = γ_L−1 P + (diag(η) K)ᵀ U.
// Backward (chunks in reverse, G = dL/dN; the states entering the chunks recomputed by a forward
// state pass of the same block and kept in a device scratch buffer): the CPU's solves with
// (I + A)ᵀ become products with Xᵀ, and since the solve is linear, R_w = R_v Pᵀ and
// −dA = R_v Ũᵀ + R_w (−W)ᵀ = R_v Uᵀ, so W is never formed:
//   dU = attnᵀ dO + diag(η) K G,  R_v = Xᵀ dU,  Z = R_v Uᵀ (j < i),  D_ij = −Z_ij β_i M_ij,
//   dv = diag(β) R_v,  dq = scale diag(γ) dO Pᵀ + (scale M ⊙ dO Uᵀ) K,
//   dk = diag(η) U Gᵀ + (scale M ⊙ dO Uᵀ)ᵀ Q + D K + Dᵀ K − diag(βγ) R_v Pᵀ,
//   dβ_i = −Σ_j Z_ij M_ij (k_i·k_j) + R_v,i·v_i − γ_i R_v,i·(Pᵀ k_i),
//   G ← γ_L−1 G + scale Qᵀ diag(γ) dO − Kᵀ diag(βγ) R_v,   and dg as on the CPU.
//
// Launch layout: the sequential kernels run one thread block per (Dv tile, b, h): every formula
// above is column-local in Dv (P, G, U, dU, R_v, O, dv) or a sum over Dv columns that enters the
// remaining gradients linearly (dO Uᵀ, Z, ⟨G, P⟩, the row products): each tile writes its partial
// dq, dk, dβ and dg to an fp32 (f64) scratch buffer and a last launch sums the tiles in a fixed
// order (deterministic) into the outputs. The block keeps its chunk (q, k, v and dO tiles, the
// C×C matrices) and its state tile in shared memory, in fp32 (f64 for f64); the chunk length is
// min(chunk_size, 64), shortened where the shared memory would not fit (pick_launch; the chunk
// length never changes the mathematics, only the rounding). Decay factors are exponentials of
// chunk-local differences b_i − b_j ≤ 0 flushed to zero below kMinLogDecay, as on the CPU: finite
// for any T.
//
// bf16 forwards and backwards with chunk_size 64, Dk and Dv in {64, 128} and 16-byte aligned rows
// run on the tensor cores instead (lsm_delta_rule_mma.cuh, lsm_delta_rule_mma_bwd.cuh, launched
// from lsm_delta_rule_mma_launch.cuh); the kernels here take every other call.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/lsm_delta_rule_mma_launch.cuh"

namespace linmoe {
namespace {

using cuda::i64;

constexpr int kThreads = 256;  // every kernel of this file (8 warps)
constexpr int kMaxChunk = 64;

// Decay factors exp(x) with x below this are flushed to zero (as kernels/cpu/lsm_chunk_common.h).
template <class A>
struct MinLogDecay {
  static constexpr double value = -600.0;
};
template <>
struct MinLogDecay<float> {
  static constexpr double value = -60.0;
};

__device__ __forceinline__ float exp_of(float x) {
  return expf(x);
}
__device__ __forceinline__ double exp_of(double x) {
  return exp(x);
}

// exp(x) for x ≤ 0 (a decay over a span of tokens), flushed to zero below MinLogDecay.
template <class A>
__device__ __forceinline__ A decay_factor(double x) {
  return x < MinLogDecay<A>::value ? A(0) : exp_of(static_cast<A>(x));
}

// A [B, T, H, D] tensor with a contiguous last dimension (rows may be strided), or [B, T, H].
template <class T>
struct Rows {
  T* p = nullptr;
  i64 sb = 0, st = 0, sh = 0;
  __host__ __device__ T* at(i64 b, i64 t, i64 h) const { return p + b * sb + t * st + h * sh; }
};

template <class T>
Rows<T> rows_of(const Tensor& x) {
  Rows<T> r;
  r.p = static_cast<T*>(x.data);
  r.sb = x.stride(0), r.st = x.stride(1), r.sh = x.stride(2);
  return r;
}

// Sizes of one call and of its launch: C the chunk length used, Dvt the Dv columns per block.
struct Geo {
  int B = 0, H = 0, Dk = 0, Dv = 0, C = 0, Dvt = 0, nt = 0;
  i64 T = 0, nc = 0;
  __host__ __device__ int ldk() const { return Dk + 1; }   // rows of q, k (padded: no conflicts)
  __host__ __device__ int ldc() const { return C + 1; }    // rows of the C×C matrices
  __host__ __device__ int ldv() const { return Dvt + 1; }  // rows of the tiles and states
};

template <class T, class A>
struct Inputs {
  Rows<const T> q, k, v, beta, g;    // [B, T, H, Dk] × 2, [B, T, H, Dv], [B, T, H] × 2
  bool gated = false;                // g given; otherwise α = 1
  const A* initial_state = nullptr;  // [B, H, Dk, Dv] or null
  A scale = 0;
};

template <class T, class A>
struct Grads {
  Rows<const T> d_o;                     // [B, T, H, Dv]
  const A* d_final_state = nullptr;      // [B, H, Dk, Dv] or null
  Rows<T> dv;                            // [B, T, H, Dv] (complete per tile)
  A* d_initial_state = nullptr;          // [B, H, Dk, Dv] or null
  A *ws_dq = nullptr, *ws_dk = nullptr;  // [nt, B, T, H, Dk] per-tile partial sums
  A *ws_db = nullptr, *ws_dg = nullptr;  // [nt, B, T, H] (ws_dg null: no d_log_decay)
};

// Shared memory of one block, carved in a fixed order (the host sizes it with base = null).
template <class A>
struct Work {
  double* b = nullptr;                                  // [C] cumulative log decay
  A *gam = nullptr, *eta = nullptr, *beta = nullptr;    // [C] γ_i, η_i, β_i
  A *w_in = nullptr, *w_out = nullptr, *red = nullptr;  // [C], [C], [32]
  A *q = nullptr, *k = nullptr;                         // [C, ldk]
  A *x = nullptr, *attn = nullptr, *amat = nullptr;     // [C, ldc] X, scale QKᵀ⊙M, A (solve)
  A *kkm = nullptr, *m = nullptr, *dm = nullptr, *z = nullptr;  // [C, ldc] M⊙KKᵀ, M, dO Uᵀ, Z
  A *p = nullptr, *g = nullptr;                                // [Dk, ldv] state tile, its gradient
  A *v = nullptr, *u = nullptr, *kp = nullptr, *qp = nullptr;  // [C, ldv] V, U, K P, Q P
  A *d_o = nullptr, *du = nullptr, *drv = nullptr, *kg = nullptr;  // [C, ldv] dO, dU, R_v, K G
};

enum class Kind { solve, forward, backward };

struct Carver {
  char* base;
  std::size_t off = 0;
  template <class U>
  __host__ __device__ U* take(i64 count) {
    off = (off + 15) / 16 * 16;
    U* r = base ? reinterpret_cast<U*>(base + off) : nullptr;
    off += static_cast<std::size_t>(count) * sizeof(U);
    return r;
  }
};

// Carves the work of `kind` out of base; returns the bytes it needs.
template <class A>
__host__ __device__ std::size_t carve(const Geo& g, Kind kind, char* base, Work<A>& w) {
  Carver c{base};
  const i64 C = g.C, cc = C * g.ldc(), cv = C * g.ldv();
  w.b = c.take<double>(C);
  w.beta = c.take<A>(C);
  w.k = c.take<A>(C * g.ldk());
  w.x = c.take<A>(cc);
  if (kind == Kind::solve) {
    w.amat = c.take<A>(cc);
    return c.off;
  }
  w.gam = c.take<A>(C), w.eta = c.take<A>(C);
  w.q = c.take<A>(C * g.ldk());
  w.attn = c.take<A>(cc);
  w.p = c.take<A>(static_cast<i64>(g.Dk) * g.ldv());
  w.v = c.take<A>(cv), w.u = c.take<A>(cv), w.kp = c.take<A>(cv), w.qp = c.take<A>(cv);
  if (kind == Kind::forward) return c.off;
  w.w_in = c.take<A>(C), w.w_out = c.take<A>(C), w.red = c.take<A>(32);
  w.kkm = c.take<A>(cc), w.m = c.take<A>(cc), w.dm = c.take<A>(cc), w.z = c.take<A>(cc);
  w.g = c.take<A>(static_cast<i64>(g.Dk) * g.ldv());
  w.d_o = c.take<A>(cv), w.du = c.take<A>(cv), w.drv = c.take<A>(cv), w.kg = c.take<A>(cv);
  return c.off;
}

// Loads k (and q) rows [L, Dk] of chunk c, β, and the cumulative log decays b (in double, as the
// CPU); with `factors`, also γ_i = exp(b_i) and η_i = exp(b_L−1 − b_i). Ends synchronised.
template <class T, class A>
__device__ void load_chunk(const Geo& geo, const Inputs<T, A>& in, Work<A>& w, int bi, int h,
                           i64 t0, int L, bool with_q, bool factors) {
  const int Dk = geo.Dk, ldk = geo.ldk();
  for (int idx = threadIdx.x; idx < L * Dk; idx += blockDim.x) {
    const int i = idx / Dk, x = idx % Dk;
    w.k[i * ldk + x] = cuda::load(in.k.at(bi, t0 + i, h) + x);
    if (with_q) w.q[i * ldk + x] = cuda::load(in.q.at(bi, t0 + i, h) + x);
  }
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    w.beta[i] = cuda::load(in.beta.at(bi, t0 + i, h));
    w.b[i] = in.gated ? static_cast<double>(cuda::load(in.g.at(bi, t0 + i, h))) : 0.0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < L; ++i) w.b[i] += w.b[i - 1];
  }
  __syncthreads();
  if (factors) {
    for (int i = threadIdx.x; i < L; i += blockDim.x) {
      w.gam[i] = decay_factor<A>(w.b[i]);
      w.eta[i] = decay_factor<A>(w.b[L - 1] - w.b[i]);
    }
    __syncthreads();
  }
}

// Loads the tile [L, Dvt] (columns e0.. of a [B, T, H, Dv] tensor) into dst (row stride ldv);
// columns past Dv are 0.
template <class T, class A>
__device__ void load_tile(const Geo& geo, Rows<const T> src, A* dst, int bi, int h, i64 t0, int L,
                          int e0) {
  const int Dvt = geo.Dvt, ldv = geo.ldv();
  for (int idx = threadIdx.x; idx < L * Dvt; idx += blockDim.x) {
    const int i = idx / Dvt, e = idx % Dvt;
    dst[i * ldv + e] = e0 + e < geo.Dv ? cuda::load(src.at(bi, t0 + i, h) + e0 + e) : A(0);
  }
}

// Loads the state tile [Dk, Dvt] of (bh) from a [B·H(, nc), Dk, Dv] buffer (null: zeros).
template <class A>
__device__ void load_state(const Geo& geo, const A* src, A* dst, int e0) {
  const int Dvt = geo.Dvt, ldv = geo.ldv();
  for (int idx = threadIdx.x; idx < geo.Dk * Dvt; idx += blockDim.x) {
    const int x = idx / Dvt, e = idx % Dvt;
    dst[x * ldv + e] = src && e0 + e < geo.Dv ? src[static_cast<i64>(x) * geo.Dv + e0 + e] : A(0);
  }
}

template <class A>
__device__ void store_state(const Geo& geo, const A* src, A* dst, int e0) {
  const int Dvt = geo.Dvt, ldv = geo.ldv();
  for (int idx = threadIdx.x; idx < geo.Dk * Dvt; idx += blockDim.x) {
    const int x = idx / Dvt, e = idx % Dvt;
    if (e0 + e < geo.Dv) dst[static_cast<i64>(x) * geo.Dv + e0 + e] = src[x * ldv + e];
  }
}

// Loads the chunk's X = (I + A)⁻¹ [L, L] from the solve kernel's output.
template <class A>
__device__ void load_x(const Geo& geo, const A* xg, Work<A>& w, int bh, i64 c, int L) {
  const A* src = xg + (static_cast<i64>(bh) * geo.nc + c) * geo.C * geo.C;
  const int ldc = geo.ldc();
  for (int idx = threadIdx.x; idx < L * L; idx += blockDim.x) {
    const int i = idx / L, j = idx % L;
    w.x[i * ldc + j] = src[i * geo.C + j];
  }
}

// kp = K P (and qp = Q P with `with_q`) for the chunk's rows; then U = X diag(β) (V − diag(γ) kp).
// Ends synchronised.
template <class A>
__device__ void chunk_values(const Geo& geo, Work<A>& w, int L, bool with_q) {
  const int Dk = geo.Dk, Dvt = geo.Dvt, ldk = geo.ldk(), ldv = geo.ldv(), ldc = geo.ldc();
  for (int idx = threadIdx.x; idx < L * Dvt; idx += blockDim.x) {
    const int i = idx / Dvt, e = idx % Dvt;
    A sk = 0, sq = 0;
    for (int x = 0; x < Dk; ++x) {
      const A pe = w.p[x * ldv + e];
      sk += w.k[i * ldk + x] * pe;
      if (with_q) sq += w.q[i * ldk + x] * pe;
    }
    w.kp[i * ldv + e] = sk;
    if (with_q) w.qp[i * ldv + e] = sq;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < L * Dvt; idx += blockDim.x) {
    const int i = idx / Dvt, e = idx % Dvt;
    A s = 0;
    for (int j = 0; j <= i; ++j) {
      s += w.x[i * ldc + j] * w.beta[j] * (w.v[j * ldv + e] - w.gam[j] * w.kp[j * ldv + e]);
    }
    w.u[i * ldv + e] = s;
  }
  __syncthreads();
}

// P ← γ_L−1 P + (diag(η) K)ᵀ U: the state leaving the chunk.
template <class A>
__device__ void advance_state(const Geo& geo, Work<A>& w, int L) {
  const int Dvt = geo.Dvt, ldk = geo.ldk(), ldv = geo.ldv();
  const A e_all = w.gam[L - 1];
  for (int idx = threadIdx.x; idx < geo.Dk * Dvt; idx += blockDim.x) {
    const int x = idx / Dvt, e = idx % Dvt;
    A s = e_all * w.p[x * ldv + e];
    for (int j = 0; j < L; ++j) s += w.eta[j] * w.k[j * ldk + x] * w.u[j * ldv + e];
    w.p[x * ldv + e] = s;
  }
}

// The sum of v over the block, returned to every thread. `red` holds 32 values.
template <class A>
__device__ A block_sum(A v, A* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // red may still be read from the previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  A s = 0;
  for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) s += red[i];
  return s;
}

// ---- kernels -----------------------------------------------------------------------------------

// X = (I + A)⁻¹ of every chunk, A_ij = β_i exp(b_i − b_j) (k_i·k_j) for j < i; grid (nc, B·H).
// x_out: [B·H, nc, C, C], zero outside [L, L].
template <class T, class A>
__global__ void __launch_bounds__(kThreads) delta_solve_kernel(Geo geo, Inputs<T, A> in, A* x_out) {
  extern __shared__ __align__(16) char smem[];
  Work<A> w;
  carve<A>(geo, Kind::solve, smem, w);
  const i64 c = blockIdx.x;
  const int bh = static_cast<int>(blockIdx.y), bi = bh / geo.H, h = bh % geo.H;
  const i64 t0 = c * geo.C;
  const int L = static_cast<int>(geo.T - t0 < geo.C ? geo.T - t0 : geo.C);
  const int Dk = geo.Dk, ldk = geo.ldk(), ldc = geo.ldc();
  load_chunk(geo, in, w, bi, h, t0, L, false, false);
  for (int idx = threadIdx.x; idx < L * L; idx += blockDim.x) {
    const int i = idx / L, j = idx % L;
    A a = 0;
    if (j < i) {
      const A factor = decay_factor<A>(w.b[i] - w.b[j]);
      if (factor != A(0)) {
        for (int x = 0; x < Dk; ++x) a += w.k[i * ldk + x] * w.k[j * ldk + x];
        a *= w.beta[i] * factor;
      }
    }
    w.amat[i * ldc + j] = a;
  }
  __syncthreads();
  // Forward substitution (I + A) X = I, one column j per thread: X_ij = −Σ_{j≤p<i} A_ip X_pj.
  for (int j = threadIdx.x; j < L; j += blockDim.x) {
    for (int i = 0; i < j; ++i) w.x[i * ldc + j] = A(0);
    w.x[j * ldc + j] = A(1);
    for (int i = j + 1; i < L; ++i) {
      A s = 0;
      for (int p = j; p < i; ++p) s += w.amat[i * ldc + p] * w.x[p * ldc + j];
      w.x[i * ldc + j] = -s;
    }
  }
  __syncthreads();
  A* out = x_out + (static_cast<i64>(bh) * geo.nc + c) * geo.C * geo.C;
  for (int idx = threadIdx.x; idx < geo.C * geo.C; idx += blockDim.x) {
    const int i = idx / geo.C, j = idx % geo.C;
    out[idx] = i < L && j < L ? w.x[i * ldc + j] : A(0);
  }
}

// The forward pass of one (Dv tile, b, h): grid (nt, B·H). o: [B, T, H, Dv]; final_state null
// when not wanted.
template <class T, class A>
__global__ void __launch_bounds__(kThreads)
    delta_forward_kernel(Geo geo, Inputs<T, A> in, const A* xg, Rows<T> o, A* final_state) {
  extern __shared__ __align__(16) char smem[];
  Work<A> w;
  carve<A>(geo, Kind::forward, smem, w);
  const int tile = static_cast<int>(blockIdx.x), e0 = tile * geo.Dvt;
  const int bh = static_cast<int>(blockIdx.y), bi = bh / geo.H, h = bh % geo.H;
  const i64 state_at = static_cast<i64>(bh) * geo.Dk * geo.Dv;
  const int Dk = geo.Dk, Dvt = geo.Dvt, ldk = geo.ldk(), ldv = geo.ldv(), ldc = geo.ldc();
  const A scale = in.scale;
  load_state(geo, in.initial_state ? in.initial_state + state_at : nullptr, w.p, e0);
  for (i64 c = 0; c < geo.nc; ++c) {
    const i64 t0 = c * geo.C;
    const int L = static_cast<int>(geo.T - t0 < geo.C ? geo.T - t0 : geo.C);
    __syncthreads();  // the previous chunk's buffers are free
    load_tile(geo, in.v, w.v, bi, h, t0, L, e0);
    load_x(geo, xg, w, bh, c, L);
    load_chunk(geo, in, w, bi, h, t0, L, true, true);
    // attn = scale (Q Kᵀ ⊙ M), j ≤ i.
    for (int idx = threadIdx.x; idx < L * L; idx += blockDim.x) {
      const int i = idx / L, j = idx % L;
      A s = 0;
      if (j <= i) {
        const A factor = decay_factor<A>(w.b[i] - w.b[j]);
        if (factor != A(0)) {
          for (int x = 0; x < Dk; ++x) s += w.q[i * ldk + x] * w.k[j * ldk + x];
          s *= scale * factor;
        }
      }
      w.attn[i * ldc + j] = s;
    }
    chunk_values(geo, w, L, true);
    // O = scale diag(γ) Q P + attn U (this tile's columns).
    for (int idx = threadIdx.x; idx < L * Dvt; idx += blockDim.x) {
      const int i = idx / Dvt, e = idx % Dvt;
      if (e0 + e >= geo.Dv) continue;
      A s = scale * w.gam[i] * w.qp[i * ldv + e];
      for (int j = 0; j <= i; ++j) s += w.attn[i * ldc + j] * w.u[j * ldv + e];
      cuda::store(o.at(bi, t0 + i, h) + e0 + e, s);
    }
    advance_state(geo, w, L);
  }
  __syncthreads();
  if (final_state) store_state(geo, w.p, final_state + state_at, e0);
}

// The backward pass of one (Dv tile, b, h): grid (nt, B·H). A forward state pass stores the state
// entering every chunk in ckpt [B·H, nc, Dk, Dv]; the reverse pass recomputes each chunk from it.
template <class T, class A>
__global__ void __launch_bounds__(kThreads)
    delta_backward_kernel(Geo geo, Inputs<T, A> in, Grads<T, A> gr, const A* xg, A* ckpt) {
  extern __shared__ __align__(16) char smem[];
  Work<A> w;
  carve<A>(geo, Kind::backward, smem, w);
  const int tile = static_cast<int>(blockIdx.x), e0 = tile * geo.Dvt;
  const int bh = static_cast<int>(blockIdx.y), bi = bh / geo.H, h = bh % geo.H;
  const i64 n = static_cast<i64>(geo.Dk) * geo.Dv, state_at = bh * n;
  const int Dk = geo.Dk, Dvt = geo.Dvt, ldk = geo.ldk(), ldv = geo.ldv(), ldc = geo.ldc();
  const A scale = in.scale;

  // Forward state pass.
  load_state(geo, in.initial_state ? in.initial_state + state_at : nullptr, w.p, e0);
  for (i64 c = 0; c < geo.nc; ++c) {
    __syncthreads();
    store_state(geo, w.p, ckpt + (bh * geo.nc + c) * n, e0);
    if (c + 1 == geo.nc) break;
    const i64 t0 = c * geo.C;
    load_tile(geo, in.v, w.v, bi, h, t0, geo.C, e0);
    load_x(geo, xg, w, bh, c, geo.C);
    load_chunk(geo, in, w, bi, h, t0, geo.C, false, true);
    chunk_values(geo, w, geo.C, false);
    advance_state(geo, w, geo.C);
  }

  // Reverse pass.
  load_state(geo, gr.d_final_state ? gr.d_final_state + state_at : nullptr, w.g, e0);
  for (i64 c = geo.nc - 1; c >= 0; --c) {
    const i64 t0 = c * geo.C;
    const int L = static_cast<int>(geo.T - t0 < geo.C ? geo.T - t0 : geo.C);
    __syncthreads();  // the previous chunk's buffers are free, ckpt's writes visible
    load_state(geo, ckpt + (bh * geo.nc + c) * n, w.p, e0);
    load_tile(geo, in.v, w.v, bi, h, t0, L, e0);
    load_tile(geo, gr.d_o, w.d_o, bi, h, t0, L, e0);
    load_x(geo, xg, w, bh, c, L);
    load_chunk(geo, in, w, bi, h, t0, L, true, true);

    // M, attn = scale (Q Kᵀ ⊙ M) (j ≤ i), kkm = K Kᵀ ⊙ M (j < i); K G.
    for (int idx = threadIdx.x; idx < L * L; idx += blockDim.x) {
      const int i = idx / L, j = idx % L;
      A mij = 0, sq = 0, sk = 0;
      if (j <= i) {
        mij = decay_factor<A>(w.b[i] - w.b[j]);
        if (mij != A(0)) {
          for (int x = 0; x < Dk; ++x) {
            const A kj = w.k[j * ldk + x];
            sq += w.q[i * ldk + x] * kj;
            sk += w.k[i * ldk + x] * kj;
          }
        }
      }
      w.m[i * ldc + j] = mij;
      w.attn[i * ldc + j] = scale * sq * mij;
      w.kkm[i * ldc + j] = j < i ? sk * mij : A(0);
    }
    for (int idx = threadIdx.x; idx < L * Dvt; idx += blockDim.x) {
      const int i = idx / Dvt, e = idx % Dvt;
      A s = 0;
      for (int x = 0; x < Dk; ++x) s += w.k[i * ldk + x] * w.g[x * ldv + e];
      w.kg[i * ldv + e] = s;
    }
    chunk_values(geo, w, L, true);  // kp, qp, U (synchronises)

    // dU = attnᵀ dO + diag(η) K G.
    for (int idx = threadIdx.x; idx < L * Dvt; idx += blockDim.x) {
      const int j = idx / Dvt, e = idx % Dvt;
      A s = w.eta[j] * w.kg[j * ldv + e];
      for (int i = j; i < L; ++i) s += w.attn[i * ldc + j] * w.d_o[i * ldv + e];
      w.du[j * ldv + e] = s;
    }
    // dm = dO Uᵀ (j ≤ i).
    for (int idx = threadIdx.x; idx < L * L; idx += blockDim.x) {
      const int i = idx / L, j = idx % L;
      A s = 0;
      if (j <= i) {
        for (int e = 0; e < Dvt; ++e) s += w.d_o[i * ldv + e] * w.u[j * ldv + e];
      }
      w.dm[i * ldc + j] = s;
    }
    __syncthreads();
    // R_v = Xᵀ dU.
    for (int idx = threadIdx.x; idx < L * Dvt; idx += blockDim.x) {
      const int j = idx / Dvt, e = idx % Dvt;
      A s = 0;
      for (int i = j; i < L; ++i) s += w.x[i * ldc + j] * w.du[i * ldv + e];
      w.drv[j * ldv + e] = s;
    }
    __syncthreads();
    // Z = R_v Uᵀ (j < i); dv = diag(β) R_v; ⟨G, P⟩ of the tile.
    for (int idx = threadIdx.x; idx < L * L; idx += blockDim.x) {
      const int i = idx / L, j = idx % L;
      A s = 0;
      if (j < i) {
        for (int e = 0; e < Dvt; ++e) s += w.drv[i * ldv + e] * w.u[j * ldv + e];
      }
      w.z[i * ldc + j] = s;
    }
    for (int idx = threadIdx.x; idx < L * Dvt; idx += blockDim.x) {
      const int i = idx / Dvt, e = idx % Dvt;
      if (e0 + e < geo.Dv) {
        cuda::store(gr.dv.at(bi, t0 + i, h) + e0 + e, w.beta[i] * w.drv[i * ldv + e]);
      }
    }
    A gp = 0;
    for (int idx = threadIdx.x; idx < Dk * Dvt; idx += blockDim.x) {
      const int x = idx / Dvt, e = idx % Dvt;
      gp += w.g[x * ldv + e] * w.p[x * ldv + e];
    }
    const A through = w.gam[L - 1] * block_sum(gp, w.red);  // synchronises

    // Per row: dβ (partial), w_in_i and w_out_i of the decay gradient.
    const i64 row0 = ((static_cast<i64>(tile) * geo.B + bi) * geo.T + t0) * geo.H + h;
    for (int i = threadIdx.x; i < L; i += blockDim.x) {
      A db = 0, sv = 0, sk = 0, so = 0, su = 0;
      for (int j = 0; j < i; ++j) db -= w.z[i * ldc + j] * w.kkm[i * ldc + j];
      for (int e = 0; e < Dvt; ++e) {
        const A r = w.drv[i * ldv + e];
        sv += r * w.v[i * ldv + e];
        sk += r * w.kp[i * ldv + e];
        so += w.d_o[i * ldv + e] * w.qp[i * ldv + e];
        su += w.u[i * ldv + e] * w.kg[i * ldv + e];
      }
      gr.ws_db[row0 + static_cast<i64>(i) * geo.H] = db + sv - w.gam[i] * sk;
      w.w_in[i] = scale * w.gam[i] * so - w.beta[i] * w.gam[i] * sk;
      w.w_out[i] = w.eta[i] * su;
    }
    __syncthreads();

    // dq and dk (partial over this tile's columns).
    for (int idx = threadIdx.x; idx < L * Dk; idx += blockDim.x) {
      const int i = idx / Dk, x = idx % Dk;
      A sq = 0, sg = 0, sp = 0;
      for (int e = 0; e < Dvt; ++e) {
        const A pe = w.p[x * ldv + e];
        sq += w.d_o[i * ldv + e] * pe;
        sp += w.drv[i * ldv + e] * pe;
        sg += w.u[i * ldv + e] * w.g[x * ldv + e];
      }
      A dq = scale * w.gam[i] * sq;
      for (int j = 0; j <= i; ++j) {
        dq += scale * w.m[i * ldc + j] * w.dm[i * ldc + j] * w.k[j * ldk + x];
      }
      A dk = w.eta[i] * sg - w.beta[i] * w.gam[i] * sp;
      for (int r = i; r < L; ++r) {
        dk += scale * w.m[r * ldc + i] * w.dm[r * ldc + i] * w.q[r * ldk + x];
      }
      // D_ij = −Z_ij β_i M_ij (j < i): row i of D K plus column i of Dᵀ K.
      for (int j = 0; j < i; ++j) {
        dk -= w.z[i * ldc + j] * w.beta[i] * w.m[i * ldc + j] * w.k[j * ldk + x];
      }
      for (int r = i + 1; r < L; ++r) {
        dk -= w.z[r * ldc + i] * w.beta[r] * w.m[r * ldc + i] * w.k[r * ldk + x];
      }
      const i64 at = (row0 + static_cast<i64>(i) * geo.H) * Dk + x;
      gr.ws_dq[at] = dq;
      gr.ws_dk[at] = dk;
    }
    // dg_u = γ_L−1 ⟨G, P⟩ + Σ_{i≥u} Σ_{j<u} weight_ij + Σ_{i≥u} w_in_i + Σ_{j<u} w_out_j, with
    // weight_ij = attn_ij dm_ij − Z_ij A_ij (in double, as the CPU).
    if (gr.ws_dg) {
      for (int u = threadIdx.x; u < L; u += blockDim.x) {
        double s = static_cast<double>(through);
        for (int i = u; i < L; ++i) {
          const A bi_ = w.beta[i];
          for (int j = 0; j < u; ++j) {
            const A wt = w.attn[i * ldc + j] * w.dm[i * ldc + j] -
                         w.z[i * ldc + j] * bi_ * w.kkm[i * ldc + j];
            s += static_cast<double>(wt);
          }
          s += static_cast<double>(w.w_in[i]);
        }
        for (int j = 0; j < u; ++j) s += static_cast<double>(w.w_out[j]);
        gr.ws_dg[row0 + static_cast<i64>(u) * geo.H] = static_cast<A>(s);
      }
    }
    __syncthreads();

    // G ← γ_L−1 G + scale Qᵀ diag(γ) dO − Kᵀ diag(βγ) R_v.
    const A e_all = w.gam[L - 1];
    for (int idx = threadIdx.x; idx < Dk * Dvt; idx += blockDim.x) {
      const int x = idx / Dvt, e = idx % Dvt;
      A s = e_all * w.g[x * ldv + e];
      for (int i = 0; i < L; ++i) {
        s += w.gam[i] * (scale * w.q[i * ldk + x] * w.d_o[i * ldv + e] -
                         w.beta[i] * w.k[i * ldk + x] * w.drv[i * ldv + e]);
      }
      w.g[x * ldv + e] = s;
    }
  }
  __syncthreads();
  if (gr.d_initial_state) store_state(geo, w.g, gr.d_initial_state + state_at, e0);
}

// out[b, t, h, x] = Σ_tile ws[tile, b, t, h, x] (fixed order), ws: [nt, B, T, H, D].
template <class T, class A>
__global__ void sum_tiles_kernel(const A* ws, int nt, i64 nT, i64 H, i64 D, i64 count,
                                 Rows<T> out) {
  for (i64 idx = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<i64>(gridDim.x) * blockDim.x) {
    A s = 0;
    for (int tile = 0; tile < nt; ++tile) s += ws[tile * count + idx];
    const i64 x = idx % D, r = idx / D, h = r % H, t = (r / H) % nT, b = r / (H * nT);
    cuda::store(out.at(b, t, h) + x, s);
  }
}

// ---- launchers ---------------------------------------------------------------------------------

// Optional tensors of the op: "not given" is Tensor{} (as the CPU backend).
bool given(const Tensor& t) {
  return t.defined();
}

// A [B, T, H(, D)] input or gradient: on the device, the op's dtype, the given shape, and a
// contiguous last dimension (rows may be strided).
void check_rows(const Tensor& t, const Shape& shape, DType dtype, const char* op, const char* arg) {
  cuda::check_device(t, op, arg);
  check_dtype(t, dtype, op, arg);
  check_shape(t, shape, op, arg);
  LINMOE_CHECK(t.ndim() < 4 || t.shape[3] <= 1 || t.strides[3] == 1, op, ": ", arg, " ", t.str(),
               " needs a contiguous last dimension");
}

// A state [B, H, Dk, Dv]: contiguous, in the statistics dtype.
void check_state(const Tensor& t, const Geo& g, DType dtype, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, stat_dtype(dtype), op, arg);
  check_shape(t, Shape{g.B, g.H, g.Dk, g.Dv}, op, arg);
}

// Checks q, k, v, beta, log_decay (optional), chunk_size and the optional initial state (as the
// CPU backend).
Geo check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                 const Tensor& log_decay, int chunk_size, const Tensor& initial_state,
                 const char* op) {
  LINMOE_CHECK(q.ndim() == 4, op, ": q must be [B, T, H, Dk], got ", q.str());
  LINMOE_CHECK(v.ndim() == 4, op, ": v must be [B, T, H, Dv], got ", v.str());
  LINMOE_CHECK(chunk_size >= 1, op, ": chunk_size must be ≥ 1, got ", chunk_size);
  LINMOE_CHECK(q.shape[0] * q.shape[2] <= 65535, op, ": B·H must be ≤ 65535 on the GPU, got ",
               q.str());
  LINMOE_CHECK(q.shape[3] >= 1 && v.shape[3] >= 1, op, ": head dims must be ≥ 1, got ", q.str(),
               " and ", v.str());
  Geo g;
  g.B = static_cast<int>(q.shape[0]), g.T = q.shape[1], g.H = static_cast<int>(q.shape[2]);
  g.Dk = static_cast<int>(q.shape[3]), g.Dv = static_cast<int>(v.shape[3]);
  const DType dt = q.dtype;
  check_rows(q, q.shape, dt, op, "q");
  check_rows(k, Shape{g.B, g.T, g.H, g.Dk}, dt, op, "k");
  check_rows(v, Shape{g.B, g.T, g.H, g.Dv}, dt, op, "v");
  check_rows(beta, Shape{g.B, g.T, g.H}, dt, op, "beta");
  if (given(log_decay)) check_rows(log_decay, Shape{g.B, g.T, g.H}, dt, op, "log_decay");
  if (given(initial_state)) check_state(initial_state, g, dt, op, "initial_state");
  return g;
}

// Picks the chunk length and the Dv tile so that the kernel's shared memory fits the device. The
// widest tile (≤ max_tile) first, with the longest chunk ≤ min(chunk_size, T, 64) down to 16 that
// fits it: a wide tile repeats less of the chunk's Dv-independent work (Q Kᵀ, K Kᵀ, dq, dk) across
// the blocks of a head. Only when no tile fits a 16-token chunk do shorter chunks come in.
template <class A>
void pick_launch(Geo& g, int chunk_size, Kind kind, int max_tile, std::size_t limit,
                 const char* op) {
  const i64 base = std::min<i64>(
      {static_cast<i64>(chunk_size), std::max<i64>(g.T, 1), static_cast<i64>(kMaxChunk)});
  const int widest = std::min(g.Dv, max_tile);
  for (const i64 shortest : {std::min<i64>(base, 16), i64{1}}) {
    for (int tile : {widest, 32, 16, 8}) {
      if (tile > widest) continue;
      for (i64 C = base; C >= shortest; C /= 2) {
        Geo t = g;
        t.C = static_cast<int>(C), t.Dvt = tile;
        Work<A> w;
        if (carve<A>(t, kind, nullptr, w) <= limit) {
          g = t;
          g.nt = (g.Dv + g.Dvt - 1) / g.Dvt;
          g.nc = (g.T + g.C - 1) / g.C;
          return;
        }
      }
    }
  }
  LINMOE_CHECK(false, op, ": head dims Dk=", g.Dk, ", Dv=", g.Dv,
               " need more shared memory than the device has (", limit, " bytes per block)");
}

std::size_t shared_memory_limit(const CudaContext& ctx) {
  int bytes = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device));
  return static_cast<std::size_t>(bytes);
}

template <class K>
void allow_shared_memory(K kernel, std::size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)));
}

template <class T, class A>
Inputs<T, A> make_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                         const Tensor& log_decay, const Tensor& initial_state, double scale) {
  Inputs<T, A> in;
  in.q = rows_of<const T>(q), in.k = rows_of<const T>(k), in.v = rows_of<const T>(v);
  in.beta = rows_of<const T>(beta);
  in.gated = given(log_decay);
  if (in.gated) in.g = rows_of<const T>(log_decay);
  in.initial_state = given(initial_state) ? static_cast<const A*>(initial_state.data) : nullptr;
  in.scale = static_cast<A>(scale);
  return in;
}

// Elements of X for every chunk: [B·H, nc, C, C].
std::size_t solve_elements(const Geo& g) {
  return static_cast<std::size_t>(g.B) * g.H * g.nc * g.C * g.C;
}

// X of every chunk into x: [B·H, nc, C, C].
template <class T, class A>
void solve_chunks(CudaContext& ctx, const Geo& g, const Inputs<T, A>& in, A* x) {
  Work<A> w;
  const std::size_t bytes = carve<A>(g, Kind::solve, nullptr, w);
  allow_shared_memory(delta_solve_kernel<T, A>, bytes);
  const dim3 grid(static_cast<unsigned>(g.nc), static_cast<unsigned>(g.B * g.H));
  delta_solve_kernel<T, A><<<grid, kThreads, bytes, ctx.stream>>>(g, in, x);
  CUDA_CHECK_LAUNCH();
}

// Copies a state (or zeros when src is not given) into dst on the stream: the T = 0 case.
void copy_state(CudaContext& ctx, const Tensor& src, const Tensor& dst) {
  if (!given(dst) || dst.numel() == 0) return;
  if (given(src)) {
    CUDA_CHECK(
        cudaMemcpyAsync(dst.data, src.data, dst.nbytes(), cudaMemcpyDeviceToDevice, ctx.stream));
  } else {
    CUDA_CHECK(cudaMemsetAsync(dst.data, 0, dst.nbytes(), ctx.stream));
  }
}

template <class T>
void forward_typed(CudaContext& ctx, Geo g, int chunk_size, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& beta, const Tensor& log_decay, double scale,
                   const Tensor& initial_state, const Tensor& o, const Tensor& final_state,
                   const char* op) {
  using A = cuda::compute_t<T>;
  if (g.B == 0 || g.H == 0) return;
  if (g.T == 0) {
    copy_state(ctx, initial_state, final_state);
    return;
  }
  const std::size_t limit = shared_memory_limit(ctx);
  pick_launch<A>(g, chunk_size, Kind::forward, 64, limit, op);
  const Inputs<T, A> in = make_inputs<T, A>(q, k, v, beta, log_decay, initial_state, scale);
  const cuda::ScratchBuffer x(ctx.stream, solve_elements(g) * sizeof(A));
  solve_chunks(ctx, g, in, x.as<A>());
  Work<A> w;
  const std::size_t bytes = carve<A>(g, Kind::forward, nullptr, w);
  allow_shared_memory(delta_forward_kernel<T, A>, bytes);
  const dim3 grid(static_cast<unsigned>(g.nt), static_cast<unsigned>(g.B * g.H));
  delta_forward_kernel<T, A><<<grid, kThreads, bytes, ctx.stream>>>(
      g, in, x.as<const A>(), rows_of<T>(o),
      given(final_state) ? static_cast<A*>(final_state.data) : nullptr);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void backward_typed(CudaContext& ctx, Geo g, int chunk_size, const Tensor& q, const Tensor& k,
                    const Tensor& v, const Tensor& beta, const Tensor& log_decay, double scale,
                    const Tensor& initial_state, const Tensor& d_o, const Tensor& d_final_state,
                    const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& d_beta,
                    const Tensor& d_log_decay, const Tensor& d_initial_state, const char* op) {
  using A = cuda::compute_t<T>;
  if (g.B == 0 || g.H == 0) return;
  if (g.T == 0) {
    copy_state(ctx, d_final_state, d_initial_state);
    return;
  }
  const std::size_t limit = shared_memory_limit(ctx);
  pick_launch<A>(g, chunk_size, Kind::backward, 64, limit, op);
  const Inputs<T, A> in = make_inputs<T, A>(q, k, v, beta, log_decay, initial_state, scale);
  const cuda::ScratchBuffer x(ctx.stream, solve_elements(g) * sizeof(A));
  solve_chunks(ctx, g, in, x.as<A>());

  const i64 rows = static_cast<i64>(g.B) * g.T * g.H;  // tokens × heads
  const std::size_t n_state = static_cast<std::size_t>(g.B) * g.H * g.Dk * g.Dv;
  // The states entering the chunks: [B·H, nc, Dk, Dv].
  const cuda::ScratchBuffer ckpt(ctx.stream, n_state * static_cast<std::size_t>(g.nc) * sizeof(A));
  const std::size_t n_qk = static_cast<std::size_t>(g.nt) * rows * g.Dk;
  const std::size_t n_row = static_cast<std::size_t>(g.nt) * rows;
  const bool want_dg = given(d_log_decay);
  // Per-tile partial dq, dk: [nt, B, T, H, Dk] each; dβ (and dg): [nt, B, T, H].
  const cuda::ScratchBuffer ws(ctx.stream, (2 * n_qk + (want_dg ? 2 : 1) * n_row) * sizeof(A));
  Grads<T, A> gr;
  gr.d_o = rows_of<const T>(d_o);
  gr.d_final_state = given(d_final_state) ? static_cast<const A*>(d_final_state.data) : nullptr;
  gr.dv = rows_of<T>(dv);
  gr.d_initial_state = given(d_initial_state) ? static_cast<A*>(d_initial_state.data) : nullptr;
  A* base = ws.as<A>();
  gr.ws_dq = base, gr.ws_dk = base + n_qk, gr.ws_db = base + 2 * n_qk;
  gr.ws_dg = want_dg ? gr.ws_db + n_row : nullptr;

  Work<A> w;
  const std::size_t bytes = carve<A>(g, Kind::backward, nullptr, w);
  allow_shared_memory(delta_backward_kernel<T, A>, bytes);
  const dim3 grid(static_cast<unsigned>(g.nt), static_cast<unsigned>(g.B * g.H));
  delta_backward_kernel<T, A>
      <<<grid, kThreads, bytes, ctx.stream>>>(g, in, gr, x.as<const A>(), ckpt.as<A>());
  CUDA_CHECK_LAUNCH();

  const int blocks = cuda::blocks_for(rows * g.Dk);
  sum_tiles_kernel<T, A>
      <<<blocks, 256, 0, ctx.stream>>>(gr.ws_dq, g.nt, g.T, g.H, g.Dk, rows * g.Dk, rows_of<T>(dq));
  CUDA_CHECK_LAUNCH();
  sum_tiles_kernel<T, A>
      <<<blocks, 256, 0, ctx.stream>>>(gr.ws_dk, g.nt, g.T, g.H, g.Dk, rows * g.Dk, rows_of<T>(dk));
  CUDA_CHECK_LAUNCH();
  const int row_blocks = cuda::blocks_for(rows);
  sum_tiles_kernel<T, A>
      <<<row_blocks, 256, 0, ctx.stream>>>(gr.ws_db, g.nt, g.T, g.H, 1, rows, rows_of<T>(d_beta));
  CUDA_CHECK_LAUNCH();
  if (want_dg) {
    sum_tiles_kernel<T, A><<<row_blocks, 256, 0, ctx.stream>>>(gr.ws_dg, g.nt, g.T, g.H, 1, rows,
                                                               rows_of<T>(d_log_decay));
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

void CudaBackend::lsm_delta_rule_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& beta, const Tensor& log_decay, double scale,
                                         int chunk_size, const Tensor& initial_state,
                                         const Tensor& o, const Tensor& final_state) {
  const char* op = "lsm_delta_rule_forward";
  const Geo g = check_inputs(q, k, v, beta, log_decay, chunk_size, initial_state, op);
  check_rows(o, v.shape, q.dtype, op, "o");
  if (given(final_state)) check_state(final_state, g, q.dtype, op, "final_state");
  if (cuda::delta_mma::supports(q, k, v, o, chunk_size)) {  // bf16 on the tensor cores
    cuda::delta_mma::dispatch_dims(g.Dk, g.Dv, [&](auto dk, auto dv) {
      cuda::delta_mma::forward<decltype(dk)::value, decltype(dv)::value>(
          context().stream, q, k, v, beta, log_decay, scale, initial_state, o, final_state);
    });
    return;
  }
  cuda::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    forward_typed<T>(context(), g, chunk_size, q, k, v, beta, log_decay, scale, initial_state, o,
                     final_state, op);
  });
}

void CudaBackend::lsm_delta_rule_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& beta, const Tensor& log_decay, double scale,
                                          int chunk_size, const Tensor& initial_state,
                                          const Tensor& d_o, const Tensor& d_final_state,
                                          const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                          const Tensor& d_beta, const Tensor& d_log_decay,
                                          const Tensor& d_initial_state) {
  const char* op = "lsm_delta_rule_backward";
  const Geo g = check_inputs(q, k, v, beta, log_decay, chunk_size, initial_state, op);
  const DType dt = q.dtype;
  check_rows(d_o, v.shape, dt, op, "d_o");
  if (given(d_final_state)) check_state(d_final_state, g, dt, op, "d_final_state");
  check_rows(dq, q.shape, dt, op, "dq");
  check_rows(dk, q.shape, dt, op, "dk");
  check_rows(dv, v.shape, dt, op, "dv");
  check_rows(d_beta, beta.shape, dt, op, "d_beta");
  if (given(d_log_decay)) {
    LINMOE_CHECK(given(log_decay), op,
                 ": d_log_decay must be undefined when log_decay is (deltanet has no decay)");
    check_rows(d_log_decay, beta.shape, dt, op, "d_log_decay");
  }
  if (given(d_initial_state)) check_state(d_initial_state, g, dt, op, "d_initial_state");
  if (cuda::delta_mma::supports_backward(q, k, v, d_o, dq, dk, dv, chunk_size)) {  // tensor cores
    cuda::delta_mma::dispatch_dims(g.Dk, g.Dv, [&](auto dk_, auto dv_) {
      cuda::delta_mma::backward<decltype(dk_)::value, decltype(dv_)::value>(
          context().stream, q, k, v, beta, log_decay, scale, initial_state, d_o, d_final_state, dq,
          dk, dv, d_beta, d_log_decay, d_initial_state);
    });
    return;
  }
  cuda::dispatch_float(dt, op, [&](auto zero) {
    using T = decltype(zero);
    backward_typed<T>(context(), g, chunk_size, q, k, v, beta, log_decay, scale, initial_state, d_o,
                      d_final_state, dq, dk, dv, d_beta, d_log_decay, d_initial_state, op);
  });
}

}  // namespace linmoe
