// The LSM mixer ('L') of MODEL.md 3 for the constant-decay variants (linear_attention, lightning,
// retention): projections, feature map, the scalar-decay core per head, per-head output norm,
// output gate, output projection. mamba2 is its own block (layers/mamba2.cpp).
//
// Heads are handled as a contiguous range [head_offset, head_offset + H) of the global heads:
// the range comes from this rank's slice of q_proj, so tensor-parallel head splits only change
// the slices in the store (plus the row-parallel reduction after o_proj, added with tp). The
// core takes an initial state and can return a final state: that is where context parallelism
// (LASP-2, PARALLEL.md) plugs in; on one rank the initial state is zero (undefined).
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "layers/linear.h"
#include "layers/lsm_variants.h"
#include "layers/sublayers.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

constexpr double kOutputNormEps = 1e-5;  // MODEL.md 3: o_norm's eps, not model.norm_eps

struct LsmCache : Sublayer::Cache {
  i64 B = 0, T = 0;
  Tensor x;              // [B, T, D] the mixer input (copied: the caller's buffer may be reused)
  Tensor q_pre, k_pre;   // [B·T, H·Dk] projections before φ
  Tensor v;              // [B·T, H·Dv]
  Tensor log_decay;      // [B, T, H]
  Tensor initial_state;  // [B, H, Dk, Dv] stat dtype, or undefined (zeros)
  Tensor o_core;         // [B·T, H·Dv] core output, before the norm
  Tensor rstd;           // [B·T·H] stat, when output_norm
  Tensor g_pre;          // [B·T, H·Dv] gate projection before silu, when output_gate
};

