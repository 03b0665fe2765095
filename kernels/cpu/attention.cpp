// Causal GQA softmax attention (MODEL.md 2), flash-attention style: no Tq×Tk matrix exists.
//
// Forward: per (batch, query head, block of kQueryBlock queries), sweep the visible key blocks
// with an online softmax (running max m and sum l; the output block is rescaled by e^{m_old −
// m_new} whenever the max grows), then o = acc / l and lse = m + log l.
// Backward (flash-attention 2): P is recomputed from lse; D_i = Σ dO_i ⊙ O_i; dS = P ⊙ (dP − D).
// Two passes keep every output element owned by one task, so threads never race and results do
// not depend on the thread count or the schedule: dQ per (b, query head, query block), then dK
// and dV per (b, kv head, key block), summing over the query heads that share the kv head.
// Block products are register-tiled multiply-adds on per-thread copies of the blocks.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

constexpr i64 kQueryBlock = 64;
constexpr i64 kKeyBlock = 64;

i64 ceil_div(i64 a, i64 b) {
  return (a + b - 1) / b;
}

struct AttentionDims {
  i64 B, Tq, Tk, Hq, Hkv, d, q_offset;
  double scale;

  i64 kv_head(i64 h) const { return h * Hkv / Hq; }      // MODEL.md 2: ⌊h·Hkv/Hq⌋
  i64 key_end(i64 i) const { return q_offset + i + 1; }  // query i sees keys [0, key_end(i))
  i64 q_row(i64 b, i64 i, i64 h) const { return ((b * Tq + i) * Hq + h) * d; }
  i64 kv_row(i64 b, i64 j, i64 hk) const { return ((b * Tk + j) * Hkv + hk) * d; }
  i64 stat(i64 b, i64 h, i64 i) const { return (b * Hq + h) * Tq + i; }
  // Multiply-adds of one forward: a bound used to decide whether threads pay off.
  i64 work() const { return B * Hq * Tq * Tk * d; }
};

// A register tile of block_multiply_add: R rows × 2 vectors of c stay in registers for the
// whole sum over kd (a store per tile, not per multiply-add). 256-bit vectors: what GCC picks
// for -march on AVX-512 parts too, and what AVX2 machines have.
template <class T>
struct TileVec {
  typedef T V __attribute__((vector_size(32)));
  static constexpr i64 kLanes = 32 / static_cast<i64>(sizeof(T));
};

template <class T, int R>
void multiply_add_tile(const T* a, i64 lda, const T* b, i64 ldb, i64 kd, T* c, i64 ldc) {
  using V = typename TileVec<T>::V;
  constexpr i64 L = TileVec<T>::kLanes;
  V acc[R][2];
  for (int i = 0; i < R; ++i) {
    std::memcpy(&acc[i][0], c + i * ldc, sizeof(V));
    std::memcpy(&acc[i][1], c + i * ldc + L, sizeof(V));
  }
  for (i64 x = 0; x < kd; ++x) {
    V b0, b1;
    std::memcpy(&b0, b + x * ldb, sizeof(V));
    std::memcpy(&b1, b + x * ldb + L, sizeof(V));
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const T ai = a[i * lda + x];
      acc[i][0] += ai * b0;
      acc[i][1] += ai * b1;
    }
  }
  for (int i = 0; i < R; ++i) {
    std::memcpy(c + i * ldc, &acc[i][0], sizeof(V));
    std::memcpy(c + i * ldc + L, &acc[i][1], sizeof(V));
  }
}

