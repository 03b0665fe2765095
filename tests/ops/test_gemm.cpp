// GEMM of the CPU backend against a naive fp64 triple loop: every transpose combination,
// batched and broadcast operands, strided views, alpha/beta, sizes from 1 to past the blocking.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

// Element (b, i, j) of a 2-D or 3-D view (a 2-D view ignores b), as a double.
double element(const Tensor& t, std::int64_t b, std::int64_t i, std::int64_t j) {
  std::int64_t off = t.ndim() == 3 ? b * t.stride(0) : 0;
  off += i * t.stride(-2) + j * t.stride(-1);
  return t.dtype == DType::f64 ? static_cast<const double*>(t.data)[off]
                               : static_cast<const float*>(t.data)[off];
}

// Every element of a 2-D or 3-D view, row-major.
std::vector<double> gather(const Tensor& t) {
  const std::int64_t B = t.ndim() == 3 ? t.size(0) : 1;
  std::vector<double> v;
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i < t.size(-2); ++i) {
      for (std::int64_t j = 0; j < t.size(-1); ++j) v.push_back(element(t, b, i, j));
    }
  }
  return v;
}

// The contract in fp64: alpha · op(a) · op(b) + beta · c0 (c0 not read when beta == 0).
std::vector<double> gemm_oracle(const Tensor& a, bool ta, const Tensor& b, bool tb,
                                const std::vector<double>& c0, std::int64_t Bt, std::int64_t M,
                                std::int64_t N, std::int64_t K, double alpha, double beta) {
  std::vector<double> out(static_cast<std::size_t>(Bt * M * N));
  for (std::int64_t bt = 0; bt < Bt; ++bt) {
    for (std::int64_t i = 0; i < M; ++i) {
      for (std::int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (std::int64_t k = 0; k < K; ++k) {
          s += (ta ? element(a, bt, k, i) : element(a, bt, i, k)) *
               (tb ? element(b, bt, j, k) : element(b, bt, k, j));
        }
        const std::size_t idx = static_cast<std::size_t>((bt * M + i) * N + j);
        out[idx] = alpha * s + (beta == 0 ? 0.0 : beta * c0[idx]);
      }
    }
  }
  return out;
}

// Shape of an operand holding op(x) = [rows, cols], optionally batched.
Shape operand_shape(std::int64_t batch, std::int64_t rows, std::int64_t cols, bool trans) {
  const std::int64_t r = trans ? cols : rows, c = trans ? rows : cols;
  return batch > 0 ? Shape{batch, r, c} : Shape{r, c};
}

struct GemmCase {
  std::int64_t Bt, M, N, K;
  bool ta, tb;
  std::int64_t a_batch, b_batch;  // 0: the operand is 2-D (broadcast over batches)
  double alpha, beta;
  bool strided;  // operands and c are views into larger tensors
};

