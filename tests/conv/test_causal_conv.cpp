// The causal depthwise convolution (kernels/ops.h, MODEL.md 3) on the CPU backend: forward and
// backward against a naive fp64 oracle (the backward written as a scatter, the kernel gathers),
// with and without a halo and a bias, K = 1..4, T < K, channel counts around the kernel's block,
// row-strided views, NaN-poisoned outputs, accumulating dw/dbias; central finite differences of
// the op's forward in fp64; thread-count independence; rejected arguments.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

using i64 = std::int64_t;
using Vec = std::vector<double>;

// Element (b, t, c) of a 3-D view with free strides.
double get(const Tensor& t, i64 b, i64 s, i64 c) {
  const i64 off = b * t.strides[0] + s * t.strides[1] + c * t.strides[2];
  return t.dtype == DType::f64 ? static_cast<const double*>(t.data)[off]
                               : static_cast<const float*>(t.data)[off];
}
void put(const Tensor& t, i64 b, i64 s, i64 c, double v) {
  const i64 off = b * t.strides[0] + s * t.strides[1] + c * t.strides[2];
  if (t.dtype == DType::f64) {
    static_cast<double*>(t.data)[off] = v;
  } else {
    static_cast<float*>(t.data)[off] = static_cast<float>(v);
  }
}
Vec read3(const Tensor& t) {
  Vec v;
  for (i64 b = 0; b < t.size(0); ++b) {
    for (i64 s = 0; s < t.size(1); ++s) {
      for (i64 c = 0; c < t.size(2); ++c) v.push_back(get(t, b, s, c));
    }
  }
  return v;
}
// A [B, L, C] tensor, contiguous or a column slice of a wider buffer (row-strided).
struct Rows {
  HostTensor buf;
  Tensor view;
  Rows(DType dt, i64 B, i64 L, i64 C, bool strided, std::uint64_t seed)
      : buf(dt, Shape{B, L, C + (strided ? 5 : 0)}) {
    fill_uniform(buf.t(), seed);
    view = strided ? buf.t().slice(2, 3, C) : buf.t();
  }
};

struct Case {
  i64 B, T, C, K;
  bool halo, bias, strided;
  std::string str() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " C=" + std::to_string(C) +
           " K=" + std::to_string(K) + " halo=" + (halo ? "on" : "off") +
           " bias=" + (bias ? "on" : "off") + " strided=" + (strided ? "yes" : "no");
  }
};

// The oracle: x, halo as [B, ., C] doubles (halo empty = zeros), w [C, K], bias [C] or empty.
struct Oracle {
  Vec y, dx, dw, dbias, dhalo;
};

Oracle oracle(const Case& k, const Vec& x, const Vec& halo, const Vec& w, const Vec& bias,
              const Vec& dy) {
  const i64 B = k.B, T = k.T, C = k.C, K = k.K, H = K - 1;
  Oracle o;
  o.y.assign(static_cast<std::size_t>(B * T * C), 0.0);
  o.dx.assign(o.y.size(), 0.0);
  o.dw.assign(static_cast<std::size_t>(C * K), 0.0);
  o.dbias.assign(static_cast<std::size_t>(C), 0.0);
  o.dhalo.assign(static_cast<std::size_t>(B * H * C), 0.0);
  auto at = [&](i64 b, i64 s, i64 c) -> double {  // the extended sequence, s ∈ [−H, T)
    if (s >= 0) return x[static_cast<std::size_t>((b * T + s) * C + c)];
    return halo.empty() ? 0.0 : halo[static_cast<std::size_t>((b * H + s + H) * C + c)];
  };
  for (i64 b = 0; b < B; ++b) {
    for (i64 t = 0; t < T; ++t) {
      for (i64 c = 0; c < C; ++c) {
        const std::size_t i = static_cast<std::size_t>((b * T + t) * C + c);
        double acc = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(c)];
        for (i64 j = 0; j < K; ++j) {
          const i64 s = t - K + 1 + j;
          const double wj = w[static_cast<std::size_t>(c * K + j)];
          acc += wj * at(b, s, c);
          // Scatter the gradient of this term to its input and weight.
          o.dw[static_cast<std::size_t>(c * K + j)] += dy[i] * at(b, s, c);
          if (s >= 0) {
            o.dx[static_cast<std::size_t>((b * T + s) * C + c)] += wj * dy[i];
          } else {
            o.dhalo[static_cast<std::size_t>((b * H + s + H) * C + c)] += wj * dy[i];
          }
        }
        o.y[i] = acc;
        o.dbias[static_cast<std::size_t>(c)] += dy[i];
      }
    }
  }
  return o;
}