// c[m, n] += a[m, kd] · b[kd, n] with row strides lda, ldb, ldc: 4-row register tiles over
// 2-vector column strips, plain loops for the ragged edges (awkward head dims, short blocks).
template <class T>
void block_multiply_add(const T* a, i64 lda, const T* b, i64 ldb, i64 m, i64 n, i64 kd, T* c,
                        i64 ldc) {
  constexpr int kRows = 4;
  constexpr i64 kStrip = 2 * TileVec<T>::kLanes;
  const i64 n_tiled = n - n % kStrip;
  for (i64 r = 0; r < m; r += kRows) {
    const i64 rows = std::min<i64>(kRows, m - r);
    const T* ar = a + r * lda;
    T* cr = c + r * ldc;
    for (i64 col = 0; col < n_tiled; col += kStrip) {
      if (rows == kRows) {
        multiply_add_tile<T, kRows>(ar, lda, b + col, ldb, kd, cr + col, ldc);
      } else {
        for (i64 i = 0; i < rows; ++i) {
          multiply_add_tile<T, 1>(ar + i * lda, lda, b + col, ldb, kd, cr + i * ldc + col, ldc);
        }
      }
    }
    for (i64 i = 0; i < rows && n_tiled < n; ++i) {
      for (i64 x = 0; x < kd; ++x) {
        const T ax = ar[i * lda + x];
        const T* bx = b + x * ldb;
        T* ci = cr + i * ldc;
        for (i64 col = n_tiled; col < n; ++col) ci[col] += ax * bx[col];
      }
    }
  }
}

// max(init, x[0..n)) with vector compares (a scalar max chain is a serial dependency).
template <class T>
T row_max(const T* x, i64 n, T init) {
  using V = typename TileVec<T>::V;
  constexpr i64 L = TileVec<T>::kLanes;
  T mx = init;
  i64 c = 0;
  if (n >= L) {
    V acc, val;
    std::memcpy(&acc, x, sizeof(V));
    for (c = L; c + L <= n; c += L) {
      std::memcpy(&val, x + c, sizeof(V));
      acc = val > acc ? val : acc;
    }
    for (i64 l = 0; l < L; ++l) mx = std::max(mx, acc[l]);
  }
  for (; c < n; ++c) mx = std::max(mx, x[c]);
  return mx;
}

