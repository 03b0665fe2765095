// One training step of any layout (spec/PARALLEL.md), written once against the Communicator:
//   micro-batches    one after another (pp = 1) or the 1F1B pipeline schedule (pp > 1: warm-up
//                    forwards, one-forward-one-backward, cool-down; activations and their
//                    gradients go point-to-point between neighbouring stages)
//   gradients        tp-partial replicated parameters summed over tp; a tied embedding's two
//                    copies (first and last stage) summed; then the data-parallel reduction: the
//                    dense region over dp·cp, the expert region over expert-dp, each all-reduced
//                    or (optimizer.zero) reduce-scattered to this rank's 1/n shard. It runs in
//                    buckets (parallel.grad_bucket_mb), each started, non-blocking, as soon as
//                    the step's last backward has finished its parameters, so the reduction
//                    overlaps the rest of the backward (ZeRO: each bucket's pieces go to the
//                    ranks whose shards they fall in, an uneven reduce-scatter)
//   norm and clip    the global L2 norm over every parameter counted once
//   update           the optimizer on this rank's ranges (the shards with ZeRO), then the
//                    updated weights all-gathered (ZeRO)
// Precision (train.precision): fp32 computes, reduces and updates in fp32. bf16 runs the model in
// bf16 (weights, activations, per-micro-batch gradients) and adds each micro-batch's gradients
// into fp32 main gradients; reductions, norm, clipping and the update (on fp32 master weights
// kept by the optimizer) are fp32, and the updated weights are rounded to bf16 once.
// Losses and MoE statistics come back as the step's values (mean over micro-batches and
// data-parallel replicas), identical on every rank.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "data/loader.h"
#include "kernels/ops.h"
#include "layers/model.h"
#include "train/optimizer.h"

namespace linmoe {

class ProcessGroups;

struct StepResult {
  double loss = 0, lm_loss = 0, aux_loss = 0, z_loss = 0;
  double grad_norm = 0;
  std::vector<std::vector<double>> expert_load;  // [MoE layers of the whole model][E]
  // The data-parallel gradient reduction on this rank: buckets, and how many of them were
  // started while the backward was still running (the overlap).
  int grad_buckets = 0, grad_buckets_overlapped = 0;
};

class Engine {
 public:
  // groups: null on one rank (the layout of cfg.parallel must then be all 1s).
  Engine(const Config& cfg, Backend& backend, const ProcessGroups* groups);
  ~Engine();

  Model& model() { return *model_; }
  const Config& config() const { return cfg_; }
  // The parameters on one rank: tp = cp = dp = pp = 1.
  bool single_rank() const { return groups_ == nullptr; }

  // One optimizer step: the step's micro-batches for this rank come from next(); lr is the
  // scheduled learning rate, step counts from 1. UserError (collective, exit 3) when the loss or
  // the gradient is not finite.
  StepResult step(const std::function<Batch()>& next, double lr, std::int64_t step);
  // Mean lm loss over n micro-batches in all (replica r takes r, r + dp, ...; forward only;
  // collective), so every layout evaluates the same tokens.
  double evaluate(const std::function<Batch()>& next, int n);

  // The optimizer's state tensors by name ("exp_avg", ...), written into `out` back to back,
  // each as the whole store's flat [padded_numel] (gathered over the data-parallel shards with
  // ZeRO; collective): state k of parameter i is at k·padded_numel + offset_of(i).
  std::vector<std::string> optimizer_state_names() const;
  void gather_optimizer_state(std::vector<float>& out);
  // The reverse: every rank keeps its range of the given whole-store vectors.
  void scatter_optimizer_state(const std::vector<std::vector<float>>& state);
  // The fp32 master weights as the whole store's flat [padded_numel] (gathered over the ZeRO
  // shards; collective), and the reverse. With fp32 weights these are the store's values.
  void gather_master_weights(std::vector<float>& out);
  void scatter_master_weights(const std::vector<float>& weights);
  // The dtype the model computes in: f32, or bf16 under train.precision bf16.
  DType compute_dtype() const { return dtype_; }
  // Whether this rank writes parameter i to checkpoints (and counts it in the gradient norm):
  // one copy of every slice across the data-parallel and tp replicas.
  bool owns(int i) const;

 private:
  struct Region;
  void run_micro_batches(const std::function<Batch()>& next, StepResult& r);
  void run_pipeline(const std::function<Batch()>& next, StepResult& r);
  int pipeline_slots() const;  // activation slots this stage needs (pp > 1)
  void add_losses(const MicroBatchLosses& l, StepResult& r);
  // The fp32 gradients the step reduces and applies: the store's own (fp32) or the main copy.
  Tensor grads() const;
  Tensor grad(int i) const;  // parameter i's slice of grads(), shaped
  // bf16: adds the micro-batch's gradients to the main copy and zeroes them (no-op in fp32).
  void accumulate_micro_batch_grads();
  void move_into_main(const Tensor& model_grad, const Tensor& main_grad);
  // The whole store's flat vector of the per-region tensors range_of(r) ([opt_end − opt_begin]
  // each), gathered over the ZeRO shards into `out` (collective).
  void gather_ranges(const std::function<Tensor(Region&)>& range_of, float* out);
  // The step's last backward: per parameter as the model finishes it (finish_parameter), and
  // bucket by bucket when all of a bucket's parameters are finished (launch).
  struct Bucket;
  void plan_buckets();
  void on_gradients_done(const std::vector<int>& params);
  void finish_parameter(int i);  // bf16: into the main gradients; tp-partial: summed over tp
  void launch(Bucket& b);
  // After the backward: what the hook has not done, the tied embedding, then waits for all.
  void reduce_gradients(StepResult& r);
  double gradient_norm_squared();
  void finish_losses(StepResult& r);
  // A view of `b`, (re)allocated once when too small: buffers reused from step to step.
  Tensor persistent(Buffer& b, DType dtype, const Shape& shape, const char* what);

  Config cfg_;
  Backend& backend_;
  const ProcessGroups* groups_;
  DType dtype_;
  std::unique_ptr<Model> model_;
  Buffer main_grads_;                             // [padded_numel] f32 under bf16
  std::vector<std::unique_ptr<Region>> regions_;  // dense, expert (when present)
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;              // per parameter; -1 when its region is not reduced
  std::vector<char> finished_;              // per parameter, in the step's last backward
  bool last_backward_ = false;              // the hook acts only then
  Buffer pipe_in_, pipe_grad_, tied_grad_;  // pipeline transfers, the tied copy's gradient
};

}  // namespace linmoe
