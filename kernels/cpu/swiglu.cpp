// SwiGLU: out = silu(gate) ⊙ up (MODEL.md 1), and its backward.
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_math.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

using cpu::sigmoid;

}  // namespace

void CpuBackend::swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  const char* op = "swiglu_forward";
  cpu::check_host_contiguous(gate, gate.dtype, op, "gate");
  cpu::check_like(up, gate, op, "up");
  cpu::check_like(out, gate, op, "out");
  const i64 n = gate.numel();
  cpu::dispatch_float(gate.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* g = static_cast<const T*>(gate.data);
    const T* u = static_cast<const T*>(up.data);
    T* o = static_cast<T*>(out.data);
#pragma omp parallel for num_threads(cpu::threads_for(n, threads_)) schedule(static)
    for (i64 i = 0; i < n; ++i) o[i] = g[i] * sigmoid(g[i]) * u[i];
  });
}

// dgate = dout · up · silu'(gate), silu'(g) = s(1 + g(1 − s)); dup = dout · silu(gate).
void CpuBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout,
                                 const Tensor& dgate, const Tensor& dup) {
  const char* op = "swiglu_backward";
  cpu::check_host_contiguous(gate, gate.dtype, op, "gate");
  cpu::check_like(up, gate, op, "up");
  cpu::check_like(dout, gate, op, "dout");
  cpu::check_like(dgate, gate, op, "dgate");
  cpu::check_like(dup, gate, op, "dup");
  const i64 n = gate.numel();
  cpu::dispatch_float(gate.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    const T* g = static_cast<const T*>(gate.data);
    const T* u = static_cast<const T*>(up.data);
    const T* d = static_cast<const T*>(dout.data);
    T* dg = static_cast<T*>(dgate.data);
    T* du = static_cast<T*>(dup.data);
#pragma omp parallel for num_threads(cpu::threads_for(n, threads_)) schedule(static)
    for (i64 i = 0; i < n; ++i) {
      const T s = sigmoid(g[i]);
      const T gi = g[i], ui = u[i], di = d[i];  // read before writing: outputs may alias inputs
      dg[i] = di * ui * s * (T(1) + gi * (T(1) - s));
      du[i] = di * gi * s;
    }
  });
}

}  // namespace linmoe
