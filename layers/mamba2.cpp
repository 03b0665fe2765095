// The mamba2 block ('L' with lsm.type mamba2, MODEL.md 3 "mamba2" and "mamba2 details"):
//   [z, xBC, dt] = x in_projᵀ;  xBC = silu(conv(xBC) + conv bias);  [xs, Bm, Cm] = split(xBC)
//   dt = softplus(dt + dt_bias);  A = −exp(A_log)
//   core: the scalar-decay kernel with q = Cm, k = Bm (G groups; head h reads ⌊h·G/H⌋),
//         v = dt·xs, log decay dt·A, scale 1
//   y = core + D·xs;  y = GroupRMSNorm(y ⊙ silu(z)) ⊙ norm.weight;  out = y out_projᵀ
//
// in_proj is applied as four GEMMs on row slices of its weight (z, xs, [Bm Cm], dt), so every
// piece is a contiguous [B·T, ·] tensor the elementwise ops accept; the convolution runs on the
// xs and [Bm Cm] pieces with the matching rows of conv1d. Per-head quantities reach their P
// channels through an expansion matrix E [H, d_inner] (E[h, c] = 1 when channel c belongs to
// head h) and per-channel ones reach every token through ones[B·T, 1] GEMMs: everything is an op
// of the Backend, so the layer never branches on the device.
//
// Context parallelism (PARALLEL.md, LASP-2: layers/lasp2.h): the conv takes the previous rank's
// last K−1 conv inputs (halos, their gradient goes back) and the core the incoming state S_in
// composed from every earlier piece's (M, P), P = exp(Σ_t dt_t A_h) per (b, h). On one rank both
// are undefined (zeros).
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "layers/lasp2.h"
#include "layers/linear.h"
#include "layers/sublayers.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

constexpr double kGatedNormEps = 1e-5;  // MODEL.md 3: the gated RMSNorm's eps

struct Mamba2Cache : Sublayer::Cache {
  i64 B = 0, T = 0;
  Tensor x;             // [B, T, D] the mixer input (copied: the caller's buffer may be reused)
  Tensor z;             // [B·T, d_inner] gate pre-activation
  Tensor xs_in, bc_in;  // [B·T, d_inner], [B·T, 2GN] conv inputs (in_proj outputs)
  Tensor xs_c, bc_c;    // conv outputs before silu (the inputs themselves without a conv)
  Tensor dt_raw;        // [B·T, H] dt + dt_bias, before softplus
  Tensor halo[2];       // [B, K−1, d_inner], [B, K−1, 2GN]: the previous rank's last K−1 rows
                        // of xs_in, bc_in (context parallelism), or undefined (zeros)
  Tensor initial_state;  // [B, H, N, P] stat dtype, or undefined (zeros)
  Tensor transition;     // [B, H] stat, P_r of this piece (context parallelism)
  Tensor y;              // [B·T, d_inner] core + D·xs, before the gate
  Tensor rstd;           // [B·T·G] stat, the gated norm's
};

// What forward and backward both derive from the cache (in scratch).
struct Derived {
  Tensor expand;     // [H, d_inner] E
  Tensor ones;       // [B·T, 1]
  Tensor a_row;      // [1, H] A = −exp(A_log)
  Tensor xs;         // [B·T, d_inner] silu(xs_c)
  Tensor bc;         // [B·T, 2GN] silu(bc_c) = [Bm, Cm]
  Tensor dt;         // [B·T, H] softplus(dt_raw)
  Tensor a_rows;     // [B·T, H] A in every row
  Tensor log_decay;  // [B, T, H] dt·A
  Tensor dt_exp;     // [B·T, d_inner] dt of each channel's head
  Tensor v;          // [B·T, d_inner] dt·xs
  Tensor d_full;     // [B·T, d_inner] D of each channel's head in every row
};

// Columns [c0, c0 + G·n) of a contiguous [B·T, W] tensor viewed as [B, T, G, n] (row-strided).
Tensor group_view(const Tensor& t, i64 B, i64 T, i64 c0, i64 G, i64 n) {
  const i64 W = t.size(1);
  Tensor v = t.slice(1, c0, G * n);
  v.shape = Shape{B, T, G, n};
  v.strides = {T * W, W, n, 1, 0, 0};
  return v;
}