// e^x on one vector of f32: x = n·ln2 + r with |r| ≤ ln2/2, e^r by its degree-7 Taylor
// polynomial (truncation < 1e-8 relative), 2^n built in the exponent bits. A few ulp; e^x = 0
// below 2^−126 (the arguments here are ≤ 0: logits minus their max or their lse); NaN stays NaN.
inline TileVec<float>::V exp_vector(TileVec<float>::V x) {
  using V = TileVec<float>::V;
  typedef std::int32_t VI __attribute__((vector_size(32)));
  const V t = x * 1.44269504088896341f;
  V tc = t >= -126.0f ? t : V{} - 126.0f;  // NaN and −inf go to −126, then are masked
  tc = tc > 127.0f ? V{} + 127.0f : tc;
  const V round = V{} + 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const V n = (tc + round) - round;
  const V r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;  // Cody–Waite ln2
  V p = V{} + (1.0f / 5040);
  p = p * r + (1.0f / 720);
  p = p * r + (1.0f / 120);
  p = p * r + (1.0f / 24);
  p = p * r + (1.0f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V two_n;
  std::memcpy(&two_n, &bits, sizeof(V));
  V e = p * two_n;
  e = t < -126.0f ? V{} : e;
  return x == x ? e : x;
}

// x[0..n) = e^{x[0..n)} in place: the vector exp for f32, the library's for f64 (whose tests
// hold it to 1e-12).
inline void exp_in_place(float* x, i64 n) {
  using V = TileVec<float>::V;
  constexpr i64 L = TileVec<float>::kLanes;
  i64 c = 0;
  for (; c + L <= n; c += L) {
    V v;
    std::memcpy(&v, x + c, sizeof(V));
    v = exp_vector(v);
    std::memcpy(x + c, &v, sizeof(V));
  }
  if (c < n) {  // the ragged end through a padded vector
    V v = V{};
    std::memcpy(&v, x + c, static_cast<std::size_t>(n - c) * sizeof(float));
    v = exp_vector(v);
    std::memcpy(x + c, &v, static_cast<std::size_t>(n - c) * sizeof(float));
  }
}
inline void exp_in_place(double* x, i64 n) {
  for (i64 c = 0; c < n; ++c) x[c] = std::exp(x[c]);
}

template <class T>
void zero_block(T* c, i64 m, i64 n, i64 ldc) {
  for (i64 r = 0; r < m; ++r) std::fill(c + r * ldc, c + r * ldc + n, T(0));
}

// n token rows of one head (d contiguous values each, `step` elements apart, as in [B, T, H, d])
// into a per-thread block, times s: row-major [n, d], or transposed [d, n] with row stride ld.
template <class T>
void load_rows(const T* src, i64 step, i64 n, i64 d, T s, T* dst) {
  for (i64 r = 0; r < n; ++r) {
    const T* sr = src + r * step;
    for (i64 x = 0; x < d; ++x) dst[r * d + x] = s * sr[x];
  }
}
template <class T>
void load_rows_transposed(const T* src, i64 step, i64 n, i64 d, T s, T* dst, i64 ld) {
  for (i64 r = 0; r < n; ++r) {
    const T* sr = src + r * step;
    for (i64 x = 0; x < d; ++x) dst[x * ld + r] = s * sr[x];
  }
}

template <class T>
void forward_kernel(const AttentionDims& p, const T* q, const T* k, const T* v, T* o, T* lse,
                    int threads) {
  const i64 d = p.d, nqb = ceil_div(p.Tq, kQueryBlock), tasks = p.B * p.Hq * nqb;
  const i64 q_step = p.Hq * d, kv_step = p.Hkv * d;  // elements between consecutive tokens
  const T scale = static_cast<T>(p.scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();
#pragma omp parallel num_threads(cpu::threads_for(p.work(), threads))
  {
    std::vector<T> qs(kQueryBlock * d);         // [nq, d] scale·q
    std::vector<T> kt(d * kKeyBlock);           // [d, nk] k transposed
    std::vector<T> vl(kKeyBlock * d);           // [nk, d]
    std::vector<T> s(kQueryBlock * kKeyBlock);  // [nq, nk] logits, then probabilities
    std::vector<T> acc(kQueryBlock * d);        // [nq, d] unnormalised output
    std::vector<T> m(kQueryBlock);              // running max of the logits
    std::vector<double> l(kQueryBlock);         // running Σ e^{logit − m}
#pragma omp for schedule(dynamic, 1)
    for (i64 task = 0; task < tasks; ++task) {
      // Later query blocks see more keys: hand them out first.
      const i64 qb = nqb - 1 - task % nqb, bh = task / nqb, b = bh / p.Hq, h = bh % p.Hq;
      const i64 hk = p.kv_head(h), i0 = qb * kQueryBlock, nq = std::min(kQueryBlock, p.Tq - i0);
      load_rows(q + p.q_row(b, i0, h), q_step, nq, d, scale, qs.data());
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), 0.0);
      const i64 kend = p.key_end(i0 + nq - 1);  // keys seen by the block's last query
      for (i64 j0 = 0; j0 < kend; j0 += kKeyBlock) {
        const i64 nk = std::min(kKeyBlock, kend - j0);
        load_rows_transposed(k + p.kv_row(b, j0, hk), kv_step, nk, d, T(1), kt.data(), kKeyBlock);
        load_rows(v + p.kv_row(b, j0, hk), kv_step, nk, d, T(1), vl.data());
        zero_block(s.data(), nq, nk, kKeyBlock);
        block_multiply_add(qs.data(), d, kt.data(), kKeyBlock, nq, nk, d, s.data(), kKeyBlock);
        for (i64 r = 0; r < nq; ++r) {
          T* sr = s.data() + r * kKeyBlock;  // [nk]
          const i64 cend = std::clamp<i64>(p.key_end(i0 + r) - j0, 0, nk);
          if (cend == 0) {  // the causal mask hides this whole block from query r
            std::fill(sr, sr + nk, T(0));
            continue;
          }
          const T mx = row_max(sr, cend, m[r]);
          const T alpha = std::exp(m[r] - mx);  // 0 on the row's first block (m = −inf)
          for (i64 c = 0; c < cend; ++c) sr[c] -= mx;
          exp_in_place(sr, cend);
          T sum = 0;
          for (i64 c = 0; c < cend; ++c) sum += sr[c];
          std::fill(sr + cend, sr + nk, T(0));
          l[r] = l[r] * alpha + sum;
          m[r] = mx;
          T* ar = acc.data() + r * d;
          for (i64 x = 0; x < d; ++x) ar[x] *= alpha;
        }
        block_multiply_add(s.data(), kKeyBlock, vl.data(), d, nq, d, nk, acc.data(), d);
      }
      for (i64 r = 0; r < nq; ++r) {
        const T inv = static_cast<T>(1.0 / l[r]);
        T* orow = o + p.q_row(b, i0 + r, h);
        for (i64 x = 0; x < d; ++x) orow[x] = acc[r * d + x] * inv;
        lse[p.stat(b, h, i0 + r)] = static_cast<T>(static_cast<double>(m[r]) + std::log(l[r]));
      }
    }
  }
}

