// Rotate-half RoPE (kernels/ops.h, MODEL.md 2) on the CPU backend: against the formula in fp64
// at position offsets 0 and 1000, backward as the exact transpose, and in-place aliasing.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common/test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe {
namespace {

using testing::HostTensor;
using testing::rel_error;
using i64 = std::int64_t;
using Vec = std::vector<double>;

Backend& cpu() {
  static std::unique_ptr<Backend> backend = make_cpu_backend(2);
  return *backend;
}

// MODEL.md 2, with θ_j written as exp(−(2j/d)·ln theta) rather than the op's pow, so the two
// do not share every rounding. inverse rotates by −angle.
Vec rope_formula(const Vec& x, const Shape& s, double theta, i64 offset, bool inverse) {
  const i64 T = s[1], H = s[2], d = s[3], half = d / 2;
  Vec y(x.size());
  for (i64 row = 0; row < s.numel() / d; ++row) {
    const i64 t = (row / H) % T;
    for (i64 j = 0; j < half; ++j) {
      const double freq = std::exp(-(2.0 * j / d) * std::log(theta));
      const double angle = (inverse ? -1.0 : 1.0) * static_cast<double>(offset + t) * freq;
      const std::size_t a = static_cast<std::size_t>(row * d + j), b = a + half;
      y[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
      y[b] = x[b] * std::cos(angle) + x[a] * std::sin(angle);
    }
  }
  return y;
}

TEST_CASE("rope matches the formula at position offsets 0 and 1000", "[ops][rope]") {
  const std::vector<Shape> shapes = {Shape{2, 7, 3, 16}, Shape{1, 37, 2, 8}, Shape{1, 1, 1, 2}};
  for (DType dt : {DType::f32, DType::f64}) {
    const double bound = testing::op_bound(dt);  // TESTING.md: f32 1e-5, f64 1e-12
    for (const Shape& s : shapes) {
      for (i64 offset : {i64{0}, i64{1000}}) {
        for (double theta : {10000.0, 500000.0}) {
          CAPTURE(dtype_name(dt), s.str(), offset, theta);
          HostTensor x = testing::random_tensor(dt, s, 11 + static_cast<std::uint64_t>(offset));
          HostTensor y = testing::poisoned_tensor(dt, s), dx = testing::poisoned_tensor(dt, s);
          cpu().rope_forward(x, y, theta, offset);
          cpu().rope_backward(x, dx, theta, offset);
          const double e_fwd =
              rel_error(y.to_f64(), rope_formula(x.to_f64(), s, theta, offset, false));
          const double e_bwd =
              rel_error(dx.to_f64(), rope_formula(x.to_f64(), s, theta, offset, true));
          CAPTURE(e_fwd, e_bwd);
          CHECK(e_fwd <= bound);
          CHECK(e_bwd <= bound);
        }
      }
    }
  }
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ⟨rope(x), y⟩ = ⟨x, rope_backward(y)⟩, and rope_backward undoes rope_forward.
TEST_CASE("rope backward is the transpose of rope forward", "[grad][rope]") {
  const Shape s{2, 9, 3, 12};
  for (i64 offset : {i64{0}, i64{1000}}) {
    CAPTURE(offset);
    HostTensor x = testing::random_tensor(DType::f64, s, 21),
               y = testing::random_tensor(DType::f64, s, 22);
    HostTensor rx = testing::poisoned_tensor(DType::f64, s),
               ry = testing::poisoned_tensor(DType::f64, s);
    HostTensor back = testing::poisoned_tensor(DType::f64, s);
    cpu().rope_forward(x, rx, 10000.0, offset);
    cpu().rope_backward(y, ry, 10000.0, offset);
    cpu().rope_backward(rx, back, 10000.0, offset);
    const double lhs = dot(rx.to_f64(), y.to_f64()), rhs = dot(x.to_f64(), ry.to_f64());
    CAPTURE(lhs, rhs);
    CHECK(std::fabs(lhs - rhs) <=
          1e-12 * std::sqrt(dot(x.to_f64(), x.to_f64()) * dot(y.to_f64(), y.to_f64())));
    CHECK(rel_error(back.to_f64(), x.to_f64()) <= 1e-12);
  }
}

bool bitwise_equal(const HostTensor& a, const HostTensor& b) {
  return std::memcmp(a.t().data, b.t().data, a.t().nbytes()) == 0;
}

TEST_CASE("rope works in place", "[ops][rope]") {
  const Shape s{3, 20, 4, 32};
  for (DType dt : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dt));
    HostTensor x = testing::random_tensor(dt, s, 31), y = testing::poisoned_tensor(dt, s);
    HostTensor inplace = testing::random_tensor(dt, s, 31);
    cpu().rope_forward(x, y, 10000.0, 77);
    cpu().rope_forward(inplace, inplace, 10000.0, 77);
    CHECK(bitwise_equal(inplace, y));
    HostTensor dx = testing::poisoned_tensor(dt, s);
    cpu().rope_backward(x, dx, 10000.0, 77);
    HostTensor dy = testing::random_tensor(dt, s, 31);  // dy holds x's values
    cpu().rope_backward(dy, dy, 10000.0, 77);
    CHECK(bitwise_equal(dy, dx));
  }
}

void expect_rejected(const std::function<void()>& call, const std::string& must_mention) {
  bool failed = false;
  const std::string err = testing::run_expecting_failure(call, &failed);
  CAPTURE(must_mention, err);
  CHECK(failed);
  CHECK(err.find(must_mention) != std::string::npos);
}

TEST_CASE("rope rejects odd head dims, bad shapes and partial overlap", "[ops][rope][checks]") {
  CpuBackend be(1);
  HostTensor odd(DType::f32, Shape{1, 2, 3, 5}), odd_y(DType::f32, Shape{1, 2, 3, 5});
  HostTensor x(DType::f32, Shape{1, 4, 2, 8}), y3(DType::f32, Shape{1, 4, 16});
  HostTensor y64(DType::f64, Shape{1, 4, 2, 8});
  expect_rejected([&] { be.rope_forward(odd, odd_y, 10000.0, 0); }, "rope_forward: x");
  expect_rejected([&] { be.rope_backward(x, y64, 10000.0, 0); }, "rope_backward: dx");
  expect_rejected([&] { be.rope_forward(y3, y3, 10000.0, 0); }, "must be [B, T, H, d]");
  expect_rejected([&] { be.rope_forward(x, x, 0.0, 0); }, "theta");
  // y starting one token into x: a partial overlap.
  const Shape s3{1, 3, 2, 8};
  Tensor x3(x.data<float>(), DType::f32, Device::cpu, s3);
  Tensor shifted(x.data<float>() + 16, DType::f32, Device::cpu, s3);
  expect_rejected([&] { be.rope_forward(x3, shifted, 10000.0, 0); }, "partially overlaps");
}

}  // namespace
}  // namespace linmoe
