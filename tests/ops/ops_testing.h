// Helpers of the op tests: random host tensors, the fp32/fp64 error bounds, and a fork-based
// check that a launcher rejects bad arguments loudly.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/tensor.h"

namespace linmoe::testing {

// Relative-error bounds (TESTING.md): the CPU backend in f32 ≤ 1e-5, in f64 ≤ 1e-12.
inline double op_bound(DType dt) {
  return dt == DType::f64 ? 1e-12 : 1e-5;
}
// Backward ops against central finite differences in f64 (TESTING.md's gradient bound).
constexpr double kFiniteDifferenceBound = 1e-6;

// A host tensor filled uniformly in [lo, hi).
HostTensor random_tensor(DType dt, const Shape& s, std::uint64_t seed, double lo = -1.0,
                         double hi = 1.0);
// A poisoned (NaN) host tensor.
HostTensor poisoned_tensor(DType dt, const Shape& s);

// Runs `call` in a child process and returns what it wrote to stderr, with `exited_nonzero`
// set when it ended with a failure status (a LINMOE_CHECK) rather than returning.
std::string run_expecting_failure(const std::function<void()>& call, bool* exited_nonzero);

}  // namespace linmoe::testing