// Runs one case, checks it against the oracle and checks that c's surroundings are untouched.
void check_gemm(Backend& backend, DType dt, const GemmCase& g, std::uint64_t seed) {
  CAPTURE(dtype_name(dt), g.Bt, g.M, g.N, g.K, g.ta, g.tb, g.a_batch, g.b_batch, g.alpha, g.beta,
          g.strided, backend.name());
  const Shape sa = operand_shape(g.a_batch, g.M, g.K, g.ta);
  const Shape sb = operand_shape(g.b_batch, g.K, g.N, g.tb);
  const Shape sc = g.Bt > 0 ? Shape{g.Bt, g.M, g.N} : Shape{g.M, g.N};
  // A strided view: 2 extra rows and 3 extra columns around it (and one extra batch).
  auto padded = [&](const Shape& s) {
    if (!g.strided) return s;
    Shape p = s;
    p[s.ndim() - 2] += 2;
    p[s.ndim() - 1] += 3;
    if (s.ndim() == 3) p[0] += 1;
    return p;
  };
  auto view = [&](const Tensor& big, const Shape& s) {
    if (!g.strided) return big;
    Tensor v = big.slice(s.ndim() - 2, 1, s[s.ndim() - 2]).slice(s.ndim() - 1, 2, s[s.ndim() - 1]);
    return s.ndim() == 3 ? v.slice(0, 1, s[0]) : v;
  };
  HostTensor a_big = random_tensor(dt, padded(sa), seed);
  HostTensor b_big = random_tensor(dt, padded(sb), seed + 1);
  HostTensor c_big =
      g.beta == 0 ? poisoned_tensor(dt, padded(sc)) : random_tensor(dt, padded(sc), seed + 2);
  Tensor a = view(a_big.t(), sa), b = view(b_big.t(), sb), c = view(c_big.t(), sc);
  const std::vector<double> c0 = gather(c);
  const std::vector<double> c_big0 = c_big.to_f64();
  const std::int64_t Bt = g.Bt > 0 ? g.Bt : 1;
  const std::vector<double> ref =
      gemm_oracle(a, g.ta, b, g.tb, c0, Bt, g.M, g.N, g.K, g.alpha, g.beta);

  backend.gemm(a, g.ta, b, g.tb, c, g.alpha, g.beta);

  const double err = rel_error(gather(c), ref);
  CAPTURE(err);
  CHECK(err <= op_bound(dt));
  if (g.strided) {  // nothing outside the view was written: poison still NaN, values unchanged
    HostTensor mask(DType::f64, c_big.t().shape);
    poison(mask.t());
    Tensor mask_view = view(mask.t(), sc);
    for (std::int64_t i = 0; i < mask_view.numel(); ++i) {
      const std::int64_t bt = mask_view.ndim() == 3 ? i / (g.M * g.N) : 0;
      const std::int64_t r = (i / g.N) % g.M, col = i % g.N;
      std::int64_t off =
          (mask_view.ndim() == 3 ? bt * mask_view.stride(0) : 0) + r * mask_view.stride(-2) + col;
      static_cast<double*>(mask_view.data)[off] = 0;  // inside the view
    }
    const std::vector<double> m = mask.to_f64(), after = c_big.to_f64();
    std::int64_t changed = 0;
    for (std::size_t i = 0; i < m.size(); ++i) {
      if (!std::isnan(m[i])) continue;
      const bool same = (std::isnan(after[i]) && std::isnan(c_big0[i])) || after[i] == c_big0[i];
      if (!same) ++changed;
    }
    CHECK(changed == 0);
  }
}

const DType kDtypes[] = {DType::f32, DType::f64};

TEST_CASE("gemm: all transposes, sizes from 1 past the block sizes, beta = 0 over NaN",
          "[ops][gemm]") {
  CpuBackend two(2), one(1);
  // Odd sizes and primes, exact micro-tile multiples (12 x 32), K across KC = 256, M across
  // MC (240 f32 / 120 f64), N across NC (4096 f32 / 2048 f64), both sides of the few-rows/columns
  // paths (32).
  const std::int64_t sizes[][3] = {{1, 1, 1},      {1, 7, 3},      {5, 1, 9},    {3, 4, 1},
                                   {13, 17, 19},   {12, 32, 256},  {24, 64, 37}, {31, 33, 64},
                                   {97, 131, 257}, {250, 70, 300}, {2, 4133, 5}, {7, 3, 530},
                                   {300, 5, 70},   {33, 33, 40},   {32, 32, 16}};
  std::uint64_t seed = 100;
  for (DType dt : kDtypes) {
    for (const auto& s : sizes) {
      for (int t = 0; t < 4; ++t) {
        const GemmCase g{0, s[0], s[1], s[2], (t & 1) != 0, (t & 2) != 0, 0, 0, 1.0, 0.0, false};
        check_gemm(two, dt, g, seed += 3);
      }
      check_gemm(one, dt, GemmCase{0, s[0], s[1], s[2], false, true, 0, 0, 1.0, 0.0, false},
                 seed += 3);
    }
  }
}

