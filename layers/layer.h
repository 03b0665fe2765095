// What every layer of the network sees, and the shape of a sublayer (mixer or FFN).
//
// A forward pass saves what its backward needs in `saved` (kept until the micro-batch's
// backward is done) and takes temporaries from `scratch` (rewound before it returns). Backward
// ACCUMULATES into dx (the residual stream's gradient) and into the parameter gradients.
// Layers never branch on the device: they call ctx.backend and, later, the process groups.
#pragma once
#include <cstdint>
#include <memory>

#include "core/config.h"
#include "core/memory.h"
#include "core/parameter_store.h"
#include "kernels/ops.h"

namespace linmoe {

class ProcessGroups;

struct LayerContext {
  Backend& backend;
  ParameterStore& params;  // weights and their gradients
  Arena& saved;            // activations for backward, reset per micro-batch
  Arena& scratch;          // temporaries within one call
  DType dtype;             // activation dtype: the parameters' (f32; f64 in gradient checks)
  // Global position of this rank's first token in its sequences (context parallelism: RoPE,
  // causal offsets); 0 on one rank.
  std::int64_t position_offset = 0;
  // d(step loss)/d(this micro-batch's total loss): 1 / (micro-batches · data-parallel replicas).
  // Auxiliary losses scale their gradients by it (times their coefficient).
  double loss_scale = 1.0;
  const ProcessGroups* groups = nullptr;  // null: one rank

  Tensor param(int i) const { return params.param(i); }
  Tensor grad(int i) const { return params.grad(i); }
  Tensor save(const Shape& s) { return saved.allocate(dtype, s); }
  Tensor temp(const Shape& s) { return scratch.allocate(dtype, s); }
  Tensor temp(DType t, const Shape& s) { return scratch.allocate(t, s); }
};

// Rewinds the scratch arena when it goes out of scope.
class ScratchScope {
 public:
  explicit ScratchScope(Arena& a) : arena_(a), mark_(a.mark()) {}
  ~ScratchScope() { arena_.release(mark_); }
  ScratchScope(const ScratchScope&) = delete;
  ScratchScope& operator=(const ScratchScope&) = delete;

 private:
  Arena& arena_;
  Arena::Mark mark_;
};

// Statistics a sublayer reports per micro-batch (MoE: unscaled aux and z losses, expert load).
struct SublayerStats {
  double aux_loss = 0.0;
  double z_loss = 0.0;
  std::vector<double> expert_load;  // fraction of assignments per expert
};

// A mixer ('L' LSM or 'N' attention) or an FFN (MoE or dense): x [B, T, D] -> y [B, T, D].
class Sublayer {
 public:
  struct Cache {
    virtual ~Cache() = default;
  };
  virtual ~Sublayer() = default;
  // y is overwritten. The returned cache holds views into ctx.saved.
  virtual std::unique_ptr<Cache> forward(LayerContext& ctx, const Tensor& x, const Tensor& y,
                                         SublayerStats* stats) = 0;
  // dx += ∂L/∂x; parameter gradients +=.
  virtual void backward(LayerContext& ctx, Cache& cache, const Tensor& dy, const Tensor& dx) = 0;
};

}  // namespace linmoe
