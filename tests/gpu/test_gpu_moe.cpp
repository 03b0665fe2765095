// The CUDA backend's MoE routing and permutation ops (MODEL.md 4) against the CPU backend on the
// same inputs: the integer outputs (top-k ids, keep, order, counts, A) must be equal, the float
// ones within tolerance(dtype) of gpu_compare.h (fp32 1e-4, bf16 1e-2, f64 1e-12, relative to the
// largest reference value). Inputs are tie-heavy (exact ties between experts and between tokens),
// hold NaN, +0 and −0 probabilities, sizes are awkward (N not a multiple of any block, E > 32,
// D odd and above the block width), and every output is poisoned before the call.
// bf16: the CPU backend has no bf16, so the inputs are rounded to bf16, the CPU runs on those
// values in f32 and the GPU on the same values stored as bf16.
// Also the experts' grouped GEMMs (forward, input and weight gradients) against the CPU.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/test_util.h"
#include "gpu/gpu_compare.h"
#include "kernels/moe_capacity.h"
#include "moe/moe_testing.h"

namespace linmoe::testing {
namespace {

using i64 = std::int64_t;

constexpr DType kFloatTypes[] = {DType::f32, DType::bf16, DType::f64};
const double kNaN = std::numeric_limits<double>::quiet_NaN();

// The CPU backend's dtype for a GPU dtype: bf16 runs as f32 on the CPU.
DType host_dtype(DType dt) {
  return dt == DType::f64 ? DType::f64 : DType::f32;
}

// ---- device tensors, with empty ones ([0, D] when every assignment is dropped) handled here so
// the tests never ask the backends to copy zero bytes.
Tensor to_device(GpuPair& g, const HostTensor& h, DType dt) {
  if (h.t().numel() == 0) return Tensor(nullptr, dt, Device::cuda, h.t().shape);
  return g.upload_as(h, dt);
}
Tensor device_poisoned(GpuPair& g, DType dt, const Shape& s) {
  if (s.numel() == 0) return Tensor(nullptr, dt, Device::cuda, s);
  return g.gpu_empty(dt, s);
}
std::vector<double> device_values(GpuPair& g, const Tensor& t) {
  if (t.numel() == 0) return {};
  return g.values(t);
}

std::vector<i64> as_ints(const std::vector<double>& v) {
  std::vector<i64> r;
  r.reserve(v.size());
  for (double x : v) r.push_back(static_cast<i64>(x));
  return r;
}

// A host float tensor of dtype host_dtype(dt) with values v, rounded to bf16 when dt is bf16.
HostTensor host_values(DType dt, const Shape& s, const std::vector<double>& v) {
  HostTensor h = float_tensor(host_dtype(dt), s, v);
  if (dt == DType::bf16) round_to_bf16(h.t());
  return h;
}

HostTensor host_random(DType dt, const Shape& s, std::uint64_t seed) {
  HostTensor h(host_dtype(dt), s);
  fill_uniform(h.t(), seed, -1.0, 1.0);
  if (dt == DType::bf16 && h.t().numel() > 0) round_to_bf16(h.t());
  return h;
}

HostTensor clone(const HostTensor& h) {
  HostTensor c(h.t().dtype, h.t().shape);
  if (h.t().numel() > 0) std::memcpy(c.t().data, h.t().data, h.t().nbytes());
  return c;
}

// max_rel_error where both sides may hold NaN: the NaNs must sit at the same places.
double rel_error_with_nans(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  std::vector<double> fa, fb;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return INFINITY;
    if (std::isnan(a[i])) continue;
    fa.push_back(a[i]);
    fb.push_back(b[i]);
  }
  return max_rel_error(fa, fb);
}

// Router probabilities [N, E] (rows sum to 1). variant 0: softmax of uniform logits; 1: logits
// on a coarse grid, so equal probabilities within a row and across tokens; 2: like 1 with NaN
// entries, +0 and −0 entries (equal: the tie goes to the index) and ties at the top of a row.
std::vector<double> random_probs(int N, int E, std::uint64_t seed, int variant) {
  HostTensor logits(DType::f64, Shape{N, E});
  fill_uniform(logits.t(), seed, -2.0, 2.0);
  std::vector<double> l = logits.to_f64(), p(l.size());
  for (int n = 0; n < N; ++n) {
    double m = -1e300, sum = 0;
    for (int e = 0; e < E; ++e) {
      double& v = l[static_cast<std::size_t>(n * E + e)];
      if (variant >= 1) v = std::floor(v);  // 4 values: many exact ties
      m = std::max(m, v);
    }
    for (int e = 0; e < E; ++e) {
      sum += p[static_cast<std::size_t>(n * E + e)] = std::exp(l[n * E + e] - m);
    }
    for (int e = 0; e < E; ++e) p[static_cast<std::size_t>(n * E + e)] /= sum;
    if (variant == 2) {
      double* row = p.data() + static_cast<std::size_t>(n) * E;
      if (n % 5 == 0) row[(n / 5) % E] = kNaN;
      if (n % 7 == 1) {
        row[E - 1] = -0.0;
        row[0] = 0.0;
      }
      if (n % 3 == 2 && E >= 3) row[E / 2] = row[E - 2] = 0.75;  // a tie at the top
    }
  }
  return p;
}

// The CPU backend's top-k of f64 probabilities: valid routes for the capacity and plan tests.
HostTensor cpu_routes(GpuPair& g, const std::vector<double>& p, int N, int E, int k) {
  HostTensor probs = float_tensor(DType::f64, Shape{N, E}, p);
  HostTensor ids(DType::i32, Shape{N, k}), w(DType::f64, Shape{N, k});
  g.cpu->moe_topk(probs, k, false, ids, w);
  return ids;
}

TEST_CASE("gpu moe_topk equals the CPU backend: ties, NaN, signed zeros, k and E sweeps",
          "[gpu][moe][topk]") {
  auto g = gpu_pair();
  if (!g) return;
  struct Case {
    int N, E, k;
  };
  const Case cases[] = {{37, 4, 1},    {37, 4, 2},   {37, 4, 4},   {1000, 8, 2},
                        {1000, 8, 3},  {37, 13, 3},  {37, 13, 13}, {203, 40, 8},
                        {5003, 64, 6}, {64, 160, 8}, {1, 3, 2},    {77, 33, 33}};
  std::uint64_t seed = 1000;
  for (DType dt : kFloatTypes) {
    for (const Case& c : cases) {
      for (int variant : {0, 1, 2}) {
        const std::vector<double> p = random_probs(c.N, c.E, ++seed, variant);
        HostTensor probs = host_values(dt, Shape{c.N, c.E}, p);
        const Tensor probs_g = to_device(*g, probs, dt);
        for (bool renormalize : {false, true}) {
          CAPTURE(dtype_name(dt), c.N, c.E, c.k, variant, renormalize);
          HostTensor ids(DType::i32, Shape{c.N, c.k}), w(host_dtype(dt), Shape{c.N, c.k});
          poison(ids.t());
          poison(w.t());
          g->cpu->moe_topk(probs, c.k, renormalize, ids, w);
          const Tensor ids_g = device_poisoned(*g, DType::i32, Shape{c.N, c.k});
          const Tensor w_g = device_poisoned(*g, dt, Shape{c.N, c.k});
          g->gpu->moe_topk(probs_g, c.k, renormalize, ids_g, w_g);
          CHECK(as_ints(device_values(*g, ids_g)) == as_ints(ids.to_f64()));
          CHECK(rel_error_with_nans(device_values(*g, w_g), w.to_f64()) <= tolerance(dt));
        }
      }
    }
  }
}

TEST_CASE("gpu moe_capacity_keep and moe_dispatch_plan equal the CPU backend",
          "[gpu][moe][capacity][plan]") {
  auto g = gpu_pair();
  if (!g) return;
  struct Case {
    int N, E, k;
  };
  // Case {3, 13, 2} leaves experts empty; {6000, 64, 2} spans many radix-sort tiles.
  const Case cases[] = {{37, 4, 1}, {37, 4, 2},    {101, 8, 2},   {101, 8, 3}, {37, 13, 3},
                        {3, 13, 2}, {1000, 13, 2}, {6000, 64, 2}, {1, 4, 4},   {129, 40, 8}};
  std::uint64_t seed = 2000;
  for (DType dt : kFloatTypes) {
    for (const Case& c : cases) {
      for (int variant : {0, 1, 2}) {
        // Routes: the top-k of the probabilities (distinct experts per token), or random ids
        // (a token may pick one expert twice: its two assignments tie, the lower index wins).
        for (bool random_ids : {false, true}) {
          const std::vector<double> p = random_probs(c.N, c.E, ++seed, variant);
          HostTensor probs = host_values(dt, Shape{c.N, c.E}, p);
          const Tensor probs_g = to_device(*g, probs, dt);
          HostTensor ids = cpu_routes(*g, p, c.N, c.E, c.k);
          if (random_ids) fill_ints(ids.t(), ++seed, c.E);
          const Tensor ids_g = to_device(*g, ids, DType::i32);
          const i64 NK = i64{c.N} * c.k;
          for (i64 capacity : {i64{0}, i64{1}, moe_capacity("1.0", c.N, c.k, c.E),
                               moe_capacity("1.25", c.N, c.k, c.E), NK - 1, NK, NK + 5}) {
            CAPTURE(dtype_name(dt), c.N, c.E, c.k, variant, random_ids, capacity);
            HostTensor keep(DType::i32, Shape{c.N, c.k});
            poison(keep.t());
            g->cpu->moe_capacity_keep(probs, ids, capacity, keep);
            const Tensor keep_g = device_poisoned(*g, DType::i32, Shape{c.N, c.k});
            g->gpu->moe_capacity_keep(probs_g, ids_g, capacity, keep_g);
            CHECK(as_ints(device_values(*g, keep_g)) == as_ints(keep.to_f64()));

            // The plan from the same keep (the CPU's, so a keep mismatch above is not repeated
            // here), and with keep undefined (all kept).
            const Tensor keep_in = to_device(*g, keep, DType::i32);
            for (bool with_keep : {true, false}) {
              CAPTURE(with_keep);
              HostTensor order(DType::i32, Shape{NK}), counts(DType::i64, Shape{c.E});
              poison(order.t());
              poison(counts.t());
              const i64 A = g->cpu->moe_dispatch_plan(ids, with_keep ? keep.t() : Tensor{}, c.E,
                                                      order, counts);
              const Tensor order_g = device_poisoned(*g, DType::i32, Shape{NK});
              const Tensor counts_g = device_poisoned(*g, DType::i64, Shape{c.E});
              const i64 A_g = g->gpu->moe_dispatch_plan(ids_g, with_keep ? keep_in : Tensor{}, c.E,
                                                        order_g, counts_g);
              CHECK(A_g == A);
              CHECK(as_ints(device_values(*g, order_g)) == as_ints(order.to_f64()));
              CHECK(as_ints(device_values(*g, counts_g)) == as_ints(counts.to_f64()));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("gpu moe_dispatch_plan: all dropped, random keep, no tokens", "[gpu][moe][plan]") {
  auto g = gpu_pair();
  if (!g) return;
  const int N = 45, E = 8, k = 3, NK = N * k;
  HostTensor ids(DType::i32, Shape{N, k});
  fill_ints(ids.t(), 7, E);
  const Tensor ids_g = to_device(*g, ids, DType::i32);
  for (int keep_kind : {0, 1}) {  // 0: every assignment dropped; 1: random 0/1
    CAPTURE(keep_kind);
    HostTensor keep(DType::i32, Shape{N, k});
    if (keep_kind == 0) {
      for (int a = 0; a < NK; ++a) keep.data<std::int32_t>()[a] = 0;
    } else {
      fill_ints(keep.t(), 8, 2);
    }
    HostTensor order(DType::i32, Shape{NK}), counts(DType::i64, Shape{E});
    poison(order.t());
    poison(counts.t());
    const i64 A = g->cpu->moe_dispatch_plan(ids, keep, E, order, counts);
    const Tensor order_g = device_poisoned(*g, DType::i32, Shape{NK});
    const Tensor counts_g = device_poisoned(*g, DType::i64, Shape{E});
    CHECK(g->gpu->moe_dispatch_plan(ids_g, to_device(*g, keep, DType::i32), E, order_g, counts_g) ==
          A);
    if (keep_kind == 0) CHECK(A == 0);
    CHECK(as_ints(device_values(*g, order_g)) == as_ints(order.to_f64()));
    CHECK(as_ints(device_values(*g, counts_g)) == as_ints(counts.to_f64()));
  }
  // No tokens: A = 0 and zero counts (the counts are still written).
  const Tensor counts_g = device_poisoned(*g, DType::i64, Shape{E});
  CHECK(g->gpu->moe_dispatch_plan(Tensor(nullptr, DType::i32, Device::cuda, Shape{0, k}), Tensor{},
                                  E, Tensor(nullptr, DType::i32, Device::cuda, Shape{0}),
                                  counts_g) == 0);
  CHECK(device_values(*g, counts_g) == std::vector<double>(E, 0.0));
}

TEST_CASE("gpu moe permutation ops equal the CPU backend, deterministically",
          "[gpu][moe][permute]") {
  auto g = gpu_pair();
  if (!g) return;
  struct Case {
    int N, E, k, D;
  };
  // D = 7, 1, 257: the element-wise row copy (257 > one block's threads); D = 64, 96, 200: rows
  // of whole 16-byte vectors in every dtype.
  const Case cases[] = {{37, 4, 1, 7},     {37, 8, 2, 64}, {203, 13, 3, 96},
                        {1000, 8, 2, 257}, {5, 4, 3, 1},   {64, 13, 2, 200}};
  std::uint64_t seed = 3000;
  for (DType dt : kFloatTypes) {
    const double tol = tolerance(dt);
    for (const Case& c : cases) {
      const int N = c.N, k = c.k, D = c.D;
      const i64 NK = i64{N} * k;
      const std::vector<double> p = random_probs(N, c.E, ++seed, 1);
      HostTensor probs = float_tensor(DType::f64, Shape{N, c.E}, p);
      HostTensor ids = cpu_routes(*g, p, N, c.E, k);
      // Capacities that drop whole tokens (0 rows at capacity 0), some slots, and nothing.
      for (i64 capacity : {i64{0}, i64{1}, moe_capacity("1.0", N, k, c.E), NK}) {
        CAPTURE(dtype_name(dt), N, c.E, k, D, capacity);
        HostTensor keep(DType::i32, Shape{N, k});
        g->cpu->moe_capacity_keep(probs, ids, capacity, keep);
        HostTensor order(DType::i32, Shape{NK}), counts(DType::i64, Shape{c.E});
        const i64 A = g->cpu->moe_dispatch_plan(ids, keep, c.E, order, counts);
        const Tensor order_g = to_device(*g, order, DType::i32);

        // Weights: dropped slots hold NaN, which no op may read (MODEL.md 4).
        std::vector<double> wv = host_random(DType::f64, Shape{N, k}, ++seed).to_f64();
        for (i64 a = 0; a < NK; ++a) {
          if (keep.data<std::int32_t>()[a] == 0) wv[static_cast<std::size_t>(a)] = kNaN;
        }
        HostTensor w = host_values(dt, Shape{N, k}, wv);
        const Tensor w_g = to_device(*g, w, dt);

        // moe_permute: a copy, so equal.
        HostTensor x = host_random(dt, Shape{N, D}, ++seed);
        HostTensor xp(host_dtype(dt), Shape{A, D});
        g->cpu->moe_permute(x, order, k, xp);
        const Tensor xp_g = device_poisoned(*g, dt, Shape{A, D});
        g->gpu->moe_permute(to_device(*g, x, dt), order_g, k, xp_g);
        CHECK(device_values(*g, xp_g) == xp.to_f64());

        // moe_permute_backward ACCUMULATES into dx; twice from the same dx, bit-identical.
        HostTensor dxp = host_random(dt, Shape{A, D}, ++seed);
        HostTensor dx0 = host_random(dt, Shape{N, D}, ++seed);
        HostTensor dx = clone(dx0);
        g->cpu->moe_permute_backward(dxp, order, k, dx);
        const Tensor dxp_g = to_device(*g, dxp, dt);
        const Tensor dx_g = to_device(*g, dx0, dt), dx_g2 = to_device(*g, dx0, dt);
        g->gpu->moe_permute_backward(dxp_g, order_g, k, dx_g);
        g->gpu->moe_permute_backward(dxp_g, order_g, k, dx_g2);
        const std::vector<double> dx_got = device_values(*g, dx_g);
        CHECK(max_rel_error(dx_got, dx.to_f64()) <= tol);
        CHECK(device_values(*g, dx_g2) == dx_got);

        // moe_unpermute, overwriting (into NaN) and accumulating (onto random values).
        HostTensor y = host_random(dt, Shape{A, D}, ++seed);
        const Tensor y_g = to_device(*g, y, dt);
        for (bool accumulate : {false, true}) {
          CAPTURE(accumulate);
          HostTensor out0 = host_random(dt, Shape{N, D}, ++seed);
          if (!accumulate) poison(out0.t());
          HostTensor out = clone(out0);
          g->cpu->moe_unpermute(y, order, w, out, accumulate);
          const Tensor out_g = to_device(*g, out0, dt), out_g2 = to_device(*g, out0, dt);
          g->gpu->moe_unpermute(y_g, order_g, w_g, out_g, accumulate);
          g->gpu->moe_unpermute(y_g, order_g, w_g, out_g2, accumulate);
          const std::vector<double> got = device_values(*g, out_g);
          CHECK(max_rel_error(got, out.to_f64()) <= tol);
          CHECK(device_values(*g, out_g2) == got);
        }

        // moe_unpermute_backward, with and without d_weights.
        HostTensor dout = host_random(dt, Shape{N, D}, ++seed);
        const Tensor dout_g = to_device(*g, dout, dt);
        HostTensor dy(host_dtype(dt), Shape{A, D}), dw(host_dtype(dt), Shape{N, k});
        poison(dy.t());
        poison(dw.t());
        g->cpu->moe_unpermute_backward(dout, y, order, w, dy, dw);
        for (bool want_dw : {true, false}) {
          CAPTURE(want_dw);
          const Tensor dy_g = device_poisoned(*g, dt, Shape{A, D});
          const Tensor dw_g = want_dw ? device_poisoned(*g, dt, Shape{N, k}) : Tensor{};
          g->gpu->moe_unpermute_backward(dout_g, y_g, order_g, w_g, dy_g, dw_g);
          CHECK(max_rel_error(device_values(*g, dy_g), dy.to_f64()) <= tol);
          if (want_dw) {
            const std::vector<double> dw_got = device_values(*g, dw_g);
            CHECK(max_rel_error(dw_got, dw.to_f64()) <= tol);
            // Deterministic: the block reduction runs in a fixed order.
            const Tensor dy_g2 = device_poisoned(*g, dt, Shape{A, D});
            const Tensor dw_g2 = device_poisoned(*g, dt, Shape{N, k});
            g->gpu->moe_unpermute_backward(dout_g, y_g, order_g, w_g, dy_g2, dw_g2);
            CHECK(device_values(*g, dw_g2) == dw_got);
          }
        }
      }
    }
  }
}

// The experts' grouped GEMMs (kernels/ops.h): forward c_g = a_g · b[g]ᵀ, input gradient
// c_g = a_g · b[g] and weight gradient c[g] = a_gᵀ · b_g, against the CPU backend on the same
// inputs. Empty groups first, inside and last; one group; no rows at all (the weight gradient
// then only scales by beta); b and a as column slices of wider tensors (strided); beta = 0 over
// NaN-poisoned outputs and beta = 1 accumulating into random values.
TEST_CASE("gpu grouped_gemm and grouped_gemm_wgrad equal the CPU backend",
          "[gpu][moe][grouped_gemm]") {
  auto g = gpu_pair();
  if (!g) return;
  const std::vector<std::vector<i64>> layouts = {
      {0, 5, 0, 17, 1, 130, 0}, {37}, {0, 0}, {64, 64, 64}};
  const i64 K = 72, N = 40;
  std::uint64_t seed = 9000;
  for (DType dt : kFloatTypes) {
    const double tol = tolerance(dt);
    for (const std::vector<i64>& groups : layouts) {
      const i64 G = static_cast<i64>(groups.size());
      i64 R = 0;
      for (i64 n : groups) R += n;
      // b: [G, N, K], a column slice of [G, N, K + 3]; read as b[g]ᵀ (forward) or b[g] (dgrad).
      HostTensor b_big = host_random(dt, Shape{G, N, K + 3}, ++seed);
      const Tensor b = b_big.t().slice(2, 1, K), b_g = to_device(*g, b_big, dt).slice(2, 1, K);
      // wgrad's a: [R, K], a column slice of [R, K + 2]; its b: [R, N].
      HostTensor x_big = host_random(dt, Shape{R, K + 2}, ++seed);
      HostTensor dy = host_random(dt, Shape{R, N}, ++seed);
      const Tensor x = x_big.t().slice(1, 2, K), x_g = to_device(*g, x_big, dt).slice(1, 2, K);
      const Tensor dy_g = to_device(*g, dy, dt);
      for (int kind = 0; kind < 3; ++kind) {  // forward, dgrad, wgrad
        for (double beta : {0.0, 1.0}) {
          CAPTURE(dtype_name(dt), groups, kind, beta);
          const Shape sc = kind == 0 ? Shape{R, N} : kind == 1 ? Shape{R, K} : Shape{G, K, N};
          HostTensor c = host_random(dt, sc, ++seed);
          if (beta == 0.0) poison(c.t());
          const Tensor c_g = to_device(*g, c, dt);  // the same start values (or NaN) on the GPU
          if (kind == 0) {
            g->cpu->grouped_gemm(x, b, true, groups, c, 1.0, beta);
            g->gpu->grouped_gemm(x_g, b_g, true, groups, c_g, 1.0, beta);
          } else if (kind == 1) {
            g->cpu->grouped_gemm(dy, b, false, groups, c, 1.0, beta);
            g->gpu->grouped_gemm(dy_g, b_g, false, groups, c_g, 1.0, beta);
          } else {
            g->cpu->grouped_gemm_wgrad(x, dy, groups, c, 1.0, beta);
            g->gpu->grouped_gemm_wgrad(x_g, dy_g, groups, c_g, 1.0, beta);
          }
          CHECK(max_rel_error(device_values(*g, c_g), c.to_f64()) <= tol);
        }
      }
    }
  }
}

}  // namespace
}  // namespace linmoe::testing