Vec plus(const Vec& a, const Vec& b) {
  Vec r(a);
  for (std::size_t i = 0; i < r.size(); ++i) r[i] += b[i];
  return r;
}

std::vector<Case> oracle_cases() {
  std::vector<Case> out;
  const i64 shapes[][3] = {{1, 1, 1}, {2, 3, 7}, {3, 13, 70}, {2, 9, 130}, {1, 2, 64}};
  int n = 0;
  for (const auto& s : shapes) {
    for (i64 K = 1; K <= 4; ++K) {
      for (int halo = 0; halo < 2; ++halo) {
        out.push_back(Case{s[0], s[1], s[2], K, halo == 1, n % 3 != 0, n % 2 == 1});
        ++n;
      }
    }
  }
  return out;
}

TEST_CASE("causal_conv1d forward and backward against an fp64 oracle", "[ops][conv]") {
  CpuBackend backend(2);
  std::uint64_t seed = 9100;
  for (DType dt : {DType::f32, DType::f64}) {
    for (const Case& k : oracle_cases()) {
      CAPTURE(dtype_name(dt), k.str());
      Rows x(dt, k.B, k.T, k.C, k.strided, ++seed), halo(dt, k.B, k.K - 1, k.C, k.strided, ++seed);
      Rows dy(dt, k.B, k.T, k.C, k.strided, ++seed);
      HostTensor w = random_tensor(dt, Shape{k.C, k.K}, ++seed);
      HostTensor bias = random_tensor(dt, Shape{k.C}, ++seed);
      const Tensor halo_t = k.halo ? halo.view : Tensor{}, bias_t = k.bias ? bias.t() : Tensor{};
      const Oracle ref = oracle(k, read3(x.view), k.halo ? read3(halo.view) : Vec{}, w.to_f64(),
                                k.bias ? bias.to_f64() : Vec{}, read3(dy.view));

      Rows y(dt, k.B, k.T, k.C, k.strided, 0);
      poison(y.buf.t());
      backend.causal_conv1d_forward(x.view, w, bias_t, halo_t, y.view);
      CHECK(rel_error(read3(y.view), ref.y) <= op_bound(dt));

      // dw and dbias are pre-filled: they accumulate. dx and d_halo are poisoned: overwritten.
      Rows dx(dt, k.B, k.T, k.C, k.strided, 0), dhalo(dt, k.B, k.K - 1, k.C, k.strided, 0);
      poison(dx.buf.t());
      poison(dhalo.buf.t());
      HostTensor dw = random_tensor(dt, Shape{k.C, k.K}, ++seed);
      HostTensor dbias = random_tensor(dt, Shape{k.C}, ++seed);
      const Vec dw0 = dw.to_f64(), dbias0 = dbias.to_f64();
      backend.causal_conv1d_backward(x.view, w, halo_t, dy.view, dx.view, dw, dbias, dhalo.view);
      CHECK(rel_error(read3(dx.view), ref.dx) <= op_bound(dt));
      CHECK(rel_error(dw.to_f64(), plus(dw0, ref.dw)) <= op_bound(dt));
      CHECK(rel_error(dbias.to_f64(), plus(dbias0, ref.dbias)) <= op_bound(dt));
      CHECK(rel_error(read3(dhalo.view), ref.dhalo) <= op_bound(dt));
      if (k.strided && k.C > 0) {  // the columns outside the view are never written
        CHECK(std::isnan(get(dx.buf.t(), 0, 0, 0)));
        CHECK(std::isnan(get(y.buf.t(), k.B - 1, k.T - 1, k.C + 4)));
      }
    }
  }
}

