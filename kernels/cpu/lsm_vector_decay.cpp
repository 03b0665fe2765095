// The vector-decay LSM core on the CPU (MODEL.md section 3: gla, hgrn2), forward and backward,
// chunk-parallel as GLA (Yang et al. 2023; fla's chunk_gla). Per batch b and head h, with
// g_t = log_decay[b, t, h, :] (one log decay per channel of the key dimension):
//   S_t = Diag(exp(g_t)) S_{t−1} + k_t v_tᵀ,   o_t = scale · S_tᵀ q_t.
// A chunk of L ≤ C tokens entering with state P uses per-channel cumulative log decays from its
// start, b_ic = Σ_{j≤i} g_jc, and M_ijc = exp(b_ic − b_jc) ≤ 1 for j ≤ i:
//   o_i = scale (Σ_{j≤i} A_ij v_j + Pᵀ (q_i ⊙ e_i)),  A_ij = Σ_c q_ic k_jc M_ijc,  e_i = exp(b_i)
//   N   = Diag(exp(b_L−1)) P + Σ_j (k_j ⊙ f_j) v_jᵀ,   f_j = exp(b_L−1 − b_j)   (the state leaving)
// No exponent of a positive number is ever formed: every factor is a product of a_t = exp(g_t) ≤ 1
// over a span of tokens inside the chunk, started at a reference token:
//   e_i = Π_{t≤i} a_t and f_j = Π_{t>j} a_t (running products in f64);
//   in the diagonal kSub × kSub blocks (sub-chunks) of A, M_ij is walked pair by pair from j = i
//   downwards, M_i,j−1 = M_ij ⊙ a_j;
//   below them, row block I = [s, s + kSub) uses the reference token r = s − 1:
//   M_ij = exp(b_i − b_r) ⊙ exp(b_r − b_j), two factors ≤ 1, so the block is a GEMM of
//   q ⊙ exp(b − b_r) and k ⊙ exp(b_r − b).
// Factors below exp(kMinLogDecay) flush to zero (no overflow, no subnormals, any T and decay).
//
// Backward, per chunk in reverse with G = dL/dN (d_final_state for the last chunk):
//   D_ij = scale do_i·v_j  (j ≤ i)
//   dq_i = Σ_{j≤i} D_ij (k_j ⊙ M_ij) + scale e_i ⊙ (P do_i)
//   dk_j = Σ_{i≥j} D_ij (q_i ⊙ M_ij) + f_j ⊙ (G v_j)
//   dv_j = scale Σ_{i≥j} A_ij do_i + Gᵀ (k_j ⊙ f_j)
//   dP   = Diag(exp(b_L−1)) G + scale Σ_i (q_i ⊙ e_i) do_iᵀ           (the G of the previous chunk)
// The decay gradient: every term of the chunk carries per channel c a factor exp(b_tc − b_sc)
// ("from s to t", with P as a source before the chunk and N as a target at its last token), so
// dg_uc collects the weight (term ⊙ upstream gradient) of every term with s < u ≤ t:
//   dg_u = Σ_{i≥u} Σ_{j<u} W_ij + Σ_{i≥u} w_in_i + Σ_{j<u} w_out_j + exp(b_L−1) ⊙ rowsum(G ⊙ P)
//   W_ij = q_i ⊙ D_ij (k_j ⊙ M_ij)
//   w_in_i = q_i ⊙ scale e_i ⊙ (P do_i),   w_out_j = k_j ⊙ f_j ⊙ (G v_j).
// These are the numbers of fla's Σ_{t≥u} (q_t ⊙ dq_t − k_t ⊙ dk_t) (+ the final-state term), but
// summed from chunk-local weights rather than as differences of partial sums: no cancellation,
// and the gradient of a token whose decay scales nothing (the first, without an initial state)
// is exactly 0. W is summed in f64 on the walks of the diagonal blocks, and below them from the
// GEMM results per row, per column and per block pair (offdiag_backward). Chunk states are
// recomputed by a forward pass.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/lsm_chunk_common.h"

