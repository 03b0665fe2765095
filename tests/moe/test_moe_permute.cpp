// moe_permute, moe_unpermute and their backwards (MODEL.md 4) on the CPU backend: a hand-made
// plan with drops, random plans against the fp64 references, central finite differences in
// fp64, adjoint identities, accumulate semantics, and independence of the thread count.
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
const double kNaN = std::numeric_limits<double>::quiet_NaN();

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

TEST_CASE("moe permutation on a hand-made plan with drops", "[moe][permute]") {
  CpuBackend backend(2);
  // N = 6, k = 2, D = 3 and the capacity-2 plan of the routing test: token 1 lost both of its
  // assignments; rows go to tokens 0, 2, 0, 4, 3, 5.
  HostTensor order = int_tensor(Shape{12}, {0, 4, 1, 9, 6, 10, -1, -1, -1, -1, -1, -1});
  std::vector<double> xv, yv;
  for (int n = 0; n < 6; ++n) {
    for (int j = 0; j < 3; ++j) xv.push_back(10 * n + j);
  }
  for (int i = 0; i < 6; ++i) {
    for (int j = 0; j < 3; ++j) yv.push_back((i + 1) * (j + 1));
  }
  // Dropped slots hold NaN weights: a drop must not read them (MODEL.md 4).
  const std::vector<double> wv = {0.5, 0.25, kNaN, kNaN, 0.75, kNaN, 2, kNaN, kNaN, 0.5, 1, kNaN};
  for (DType dt : kFloatTypes) {
    CAPTURE(dtype_name(dt));
    HostTensor x = float_tensor(dt, Shape{6, 3}, xv), y = float_tensor(dt, Shape{6, 3}, yv);
    HostTensor w = float_tensor(dt, Shape{6, 2}, wv);

    HostTensor xp(dt, Shape{6, 3});
    poison(xp.t());
    backend.moe_permute(x, order, 2, xp);
    CHECK(xp.to_f64() ==
          std::vector<double>{0, 1, 2, 20, 21, 22, 0, 1, 2, 40, 41, 42, 30, 31, 32, 50, 51, 52});

    const std::vector<double> combined = {1.25, 2.5, 3.75, 0, 0, 0, 1.5, 3,  4.5,
                                          10,   20,  30,   2, 4, 6, 6,   12, 18};
    HostTensor out(dt, Shape{6, 3});
    poison(out.t());
    backend.moe_unpermute(y, order, w, out, false);
    CHECK(out.to_f64() == combined);  // token 1 gets 0
    backend.fill(out, 100.0);
    backend.moe_unpermute(y, order, w, out, true);
    std::vector<double> acc = combined;
    for (double& v : acc) v += 100;
    CHECK(out.to_f64() == acc);  // token 1 keeps its 100

    HostTensor dout(dt, Shape{6, 3}), dy(dt, Shape{6, 3}), dw(dt, Shape{6, 2});
    backend.fill(dout, 1.0);
    poison(dy.t());
    poison(dw.t());
    backend.moe_unpermute_backward(dout, y, order, w, dy, dw);
    CHECK(dy.to_f64() == std::vector<double>{0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.25, 0.25, 0.25, 0.5,
                                             0.5, 0.5, 2, 2, 2, 1, 1, 1});
    CHECK(dw.to_f64() == std::vector<double>{6, 18, 0, 0, 12, 0, 30, 0, 0, 24, 36, 0});
    poison(dy.t());
    backend.moe_unpermute_backward(dout, y, order, w, dy, Tensor{});  // d_weights not needed
    CHECK(dy.to_f64()[12] == 2);

    HostTensor dx(dt, Shape{6, 3});
    backend.fill(dx, 1.0);
    backend.moe_permute_backward(y, order, 2, dx);  // ACCUMULATES onto the 1s
    CHECK(dx.to_f64() ==
          std::vector<double>{5, 9, 13, 1, 1, 1, 3, 5, 7, 6, 11, 16, 5, 9, 13, 7, 13, 19});
  }
}

