// GEMM through cuBLAS: c = alpha · op(a) · op(b) + beta · c, optionally batched (kernels/ops.h).
//
// cuBLAS is column-major: a row-major [R, C] matrix with row stride ld is, to cuBLAS, its
// transpose [C, R] with leading dimension ld. So the row-major product C = op(A) · op(B) is
// computed as the column-major Cᵀ = op(B)ᵀ · op(A)ᵀ: the operands swap places and keep their
// transpose flags.
// Precision: f32 with CUBLAS_COMPUTE_32F (never TF32: fp32 runs are the checks), bf16 operands
// and output with fp32 accumulation (reductions kept in fp32, see the handle's math mode), f64
// with CUBLAS_COMPUTE_64F.
#include "kernels/cuda/cuda_context.cuh"

namespace linmoe {
namespace {

using cuda::i64;

constexpr i64 kIntMax = 0x7fffffff;

struct GemmShape {
  i64 batch, M, N, K;
  i64 a_bs, b_bs, c_bs;  // batch strides (0 for a 2-D operand shared by every batch)
  i64 lda, ldb, ldc;     // row strides
  bool trans_a, trans_b;
};

// Row stride of a matrix view whose last dimension must have stride 1; cuBLAS also needs rows
// that do not overlap (ld ≥ columns).
i64 row_stride(const Tensor& t, const char* arg) {
  LINMOE_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, "gemm: ", arg, " ", t.str(),
               " needs stride 1 in its last dimension, has ", t.stride(-1));
  const i64 cols = t.size(-1);
  const i64 ld = t.size(-2) <= 1 ? cols : t.stride(-2);
  LINMOE_CHECK(ld >= cols, "gemm: rows of ", arg, " ", t.str(), " overlap (row stride ", ld, " < ",
               cols, " columns)");
  return ld < 1 ? 1 : ld;
}

// c[b, i, j] = beta · c[b, i, j] (beta == 0 writes zeros without reading c): K == 0 or alpha == 0.
template <class T>
__global__ void scale_c_kernel(T* c, i64 batch, i64 M, i64 N, i64 c_bs, i64 ldc,
                               cuda::compute_t<T> beta) {
  const i64 total = batch * M * N;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 e = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const i64 j = e % N, i = (e / N) % M, b = e / (N * M);
    T* p = c + b * c_bs + i * ldc + j;
    cuda::store(p, beta == cuda::compute_t<T>(0) ? cuda::compute_t<T>(0) : beta * cuda::load(p));
  }
}

template <class T>
struct CublasTypes;
template <>
struct CublasTypes<float> {
  static constexpr cudaDataType kData = CUDA_R_32F;
  static constexpr cublasComputeType_t kCompute = CUBLAS_COMPUTE_32F;
};
template <>
struct CublasTypes<__nv_bfloat16> {
  static constexpr cudaDataType kData = CUDA_R_16BF;
  static constexpr cublasComputeType_t kCompute = CUBLAS_COMPUTE_32F;
};
template <>
struct CublasTypes<double> {
  static constexpr cudaDataType kData = CUDA_R_64F;
  static constexpr cublasComputeType_t kCompute = CUBLAS_COMPUTE_64F;
};