namespace linmoe {
namespace {

using namespace cpu;  // lsm_chunk_common.h helpers

template <class T>
inline T decay_factor(T x) {
  return x < static_cast<T>(kMinLogDecay<T>) ? T(0) : std::exp(x);
}

// The smallest factor kept: exp(kMinLogDecay).
template <class T>
const double kMinFactor = std::exp(kMinLogDecay<T>);

template <class T>
inline T min_factor() {
  return static_cast<T>(kMinFactor<T>);
}

// A running product of decay factors, flushed to zero below kMinFactor.
template <class T>
inline double flush(double x) {
  return x < kMinFactor<T> ? 0.0 : x;
}

// y[c, r] = x[r, c]; x: [R, Cx] with row stride ldx, y with row stride ldy.
template <class T>
void transpose(const T* x, i64 R, i64 Cx, i64 ldx, T* y, i64 ldy) {
  for (i64 r = 0; r < R; ++r) {
    for (i64 c = 0; c < Cx; ++c) y[c * ldy + r] = x[r * ldx + c];
  }
}

// y = s0 · x ⊙ s elementwise over [R, cols]; x, s, y with row strides ldx, lds, ldy.
template <class T>
void scale_elems(const T* x, i64 ldx, const T* s, i64 lds, T s0, i64 R, i64 cols, T* y, i64 ldy) {
  for (i64 r = 0; r < R; ++r) {
#pragma omp simd
    for (i64 c = 0; c < cols; ++c) y[r * ldy + c] = s0 * x[r * ldx + c] * s[r * lds + c];
  }
}

// c[i, :] += Σ_p a[i, p] · b[p, :] for a: [M, K], b: [K, N], c: [M, N], row-major with leading
// dimensions; `lower`: a[i, p] = 0 for p > i (skipped). Tiles of 4 rows × kTile columns of c.
template <class T>
void gemm_acc(i64 M, i64 N, i64 K, const T* a, i64 lda, const T* b, i64 ldb, T* c, i64 ldc,
              bool lower = false) {
  constexpr i64 kTile = 128 / static_cast<i64>(sizeof(T));
  for (i64 i0 = 0; i0 < M; i0 += 4) {
    const i64 rows = std::min<i64>(4, M - i0);
    const i64 p1 = lower ? std::min(K, i0 + rows) : K;
    const T* ar[4];
    for (i64 r = 0; r < 4; ++r) ar[r] = a + (i0 + std::min(r, rows - 1)) * lda;
    for (i64 j0 = 0; j0 < N; j0 += kTile) {
      const i64 width = std::min(kTile, N - j0);
      T acc[4][kTile] = {};
      for (i64 p = 0; p < p1; ++p) {
        const T x0 = ar[0][p], x1 = ar[1][p], x2 = ar[2][p], x3 = ar[3][p];
        const T* bp = b + p * ldb + j0;
#pragma omp simd
        for (i64 j = 0; j < width; ++j) {
          const T y = bp[j];
          acc[0][j] += x0 * y, acc[1][j] += x1 * y, acc[2][j] += x2 * y, acc[3][j] += x3 * y;
        }
      }
      for (i64 r = 0; r < rows; ++r) {
        T* cr = c + (i0 + r) * ldc + j0;
#pragma omp simd
        for (i64 j = 0; j < width; ++j) cr[j] += acc[r][j];
      }
    }
  }
}

struct Dims {
  i64 B = 0, T = 0, H = 0, Dk = 0, Dv = 0, C = 0;
  i64 chunks() const { return (T + C - 1) / C; }
};

// Sub-chunks: the diagonal blocks of a chunk's attention are walked pair by pair; the blocks
// below them are GEMMs with a reference token per row block (see build_offdiag).
constexpr i64 kSub = 16;

// Per-thread scratch for one chunk of one head.
template <class T>
class ChunkWork {
 public:
  T *q, *k, *a, *e_in, *e_out;     // [C, Dk]: q, k, exp(g), exp(b_i), exp(b_L−1 − b_i)
  T *qfac, *qtil, *kfac, *ktil;    // [C, Dk]: a row block's reference factors and scaled q, k
  T *walk, *y, *z;                 // [C, Dk]: a row's walk terms (then Σ_J y); GEMM results
  T *v, *d_o;                      // [C, Dv]
  T *rows, *cols;                  // [C, max(Dk, Dv)], [max(Dk, Dv), C]: scaled / transposed copies
  T *attn, *d_attn, *sq;           // [C, C]: scale·A, D, a transpose
  T *m, *acc, *e_all;              // [Dk]: a walk's factors, its accumulator, exp(b_L−1)
  T *tr, *state, *states;          // [Dv, Dk]; [Dk, Dv] S or G; [chunks, Dk, Dv] chunk states
  double *ad, *dg, *w_in, *w_out;  // [C, Dk]: exp(g); decay gradient and its weights
  double *xq, *xk;                 // [C, Dk]: weights of the terms below the diagonal blocks
  double *blk, *run;               // [nb, nb, Dk] weights of whole blocks; [Dk] a running value
  i64 nb;                          // sub-chunks per chunk