class Mamba2 final : public Sublayer {
 public:
  Mamba2(const ModelConfig& m, int layer, const ParameterStore& params) : cfg_(m.lsm) {
    LINMOE_CHECK(cfg_.type == LsmType::mamba2, "Mamba2 for ", lsm_type_name(cfg_.type));
    const std::string p = "layers." + std::to_string(layer) + ".mixer.";
    D_ = m.hidden_size;
    d_inner_ = static_cast<i64>(cfg_.expand) * D_;
    P_ = cfg_.head_dim_v;
    H_ = cfg_.num_heads;
    N_ = cfg_.state_size;
    G_ = cfg_.num_groups;
    K_ = cfg_.conv_size;
    LINMOE_CHECK(H_ * P_ == d_inner_ && H_ % G_ == 0 && d_inner_ % G_ == 0, p,
                 "mamba2 sizes: d_inner ", d_inner_, ", heads ", H_, " of ", P_, ", groups ", G_);
    const i64 GN = G_ * N_, conv_dim = d_inner_ + 2 * GN;
    auto param = [&](const char* name, const Shape& shape) {
      const int i = params.index(p + name);
      LINMOE_CHECK(params.spec(i).shape == shape, p, name, " is ", params.spec(i).shape.str(),
                   ", expected ", shape.str());
      return i;
    };
    w_in_ = param("in_proj.weight", {2 * d_inner_ + 2 * GN + H_, D_});
    if (K_ > 0) {
      w_conv_ = param("conv1d.weight", {conv_dim, 1, K_});
      b_conv_ = param("conv1d.bias", {conv_dim});
    }
    dt_bias_ = param("dt_bias", {H_});
    a_log_ = param("A_log", {H_});
    d_skip_ = param("D", {H_});
    w_norm_ = param("norm.weight", {d_inner_});
    w_out_ = param("out_proj.weight", {D_, d_inner_});

    expand_.assign(static_cast<std::size_t>(H_ * d_inner_), 0.0);
    for (i64 h = 0; h < H_; ++h) {
      for (i64 q = 0; q < P_; ++q) expand_[static_cast<std::size_t>(h * d_inner_ + h * P_ + q)] = 1;
    }
  }

  std::unique_ptr<Cache> forward(LayerContext& ctx, const Tensor& x, const Tensor& y,
                                 SublayerStats* /*stats*/) override {
    LINMOE_CHECK(x.ndim() == 3 && x.size(2) == D_, "mamba2 mixer input must be [B, T, ", D_,
                 "], got ", x.str());
    Backend& be = ctx.backend;
    auto c = std::make_unique<Mamba2Cache>();
    const i64 B = x.size(0), T = x.size(1), BT = B * T, GN = G_ * N_;
    c->B = B;
    c->T = T;
    c->x = ctx.save(x.shape);  // [B, T, D]
    be.copy(x, c->x);

    // [z, xBC, dt] = x in_projᵀ, dt + dt_bias fused into the dt GEMM.
    c->z = ctx.save({BT, d_inner_});      // [B·T, d_inner]
    c->xs_in = ctx.save({BT, d_inner_});  // [B·T, d_inner]
    c->bc_in = ctx.save({BT, 2 * GN});    // [B·T, 2GN]
    c->dt_raw = ctx.save({BT, H_});       // [B·T, H]
    linear_forward(ctx, c->x, in_rows(ctx.param(w_in_), Piece::z), Tensor{}, c->z);
    linear_forward(ctx, c->x, in_rows(ctx.param(w_in_), Piece::xs), Tensor{}, c->xs_in);
    linear_forward(ctx, c->x, in_rows(ctx.param(w_in_), Piece::bc), Tensor{}, c->bc_in);
    linear_forward(ctx, c->x, in_rows(ctx.param(w_in_), Piece::dt), ctx.param(dt_bias_), c->dt_raw);

    // Causal conv over time per channel (MODEL.md 3), before the silu.
    c->xs_c = c->xs_in;
    c->bc_c = c->bc_in;
    if (K_ > 0) {
      if (lasp2::enabled(ctx)) {
        c->halo[0] = ctx.save({B, K_ - 1, d_inner_});
        c->halo[1] = ctx.save({B, K_ - 1, 2 * GN});
        lasp2::exchange_halo(ctx, B, T, K_, {c->xs_in, c->bc_in}, {c->halo[0], c->halo[1]});
      }
      c->xs_c = ctx.save({BT, d_inner_});
      c->bc_c = ctx.save({BT, 2 * GN});
      conv_forward(ctx, *c, c->xs_in, 0, c->halo[0], c->xs_c);
      conv_forward(ctx, *c, c->bc_in, d_inner_, c->halo[1], c->bc_c);
    }

    ScratchScope scope(ctx.scratch);
    const Derived d = derive(ctx, *c);

    // The core, then y = core + D·xs.
    const Tensor o = ctx.temp({BT, d_inner_});  // [B·T, d_inner]
    auto core = [&](const Tensor& initial_state, const Tensor& final_state) {
      be.lsm_scalar_decay_forward(group_view(d.bc, B, T, GN, G_, N_),
                                  group_view(d.bc, B, T, 0, G_, N_), heads4(*c, d.v), d.log_decay,
                                  1.0, cfg_.chunk_size, initial_state, heads4(*c, o), final_state);
    };
    if (lasp2::enabled(ctx)) {
      const lasp2::StateDims sd = state_dims(*c);
      c->transition = ctx.saved.allocate(stat_dtype(ctx.dtype), sd.transition_shape());
      lasp2::decay_transition(ctx, d.log_decay, c->transition);
      c->initial_state = lasp2::incoming_state(ctx, sd, c->transition, core);
    }
    core(c->initial_state, Tensor{});
    const Tensor skip = ctx.temp({BT, d_inner_});  // [B·T, d_inner]
    be.mul(d.d_full, d.xs, skip);
    c->y = ctx.save({BT, d_inner_});
    be.add(o, skip, c->y);

    // GroupRMSNorm(y ⊙ silu(z)) ⊙ norm.weight, then out_proj.
    c->rstd = ctx.saved.allocate(stat_dtype(ctx.dtype), {BT * G_});
    const Gated g = gated_norm(ctx, *c, d, /*recompute=*/false);
    linear_forward(ctx, g.out, ctx.param(w_out_), Tensor{}, y);
    return c;
  }

