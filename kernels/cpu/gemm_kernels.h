// GEMM micro-kernels of the CPU backend (private to gemm.cpp): register tiles written with GCC
// vector extensions, so -march picks the instructions (AVX-512 FMAs with broadcast operands).
// At the end, the driver that gemm.cpp exports to the grouped GEMMs (grouped_gemm.cpp).
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace linmoe::cpu::gemm_detail {

using i64 = std::int64_t;

// The widest vector the target has: AVX-512 (32 registers), AVX (16), else SSE2 (16).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64, kVectorRegisters = 32;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32, kVectorRegisters = 16;
#else
constexpr int kVectorBytes = 16, kVectorRegisters = 16;
#endif
// Micro-tile rows: 2·MR accumulators + 2 B vectors + a broadcast fit the register file.
constexpr int kTileRows = kVectorRegisters == 32 ? 12 : 6;

// Blocking per dtype. The micro-tile is MR rows x NR = 2 vectors. KC·NR·sizeof(T) (the L1
// panel) ≤ 32 KiB, MC·KC·sizeof(T) (the packed A block) lives in L2, KC·NC·sizeof(T) in L3.
template <class T>
struct GemmBlocking;
template <>
struct GemmBlocking<float> {
  typedef float Vec __attribute__((vector_size(kVectorBytes)));
  static constexpr int kLanes = kVectorBytes / 4, kMR = kTileRows, kNR = 2 * kLanes;
  static constexpr i64 kKC = 256, kMC = 240, kNC = 4096;
};
template <>
struct GemmBlocking<double> {
  typedef double Vec __attribute__((vector_size(kVectorBytes)));
  static constexpr int kLanes = kVectorBytes / 8, kMR = kTileRows, kNR = 2 * kLanes;
  static constexpr i64 kKC = 256, kMC = 120, kNC = 2048;
};
static_assert(GemmBlocking<float>::kMC % kTileRows == 0 &&
                  GemmBlocking<double>::kMC % kTileRows == 0,
              "MC must hold whole micro-panels");

template <class V, class T>
inline V load_vec(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class T>
inline void store_vec(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// Element (i, j) of a matrix operand is p[i·rs + j·cs]; one of rs, cs is 1.
template <class T>
struct Operand {
  const T* p;
  i64 rs, cs;
  const T* at(i64 i, i64 j) const { return p + i * rs + j * cs; }
};

// C[0:M, 0:n] = a_panel · b_panel + beta · C over depth kc, for the M (≤ MR) rows of an A panel
// packed MR-tall. b holds NR values per depth step, ldb apart (NR for a packed, zero-padded
// panel; the row stride when read in place); only n columns are written. beta == 0 never
// reads C.
template <class T, int M>
void micro_kernel(i64 kc, const T* __restrict a, const T* __restrict b, i64 ldb, T* c, i64 ldc,
                  i64 n, T beta) {
  using Blk = GemmBlocking<T>;
  using V = typename Blk::Vec;
  constexpr int L = Blk::kLanes, MR = Blk::kMR, NR = Blk::kNR;
  V acc0[M], acc1[M];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) acc0[i] = acc1[i] = V{};
  for (i64 k = 0; k < kc; ++k) {
    V b0 = load_vec<V>(b), b1 = load_vec<V>(b + L);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      acc0[i] += a[i] * b0;
      acc1[i] += a[i] * b1;
    }
    a += MR;
    b += ldb;
  }
  if (n == NR) {
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      T* ci = c + i * ldc;
      if (beta == T(0)) {
        store_vec(ci, acc0[i]);
        store_vec(ci + L, acc1[i]);
      } else {
        store_vec(ci, beta * load_vec<V>(ci) + acc0[i]);
        store_vec(ci + L, beta * load_vec<V>(ci + L) + acc1[i]);
      }
    }
    return;
  }
  alignas(64) T tile[NR];
  for (int i = 0; i < M; ++i) {
    T* ci = c + i * ldc;
    store_vec(tile, acc0[i]);
    store_vec(tile + L, acc1[i]);
    if (beta == T(0)) {
      for (i64 j = 0; j < n; ++j) ci[j] = tile[j];
    } else {
      for (i64 j = 0; j < n; ++j) ci[j] = beta * ci[j] + tile[j];
    }
  }
}

template <class T>
using MicroKernel = void (*)(i64, const T*, const T*, i64, T*, i64, i64, T);

template <class T, std::size_t... I>
constexpr std::array<MicroKernel<T>, sizeof...(I)> micro_kernel_table(std::index_sequence<I...>) {
  return {&micro_kernel<T, static_cast<int>(I) + 1>...};
}

// The kernel for m rows (1 ≤ m ≤ MR), so short edges do no wasted work.
template <class T>
MicroKernel<T> micro_kernel_for(i64 m) {
  static constexpr auto table =
      micro_kernel_table<T>(std::make_index_sequence<GemmBlocking<T>::kMR>{});
  return table[static_cast<std::size_t>(m - 1)];
}

