// moe_topk, moe_capacity_keep and moe_dispatch_plan (MODEL.md 4) on the CPU backend: hand-made
// cases with known answers, then random tie-heavy cases against the naive fp64 references.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/moe_capacity.h"
#include "moe/moe_reference.h"
#include "moe/moe_testing.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

constexpr DType kFloatTypes[] = {DType::f32, DType::f64};

// Runs moe_topk on poisoned outputs and returns (ids, weights).
RefTopk run_topk(Backend& backend, const HostTensor& probs, int k, bool renormalize) {
  const std::int64_t N = probs.t().size(0);
  HostTensor ids(DType::i32, Shape{N, k}), w(probs.t().dtype, Shape{N, k});
  poison(ids.t());
  poison(w.t());
  backend.moe_topk(probs, k, renormalize, ids, w);
  return RefTopk{ints(ids), w.to_f64()};
}

TEST_CASE("moe_topk: ties to the lower expert, k = 1 and k = E, renormalised or not",
          "[moe][topk]") {
  CpuBackend backend(2);
  // [N = 4, E = 4]; every row sums to 1.
  const std::vector<double> p = {0.1,  0.4,  0.4,  0.1,   // tie between experts 1 and 2
                                 0.25, 0.25, 0.25, 0.25,  // all tied
                                 0.1,  0.2,  0.3,  0.4,   // ascending
                                 0.5,  0.1,  0.1,  0.3};  // tie among the losers
  for (DType dt : kFloatTypes) {
    CAPTURE(dtype_name(dt));
    HostTensor probs = float_tensor(dt, Shape{4, 4}, p);

    RefTopk r = run_topk(backend, probs, 2, false);
    CHECK(r.ids == std::vector<int>{1, 2, 0, 1, 3, 2, 0, 3});
    CHECK(rel_error(r.w, {0.4, 0.4, 0.25, 0.25, 0.4, 0.3, 0.5, 0.3}) <= op_bound(dt));
    r = run_topk(backend, probs, 2, true);
    CHECK(r.ids == std::vector<int>{1, 2, 0, 1, 3, 2, 0, 3});
    CHECK(rel_error(r.w, {0.5, 0.5, 0.5, 0.5, 0.4 / 0.7, 0.3 / 0.7, 0.5 / 0.8, 0.3 / 0.8}) <=
          op_bound(dt));

    r = run_topk(backend, probs, 1, false);
    CHECK(r.ids == std::vector<int>{1, 0, 3, 0});
    CHECK(rel_error(r.w, {0.4, 0.25, 0.4, 0.5}) <= op_bound(dt));
    r = run_topk(backend, probs, 1, true);  // one expert renormalised has weight 1
    CHECK(r.ids == std::vector<int>{1, 0, 3, 0});
    CHECK(rel_error(r.w, {1, 1, 1, 1}) <= op_bound(dt));

    // k = E: every expert, in routing order.
    r = run_topk(backend, probs, 4, false);
    CHECK(r.ids == std::vector<int>{1, 2, 0, 3, 0, 1, 2, 3, 3, 2, 1, 0, 0, 3, 1, 2});
    CHECK(rel_error(r.w, {0.4, 0.4, 0.1, 0.1, 0.25, 0.25, 0.25, 0.25, 0.4, 0.3, 0.2, 0.1, 0.5, 0.3,
                          0.1, 0.1}) <= op_bound(dt));
    // Renormalising probabilities that do not sum to 1 (scaled by 2) divides by their sum.
    std::vector<double> p2 = p;
    for (double& v : p2) v *= 2;
    r = run_topk(backend, float_tensor(dt, Shape{4, 4}, p2), 4, true);
    CHECK(r.ids == std::vector<int>{1, 2, 0, 3, 0, 1, 2, 3, 3, 2, 1, 0, 0, 3, 1, 2});
    CHECK(rel_error(r.w, {0.4, 0.4, 0.1, 0.1, 0.25, 0.25, 0.25, 0.25, 0.4, 0.3, 0.2, 0.1, 0.5, 0.3,
                          0.1, 0.1}) <= op_bound(dt));

    // A NaN ranks below every number (a deterministic answer, not undefined behaviour).
    const double nan = std::numeric_limits<double>::quiet_NaN();
    r = run_topk(backend, float_tensor(dt, Shape{1, 4}, {nan, 0.2, nan, 0.3}), 3, false);
    CHECK(r.ids == std::vector<int>{3, 1, 0});
  }
}

