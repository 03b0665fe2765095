#include "gpu/gpu_compare.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if LINMOE_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace linmoe::testing {

GpuPair::GpuPair(std::unique_ptr<Backend> cpu_backend, std::unique_ptr<Backend> gpu_backend)
    : cpu(std::move(cpu_backend)), gpu(std::move(gpu_backend)) {}

Tensor GpuPair::upload(const Tensor& host) {
  return upload_as(host, host.dtype);
}

Tensor GpuPair::upload_as(const Tensor& host, DType dtype) {
  keep_.emplace_back(gpu->allocator(), std::max<std::size_t>(1, host.numel() * dtype_size(dtype)),
                     "test tensor");
  const Tensor t = keep_.back().view(dtype, host.shape);
  if (dtype == host.dtype) {
    gpu->copy(host, t);
  } else {
    // Stage the host values on the device in their own dtype, then convert there.
    keep_.emplace_back(gpu->allocator(), std::max<std::size_t>(1, host.nbytes()), "staging");
    const Tensor staged = keep_.back().view(host.dtype, host.shape);
    gpu->copy(host, staged);
    gpu->copy(staged, t);
  }
  return t;
}

Tensor GpuPair::gpu_empty(DType dtype, const Shape& shape) {
  HostTensor h(dtype, shape);
  poison(h);
  return upload(h);
}

std::vector<double> GpuPair::values(const Tensor& t) {
  if (t.device == Device::cpu) {
    HostTensor h(t.dtype, t.shape);
    cpu->copy(t, h);
    return h.to_f64();
  }
  HostTensor h(t.dtype, t.shape);
  gpu->copy(t, h);
  gpu->synchronize();
  return h.to_f64();
}

std::unique_ptr<GpuPair> gpu_pair() {
#if LINMOE_HAVE_CUDA
  if (cuda_device_available()) {
    return std::make_unique<GpuPair>(make_backend(BackendKind::cpu, 2), make_cuda_backend(0));
  }
#endif
  skip("no usable CUDA device (or a build without CUDA): GPU op tests skipped");
  return nullptr;
}

void round_to_bf16(const Tensor& host) {
  HostTensor b(DType::bf16, host.shape);
  HostTensor src(host.dtype, host.shape);
  std::memcpy(src.t().data, host.data, host.nbytes());
  b.from_f64(src.to_f64());
  const std::vector<double> r = b.to_f64();
  src.from_f64(r);
  std::memcpy(host.data, src.t().data, host.nbytes());
}

double max_rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, scale = 1e-30;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return a.size() == b.size() ? diff / scale : INFINITY;
}

double tolerance(DType dtype) {
  switch (dtype) {
    case DType::f64:
      return 1e-12;
    case DType::bf16:
      return 1e-2;
    default:
      return 1e-4;
  }
}

}  // namespace linmoe::testing
