// The delta-rule LSM core on the CPU (MODEL.md section 3: deltanet, gated_deltanet), forward and
// backward. Per batch b and head h, α_t = exp(g_t), g_t = log_decay[b, t, h] (0 for deltanet):
//   S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,   o_t = scale · S_tᵀ q_t.
//
// Forward: chunk-parallel with the WY/UT representation (Yang et al. 2024, "Parallelizing Linear
// Transformers with the Delta Rule over Sequence Length"; its gated form from Gated DeltaNet).
// Writing the step as S_t = α_t S_{t−1} + k_t u_tᵀ with the "pseudo-value"
//   u_t = β_t (v_t − α_t S_{t−1}ᵀ k_t),
// a chunk of L ≤ C tokens entering with state P and cumulative log decays b_i = Σ_{j≤i} g_j
// (from the chunk start; γ_i = exp(b_i), M_ij = exp(b_i − b_j) ≤ 1 for j ≤ i) has
//   S_i = γ_i P + Σ_{j≤i} M_ij k_j u_jᵀ,
// so α_i S_{i−1}ᵀ k_i = γ_i Pᵀ k_i + Σ_{j<i} M_ij (k_i·k_j) u_j and the u_i solve
//   (I + A) U = diag(β) V − diag(β γ) K P,   A_ij = β_i M_ij (k_i·k_j) for j < i (strictly lower).
// With T = (I + A)⁻¹ diag(β) (forward substitution): U = T V − W P, W = T diag(γ) K. Then
//   O = scale (diag(γ) Q P + (Q Kᵀ ⊙ M) U)                       (M lower incl. the diagonal)
//   N = γ_{L−1} P + (diag(exp(b_{L−1} − b)) K)ᵀ U                  (the state leaving the chunk)
// Only differences b_i − b_j ≤ 0 inside one chunk are exponentiated: nothing overflows for any T
// or decay strength, and the factors that underflow are flushed to zero (kMinLogDecay).
//
// Backward, in the same chunk form, per chunk in reverse with G = dL/dN (d_final_state for the
// last chunk). The entering states P come from a forward state pass (recomputed, not stored);
// each chunk's A, M, Ũ, W, U and attn = scale (Q Kᵀ ⊙ M) are recomputed. With η_j =
// exp(b_L−1 − b_j), dm = dO Uᵀ (j ≤ i) and X = (I + A)⁻¹ (never formed: solves with (I + A)ᵀ):
//   dU  = attnᵀ dO + diag(η) K G
//   dq  = scale diag(γ) dO Pᵀ + (scale M ⊙ dm) K
//   R_v = Xᵀ dU,  R_w = Xᵀ (−dU Pᵀ)         (the gradients of diag(β) V and diag(βγ) K)
//   dA  = −(R_v Ũᵀ + R_w Wᵀ) (strictly lower),  D_ij = dA_ij β_i M_ij
//   dk  = (scale M ⊙ dm)ᵀ Q + diag(η) U Gᵀ + D K + Dᵀ K + diag(βγ) R_w
//   dv  = diag(β) R_v,   dβ_i = R_v,i·v_i + γ_i R_w,i·k_i + Σ_{j<i} dA_ij M_ij (k_i·k_j)
//   dP  = γ_L−1 G + scale Qᵀ diag(γ) dO − Wᵀ dU                  (the G of the previous chunk)
// The decay gradient: every factor exp(b_t − b_s) of the chunk ("from s to t"; P is a source
// before the chunk, N a target at its last token) passes its weight w = factor · ∂L/∂factor to
// every dg_u with s < u ≤ t:
//   dg_u = Σ_{i≥u} Σ_{j<u} (attn_ij dm_ij + A_ij dA_ij) + Σ_{i≥u} (scale γ_i q_iᵀ P do_i
//          + β_i γ_i R_w,i·k_i) + Σ_{j<u} η_j k_jᵀ G u_j + γ_L−1 ⟨G, P⟩.
// Every term is a chunk-local product of factors ≤ 1, so the backward is as safe as the forward.
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

// y += a · x (n elements).
template <class T>
inline void axpy(T a, const T* x, T* y, i64 n) {
#pragma omp simd
  for (i64 i = 0; i < n; ++i) y[i] += a * x[i];
}

