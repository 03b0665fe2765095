// Samples: splits, the per-epoch document shuffle, windows of seq_len+1 tokens across document
// boundaries, the sample shuffle, determinism, the cache, and blend proportions.
#include <catch2/catch.hpp>
#include <random>
#include <set>

#include "data/blend.h"
#include "data/indexed_dataset.h"
#include "data/sample_index.h"
#include "data/split.h"
#include "data_test_util.h"

using namespace linmoe;
using namespace linmoe::testing;

namespace {

// Documents whose token t of document d is d·1000 + t, so every token says where it came from.
std::shared_ptr<const IndexedDataset> make_dataset(const std::string& prefix, int docs,
                                                   std::uint32_t seed) {
  std::mt19937 rng(seed);
  IndexedDatasetWriter w(prefix, TokenDType::i32);
  for (int d = 0; d < docs; ++d) {
    std::vector<std::int32_t> t(rng() % 5 == 0 ? 0 : rng() % 300);  // some empty documents
    for (std::size_t i = 0; i < t.size(); ++i) t[i] = d * 1000 + static_cast<std::int32_t>(i);
    w.add_document(t.data(), t.size());
  }
  w.finish();
  return std::make_shared<const IndexedDataset>(prefix);
}

std::vector<std::int32_t> sample(const SampleIndex& si, std::int64_t k) {
  std::vector<std::int32_t> v(static_cast<std::size_t>(si.seq_len()) + 1);
  si.read_sample(k, v.data());
  return v;
}

}  // namespace

TEST_CASE("split: Megatron's rule for split strings", "[samples]") {
  const auto w = parse_split("98,2,0");
  CHECK(split_range(1000, w, Split::train) == std::make_pair<std::int64_t, std::int64_t>(0, 980));
  CHECK(split_range(1000, w, Split::valid) ==
        std::make_pair<std::int64_t, std::int64_t>(980, 1000));
  CHECK(split_range(1000, w, Split::test) ==
        std::make_pair<std::int64_t, std::int64_t>(1000, 1000));
  // Each part rounded on its own, summed, then shifted so the last boundary is N:
  // 10 docs, thirds: 3, 3, 3 -> [0, 3, 6, 9] -> [0, 4, 7, 10].
  const auto third = parse_split("1,1,1");
  CHECK(split_range(10, third, Split::train).second == 4);
  CHECK(split_range(10, third, Split::valid) == std::make_pair<std::int64_t, std::int64_t>(4, 7));
  CHECK(split_range(10, third, Split::test) == std::make_pair<std::int64_t, std::int64_t>(7, 10));
  // Half-way rounds to even, as Python's round: 2.5 -> 2, so [0, 2, 4, 9] -> [0, 3, 5, 10]
  // (half-up would give [0, 2, 5, 10]).
  CHECK(split_range(10, parse_split("1,1,2"), Split::valid) ==
        std::make_pair<std::int64_t, std::int64_t>(3, 5));
  CHECK(parse_split("90,10")[2] == 0);
  require_refused([] { parse_split("a,b"); }, {"data.split", "'a'"});
  require_refused([] { parse_split("0,0,0"); }, {"all zero"});
  require_refused([] { parse_split("1,1,1,1"); }, {"more than 3"});
  require_refused([] { parse_split("98,-2,0"); }, {"-2"});
}

TEST_CASE("samples: windows of seq_len+1 tokens of the shuffled document stream", "[samples]") {
  TempDir dir;
  auto ds = make_dataset(dir / "d", 200, 1);
  SampleIndexOptions opt;
  opt.doc_begin = 20;
  opt.doc_end = 180;
  opt.seq_len = 64;
  opt.seed = 42;
  SampleIndex si(ds, opt);
  std::int64_t tokens = 0;
  for (std::int64_t d = 20; d < 180; ++d) tokens += ds->document_length(d);
  CHECK(si.num_tokens() == tokens);
  const std::int64_t S = si.samples_per_epoch();
  CHECK(S == (tokens - 1) / 64);

  for (std::int64_t e : {0, 1, 3}) {
    auto ep = si.epoch(e);
    // The document order is a permutation of the split's documents.
    std::vector<std::int64_t> order = ep->doc_order;
    std::sort(order.begin(), order.end());
    for (std::size_t i = 0; i < order.size(); ++i)
      CHECK(order[i] == 20 + static_cast<std::int64_t>(i));
    // The stream of the epoch, from the reader directly.
    std::vector<std::int32_t> stream;
    for (std::int64_t d : ep->doc_order) {
      for (std::int64_t t = 0; t < ds->document_length(d); ++t) {
        stream.push_back(static_cast<std::int32_t>(d * 1000 + t));
      }
    }
    std::vector<std::int64_t> shuffle = ep->shuffle;
    std::sort(shuffle.begin(), shuffle.end());
    for (std::int64_t i = 0; i < S; ++i) REQUIRE(shuffle[static_cast<std::size_t>(i)] == i);
    bool crosses = false;
    for (std::int64_t j = 0; j < S; ++j) {
      const std::int64_t s = ep->shuffle[static_cast<std::size_t>(j)];
      const std::vector<std::int32_t> got = sample(si, e * S + j);
      const std::vector<std::int32_t> want(stream.begin() + s * 64, stream.begin() + s * 64 + 65);
      REQUIRE(got == want);
      crosses = crosses || got.front() / 1000 != got.back() / 1000;
    }
    CHECK(crosses);  // samples do cross document boundaries
  }
  // Epochs shuffle differently; consecutive samples of one epoch share a token.
  CHECK(si.epoch(0)->doc_order != si.epoch(1)->doc_order);
  CHECK(si.epoch(0)->shuffle != si.epoch(1)->shuffle);
  auto ep0 = si.epoch(0);
  for (std::int64_t j = 0; j + 1 < S; ++j) {
    const auto a = std::find(ep0->shuffle.begin(), ep0->shuffle.end(), j) - ep0->shuffle.begin();
    const auto b =
        std::find(ep0->shuffle.begin(), ep0->shuffle.end(), j + 1) - ep0->shuffle.begin();
    CHECK(sample(si, a).back() == sample(si, b).front());
    if (j > 3) break;
  }
}