TEST_CASE("causal_conv1d: undefined dw, dbias and d_halo are skipped", "[ops][conv]") {
  CpuBackend backend(2);
  const Case k{2, 5, 9, 3, true, false, false};
  Rows x(DType::f64, k.B, k.T, k.C, false, 11), halo(DType::f64, k.B, k.K - 1, k.C, false, 12);
  Rows dy(DType::f64, k.B, k.T, k.C, false, 13), dx(DType::f64, k.B, k.T, k.C, false, 0);
  HostTensor w = random_tensor(DType::f64, Shape{k.C, k.K}, 14);
  const Oracle ref = oracle(k, read3(x.view), read3(halo.view), w.to_f64(), Vec{}, read3(dy.view));
  poison(dx.buf.t());
  backend.causal_conv1d_backward(x.view, w, halo.view, dy.view, dx.view, Tensor{}, Tensor{},
                                 Tensor{});
  CHECK(rel_error(read3(dx.view), ref.dx) <= op_bound(DType::f64));
}

TEST_CASE("causal_conv1d backward against central finite differences (fp64)", "[ops][conv]") {
  CpuBackend backend(2);
  std::uint64_t seed = 9500;
  const Case cases[] = {{2, 6, 5, 4, true, true, true},
                        {1, 2, 3, 4, true, true, false},  // T < K: the halo reaches every output
                        {2, 5, 4, 1, false, true, false},
                        {1, 7, 3, 3, false, false, true}};
  for (const Case& k : cases) {
    CAPTURE(k.str());
    const DType dt = DType::f64;
    Rows x(dt, k.B, k.T, k.C, k.strided, ++seed), halo(dt, k.B, k.K - 1, k.C, k.strided, ++seed);
    Rows r(dt, k.B, k.T, k.C, false, ++seed), y(dt, k.B, k.T, k.C, k.strided, 0);
    HostTensor w = random_tensor(dt, Shape{k.C, k.K}, ++seed);
    HostTensor bias = random_tensor(dt, Shape{k.C}, ++seed);
    const Tensor halo_t = k.halo ? halo.view : Tensor{}, bias_t = k.bias ? bias.t() : Tensor{};
    const Vec rv = read3(r.view);
    auto loss = [&]() {  // L = Σ y ⊙ R
      backend.causal_conv1d_forward(x.view, w, bias_t, halo_t, y.view);
      const Vec yv = read3(y.view);
      double l = 0;
      for (std::size_t i = 0; i < yv.size(); ++i) l += yv[i] * rv[i];
      return l;
    };
    // Central differences with respect to every element of a 3-D view.
    auto fd = [&](const Tensor& t) {
      Vec g;
      const double h = 1e-5;
      for (i64 b = 0; b < t.size(0); ++b) {
        for (i64 s = 0; s < t.size(1); ++s) {
          for (i64 c = 0; c < t.size(2); ++c) {
            const double keep = get(t, b, s, c);
            put(t, b, s, c, keep + h);
            const double lp = loss();
            put(t, b, s, c, keep - h);
            const double lm = loss();
            put(t, b, s, c, keep);
            g.push_back((lp - lm) / (2 * h));
          }
        }
      }
      return g;
    };
    Rows dx(dt, k.B, k.T, k.C, k.strided, 0), dhalo(dt, k.B, k.K - 1, k.C, k.strided, 0);
    HostTensor dw(dt, Shape{k.C, k.K}), dbias(dt, Shape{k.C});
    backend.fill(dw, 0.0);
    backend.fill(dbias, 0.0);
    backend.causal_conv1d_backward(x.view, w, halo_t, r.view, dx.view, dw, dbias,
                                   k.halo ? dhalo.view : Tensor{});
    CHECK(rel_error(read3(dx.view), fd(x.view)) <= kFiniteDifferenceBound);
    CHECK(rel_error(dw.to_f64(), fd(w.t().reshape(Shape{1, k.C, k.K}))) <= kFiniteDifferenceBound);
    if (k.bias) {
      CHECK(rel_error(dbias.to_f64(), fd(bias.t().reshape(Shape{1, 1, k.C}))) <=
            kFiniteDifferenceBound);
    }
    if (k.halo && k.K > 1) {
      CHECK(rel_error(read3(dhalo.view), fd(halo.view)) <= kFiniteDifferenceBound);
    }
  }
}

