// The device is found and described; skipped (not passed) without a GPU.
#include <catch2/catch.hpp>

#include "common/test_util.h"
#include "kernels/ops.h"
#if LINMOE_HAVE_CUDA
#include "kernels/cuda/cuda_device.h"
#endif

using namespace linmoe;

TEST_CASE("gpu: a CUDA device is present and described", "[gpu]") {
  if (!cuda_device_available()) {
    testing::skip("no CUDA device on this machine");
    return;
  }
#if LINMOE_HAVE_CUDA
  CHECK(cuda_device_count() >= 1);
  CHECK_FALSE(cuda_device_description(0).empty());
#endif
}
