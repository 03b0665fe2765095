// Grouped GEMMs of the CPU backend (kernels/ops.h): one GEMM problem per group, all handed to
// gemm.cpp's driver at once, so the small products of many experts share one parallel region
// instead of running one after another. Each group's product is computed exactly as gemm would
// compute it on the group's slices.
#include <cstdint>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/gemm_kernels.h"
#include "kernels/grouped_gemm_shape.h"

namespace linmoe {
namespace {

using cpu::gemm_detail::GemmProblem;
using cpu::gemm_detail::i64;
using cpu::gemm_detail::matrix_row_stride;

void check_devices(const Tensor& a, const Tensor& b, const Tensor& c, const char* op) {
  cpu::check_cpu(a, op, "a");
  cpu::check_cpu(b, op, "b");
  cpu::check_cpu(c, op, "c");
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
  check_devices(a, b, c, op);
  const GroupedGemmShape shape = grouped_gemm_shape(a, b, trans_b, group_rows, c, op);
  const i64 G = shape.G, R = shape.R, N = shape.N, K = shape.K;
  const std::vector<i64>& offsets = shape.first;
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
  check_devices(a, b, c, op);
  const GroupedGemmShape shape = grouped_wgrad_shape(a, b, group_rows, c, op);
  const i64 G = shape.G, M = shape.M, N = shape.N;
  const std::vector<i64>& offsets = shape.first;
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
