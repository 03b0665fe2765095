// Rotate-half RoPE (MODEL.md 2) and its transpose on the GPU. As on the CPU, angles, sines and
// cosines are computed in double: positions reach 10^5 and more, where an f32 angle is off by a
// visible fraction of a turn. A thread owns one (position t, pair j) and rotates that pair in up to
// kRowsPerThread (b, h) rows, so one sincos serves several rows.
#include <cmath>

#include "kernels/cuda/cuda_context.cuh"

namespace linmoe {
namespace {

using cuda::i64;
using cuda::load;
using cuda::store;

constexpr i64 kRowsPerThread = 8;

// θ_j = theta^(−2j/d) computed on the host with std::pow, exactly as the CPU backend does (a
// one-ulp difference in θ_j is 1e-11 of a turn at position 10^5: visible in the f64 checks).
// Passed by value; head dims beyond the table (never seen in practice) use the device's pow.
constexpr int kMaxTable = 480;
struct InvFreq {
  double v[kMaxTable];
};

// x, y: [B, T, H, d]; rotates (x_j, x_{j+d/2}) by sign·(position_offset + t)·θ_j. y may be x:
// each pair is read before it is written, by the same thread.
template <class T>
__global__ void rope_kernel(const T* x, T* y, i64 B, i64 T_len, i64 H, i64 d, double theta,
                            const InvFreq inv_freq, i64 position_offset, double sign) {
  const i64 half = d / 2, BH = B * H;
  const i64 chunks = (BH + kRowsPerThread - 1) / kRowsPerThread;
  const i64 total = T_len * chunks * half;
  for (i64 idx = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 j = idx % half;
    const i64 rest = idx / half;
    const i64 chunk = rest % chunks, t = rest / chunks;
    const double f = j < kMaxTable
                         ? inv_freq.v[j]
                         : pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(d));
    const double angle = static_cast<double>(position_offset + t) * f;
    double s, c;
    sincos(angle, &s, &c);
    s *= sign;
    const i64 r1 = (chunk + 1) * kRowsPerThread < BH ? (chunk + 1) * kRowsPerThread : BH;
    for (i64 r = chunk * kRowsPerThread; r < r1; ++r) {
      const i64 b = r / H, h = r % H;
      const i64 off = ((b * T_len + t) * H + h) * d + j;
      const double a = load(x + off), e = load(x + off + half);
      store(y + off, static_cast<cuda::compute_t<T>>(a * c - e * s));
      store(y + off + half, static_cast<cuda::compute_t<T>>(e * c + a * s));
    }
  }
}

void check_rope_args(const Tensor& x, const Tensor& y, double theta, const char* op,
                     const char* x_name, const char* y_name) {
  cuda::check_contiguous(x, op, x_name);
  LINMOE_CHECK(x.ndim() == 4, op, ": ", x_name, " ", x.str(), " must be [B, T, H, d]");
  LINMOE_CHECK(x.size(3) % 2 == 0, op, ": ", x_name, " ", x.str(),
               " needs an even head dim d (rotate-half pairs j and j + d/2)");
  cuda::check_contiguous(y, op, y_name);
  check_dtype(y, x.dtype, op, y_name);
  check_shape(y, x.shape, op, y_name);
  LINMOE_CHECK(std::isfinite(theta) && theta > 0, op, ": theta = ", theta, " must be positive");
  // In place is allowed; a partial overlap would read rotated values.
  const char* xb = static_cast<const char*>(x.data);
  const char* yb = static_cast<const char*>(y.data);
  const bool disjoint = yb + y.nbytes() <= xb || xb + x.nbytes() <= yb;
  LINMOE_CHECK(xb == yb || disjoint, op, ": ", y_name, " partially overlaps ", x_name,
               " (only exact aliasing is allowed)");
}

void rope_launch(const Tensor& x, const Tensor& y, double theta, i64 position_offset, bool inverse,
                 cudaStream_t stream, const char* op) {
  const i64 B = x.size(0), T_len = x.size(1), H = x.size(2), d = x.size(3);
  const i64 half = d / 2, BH = B * H;
  if (half == 0 || BH == 0 || T_len == 0) return;
  const i64 total = T_len * ((BH + kRowsPerThread - 1) / kRowsPerThread) * half;
  InvFreq inv_freq{};
  for (i64 j = 0; j < half && j < kMaxTable; ++j) {
    inv_freq.v[j] = std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(d));
  }
  cuda::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    // y may alias x: no __restrict__ here.
    rope_kernel<T><<<cuda::blocks_for(total), 256, 0, stream>>>(
        static_cast<const T*>(x.data), static_cast<T*>(y.data), B, T_len, H, d, theta, inv_freq,
        position_offset, inverse ? -1.0 : 1.0);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void CudaBackend::rope_forward(const Tensor& x, const Tensor& y, double theta,
                               std::int64_t position_offset) {
  const char* op = "rope_forward";
  check_rope_args(x, y, theta, op, "x", "y");
  rope_launch(x, y, theta, position_offset, /*inverse=*/false, context().stream, op);
}

void CudaBackend::rope_backward(const Tensor& dy, const Tensor& dx, double theta,
                                std::int64_t position_offset) {
  const char* op = "rope_backward";
  check_rope_args(dy, dx, theta, op, "dy", "dx");
  // A rotation's transpose is its inverse: rotate by the negative angle.
  rope_launch(dy, dx, theta, position_offset, /*inverse=*/true, context().stream, op);
}

}  // namespace linmoe
