// The delta-rule family of the LSM wrapper (MODEL.md 3: deltanet, gated_deltanet) on the
// backend's lsm_delta_rule core:
//   S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,   o_t = scale · S_tᵀ q_t
//   q = L2norm(φ(conv_q(x Wqᵀ))), k = L2norm(φ(conv_k(x Wkᵀ))), v = silu(conv_v(x Wvᵀ)),
//   L2norm per head over d_k (u/sqrt(Σu² + 1e-6)); conv_* causal depthwise of width
//   lsm.conv_size without bias (0: no conv); β = sigmoid(x Wbᵀ) per head;
//   deltanet α = 1; gated_deltanet log α = −exp(A_log_h) · softplus(x Waᵀ + dt_bias)_h.
// The wrapper (layers/lsm_wrapper.h) adds the output norm, gate and projection.
//
// Per-head quantities (β, α, A) are [B·T, H]; A reaches every token through a ones[B·T, 1] GEMM
// so the layer never branches on the device. Context parallelism (LASP-2, layers/lasp2.h): the
// convs take the previous rank's last K−1 projection rows (halos) and the core the incoming
// state S_in, composed from every earlier piece's (M, P) with P = Π α_t (I − β_t k_t k_tᵀ); on
// one rank both are undefined (zeros).
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/check.h"
#include "layers/lasp2.h"
#include "layers/linear.h"
#include "layers/lsm_wrapper.h"

namespace linmoe::lsm {
namespace {

constexpr double kL2NormEps = 1e-6;  // MODEL.md 3: L2norm(u) = u/sqrt(Σu² + 1e-6)

struct DeltaRuleCache : WrapperCache {
  Tensor q_in, k_in, v_in;  // [B·T, H·Dk], [B·T, H·Dk], [B·T, H·Dv] projections (conv inputs)
  Tensor q_c, k_c, v_c;     // the conv outputs (the projections themselves without a conv)
  Tensor halo[3];           // [B, K−1, C] of q_in, k_in, v_in: the previous rank's last K−1
                            // rows (context parallelism), or undefined (zeros)
  Tensor b_pre;             // [B·T, H] x Wbᵀ
  Tensor a_pre;             // [B·T, H] gated: x Waᵀ + dt_bias
};

// The core's inputs derived from the cache (in scratch).
struct CoreInputs {
  Tensor q_f, k_f;       // [B·T, H·Dk] φ(conv(...)), before the L2 norm
  Tensor q, k;           // [B·T, H·Dk] L2-normalised per head
  Tensor inv_q, inv_k;   // [B·T·H] stat, 1/sqrt(Σu² + eps)
  Tensor v;              // [B·T, H·Dv] silu(conv_v(...))
  Tensor beta;           // [B·T, H] sigmoid(b_pre)
  Tensor softplus;       // [B·T, H] gated: softplus(a_pre)
  Tensor a_row, a_rows;  // [1, H] and [B·T, H] gated: A = −exp(A_log)
  Tensor log_decay;      // [B·T, H] gated: A ⊙ softplus(a_pre); undefined for deltanet
};

class DeltaRuleLsm final : public LsmWrapper {
 public:
  DeltaRuleLsm(const ModelConfig& m, int layer, const ParameterStore& params)
      : LsmWrapper(m, layer, params), gated_(m.lsm.type == LsmType::gated_deltanet) {
    LINMOE_CHECK(lsm_family(cfg_.type) == LsmFamily::delta_rule, "DeltaRuleLsm for ",
                 lsm_type_name(cfg_.type));
    const i64 H = heads_;
    K_ = cfg_.conv_size;
    wk_ = param_index(params, "k_proj.weight", {H * dk_, D_});
    wb_ = param_index(params, "b_proj.weight", {H, D_});
    if (gated_) {
      wa_ = param_index(params, "a_proj.weight", {H, D_});
      a_log_ = param_index(params, "A_log", {H});
      dt_bias_ = param_index(params, "dt_bias", {H});
    }
    if (K_ > 0) {
      wconv_[0] = param_index(params, "q_conv.weight", {H * dk_, 1, K_});
      wconv_[1] = param_index(params, "k_conv.weight", {H * dk_, 1, K_});
      wconv_[2] = param_index(params, "v_conv.weight", {H * dv_, 1, K_});
    }
  }

 private:
  std::unique_ptr<WrapperCache> make_cache() const override {
    return std::make_unique<DeltaRuleCache>();
  }