// D_i = Σ_x dO_i·O_i per (b, h, i), accumulated in double. delta: [B, Hq, Tq].
template <class T>
void output_grad_dot(const AttentionDims& p, const T* o, const T* d_o, T* delta, int threads) {
  const i64 rows = p.B * p.Hq * p.Tq;
#pragma omp parallel for num_threads(cpu::threads_for(rows* p.d, threads)) schedule(static)
  for (i64 n = 0; n < rows; ++n) {
    const i64 i = n % p.Tq, h = (n / p.Tq) % p.Hq, b = n / (p.Tq * p.Hq);
    const T* orow = o + p.q_row(b, i, h);
    const T* grow = d_o + p.q_row(b, i, h);
    double dot = 0;
    for (i64 x = 0; x < p.d; ++x) dot += static_cast<double>(orow[x]) * grow[x];
    delta[n] = static_cast<T>(dot);
  }
}

// dq_i = scale · Σ_j dS_ij k_j, one task per (b, query head, query block).
template <class T>
void backward_dq_kernel(const AttentionDims& p, const T* q, const T* k, const T* v, const T* lse,
                        const T* d_o, const T* delta, T* dq, int threads) {
  const i64 d = p.d, nqb = ceil_div(p.Tq, kQueryBlock), tasks = p.B * p.Hq * nqb;
  const i64 q_step = p.Hq * d, kv_step = p.Hkv * d;
  const T scale = static_cast<T>(p.scale);
#pragma omp parallel num_threads(cpu::threads_for(p.work(), threads))
  {
    std::vector<T> qs(kQueryBlock * d);          // [nq, d] scale·q
    std::vector<T> dos(kQueryBlock * d);         // [nq, d] dO
    std::vector<T> kt(d * kKeyBlock);            // [d, nk]
    std::vector<T> vt(d * kKeyBlock);            // [d, nk]
    std::vector<T> kl(kKeyBlock * d);            // [nk, d]
    std::vector<T> s(kQueryBlock * kKeyBlock);   // [nq, nk] logits, then dS
    std::vector<T> dp(kQueryBlock * kKeyBlock);  // [nq, nk] dO·vᵀ
    std::vector<T> acc(kQueryBlock * d);         // [nq, d] Σ_j dS k_j
#pragma omp for schedule(dynamic, 1)
    for (i64 task = 0; task < tasks; ++task) {
      const i64 qb = nqb - 1 - task % nqb, bh = task / nqb, b = bh / p.Hq, h = bh % p.Hq;
      const i64 hk = p.kv_head(h), i0 = qb * kQueryBlock, nq = std::min(kQueryBlock, p.Tq - i0);
      load_rows(q + p.q_row(b, i0, h), q_step, nq, d, scale, qs.data());
      load_rows(d_o + p.q_row(b, i0, h), q_step, nq, d, T(1), dos.data());
      const T* lse_b = lse + p.stat(b, h, i0);  // [nq]
      const T* delta_b = delta + p.stat(b, h, i0);
      std::fill(acc.begin(), acc.end(), T(0));
      const i64 kend = p.key_end(i0 + nq - 1);
      for (i64 j0 = 0; j0 < kend; j0 += kKeyBlock) {
        const i64 nk = std::min(kKeyBlock, kend - j0);
        const T* kb = k + p.kv_row(b, j0, hk);
        load_rows_transposed(kb, kv_step, nk, d, T(1), kt.data(), kKeyBlock);
        load_rows(kb, kv_step, nk, d, T(1), kl.data());
        load_rows_transposed(v + p.kv_row(b, j0, hk), kv_step, nk, d, T(1), vt.data(), kKeyBlock);
        zero_block(s.data(), nq, nk, kKeyBlock);
        zero_block(dp.data(), nq, nk, kKeyBlock);
        block_multiply_add(qs.data(), d, kt.data(), kKeyBlock, nq, nk, d, s.data(), kKeyBlock);
        block_multiply_add(dos.data(), d, vt.data(), kKeyBlock, nq, nk, d, dp.data(), kKeyBlock);
        for (i64 r = 0; r < nq; ++r) {
          T* sr = s.data() + r * kKeyBlock;
          const T* dpr = dp.data() + r * kKeyBlock;
          const i64 cend = std::clamp<i64>(p.key_end(i0 + r) - j0, 0, nk);
          for (i64 c = 0; c < cend; ++c) sr[c] -= lse_b[r];
          exp_in_place(sr, cend);                                       // P
          for (i64 c = 0; c < cend; ++c) sr[c] *= dpr[c] - delta_b[r];  // dS
          std::fill(sr + cend, sr + nk, T(0));
        }
        block_multiply_add(s.data(), kKeyBlock, kl.data(), d, nq, d, nk, acc.data(), d);
      }
      for (i64 r = 0; r < nq; ++r) {
        T* g = dq + p.q_row(b, i0 + r, h);
        for (i64 x = 0; x < d; ++x) g[x] = scale * acc[r * d + x];
      }
    }
  }
}