TEST_CASE("samples: deterministic for a seed, different across seeds; cached by key", "[samples]") {
  TempDir dir;
  auto ds = make_dataset(dir / "d", 120, 2);
  SampleIndexOptions opt;
  opt.seq_len = 32;
  opt.seed = 7;
  opt.cache_dir = dir / "cache";
  std::filesystem::create_directory(opt.cache_dir);
  SampleIndex a(ds, opt);
  const std::string path0 = a.cache_path(0);
  std::vector<std::vector<std::int32_t>> first;
  for (std::int64_t k = 0; k < 50; ++k) first.push_back(sample(a, k));
  CHECK(std::filesystem::exists(path0));  // written on first use
  CHECK(path0.find(a.cache_key(0)) != std::string::npos);

  SampleIndex b(ds, opt);  // same key: loads the cache
  CHECK(b.cache_path(0) == path0);
  for (std::int64_t k = 0; k < 50; ++k) CHECK(sample(b, k) == first[static_cast<std::size_t>(k)]);

  // A damaged cache file is rebuilt, with the same result.
  {
    std::string bytes = read_file(path0);
    write_file(path0, bytes.substr(0, bytes.size() - 8));
  }
  SampleIndex c(ds, opt);
  for (std::int64_t k = 0; k < 50; ++k) CHECK(sample(c, k) == first[static_cast<std::size_t>(k)]);
  CHECK(read_file(path0).size() > 32);

  // Without caching, the same samples.
  opt.cache_dir = "none";
  SampleIndex d(ds, opt);
  CHECK(d.cache_path(0).empty());
  for (std::int64_t k = 0; k < 50; ++k) CHECK(sample(d, k) == first[static_cast<std::size_t>(k)]);

  // Anything that determines the arrays changes the key.
  opt.cache_dir = dir / "cache";
  opt.seed = 8;
  SampleIndex e(ds, opt);
  CHECK(e.cache_key(0) != a.cache_key(0));
  int same = 0;
  for (std::int64_t k = 0; k < 50; ++k) same += sample(e, k) == first[static_cast<std::size_t>(k)];
  CHECK(same < 5);
  opt.seed = 7;
  opt.seq_len = 33;
  CHECK(SampleIndex(ds, opt).cache_key(0) != a.cache_key(0));
  opt.seq_len = 32;
  opt.doc_end = 100;
  CHECK(SampleIndex(ds, opt).cache_key(0) != a.cache_key(0));
  CHECK(a.cache_key(1) != a.cache_key(0));
}

TEST_CASE("samples: a split too small for one sample is refused", "[samples]") {
  TempDir dir;
  IndexedDatasetWriter w(dir / "small", TokenDType::u16);
  const std::vector<std::int32_t> t(10, 1);
  w.add_document(t.data(), t.size());
  w.finish();
  auto ds = std::make_shared<const IndexedDataset>(dir / "small");
  SampleIndexOptions opt;
  opt.seq_len = 10;
  require_refused([&] { SampleIndex si(ds, opt); },
                  {dir / "small", "10 tokens", "seq_len + 1 = 11"});
  opt.seq_len = 9;
  SampleIndex si(ds, opt);
  CHECK(si.samples_per_epoch() == 1);
}

TEST_CASE("blend: each dataset's share is within 1% of its weight over any 1000 samples",
          "[samples]") {
  for (const std::vector<double>& w :
       {std::vector<double>{0.5, 0.3, 0.2}, std::vector<double>{7, 1, 1, 1},
        std::vector<double>{0.999, 0.001}}) {
    Blend blend(w);
    const std::int64_t n = 20000, window = 1000;
    std::vector<int> ds(static_cast<std::size_t>(n));
    std::vector<std::int64_t> seen(w.size(), 0);
    for (std::int64_t i = 0; i < n; ++i) {
      auto [d, k] = blend.locate(i);
      ds[static_cast<std::size_t>(i)] = d;
      REQUIRE(k == seen[static_cast<std::size_t>(d)]);  // each dataset's samples in order
      ++seen[static_cast<std::size_t>(d)];
    }
    const auto& nw = blend.weights();
    std::vector<std::int64_t> count(w.size(), 0);
    double worst = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      ++count[static_cast<std::size_t>(ds[static_cast<std::size_t>(i)])];
      if (i >= window) --count[static_cast<std::size_t>(ds[static_cast<std::size_t>(i - window)])];
      if (i + 1 >= window) {
        for (std::size_t d = 0; d < w.size(); ++d) {
          worst = std::max(worst, std::abs(static_cast<double>(count[d]) / window - nw[d]));
        }
      }
    }
    INFO("weights " << w[0] << ", " << w[1] << ": worst deviation " << worst);
    CHECK(worst <= 0.01);
    // Random access agrees with the sequential pass.
    Blend again(w);
    for (std::int64_t i : {19999, 5, 4096, 1023, 1024}) {
      CHECK(again.locate(i).first == ds[static_cast<std::size_t>(i)]);
    }
  }
  require_refused([] { Blend b({1.0, 0.0}); }, {"weight 0"});
}
