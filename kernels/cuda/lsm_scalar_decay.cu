// The scalar-decay LSM core on the GPU (MODEL.md section 3: linear_attention, lightning,
// retention, mamba2; contract in kernels/ops.h): the launchers. The chunked algorithm and its
// kernels are in lsm_decay_chunk.cuh (kVector = false: one log decay per token and head; head h
// reads q/k head ⌊h·Hk/H⌋). bf16 calls with chunk_size 64, Dk and Dv in {64, 128} and 16-byte
// aligned rows go to the tensor-core kernels of lsm_scalar_decay_mma.cuh instead
// (launched from lsm_scalar_decay_mma_launch.cuh).
#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/lsm_decay_chunk.cuh"
#include "kernels/cuda/lsm_scalar_decay_mma_launch.cuh"

namespace linmoe {
namespace {

using cuda::i64;
using cuda::lsm_decay::check_rows;
using cuda::lsm_decay::check_state;
using cuda::lsm_decay::Dims;

// Checks q, k, v, log_decay and chunk_size (and the optional initial state); returns the sizes.
Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_decay,
                  int chunk_size, const Tensor& initial_state, const char* op) {
  LINMOE_CHECK(q.ndim() == 4, op, ": q must be [B, T, Hk, Dk], got ", q.str());
  LINMOE_CHECK(v.ndim() == 4, op, ": v must be [B, T, H, Dv], got ", v.str());
  Dims d;
  d.B = q.shape[0], d.T = q.shape[1], d.Hk = q.shape[2], d.Dk = q.shape[3];
  d.H = v.shape[2], d.Dv = v.shape[3];
  d.C = cuda::lsm_decay::effective_chunk(chunk_size, d.T, op);
  LINMOE_CHECK(d.Hk >= 1 && d.H % d.Hk == 0, op, ": ", d.H, " heads cannot share ", d.Hk,
               " q/k heads (H % Hk must be 0)");
  const DType dt = q.dtype;
  check_rows(q, q.shape, dt, op, "q");
  check_rows(k, Shape{d.B, d.T, d.Hk, d.Dk}, dt, op, "k");
  check_rows(v, Shape{d.B, d.T, d.H, d.Dv}, dt, op, "v");
  check_rows(log_decay, Shape{d.B, d.T, d.H}, dt, op, "log_decay");
  if (initial_state.defined()) check_state(initial_state, d, dt, op, "initial_state");
  return d;
}

}  // namespace

void CudaBackend::lsm_scalar_decay_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& log_decay, double scale, int chunk_size,
                                           const Tensor& initial_state, const Tensor& o,
                                           const Tensor& final_state) {
  const char* op = "lsm_scalar_decay_forward";
  const Dims d = check_inputs(q, k, v, log_decay, chunk_size, initial_state, op);
  check_rows(o, v.shape, q.dtype, op, "o");
  if (final_state.defined()) check_state(final_state, d, q.dtype, op, "final_state");
  const Tensor* rows[] = {&q, &k, &v, &o};
  if (q.dtype == DType::bf16 && cuda::lsm_mma::supports(d, chunk_size, rows, 4)) {
    cuda::lsm_mma::dispatch_dims(d.Dk, d.Dv, [&](auto dk, auto dv) {
      cuda::lsm_mma::forward<decltype(dk)::value, decltype(dv)::value>(
          *this, d, q, k, v, log_decay, scale, initial_state, o, final_state);
    });
    return;
  }
  cuda::dispatch_float(q.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::lsm_decay::forward<false, T>(*this, d, q, k, v, log_decay, scale, initial_state, o,
                                       final_state);
  });
}

void CudaBackend::lsm_scalar_decay_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& log_decay, double scale, int chunk_size,
                                            const Tensor& initial_state, const Tensor& d_o,
                                            const Tensor& d_final_state, const Tensor& dq,
                                            const Tensor& dk, const Tensor& dv,
                                            const Tensor& d_log_decay,
                                            const Tensor& d_initial_state) {
  const char* op = "lsm_scalar_decay_backward";
  const Dims d = check_inputs(q, k, v, log_decay, chunk_size, initial_state, op);
  const DType dt = q.dtype;
  check_rows(d_o, v.shape, dt, op, "d_o");
  if (d_final_state.defined()) check_state(d_final_state, d, dt, op, "d_final_state");
  check_rows(dq, q.shape, dt, op, "dq");
  check_rows(dk, q.shape, dt, op, "dk");
  check_rows(dv, v.shape, dt, op, "dv");
  if (d_log_decay.defined()) check_rows(d_log_decay, log_decay.shape, dt, op, "d_log_decay");
  if (d_initial_state.defined()) check_state(d_initial_state, d, dt, op, "d_initial_state");
  const Tensor* rows[] = {&q, &k, &v, &d_o, &dq, &dk, &dv};
  if (dt == DType::bf16 && cuda::lsm_mma::supports(d, chunk_size, rows, 7)) {
    cuda::lsm_mma::dispatch_dims(d.Dk, d.Dv, [&](auto dk_c, auto dv_c) {
      cuda::lsm_mma::backward<decltype(dk_c)::value, decltype(dv_c)::value>(
          *this, d, q, k, v, log_decay, scale, initial_state, d_o, d_final_state, dq, dk, dv,
          d_log_decay, d_initial_state);
    });
    return;
  }
  cuda::dispatch_float(dt, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::lsm_decay::backward<false, T>(*this, d, q, k, v, log_decay, scale, initial_state, d_o,
                                        d_final_state, dq, dk, dv, d_log_decay, d_initial_state);
  });
}

}  // namespace linmoe
