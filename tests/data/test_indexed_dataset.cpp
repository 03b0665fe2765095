// The Megatron indexed dataset: exact bytes against an independent writer of the spec's table,
// reading files written from the spec, round trips, and every rejection.
#include <catch2/catch.hpp>
#include <random>

#include "data/indexed_dataset.h"
#include "data_test_util.h"

using namespace linmoe;
using namespace linmoe::testing;

namespace {

std::string u16_bytes(const std::vector<std::int32_t>& tokens) {
  std::string s;
  for (std::int32_t t : tokens) put_le(s, static_cast<std::uint64_t>(t), 2);
  return s;
}

std::vector<std::int32_t> read_all(const IndexedDataset& ds, std::int64_t doc) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(ds.document_length(doc)));
  ds.read_document(doc, 0, static_cast<std::int64_t>(out.size()), out.data());
  return out;
}

// A valid 3-document u16 dataset written from the spec; returns its prefix.
std::string write_spec_dataset(const TempDir& dir, const std::string& name = "spec") {
  const std::vector<std::int32_t> lengths = {3, 0, 4};
  write_file(dir / (name + ".idx"),
             spec_index_bytes(8, lengths, packed_offsets(lengths, 2), {0, 1, 2, 3}));
  write_file(dir / (name + ".bin"), u16_bytes({5, 6, 7, 100, 200, 300, 65535}));
  return dir / name;
}

}  // namespace

TEST_CASE("indexed dataset: the writer's bytes are exactly the spec's", "[dataset]") {
  TempDir dir;
  SECTION("uint16, one sequence per document") {
    const std::vector<std::vector<std::int32_t>> docs = {{1, 2, 3}, {65535}, {}, {256, 0}};
    IndexedDatasetWriter w(dir / "a", TokenDType::u16);
    for (const auto& d : docs) w.add_document(d.data(), d.size());
    w.finish();
    const std::vector<std::int32_t> lengths = {3, 1, 0, 2};
    CHECK(read_file(dir / "a.idx") ==
          spec_index_bytes(8, lengths, packed_offsets(lengths, 2), {0, 1, 2, 3, 4}));
    CHECK(read_file(dir / "a.bin") == u16_bytes({1, 2, 3, 65535, 256, 0}));
  }
  SECTION("int32, documents of several sequences") {
    IndexedDatasetWriter w(dir / "b", TokenDType::i32);
    const std::vector<std::int32_t> s1 = {70000, 1}, s2 = {2}, s3 = {-1 + 100000, 3, 4};
    w.add_sequence(s1.data(), s1.size());
    w.add_sequence(s2.data(), s2.size());
    w.end_document();
    w.add_sequence(s3.data(), s3.size());
    w.end_document();
    w.finish();
    const std::vector<std::int32_t> lengths = {2, 1, 3};
    CHECK(read_file(dir / "b.idx") ==
          spec_index_bytes(4, lengths, packed_offsets(lengths, 4), {0, 2, 3}));
    std::string bin;
    for (std::int32_t t : {70000, 1, 2, 99999, 3, 4}) put_le(bin, static_cast<std::uint32_t>(t), 4);
    CHECK(read_file(dir / "b.bin") == bin);
  }
  SECTION("an empty dataset") {
    IndexedDatasetWriter w(dir / "c", TokenDType::u16);
    w.finish();
    CHECK(read_file(dir / "c.idx") == spec_index_bytes(8, {}, {}, {0}));
    CHECK(read_file(dir / "c.bin").empty());
    IndexedDataset ds(dir / "c");
    CHECK(ds.num_documents() == 0);
    CHECK(ds.num_tokens() == 0);
  }
  SECTION("the dtype follows the vocabulary (Megatron's 65,500 rule)") {
    CHECK(token_dtype_for_vocab(257) == TokenDType::u16);
    CHECK(token_dtype_for_vocab(65499) == TokenDType::u16);
    CHECK(token_dtype_for_vocab(65500) == TokenDType::i32);
    CHECK(token_dtype_for_vocab(151665) == TokenDType::i32);
  }
}

