// The vector-decay family of the LSM wrapper (MODEL.md 3: gla, hgrn2): a decay per key
// channel, S_t = Diag(α_t) S_{t−1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t, on the backend's
// lsm_vector_decay core.
//   gla:   q = φ(x Wqᵀ), k = φ(x Wkᵀ), v = x Wvᵀ,
//          log α = logsigmoid(x W1ᵀ W2ᵀ + b) / 16   (W1 = gk_proj.0.weight [16, D],
//                                                     W2 = gk_proj.1.weight [H·Dk, 16], b its bias)
//   hgrn2: q = φ(x Wqᵀ), log α = logsigmoid(x Wfᵀ) (f_proj.weight), k = 1 − α = sigmoid(−x Wfᵀ)
//          (so f_proj gets gradient through both), v = x Wvᵀ; no output gate.
// The wrapper (layers/lsm_wrapper.h) adds the output norm, gate and projection.
//
// Tensor parallelism: gk_proj.0 is the one projection not split by heads; its gradient from
// this rank's heads is partial and will need the tensor-parallel all-reduce (as the input's).
#include <cstdint>
#include <memory>

#include "core/check.h"
#include "layers/lasp2.h"
#include "layers/linear.h"
#include "layers/lsm_wrapper.h"

namespace linmoe::lsm {
namespace {

constexpr i64 kGlaLowRank = 16;        // MODEL.md 3: gk_proj.0.weight [16, D]
constexpr double kGlaNormalizer = 16;  // MODEL.md 3: log α = logsigmoid(·)/16

struct VectorDecayCache : WrapperCache {
  Tensor q_pre;   // [B·T, H·Dk] x Wqᵀ
  Tensor k_pre;   // [B·T, H·Dk] gla: x Wkᵀ; hgrn2: f_pre = x Wfᵀ (both α and k come from it)
  Tensor v;       // [B·T, H·Dv] x Wvᵀ
  Tensor gk_low;  // [B·T, 16] gla: x W1ᵀ
  Tensor gk_pre;  // [B·T, H·Dk] gla: gk_low W2ᵀ + b
};

// The core's inputs derived from the cache (in scratch).
struct CoreInputs {
  Tensor q, k;       // [B·T, H·Dk]
  Tensor log_decay;  // [B·T, H·Dk]
};

class VectorDecayLsm final : public LsmWrapper {
 public:
  VectorDecayLsm(const ModelConfig& m, int layer, const ParameterStore& params)
      : LsmWrapper(m, layer, params), hgrn2_(m.lsm.type == LsmType::hgrn2) {
    LINMOE_CHECK(lsm_family(cfg_.type) == LsmFamily::vector_decay, "VectorDecayLsm for ",
                 lsm_type_name(cfg_.type));
    const Shape qk{heads_ * dk_, D_};
    if (hgrn2_) {
      LINMOE_CHECK(wg_ < 0, prefix_, "hgrn2 has no output gate (MODEL.md 3)");
      wk_ = param_index(params, "f_proj.weight", qk);
    } else {
      wk_ = param_index(params, "k_proj.weight", qk);
      w_gk0_ = param_index(params, "gk_proj.0.weight", {kGlaLowRank, D_});
      w_gk1_ = param_index(params, "gk_proj.1.weight", {heads_ * dk_, kGlaLowRank});
      b_gk1_ = param_index(params, "gk_proj.1.bias", {heads_ * dk_});
    }
  }

 private:
  std::unique_ptr<WrapperCache> make_cache() const override {
    return std::make_unique<VectorDecayCache>();
  }

  void mix_forward(LayerContext& ctx, WrapperCache& wc) override {
    auto& c = static_cast<VectorDecayCache&>(wc);
    const i64 N = c.B * c.T, H = heads_;
    c.q_pre = ctx.save({N, H * dk_});  // [B·T, H·Dk]
    c.k_pre = ctx.save({N, H * dk_});  // [B·T, H·Dk]
    c.v = ctx.save({N, H * dv_});      // [B·T, H·Dv]
    linear_forward(ctx, c.x, ctx.param(wq_), Tensor{}, c.q_pre);
    linear_forward(ctx, c.x, ctx.param(wk_), Tensor{}, c.k_pre);
    linear_forward(ctx, c.x, ctx.param(wv_), Tensor{}, c.v);
    if (!hgrn2_) {
      c.gk_low = ctx.save({N, kGlaLowRank});  // [B·T, 16]
      c.gk_pre = ctx.save({N, H * dk_});      // [B·T, H·Dk]
      linear_forward(ctx, c.x, ctx.param(w_gk0_), Tensor{}, c.gk_low);
      linear_forward(ctx, c.gk_low, ctx.param(w_gk1_), ctx.param(b_gk1_), c.gk_pre);
    }
    const CoreInputs in = core_inputs(ctx, c);
    auto core = [&](const Tensor& initial_state, const Tensor& final_state) {
      ctx.backend.lsm_vector_decay_forward(heads4(c, in.q, dk_), heads4(c, in.k, dk_),
                                           heads4(c, c.v, dv_), heads4(c, in.log_decay, dk_),
                                           scale(), cfg_.chunk_size, initial_state,
                                           heads4(c, c.o_core, dv_), final_state);
    };
    if (lasp2::enabled(ctx)) {
      // P_r = exp(Σ_t log α_t) per (b, h), a Dk-vector.
      const lasp2::StateDims d = state_dims(c, lasp2::Transition::vector);
      c.transition = ctx.saved.allocate(stat_dtype(ctx.dtype), d.transition_shape());
      lasp2::decay_transition(ctx, in.log_decay.reshape({c.B, c.T, heads_ * dk_}), c.transition);
      c.initial_state = lasp2::incoming_state(ctx, d, c.transition, core);
    }
    core(c.initial_state, Tensor{});
  }

