// CudaBackend: construction (stream, cuBLAS handle, device facts), the device allocator, copy
// between any two devices with float conversion, and fill.
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "core/log.h"
#include "core/memory.h"
#include "kernels/cuda/cuda_context.cuh"
#include "kernels/cuda/cuda_device.h"

namespace linmoe {
namespace {

using cuda::i64;

// cuBLAS workspace: 32 MiB is what cuBLAS recommends for Hopper.
constexpr std::size_t kCublasWorkspaceBytes = std::size_t{32} << 20;
// Host-side conversions staging more than this return the pool's memory afterwards.
constexpr std::size_t kTrimStagingBytes = std::size_t{64} << 20;

// Dense bf16 tensor-core peak (datasheet, without sparsity) by device name and SM count.
double dense_bf16_peak(const cudaDeviceProp& prop) {
  const std::string name = prop.name;
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (prop.major != 9) return 0.0;
  if (has("H200")) return 989e12;
  if (has("H100")) {
    if (has("PCIe") || prop.multiProcessorCount == 114) return 756e12;
    if (has("NVL")) return 835e12;
    return 989e12;  // SXM (HBM3), 132 SMs
  }
  return 0.0;
}

// ---- the allocator -----------------------------------------------------------------------------

class CudaAllocator final : public Allocator {
 public:
  Device device() const override { return Device::cuda; }
  void* allocate(std::size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear it: the message below says what happened
      std::size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      fatal_error(str_cat("out of device memory allocating ", format_bytes(double(bytes)), " (",
                          cudaGetErrorString(err), "; ", format_bytes(double(free_bytes)),
                          " free of ", format_bytes(double(total_bytes)), ")"));
    }
    record_allocation(Device::cuda, static_cast<std::ptrdiff_t>(bytes));
    return p;
  }
  void deallocate(void* p, std::size_t bytes) override {
    if (!p) return;
    CUDA_CHECK(cudaFree(p));
    record_allocation(Device::cuda, -static_cast<std::ptrdiff_t>(bytes));
  }
  void set_zero(void* p, std::size_t bytes) override {
    if (!p || bytes == 0) return;
    // The backend's stream does not order itself after the legacy default stream, and the
    // allocator knows no stream: wait for all work before and after, so the zeros are neither
    // overwritten by queued kernels nor missed by the next one.
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemset(p, 0, bytes));
    CUDA_CHECK(cudaDeviceSynchronize());
  }
};

// ---- conversions -------------------------------------------------------------------------------

// f64 -> bf16 with one rounding, as the CPU backend: round toward zero to f32, set the last bit
// when inexact (round to odd), then f32 -> bf16 to nearest even.
__host__ __device__ inline std::uint16_t f64_to_bf16_bits(double d) {
#ifdef __CUDA_ARCH__
  float f = __double2float_rz(d);
  if (static_cast<double>(f) != d) f = __uint_as_float(__float_as_uint(f) | 1u);
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
  float f = static_cast<float>(d);
  if (!std::isnan(d) && static_cast<double>(f) != d) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::fabs(static_cast<double>(f)) > std::fabs(d)) --u;  // toward zero
    u |= 1u;
    std::memcpy(&f, &u, 4);
  }
  return f32_to_bf16(f).bits;
#endif
}

