// Causal depthwise convolution over time on the CPU (MODEL.md 3: mamba2's conv1d, the delta-rule
// q/k/v convolutions). Per batch b and channel c, with the sequence extended to the left by the
// halo (the previous context-parallel rank's last K−1 inputs, or zeros):
//   y[t] = bias + Σ_{j<K} w[j] · x[t − K + 1 + j]
// Backward, for every input position s ∈ [−(K−1), T) (s < 0: the halo):
//   dx[s] = Σ_{j<K, 0 ≤ s+K−1−j < T} w[j] · dy[s + K − 1 − j]
//   dw[j] += Σ_{b,t} dy[t] · x[t − K + 1 + j],   dbias += Σ_{b,t} dy[t]
// Every output element has one writer and a fixed summation order, so the results do not depend
// on the thread count. Weight and bias gradients accumulate in double per channel block.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

// Channels per work item: a row of that many values is read contiguously at every (b, t).
constexpr i64 kChannelBlock = 64;

// A [B, L, C] tensor with free batch and row strides and a contiguous last dimension.
template <class T>
struct Rows3 {
  T* data = nullptr;
  i64 sb = 0, st = 0;
  Rows3() = default;
  explicit Rows3(const Tensor& t)
      : data(static_cast<T*>(t.data)), sb(t.strides[0]), st(t.strides[1]) {}
  T* row(i64 b, i64 t) const { return data + b * sb + t * st; }
};

struct Dims {
  i64 B = 0, T = 0, C = 0, K = 0;
  i64 blocks() const { return (C + kChannelBlock - 1) / kChannelBlock; }
};

bool given(const Tensor& t) {
  return t.data != nullptr;
}

// A host [shape] tensor of `dtype` whose last dimension is contiguous (row strides are free).
void check_rows(const Tensor& t, const Shape& shape, DType dtype, const char* op, const char* arg) {
  cpu::check_cpu(t, op, arg);
  check_dtype(t, dtype, op, arg);
  check_shape(t, shape, op, arg);
  LINMOE_CHECK(shape[2] <= 1 || t.strides[2] == 1, op, ": ", arg, " ", t.str(),
               " needs a contiguous last dimension");
}

Dims check_inputs(const Tensor& x, const Tensor& w, const Tensor& halo, const char* op) {
  LINMOE_CHECK(x.ndim() == 3, op, ": x must be [B, T, C], got ", x.str());
  LINMOE_CHECK(w.ndim() == 2, op, ": w must be [C, K], got ", w.str());
  Dims d{x.size(0), x.size(1), x.size(2), w.size(1)};
  LINMOE_CHECK(d.K >= 1, op, ": the kernel width K = ", d.K, " must be ≥ 1");
  check_rows(x, x.shape, x.dtype, op, "x");
  cpu::check_host_contiguous(w, x.dtype, op, "w");
  check_shape(w, Shape{d.C, d.K}, op, "w");
  if (given(halo)) check_rows(halo, Shape{d.B, d.K - 1, d.C}, x.dtype, op, "halo");
  return d;
}

// wt[j, c] = w[c, j]: the taps of one j contiguous over channels.
template <class T>
std::vector<T> transposed_taps(const T* w, const Dims& d) {
  std::vector<T> wt(static_cast<std::size_t>(d.K * d.C));
  for (i64 c = 0; c < d.C; ++c) {
    for (i64 j = 0; j < d.K; ++j) wt[static_cast<std::size_t>(j * d.C + c)] = w[c * d.K + j];
  }
  return wt;
}

// The input row at position s ∈ [−(K−1), T) of batch b: x, the halo, or null (zeros).
template <class T>
const T* input_row(const Rows3<const T>& x, const Rows3<const T>& halo, const Dims& d, i64 b,
                   i64 s) {
  if (s >= 0) return x.row(b, s);
  return halo.data ? halo.row(b, s + d.K - 1) : nullptr;
}

template <class T>
void forward_typed(const Dims& d, const Tensor& x, const Tensor& w, const Tensor& bias,
                   const Tensor& halo, const Tensor& y, int threads) {
  const Rows3<const T> px(x), ph = given(halo) ? Rows3<const T>(halo) : Rows3<const T>();
  const Rows3<T> py(y);
  const std::vector<T> wt = transposed_taps(static_cast<const T*>(w.data), d);
  const T* pb = given(bias) ? static_cast<const T*>(bias.data) : nullptr;
  const i64 items = d.B * d.blocks();
#pragma omp parallel for num_threads(cpu::threads_for(d.B* d.T* d.C* d.K, threads)) schedule(static)
  for (i64 item = 0; item < items; ++item) {
    const i64 b = item / d.blocks(), c0 = item % d.blocks() * kChannelBlock;
    const i64 n = std::min(kChannelBlock, d.C - c0);
    for (i64 t = 0; t < d.T; ++t) {
      T* yr = py.row(b, t) + c0;
#pragma omp simd
      for (i64 c = 0; c < n; ++c) yr[c] = pb ? pb[c0 + c] : T(0);
      for (i64 j = 0; j < d.K; ++j) {
        const T* xr = input_row(px, ph, d, b, t - d.K + 1 + j);
        if (!xr) continue;
        xr += c0;
        const T* wj = wt.data() + j * d.C + c0;
#pragma omp simd
        for (i64 c = 0; c < n; ++c) yr[c] += wj[c] * xr[c];
      }
    }
  }
}

