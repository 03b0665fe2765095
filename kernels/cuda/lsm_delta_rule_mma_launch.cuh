// The host side of the bf16 tensor-core delta-rule forward (kernels in lsm_delta_rule_mma.cuh):
// which calls take it, the scratch memory, the three launches. Included by lsm_delta_rule.cu only.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/lsm_delta_rule_mma_bwd.cuh"

namespace linmoe {
namespace cuda {
namespace delta_mma {

using mma_rows::aligned_rows;

// Whether a forward call takes this path: bf16, chunk_size 64, Dk and Dv in {64, 128}, T ≥ 1 and
// 16-byte aligned rows of q, k, v and o (the launcher falls back to the SIMT kernels otherwise).
inline bool supports(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                     int chunk_size) {
  if (q.dtype != DType::bf16 || chunk_size != kChunk) return false;
  if (!head_dim_supported(q.shape[3]) || !head_dim_supported(v.shape[3])) return false;
  if (q.shape[1] < 1 || q.shape[0] * q.shape[2] < 1) return false;
  return aligned_rows(q) && aligned_rows(k) && aligned_rows(v) && aligned_rows(o);
}

inline Rows rows_of(const Tensor& t) {
  Rows r;
  if (!t.defined()) return r;
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

// 256-byte aligned element counts, so that every scratch region starts 16-byte aligned.
inline std::size_t padded(std::size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

template <int DK, int DV>
void forward(cudaStream_t stream, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& beta, const Tensor& log_decay, double scale, const Tensor& initial_state,
             const Tensor& o, const Tensor& final_state) {
  Problem p;
  p.B = q.shape[0], p.T = q.shape[1], p.H = q.shape[2], p.NC = chunk_count(p.T);
  p.scale = static_cast<float>(scale), p.gated = log_decay.defined();
  const std::size_t rows = static_cast<std::size_t>(p.B * p.H * p.NC * kChunk);
  const std::size_t nw = rows * DK, nu = rows * DV;
  const std::size_t nstate = static_cast<std::size_t>(p.B * p.H * p.NC) * DK * DV;
  const std::size_t bw = padded(nw * sizeof(u16)), bu = padded(nu * sizeof(u16));
  const ScratchBuffer scratch(stream, bw + bu + nstate * sizeof(u16));
  u16* W = scratch.as<u16>();                                              // [B,H,NC·64,Dk]
  u16* U = reinterpret_cast<u16*>(scratch.as<unsigned char>() + bw);       // [B,H,NC·64,Dv]
  u16* P = reinterpret_cast<u16*>(scratch.as<unsigned char>() + bw + bu);  // [B,H,NC,Dk,Dv]
  const Rows g = rows_of(log_decay);
  const unsigned chunks = static_cast<unsigned>(p.B * p.H * p.NC);

  PrepArgs pa{p, rows_of(k), rows_of(v), rows_of(beta), g, W, U};
  constexpr std::size_t prep_smem = PrepTiles<DK, DV>::smem;
  static const bool prep_ready = (allow_smem(delta_prep_kernel<DK, DV>, prep_smem), true);
  (void)prep_ready;
  delta_prep_kernel<DK, DV><<<chunks, kThreads, prep_smem, stream>>>(pa);
  CUDA_CHECK_LAUNCH();

  StateArgs sa;
  sa.p = p, sa.Dv = DV, sa.k = rows_of(k), sa.g = g, sa.w = W, sa.u = U;
  sa.init = initial_state.defined() ? static_cast<const float*>(initial_state.data) : nullptr;
  sa.fin = final_state.defined() ? static_cast<float*>(final_state.data) : nullptr;
  sa.states = P;
  constexpr std::size_t state_smem = StateTiles<DK>::smem;
  static const bool state_ready = (allow_smem(delta_state_kernel<DK>, state_smem), true);
  (void)state_ready;
  const dim3 state_grid(static_cast<unsigned>(p.B * p.H), DV / kVTile);
  delta_state_kernel<DK><<<state_grid, kThreads, state_smem, stream>>>(sa);
  CUDA_CHECK_LAUNCH();

  OutputArgs oa{p, rows_of(q), rows_of(k), g, U, P, out_rows_of(o)};
  constexpr std::size_t out_smem = OutputTiles<DK, DV>::smem;
  static const bool out_ready = (allow_smem(delta_output_kernel<DK, DV>, out_smem), true);
  (void)out_ready;
  delta_output_kernel<DK, DV><<<chunks, kThreads, out_smem, stream>>>(oa);
  CUDA_CHECK_LAUNCH();
}

// Whether a backward call takes the tensor-core backward (lsm_delta_rule_mma_bwd.cuh): as
// supports(), with d_o, dq, dk and dv aligned too.
inline bool supports_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& d_o,
                              const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              int chunk_size) {
  return supports(q, k, v, d_o, chunk_size) && aligned_rows(dq) && aligned_rows(dk) &&
         aligned_rows(dv);
}

template <int DK, int DV>
void backward(cudaStream_t stream, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& beta, const Tensor& log_decay, double scale,
              const Tensor& initial_state, const Tensor& d_o, const Tensor& d_final_state,
              const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& d_beta,
              const Tensor& d_log_decay, const Tensor& d_initial_state) {
  Problem p;
  p.B = q.shape[0], p.T = q.shape[1], p.H = q.shape[2], p.NC = chunk_count(p.T);
  p.scale = static_cast<float>(scale), p.gated = log_decay.defined();
  const std::size_t rows = static_cast<std::size_t>(p.B * p.H * p.NC * kChunk);
  const std::size_t chunks_n = static_cast<std::size_t>(p.B * p.H * p.NC);
  // Scratch: W (bf16), r(X) (bf16), U, R_v (fp32, [rows][Dv]), P_c, G_c (fp32), the state parts
  // of dq and dk (fp32, [rows][Dk]) and four row dots per token.
  const std::size_t sizes[] = {rows * DK * sizeof(u16),
                               chunks_n * kChunk * kChunk * sizeof(u16),
                               rows * DV * sizeof(float),
                               rows * DV * sizeof(float),
                               chunks_n * DK * DV * sizeof(float),
                               chunks_n * DK * DV * sizeof(float),
                               rows * DK * sizeof(float),
                               rows * DK * sizeof(float),
                               rows * 4 * sizeof(float)};
  std::size_t total = 0;
  for (std::size_t s : sizes) total += padded(s);
  const ScratchBuffer scratch(stream, total);
  unsigned char* base = scratch.as<unsigned char>();
  void* part[9];
  for (int i = 0; i < 9; ++i) part[i] = base, base += padded(sizes[i]);
  u16* W = static_cast<u16*>(part[0]);
  u16* X = static_cast<u16*>(part[1]);
  float *U = static_cast<float*>(part[2]), *Rv = static_cast<float*>(part[3]);
  float *Ps = static_cast<float*>(part[4]), *Gs = static_cast<float*>(part[5]);
  float *dqp = static_cast<float*>(part[6]), *dkp = static_cast<float*>(part[7]);
  float* dots = static_cast<float*>(part[8]);
  const Rows g = rows_of(log_decay);
  const unsigned chunks = static_cast<unsigned>(chunks_n);
  const dim3 head_grid(static_cast<unsigned>(p.B * p.H), DV / kVTile);

  PrepArgs pa{p, rows_of(k), rows_of(v), rows_of(beta), g, W, nullptr};
  pa.u_wide = U, pa.x = X;
  constexpr std::size_t prep_smem = PrepTiles<DK, DV, true>::smem;
  static const bool prep_ready = (allow_smem(delta_prep_kernel<DK, DV, true>, prep_smem), true);
  (void)prep_ready;
  delta_prep_kernel<DK, DV, true><<<chunks, kThreads, prep_smem, stream>>>(pa);
  CUDA_CHECK_LAUNCH();

  BwdStateArgs sa;
  sa.p = p, sa.Dv = DV, sa.k = rows_of(k), sa.g = g, sa.w = W, sa.u = U;
  sa.init = initial_state.defined() ? static_cast<const float*>(initial_state.data) : nullptr;
  sa.states = Ps;
  constexpr std::size_t state_smem = BwdStateTiles<DK>::smem;
  static const bool state_ready = (allow_smem(delta_bwd_state_kernel<DK>, state_smem), true);
  (void)state_ready;
  delta_bwd_state_kernel<DK><<<head_grid, kThreads, state_smem, stream>>>(sa);
  CUDA_CHECK_LAUNCH();

  ReverseArgs ra;
  ra.p = p, ra.Dv = DV, ra.q = rows_of(q), ra.k = rows_of(k), ra.beta = rows_of(beta), ra.g = g;
  ra.d_o = rows_of(d_o), ra.x = X;
  ra.dfs = d_final_state.defined() ? static_cast<const float*>(d_final_state.data) : nullptr;
  ra.gstates = Gs, ra.rv = Rv, ra.dv = out_rows_of(dv);
  ra.ds0 = d_initial_state.defined() ? static_cast<float*>(d_initial_state.data) : nullptr;
  constexpr std::size_t rev_smem = ReverseTiles<DK>::smem;
  static const bool rev_ready = (allow_smem(delta_bwd_reverse_kernel<DK>, rev_smem), true);
  (void)rev_ready;
  delta_bwd_reverse_kernel<DK><<<head_grid, kThreads, rev_smem, stream>>>(ra);
  CUDA_CHECK_LAUNCH();

  GradArgs ga;
  ga.p = p, ga.q = rows_of(q), ga.k = rows_of(k), ga.v = rows_of(v), ga.beta = rows_of(beta);
  ga.g = g, ga.d_o = rows_of(d_o), ga.u = U, ga.rv = Rv, ga.pstates = Ps, ga.gstates = Gs;
  ga.dq_part = dqp, ga.dk_part = dkp, ga.dots = dots;
  ga.dq = out_rows_of(dq), ga.dk = out_rows_of(dk), ga.dbeta = out_rows_of(d_beta);
  if (d_log_decay.defined()) ga.dg = out_rows_of(d_log_decay);
  constexpr std::size_t rows_smem = RowsTiles<DK, DV>::smem;
  static const bool rows_ready = (allow_smem(delta_bwd_rows_kernel<DK, DV>, rows_smem), true);
  (void)rows_ready;
  delta_bwd_rows_kernel<DK, DV><<<chunks, kThreads, rows_smem, stream>>>(ga);
  CUDA_CHECK_LAUNCH();
  constexpr std::size_t chunk_smem = ChunkTiles<DK, DV>::smem;
  static const bool chunk_ready = (allow_smem(delta_bwd_chunk_kernel<DK, DV>, chunk_smem), true);
  (void)chunk_ready;
  delta_bwd_chunk_kernel<DK, DV><<<chunks, kThreads, chunk_smem, stream>>>(ga);
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

}  // namespace delta_mma
}  // namespace cuda
}  // namespace linmoe
