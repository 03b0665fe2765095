// The host side of the bf16 tensor-core scalar-decay LSM path (kernels in
// lsm_scalar_decay_mma.cuh): which calls take it, the scratch memory, the launches.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/lsm_decay_chunk.cuh"
#include "kernels/cuda/lsm_scalar_decay_mma.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_mma {

using mma_rows::aligned_rows;

// Whether a bf16 call takes this path (the launcher falls back to the SIMT kernels otherwise).
inline bool supports(const lsm_decay::Dims& d, int chunk_size, const Tensor* const* rows, int n) {
  if (chunk_size != kChunk || !head_dim_supported(d.Dk) || !head_dim_supported(d.Dv)) return false;
  for (int r = 0; r < n; ++r) {
    if (!aligned_rows(*rows[r])) return false;
  }
  return true;
}

inline Rows rows_of(const Tensor& t) {
  Rows r;
  r.p = static_cast<const u16*>(t.data);
  r.sb = t.stride(0), r.st = t.stride(1), r.sh = t.stride(2);
  return r;
}
inline OutRows out_rows_of(const Tensor& t) {
  OutRows r;
  r.p = static_cast<u16*>(t.data);
  r.sb = t.stride(0), r.st = t.stride(1), r.sh = t.stride(2);
  return r;
}

template <class K>
void allow_smem(K* kernel, std::size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)));
}

inline void launch_states(cudaStream_t stream, const StateArgs& a) {
  constexpr std::size_t smem = StateTiles::smem;
  const dim3 grid(static_cast<unsigned>(a.p.B * a.p.H), static_cast<unsigned>(a.Dv / kSTile),
                  static_cast<unsigned>(a.Dk / kSTile));
  chunk_state_kernel<<<grid, StateTiles::kThreads, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

// The arguments of one state pass: x, y the rows it multiplies (k, v forward; q, d_o reverse).
inline StateArgs state_args(const Problem& p, i64 Dk, i64 Dv, const Tensor& x, const Tensor& y,
                            const Tensor& log_decay, bool reverse, const float* init, float* fin,
                            u16* states, const u16* partner, float* through) {
  StateArgs a;
  a.p = p, a.Dk = Dk, a.Dv = Dv;
  a.x = rows_of(x), a.y = rows_of(y), a.g = rows_of(log_decay);
  a.reverse = reverse, a.init = init, a.fin = fin;
  a.states = states, a.partner = partner, a.through = through;
  return a;
}

inline Problem problem_of(const lsm_decay::Dims& d, double scale) {
  return Problem{d.B, d.T, d.H, d.Hk, chunk_count(d.T), static_cast<float>(scale)};
}

inline const float* f32_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const float*>(t.data) : nullptr;
}
inline float* f32_out_or_null(const Tensor& t) {
  return t.defined() ? static_cast<float*>(t.data) : nullptr;
}

template <int DK, int DV>
void forward(CudaBackend& be, const lsm_decay::Dims& d, const Tensor& q, const Tensor& k,
             const Tensor& v, const Tensor& log_decay, double scale, const Tensor& initial_state,
             const Tensor& o, const Tensor& final_state) {
  const cudaStream_t stream = be.context().stream;
  const Problem p = problem_of(d, scale);
  if (p.B * p.H == 0) return;
  const i64 nstate = p.B * p.H * p.NC * DK * DV;
  lsm_decay::Workspace ws(stream, lsm_decay::Workspace::padded(sizeof(u16) * nstate));
  u16* P = ws.take<u16>(nstate);  // [B,H,NC,Dk,Dv]
  launch_states(stream, state_args(p, DK, DV, k, v, log_decay, false, f32_or_null(initial_state),
                                   f32_out_or_null(final_state), P, nullptr, nullptr));

  constexpr std::size_t smem = ChunkTiles<DK, DV>::output_smem;
  static const bool ready = (allow_smem(chunk_output_kernel<DK, DV>, smem), true);
  (void)ready;
  OutputArgs oa{p, rows_of(q), rows_of(k), rows_of(v), rows_of(log_decay), P, out_rows_of(o)};
  chunk_output_kernel<DK, DV>
      <<<static_cast<unsigned>(p.B * p.H * p.NC), 32 * kWarps, smem, stream>>>(oa);
  CUDA_CHECK_LAUNCH();
}

