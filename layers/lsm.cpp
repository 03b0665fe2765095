// The LSM mixer ('L') of MODEL.md 3: make_lsm picks the kernel family of lsm.type, and this
// file holds the scalar-decay family of the wrapper (linear_attention, lightning, retention):
// q = φ(x Wqᵀ), k = φ(x Wkᵀ), v = x Wvᵀ and one constant decay per head, the scalar-decay core.
// The wrapper around it (output norm, gate, projection, head geometry) is layers/lsm_wrapper.*;
// gla/hgrn2 are layers/lsm_vector_decay.cpp, deltanet/gated_deltanet layers/lsm_delta_rule.cpp,
// mamba2 its own block (layers/mamba2.cpp).
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/check.h"
#include "layers/lasp2.h"
#include "layers/linear.h"
#include "layers/lsm_variants.h"
#include "layers/lsm_wrapper.h"
#include "layers/sublayers.h"

namespace linmoe {
namespace lsm {
namespace {

struct ConstantDecayCache : WrapperCache {
  Tensor q_pre, k_pre;  // [B·T, H·Dk] projections before φ
  Tensor v;             // [B·T, H·Dv]
  Tensor log_decay;     // [B, T, H]
};

class ConstantDecayLsm final : public LsmWrapper {
 public:
  ConstantDecayLsm(const ModelConfig& m, int layer, const ParameterStore& params)
      : LsmWrapper(m, layer, params) {
    LINMOE_CHECK(has_constant_decay(cfg_.type), "ConstantDecayLsm for ", lsm_type_name(cfg_.type));
    wk_ = param_index(params, "k_proj.weight", {heads_ * dk_, D_});

    // log A_h of the local heads from their GLOBAL indices (MODEL.md 3).
    head_log_decay_.resize(static_cast<std::size_t>(heads_));
    zero_decay_ = true;
    for (i64 h = 0; h < heads_; ++h) {
      const double g =
          constant_log_decay(cfg_.type, static_cast<int>(head_offset_ + h), cfg_.num_heads);
      head_log_decay_[static_cast<std::size_t>(h)] = g;
      zero_decay_ = zero_decay_ && g == 0.0;
    }
  }

 private:
  std::unique_ptr<WrapperCache> make_cache() const override {
    return std::make_unique<ConstantDecayCache>();
  }

  void mix_forward(LayerContext& ctx, WrapperCache& wc) override {
    auto& c = static_cast<ConstantDecayCache&>(wc);
    const i64 N = c.B * c.T, H = heads_;
    c.q_pre = ctx.save({N, H * dk_});  // [B·T, H·Dk]
    c.k_pre = ctx.save({N, H * dk_});  // [B·T, H·Dk]
    c.v = ctx.save({N, H * dv_});      // [B·T, H·Dv]
    linear_forward(ctx, c.x, ctx.param(wq_), Tensor{}, c.q_pre);
    linear_forward(ctx, c.x, ctx.param(wk_), Tensor{}, c.k_pre);
    linear_forward(ctx, c.x, ctx.param(wv_), Tensor{}, c.v);
    c.log_decay = ctx.save({c.B, c.T, H});  // [B, T, H]
    fill_log_decay(ctx, c.log_decay);

    const Tensor q = feature(ctx, c.q_pre), k = feature(ctx, c.k_pre);  // [B·T, H·Dk]
    auto core = [&](const Tensor& initial_state, const Tensor& final_state) {
      ctx.backend.lsm_scalar_decay_forward(
          heads4(c, q, dk_), heads4(c, k, dk_), heads4(c, c.v, dv_), c.log_decay, scale(),
          cfg_.chunk_size, initial_state, heads4(c, c.o_core, dv_), final_state);
    };
    if (lasp2::enabled(ctx)) {
      // P_r = exp(Σ_t log A_h) per (b, h); nothing for linear_attention.
      const lasp2::StateDims d = dims(c);
      if (d.kind != lasp2::Transition::identity) {
        c.transition = ctx.saved.allocate(stat_dtype(ctx.dtype), d.transition_shape());
        lasp2::decay_transition(ctx, c.log_decay, c.transition);
      }
      c.initial_state = lasp2::incoming_state(ctx, d, c.transition, core);
    }
    core(c.initial_state, Tensor{});
  }

