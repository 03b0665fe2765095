// MoE routing (MODEL.md 4): top-k selection, capacity dropping, and the dispatch plan, which is
// a stable counting sort of the kept assignments by expert. Every result is a pure function of
// the inputs: the same for any thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i32 = std::int32_t;
using i64 = std::int64_t;

// The routing order of MODEL.md 4: the higher probability first, ties to the lower index (the
// expert index in top-k, the assignment index n·k + s in capacity dropping). A NaN ranks below
// every number, so a poisoned router still gets a strict weak order (no undefined behaviour in
// the sorts) and a deterministic answer.
template <class T>
bool ranks_before(T pa, i64 a, T pb, i64 b) {
  const bool nan_a = std::isnan(pa), nan_b = std::isnan(pb);
  if (nan_a != nan_b) return nan_b;
  if (nan_a || pa == pb) return a < b;
  return pa > pb;
}

// expert_ids: [N, k] i32 with every id in [0, E).
void check_expert_ids(const Tensor& expert_ids, i64 N, i64 E, const char* op) {
  cpu::check_host_contiguous(expert_ids, DType::i32, op, "expert_ids");
  LINMOE_CHECK(expert_ids.ndim() == 2 && expert_ids.size(0) == N, op, ": expert_ids ",
               expert_ids.str(), " must be [N, k] with N = ", N);
  const i32* ids = static_cast<const i32*>(expert_ids.data);
  const i64 count = expert_ids.numel();
  for (i64 a = 0; a < count; ++a) {
    LINMOE_CHECK(ids[a] >= 0 && ids[a] < E, op, ": expert_ids.flat[", a, "] = ", ids[a],
                 " is outside [0, E = ", E, ")");
  }
}

}  // namespace

void CpuBackend::moe_topk(const Tensor& probs, int k, bool renormalize, const Tensor& expert_ids,
                          const Tensor& weights) {
  const char* op = "moe_topk";
  cpu::check_host_contiguous(probs, probs.dtype, op, "probs");
  LINMOE_CHECK(probs.ndim() == 2, op, ": probs ", probs.str(), " must be [N, E]");
  const i64 N = probs.size(0), E = probs.size(1);
  LINMOE_CHECK(k >= 1 && k <= E, op, ": k = ", k, " must be in [1, E = ", E, "]");
  LINMOE_CHECK(E <= std::numeric_limits<i32>::max(), op, ": E = ", E, " does not fit i32 ids");
  cpu::check_host_contiguous(expert_ids, DType::i32, op, "expert_ids");
  check_shape(expert_ids, Shape{N, k}, op, "expert_ids");
  cpu::check_host_contiguous(weights, probs.dtype, op, "weights");
  check_shape(weights, Shape{N, k}, op, "weights");
  cpu::dispatch_float(probs.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* pp = static_cast<const T*>(probs.data);
    i32* pid = static_cast<i32*>(expert_ids.data);
    T* pw = static_cast<T*>(weights.data);
#pragma omp parallel for num_threads(cpu::threads_for(N* E, threads_)) schedule(static)
    for (i64 n = 0; n < N; ++n) {
      const T* p = pp + n * E;  // [E]
      i32* ids = pid + n * k;   // [k], kept sorted by ranks_before while scanning the experts
      T* w = pw + n * k;        // [k]
      int len = 0;
      for (i64 e = 0; e < E; ++e) {
        if (len == k && !ranks_before(p[e], e, p[ids[k - 1]], i64{ids[k - 1]})) continue;
        int pos = len < k ? len++ : k - 1;
        for (; pos > 0 && ranks_before(p[e], e, p[ids[pos - 1]], i64{ids[pos - 1]}); --pos) {
          ids[pos] = ids[pos - 1];
        }
        ids[pos] = static_cast<i32>(e);
      }
      double sum = 0;
      for (int s = 0; s < k; ++s) {
        w[s] = p[ids[s]];
        sum += w[s];
      }
      // norm_topk_prob (MODEL.md 4). A zero sum (the k selected probabilities all underflowed)
      // leaves the zeros rather than making NaNs.
      if (renormalize && sum > 0) {
        for (int s = 0; s < k; ++s) w[s] = static_cast<T>(w[s] / sum);
      }
    }
  });
}

