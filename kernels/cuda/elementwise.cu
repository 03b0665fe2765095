// Element-wise ops on the GPU: add, mul, axpy, scale, and the activations with their derivatives
// (the same formulas as kernels/cpu/elementwise.cpp), each one vectorised map (pointwise.cuh).
#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/pointwise.cuh"

namespace linmoe {
namespace {

using cuda::i64;
using cuda::MapPointers;

// f(x) and f'(x) of each activation (MODEL.md conventions; elu1 = elu(x) + 1).
template <class C>
__device__ __forceinline__ C activation_value(Activation f, C x) {
  switch (f) {
    case Activation::identity:
      return x;
    case Activation::silu:
      return x * cuda::sigmoid(x);
    case Activation::sigmoid:
      return cuda::sigmoid(x);
    case Activation::elu1:
      return x > C(0) ? x + C(1) : cuda::exp_of(x);
    case Activation::relu:
      return x > C(0) ? x : C(0);
    case Activation::softplus:
      return cuda::softplus(x);
    case Activation::logsigmoid:
      return -cuda::softplus(-x);
  }
  return x;
}

template <class C>
__device__ __forceinline__ C activation_derivative(Activation f, C x) {
  switch (f) {
    case Activation::identity:
      return C(1);
    case Activation::silu: {
      const C s = cuda::sigmoid(x);
      return s * (C(1) + x * (C(1) - s));
    }
    case Activation::sigmoid: {
      const C s = cuda::sigmoid(x);
      return s * (C(1) - s);
    }
    case Activation::elu1:
      return x > C(0) ? C(1) : cuda::exp_of(x);
    case Activation::relu:
      return x > C(0) ? C(1) : C(0);
    case Activation::softplus:
      return cuda::sigmoid(x);
    case Activation::logsigmoid:
      return cuda::sigmoid(-x);
  }
  return C(1);
}

// ---- the maps
// ------------------------------------------------------------------------------------

struct AddOp {  // {a, b} -> {a + b}
  template <class C>
  __device__ void operator()(const C* x, C* y) const {
    y[0] = x[0] + x[1];
  }
};
struct MulOp {  // {a, b} -> {a · b}
  template <class C>
  __device__ void operator()(const C* x, C* y) const {
    y[0] = x[0] * x[1];
  }
};
struct AxpyOp {  // {x, y} -> {y + alpha · x}
  double alpha;
  template <class C>
  __device__ void operator()(const C* x, C* y) const {
    y[0] = x[1] + static_cast<C>(alpha) * x[0];
  }
};
// y += alpha · x with x bf16 and y f32 (the mixed-precision gradient accumulation).
__global__ void axpy_bf16_into_f32(float alpha, const __nv_bfloat16* x, float* y, i64 n) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] += alpha * cuda::load(x + i);
  }
}

struct ScaleOp {  // {x} -> {x · s}
  double s;
  template <class C>
  __device__ void operator()(const C* x, C* y) const {
    y[0] = x[0] * static_cast<C>(s);
  }
};
struct ActivationOp {  // {x} -> {f(x)}
  Activation f;
  template <class C>
  __device__ void operator()(const C* x, C* y) const {
    y[0] = activation_value(f, x[0]);
  }
};
struct ActivationGradOp {  // {x, dy} -> {dy · f'(x)}
  Activation f;
  template <class C>
  __device__ void operator()(const C* x, C* y) const {
    y[0] = x[1] * activation_derivative(f, x[0]);
  }
};
struct ActivationGradAccumulateOp {  // {x, dy, dx} -> {dx + dy · f'(x)}
  Activation f;
  template <class C>
  __device__ void operator()(const C* x, C* y) const {
    y[0] = x[2] + x[1] * activation_derivative(f, x[0]);
  }
};

// ---- checks (mirror kernels/cpu/elementwise.cpp) ------------------------------------------------

void check_like(const Tensor& t, const Tensor& ref, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, ref.dtype, op, arg);
  check_shape(t, ref.shape, op, arg);
}

void check_activation(Activation f, const char* op) {
  switch (f) {
    case Activation::identity:
    case Activation::silu:
    case Activation::sigmoid:
    case Activation::elu1:
    case Activation::relu:
    case Activation::softplus:
    case Activation::logsigmoid:
      return;
  }
  LINMOE_CHECK(false, op, ": unknown activation ", static_cast<int>(f));
}

