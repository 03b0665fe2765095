// The grouped GEMMs of the CPU backend against an fp64 oracle: the experts' forward
// (c_g = a_g · b[g]ᵀ), input gradient (c_g = a_g · b[g]) and weight gradient
// (c[g] = a_gᵀ · b_g), with empty groups anywhere, one group, sizes on both sides of the GEMM's
// blocking, strided views, alpha/beta, NaN-poisoned outputs, bf16 through make_cpu_backend, and
// equality with a loop of gemm calls on the groups' slices.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

using i64 = std::int64_t;
using Groups = std::vector<i64>;

i64 total(const Groups& g) {
  i64 s = 0;
  for (i64 n : g) s += n;
  return s;
}

// Element (i, j) of a 2-D view or (g, i, j) of a 3-D one, as a double.
double at(const Tensor& t, i64 g, i64 i, i64 j) {
  const i64 off = (t.ndim() == 3 ? g * t.stride(0) : 0) + i * t.stride(-2) + j * t.stride(-1);
  switch (t.dtype) {
    case DType::f64:
      return static_cast<const double*>(t.data)[off];
    case DType::f32:
      return static_cast<const float*>(t.data)[off];
    default:
      return bf16_to_f32(static_cast<const bf16*>(t.data)[off]);
  }
}

// Every element of a 2-D or 3-D view, row-major.
std::vector<double> values(const Tensor& t) {
  const i64 G = t.ndim() == 3 ? t.size(0) : 1;
  std::vector<double> v;
  for (i64 g = 0; g < G; ++g) {
    for (i64 i = 0; i < t.size(-2); ++i) {
      for (i64 j = 0; j < t.size(-1); ++j) v.push_back(at(t, g, i, j));
    }
  }
  return v;
}

// The contracts in fp64 (c0: c's values before the call; not read when beta == 0).
std::vector<double> grouped_oracle(const Tensor& a, const Tensor& b, bool trans_b,
                                   const Groups& groups, const std::vector<double>& c0,
                                   double alpha, double beta) {
  const i64 K = a.size(1), N = trans_b ? b.size(1) : b.size(2);
  std::vector<double> out(c0.size());
  i64 row = 0;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    for (i64 r = row; r < row + groups[g]; ++r) {
      for (i64 j = 0; j < N; ++j) {
        double s = 0;
        for (i64 k = 0; k < K; ++k) {
          const i64 gi = static_cast<i64>(g);
          s += at(a, 0, r, k) * (trans_b ? at(b, gi, j, k) : at(b, gi, k, j));
        }
        const std::size_t idx = static_cast<std::size_t>(r * N + j);
        out[idx] = alpha * s + (beta == 0 ? 0.0 : beta * c0[idx]);
      }
    }
    row += groups[g];
  }
  return out;
}

std::vector<double> wgrad_oracle(const Tensor& a, const Tensor& b, const Groups& groups,
                                 const std::vector<double>& c0, double alpha, double beta) {
  const i64 M = a.size(1), N = b.size(1);
  std::vector<double> out(c0.size());
  i64 row = 0;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    for (i64 i = 0; i < M; ++i) {
      for (i64 j = 0; j < N; ++j) {
        double s = 0;
        for (i64 r = row; r < row + groups[g]; ++r) s += at(a, 0, r, i) * at(b, 0, r, j);
        const std::size_t idx = static_cast<std::size_t>((static_cast<i64>(g) * M + i) * N + j);
        out[idx] = alpha * s + (beta == 0 ? 0.0 : beta * c0[idx]);
      }
    }
    row += groups[g];
  }
  return out;
}

// A host tensor of shape s, or (strided) a view into a larger one: one extra leading group,
// 2 extra rows and 3 extra columns, so row and group strides differ from the view's sizes.
struct Operand {
  HostTensor big;
  Tensor view;
};
Operand make_operand(DType dt, const Shape& s, bool strided, std::uint64_t seed, bool poisoned) {
  Shape p = s;
  if (strided) {
    p[s.ndim() - 2] += 2;
    p[s.ndim() - 1] += 3;
    if (s.ndim() == 3) p[0] += 1;
  }
  Operand o{poisoned ? poisoned_tensor(dt, p) : random_tensor(dt, p, seed), Tensor{}};
  o.view = o.big.t();
  if (strided) {
    o.view = o.view.slice(s.ndim() - 2, 1, s[s.ndim() - 2]).slice(s.ndim() - 1, 2, s[s.ndim() - 1]);
    if (s.ndim() == 3) o.view = o.view.slice(0, 1, s[0]);
  }
  return o;
}