  void backward(LayerContext& ctx, Cache& cache, const Tensor& dy, const Tensor& dx) override {
    auto& c = dynamic_cast<Mamba2Cache&>(cache);
    Backend& be = ctx.backend;
    const i64 B = c.B, T = c.T, BT = B * T, GN = G_ * N_, S = d_inner_ / G_;
    ScratchScope scope(ctx.scratch);
    const Derived d = derive(ctx, c);
    const Gated g = gated_norm(ctx, c, d, /*recompute=*/true);
    auto temp = [&](i64 cols) { return ctx.temp({BT, cols}); };

    // out = yn out_projᵀ, yn = ŷ ⊙ w_norm.
    const Tensor d_yn = temp(d_inner_);
    linear_backward(ctx, g.out, ctx.param(w_out_), dy, d_yn, false, ctx.grad(w_out_), Tensor{});
    Tensor t1 = temp(d_inner_), t2 = temp(d_inner_);
    be.mul(d_yn, g.normed, t1);
    be.sum_rows(t1, ctx.grad(w_norm_), true);
    const Tensor d_normed = temp(d_inner_);
    be.mul(d_yn, g.w_rows, d_normed);

    // ŷ = RMSNorm(gated) per group with a ones weight (its weight gradient is discarded).
    const Tensor d_gated = temp(d_inner_);
    const Tensor unused_dw = ctx.temp({S});
    be.fill(unused_dw, 0.0);
    be.rms_norm_backward(d_normed.reshape({BT * G_, S}), g.gated.reshape({BT * G_, S}), g.ones_w,
                         g.rstd, d_gated.reshape({BT * G_, S}), unused_dw);

    // gated = y ⊙ silu(z).
    const Tensor d_y = temp(d_inner_);
    be.mul(d_gated, g.gate, d_y);
    be.mul(d_gated, c.y, t1);
    const Tensor dz = temp(d_inner_);
    be.activation_backward(Activation::silu, c.z, t1, dz, false);
    linear_backward(ctx, c.x, in_rows(ctx.param(w_in_), Piece::z), dz, dx, true,
                    in_rows(ctx.grad(w_in_), Piece::z), Tensor{});

    // y = core + D_full ⊙ xs: dD_h += Σ over the head's channels and all tokens.
    be.mul(d_y, d.xs, t1);
    const Tensor d_skip_ch = ctx.temp({1, d_inner_});  // [1, d_inner]
    be.sum_rows(t1, d_skip_ch.reshape({d_inner_}), false);
    be.gemm(d_skip_ch, false, d.expand, true, ctx.grad(d_skip_).reshape({1, H_}), 1.0, 1.0);
    const Tensor d_xs = temp(d_inner_);
    be.mul(d_y, d.d_full, d_xs);

    // The core: dq → d Cm, dk → d Bm (columns of d_bc), dv, d log_decay.
    const Tensor d_bc = temp(2 * GN), dv = temp(d_inner_);
    const Tensor d_ld = ctx.temp({B, T, H_});  // [B, T, H]
    auto core = [&](const Tensor& d_final_state, const Tensor& d_initial_state) {
      be.lsm_scalar_decay_backward(
          group_view(d.bc, B, T, GN, G_, N_), group_view(d.bc, B, T, 0, G_, N_), heads4(c, d.v),
          d.log_decay, 1.0, cfg_.chunk_size, c.initial_state, heads4(c, d_y), d_final_state,
          group_view(d_bc, B, T, GN, G_, N_), group_view(d_bc, B, T, 0, G_, N_), heads4(c, dv),
          d_ld, d_initial_state);
    };
    const bool cp = lasp2::enabled(ctx);
    const Tensor d_final =
        cp ? lasp2::outgoing_state_gradient(ctx, state_dims(c), c.transition, core) : Tensor{};
    core(d_final, Tensor{});

    // v = dt_exp ⊙ xs: d xs += dv ⊙ dt_exp; d dt = (dv ⊙ xs) Eᵀ.
    be.mul(dv, d.dt_exp, t1);
    be.axpy(1.0, t1, d_xs);
    be.mul(dv, d.xs, t2);
    const Tensor d_dt = temp(H_), h1 = temp(H_), h2 = temp(H_);
    be.gemm(t2, false, d.expand, true, d_dt);
    // log_decay = dt ⊙ A: d dt += d_ld ⊙ A; dA_h = Σ_n d_ld·dt, and dA/dA_log = A.
    const Tensor d_ld2 = d_ld.reshape({BT, H_});
    be.mul(d_ld2, d.a_rows, h1);
    be.axpy(1.0, h1, d_dt);
    be.mul(d_ld2, d.dt, h2);
    const Tensor d_a = ctx.temp({H_}), d_alog = ctx.temp({H_});
    be.sum_rows(h2, d_a, false);
    be.mul(d_a, d.a_row.reshape({H_}), d_alog);
    be.axpy(1.0, d_alog, ctx.grad(a_log_));
    // dt = softplus(dt_in Wᵀ + dt_bias).
    be.activation_backward(Activation::softplus, c.dt_raw, d_dt, h1, false);
    linear_backward(ctx, c.x, in_rows(ctx.param(w_in_), Piece::dt), h1, dx, true,
                    in_rows(ctx.grad(w_in_), Piece::dt), ctx.grad(dt_bias_));

    // xBC = silu(conv(xBC_in)).
    const Tensor d_xs_c = temp(d_inner_), d_bc_c = temp(2 * GN);
    be.activation_backward(Activation::silu, c.xs_c, d_xs, d_xs_c, false);
    be.activation_backward(Activation::silu, c.bc_c, d_bc, d_bc_c, false);
    Tensor d_xs_in = d_xs_c, d_bc_in = d_bc_c;
    if (K_ > 0) {
      d_xs_in = temp(d_inner_);
      d_bc_in = temp(2 * GN);
      // Context parallelism: the halos' gradients go to the previous rank, and the next rank's
      // are added to the last K−1 rows of d_xs_in, d_bc_in.
      const Tensor d_halo_xs = cp ? ctx.temp(c.halo[0].shape) : Tensor{};  // [B, K−1, d_inner]
      const Tensor d_halo_bc = cp ? ctx.temp(c.halo[1].shape) : Tensor{};  // [B, K−1, 2GN]
      conv_backward(ctx, c, c.xs_in, 0, c.halo[0], d_xs_c, d_xs_in, d_halo_xs);
      conv_backward(ctx, c, c.bc_in, d_inner_, c.halo[1], d_bc_c, d_bc_in, d_halo_bc);
      if (cp)
        lasp2::return_halo_gradient(ctx, B, T, K_, {d_halo_xs, d_halo_bc}, {d_xs_in, d_bc_in});
    }
    linear_backward(ctx, c.x, in_rows(ctx.param(w_in_), Piece::xs), d_xs_in, dx, true,
                    in_rows(ctx.grad(w_in_), Piece::xs), Tensor{});
    linear_backward(ctx, c.x, in_rows(ctx.param(w_in_), Piece::bc), d_bc_in, dx, true,
                    in_rows(ctx.grad(w_in_), Piece::bc), Tensor{});
  }

