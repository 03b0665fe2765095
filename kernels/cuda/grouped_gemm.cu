// Grouped GEMMs through cuBLAS (kernels/ops.h): the groups' products go to one
// cublasGemmGroupedBatchedEx call (f32, bf16 with fp32 accumulation; cublasDgemmGroupedBatched
// for f64), each product a cuBLAS group of its own (their sizes differ). Row-major to
// column-major as in gemm.cu: C = op(A) · op(B) runs as Cᵀ = op(B)ᵀ · op(A)ᵀ, the operands
// swapping places. cuBLAS reads the sizes, leading dimensions and scalars from host arrays and
// the matrix pointers from device arrays: those are built on the host and uploaded in one
// stream-ordered copy into a scratch buffer.
// Degenerate groups (K == 0, alpha == 0: c = beta · c) go through gemm, which defines them.
#include <type_traits>
#include <vector>

#include "kernels/cuda/cuda_context.cuh"
#include "kernels/grouped_gemm_shape.h"

namespace linmoe {
namespace {

using cuda::i64;

// One row-major product C[M, N] = op(A)[M, K] · op(B)[K, N] (see gemm.cu's GemmShape).
struct Product {
  i64 M, N, K, lda, ldb, ldc;
  bool trans_a, trans_b;
  const void* a;
  const void* b;
  void* c;
};

void check_devices(const Tensor& a, const Tensor& b, const Tensor& c, const char* op) {
  cuda::check_device(a, op, "a");
  cuda::check_device(b, op, "b");
  cuda::check_device(c, op, "c");
}

// Row stride of a matrix view (last dimension stride 1, rows not overlapping, ≥ 1 for cuBLAS).
i64 leading_dim(const Tensor& t, const char* op, const char* arg) {
  LINMOE_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", arg, " ", t.str(),
               " needs stride 1 in its last dimension, has ", t.stride(-1));
  const i64 cols = t.size(-1), ld = t.size(-2) <= 1 ? cols : t.stride(-2);
  LINMOE_CHECK(ld >= cols, op, ": rows of ", arg, " ", t.str(), " overlap (row stride ", ld, " < ",
               cols, " columns)");
  return ld < 1 ? 1 : ld;
}

// Element (row, 0) of a 2-D or (group, row, 0) of a 3-D view.
void* row_ptr(const Tensor& t, i64 group, i64 row) {
  const i64 off = (t.ndim() == 3 ? group * t.stride(0) : 0) + row * t.stride(-2);
  return static_cast<char*>(t.data) + off * static_cast<i64>(dtype_size(t.dtype));
}

template <class T>
struct GroupedTypes {  // f32 and bf16: the Ex call, fp32 compute and scalars
  static constexpr cudaDataType kData = std::is_same<T, float>::value ? CUDA_R_32F : CUDA_R_16BF;
};

// All products in one cuBLAS call; products is non-empty, every K ≥ 1 and alpha ≠ 0.
template <class T>
void run_grouped(CudaContext& ctx, const std::vector<Product>& ps, double alpha, double beta) {
  using C = cuda::compute_t<T>;  // the scalars' type: float, or double for f64
  const std::size_t P = ps.size();
  std::vector<cublasOperation_t> op_first(P), op_second(P);
  std::vector<std::int64_t> m(P), n(P), k(P), ld_first(P), ld_second(P), ldc(P), sizes(P, 1);
  std::vector<C> alphas(P, static_cast<C>(alpha)), betas(P, static_cast<C>(beta));
  std::vector<const void*> pointers(3 * P);  // [P] first operands, [P] second, [P] outputs
  for (std::size_t i = 0; i < P; ++i) {
    const Product& p = ps[i];
    // Cᵀ[N, M] = op(B)ᵀ · op(A)ᵀ: cuBLAS's first operand is B, its second A.
    op_first[i] = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    op_second[i] = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    m[i] = p.N;
    n[i] = p.M;
    k[i] = p.K;
    ld_first[i] = p.ldb;
    ld_second[i] = p.lda;
    ldc[i] = p.ldc;
    pointers[i] = p.b;
    pointers[P + i] = p.a;
    pointers[2 * P + i] = p.c;
  }
  // A copy from pageable host memory is staged before cudaMemcpyAsync returns, so `pointers`
  // may die at the end of this function; the scratch buffer is freed in stream order after the
  // GEMM has read it.
  cuda::ScratchBuffer device_pointers(ctx.stream, sizeof(void*) * 3 * P);
  void** dp = device_pointers.as<void*>();
  CUDA_CHECK(cudaMemcpyAsync(dp, pointers.data(), sizeof(void*) * 3 * P, cudaMemcpyHostToDevice,
                             ctx.stream));
  const i64 groups = static_cast<i64>(P);
  if constexpr (std::is_same<T, double>::value) {
    CUBLAS_CHECK(cublasDgemmGroupedBatched_64(
        ctx.cublas, op_first.data(), op_second.data(), m.data(), n.data(), k.data(), alphas.data(),
        reinterpret_cast<const double* const*>(dp), ld_first.data(),
        reinterpret_cast<const double* const*>(dp + P), ld_second.data(), betas.data(),
        reinterpret_cast<double* const*>(dp + 2 * P), ldc.data(), groups, sizes.data()));
  } else {
    constexpr cudaDataType dt = GroupedTypes<T>::kData;
    CUBLAS_CHECK(cublasGemmGroupedBatchedEx_64(
        ctx.cublas, op_first.data(), op_second.data(), m.data(), n.data(), k.data(), alphas.data(),
        dp, dt, ld_first.data(), dp + P, dt, ld_second.data(), betas.data(), dp + 2 * P, dt,
        ldc.data(), groups, sizes.data(), CUBLAS_COMPUTE_32F));
  }
}

void run_products(CudaContext& ctx, DType dtype, const std::vector<Product>& ps, double alpha,
                  double beta, const char* op) {
  cuda::dispatch_float(dtype, op, [&](auto zero) {
    using T = decltype(zero);
    if (!ps.empty()) run_grouped<T>(ctx, ps, alpha, beta);
  });
}

}  // namespace

