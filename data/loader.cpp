#include "data/loader.h"

#include <array>
#include <utility>

#include "core/check.h"
#include "core/log.h"

namespace linmoe {

DataLoader::DataLoader(const Config& cfg, Split split, int dp_rank, int dp_size, int cp_rank,
                       int cp_size, int prefetch_depth)
    : seq_len_(cfg.train.seq_len),
      micro_batch_(cfg.train.micro_batch_size),
      dp_rank_(dp_rank),
      dp_size_(dp_size),
      cp_rank_(cp_rank),
      cp_size_(cp_size),
      depth_(static_cast<std::size_t>(std::max(1, prefetch_depth))) {
  LINMOE_CHECK(dp_size >= 1 && dp_rank >= 0 && dp_rank < dp_size, "dp rank ", dp_rank, " of ",
               dp_size);
  LINMOE_CHECK(cp_size >= 1 && cp_rank >= 0 && cp_rank < cp_size, "cp rank ", cp_rank, " of ",
               cp_size);
  if (seq_len_ % cp_size != 0) {
    throw UserError(
        str_cat("train.seq_len: ", seq_len_, " is not divisible by parallel.context ", cp_size));
  }
  const int per_round = micro_batch_ * dp_size;
  if (cfg.train.global_batch_size % per_round != 0) {
    throw UserError(
        str_cat("train.global_batch_size: ", cfg.train.global_batch_size,
                " is not divisible by micro_batch_size × data-parallel size = ", per_round));
  }
  micro_batches_per_step_ = cfg.train.global_batch_size / per_round;

  // Which datasets, and which of their documents.
  const bool own_valid = split == Split::valid && !cfg.data.valid.empty();
  const std::vector<DatasetEntry>& entries = own_valid ? cfg.data.valid : cfg.data.train;
  const bool whole = own_valid || (split == Split::train && !cfg.data.valid.empty());
  if (split == Split::test && !cfg.data.valid.empty()) {
    throw UserError("data.valid is given, so data.train is not split and there is no test split");
  }
  if (entries.empty()) throw UserError("data.train: no datasets");
  const std::array<double, 3> weights = {cfg.data.split_fractions[0], cfg.data.split_fractions[1],
                                         cfg.data.split_fractions[2]};
  std::vector<double> blend_weights;
  for (const DatasetEntry& e : entries) {
    auto ds = std::make_shared<const IndexedDataset>(e.path);
    ds->validate_vocab(cfg.model.vocab_size);
    SampleIndexOptions opt;
    if (!whole) {
      auto [b, end] = split_range(ds->num_documents(), weights, split);
      if (b == end) {
        throw UserError(str_cat(e.path, ": data.split '", cfg.data.split, "' gives the ",
                                split_name(split), " split no documents (of ", ds->num_documents(),
                                ")"));
      }
      opt.doc_begin = b;
      opt.doc_end = end;
    }
    opt.seq_len = seq_len_;
    opt.seed = cfg.data.seed;
    opt.cache_dir = cfg.data.cache_dir;
    indices_.push_back(std::make_unique<SampleIndex>(ds, opt));
    blend_weights.push_back(e.weight);
    const SampleIndex& si = *indices_.back();
    log_info("data: ", split_name(split), " ", e.path, ": documents [", opt.doc_begin, ", ",
             opt.doc_end < 0 ? ds->num_documents() : opt.doc_end, "), ", si.num_tokens(),
             " tokens, ", si.samples_per_epoch(), " samples of ", seq_len_, " per epoch, weight ",
             e.weight);
  }
  blend_ = std::make_unique<Blend>(blend_weights);
  start_prefetch();
}

DataLoader::~DataLoader() {
  stop_prefetch();
}

void DataLoader::read_sample(std::int64_t i, std::int32_t* out) const {
  auto [d, k] = blend_->locate(i);
  indices_[static_cast<std::size_t>(d)]->read_sample(k, out);
}

Batch DataLoader::make_batch(std::int64_t position) const {
  const int b = micro_batch_;
  const int piece = seq_len_ / cp_size_;
  Batch batch;
  batch.storage =
      Buffer(host_allocator(), 2 * static_cast<std::size_t>(b) * piece * sizeof(std::int32_t),
             "data.batch");
  batch.tokens = batch.storage.view(DType::i32, Shape{b, piece}, 0);
  batch.targets = batch.storage.view(DType::i32, Shape{b, piece},
                                     static_cast<std::size_t>(b) * piece * sizeof(std::int32_t));
  batch.first_position = static_cast<std::int64_t>(cp_rank_) * piece;
  std::int32_t* tokens = batch.tokens.ptr<std::int32_t>();                   // [b, piece]
  std::int32_t* targets = batch.targets.ptr<std::int32_t>();                 // [b, piece]
  std::vector<std::int32_t> sample(static_cast<std::size_t>(seq_len_) + 1);  // [T + 1]
  for (int i = 0; i < b; ++i) {
    // Round at `position`: replica r takes samples [position + r·b, position + (r+1)·b).
    const std::int64_t id = position + static_cast<std::int64_t>(dp_rank_) * b + i;
    batch.sample_ids.push_back(id);
    read_sample(id, sample.data());
    const std::int32_t* src = sample.data() + batch.first_position;
    std::copy(src, src + piece, tokens + static_cast<std::size_t>(i) * piece);
    std::copy(src + 1, src + 1 + piece, targets + static_cast<std::size_t>(i) * piece);
  }
  return batch;
}

void DataLoader::start_prefetch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = false;
    error_ = nullptr;
    queue_.clear();
    produce_position_ = consumed_;
  }
  thread_ = std::thread([this] { prefetch_loop(); });
}

void DataLoader::stop_prefetch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void DataLoader::prefetch_loop() {
  const std::int64_t per_round = static_cast<std::int64_t>(micro_batch_) * dp_size_;
  while (true) {
    std::int64_t position;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || (queue_.size() < depth_ && !error_); });
      if (stop_) return;
      position = produce_position_;
    }
    try {
      Batch b = make_batch(position);  // outside the lock: this is the slow part
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(b));
      produce_position_ = position + per_round;
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
    }
    cv_.notify_all();
  }
}

Batch DataLoader::next_micro_batch() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (queue_.empty() && error_) std::rethrow_exception(error_);
  Batch b = std::move(queue_.front());
  queue_.pop_front();
  consumed_ += static_cast<std::int64_t>(micro_batch_) * dp_size_;
  lock.unlock();
  cv_.notify_all();
  return b;
}

std::int64_t DataLoader::consumed_samples() const {
  std::lock_guard<std::mutex> lock(mu_);
  return consumed_;
}

void DataLoader::set_consumed_samples(std::int64_t n) {
  const std::int64_t per_round = static_cast<std::int64_t>(micro_batch_) * dp_size_;
  if (n < 0 || n % per_round != 0) {
    throw UserError(str_cat("consumed samples ", n,
                            " is not a non-negative multiple of micro_batch_size × data-parallel "
                            "size = ",
                            per_round));
  }
  stop_prefetch();
  consumed_ = n;
  start_prefetch();
}

}  // namespace linmoe
