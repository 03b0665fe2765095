#include <catch2/catch.hpp>

#include "core/parameter_store.h"

using namespace linmoe;

TEST_CASE("parameter store: flat buffers, aligned views, names", "[params]") {
  ParameterStore s;
  int a = s.add(whole_param("a.weight", Shape{3, 5}));
  int b = s.add(whole_param("b.bias", Shape{7}));
  ParamSpec sliced;
  sliced.name = "c.weight";
  sliced.global_shape = Shape{8, 4};
  sliced.shape = Shape{4, 4};
  sliced.offset = {4, 0};
  sliced.weight_decay = true;
  int c = s.add(sliced);
  s.allocate(host_allocator(), DType::f32, DType::f32);
  CHECK(s.size() == 3);
  CHECK(s.numel() == 15 + 7 + 16);
  CHECK(s.spec(a).weight_decay);
  CHECK_FALSE(s.spec(b).weight_decay);
  CHECK(s.index("c.weight") == c);
  CHECK(s.find("nope") == -1);
  CHECK(s.offset_of(b) % 64 == 0);
  CHECK(s.offset_of(c) % 64 == 0);
  CHECK(s.param(c).shape == Shape({4, 4}));
  float* flat = s.flat_params().ptr<float>();
  s.param(b).ptr<float>()[0] = 3.0f;
  CHECK(flat[s.offset_of(b)] == 3.0f);
  CHECK(s.flat_grads().numel() == s.padded_numel());
}

TEST_CASE("parameter store: regions padded to a multiple for equal shards", "[params]") {
  ParameterStore s;
  s.add(whole_param("a", Shape{100}));   // 128 elements after alignment
  s.add(whole_param("b", Shape{3}));     // 64
  s.end_region(64 * 3);                  // 192 -> padded to 192 (already a multiple)
  s.add(whole_param("e1", Shape{70}));   // 128
  s.end_region(64 * 4);                  // 128 -> 256
  s.add(whole_param("tail", Shape{1}));  // a last, unclosed region
  s.allocate(host_allocator(), DType::f32, DType::f32);
  const auto& r = s.regions();
  REQUIRE(r.size() == 3);
  CHECK(r[0].begin == 0);
  CHECK(r[0].end == 192);
  CHECK(r[0].first == 0);
  CHECK(r[0].last == 2);
  CHECK(r[1].begin == 192);
  CHECK(r[1].end == 192 + 256);
  CHECK(s.offset_of(2) == 192);
  CHECK(r[2].begin == 448);
  CHECK(r[2].end == 448 + 64);
  CHECK(s.padded_numel() == 512);
  // Padding is zero, so it never feeds a reduction.
  CHECK(s.flat_params().ptr<float>()[200] == 0.0f);
}
