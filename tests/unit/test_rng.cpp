#include <catch2/catch.hpp>

#include <cmath>

#include "core/rng.h"

using namespace linmoe;

TEST_CASE("philox: the Random123 known-answer vectors", "[rng]") {
  // Philox4x32-10 test vectors published with Random123 (kat_vectors).
  Philox4x32 a = philox4x32_10(0, 0, 0, 0, 0, 0);
  CHECK(a.out[0] == 0x6627e8d5u);
  CHECK(a.out[1] == 0xe169c58du);
  CHECK(a.out[2] == 0xbc57ac4cu);
  CHECK(a.out[3] == 0x9b00dbd8u);
  Philox4x32 b =
      philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  CHECK(b.out[0] == 0x408f276du);
  CHECK(b.out[1] == 0x41c83b0eu);
  CHECK(b.out[2] == 0xa20bc7c6u);
  CHECK(b.out[3] == 0x6d5451fdu);
}

TEST_CASE("rng: a value depends only on (seed, name, index)", "[rng]") {
  CounterRng r1(42, "layers.0.mixer.q_proj.weight"), r2(42, "layers.0.mixer.q_proj.weight");
  CounterRng other_name(42, "layers.0.mixer.k_proj.weight"),
      other_seed(43, "layers.0.mixer.q_proj.weight");
  // Reading a slice (as a rank holding part of the tensor does) gives the same numbers.
  for (std::uint64_t i = 1000; i < 1100; ++i) CHECK(r1.normal(i) == r2.normal(i));
  int same_name = 0, same_seed = 0;
  for (std::uint64_t i = 0; i < 100; ++i) {
    same_name += r1.normal(i) == other_name.normal(i);
    same_seed += r1.normal(i) == other_seed.normal(i);
  }
  CHECK(same_name == 0);
  CHECK(same_seed == 0);
}

TEST_CASE("rng: normal and uniform have the right moments", "[rng]") {
  CounterRng r(1, "moments");
  const int n = 200000;
  double s = 0, s2 = 0, u = 0;
  for (int i = 0; i < n; ++i) {
    double x = r.normal(static_cast<std::uint64_t>(i));
    s += x;
    s2 += x * x;
    float v = r.uniform(static_cast<std::uint64_t>(i));
    REQUIRE(v > 0.0f);
    REQUIRE(v < 1.0f);
    u += v;
  }
  CHECK(std::fabs(s / n) < 0.01);
  CHECK(std::fabs(s2 / n - 1.0) < 0.01);
  CHECK(std::fabs(u / n - 0.5) < 0.005);
}