// Which part of a GEMM operand is known to be zero (or not needed), to skip it.
enum class Tri {
  none,
  a_lower,  // a[i, p] = 0 for p > i
  a_upper,  // a[i, p] = 0 for p < i
  c_lower,  // only c[i, j] for j ≤ i is needed (entries above may be written)
};

// c[i, :] += Σ_p a[i, p] · b[p, :]  for a: [M, K], b: [K, N], c: [M, N], row-major with leading
// dimensions. Register tiles of 4 rows × kTile columns of c, accumulated over all p, then added.
template <class T>
void gemm_acc(i64 M, i64 N, i64 K, const T* a, i64 lda, const T* b, i64 ldb, T* c, i64 ldc,
              Tri tri = Tri::none) {
  constexpr i64 kTile = 128 / static_cast<i64>(sizeof(T));
  for (i64 i0 = 0; i0 < M; i0 += 4) {
    const i64 rows = std::min<i64>(4, M - i0);
    const i64 p0 = tri == Tri::a_upper ? i0 : 0;
    const i64 p1 = tri == Tri::a_lower ? std::min(K, i0 + rows) : K;
    const i64 n = tri == Tri::c_lower ? std::min(N, i0 + rows) : N;
    const T* ar[4];
    for (i64 r = 0; r < 4; ++r) ar[r] = a + (i0 + std::min(r, rows - 1)) * lda;
    for (i64 j0 = 0; j0 < n; j0 += kTile) {
      const i64 width = std::min(kTile, n - j0);
      T acc[4][kTile] = {};
      for (i64 p = p0; p < p1; ++p) {
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

template <class T>
struct Inputs {
  Rows<const T> q, k, v, beta, g;  // [B, T, H, Dk], [B, T, H, Dk], [B, T, H, Dv], [B, T, H] × 2
  bool gated;                      // g given (gated_deltanet); otherwise α = 1
  const T* initial_state;          // [B, H, Dk, Dv] or null
  T scale;
};

// Per-thread scratch for one chunk of one head.
template <class T>
class ChunkWork {
 public:
  T *q, *k, *kt, *v;        // [C, Dk], [C, Dk], [Dk, C], [C, Dv]
  T *w, *u, *rows, *cols;   // [C, Dk] −W, [C, Dv] U, [C, max(Dk, Dv)], [Dk, C] scaled copies
  T *mask, *a, *attn;       // [C, C]: M (0 above the diagonal), A, scale·Q Kᵀ ⊙ M
  T *beta, *e_in;           // [C] β_i, exp(b_i)
  T *e_out, *e_neg;         // [C] exp(b_L−1 − b_i), exp(−b_i)
  T *state, *chunk_states;  // [Dk, Dv] S or G; [chunks, Dk, Dv] states entering the chunks
  // Backward only:
  T *u_tilde, *d_o, *du;      // [C, Dv] Ũ, dO, dU
  T *dr_v, *dr_k;             // [C, Dv] Xᵀ dU, [C, Dk] Xᵀ d(−W)
  T *kkm, *sq, *dm, *da;      // [C, C] M ⊙ K Kᵀ (strictly lower), a transpose, dO Uᵀ, dA
  T *tv, *tr, *next;          // [max(Dk, Dv), C], [max(Dk, Dv), max(Dk, Dv)], [Dk, Dv] new G
  double *b, *weight;         // [C] cumulative log decay; [C, C] decay-gradient weights
  double *w_in, *w_out, *dg;  // [C] per-token weights; the decay gradient

  ChunkWork(const Dims& d, bool backward) {
    const i64 C = d.C, Dk = d.Dk, Dv = d.Dv, Dm = std::max(Dk, Dv), n = Dk * Dv;
    const i64 forward_size = 5 * C * Dk + 2 * C * Dv + C * Dm + 3 * C * C + 4 * C + n;
    const i64 backward_size =
        d.chunks() * n + 4 * C * Dv + C * Dk + 4 * C * C + Dm * C + Dm * Dm + n;
    values_.resize(static_cast<std::size_t>(forward_size + (backward ? backward_size : 0)));
    wide_.resize(static_cast<std::size_t>(4 * C + C * C));
    T* p = values_.data();
    auto take = [&p](i64 count) { return std::exchange(p, p + count); };
    q = take(C * Dk), k = take(C * Dk), kt = take(Dk * C), v = take(C * Dv);
    w = take(C * Dk), u = take(C * Dv), rows = take(C * Dm), cols = take(Dk * C);
    mask = take(C * C), a = take(C * C), attn = take(C * C);
    beta = take(C), e_in = take(C), e_out = take(C), e_neg = take(C);
    state = take(n);
    if (backward) {
      chunk_states = take(d.chunks() * n);
      u_tilde = take(C * Dv), d_o = take(C * Dv), du = take(C * Dv), dr_v = take(C * Dv);
      dr_k = take(C * Dk);
      kkm = take(C * C), sq = take(C * C), dm = take(C * C), da = take(C * C);
      tv = take(Dm * C), tr = take(Dm * Dm), next = take(n);
    }
    double* x = wide_.data();
    b = x, weight = x + C, w_in = x + C + C * C, w_out = w_in + C, dg = w_out + C;
  }

 private:
  std::vector<T> values_;
  std::vector<double> wide_;
};

// mask[i, j] = exp(b_i − b_j) for j ≤ i, 0 above. When the chunk's total log decay is at least
// kMinLogDecay (nothing flushes) as exp(b_i) · exp(−b_j), else one exp per pair.
template <class T>
void build_mask(const Dims& d, i64 L, ChunkWork<T>& w) {
  const i64 C = d.C;
  if (w.b[L - 1] >= kMinLogDecay<T>) {
    for (i64 j = 0; j < L; ++j) w.e_neg[j] = static_cast<T>(std::exp(-w.b[j]));
    for (i64 i = 0; i < L; ++i) {
      T* m = w.mask + i * C;
      const T ei = w.e_in[i];
#pragma omp simd
      for (i64 j = 0; j < L; ++j) m[j] = j < i ? ei * w.e_neg[j] : T(0);
      m[i] = T(1);
    }
    return;
  }
  // b is non-increasing: once exp(b_i − b_j) flushes to zero it stays zero for smaller j.
  for (i64 i = 0; i < L; ++i) {
    T* m = w.mask + i * C;
    for (i64 j = i + 1; j < L; ++j) m[j] = T(0);
    i64 j = i;
    for (; j >= 0; --j) {
      m[j] = decay_factor<T>(w.b[i] - w.b[j]);
      if (m[j] == T(0)) break;
    }
    for (; j >= 0; --j) m[j] = T(0);
  }
}

// Gathers the chunk [t0, t0 + L) of head h: q, k, kt = Kᵀ, v, β and the decay factors.
template <class T>
void load_chunk(const Dims& d, const Inputs<T>& in, i64 bi, i64 h, i64 t0, i64 L, ChunkWork<T>& w) {
  const i64 Dk = d.Dk, Dv = d.Dv;
  double acc = 0;
  for (i64 i = 0; i < L; ++i) {
    copy(in.q.at(bi, t0 + i, h), w.q + i * Dk, Dk);
    copy(in.k.at(bi, t0 + i, h), w.k + i * Dk, Dk);
    copy(in.v.at(bi, t0 + i, h), w.v + i * Dv, Dv);
    w.beta[i] = *in.beta.at(bi, t0 + i, h);
    const double g = in.gated ? static_cast<double>(*in.g.at(bi, t0 + i, h)) : 0.0;
    acc += g;
    w.b[i] = acc;
  }
  for (i64 i = 0; i < L; ++i) {
    w.e_in[i] = decay_factor<T>(w.b[i]);
    w.e_out[i] = decay_factor<T>(w.b[L - 1] - w.b[i]);
  }
  for (i64 i = 0; i < L; ++i) {
    for (i64 x = 0; x < Dk; ++x) w.kt[x * d.C + i] = w.k[i * Dk + x];
  }
}

// One chunk of the WY/UT forward (see the top of the file) for the loaded chunk: writes the
// chunk's outputs to `out` (row stride ld; null: states only) and advances S: [Dk, Dv] from the
// state entering the chunk to the state leaving it.
template <class T>
void chunk_forward(const Dims& d, const Inputs<T>& in, i64 L, T* S, T* out, i64 ld, ChunkWork<T>& w,
                   bool backward = false) {
  const i64 C = d.C, Dk = d.Dk, Dv = d.Dv;
  build_mask(d, L, w);
  // A = β_i M_ij (k_i·k_j), strictly lower.
  zero_rows(w.a, L, L, C);
  gemm_acc(L, L, Dk, w.k, Dk, w.kt, C, w.a, C, Tri::c_lower);
  for (i64 i = 0; i < L; ++i) {
    T* ai = w.a + i * C;
    const T* m = w.mask + i * C;
    const T bi = w.beta[i];
    if (backward) {
      T* km = w.kkm + i * C;
#pragma omp simd
      for (i64 j = 0; j < i; ++j) km[j] = ai[j] * m[j];
    }
#pragma omp simd
    for (i64 j = 0; j < i; ++j) ai[j] *= bi * m[j];
  }
  // Forward substitution, row by row, of (I + A) [−W | Ũ] = [−diag(βγ) K | diag(β) V].
  for (i64 i = 0; i < L; ++i) {
    T* wi = w.w + i * Dk;
    T* ui = w.u + i * Dv;
    const T fw = -w.beta[i] * w.e_in[i], fu = w.beta[i];
#pragma omp simd
    for (i64 x = 0; x < Dk; ++x) wi[x] = fw * w.k[i * Dk + x];
#pragma omp simd
    for (i64 e = 0; e < Dv; ++e) ui[e] = fu * w.v[i * Dv + e];
    const T* ai = w.a + i * C;
    for (i64 j = 0; j < i; ++j) {
      const T aij = ai[j];
      if (aij == T(0)) continue;
      axpy(-aij, w.w + j * Dk, wi, Dk);
      axpy(-aij, w.u + j * Dv, ui, Dv);
    }
  }
  // U = Ũ − W P.
  if (backward) copy(w.u, w.u_tilde, L * Dv);
  gemm_acc(L, Dv, Dk, w.w, Dk, S, Dv, w.u, Dv);
  if (out || backward) {
    // O = scale (diag(γ) Q P + (Q Kᵀ ⊙ M) U).
    zero_rows(w.attn, L, L, C);
    gemm_acc(L, L, Dk, w.q, Dk, w.kt, C, w.attn, C, Tri::c_lower);
    for (i64 i = 0; i < L; ++i) {
      T* at = w.attn + i * C;
      const T* m = w.mask + i * C;
#pragma omp simd
      for (i64 j = 0; j < L; ++j) at[j] *= in.scale * m[j];
    }
  }
  if (out) {
    zero_rows(out, L, Dv, ld);
    gemm_acc(L, Dv, L, w.attn, C, w.u, Dv, out, ld, Tri::a_lower);
    for (i64 i = 0; i < L; ++i) {
      const T f = in.scale * w.e_in[i];
#pragma omp simd
      for (i64 x = 0; x < Dk; ++x) w.rows[i * Dk + x] = f * w.q[i * Dk + x];
    }
    gemm_acc(L, Dv, Dk, w.rows, Dk, S, Dv, out, ld);
  }
  // N = γ_{L−1} P + (diag(exp(b_L−1 − b)) K)ᵀ U.
  const T e_all = w.e_in[L - 1];
  for (i64 x = 0; x < Dk * Dv; ++x) S[x] *= e_all;
  for (i64 x = 0; x < Dk; ++x) {
#pragma omp simd
    for (i64 j = 0; j < L; ++j) w.cols[x * C + j] = w.kt[x * C + j] * w.e_out[j];
  }
  gemm_acc(Dk, Dv, L, w.cols, C, w.u, Dv, S, Dv);
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
  T* S = w.state;  // [Dk, Dv]
  load_initial_state(d, in, bi, h, S);
  for (i64 t0 = 0; t0 < d.T; t0 += d.C) {
    const i64 L = std::min(d.C, d.T - t0);
    load_chunk(d, in, bi, h, t0, L, w);
    chunk_forward(d, in, L, S, o.at(bi, t0, h), o.st, w);
  }
  if (final_state) copy(S, final_state + (bi * d.H + h) * d.Dk * d.Dv, d.Dk * d.Dv);
}

template <class T>
struct Grads {
  Rows<const T> d_o;       // [B, T, H, Dv]
  const T* d_final_state;  // [B, H, Dk, Dv] or null
  Rows<T> dq, dk, dv;      // [B, T, H, Dk], [B, T, H, Dk], [B, T, H, Dv]
  Rows<T> d_beta;          // [B, T, H]
  Rows<T> dg;              // [B, T, H] or data == null
  T* d_initial_state;      // [B, H, Dk, Dv] or null
};

// y[c, r] = x[r, c] for r < R, c < Cx; x with row stride ldx, y with row stride ldy.
template <class T>
void transpose(const T* x, i64 R, i64 Cx, i64 ldx, T* y, i64 ldy) {
  for (i64 r = 0; r < R; ++r) {
    for (i64 c = 0; c < Cx; ++c) y[c * ldy + r] = x[r * ldx + c];
  }
}

// Z = (I + A)⁻ᵀ Y in place, Y: [L, cols] (row stride ld), A strictly lower [L, L] (stride C):
// back substitution Z_i = Y_i − Σ_{j>i} A_ji Z_j.
template <class T>
void solve_transposed(const T* A, i64 C, i64 L, T* y, i64 cols, i64 ld) {
  for (i64 i = L - 2; i >= 0; --i) {
    T* yi = y + i * ld;
    for (i64 j = i + 1; j < L; ++j) {
      const T aji = A[j * C + i];
      if (aji != T(0)) axpy(-aji, y + j * ld, yi, cols);
    }
  }
}

// One (batch, head) of the backward, in the chunk form (see the top of the file).
template <class T>
void backward_head(const Dims& d, const Inputs<T>& in, const Grads<T>& gr, i64 bi, i64 h,
                   ChunkWork<T>& w) {
  const i64 nc = d.chunks(), Dk = d.Dk, Dv = d.Dv, C = d.C, n = Dk * Dv;
  const T scale = in.scale;

  // Forward state pass (WY/UT chunk form): the state entering every chunk.
  T* states = w.chunk_states;  // [nc, Dk, Dv]
  if (nc > 0) load_initial_state(d, in, bi, h, states);
  for (i64 c = 0; c + 1 < nc; ++c) {
    load_chunk(d, in, bi, h, c * C, C, w);
    copy(states + c * n, states + (c + 1) * n, n);
    chunk_forward(d, in, C, states + (c + 1) * n, static_cast<T*>(nullptr), 0, w);
  }

  T* G = w.state;  // [Dk, Dv] dL/dN
  if (gr.d_final_state) {
    copy(gr.d_final_state + (bi * d.H + h) * n, G, n);
  } else {
    zero_rows(G, 1, n, n);
  }
  for (i64 c = nc - 1; c >= 0; --c) {
    const i64 t0 = c * C, L = std::min(C, d.T - t0);
    const T* P = states + c * n;  // [Dk, Dv]
    load_chunk(d, in, bi, h, t0, L, w);
    copy(P, w.next, n);  // scratch for the recomputed N (not needed)
    chunk_forward(d, in, L, w.next, static_cast<T*>(nullptr), 0, w, true);
    for (i64 i = 0; i < L; ++i) copy(gr.d_o.at(bi, t0 + i, h), w.d_o + i * Dv, Dv);
    const T* Wn = w.w;  // −W

    // dU = attnᵀ dO + diag(η) K G   (η_j = exp(b_L−1 − b_j)).
    zero_rows(w.du, L, Dv, Dv);
    transpose(w.attn, L, L, C, w.sq, C);  // attn is 0 above the diagonal
    gemm_acc(L, Dv, L, w.sq, C, w.d_o, Dv, w.du, Dv, Tri::a_upper);
    for (i64 j = 0; j < L; ++j) {
#pragma omp simd
      for (i64 x = 0; x < Dk; ++x) w.rows[j * Dk + x] = w.e_out[j] * w.k[j * Dk + x];
    }
    gemm_acc(L, Dv, Dk, w.rows, Dk, G, Dv, w.du, Dv);

    // dm = dO Uᵀ (j ≤ i); weight_ij = attn_ij dm_ij (the M of the output); dm ← scale M ⊙ dm.
    transpose(w.u, L, Dv, Dv, w.tv, C);
    zero_rows(w.dm, L, L, C);
    gemm_acc(L, L, Dv, w.d_o, Dv, w.tv, C, w.dm, C, Tri::c_lower);
    for (i64 i = 0; i < L; ++i) {
      T* dmi = w.dm + i * C;
      const T* at = w.attn + i * C;
      const T* m = w.mask + i * C;
      double* wt = w.weight + i * C;
      for (i64 j = 0; j < i; ++j) wt[j] = static_cast<double>(at[j]) * static_cast<double>(dmi[j]);
#pragma omp simd
      for (i64 j = 0; j < L; ++j) dmi[j] = j <= i ? scale * m[j] * dmi[j] : T(0);
    }

    // dq = scale diag(γ) dO Pᵀ + dm K;  w_in_i = q_i · (row i of the first term).
    T* dq = gr.dq.at(bi, t0, h);
    const i64 ldq = gr.dq.st;
    zero_rows(dq, L, Dk, ldq);
    transpose(P, Dk, Dv, Dv, w.tr, Dk);  // Pᵀ: [Dv, Dk]
    for (i64 i = 0; i < L; ++i) {
      const T f = scale * w.e_in[i];
#pragma omp simd
      for (i64 e = 0; e < Dv; ++e) w.rows[i * Dv + e] = f * w.d_o[i * Dv + e];
    }
    gemm_acc(L, Dk, Dv, w.rows, Dv, w.tr, Dk, dq, ldq);
    for (i64 i = 0; i < L; ++i)
      w.w_in[i] = static_cast<double>(dot(w.q + i * Dk, dq + i * ldq, Dk));
    gemm_acc(L, Dk, L, w.dm, C, w.k, Dk, dq, ldq, Tri::a_lower);

    // d(−W) = dU Pᵀ: [L, Dk] into dr_k; dr_v = dU; then both ← (I + A)⁻ᵀ (·).
    zero_rows(w.dr_k, L, Dk, Dk);
    gemm_acc(L, Dk, Dv, w.du, Dv, w.tr, Dk, w.dr_k, Dk);
    copy(w.du, w.dr_v, L * Dv);
    solve_transposed(w.a, C, L, w.dr_v, Dv, Dv);
    solve_transposed(w.a, C, L, w.dr_k, Dk, Dk);

    // dA = −(dr_v Ũᵀ + dr_k (−W)ᵀ), strictly lower.
    zero_rows(w.da, L, L, C);
    transpose(w.u_tilde, L, Dv, Dv, w.tv, C);
    gemm_acc(L, L, Dv, w.dr_v, Dv, w.tv, C, w.da, C, Tri::c_lower);
    transpose(Wn, L, Dk, Dk, w.tv, C);
    gemm_acc(L, L, Dk, w.dr_k, Dk, w.tv, C, w.da, C, Tri::c_lower);

    // dk = dmᵀ Q + diag(η) U Gᵀ + D K + Dᵀ K − diag(βγ) dr_k, D_ij = dA_ij β_i M_ij (j < i);
    // w_out_j = k_j · (row j of diag(η) U Gᵀ).
    T* dk = gr.dk.at(bi, t0, h);
    const i64 ldk = gr.dk.st;
    zero_rows(dk, L, Dk, ldk);
    transpose(G, Dk, Dv, Dv, w.tr, Dk);  // Gᵀ: [Dv, Dk]
    for (i64 j = 0; j < L; ++j) {
#pragma omp simd
      for (i64 e = 0; e < Dv; ++e) w.rows[j * Dv + e] = w.e_out[j] * w.u[j * Dv + e];
    }
    gemm_acc(L, Dk, Dv, w.rows, Dv, w.tr, Dk, dk, ldk);
    for (i64 j = 0; j < L; ++j) {
      w.w_out[j] = static_cast<double>(dot(w.k + j * Dk, dk + j * ldk, Dk));
    }
    transpose(w.dm, L, L, C, w.sq, C);
    gemm_acc(L, Dk, L, w.sq, C, w.q, Dk, dk, ldk, Tri::a_upper);
    T* db = w.rows;  // [L] dβ, accumulated below
    for (i64 i = 0; i < L; ++i) {
      T* dai = w.da + i * C;
      const T* ai = w.a + i * C;
      const T* km = w.kkm + i * C;
      const T* m = w.mask + i * C;
      double* wt = w.weight + i * C;
      T dbi = 0;
      for (i64 j = 0; j < i; ++j) {
        const T daij = -dai[j];
        wt[j] += static_cast<double>(daij) * static_cast<double>(ai[j]);
        dbi += daij * km[j];
        dai[j] = daij * w.beta[i] * m[j];  // D_ij
      }
      for (i64 j = i; j < L; ++j) dai[j] = T(0);
      db[i] = dbi;
    }
    gemm_acc(L, Dk, L, w.da, C, w.k, Dk, dk, ldk, Tri::a_lower);
    transpose(w.da, L, L, C, w.sq, C);
    gemm_acc(L, Dk, L, w.sq, C, w.k, Dk, dk, ldk, Tri::a_upper);
    // From −diag(βγ) K and diag(β) V:  w_in_i also takes −β_i γ_i (dr_k_i · k_i).
    T* dv = gr.dv.at(bi, t0, h);
    const i64 ldv = gr.dv.st;
    for (i64 i = 0; i < L; ++i) {
      const T* drk = w.dr_k + i * Dk;
      const T* drv = w.dr_v + i * Dv;
      const T kd = dot(drk, w.k + i * Dk, Dk);
      const T bg = w.beta[i] * w.e_in[i];
      axpy(-bg, drk, dk + i * ldk, Dk);
      T* dvi = dv + i * ldv;
#pragma omp simd
      for (i64 e = 0; e < Dv; ++e) dvi[e] = w.beta[i] * drv[e];
      db[i] += dot(drv, w.v + i * Dv, Dv) - w.e_in[i] * kd;
      w.w_in[i] -= static_cast<double>(bg) * static_cast<double>(kd);
      *gr.d_beta.at(bi, t0 + i, h) = db[i];
    }

    // dg_u = Σ_{i≥u} Σ_{j<u} weight_ij + Σ_{i≥u} w_in_i + Σ_{j<u} w_out_j + γ_L−1 ⟨G, P⟩.
    const T e_all = w.e_in[L - 1];
    if (gr.dg.data) {
      double gp = 0;
      for (i64 x = 0; x < n; ++x) gp += static_cast<double>(G[x]) * static_cast<double>(P[x]);
      const double through = static_cast<double>(e_all) * gp;
      for (i64 u = 0; u < L; ++u) w.dg[u] = through;
      for (i64 i = 0; i < L; ++i) {
        double prefix = 0;
        const double* wt = w.weight + i * C;
        for (i64 u = 0; u <= i; ++u) {
          w.dg[u] += prefix;
          if (u < i) prefix += wt[u];
        }
      }
      double suffix_in = 0, prefix_out = 0;
      for (i64 u = L - 1; u >= 0; --u) {
        suffix_in += w.w_in[u];
        w.dg[u] += suffix_in;
      }
      for (i64 u = 0; u < L; ++u) {
        w.dg[u] += prefix_out;
        prefix_out += w.w_out[u];
      }
      for (i64 u = 0; u < L; ++u) *gr.dg.at(bi, t0 + u, h) = static_cast<T>(w.dg[u]);
    }

    // G ← γ_L−1 G + scale Qᵀ diag(γ) dO + (−W)ᵀ dU: the gradient of the state entering.
    for (i64 x = 0; x < n; ++x) G[x] *= e_all;
    for (i64 x = 0; x < Dk; ++x) {
      for (i64 i = 0; i < L; ++i) w.cols[x * C + i] = scale * w.e_in[i] * w.q[i * Dk + x];
    }
    gemm_acc(Dk, Dv, L, w.cols, C, w.d_o, Dv, G, Dv);
    transpose(Wn, L, Dk, Dk, w.cols, C);
    gemm_acc(Dk, Dv, L, w.cols, C, w.du, Dv, G, Dv);
  }
  if (gr.d_initial_state) copy(G, gr.d_initial_state + (bi * d.H + h) * n, n);
}

// ---- launchers -------------------------------------------------------------------------------

// Checks q, k, v, beta, log_decay (optional), chunk_size and the optional initial state.
Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                  const Tensor& log_decay, int chunk_size, const Tensor& initial_state,
                  const char* op) {
  LINMOE_CHECK(q.ndim() == 4, op, ": q must be [B, T, H, Dk], got ", q.str());
  LINMOE_CHECK(v.ndim() == 4, op, ": v must be [B, T, H, Dv], got ", v.str());
  Dims d;
  d.B = q.shape[0], d.T = q.shape[1], d.H = q.shape[2], d.Dk = q.shape[3];
  d.Dv = v.shape[3];
  LINMOE_CHECK(chunk_size >= 1, op, ": chunk_size must be ≥ 1, got ", chunk_size);
  d.C = std::min<i64>(chunk_size, std::max<i64>(d.T, 1));  // one chunk of T is the same math
  const DType dt = q.dtype;
  check_rows(q, q.shape, dt, op, "q");
  check_rows(k, Shape{d.B, d.T, d.H, d.Dk}, dt, op, "k");
  check_rows(v, Shape{d.B, d.T, d.H, d.Dv}, dt, op, "v");
  check_rows(beta, Shape{d.B, d.T, d.H}, dt, op, "beta");
  if (given(log_decay)) check_rows(log_decay, Shape{d.B, d.T, d.H}, dt, op, "log_decay");
  if (given(initial_state)) check_state(initial_state, d, dt, op, "initial_state");
  return d;
}

template <class T>
Inputs<T> make_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                      const Tensor& log_decay, const Tensor& initial_state, double scale) {
  Inputs<T> in;
  in.q = Rows<const T>(q), in.k = Rows<const T>(k), in.v = Rows<const T>(v);
  in.beta = Rows<const T>(beta);
  in.gated = given(log_decay);
  if (in.gated) in.g = Rows<const T>(log_decay);
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
                    const Tensor& dv, const Tensor& d_beta, const Tensor& d_log_decay,
                    const Tensor& d_initial_state, int threads) {
  Grads<T> gr;
  gr.d_o = Rows<const T>(d_o);
  gr.d_final_state = given(d_final_state) ? static_cast<const T*>(d_final_state.data) : nullptr;
  gr.dq = Rows<T>(dq), gr.dk = Rows<T>(dk), gr.dv = Rows<T>(dv);
  gr.d_beta = Rows<T>(d_beta);
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

void CpuBackend::lsm_delta_rule_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Tensor& beta, const Tensor& log_decay, double scale,
                                        int chunk_size, const Tensor& initial_state,
                                        const Tensor& o, const Tensor& final_state) {
  const char* op = "lsm_delta_rule_forward";
  const Dims d = check_inputs(q, k, v, beta, log_decay, chunk_size, initial_state, op);
  check_rows(o, v.shape, q.dtype, op, "o");
  if (given(final_state)) check_state(final_state, d, q.dtype, op, "final_state");
  cpu::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    forward_typed<T>(d, make_inputs<T>(q, k, v, beta, log_decay, initial_state, scale), o,
                     final_state, threads_);
  });
}

