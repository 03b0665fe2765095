// The split patterns of byte-level BPE tokenizers, hand-implemented with the regex's
// backtracking semantics (alternatives tried in order at each position, greedy quantifiers):
//
//   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//           ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2   as llama3 with \p{N} (single digits)
//
// Every character is matched by some alternative, so the pieces tile the text.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace linmoe {

enum class SplitPattern { gpt2, llama3, qwen2 };

const char* split_pattern_regex(SplitPattern p);
// The pattern a tokenizer.json's Split regex (or ByteLevel's built-in one) spells, if known.
std::optional<SplitPattern> identify_split_pattern(const std::string& regex);

// Appends the byte lengths of the pieces of `text`, in order (they sum to text.size()).
void split_pieces(SplitPattern p, std::string_view text, std::vector<std::size_t>& lengths);

}  // namespace linmoe
