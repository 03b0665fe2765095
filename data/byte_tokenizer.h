// The byte-level tokenizer: id = the byte's value (0..255), end-of-document = 256.
// Any byte string round-trips exactly; no normalisation.
#pragma once
#include "data/tokenizer.h"

namespace linmoe {

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr std::int32_t kEodId = 256;
  std::string name() const override { return "byte"; }
  std::int64_t vocab_size() const override { return 257; }
  std::int32_t eod_id() const override { return kEodId; }
  void encode(std::string_view text, std::vector<std::int32_t>& out) const override;
  // The end-of-document id decodes to nothing; ids outside the vocabulary are a CHECK failure.
  std::string decode(const std::int32_t* ids, std::size_t n) const override;
  using Tokenizer::decode;
  using Tokenizer::encode;
};

}  // namespace linmoe