  ChunkWork(const Dims& d, bool backward) {
    const i64 C = d.C, Dk = d.Dk, Dv = d.Dv, Dm = std::max(Dk, Dv), n = Dk * Dv;
    const i64 nstates = backward ? d.chunks() * n : 0;
    nb = (C + kSub - 1) / kSub;
    values_.resize(static_cast<std::size_t>(12 * C * Dk + 2 * C * Dv + 2 * C * Dm + 3 * C * C +
                                            3 * Dk + 2 * n + nstates));
    wide_.resize(static_cast<std::size_t>(6 * C * Dk + nb * nb * Dk + Dk));
    T* p = values_.data();
    auto take = [&p](i64 count) { return std::exchange(p, p + count); };
    q = take(C * Dk), k = take(C * Dk), a = take(C * Dk), e_in = take(C * Dk);
    e_out = take(C * Dk), qfac = take(C * Dk), qtil = take(C * Dk), kfac = take(C * Dk);
    ktil = take(C * Dk), walk = take(C * Dk), y = take(C * Dk), z = take(C * Dk);
    v = take(C * Dv), d_o = take(C * Dv);
    rows = take(C * Dm), cols = take(Dm * C);
    attn = take(C * C), d_attn = take(C * C), sq = take(C * C);
    m = take(Dk), acc = take(Dk), e_all = take(Dk);
    tr = take(n), state = take(n), states = take(nstates);
    double* x = wide_.data();
    auto wide = [&x](i64 count) { return std::exchange(x, x + count); };
    ad = wide(C * Dk), dg = wide(C * Dk), w_in = wide(C * Dk), w_out = wide(C * Dk);
    xq = wide(C * Dk), xk = wide(C * Dk), blk = wide(nb * nb * Dk), run = wide(Dk);
  }