// [N = 6, E = 4] probabilities and routes built so that capacity 2 drops with ties between
// tokens, token 1 loses both of its assignments, and expert 3 receives none.
const std::vector<double> kCapProbs = {0.5,  0.3,  0.2,  0.01,   // t0 -> 0, 1
                                       0.5,  0.2,  0.3,  0.01,   // t1 -> 0, 2
                                       0.6,  0.3,  0.1,  0.01,   // t2 -> 0, 1
                                       0.2,  0.3,  0.5,  0.01,   // t3 -> 2, 1
                                       0.4,  0.35, 0.25, 0.01,   // t4 -> 0, 1
                                       0.45, 0.05, 0.5,  0.01};  // t5 -> 2, 0
const std::vector<int> kCapIds = {0, 1, 0, 2, 0, 1, 2, 1, 0, 1, 2, 0};

std::vector<int> run_keep(Backend& backend, DType dt, std::int64_t capacity) {
  HostTensor probs = float_tensor(dt, Shape{6, 4}, kCapProbs);
  HostTensor ids = int_tensor(Shape{6, 2}, kCapIds), keep(DType::i32, Shape{6, 2});
  poison(keep.t());
  backend.moe_capacity_keep(probs, ids, capacity, keep);
  return ints(keep);
}

TEST_CASE("moe_capacity_keep: highest probabilities stay, ties to the lower token",
          "[moe][capacity]") {
  CpuBackend backend(2);
  for (DType dt : kFloatTypes) {
    CAPTURE(dtype_name(dt));
    // Expert 0 holds t0 .5, t1 .5, t2 .6, t4 .4, t5 .45: keeps t2 and t0 (t0 beats t1 on the
    // tie). Expert 1 holds t0 .3, t2 .3, t3 .3, t4 .35: keeps t4 and t0 (lowest of three tied).
    // Expert 2 holds t1 .3, t3 .5, t5 .5: keeps t3 and t5. Token 1 keeps nothing.
    CHECK(run_keep(backend, dt, 2) == std::vector<int>{1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0});
    CHECK(run_keep(backend, dt, 1) == std::vector<int>{0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0});
    CHECK(run_keep(backend, dt, 0) == std::vector<int>(12, 0));
    CHECK(run_keep(backend, dt, 5) == std::vector<int>(12, 1));  // the largest load is 5
    CHECK(run_keep(backend, dt, 12) == std::vector<int>(12, 1));
    CHECK(run_keep(backend, dt, 1000) == std::vector<int>(12, 1));
    HostTensor probs = float_tensor(dt, Shape{6, 4}, kCapProbs);
    for (int capacity = 0; capacity <= 13; ++capacity) {
      CAPTURE(capacity);
      CHECK(run_keep(backend, dt, capacity) ==
            ref_keep(probs.to_f64(), kCapIds, 6, 4, 2, capacity));
    }
  }
}