void CpuBackend::moe_capacity_keep(const Tensor& probs, const Tensor& expert_ids,
                                   std::int64_t capacity, const Tensor& keep) {
  const char* op = "moe_capacity_keep";
  cpu::check_host_contiguous(probs, probs.dtype, op, "probs");
  LINMOE_CHECK(probs.ndim() == 2, op, ": probs ", probs.str(), " must be [N, E]");
  const i64 N = probs.size(0), E = probs.size(1);
  check_expert_ids(expert_ids, N, E, op);
  const i64 k = expert_ids.size(1), NK = N * k;
  cpu::check_host_contiguous(keep, DType::i32, op, "keep");
  check_shape(keep, Shape{N, k}, op, "keep");
  LINMOE_CHECK(capacity >= 0, op, ": capacity = ", capacity, " is negative");
  LINMOE_CHECK(probs.dtype == DType::f32 || probs.dtype == DType::f64, op, ": probs is ",
               dtype_name(probs.dtype), ", expected f32 or f64");
  const i32* ids = static_cast<const i32*>(expert_ids.data);  // [N·k]
  i32* pkeep = static_cast<i32*>(keep.data);                  // [N·k]
  std::fill(pkeep, pkeep + NK, 1);
  if (capacity >= NK) return;  // no expert can hold more than N·k assignments

  // Group the assignments by expert, token order within each (a stable counting sort).
  std::vector<i64> begin(static_cast<std::size_t>(E + 1), 0);  // [E + 1] group offsets
  for (i64 a = 0; a < NK; ++a) ++begin[ids[a] + 1];
  for (i64 e = 0; e < E; ++e) begin[e + 1] += begin[e];
  std::vector<i64> grouped(static_cast<std::size_t>(NK));  // [N·k] assignment indices
  std::vector<i64> next(begin.begin(), begin.end() - 1);   // [E]
  for (i64 a = 0; a < NK; ++a) grouped[next[ids[a]]++] = a;

  cpu::dispatch_float(probs.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* pp = static_cast<const T*>(probs.data);
    auto prob = [&](i64 a) { return pp[(a / k) * E + ids[a]]; };
    // Experts are independent and write disjoint keep entries. The order is total (ties broken
    // by a, and a orders tokens), so the kept set is unique: nth_element's choice of pivots
    // cannot change it.
    // Work: a partial sort, ~log(N·k) comparisons per assignment; experts vary in load.
#pragma omp parallel for num_threads(cpu::threads_for(NK * 16, threads_)) schedule(dynamic, 1)
    for (i64 e = 0; e < E; ++e) {
      i64* first = grouped.data() + begin[e];
      i64* last = grouped.data() + begin[e + 1];
      if (last - first <= capacity) continue;
      // The highest selected probabilities stay, ties to the lower token (MODEL.md 4).
      std::nth_element(first, first + capacity, last,
                       [&](i64 a, i64 b) { return ranks_before(prob(a), a, prob(b), b); });
      for (i64* it = first + capacity; it != last; ++it) pkeep[*it] = 0;
    }
  });
}

std::int64_t CpuBackend::moe_dispatch_plan(const Tensor& expert_ids, const Tensor& keep,
                                           int num_experts, const Tensor& order,
                                           const Tensor& counts) {
  const char* op = "moe_dispatch_plan";
  cpu::check_host_contiguous(expert_ids, DType::i32, op, "expert_ids");
  LINMOE_CHECK(expert_ids.ndim() == 2, op, ": expert_ids ", expert_ids.str(), " must be [N, k]");
  LINMOE_CHECK(num_experts >= 1, op, ": num_experts = ", num_experts, " must be >= 1");
  const i64 N = expert_ids.size(0), E = num_experts, NK = expert_ids.numel();
  check_expert_ids(expert_ids, N, E, op);
  LINMOE_CHECK(NK <= std::numeric_limits<i32>::max(), op, ": N·k = ", NK,
               " assignments do not fit the i32 order");
  const i32* pkeep = nullptr;  // [N·k]; null = all kept
  if (keep.defined()) {
    cpu::check_host_contiguous(keep, DType::i32, op, "keep");
    check_shape(keep, expert_ids.shape, op, "keep");
    pkeep = static_cast<const i32*>(keep.data);
  }
  cpu::check_host_contiguous(order, DType::i32, op, "order");
  check_shape(order, Shape{NK}, op, "order");
  cpu::check_host_contiguous(counts, DType::i64, op, "counts");
  check_shape(counts, Shape{E}, op, "counts");
  const i32* ids = static_cast<const i32*>(expert_ids.data);
  i32* pord = static_cast<i32*>(order.data);
  i64* pcount = static_cast<i64*>(counts.data);

  // A stable counting sort by expert: kept assignments in token (= assignment) order within each
  // expert, the dropped ones (−1) at the end. O(N·k) and sequential: cheap next to the experts.
  std::fill(pcount, pcount + E, i64{0});
  for (i64 a = 0; a < NK; ++a) {
    if (pkeep) {
      LINMOE_CHECK(pkeep[a] == 0 || pkeep[a] == 1, op, ": keep.flat[", a, "] = ", pkeep[a],
                   " is neither 0 nor 1");
      if (pkeep[a] == 0) continue;
    }
    ++pcount[ids[a]];
  }
  std::vector<i64> next(static_cast<std::size_t>(E));  // [E] the next free slot of each expert
  i64 kept = 0;
  for (i64 e = 0; e < E; ++e) {
    next[static_cast<std::size_t>(e)] = kept;
    kept += pcount[e];
  }
  for (i64 a = 0; a < NK; ++a) {
    if (pkeep && pkeep[a] == 0) continue;
    pord[next[static_cast<std::size_t>(ids[a])]++] = static_cast<i32>(a);
  }
  std::fill(pord + kept, pord + NK, -1);
  return kept;
}

}  // namespace linmoe