 private:
  std::vector<T> values_;
  std::vector<double> wide_;
};

template <class T>
struct Inputs {
  Rows<const T> q, k, g, v;  // [B, T, H, Dk] ×3, [B, T, H, Dv]
  const T* initial_state;    // [B, H, Dk, Dv] or null
  T scale;
};

template <class T>
inline void fill(T* x, T value, i64 n) {
#pragma omp simd
  for (i64 c = 0; c < n; ++c) x[c] = value;
}

// m ← m ⊙ a, flushing factors below min_factor to zero (no subnormal arithmetic in the walks).
template <class T>
inline void step_walk(T* m, const T* a, i64 Dk) {
  const T tiny = min_factor<T>();
#pragma omp simd
  for (i64 c = 0; c < Dk; ++c) {
    const T x = m[c] * a[c];
    m[c] = x < tiny ? T(0) : x;
  }
}

// Gathers the chunk [t0, t0 + L) of head h: q, k, v, a = exp(g) (also in f64), and the running
// products e_in_i = Π_{t≤i} a_t = exp(b_i), e_out_j = Π_{t>j} a_t = exp(b_L−1 − b_j), e_all.
template <class T>
void load_chunk(const Dims& d, const Inputs<T>& in, i64 bi, i64 h, i64 t0, i64 L, ChunkWork<T>& w) {
  const i64 Dk = d.Dk, Dv = d.Dv;
  for (i64 i = 0; i < L; ++i) {
    copy(in.q.at(bi, t0 + i, h), w.q + i * Dk, Dk);
    copy(in.k.at(bi, t0 + i, h), w.k + i * Dk, Dk);
    copy(in.v.at(bi, t0 + i, h), w.v + i * Dv, Dv);
    const T* g = in.g.at(bi, t0 + i, h);
    for (i64 c = 0; c < Dk; ++c) {
      w.ad[i * Dk + c] = static_cast<double>(decay_factor<T>(g[c]));
      w.a[i * Dk + c] = static_cast<T>(w.ad[i * Dk + c]);
    }
  }
  double* run = w.run;
  fill(run, 1.0, Dk);
  for (i64 i = 0; i < L; ++i) {
    for (i64 c = 0; c < Dk; ++c) {
      run[c] = flush<T>(run[c] * w.ad[i * Dk + c]);
      w.e_in[i * Dk + c] = static_cast<T>(run[c]);
    }
  }
  copy(w.e_in + (L - 1) * Dk, w.e_all, Dk);
  fill(run, 1.0, Dk);
  for (i64 j = L - 1; j >= 0; --j) {
    for (i64 c = 0; c < Dk; ++c) {
      w.e_out[j * Dk + c] = static_cast<T>(run[c]);
      run[c] = flush<T>(run[c] * w.ad[j * Dk + c]);
    }
  }
}

// The diagonal blocks: for every row i of block [s, s + kSub), attn[i, j] = scale Σ_c q_ic k_jc
// M_ijc for s ≤ j ≤ i (the rest of row i is zeroed), walking from j = i downwards. With `dq` (row
// stride ldq) also dq_i += Σ_{s≤j≤i} D_ij (k_j ⊙ M_ij) on the same walk, and w.dg[u] +=
// Σ_{i≥u} Σ_{s≤j<u} W_ij for u in the block, W_ij = q_i ⊙ D_ij (k_j ⊙ M_ij) (in f64).
template <class T>
void diagonal_blocks(const Dims& d, i64 L, T scale, ChunkWork<T>& w, T* dq = nullptr, i64 ldq = 0) {
  const i64 Dk = d.Dk, C = d.C;
  for (i64 i = 0; i < L; ++i) {
    const i64 s = i / kSub * kSub;
    T* attn = w.attn + i * C;
    const T* qi = w.q + i * Dk;
    const T* da = w.d_attn + i * C;
    fill(attn, T(0), L);
    fill(w.m, T(1), Dk);
    if (dq) fill(w.acc, T(0), Dk);
    for (i64 j = i; j >= s; --j) {
      const T* kj = w.k + j * Dk;
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (i64 c = 0; c < Dk; ++c) sum += qi[c] * kj[c] * w.m[c];
      attn[j] = scale * sum;
      if (dq) {
        const T x = da[j];
        T* term = w.walk + j * Dk;
#pragma omp simd
        for (i64 c = 0; c < Dk; ++c) {
          term[c] = x * kj[c] * w.m[c];
          w.acc[c] += term[c];
        }
      }
      if (j > s) step_walk(w.m, w.a + j * Dk, Dk);  // M_i,j−1 = M_ij ⊙ exp(g_j)
    }
    if (!dq) continue;
    T* out = dq + i * ldq;
#pragma omp simd
    for (i64 c = 0; c < Dk; ++c) out[c] += w.acc[c];
    // For u = s..i: dg[u] += Σ_{s≤j<u} W_ij.
    fill(w.run, 0.0, Dk);
    for (i64 u = s; u <= i; ++u) {
      double* dg = w.dg + u * Dk;
      const T* term = w.walk + u * Dk;
#pragma omp simd
      for (i64 c = 0; c < Dk; ++c) {
        dg[c] += w.run[c];
        w.run[c] += static_cast<double>(qi[c] * term[c]);
      }
    }
  }
}

// dk_j += Σ_{j≤i<e} D_ij (q_i ⊙ M_ij) within j's diagonal block [s, e), walking i upwards.
template <class T>
void diagonal_blocks_dk(const Dims& d, i64 L, ChunkWork<T>& w, T* dk, i64 ldk) {
  const i64 Dk = d.Dk, C = d.C;
  for (i64 j = 0; j < L; ++j) {
    const i64 e = std::min(L, (j / kSub + 1) * kSub);
    fill(w.m, T(1), Dk);
    fill(w.acc, T(0), Dk);
    for (i64 i = j; i < e; ++i) {
      const T x = w.d_attn[i * C + j];
      const T* qi = w.q + i * Dk;
#pragma omp simd
      for (i64 c = 0; c < Dk; ++c) w.acc[c] += x * qi[c] * w.m[c];
      if (i + 1 < e) step_walk(w.m, w.a + (i + 1) * Dk, Dk);  // M_i+1,j
    }
    T* out = dk + j * ldk;
#pragma omp simd
    for (i64 c = 0; c < Dk; ++c) out[c] += w.acc[c];
  }
}

// Row block I = [s, s + rows) against all columns j < s, with the reference token r = s − 1:
// M_ij = exp(b_i − b_r) ⊙ exp(b_r − b_j), both factors ≤ 1 (running products in f64).
//   qfac_i = Π_{s≤t≤i} a_t, qtil_i = q_i ⊙ qfac_i;  kfac_j = Π_{j<t≤r} a_t, ktil_j = k_j ⊙ kfac_j;
// cols = ktilᵀ [Dk, s]; attn[i, j] = scale qtil_i · ktil_j for j < s.
template <class T>
void build_offdiag(const Dims& d, i64 L, i64 I, T scale, ChunkWork<T>& w) {
  const i64 Dk = d.Dk, C = d.C, s = I * kSub, rows = std::min(kSub, L - s);
  double* run = w.run;
  fill(run, 1.0, Dk);
  for (i64 i = s; i < s + rows; ++i) {
    for (i64 c = 0; c < Dk; ++c) {
      run[c] = flush<T>(run[c] * w.ad[i * Dk + c]);
      w.qfac[i * Dk + c] = static_cast<T>(run[c]);
      w.qtil[i * Dk + c] = w.q[i * Dk + c] * w.qfac[i * Dk + c];
    }
  }
  fill(run, 1.0, Dk);
  for (i64 j = s - 1; j >= 0; --j) {
    for (i64 c = 0; c < Dk; ++c) {
      w.kfac[j * Dk + c] = static_cast<T>(run[c]);
      w.ktil[j * Dk + c] = w.k[j * Dk + c] * w.kfac[j * Dk + c];
      run[c] = flush<T>(run[c] * w.ad[j * Dk + c]);
    }
  }
  transpose(w.ktil, s, Dk, Dk, w.cols, C);
  T* attn = w.attn + s * C;  // [rows, s] below the diagonal block, zero before
  gemm_acc(rows, s, Dk, w.qtil + s * Dk, Dk, w.cols, C, attn, C);
  for (i64 i = 0; i < rows; ++i) {
#pragma omp simd
    for (i64 j = 0; j < s; ++j) attn[i * C + j] *= scale;
  }
}

// attn = scale A for the loaded chunk (0 above the diagonal).
template <class T>
void chunk_attention(const Dims& d, i64 L, T scale, ChunkWork<T>& w) {
  diagonal_blocks(d, L, scale, w);
  for (i64 I = 1; I * kSub < L; ++I) build_offdiag(d, L, I, scale, w);
}

// S ← Diag(exp(b_L−1)) S + Σ_j (k_j ⊙ f_j) v_jᵀ for the loaded chunk. S: [Dk, Dv].
template <class T>
void advance_state(const Dims& d, i64 L, ChunkWork<T>& w, T* S) {
  const i64 Dk = d.Dk, Dv = d.Dv, C = d.C;
  for (i64 c = 0; c < Dk; ++c) {
    const T f = w.e_all[c];
#pragma omp simd
    for (i64 e = 0; e < Dv; ++e) S[c * Dv + e] *= f;
  }
  // cols = (K ⊙ f)ᵀ: [Dk, L]
  for (i64 j = 0; j < L; ++j) {
    for (i64 c = 0; c < Dk; ++c) w.cols[c * C + j] = w.k[j * Dk + c] * w.e_out[j * Dk + c];
  }
  gemm_acc(Dk, Dv, L, w.cols, C, w.v, Dv, S, Dv);
}

template <class T>
void load_initial_state(const Dims& d, const Inputs<T>& in, i64 bi, i64 h, T* S) {
  const i64 n = d.Dk * d.Dv;
  if (in.initial_state) {
    copy(in.initial_state + (bi * d.H + h) * n, S, n);
  } else {
    zero_rows(S, 1, n, n);
  }
}

// One (batch, head): o[bi, :, h, :] and final_state[bi, h] (when not null).
template <class T>
void forward_head(const Dims& d, const Inputs<T>& in, i64 bi, i64 h, Rows<T> o, T* final_state,
                  ChunkWork<T>& w) {
  const i64 Dk = d.Dk, Dv = d.Dv, C = d.C;
  T* S = w.state;  // [Dk, Dv]
  load_initial_state(d, in, bi, h, S);
  for (i64 t0 = 0; t0 < d.T; t0 += C) {
    const i64 L = std::min(C, d.T - t0);
    load_chunk(d, in, bi, h, t0, L, w);
    chunk_attention(d, L, in.scale, w);
    T* out = o.at(bi, t0, h);  // [L, Dv], row stride o.st
    zero_rows(out, L, Dv, o.st);
    // Intra-chunk: attn V.  Inter-chunk: scale (Q ⊙ e_in) P.
    gemm_acc(L, Dv, L, w.attn, C, w.v, Dv, out, o.st, true);
    scale_elems(w.q, Dk, w.e_in, Dk, in.scale, L, Dk, w.rows, Dk);
    gemm_acc(L, Dv, Dk, w.rows, Dk, S, Dv, out, o.st);
    advance_state(d, L, w, S);
  }
  if (final_state) copy(S, final_state + (bi * d.H + h) * Dk * Dv, Dk * Dv);
}

template <class T>
struct Grads {
  Rows<const T> d_o;       // [B, T, H, Dv]
  const T* d_final_state;  // [B, H, Dk, Dv] or null
  Rows<T> dq, dk, dv;      // [B, T, H, Dk] ×2, [B, T, H, Dv]
  Rows<T> dg;              // [B, T, H, Dk] or data == null
  T* d_initial_state;      // [B, H, Dk, Dv] or null
};

// The blocks below the diagonal in the backward: dq, dk and attn there, and the decay-gradient
// weights xq_i = q_i ⊙ (dq_i from them), xk_j = k_j ⊙ (dk_j from them), blk[I][J] = Σ W_ij over
// the block pair.
template <class T>
void offdiag_backward(const Dims& d, i64 L, T scale, ChunkWork<T>& w, T* dq, i64 ldq, T* dk,
                      i64 ldk) {
  const i64 Dk = d.Dk, C = d.C, nb = w.nb;
  fill(w.xk, 0.0, L * Dk);
  fill(w.blk, 0.0, nb * nb * Dk);
  transpose(w.d_attn, L, L, C, w.sq, C);  // sq[j, i] = D_ij
  for (i64 I = 1; I * kSub < L; ++I) {
    const i64 s = I * kSub, rows = std::min(kSub, L - s);
    build_offdiag(d, L, I, scale, w);
    T* y = w.y + s * Dk;  // [rows, Dk]: Σ_j D_ij ktil_j over one column block
    zero_rows(w.walk + s * Dk, rows, Dk, Dk);
    for (i64 J = 0; J < I; ++J) {
      const i64 sj = J * kSub;
      zero_rows(y, rows, Dk, Dk);
      gemm_acc(rows, Dk, kSub, w.d_attn + s * C + sj, C, w.ktil + sj * Dk, Dk, y, Dk);
      double* blk = w.blk + (I * nb + J) * Dk;
      for (i64 i = 0; i < rows; ++i) {
        for (i64 c = 0; c < Dk; ++c) {
          blk[c] += static_cast<double>(w.qtil[(s + i) * Dk + c] * y[i * Dk + c]);
          w.walk[(s + i) * Dk + c] += y[i * Dk + c];
        }
      }
      // dk_j += kfac_j ⊙ Σ_{i∈I} D_ij qtil_i for j in block J.
      T* z = w.z + sj * Dk;  // [kSub, Dk]
      zero_rows(z, kSub, Dk, Dk);
      gemm_acc(kSub, Dk, rows, w.sq + sj * C + s, C, w.qtil + s * Dk, Dk, z, Dk);
      for (i64 j = sj; j < sj + kSub; ++j) {
        for (i64 c = 0; c < Dk; ++c) {
          const T x = w.kfac[j * Dk + c] * z[(j - sj) * Dk + c];
          dk[j * ldk + c] += x;
          w.xk[j * Dk + c] += static_cast<double>(w.k[j * Dk + c] * x);
        }
      }
    }
    // dq_i += qfac_i ⊙ Σ_J y.
    for (i64 i = s; i < s + rows; ++i) {
      for (i64 c = 0; c < Dk; ++c) {
        const T x = w.qfac[i * Dk + c] * w.walk[i * Dk + c];
        dq[i * ldq + c] += x;
        w.xq[i * Dk + c] = static_cast<double>(w.q[i * Dk + c] * x);
      }
    }
  }
  fill(w.xq, 0.0, std::min(kSub, L) * Dk);  // the first block has nothing below the diagonal
}

// One (batch, head): all its gradients.
template <class T>
void backward_head(const Dims& d, const Inputs<T>& in, const Grads<T>& gr, i64 bi, i64 h,
                   ChunkWork<T>& w) {
  const i64 nc = d.chunks(), Dk = d.Dk, Dv = d.Dv, C = d.C, n = Dk * Dv, nb = w.nb;
  const T scale = in.scale;

  // Forward state pass: states[c] enters chunk c.
  T* states = w.states;  // [nc, Dk, Dv]
  if (nc > 0) load_initial_state(d, in, bi, h, states);
  for (i64 c = 0; c + 1 < nc; ++c) {
    load_chunk(d, in, bi, h, c * C, C, w);
    copy(states + c * n, states + (c + 1) * n, n);
    advance_state(d, C, w, states + (c + 1) * n);
  }

  T* G = w.state;  // [Dk, Dv] dL/dN
  if (gr.d_final_state) {
    copy(gr.d_final_state + (bi * d.H + h) * n, G, n);
  } else {
    zero_rows(G, 1, n, n);
  }
  for (i64 c = nc - 1; c >= 0; --c) {
    const i64 t0 = c * C, L = std::min(C, d.T - t0);
    const T* P = states + c * n;  // [Dk, Dv] entering
    load_chunk(d, in, bi, h, t0, L, w);
    for (i64 i = 0; i < L; ++i) copy(gr.d_o.at(bi, t0 + i, h), w.d_o + i * Dv, Dv);
    // d_attn = scale dO Vᵀ (only j ≤ i is read).
    transpose(w.v, L, Dv, Dv, w.cols, C);
    zero_rows(w.d_attn, L, L, C);
    gemm_acc(L, L, Dv, w.d_o, Dv, w.cols, C, w.d_attn, C);
    for (i64 x = 0; x < L * C; ++x) w.d_attn[x] *= scale;
    // dq = scale e_in ⊙ (dO Pᵀ) (weights w_in = q ⊙ that) + the diagonal-block walks.
    T* dq = gr.dq.at(bi, t0, h);  // [L, Dk], row stride gr.dq.st
    const i64 ldq = gr.dq.st;
    zero_rows(w.rows, L, Dk, Dk);
    transpose(P, Dk, Dv, Dv, w.tr, Dk);
    gemm_acc(L, Dk, Dv, w.d_o, Dv, w.tr, Dk, w.rows, Dk);
    scale_elems(w.rows, Dk, w.e_in, Dk, scale, L, Dk, dq, ldq);
    for (i64 i = 0; i < L; ++i) {
      for (i64 c2 = 0; c2 < Dk; ++c2) {
        w.w_in[i * Dk + c2] = static_cast<double>(w.q[i * Dk + c2] * dq[i * ldq + c2]);
      }
    }
    fill(w.dg, 0.0, L * Dk);
    diagonal_blocks(d, L, scale, w, dq, ldq);
    // dk = e_out ⊙ (V Gᵀ) (weights w_out = k ⊙ that) + the diagonal-block walks.
    T* dk = gr.dk.at(bi, t0, h);
    const i64 ldk = gr.dk.st;
    zero_rows(w.rows, L, Dk, Dk);
    transpose(G, Dk, Dv, Dv, w.tr, Dk);
    gemm_acc(L, Dk, Dv, w.v, Dv, w.tr, Dk, w.rows, Dk);
    scale_elems(w.rows, Dk, w.e_out, Dk, T(1), L, Dk, dk, ldk);
    for (i64 j = 0; j < L; ++j) {
      for (i64 c2 = 0; c2 < Dk; ++c2) {
        w.w_out[j * Dk + c2] = static_cast<double>(w.k[j * Dk + c2] * dk[j * ldk + c2]);
      }
    }
    diagonal_blocks_dk(d, L, w, dk, ldk);
    // Below the diagonal blocks: dq, dk, attn and their decay-gradient weights.
    offdiag_backward(d, L, scale, w, dq, ldq, dk, ldk);
    // dv = (K ⊙ e_out) G + attnᵀ dO.
    T* dv = gr.dv.at(bi, t0, h);
    const i64 ldv = gr.dv.st;
    zero_rows(dv, L, Dv, ldv);
    scale_elems(w.k, Dk, w.e_out, Dk, T(1), L, Dk, w.rows, Dk);
    gemm_acc(L, Dv, Dk, w.rows, Dk, G, Dv, dv, ldv);
    transpose(w.attn, L, L, C, w.sq, C);  // attn is 0 above the diagonal
    gemm_acc(L, Dv, L, w.sq, C, w.d_o, Dv, dv, ldv);
    // dg_u = (diagonal-block weights, in w.dg) + Σ_{i≥u, i∈U} xq_i + Σ_{j<u, j∈U} xk_j
    //        + Σ_{I>U, J<U} blk[I][J] + Σ_{i≥u} w_in_i + Σ_{j<u} w_out_j
    //        + exp(b_L−1) ⊙ rowsum(G ⊙ P),   U the sub-chunk of u.
    if (gr.dg.data) {
      for (i64 c2 = 0; c2 < Dk; ++c2) {
        double sum = 0;
        for (i64 e = 0; e < Dv; ++e) {
          sum += static_cast<double>(G[c2 * Dv + e]) * static_cast<double>(P[c2 * Dv + e]);
        }
        w.run[c2] = static_cast<double>(w.e_all[c2]) * sum;
      }
      for (i64 u = 0; u < L; ++u) {  // the through term and Σ_{j<u} w_out_j
        for (i64 c2 = 0; c2 < Dk; ++c2) {
          w.dg[u * Dk + c2] += w.run[c2];
          w.run[c2] += w.w_out[u * Dk + c2];
        }
      }
      for (i64 U = 0; U * kSub < L; ++U) {
        const i64 s = U * kSub, e = std::min(L, s + kSub);
        fill(w.run, 0.0, Dk);  // Σ_{I>U, J<U} blk[I][J]
        for (i64 I = U + 1; I < nb; ++I) {
          for (i64 J = 0; J < U; ++J) {
            for (i64 c2 = 0; c2 < Dk; ++c2) w.run[c2] += w.blk[(I * nb + J) * Dk + c2];
          }
        }
        for (i64 u = s; u < e; ++u) {  // + Σ_{s≤j<u} xk_j
          for (i64 c2 = 0; c2 < Dk; ++c2) {
            w.dg[u * Dk + c2] += w.run[c2];
            w.run[c2] += w.xk[u * Dk + c2];
          }
        }
        fill(w.run, 0.0, Dk);
        for (i64 u = e - 1; u >= s; --u) {  // + Σ_{u≤i<e} xq_i
          for (i64 c2 = 0; c2 < Dk; ++c2) {
            w.run[c2] += w.xq[u * Dk + c2];
            w.dg[u * Dk + c2] += w.run[c2];
          }
        }
      }
      fill(w.run, 0.0, Dk);
      for (i64 u = L - 1; u >= 0; --u) {  // + Σ_{i≥u} w_in_i
        T* out = gr.dg.at(bi, t0 + u, h);
        for (i64 c2 = 0; c2 < Dk; ++c2) {
          w.run[c2] += w.w_in[u * Dk + c2];
          out[c2] = static_cast<T>(w.dg[u * Dk + c2] + w.run[c2]);
        }
      }
    }
    // G ← Diag(exp(b_L−1)) G + scale (Q ⊙ e_in)ᵀ dO: the gradient of the state entering.
    for (i64 c2 = 0; c2 < Dk; ++c2) {
      const T f = w.e_all[c2];
#pragma omp simd
      for (i64 e = 0; e < Dv; ++e) G[c2 * Dv + e] *= f;
    }
    for (i64 i = 0; i < L; ++i) {
      for (i64 c2 = 0; c2 < Dk; ++c2) {
        w.cols[c2 * C + i] = scale * w.q[i * Dk + c2] * w.e_in[i * Dk + c2];
      }
    }
    gemm_acc(Dk, Dv, L, w.cols, C, w.d_o, Dv, G, Dv);
  }
  if (gr.d_initial_state) copy(G, gr.d_initial_state + (bi * d.H + h) * n, n);
}

// ---- launchers -------------------------------------------------------------------------------

// Checks q, k, v, log_decay and chunk_size (and the optional initial state); returns the sizes.
Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_decay,
                  int chunk_size, const Tensor& initial_state, const char* op) {
  LINMOE_CHECK(q.ndim() == 4, op, ": q must be [B, T, H, Dk], got ", q.str());
  LINMOE_CHECK(v.ndim() == 4, op, ": v must be [B, T, H, Dv], got ", v.str());
  Dims d;
  d.B = q.shape[0], d.T = q.shape[1], d.H = q.shape[2], d.Dk = q.shape[3];
  d.Dv = v.shape[3];
  LINMOE_CHECK(chunk_size >= 1, op, ": chunk_size must be ≥ 1, got ", chunk_size);
  d.C = std::min<i64>(chunk_size, std::max<i64>(d.T, 1));  // one chunk of T is the same math
  const DType dt = q.dtype;
  check_rows(q, q.shape, dt, op, "q");
  check_rows(k, q.shape, dt, op, "k");
  check_rows(v, Shape{d.B, d.T, d.H, d.Dv}, dt, op, "v");
  check_rows(log_decay, q.shape, dt, op, "log_decay");
  if (given(initial_state)) check_state(initial_state, d, dt, op, "initial_state");
  return d;
}

template <class T>
Inputs<T> make_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_decay,
                      const Tensor& initial_state, double scale) {
  Inputs<T> in;
  in.q = Rows<const T>(q), in.k = Rows<const T>(k), in.v = Rows<const T>(v);
  in.g = Rows<const T>(log_decay);
  in.initial_state = given(initial_state) ? static_cast<const T*>(initial_state.data) : nullptr;
  in.scale = static_cast<T>(scale);
  return in;
}

