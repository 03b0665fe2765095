// CpuBackend: construction, naming, copy and fill.
#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <cmath>
#include <cstring>

#include "kernels/cpu/bf16_widening.h"
#include "kernels/cpu/cpu_common.h"

namespace linmoe {
namespace {

// f64 -> bf16 with one rounding: round to f32 with round-to-odd (truncate, then set the last
// bit when inexact), then f32 -> bf16 to nearest even. Rounding through f32 to nearest would
// round twice and can miss a bf16 tie by one unit.
bf16 f64_to_bf16(double d) {
  float f = static_cast<float>(d);
  if (!std::isnan(d) && static_cast<double>(f) != d) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::fabs(static_cast<double>(f)) > std::fabs(d)) --u;  // toward zero
    u |= 1u;
    std::memcpy(&f, &u, 4);
  }
  return f32_to_bf16(f);
}

template <class T>
double to_f64(T v) {
  return static_cast<double>(v);
}
template <>
double to_f64(bf16 v) {
  return bf16_to_f32(v);
}

template <class T>
T from_f64(double v) {
  return static_cast<T>(v);
}
template <>
bf16 from_f64(double v) {
  return f64_to_bf16(v);
}

template <class S, class D>
void convert(const S* src, D* dst, std::int64_t n, int threads) {
#pragma omp parallel for num_threads(cpu::threads_for(n, threads)) schedule(static)
  for (std::int64_t i = 0; i < n; ++i) dst[i] = from_f64<D>(to_f64(src[i]));
}
template <>
void convert(const float* src, bf16* dst, std::int64_t n, int threads) {
#pragma omp parallel for num_threads(cpu::threads_for(n, threads)) schedule(static)
  for (std::int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

// Calls body(T{}) for a float dtype (f32, f64, bf16).
template <class Body>
void dispatch_convertible(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::f32:
      body(float{});
      return;
    case DType::f64:
      body(double{});
      return;
    case DType::bf16:
      body(bf16{});
      return;
    case DType::i32:
    case DType::i64:
      break;
  }
  LINMOE_CHECK(false, "copy: no float conversion for ", dtype_name(dtype));
}

template <class T>
void fill_typed(const Tensor& dst, T value, int threads) {
  T* p = static_cast<T*>(dst.data);
  std::int64_t n = dst.numel();
#pragma omp parallel for num_threads(cpu::threads_for(n, threads)) schedule(static)
  for (std::int64_t i = 0; i < n; ++i) p[i] = value;
}

}  // namespace

CpuBackend::CpuBackend(int threads) : threads_(threads > 0 ? threads : omp_get_max_threads()) {
  LINMOE_CHECK(threads >= 0, "CpuBackend: threads = ", threads, " (0 means all cores)");
}

std::string CpuBackend::name() const {
  return str_cat("cpu (", threads_, threads_ == 1 ? " thread)" : " threads)");
}

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  const char* op = "copy";
  cpu::check_cpu(src, op, "src");
  cpu::check_cpu(dst, op, "dst");
  check_contiguous(src, op, "src");
  check_contiguous(dst, op, "dst");
  LINMOE_CHECK(src.numel() == dst.numel(), op, ": src ", src.str(), " and dst ", dst.str(),
               " differ in size");
  std::int64_t n = src.numel();
  if (n == 0) return;
  if (src.dtype == dst.dtype) {
    if (src.data != dst.data) std::memcpy(dst.data, src.data, src.nbytes());
    return;
  }
  LINMOE_CHECK(src.data != dst.data, op, ": cannot convert ", src.str(), " to ", dst.str(),
               " in place");
  LINMOE_CHECK(dtype_is_float(src.dtype) && dtype_is_float(dst.dtype), op, ": cannot convert ",
               dtype_name(src.dtype), " to ", dtype_name(dst.dtype),
               " (integer dtypes must be equal)");
  dispatch_convertible(src.dtype, [&](auto s) {
    using S = decltype(s);
    dispatch_convertible(dst.dtype, [&](auto d) {
      using D = decltype(d);
      convert(static_cast<const S*>(src.data), static_cast<D*>(dst.data), n, threads_);
    });
  });
}

void CpuBackend::fill(const Tensor& dst, double value) {
  const char* op = "fill";
  cpu::check_cpu(dst, op, "dst");
  check_contiguous(dst, op, "dst");
  switch (dst.dtype) {
    case DType::f32:
      fill_typed(dst, static_cast<float>(value), threads_);
      return;
    case DType::f64:
      fill_typed(dst, value, threads_);
      return;
    case DType::bf16:
      fill_typed(dst, f64_to_bf16(value), threads_);
      return;
    case DType::i32:
      fill_typed(dst, static_cast<std::int32_t>(value), threads_);
      return;
    case DType::i64:
      fill_typed(dst, static_cast<std::int64_t>(value), threads_);
      return;
  }
  LINMOE_CHECK(false, op, ": unknown dtype");
}

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  // bf16 arguments are widened to f32 around each op (kernels/cpu/bf16_widening.h).
  return make_bf16_widening(std::make_unique<CpuBackend>(threads));
}

}  // namespace linmoe
