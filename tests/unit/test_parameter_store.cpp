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
