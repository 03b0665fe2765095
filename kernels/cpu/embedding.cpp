// Vocab-parallel embedding lookup and its (accumulating) backward.
// The table holds vocabulary ids [vocab_start, vocab_start + Vl); other ids give zero rows and
// no gradient (they live on another rank's shard).
#include <algorithm>
#include <cstring>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

// Negative ids are a caller bug on every shard. The upper bound (V_global) is not known here;
// ids at or past this shard's end are legitimately another shard's.
void check_ids(const std::int32_t* ids, i64 N, const char* op) {
  for (i64 n = 0; n < N; ++n) {
    LINMOE_CHECK(ids[n] >= 0, op, ": ids[", n, "] = ", ids[n], " is negative");
  }
}

}  // namespace

void CpuBackend::embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out,
                                   std::int64_t vocab_start) {
  const char* op = "embedding_forward";
  cpu::check_host_contiguous(ids, DType::i32, op, "ids");
  LINMOE_CHECK(ids.ndim() == 1, op, ": ids ", ids.str(), " must be [N]");
  cpu::check_host_contiguous(table, table.dtype, op, "table");
  LINMOE_CHECK(table.ndim() == 2, op, ": table ", table.str(), " must be [Vl, D]");
  LINMOE_CHECK(vocab_start >= 0, op, ": vocab_start = ", vocab_start, " is negative");
  const i64 N = ids.size(0), Vl = table.size(0), D = table.size(1);
  cpu::check_host_contiguous(out, table.dtype, op, "out");
  check_shape(out, Shape{N, D}, op, "out");
  const std::int32_t* pid = static_cast<const std::int32_t*>(ids.data);
  check_ids(pid, N, op);
  cpu::dispatch_float(table.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* pt = static_cast<const T*>(table.data);
    T* po = static_cast<T*>(out.data);
#pragma omp parallel for num_threads(cpu::threads_for(N* D, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const i64 row = pid[n] - vocab_start;
      T* o = po + n * D;  // [D]
      if (row >= 0 && row < Vl) {
        std::memcpy(o, pt + row * D, sizeof(T) * static_cast<std::size_t>(D));
      } else {
        std::fill(o, o + D, T(0));
      }
    }
  });
}

void CpuBackend::embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable,
                                    std::int64_t vocab_start) {
  const char* op = "embedding_backward";
  cpu::check_host_contiguous(ids, DType::i32, op, "ids");
  LINMOE_CHECK(ids.ndim() == 1, op, ": ids ", ids.str(), " must be [N]");
  cpu::check_host_contiguous(dtable, dtable.dtype, op, "dtable");
  LINMOE_CHECK(dtable.ndim() == 2, op, ": dtable ", dtable.str(), " must be [Vl, D]");
  LINMOE_CHECK(vocab_start >= 0, op, ": vocab_start = ", vocab_start, " is negative");
  const i64 N = ids.size(0), Vl = dtable.size(0), D = dtable.size(1);
  cpu::check_host_contiguous(dout, dtable.dtype, op, "dout");
  check_shape(dout, Shape{N, D}, op, "dout");
  const std::int32_t* pid = static_cast<const std::int32_t*>(ids.data);
  check_ids(pid, N, op);
  cpu::dispatch_float(dtable.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* pd = static_cast<const T*>(dout.data);
    T* pt = static_cast<T*>(dtable.data);
    // Threads own column ranges and add rows in token order, so repeated ids sum in a fixed
    // order whatever the thread count.
    constexpr i64 kCols = 64;
#pragma omp parallel for num_threads(cpu::threads_for(N* D, threads_)) schedule(static)
    for (i64 j0 = 0; j0 < D; j0 += kCols) {
      const i64 j1 = std::min(D, j0 + kCols);
      for (i64 n = 0; n < N; ++n) {
        const i64 row = pid[n] - vocab_start;
        if (row < 0 || row >= Vl) continue;
        T* t = pt + row * D;
        const T* d = pd + n * D;
        for (i64 j = j0; j < j1; ++j) t[j] += d[j];
      }
    }
  });
}

}  // namespace linmoe
