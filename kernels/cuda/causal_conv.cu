// Causal depthwise convolution over time on the GPU (MODEL.md 3: mamba2's conv1d, the delta-rule
// q/k/v convolutions). Per batch b and channel c, with the sequence extended to the left by the
// halo (the previous context-parallel rank's last K−1 inputs, or zeros):
//   y[t] = bias + Σ_{j<K} w[j] · x[t − K + 1 + j]
// Backward, for every input position s ∈ [−(K−1), T) (s < 0: the halo):
//   dx[s] = Σ_{j<K, 0 ≤ s+K−1−j < T} w[j] · dy[s + K − 1 − j]
//   dw[j] += Σ_{b,t} dy[t] · x[t − K + 1 + j],   dbias += Σ_{b,t} dy[t]
// y, dx and d_halo: one thread per output element (channels fastest, so a warp reads whole
// rows). dw and dbias are deterministic without atomics: blocks of 32 channels × a chunk of the
// B·T rows write partial sums [P, K+1, C] that a second kernel adds up in chunk order.
#include <cstdint>

#include "core/memory.h"
#include "kernels/cuda/cuda_context.cuh"

namespace linmoe {
namespace {

using cuda::compute_t;
using cuda::i64;
using cuda::load;
using cuda::store;

// A [B, L, C] tensor with free batch and row strides and a contiguous last dimension.
template <class T>
struct Rows3 {
  T* data = nullptr;
  i64 sb = 0, st = 0;
  __device__ __forceinline__ T* row(i64 b, i64 t) const { return data + b * sb + t * st; }
};

template <class T>
Rows3<T> rows3(const Tensor& t) {
  if (t.data == nullptr) return {};
  return {static_cast<T*>(t.data), t.strides[0], t.strides[1]};
}

// The input at position s ∈ [−(K−1), T) of batch b, channel c: x, the halo, or 0.
template <class T>
__device__ __forceinline__ compute_t<T> input_at(const Rows3<const T>& x,
                                                 const Rows3<const T>& halo, i64 K, i64 b, i64 s,
                                                 i64 c) {
  if (s >= 0) return load(x.row(b, s) + c);
  return halo.data ? load(halo.row(b, s + K - 1) + c) : compute_t<T>(0);
}

// x, y: [B, T, C]; w: [C, K]; bias: [C] or null; halo: [B, K−1, C] or null.
template <class T>
__global__ void causal_conv1d_forward_kernel(Rows3<const T> x, const T* __restrict__ w,
                                             const T* __restrict__ bias, Rows3<const T> halo,
                                             Rows3<T> y, i64 B, i64 T_len, i64 C, i64 K) {
  using Cm = compute_t<T>;
  const i64 total = B * T_len * C;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 c = i % C, bt = i / C, t = bt % T_len, b = bt / T_len;
    Cm acc = bias ? load(bias + c) : Cm(0);
    const T* wc = w + c * K;  // [K]
    for (i64 j = 0; j < K; ++j) acc += load(wc + j) * input_at(x, halo, K, b, t - K + 1 + j, c);
    store(y.row(b, t) + c, acc);
  }
}

// dx[b, s, c] for s ∈ [s0, T) (s0 = −(K−1) when d_halo is given: those go to d_halo).
template <class T>
__global__ void causal_conv1d_backward_dx_kernel(Rows3<const T> dy, const T* __restrict__ w,
                                                 Rows3<T> dx, Rows3<T> d_halo, i64 B, i64 T_len,
                                                 i64 C, i64 K, i64 s0) {
  using Cm = compute_t<T>;
  const i64 L = T_len - s0;  // positions written per batch
  const i64 total = B * L * C;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 c = i % C, bs = i / C, s = bs % L + s0, b = bs / L;
    const T* wc = w + c * K;
    Cm acc = 0;
    for (i64 j = 0; j < K; ++j) {
      const i64 t = s + K - 1 - j;
      if (t >= 0 && t < T_len) acc += load(wc + j) * load(dy.row(b, t) + c);
    }
    store((s >= 0 ? dx.row(b, s) : d_halo.row(b, s + K - 1)) + c, acc);
  }
}

constexpr int kColTile = 32, kRowLanes = 8, kTaps = 8;

