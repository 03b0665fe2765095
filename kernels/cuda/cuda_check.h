// CUDA_CHECK and CUBLAS_CHECK: name the call, file, line, rank and host, then end every rank.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/check.h"

#define CUDA_CHECK(call)                                                                         \
  do {                                                                                           \
    cudaError_t linmoe_cuda_err_ = (call);                                                       \
    if (linmoe_cuda_err_ != cudaSuccess) {                                                       \
      ::linmoe::detail::check_failed(#call, __FILE__, __LINE__,                                  \
                                     ::linmoe::str_cat(cudaGetErrorName(linmoe_cuda_err_), ": ", \
                                                       cudaGetErrorString(linmoe_cuda_err_)));   \
    }                                                                                            \
  } while (0)

#define CUBLAS_CHECK(call)                                                           \
  do {                                                                               \
    cublasStatus_t linmoe_cublas_st_ = (call);                                       \
    if (linmoe_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                \
      ::linmoe::detail::check_failed(                                                \
          #call, __FILE__, __LINE__,                                                 \
          ::linmoe::str_cat("cuBLAS status ", static_cast<int>(linmoe_cublas_st_))); \
    }                                                                                \
  } while (0)

// After a kernel launch: the launch configuration was accepted.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