TEST_CASE("indexed dataset: reads files written from the spec", "[dataset]") {
  TempDir dir;
  IndexedDataset ds(write_spec_dataset(dir));
  CHECK(ds.dtype() == TokenDType::u16);
  CHECK(ds.num_sequences() == 3);
  CHECK(ds.num_documents() == 3);
  CHECK(ds.num_tokens() == 7);
  CHECK(read_all(ds, 0) == std::vector<std::int32_t>{5, 6, 7});
  CHECK(read_all(ds, 1).empty());
  CHECK(read_all(ds, 2) == std::vector<std::int32_t>{100, 200, 300, 65535});
  std::vector<std::int32_t> part(2);
  ds.read_document(2, 1, 2, part.data());
  CHECK(part == std::vector<std::int32_t>{200, 300});
  CHECK(ds.token_range().min == 5);
  CHECK(ds.token_range().max == 65535);
  ds.validate_vocab(65536);

  SECTION("every integer dtype code, with a trailing mode array (newer Megatron writers)") {
    struct Case {
      int code, item;
    };
    for (Case c : {Case{1, 1}, Case{2, 1}, Case{3, 2}, Case{4, 4}, Case{5, 8}, Case{8, 2}}) {
      const std::vector<std::int32_t> lengths = {2, 1};
      std::string idx =
          spec_index_bytes(c.code, lengths, packed_offsets(lengths, c.item), {0, 1, 2});
      idx += std::string("\x01\x01", 2);  // per-sequence modes
      const std::string name = "dt" + std::to_string(c.code);
      write_file(dir / (name + ".idx"), idx);
      std::string bin;
      for (std::uint64_t t : {7u, 100u, 3u}) put_le(bin, t, c.item);
      write_file(dir / (name + ".bin"), bin);
      IndexedDataset d(dir / name);
      CHECK(static_cast<int>(d.dtype()) == c.code);
      CHECK(read_all(d, 0) == std::vector<std::int32_t>{7, 100});
      CHECK(read_all(d, 1) == std::vector<std::int32_t>{3});
    }
  }
  SECTION("documents made of several sequences") {
    const std::vector<std::int32_t> lengths = {2, 0, 3, 1};
    write_file(dir / "multi.idx",
               spec_index_bytes(8, lengths, packed_offsets(lengths, 2), {0, 3, 4}));
    write_file(dir / "multi.bin", u16_bytes({1, 2, 3, 4, 5, 6}));
    IndexedDataset d(dir / "multi");
    CHECK(d.num_documents() == 2);
    CHECK(d.document_length(0) == 5);
    CHECK(read_all(d, 0) == std::vector<std::int32_t>{1, 2, 3, 4, 5});
    CHECK(read_all(d, 1) == std::vector<std::int32_t>{6});
    std::vector<std::int32_t> mid(3);
    d.read_document(0, 1, 3, mid.data());  // crosses the empty sequence
    CHECK(mid == std::vector<std::int32_t>{2, 3, 4});
  }
}

TEST_CASE("indexed dataset: writer/reader round trip of random documents", "[dataset]") {
  TempDir dir;
  std::mt19937 rng(7);
  for (TokenDType dt : {TokenDType::u8, TokenDType::u16, TokenDType::i32, TokenDType::i64}) {
    const std::int32_t max_id = dt == TokenDType::u8    ? 255
                                : dt == TokenDType::u16 ? 65535
                                                        : 2000000000;
    std::vector<std::vector<std::int32_t>> docs(50);
    IndexedDatasetWriter w(dir / "rt", dt);
    for (auto& d : docs) {
      d.resize(rng() % 300);
      for (auto& t : d)
        t = static_cast<std::int32_t>(rng() % (static_cast<std::uint32_t>(max_id) + 1));
      w.add_document(d.data(), d.size());
    }
    w.finish();
    IndexedDataset ds(dir / "rt");
    REQUIRE(ds.num_documents() == 50);
    for (std::int64_t i = 0; i < 50; ++i)
      CHECK(read_all(ds, i) == docs[static_cast<std::size_t>(i)]);
  }
}