// Partial sums over one chunk of the B·T rows for 32 channels and up to kTaps taps
// [j0, j0 + kTaps) (j0 = blockIdx.z·kTaps; taps = K, or 0 when dw is not wanted); blockIdx.z == 0
// also sums dy for dbias (stored as tap K). partial: [P, K+1, C].
template <class T>
__global__ void __launch_bounds__(kColTile* kRowLanes)
    causal_conv1d_dw_partial_kernel(Rows3<const T> x, Rows3<const T> halo, Rows3<const T> dy,
                                    compute_t<T>* __restrict__ partial, i64 B, i64 T_len, i64 C,
                                    i64 K, i64 taps, i64 rows_per_chunk) {
  using Cm = compute_t<T>;
  __shared__ Cm lanes[kTaps + 1][kRowLanes][kColTile + 1];
  const i64 c = static_cast<i64>(blockIdx.x) * kColTile + threadIdx.x;
  const i64 R = B * T_len;
  const i64 r0 = static_cast<i64>(blockIdx.y) * rows_per_chunk;
  const i64 r1 = r0 + rows_per_chunk < R ? r0 + rows_per_chunk : R;
  const i64 j0 = static_cast<i64>(blockIdx.z) * kTaps;
  Cm acc[kTaps + 1];
#pragma unroll
  for (int k = 0; k <= kTaps; ++k) acc[k] = 0;
  if (c < C) {
    for (i64 r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const i64 b = r / T_len, t = r % T_len;
      const Cm g = load(dy.row(b, t) + c);
      acc[kTaps] += g;
#pragma unroll
      for (int k = 0; k < kTaps; ++k) {
        const i64 j = j0 + k;
        if (j < taps) acc[k] += g * input_at(x, halo, K, b, t - K + 1 + j, c);
      }
    }
  }
#pragma unroll
  for (int k = 0; k <= kTaps; ++k) lanes[k][threadIdx.y][threadIdx.x] = acc[k];
  __syncthreads();
  if (c >= C) return;
  // Thread row y sums slots y and y + 8 over the 8 row lanes, in lane order.
  for (int k = threadIdx.y; k <= kTaps; k += kRowLanes) {
    const i64 j = k == kTaps ? K : j0 + k;  // the bias slot is tap K
    if (k == kTaps ? blockIdx.z != 0 : j >= taps) continue;
    Cm s = lanes[k][0][threadIdx.x];
    for (int l = 1; l < kRowLanes; ++l) s += lanes[k][l][threadIdx.x];
    partial[(static_cast<i64>(blockIdx.y) * (K + 1) + j) * C + c] = s;
  }
}

// dw[c, j] += Σ_p partial[p, j, c] (when dw), dbias[c] += Σ_p partial[p, K, c] (when dbias).
template <class T>
__global__ void causal_conv1d_dw_finish_kernel(const compute_t<T>* __restrict__ partial, i64 P,
                                               i64 C, i64 K, i64 taps, T* __restrict__ dw,
                                               T* __restrict__ dbias) {
  using Cm = compute_t<T>;
  const i64 total = (K + 1) * C;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 j = i / C, c = i % C;
    if (j == K ? dbias == nullptr : j >= taps) continue;
    Cm s = 0;
    for (i64 p = 0; p < P; ++p) s += partial[(p * (K + 1) + j) * C + c];
    T* out = j == K ? dbias + c : dw + c * K + j;
    store(out, load(out) + s);
  }
}

bool given(const Tensor& t) {
  return t.data != nullptr;
}

// A device [shape] tensor of `dtype` whose last dimension is contiguous (row strides are free).
void check_rows(const Tensor& t, const Shape& shape, DType dtype, const char* op, const char* arg) {
  cuda::check_device(t, op, arg);
  check_dtype(t, dtype, op, arg);
  check_shape(t, shape, op, arg);
  LINMOE_CHECK(shape[2] <= 1 || t.strides[2] == 1, op, ": ", arg, " ", t.str(),
               " needs a contiguous last dimension");
}

struct Dims {
  i64 B = 0, T = 0, C = 0, K = 0;
};

Dims check_inputs(const Tensor& x, const Tensor& w, const Tensor& halo, const char* op) {
  LINMOE_CHECK(x.ndim() == 3, op, ": x must be [B, T, C], got ", x.str());
  LINMOE_CHECK(w.ndim() == 2, op, ": w must be [C, K], got ", w.str());
  Dims d{x.size(0), x.size(1), x.size(2), w.size(1)};
  LINMOE_CHECK(d.K >= 1, op, ": the kernel width K = ", d.K, " must be ≥ 1");
  check_rows(x, x.shape, x.dtype, op, "x");
  cuda::check_contiguous(w, op, "w");
  check_dtype(w, x.dtype, op, "w");
  check_shape(w, Shape{d.C, d.K}, op, "w");
  if (given(halo)) check_rows(halo, Shape{d.B, d.K - 1, d.C}, x.dtype, op, "halo");
  return d;
}