double bound(DType dt) {
  return dt == DType::bf16 ? 1e-2 : op_bound(dt);
}

// Marks the elements of `view` inside the flat storage of `big` (0 inside, 1 outside).
std::vector<int> outside_mask(const Operand& o) {
  std::vector<int> mask(static_cast<std::size_t>(o.big.t().numel()), 1);
  const i64 base =
      (static_cast<const char*>(o.view.data) - static_cast<const char*>(o.big.t().data)) /
      static_cast<i64>(dtype_size(o.view.dtype));
  const i64 G = o.view.ndim() == 3 ? o.view.size(0) : 1;
  for (i64 g = 0; g < G; ++g) {
    for (i64 i = 0; i < o.view.size(-2); ++i) {
      for (i64 j = 0; j < o.view.size(-1); ++j) {
        const i64 off = base + (o.view.ndim() == 3 ? g * o.view.stride(0) : 0) +
                        i * o.view.stride(-2) + j * o.view.stride(-1);
        mask[static_cast<std::size_t>(off)] = 0;
      }
    }
  }
  return mask;
}

enum class Product { forward, dgrad, wgrad };

struct Case {
  Product product;
  Groups groups;
  i64 K, N;  // forward/dgrad: a [R, K], c [R, N]; wgrad: a [R, K], b [R, N], c [G, K, N]
  double alpha, beta;
  bool strided;
};

// Runs one case on `backend` and checks it against the oracle (and, for strided views, that
// nothing around c's view changed).
void check_case(Backend& backend, DType dt, const Case& k, std::uint64_t seed) {
  const i64 G = static_cast<i64>(k.groups.size()), R = total(k.groups);
  const bool wgrad = k.product == Product::wgrad, trans_b = k.product == Product::forward;
  CAPTURE(dtype_name(dt), static_cast<int>(k.product), k.groups, k.K, k.N, k.alpha, k.beta,
          k.strided, backend.name());
  const Shape sa{R, k.K};
  const Shape sb = wgrad ? Shape{R, k.N} : trans_b ? Shape{G, k.N, k.K} : Shape{G, k.K, k.N};
  const Shape sc = wgrad ? Shape{G, k.K, k.N} : Shape{R, k.N};
  Operand a = make_operand(dt, sa, k.strided, seed, false);
  Operand b = make_operand(dt, sb, k.strided, seed + 1, false);
  Operand c = make_operand(dt, sc, k.strided, seed + 2, k.beta == 0);
  const std::vector<double> c0 = values(c.view), big0 = c.big.to_f64();
  const std::vector<double> ref =
      wgrad ? wgrad_oracle(a.view, b.view, k.groups, c0, k.alpha, k.beta)
            : grouped_oracle(a.view, b.view, trans_b, k.groups, c0, k.alpha, k.beta);
  if (wgrad) {
    backend.grouped_gemm_wgrad(a.view, b.view, k.groups, c.view, k.alpha, k.beta);
  } else {
    backend.grouped_gemm(a.view, b.view, trans_b, k.groups, c.view, k.alpha, k.beta);
  }
  const std::vector<double> got = values(c.view);
  const double err = rel_error(got, ref);
  CAPTURE(err);
  CHECK(err <= bound(dt));
  if (wgrad && k.beta == 1.0) {  // empty groups keep their gradient bit for bit
    i64 g = 0;
    for (i64 n : k.groups) {
      if (n == 0) {
        for (i64 e = 0; e < k.K * k.N; ++e) {
          const std::size_t idx = static_cast<std::size_t>(g * k.K * k.N + e);
          CHECK(got[idx] == c0[idx]);
        }
      }
      ++g;
    }
  }
  if (k.strided) {  // nothing outside the view changed (NaN poison included)
    const std::vector<double> big1 = c.big.to_f64();
    const std::vector<int> outside = outside_mask(c);
    i64 changed = 0;
    for (std::size_t i = 0; i < big1.size(); ++i) {
      const bool same = (std::isnan(big1[i]) && std::isnan(big0[i])) || big1[i] == big0[i];
      if (outside[i] && !same) ++changed;
    }
    CHECK(changed == 0);
  }
}

