// Reductions to host doubles, and the row sum used for bias gradients.
// Full reductions sum fixed chunks into partials and add the partials in order, so the result
// does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;
constexpr i64 kChunk = 1 << 14;

// Σ_i term(x_i) in double, chunked; `combine` merges two partials (+ for sums).
template <class T, class Term, class Combine>
double reduce_chunks(const Tensor& x, int threads, double init, Term term, Combine combine) {
  const T* p = static_cast<const T*>(x.data);
  const i64 n = x.numel();
  const i64 chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), init);
#pragma omp parallel for num_threads(cpu::threads_for(n, threads)) schedule(static)
  for (i64 c = 0; c < chunks; ++c) {
    double acc = init;
    const i64 end = std::min(n, (c + 1) * kChunk);
    for (i64 i = c * kChunk; i < end; ++i) acc = combine(acc, term(static_cast<double>(p[i])));
    partial[static_cast<std::size_t>(c)] = acc;
  }
  double total = init;
  for (double v : partial) total = combine(total, v);
  return total;
}

template <class Term, class Combine>
double reduce(const Tensor& x, const char* op, int threads, double init, Term term,
              Combine combine) {
  cpu::check_host_contiguous(x, x.dtype, op, "x");
  double result = init;
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    result = reduce_chunks<T>(x, threads, init, term, combine);
  });
  return result;
}

const auto kAdd = [](double a, double b) { return a + b; };

}  // namespace

double CpuBackend::sum(const Tensor& x) {
  return reduce(
      x, "sum", threads_, 0.0, [](double v) { return v; }, kAdd);
}

double CpuBackend::sum_squares(const Tensor& x) {
  return reduce(
      x, "sum_squares", threads_, 0.0, [](double v) { return v * v; }, kAdd);
}

double CpuBackend::max_abs(const Tensor& x) {
  // NaN wins over every number (std::max would drop it depending on the order).
  return reduce(
      x, "max_abs", threads_, 0.0, [](double v) { return std::fabs(v); },
      [](double a, double b) { return std::isnan(a) || a > b ? a : b; });
}

bool CpuBackend::all_finite(const Tensor& x) {
  // Counts non-finite values: inf − inf would turn a sum of values into NaN anyway, but a count
  // says it plainly.
  double bad = reduce(
      x, "all_finite", threads_, 0.0, [](double v) { return std::isfinite(v) ? 0.0 : 1.0; }, kAdd);
  return bad == 0.0;
}

void CpuBackend::sum_rows(const Tensor& x, const Tensor& out, bool accumulate) {
  const char* op = "sum_rows";
  cpu::check_host_contiguous(x, x.dtype, op, "x");
  LINMOE_CHECK(x.ndim() == 2, op, ": x ", x.str(), " must be [N, C]");
  const i64 N = x.size(0), C = x.size(1);
  cpu::check_host_contiguous(out, x.dtype, op, "out");
  check_shape(out, Shape{C}, op, "out");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data);
    T* po = static_cast<T*>(out.data);
    constexpr i64 kCols = 64;
    // Threads own column ranges and walk the rows in order (deterministic).
#pragma omp parallel for num_threads(cpu::threads_for(N* C, threads_)) schedule(static)
    for (i64 j0 = 0; j0 < C; j0 += kCols) {
      const i64 j1 = std::min(C, j0 + kCols);
      double acc[kCols] = {};
      for (i64 n = 0; n < N; ++n) {
        const T* row = px + n * C;
        for (i64 j = j0; j < j1; ++j) acc[j - j0] += row[j];
      }
      for (i64 j = j0; j < j1; ++j) {
        po[j] = accumulate ? static_cast<T>(po[j] + acc[j - j0]) : static_cast<T>(acc[j - j0]);
      }
    }
  });
}

}  // namespace linmoe
