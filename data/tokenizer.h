// Tokenizers: text <-> token ids. Two kinds (docs/DATA.md):
//   byte            256 byte ids plus an end-of-document id (256); vocabulary 257
//   tokenizer.json  Hugging Face byte-level BPE (GPT-2, Llama-3, Qwen2 families)
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace linmoe {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;
  // Ids are in [0, vocab_size()).
  virtual std::int64_t vocab_size() const = 0;
  // The end-of-document id preprocess appends.
  virtual std::int32_t eod_id() const = 0;
  // Appends the ids of `text` to `out` (no special tokens are added).
  virtual void encode(std::string_view text, std::vector<std::int32_t>& out) const = 0;
  // The text of `ids` (special tokens as their text).
  virtual std::string decode(const std::int32_t* ids, std::size_t n) const = 0;

  std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> out;
    encode(text, out);
    return out;
  }
  std::string decode(const std::vector<std::int32_t>& ids) const {
    return decode(ids.data(), ids.size());
  }
};

// "byte", or the path of a tokenizer.json. `eod_token` names the end-of-document token of a
// tokenizer.json (empty: <|endoftext|>, else <|end_of_text|>, else </s>, whichever exists).
// Throws UserError naming the file and what is unsupported.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec,
                                          const std::string& eod_token = "");

}  // namespace linmoe
