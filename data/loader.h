// The trainer's data: micro-batches of this rank's samples, prepared on a background thread.
//
// The sample order is the blend of data.train (or the split's datasets) described in
// sample_index.h and blend.h. A step's global batch is the next global_batch_size samples of it;
// micro-batch j of the step holds samples j·b … (j+1)·b − 1 of the global batch (b =
// micro_batch_size, MODEL.md section 5). Data-parallel replica r runs the step's micro-batches
// r, r + dp, r + 2·dp, … (Megatron's sampler: each round of dp micro-batches hands replica r the
// r-th block of b samples), so the replicas' samples are disjoint and their union is exactly
// the global batch. Context-parallel rank c keeps tokens [c·T/cp, (c+1)·T/cp) of each sample.
//
// consumed_samples() counts samples handed out to all replicas so far (b·dp per micro-batch
// round); it is the iterator state a checkpoint stores, and set_consumed_samples() resumes it.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/config.h"
#include "core/memory.h"
#include "core/tensor.h"
#include "data/blend.h"
#include "data/sample_index.h"
#include "data/split.h"

namespace linmoe {

struct Batch {
  Buffer storage;                        // owns tokens and targets
  Tensor tokens;                         // i32 [b, T/cp]: sample[t] for this rank's t
  Tensor targets;                        // i32 [b, T/cp]: sample[t + 1]
  std::vector<std::int64_t> sample_ids;  // [b] positions in the sample order
  std::int64_t first_position = 0;       // position in the sequence of column 0 (c·T/cp)
};

class DataLoader {
 public:
  // Opens the split's datasets (data.train, or data.valid for Split::valid when given),
  // validates them (structure and token ids < model.vocab_size) and starts prefetching.
  // Throws UserError naming the file or key when the data cannot serve this split.
  DataLoader(const Config& cfg, Split split, int dp_rank = 0, int dp_size = 1, int cp_rank = 0,
             int cp_size = 1, int prefetch_depth = 4);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // This replica's next micro-batch; waits only when the prefetch thread is behind.
  Batch next_micro_batch();
  std::int64_t consumed_samples() const;
  // Restarts from a checkpoint's consumed samples (a multiple of b·dp).
  void set_consumed_samples(std::int64_t n);

  // Micro-batches each replica runs per step: global_batch / (b · dp).
  int micro_batches_per_step() const { return micro_batches_per_step_; }
  int num_datasets() const { return static_cast<int>(indices_.size()); }
  const SampleIndex& sample_index(int d) const { return *indices_[static_cast<std::size_t>(d)]; }
  // Sample i of the sample order, whole. out: [seq_len + 1]
  void read_sample(std::int64_t i, std::int32_t* out) const;

 private:
  Batch make_batch(std::int64_t position) const;  // the batch of the round starting there
  void start_prefetch();
  void stop_prefetch();
  void prefetch_loop();

  int seq_len_, micro_batch_, dp_rank_, dp_size_, cp_rank_, cp_size_;
  int micro_batches_per_step_;
  std::size_t depth_;
  std::vector<std::unique_ptr<SampleIndex>> indices_;
  std::unique_ptr<Blend> blend_;

  std::int64_t consumed_ = 0;  // consumer side: rounds handed out · b · dp

  // Prefetch state: batches for rounds at next_position_ - k·b·dp, in order.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  std::int64_t produce_position_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace linmoe