template <class T>
void gemm_typed(CudaContext& ctx, const GemmShape& s, const void* a, const void* b, void* c,
                double alpha, double beta) {
  using C = cuda::compute_t<T>;  // alpha and beta in the compute type (float or double)
  if (s.K == 0 || alpha == 0.0) {
    const i64 total = s.batch * s.M * s.N;
    scale_c_kernel<T><<<cuda::blocks_for(total), 256, 0, ctx.stream>>>(
        static_cast<T*>(c), s.batch, s.M, s.N, s.c_bs, s.ldc, static_cast<C>(beta));
    CUDA_CHECK_LAUNCH();
    return;
  }
  const C al = static_cast<C>(alpha), be = static_cast<C>(beta);
  constexpr cudaDataType dt = CublasTypes<T>::kData;
  constexpr cublasComputeType_t ct = CublasTypes<T>::kCompute;
  // Cᵀ[N, M] = op(B)ᵀ · op(A)ᵀ in cuBLAS's column-major terms (see the top of the file).
  const cublasOperation_t op_b = s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  i64 batch = s.batch, M = s.M;
  // One tall product instead of a batch when a shared b meets batches of a and c that continue
  // row after row (e.g. [Bt, M, K] · [K, N] on contiguous tensors).
  if (batch > 1 && s.b_bs == 0 && !s.trans_a && s.a_bs == s.M * s.lda && s.c_bs == s.M * s.ldc) {
    M = batch * s.M;
    batch = 1;
  }
  // The 32-bit API when every size fits (the common case); the 64-bit one otherwise.
  const bool fits = M <= kIntMax && s.N <= kIntMax && s.K <= kIntMax && s.lda <= kIntMax &&
                    s.ldb <= kIntMax && s.ldc <= kIntMax && batch <= kIntMax;
  if (batch == 1 && fits) {
    CUBLAS_CHECK(cublasGemmEx(ctx.cublas, op_b, op_a, static_cast<int>(s.N), static_cast<int>(M),
                              static_cast<int>(s.K), &al, b, dt, static_cast<int>(s.ldb), a, dt,
                              static_cast<int>(s.lda), &be, c, dt, static_cast<int>(s.ldc), ct,
                              CUBLAS_GEMM_DEFAULT));
  } else if (fits) {
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        ctx.cublas, op_b, op_a, static_cast<int>(s.N), static_cast<int>(M), static_cast<int>(s.K),
        &al, b, dt, static_cast<int>(s.ldb), s.b_bs, a, dt, static_cast<int>(s.lda), s.a_bs, &be, c,
        dt, static_cast<int>(s.ldc), s.c_bs, static_cast<int>(batch), ct, CUBLAS_GEMM_DEFAULT));
  } else if (batch == 1) {
    CUBLAS_CHECK(cublasGemmEx_64(ctx.cublas, op_b, op_a, s.N, M, s.K, &al, b, dt, s.ldb, a, dt,
                                 s.lda, &be, c, dt, s.ldc, ct, CUBLAS_GEMM_DEFAULT));
  } else {
    CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(ctx.cublas, op_b, op_a, s.N, M, s.K, &al, b, dt,
                                               s.ldb, s.b_bs, a, dt, s.lda, s.a_bs, &be, c, dt,
                                               s.ldc, s.c_bs, batch, ct, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace

void CudaBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                       const Tensor& c, double alpha, double beta) {
  const char* op = "gemm";
  cuda::check_device(a, op, "a");
  cuda::check_device(b, op, "b");
  cuda::check_device(c, op, "c");
  check_same_dtype(a, c, op);
  check_same_dtype(b, c, op);
  LINMOE_CHECK(c.ndim() == 2 || c.ndim() == 3, op, ": c ", c.str(),
               " must be [M, N] or [Bt, M, N]");
  GemmShape s{};
  s.batch = c.ndim() == 3 ? c.size(0) : 1;
  s.M = c.size(-2);
  s.N = c.size(-1);
  s.trans_a = trans_a;
  s.trans_b = trans_b;
  for (const Tensor* t : {&a, &b}) {
    const char* arg = t == &a ? "a" : "b";
    LINMOE_CHECK(t->ndim() == 2 || (c.ndim() == 3 && t->ndim() == 3), op, ": ", arg, " ", t->str(),
                 " must be 2-D", c.ndim() == 3 ? " or 3-D (batched c)" : " (c is 2-D)");
    if (t->ndim() == 3) {
      LINMOE_CHECK(t->size(0) == s.batch, op, ": ", arg, " ", t->str(), " has batch ", t->size(0),
                   ", c ", c.str(), " has ", s.batch);
    }
  }
  // op(a): [M, K]; a is [K, M] when transposed.
  s.K = trans_a ? a.size(-2) : a.size(-1);
  const i64 a_m = trans_a ? a.size(-1) : a.size(-2);
  LINMOE_CHECK(a_m == s.M, op, ": op(a) of ", a.str(), (trans_a ? " (transposed)" : ""), " has ",
               a_m, " rows, c ", c.str(), " has ", s.M);
  const i64 b_k = trans_b ? b.size(-1) : b.size(-2), b_n = trans_b ? b.size(-2) : b.size(-1);
  LINMOE_CHECK(b_k == s.K && b_n == s.N, op, ": op(b) of ", b.str(),
               (trans_b ? " (transposed)" : ""), " is [", b_k, ", ", b_n, "], expected [K=", s.K,
               ", N=", s.N, "] from a ", a.str(), " and c ", c.str());
  s.lda = row_stride(a, "a");
  s.ldb = row_stride(b, "b");
  s.ldc = row_stride(c, "c");
  s.a_bs = a.ndim() == 3 ? a.stride(0) : 0;
  s.b_bs = b.ndim() == 3 ? b.stride(0) : 0;
  s.c_bs = c.ndim() == 3 ? c.stride(0) : 0;
  if (s.batch == 0 || s.M == 0 || s.N == 0) return;
  LINMOE_CHECK(s.batch == 1 || s.c_bs >= (s.M - 1) * s.ldc + s.N, op, ": batches of c ", c.str(),
               " overlap (batch stride ", s.c_bs, ")");
  cuda::dispatch_float(c.dtype, op, [&](auto zero) {
    using T = decltype(zero);
    gemm_typed<T>(*ctx_, s, a.data, b.data, c.data, alpha, beta);
  });
}

}  // namespace linmoe
