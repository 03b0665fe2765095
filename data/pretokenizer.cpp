#include "data/pretokenizer.h"

#include <cstdint>

#include "data/unicode.h"

namespace linmoe {
namespace {

constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum Class : std::uint8_t { kLetter, kNumber, kSpace, kOther };

// The text as code points: class, the code point, and its byte offset.
struct Chars {
  std::vector<std::uint32_t> cp;
  std::vector<std::uint8_t> cls;
  std::vector<std::size_t> offset;  // [n + 1]
  std::size_t n = 0;

  explicit Chars(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
      std::size_t len;
      const std::uint32_t c = utf8_decode(s, i, len);
      cp.push_back(c);
      cls.push_back(is_letter(c)       ? kLetter
                    : is_number(c)     ? kNumber
                    : is_whitespace(c) ? kSpace
                                       : kOther);
      offset.push_back(i);
      i += len;
    }
    n = cp.size();
    offset.push_back(s.size());
  }
  bool is(std::size_t i, Class c) const { return i < n && cls[i] == c; }
  bool newline(std::size_t i) const { return i < n && (cp[i] == '\r' || cp[i] == '\n'); }
  std::size_t run(std::size_t i, Class c) const {  // end of the run of class c from i
    while (i < n && cls[i] == c) ++i;
    return i;
  }
};

std::uint32_t lower_ascii(std::uint32_t c) {
  return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

// 's 't 're 've 'm 'll 'd at i; returns the end or 0.
std::size_t contraction(const Chars& t, std::size_t i, bool ignore_case) {
  if (t.cp[i] != '\'' || i + 1 >= t.n) return 0;
  auto at = [&](std::size_t k) {
    if (k >= t.n) return std::uint32_t{0};
    return ignore_case ? lower_ascii(t.cp[k]) : t.cp[k];
  };
  const std::uint32_t a = at(i + 1), b = at(i + 2);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// \s+(?!\S) then \s+ at a whitespace position i.
std::size_t whitespace_tail(const Chars& t, std::size_t i) {
  const std::size_t j = t.run(i, kSpace);
  if (j == t.n) return j;        // (?!\S) holds at the end
  if (j - i >= 2) return j - 1;  // backtrack one so the next char is whitespace
  return j;                      // \s+ alone
}

std::size_t match_gpt2(const Chars& t, std::size_t i) {
  if (std::size_t e = contraction(t, i, false)) return e;
  const bool sp = t.cp[i] == ' ';
  const std::size_t k = sp ? i + 1 : i;  // after the optional space
  if (t.is(k, kLetter)) return t.run(k, kLetter);
  if (t.is(k, kNumber)) return t.run(k, kNumber);
  if (t.is(k, kOther)) return t.run(k, kOther);
  return whitespace_tail(t, i);  // t.cp[i] is whitespace here
}

std::size_t match_llama3(const Chars& t, std::size_t i, std::size_t max_digits) {
  if (std::size_t e = contraction(t, i, true)) return e;
  const std::uint8_t c = t.cls[i];
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c == kLetter) return t.run(i, kLetter);
  if (c != kNumber && !t.newline(i) && t.is(i + 1, kLetter)) return t.run(i + 1, kLetter);
  // \p{N}{1,3}
  if (c == kNumber) {
    std::size_t j = i;
    while (j < t.n && t.cls[j] == kNumber && j - i < max_digits) ++j;
    return j;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  const std::size_t k = t.cp[i] == ' ' ? i + 1 : i;
  if (t.is(k, kOther)) {
    std::size_t j = t.run(k, kOther);
    while (t.newline(j)) ++j;
    return j;
  }
  // Whitespace from here on. \s*[\r\n]+ : up to and including the run's last newline.
  const std::size_t j = t.run(i, kSpace);
  for (std::size_t m = j; m > i; --m) {
    if (t.newline(m - 1)) return m;
  }
  return whitespace_tail(t, i);
}

}  // namespace

const char* split_pattern_regex(SplitPattern p) {
  switch (p) {
    case SplitPattern::gpt2:
      return kGpt2;
    case SplitPattern::llama3:
      return kLlama3;
    case SplitPattern::qwen2:
      return kQwen2;
  }
  return "";
}

std::optional<SplitPattern> identify_split_pattern(const std::string& regex) {
  for (SplitPattern p : {SplitPattern::gpt2, SplitPattern::llama3, SplitPattern::qwen2}) {
    if (regex == split_pattern_regex(p)) return p;
  }
  return std::nullopt;
}

void split_pieces(SplitPattern p, std::string_view text, std::vector<std::size_t>& lengths) {
  const Chars t(text);
  std::size_t i = 0;
  while (i < t.n) {
    std::size_t e = 0;
    switch (p) {
      case SplitPattern::gpt2:
        e = match_gpt2(t, i);
        break;
      case SplitPattern::llama3:
        e = match_llama3(t, i, 3);
        break;
      case SplitPattern::qwen2:
        e = match_llama3(t, i, 1);
        break;
    }
    if (e <= i) e = i + 1;  // unreachable (every class is matched); never loop forever
    lengths.push_back(t.offset[e] - t.offset[i]);
    i = e;
  }
}

}  // namespace linmoe
