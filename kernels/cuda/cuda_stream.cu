// CudaBackend::stream_handle: the stream as an opaque pointer for code without CUDA headers.
#include "kernels/cuda/cuda_context.cuh"

namespace linmoe {

void* CudaBackend::stream_handle() {
  return static_cast<void*>(context().stream);
}

}  // namespace linmoe
