// The shapes of Backend::grouped_gemm and grouped_gemm_wgrad (kernels/ops.h), checked once for
// every backend: ranks, sizes, group counts, and each group's first row.
#pragma once
#include <cstdint>
#include <vector>

#include "core/check.h"
#include "core/tensor.h"

namespace linmoe {

struct GroupedGemmShape {
  std::int64_t G = 0, R = 0;         // groups, rows of the grouped operands
  std::int64_t M = 0, N = 0, K = 0;  // grouped_gemm: c_g [rows, N], K; wgrad: c[g] [M, N]
  std::vector<std::int64_t> first;   // first[g] = Σ_{h<g} group_rows[h]
};

namespace grouped_detail {

inline std::vector<std::int64_t> group_offsets(const std::vector<std::int64_t>& rows,
                                               std::int64_t R, const char* op) {
  std::vector<std::int64_t> offsets(rows.size());
  std::int64_t at = 0;
  for (std::size_t g = 0; g < rows.size(); ++g) {
    LINMOE_CHECK(rows[g] >= 0, op, ": group ", g, " has ", rows[g], " rows");
    offsets[g] = at;
    at += rows[g];
  }
  LINMOE_CHECK(at == R, op, ": the groups hold ", at, " rows, the operands ", R);
  return offsets;
}

}  // namespace grouped_detail

// a [R, K], b [G, N, K] (trans_b) or [G, K, N], c [R, N].
inline GroupedGemmShape grouped_gemm_shape(const Tensor& a, const Tensor& b, bool trans_b,
                                           const std::vector<std::int64_t>& group_rows,
                                           const Tensor& c, const char* op) {
  check_same_dtype(a, c, op);
  check_same_dtype(b, c, op);
  LINMOE_CHECK(a.ndim() == 2 && b.ndim() == 3 && c.ndim() == 2, op, ": a ", a.str(), ", b ",
               b.str(), " and c ", c.str(), " must be [R, K], [G, ., .] and [R, N]");
  GroupedGemmShape s;
  s.G = static_cast<std::int64_t>(group_rows.size());
  s.R = c.size(0);
  s.N = c.size(1);
  s.K = a.size(1);
  LINMOE_CHECK(a.size(0) == s.R, op, ": a ", a.str(), " and c ", c.str(), " differ in rows");
  LINMOE_CHECK(b.size(0) == s.G, op, ": b ", b.str(), " has ", b.size(0), " groups, group_rows ",
               s.G);
  const std::int64_t b_k = trans_b ? b.size(2) : b.size(1), b_n = trans_b ? b.size(1) : b.size(2);
  LINMOE_CHECK(b_k == s.K && b_n == s.N, op, ": op(b[g]) of ", b.str(),
               (trans_b ? " (transposed)" : ""), " is [", b_k, ", ", b_n, "], expected [K=", s.K,
               ", N=", s.N, "] from a ", a.str(), " and c ", c.str());
  s.first = grouped_detail::group_offsets(group_rows, s.R, op);
  return s;
}

// a [R, M], b [R, N], c [G, M, N].
inline GroupedGemmShape grouped_wgrad_shape(const Tensor& a, const Tensor& b,
                                            const std::vector<std::int64_t>& group_rows,
                                            const Tensor& c, const char* op) {
  check_same_dtype(a, c, op);
  check_same_dtype(b, c, op);
  LINMOE_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 3, op, ": a ", a.str(), ", b ",
               b.str(), " and c ", c.str(), " must be [R, M], [R, N] and [G, M, N]");
  GroupedGemmShape s;
  s.G = static_cast<std::int64_t>(group_rows.size());
  s.R = a.size(0);
  s.M = c.size(1);
  s.N = c.size(2);
  LINMOE_CHECK(b.size(0) == s.R, op, ": a ", a.str(), " and b ", b.str(), " differ in rows");
  LINMOE_CHECK(c.size(0) == s.G && a.size(1) == s.M && b.size(1) == s.N, op, ": c ", c.str(),
               " must be [G=", s.G, ", M=", a.size(1), ", N=", b.size(1), "] for a ", a.str(),
               " and b ", b.str());
  s.first = grouped_detail::group_offsets(group_rows, s.R, op);
  return s;
}

}  // namespace linmoe
