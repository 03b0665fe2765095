// Vocab-parallel embedding lookup and its (accumulating, deterministic) backward on the GPU.
// The table holds vocabulary ids [vocab_start, vocab_start + Vl); other ids give zero rows and no
// gradient. The backward sorts (local row, token position) pairs with a stable radix sort, so
// each row's gradient is summed by one block in token order: no atomics, the same bits on every
// run, and for f32 the same additions as the CPU backend (which adds rows in token order).
//
// Unlike the CPU backend, negative ids are not rejected (that would need the ids on the host, a
// synchronisation): they are treated as another shard's ids (zero rows, no gradient).
#include <climits>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>

#include "core/memory.h"
#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/row_access.cuh"

namespace linmoe {
namespace {

using cuda::compute_t;
using cuda::i64;
using cuda::load;
using cuda::store;

constexpr int kThreads = 128;
constexpr i64 kMaxRowBlocks = 65535LL * 32;

int row_blocks(i64 N) {
  return static_cast<int>(N < kMaxRowBlocks ? N : kMaxRowBlocks);
}

// ids: [N]; table: [Vl, D]; out: [N, D]. Rows move as E-typed words: T itself, or uint4 (16
// bytes) when the row size and both pointers allow; D counts those words.
template <class E>
__global__ void embedding_forward_kernel(const std::int32_t* __restrict__ ids,
                                         const E* __restrict__ table, E* __restrict__ out, i64 N,
                                         i64 Vl, i64 D, i64 vocab_start) {
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const i64 row = static_cast<i64>(ids[n]) - vocab_start;
    E* o = out + n * D;  // [D]
    if (row >= 0 && row < Vl) {
      const E* src = table + row * D;
      for (i64 j = threadIdx.x; j < D; j += kThreads) o[j] = src[j];
    } else {
      E z;
      memset(&z, 0, sizeof(E));  // all-zero bytes: +0 in every float dtype
      for (i64 j = threadIdx.x; j < D; j += kThreads) o[j] = z;
    }
  }
}

// keys[n] = the local row of ids[n], or Vl (sorts last, skipped) when not local; positions[n] = n.
__global__ void embedding_keys_kernel(const std::int32_t* __restrict__ ids,
                                      std::uint32_t* __restrict__ keys,
                                      std::int32_t* __restrict__ positions, i64 N, i64 Vl,
                                      i64 vocab_start) {
  for (i64 n = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 row = static_cast<i64>(ids[n]) - vocab_start;
    keys[n] = static_cast<std::uint32_t>(row >= 0 && row < Vl ? row : Vl);
    positions[n] = static_cast<std::int32_t>(n);
  }
}

// After the stable sort: the block at the first entry i of each local row's run adds that run's
// dout rows (in token order, since the sort is stable) to dtable[row], accumulating in the
// compute type from dtable's value.
template <class T>
__global__ void embedding_accumulate_kernel(const std::uint32_t* __restrict__ keys,
                                            const std::int32_t* __restrict__ positions,
                                            const T* __restrict__ dout, T* __restrict__ dtable,
                                            i64 N, i64 Vl, i64 D) {
  using C = compute_t<T>;
  for (i64 i = blockIdx.x; i < N; i += gridDim.x) {
    const std::uint32_t key = keys[i];
    if (static_cast<i64>(key) >= Vl || (i > 0 && keys[i - 1] == key)) continue;
    // The run is [i, end): keys are sorted, so its end is found by bisection, and the summing
    // loop below has a known trip count (its loads can be issued ahead of the adds).
    i64 lo = i + 1, hi = N;
    while (lo < hi) {
      const i64 mid = lo + (hi - lo) / 2;
      if (keys[mid] == key) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    const i64 end = lo;
    T* dst = dtable + static_cast<i64>(key) * D;  // [D]
    for (i64 j = threadIdx.x; j < D; j += kThreads) {
      C acc = load(dst + j);
#pragma unroll 4
      for (i64 k = i; k < end; ++k) acc += load(dout + static_cast<i64>(positions[k]) * D + j);
      store(dst + j, acc);
    }
  }
}

void check_ids(const Tensor& ids, const char* op) {
  cuda::check_contiguous(ids, op, "ids");
  check_dtype(ids, DType::i32, op, "ids");
  LINMOE_CHECK(ids.ndim() == 1, op, ": ids ", ids.str(), " must be [N]");
}

void check_table(const Tensor& t, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  LINMOE_CHECK(t.ndim() == 2, op, ": ", arg, " ", t.str(), " must be [Vl, D]");
}

std::size_t aligned(std::size_t bytes) {
  return align_up(bytes < 1 ? 1 : bytes);
}

}  // namespace

void CudaBackend::embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out,
                                    std::int64_t vocab_start) {
  const char* op = "embedding_forward";
  check_ids(ids, op);
  check_table(table, op, "table");
  LINMOE_CHECK(vocab_start >= 0, op, ": vocab_start = ", vocab_start, " is negative");
  const i64 N = ids.size(0), Vl = table.size(0), D = table.size(1);
  cuda::check_contiguous(out, op, "out");
  check_dtype(out, table.dtype, op, "out");
  check_shape(out, Shape{N, D}, op, "out");
  if (N == 0 || D == 0) return;
  cudaStream_t stream = context().stream;
  cuda::dispatch_float(table.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const std::int32_t* pid = static_cast<const std::int32_t*>(ids.data);
    if (cuda::rows::vectorizable<T>(D, {table.data, out.data})) {
      const i64 words = D / cuda::rows::kVec<T>;
      embedding_forward_kernel<uint4><<<row_blocks(N), kThreads, 0, stream>>>(
          pid, static_cast<const uint4*>(table.data), static_cast<uint4*>(out.data), N, Vl, words,
          vocab_start);
    } else {
      embedding_forward_kernel<T><<<row_blocks(N), kThreads, 0, stream>>>(
          pid, static_cast<const T*>(table.data), static_cast<T*>(out.data), N, Vl, D, vocab_start);
    }
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable,
                                     std::int64_t vocab_start) {
  const char* op = "embedding_backward";
  check_ids(ids, op);
  check_table(dtable, op, "dtable");
  LINMOE_CHECK(vocab_start >= 0, op, ": vocab_start = ", vocab_start, " is negative");
  const i64 N = ids.size(0), Vl = dtable.size(0), D = dtable.size(1);
  cuda::check_contiguous(dout, op, "dout");
  check_dtype(dout, dtable.dtype, op, "dout");
  check_shape(dout, Shape{N, D}, op, "dout");
  LINMOE_CHECK(N <= INT_MAX, op, ": ", N, " ids exceed the sort's int range");
  LINMOE_CHECK(Vl < (i64{1} << 32) - 1, op, ": dtable ", dtable.str(),
               " has too many rows for 32-bit sort keys");
  if (N == 0 || D == 0 || Vl == 0) return;
  cudaStream_t stream = context().stream;

  // Keys hold 0..Vl: sort only the bits that can be set.
  int end_bit = 1;
  while (end_bit < 32 && (i64{1} << end_bit) <= Vl) ++end_bit;
  const int n = static_cast<int>(N);
  std::size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const std::uint32_t*>(nullptr),
      static_cast<std::uint32_t*>(nullptr), static_cast<const std::int32_t*>(nullptr),
      static_cast<std::int32_t*>(nullptr), n, 0, end_bit, stream));
  // One temporary buffer: keys and positions before and after the sort, then cub's workspace.
  const std::size_t keys_bytes = aligned(sizeof(std::uint32_t) * static_cast<std::size_t>(N));
  const std::size_t pos_bytes = aligned(sizeof(std::int32_t) * static_cast<std::size_t>(N));
  // Freed when the op returns: the allocator's deallocation must be ordered after the queued
  // kernels (stream-ordered, or synchronising like cudaFree).
  Buffer scratch(allocator(), 2 * keys_bytes + 2 * pos_bytes + aligned(sort_bytes),
                 "embedding_backward sort");
  char* base = static_cast<char*>(scratch.data());
  auto* keys_in = reinterpret_cast<std::uint32_t*>(base);
  auto* keys_out = reinterpret_cast<std::uint32_t*>(base + keys_bytes);
  auto* pos_in = reinterpret_cast<std::int32_t*>(base + 2 * keys_bytes);
  auto* pos_out = reinterpret_cast<std::int32_t*>(base + 2 * keys_bytes + pos_bytes);
  void* sort_tmp = base + 2 * keys_bytes + 2 * pos_bytes;

  embedding_keys_kernel<<<cuda::blocks_for(N), 256, 0, stream>>>(
      static_cast<const std::int32_t*>(ids.data), keys_in, pos_in, N, Vl, vocab_start);
  CUDA_CHECK_LAUNCH();
  // Stable: equal keys keep increasing positions, the token order of the CPU backend.
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, keys_in, keys_out, pos_in,
                                             pos_out, n, 0, end_bit, stream));
  cuda::dispatch_float(dtable.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    embedding_accumulate_kernel<T><<<row_blocks(N), kThreads, 0, stream>>>(
        keys_out, pos_out, static_cast<const T*>(dout.data), static_cast<T*>(dtable.data), N, Vl,
        D);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace linmoe
