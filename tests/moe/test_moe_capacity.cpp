// moe_capacity: ⌈c·N·k/E⌉ with exact decimal arithmetic on the config's text (MODEL.md 4).
#include <catch2/catch.hpp>

#include <string>

#include "core/check.h"
#include "kernels/moe_capacity.h"

namespace linmoe::testing {
namespace {

// The UserError's message, or "" when the call did not throw one.
std::string rejection(const std::string& text, std::int64_t tokens = 10, int k = 2,
                      int experts = 4) {
  try {
    moe_capacity(text, tokens, k, experts);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("moe_capacity is the exact ceiling of c·N·k/E", "[moe][capacity]") {
  // N·k/E = 10·2/4 = 5.
  CHECK(moe_capacity("1.0", 10, 2, 4) == 5);
  CHECK(moe_capacity("1", 10, 2, 4) == 5);
  CHECK(moe_capacity("1.25", 10, 2, 4) == 7);  // 6.25
  CHECK(moe_capacity("0.5", 10, 2, 4) == 3);   // 2.5
  CHECK(moe_capacity("2", 10, 2, 4) == 10);
  CHECK(moe_capacity("1.2", 10, 2, 4) == 6);  // exactly 6: no round-up past an integer
  // Exponents are accepted (the loader's strtod accepts them) and stay exact.
  CHECK(moe_capacity("1e0", 10, 2, 4) == 5);
  CHECK(moe_capacity("125e-2", 10, 2, 4) == 7);
  CHECK(moe_capacity("1.25E+1", 10, 2, 4) == 63);  // 62.5
  CHECK(moe_capacity("0.02e2", 10, 2, 4) == 10);
  // YAML/strtod spellings.
  CHECK(moe_capacity(".5", 10, 2, 4) == 3);
  CHECK(moe_capacity("2.", 10, 2, 4) == 10);
  CHECK(moe_capacity("+1.5", 10, 2, 4) == 8);       // 7.5
  CHECK(moe_capacity("0001.5000", 10, 2, 4) == 8);  // zeros on either side change nothing

  // N·k/E not integral: 0.3333·7·2/3 = 1.5554 → 2; 0.3333·3/1 = 0.9999 → 1.
  CHECK(moe_capacity("0.3333", 7, 2, 3) == 2);
  CHECK(moe_capacity("0.3333", 3, 1, 1) == 1);
  CHECK(moe_capacity("0.3333", 30000, 1, 1) == 9999);   // exactly 9999
  CHECK(moe_capacity("0.3333", 30001, 1, 1) == 10000);  // 9999.3333

  // Where a double would be wrong: 1.1·50 is 55.00000000000001 in binary floating point.
  CHECK(1.1 * 50.0 > 55.0);
  CHECK(moe_capacity("1.1", 50, 1, 1) == 55);
  CHECK(moe_capacity("1.1", 100, 1, 2) == 55);  // 1.1·100/2 = 55.00000000000001 in double
  CHECK(1.1 * 100.0 / 2.0 > 55.0);

  // Edges: no tokens; a tiny factor still gives one slot; big exact values.
  CHECK(moe_capacity("1.25", 0, 2, 4) == 0);
  CHECK(moe_capacity("1e-40", 10, 2, 4) == 1);
  CHECK(moe_capacity("0.000000000000000000000000000001", 1, 1, 64) == 1);
  CHECK(moe_capacity("1e6", 1000000, 8, 8) == 1000000000000);
  CHECK(moe_capacity("999999999999999999", 1, 1, 1) == 999999999999999999);
  CHECK(rejection("9999999999999999999", 1, 1, 1).find("too large") != std::string::npos);
}

TEST_CASE("moe_capacity rejects malformed text naming the key", "[moe][capacity]") {
  for (const char* bad : {"",     " 1",    "1 ",    "abc",  "1.2.3",
                          "1e",   "e5",    ".",     "+",    "-1",
                          "-0.5", "0",     "0.000", "0e5",  "inf",
                          "nan",  ".nan",  "0x10",  "1,5",  "1e+",
                          "++1",  "1_000", "1.5f",  "null", "12345678901234567890"}) {
    const std::string err = rejection(bad);
    CAPTURE(bad, err);
    CHECK(err.find("model.moe.capacity_factor") != std::string::npos);
  }
  CHECK(rejection("-1").find("decimal") != std::string::npos);
  CHECK(rejection("0.0").find("> 0") != std::string::npos);
  // A capacity beyond int64 is a clear error, not an overflow.
  CHECK(rejection("1e30", 10, 2, 4).find("too large") != std::string::npos);
  CHECK(rejection("1e1000000000000", 10, 2, 4).find("too large") != std::string::npos);
  CHECK(rejection("1", 10, 2, 4).empty());
}

}  // namespace
}  // namespace linmoe::testing
