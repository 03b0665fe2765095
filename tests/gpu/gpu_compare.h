// GPU op tests: the CUDA backend against the CPU backend (the reference, itself checked against
// fp64 oracles) on the same inputs. Without a usable CUDA device (or in a build without CUDA)
// gpu_pair() marks the test executable skipped (exit 77: ctest SKIP) and returns null.
//
//   auto g = gpu_pair();
//   if (!g) return;
//   HostTensor x(DType::f32, {64, 128});
//   fill_uniform(x, 1);
//   const Tensor xg = g->upload(x);                        // same dtype, device memory
//   HostTensor yc(DType::f32, {64, 128});
//   g->cpu->activation_forward(Activation::silu, x, yc);
//   const Tensor yg = g->gpu_empty(DType::f32, {64, 128});  // NaN-poisoned
//   g->gpu->activation_forward(Activation::silu, xg, yg);
//   CHECK(max_rel_error(g->values(yg), yc.to_f64()) <= tolerance(DType::f32));
//
// bf16: the CPU backend computes in f32, so a bf16 test rounds its inputs to bf16 first
// (round_to_bf16), uploads them as bf16 (upload_as) and compares with the f32 CPU result at
// tolerance(DType::bf16).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "common/test_util.h"
#include "core/memory.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace linmoe::testing {

class GpuPair {
 public:
  GpuPair(std::unique_ptr<Backend> cpu_backend, std::unique_ptr<Backend> gpu_backend);
  std::unique_ptr<Backend> cpu, gpu;
  // A device copy of a host tensor (any dtype), owned by the pair.
  Tensor upload(const Tensor& host);
  // The same values converted to `dtype` on the device (e.g. f32 host values as bf16).
  Tensor upload_as(const Tensor& host, DType dtype);
  // A device tensor filled with NaN (floats) or a wild value (ints).
  Tensor gpu_empty(DType dtype, const Shape& shape);
  // Any tensor's values (host or device) as doubles; synchronises.
  std::vector<double> values(const Tensor& t);

 private:
  std::vector<Buffer> keep_;
};

// Non-null when a CUDA device is usable; otherwise marks the test skipped and returns null.
std::unique_ptr<GpuPair> gpu_pair();

// Rounds every value of an f32/f64 host tensor to the nearest bf16 (ties to even), in place.
void round_to_bf16(const Tensor& host);

// max_i |a − b| / max(max_i |b|, tiny): the error relative to the reference's scale.
double max_rel_error(const std::vector<double>& a, const std::vector<double>& b);
// Bounds of spec/TESTING.md for GPU results against the CPU: fp32 1e-4 (TESTING.md allows
// 1e-3 for fp32-accumulated GPU results; ours are tighter unless a test says why), bf16 1e-2,
// f64 1e-12.
double tolerance(DType dtype);

}  // namespace linmoe::testing