// C[r, j] = alpha · Σ_k a[r·lda + k] · b[j·ldb + k] + beta · C[r, j] for R rows of a and J rows of
// b: dot products along a contiguous K. For C with few rows and a transposed op(b) (x · Wᵀ), where
// packing W would cost more than the product; each row of b is read once per R rows of a.
template <class T, int R, int J>
void dot_kernel(i64 K, const T* __restrict a, i64 lda, const T* __restrict b, i64 ldb, T* c,
                i64 ldc, T alpha, T beta) {
  using V = typename GemmBlocking<T>::Vec;
  constexpr int L = GemmBlocking<T>::kLanes;
  V acc[R][J];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < J; ++j) acc[r][j] = V{};
  }
  i64 k = 0;
  for (; k + L <= K; k += L) {
    V bv[J];
#pragma GCC unroll 16
    for (int j = 0; j < J; ++j) bv[j] = load_vec<V>(b + j * ldb + k);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V av = load_vec<V>(a + r * lda + k);
#pragma GCC unroll 16
      for (int j = 0; j < J; ++j) acc[r][j] += av * bv[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < J; ++j) {
      T s = 0;
      for (int l = 0; l < L; ++l) s += acc[r][j][l];
      for (i64 kk = k; kk < K; ++kk) s += a[r * lda + kk] * b[j * ldb + kk];
      T* cr = c + r * ldc + j;
      *cr = beta == T(0) ? alpha * s : alpha * s + beta * *cr;
    }
  }
}

constexpr int kDotTile = 4;  // R and J of the dot kernel; edges use smaller instances

template <class T>
using DotKernel = void (*)(i64, const T*, i64, const T*, i64, T*, i64, T, T);

template <class T, int R, std::size_t... J>
constexpr std::array<DotKernel<T>, sizeof...(J)> dot_kernel_row(std::index_sequence<J...>) {
  return {&dot_kernel<T, R, static_cast<int>(J) + 1>...};
}
template <class T, std::size_t... R>
constexpr std::array<std::array<DotKernel<T>, kDotTile>, sizeof...(R)> dot_kernel_table(
    std::index_sequence<R...>) {
  return {dot_kernel_row<T, static_cast<int>(R) + 1>(std::make_index_sequence<kDotTile>{})...};
}

// The dot kernel for r rows of a and j rows of b (1 ≤ r, j ≤ kDotTile).
template <class T>
DotKernel<T> dot_kernel_for(i64 r, i64 j) {
  static constexpr auto table = dot_kernel_table<T>(std::make_index_sequence<kDotTile>{});
  return table[static_cast<std::size_t>(r - 1)][static_cast<std::size_t>(j - 1)];
}

// Transposing packs of op(b) work on L x L tiles in registers: log2(L) stages of two-vector
// shuffles, each swapping the off-diagonal W x W blocks of row pairs (i, i + W).
template <class T>
struct ShuffleMask;
template <>
struct ShuffleMask<float> {
  typedef std::int32_t Vec __attribute__((vector_size(kVectorBytes)));
};
template <>
struct ShuffleMask<double> {
  typedef std::int64_t Vec __attribute__((vector_size(kVectorBytes)));
};

template <class T, int W>
inline void transpose_stage(typename GemmBlocking<T>::Vec* r) {
  using M = typename ShuffleMask<T>::Vec;
  constexpr int L = GemmBlocking<T>::kLanes;
  M lo, hi;  // lane j of the low row takes the high row's j − W where bit W of j is set
#pragma GCC unroll 16
  for (int j = 0; j < L; ++j) {
    lo[j] = (j & W) ? L + j - W : j;
    hi[j] = (j & W) ? L + j : j + W;
  }
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) {
    if (i & W) continue;
    const auto x = r[i], y = r[i + W];
    r[i] = __builtin_shuffle(x, y, lo);
    r[i + W] = __builtin_shuffle(x, y, hi);
  }
  if constexpr (W > 1) transpose_stage<T, W / 2>(r);
}

// dst[k·ldd + i] = src[i·lds + k] for i, k < L (an L x L tile, L = lanes).
template <class T>
inline void transpose_tile(const T* src, i64 lds, T* dst, i64 ldd) {
  using V = typename GemmBlocking<T>::Vec;
  constexpr int L = GemmBlocking<T>::kLanes;
  V r[L];
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) r[i] = load_vec<V>(src + i * lds);
  transpose_stage<T, L / 2>(r);
#pragma GCC unroll 16
  for (int k = 0; k < L; ++k) store_vec(dst + k * ldd, r[k]);
}

// ---- the driver (gemm.cpp), shared by gemm and the grouped GEMMs ----------------------------

// One product: C[M, N] = alpha · op(A)[M, K] · op(B)[K, N] + beta · C for each of `batch`
// matrices. Element (i, k) of A is a[i·lda + k] (a[k·lda + i] when trans_a), likewise B; the
// pointers hold the call's dtype.
struct GemmProblem {
  i64 batch = 1, M = 0, N = 0, K = 0;
  i64 a_bs = 0, b_bs = 0, c_bs = 0;  // batch strides (0: one matrix shared by every batch)
  i64 lda = 0, ldb = 0, ldc = 0;     // row strides
  bool trans_a = false, trans_b = false;
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
};

// Runs every problem (dtype f32 or f64, else a check failure naming op) in one parallel region
// of up to `threads` threads, with gemm's semantics for each: K == 0 or alpha == 0 gives
// C = beta · C, beta == 0 never reads C. Results do not depend on the thread count.
void run_gemm_problems(DType dtype, const std::vector<GemmProblem>& problems, double alpha,
                       double beta, int threads, const char* op);

// Row stride of a matrix view (the last two dimensions of t), whose last dimension must have
// stride 1 (checked, naming op and arg).
i64 matrix_row_stride(const Tensor& t, const char* op, const char* arg);

}  // namespace linmoe::cpu::gemm_detail