  void mix_forward(LayerContext& ctx, WrapperCache& wc) override {
    auto& c = static_cast<DeltaRuleCache&>(wc);
    const i64 N = c.B * c.T, H = heads_;
    c.q_in = ctx.save({N, H * dk_});  // [B·T, H·Dk]
    c.k_in = ctx.save({N, H * dk_});  // [B·T, H·Dk]
    c.v_in = ctx.save({N, H * dv_});  // [B·T, H·Dv]
    linear_forward(ctx, c.x, ctx.param(wq_), Tensor{}, c.q_in);
    linear_forward(ctx, c.x, ctx.param(wk_), Tensor{}, c.k_in);
    linear_forward(ctx, c.x, ctx.param(wv_), Tensor{}, c.v_in);
    c.q_c = c.q_in;
    c.k_c = c.k_in;
    c.v_c = c.v_in;
    if (K_ > 0) {
      if (lasp2::enabled(ctx)) {
        for (int p = 0; p < 3; ++p) c.halo[p] = ctx.save({c.B, K_ - 1, proj_in(c, p).size(1)});
        lasp2::exchange_halo(ctx, c.B, c.T, K_, {c.q_in, c.k_in, c.v_in},
                             {c.halo[0], c.halo[1], c.halo[2]});
      }
      c.q_c = ctx.save(c.q_in.shape);
      c.k_c = ctx.save(c.k_in.shape);
      c.v_c = ctx.save(c.v_in.shape);
      conv_forward(ctx, c, 0, c.q_c);
      conv_forward(ctx, c, 1, c.k_c);
      conv_forward(ctx, c, 2, c.v_c);
    }
    c.b_pre = ctx.save({N, H});  // [B·T, H]
    linear_forward(ctx, c.x, ctx.param(wb_), Tensor{}, c.b_pre);
    if (gated_) {
      c.a_pre = ctx.save({N, H});  // [B·T, H]
      linear_forward(ctx, c.x, ctx.param(wa_), ctx.param(dt_bias_), c.a_pre);
    }

    const CoreInputs in = core_inputs(ctx, c);
    auto core = [&](const Tensor& initial_state, const Tensor& final_state) {
      ctx.backend.lsm_delta_rule_forward(heads4(c, in.q, dk_), heads4(c, in.k, dk_),
                                         heads4(c, in.v, dv_), per_head(c, in.beta),
                                         per_head(c, in.log_decay), scale(), cfg_.chunk_size,
                                         initial_state, heads4(c, c.o_core, dv_), final_state);
    };
    if (lasp2::enabled(ctx)) {
      const lasp2::StateDims d = state_dims(c, lasp2::Transition::matrix);
      c.transition = ctx.saved.allocate(stat_dtype(ctx.dtype), d.transition_shape());
      fill_transition(ctx, c, in);
      c.initial_state = lasp2::incoming_state(ctx, d, c.transition, core);
    }
    core(c.initial_state, Tensor{});
  }

