// The expert capacity of MODEL.md 4: ⌈c·N·k/E⌉ assignments per expert, with the capacity factor
// c taken exactly from its decimal text in the config (c = 1.1 is 11/10, never the double
// nearest to it, whose product with N·k/E can land just above an integer and round up).
#pragma once
#include <cstdint>
#include <string>

namespace linmoe {

// capacity_factor_text is model.moe.capacity_factor as written: an unsigned decimal with an
// optional '+', fraction and exponent — "2", "1.25", ".5", "2.", "1e0", "1.25E+1" — the
// decimal forms of YAML 1.2 and strtod. Exponents are allowed because the config loader accepts
// them (it parses the value with strtod) and they stay exact: "125e-2" is 125/100.
// Anything else (empty, whitespace, '-', hex, inf/nan, a second '.', a bare exponent), a value
// that is not > 0 (null, not 0, means dropless), and a capacity beyond int64 throw a UserError
// naming model.moe.capacity_factor. tokens ≥ 0 and 1 ≤ k ≤ experts are the caller's
// (LINMOE_CHECK).
std::int64_t moe_capacity(const std::string& capacity_factor_text, std::int64_t tokens, int k,
                          int experts);

}  // namespace linmoe
