// MoE routing on the GPU (MODEL.md 4): top-k selection, capacity dropping and the dispatch plan.
// The integer results equal the CPU backend's exactly: every choice follows the same total order
// (kernels/cpu/moe_routing.cpp: the higher probability first, ties to the lower index, a NaN below
// every number), and both sorts are stable radix sorts (cub), so nothing depends on scheduling.
// The checks the CPU backend makes on host values (expert ids in range, keep ∈ {0, 1}) run on the
// device: a kernel records the lowest offending index, and the op reads it back once.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "core/memory.h"
#include "kernels/cuda/cuda_context.cuh"

namespace linmoe {
namespace {

using cuda::i64;
using i32 = std::int32_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;
using ull = unsigned long long;

constexpr ull kNoIndex = ~0ull;  // "no offending index" in a check slot (atomicMin target)
constexpr int kThreads = 256;

// The routing order of MODEL.md 4, as kernels/cpu/moe_routing.cpp's ranks_before.
template <class C>
__device__ __forceinline__ bool ranks_before(C pa, i64 a, C pb, i64 b) {
  const bool nan_a = isnan(pa), nan_b = isnan(pb);
  if (nan_a != nan_b) return nan_b;
  if (nan_a || pa == pb) return a < b;
  return pa > pb;
}

// Radix keys that sort ascending in the routing order of the probability alone: the higher
// probability first, every NaN last and equal to each other NaN, −0 equal to +0 (they compare
// equal, so the tie goes to the index, which the stable sort keeps).
__device__ __forceinline__ u32 descending_key(float p) {
  if (isnan(p)) return ~u32{0};
  const u32 u = __float_as_uint(p == 0.0f ? 0.0f : p);
  const u32 ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~ascending;  // a number's key is at most 0xFF800000 (−inf), below the NaN key
}
__device__ __forceinline__ u64 descending_key(double p) {
  if (isnan(p)) return ~u64{0};
  const u64 u = static_cast<u64>(__double_as_longlong(p == 0.0 ? 0.0 : p));
  const u64 ascending = (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
  return ~ascending;
}
template <class T>
struct ProbKey {
  using type = u32;  // f32 and bf16 (compared as their exact f32 values)
};
template <>
struct ProbKey<double> {
  using type = u64;
};

// Bits needed for the values 0..max_value (at least 1): the radix sorts look at no more.
int bits_for(i64 max_value) {
  int bits = 1;
  while (bits < 62 && (i64{1} << bits) <= max_value) ++bits;
  return bits;
}

int grid_for(i64 items, int threads = kThreads) {
  return cuda::blocks_for(items, threads);
}

// Device scratch for one op: consecutive 256-byte aligned pieces of one Buffer, allocated from
// the backend's allocator and released when the op returns (stream order keeps that safe).
class Scratch {
 public:
  void reserve(std::size_t bytes) { total_ += align_up(bytes); }
  void allocate(Allocator& allocator, const char* name) {
    buffer_ = Buffer(allocator, total_ > 0 ? total_ : 1, name);
  }
  template <class T>
  T* take(std::size_t count) {
    T* p = reinterpret_cast<T*>(static_cast<char*>(buffer_.data()) + used_);
    used_ += align_up(count * sizeof(T));
    LINMOE_CHECK(used_ <= total_, "moe scratch: ", used_, " bytes taken of ", total_, " reserved");
    return p;
  }

 private:
  Buffer buffer_;
  std::size_t total_ = 0, used_ = 0;
};

// The check slots: the lowest offending index per check, kNoIndex when it passed.
__device__ __forceinline__ void report(ull* slot, i64 index) {
  atomicMin(slot, static_cast<ull>(index));
}

// Copies `count` check slots (and, when given, one more i64) to the host; synchronises.
void read_back(cudaStream_t stream, const ull* slots, ull* host, int count) {
  CUDA_CHECK(cudaMemcpyAsync(host, slots, sizeof(ull) * static_cast<std::size_t>(count),
                             cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

// One device value (an offending entry, for the error message); synchronises.
i32 read_i32(cudaStream_t stream, const void* base, ull index) {
  i32 v = 0;
  CUDA_CHECK(cudaMemcpyAsync(&v, static_cast<const i32*>(base) + index, sizeof(i32),
                             cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return v;
}

void check_expert_ids_result(cudaStream_t stream, const Tensor& expert_ids, ull bad, i64 E,
                             const char* op) {
  if (bad == kNoIndex) return;
  LINMOE_CHECK(false, op, ": expert_ids.flat[", bad, "] = ", read_i32(stream, expert_ids.data, bad),
               " is outside [0, E = ", E, ")");
}

// ---- moe_topk: one warp per token; k rounds, each a warp arg-max over the experts that rank
// after the previous pick (the order is total, so "after the previous pick" is "not yet picked").
template <class T>
__global__ void topk_kernel(const T* __restrict__ probs, i64 N, int E, int k, bool renormalize,
                            i32* __restrict__ expert_ids, T* __restrict__ weights) {
  using C = cuda::compute_t<T>;
  constexpr unsigned kAll = 0xffffffffu;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const i64 warps_per_block = blockDim.x / 32;
  const i64 warps = warps_per_block * gridDim.x;
  for (i64 n = blockIdx.x * warps_per_block + threadIdx.x / 32; n < N; n += warps) {
    const T* p = probs + n * E;     // [E]
    i32* ids = expert_ids + n * k;  // [k]
    T* w = weights + n * k;         // [k]
    C prev_p = 0;
    int prev_e = -1;
    double sum = 0;  // lane 0: the selected probabilities in slot order, like the CPU backend
    for (int s = 0; s < k; ++s) {
      C best_p = 0;
      int best_e = -1;  // −1: none yet
      for (int e = lane; e < E; e += 32) {
        const C pe = cuda::load(p + e);
        if (prev_e >= 0 && !ranks_before(prev_p, prev_e, pe, e)) continue;  // picked already
        if (best_e < 0 || ranks_before(pe, e, best_p, best_e)) {
          best_p = pe;
          best_e = e;
        }
      }
      // The butterfly leaves every lane with the same winner (a total order, so the arg-max is
      // associative and commutative). k ≤ E guarantees some lane has a candidate.
      for (int offset = 16; offset > 0; offset >>= 1) {
        const C other_p = __shfl_xor_sync(kAll, best_p, offset);
        const int other_e = __shfl_xor_sync(kAll, best_e, offset);
        if (other_e >= 0 && (best_e < 0 || ranks_before(other_p, other_e, best_p, best_e))) {
          best_p = other_p;
          best_e = other_e;
        }
      }
      if (lane == 0) {
        ids[s] = best_e;
        w[s] = p[best_e];  // the stored value itself, no conversion
        sum += static_cast<double>(best_p);
      }
      prev_p = best_p;
      prev_e = best_e;
    }
    // norm_topk_prob (MODEL.md 4); a zero (or NaN) sum leaves the selected values, as on the CPU.
    if (lane == 0 && renormalize && sum > 0) {
      for (int s = 0; s < k; ++s) {
        cuda::store(w + s, static_cast<C>(static_cast<double>(cuda::load(w + s)) / sum));
      }
    }
  }
}

// ---- moe_capacity_keep: sort the assignments by (expert, probability descending, assignment
// index) with two stable radix sorts (the probability first, then the expert), then an assignment
// is kept when fewer than `capacity` of its expert's assignments precede it.
template <class T>
__global__ void capacity_keys_kernel(const T* __restrict__ probs, const i32* __restrict__ ids,
                                     i64 NK, int k, int E,
                                     typename ProbKey<T>::type* __restrict__ keys,
                                     i32* __restrict__ assignments, ull* __restrict__ bad_id) {
  for (i64 a = blockIdx.x * i64{blockDim.x} + threadIdx.x; a < NK;
       a += i64{blockDim.x} * gridDim.x) {
    i32 e = ids[a];
    if (e < 0 || e >= E) {
      report(bad_id, a);
      e = 0;  // keeps the read in bounds; the op fails after the kernels
    }
    keys[a] = descending_key(cuda::load(probs + (a / k) * E + e));
    assignments[a] = static_cast<i32>(a);
  }
}

// The expert of each assignment, in the probability order of the first sort.
__global__ void gather_experts_kernel(const i32* __restrict__ ids,
                                      const i32* __restrict__ assignments, i64 NK, int E,
                                      u32* __restrict__ experts) {
  for (i64 j = blockIdx.x * i64{blockDim.x} + threadIdx.x; j < NK;
       j += i64{blockDim.x} * gridDim.x) {
    const i32 e = ids[assignments[j]];
    experts[j] = (e < 0 || e >= E) ? 0u : static_cast<u32>(e);
  }
}

// experts: [N·k] sorted (expert ascending, routing order within); assignments in the same order.
// Position j holds rank j − begin(expert) in its expert, and that rank is < capacity exactly when
// j < capacity or the entry `capacity` places earlier belongs to another expert.
__global__ void capacity_mark_kernel(const u32* __restrict__ experts,
                                     const i32* __restrict__ assignments, i64 NK, i64 capacity,
                                     i32* __restrict__ keep) {
  for (i64 j = blockIdx.x * i64{blockDim.x} + threadIdx.x; j < NK;
       j += i64{blockDim.x} * gridDim.x) {
    const bool kept = j < capacity || experts[j - capacity] != experts[j];
    keep[assignments[j]] = kept ? 1 : 0;
  }
}

__global__ void check_ids_fill_kernel(const i32* __restrict__ ids, i64 NK, int E,
                                      i32* __restrict__ keep, ull* __restrict__ bad_id) {
  for (i64 a = blockIdx.x * i64{blockDim.x} + threadIdx.x; a < NK;
       a += i64{blockDim.x} * gridDim.x) {
    if (ids[a] < 0 || ids[a] >= E) report(bad_id, a);
    keep[a] = 1;
  }
}

// ---- moe_dispatch_plan: one stable radix sort of the assignments by key = expert (kept) or E
// (dropped), so the dropped ones come last; the group boundaries give the counts and A.
__global__ void plan_keys_kernel(const i32* __restrict__ ids, const i32* __restrict__ keep, i64 NK,
                                 int E, u32* __restrict__ keys, i32* __restrict__ assignments,
                                 ull* __restrict__ bad) {
  for (i64 a = blockIdx.x * i64{blockDim.x} + threadIdx.x; a < NK;
       a += i64{blockDim.x} * gridDim.x) {
    const i32 e = ids[a];
    bool valid = true;
    if (e < 0 || e >= E) {
      report(bad + 0, a);
      valid = false;
    }
    if (keep) {
      const i32 kv = keep[a];
      if (kv != 0 && kv != 1) {
        report(bad + 1, a);
        valid = false;
      }
      if (kv == 0) valid = false;
    }
    keys[a] = valid ? static_cast<u32>(e) : static_cast<u32>(E);
    assignments[a] = static_cast<i32>(a);
  }
}

// keys: [N·k] sorted ascending in [0, E]. begin[e] = the first j with keys[j] ≥ e, for e in
// [0, E] (begin[E] = A). Position j (0..N·k) is the first position of the keys e in
// (keys[j − 1], keys[j]], reading keys[−1] as −1 and keys[N·k] as E; each e is written once.
// order (the sorted assignments) gets −1 past the kept ones.
__global__ void plan_bounds_kernel(const u32* __restrict__ keys, i64 NK, int E,
                                   i64* __restrict__ begin, i32* __restrict__ order) {
  for (i64 j = blockIdx.x * i64{blockDim.x} + threadIdx.x; j <= NK;
       j += i64{blockDim.x} * gridDim.x) {
    const i64 lo = j == 0 ? 0 : i64{keys[j - 1]} + 1;
    const i64 hi = j == NK ? i64{E} : i64{keys[j]};
    for (i64 e = lo; e <= hi; ++e) begin[e] = j;
    if (j < NK && keys[j] == static_cast<u32>(E)) order[j] = -1;
  }
}

__global__ void plan_counts_kernel(const i64* __restrict__ begin, int E, i64* __restrict__ counts) {
  for (i64 e = blockIdx.x * i64{blockDim.x} + threadIdx.x; e < E;
       e += i64{blockDim.x} * gridDim.x) {
    counts[e] = begin[e + 1] - begin[e];
  }
}

// The expert_ids argument of the capacity and plan ops: [N, k] i32 on the device.
void check_ids_tensor(const Tensor& expert_ids, i64 N, const char* op) {
  cuda::check_contiguous(expert_ids, op, "expert_ids");
  check_dtype(expert_ids, DType::i32, op, "expert_ids");
  LINMOE_CHECK(expert_ids.ndim() == 2 && expert_ids.size(0) == N, op, ": expert_ids ",
               expert_ids.str(), " must be [N, k] with N = ", N);
}

}  // namespace

void CudaBackend::moe_topk(const Tensor& probs, int k, bool renormalize, const Tensor& expert_ids,
                           const Tensor& weights) {
  const char* op = "moe_topk";
  cuda::check_contiguous(probs, op, "probs");
  LINMOE_CHECK(probs.ndim() == 2, op, ": probs ", probs.str(), " must be [N, E]");
  const i64 N = probs.size(0), E = probs.size(1);
  LINMOE_CHECK(k >= 1 && k <= E, op, ": k = ", k, " must be in [1, E = ", E, "]");
  LINMOE_CHECK(E <= std::numeric_limits<i32>::max(), op, ": E = ", E, " does not fit i32 ids");
  cuda::check_contiguous(expert_ids, op, "expert_ids");
  check_dtype(expert_ids, DType::i32, op, "expert_ids");
  check_shape(expert_ids, Shape{N, k}, op, "expert_ids");
  cuda::check_contiguous(weights, op, "weights");
  check_dtype(weights, probs.dtype, op, "weights");
  check_shape(weights, Shape{N, k}, op, "weights");
  if (N == 0) return;
  cuda::dispatch_float(probs.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    topk_kernel<T><<<grid_for(N * 32), kThreads, 0, ctx_->stream>>>(
        static_cast<const T*>(probs.data), N, static_cast<int>(E), k, renormalize,
        static_cast<i32*>(expert_ids.data), static_cast<T*>(weights.data));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::moe_capacity_keep(const Tensor& probs, const Tensor& expert_ids,
                                    std::int64_t capacity, const Tensor& keep) {
  const char* op = "moe_capacity_keep";
  cuda::check_contiguous(probs, op, "probs");
  LINMOE_CHECK(probs.ndim() == 2, op, ": probs ", probs.str(), " must be [N, E]");
  const i64 N = probs.size(0), E = probs.size(1);
  LINMOE_CHECK(E >= 1 && E <= std::numeric_limits<i32>::max(), op, ": E = ", E,
               " must be in [1, 2^31)");
  check_ids_tensor(expert_ids, N, op);
  const i64 k = expert_ids.size(1), NK = N * k;
  cuda::check_contiguous(keep, op, "keep");
  check_dtype(keep, DType::i32, op, "keep");
  check_shape(keep, Shape{N, k}, op, "keep");
  LINMOE_CHECK(capacity >= 0, op, ": capacity = ", capacity, " is negative");
  LINMOE_CHECK(NK <= std::numeric_limits<i32>::max(), op, ": N·k = ", NK,
               " assignments do not fit i32 indices");
  if (NK == 0) return;
  const cudaStream_t stream = ctx_->stream;
  const int e32 = static_cast<int>(E);
  const i32* ids = static_cast<const i32*>(expert_ids.data);
  i32* pkeep = static_cast<i32*>(keep.data);
  const int n = static_cast<int>(NK);
  ull bad_host = kNoIndex;

  if (capacity >= NK) {  // no expert can hold more than N·k assignments: all kept
    Scratch scratch;
    scratch.reserve(sizeof(ull));
    scratch.allocate(allocator(), "moe_capacity_keep scratch");
    ull* bad = scratch.take<ull>(1);
    CUDA_CHECK(cudaMemsetAsync(bad, 0xff, sizeof(ull), stream));
    check_ids_fill_kernel<<<grid_for(NK), kThreads, 0, stream>>>(ids, NK, e32, pkeep, bad);
    CUDA_CHECK_LAUNCH();
    read_back(stream, bad, &bad_host, 1);
    check_expert_ids_result(stream, expert_ids, bad_host, E, op);
    return;
  }

  cuda::dispatch_float(probs.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using Key = typename ProbKey<T>::type;
    const int expert_bits = bits_for(E - 1);
    // cub's temporary storage for both sorts (sizes depend only on the types and the count).
    std::size_t prob_sort_bytes = 0, expert_sort_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        nullptr, prob_sort_bytes, static_cast<const Key*>(nullptr), static_cast<Key*>(nullptr),
        static_cast<const i32*>(nullptr), static_cast<i32*>(nullptr), n, 0,
        static_cast<int>(sizeof(Key) * 8), stream));
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        nullptr, expert_sort_bytes, static_cast<const u32*>(nullptr), static_cast<u32*>(nullptr),
        static_cast<const i32*>(nullptr), static_cast<i32*>(nullptr), n, 0, expert_bits, stream));
    const std::size_t sort_bytes = std::max(prob_sort_bytes, expert_sort_bytes);
    const std::size_t count = static_cast<std::size_t>(NK);
    Scratch scratch;
    scratch.reserve(sizeof(ull));
    scratch.reserve(2 * count * sizeof(Key));  // probability keys, unsorted and sorted
    scratch.reserve(3 * count * sizeof(i32));  // assignments: original, by prob, final
    scratch.reserve(2 * count * sizeof(u32));  // experts: by prob, final
    scratch.reserve(sort_bytes);
    scratch.allocate(allocator(), "moe_capacity_keep scratch");
    ull* bad = scratch.take<ull>(1);
    Key* keys = scratch.take<Key>(count);            // [N·k]
    Key* keys_sorted = scratch.take<Key>(count);     // [N·k]
    i32* assignments = scratch.take<i32>(count);     // [N·k] a
    i32* by_prob = scratch.take<i32>(count);         // [N·k] a, probability order
    i32* by_expert = scratch.take<i32>(count);       // [N·k] a, final order
    u32* experts = scratch.take<u32>(count);         // [N·k] expert of by_prob[j]
    u32* experts_sorted = scratch.take<u32>(count);  // [N·k] expert of by_expert[j]
    void* sort_storage = scratch.take<char>(sort_bytes);
    CUDA_CHECK(cudaMemsetAsync(bad, 0xff, sizeof(ull), stream));

    capacity_keys_kernel<T>
        <<<grid_for(NK), kThreads, 0, stream>>>(static_cast<const T*>(probs.data), ids, NK,
                                                static_cast<int>(k), e32, keys, assignments, bad);
    CUDA_CHECK_LAUNCH();
    std::size_t bytes = prob_sort_bytes;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_storage, bytes, keys, keys_sorted, assignments,
                                               by_prob, n, 0, static_cast<int>(sizeof(Key) * 8),
                                               stream));
    gather_experts_kernel<<<grid_for(NK), kThreads, 0, stream>>>(ids, by_prob, NK, e32, experts);
    CUDA_CHECK_LAUNCH();
    bytes = expert_sort_bytes;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_storage, bytes, experts, experts_sorted,
                                               by_prob, by_expert, n, 0, expert_bits, stream));
    capacity_mark_kernel<<<grid_for(NK), kThreads, 0, stream>>>(experts_sorted, by_expert, NK,
                                                                capacity, pkeep);
    CUDA_CHECK_LAUNCH();
    read_back(stream, bad, &bad_host, 1);
  });
  check_expert_ids_result(stream, expert_ids, bad_host, E, op);
}