  void mix_backward(LayerContext& ctx, WrapperCache& wc, const Tensor& d_core,
                    const Tensor& dx) override {
    auto& c = static_cast<DeltaRuleCache&>(wc);
    Backend& be = ctx.backend;
    const i64 N = c.B * c.T, H = heads_;
    const CoreInputs in = core_inputs(ctx, c);
    const Tensor dq = ctx.temp({N, H * dk_}), dk = ctx.temp({N, H * dk_});
    const Tensor dv = ctx.temp({N, H * dv_}), d_beta = ctx.temp({N, H});
    const Tensor d_ld = gated_ ? ctx.temp({N, H}) : Tensor{};
    auto core = [&](const Tensor& d_final_state, const Tensor& d_initial_state) {
      be.lsm_delta_rule_backward(
          heads4(c, in.q, dk_), heads4(c, in.k, dk_), heads4(c, in.v, dv_), per_head(c, in.beta),
          per_head(c, in.log_decay), scale(), cfg_.chunk_size, c.initial_state,
          heads4(c, d_core, dv_), d_final_state, heads4(c, dq, dk_), heads4(c, dk, dk_),
          heads4(c, dv, dv_), per_head(c, d_beta), per_head(c, d_ld), d_initial_state);
    };
    const bool cp = lasp2::enabled(ctx);
    const Tensor d_final =
        cp ? lasp2::outgoing_state_gradient(ctx, state_dims(c, lasp2::Transition::matrix),
                                            c.transition, core)
           : Tensor{};
    core(d_final, Tensor{});

    // q, k = L2norm(φ(conv(x Wᵀ))); v = silu(conv(x Wvᵀ)).
    const Tensor d_qf = ctx.temp({N, H * dk_}), d_kf = ctx.temp({N, H * dk_});
    be.l2_norm_backward(in.q_f.reshape({N * H, dk_}), in.inv_q, dq.reshape({N * H, dk_}),
                        d_qf.reshape({N * H, dk_}));
    be.l2_norm_backward(in.k_f.reshape({N * H, dk_}), in.inv_k, dk.reshape({N * H, dk_}),
                        d_kf.reshape({N * H, dk_}));
    // d_in[p] = ∂L/∂(projection p), through its conv; under context parallelism the next
    // rank's halo gradient is added to its last K−1 rows before the projection's backward.
    Tensor d_in[3] = {feature_backward(ctx, c.q_c, d_qf), feature_backward(ctx, c.k_c, d_kf),
                      activate_backward(ctx, Activation::silu, c.v_c, dv)};
    if (K_ > 0) {
      Tensor d_halo[3];
      for (int p = 0; p < 3; ++p) {
        if (cp) d_halo[p] = ctx.temp(c.halo[p].shape);  // [B, K−1, C]
        d_in[p] = conv_backward(ctx, c, p, d_in[p], d_halo[p]);
      }
      if (cp) {
        lasp2::return_halo_gradient(ctx, c.B, c.T, K_, {d_halo[0], d_halo[1], d_halo[2]},
                                    {d_in[0], d_in[1], d_in[2]});
      }
    }
    const int w[3] = {wq_, wk_, wv_};
    for (int p = 0; p < 3; ++p) {
      linear_backward(ctx, c.x, ctx.param(w[p]), d_in[p], dx, true, ctx.grad(w[p]), Tensor{});
    }

    // β = sigmoid(x Wbᵀ).
    const Tensor d_b = ctx.temp({N, H});
    be.activation_backward(Activation::sigmoid, c.b_pre, d_beta, d_b, false);
    linear_backward(ctx, c.x, ctx.param(wb_), d_b, dx, true, ctx.grad(wb_), Tensor{});

    if (gated_) {
      // log α = A ⊙ sp, sp = softplus(x Waᵀ + dt_bias), A = −exp(A_log):
      // d sp = A ⊙ d log α;  dA_h = Σ_n d log α ⊙ sp;  d A_log = A ⊙ dA.
      const Tensor d_sp = ctx.temp({N, H}), prod = ctx.temp({N, H});
      be.mul(d_ld, in.a_rows, d_sp);
      be.mul(d_ld, in.softplus, prod);
      const Tensor d_a = ctx.temp({H}), d_alog = ctx.temp({H});
      be.sum_rows(prod, d_a, false);
      be.mul(d_a, in.a_row.reshape({H}), d_alog);
      be.axpy(1.0, d_alog, ctx.grad(a_log_));
      const Tensor d_apre = ctx.temp({N, H});
      be.activation_backward(Activation::softplus, c.a_pre, d_sp, d_apre, false);
      linear_backward(ctx, c.x, ctx.param(wa_), d_apre, dx, true, ctx.grad(wa_),
                      ctx.grad(dt_bias_));
    }
  }

  // [B·T, H] -> [B, T, H] (undefined stays undefined).
  static Tensor per_head(const DeltaRuleCache& c, const Tensor& t) {
    return t.data ? t.reshape({c.B, c.T, t.size(1)}) : Tensor{};
  }

  // The conv input (projection) p = 0, 1, 2: q_in, k_in, v_in [B·T, C].
  static const Tensor& proj_in(const DeltaRuleCache& c, int p) {
    return p == 0 ? c.q_in : p == 1 ? c.k_in : c.v_in;
  }

  void conv_forward(LayerContext& ctx, const DeltaRuleCache& c, int p, const Tensor& out) const {
    const Tensor& in = proj_in(c, p);
    const i64 C = in.size(1);
    ctx.backend.causal_conv1d_forward(in.reshape({c.B, c.T, C}),
                                      ctx.param(wconv_[p]).reshape({C, K_}), Tensor{}, c.halo[p],
                                      out.reshape({c.B, c.T, C}));
  }

