// Reductions, sum_rows, copy (with dtype conversions) and fill against fp64 oracles.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

const DType kDtypes[] = {DType::f32, DType::f64};

TEST_CASE("sum, sum_squares, max_abs, all_finite", "[ops][reduce]") {
  CpuBackend backend(2);
  std::uint64_t seed = 9000;
  for (DType dt : kDtypes) {
    for (std::int64_t n : {1, 2, 17, 1000, 16385, 100003}) {
      CAPTURE(dtype_name(dt), n);
      HostTensor x = random_tensor(dt, Shape{n}, ++seed, -3.0, 2.0);
      const auto v = x.to_f64();
      double s = 0, ss = 0, m = 0;
      for (double e : v) s += e, ss += e * e, m = std::max(m, std::fabs(e));
      // Accumulated in double whatever the dtype: the f64 bound for both.
      CHECK(std::fabs(backend.sum(x) - s) <= 1e-12 * (std::fabs(s) + ss));
      CHECK(std::fabs(backend.sum_squares(x) - ss) <= 1e-12 * ss);
      CHECK(backend.max_abs(x) == m);
      CHECK(backend.all_finite(x));
      // One bad value anywhere (here: the last element) is found.
      std::vector<double> bad = v;
      bad.back() = std::numeric_limits<double>::infinity();
      x.from_f64(bad);
      CHECK_FALSE(backend.all_finite(x));
      CHECK(backend.max_abs(x) == std::numeric_limits<double>::infinity());
      // NaN first, then a value larger than every other: the NaN must still win.
      bad.back() = 5.0;
      bad.front() = std::numeric_limits<double>::quiet_NaN();
      x.from_f64(bad);
      CHECK_FALSE(backend.all_finite(x));
      CHECK(std::isnan(backend.max_abs(x)));
    }
  }
  HostTensor empty(DType::f32, Shape{0});
  CHECK(backend.sum(empty) == 0.0);
  CHECK(backend.all_finite(empty));
}

TEST_CASE("reductions do not depend on the thread count", "[ops][reduce]") {
  CpuBackend one(1), two(2);
  HostTensor x = random_tensor(DType::f32, Shape{123457}, 9100);
  CHECK(one.sum(x) == two.sum(x));
  CHECK(one.sum_squares(x) == two.sum_squares(x));
}

TEST_CASE("sum_rows overwrites or accumulates", "[ops][reduce]") {
  CpuBackend backend(2);
  std::uint64_t seed = 9200;
  for (DType dt : kDtypes) {
    for (const auto& nc :
         {std::pair<std::int64_t, std::int64_t>{1, 1}, {1, 9}, {7, 1}, {13, 67}, {1000, 129}}) {
      const std::int64_t N = nc.first, C = nc.second;
      CAPTURE(dtype_name(dt), N, C);
      HostTensor x = random_tensor(dt, Shape{N, C}, ++seed);
      const auto v = x.to_f64();
      std::vector<double> ref(static_cast<std::size_t>(C), 0.0);
      for (std::int64_t n = 0; n < N; ++n) {
        for (std::int64_t c = 0; c < C; ++c) ref[c] += v[n * C + c];
      }
      HostTensor out = poisoned_tensor(dt, Shape{C});
      backend.sum_rows(x, out, false);
      CHECK(rel_error(out.to_f64(), ref) <= op_bound(dt));
      HostTensor acc = random_tensor(dt, Shape{C}, ++seed);  // pre-filled: accumulates
      std::vector<double> expect = acc.to_f64();
      for (std::int64_t c = 0; c < C; ++c) expect[c] += ref[c];
      backend.sum_rows(x, acc, true);
      CHECK(rel_error(acc.to_f64(), expect) <= op_bound(dt));
    }
  }
}