// dv_j = Σ_i P_ij dO_i and dk_j = scale · Σ_i dS_ij q_i over every query head sharing the kv
// head, one task per (b, kv head, key block).
template <class T>
void backward_dkv_kernel(const AttentionDims& p, const T* q, const T* k, const T* v, const T* lse,
                         const T* d_o, const T* delta, T* dk, T* dv, int threads) {
  const i64 d = p.d, nqb = ceil_div(p.Tq, kQueryBlock), nkb = ceil_div(p.Tk, kKeyBlock);
  const i64 tasks = p.B * p.Hkv * nkb, q_step = p.Hq * d, kv_step = p.Hkv * d;
  const T scale = static_cast<T>(p.scale);
#pragma omp parallel num_threads(cpu::threads_for(p.work(), threads))
  {
    std::vector<T> kl(kKeyBlock * d);             // [nk, d]
    std::vector<T> vl(kKeyBlock * d);             // [nk, d]
    std::vector<T> qt(d * kQueryBlock);           // [d, nq] scale·q transposed
    std::vector<T> qs(kQueryBlock * d);           // [nq, d] scale·q
    std::vector<T> dot(d * kQueryBlock);          // [d, nq] dO transposed
    std::vector<T> dos(kQueryBlock * d);          // [nq, d] dO
    std::vector<T> st(kKeyBlock * kQueryBlock);   // [nk, nq] logitsᵀ, then Pᵀ
    std::vector<T> dpt(kKeyBlock * kQueryBlock);  // [nk, nq] (v·dOᵀ), then dSᵀ
    std::vector<T> gk(kKeyBlock * d);             // [nk, d]
    std::vector<T> gv(kKeyBlock * d);             // [nk, d]
#pragma omp for schedule(dynamic, 1)
    for (i64 task = 0; task < tasks; ++task) {
      const i64 kb = task % nkb, bh = task / nkb, b = bh / p.Hkv, hk = bh % p.Hkv;
      const i64 j0 = kb * kKeyBlock, nk = std::min(kKeyBlock, p.Tk - j0);
      load_rows(k + p.kv_row(b, j0, hk), kv_step, nk, d, T(1), kl.data());
      load_rows(v + p.kv_row(b, j0, hk), kv_step, nk, d, T(1), vl.data());
      std::fill(gk.begin(), gk.end(), T(0));
      std::fill(gv.begin(), gv.end(), T(0));
      // The first query that sees key j0; keys past every query's horizon get zero gradients.
      const i64 i_first = std::max<i64>(0, j0 - p.q_offset);
      for (i64 h = 0; h < p.Hq && i_first < p.Tq; ++h) {
        if (p.kv_head(h) != hk) continue;
        for (i64 qb = i_first / kQueryBlock; qb < nqb; ++qb) {
          const i64 i0 = qb * kQueryBlock, nq = std::min(kQueryBlock, p.Tq - i0);
          const T* qb_ptr = q + p.q_row(b, i0, h);
          const T* gb_ptr = d_o + p.q_row(b, i0, h);
          load_rows(qb_ptr, q_step, nq, d, scale, qs.data());
          load_rows_transposed(qb_ptr, q_step, nq, d, scale, qt.data(), kQueryBlock);
          load_rows(gb_ptr, q_step, nq, d, T(1), dos.data());
          load_rows_transposed(gb_ptr, q_step, nq, d, T(1), dot.data(), kQueryBlock);
          const T* lse_b = lse + p.stat(b, h, i0);  // [nq]
          const T* delta_b = delta + p.stat(b, h, i0);
          zero_block(st.data(), nk, nq, kQueryBlock);
          zero_block(dpt.data(), nk, nq, kQueryBlock);
          block_multiply_add(kl.data(), d, qt.data(), kQueryBlock, nk, nq, d, st.data(),
                             kQueryBlock);
          block_multiply_add(vl.data(), d, dot.data(), kQueryBlock, nk, nq, d, dpt.data(),
                             kQueryBlock);
          for (i64 c = 0; c < nk; ++c) {
            T* sc = st.data() + c * kQueryBlock;  // [nq]
            T* dc = dpt.data() + c * kQueryBlock;
            // Query i sees key j iff j ≤ q_offset + i.
            const i64 rstart = std::clamp<i64>(j0 + c - p.q_offset - i0, 0, nq);
            std::fill(sc, sc + rstart, T(0));
            std::fill(dc, dc + rstart, T(0));
            for (i64 r = rstart; r < nq; ++r) sc[r] -= lse_b[r];
            exp_in_place(sc + rstart, nq - rstart);                                  // Pᵀ
            for (i64 r = rstart; r < nq; ++r) dc[r] = sc[r] * (dc[r] - delta_b[r]);  // dSᵀ
          }
          block_multiply_add(st.data(), kQueryBlock, dos.data(), d, nk, d, nq, gv.data(), d);
          block_multiply_add(dpt.data(), kQueryBlock, qs.data(), d, nk, d, nq, gk.data(), d);
        }
      }
      for (i64 c = 0; c < nk; ++c) {
        std::copy(gk.begin() + c * d, gk.begin() + (c + 1) * d, dk + p.kv_row(b, j0 + c, hk));
        std::copy(gv.begin() + c * d, gv.begin() + (c + 1) * d, dv + p.kv_row(b, j0 + c, hk));
      }
    }
  }
}

