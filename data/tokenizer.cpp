#include "data/tokenizer.h"

#include "core/check.h"
#include "data/bpe_tokenizer.h"
#include "data/byte_tokenizer.h"

namespace linmoe {

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec, const std::string& eod_token) {
  if (spec == "byte") {
    if (!eod_token.empty()) {
      throw UserError("--eod-token: the byte tokenizer's end-of-document id is always 256");
    }
    return std::make_unique<ByteTokenizer>();
  }
  return load_bpe_tokenizer(spec, eod_token);
}

}  // namespace linmoe
