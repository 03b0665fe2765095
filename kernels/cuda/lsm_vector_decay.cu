// The vector-decay LSM core on the GPU (MODEL.md section 3: gla, hgrn2; contract in
// kernels/ops.h): the launchers. bf16 calls with chunk_size 64, Dk and Dv in {64, 128} and
// 16-byte aligned rows go to the tensor-core kernels of lsm_vector_decay_mma.cuh; everything else
// (f32, other shapes) to the SIMT kernels of lsm_decay_chunk.cuh (kVector = true: one log decay
// per token, head and key channel; every decay factor is the exponent of a within-chunk
// difference that is ≤ 0).
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/lsm_decay_chunk.cuh"
#include "kernels/cuda/lsm_vector_decay_mma.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_vmma {
namespace {

using lsm_decay::Dims;
using lsm_decay::Workspace;

using cuda::mma_rows::aligned_rows;

// Whether a bf16 call takes this path (T = 0 stays on the SIMT kernels, which copy the state).
bool supports(const Dims& d, int chunk_size, std::initializer_list<const Tensor*> rows) {
  if (chunk_size != kChunk || d.T < 1) return false;
  if (!head_dim_supported(d.Dk) || !head_dim_supported(d.Dv)) return false;
  for (const Tensor* t : rows) {
    if (!aligned_rows(*t)) return false;
  }
  return true;
}

Rows rows_of(const Tensor& t) {
  Rows r;
  r.p = static_cast<const u16*>(t.data);
  r.sb = t.stride(0), r.st = t.stride(1), r.sh = t.stride(2);
  return r;
}
OutRows out_rows_of(const Tensor& t) {
  OutRows r;
  r.p = static_cast<u16*>(t.data);
  r.sb = t.stride(0), r.st = t.stride(1), r.sh = t.stride(2);
  return r;
}
const float* f32_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const float*>(t.data) : nullptr;
}
float* f32_out_or_null(const Tensor& t) {
  return t.defined() ? static_cast<float*>(t.data) : nullptr;
}

template <class K>
void allow_smem(K* kernel, std::size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)));
}

Problem problem_of(const Dims& d, double scale) {
  return Problem{d.B, d.T, d.H, chunk_count(d.T), static_cast<float>(scale)};
}

// Elements of the cumulative decays [B,H,NC·64,Dk].
i64 cumsum_count(const Problem& p, i64 Dk) {
  return p.B * p.H * p.NC * kChunk * Dk;
}
void launch_cumsum(cudaStream_t stream, const Problem& p, int Dk, const Tensor& log_decay,
                   float* bc) {
  const i64 n = p.B * p.H * p.NC * Dk;
  cumsum_kernel<<<blocks_for(n, kCumsumThreads), kCumsumThreads, 0, stream>>>(
      p, Dk, rows_of(log_decay), bc);
  CUDA_CHECK_LAUNCH();
}

