// Launchers reject bad arguments loudly, naming the op and the argument. Each bad call runs in
// a forked child (a failed LINMOE_CHECK ends the process).
#include <catch2/catch.hpp>

#include <string>

#include "kernels/cpu/cpu_backend.h"
#include "ops/ops_testing.h"

namespace linmoe::testing {
namespace {

void expect_rejected(const std::function<void()>& call, const std::string& must_mention) {
  bool failed = false;
  const std::string err = run_expecting_failure(call, &failed);
  CAPTURE(must_mention, err);
  CHECK(failed);
  CHECK(err.find(must_mention) != std::string::npos);
}

TEST_CASE("launchers reject bad shapes, dtypes and devices", "[ops][checks]") {
  CpuBackend backend(1);
  HostTensor a = random_tensor(DType::f32, Shape{4, 5}, 1),
             b = random_tensor(DType::f32, Shape{6, 3}, 2);
  HostTensor c(DType::f32, Shape{4, 3}), c64(DType::f64, Shape{4, 3});
  HostTensor a16(DType::bf16, Shape{4, 5}), b16(DType::bf16, Shape{5, 3}),
      c16(DType::bf16, Shape{4, 3});
  HostTensor w(DType::f32, Shape{4}), rstd(DType::f32, Shape{4});
  HostTensor ids(DType::i32, Shape{2}), table(DType::f32, Shape{3, 5}),
      out(DType::f32, Shape{2, 5});
  fill_ints(ids.t(), 3, 3);

  expect_rejected([&] { backend.gemm(a, false, b, false, c, 1.0, 0.0); }, "gemm: op(b)");
  expect_rejected([&] { backend.gemm(a, false, b, true, c64, 1.0, 0.0); }, "gemm: mixed dtypes");
  // The raw CpuBackend computes in f32/f64 only (make_cpu_backend widens bf16 around it).
  expect_rejected([&] { backend.gemm(a16, false, b16, false, c16, 1.0, 0.0); }, "bf16");
  expect_rejected([&] { backend.add(a, c, a); }, "add: b has shape");
  expect_rejected([&] { backend.rms_norm_forward(a, w, 1e-6, a, rstd); }, "rms_norm_forward: w");
  expect_rejected([&] { backend.softmax_forward(a, c); }, "softmax_forward: y");
  expect_rejected([&] { backend.embedding_forward(a, table, out, 0); }, "embedding_forward: ids");
  expect_rejected(
      [&] {
        ids.data<std::int32_t>()[1] = -4;
        backend.embedding_forward(ids, table, out, 0);
      },
      "ids[1] = -4");
  expect_rejected([&] { backend.copy(ids, out.t().reshape(Shape{10}).slice(0, 0, 2)); },
                  "copy: cannot convert i32");
  expect_rejected(
      [&] {
        Tensor on_gpu = a.t();
        on_gpu.device = Device::cuda;
        backend.scale(on_gpu, 2.0);
      },
      "is not on the CPU");
  // Sanity: a good call in the child does not count as a rejection.
  bool failed = true;
  run_expecting_failure([&] { backend.scale(a, 2.0); }, &failed);
  CHECK_FALSE(failed);
}

}  // namespace
}  // namespace linmoe::testing