template <class T>
void forward_typed(const Dims& d, const Inputs<T>& in, const Tensor& o, const Tensor& final_state,
                   int threads) {
  const Rows<T> out(o);
  T* fs = given(final_state) ? static_cast<T*>(final_state.data) : nullptr;
#pragma omp parallel num_threads(threads_for_heads(d, threads))
  {
    ChunkWork<T> w(d, false);
#pragma omp for schedule(dynamic, 1)
    for (i64 task = 0; task < d.B * d.H; ++task) {
      forward_head(d, in, task / d.H, task % d.H, out, fs, w);
    }
  }
}

template <class T>
void backward_typed(const Dims& d, const Inputs<T>& in, const Tensor& d_o,
                    const Tensor& d_final_state, const Tensor& dq, const Tensor& dk,
                    const Tensor& dv, const Tensor& d_log_decay, const Tensor& d_initial_state,
                    int threads) {
  Grads<T> gr;
  gr.d_o = Rows<const T>(d_o);
  gr.d_final_state = given(d_final_state) ? static_cast<const T*>(d_final_state.data) : nullptr;
  gr.dq = Rows<T>(dq), gr.dk = Rows<T>(dk), gr.dv = Rows<T>(dv);
  if (given(d_log_decay)) gr.dg = Rows<T>(d_log_decay);
  gr.d_initial_state = given(d_initial_state) ? static_cast<T*>(d_initial_state.data) : nullptr;
#pragma omp parallel num_threads(threads_for_heads(d, threads))
  {
    ChunkWork<T> w(d, true);
#pragma omp for schedule(dynamic, 1)
    for (i64 task = 0; task < d.B * d.H; ++task) {
      backward_head(d, in, gr, task / d.H, task % d.H, w);
    }
  }
}

}  // namespace

