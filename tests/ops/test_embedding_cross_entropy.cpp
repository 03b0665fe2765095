// Vocab-parallel embedding and cross-entropy against fp64 oracles: every shard of a split
// vocabulary, ids outside the shard, ignored targets, accumulation into pre-filled gradients,
// and (f64) the cross-entropy backward against finite differences.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

const DType kDtypes[] = {DType::f32, DType::f64};

HostTensor random_ids(std::int64_t N, std::int64_t V, std::uint64_t seed) {
  HostTensor ids(DType::i32, Shape{N});
  fill_ints(ids.t(), seed, V);
  return ids;
}

TEST_CASE("embedding forward and backward over vocabulary shards", "[ops][embedding]") {
  CpuBackend backend(2);
  std::uint64_t seed = 7000;
  const std::int64_t V = 23;  // global vocabulary
  for (DType dt : kDtypes) {
    for (std::int64_t D : {1, 5, 64, 131}) {
      for (std::int64_t N : {1, 9, 300}) {
        // Shards [0, 23), [0, 11) and [11, 23), and a single-row shard [22, 23).
        const std::int64_t shards[][2] = {{0, 23}, {0, 11}, {11, 12}, {22, 1}};
        const HostTensor ids = random_ids(N, V, ++seed);
        const auto vid = ids.to_f64();
        for (const auto& sh : shards) {
          const std::int64_t start = sh[0], Vl = sh[1];
          CAPTURE(dtype_name(dt), D, N, start, Vl);
          HostTensor table = random_tensor(dt, Shape{Vl, D}, ++seed);
          HostTensor dout = random_tensor(dt, Shape{N, D}, ++seed);
          HostTensor dtable = random_tensor(dt, Shape{Vl, D}, ++seed);  // pre-filled: accumulates
          const auto vt = table.to_f64(), vd = dout.to_f64();
          std::vector<double> out(static_cast<std::size_t>(N * D), 0.0), dt_ref = dtable.to_f64();
          for (std::int64_t n = 0; n < N; ++n) {
            const std::int64_t row = static_cast<std::int64_t>(vid[n]) - start;
            if (row < 0 || row >= Vl) continue;
            for (std::int64_t j = 0; j < D; ++j) {
              out[n * D + j] = vt[row * D + j];
              dt_ref[row * D + j] += vd[n * D + j];
            }
          }
          HostTensor o = poisoned_tensor(dt, Shape{N, D});
          backend.embedding_forward(ids, table, o, start);
          CHECK(max_abs_diff(o.to_f64(), out) == 0.0);  // a copy is exact
          backend.embedding_backward(ids, dout, dtable, start);
          CHECK(rel_error(dtable.to_f64(), dt_ref) <= op_bound(dt));
        }
      }
    }
  }
}

TEST_CASE("embedding backward is deterministic with repeated ids", "[ops][embedding]") {
  CpuBackend one(1), two(2);
  const std::int64_t N = 4000, D = 96, V = 3;  // every id repeated ~1300 times
  const HostTensor ids = random_ids(N, V, 7100);
  HostTensor dout = random_tensor(DType::f32, Shape{N, D}, 7101);
  HostTensor a(DType::f32, Shape{V, D}), b(DType::f32, Shape{V, D});
  one.fill(a, 0.0);
  two.fill(b, 0.0);
  one.embedding_backward(ids, dout, a, 0);
  two.embedding_backward(ids, dout, b, 0);
  CHECK(max_abs_diff(a.to_f64(), b.to_f64()) == 0.0);
}

// Oracle of cross_entropy_stats and cross_entropy_backward for one shard.
struct CrossEntropyRef {
  std::vector<double> lse, target_logit, dlogits;
};

CrossEntropyRef cross_entropy_oracle(const std::vector<double>& x, const std::vector<double>& t,
                                     const std::vector<double>& dloss,
                                     const std::vector<double>& global_lse, std::int64_t N,
                                     std::int64_t Vl, std::int64_t start) {
  CrossEntropyRef r{std::vector<double>(N, 0.0), std::vector<double>(N, 0.0),
                    std::vector<double>(static_cast<std::size_t>(N * Vl), 0.0)};
  for (std::int64_t n = 0; n < N; ++n) {
    if (t[n] < 0) continue;
    double m = -INFINITY, s = 0;
    for (std::int64_t v = 0; v < Vl; ++v) m = std::max(m, x[n * Vl + v]);
    for (std::int64_t v = 0; v < Vl; ++v) s += std::exp(x[n * Vl + v] - m);
    r.lse[n] = m + std::log(s);
    const std::int64_t local = static_cast<std::int64_t>(t[n]) - start;
    if (local >= 0 && local < Vl) r.target_logit[n] = x[n * Vl + local];
    for (std::int64_t v = 0; v < Vl; ++v) {
      r.dlogits[n * Vl + v] =
          dloss[n] * (std::exp(x[n * Vl + v] - global_lse[n]) - (v == local ? 1.0 : 0.0));
    }
  }
  return r;
}

