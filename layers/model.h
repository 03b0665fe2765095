// The network of MODEL.md section 1, forward and backward by hand:
//   h = embed[tokens]; per layer: a = h + Mixer(RMSNorm(h)), h = a + FFN(RMSNorm(a));
//   logits = RMSNorm(h) lm_headᵀ; loss = mean cross-entropy + aux/z terms.
// Parameters live in one ParameterStore (names of MODEL.md 7); activations in two arenas.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/config.h"
#include "core/memory.h"
#include "core/parameter_store.h"
#include "kernels/ops.h"
#include "layers/layer.h"

namespace linmoe {

struct MicroBatchLosses {
  double loss = 0;                  // lm_loss + aux_coeff·Σ aux + z_coeff·Σ z
  double lm_loss = 0;               // mean over the micro-batch's tokens
  double aux_loss = 0, z_loss = 0;  // Σ over layers, unscaled
  std::int64_t tokens = 0;
  std::vector<std::vector<double>> expert_load;  // per MoE layer: fraction per expert
};

class Model {
 public:
  // dtype: f32 for training (f64 for gradient checks).
  Model(const ModelConfig& config, Backend& backend, DType dtype);
  ~Model();

  const ModelConfig& config() const { return config_; }
  ParameterStore& params() { return params_; }
  void initialize(std::uint64_t seed);

  // tokens, targets: [B, T] i32 on the host. Runs forward and backward; parameter gradients
  // ACCUMULATE the gradient of loss_scale · (this micro-batch's total loss).
  MicroBatchLosses forward_backward(const Tensor& tokens, const Tensor& targets, double loss_scale);
  // Forward only (evaluation).
  MicroBatchLosses forward(const Tensor& tokens, const Tensor& targets);

  // Bytes of activations kept for backward for a [B, T] micro-batch (the arena's plan).
  static std::size_t planned_activation_bytes(const ModelConfig& m, std::int64_t B, std::int64_t T,
                                              DType dtype);
  std::size_t activation_peak_bytes() const { return saved_.peak() + scratch_.peak(); }

 private:
  struct Block;
  struct ForwardState;
  MicroBatchLosses run(const Tensor& tokens, const Tensor& targets, bool backward,
                       double loss_scale);

  ModelConfig config_;
  Backend& backend_;
  DType dtype_;
  ParameterStore params_;
  std::vector<std::unique_ptr<Block>> blocks_;
  int embed_ = -1, final_norm_ = -1, lm_head_ = -1;
  Arena saved_, scratch_;
};

}  // namespace linmoe