void CpuBackend::lsm_vector_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                          const Tensor& log_decay, double scale, int chunk_size,
                                          const Tensor& initial_state, const Tensor& o,
                                          const Tensor& final_state) {
  const char* op = "lsm_vector_decay_forward";
  const Dims d = check_inputs(q, k, v, log_decay, chunk_size, initial_state, op);
  check_rows(o, v.shape, q.dtype, op, "o");
  if (given(final_state)) check_state(final_state, d, q.dtype, op, "final_state");
  cpu::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    forward_typed<T>(d, make_inputs<T>(q, k, v, log_decay, initial_state, scale), o, final_state,
                     threads_);
  });
}

void CpuBackend::lsm_vector_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& log_decay, double scale, int chunk_size,
                                           const Tensor& initial_state, const Tensor& d_o,
                                           const Tensor& d_final_state, const Tensor& dq,
                                           const Tensor& dk, const Tensor& dv,
                                           const Tensor& d_log_decay,
                                           const Tensor& d_initial_state) {
  const char* op = "lsm_vector_decay_backward";
  const Dims d = check_inputs(q, k, v, log_decay, chunk_size, initial_state, op);
  const DType dt = q.dtype;
  check_rows(d_o, v.shape, dt, op, "d_o");
  if (given(d_final_state)) check_state(d_final_state, d, dt, op, "d_final_state");
  check_rows(dq, q.shape, dt, op, "dq");
  check_rows(dk, q.shape, dt, op, "dk");
  check_rows(dv, v.shape, dt, op, "dv");
  if (given(d_log_decay)) check_rows(d_log_decay, q.shape, dt, op, "d_log_decay");
  if (given(d_initial_state)) check_state(d_initial_state, d, dt, op, "d_initial_state");
  cpu::dispatch_float(dt, op, [&](auto zero) {
    using T = decltype(zero);
    backward_typed<T>(d, make_inputs<T>(q, k, v, log_decay, initial_state, scale), d_o,
                      d_final_state, dq, dk, dv, d_log_decay, d_initial_state, threads_);
  });
}

}  // namespace linmoe
