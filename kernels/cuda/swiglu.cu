// SwiGLU on the GPU: out = silu(gate) ⊙ up (MODEL.md 1) and its backward, as vectorised maps
// (pointwise.cuh) with the formulas of kernels/cpu/swiglu.cpp.
#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/pointwise.cuh"

namespace linmoe {
namespace {

using cuda::MapPointers;

struct SwigluOp {  // {gate, up} -> {gate · s(gate) · up}
  template <class C>
  __device__ void operator()(const C* x, C* y) const {
    y[0] = x[0] * cuda::sigmoid(x[0]) * x[1];
  }
};

// {gate, up, dout} -> {dgate, dup}: dgate = dout · up · silu'(gate), silu'(g) = s(1 + g(1 − s));
// dup = dout · silu(gate). The map reads every input before writing, so outputs may alias inputs.
struct SwigluGradOp {
  template <class C>
  __device__ void operator()(const C* x, C* y) const {
    const C g = x[0], u = x[1], d = x[2];
    const C s = cuda::sigmoid(g);
    y[0] = d * u * s * (C(1) + g * (C(1) - s));
    y[1] = d * g * s;
  }
};

void check_like(const Tensor& t, const Tensor& ref, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, ref.dtype, op, arg);
  check_shape(t, ref.shape, op, arg);
}

}  // namespace

void CudaBackend::swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  const char* op = "swiglu_forward";
  cuda::check_contiguous(gate, op, "gate");
  check_like(up, gate, op, "up");
  check_like(out, gate, op, "out");
  cuda::dispatch_float(gate.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::launch_map(
        ctx_->stream, SwigluOp{},
        MapPointers<T, 2, 1>{{static_cast<const T*>(gate.data), static_cast<const T*>(up.data)},
                             {static_cast<T*>(out.data)}},
        gate.numel());
  });
}

void CudaBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout,
                                  const Tensor& dgate, const Tensor& dup) {
  const char* op = "swiglu_backward";
  cuda::check_contiguous(gate, op, "gate");
  check_like(up, gate, op, "up");
  check_like(dout, gate, op, "dout");
  check_like(dgate, gate, op, "dgate");
  check_like(dup, gate, op, "dup");
  cuda::dispatch_float(gate.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::launch_map(
        ctx_->stream, SwigluGradOp{},
        MapPointers<T, 3, 2>{{static_cast<const T*>(gate.data), static_cast<const T*>(up.data),
                              static_cast<const T*>(dout.data)},
                             {static_cast<T*>(dgate.data), static_cast<T*>(dup.data)}},
        gate.numel());
  });
}

}  // namespace linmoe
