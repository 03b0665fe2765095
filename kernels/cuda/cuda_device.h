// Device discovery. Plain C++ declarations so host code need not include CUDA headers.
#pragma once
#include <string>

namespace linmoe {

// Number of usable CUDA devices; 0 when there is no driver or no device (never fails).
int cuda_device_count();
// "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB"; empty when there is no device.
std::string cuda_device_description(int device);

}  // namespace linmoe