template <class T>
const T* in_ptr(const Tensor& t) {
  return static_cast<const T*>(t.data);
}
template <class T>
T* out_ptr(const Tensor& t) {
  return static_cast<T*>(t.data);
}

}  // namespace

void CudaBackend::add(const Tensor& a, const Tensor& b, const Tensor& out) {
  const char* op = "add";
  cuda::check_contiguous(a, op, "a");
  check_like(b, a, op, "b");
  check_like(out, a, op, "out");
  cuda::dispatch_float(a.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::launch_map(ctx_->stream, AddOp{},
                     MapPointers<T, 2, 1>{{in_ptr<T>(a), in_ptr<T>(b)}, {out_ptr<T>(out)}},
                     a.numel());
  });
}

void CudaBackend::mul(const Tensor& a, const Tensor& b, const Tensor& out) {
  const char* op = "mul";
  cuda::check_contiguous(a, op, "a");
  check_like(b, a, op, "b");
  check_like(out, a, op, "out");
  cuda::dispatch_float(a.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::launch_map(ctx_->stream, MulOp{},
                     MapPointers<T, 2, 1>{{in_ptr<T>(a), in_ptr<T>(b)}, {out_ptr<T>(out)}},
                     a.numel());
  });
}

void CudaBackend::axpy(double alpha, const Tensor& x, const Tensor& y) {
  const char* op = "axpy";
  cuda::check_contiguous(x, op, "x");
  if (x.dtype == DType::bf16 && y.dtype == DType::f32) {  // bf16 gradients into fp32 main grads
    cuda::check_contiguous(y, op, "y");
    check_shape(y, x.shape, op, "y");
    const i64 n = x.numel();
    if (n > 0) {
      axpy_bf16_into_f32<<<cuda::blocks_for(n, 256), 256, 0, ctx_->stream>>>(
          static_cast<float>(alpha), in_ptr<__nv_bfloat16>(x), out_ptr<float>(y), n);
      CUDA_CHECK(cudaGetLastError());
    }
    return;
  }
  check_like(y, x, op, "y");
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::launch_map(ctx_->stream, AxpyOp{alpha},
                     MapPointers<T, 2, 1>{{in_ptr<T>(x), in_ptr<T>(y)}, {out_ptr<T>(y)}},
                     x.numel());
  });
}

void CudaBackend::scale(const Tensor& x, double s) {
  const char* op = "scale";
  cuda::check_contiguous(x, op, "x");
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::launch_map(ctx_->stream, ScaleOp{s},
                     MapPointers<T, 1, 1>{{in_ptr<T>(x)}, {out_ptr<T>(x)}}, x.numel());
  });
}

void CudaBackend::activation_forward(Activation f, const Tensor& x, const Tensor& y) {
  const char* op = "activation_forward";
  check_activation(f, op);
  cuda::check_contiguous(x, op, "x");
  check_like(y, x, op, "y");
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::launch_map(ctx_->stream, ActivationOp{f},
                     MapPointers<T, 1, 1>{{in_ptr<T>(x)}, {out_ptr<T>(y)}}, x.numel());
  });
}

void CudaBackend::activation_backward(Activation f, const Tensor& x, const Tensor& dy,
                                      const Tensor& dx, bool accumulate) {
  const char* op = "activation_backward";
  check_activation(f, op);
  cuda::check_contiguous(x, op, "x");
  check_like(dy, x, op, "dy");
  check_like(dx, x, op, "dx");
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    if (accumulate) {
      cuda::launch_map(
          ctx_->stream, ActivationGradAccumulateOp{f},
          MapPointers<T, 3, 1>{{in_ptr<T>(x), in_ptr<T>(dy), in_ptr<T>(dx)}, {out_ptr<T>(dx)}},
          x.numel());
    } else {
      cuda::launch_map(ctx_->stream, ActivationGradOp{f},
                       MapPointers<T, 2, 1>{{in_ptr<T>(x), in_ptr<T>(dy)}, {out_ptr<T>(dx)}},
                       x.numel());
    }
  });
}

}  // namespace linmoe
