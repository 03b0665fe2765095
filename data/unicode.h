// The few Unicode facts the pre-tokenizers need: UTF-8 decoding and the classes of the
// split patterns' \p{L} (letters), \p{N} (numbers) and \s (White_Space).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include "core/utf8.h"  // utf8_append

namespace linmoe {

struct CodeRange {
  std::uint32_t first, last;  // inclusive
};

namespace unicode_tables {
extern const CodeRange kLetters[];
extern const std::size_t kLetters_size;
extern const CodeRange kNumbers[];
extern const std::size_t kNumbers_size;
}  // namespace unicode_tables

// Decodes the code point at s[i]; sets `len` to its byte length (1..4). An invalid or truncated
// sequence decodes as one byte with the value 0xFFFFFFFF (a non-letter, non-number, non-space).
std::uint32_t utf8_decode(std::string_view s, std::size_t i, std::size_t& len);

bool is_letter(std::uint32_t cp);      // general category L*
bool is_number(std::uint32_t cp);      // general category N*
bool is_whitespace(std::uint32_t cp);  // the White_Space property

}  // namespace linmoe
