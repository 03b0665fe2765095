// linmoe preprocess: JSONL and text inputs, the end-of-document id, independence from the number
// of workers, and refusals naming the line.
#include <catch2/catch.hpp>

#include "data/indexed_dataset.h"
#include "data/preprocess.h"
#include "data/tokenizer.h"
#include "data_test_util.h"

using namespace linmoe;
using namespace linmoe::testing;

namespace {

std::vector<std::vector<std::int32_t>> documents(const std::string& prefix) {
  IndexedDataset ds(prefix);
  std::vector<std::vector<std::int32_t>> out;
  for (std::int64_t d = 0; d < ds.num_documents(); ++d) {
    std::vector<std::int32_t> v(static_cast<std::size_t>(ds.document_length(d)));
    ds.read_document(d, 0, static_cast<std::int64_t>(v.size()), v.data());
    out.push_back(v);
  }
  return out;
}

std::vector<std::int32_t> with_eod(const Tokenizer& tok, const std::string& s) {
  std::vector<std::int32_t> v = tok.encode(s);
  v.push_back(tok.eod_id());
  return v;
}

}  // namespace

TEST_CASE("preprocess: JSONL with a chosen key, blank lines and empty texts", "[preprocess]") {
  TempDir dir;
  write_file(dir / "in.jsonl",
             "{\"body\": \"first doc\", \"id\": 1}\n"
             "\n"
             "{\"id\": 2, \"body\": \"caf\\u00e9\\nline\"}\r\n"
             "{\"body\": \"\"}\n"
             "{\"body\": \"last\"}");  // no final newline
  std::unique_ptr<Tokenizer> tok = make_tokenizer("byte");
  PreprocessOptions opt;
  opt.input = dir / "in.jsonl";
  opt.output_prefix = dir / "out";
  opt.json_key = "body";
  PreprocessStats st = preprocess_corpus(opt, *tok);
  CHECK(st.documents == 3);
  CHECK(st.empty_skipped == 1);
  CHECK(documents(dir / "out") == std::vector<std::vector<std::int32_t>>{
                                      with_eod(*tok, "first doc"),
                                      with_eod(*tok, "caf\xc3\xa9\nline"), with_eod(*tok, "last")});
  CHECK(st.tokens == 10 + 11 + 5);
  CHECK(IndexedDataset(dir / "out").dtype() == TokenDType::u16);

  SECTION("without the end-of-document id") {
    opt.append_eod = false;
    preprocess_corpus(opt, *tok);
    CHECK(documents(dir / "out")[2] == tok->encode("last"));
  }
  SECTION("a bad line is refused with the file and line number") {
    write_file(dir / "bad.jsonl", "{\"body\": \"ok\"}\n{\"body\": \"x\",}\n");
    opt.input = dir / "bad.jsonl";
    require_refused([&] { preprocess_corpus(opt, *tok); }, {dir / "bad.jsonl:2:"});
    write_file(dir / "bad.jsonl", "{\"body\": \"ok\"}\n\n{\"text\": \"x\"}\n");
    require_refused([&] { preprocess_corpus(opt, *tok); },
                    {dir / "bad.jsonl:3", "no string field 'body'", "--json-key"});
    // The failed run leaves no half-written dataset behind under the prefix.
    CHECK(documents(dir / "out").size() == 3);
  }
  SECTION("a missing input") {
    opt.input = dir / "nope.jsonl";
    require_refused([&] { preprocess_corpus(opt, *tok); }, {dir / "nope.jsonl", "cannot open"});
  }
}

TEST_CASE("preprocess: text, one document per line; output independent of workers",
          "[preprocess]") {
  TempDir dir;
  std::string text;
  std::vector<std::string> lines;
  for (int i = 0; i < 30000; ++i) {  // > 1 MiB: several batches in flight
    lines.push_back("line " + std::to_string(i) +
                    std::string(static_cast<std::size_t>(i % 61), 'x'));
    text += lines.back() + (i % 7 == 0 ? "\r\n" : "\n");
    if (i % 1000 == 0) text += "\n";  // empty lines are skipped
  }
  write_file(dir / "in.txt", text);
  std::unique_ptr<Tokenizer> tok = make_tokenizer("byte");
  PreprocessOptions opt;
  opt.input = dir / "in.txt";
  for (int workers : {1, 3}) {
    opt.workers = workers;
    opt.output_prefix = dir / ("w" + std::to_string(workers));
    PreprocessStats st = preprocess_corpus(opt, *tok);
    CHECK(st.documents == 30000);
    CHECK(st.empty_skipped == 30);
  }
  CHECK(read_file(dir / "w1.bin") == read_file(dir / "w3.bin"));
  CHECK(read_file(dir / "w1.idx") == read_file(dir / "w3.idx"));
  auto docs = documents(dir / "w3");
  REQUIRE(docs.size() == lines.size());
  for (std::size_t i : {std::size_t{0}, std::size_t{7}, std::size_t{12345}, lines.size() - 1}) {
    CHECK(docs[i] == with_eod(*tok, lines[i]));
  }
}

TEST_CASE("preprocess: a tokenizer.json gives its ids", "[preprocess]") {
  TempDir dir;
  write_file(dir / "in.jsonl",
             "{\"text\": \"It's the 12th of June!\"}\n{\"text\": \"naive caf\\u00e9\"}\n");
  std::unique_ptr<Tokenizer> tok =
      make_tokenizer(std::string(LINMOE_DATA_FIXTURES) + "/bpe_llama3.json");
  PreprocessOptions opt;
  opt.input = dir / "in.jsonl";
  opt.output_prefix = dir / "bpe";
  preprocess_corpus(opt, *tok);
  auto docs = documents(dir / "bpe");
  REQUIRE(docs.size() == 2);
  CHECK(docs[0] == with_eod(*tok, "It's the 12th of June!"));
  CHECK(docs[1] == with_eod(*tok, "naive caf\xc3\xa9"));
}
