// Shared test helpers: owning host tensors, random fills, poisoning, error metrics, skips.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/tensor.h"

namespace linmoe::testing {

// A host tensor that owns its memory (tests only; the product uses Buffer/Arena/ParameterStore).
class HostTensor {
 public:
  HostTensor(DType dtype, const Shape& shape);
  Tensor& t() { return view_; }
  const Tensor& t() const { return view_; }
  operator const Tensor&() const { return view_; }
  template <class T>
  T* data() const {
    return view_.ptr<T>();
  }
  // Values as doubles (any float or int dtype), and back.
  std::vector<double> to_f64() const;
  void from_f64(const std::vector<double>& v);

 private:
  Buffer buffer_;
  Tensor view_;
};

// Uniform in [lo, hi), deterministic for the seed.
void fill_uniform(const Tensor& t, std::uint64_t seed, double lo = -1.0, double hi = 1.0);
// Integers in [0, n).
void fill_ints(const Tensor& t, std::uint64_t seed, std::int64_t n);
// Fill with NaN (floats) or a wild value (ints) so an op that reads its output is caught.
void poison(const Tensor& t);

// ‖a − b‖ / max(‖b‖, tiny); ‖·‖ is the L2 norm.
double rel_error(const std::vector<double>& a, const std::vector<double>& b);
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b);

// Mark the test executable as skipped (exit 77 -> ctest SKIP) with a reason on stdout.
void skip(const std::string& reason);
bool skipped();

// Fatal errors inside a test end every rank (MPI_Abort), never a hang.
void install_abort_handler();

}  // namespace linmoe::testing