template <class T>
void backward_typed(const Dims& d, const Tensor& x, const Tensor& w, const Tensor& halo,
                    const Tensor& dy, const Tensor& dx, const Tensor& dw, const Tensor& dbias,
                    const Tensor& d_halo, int threads) {
  const Rows3<const T> px(x), ph = given(halo) ? Rows3<const T>(halo) : Rows3<const T>();
  const Rows3<const T> pdy(dy);
  const Rows3<T> pdx(dx), pdh = given(d_halo) ? Rows3<T>(d_halo) : Rows3<T>();
  const std::vector<T> wt = transposed_taps(static_cast<const T*>(w.data), d);
  T* pdw = given(dw) ? static_cast<T*>(dw.data) : nullptr;
  T* pdb = given(dbias) ? static_cast<T*>(dbias.data) : nullptr;
  const i64 items = d.B * d.blocks();
  const int nt = cpu::threads_for(d.B * d.T * d.C * d.K, threads);
#pragma omp parallel num_threads(nt)
  {
    // dx and d_halo: each input position gathers from the K outputs it feeds.
#pragma omp for schedule(static)
    for (i64 item = 0; item < items; ++item) {
      const i64 b = item / d.blocks(), c0 = item % d.blocks() * kChannelBlock;
      const i64 n = std::min(kChannelBlock, d.C - c0);
      const i64 s0 = pdh.data ? -(d.K - 1) : 0;
      for (i64 s = s0; s < d.T; ++s) {
        T* out = (s >= 0 ? pdx.row(b, s) : pdh.row(b, s + d.K - 1)) + c0;
#pragma omp simd
        for (i64 c = 0; c < n; ++c) out[c] = T(0);
        for (i64 j = 0; j < d.K; ++j) {
          const i64 t = s + d.K - 1 - j;
          if (t < 0 || t >= d.T) continue;
          const T* g = pdy.row(b, t) + c0;
          const T* wj = wt.data() + j * d.C + c0;
#pragma omp simd
          for (i64 c = 0; c < n; ++c) out[c] += wj[c] * g[c];
        }
      }
    }
    // dw and dbias: one thread per channel block, batches and tokens in order.
    if (pdw || pdb) {
#pragma omp for schedule(static)
      for (i64 blk = 0; blk < d.blocks(); ++blk) {
        const i64 c0 = blk * kChannelBlock, n = std::min(kChannelBlock, d.C - c0);
        std::vector<double> acc_w(static_cast<std::size_t>(d.K * kChannelBlock), 0.0);
        std::vector<double> acc_b(static_cast<std::size_t>(kChannelBlock), 0.0);
        for (i64 b = 0; b < d.B; ++b) {
          for (i64 t = 0; t < d.T; ++t) {
            const T* g = pdy.row(b, t) + c0;
            for (i64 c = 0; c < n; ++c) acc_b[static_cast<std::size_t>(c)] += g[c];
            for (i64 j = 0; j < d.K; ++j) {
              const T* xr = input_row(px, ph, d, b, t - d.K + 1 + j);
              if (!xr) continue;
              xr += c0;
              double* aw = acc_w.data() + j * kChannelBlock;
#pragma omp simd
              for (i64 c = 0; c < n; ++c) aw[c] += static_cast<double>(g[c]) * xr[c];
            }
          }
        }
        for (i64 c = 0; c < n; ++c) {
          if (pdb) pdb[c0 + c] += static_cast<T>(acc_b[static_cast<std::size_t>(c)]);
          if (!pdw) continue;
          for (i64 j = 0; j < d.K; ++j) {
            pdw[(c0 + c) * d.K + j] +=
                static_cast<T>(acc_w[static_cast<std::size_t>(j * kChannelBlock + c)]);
          }
        }
      }
    }
  }
}

}  // namespace

void CpuBackend::causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                       const Tensor& halo, const Tensor& y) {
  const char* op = "causal_conv1d_forward";
  const Dims d = check_inputs(x, w, halo, op);
  if (given(bias)) {
    cpu::check_host_contiguous(bias, x.dtype, op, "bias");
    check_shape(bias, Shape{d.C}, op, "bias");
  }
  check_rows(y, x.shape, x.dtype, op, "y");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    forward_typed<T>(d, x, w, bias, halo, y, threads_);
  });
}

void CpuBackend::causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& halo,
                                        const Tensor& dy, const Tensor& dx, const Tensor& dw,
                                        const Tensor& dbias, const Tensor& d_halo) {
  const char* op = "causal_conv1d_backward";
  const Dims d = check_inputs(x, w, halo, op);
  check_rows(dy, x.shape, x.dtype, op, "dy");
  check_rows(dx, x.shape, x.dtype, op, "dx");
  if (given(dw)) cpu::check_like(dw, w, op, "dw");
  if (given(dbias)) {
    cpu::check_host_contiguous(dbias, x.dtype, op, "dbias");
    check_shape(dbias, Shape{d.C}, op, "dbias");
  }
  if (given(d_halo)) check_rows(d_halo, Shape{d.B, d.K - 1, d.C}, x.dtype, op, "d_halo");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    backward_typed<T>(d, x, w, halo, dy, dx, dw, dbias, d_halo, threads_);
  });
}

}  // namespace linmoe
