// The optimizer: AdamW or SGD state for a contiguous range of the flat parameter buffer (the
// whole store, or this rank's ZeRO-1 shard), applied tensor by tensor so weight decay follows
// MODEL.md 5 (tensors of rank >= 2 only). State is fp32 like the master weights.
//
// Mixed precision (train.precision: bf16): the store holds bf16 weights for the model's compute;
// the optimizer then keeps the fp32 master copy of its range, updates it, and writes the rounded
// result back into the store. With fp32 weights the store's values are the master weights.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/memory.h"
#include "core/parameter_store.h"
#include "kernels/ops.h"

namespace linmoe {

class Optimizer {
 public:
  // Owns state for flat elements [begin, end) of `params` (default: all of it).
  Optimizer(const OptimizerConfig& config, Backend& backend, const ParameterStore& params,
            std::int64_t begin = 0, std::int64_t end = -1);

  // One update with learning rate lr from the fp32 gradients `grads` (the whole store's flat
  // [padded_numel], only [begin, end) read); `step` counts updates from 1 (bias correction).
  void step(const Tensor& grads, double lr, std::int64_t step);

  // The fp32 master weights of [begin, end): a view of the store (fp32 weights) or the separate
  // master copy (bf16 weights). set_master_weights replaces them (a checkpoint's full-precision
  // values) and refreshes the store's bf16 copy.
  Tensor master_weights() const;
  void set_master_weights(const Tensor& values);  // [end − begin] f32, any device
  bool has_master_copy() const { return master_.bytes() > 0; }

  // The state tensors (for checkpoints): names like "exp_avg", "exp_avg_sq", "momentum_buffer".
  std::vector<std::string> state_names() const;
  Tensor state(const std::string& name) const;  // [end − begin], flat
  std::int64_t begin() const { return begin_; }
  std::int64_t end() const { return end_; }

 private:
  struct Piece {  // the part of one parameter tensor inside [begin, end)
    std::int64_t flat_begin, length;
    bool weight_decay;
  };
  OptimizerConfig config_;
  Backend& backend_;
  const ParameterStore& params_;
  std::int64_t begin_, end_;
  std::vector<Piece> pieces_;
  Buffer state_a_, state_b_;  // adamw: m, v; sgd: momentum buffer (a) when momentum > 0
  Buffer master_;             // [end − begin] f32 when the store's weights are not f32
};

}  // namespace linmoe