  // d_c = ∂L/∂(conv p output) [B·T, C] -> ∂L/∂(its input) in scratch; the conv weight's gradient
  // +=; d_halo [B, K−1, C] (context parallelism) gets the halo's gradient when defined.
  Tensor conv_backward(LayerContext& ctx, const DeltaRuleCache& c, int p, const Tensor& d_c,
                       const Tensor& d_halo) const {
    const Tensor& in = proj_in(c, p);
    const i64 N = c.B * c.T, C = in.size(1);
    const Tensor d_in = ctx.temp({N, C});
    ctx.backend.causal_conv1d_backward(in.reshape({c.B, c.T, C}),
                                       ctx.param(wconv_[p]).reshape({C, K_}), c.halo[p],
                                       d_c.reshape({c.B, c.T, C}), d_in.reshape({c.B, c.T, C}),
                                       ctx.grad(wconv_[p]).reshape({C, K_}), Tensor{}, d_halo);
    return d_in;
  }

  // P_r = Π_t α_t (I − β_t k_t k_tᵀ) (later tokens on the left) into c.transition: the core's
  // final state from S_0 = I with v = 0 (width Dk; its outputs are discarded).
  void fill_transition(LayerContext& ctx, const DeltaRuleCache& c, const CoreInputs& in) const {
    ScratchScope scope(ctx.scratch);
    const i64 N = c.B * c.T, H = heads_;
    const Tensor zero_v = ctx.temp({N, H * dk_}), o = ctx.temp({N, H * dk_});  // [B·T, H·Dk]
    ctx.backend.fill(zero_v, 0.0);
    const Tensor eye = lasp2::identity_states(ctx, c.B, H, dk_);  // [B, H, Dk, Dk]
    ctx.backend.lsm_delta_rule_forward(
        heads4(c, in.q, dk_), heads4(c, in.k, dk_), heads4(c, zero_v, dk_), per_head(c, in.beta),
        per_head(c, in.log_decay), scale(), cfg_.chunk_size, eye, heads4(c, o, dk_), c.transition);
  }

  // Everything between the saved projections and the core's inputs (MODEL.md 3), in scratch.
  CoreInputs core_inputs(LayerContext& ctx, const DeltaRuleCache& c) const {
    Backend& be = ctx.backend;
    const i64 N = c.B * c.T, H = heads_;
    CoreInputs in;
    in.q_f = feature(ctx, c.q_c);
    in.k_f = feature(ctx, c.k_c);
    in.q = ctx.temp({N, H * dk_});
    in.k = ctx.temp({N, H * dk_});
    in.inv_q = ctx.temp(stat_dtype(ctx.dtype), {N * H});
    in.inv_k = ctx.temp(stat_dtype(ctx.dtype), {N * H});
    be.l2_norm_forward(in.q_f.reshape({N * H, dk_}), kL2NormEps, in.q.reshape({N * H, dk_}),
                       in.inv_q);
    be.l2_norm_forward(in.k_f.reshape({N * H, dk_}), kL2NormEps, in.k.reshape({N * H, dk_}),
                       in.inv_k);
    in.v = activate(ctx, Activation::silu, c.v_c);
    in.beta = activate(ctx, Activation::sigmoid, c.b_pre);
    if (gated_) {
      // A = −exp(A_log): H values, computed on the host (there is no exp op).
      std::vector<double> a(static_cast<std::size_t>(H));
      const Tensor host_a(a.data(), DType::f64, Device::cpu, Shape{1, H});
      be.copy(ctx.param(a_log_).reshape({1, H}), host_a);
      for (double& e : a) e = -std::exp(e);
      in.a_row = ctx.temp({1, H});
      be.copy(host_a, in.a_row);
      const Tensor ones = ctx.temp({N, 1});
      be.fill(ones, 1.0);
      in.a_rows = ctx.temp({N, H});
      be.gemm(ones, false, in.a_row, false, in.a_rows);
      in.softplus = activate(ctx, Activation::softplus, c.a_pre);
      in.log_decay = ctx.temp({N, H});
      be.mul(in.a_rows, in.softplus, in.log_decay);
    }
    return in;
  }

  bool gated_;
  i64 K_ = 0;  // conv width, 0 = none
  int wk_ = -1, wb_ = -1, wa_ = -1, a_log_ = -1, dt_bias_ = -1;
  int wconv_[3] = {-1, -1, -1};  // q_conv, k_conv, v_conv
};

}  // namespace

std::unique_ptr<Sublayer> make_delta_rule_lsm(const ModelConfig& m, int layer,
                                              const ParameterStore& params) {
  return std::make_unique<DeltaRuleLsm>(m, layer, params);
}

}  // namespace linmoe::lsm