// Group layouts: empty groups first, inside and last; one group; several that are all empty;
// groups on both sides of the few-rows path (32) and of the K/M blocking (256, 240).
const Groups kLayouts[] = {
    {0, 5, 0, 17, 1, 40, 0}, {37}, {0, 0, 0}, {3, 300, 0, 33}, {1, 1, 1, 1, 1, 1, 1, 1, 1}};
const DType kDtypes[] = {DType::f32, DType::f64};

TEST_CASE("grouped_gemm: forward and input gradient against the oracle", "[ops][grouped_gemm]") {
  CpuBackend backend(2);
  std::uint64_t seed = 1000;
  for (DType dt : kDtypes) {
    for (const Groups& g : kLayouts) {
      for (Product p : {Product::forward, Product::dgrad}) {
        check_case(backend, dt, Case{p, g, 19, 23, 1.0, 0.0, false}, seed += 3);
        check_case(backend, dt, Case{p, g, 70, 5, 1.0, 0.0, false}, seed += 3);
        check_case(backend, dt, Case{p, g, 33, 41, -0.5, 0.5, true}, seed += 3);
        check_case(backend, dt, Case{p, g, 8, 3, 1.0, 1.0, true}, seed += 3);
      }
    }
    // K past the depth blocking, and K == 0 (c_g = beta · c_g).
    check_case(backend, dt, Case{Product::forward, {40, 0, 9}, 300, 17, 1.0, 0.0, false},
               seed += 3);
    check_case(backend, dt, Case{Product::dgrad, {40, 0, 9}, 0, 17, 1.0, 0.5, false}, seed += 3);
    check_case(backend, dt, Case{Product::forward, {40, 0, 9}, 0, 17, 1.0, 0.0, false}, seed += 3);
  }
}

TEST_CASE("grouped_gemm_wgrad: weight gradient against the oracle, empty groups keep theirs",
          "[ops][grouped_gemm]") {
  CpuBackend backend(2);
  std::uint64_t seed = 2000;
  for (DType dt : kDtypes) {
    for (const Groups& g : kLayouts) {
      check_case(backend, dt, Case{Product::wgrad, g, 19, 23, 1.0, 1.0, false}, seed += 3);
      check_case(backend, dt, Case{Product::wgrad, g, 40, 7, 1.0, 0.0, false}, seed += 3);
      check_case(backend, dt, Case{Product::wgrad, g, 13, 50, -0.5, 0.25, true}, seed += 3);
      check_case(backend, dt, Case{Product::wgrad, g, 5, 3, 1.0, 1.0, true}, seed += 3);
    }
  }
}

TEST_CASE("grouped_gemm: bf16 through make_cpu_backend within the bf16 bound",
          "[ops][grouped_gemm]") {
  std::unique_ptr<Backend> backend = make_cpu_backend(2);
  std::uint64_t seed = 3000;
  const Groups g{0, 5, 0, 17, 1, 40, 0};
  check_case(*backend, DType::bf16, Case{Product::forward, g, 64, 48, 1.0, 0.0, false}, seed += 3);
  check_case(*backend, DType::bf16, Case{Product::dgrad, g, 48, 64, 1.0, 1.0, true}, seed += 3);
  check_case(*backend, DType::bf16, Case{Product::wgrad, g, 48, 64, 1.0, 1.0, false}, seed += 3);
}

// Each group is exactly gemm on its slices (the contract), and the thread count changes nothing.
TEST_CASE("grouped_gemm equals a loop of gemm on the groups, for any thread count",
          "[ops][grouped_gemm]") {
  CpuBackend two(2), one(1);
  const Groups groups{0, 50, 3, 0, 260, 31};
  const i64 R = total(groups), G = static_cast<i64>(groups.size()), D = 45, F = 70;
  HostTensor x = random_tensor(DType::f32, Shape{R, D}, 1);
  HostTensor w = random_tensor(DType::f32, Shape{G, F, D}, 2);
  HostTensor dy = random_tensor(DType::f32, Shape{R, F}, 3);
  HostTensor y_loop(DType::f32, Shape{R, F}), dx_loop(DType::f32, Shape{R, D});
  HostTensor dw_loop = random_tensor(DType::f32, Shape{G, F, D}, 4);
  i64 row = 0;
  for (i64 g = 0; g < G; ++g) {
    const i64 n = groups[static_cast<std::size_t>(g)];
    if (n > 0) {
      two.gemm(x.t().slice(0, row, n), false, w.t().select(0, g), true, y_loop.t().slice(0, row, n),
               1.0, 0.0);
      two.gemm(dy.t().slice(0, row, n), false, w.t().select(0, g), false,
               dx_loop.t().slice(0, row, n), 1.0, 0.0);
      two.gemm(dy.t().slice(0, row, n), true, x.t().slice(0, row, n), false,
               dw_loop.t().select(0, g), 1.0, 1.0);
    }
    row += n;
  }
  for (CpuBackend* be : {&two, &one}) {
    CAPTURE(be->name());
    HostTensor y = poisoned_tensor(DType::f32, Shape{R, F});
    HostTensor dx = poisoned_tensor(DType::f32, Shape{R, D});
    HostTensor dw = random_tensor(DType::f32, Shape{G, F, D}, 4);
    be->grouped_gemm(x, w, true, groups, y, 1.0, 0.0);
    be->grouped_gemm(dy, w, false, groups, dx, 1.0, 0.0);
    be->grouped_gemm_wgrad(dy, x, groups, dw, 1.0, 1.0);
    CHECK(y.to_f64() == y_loop.to_f64());
    CHECK(dx.to_f64() == dx_loop.to_f64());
    CHECK(dw.to_f64() == dw_loop.to_f64());
  }
}