TEST_CASE("moe_dispatch_plan: a stable counting sort of the kept assignments by expert",
          "[moe][plan]") {
  CpuBackend backend(2);
  HostTensor ids = int_tensor(Shape{6, 2}, kCapIds);
  HostTensor keep = int_tensor(Shape{6, 2}, {1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0});
  HostTensor order(DType::i32, Shape{12}), counts(DType::i64, Shape{4});
  poison(order.t());
  poison(counts.t());
  CHECK(backend.moe_dispatch_plan(ids, keep, 4, order, counts) == 6);
  CHECK(ints(order) == std::vector<int>{0, 4, 1, 9, 6, 10, -1, -1, -1, -1, -1, -1});
  CHECK(int64s(counts) == std::vector<std::int64_t>{2, 2, 2, 0});  // expert 3: nothing

  poison(order.t());
  poison(counts.t());
  CHECK(backend.moe_dispatch_plan(ids, Tensor{}, 4, order, counts) == 12);  // dropless
  CHECK(ints(order) == std::vector<int>{0, 2, 4, 8, 11, 1, 5, 7, 9, 3, 6, 10});
  CHECK(int64s(counts) == std::vector<std::int64_t>{5, 4, 3, 0});

  // Everything dropped: A = 0 and the order is all −1.
  HostTensor none = int_tensor(Shape{6, 2}, std::vector<int>(12, 0));
  poison(order.t());
  CHECK(backend.moe_dispatch_plan(ids, none, 4, order, counts) == 0);
  CHECK(ints(order) == std::vector<int>(12, -1));
  CHECK(int64s(counts) == std::vector<std::int64_t>{0, 0, 0, 0});

  // No tokens at all.
  HostTensor ids0(DType::i32, Shape{0, 2}), order0(DType::i32, Shape{0});
  poison(counts.t());
  CHECK(backend.moe_dispatch_plan(ids0, Tensor{}, 4, order0, counts) == 0);
  CHECK(int64s(counts) == std::vector<std::int64_t>{0, 0, 0, 0});
}

// Router probabilities: a softmax of logits on a coarse grid (tie-heavy) or uniform.
HostTensor random_probs(DType dt, int N, int E, std::uint64_t seed, bool ties) {
  HostTensor logits = random_tensor(DType::f64, Shape{N, E}, seed, -2.0, 2.0);
  std::vector<double> l = logits.to_f64(), p(l.size());
  for (int n = 0; n < N; ++n) {
    double m = -1e300, sum = 0;
    for (int e = 0; e < E; ++e) {
      if (ties) l[n * E + e] = std::floor(l[n * E + e]);  // 4 values: many exact ties
      m = std::max(m, l[n * E + e]);
    }
    for (int e = 0; e < E; ++e) sum += p[n * E + e] = std::exp(l[n * E + e] - m);
    for (int e = 0; e < E; ++e) p[n * E + e] /= sum;
  }
  return float_tensor(dt, Shape{N, E}, p);
}

TEST_CASE("moe routing matches the fp64 references on random tie-heavy inputs",
          "[moe][topk][capacity][plan]") {
  CpuBackend backend(2);
  struct Case {
    int N, E, k;
  };
  const Case cases[] = {{37, 7, 1}, {37, 7, 2}, {37, 7, 3}, {37, 7, 7}, {64, 16, 4}, {1, 3, 2}};
  std::uint64_t seed = 100;
  for (DType dt : kFloatTypes) {
    for (const Case& c : cases) {
      for (bool ties : {true, false}) {
        CAPTURE(dtype_name(dt), c.N, c.E, c.k, ties);
        HostTensor probs = random_probs(dt, c.N, c.E, ++seed, ties);
        const std::vector<double> p = probs.to_f64();  // the values the op sees
        for (bool renormalize : {false, true}) {
          const RefTopk got = run_topk(backend, probs, c.k, renormalize);
          const RefTopk want = ref_topk(p, c.N, c.E, c.k, renormalize);
          CHECK(got.ids == want.ids);
          CHECK(rel_error(got.w, want.w) <= op_bound(dt));
        }
        const RefTopk top = ref_topk(p, c.N, c.E, c.k, false);
        HostTensor ids = int_tensor(Shape{c.N, c.k}, top.ids);
        const std::int64_t NK = std::int64_t{c.N} * c.k;
        for (std::int64_t capacity :
             {std::int64_t{0}, std::int64_t{1}, moe_capacity("1.0", c.N, c.k, c.E),
              moe_capacity("1.25", c.N, c.k, c.E), NK}) {
          CAPTURE(capacity);
          HostTensor keep(DType::i32, Shape{c.N, c.k});
          poison(keep.t());
          backend.moe_capacity_keep(probs, ids, capacity, keep);
          const std::vector<int> want_keep = ref_keep(p, top.ids, c.N, c.E, c.k, capacity);
          CHECK(ints(keep) == want_keep);

          HostTensor order(DType::i32, Shape{NK}), counts(DType::i64, Shape{c.E});
          poison(order.t());
          poison(counts.t());
          const std::int64_t A = backend.moe_dispatch_plan(ids, keep, c.E, order, counts);
          const RefPlan plan = ref_plan(top.ids, want_keep, c.N, c.k, c.E);
          CHECK(A == plan.A);
          CHECK(ints(order) == plan.order);
          CHECK(int64s(counts) == plan.counts);
        }
      }
    }
  }
}

