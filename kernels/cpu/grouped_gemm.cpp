// Grouped GEMMs of the CPU backend (kernels/ops.h): one GEMM problem per group, all handed to
// gemm.cpp's driver at once, so the small products of many experts share one parallel region
// instead of running one after another. Each group's product is computed exactly as gemm would
// compute it on the group's slices.
#include <cstdint>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/gemm_kernels.h"

namespace linmoe {
namespace {

using cpu::gemm_detail::GemmProblem;
using cpu::gemm_detail::i64;
using cpu::gemm_detail::matrix_row_stride;

void check_operands(const Tensor& a, const Tensor& b, const Tensor& c, const char* op) {
  cpu::check_cpu(a, op, "a");
  cpu::check_cpu(b, op, "b");
  cpu::check_cpu(c, op, "c");
  check_same_dtype(a, c, op);
  check_same_dtype(b, c, op);
}

// The groups' first rows, offsets[g] = Σ_{h<g} rows[h]; checks rows[g] ≥ 0 and Σ rows == R.
std::vector<i64> group_offsets(const std::vector<i64>& rows, i64 R, const char* op) {
  std::vector<i64> offsets(rows.size());
  i64 at = 0;
  for (std::size_t g = 0; g < rows.size(); ++g) {
    LINMOE_CHECK(rows[g] >= 0, op, ": group ", g, " has ", rows[g], " rows");
    offsets[g] = at;
    at += rows[g];
  }
  LINMOE_CHECK(at == R, op, ": the groups hold ", at, " rows, the operands ", R);
  return offsets;
}

// Element (row, 0) of a 2-D or (group, row, 0) of a 3-D view, as a byte pointer.
const char* row_ptr(const Tensor& t, i64 group, i64 row) {
  const i64 off = (t.ndim() == 3 ? group * t.stride(0) : 0) + row * t.stride(-2);
  return static_cast<const char*>(t.data) + off * static_cast<i64>(dtype_size(t.dtype));
}

}  // namespace

void CpuBackend::grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b,
                              const std::vector<std::int64_t>& group_rows, const Tensor& c,
                              double alpha, double beta) {
  const char* op = "grouped_gemm";
  check_operands(a, b, c, op);
  LINMOE_CHECK(a.ndim() == 2 && b.ndim() == 3 && c.ndim() == 2, op, ": a ", a.str(), ", b ",
               b.str(), " and c ", c.str(), " must be [R, K], [G, ., .] and [R, N]");
  const i64 G = static_cast<i64>(group_rows.size()), R = c.size(0), N = c.size(1), K = a.size(1);
  LINMOE_CHECK(a.size(0) == R, op, ": a ", a.str(), " and c ", c.str(), " differ in rows");
  LINMOE_CHECK(b.size(0) == G, op, ": b ", b.str(), " has ", b.size(0), " groups, group_rows ", G);
  const i64 b_k = trans_b ? b.size(2) : b.size(1), b_n = trans_b ? b.size(1) : b.size(2);
  LINMOE_CHECK(b_k == K && b_n == N, op, ": op(b[g]) of ", b.str(),
               (trans_b ? " (transposed)" : ""), " is [", b_k, ", ", b_n, "], expected [K=", K,
               ", N=", N, "] from a ", a.str(), " and c ", c.str());
  const std::vector<i64> offsets = group_offsets(group_rows, R, op);
  const i64 lda = matrix_row_stride(a, op, "a"), ldb = matrix_row_stride(b, op, "b");
  const i64 ldc = matrix_row_stride(c, op, "c");
  LINMOE_CHECK(R <= 1 || ldc >= N, op, ": rows of c ", c.str(), " overlap (row stride ", ldc, ")");
  std::vector<GemmProblem> problems;
  for (i64 g = 0; g < G; ++g) {
    const i64 rows = group_rows[static_cast<std::size_t>(g)];
    if (rows == 0 || N == 0) continue;  // nothing to write
    const i64 first = offsets[static_cast<std::size_t>(g)];
    GemmProblem p;
    p.M = rows;
    p.N = N;
    p.K = K;
    p.lda = lda;
    p.ldb = ldb;
    p.ldc = ldc;
    p.trans_b = trans_b;
    p.a = row_ptr(a, 0, first);
    p.b = row_ptr(b, g, 0);
    p.c = const_cast<char*>(row_ptr(c, 0, first));
    problems.push_back(p);
  }
  cpu::gemm_detail::run_gemm_problems(c.dtype, problems, alpha, beta, threads_, op);
}

void CpuBackend::grouped_gemm_wgrad(const Tensor& a, const Tensor& b,
                                    const std::vector<std::int64_t>& group_rows, const Tensor& c,
                                    double alpha, double beta) {
  const char* op = "grouped_gemm_wgrad";
  check_operands(a, b, c, op);
  LINMOE_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 3, op, ": a ", a.str(), ", b ",
               b.str(), " and c ", c.str(), " must be [R, M], [R, N] and [G, M, N]");
  const i64 G = static_cast<i64>(group_rows.size()), R = a.size(0), M = c.size(1), N = c.size(2);
  LINMOE_CHECK(b.size(0) == R, op, ": a ", a.str(), " and b ", b.str(), " differ in rows");
  LINMOE_CHECK(c.size(0) == G && a.size(1) == M && b.size(1) == N, op, ": c ", c.str(),
               " must be [G=", G, ", M=", a.size(1), ", N=", b.size(1), "] for a ", a.str(),
               " and b ", b.str());
  const std::vector<i64> offsets = group_offsets(group_rows, R, op);
  const i64 lda = matrix_row_stride(a, op, "a"), ldb = matrix_row_stride(b, op, "b");
  const i64 ldc = matrix_row_stride(c, op, "c");
  LINMOE_CHECK(M <= 1 || ldc >= N, op, ": rows of c ", c.str(), " overlap (row stride ", ldc, ")");
  LINMOE_CHECK(G <= 1 || M * N == 0 || c.stride(0) >= (M - 1) * ldc + N, op, ": groups of c ",
               c.str(), " overlap (group stride ", c.stride(0), ")");
  std::vector<GemmProblem> problems;
  for (i64 g = 0; g < G; ++g) {
    const i64 rows = group_rows[static_cast<std::size_t>(g)];
    // An empty group leaves c[g] = beta · c[g]: nothing to do when accumulating.
    if (M == 0 || N == 0 || (rows == 0 && beta == 1.0)) continue;
    const i64 first = offsets[static_cast<std::size_t>(g)];
    GemmProblem p;
    p.M = M;
    p.N = N;
    p.K = rows;  // c[g] = a_gᵀ · b_g sums over the group's rows
    p.lda = lda;
    p.ldb = ldb;
    p.ldc = ldc;
    p.trans_a = true;
    p.a = row_ptr(a, 0, first);
    p.b = row_ptr(b, 0, first);
    p.c = const_cast<char*>(row_ptr(c, g, 0));
    problems.push_back(p);
  }
  cpu::gemm_detail::run_gemm_problems(c.dtype, problems, alpha, beta, threads_, op);
}

}  // namespace linmoe
