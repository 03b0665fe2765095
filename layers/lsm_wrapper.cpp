// The LSM wrapper's shared part (layers/lsm_wrapper.h, MODEL.md 3): head geometry, per-head
// output RMSNorm, output gate and output projection around a family's mixing.
#include "layers/lsm_wrapper.h"

#include <cmath>

#include "core/check.h"
#include "layers/linear.h"
#include "layers/lsm_variants.h"

namespace linmoe::lsm {

namespace {
constexpr double kOutputNormEps = 1e-5;  // MODEL.md 3: o_norm's eps, not model.norm_eps
}  // namespace

// The o_proj input and the pieces its gradient needs.
struct LsmWrapper::OutputInput {
  Tensor o;       // [B·T, H·Dv] o_n ⊙ gate (or o_n)
  Tensor normed;  // [B·T, H·Dv] o_n (or o_core)
  Tensor gate;    // [B·T, H·Dv] silu(g_pre), undefined without the gate
};

LsmWrapper::LsmWrapper(const ModelConfig& m, int layer, const ParameterStore& params)
    : cfg_(m.lsm),
      phi_(feature_map_activation(m.lsm.feature_map)),
      prefix_("layers." + std::to_string(layer) + ".mixer.") {
  LINMOE_CHECK(cfg_.type != LsmType::mamba2, "the LSM wrapper does not serve mamba2");
  wq_ = params.index(prefix_ + "q_proj.weight");
  // This rank's heads: the rows of its q_proj slice (all of them on one rank).
  dk_ = cfg_.head_dim_k;
  dv_ = cfg_.head_dim_v;
  const ParamSpec& q = params.spec(wq_);
  LINMOE_CHECK(q.shape.ndim() == 2 && q.shape[0] % dk_ == 0 && q.offset[0] % dk_ == 0, prefix_,
               "q_proj slice does not hold whole heads: ", q.shape.str());
  heads_ = q.shape[0] / dk_;
  head_offset_ = q.offset[0] / dk_;
  D_ = q.shape[1];
  wv_ = param_index(params, "v_proj.weight", {heads_ * dv_, D_});
  wo_ = param_index(params, "o_proj.weight", {D_, heads_ * dv_});
  if (cfg_.output_gate) wg_ = param_index(params, "g_proj.weight", {heads_ * dv_, D_});
  if (cfg_.output_norm) wnorm_ = param_index(params, "o_norm.weight", {dv_});
}

int LsmWrapper::param_index(const ParameterStore& params, const std::string& name,
                            const Shape& shape) const {
  const int i = params.index(prefix_ + name);
  LINMOE_CHECK(params.spec(i).shape == shape, prefix_, name, " is ", params.spec(i).shape.str(),
               ", expected ", shape.str(), " for ", heads_, " local heads");
  return i;
}

double LsmWrapper::scale() const {
  return 1.0 / std::sqrt(static_cast<double>(dk_));
}

Tensor LsmWrapper::heads4(const WrapperCache& c, const Tensor& t, i64 d) {
  return t.reshape({c.B, c.T, t.size(1) / d, d});
}

Tensor LsmWrapper::activate(LayerContext& ctx, Activation f, const Tensor& pre) {
  if (f == Activation::identity) return pre;
  const Tensor out = ctx.temp(pre.shape);
  ctx.backend.activation_forward(f, pre, out);
  return out;
}

Tensor LsmWrapper::activate_backward(LayerContext& ctx, Activation f, const Tensor& pre,
                                     const Tensor& d_post) {
  if (f == Activation::identity) return d_post;
  const Tensor out = ctx.temp(pre.shape);
  ctx.backend.activation_backward(f, pre, d_post, out, false);
  return out;
}

std::unique_ptr<Sublayer::Cache> LsmWrapper::forward(LayerContext& ctx, const Tensor& x,
                                                     const Tensor& y, SublayerStats* /*stats*/) {
  LINMOE_CHECK(x.ndim() == 3 && x.size(2) == D_, "LSM mixer input must be [B, T, ", D_, "], got ",
               x.str());
  std::unique_ptr<WrapperCache> c = make_cache();
  const i64 B = x.size(0), T = x.size(1), N = B * T, H = heads_;
  c->B = B;
  c->T = T;
  c->x = ctx.save(x.shape);  // [B, T, D]
  ctx.backend.copy(x, c->x);
  c->initial_state = Tensor{};  // set by mix_forward under context parallelism (S_in)

  ScratchScope scope(ctx.scratch);
  c->o_core = ctx.save({N, H * dv_});  // [B·T, H·Dv]
  mix_forward(ctx, *c);

  // o = RMSNorm_h(o_core) ⊙ silu(x Wgᵀ), out = o Woᵀ (MODEL.md 3).
  if (wnorm_ >= 0) c->rstd = ctx.saved.allocate(stat_dtype(ctx.dtype), {N * H});
  if (wg_ >= 0) {
    c->g_pre = ctx.save({N, H * dv_});  // [B·T, H·Dv]
    linear_forward(ctx, c->x, ctx.param(wg_), Tensor{}, c->g_pre);
  }
  const Tensor o = output_input(ctx, *c, /*recompute=*/false).o;  // [B·T, H·Dv]
  linear_forward(ctx, o, ctx.param(wo_), Tensor{}, y);
  return c;
}

void LsmWrapper::backward(LayerContext& ctx, Cache& cache, const Tensor& dy, const Tensor& dx) {
  auto& c = dynamic_cast<WrapperCache&>(cache);
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
                         ctx.param(wnorm_), c.rstd, d_core.reshape({N * H, dv_}), ctx.grad(wnorm_));
  }
  mix_backward(ctx, c, d_core, dx);
}

// The o_proj input from the saved core output: o_n = RMSNorm(o_core) per head, o = o_n ⊙
// silu(g_pre). Temporaries in scratch (the caller's scope). In forward the norm writes the saved
// rstd; the backward recompute writes a scratch copy and leaves the saved one alone.
LsmWrapper::OutputInput LsmWrapper::output_input(LayerContext& ctx, WrapperCache& c,
                                                 bool recompute) const {
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

}  // namespace linmoe::lsm