// The bf16 nearest to v (ties to even), computed from the bit patterns in exact arithmetic:
// candidates are the truncation and the next value up in magnitude.
std::uint16_t bf16_nearest(double v) {
  float f = static_cast<float>(v);
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  std::uint16_t lo = static_cast<std::uint16_t>(u >> 16);
  auto value = [](std::uint16_t b) { return static_cast<double>(bf16_to_f32(bf16{b})); };
  // Step down until |lo| <= |v|, then the candidates are lo and lo + 1 (in magnitude).
  while (std::fabs(value(lo)) > std::fabs(v)) --lo;
  while (std::fabs(value(static_cast<std::uint16_t>(lo + 1))) <= std::fabs(v)) ++lo;
  const std::uint16_t hi = static_cast<std::uint16_t>(lo + 1);
  const double dl = std::fabs(v) - std::fabs(value(lo)), dh = std::fabs(value(hi)) - std::fabs(v);
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) ? hi : lo;
}

TEST_CASE("copy converts between f64, f32 and bf16 and copies equal dtypes", "[ops][copy]") {
  CpuBackend backend(2);
  const std::int64_t n = 40001;
  HostTensor src = random_tensor(DType::f64, Shape{n}, 9300, -1e3, 1e3);
  const auto v = src.to_f64();
  // f64 -> f32 -> f64 is the f32 rounding.
  HostTensor f32 = poisoned_tensor(DType::f32, Shape{n}),
             back = poisoned_tensor(DType::f64, Shape{n});
  backend.copy(src, f32);
  backend.copy(f32, back);
  const auto vb = back.to_f64();
  std::int64_t wrong = 0;
  for (std::int64_t i = 0; i < n; ++i)
    wrong += vb[i] != static_cast<double>(static_cast<float>(v[i]));
  CHECK(wrong == 0);
  // f64 -> bf16 rounds once to nearest even, also where rounding through f32 would not.
  std::vector<double> vals = v;
  const double tie_above = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);  // just over a tie
  vals[0] = tie_above;
  vals[1] = -tie_above;
  vals[2] = 1.0 + std::ldexp(1.0, -8);  // an exact tie: to even (1.0)
  vals[3] = 0.0;
  vals[4] = std::numeric_limits<double>::infinity();
  src.from_f64(vals);
  HostTensor b16 = poisoned_tensor(DType::bf16, Shape{n});
  backend.copy(src, b16);
  const bf16* pb = b16.data<bf16>();
  wrong = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isinf(vals[i])) wrong += pb[i].bits != bf16_nearest(vals[i]);
  }
  CHECK(wrong == 0);
  CHECK(pb[0].bits == 0x3f81);  // not 0x3f80, which rounding through f32 would give
  CHECK(pb[4].bits == 0x7f80);
  // bf16 -> f32 is exact; f32 -> bf16 rounds to nearest even.
  HostTensor f32b = poisoned_tensor(DType::f32, Shape{n});
  backend.copy(b16, f32b);
  const auto vf = f32b.to_f64();
  wrong = 0;
  for (std::int64_t i = 0; i < n; ++i) wrong += vf[i] != bf16_to_f32(pb[i]);
  CHECK(wrong == 0);
  HostTensor b16b = poisoned_tensor(DType::bf16, Shape{n});
  backend.copy(f32, b16b);
  wrong = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    wrong += b16b.data<bf16>()[i].bits != f32_to_bf16(f32.data<float>()[i]).bits;
  }
  CHECK(wrong == 0);
  // Equal integer dtypes copy bit for bit; shapes may differ when numel matches.
  HostTensor ints(DType::i64, Shape{6, 7}), ints2 = poisoned_tensor(DType::i64, Shape{42});
  fill_ints(ints.t(), 9301, 1000000);
  backend.copy(ints, ints2);
  CHECK(max_abs_diff(ints.to_f64(), ints2.to_f64()) == 0.0);
}

TEST_CASE("fill every dtype", "[ops][copy]") {
  CpuBackend backend(2);
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64}) {
    CAPTURE(dtype_name(dt));
    HostTensor t = poisoned_tensor(dt, Shape{3, 50001});
    backend.fill(t, -2.5);
    const double expect = dtype_is_float(dt) ? -2.5 : -2.0;
    const std::vector<double> v = t.to_f64();
    CHECK(std::count(v.begin(), v.end(), expect) == static_cast<std::ptrdiff_t>(v.size()));
  }
}

}  // namespace
}  // namespace linmoe::testing
