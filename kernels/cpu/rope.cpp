// Rotate-half RoPE (MODEL.md 2) and its transpose. Angles and rotations in double: positions
// reach 10^5 and more, where an f32 angle would already be off by a whole turn's fraction.
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

// Rotates each pair (x_j, x_{j+d/2}) of x: [B, T, H, d] by +angle (forward) or −angle
// (backward, the transpose). y may be x itself: each pair is read before it is written.
template <class T>
void rope_apply(const Tensor& x, const Tensor& y, double theta, i64 position_offset, bool inverse,
                int threads) {
  const i64 B = x.size(0), T_len = x.size(1), H = x.size(2), d = x.size(3), half = d / 2;
  const T* px = static_cast<const T*>(x.data);
  T* py = static_cast<T*>(y.data);
  const double sign = inverse ? -1.0 : 1.0;
  std::vector<double> inv_freq(static_cast<std::size_t>(half));  // θ_j = theta^(−2j/d)
  for (i64 j = 0; j < half; ++j) {
    inv_freq[static_cast<std::size_t>(j)] =
        std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(d));
  }
  // One position per iteration: its cos/sin serve all B·H rows of that position.
#pragma omp parallel num_threads(cpu::threads_for(x.numel(), threads))
  {
    std::vector<double> cs(static_cast<std::size_t>(half)), sn(static_cast<std::size_t>(half));
#pragma omp for schedule(static)
    for (i64 t = 0; t < T_len; ++t) {
      const double pos = static_cast<double>(position_offset + t);
      for (i64 j = 0; j < half; ++j) {
        const double angle = pos * inv_freq[static_cast<std::size_t>(j)];
        cs[static_cast<std::size_t>(j)] = std::cos(angle);
        sn[static_cast<std::size_t>(j)] = sign * std::sin(angle);
      }
      for (i64 b = 0; b < B; ++b) {
        for (i64 h = 0; h < H; ++h) {
          const i64 row = ((b * T_len + t) * H + h) * d;
          const T* xr = px + row;  // [d]
          T* yr = py + row;
          for (i64 j = 0; j < half; ++j) {
            const double c = cs[static_cast<std::size_t>(j)], s = sn[static_cast<std::size_t>(j)];
            const double a = xr[j], e = xr[j + half];
            yr[j] = static_cast<T>(a * c - e * s);
            yr[j + half] = static_cast<T>(e * c + a * s);
          }
        }
      }
    }
  }
}

void check_rope_args(const Tensor& x, const Tensor& y, double theta, const char* op,
                     const char* x_name, const char* y_name) {
  cpu::check_host_contiguous(x, x.dtype, op, x_name);
  LINMOE_CHECK(x.ndim() == 4, op, ": ", x_name, " ", x.str(), " must be [B, T, H, d]");
  LINMOE_CHECK(x.size(3) % 2 == 0, op, ": ", x_name, " ", x.str(),
               " needs an even head dim d (rotate-half pairs j and j + d/2)");
  cpu::check_like(y, x, op, y_name);
  LINMOE_CHECK(std::isfinite(theta) && theta > 0, op, ": theta = ", theta, " must be positive");
  // In place is allowed; a partial overlap would read rotated values.
  const char* xb = static_cast<const char*>(x.data);
  const char* yb = static_cast<const char*>(y.data);
  const bool disjoint = yb + y.nbytes() <= xb || xb + x.nbytes() <= yb;
  LINMOE_CHECK(xb == yb || disjoint, op, ": ", y_name, " partially overlaps ", x_name,
               " (only exact aliasing is allowed)");
}

}  // namespace

void CpuBackend::rope_forward(const Tensor& x, const Tensor& y, double theta,
                              std::int64_t position_offset) {
  const char* op = "rope_forward";
  check_rope_args(x, y, theta, op, "x", "y");
  cpu::dispatch_float(x.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    rope_apply<T>(x, y, theta, position_offset, /*inverse=*/false, threads_);
  });
}

void CpuBackend::rope_backward(const Tensor& dy, const Tensor& dx, double theta,
                               std::int64_t position_offset) {
  const char* op = "rope_backward";
  check_rope_args(dy, dx, theta, op, "dy", "dx");
  // A rotation's transpose is its inverse: rotate by the negative angle.
  cpu::dispatch_float(dy.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    rope_apply<T>(dy, dx, theta, position_offset, /*inverse=*/true, threads_);
  });
}

}  // namespace linmoe