TEST_CASE("indexed dataset: a bad file is refused with its path and the broken rule", "[dataset]") {
  TempDir dir;
  const std::vector<std::int32_t> lengths = {3, 4};
  const std::vector<std::int64_t> offsets = packed_offsets(lengths, 2);
  const std::string bin = u16_bytes({1, 2, 3, 4, 5, 6, 7});
  const std::string good = spec_index_bytes(8, lengths, offsets, {0, 1, 2});
  auto refuse = [&](const std::string& idx, std::initializer_list<std::string> words,
                    const std::string& bin_bytes = "") {
    write_file(dir / "bad.idx", idx);
    write_file(dir / "bad.bin", bin_bytes.empty() ? bin : bin_bytes);
    require_refused([&] { IndexedDataset ds(dir / "bad"); }, words);
  };
  const std::string idx_path = dir / "bad.idx", bin_path = dir / "bad.bin";

  refuse(good.substr(0, 20), {idx_path, "truncated", "header"});
  refuse(good.substr(0, good.size() - 1), {idx_path, "truncated", "34+12N+8M"});
  std::string magic = good;
  magic[0] = 'X';
  refuse(magic, {idx_path, "wrong magic"});
  refuse(spec_index_bytes(8, lengths, offsets, {0, 1, 2}, 2), {idx_path, "version 2"});
  std::string code = good;
  code[17] = 9;
  refuse(code, {idx_path, "unknown dtype code 9"});
  code[17] = 0;
  refuse(code, {idx_path, "unknown dtype code 0"});
  code[17] = 7;
  refuse(code, {idx_path, "float32", "cannot hold token ids"});
  std::string huge = good;
  huge[18 + 7] = 0x10;  // N = 2^60 + 2
  refuse(huge, {idx_path, "truncated"});
  refuse(spec_index_bytes(8, lengths, offsets, {}), {idx_path, "document index is empty"});
  refuse(spec_index_bytes(8, lengths, offsets, {1, 2}), {idx_path, "starts at 1"});
  refuse(spec_index_bytes(8, lengths, offsets, {0, 1}), {idx_path, "ends at 1", "N = 2"});
  refuse(spec_index_bytes(8, {3, 4, 0}, {0, 6, 14}, {0, 2, 1, 3}), {idx_path, "decreases"});
  refuse(spec_index_bytes(8, {3, -4}, offsets, {0, 1, 2}), {idx_path, "negative length"});
  refuse(spec_index_bytes(8, lengths, {0, 7}, {0, 1, 2}), {idx_path, "multiple of the item size"});
  refuse(spec_index_bytes(8, lengths, {0, 8}, {0, 1, 2}), {bin_path, "runs past the end"});
  refuse(good, {bin_path, "runs past the end", "truncated .bin"}, bin.substr(0, 12));
  write_file(dir / "bad.idx", good);
  std::remove(bin_path.c_str());
  require_refused([&] { IndexedDataset ds(dir / "bad"); }, {bin_path, "cannot open"});
  require_refused([&] { IndexedDataset ds(dir / "missing"); },
                  {dir / "missing.idx", "cannot open"});

  SECTION("token ids at or beyond the vocabulary") {
    IndexedDataset ds(write_spec_dataset(dir));
    ds.validate_vocab(65536);
    require_refused([&] { ds.validate_vocab(65535); },
                    {dir / "spec.bin", "token id 65535", "vocabulary size 65535"});
    require_refused([&] { ds.validate_vocab(257); }, {"token id 65535"});
  }
  SECTION("negative token ids") {
    const std::vector<std::int32_t> l = {2};
    write_file(dir / "neg.idx", spec_index_bytes(3, l, {0}, {0, 1}));
    std::string b;
    put_le(b, 5, 2);
    put_le(b, static_cast<std::uint16_t>(-3), 2);
    write_file(dir / "neg.bin", b);
    IndexedDataset ds(dir / "neg");
    require_refused([&] { ds.validate_vocab(100); }, {dir / "neg.bin", "negative token id -3"});
  }
  SECTION("a writer given an id its dtype cannot hold") {
    IndexedDatasetWriter w(dir / "w", TokenDType::u16);
    const std::vector<std::int32_t> t = {1, 70000};
    require_refused([&] { w.add_document(t.data(), t.size()); }, {"70000", "uint16"});
  }
}