TEST_CASE("moe routing rejects bad arguments naming the op and argument", "[moe][checks]") {
  CpuBackend backend(1);
  auto expect_rejected = [](const std::function<void()>& call, const std::string& must_mention) {
    bool failed = false;
    const std::string err = run_expecting_failure(call, &failed);
    CAPTURE(must_mention, err);
    CHECK(failed);
    CHECK(err.find(must_mention) != std::string::npos);
  };
  HostTensor probs = float_tensor(DType::f32, Shape{6, 4}, kCapProbs);
  HostTensor ids = int_tensor(Shape{6, 2}, kCapIds);
  HostTensor keep = int_tensor(Shape{6, 2}, std::vector<int>(12, 1));
  HostTensor w(DType::f32, Shape{6, 2}), w64(DType::f64, Shape{6, 2});
  HostTensor order(DType::i32, Shape{12}), counts(DType::i64, Shape{4});
  HostTensor counts32(DType::i32, Shape{4});
  expect_rejected([&] { backend.moe_topk(probs, 0, false, ids, w); }, "moe_topk: k = 0");
  expect_rejected([&] { backend.moe_topk(probs, 5, false, ids, w); }, "moe_topk: k = 5");
  expect_rejected([&] { backend.moe_topk(probs, 2, false, ids, w64); }, "moe_topk: weights");
  expect_rejected([&] { backend.moe_topk(probs, 2, false, w, w); }, "moe_topk: expert_ids");
  expect_rejected(
      [&] {
        ids.data<std::int32_t>()[3] = 4;
        backend.moe_capacity_keep(probs, ids, 2, keep);
      },
      "moe_capacity_keep: expert_ids.flat[3] = 4");
  expect_rejected([&] { backend.moe_capacity_keep(probs, ids, -1, keep); },
                  "moe_capacity_keep: capacity = -1");
  expect_rejected([&] { backend.moe_capacity_keep(probs, ids, 2, w); }, "moe_capacity_keep: keep");
  expect_rejected(
      [&] {
        ids.data<std::int32_t>()[0] = -1;
        backend.moe_dispatch_plan(ids, Tensor{}, 4, order, counts);
      },
      "moe_dispatch_plan: expert_ids.flat[0] = -1");
  expect_rejected(
      [&] {
        keep.data<std::int32_t>()[5] = 2;
        backend.moe_dispatch_plan(ids, keep, 4, order, counts);
      },
      "keep.flat[5] = 2 is neither 0 nor 1");
  expect_rejected([&] { backend.moe_dispatch_plan(ids, Tensor{}, 4, order, counts32); },
                  "moe_dispatch_plan: counts");
  expect_rejected([&] { backend.moe_dispatch_plan(ids, Tensor{}, 3, order, counts); },
                  "moe_dispatch_plan: counts");
  // Sanity: the good calls pass in the child.
  bool failed = true;
  run_expecting_failure(
      [&] {
        backend.moe_topk(probs, 2, true, ids, w);
        backend.moe_capacity_keep(probs, ids, 2, keep);
        backend.moe_dispatch_plan(ids, keep, 4, order, counts);
      },
      &failed);
  CHECK_FALSE(failed);
}

}  // namespace
}  // namespace linmoe::testing