 private:
  enum class Piece { z, xs, bc, dt };  // the row blocks of in_proj.weight, in order

  // The gated norm's output and what its backward needs.
  struct Gated {
    Tensor gate;    // [B·T, d_inner] silu(z)
    Tensor gated;   // [B·T, d_inner] y ⊙ silu(z)
    Tensor rstd;    // [B·T·G] stat
    Tensor ones_w;  // [d_inner / G] the norm's unit weight
    Tensor normed;  // [B·T, d_inner] ŷ = RMSNorm(gated) per group
    Tensor w_rows;  // [B·T, d_inner] norm.weight in every row
    Tensor out;     // [B·T, d_inner] ŷ ⊙ norm.weight, out_proj's input
  };

  // Rows of in_proj.weight (or its gradient) for one piece: [z | xs | Bm Cm | dt].
  Tensor in_rows(const Tensor& w, Piece piece) const {
    const i64 GN = G_ * N_;
    switch (piece) {
      case Piece::z:
        return w.slice(0, 0, d_inner_);
      case Piece::xs:
        return w.slice(0, d_inner_, d_inner_);
      case Piece::bc:
        return w.slice(0, 2 * d_inner_, 2 * GN);
      case Piece::dt:
        return w.slice(0, 2 * d_inner_ + 2 * GN, H_);
    }
    LINMOE_CHECK(false, "unknown in_proj piece");
    return Tensor{};
  }

