#include "data/blend.h"

#include <cmath>

#include "core/check.h"

namespace linmoe {
namespace {

// One greedy step: the dataset of sample i given the counts so far; advances the counts.
int pick(const std::vector<double>& w, std::vector<std::int64_t>& counts, std::int64_t i) {
  int best = 0;
  double best_err = -1e300;
  for (std::size_t d = 0; d < w.size(); ++d) {
    const double err = w[d] * static_cast<double>(i + 1) - static_cast<double>(counts[d]);
    if (err > best_err) {
      best_err = err;
      best = static_cast<int>(d);
    }
  }
  ++counts[static_cast<std::size_t>(best)];
  return best;
}

}  // namespace

Blend::Blend(std::vector<double> weights) : weights_(std::move(weights)) {
  if (weights_.empty()) throw UserError("a blend needs at least one dataset");
  double sum = 0;
  for (double w : weights_) {
    if (!(w > 0) || !std::isfinite(w)) {
      throw UserError(str_cat("dataset weight ", w, " is not a positive number"));
    }
    sum += w;
  }
  for (double& w : weights_) w /= sum;
  snapshots_.push_back(std::vector<std::int64_t>(weights_.size(), 0));
}

void Blend::extend_snapshots(std::int64_t block) const {
  while (static_cast<std::int64_t>(snapshots_.size()) <= block) {
    const std::int64_t b = static_cast<std::int64_t>(snapshots_.size()) - 1;
    std::vector<std::int64_t> counts = snapshots_.back();
    for (std::int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i) pick(weights_, counts, i);
    snapshots_.push_back(std::move(counts));
  }
}

std::pair<int, std::int64_t> Blend::locate(std::int64_t i) const {
  LINMOE_CHECK(i >= 0, "blend sample ", i);
  if (weights_.size() == 1) return {0, i};
  std::lock_guard<std::mutex> lock(mu_);
  const std::int64_t block = i / kBlock;
  if (block != cached_block_) {
    extend_snapshots(block);
    std::vector<std::int64_t> counts = snapshots_[static_cast<std::size_t>(block)];
    cached_.resize(kBlock);
    for (std::int64_t j = 0; j < kBlock; ++j) {
      const std::int64_t idx = block * kBlock + j;
      const int d = pick(weights_, counts, idx);
      cached_[static_cast<std::size_t>(j)] = {d, counts[static_cast<std::size_t>(d)] - 1};
    }
    cached_block_ = block;
  }
  return cached_[static_cast<std::size_t>(i % kBlock)];
}

}  // namespace linmoe
