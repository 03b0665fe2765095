// The vector-decay LSM core on the GPU (MODEL.md section 3: gla, hgrn2; contract in
// kernels/ops.h): the launchers. The chunked algorithm and its kernels are in
// lsm_decay_chunk.cuh (kVector = true: one log decay per token, head and key channel; every
// decay factor is the exponent of a within-chunk difference that is ≤ 0).
#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/lsm_decay_chunk.cuh"

namespace linmoe {
namespace {

using cuda::i64;
using cuda::lsm_decay::check_rows;
using cuda::lsm_decay::check_state;
using cuda::lsm_decay::Dims;

// Checks q, k, v, log_decay and chunk_size (and the optional initial state); returns the sizes.
Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_decay,
                  int chunk_size, const Tensor& initial_state, const char* op) {
  LINMOE_CHECK(q.ndim() == 4, op, ": q must be [B, T, H, Dk], got ", q.str());
  LINMOE_CHECK(v.ndim() == 4, op, ": v must be [B, T, H, Dv], got ", v.str());
  Dims d;
  d.B = q.shape[0], d.T = q.shape[1], d.H = q.shape[2], d.Dk = q.shape[3];
  d.Hk = d.H;
  d.Dv = v.shape[3];
  d.C = cuda::lsm_decay::effective_chunk(chunk_size, d.T, op);
  const DType dt = q.dtype;
  check_rows(q, q.shape, dt, op, "q");
  check_rows(k, q.shape, dt, op, "k");
  check_rows(v, Shape{d.B, d.T, d.H, d.Dv}, dt, op, "v");
  check_rows(log_decay, q.shape, dt, op, "log_decay");
  if (initial_state.defined()) check_state(initial_state, d, dt, op, "initial_state");
  return d;
}

}  // namespace

void CudaBackend::lsm_vector_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& log_decay, double scale, int chunk_size,
                                           const Tensor& initial_state, const Tensor& o,
                                           const Tensor& final_state) {
  const char* op = "lsm_vector_decay_forward";
  const Dims d = check_inputs(q, k, v, log_decay, chunk_size, initial_state, op);
  check_rows(o, v.shape, q.dtype, op, "o");
  if (final_state.defined()) check_state(final_state, d, q.dtype, op, "final_state");
  cuda::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::lsm_decay::forward<true, T>(*this, d, q, k, v, log_decay, scale, initial_state, o,
                                      final_state);
  });
}

void CudaBackend::lsm_vector_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& log_decay, double scale, int chunk_size,
                                            const Tensor& initial_state, const Tensor& d_o,
                                            const Tensor& d_final_state, const Tensor& dq,
                                            const Tensor& dk, const Tensor& dv,
                                            const Tensor& d_log_decay,
                                            const Tensor& d_initial_state) {
  const char* op = "lsm_vector_decay_backward";
  const Dims d = check_inputs(q, k, v, log_decay, chunk_size, initial_state, op);
  const DType dt = q.dtype;
  check_rows(d_o, v.shape, dt, op, "d_o");
  if (d_final_state.defined()) check_state(d_final_state, d, dt, op, "d_final_state");
  check_rows(dq, q.shape, dt, op, "dq");
  check_rows(dk, q.shape, dt, op, "dk");
  check_rows(dv, v.shape, dt, op, "dv");
  if (d_log_decay.defined()) check_rows(d_log_decay, q.shape, dt, op, "d_log_decay");
  if (d_initial_state.defined()) check_state(d_initial_state, d, dt, op, "d_initial_state");
  cuda::dispatch_float(dt, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::lsm_decay::backward<true, T>(*this, d, q, k, v, log_decay, scale, initial_state, d_o,
                                       d_final_state, dq, dk, dv, d_log_decay, d_initial_state);
  });
}

}  // namespace linmoe
