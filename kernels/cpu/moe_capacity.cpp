// ⌈c·N·k/E⌉ in integers (MODEL.md 4: "exact arithmetic on the decimal c"). The text is read as
// mantissa · 10^(−scale) and the ceiling taken in 128-bit integers, so no rounding ever happens.
#include "kernels/moe_capacity.h"

#include <algorithm>
#include <limits>

#include "core/check.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;
__extension__ typedef unsigned __int128 u128;  // GCC/Clang; __extension__ keeps -Wpedantic quiet

constexpr const char* kKey = "model.moe.capacity_factor";

[[noreturn]] void reject(const std::string& text, const std::string& why) {
  throw UserError(str_cat(kKey, ": '", text, "' ", why));
}

// value = mantissa · 10^(−scale), mantissa > 0 without trailing zeros.
struct Decimal {
  std::uint64_t mantissa;
  i64 scale;
};

Decimal parse_decimal(const std::string& text) {
  const char* kForm =
      "is not a decimal number (digits with an optional '.' and exponent, e.g. 1.25 or 1e0)";
  const std::size_t len = text.size();
  auto digit_at = [&](std::size_t j) { return j < len && text[j] >= '0' && text[j] <= '9'; };
  std::size_t i = 0;
  if (i < len && text[i] == '+') ++i;
  std::string digits;  // the integer and fraction digits, '.' removed
  i64 scale = 0;
  for (; digit_at(i); ++i) digits += text[i];
  if (i < len && text[i] == '.') {
    for (++i; digit_at(i); ++i, ++scale) digits += text[i];
  }
  if (digits.empty()) reject(text, kForm);
  if (i < len && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    bool negative = false;
    if (i < len && (text[i] == '+' || text[i] == '-')) negative = text[i++] == '-';
    if (!digit_at(i)) reject(text, kForm);
    i64 exponent = 0;  // saturates: past ~40 digits the ceiling below is settled anyway
    for (; digit_at(i); ++i) exponent = std::min<i64>(exponent * 10 + (text[i] - '0'), 1000000);
    scale += negative ? exponent : -exponent;
  }
  if (i != len) reject(text, kForm);
  const std::size_t first = digits.find_first_not_of('0');
  if (first == std::string::npos) reject(text, "must be > 0 (null means dropless)");
  const std::size_t last = digits.find_last_not_of('0');
  scale -= static_cast<i64>(digits.size() - 1 - last);  // trailing zeros move into the scale
  digits = digits.substr(first, last - first + 1);
  if (digits.size() > 19) reject(text, "has more than 19 significant digits");
  std::uint64_t mantissa = 0;
  for (char ch : digits) mantissa = mantissa * 10 + static_cast<std::uint64_t>(ch - '0');
  return {mantissa, scale};
}

}  // namespace

std::int64_t moe_capacity(const std::string& capacity_factor_text, std::int64_t tokens, int k,
                          int experts) {
  LINMOE_CHECK(tokens >= 0, "moe_capacity: tokens = ", tokens, " is negative");
  LINMOE_CHECK(k >= 1 && k <= experts, "moe_capacity: k = ", k,
               " must be in [1, experts = ", experts, "]");
  const Decimal c = parse_decimal(capacity_factor_text);
  if (tokens == 0) return 0;
  auto too_large = [&] {
    reject(capacity_factor_text,
           str_cat("is too large: the capacity for N·k = ", tokens, "·", k, " assignments over ",
                   experts, " experts does not fit int64"));
  };
  // c·N·k/E = num / den. Below kLimit, num·10 and den·10 cannot overflow 128 bits.
  constexpr u128 kLimit = u128{1} << 124;
  const u128 assignments = static_cast<u128>(tokens) * static_cast<u128>(k);  // < 2^94
  if (c.mantissa > kLimit / assignments) too_large();
  u128 num = c.mantissa * assignments;
  u128 den = static_cast<u128>(experts);
  for (i64 q = c.scale; q < 0; ++q) {
    if (num > kLimit / 10) too_large();
    num *= 10;
  }
  for (i64 q = c.scale; q > 0; --q) {
    // den·10^q > num > 0 from here on: the quotient lies in (0, 1) and its ceiling is 1.
    if (den > num / 10) return 1;
    den *= 10;
  }
  const u128 capacity = num / den + (num % den != 0 ? 1 : 0);
  if (capacity > static_cast<u128>(std::numeric_limits<i64>::max())) too_large();
  return static_cast<i64>(capacity);
}

}  // namespace linmoe