void CudaBackend::grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b,
                               const std::vector<std::int64_t>& group_rows, const Tensor& c,
                               double alpha, double beta) {
  const char* op = "grouped_gemm";
  check_devices(a, b, c, op);
  const GroupedGemmShape shape = grouped_gemm_shape(a, b, trans_b, group_rows, c, op);
  const i64 G = shape.G, N = shape.N, K = shape.K;
  const std::vector<i64>& offsets = shape.first;
  const i64 lda = leading_dim(a, op, "a"), ldb = leading_dim(b, op, "b");
  const i64 ldc = leading_dim(c, op, "c");
  std::vector<Product> ps;
  for (i64 g = 0; g < G; ++g) {
    const i64 rows = group_rows[static_cast<std::size_t>(g)],
              first = offsets[static_cast<std::size_t>(g)];
    if (rows == 0 || N == 0) continue;  // nothing to write
    if (K == 0 || alpha == 0.0) {       // c_g = beta · c_g
      gemm(a.slice(0, first, rows), false, b.select(0, g), trans_b, c.slice(0, first, rows), alpha,
           beta);
      continue;
    }
    ps.push_back(Product{rows, N, K, lda, ldb, ldc, false, trans_b, row_ptr(a, 0, first),
                         row_ptr(b, g, 0), row_ptr(c, 0, first)});
  }
  run_products(*ctx_, c.dtype, ps, alpha, beta, op);
}

void CudaBackend::grouped_gemm_wgrad(const Tensor& a, const Tensor& b,
                                     const std::vector<std::int64_t>& group_rows, const Tensor& c,
                                     double alpha, double beta) {
  const char* op = "grouped_gemm_wgrad";
  check_devices(a, b, c, op);
  const GroupedGemmShape shape = grouped_wgrad_shape(a, b, group_rows, c, op);
  const i64 G = shape.G, M = shape.M, N = shape.N;
  const std::vector<i64>& offsets = shape.first;
  const i64 lda = leading_dim(a, op, "a"), ldb = leading_dim(b, op, "b");
  const i64 ldc = leading_dim(c, op, "c");
  LINMOE_CHECK(G <= 1 || M * N == 0 || c.stride(0) >= (M - 1) * ldc + N, op, ": groups of c ",
               c.str(), " overlap (group stride ", c.stride(0), ")");
  std::vector<Product> ps;
  for (i64 g = 0; g < G; ++g) {
    const i64 rows = group_rows[static_cast<std::size_t>(g)],
              first = offsets[static_cast<std::size_t>(g)];
    // An empty group leaves c[g] = beta · c[g]: nothing to do when accumulating.
    if (M == 0 || N == 0 || (rows == 0 && beta == 1.0)) continue;
    if (rows == 0 || alpha == 0.0) {  // c[g] = beta · c[g]
      gemm(a.slice(0, first, rows), true, b.slice(0, first, rows), false, c.select(0, g), alpha,
           beta);
      continue;
    }
    ps.push_back(Product{M, N, rows, lda, ldb, ldc, true, false, row_ptr(a, 0, first),
                         row_ptr(b, 0, first), row_ptr(c, g, 0)});
  }
  run_products(*ctx_, c.dtype, ps, alpha, beta, op);
}

}  // namespace linmoe