TEST_CASE("causal_conv1d does not depend on the thread count", "[ops][conv]") {
  // Large enough for the parallel path (B·T·C·K ≥ the grain), C not a multiple of the block.
  const Case k{3, 200, 150, 4, true, true, false};
  const DType dt = DType::f32;
  Rows x(dt, k.B, k.T, k.C, false, 21), halo(dt, k.B, k.K - 1, k.C, false, 22);
  Rows dy(dt, k.B, k.T, k.C, false, 23);
  HostTensor w = random_tensor(dt, Shape{k.C, k.K}, 24), bias = random_tensor(dt, Shape{k.C}, 25);
  std::vector<Vec> results[2];
  int threads[2] = {1, 3};
  for (int r = 0; r < 2; ++r) {
    CpuBackend backend(threads[r]);
    Rows y(dt, k.B, k.T, k.C, false, 0), dx(dt, k.B, k.T, k.C, false, 0);
    Rows dhalo(dt, k.B, k.K - 1, k.C, false, 0);
    HostTensor dw = random_tensor(dt, Shape{k.C, k.K}, 26), dbias = random_tensor(dt, {k.C}, 27);
    backend.causal_conv1d_forward(x.view, w, bias, halo.view, y.view);
    backend.causal_conv1d_backward(x.view, w, halo.view, dy.view, dx.view, dw, dbias, dhalo.view);
    results[r] = {read3(y.view), read3(dx.view), dw.to_f64(), dbias.to_f64(), read3(dhalo.view)};
  }
  for (std::size_t i = 0; i < results[0].size(); ++i) {
    CAPTURE(i);
    CHECK(max_abs_diff(results[0][i], results[1][i]) == 0.0);
  }
}

TEST_CASE("causal_conv1d rejects bad arguments loudly", "[ops][conv]") {
  CpuBackend backend(1);
  HostTensor x = random_tensor(DType::f32, Shape{2, 5, 6}, 1);
  HostTensor y = random_tensor(DType::f32, Shape{2, 5, 6}, 2);
  HostTensor w = random_tensor(DType::f32, Shape{6, 3}, 3);
  HostTensor w_bad = random_tensor(DType::f32, Shape{5, 3}, 4);
  HostTensor w_f64 = random_tensor(DType::f64, Shape{6, 3}, 5);
  HostTensor w_empty = random_tensor(DType::f32, Shape{6, 0}, 6);
  HostTensor halo_bad = random_tensor(DType::f32, Shape{2, 3, 6}, 7);
  HostTensor bias_bad = random_tensor(DType::f32, Shape{7}, 8);
  HostTensor xt = random_tensor(DType::f32, Shape{2, 6, 5}, 9);
  const Tensor x_cols = xt.t().reshape(Shape{2, 6, 5}).slice(1, 0, 5);  // [2, 5, 5], rows ok
  struct Bad {
    const char* what;
    std::function<void()> call;
  };
  const Bad bad[] = {
      {"w [5, 3]", [&] { backend.causal_conv1d_forward(x, w_bad, Tensor{}, Tensor{}, y); }},
      {"dtype", [&] { backend.causal_conv1d_forward(x, w_f64, Tensor{}, Tensor{}, y); }},
      {"K = 0", [&] { backend.causal_conv1d_forward(x, w_empty, Tensor{}, Tensor{}, y); }},
      {"halo [2, 3, 6]", [&] { backend.causal_conv1d_forward(x, w, Tensor{}, halo_bad, y); }},
      {"bias [7]", [&] { backend.causal_conv1d_forward(x, w, bias_bad, Tensor{}, y); }},
      {"y shape", [&] { backend.causal_conv1d_forward(x, w, Tensor{}, Tensor{}, x_cols); }},
      {"dx shape",
       [&] { backend.causal_conv1d_backward(x, w, Tensor{}, y, x_cols, w, Tensor{}, Tensor{}); }},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.what);
    bool failed = false;
    const std::string err = run_expecting_failure(b.call, &failed);
    CHECK(failed);
    CHECK(err.find("causal_conv1d") != std::string::npos);
  }
  // A column-strided (non-contiguous last dimension) x is refused.
  HostTensor wide = random_tensor(DType::f32, Shape{2, 5, 12}, 10);
  Tensor every_other = wide.t();
  every_other.shape = Shape{2, 5, 6};
  every_other.strides = {60, 12, 2};
  bool failed = false;
  run_expecting_failure(
      [&] { backend.causal_conv1d_forward(every_other, w, Tensor{}, Tensor{}, y); }, &failed);
  CHECK(failed);
}

}  // namespace
}  // namespace linmoe::testing