  void mix_backward(LayerContext& ctx, WrapperCache& wc, const Tensor& d_core,
                    const Tensor& dx) override {
    auto& c = static_cast<VectorDecayCache&>(wc);
    Backend& be = ctx.backend;
    const i64 N = c.B * c.T, H = heads_;
    const CoreInputs in = core_inputs(ctx, c);
    const Tensor dq = ctx.temp({N, H * dk_}), dk = ctx.temp({N, H * dk_});
    const Tensor dv = ctx.temp({N, H * dv_}), d_ld = ctx.temp({N, H * dk_});
    auto core = [&](const Tensor& d_final_state, const Tensor& d_initial_state) {
      be.lsm_vector_decay_backward(heads4(c, in.q, dk_), heads4(c, in.k, dk_), heads4(c, c.v, dv_),
                                   heads4(c, in.log_decay, dk_), scale(), cfg_.chunk_size,
                                   c.initial_state, heads4(c, d_core, dv_), d_final_state,
                                   heads4(c, dq, dk_), heads4(c, dk, dk_), heads4(c, dv, dv_),
                                   heads4(c, d_ld, dk_), d_initial_state);
    };
    const Tensor d_final =
        lasp2::enabled(ctx) ? lasp2::outgoing_state_gradient(
                                  ctx, state_dims(c, lasp2::Transition::vector), c.transition, core)
                            : Tensor{};
    core(d_final, Tensor{});

    // q = φ(x Wqᵀ), v = x Wvᵀ.
    linear_backward(ctx, c.x, ctx.param(wq_), feature_backward(ctx, c.q_pre, dq), dx, true,
                    ctx.grad(wq_), Tensor{});
    linear_backward(ctx, c.x, ctx.param(wv_), dv, dx, true, ctx.grad(wv_), Tensor{});

    if (hgrn2_) {
      // f = x Wfᵀ: log α = logsigmoid(f), k = sigmoid(−f):
      // d f = logsigmoid'(f) ⊙ d log α − sigmoid'(f) ⊙ dk.
      const Tensor d_f = ctx.temp({N, H * dk_});
      be.activation_backward(Activation::logsigmoid, c.k_pre, d_ld, d_f, false);
      be.scale(dk, -1.0);
      be.activation_backward(Activation::sigmoid, c.k_pre, dk, d_f, true);
      linear_backward(ctx, c.x, ctx.param(wk_), d_f, dx, true, ctx.grad(wk_), Tensor{});
      return;
    }
    // gla: k = φ(x Wkᵀ).
    linear_backward(ctx, c.x, ctx.param(wk_), feature_backward(ctx, c.k_pre, dk), dx, true,
                    ctx.grad(wk_), Tensor{});
    // log α = logsigmoid(gk_pre)/16, gk_pre = gk_low W2ᵀ + b, gk_low = x W1ᵀ.
    be.scale(d_ld, 1.0 / kGlaNormalizer);
    const Tensor d_gk = ctx.temp({N, H * dk_}), d_low = ctx.temp({N, kGlaLowRank});
    be.activation_backward(Activation::logsigmoid, c.gk_pre, d_ld, d_gk, false);
    linear_backward(ctx, c.gk_low, ctx.param(w_gk1_), d_gk, d_low, false, ctx.grad(w_gk1_),
                    ctx.grad(b_gk1_));
    linear_backward(ctx, c.x, ctx.param(w_gk0_), d_low, dx, true, ctx.grad(w_gk0_), Tensor{});
  }

  // q, k and log α from the saved projections (MODEL.md 3), in scratch.
  CoreInputs core_inputs(LayerContext& ctx, const VectorDecayCache& c) const {
    Backend& be = ctx.backend;
    CoreInputs in;
    in.q = feature(ctx, c.q_pre);
    in.log_decay = ctx.temp(c.k_pre.shape);
    if (hgrn2_) {
      // log α = logsigmoid(f); k = 1 − α = sigmoid(−f), exact where α is close to 1.
      be.activation_forward(Activation::logsigmoid, c.k_pre, in.log_decay);
      const Tensor neg_f = ctx.temp(c.k_pre.shape);
      be.copy(c.k_pre, neg_f);
      be.scale(neg_f, -1.0);
      in.k = ctx.temp(c.k_pre.shape);
      be.activation_forward(Activation::sigmoid, neg_f, in.k);
    } else {
      in.k = feature(ctx, c.k_pre);
      be.activation_forward(Activation::logsigmoid, c.gk_pre, in.log_decay);
      be.scale(in.log_decay, 1.0 / kGlaNormalizer);
    }
    return in;
  }

  bool hgrn2_;
  int wk_ = -1;  // k_proj (gla) or f_proj (hgrn2)
  int w_gk0_ = -1, w_gk1_ = -1, b_gk1_ = -1;
};

}  // namespace

std::unique_ptr<Sublayer> make_vector_decay_lsm(const ModelConfig& m, int layer,
                                                const ParameterStore& params) {
  return std::make_unique<VectorDecayLsm>(m, layer, params);
}

}  // namespace linmoe::lsm
