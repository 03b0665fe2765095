// AdamW and SGD updates of one contiguous parameter range on the GPU (MODEL.md 5), fused into one
// vectorised pass each (pointwise.cuh), with the arithmetic of kernels/cpu/optimizer.cpp:
// coefficients formed in double on the host, then rounded to the compute type.
#include <cmath>

#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/pointwise.cuh"

namespace linmoe {
namespace {

using cuda::MapPointers;

// {p, g, m, v} -> {p, m, v}.
template <class C>
struct AdamwOp {
  C decay, b1, b2, c1, c2, step_size, inv_sqrt_bc2, eps;
  __device__ void operator()(const C* x, C* y) const {
    const C p = x[0], g = x[1];
    const C m = b1 * x[2] + c1 * g;
    const C v = b2 * x[3] + c2 * g * g;
    // p·(1 − lr·wd) − lr·m̂/(sqrt(v̂) + eps), with m̂ = m/bc1, sqrt(v̂) = sqrt(v)/sqrt(bc2).
    y[0] = p * decay - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps);
    y[1] = m;
    y[2] = v;
  }
};

// {p, g, buf} -> {p, buf} (momentum), or {p, g} -> {p} (no buffer).
template <class C>
struct SgdOp {
  C wd, mu, rate;
  bool first;  // step 1: torch starts the buffer as d itself
  __device__ void operator()(const C* x, C* y) const {
    const C d = x[1] + wd * x[0];
    const C upd = first ? d : mu * x[2] + d;
    y[0] = x[0] - rate * upd;
    y[1] = upd;
  }
};
template <class C>
struct SgdPlainOp {
  C wd, rate;
  __device__ void operator()(const C* x, C* y) const {
    const C d = x[1] + wd * x[0];
    y[0] = x[0] - rate * d;
  }
};

void check_state(const Tensor& t, const Tensor& p, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, p.dtype, op, arg);
  check_shape(t, p.shape, op, arg);
}

}  // namespace

void CudaBackend::adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                               double lr, double beta1, double beta2, double eps,
                               double weight_decay, std::int64_t step) {
  const char* op = "adamw_update";
  LINMOE_CHECK(step >= 1, op, ": step ", step, " must be >= 1");
  cuda::check_contiguous(p, op, "p");
  check_state(g, p, op, "g");
  check_state(m, p, op, "m");
  check_state(v, p, op, "v");
  // Bias corrections in double: 1 − β^s loses digits in f32 for large s.
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  cuda::dispatch_float(p.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using C = cuda::compute_t<T>;
    // 1 − β is formed in double: 1 − 0.999f in f32 is off by 1e-5 relative.
    const AdamwOp<C> f{static_cast<C>(1.0 - lr * weight_decay),
                       static_cast<C>(beta1),
                       static_cast<C>(beta2),
                       static_cast<C>(1.0 - beta1),
                       static_cast<C>(1.0 - beta2),
                       static_cast<C>(lr / bc1),
                       static_cast<C>(1.0 / std::sqrt(bc2)),
                       static_cast<C>(eps)};
    auto in = [](const Tensor& t) { return static_cast<const T*>(t.data); };
    auto out = [](const Tensor& t) { return static_cast<T*>(t.data); };
    cuda::launch_map(ctx_->stream, f,
                     MapPointers<T, 4, 3>{{in(p), in(g), in(m), in(v)}, {out(p), out(m), out(v)}},
                     p.numel());
  });
}

void CudaBackend::sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, double lr,
                             double momentum, double weight_decay, std::int64_t step) {
  const char* op = "sgd_update";
  LINMOE_CHECK(step >= 1, op, ": step ", step, " must be >= 1");
  cuda::check_contiguous(p, op, "p");
  check_state(g, p, op, "g");
  const bool use_buf = momentum != 0.0;
  if (use_buf) check_state(buf, p, op, "buf");
  cuda::dispatch_float(p.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using C = cuda::compute_t<T>;
    auto in = [](const Tensor& t) { return static_cast<const T*>(t.data); };
    auto out = [](const Tensor& t) { return static_cast<T*>(t.data); };
    const C wd = static_cast<C>(weight_decay), rate = static_cast<C>(lr);
    if (use_buf) {
      cuda::launch_map(ctx_->stream, SgdOp<C>{wd, static_cast<C>(momentum), rate, step == 1},
                       MapPointers<T, 3, 2>{{in(p), in(g), in(buf)}, {out(p), out(buf)}},
                       p.numel());
    } else {
      cuda::launch_map(ctx_->stream, SgdPlainOp<C>{wd, rate},
                       MapPointers<T, 2, 1>{{in(p), in(g)}, {out(p)}}, p.numel());
    }
  });
}

}  // namespace linmoe