// A group must use its own matrix: with b[g] = (g + 1)·I every row of c is (g + 1) times its row
// of a, so a group read with another's matrix, or a row assigned to the wrong group, shows.
TEST_CASE("grouped_gemm uses each group's own matrix", "[ops][grouped_gemm]") {
  CpuBackend backend(2);
  const Groups groups{2, 0, 3, 1};
  const i64 R = total(groups), G = static_cast<i64>(groups.size()), D = 4;
  HostTensor x = random_tensor(DType::f64, Shape{R, D}, 7);
  HostTensor w(DType::f64, Shape{G, D, D});
  std::vector<double> wv(static_cast<std::size_t>(G * D * D), 0.0);
  for (i64 g = 0; g < G; ++g) {
    for (i64 i = 0; i < D; ++i) wv[static_cast<std::size_t>((g * D + i) * D + i)] = double(g + 1);
  }
  w.from_f64(wv);
  HostTensor y = poisoned_tensor(DType::f64, Shape{R, D});
  backend.grouped_gemm(x, w, true, groups, y, 1.0, 0.0);
  const std::vector<double> xv = x.to_f64(), yv = y.to_f64();
  const i64 group_of_row[] = {0, 0, 2, 2, 2, 3};
  for (i64 r = 0; r < R; ++r) {
    for (i64 j = 0; j < D; ++j) {
      const std::size_t idx = static_cast<std::size_t>(r * D + j);
      CHECK(yv[idx] == static_cast<double>(group_of_row[r] + 1) * xv[idx]);
    }
  }
}

TEST_CASE("grouped_gemm rejects bad groups and shapes loudly", "[ops][grouped_gemm][checks]") {
  CpuBackend backend(1);
  HostTensor a = random_tensor(DType::f32, Shape{6, 4}, 1);
  HostTensor b = random_tensor(DType::f32, Shape{2, 5, 4}, 2);
  HostTensor c(DType::f32, Shape{6, 5}), dw(DType::f32, Shape{2, 4, 5});
  auto rejected = [](const std::function<void()>& call, const std::string& must_mention) {
    bool failed = false;
    const std::string err = run_expecting_failure(call, &failed);
    CAPTURE(must_mention, err);
    CHECK(failed);
    CHECK(err.find(must_mention) != std::string::npos);
  };
  rejected([&] { backend.grouped_gemm(a, b, true, {2, 3}, c, 1.0, 0.0); }, "hold 5 rows");
  rejected([&] { backend.grouped_gemm(a, b, true, {7, -1}, c, 1.0, 0.0); }, "has -1 rows");
  rejected([&] { backend.grouped_gemm(a, b, true, {6}, c, 1.0, 0.0); }, "groups, group_rows 1");
  rejected([&] { backend.grouped_gemm(a, b, false, {3, 3}, c, 1.0, 0.0); }, "op(b[g])");
  rejected([&] { backend.grouped_gemm_wgrad(a, c, {3, 2}, dw, 1.0, 1.0); }, "grouped_gemm_wgrad");
  bool failed = true;
  run_expecting_failure([&] { backend.grouped_gemm(a, b, true, {0, 6}, c, 1.0, 0.0); }, &failed);
  CHECK_FALSE(failed);
}

}  // namespace
}  // namespace linmoe::testing
