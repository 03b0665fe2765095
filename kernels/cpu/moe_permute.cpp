// MoE token permutation (MODEL.md 4): gather token rows into expert order, scatter-combine the
// expert outputs back with the routing weights, and the gradients of both. Every op walks the
// tokens through the inverse of the plan's order, so a token's rows are summed slot by slot in
// the same order whatever the thread count, and threads never write the same row.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i32 = std::int32_t;
using i64 = std::int64_t;

// Checks order: [N·k] i32 against A expert rows (what moe_dispatch_plan returned: the first A
// entries are distinct assignments in [0, N·k), the rest −1) and returns its inverse:
// row_of[a] = i where order[i] == a, or −1 for a dropped assignment.
std::vector<i64> invert_order(const Tensor& order, i64 N, i64 k, i64 A, const char* op) {
  cpu::check_host_contiguous(order, DType::i32, op, "order");
  LINMOE_CHECK(k >= 1, op, ": k = ", k, " must be >= 1");
  const i64 NK = N * k;
  check_shape(order, Shape{NK}, op, "order");
  LINMOE_CHECK(A >= 0 && A <= NK, op, ": ", A, " expert rows, more than N·k = ", NK,
               " assignments");
  const i32* po = static_cast<const i32*>(order.data);
  std::vector<i64> row_of(static_cast<std::size_t>(NK), -1);  // [N·k]
  for (i64 i = 0; i < NK; ++i) {
    const i64 a = po[i];
    LINMOE_CHECK(a >= -1 && a < NK, op, ": order[", i, "] = ", a, " is outside [-1, N·k = ", NK,
                 ")");
    if (i < A) {
      LINMOE_CHECK(a >= 0, op, ": order[", i, "] = -1 but the expert rows number A = ", A,
                   " (A must be the plan's kept count)");
      LINMOE_CHECK(row_of[a] < 0, op, ": order[", i, "] = ", a, " repeats order[", row_of[a], "]");
      row_of[a] = i;
    } else {
      LINMOE_CHECK(a == -1, op, ": order[", i, "] = ", a, " is past the A = ", A,
                   " expert rows (A must be the plan's kept count)");
    }
  }
  return row_of;
}

// A row-major float tensor [rows, cols] on the host, with the given dtype.
void check_rows(const Tensor& t, DType dtype, i64 rows, i64 cols, const char* op, const char* arg) {
  cpu::check_host_contiguous(t, dtype, op, arg);
  check_shape(t, Shape{rows, cols}, op, arg);
}

}  // namespace

void CpuBackend::moe_permute(const Tensor& x, const Tensor& order, int k, const Tensor& out) {
  const char* op = "moe_permute";
  cpu::check_host_contiguous(x, x.dtype, op, "x");
  LINMOE_CHECK(x.ndim() == 2, op, ": x ", x.str(), " must be [N, D]");
  LINMOE_CHECK(out.ndim() == 2, op, ": out ", out.str(), " must be [A, D]");
  const i64 N = x.size(0), D = x.size(1), A = out.size(0);
  check_rows(out, x.dtype, A, D, op, "out");
  const std::vector<i64> row_of = invert_order(order, N, k, A, op);
  const i32* po = static_cast<const i32*>(order.data);
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data);
    T* pout = static_cast<T*>(out.data);
#pragma omp parallel for num_threads(cpu::threads_for(A* D, threads_)) schedule(static)
    for (i64 i = 0; i < A; ++i) {
      const T* src = px + (po[i] / k) * D;  // [D] the token of assignment order[i]
      std::copy(src, src + D, pout + i * D);
    }
  });
}

void CpuBackend::moe_permute_backward(const Tensor& dout, const Tensor& order, int k,
                                      const Tensor& dx) {
  const char* op = "moe_permute_backward";
  cpu::check_host_contiguous(dx, dx.dtype, op, "dx");
  LINMOE_CHECK(dx.ndim() == 2, op, ": dx ", dx.str(), " must be [N, D]");
  LINMOE_CHECK(dout.ndim() == 2, op, ": dout ", dout.str(), " must be [A, D]");
  const i64 N = dx.size(0), D = dx.size(1), A = dout.size(0);
  check_rows(dout, dx.dtype, A, D, op, "dout");
  const std::vector<i64> row_of = invert_order(order, N, k, A, op);
  cpu::dispatch_float(dx.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* pd = static_cast<const T*>(dout.data);
    T* pdx = static_cast<T*>(dx.data);
#pragma omp parallel for num_threads(cpu::threads_for(N* D, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      T* g = pdx + n * D;  // [D], ACCUMULATES
      for (i64 s = 0; s < k; ++s) {
        const i64 i = row_of[n * k + s];
        if (i < 0) continue;  // dropped: the token's row got nothing from this slot
        const T* d = pd + i * D;
        for (i64 j = 0; j < D; ++j) g[j] += d[j];
      }
    }
  });
}