TEST_CASE("gemm: alpha and beta", "[ops][gemm]") {
  CpuBackend backend(2);
  std::uint64_t seed = 200;
  for (DType dt : kDtypes) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = (t & 1) != 0, tb = (t & 2) != 0;
      check_gemm(backend, dt, GemmCase{0, 45, 29, 300, ta, tb, 0, 0, 1.0, 1.0, false}, seed += 3);
      check_gemm(backend, dt, GemmCase{0, 45, 29, 31, ta, tb, 0, 0, -0.75, 0.5, false}, seed += 3);
      check_gemm(backend, dt, GemmCase{0, 130, 300, 17, ta, tb, 0, 0, 2.5, -1.0, false}, seed += 3);
      check_gemm(backend, dt, GemmCase{0, 9, 8, 7, ta, tb, 0, 0, 0.0, 0.0, false}, seed += 3);
    }
    // K = 0: c = beta · c (and zeros over NaN when beta = 0).
    check_gemm(backend, dt, GemmCase{0, 5, 6, 0, false, false, 0, 0, 1.0, 0.0, false}, seed += 3);
    check_gemm(backend, dt, GemmCase{0, 5, 6, 0, true, true, 0, 0, 1.0, 0.5, false}, seed += 3);
  }
}

TEST_CASE("gemm: batched, broadcast 2-D operands", "[ops][gemm]") {
  CpuBackend backend(2);
  std::uint64_t seed = 300;
  for (DType dt : kDtypes) {
    for (std::int64_t Bt : {1, 2, 3}) {
      for (int t = 0; t < 4; ++t) {
        const bool ta = (t & 1) != 0, tb = (t & 2) != 0;
        check_gemm(backend, dt, GemmCase{Bt, 37, 45, 70, ta, tb, Bt, Bt, 1.0, 0.0, false},
                   seed += 3);
        check_gemm(backend, dt, GemmCase{Bt, 60, 19, 33, ta, tb, 0, Bt, 1.0, 0.0, false},
                   seed += 3);
        check_gemm(backend, dt, GemmCase{Bt, 11, 80, 29, ta, tb, Bt, 0, 0.5, 1.0, false},
                   seed += 3);
      }
    }
  }
}

TEST_CASE("gemm: strided views of larger tensors", "[ops][gemm]") {
  CpuBackend backend(2);
  std::uint64_t seed = 400;
  for (DType dt : kDtypes) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = (t & 1) != 0, tb = (t & 2) != 0;
      check_gemm(backend, dt, GemmCase{0, 50, 41, 66, ta, tb, 0, 0, 1.0, 0.0, true}, seed += 3);
      check_gemm(backend, dt, GemmCase{0, 1, 5, 3, ta, tb, 0, 0, 1.0, 1.0, true}, seed += 3);
      check_gemm(backend, dt, GemmCase{3, 23, 35, 40, ta, tb, 3, 3, 1.0, 0.0, true}, seed += 3);
      check_gemm(backend, dt, GemmCase{2, 23, 35, 40, ta, tb, 0, 2, -1.0, 0.25, true}, seed += 3);
    }
  }
}

TEST_CASE("gemm: one and two threads give the same bits", "[ops][gemm]") {
  CpuBackend one(1), two(2);
  for (DType dt : kDtypes) {
    // Few rows, split by rows across the threads: every part takes the same (dot) path.
    HostTensor x = random_tensor(dt, Shape{30, 500}, 503),
               w = random_tensor(dt, Shape{20, 500}, 504);
    HostTensor y1 = poisoned_tensor(dt, Shape{30, 20}), y2 = poisoned_tensor(dt, Shape{30, 20});
    one.gemm(x, false, w, true, y1, 1.0, 0.0);
    two.gemm(x, false, w, true, y2, 1.0, 0.0);
    CHECK(max_abs_diff(y1.to_f64(), y2.to_f64()) == 0.0);
    HostTensor a = random_tensor(dt, Shape{3, 70, 90}, 501);
    HostTensor b = random_tensor(dt, Shape{90, 260}, 502);
    HostTensor c1 = poisoned_tensor(dt, Shape{3, 70, 260}),
               c2 = poisoned_tensor(dt, Shape{3, 70, 260});
    one.gemm(a, false, b, false, c1, 1.0, 0.0);
    two.gemm(a, false, b, false, c2, 1.0, 0.0);
    CHECK(max_abs_diff(c1.to_f64(), c2.to_f64()) == 0.0);
  }
}

}  // namespace
}  // namespace linmoe::testing
