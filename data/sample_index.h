// GPTDataset-style samples of one dataset's split (spec/FORMATS.md section 1).
//
// Epoch e reads the split's documents in an order shuffled from (seed, e) as one token stream
// of `tokens` tokens; it holds S = (tokens - 1) / seq_len samples, sample s being the seq_len+1
// tokens starting at stream token s·seq_len (consecutive samples share one token; samples cross
// document boundaries; the tail of fewer than seq_len tokens is left out). Within an epoch the
// samples are taken in an order shuffled from (seed, e). Sample k of the whole sequence is
// shuffled sample k mod S of epoch k / S, so it goes on as long as training does.
//
// An epoch's arrays (document order, sample starts, sample shuffle) are built on first use and
// cached in a file keyed by a hash of everything that determines them: the dataset's document
// structure, the document range, seq_len, the seed, the epoch and the format version.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"

namespace linmoe {

struct SampleIndexOptions {
  std::int64_t doc_begin = 0, doc_end = -1;  // documents [begin, end); end -1 = all
  int seq_len = 256;
  std::uint64_t seed = 1234;
  // Where cache files go; empty = next to the dataset; "none" = no cache files.
  std::string cache_dir;
};

class SampleIndex {
 public:
  // Throws UserError naming the dataset when the range holds fewer than seq_len + 1 tokens.
  SampleIndex(std::shared_ptr<const IndexedDataset> dataset, const SampleIndexOptions& options);

  // The arrays of one epoch.
  struct Epoch {
    std::int64_t epoch = 0;
    std::vector<std::int64_t> doc_order;      // [docs] document ids, shuffled
    std::vector<std::int64_t> sample_doc;     // [S] position in doc_order where sample s starts
    std::vector<std::int64_t> sample_offset;  // [S] token offset in that document
    std::vector<std::int64_t> shuffle;        // [S] a permutation of 0..S-1
  };

  std::int64_t samples_per_epoch() const { return samples_per_epoch_; }
  std::int64_t num_tokens() const { return tokens_; }
  std::int64_t num_documents() const { return options_.doc_end - options_.doc_begin; }
  int seq_len() const { return options_.seq_len; }
  const IndexedDataset& dataset() const { return *dataset_; }
  // The cache key of epoch e (hex) and the cache file it uses ("" without caching).
  std::string cache_key(std::int64_t epoch) const;
  std::string cache_path(std::int64_t epoch) const;

  // Sample k (k ≥ 0, any epoch). out: [seq_len + 1]
  void read_sample(std::int64_t k, std::int32_t* out) const;
  std::shared_ptr<const Epoch> epoch(std::int64_t e) const;

 private:
  std::shared_ptr<Epoch> build_epoch(std::int64_t e) const;
  std::shared_ptr<Epoch> load_cached(std::int64_t e) const;
  void store_cached(const Epoch& ep) const;

  std::shared_ptr<const IndexedDataset> dataset_;
  SampleIndexOptions options_;
  std::vector<std::int64_t> doc_lengths_;  // [docs of the range]
  std::int64_t tokens_ = 0, samples_per_epoch_ = 0;
  std::uint64_t structure_hash_ = 0;
  mutable std::mutex mu_;
  mutable std::vector<std::shared_ptr<const Epoch>> recent_;  // the last few epochs used
};

// 64-bit FNV-1a over bytes, chained from `h` (cache keys).
std::uint64_t fnv1a64(const void* data, std::size_t n, std::uint64_t h = 0xcbf29ce484222325ull);
// A small deterministic generator for the shuffles (SplitMix64).
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : s_(seed) {}
  std::uint64_t next();
  // Uniform in [0, n) (n ≥ 1); multiply-shift, so the same on every platform.
  std::uint64_t below(std::uint64_t n);

 private:
  std::uint64_t s_;
};
// Fisher-Yates shuffle of v with a generator seeded by `seed`.
void seeded_shuffle(std::vector<std::int64_t>& v, std::uint64_t seed);

}  // namespace linmoe