void check_vector(const Tensor& t, const Tensor& x, i64 C, const char* op, const char* arg) {
  cuda::check_contiguous(t, op, arg);
  check_dtype(t, x.dtype, op, arg);
  check_shape(t, Shape{C}, op, arg);
}

}  // namespace

void CudaBackend::causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                        const Tensor& halo, const Tensor& y) {
  const char* op = "causal_conv1d_forward";
  const Dims d = check_inputs(x, w, halo, op);
  if (given(bias)) check_vector(bias, x, d.C, op, "bias");
  check_rows(y, x.shape, x.dtype, op, "y");
  const i64 total = d.B * d.T * d.C;
  if (total == 0) return;
  cudaStream_t stream = context().stream;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    causal_conv1d_forward_kernel<T><<<cuda::blocks_for(total), 256, 0, stream>>>(
        rows3<const T>(x), static_cast<const T*>(w.data),
        given(bias) ? static_cast<const T*>(bias.data) : nullptr, rows3<const T>(halo), rows3<T>(y),
        d.B, d.T, d.C, d.K);
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& halo,
                                         const Tensor& dy, const Tensor& dx, const Tensor& dw,
                                         const Tensor& dbias, const Tensor& d_halo) {
  const char* op = "causal_conv1d_backward";
  const Dims d = check_inputs(x, w, halo, op);
  check_rows(dy, x.shape, x.dtype, op, "dy");
  check_rows(dx, x.shape, x.dtype, op, "dx");
  if (given(dw)) {
    cuda::check_contiguous(dw, op, "dw");
    check_dtype(dw, w.dtype, op, "dw");
    check_shape(dw, w.shape, op, "dw");
  }
  if (given(dbias)) check_vector(dbias, x, d.C, op, "dbias");
  if (given(d_halo)) check_rows(d_halo, Shape{d.B, d.K - 1, d.C}, x.dtype, op, "d_halo");
  if (d.B == 0 || d.C == 0) return;
  cudaStream_t stream = context().stream;
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    using Cm = compute_t<T>;
    // dx (and d_halo): with no tokens, d_halo is still overwritten (zeros).
    const i64 s0 = given(d_halo) ? -(d.K - 1) : 0;
    const i64 dx_total = d.B * (d.T - s0) * d.C;
    if (dx_total > 0) {
      causal_conv1d_backward_dx_kernel<T><<<cuda::blocks_for(dx_total), 256, 0, stream>>>(
          rows3<const T>(dy), static_cast<const T*>(w.data), rows3<T>(dx), rows3<T>(d_halo), d.B,
          d.T, d.C, d.K, s0);
      CUDA_CHECK_LAUNCH();
    }
    if ((!given(dw) && !given(dbias)) || d.T == 0) return;
    // dw, dbias: about 2048 blocks; P row chunks of at least 64 rows (8 per lane), a function of
    // the shape only, so the summation order does not depend on the GPU.
    const i64 R = d.B * d.T;
    const i64 taps = given(dw) ? d.K : 0;
    const i64 groups = taps > 0 ? (taps + kTaps - 1) / kTaps : 1;
    const i64 col_tiles = (d.C + kColTile - 1) / kColTile;
    LINMOE_CHECK(groups <= 65535, op, ": the kernel width K = ", d.K, " is too large");
    i64 P = (2048 + col_tiles * groups - 1) / (col_tiles * groups);
    if (P > (R + 63) / 64) P = (R + 63) / 64;
    if (P > 65535) P = 65535;
    const i64 rows_per_chunk = (R + P - 1) / P;
    P = (R + rows_per_chunk - 1) / rows_per_chunk;
    // Freed when the op returns: the allocator's deallocation must be ordered after the queued
    // kernels (stream-ordered, or synchronising like cudaFree).
    Buffer partial(allocator(), static_cast<std::size_t>(P * (d.K + 1) * d.C) * sizeof(Cm),
                   "causal_conv1d_backward partials");
    Cm* pp = static_cast<Cm*>(partial.data());
    causal_conv1d_dw_partial_kernel<T>
        <<<dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(P),
                static_cast<unsigned>(groups)),
           dim3(kColTile, kRowLanes), 0, stream>>>(rows3<const T>(x), rows3<const T>(halo),
                                                   rows3<const T>(dy), pp, d.B, d.T, d.C, d.K, taps,
                                                   rows_per_chunk);
    CUDA_CHECK_LAUNCH();
    causal_conv1d_dw_finish_kernel<T><<<cuda::blocks_for((d.K + 1) * d.C), 256, 0, stream>>>(
        pp, P, d.C, d.K, taps, given(dw) ? static_cast<T*>(dw.data) : nullptr,
        given(dbias) ? static_cast<T*>(dbias.data) : nullptr);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace linmoe
