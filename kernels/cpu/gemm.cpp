// GEMM: c = alpha · op(a) · op(b) + beta · c, optionally batched (see kernels/ops.h).
//
// GotoBLAS/BLIS structure, per thread and sub-problem:
//   for jc (NC columns of C):  for pc (KC of K): pack op(b)[pc:, jc:] into NR-wide panels
//     for ic (MC rows of C):   pack alpha · op(a)[ic:, pc:] into MR-tall panels
//       for jr (NR columns):   the B micro-panel stays in L1
//         for ir (MR rows):    micro-kernel: MR x NR accumulators in vector registers
// Threads take whole batches, or split C by rows (or by columns when C is short and wide); each
// packs its own panels, so there are no barriers. The grouped GEMMs (grouped_gemm.cpp) hand the
// same driver a list of problems, which share one parallel region.
// C with few rows or columns (kFew) and a transposed op(b) (x · Wᵀ) goes through a dot-product
// kernel instead: packing would cost about as much as the product. A plain op(b) with few rows
// is read in place by the micro-kernel. The path depends on the whole problem, not on a thread's
// part, so results do not depend on the thread count.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/gemm_kernels.h"

namespace linmoe {
namespace cpu::gemm_detail {
namespace {

// "Few" rows or columns of C (see the top of the file).
constexpr i64 kFew = 32;

// dst: ceil(mc/MR) panels, each [kc][MR] (panel row i, depth k at k·MR + i), scaled by alpha.
template <class T>
void pack_a(const Operand<T>& a, i64 mc, i64 kc, T alpha, T* dst) {
  constexpr int MR = GemmBlocking<T>::kMR;
  for (i64 i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    i64 m = std::min<i64>(MR, mc - i0);
    if (a.cs == 1) {  // rows contiguous: walk each row, write with stride MR
      for (i64 i = 0; i < m; ++i) {
        const T* src = a.at(i0 + i, 0);
        for (i64 k = 0; k < kc; ++k) dst[k * MR + i] = alpha * src[k];
      }
    } else {  // columns contiguous (transposed a)
      for (i64 k = 0; k < kc; ++k) {
        const T* src = a.at(i0, k);
        for (i64 i = 0; i < m; ++i) dst[k * MR + i] = alpha * src[i * a.rs];
      }
    }
  }
}

// dst: ceil(nc/NR) panels, each [kc][NR] (depth k, column j at k·NR + j), zero-padded to NR.
template <class T>
void pack_b(const Operand<T>& b, i64 kc, i64 nc, T* dst) {
  constexpr int NR = GemmBlocking<T>::kNR;
  for (i64 j0 = 0; j0 < nc; j0 += NR, dst += NR * kc) {
    i64 n = std::min<i64>(NR, nc - j0);
    if (b.cs == 1) {  // rows of op(b) contiguous
      for (i64 k = 0; k < kc; ++k) {
        const T* src = b.at(k, j0);
        T* d = dst + k * NR;
        for (i64 j = 0; j < n; ++j) d[j] = src[j];
        for (i64 j = n; j < NR; ++j) d[j] = T(0);
      }
    } else {  // transposed b: each column of op(b) is contiguous; L x L register transposes
      constexpr int L = GemmBlocking<T>::kLanes;
      const i64 n_tiles = n / L * L, k_tiles = kc / L * L;
      for (i64 j = 0; j < n_tiles; j += L) {
        for (i64 k = 0; k < k_tiles; k += L) {
          transpose_tile(b.at(k, j0 + j), b.cs, dst + k * NR + j, NR);
        }
      }
      for (i64 j = 0; j < n; ++j) {  // the ragged edges
        const T* src = b.at(0, j0 + j);
        for (i64 k = j < n_tiles ? k_tiles : 0; k < kc; ++k) dst[k * NR + j] = src[k];
      }
      for (i64 k = 0; k < kc; ++k) {
        for (i64 j = n; j < NR; ++j) dst[k * NR + j] = T(0);
      }
    }
  }
}

// Per-thread packing buffers, kept between calls (OpenMP threads persist), 64-byte aligned.
class PackBuffer {
 public:
  ~PackBuffer() { std::free(data_); }
  void* get(std::size_t bytes) {
    if (bytes > bytes_) {
      std::free(data_);
      bytes_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, bytes_);
      LINMOE_CHECK(data_ != nullptr, "gemm: cannot allocate ", bytes_, " bytes of packing buffer");
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// One thread's C[M, N] = alpha · A[M, K] · B[K, N] + beta · C, K ≥ 1.
// direct_b: read a plain op(b) in place instead of packing it (few rows reuse it little).
template <class T>
void gemm_serial(i64 M, i64 N, i64 K, T alpha, const Operand<T>& a, const Operand<T>& b, T beta,
                 T* c, i64 ldc, bool direct_b) {
  using Blk = GemmBlocking<T>;
  constexpr i64 MR = Blk::kMR, NR = Blk::kNR;
  const i64 kc_max = std::min(Blk::kKC, K);
  // Packed blocks hold whole (zero-padded) panels.
  const i64 mc_max = (std::min(Blk::kMC, M) + MR - 1) / MR * MR;
  const i64 nc_max = (std::min(Blk::kNC, N) + NR - 1) / NR * NR;
  thread_local PackBuffer a_buffer, b_buffer;
  T* a_pack = static_cast<T*>(a_buffer.get(sizeof(T) * static_cast<std::size_t>(mc_max * kc_max)));
  T* b_pack = static_cast<T*>(b_buffer.get(sizeof(T) * static_cast<std::size_t>(nc_max * kc_max)));

  direct_b = direct_b && b.cs == 1;
  for (i64 jc = 0; jc < N; jc += Blk::kNC) {
    const i64 nc = std::min(Blk::kNC, N - jc);
    for (i64 pc = 0; pc < K; pc += Blk::kKC) {
      const i64 kc = std::min(Blk::kKC, K - pc);
      const T beta_k = pc == 0 ? beta : T(1);  // later depth blocks accumulate
      if (!direct_b) pack_b(Operand<T>{b.at(pc, jc), b.rs, b.cs}, kc, nc, b_pack);
      for (i64 ic = 0; ic < M; ic += Blk::kMC) {
        const i64 mc = std::min(Blk::kMC, M - ic);
        pack_a(Operand<T>{a.at(ic, pc), a.rs, a.cs}, mc, kc, alpha, a_pack);
        for (i64 jr = 0; jr < nc; jr += NR) {
          const i64 n = std::min(NR, nc - jr);
          const T* b_panel = b_pack + jr * kc;
          i64 ldb = NR;
          if (direct_b && n == NR) {
            b_panel = b.at(pc, jc + jr);
            ldb = b.rs;
          } else if (direct_b) {  // the ragged last columns: pack them zero-padded
            pack_b(Operand<T>{b.at(pc, jc + jr), b.rs, b.cs}, kc, n, b_pack);
            b_panel = b_pack;
          }
          for (i64 ir = 0; ir < mc; ir += MR) {
            const i64 m = std::min(MR, mc - ir);
            micro_kernel_for<T>(m)(kc, a_pack + ir * kc, b_panel, ldb,
                                   c + (ic + ir) * ldc + jc + jr, ldc, n, beta_k);
          }
        }
      }
    }
  }
}

// C[M, N] = alpha · A[M, K] · B[N, K]ᵀ + beta · C by dot products along K, for few rows or
// columns. The smaller operand stays in cache while the larger one is read once: rows_outer
// walks A's rows in the outer loop (few columns). A transposed a is first copied to rows.
template <class T>
void gemm_dot(i64 M, i64 N, i64 K, T alpha, const Operand<T>& a, const Operand<T>& b, T beta, T* c,
              i64 ldc, bool rows_outer) {
  const T* a_rows = a.p;
  i64 lda = a.rs;
  if (a.cs != 1) {
    thread_local PackBuffer a_buffer;
    T* copy = static_cast<T*>(a_buffer.get(sizeof(T) * static_cast<std::size_t>(M * K)));
    for (i64 i = 0; i < M; ++i) {
      for (i64 k = 0; k < K; ++k) copy[i * K + k] = *a.at(i, k);
    }
    a_rows = copy;
    lda = K;
  }
  auto tile = [&](i64 i, i64 j) {
    const i64 ni = std::min<i64>(kDotTile, M - i), nj = std::min<i64>(kDotTile, N - j);
    dot_kernel_for<T>(ni, nj)(K, a_rows + i * lda, lda, b.at(0, j), b.cs, c + i * ldc + j, ldc,
                              alpha, beta);
  };
  if (rows_outer) {
    for (i64 i = 0; i < M; i += kDotTile) {
      for (i64 j = 0; j < N; j += kDotTile) tile(i, j);
    }
  } else {
    for (i64 j = 0; j < N; j += kDotTile) {
      for (i64 i = 0; i < M; i += kDotTile) tile(i, j);
    }
  }
}

// C = beta · C (K == 0 or alpha == 0); beta == 0 writes zeros without reading C.
template <class T>
void scale_c(i64 M, i64 N, T beta, T* c, i64 ldc) {
  for (i64 i = 0; i < M; ++i) {
    T* ci = c + i * ldc;
    for (i64 j = 0; j < N; ++j) ci[j] = beta == T(0) ? T(0) : beta * ci[j];
  }
}

// Below this many flops one thread is faster than waking another.
constexpr double kParallelFlops = 2e5;

double problem_flops(const GemmProblem& p) {
  return 2.0 * static_cast<double>(p.batch) * static_cast<double>(p.M) * static_cast<double>(p.N) *
         static_cast<double>(p.K);
}

// Pieces per batch of problem p, each a range of C's rows (C at least as tall as wide) or
// columns: a lone problem keeps whole batches per thread when they divide evenly over nt, else
// splits every batch nt ways; among several (a grouped call) each problem gets pieces in
// proportion to its share of the flops, so one large group does not leave threads idle.
i64 pieces(const GemmProblem& p, std::size_t problems, double total_flops, int nt) {
  if (p.batch == 0 || p.M == 0 || p.N == 0) return 0;
  if (problems == 1) return p.batch % nt == 0 ? 1 : nt;
  if (total_flops <= 0) return 1;
  const double share = static_cast<double>(nt) * problem_flops(p) / total_flops;
  return std::min<i64>(nt, std::max<i64>(1, static_cast<i64>(std::ceil(share))));
}

// Piece `part` of `parts` of batch bi of p.
template <class T>
void run_piece(const GemmProblem& p, i64 bi, i64 part, i64 parts, T alpha, T beta) {
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* c = static_cast<T*>(p.c);
  const bool split_rows = p.M >= p.N;
  constexpr i64 MR = GemmBlocking<T>::kMR, NR = GemmBlocking<T>::kNR;
  const i64 unit = split_rows ? MR : NR, extent = split_rows ? p.M : p.N;
  const i64 units = (extent + unit - 1) / unit;
  const i64 lo = std::min(extent, units * part / parts * unit);
  const i64 hi = std::min(extent, units * (part + 1) / parts * unit);
  if (hi <= lo) return;
  const i64 m0 = split_rows ? lo : 0, m = split_rows ? hi - lo : p.M;
  const i64 n0 = split_rows ? 0 : lo, n = split_rows ? p.N : hi - lo;
  T* cb = c + bi * p.c_bs + m0 * p.ldc + n0;
  if (p.K == 0 || alpha == T(0)) {
    scale_c(m, n, beta, cb, p.ldc);
    return;
  }
  // op(a)(i, k) and op(b)(k, j) as strided operands.
  const Operand<T> oa = p.trans_a ? Operand<T>{a + bi * p.a_bs + m0, 1, p.lda}
                                  : Operand<T>{a + bi * p.a_bs + m0 * p.lda, p.lda, 1};
  const Operand<T> ob = p.trans_b ? Operand<T>{b + bi * p.b_bs + n0 * p.ldb, 1, p.ldb}
                                  : Operand<T>{b + bi * p.b_bs + n0, p.ldb, 1};
  // The path depends on the whole problem, not on the piece (see the top of the file).
  const bool few_rows = p.M <= kFew, few_cols = p.N <= kFew;
  if (p.trans_b && (few_rows || few_cols)) {
    gemm_dot(m, n, p.K, alpha, oa, ob, beta, cb, p.ldc, few_cols);
  } else {
    gemm_serial(m, n, p.K, alpha, oa, ob, beta, cb, p.ldc, few_rows);
  }
}

// Every piece of every problem is one task; threads take them dynamically (pieces write
// disjoint parts of C, so the order does not change any result).
template <class T>
void run_typed(const std::vector<GemmProblem>& ps, T alpha, T beta, int threads) {
  double flops = 0;
  for (const GemmProblem& p : ps) flops += problem_flops(p);
  const int nt = flops < kParallelFlops ? 1 : threads;
  std::vector<i64> parts(ps.size()), first_task(ps.size() + 1, 0);  // tasks of p: [first, next)
  for (std::size_t i = 0; i < ps.size(); ++i) {
    parts[i] = pieces(ps[i], ps.size(), flops, nt);
    first_task[i + 1] = first_task[i] + ps[i].batch * parts[i];
  }
  const i64 tasks = first_task.back();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (i64 task = 0; task < tasks; ++task) {
    const std::size_t i = static_cast<std::size_t>(
        std::upper_bound(first_task.begin(), first_task.end(), task) - first_task.begin() - 1);
    const i64 t = task - first_task[i];
    run_piece(ps[i], t / parts[i], t % parts[i], parts[i], alpha, beta);
  }
}

}  // namespace

void run_gemm_problems(DType dtype, const std::vector<GemmProblem>& problems, double alpha,
                       double beta, int threads, const char* op) {
  cpu::dispatch_float(dtype, op, [&](auto zero) {
    using T = decltype(zero);
    run_typed<T>(problems, static_cast<T>(alpha), static_cast<T>(beta), threads);
  });
}

i64 matrix_row_stride(const Tensor& t, const char* op, const char* arg) {
  LINMOE_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", arg, " ", t.str(),
               " needs stride 1 in its last dimension, has ", t.stride(-1));
  return t.size(-2) <= 1 ? t.size(-1) : t.stride(-2);
}

}  // namespace cpu::gemm_detail

using cpu::gemm_detail::GemmProblem;
using cpu::gemm_detail::i64;
using cpu::gemm_detail::matrix_row_stride;

void CpuBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                      double alpha, double beta) {
  const char* op = "gemm";
  cpu::check_cpu(a, op, "a");
  cpu::check_cpu(b, op, "b");
  cpu::check_cpu(c, op, "c");
  check_same_dtype(a, c, op);
  check_same_dtype(b, c, op);
  LINMOE_CHECK(c.ndim() == 2 || c.ndim() == 3, op, ": c ", c.str(),
               " must be [M, N] or [Bt, M, N]");
  GemmProblem s;
  s.batch = c.ndim() == 3 ? c.size(0) : 1;
  s.M = c.size(-2);
  s.N = c.size(-1);
  s.trans_a = trans_a;
  s.trans_b = trans_b;
  for (const Tensor* t : {&a, &b}) {
    const char* arg = t == &a ? "a" : "b";
    LINMOE_CHECK(t->ndim() == 2 || (c.ndim() == 3 && t->ndim() == 3), op, ": ", arg, " ", t->str(),
                 " must be 2-D", c.ndim() == 3 ? " or 3-D (batched c)" : " (c is 2-D)");
    if (t->ndim() == 3) {
      LINMOE_CHECK(t->size(0) == s.batch, op, ": ", arg, " ", t->str(), " has batch ", t->size(0),
                   ", c ", c.str(), " has ", s.batch);
    }
  }
  // op(a): [M, K]; a is [K, M] when transposed.
  s.K = trans_a ? a.size(-2) : a.size(-1);
  const i64 a_m = trans_a ? a.size(-1) : a.size(-2);
  LINMOE_CHECK(a_m == s.M, op, ": op(a) of ", a.str(), (trans_a ? " (transposed)" : ""), " has ",
               a_m, " rows, c ", c.str(), " has ", s.M);
  const i64 b_k = trans_b ? b.size(-1) : b.size(-2), b_n = trans_b ? b.size(-2) : b.size(-1);
  LINMOE_CHECK(b_k == s.K && b_n == s.N, op, ": op(b) of ", b.str(),
               (trans_b ? " (transposed)" : ""), " is [", b_k, ", ", b_n, "], expected [K=", s.K,
               ", N=", s.N, "] from a ", a.str(), " and c ", c.str());
  s.lda = matrix_row_stride(a, op, "a");
  s.ldb = matrix_row_stride(b, op, "b");
  s.ldc = matrix_row_stride(c, op, "c");
  LINMOE_CHECK(s.M <= 1 || s.ldc >= s.N, op, ": rows of c ", c.str(), " overlap (row stride ",
               s.ldc, ")");
  s.a_bs = a.ndim() == 3 ? a.stride(0) : 0;
  s.b_bs = b.ndim() == 3 ? b.stride(0) : 0;
  s.c_bs = c.ndim() == 3 ? c.stride(0) : 0;
  if (s.batch == 0 || s.M == 0 || s.N == 0) return;
  s.a = a.data;
  s.b = b.data;
  s.c = c.data;
  cpu::gemm_detail::run_gemm_problems(c.dtype, {s}, alpha, beta, threads_, op);
}

}  // namespace linmoe