  // [B·T, H·P] -> [B, T, H, P].
  Tensor heads4(const Mamba2Cache& c, const Tensor& t) const {
    return t.reshape({c.B, c.T, H_, P_});
  }

  // The conv channels [c0, c0 + C) of xBC: in, out [B·T, C] contiguous; halo [B, K−1, C] or
  // undefined.
  void conv_forward(LayerContext& ctx, const Mamba2Cache& c, const Tensor& in, i64 c0,
                    const Tensor& halo, const Tensor& out) const {
    const i64 C = in.size(1);
    const Tensor w = ctx.param(w_conv_).reshape({d_inner_ + 2 * G_ * N_, K_}).slice(0, c0, C);
    ctx.backend.causal_conv1d_forward(in.reshape({c.B, c.T, C}), w,
                                      ctx.param(b_conv_).slice(0, c0, C), halo,
                                      out.reshape({c.B, c.T, C}));
  }

  // d_halo [B, K−1, C] gets the halo's gradient when defined (context parallelism).
  void conv_backward(LayerContext& ctx, const Mamba2Cache& c, const Tensor& in, i64 c0,
                     const Tensor& halo, const Tensor& d_out, const Tensor& d_in,
                     const Tensor& d_halo) const {
    const i64 C = in.size(1), conv_dim = d_inner_ + 2 * G_ * N_;
    const Tensor w = ctx.param(w_conv_).reshape({conv_dim, K_}).slice(0, c0, C);
    const Tensor dw = ctx.grad(w_conv_).reshape({conv_dim, K_}).slice(0, c0, C);
    ctx.backend.causal_conv1d_backward(in.reshape({c.B, c.T, C}), w, halo,
                                       d_out.reshape({c.B, c.T, C}), d_in.reshape({c.B, c.T, C}),
                                       dw, ctx.grad(b_conv_).slice(0, c0, C), d_halo);
  }

  // The core's state geometry for LASP-2: [B, H, N, P], a scalar transition per (b, h).
  lasp2::StateDims state_dims(const Mamba2Cache& c) const {
    return lasp2::StateDims{c.B, H_, N_, P_, lasp2::Transition::scalar};
  }

