// Blends of datasets with weights (Megatron's BlendedDataset rule): sample i of the blend comes
// from the dataset whose count lags its weight the most, error_d = w_d·(i+1) − count_d, ties to
// the lower index. Every prefix of the blend is then within one sample of its weights, so any
// window of n consecutive samples is within two samples per dataset of w_d·n. Deterministic
// without a seed; computed lazily from snapshots of the counts every kBlock samples.
#pragma once
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace linmoe {

class Blend {
 public:
  // Weights > 0, any scale (normalised here). Throws UserError on a non-positive weight.
  explicit Blend(std::vector<double> weights);

  int num_datasets() const { return static_cast<int>(weights_.size()); }
  const std::vector<double>& weights() const { return weights_; }  // normalised
  // Sample i of the blend: (dataset, index of the sample within that dataset).
  std::pair<int, std::int64_t> locate(std::int64_t i) const;

  static constexpr std::int64_t kBlock = 1024;

 private:
  // Counts per dataset before sample b·kBlock, for every block b computed so far.
  void extend_snapshots(std::int64_t block) const;
  std::vector<double> weights_;
  mutable std::mutex mu_;
  mutable std::vector<std::vector<std::int64_t>> snapshots_;
  // The decisions of the last block replayed (the loader reads blocks in order).
  mutable std::int64_t cached_block_ = -1;
  mutable std::vector<std::pair<int, std::int64_t>> cached_;
};

}  // namespace linmoe
