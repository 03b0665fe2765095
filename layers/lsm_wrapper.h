// The LSM wrapper of MODEL.md 3, shared by every variant but mamba2 (internal to layers/):
//   [variant: projections, feature maps, gates] → o_h = Core(q_h, k_h, v_h, gates_h)
//   o_h = RMSNorm(o_h; o_norm.weight, eps 1e-5)   if lsm.output_norm
//   o   = concat_h(o_h) ⊙ silu(x Wgᵀ)             if lsm.output_gate
//   out = o Woᵀ
// The wrapper owns q_proj's head geometry, the output norm, gate and projection; each kernel
// family (layers/lsm.cpp: scalar decay; layers/lsm_vector_decay.cpp: gla, hgrn2;
// layers/lsm_delta_rule.cpp: deltanet, gated_deltanet) implements the part from the input to
// the core output and back.
//
// Heads are a contiguous range [head_offset, head_offset + H) of the global heads, read from
// this rank's slice of q_proj: tensor-parallel head splits only change the slices in the store
// (every per-head parameter is checked against the local H). The core takes an initial state
// (WrapperCache::initial_state) and the delta-rule convolutions a halo: that is where context
// parallelism (PARALLEL.md, LASP-2: layers/lasp2.h) plugs in; on one rank both are undefined
// (zeros).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "layers/lasp2.h"
#include "layers/layer.h"

namespace linmoe::lsm {

using i64 = std::int64_t;

// What the wrapper keeps for backward; each family extends it with its own activations.
struct WrapperCache : Sublayer::Cache {
  i64 B = 0, T = 0;
  Tensor x;              // [B, T, D] the mixer input (copied: the caller's buffer may be reused)
  Tensor initial_state;  // [B, H, Dk, Dv] stat dtype, or undefined (zeros): context parallelism
  Tensor transition;     // P_r of this piece (lasp2::StateDims), stat; undefined without cp
  Tensor o_core;         // [B·T, H·Dv] core output, before the norm
  Tensor rstd;           // [B·T·H] stat, when output_norm
  Tensor g_pre;          // [B·T, H·Dv] gate projection before silu, when output_gate
};

class LsmWrapper : public Sublayer {
 public:
  std::unique_ptr<Cache> forward(LayerContext& ctx, const Tensor& x, const Tensor& y,
                                 SublayerStats* stats) final;
  void backward(LayerContext& ctx, Cache& cache, const Tensor& dy, const Tensor& dx) final;

 protected:
  // Finds q_proj, v_proj, g_proj, o_norm, o_proj of `layer` and this rank's heads.
  LsmWrapper(const ModelConfig& m, int layer, const ParameterStore& params);

  // A fresh cache of the family's type.
  virtual std::unique_ptr<WrapperCache> make_cache() const = 0;
  // From c.x (saved) to c.o_core [B·T, H·Dv] (allocated by the wrapper); under context
  // parallelism (lasp2::enabled) it also sets c.transition and c.initial_state = S_in and runs
  // the core from it. Saves in ctx.saved what mix_backward needs. Temporaries in scratch (the
  // caller's scope).
  virtual void mix_forward(LayerContext& ctx, WrapperCache& c) = 0;
  // d_core = ∂L/∂o_core [B·T, H·Dv]: dx += ∂L/∂x, parameter gradients +=. Under context
  // parallelism the core backward also gets ∂L/∂S_out from the later pieces (lasp2).
  virtual void mix_backward(LayerContext& ctx, WrapperCache& c, const Tensor& d_core,
                            const Tensor& dx) = 0;

  // The index of parameter prefix_ + name, checked to have this rank's `shape`.
  int param_index(const ParameterStore& params, const std::string& name, const Shape& shape) const;

  // The core's state geometry for LASP-2 (layers/lasp2.h).
  lasp2::StateDims state_dims(const WrapperCache& c, lasp2::Transition kind) const {
    return lasp2::StateDims{c.B, heads_, dk_, dv_, kind};
  }

  // scale = 1/√d_k (MODEL.md 3: every wrapper variant).
  double scale() const;
  // [B·T, H·d] -> [B, T, H, d]: a projection output viewed per head.
  static Tensor heads4(const WrapperCache& c, const Tensor& t, i64 d);
  // f(pre) into scratch; the identity returns `pre` itself.
  static Tensor activate(LayerContext& ctx, Activation f, const Tensor& pre);
  // d pre = f'(pre) ⊙ d_post into scratch (d_post itself for the identity).
  static Tensor activate_backward(LayerContext& ctx, Activation f, const Tensor& pre,
                                  const Tensor& d_post);
  // φ = lsm.feature_map.
  Tensor feature(LayerContext& ctx, const Tensor& pre) const { return activate(ctx, phi_, pre); }
  Tensor feature_backward(LayerContext& ctx, const Tensor& pre, const Tensor& d_post) const {
    return activate_backward(ctx, phi_, pre, d_post);
  }

  LsmConfig cfg_;
  Activation phi_;
  std::string prefix_;                                      // "layers.{i}.mixer."
  int wq_ = -1, wv_ = -1, wg_ = -1, wnorm_ = -1, wo_ = -1;  // parameter indices
  i64 dk_ = 0, dv_ = 0, D_ = 0;
  i64 heads_ = 0;        // local heads
  i64 head_offset_ = 0;  // global index of the first local head (tensor parallelism)

 private:
  struct OutputInput;
  OutputInput output_input(LayerContext& ctx, WrapperCache& c, bool recompute) const;
};

// The families (MODEL.md 3 "Kernel families"); make_lsm picks one by lsm.type.
std::unique_ptr<Sublayer> make_vector_decay_lsm(const ModelConfig& m, int layer,
                                                const ParameterStore& params);
std::unique_ptr<Sublayer> make_delta_rule_lsm(const ModelConfig& m, int layer,
                                              const ParameterStore& params);

}  // namespace linmoe::lsm