// A random routed plan: top-k of random probabilities, capacity dropping by the references.
struct RandomPlan {
  int N, k, D, A;
  RefPlan plan;
  std::vector<double> w;  // [N, k], NaN in the dropped slots
};

RandomPlan random_plan(int N, int E, int k, int D, const char* capacity_factor,
                       std::uint64_t seed) {
  HostTensor logits = random_tensor(DType::f64, Shape{N, E}, seed, -2.0, 2.0);
  std::vector<double> p = logits.to_f64();
  for (double& v : p) v = std::exp(std::floor(2 * v));  // unnormalised, tie-heavy
  const RefTopk top = ref_topk(p, N, E, k, true);
  std::vector<int> keep(static_cast<std::size_t>(N * k), 1);
  if (capacity_factor) keep = ref_keep(p, top.ids, N, E, k, moe_capacity(capacity_factor, N, k, E));
  RandomPlan r{N, k, D, 0, ref_plan(top.ids, keep, N, k, E), top.w};
  r.A = r.plan.A;
  for (std::size_t a = 0; a < keep.size(); ++a) {
    if (!keep[a]) r.w[a] = kNaN;
  }
  return r;
}

TEST_CASE("moe permutation matches the fp64 references on random plans", "[moe][permute]") {
  CpuBackend backend(2);
  struct Case {
    int N, E, k, D;
    const char* capacity;  // null = dropless
  };
  const Case cases[] = {{29, 5, 2, 11, "1.0"}, {29, 5, 2, 11, nullptr}, {17, 4, 4, 7, "0.5"},
                        {8, 3, 1, 1, "1.25"},  {33, 8, 3, 64, "1.0"},   {5, 2, 2, 3, "0.1"}};
  std::uint64_t seed = 700;
  for (DType dt : kFloatTypes) {
    for (const Case& c : cases) {
      CAPTURE(dtype_name(dt), c.N, c.E, c.k, c.D, c.capacity ? c.capacity : "dropless");
      const RandomPlan rp = random_plan(c.N, c.E, c.k, c.D, c.capacity, ++seed);
      const int N = c.N, k = c.k, D = c.D, A = rp.A;
      HostTensor order = int_tensor(Shape{N * k}, rp.plan.order);
      HostTensor x = random_tensor(dt, Shape{N, D}, ++seed),
                 y = random_tensor(dt, Shape{A, D}, ++seed);
      HostTensor w = float_tensor(dt, Shape{N, k}, rp.w);
      HostTensor g_tok = random_tensor(dt, Shape{N, D}, ++seed);  // a gradient of [N, D]
      HostTensor g_row = random_tensor(dt, Shape{A, D}, ++seed);  // a gradient of [A, D]
      const std::vector<double> xv = x.to_f64(), yv = y.to_f64(), wv = w.to_f64();
      const std::vector<double> gt = g_tok.to_f64(), gr = g_row.to_f64();

      HostTensor xp(dt, Shape{A, D});
      poison(xp.t());
      backend.moe_permute(x, order, k, xp);
      CHECK(xp.to_f64() == ref_permute(xv, rp.plan.order, A, k, D));  // a copy: exact

      HostTensor dx = random_tensor(dt, Shape{N, D}, ++seed);
      const std::vector<double> dx0 = dx.to_f64();
      backend.moe_permute_backward(g_row, order, k, dx);
      CHECK(rel_error(dx.to_f64(), plus(dx0, ref_permute_backward(gr, rp.plan.order, A, N, k,
                                                                  D))) <= op_bound(dt));

      const std::vector<double> want_out = ref_unpermute(yv, rp.plan.order, wv, A, N, k, D);
      HostTensor out(dt, Shape{N, D});
      poison(out.t());
      backend.moe_unpermute(y, order, w, out, false);
      CHECK(rel_error(out.to_f64(), want_out) <= op_bound(dt));
      HostTensor out_acc = random_tensor(dt, Shape{N, D}, ++seed);
      const std::vector<double> out0 = out_acc.to_f64();
      backend.moe_unpermute(y, order, w, out_acc, true);
      CHECK(rel_error(out_acc.to_f64(), plus(out0, want_out)) <= op_bound(dt));

      std::vector<double> want_dy, want_dw;
      ref_unpermute_backward(gt, yv, rp.plan.order, wv, A, N, k, D, &want_dy, &want_dw);
      HostTensor dy(dt, Shape{A, D}), dw(dt, Shape{N, k});
      poison(dy.t());
      poison(dw.t());
      backend.moe_unpermute_backward(g_tok, y, order, w, dy, dw);
      CHECK(rel_error(dy.to_f64(), want_dy) <= op_bound(dt));
      CHECK(rel_error(dw.to_f64(), want_dw) <= op_bound(dt));
      const std::vector<double> got_dw = dw.to_f64();
      for (std::size_t a = 0; a < got_dw.size(); ++a) {
        if (std::isnan(wv[a])) CHECK(got_dw[a] == 0);  // dropped slots get exactly 0
      }
    }
  }
}

