#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "kernels/cuda/cuda_device.h"

namespace linmoe {

int cuda_device_count() {
  int n = 0;
  // Without a driver this fails (e.g. cudaErrorInsufficientDriver): that means no device.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

std::string cuda_device_description(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  char tail[64];
  std::snprintf(tail, sizeof(tail), ", sm_%d%d, %.1f GiB", prop.major, prop.minor,
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return std::string(prop.name) + tail;
}

}  // namespace linmoe
