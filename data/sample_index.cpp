#include "data/sample_index.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "core/check.h"
#include "core/log.h"

namespace linmoe {

namespace {
constexpr char kCacheMagic[8] = {'L', 'M', 'S', 'I', 'D', 'X', '0', '1'};
constexpr const char* kFormatVersion = "linmoe-sample-index-1";
constexpr std::size_t kRecentEpochs = 2;

std::string dirname_of(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}
std::string basename_of(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}
template <class T>
std::uint64_t hash_value(const T& v, std::uint64_t h) {
  return fnv1a64(&v, sizeof(v), h);
}
}  // namespace

std::uint64_t fnv1a64(const void* data, std::size_t n, std::uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

std::uint64_t SplitMix64::next() {
  std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::uint64_t SplitMix64::below(std::uint64_t n) {
  __extension__ using u128 = unsigned __int128;
  return static_cast<std::uint64_t>((static_cast<u128>(next()) * n) >> 64);
}

void seeded_shuffle(std::vector<std::int64_t>& v, std::uint64_t seed) {
  SplitMix64 rng(seed);
  for (std::size_t i = v.size(); i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(rng.below(i));
    std::swap(v[i - 1], v[j]);
  }
}

SampleIndex::SampleIndex(std::shared_ptr<const IndexedDataset> dataset,
                         const SampleIndexOptions& options)
    : dataset_(std::move(dataset)), options_(options) {
  const IndexedDataset& ds = *dataset_;
  if (options_.doc_end < 0) options_.doc_end = ds.num_documents();
  LINMOE_CHECK(0 <= options_.doc_begin && options_.doc_begin <= options_.doc_end &&
                   options_.doc_end <= ds.num_documents(),
               "document range [", options_.doc_begin, ", ", options_.doc_end, ") of ",
               ds.num_documents());
  LINMOE_CHECK(options_.seq_len >= 1, "seq_len ", options_.seq_len);
  doc_lengths_.resize(static_cast<std::size_t>(num_documents()));
  for (std::int64_t d = options_.doc_begin; d < options_.doc_end; ++d) {
    const std::int64_t len = ds.document_length(d);
    doc_lengths_[static_cast<std::size_t>(d - options_.doc_begin)] = len;
    tokens_ += len;
  }
  if (tokens_ < options_.seq_len + 1) {
    throw UserError(
        str_cat(ds.prefix(), ": documents [", options_.doc_begin, ", ", options_.doc_end, ") hold ",
                tokens_,
                " tokens, fewer than one sample needs (seq_len + 1 = ", options_.seq_len + 1, ")"));
  }
  samples_per_epoch_ = (tokens_ - 1) / options_.seq_len;

  // Everything that determines the arrays, except the epoch.
  std::uint64_t h = fnv1a64(kFormatVersion, std::strlen(kFormatVersion));
  h = fnv1a64(doc_lengths_.data(), doc_lengths_.size() * sizeof(std::int64_t), h);
  h = hash_value(options_.doc_begin, h);
  h = hash_value(options_.doc_end, h);
  h = hash_value(options_.seq_len, h);
  h = hash_value(options_.seed, h);
  structure_hash_ = h;
}

std::string SampleIndex::cache_key(std::int64_t e) const {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx",
                static_cast<unsigned long long>(hash_value(e, structure_hash_)));
  return buf;
}

std::string SampleIndex::cache_path(std::int64_t e) const {
  if (options_.cache_dir == "none") return "";
  const std::string dir =
      options_.cache_dir.empty() ? dirname_of(dataset_->prefix()) : options_.cache_dir;
  return str_cat(dir, "/", basename_of(dataset_->prefix()), ".", cache_key(e), ".sidx");
}

std::shared_ptr<SampleIndex::Epoch> SampleIndex::build_epoch(std::int64_t e) const {
  auto ep = std::make_shared<Epoch>();
  ep->epoch = e;
  const std::int64_t docs = num_documents();
  ep->doc_order.resize(static_cast<std::size_t>(docs));
  std::iota(ep->doc_order.begin(), ep->doc_order.end(), options_.doc_begin);
  // Separate streams for the document and the sample shuffles of each epoch.
  seeded_shuffle(ep->doc_order, hash_value(std::uint64_t{1}, hash_value(e, structure_hash_)));

  const std::int64_t S = samples_per_epoch_, L = options_.seq_len;
  ep->sample_doc.resize(static_cast<std::size_t>(S));
  ep->sample_offset.resize(static_cast<std::size_t>(S));
  std::int64_t pos = 0, before = 0;  // document position in the order, tokens before it
  for (std::int64_t s = 0; s < S; ++s) {
    const std::int64_t target = s * L;
    // Zero-length documents are stepped over here too.
    while (before + doc_lengths_[static_cast<std::size_t>(
                        ep->doc_order[static_cast<std::size_t>(pos)] - options_.doc_begin)] <=
           target) {
      before += doc_lengths_[static_cast<std::size_t>(ep->doc_order[static_cast<std::size_t>(pos)] -
                                                      options_.doc_begin)];
      ++pos;
    }
    ep->sample_doc[static_cast<std::size_t>(s)] = pos;
    ep->sample_offset[static_cast<std::size_t>(s)] = target - before;
  }
  ep->shuffle.resize(static_cast<std::size_t>(S));
  std::iota(ep->shuffle.begin(), ep->shuffle.end(), 0);
  seeded_shuffle(ep->shuffle, hash_value(std::uint64_t{2}, hash_value(e, structure_hash_)));
  return ep;
}

// Cache file: magic, key, docs, S, then doc_order, sample_doc, sample_offset, shuffle (i64).
std::shared_ptr<SampleIndex::Epoch> SampleIndex::load_cached(std::int64_t e) const {
  const std::string path = cache_path(e);
  if (path.empty()) return nullptr;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return nullptr;
  auto ep = std::make_shared<Epoch>();
  ep->epoch = e;
  char magic[8];
  std::uint64_t key = 0;
  std::int64_t docs = 0, S = 0;
  bool ok = std::fread(magic, 1, 8, f) == 8 && std::memcmp(magic, kCacheMagic, 8) == 0 &&
            std::fread(&key, 8, 1, f) == 1 && key == hash_value(e, structure_hash_) &&
            std::fread(&docs, 8, 1, f) == 1 && docs == num_documents() &&
            std::fread(&S, 8, 1, f) == 1 && S == samples_per_epoch_;
  auto read_array = [&](std::vector<std::int64_t>& v, std::int64_t n) {
    v.resize(static_cast<std::size_t>(n));
    return std::fread(v.data(), 8, v.size(), f) == v.size();
  };
  ok = ok && read_array(ep->doc_order, docs) && read_array(ep->sample_doc, S) &&
       read_array(ep->sample_offset, S) && read_array(ep->shuffle, S);
  ok = ok && std::fgetc(f) == EOF;
  std::fclose(f);
  if (!ok) {
    log_warn("sample index cache ", path, " is damaged or stale: rebuilding it");
    return nullptr;
  }
  return ep;
}

void SampleIndex::store_cached(const Epoch& ep) const {
  const std::string path = cache_path(ep.epoch);
  if (path.empty()) return;
  // Unique temporary name, then rename: ranks building the same index concurrently are safe.
  const std::string tmp = str_cat(path, ".tmp", ::getpid(), "_", std::hash<const void*>()(&ep));
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    log_debug("sample index cache not written (", tmp, ": ", std::strerror(errno), ")");
    return;
  }
  const std::uint64_t key = hash_value(ep.epoch, structure_hash_);
  const std::int64_t docs = num_documents(), S = samples_per_epoch_;
  bool ok = std::fwrite(kCacheMagic, 1, 8, f) == 8 && std::fwrite(&key, 8, 1, f) == 1 &&
            std::fwrite(&docs, 8, 1, f) == 1 && std::fwrite(&S, 8, 1, f) == 1;
  for (const auto* v : {&ep.doc_order, &ep.sample_doc, &ep.sample_offset, &ep.shuffle}) {
    ok = ok && std::fwrite(v->data(), 8, v->size(), f) == v->size();
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    log_debug("sample index cache not written: ", path);
  }
}

std::shared_ptr<const SampleIndex::Epoch> SampleIndex::epoch(std::int64_t e) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& r : recent_) {
    if (r->epoch == e) return r;
  }
  std::shared_ptr<Epoch> ep = load_cached(e);
  if (!ep) {
    ep = build_epoch(e);
    store_cached(*ep);
  }
  if (recent_.size() >= kRecentEpochs) recent_.erase(recent_.begin());
  recent_.push_back(ep);
  return ep;
}

void SampleIndex::read_sample(std::int64_t k, std::int32_t* out) const {
  LINMOE_CHECK(k >= 0, "sample ", k);
  const std::int64_t e = k / samples_per_epoch_;
  std::shared_ptr<const Epoch> ep = epoch(e);
  const std::int64_t s = ep->shuffle[static_cast<std::size_t>(k % samples_per_epoch_)];
  std::int64_t pos = ep->sample_doc[static_cast<std::size_t>(s)];
  std::int64_t offset = ep->sample_offset[static_cast<std::size_t>(s)];
  std::int64_t need = options_.seq_len + 1;
  while (need > 0) {
    const std::int64_t doc = ep->doc_order[static_cast<std::size_t>(pos)];
    const std::int64_t len = doc_lengths_[static_cast<std::size_t>(doc - options_.doc_begin)];
    const std::int64_t take = std::min(need, len - offset);
    if (take > 0) {
      dataset_->read_document(doc, offset, take, out);
      out += take;
      need -= take;
    }
    offset = 0;
    ++pos;
  }
}

}  // namespace linmoe