template <int DK, int DV>
void backward(CudaBackend& be, const lsm_decay::Dims& d, const Tensor& q, const Tensor& k,
              const Tensor& v, const Tensor& log_decay, double scale, const Tensor& initial_state,
              const Tensor& d_o, const Tensor& d_final_state, const Tensor& dq, const Tensor& dk,
              const Tensor& dv, const Tensor& d_log_decay, const Tensor& d_initial_state) {
  const cudaStream_t stream = be.context().stream;
  const Problem p = problem_of(d, scale);
  if (p.B * p.H == 0) return;
  const bool grouped = p.Hk < p.H;
  const int parts = (DK / kSTile) * (DV / kSTile);  // state tiles
  const i64 nstate = p.B * p.H * p.NC * DK * DV, nthrough = p.B * p.H * p.NC * parts;
  const i64 nscratch = grouped ? p.B * p.T * p.H * DK : 0;
  using lsm_decay::Workspace;
  Workspace ws(stream, 2 * Workspace::padded(sizeof(u16) * nstate) +
                           Workspace::padded(sizeof(float) * nthrough) +
                           2 * Workspace::padded(sizeof(float) * nscratch));
  u16* P = ws.take<u16>(nstate);                               // [B,H,NC,Dk,Dv]
  u16* G = ws.take<u16>(nstate);                               // [B,H,NC,Dk,Dv]
  float* through = ws.take<float>(nthrough);                   // [B,H,NC,parts]
  float* dq32 = grouped ? ws.take<float>(nscratch) : nullptr;  // [B,T,H,Dk]
  float* dk32 = grouped ? ws.take<float>(nscratch) : nullptr;

  launch_states(stream, state_args(p, DK, DV, k, v, log_decay, false, f32_or_null(initial_state),
                                   nullptr, P, nullptr, nullptr));
  launch_states(stream, state_args(p, DK, DV, q, d_o, log_decay, true, f32_or_null(d_final_state),
                                   f32_out_or_null(d_initial_state), G, P, through));

  GradArgs ga{};
  ga.p = p;
  ga.q = rows_of(q), ga.k = rows_of(k), ga.v = rows_of(v), ga.g = rows_of(log_decay);
  ga.d_o = rows_of(d_o);
  ga.P = P, ga.G = G, ga.through = through, ga.parts = parts;
  ga.dq = out_rows_of(dq), ga.dk = out_rows_of(dk), ga.dv = out_rows_of(dv);
  ga.dq32 = dq32, ga.dk32 = dk32;
  if (d_log_decay.defined() && d_log_decay.data != nullptr) {
    ga.dg = static_cast<u16*>(d_log_decay.data);
    ga.dg_sb = d_log_decay.stride(0), ga.dg_st = d_log_decay.stride(1);
    ga.dg_sh = d_log_decay.stride(2);
  }
  constexpr std::size_t smem = ChunkTiles<DK, DV>::grad_smem;
  static const bool ready = (allow_smem(chunk_grad_kernel<DK, DV>, smem), true);
  (void)ready;
  chunk_grad_kernel<DK, DV>
      <<<static_cast<unsigned>(p.B * p.H * p.NC), 32 * kWarps, smem, stream>>>(ga);
  CUDA_CHECK_LAUNCH();
  if (grouped) {
    using bf = __nv_bfloat16;
    const i64 nq = p.B * p.T * p.Hk * DK;
    const int grid = lsm_decay::grid_for(nq);
    lsm_decay::group_sum_kernel<bf, float><<<grid, lsm_decay::kThreads, 0, stream>>>(
        p.B, p.T, p.H, p.Hk, DK, dq32, lsm_decay::rows_of<bf>(dq));
    CUDA_CHECK_LAUNCH();
    lsm_decay::group_sum_kernel<bf, float><<<grid, lsm_decay::kThreads, 0, stream>>>(
        p.B, p.T, p.H, p.Hk, DK, dk32, lsm_decay::rows_of<bf>(dk));
    CUDA_CHECK_LAUNCH();
  }
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

}  // namespace lsm_mma
}  // namespace cuda
}  // namespace linmoe
