// Optimizer updates and LR schedules against hand-computed numbers (MODEL.md 5).
#include <catch2/catch.hpp>

#include "core/config.h"
#include "core/parameter_store.h"
#include "kernels/cpu/cpu_backend.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"

using namespace linmoe;

namespace {
// A store with a matrix (decayed) and a vector (not decayed), every element 1.
struct TwoParams {
  ParameterStore store;
  int w, b;
  TwoParams() {
    w = store.add(whole_param("w", Shape{2, 2}));
    b = store.add(whole_param("b", Shape{3}));
    store.allocate(host_allocator(), DType::f32, DType::f32);
    for (int id : {w, b}) {
      Tensor p = store.param(id);
      for (std::int64_t i = 0; i < p.numel(); ++i) p.ptr<float>()[i] = 1.0f;
    }
  }
  void set_grads(float g) {
    for (int id : {w, b}) {
      Tensor t = store.grad(id);
      for (std::int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = g;
    }
  }
  float w0() { return store.param(w).ptr<float>()[0]; }
  float b0() { return store.param(b).ptr<float>()[0]; }
};
}  // namespace

TEST_CASE("optimizer: AdamW matches PyTorch's update, decay only on matrices", "[optimizer]") {
  OptimizerConfig c;
  c.type = OptimizerType::adamw;
  c.beta1 = 0.9;
  c.beta2 = 0.999;
  c.eps = 1e-8;
  c.weight_decay = 0.1;
  auto backend = make_cpu_backend(1);
  TwoParams t;
  Optimizer opt(c, *backend, t.store);
  // Expected values computed independently (float64 Python of torch's formula).
  const double expected_w[] = {0.890000002, 0.8544662986878463, 0.7788568715222746};
  const float grads[] = {0.5f, -0.25f, 2.0f};
  for (int s = 1; s <= 3; ++s) {
    t.set_grads(grads[s - 1]);
    opt.step(t.store.flat_grads(), 0.1, s);
    CHECK(t.w0() == Approx(expected_w[s - 1]).epsilon(2e-6));  // f32 state
  }
  // The vector has no weight decay: step 1 is 1 − 0.1·0.5/(0.5 + 1e-8).
  TwoParams u;
  Optimizer opt2(c, *backend, u.store);
  u.set_grads(0.5f);
  opt2.step(u.store.flat_grads(), 0.1, 1);
  CHECK(u.b0() == Approx(1.0 - 0.1 * 0.5 / (0.5 + 1e-8)).epsilon(1e-6));
  CHECK(u.w0() == Approx(0.890000002).epsilon(1e-6));
  CHECK(opt2.state("exp_avg").ptr<float>()[0] == Approx(0.05));
  CHECK(opt2.state("exp_avg_sq").ptr<float>()[0] == Approx(0.00025));
}

TEST_CASE("optimizer: SGD with momentum and weight decay as torch.optim.SGD", "[optimizer]") {
  OptimizerConfig c;
  c.type = OptimizerType::sgd;
  c.momentum = 0.9;
  c.weight_decay = 0.1;
  auto backend = make_cpu_backend(1);
  TwoParams t;
  Optimizer opt(c, *backend, t.store);
  t.set_grads(0.5f);
  opt.step(t.store.flat_grads(), 0.1, 1);  // d = 0.6, buf = 0.6, p = 0.94
  CHECK(t.w0() == Approx(0.94));
  CHECK(t.b0() == Approx(0.95));  // no decay on vectors: d = 0.5
  t.set_grads(-0.25f);
  opt.step(t.store.flat_grads(), 0.1,
           2);  // d = −0.25 + 0.094 = −0.156, buf = 0.54 − 0.156 = 0.384, p = 0.9016
  CHECK(t.w0() == Approx(0.9016));

  c.momentum = 0.0;  // plain SGD: p ← p − lr·(g + wd·p)
  TwoParams u;
  Optimizer plain(c, *backend, u.store);
  u.set_grads(0.5f);
  plain.step(u.store.flat_grads(), 0.1, 1);
  CHECK(u.w0() == Approx(0.94));
}

TEST_CASE("optimizer: a ZeRO-style range updates exactly its elements", "[optimizer]") {
  OptimizerConfig c;
  auto backend = make_cpu_backend(1);
  TwoParams whole, split;
  whole.set_grads(0.3f);
  split.set_grads(0.3f);
  Optimizer all(c, *backend, whole.store);
  all.step(whole.store.flat_grads(), 0.01, 1);
  const std::int64_t mid = split.store.offset_of(split.b) + 1;  // cuts tensor b in two
  Optimizer lo(c, *backend, split.store, 0, mid), hi(c, *backend, split.store, mid);
  lo.step(split.store.flat_grads(), 0.01, 1);
  hi.step(split.store.flat_grads(), 0.01, 1);
  const float* a = whole.store.flat_params().ptr<float>();
  const float* b = split.store.flat_params().ptr<float>();
  for (std::int64_t i = 0; i < whole.store.padded_numel(); ++i) REQUIRE(a[i] == b[i]);
  CHECK(whole.w0() != 1.0f);
}

TEST_CASE("lr schedule: warmup, cosine, constant, wsd", "[schedule]") {
  OptimizerConfig c;
  c.lr = 1.0;
  c.min_lr = 0.1;
  c.schedule.warmup_steps = 10;
  c.schedule.decay_steps = 110;
  c.schedule.type = ScheduleType::cosine;
  CHECK(learning_rate(c, 1) == Approx(0.1));
  CHECK(learning_rate(c, 5) == Approx(0.5));
  CHECK(learning_rate(c, 10) == Approx(1.0));
  CHECK(learning_rate(c, 60) == Approx(0.55));  // halfway: min + ½(lr − min)
  CHECK(learning_rate(c, 35) == Approx(0.1 + 0.45 * (1 + std::cos(M_PI / 4))));
  CHECK(learning_rate(c, 110) == Approx(0.1));
  CHECK(learning_rate(c, 500) == Approx(0.1));
  c.schedule.type = ScheduleType::constant;
  CHECK(learning_rate(c, 3) == Approx(0.3));
  CHECK(learning_rate(c, 500) == Approx(1.0));
  c.schedule.type = ScheduleType::wsd;
  c.schedule.decay_start = 50;
  c.schedule.decay_steps = 100;
  CHECK(learning_rate(c, 30) == Approx(1.0));
  CHECK(learning_rate(c, 50) == Approx(1.0));
  CHECK(learning_rate(c, 75) == Approx(0.55));
  CHECK(learning_rate(c, 100) == Approx(0.1));
  CHECK(learning_rate(c, 101) == Approx(0.1));
  c.schedule.warmup_steps = 0;
  CHECK(learning_rate(c, 1) == Approx(1.0));
}
