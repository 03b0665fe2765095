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
  double weights = 0, gradients = 0, optimizer = 0, activations = 0;
  double total() const { return weights + gradients + optimizer + activations; }
};
// The busiest rank of the layout in c.parallel (the pipeline stage with the most): its slices
// of the fp32 master weights and gradients (layers/sharding.h), AdamW's two moments (SGD: one
// buffer, or none) divided over the ZeRO shards, and the activation plan of the stage's layers for
// one micro-batch of T/cp tokens times the micro-batches 1F1B keeps in flight (min(pp − stage,
// micro-batches)).
MemoryEstimate memory_per_rank(const Config& c);

}  // namespace linmoe