  // Everything between the conv outputs and the core's inputs (MODEL.md 3), in scratch.
  Derived derive(LayerContext& ctx, const Mamba2Cache& c) const {
    Backend& be = ctx.backend;
    const i64 BT = c.B * c.T;
    Derived d;
    d.expand = ctx.temp({H_, d_inner_});
    be.copy(
        Tensor(const_cast<double*>(expand_.data()), DType::f64, Device::cpu, Shape{H_, d_inner_}),
        d.expand);
    d.ones = ctx.temp({BT, 1});
    be.fill(d.ones, 1.0);

    // A = −exp(A_log): H values, computed on the host (there is no exp op).
    std::vector<double> a(static_cast<std::size_t>(H_));
    const Tensor host_a(a.data(), DType::f64, Device::cpu, Shape{1, H_});
    be.copy(ctx.param(a_log_).reshape({1, H_}), host_a);
    for (double& v : a) v = -std::exp(v);
    d.a_row = ctx.temp({1, H_});
    be.copy(host_a, d.a_row);

    d.xs = ctx.temp({BT, d_inner_});
    be.activation_forward(Activation::silu, c.xs_c, d.xs);
    d.bc = ctx.temp({BT, 2 * G_ * N_});
    be.activation_forward(Activation::silu, c.bc_c, d.bc);
    d.dt = ctx.temp({BT, H_});
    be.activation_forward(Activation::softplus, c.dt_raw, d.dt);

    d.a_rows = ctx.temp({BT, H_});
    be.gemm(d.ones, false, d.a_row, false, d.a_rows);
    d.log_decay = ctx.temp({c.B, c.T, H_});
    be.mul(d.dt, d.a_rows, d.log_decay.reshape({BT, H_}));

    d.dt_exp = ctx.temp({BT, d_inner_});
    be.gemm(d.dt, false, d.expand, false, d.dt_exp);
    d.v = ctx.temp({BT, d_inner_});
    be.mul(d.dt_exp, d.xs, d.v);

    const Tensor d_ch = ctx.temp({1, d_inner_});  // D of each channel's head
    be.gemm(ctx.param(d_skip_).reshape({1, H_}), false, d.expand, false, d_ch);
    d.d_full = ctx.temp({BT, d_inner_});
    be.gemm(d.ones, false, d_ch, false, d.d_full);
    return d;
  }

  // gated = y ⊙ silu(z); ŷ = RMSNorm over each group of d_inner/G channels (unit weight);
  // out = ŷ ⊙ norm.weight (MODEL.md "mamba2 details": RMSNormGated, norm after the gate). In
  // forward the norm writes the saved rstd; the backward recompute uses a scratch copy.
  Gated gated_norm(LayerContext& ctx, Mamba2Cache& c, const Derived& d, bool recompute) const {
    Backend& be = ctx.backend;
    const i64 BT = c.B * c.T, S = d_inner_ / G_;
    Gated g;
    g.gate = ctx.temp({BT, d_inner_});
    be.activation_forward(Activation::silu, c.z, g.gate);
    g.gated = ctx.temp({BT, d_inner_});
    be.mul(c.y, g.gate, g.gated);
    g.ones_w = ctx.temp({S});
    be.fill(g.ones_w, 1.0);
    g.rstd = recompute ? ctx.temp(stat_dtype(ctx.dtype), {BT * G_}) : c.rstd;
    g.normed = ctx.temp({BT, d_inner_});
    be.rms_norm_forward(g.gated.reshape({BT * G_, S}), g.ones_w, kGatedNormEps,
                        g.normed.reshape({BT * G_, S}), g.rstd);
    g.w_rows = ctx.temp({BT, d_inner_});
    be.gemm(d.ones, false, ctx.param(w_norm_).reshape({1, d_inner_}), false, g.w_rows);
    g.out = ctx.temp({BT, d_inner_});
    be.mul(g.normed, g.w_rows, g.out);
    return g;
  }

  LsmConfig cfg_;
  // MODEL.md 3 letters: D, d_inner, P, H, N (state size), G, K; BT (tokens) in the methods.
  i64 D_ = 0, d_inner_ = 0, P_ = 0, H_ = 0, N_ = 0, G_ = 0, K_ = 0;
  int w_in_ = -1, w_conv_ = -1, b_conv_ = -1, dt_bias_ = -1, a_log_ = -1, d_skip_ = -1;
  int w_norm_ = -1, w_out_ = -1;  // parameter indices
  std::vector<double> expand_;    // [H, d_inner] E on the host, copied per call
};

}  // namespace

std::unique_ptr<Sublayer> make_mamba2(const ModelConfig& m, int layer,
                                      const ParameterStore& params) {
  return std::make_unique<Mamba2>(m, layer, params);
}

}  // namespace linmoe