std::int64_t CudaBackend::moe_dispatch_plan(const Tensor& expert_ids, const Tensor& keep,
                                            int num_experts, const Tensor& order,
                                            const Tensor& counts) {
  const char* op = "moe_dispatch_plan";
  cuda::check_contiguous(expert_ids, op, "expert_ids");
  check_dtype(expert_ids, DType::i32, op, "expert_ids");
  LINMOE_CHECK(expert_ids.ndim() == 2, op, ": expert_ids ", expert_ids.str(), " must be [N, k]");
  LINMOE_CHECK(num_experts >= 1 && num_experts < std::numeric_limits<i32>::max(), op,
               ": num_experts = ", num_experts, " must be in [1, 2^31 - 1)");
  const i64 N = expert_ids.size(0), E = num_experts, NK = expert_ids.numel();
  LINMOE_CHECK(NK <= std::numeric_limits<i32>::max(), op, ": N·k = ", NK,
               " assignments do not fit the i32 order");
  const i32* pkeep = nullptr;  // [N·k]; null = all kept
  if (keep.defined()) {
    cuda::check_contiguous(keep, op, "keep");
    check_dtype(keep, DType::i32, op, "keep");
    check_shape(keep, expert_ids.shape, op, "keep");
    pkeep = static_cast<const i32*>(keep.data);
  }
  cuda::check_contiguous(order, op, "order");
  check_dtype(order, DType::i32, op, "order");
  check_shape(order, Shape{NK}, op, "order");
  cuda::check_contiguous(counts, op, "counts");
  check_dtype(counts, DType::i64, op, "counts");
  check_shape(counts, Shape{E}, op, "counts");
  const cudaStream_t stream = ctx_->stream;
  if (NK == 0) {
    CUDA_CHECK(cudaMemsetAsync(counts.data, 0, static_cast<std::size_t>(E) * sizeof(i64), stream));
    return 0;
  }
  const int n = static_cast<int>(NK);
  const int key_bits = bits_for(E);  // keys 0..E, E = dropped
  const std::size_t count = static_cast<std::size_t>(NK);
  std::size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const u32*>(nullptr), static_cast<u32*>(nullptr),
      static_cast<const i32*>(nullptr), static_cast<i32*>(nullptr), n, 0, key_bits, stream));
  Scratch scratch;
  scratch.reserve(2 * sizeof(ull));
  scratch.reserve(2 * count * sizeof(u32));                        // keys, unsorted and sorted
  scratch.reserve(count * sizeof(i32));                            // assignments 0..N·k−1
  scratch.reserve(static_cast<std::size_t>(E + 1) * sizeof(i64));  // group begins
  scratch.reserve(sort_bytes);
  scratch.allocate(allocator(), "moe_dispatch_plan scratch");
  ull* bad = scratch.take<ull>(2);  // [0] expert id out of range, [1] keep not 0/1
  u32* keys = scratch.take<u32>(count);
  u32* keys_sorted = scratch.take<u32>(count);
  i32* assignments = scratch.take<i32>(count);
  i64* begin = scratch.take<i64>(static_cast<std::size_t>(E + 1));  // [E + 1]
  void* sort_storage = scratch.take<char>(sort_bytes);
  i32* pord = static_cast<i32*>(order.data);
  const int e32 = static_cast<int>(E);
  CUDA_CHECK(cudaMemsetAsync(bad, 0xff, 2 * sizeof(ull), stream));

  plan_keys_kernel<<<grid_for(NK), kThreads, 0, stream>>>(static_cast<const i32*>(expert_ids.data),
                                                          pkeep, NK, e32, keys, assignments, bad);
  CUDA_CHECK_LAUNCH();
  // Stable: equal keys keep the assignment order, i.e. token order within an expert.
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_storage, sort_bytes, keys, keys_sorted,
                                             assignments, pord, n, 0, key_bits, stream));
  plan_bounds_kernel<<<grid_for(NK + 1), kThreads, 0, stream>>>(keys_sorted, NK, e32, begin, pord);
  CUDA_CHECK_LAUNCH();
  plan_counts_kernel<<<grid_for(E), kThreads, 0, stream>>>(begin, e32,
                                                           static_cast<i64*>(counts.data));
  CUDA_CHECK_LAUNCH();

  ull host[3] = {kNoIndex, kNoIndex, 0};  // the two check slots, then A
  CUDA_CHECK(cudaMemcpyAsync(host, bad, 2 * sizeof(ull), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaMemcpyAsync(&host[2], begin + E, sizeof(i64), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  check_expert_ids_result(stream, expert_ids, host[0], E, op);
  if (host[1] != kNoIndex) {
    LINMOE_CHECK(false, op, ": keep.flat[", host[1], "] = ", read_i32(stream, keep.data, host[1]),
                 " is neither 0 nor 1");
  }
  return static_cast<i64>(host[2]);
}

}  // namespace linmoe
