#include "common/test_util.h"

#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include "core/rng.h"

namespace linmoe::testing {
namespace {
bool g_skipped = false;

void abort_all(int code) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}
}  // namespace

HostTensor::HostTensor(DType dtype, const Shape& shape)
    : buffer_(host_allocator(), static_cast<std::size_t>(shape.numel()) * dtype_size(dtype) + 64,
              "test tensor"),
      view_(buffer_.view(dtype, shape)) {}

std::vector<double> HostTensor::to_f64() const {
  std::vector<double> out(static_cast<std::size_t>(view_.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    switch (view_.dtype) {
      case DType::f32:
        out[i] = view_.ptr<float>()[i];
        break;
      case DType::f64:
        out[i] = view_.ptr<double>()[i];
        break;
      case DType::bf16:
        out[i] = bf16_to_f32(view_.ptr<bf16>()[i]);
        break;
      case DType::i32:
        out[i] = view_.ptr<std::int32_t>()[i];
        break;
      case DType::i64:
        out[i] = static_cast<double>(view_.ptr<std::int64_t>()[i]);
        break;
    }
  }
  return out;
}

void HostTensor::from_f64(const std::vector<double>& v) {
  LINMOE_CHECK(static_cast<std::int64_t>(v.size()) == view_.numel(), "from_f64 size");
  for (std::size_t i = 0; i < v.size(); ++i) {
    switch (view_.dtype) {
      case DType::f32:
        view_.ptr<float>()[i] = static_cast<float>(v[i]);
        break;
      case DType::f64:
        view_.ptr<double>()[i] = v[i];
        break;
      case DType::bf16:
        view_.ptr<bf16>()[i] = f32_to_bf16(static_cast<float>(v[i]));
        break;
      case DType::i32:
        view_.ptr<std::int32_t>()[i] = static_cast<std::int32_t>(v[i]);
        break;
      case DType::i64:
        view_.ptr<std::int64_t>()[i] = static_cast<std::int64_t>(v[i]);
        break;
    }
  }
}

void fill_uniform(const Tensor& t, std::uint64_t seed, double lo, double hi) {
  LINMOE_CHECK(t.device == Device::cpu && t.is_contiguous(), "fill_uniform needs a host tensor");
  CounterRng rng(seed, "test.fill_uniform");
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    double u = lo + (hi - lo) * rng.uniform(static_cast<std::uint64_t>(i));
    switch (t.dtype) {
      case DType::f32:
        static_cast<float*>(t.data)[i] = static_cast<float>(u);
        break;
      case DType::f64:
        static_cast<double*>(t.data)[i] = u;
        break;
      case DType::bf16:
        static_cast<bf16*>(t.data)[i] = f32_to_bf16(static_cast<float>(u));
        break;
      default:
        LINMOE_CHECK(false, "fill_uniform of ", dtype_name(t.dtype));
    }
  }
}

void fill_ints(const Tensor& t, std::uint64_t seed, std::int64_t n) {
  CounterRng rng(seed, "test.fill_ints");
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    std::int64_t v = static_cast<std::int64_t>(rng.bits(static_cast<std::uint64_t>(i)) % n);
    if (t.dtype == DType::i32) {
      static_cast<std::int32_t*>(t.data)[i] = static_cast<std::int32_t>(v);
    } else {
      LINMOE_CHECK(t.dtype == DType::i64, "fill_ints of ", dtype_name(t.dtype));
      static_cast<std::int64_t*>(t.data)[i] = v;
    }
  }
}

void poison(const Tensor& t) {
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    switch (t.dtype) {
      case DType::f32:
        static_cast<float*>(t.data)[i] = std::numeric_limits<float>::quiet_NaN();
        break;
      case DType::f64:
        static_cast<double*>(t.data)[i] = std::numeric_limits<double>::quiet_NaN();
        break;
      case DType::bf16:
        static_cast<bf16*>(t.data)[i] = bf16{0x7fc0};
        break;
      case DType::i32:
        static_cast<std::int32_t*>(t.data)[i] = -123456789;
        break;
      case DType::i64:
        static_cast<std::int64_t*>(t.data)[i] = -123456789;
        break;
    }
  }
}

double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  LINMOE_CHECK(a.size() == b.size(), "rel_error of ", a.size(), " vs ", b.size(), " values");
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    double d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  if (std::isnan(num)) return std::numeric_limits<double>::infinity();
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  LINMOE_CHECK(a.size() == b.size(), "max_abs_diff size");
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    double d = std::fabs(a[i] - b[i]);
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

void skip(const std::string& reason) {
  g_skipped = true;
  std::printf("SKIPPED: %s\n", reason.c_str());
}

bool skipped() {
  return g_skipped;
}

void install_abort_handler() {
  set_fatal_handler(abort_all);
}

}  // namespace linmoe::testing