class ConstantDecayLsm final : public Sublayer {
 public:
  ConstantDecayLsm(const ModelConfig& m, int layer, const ParameterStore& params)
      : cfg_(m.lsm), phi_(feature_map_activation(m.lsm.feature_map)) {
    LINMOE_CHECK(has_constant_decay(cfg_.type), "ConstantDecayLsm for ", lsm_type_name(cfg_.type));
    const std::string p = "layers." + std::to_string(layer) + ".mixer.";
    wq_ = params.index(p + "q_proj.weight");
    wk_ = params.index(p + "k_proj.weight");
    wv_ = params.index(p + "v_proj.weight");
    wo_ = params.index(p + "o_proj.weight");
    if (cfg_.output_gate) wg_ = params.index(p + "g_proj.weight");
    if (cfg_.output_norm) wnorm_ = params.index(p + "o_norm.weight");

    // This rank's heads: the rows of its q_proj slice (all of them on one rank).
    dk_ = cfg_.head_dim_k;
    dv_ = cfg_.head_dim_v;
    const ParamSpec& q = params.spec(wq_);
    LINMOE_CHECK(q.shape[0] % dk_ == 0 && q.offset[0] % dk_ == 0, p,
                 "q_proj slice does not hold whole heads: ", q.shape.str());
    heads_ = q.shape[0] / dk_;
    head_offset_ = q.offset[0] / dk_;
    D_ = q.shape[1];
    LINMOE_CHECK(params.spec(wk_).shape == q.shape, p, "k_proj.weight ",
                 params.spec(wk_).shape.str(), " differs from q_proj ", q.shape.str());
    LINMOE_CHECK(params.spec(wv_).shape == (Shape{heads_ * dv_, D_}), p, "v_proj.weight ",
                 params.spec(wv_).shape.str());
    LINMOE_CHECK(params.spec(wo_).shape == (Shape{D_, heads_ * dv_}), p, "o_proj.weight ",
                 params.spec(wo_).shape.str());
    if (wg_ >= 0) {
      LINMOE_CHECK(params.spec(wg_).shape == (Shape{heads_ * dv_, D_}), p, "g_proj.weight ",
                   params.spec(wg_).shape.str());
    }
    if (wnorm_ >= 0) {
      LINMOE_CHECK(params.spec(wnorm_).shape == (Shape{dv_}), p, "o_norm.weight ",
                   params.spec(wnorm_).shape.str());
    }

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

  std::unique_ptr<Cache> forward(LayerContext& ctx, const Tensor& x, const Tensor& y,
                                 SublayerStats* /*stats*/) override {
    LINMOE_CHECK(x.ndim() == 3 && x.size(2) == D_, "LSM mixer input must be [B, T, ", D_, "], got ",
                 x.str());
    Backend& be = ctx.backend;
    auto c = std::make_unique<LsmCache>();
    const i64 B = x.size(0), T = x.size(1), N = B * T, H = heads_;
    c->B = B;
    c->T = T;
    c->x = ctx.save(x.shape);  // [B, T, D]
    be.copy(x, c->x);

    c->q_pre = ctx.save({N, H * dk_});  // [B·T, H·Dk]
    c->k_pre = ctx.save({N, H * dk_});  // [B·T, H·Dk]
    c->v = ctx.save({N, H * dv_});      // [B·T, H·Dv]
    linear_forward(ctx, c->x, ctx.param(wq_), Tensor{}, c->q_pre);
    linear_forward(ctx, c->x, ctx.param(wk_), Tensor{}, c->k_pre);
    linear_forward(ctx, c->x, ctx.param(wv_), Tensor{}, c->v);
    c->log_decay = ctx.save({B, T, H});  // [B, T, H]
    fill_log_decay(ctx, c->log_decay);
    c->initial_state = Tensor{};  // context parallelism: the state from the previous rank

    ScratchScope scope(ctx.scratch);
    const Tensor q = feature(ctx, c->q_pre), k = feature(ctx, c->k_pre);  // [B·T, H·Dk]
    c->o_core = ctx.save({N, H * dv_});                                   // [B·T, H·Dv]
    core_forward(ctx, *c, q, k, c->o_core, Tensor{});

    // o = RMSNorm_h(o_core) * silu(x Wgᵀ), out = o Woᵀ (MODEL.md 3).
    if (wnorm_ >= 0) c->rstd = ctx.saved.allocate(stat_dtype(ctx.dtype), {N * H});
    if (wg_ >= 0) {
      c->g_pre = ctx.save({N, H * dv_});  // [B·T, H·Dv]
      linear_forward(ctx, c->x, ctx.param(wg_), Tensor{}, c->g_pre);
    }
    const Tensor o = output_input(ctx, *c, /*recompute=*/false).o;  // [B·T, H·Dv]
    linear_forward(ctx, o, ctx.param(wo_), Tensor{}, y);
    return c;
  }

  void backward(LayerContext& ctx, Cache& cache, const Tensor& dy, const Tensor& dx) override {
    auto& c = dynamic_cast<LsmCache&>(cache);
    Backend& be = ctx.backend;
    const i64 N = c.B * c.T, H = heads_;
    ScratchScope scope(ctx.scratch);

    // out = o Woᵀ; o recomputed from the saved core output and gate input.
    const OutputInput oi = output_input(ctx, c, /*recompute=*/true);
    const Tensor d_o = ctx.temp({N, H * dv_});  // [B·T, H·Dv]
    linear_backward(ctx, oi.o, ctx.param(wo_), dy, d_o, false, ctx.grad(wo_), Tensor{});

    // o = o_n ⊙ silu(g_pre): d o_n = d_o ⊙ silu(g_pre), d g_pre = silu'(g_pre) ⊙ d_o ⊙ o_n.
    Tensor d_on = d_o;  // [B·T, H·Dv]
    if (wg_ >= 0) {
      d_on = ctx.temp({N, H * dv_});
      be.mul(d_o, oi.gate, d_on);
      const Tensor d_gate = ctx.temp({N, H * dv_}), d_g = ctx.temp({N, H * dv_});
      be.mul(d_o, oi.normed, d_gate);
      be.activation_backward(Activation::silu, c.g_pre, d_gate, d_g, false);
      linear_backward(ctx, c.x, ctx.param(wg_), d_g, dx, true, ctx.grad(wg_), Tensor{});
    }

    // o_n = RMSNorm(o_core) over each head's Dv values (one weight for all heads).
    Tensor d_core = d_on;  // [B·T, H·Dv]
    if (wnorm_ >= 0) {
      d_core = ctx.temp({N, H * dv_});
      be.rms_norm_backward(d_on.reshape({N * H, dv_}), c.o_core.reshape({N * H, dv_}),
                           ctx.param(wnorm_), c.rstd, d_core.reshape({N * H, dv_}),
                           ctx.grad(wnorm_));
    }

    // The core. The decays are constants, so their gradient is not asked for; the initial-state
    // gradient is what context parallelism will send to the previous rank.
    const Tensor q = feature(ctx, c.q_pre), k = feature(ctx, c.k_pre);  // [B·T, H·Dk]
    const Tensor dq = ctx.temp({N, H * dk_}), dk = ctx.temp({N, H * dk_});
    const Tensor dv = ctx.temp({N, H * dv_});
    be.lsm_scalar_decay_backward(heads4(c, q, dk_), heads4(c, k, dk_), heads4(c, c.v, dv_),
                                 c.log_decay, scale(), cfg_.chunk_size, c.initial_state,
                                 heads4(c, d_core, dv_), Tensor{}, heads4(c, dq, dk_),
                                 heads4(c, dk, dk_), heads4(c, dv, dv_), Tensor{}, Tensor{});

    // q = φ(x Wqᵀ), k = φ(x Wkᵀ), v = x Wvᵀ.
    linear_backward(ctx, c.x, ctx.param(wq_), feature_backward(ctx, c.q_pre, dq), dx, true,
                    ctx.grad(wq_), Tensor{});
    linear_backward(ctx, c.x, ctx.param(wk_), feature_backward(ctx, c.k_pre, dk), dx, true,
                    ctx.grad(wk_), Tensor{});
    linear_backward(ctx, c.x, ctx.param(wv_), dv, dx, true, ctx.grad(wv_), Tensor{});
  }

 private:
  // The o_proj input and the pieces its gradient needs.
  struct OutputInput {
    Tensor o;       // [B·T, H·Dv] o_n ⊙ gate (or o_n)
    Tensor normed;  // [B·T, H·Dv] o_n (or o_core)
    Tensor gate;    // [B·T, H·Dv] silu(g_pre), undefined without the gate
  };

  double scale() const { return 1.0 / std::sqrt(static_cast<double>(dk_)); }

  // [B·T, H·d] -> [B, T, H, d]: the projection output viewed per head.
  static Tensor heads4(const LsmCache& c, const Tensor& t, i64 d) {
    return t.reshape({c.B, c.T, t.size(1) / d, d});
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

  // φ(pre) into scratch; the identity map returns `pre` itself.
  Tensor feature(LayerContext& ctx, const Tensor& pre) const {
    if (phi_ == Activation::identity) return pre;
    const Tensor out = ctx.temp(pre.shape);
    ctx.backend.activation_forward(phi_, pre, out);
    return out;
  }

  // d pre = φ'(pre) ⊙ d_post, into scratch (d_post itself for the identity).
  Tensor feature_backward(LayerContext& ctx, const Tensor& pre, const Tensor& d_post) const {
    if (phi_ == Activation::identity) return d_post;
    const Tensor out = ctx.temp(pre.shape);
    ctx.backend.activation_backward(phi_, pre, d_post, out, false);
    return out;
  }

  // o_core = Core(q, k, v; log_decay) per head, from c.initial_state; final_state [B, H, Dk, Dv]
  // (stat dtype) receives the last state when defined (context parallelism).
  void core_forward(LayerContext& ctx, const LsmCache& c, const Tensor& q, const Tensor& k,
                    const Tensor& o_core, const Tensor& final_state) const {
    ctx.backend.lsm_scalar_decay_forward(heads4(c, q, dk_), heads4(c, k, dk_), heads4(c, c.v, dv_),
                                         c.log_decay, scale(), cfg_.chunk_size, c.initial_state,
                                         heads4(c, o_core, dv_), final_state);
  }

  // The o_proj input from the saved core output: o_n = RMSNorm(o_core) per head, o = o_n ⊙
  // silu(g_pre). Temporaries in scratch (the caller's scope). In forward the norm writes the
  // saved rstd; the backward recompute writes a scratch copy and leaves the saved one alone.
  OutputInput output_input(LayerContext& ctx, LsmCache& c, bool recompute) const {
    Backend& be = ctx.backend;
    const i64 N = c.B * c.T, H = heads_;
    OutputInput r;
    r.normed = c.o_core;
    if (wnorm_ >= 0) {
      r.normed = ctx.temp({N, H * dv_});
      const Tensor rstd = recompute ? ctx.temp(stat_dtype(ctx.dtype), {N * H}) : c.rstd;
      be.rms_norm_forward(c.o_core.reshape({N * H, dv_}), ctx.param(wnorm_), kOutputNormEps,
                          r.normed.reshape({N * H, dv_}), rstd);
    }
    r.o = r.normed;
    if (wg_ >= 0) {
      r.gate = ctx.temp({N, H * dv_});
      be.activation_forward(Activation::silu, c.g_pre, r.gate);
      r.o = ctx.temp({N, H * dv_});
      be.mul(r.normed, r.gate, r.o);
    }
    return r;
  }

  LsmConfig cfg_;
  Activation phi_;
  int wq_ = -1, wk_ = -1, wv_ = -1, wg_ = -1, wnorm_ = -1, wo_ = -1;  // parameter indices
  i64 dk_ = 0, dv_ = 0, D_ = 0;
  i64 heads_ = 0;                       // local heads
  i64 head_offset_ = 0;                 // global index of the first local head (tensor parallelism)
  std::vector<double> head_log_decay_;  // [H] log A_h of the local heads
  bool zero_decay_ = false;             // linear_attention: every log A_h is 0
};

}  // namespace

std::unique_ptr<Sublayer> make_lsm(const ModelConfig& m, int layer, const ParameterStore& params) {
  const LsmType t = m.lsm.type;
  if (t == LsmType::mamba2) return make_mamba2(m, layer, params);
  if (!has_constant_decay(t)) {
    throw UserError(str_cat("model.lsm.type = ", lsm_type_name(t),
                            ": not implemented yet (the vector-decay and delta-rule issue)"));
  }
  return std::make_unique<ConstantDecayLsm>(m, layer, params);
}

}  // namespace linmoe