  void mix_backward(LayerContext& ctx, WrapperCache& wc, const Tensor& d_core,
                    const Tensor& dx) override {
    auto& c = static_cast<ConstantDecayCache&>(wc);
    const i64 N = c.B * c.T, H = heads_;
    // The decays are constants, so their gradient is not asked for.
    const Tensor q = feature(ctx, c.q_pre), k = feature(ctx, c.k_pre);  // [B·T, H·Dk]
    const Tensor dq = ctx.temp({N, H * dk_}), dk = ctx.temp({N, H * dk_});
    const Tensor dv = ctx.temp({N, H * dv_});
    auto core = [&](const Tensor& d_final_state, const Tensor& d_initial_state) {
      ctx.backend.lsm_scalar_decay_backward(
          heads4(c, q, dk_), heads4(c, k, dk_), heads4(c, c.v, dv_), c.log_decay, scale(),
          cfg_.chunk_size, c.initial_state, heads4(c, d_core, dv_), d_final_state,
          heads4(c, dq, dk_), heads4(c, dk, dk_), heads4(c, dv, dv_), Tensor{}, d_initial_state);
    };
    const Tensor d_final = lasp2::enabled(ctx)
                               ? lasp2::outgoing_state_gradient(ctx, dims(c), c.transition, core)
                               : Tensor{};
    core(d_final, Tensor{});

    // q = φ(x Wqᵀ), k = φ(x Wkᵀ), v = x Wvᵀ.
    linear_backward(ctx, c.x, ctx.param(wq_), feature_backward(ctx, c.q_pre, dq), dx, true,
                    ctx.grad(wq_), Tensor{});
    linear_backward(ctx, c.x, ctx.param(wk_), feature_backward(ctx, c.k_pre, dk), dx, true,
                    ctx.grad(wk_), Tensor{});
    linear_backward(ctx, c.x, ctx.param(wv_), dv, dx, true, ctx.grad(wv_), Tensor{});
  }

  lasp2::StateDims dims(const WrapperCache& c) const {
    return state_dims(c, zero_decay_ ? lasp2::Transition::identity : lasp2::Transition::scalar);
  }

  // log_decay[b, t, h] = log A_h (MODEL.md 3): ones[B·T, 1] · logA[1, H], as a GEMM so it runs
  // on any device.
  void fill_log_decay(LayerContext& ctx, const Tensor& log_decay) {
    if (zero_decay_) {
      ctx.backend.fill(log_decay, 0.0);
      return;
    }
    ScratchScope scope(ctx.scratch);
    const i64 N = log_decay.size(0) * log_decay.size(1), H = heads_;
    const Tensor host(head_log_decay_.data(), DType::f64, Device::cpu, Shape{1, H});
    const Tensor per_head = ctx.temp({1, H}), ones = ctx.temp({N, 1});
    ctx.backend.copy(host, per_head);
    ctx.backend.fill(ones, 1.0);
    ctx.backend.gemm(ones, false, per_head, false, log_decay.reshape({N, H}));
  }

  int wk_ = -1;
  std::vector<double> head_log_decay_;  // [H] log A_h of the local heads
  bool zero_decay_ = false;             // linear_attention: every log A_h is 0
};

}  // namespace
}  // namespace lsm

std::unique_ptr<Sublayer> make_lsm(const ModelConfig& m, int layer, const ParameterStore& params) {
  switch (lsm_family(m.lsm.type)) {
    case LsmFamily::scalar_decay:
      if (m.lsm.type == LsmType::mamba2) return make_mamba2(m, layer, params);
      return std::make_unique<lsm::ConstantDecayLsm>(m, layer, params);
    case LsmFamily::vector_decay:
      return lsm::make_vector_decay_lsm(m, layer, params);
    case LsmFamily::delta_rule:
      return lsm::make_delta_rule_lsm(m, layer, params);
  }
  throw UserError(str_cat("model.lsm.type ", lsm_type_name(m.lsm.type), " is unknown"));
}

}  // namespace linmoe