template <int DK>
void launch_states(cudaStream_t stream, const StateArgs& a) {
  constexpr std::size_t smem = StateTiles::smem;
  static const bool ready = (allow_smem(state_kernel<DK>, smem), true);
  (void)ready;
  const dim3 grid(static_cast<unsigned>(a.p.B * a.p.H), static_cast<unsigned>(a.Dv / kVTile),
                  static_cast<unsigned>(DK / kXTile));
  state_kernel<DK><<<grid, StateTiles::kThreads, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

template <int DK, int DV>
void forward(CudaBackend& be, const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& log_decay, double scale, const Tensor& initial_state, const Tensor& o,
             const Tensor& final_state) {
  const cudaStream_t stream = be.context().stream;
  const Problem p = problem_of(d, scale);
  if (p.B * p.H == 0) return;
  const i64 nstate = p.B * p.H * p.NC * DK * DV, nb = cumsum_count(p, DK);
  Workspace ws(stream,
               Workspace::padded(sizeof(u16) * nstate) + Workspace::padded(sizeof(float) * nb));
  u16* P = ws.take<u16>(nstate);   // [B,H,NC,Dk,Dv]
  float* bc = ws.take<float>(nb);  // [B,H,NC·64,Dk]
  launch_cumsum(stream, p, DK, log_decay, bc);
  StateArgs sa{p,
               DV,
               rows_of(k),
               rows_of(v),
               bc,
               false,
               f32_or_null(initial_state),
               f32_out_or_null(final_state),
               P,
               nullptr,
               nullptr};
  launch_states<DK>(stream, sa);

  constexpr std::size_t smem = ChunkTiles<DK, DV>::output_smem;
  static const bool ready = (allow_smem(output_kernel<DK, DV>, smem), true);
  (void)ready;
  OutputArgs oa{p, rows_of(q), rows_of(k), rows_of(v), bc, P, out_rows_of(o)};
  output_kernel<DK, DV>
      <<<static_cast<unsigned>(p.B * p.H * p.NC), kChunkThreads, smem, stream>>>(oa);
  CUDA_CHECK_LAUNCH();
}

template <int DK, int DV>
void backward(CudaBackend& be, const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& log_decay, double scale, const Tensor& initial_state, const Tensor& d_o,
              const Tensor& d_final_state, const Tensor& dq, const Tensor& dk, const Tensor& dv,
              const Tensor& d_log_decay, const Tensor& d_initial_state) {
  const cudaStream_t stream = be.context().stream;
  const Problem p = problem_of(d, scale);
  if (p.B * p.H == 0) return;
  const int nvt = DV / kVTile;
  const i64 nstate = p.B * p.H * p.NC * DK * DV, nb = cumsum_count(p, DK);
  const i64 nbase = p.B * p.H * p.NC * nvt * DK;
  Workspace ws(stream, 2 * Workspace::padded(sizeof(u16) * nstate) +
                           Workspace::padded(sizeof(float) * nb) +
                           Workspace::padded(sizeof(float) * nbase));
  u16* P = ws.take<u16>(nstate);        // [B,H,NC,Dk,Dv]
  u16* G = ws.take<u16>(nstate);        // [B,H,NC,Dk,Dv]
  float* bc = ws.take<float>(nb);       // [B,H,NC·64,Dk]
  float* base = ws.take<float>(nbase);  // [B,H,NC,nvt,Dk]
  launch_cumsum(stream, p, DK, log_decay, bc);
  StateArgs fa{p,       DV, rows_of(k), rows_of(v), bc, false, f32_or_null(initial_state),
               nullptr, P,  nullptr,    nullptr};
  launch_states<DK>(stream, fa);
  StateArgs ra{p,
               DV,
               rows_of(q),
               rows_of(d_o),
               bc,
               true,
               f32_or_null(d_final_state),
               f32_out_or_null(d_initial_state),
               G,
               P,
               base};
  launch_states<DK>(stream, ra);

  GradArgs ga{};
  ga.p = p;
  ga.q = rows_of(q), ga.k = rows_of(k), ga.v = rows_of(v), ga.d_o = rows_of(d_o);
  ga.bc = bc, ga.P = P, ga.G = G, ga.base = base, ga.nvt = nvt;
  ga.dq = out_rows_of(dq), ga.dk = out_rows_of(dk), ga.dv = out_rows_of(dv);
  if (d_log_decay.defined() && d_log_decay.data != nullptr) {
    ga.dg = static_cast<u16*>(d_log_decay.data);
    ga.dg_sb = d_log_decay.stride(0), ga.dg_st = d_log_decay.stride(1);
    ga.dg_sh = d_log_decay.stride(2);
  }
  constexpr std::size_t smem = ChunkTiles<DK, DV>::grad_smem;
  static const bool ready = (allow_smem(grad_kernel<DK, DV>, smem), true);
  (void)ready;
  grad_kernel<DK, DV><<<static_cast<unsigned>(p.B * p.H * p.NC), kChunkThreads, smem, stream>>>(ga);
  CUDA_CHECK_LAUNCH();
}

// Calls f(DK, DV) as integral constants for Dk, Dv ∈ {64, 128} (supports() checked them).
template <class F>
void dispatch_dims(i64 Dk, i64 Dv, F&& f) {
  using C64 = std::integral_constant<int, 64>;
  using C128 = std::integral_constant<int, 128>;
  if (Dk == 64) {
    if (Dv == 64) return f(C64{}, C64{});
    return f(C64{}, C128{});
  }
  if (Dv == 64) return f(C128{}, C64{});
  return f(C128{}, C128{});
}

}  // namespace
}  // namespace lsm_vmma
}  // namespace cuda

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
  namespace vm = cuda::lsm_vmma;
  if (q.dtype == DType::bf16 && vm::supports(d, chunk_size, {&q, &k, &v, &o})) {
    vm::dispatch_dims(d.Dk, d.Dv, [&](auto dk, auto dv) {
      vm::forward<decltype(dk)::value, decltype(dv)::value>(*this, d, q, k, v, log_decay, scale,
                                                            initial_state, o, final_state);
    });
    return;
  }
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
  namespace vm = cuda::lsm_vmma;
  if (dt == DType::bf16 &&
      vm::supports(d, chunk_size, {&q, &k, &v, &d_o, &dq, &dk, &dv, &d_log_decay})) {
    vm::dispatch_dims(d.Dk, d.Dv, [&](auto dk_c, auto dv_c) {
      vm::backward<decltype(dk_c)::value, decltype(dv_c)::value>(
          *this, d, q, k, v, log_decay, scale, initial_state, d_o, d_final_state, dq, dk, dv,
          d_log_decay, d_initial_state);
    });
    return;
  }
  cuda::dispatch_float(dt, op, [&](auto zero) {
    using T = decltype(zero);
    cuda::lsm_decay::backward<true, T>(*this, d, q, k, v, log_decay, scale, initial_state, d_o,
                                       d_final_state, dq, dk, dv, d_log_decay, d_initial_state);
  });
}

}  // namespace linmoe