TEST_CASE("moe permutation: adjoint identities in fp64", "[moe][permute]") {
  CpuBackend backend(2);
  const RandomPlan rp = random_plan(41, 6, 2, 9, "1.0", 901);
  const int N = rp.N, k = rp.k, D = rp.D, A = rp.A;
  REQUIRE(A < N * k);  // some assignments are dropped
  HostTensor order = int_tensor(Shape{N * k}, rp.plan.order);
  HostTensor x = random_tensor(DType::f64, Shape{N, D}, 902);
  HostTensor z = random_tensor(DType::f64, Shape{A, D}, 903);
  HostTensor r = random_tensor(DType::f64, Shape{N, D}, 904);
  HostTensor w = float_tensor(DType::f64, Shape{N, k}, rp.w);

  // ⟨permute(x), z⟩ == ⟨x, permute_backward(z)⟩
  HostTensor xp(DType::f64, Shape{A, D}), zt(DType::f64, Shape{N, D});
  backend.moe_permute(x, order, k, xp);
  backend.fill(zt, 0.0);
  backend.moe_permute_backward(z, order, k, zt);
  const double lhs = dot(xp.to_f64(), z.to_f64()), rhs = dot(x.to_f64(), zt.to_f64());
  CHECK(std::fabs(lhs - rhs) <= 1e-12 * std::fabs(lhs));

  // ⟨unpermute(z; w), r⟩ == ⟨z, unpermute_backward(r).dy⟩
  HostTensor u(DType::f64, Shape{N, D}), dz(DType::f64, Shape{A, D});
  backend.moe_unpermute(z, order, w, u, false);
  backend.moe_unpermute_backward(r, z, order, w, dz, Tensor{});
  const double lhs2 = dot(u.to_f64(), r.to_f64()), rhs2 = dot(z.to_f64(), dz.to_f64());
  CHECK(std::fabs(lhs2 - rhs2) <= 1e-12 * std::fabs(lhs2));
}

