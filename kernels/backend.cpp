// Backend selection: the one place that knows whether this build has CUDA.
#include "core/log.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/ops.h"

#if LINMOE_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_device.h"
#endif

namespace linmoe {

const char* activation_name(Activation f) {
  switch (f) {
    case Activation::identity:
      return "identity";
    case Activation::silu:
      return "silu";
    case Activation::sigmoid:
      return "sigmoid";
    case Activation::elu1:
      return "elu1";
    case Activation::relu:
      return "relu";
    case Activation::softplus:
      return "softplus";
    case Activation::logsigmoid:
      return "logsigmoid";
  }
  return "?";
}

BackendKind parse_backend_kind(const std::string& s, const std::string& key) {
  if (s == "auto") return BackendKind::automatic;
  if (s == "cpu") return BackendKind::cpu;
  if (s == "cuda") return BackendKind::cuda;
  throw UserError(str_cat(key, " = '", s, "': must be one of auto, cpu, cuda"));
}

bool cuda_device_available() {
#if LINMOE_HAVE_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(BackendKind kind, int cpu_threads, int device) {
  bool want_cuda = kind == BackendKind::cuda;
  if (kind == BackendKind::automatic) want_cuda = cuda_device_available();
  if (want_cuda) {
#if LINMOE_HAVE_CUDA
    if (!cuda_device_available()) {
      throw UserError("device.backend = 'cuda': no CUDA device is available on this machine");
    }
    // Every op exists on the GPU, but none has been validated on one yet (docs/STATUS.md):
    // `auto` keeps the CPU until the GPU tests have run; `cuda` asks for it explicitly.
    if (kind == BackendKind::automatic) {
      log_warn(
          "a CUDA device is present; the CUDA backend is not validated yet (docs/STATUS.md), "
          "so device.backend: auto uses the CPU; set device.backend: cuda to use the GPU");
      return make_cpu_backend(cpu_threads);
    }
    return make_cuda_backend(device % cuda_device_count());
#else
    (void)device;
    throw UserError("device.backend = 'cuda': this build has no CUDA support (LINMOE_CUDA=OFF)");
#endif
  }
  (void)device;
  return make_cpu_backend(cpu_threads);
}

}  // namespace linmoe
