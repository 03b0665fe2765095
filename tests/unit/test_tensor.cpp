#include <catch2/catch.hpp>

#include "common/test_util.h"
#include "core/memory.h"
#include "core/tensor.h"

using namespace linmoe;

TEST_CASE("tensor: contiguous strides, views and slices", "[tensor]") {
  Buffer buf(host_allocator(), 2 * 3 * 4 * sizeof(float), "t");
  Tensor t = buf.view(DType::f32, Shape{2, 3, 4});
  CHECK(t.stride(0) == 12);
  CHECK(t.stride(-1) == 1);
  CHECK(t.is_contiguous());
  CHECK(t.numel() == 24);
  CHECK(t.nbytes() == 96);
  for (int i = 0; i < 24; ++i) t.ptr<float>()[i] = float(i);
  Tensor s = t.slice(1, 1, 2);  // [2, 2, 4]
  CHECK(s.shape == Shape({2, 2, 4}));
  CHECK_FALSE(s.is_contiguous());
  CHECK(static_cast<float*>(s.data)[0] == 4.0f);
  Tensor row = t.select(0, 1);  // [3, 4]
  CHECK(row.shape == Shape({3, 4}));
  CHECK(static_cast<float*>(row.data)[0] == 12.0f);
  CHECK(t.reshape(Shape{6, 4}).stride(0) == 4);
  CHECK(t.flatten_to_2d().shape == Shape({6, 4}));
  CHECK(t.str() == "f32[2, 3, 4]@cpu");
}

TEST_CASE("bf16: round to nearest even and NaN", "[tensor]") {
  CHECK(bf16_to_f32(f32_to_bf16(1.0f)) == 1.0f);
  CHECK(bf16_to_f32(f32_to_bf16(-2.5f)) == -2.5f);
  // 1 + 2^-8 is exactly between two bf16 values: ties to even (1.0).
  CHECK(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)) == 1.0f);
  CHECK(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)) == 1.0f + 4.0f / 256);
  float nan = bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()));
  CHECK(nan != nan);
}

TEST_CASE("arena: bump allocation, marks, peak, growth", "[memory]") {
  Arena a(host_allocator(), 4096, "test arena");
  Tensor x = a.allocate(DType::f32, Shape{10});
  Arena::Mark m = a.mark();
  Tensor y = a.allocate(DType::f64, Shape{10});
  CHECK(reinterpret_cast<std::uintptr_t>(y.data) % kAlignment == 0);
  CHECK(static_cast<char*>(y.data) > static_cast<char*>(x.data));
  a.release(m);
  Tensor z = a.allocate(DType::f64, Shape{10});
  CHECK(z.data == y.data);
  CHECK(a.peak() == 2 * kAlignment);
  // Beyond the plan: a new block, nothing overwritten, and a mark before it still rewinds.
  Tensor big = a.allocate(DType::f32, Shape{2000});
  CHECK(a.capacity() > 4096);
  CHECK(a.used() == 4096 + 8192);  // the first block's unusable tail counts as used
  static_cast<float*>(big.data)[1999] = 1.0f;
  a.release(m);
  CHECK(a.used() == kAlignment);
  Tensor again = a.allocate(DType::f32, Shape{2000});
  CHECK(again.data == big.data);  // the grown block is reused
  a.reset();
  CHECK(a.used() == 0);
}

TEST_CASE("memory: live and peak bytes are tracked", "[memory]") {
  std::size_t before = memory_stats(Device::cpu).live_bytes;
  {
    Buffer b(host_allocator(), 1 << 20, "big");
    CHECK(memory_stats(Device::cpu).live_bytes == before + (1 << 20));
    CHECK(memory_stats(Device::cpu).peak_bytes >= before + (1 << 20));
  }
  CHECK(memory_stats(Device::cpu).live_bytes == before);
}