TEST_CASE("moe permutation backwards against central finite differences in fp64",
          "[moe][permute][grad]") {
  CpuBackend backend(2);
  const RandomPlan rp = random_plan(9, 4, 2, 5, "0.75", 1201);
  const int N = rp.N, k = rp.k, D = rp.D, A = rp.A;
  REQUIRE(A < N * k);
  HostTensor order = int_tensor(Shape{N * k}, rp.plan.order);
  std::vector<double> wv = rp.w;
  for (double& v : wv) {
    if (std::isnan(v)) v = 0.3;  // finite: a perturbed dropped weight must change nothing
  }
  const std::vector<double> x0 = random_tensor(DType::f64, Shape{N, D}, 1202).to_f64();
  const std::vector<double> gv = random_tensor(DType::f64, Shape{A, D}, 1203).to_f64();
  const std::vector<double> rv = random_tensor(DType::f64, Shape{N, D}, 1204).to_f64();
  HostTensor R = float_tensor(DType::f64, Shape{N, D}, rv);

  // A nonlinear "expert" between the two: y = tanh(permute(x)) ⊙ G, then
  // L(x, w) = Σ unpermute(y; w) ⊙ R.
  auto expert = [&](const std::vector<double>& x, std::vector<double>* xp_out) {
    HostTensor xt = float_tensor(DType::f64, Shape{N, D}, x), xp(DType::f64, Shape{A, D});
    backend.moe_permute(xt, order, k, xp);
    std::vector<double> y = xp.to_f64();
    if (xp_out) *xp_out = y;
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = std::tanh(y[i]) * gv[i];
    return y;
  };
  auto loss_of_y = [&](const std::vector<double>& y, const std::vector<double>& w) {
    HostTensor yt = float_tensor(DType::f64, Shape{A, D}, y), out(DType::f64, Shape{N, D});
    backend.moe_unpermute(yt, order, float_tensor(DType::f64, Shape{N, k}, w), out, false);
    return dot(out.to_f64(), rv);
  };

  // Analytic: dy, dw from unpermute_backward; dx = permute_backward(dy ⊙ G ⊙ tanh').
  std::vector<double> xp;
  const std::vector<double> y0 = expert(x0, &xp);
  HostTensor yt = float_tensor(DType::f64, Shape{A, D}, y0), dy(DType::f64, Shape{A, D});
  HostTensor dw(DType::f64, Shape{N, k});
  poison(dy.t());
  poison(dw.t());
  backend.moe_unpermute_backward(R, yt, order, float_tensor(DType::f64, Shape{N, k}, wv), dy, dw);
  std::vector<double> dxp = dy.to_f64();
  for (std::size_t i = 0; i < dxp.size(); ++i) {
    const double t = std::tanh(xp[i]);
    dxp[i] *= gv[i] * (1 - t * t);
  }
  HostTensor dx(DType::f64, Shape{N, D});
  backend.fill(dx, 0.0);
  backend.moe_permute_backward(float_tensor(DType::f64, Shape{A, D}, dxp), order, k, dx);

  const double h = 1e-6;
  auto central = [&](std::vector<double> v, const auto& f) {
    std::vector<double> g(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      const double v0 = v[i];
      v[i] = v0 + h;
      const double up = f(v);
      v[i] = v0 - h;
      const double down = f(v);
      v[i] = v0;
      g[i] = (up - down) / (2 * h);
    }
    return g;
  };
  const auto fd_y = central(y0, [&](const std::vector<double>& y) { return loss_of_y(y, wv); });
  const auto fd_w = central(wv, [&](const std::vector<double>& w) { return loss_of_y(y0, w); });
  const auto fd_x =
      central(x0, [&](const std::vector<double>& x) { return loss_of_y(expert(x, nullptr), wv); });
  CHECK(rel_error(dy.to_f64(), fd_y) <= kFiniteDifferenceBound);
  CHECK(rel_error(dw.to_f64(), fd_w) <= kFiniteDifferenceBound);
  CHECK(rel_error(dx.to_f64(), fd_x) <= kFiniteDifferenceBound);
}

TEST_CASE("moe routing and permutation give the same bits on 1 and 2 threads",
          "[moe][determinism]") {
  CpuBackend one(1), two(2);
  // Big enough that every op's loop passes the CPU backend's parallel grain.
  const int N = 4096, E = 16, k = 4, D = 16;
  HostTensor probs = random_tensor(DType::f32, Shape{N, E}, 1301, 0.0, 1.0);
  for (std::int64_t i = 0; i < probs.t().numel(); ++i) {  // a coarse grid: many ties
    float& v = probs.data<float>()[i];
    v = std::floor(v * 8) / 8;
  }
  auto run = [&](Backend& be) {
    std::vector<std::vector<double>> results;
    HostTensor ids(DType::i32, Shape{N, k}), w(DType::f32, Shape{N, k});
    HostTensor keep(DType::i32, Shape{N, k}), order(DType::i32, Shape{N * k});
    HostTensor counts(DType::i64, Shape{E});
    be.moe_topk(probs, k, true, ids, w);
    be.moe_capacity_keep(probs, ids, moe_capacity("1.0", N, k, E), keep);
    const std::int64_t A = be.moe_dispatch_plan(ids, keep, E, order, counts);
    HostTensor x = random_tensor(DType::f32, Shape{N, D}, 1302);
    HostTensor xp(DType::f32, Shape{A, D}), dx(DType::f32, Shape{N, D});
    HostTensor out(DType::f32, Shape{N, D}), dy(DType::f32, Shape{A, D});
    HostTensor dw(DType::f32, Shape{N, k});
    be.moe_permute(x, order, k, xp);
    be.fill(dx, 0.5);
    be.moe_permute_backward(xp, order, k, dx);
    be.moe_unpermute(xp, order, w, out, false);
    be.moe_unpermute_backward(x, xp, order, w, dy, dw);
    for (const HostTensor* t : {&ids, &w, &keep, &order, &counts, &xp, &dx, &out, &dy, &dw}) {
      results.push_back(t->to_f64());
    }
    return results;
  };
  const auto a = run(one), b = run(two);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    CHECK(a[i] == b[i]);
  }
  CHECK(a[2] != std::vector<double>(static_cast<std::size_t>(N * k), 1.0));  // some drops
}

