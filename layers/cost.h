// The model's costs, computed from the config: FLOPs per token (forward + backward, by layer
// type; the numbers MFU uses) and memory per rank. Matmul FLOPs count 2 per multiply-add;
// backward counts twice the forward (input and weight gradients).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"

namespace linmoe {

struct FlopsItem {
  std::string name;  // "attention projections", "lsm core (chunk)", ...
  double per_token;  // forward + backward FLOPs per token
};

// Sorted as the network runs; seq_len matters for attention (causal: (T+1)/2 keys on average)
// and the LSM chunk (min(chunk, T)).
std::vector<FlopsItem> flops_per_token(const ModelConfig& m, std::int64_t seq_len);
double total_flops_per_token(const ModelConfig& m, std::int64_t seq_len);

struct MemoryEstimate {
  double weights = 0;      // the model's weights in the compute dtype (bf16 or fp32)
  double gradients = 0;    // the model's gradients, plus the fp32 main gradients under bf16
  double master = 0;       // fp32 master weights (bf16 only; ZeRO-sharded)
  double optimizer = 0;    // AdamW's two moments or SGD's momentum (ZeRO-sharded)
  double activations = 0;  // the activation arenas: saved (per micro-batch in flight), scratch,
                           // recompute
  double buffers = 0;      // ZeRO shard staging, pipeline transfers, the tied embedding's gradient
  double total() const { return weights + gradients + master + optimizer + activations + buffers; }
};
// The busiest rank of the layout in c.parallel (the pipeline stage with the most): every buffer
// the engine and the model allocate for training, from the config alone: its slices of the
// weights and gradients (layers/sharding.h), the master weights and optimizer state divided over
// the ZeRO shards, and the activation arenas as Model sizes them (one per micro-batch 1F1B keeps
// in flight on that stage, min(pp − stage, micro-batches), plus scratch and recompute).
MemoryEstimate memory_per_rank(const Config& c);

}  // namespace linmoe
