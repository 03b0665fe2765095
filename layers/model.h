// The network of MODEL.md section 1, forward and backward by hand:
//   h = embed[tokens]; per layer: a = h + Mixer(RMSNorm(h)), h = a + FFN(RMSNorm(a));
//   logits = RMSNorm(h) lm_headᵀ; loss = mean cross-entropy + aux/z terms.
// Parameters live in one ParameterStore (names of MODEL.md 7); activations in arenas.
//
// Parallelism (spec/PARALLEL.md) enters through a ShardingPlan (which slices and layers this rank
// holds) and the process groups:
//   tensor    sublayers return partial sums over tp (head slices; the MoE's token share): the
//             model all-reduces each sublayer's output in forward and its input gradient in
//             backward; vocabulary-parallel embedding (all-reduce) and cross-entropy (lse and
//             target logit reduced over tp; the full logits never exist on one rank).
//   context   tokens are this rank's piece [B, T/cp] of every sequence; position_offset tells the
//             sublayers where it starts; the loss is a mean over the whole micro-batch.
//   pipeline  a stage holds layers [first_layer, last_layer); the first embeds, the last computes
//             the loss. Several micro-batches may be in flight (1F1B): each has an activation
//             slot, freed by its backward.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/config.h"
#include "core/memory.h"
#include "core/parameter_store.h"
#include "kernels/ops.h"
#include "layers/layer.h"
#include "layers/sharding.h"

namespace linmoe {

class ProcessGroups;

struct MicroBatchLosses {
  double loss = 0;                  // lm_loss + aux_coeff·Σ aux + z_coeff·Σ z
  double lm_loss = 0;               // mean over the micro-batch's tokens (last stage)
  double aux_loss = 0, z_loss = 0;  // Σ over this stage's layers, unscaled
  std::int64_t tokens = 0;          // tokens of the whole micro-batch (all context pieces)
  std::vector<std::vector<double>> expert_load;  // per MoE layer here: fraction per expert
};

class Model {
 public:
  // dtype: f32 for training (f64 for gradient checks). Without a plan and groups: one rank.
  Model(const ModelConfig& config, Backend& backend, DType dtype);
  Model(const ModelConfig& config, Backend& backend, DType dtype, const ShardingPlan& plan,
        const ProcessGroups* groups);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const ShardingPlan& plan() const { return plan_; }
  ParameterStore& params() { return params_; }
  // This rank's parameters with their reduction flags, in the store's order.
  const std::vector<ShardedParam>& sharded_params() const { return sharded_; }
  void initialize(std::uint64_t seed);

  // tokens, targets: [B, T] i32 on the host (this rank's context piece). One rank or a single
  // pipeline stage: runs forward and backward; parameter gradients ACCUMULATE the gradient of
  // loss_scale · (this micro-batch's total loss).
  MicroBatchLosses forward_backward(const Tensor& tokens, const Tensor& targets, double loss_scale);
  // Forward only (evaluation), single stage.
  MicroBatchLosses forward(const Tensor& tokens, const Tensor& targets);

  // ---- pipeline stages ------------------------------------------------------------------------
  // Activation slots for micro-batches in flight (default 1).
  void set_slots(int n);
  // train.recompute: none keeps every activation; selective drops each mixer's internal
  // activations and recomputes them in backward; full keeps only each block's input and
  // recomputes the whole block. Results are identical; memory and time are traded.
  void set_recompute(Recompute r) { recompute_ = r; }
  struct StageOutput {
    MicroBatchLosses losses;  // the last stage's loss; every stage's aux/z and expert load
    Tensor h;                 // [B·T, D] the stage's output (not on the last stage)
  };
  // One micro-batch through this stage into `slot`. h_in [B·T, D]: the previous stage's output
  // (ignored on the first stage). with_backward keeps what stage_backward needs.
  StageOutput stage_forward(int slot, const Tensor& tokens, const Tensor& targets,
                            const Tensor& h_in, bool with_backward, double loss_scale);
  // Backward of the slot's micro-batch. dh_out: the gradient of this stage's output (ignored on
  // the last stage). Returns the gradient of its input [B·T, D] (undefined on the first stage),
  // valid until the slot is used again; frees the slot.
  Tensor stage_backward(int slot, const Tensor& dh_out);
  // Told during stage_backward which parameters' gradients that backward has finished, part by
  // part as it goes (the head, each block from the last, then the embedding and anything else):
  // indices into params(), every parameter of the stage once per backward. The engine starts
  // gradient reductions from it while the backward goes on.
  using GradientsDone = std::function<void(const std::vector<int>& params)>;
  void set_gradients_done(GradientsDone f) { gradients_done_ = std::move(f); }

  // Bytes of activations kept for backward for a [B, T] micro-batch (the arena's plan), and of
  // the arena that rebuilds dropped activations one block (or mixer) at a time.
  // With a plan: one pipeline stage's layers (the head on the last) and the tensor-parallel
  // shares.
  static std::size_t planned_activation_bytes(const ModelConfig& m, std::int64_t B, std::int64_t T,
                                              DType dtype, Recompute recompute = Recompute::none,
                                              const ShardingPlan* plan = nullptr);
  static std::size_t planned_recompute_bytes(const ModelConfig& m, std::int64_t B, std::int64_t T,
                                             DType dtype, Recompute recompute);
  // The scratch arena (temporaries of one op or sublayer at a time): a share of the activations
  // the stage would keep without recompute, so that recompute does not shrink it.
  static std::size_t planned_scratch_bytes(const ModelConfig& m, std::int64_t B, std::int64_t T,
                                           DType dtype, const ShardingPlan* plan = nullptr);
  std::size_t activation_peak_bytes() const;

 private:
  struct Block;
  struct Slot;
  struct BlockActivations;
  LayerContext context(Slot& s);
  LayerContext recompute_context(Slot& s);
  void block_forward(std::size_t i, BlockActivations& act, LayerContext& ctx,
                     LayerContext& mixer_ctx, const Tensor& h, const Tensor& next,
                     SublayerStats* ffn_stats, std::int64_t B, std::int64_t T);
  void prepare_slot(Slot& s, std::int64_t B, std::int64_t T);
  // Sum over tp of a tensor that holds partial sums (a no-op on one tensor rank).
  void tp_all_reduce(const Tensor& t);
  void head_forward(Slot& s, LayerContext& ctx, MicroBatchLosses& out, double loss_scale);
  void head_backward(Slot& s, LayerContext& ctx);

  ModelConfig config_;
  Backend& backend_;
  DType dtype_;
  ShardingPlan plan_;
  const ProcessGroups* groups_ = nullptr;
  std::vector<ShardedParam> sharded_;
  ParameterStore params_;
  std::vector<std::unique_ptr<Block>> blocks_;  // this stage's layers
  int embed_ = -1, final_norm_ = -1, lm_head_ = -1;
  std::vector<std::unique_ptr<Slot>> slots_;
  Arena scratch_;
  Recompute recompute_ = Recompute::none;
  Arena recompute_arena_;  // one block's (or mixer's) activations while it is rebuilt
  // The parameters each part of the backward finishes: [blocks] (this stage's), then the head
  // (final norm, untied lm_head), then the rest (the embedding, a tied head).
  std::vector<std::vector<int>> done_parts_;
  GradientsDone gradients_done_;
  void gradients_done(std::size_t part) const {
    if (gradients_done_) gradients_done_(done_parts_[part]);
  }
};

}  // namespace linmoe
