// The loader: the step's global batch split over data-parallel replicas (disjoint, union exact,
// micro-batch j = samples j·b … (j+1)·b − 1), context-parallel pieces, resuming from consumed
// samples, splits, blends and the vocabulary check.
#include <catch2/catch.hpp>
#include <random>
#include <set>

#include "core/config.h"
#include "data/indexed_dataset.h"
#include "data/loader.h"
#include "data_test_util.h"

using namespace linmoe;
using namespace linmoe::testing;

namespace {

// Token t of document d is base + d·1000 + t.
void make_dataset(const std::string& prefix, int docs, std::uint32_t seed, std::int32_t base = 0) {
  std::mt19937 rng(seed);
  IndexedDatasetWriter w(prefix, TokenDType::i32);
  for (int d = 0; d < docs; ++d) {
    std::vector<std::int32_t> t(20 + rng() % 200);
    for (std::size_t i = 0; i < t.size(); ++i)
      t[i] = base + d * 1000 + static_cast<std::int32_t>(i);
    w.add_document(t.data(), t.size());
  }
  w.finish();
}

Config base_config(const std::string& prefix) {
  Config cfg;
  cfg.model.vocab_size = 1 << 30;
  cfg.train.seq_len = 32;
  cfg.train.micro_batch_size = 2;
  cfg.train.global_batch_size = 16;
  cfg.data.train = {{prefix, 1.0}};
  cfg.data.split = "90,10,0";
  cfg.data.split_fractions[0] = 0.9;
  cfg.data.split_fractions[1] = 0.1;
  cfg.data.split_fractions[2] = 0.0;
  cfg.data.seed = 99;
  cfg.data.cache_dir = "none";
  return cfg;
}

std::vector<std::int32_t> values(const Tensor& t) {
  const std::int32_t* p = t.ptr<std::int32_t>();
  return std::vector<std::int32_t>(p, p + t.numel());
}

std::vector<std::int32_t> whole_sample(const DataLoader& l, std::int64_t i, int seq_len) {
  std::vector<std::int32_t> v(static_cast<std::size_t>(seq_len) + 1);
  l.read_sample(i, v.data());
  return v;
}

}  // namespace

TEST_CASE("loader: replicas get disjoint samples whose union is the global batch", "[loader]") {
  TempDir dir;
  make_dataset(dir / "d", 100, 3);
  const Config cfg = base_config(dir / "d");
  const int b = cfg.train.micro_batch_size, G = cfg.train.global_batch_size, T = cfg.train.seq_len;
  for (int dp : {1, 2, 4}) {
    std::vector<std::unique_ptr<DataLoader>> replicas;
    for (int r = 0; r < dp; ++r) {
      replicas.push_back(std::make_unique<DataLoader>(cfg, Split::train, r, dp));
    }
    const int m = replicas[0]->micro_batches_per_step();
    CHECK(m == G / (b * dp));
    for (int step = 0; step < 3; ++step) {
      std::vector<std::int64_t> all;
      for (int r = 0; r < dp; ++r) {
        for (int k = 0; k < m; ++k) {
          Batch batch = replicas[static_cast<std::size_t>(r)]->next_micro_batch();
          REQUIRE(batch.tokens.shape == Shape{b, T});
          REQUIRE(batch.targets.shape == Shape{b, T});
          // Replica r's k-th micro-batch of the step is the step's micro-batch j = k·dp + r.
          const std::int64_t j = static_cast<std::int64_t>(k) * dp + r;
          const std::vector<std::int32_t> tok = values(batch.tokens), tgt = values(batch.targets);
          for (int i = 0; i < b; ++i) {
            const std::int64_t id = batch.sample_ids[static_cast<std::size_t>(i)];
            CHECK(id == static_cast<std::int64_t>(step) * G + j * b + i);
            const std::vector<std::int32_t> s = whole_sample(*replicas[0], id, T);
            CHECK(std::equal(s.begin(), s.begin() + T, tok.begin() + i * T));
            CHECK(std::equal(s.begin() + 1, s.end(), tgt.begin() + i * T));
            all.push_back(id);
          }
        }
      }
      std::sort(all.begin(), all.end());
      REQUIRE(all.size() == static_cast<std::size_t>(G));
      for (int i = 0; i < G; ++i) CHECK(all[static_cast<std::size_t>(i)] == step * G + i);
      for (auto& rep : replicas) CHECK(rep->consumed_samples() == (step + 1) * G);
    }
  }
}