TEST_CASE("moe permutation rejects bad plans naming the op and argument", "[moe][checks]") {
  CpuBackend backend(1);
  auto expect_rejected = [](const std::function<void()>& call, const std::string& must_mention) {
    bool failed = false;
    const std::string err = run_expecting_failure(call, &failed);
    CAPTURE(must_mention, err);
    CHECK(failed);
    CHECK(err.find(must_mention) != std::string::npos);
  };
  HostTensor order = int_tensor(Shape{12}, {0, 4, 1, 9, 6, 10, -1, -1, -1, -1, -1, -1});
  HostTensor x = random_tensor(DType::f32, Shape{6, 3}, 1),
             y = random_tensor(DType::f32, Shape{6, 3}, 2);
  HostTensor w = random_tensor(DType::f32, Shape{6, 2}, 3), w64(DType::f64, Shape{6, 2});
  HostTensor out(DType::f32, Shape{6, 3}), out7(DType::f32, Shape{7, 3}),
      out5(DType::f32, Shape{5, 3});
  HostTensor dw_bad(DType::f32, Shape{6, 3}), dout4(DType::f32, Shape{6, 4});
  expect_rejected(
      [&] {
        order.data<std::int32_t>()[2] = 12;
        backend.moe_permute(x, order, 2, out);
      },
      "moe_permute: order[2] = 12 is outside [-1, N·k = 12)");
  expect_rejected(
      [&] {
        order.data<std::int32_t>()[8] = -2;
        backend.moe_unpermute(y, order, w, out, false);
      },
      "moe_unpermute: order[8] = -2 is outside");
  expect_rejected([&] { backend.moe_permute(x, order, 2, out7); }, "order[6] = -1 but");
  expect_rejected([&] { backend.moe_permute(x, order, 2, out5); }, "is past the A = 5");
  expect_rejected(
      [&] {
        order.data<std::int32_t>()[3] = 0;
        backend.moe_permute_backward(y, order, 2, x);
      },
      "moe_permute_backward: order[3] = 0 repeats order[0]");
  expect_rejected([&] { backend.moe_permute(x, order, 0, out); }, "moe_permute: k = 0");
  expect_rejected([&] { backend.moe_permute(x, order, 3, out); }, "moe_permute: order has shape");
  expect_rejected([&] { backend.moe_unpermute(y, order, w64, out, false); },
                  "moe_unpermute: weights");
  expect_rejected([&] { backend.moe_unpermute_backward(x, y, order, w, out, dw_bad); },
                  "moe_unpermute_backward: d_weights");
  expect_rejected([&] { backend.moe_permute_backward(dout4, order, 2, x); },
                  "moe_permute_backward: dout");
  bool failed = true;
  run_expecting_failure(
      [&] {
        backend.moe_permute(x, order, 2, out);
        backend.moe_permute_backward(out, order, 2, x);
        backend.moe_unpermute(y, order, w, out, false);
        backend.moe_unpermute_backward(x, y, order, w, out, w);
      },
      &failed);
  CHECK_FALSE(failed);
}

}  // namespace
}  // namespace linmoe::testing