// Checks q, k, v, lse (and the scalars) and returns the problem's sizes.
AttentionDims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& lse, double scale, i64 q_offset) {
  cpu::check_host_contiguous(q, q.dtype, op, "q");
  LINMOE_CHECK(q.ndim() == 4, op, ": q ", q.str(), " must be [B, Tq, Hq, d]");
  cpu::check_host_contiguous(k, q.dtype, op, "k");
  LINMOE_CHECK(k.ndim() == 4, op, ": k ", k.str(), " must be [B, Tk, Hkv, d]");
  AttentionDims p{q.size(0), q.size(1), k.size(1), q.size(2),
                  k.size(2), q.size(3), q_offset,  scale};
  LINMOE_CHECK(k.size(0) == p.B && k.size(3) == p.d, op, ": k ", k.str(), " must match q ", q.str(),
               " in B and d");
  LINMOE_CHECK(p.Hkv >= 1 && p.Hq % p.Hkv == 0, op, ": the kv heads of k ", k.str(),
               " must divide the query heads of q ", q.str());
  cpu::check_like(v, k, op, "v");
  cpu::check_host_contiguous(lse, stat_dtype(q.dtype), op, "lse");
  check_shape(lse, Shape{p.B, p.Hq, p.Tq}, op, "lse");
  LINMOE_CHECK(std::isfinite(scale), op, ": scale = ", scale, " is not finite");
  // Every query must see at least key 0, and keys must cover every query's position (the last
  // context-parallel piece has Tk = q_offset + Tq exactly).
  LINMOE_CHECK(q_offset >= 0 && q_offset + p.Tq <= p.Tk, op, ": q_offset = ", q_offset,
               " with Tq = ", p.Tq, " needs 0 <= q_offset and q_offset + Tq <= Tk = ", p.Tk);
  return p;
}

}  // namespace

void CpuBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                   std::int64_t q_offset, const Tensor& o, const Tensor& lse) {
  const char* op = "attention_forward";
  const AttentionDims p = attention_dims(op, q, k, v, lse, scale, q_offset);
  cpu::check_like(o, q, op, "o");
  if (q.numel() == 0) return;
  cpu::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    forward_kernel<T>(p, q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), o.ptr<T>(), lse.ptr<T>(), threads_);
  });
}

void CpuBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& o, const Tensor& lse, const Tensor& d_o,
                                    double scale, std::int64_t q_offset, const Tensor& dq,
                                    const Tensor& dk, const Tensor& dv) {
  const char* op = "attention_backward";
  const AttentionDims p = attention_dims(op, q, k, v, lse, scale, q_offset);
  cpu::check_like(o, q, op, "o");
  cpu::check_like(d_o, q, op, "d_o");
  cpu::check_like(dq, q, op, "dq");
  cpu::check_like(dk, k, op, "dk");
  cpu::check_like(dv, k, op, "dv");
  cpu::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    T* pdk = dk.ptr<T>();
    T* pdv = dv.ptr<T>();
    if (q.numel() == 0) {  // no queries: no key receives a gradient
      std::fill(pdk, pdk + dk.numel(), T(0));
      std::fill(pdv, pdv + dv.numel(), T(0));
      return;
    }
    std::vector<T> delta(static_cast<std::size_t>(p.B * p.Hq * p.Tq));  // [B, Hq, Tq]
    output_grad_dot<T>(p, o.ptr<T>(), d_o.ptr<T>(), delta.data(), threads_);
    backward_dq_kernel<T>(p, q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), lse.ptr<T>(), d_o.ptr<T>(),
                          delta.data(), dq.ptr<T>(), threads_);
    backward_dkv_kernel<T>(p, q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), lse.ptr<T>(), d_o.ptr<T>(),
                           delta.data(), pdk, pdv, threads_);
  });
}

}  // namespace linmoe