TEST_CASE("loader: context-parallel ranks get contiguous pieces of each sequence", "[loader]") {
  TempDir dir;
  make_dataset(dir / "d", 100, 4);
  const Config cfg = base_config(dir / "d");
  const int T = cfg.train.seq_len, cp = 4;
  DataLoader whole(cfg, Split::train, 0, 2);
  std::vector<std::unique_ptr<DataLoader>> pieces;
  for (int c = 0; c < cp; ++c)
    pieces.push_back(std::make_unique<DataLoader>(cfg, Split::train, 1, 2, c, cp));
  for (int round = 0; round < 3; ++round) {
    std::vector<Batch> got;
    for (auto& p : pieces) got.push_back(p->next_micro_batch());
    for (int c = 0; c < cp; ++c) {
      const Batch& bc = got[static_cast<std::size_t>(c)];
      CHECK(bc.tokens.shape == Shape{2, T / cp});
      CHECK(bc.first_position == c * T / cp);
      CHECK(bc.sample_ids == got[0].sample_ids);
      for (int i = 0; i < 2; ++i) {
        const auto s = whole_sample(whole, bc.sample_ids[static_cast<std::size_t>(i)], T);
        const auto tok = values(bc.tokens), tgt = values(bc.targets);
        for (int t = 0; t < T / cp; ++t) {
          CHECK(tok[static_cast<std::size_t>(i * T / cp + t)] ==
                s[static_cast<std::size_t>(c * T / cp + t)]);
          CHECK(tgt[static_cast<std::size_t>(i * T / cp + t)] ==
                s[static_cast<std::size_t>(c * T / cp + t + 1)]);
        }
      }
    }
  }
  Config bad = cfg;
  bad.train.seq_len = 30;
  require_refused([&] { DataLoader l(bad, Split::train, 0, 1, 0, 4); }, {"train.seq_len", "30"});
  require_refused([&] { DataLoader l(cfg, Split::train, 0, 3); }, {"train.global_batch_size"});
}

TEST_CASE("loader: resuming from consumed samples continues the same sequence", "[loader]") {
  TempDir dir;
  make_dataset(dir / "d", 60, 5);
  const Config cfg = base_config(dir / "d");
  DataLoader a(cfg, Split::train, 1, 2);
  std::vector<std::vector<std::int32_t>> seq;
  std::int64_t consumed_at_4 = 0;
  for (int k = 0; k < 12; ++k) {  // past the end of an epoch
    if (k == 4) consumed_at_4 = a.consumed_samples();
    seq.push_back(values(a.next_micro_batch().tokens));
  }
  CHECK(consumed_at_4 == 4 * 2 * 2);
  DataLoader b(cfg, Split::train, 1, 2);
  b.set_consumed_samples(consumed_at_4);
  CHECK(b.consumed_samples() == consumed_at_4);
  for (int k = 4; k < 12; ++k)
    CHECK(values(b.next_micro_batch().tokens) == seq[static_cast<std::size_t>(k)]);
  a.set_consumed_samples(0);  // and backwards
  CHECK(values(a.next_micro_batch().tokens) == seq[0]);
  require_refused([&] { a.set_consumed_samples(3); }, {"consumed samples 3"});

  // Many epochs in: a small dataset keeps serving.
  const std::int64_t S = a.sample_index(0).samples_per_epoch();
  a.set_consumed_samples((5 * S / 4 + 1) * 4);
  CHECK(a.next_micro_batch().sample_ids[0] == (5 * S / 4 + 1) * 4 + 2);
}

TEST_CASE("loader: splits, blends and the vocabulary", "[loader]") {
  TempDir dir;
  make_dataset(dir / "a", 100, 6);
  make_dataset(dir / "b", 50, 7, 500000);
  Config cfg = base_config(dir / "a");

  SECTION("valid samples come only from the valid documents") {
    DataLoader valid(cfg, Split::valid);
    DataLoader train(cfg, Split::train);
    for (int k = 0; k < 20; ++k) {
      for (std::int32_t t : values(valid.next_micro_batch().tokens)) CHECK(t / 1000 >= 90);
      for (std::int32_t t : values(train.next_micro_batch().tokens)) CHECK(t / 1000 < 90);
    }
    require_refused([&] { DataLoader t(cfg, Split::test); }, {dir / "a", "no documents"});
  }
  SECTION("data.valid replaces the split") {
    cfg.data.valid = {{dir / "b", 1.0}};
    DataLoader valid(cfg, Split::valid);
    DataLoader train(cfg, Split::train);
    for (std::int32_t t : values(valid.next_micro_batch().tokens)) CHECK(t >= 500000);
    CHECK(train.sample_index(0).num_documents() == 100);
  }
  SECTION("a blend's shares follow the weights") {
    cfg.data.train = {{dir / "a", 3.0}, {dir / "b", 1.0}};
    cfg.train.micro_batch_size = 8;
    cfg.train.global_batch_size = 8;
    DataLoader blend(cfg, Split::train);
    int from_b = 0, n = 0;
    for (int k = 0; k < 125; ++k) {
      Batch batch = blend.next_micro_batch();
      const auto tok = values(batch.tokens);
      for (int i = 0; i < 8; ++i) {
        from_b += tok[static_cast<std::size_t>(i * 32)] >= 500000;
        ++n;
      }
    }
    CHECK(n == 1000);
    CHECK(std::abs(from_b - 250) <= 10);
  }
  SECTION("token ids at or beyond model.vocab_size are refused before use") {
    cfg.model.vocab_size = 99000;
    require_refused([&] { DataLoader l(cfg, Split::train); },
                    {dir / "a.bin", "token id 99", "vocabulary size 99000"});
    cfg.data.train = {{dir / "missing", 1.0}};
    require_refused([&] { DataLoader l(cfg, Split::train); }, {dir / "missing.idx"});
  }
}
