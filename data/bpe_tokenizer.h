// Hugging Face tokenizer.json with a byte-level BPE model (GPT-2, Llama-3, Qwen2 families).
//
// Encoding follows the tokenizers library (encode with add_special_tokens=False): added tokens
// are cut out first (leftmost, longest); the rest is split by the pre-tokenizer's pattern
// (pretokenizer.h), each piece's bytes are mapped to GPT-2's printable byte alphabet and merged
// by rank. Supported: model.type BPE (merges as "a b" strings or [a, b] pairs, ignore_merges),
// pre_tokenizer ByteLevel (GPT-2 pattern when use_regex, add_prefix_space) or a Sequence of a
// Split with one of the known patterns and ByteLevel(use_regex=false); normalizer null or NFC
// (NFC is not applied: inputs are taken as already NFC); decoder ByteLevel. Anything else is
// refused by name.
#pragma once
#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace linmoe {

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& path,
                                              const std::string& eod_token = "");
// The same from the file's text (tests).
std::unique_ptr<Tokenizer> parse_bpe_tokenizer(const std::string& json_text,
                                               const std::string& source,
                                               const std::string& eod_token = "");

}  // namespace linmoe