// dst = src converted, for device storage types (float, double, __nv_bfloat16).
template <class S, class D>
__device__ __forceinline__ D convert_value(S v);
template <>
__device__ __forceinline__ float convert_value(double v) {
  return __double2float_rn(v);
}
template <>
__device__ __forceinline__ double convert_value(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 convert_value(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 convert_value(double v) {
  return __ushort_as_bfloat16(f64_to_bf16_bits(v));
}
template <>
__device__ __forceinline__ float convert_value(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ double convert_value(__nv_bfloat16 v) {
  return static_cast<double>(__bfloat162float(v));
}

template <class S, class D>
__global__ void convert_kernel(const S* src, D* dst, i64 n) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    dst[i] = convert_value<S, D>(src[i]);
  }
}

// Host conversions (a copy between two host tensors), element by element through double.
double host_to_f64(const void* p, DType t, i64 i) {
  switch (t) {
    case DType::f32:
      return static_cast<const float*>(p)[i];
    case DType::f64:
      return static_cast<const double*>(p)[i];
    case DType::bf16:
      return bf16_to_f32(static_cast<const bf16*>(p)[i]);
    default:
      LINMOE_CHECK(false, "copy: no float conversion for ", dtype_name(t));
  }
  return 0;
}
void host_from_f64(void* p, DType t, i64 i, double v) {
  switch (t) {
    case DType::f32:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      return;
    case DType::f64:
      static_cast<double*>(p)[i] = v;
      return;
    case DType::bf16:
      static_cast<bf16*>(p)[i] = bf16{f64_to_bf16_bits(v)};
      return;
    default:
      LINMOE_CHECK(false, "copy: no float conversion for ", dtype_name(t));
  }
}

// dst = src converted on the device; both in device memory, n elements, float dtypes.
void convert_on_device(cudaStream_t stream, const void* src, DType st, void* dst, DType dt, i64 n) {
  cuda::dispatch_float(st, "copy", [&](auto s) {
    using S = decltype(s);
    cuda::dispatch_float(dt, "copy", [&](auto d) {
      using D = decltype(d);
      if constexpr (std::is_same_v<S, D>) {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(n) * sizeof(S),
                                   cudaMemcpyDeviceToDevice, stream));
      } else {
        convert_kernel<S, D><<<cuda::blocks_for(n), 256, 0, stream>>>(static_cast<const S*>(src),
                                                                      static_cast<D*>(dst), n);
        CUDA_CHECK_LAUNCH();
      }
    });
  });
}

// ---- fill --------------------------------------------------------------------------------------

template <class T>
__global__ void fill_kernel(T* p, T value, i64 n) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    p[i] = value;
  }
}

