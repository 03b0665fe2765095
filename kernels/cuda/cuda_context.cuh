// What every kernels/cuda/*.cu file shares: the backend's CUDA state, element access in the
// three float dtypes (f32, bf16 storage, f64), the closed dtype switch, launch sizing and the
// launcher's checks. Only .cu files include it.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/check.h"
#include "core/tensor.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"

namespace linmoe {

// The backend's CUDA state. Every op runs on `stream`, in order; host-value ops synchronise it.
struct CudaContext {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  void* cublas_workspace = nullptr;  // cuBLAS's workspace (set with cublasSetWorkspace)
  std::size_t cublas_workspace_bytes = 0;
  int sm_count = 0;
  double peak_flops = 0;  // dense bf16 tensor-core peak of this GPU (MFU), 0 when unknown
};

namespace cuda {

using i64 = std::int64_t;

// Loads and stores in the compute type (float for f32/bf16, double for f64).
__device__ __forceinline__ float load(const float* p) {
  return *p;
}
__device__ __forceinline__ float load(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
__device__ __forceinline__ double load(const double* p) {
  return *p;
}
__device__ __forceinline__ void store(float* p, float v) {
  *p = v;
}
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16(v);
}
__device__ __forceinline__ void store(double* p, double v) {
  *p = v;
}

// The arithmetic type of a storage type: float for f32 and bf16, double for f64.
template <class T>
struct Compute {
  using type = float;
};
template <>
struct Compute<double> {
  using type = double;
};
template <class T>
using compute_t = typename Compute<T>::type;

// Calls f(T{}) with T the storage type of a float dtype; anything else fails loudly, naming op.
template <class F>
void dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32:
      f(float{});
      return;
    case DType::bf16:
      f(__nv_bfloat16{});
      return;
    case DType::f64:
      f(double{});
      return;
    default:
      LINMOE_CHECK(false, op, ": unsupported dtype ", dtype_name(t));
  }
}

// Launch sizing for an element-wise grid over n items.
inline int blocks_for(i64 n, int threads = 256) {
  const i64 b = (n + threads - 1) / threads;
  return static_cast<int>(b < 1 ? 1 : (b > 65535 * 32 ? 65535 * 32 : b));
}

// The launcher's checks: a device tensor, contiguous when asked.
inline void check_device(const Tensor& t, const char* op, const char* arg) {
  LINMOE_CHECK(t.data != nullptr || t.numel() == 0, op, ": ", arg, " is undefined");
  LINMOE_CHECK(t.device == Device::cuda, op, ": ", arg, " must be in device memory, got ", t.str());
}
inline void check_contiguous(const Tensor& t, const char* op, const char* arg) {
  check_device(t, op, arg);
  LINMOE_CHECK(t.is_contiguous(), op, ": ", arg, " must be contiguous, got ", t.str());
}

}  // namespace cuda

// ---- scratch memory (added with the backend core) ---------------------------------------------

namespace cuda {

// Temporary device memory for one op, stream-ordered: allocated with cudaMallocAsync on `stream`
// and freed with cudaFreeAsync on it when the object dies, so kernels queued before that still
// see valid memory and nothing synchronises. The backend keeps the default pool's memory
// (release threshold = max), so this is a sub-allocation after the first use. Not counted in
// record_allocation (short-lived).
class ScratchBuffer {
 public:
  ScratchBuffer(cudaStream_t stream, std::size_t bytes) : stream_(stream) {
    if (bytes > 0) CUDA_CHECK(cudaMallocAsync(&data_, bytes, stream_));
  }
  ~ScratchBuffer() {
    if (data_) CUDA_CHECK(cudaFreeAsync(data_, stream_));
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  cudaStream_t stream_;
  void* data_ = nullptr;
};

}  // namespace cuda
}  // namespace linmoe