void CpuBackend::moe_unpermute(const Tensor& y, const Tensor& order, const Tensor& weights,
                               const Tensor& out, bool accumulate) {
  const char* op = "moe_unpermute";
  cpu::check_host_contiguous(y, y.dtype, op, "y");
  LINMOE_CHECK(y.ndim() == 2, op, ": y ", y.str(), " must be [A, D]");
  cpu::check_host_contiguous(weights, y.dtype, op, "weights");
  LINMOE_CHECK(weights.ndim() == 2, op, ": weights ", weights.str(), " must be [N, k]");
  const i64 A = y.size(0), D = y.size(1), N = weights.size(0), k = weights.size(1);
  check_rows(out, y.dtype, N, D, op, "out");
  const std::vector<i64> row_of = invert_order(order, N, k, A, op);
  cpu::dispatch_float(y.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* py = static_cast<const T*>(y.data);
    const T* pw = static_cast<const T*>(weights.data);
    T* pout = static_cast<T*>(out.data);
#pragma omp parallel for num_threads(cpu::threads_for(N* D, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      T* o = pout + n * D;  // [D]
      if (!accumulate) std::fill(o, o + D, T(0));
      // Dropped slots add nothing and their weights are not read: a drop never renormalises the
      // token's other weights (MODEL.md 4).
      for (i64 s = 0; s < k; ++s) {
        const i64 i = row_of[n * k + s];
        if (i < 0) continue;
        const T w = pw[n * k + s];
        const T* yr = py + i * D;
        for (i64 j = 0; j < D; ++j) o[j] += w * yr[j];
      }
    }
  });
}

void CpuBackend::moe_unpermute_backward(const Tensor& dout, const Tensor& y, const Tensor& order,
                                        const Tensor& weights, const Tensor& dy,
                                        const Tensor& d_weights) {
  const char* op = "moe_unpermute_backward";
  cpu::check_host_contiguous(y, y.dtype, op, "y");
  LINMOE_CHECK(y.ndim() == 2, op, ": y ", y.str(), " must be [A, D]");
  cpu::check_host_contiguous(weights, y.dtype, op, "weights");
  LINMOE_CHECK(weights.ndim() == 2, op, ": weights ", weights.str(), " must be [N, k]");
  const i64 A = y.size(0), D = y.size(1), N = weights.size(0), k = weights.size(1);
  check_rows(dout, y.dtype, N, D, op, "dout");
  check_rows(dy, y.dtype, A, D, op, "dy");
  const bool want_dw = d_weights.defined();
  if (want_dw) check_rows(d_weights, y.dtype, N, k, op, "d_weights");
  const std::vector<i64> row_of = invert_order(order, N, k, A, op);
  cpu::dispatch_float(y.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* pd = static_cast<const T*>(dout.data);
    const T* py = static_cast<const T*>(y.data);
    const T* pw = static_cast<const T*>(weights.data);
    T* pdy = static_cast<T*>(dy.data);
    T* pdw = want_dw ? static_cast<T*>(d_weights.data) : nullptr;
    // Each expert row i belongs to exactly one (n, s), so walking the tokens writes every row of
    // dy once.
#pragma omp parallel for num_threads(cpu::threads_for(N* D, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const T* g = pd + n * D;  // [D]
      for (i64 s = 0; s < k; ++s) {
        const i64 a = n * k + s, i = row_of[a];
        if (i < 0) {
          if (pdw) pdw[a] = T(0);  // a dropped slot contributed nothing
          continue;
        }
        const T w = pw[a];
        const T* yr = py + i * D;
        T* dyr = pdy + i * D;
        double dot = 0;  // ⟨dout[n], y[i]⟩, summed in double like the other CPU dot products
        for (i64 j = 0; j < D; ++j) {
          dyr[j] = w * g[j];
          dot += static_cast<double>(g[j]) * yr[j];
        }
        if (pdw) pdw[a] = static_cast<T>(dot);
      }
    }
  });
}

}  // namespace linmoe
