#include "data/byte_tokenizer.h"

#include "core/check.h"

namespace linmoe {

void ByteTokenizer::encode(std::string_view text, std::vector<std::int32_t>& out) const {
  const std::size_t base = out.size();
  out.resize(base + text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    out[base + i] = static_cast<std::int32_t>(static_cast<unsigned char>(text[i]));
  }
}

std::string ByteTokenizer::decode(const std::int32_t* ids, std::size_t n) const {
  std::string s;
  s.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    LINMOE_CHECK(ids[i] >= 0 && ids[i] <= kEodId, "byte tokenizer: id ", ids[i],
                 " outside [0, 256]");
    if (ids[i] < 256) s += static_cast<char>(ids[i]);
  }
  return s;
}

}  // namespace linmoe