void CpuBackend::lsm_delta_rule_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& beta, const Tensor& log_decay, double scale,
                                         int chunk_size, const Tensor& initial_state,
                                         const Tensor& d_o, const Tensor& d_final_state,
                                         const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                         const Tensor& d_beta, const Tensor& d_log_decay,
                                         const Tensor& d_initial_state) {
  const char* op = "lsm_delta_rule_backward";
  const Dims d = check_inputs(q, k, v, beta, log_decay, chunk_size, initial_state, op);
  const DType dt = q.dtype;
  check_rows(d_o, v.shape, dt, op, "d_o");
  if (given(d_final_state)) check_state(d_final_state, d, dt, op, "d_final_state");
  check_rows(dq, q.shape, dt, op, "dq");
  check_rows(dk, q.shape, dt, op, "dk");
  check_rows(dv, v.shape, dt, op, "dv");
  check_rows(d_beta, beta.shape, dt, op, "d_beta");
  if (given(d_log_decay)) {
    LINMOE_CHECK(given(log_decay), op,
                 ": d_log_decay must be undefined when log_decay is (deltanet has no decay)");
    check_rows(d_log_decay, beta.shape, dt, op, "d_log_decay");
  }
  if (given(d_initial_state)) check_state(d_initial_state, d, dt, op, "d_initial_state");
  cpu::dispatch_float(dt, op, [&](auto zero) {
    using T = decltype(zero);
    backward_typed<T>(d, make_inputs<T>(q, k, v, beta, log_decay, initial_state, scale), d_o,
                      d_final_state, dq, dk, dv, d_beta, d_log_decay, d_initial_state, threads_);
  });
}

}  // namespace linmoe
