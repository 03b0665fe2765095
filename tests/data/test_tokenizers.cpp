// Tokenizers: the byte tokenizer, the pre-tokenizer patterns, and byte-level BPE against the ids
// Hugging Face tokenizers gives on small hand-made tokenizer.json files (bpe_expected.h).
#include <catch2/catch.hpp>

#include "bpe_expected.h"
#include "data/bpe_tokenizer.h"
#include "data/byte_tokenizer.h"
#include "data/pretokenizer.h"
#include "data/tokenizer.h"
#include "data_test_util.h"

using namespace linmoe;
using namespace linmoe::testing;

namespace {

std::vector<std::string> pieces(SplitPattern p, const std::string& text) {
  std::vector<std::size_t> lengths;
  split_pieces(p, text, lengths);
  std::vector<std::string> out;
  std::size_t off = 0;
  for (std::size_t l : lengths) {
    out.push_back(text.substr(off, l));
    off += l;
  }
  REQUIRE(off == text.size());
  return out;
}

std::string fixture(const std::string& name) {
  return std::string(LINMOE_DATA_FIXTURES) + "/" + name;
}

}  // namespace

TEST_CASE("byte tokenizer: ids are bytes, 256 ends a document, every byte round-trips", "[tok]") {
  std::unique_ptr<Tokenizer> tok = make_tokenizer("byte");
  CHECK(tok->vocab_size() == 257);
  CHECK(tok->eod_id() == 256);
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  std::vector<std::int32_t> ids = tok->encode(all);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(ids[static_cast<std::size_t>(b)] == b);
  CHECK(tok->decode(ids) == all);
  CHECK(tok->encode("hé") == std::vector<std::int32_t>{104, 0xC3, 0xA9});
  ids.push_back(256);
  CHECK(tok->decode(ids) == all);  // the end-of-document id decodes to nothing
  require_refused([] { make_tokenizer("byte", "<|endoftext|>"); }, {"always 256"});
}

TEST_CASE("pre-tokenizer: the patterns' pieces (regex backtracking semantics)", "[tok]") {
  using V = std::vector<std::string>;
  CHECK(pieces(SplitPattern::gpt2, "Hello  world") == V{"Hello", " ", " world"});
  CHECK(pieces(SplitPattern::gpt2, "it's 2024!!  ") == V{"it", "'s", " 2024", "!!", "  "});
  CHECK(pieces(SplitPattern::gpt2, "I'M x\n\ny") == V{"I", "'", "M", " x", "\n", "\n", "y"});
  CHECK(pieces(SplitPattern::llama3, "I'M 12345 abc\n\n  x") ==
        V{"I", "'M", " ", "123", "45", " abc", "\n\n", " ", " x"});
  CHECK(pieces(SplitPattern::llama3, "!!\n\nok .\tz") == V{"!!\n\n", "ok", " .", "\tz"});
  CHECK(pieces(SplitPattern::qwen2, "12345") == V{"1", "2", "3", "4", "5"});
  CHECK(pieces(SplitPattern::gpt2, "caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac") ==
        V{"caf\xc3\xa9", " \xe6\x9d\xb1\xe4\xba\xac"});
  CHECK(pieces(SplitPattern::gpt2, "").empty());
  // Invalid UTF-8 is kept, byte by byte, as punctuation.
  CHECK(pieces(SplitPattern::gpt2, "a\xff\xfe b") == V{"a", "\xff\xfe", " b"});
  CHECK(identify_split_pattern(split_pattern_regex(SplitPattern::llama3)) == SplitPattern::llama3);
  CHECK_FALSE(identify_split_pattern("\\w+").has_value());
}

TEST_CASE("bpe: encodings equal Hugging Face tokenizers' on the test strings", "[tok]") {
  struct Variant {
    const char* file;
    const std::vector<std::vector<std::int32_t>>* expected;
  };
  for (Variant v : {Variant{"bpe_gpt2.json", &bpe_expected::k_gpt2},
                    Variant{"bpe_llama3.json", &bpe_expected::k_llama3},
                    Variant{"bpe_qwen2.json", &bpe_expected::k_qwen2}}) {
    std::unique_ptr<Tokenizer> tok = make_tokenizer(fixture(v.file));
    CHECK(tok->vocab_size() == 316);
    CHECK(tok->eod_id() == 0);  // <|endoftext|>
    for (std::size_t i = 0; i < bpe_expected::kStrings.size(); ++i) {
      const std::string& s = bpe_expected::kStrings[i];
      INFO(v.file << " string " << i << ": '" << s << "'");
      const std::vector<std::int32_t> ids = tok->encode(s);
      CHECK(ids == (*v.expected)[i]);
      CHECK(tok->decode(ids) == s);
    }
  }
}

TEST_CASE("bpe: the end-of-document token and unsupported files", "[tok]") {
  const std::string base = read_file(fixture("bpe_gpt2.json"));
  CHECK(make_tokenizer(fixture("bpe_gpt2.json"), "<|im_start|>")->eod_id() == 1);
  require_refused([&] { make_tokenizer(fixture("bpe_gpt2.json"), "<nope>"); },
                  {"bpe_gpt2.json", "'<nope>' is not in the vocabulary"});
  auto edited = [&](const std::string& from, const std::string& to) {
    std::string s = base;
    const std::size_t at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  require_refused(
      [&] {
        parse_bpe_tokenizer(edited("\"type\": \"BPE\"", "\"type\": \"WordPiece\""), "t.json");
      },
      {"t.json", "model.type 'WordPiece'"});
  require_refused(
      [&] {
        parse_bpe_tokenizer(
            edited("\"normalizer\": null", "\"normalizer\": {\"type\": \"Lowercase\"}"), "t.json");
      },
      {"t.json", "unsupported normalizer"});
  require_refused(
      [&] {
        parse_bpe_tokenizer(edited("\"<|endoftext|>\": 0", "\"<|endoftext|>\": 0, \"x\": -5"),
                            "t.json");
      },
      {"t.json", "not a valid id"});
  require_refused([&] { parse_bpe_tokenizer(edited("\"!\": 2", "\"!!\": 2"), "t.json"); },
                  {"t.json", "lacks byte 33"});
  require_refused(
      [&] { parse_bpe_tokenizer(edited("\"lstrip\": false", "\"lstrip\": true"), "t.json"); },
      {"lstrip is not supported"});
  require_refused([&] { parse_bpe_tokenizer("[1, 2]", "t.json"); },
                  {"t.json", "not a tokenizer.json"});
  require_refused([&] { parse_bpe_tokenizer("{\"model\": ", "t.json"); }, {"t.json:1:11"});
  const std::string llama = read_file(fixture("bpe_llama3.json"));
  std::string other = llama;
  const std::size_t at = other.find("\\\\p{N}{1,3}");
  REQUIRE(at != std::string::npos);
  other.replace(at, 11, "\\\\p{N}{1,4}");
  require_refused([&] { parse_bpe_tokenizer(other, "t.json"); }, {"t.json", "unknown pattern"});
}