TEST_CASE("cross_entropy stats and backward over vocabulary shards", "[ops][cross_entropy]") {
  CpuBackend backend(2);
  std::uint64_t seed = 8000;
  for (DType dt : kDtypes) {
    for (std::int64_t N : {1, 7, 200}) {
      for (std::int64_t V : {1, 13, 1031}) {
        CAPTURE(dtype_name(dt), N, V);
        // Large logits: an unstabilised log-sum-exp overflows in f32.
        HostTensor logits = random_tensor(dt, Shape{N, V}, ++seed, -30.0, 100.0);
        HostTensor targets = random_ids(N, V, ++seed);
        std::vector<double> vt = targets.to_f64();
        if (N > 1) vt[1] = -1;  // an ignored position
        if (N > 3) vt[3] = -100;
        targets.from_f64(vt);
        HostTensor dloss = random_tensor(dt, Shape{N}, ++seed);
        const auto vx = logits.to_f64(), vdl = dloss.to_f64();
        // Full vocabulary, then the same logits split into two shards whose lse are combined.
        const std::int64_t split = V / 2;
        const std::int64_t shard_start[] = {0, 0, split}, shard_len[] = {V, split, V - split};
        const CrossEntropyRef full =
            cross_entropy_oracle(vx, vt, vdl, std::vector<double>(N, 0), N, V, 0);
        for (int s = 0; s < 3; ++s) {
          const std::int64_t start = shard_start[s], Vl = shard_len[s];
          if (Vl == 0) continue;
          CAPTURE(start, Vl);
          HostTensor shard(dt, Shape{N, Vl});
          std::vector<double> vs(static_cast<std::size_t>(N * Vl));
          for (std::int64_t n = 0; n < N; ++n) {
            for (std::int64_t v = 0; v < Vl; ++v) vs[n * Vl + v] = vx[n * V + start + v];
          }
          shard.from_f64(vs);
          const CrossEntropyRef ref = cross_entropy_oracle(vs, vt, vdl, full.lse, N, Vl, start);
          HostTensor lse = poisoned_tensor(stat_dtype(dt), Shape{N});
          HostTensor tl = poisoned_tensor(stat_dtype(dt), Shape{N});
          backend.cross_entropy_stats(shard, targets, start, lse, tl);
          CHECK(rel_error(lse.to_f64(), ref.lse) <= op_bound(dt));
          CHECK(max_abs_diff(tl.to_f64(), ref.target_logit) == 0.0);  // a copy is exact
          // The backward takes the GLOBAL lse (here the oracle's, rounded to the stat dtype).
          HostTensor glse(stat_dtype(dt), Shape{N});
          glse.from_f64(full.lse);
          const CrossEntropyRef ref_g =
              cross_entropy_oracle(vs, vt, vdl, glse.to_f64(), N, Vl, start);
          HostTensor dx = poisoned_tensor(dt, Shape{N, Vl});
          backend.cross_entropy_backward(shard, targets, start, glse, dloss, dx);
          CHECK(rel_error(dx.to_f64(), ref_g.dlogits) <= op_bound(dt));
          const auto vdx = dx.to_f64();
          std::int64_t nonzero = 0;  // ignored rows are exactly zero
          for (std::int64_t n = 0; n < N; ++n) {
            if (vt[n] >= 0) continue;
            for (std::int64_t v = 0; v < Vl; ++v) nonzero += vdx[n * Vl + v] != 0.0;
          }
          CHECK(nonzero == 0);
        }
      }
    }
  }
}

TEST_CASE("cross_entropy backward matches finite differences of the loss (f64)",
          "[ops][cross_entropy][grad]") {
  CpuBackend backend(1);
  const std::int64_t N = 4, V = 11;
  HostTensor logits = random_tensor(DType::f64, Shape{N, V}, 8100, -3.0, 3.0);
  HostTensor targets = random_ids(N, V, 8101);
  std::vector<double> vt = targets.to_f64();
  vt[2] = -1;
  targets.from_f64(vt);
  HostTensor dloss = random_tensor(DType::f64, Shape{N}, 8102);
  HostTensor lse(DType::f64, Shape{N}), tl(DType::f64, Shape{N});
  // loss = Σ_n dloss_n · (lse_n − target_logit_n)
  auto loss = [&] {
    backend.cross_entropy_stats(logits, targets, 0, lse, tl);
    const auto a = lse.to_f64(), b = tl.to_f64(), w = dloss.to_f64();
    double s = 0;
    for (std::int64_t n = 0; n < N; ++n) s += w[n] * (a[n] - b[n]);
    return s;
  };
  const double h = 1e-5;
  std::vector<double> v = logits.to_f64(), numeric(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + h;
    logits.from_f64(v);
    const double lp = loss();
    v[i] = keep - h;
    logits.from_f64(v);
    const double lm = loss();
    v[i] = keep;
    numeric[i] = (lp - lm) / (2 * h);
  }
  logits.from_f64(v);
  backend.cross_entropy_stats(logits, targets, 0, lse, tl);
  HostTensor dx = poisoned_tensor(DType::f64, Shape{N, V});
  backend.cross_entropy_backward(logits, targets, 0, lse, dloss, dx);
  CHECK(rel_error(dx.to_f64(), numeric) <= kFiniteDifferenceBound);
}

}  // namespace
}  // namespace linmoe::testing