template <class T>
void launch_fill(cudaStream_t stream, void* p, T value, i64 n) {
  fill_kernel<T><<<cuda::blocks_for(n), 256, 0, stream>>>(static_cast<T*>(p), value, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- construction ------------------------------------------------------------------------------

CudaBackend::CudaBackend(int device) : ctx_(std::make_unique<CudaContext>()) {
  const int count = cuda_device_count();
  LINMOE_CHECK(device >= 0 && device < count, "CudaBackend: device ", device, " does not exist (",
               count, " CUDA devices)");
  CudaContext& c = *ctx_;
  c.device = device;
  CUDA_CHECK(cudaSetDevice(device));
  // Non-blocking: no implicit ordering with the legacy default stream (NCCL, other libraries).
  CUDA_CHECK(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
  CUBLAS_CHECK(cublasCreate(&c.cublas));
  CUBLAS_CHECK(cublasSetStream(c.cublas, c.stream));
  c.cublas_workspace_bytes = kCublasWorkspaceBytes;
  CUDA_CHECK(cudaMalloc(&c.cublas_workspace, c.cublas_workspace_bytes));
  CUBLAS_CHECK(cublasSetWorkspace(c.cublas, c.cublas_workspace, c.cublas_workspace_bytes));
  // Reductions inside a GEMM stay in the compute type (fp32 for bf16 operands); fp32 GEMMs use
  // CUBLAS_COMPUTE_32F, never TF32 (the fp32 mode exists for checks).
  CUBLAS_CHECK(cublasSetMathMode(
      c.cublas, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                          CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  // Scratch buffers (cuda::ScratchBuffer) come from the default pool: keep its memory instead of
  // returning it to the driver at every synchronisation.
  cudaMemPool_t pool = nullptr;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  std::uint64_t threshold = UINT64_MAX;
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  c.sm_count = prop.multiProcessorCount;
  c.peak_flops = dense_bf16_peak(prop);
}

CudaBackend::~CudaBackend() {
  // Best effort: a destructor must not end the program over a failed teardown.
  CudaContext& c = *ctx_;
  cudaSetDevice(c.device);
  if (c.stream) cudaStreamSynchronize(c.stream);
  if (c.cublas) cublasDestroy(c.cublas);
  if (c.cublas_workspace) cudaFree(c.cublas_workspace);
  if (c.stream) cudaStreamDestroy(c.stream);
  cudaGetLastError();
}

std::string CudaBackend::name() const {
  return str_cat("cuda (", cuda_device_description(ctx_->device), ")");
}

Allocator& cuda_allocator() {
  static CudaAllocator a;
  return a;
}

Allocator& CudaBackend::allocator() {
  return cuda_allocator();
}

void CudaBackend::synchronize() {
  CUDA_CHECK(cudaStreamSynchronize(ctx_->stream));
}

double CudaBackend::peak_flops_per_second() const {
  return ctx_->peak_flops;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  return std::make_unique<CudaBackend>(device);
}

// ---- copy --------------------------------------------------------------------------------------

// Same dtype: one cudaMemcpyAsync (any direction). Float conversion: on the device; a host side
// is staged through a device buffer in its own dtype. Host-to-host conversion runs on the host.
// A copy that touches host memory returns after the stream has finished it, so the host may read
// the destination or reuse the source at once.
void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  const char* op = "copy";
  LINMOE_CHECK(src.defined(), op, ": src is undefined");
  LINMOE_CHECK(dst.defined(), op, ": dst is undefined");
  check_contiguous(src, op, "src");
  check_contiguous(dst, op, "dst");
  LINMOE_CHECK(src.numel() == dst.numel(), op, ": src ", src.str(), " and dst ", dst.str(),
               " differ in size");
  const i64 n = src.numel();
  if (n == 0) return;
  const cudaStream_t stream = ctx_->stream;
  const bool src_host = src.device == Device::cpu, dst_host = dst.device == Device::cpu;
  if (src.dtype == dst.dtype) {
    if (src.data == dst.data && src.device == dst.device) return;
    if (src_host && dst_host) {
      std::memcpy(dst.data, src.data, src.nbytes());
      return;
    }
    CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDefault, stream));
    if (src_host || dst_host) CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  LINMOE_CHECK(src.data != dst.data, op, ": cannot convert ", src.str(), " to ", dst.str(),
               " in place");
  LINMOE_CHECK(dtype_is_float(src.dtype) && dtype_is_float(dst.dtype), op, ": cannot convert ",
               dtype_name(src.dtype), " to ", dtype_name(dst.dtype),
               " (integer dtypes must be equal)");
  if (src_host && dst_host) {
    for (i64 i = 0; i < n; ++i) {
      host_from_f64(dst.data, dst.dtype, i, host_to_f64(src.data, src.dtype, i));
    }
    return;
  }
  const std::size_t staged = (src_host ? src.nbytes() : 0) + (dst_host ? dst.nbytes() : 0);
  {
    // The device-side source and destination of the conversion kernel.
    cuda::ScratchBuffer staged_src(stream, src_host ? src.nbytes() : 0);
    cuda::ScratchBuffer staged_dst(stream, dst_host ? dst.nbytes() : 0);
    const void* dsrc = src_host ? staged_src.as<void>() : src.data;
    void* ddst = dst_host ? staged_dst.as<void>() : dst.data;
    if (src_host) {
      CUDA_CHECK(cudaMemcpyAsync(staged_src.as<void>(), src.data, src.nbytes(),
                                 cudaMemcpyHostToDevice, stream));
    }
    convert_on_device(stream, dsrc, src.dtype, ddst, dst.dtype, n);
    if (dst_host) {
      CUDA_CHECK(cudaMemcpyAsync(dst.data, ddst, dst.nbytes(), cudaMemcpyDeviceToHost, stream));
    }
    if (src_host || dst_host) CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  // The default pool keeps what it has held (see the constructor); give a large staging area
  // back rather than keep it for the rest of the run.
  if (staged > kTrimStagingBytes) {
    CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaMemPool_t pool = nullptr;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, ctx_->device));
    CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
  }
}

// ---- fill --------------------------------------------------------------------------------------

void CudaBackend::fill(const Tensor& dst, double value) {
  const char* op = "fill";
  cuda::check_contiguous(dst, op, "dst");
  const i64 n = dst.numel();
  if (n == 0) return;
  const cudaStream_t stream = ctx_->stream;
  // Zero (not −0) has all bits zero in every dtype.
  if (value == 0.0 && !std::signbit(value)) {
    CUDA_CHECK(cudaMemsetAsync(dst.data, 0, dst.nbytes(), stream));
    return;
  }
  switch (dst.dtype) {
    case DType::f32:
      launch_fill(stream, dst.data, static_cast<float>(value), n);
      return;
    case DType::f64:
      launch_fill(stream, dst.data, value, n);
      return;
    case DType::bf16:
      launch_fill(stream, dst.data, f64_to_bf16_bits(value), n);
      return;
    case DType::i32:
      launch_fill(stream, dst.data, static_cast<std::int32_t>(value), n);
      return;
    case DType::i64:
      launch_fill(stream, dst.data, static_cast<std::int64_t>(value), n);
      return;
  }
  LINMOE_CHECK(false, op, ": unknown dtype");
}

}  // namespace linmoe
