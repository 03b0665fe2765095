// The MoE block of MODEL.md 4: route → dispatch (plan + permute) → local experts → combine
// (unpermute with the routing weights), plus the gated shared expert. Each stage is its own
// function; expert parallelism lives in the dispatch and the combine (layers/moe_dispatch.h).
//
// Parallel layouts (PARALLEL.md), with ctx.groups set:
//  - Tensor parallelism: x is the same on the tp ranks, and the block must not repeat a token's
//    expert work on each. tp rank r takes the rows [N·r/tp, N·(r+1)/tp) of the flattened
//    N = B·T_local tokens (routing, dispatch, experts, shared expert, combine), writes y for them
//    and zeros elsewhere, and adds dx for its rows only: y and dx are partial sums over tp, which
//    the model all-reduces like every sublayer's. The parameters are replicated over tp.
//  - Context parallelism: x is this rank's piece of the sequences (position_offset).
//  - Statistics and capacity are over the whole micro-batch: the router all-reduces its sums and
//    gathers the capacity decision over tp_cp (layers/moe_router.h).
//  - Expert parallelism: experts.w1/w3/w2 hold this rank's slice of experts (dim 0, over the ep
//    group); the dispatcher (moe.dispatcher) moves the rows to them and back.
#include <string>
#include <vector>

#include "core/check.h"
#include "layers/linear.h"
#include "layers/moe_dispatch.h"
#include "layers/moe_router.h"
#include "layers/sublayers.h"
#include "layers/swiglu_ffn.h"
#include "parallel/process_groups.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

struct MoeParams {
  int router = -1;                // [E, D]
  int w1 = -1, w3 = -1, w2 = -1;  // [E, F, D], [E, F, D], [E, D, F]
  // Shared expert ([Fs, D], [Fs, D], [D, Fs]) and its gate [1, D]; -1 when absent.
  int shared_w1 = -1, shared_w3 = -1, shared_w2 = -1, shared_gate = -1;
  bool has_shared() const { return shared_w1 >= 0; }
};

// The experts' activations, saved for backward.
struct ExpertActs {
  Tensor gate, up;  // [R, F]
  Tensor y;         // [R, D] SwiGLU_e of each of the local experts' rows, before the weight
};

struct SharedActs {
  Tensor gate, up;    // [N, Fs] hidden pre-activations
  Tensor out;         // [N, D] SwiGLU_shared(x)
  Tensor gate_logit;  // [N, 1] x shared_gateᵀ
  Tensor g;           // [N, 1] sigmoid(gate_logit)
  Tensor order;       // [N] i32: the identity plan (every token's one slot, in token order)
};

// Local experts: local expert e runs its SwiGLU (MODEL.md 4) on its contiguous row range of
// x_exp, with experts.w1[e] the [F, D] slice of this rank's [E/ep, F, D] tensor. Each projection
// is one grouped GEMM over all local experts (empty experts take no rows); SwiGLU is elementwise,
// so it runs once on all R rows.
ExpertActs moe_experts_forward(LayerContext& ctx, const MoeParams& p, const MoeDispatch& d) {
  const Tensor w1 = ctx.param(p.w1), w3 = ctx.param(p.w3), w2 = ctx.param(p.w2);
  const i64 F = w1.size(1), D = w1.size(2);
  const std::vector<i64>& rows = d.expert_rows;
  Backend& be = ctx.backend;
  ExpertActs a;
  const i64 R = d.x_exp.size(0);
  a.gate = ctx.save(Shape{R, F});
  a.up = ctx.save(Shape{R, F});
  a.y = ctx.save(Shape{R, D});
  if (R == 0) return a;
  ScratchScope scope(ctx.scratch);
  be.grouped_gemm(d.x_exp, w1, true, rows, a.gate);  // gate_e = x_e · w1[e]ᵀ
  be.grouped_gemm(d.x_exp, w3, true, rows, a.up);    // up_e = x_e · w3[e]ᵀ
  Tensor h = ctx.temp(Shape{R, F});                  // [R, F] silu(gate) ⊙ up
  be.swiglu_forward(a.gate, a.up, h);
  be.grouped_gemm(h, w2, true, rows, a.y);  // y_e = h_e · w2[e]ᵀ
  return a;
}

// dx_exp [R, D] overwritten; the experts' weight gradients accumulate (grouped_gemm_wgrad with
// beta = 1: an expert without rows keeps its gradient).
void moe_experts_backward(LayerContext& ctx, const MoeParams& p, const MoeDispatch& d,
                          const ExpertActs& a, const Tensor& dy_exp, const Tensor& dx_exp) {
  const Tensor w1 = ctx.param(p.w1), w3 = ctx.param(p.w3), w2 = ctx.param(p.w2);
  const Tensor g1 = ctx.grad(p.w1), g3 = ctx.grad(p.w3), g2 = ctx.grad(p.w2);
  const std::vector<i64>& rows = d.expert_rows;
  Backend& be = ctx.backend;
  if (d.x_exp.size(0) == 0) return;
  ScratchScope scope(ctx.scratch);
  // The hidden is recomputed rather than saved: one elementwise op against an [R, F] tensor.
  Tensor h = ctx.temp(a.gate.shape);  // [R, F]
  be.swiglu_forward(a.gate, a.up, h);
  Tensor dh = ctx.temp(a.gate.shape);                                   // [R, F]
  be.grouped_gemm(dy_exp, w2, false, rows, dh);                         // dh_e = dy_e · w2[e]
  be.grouped_gemm_wgrad(dy_exp, h, rows, g2, 1.0, 1.0);                 // dw2[e] += dy_eᵀ · h_e
  Tensor dgate = ctx.temp(a.gate.shape), dup = ctx.temp(a.gate.shape);  // [R, F]
  be.swiglu_backward(a.gate, a.up, dh, dgate, dup);
  be.grouped_gemm(dgate, w1, false, rows, dx_exp);            // dx_e = dgate_e · w1[e]
  be.grouped_gemm(dup, w3, false, rows, dx_exp, 1.0, 1.0);    //      + dup_e · w3[e]
  be.grouped_gemm_wgrad(dgate, d.x_exp, rows, g1, 1.0, 1.0);  // dw1[e] += dgate_eᵀ · x_e
  be.grouped_gemm_wgrad(dup, d.x_exp, rows, g3, 1.0, 1.0);    // dw3[e] += dup_eᵀ · x_e
}

// The shared expert, y += sigmoid(x shared_gateᵀ) · SwiGLU_shared(x): an expert that every token
// takes with its gate as the weight, so the combine op (with the identity plan) applies the gate.
SharedActs shared_forward(LayerContext& ctx, const MoeParams& p, const Tensor& x, const Tensor& y) {
  const i64 N = x.size(0), D = x.size(1), Fs = ctx.param(p.shared_w1).size(0);
  SharedActs s;
  s.gate = ctx.save(Shape{N, Fs});
  s.up = ctx.save(Shape{N, Fs});
  s.out = ctx.save(Shape{N, D});
  swiglu_ffn_forward(
      ctx, x, SwigluWeights{ctx.param(p.shared_w1), ctx.param(p.shared_w3), ctx.param(p.shared_w2)},
      s.gate, s.up, s.out);
  s.gate_logit = ctx.save(Shape{N, 1});
  linear_forward(ctx, x, ctx.param(p.shared_gate), Tensor{}, s.gate_logit);
  s.g = ctx.save(Shape{N, 1});
  ctx.backend.activation_forward(Activation::sigmoid, s.gate_logit, s.g);
  s.order = ctx.saved.allocate(DType::i32, Shape{N});
  {
    ScratchScope scope(ctx.scratch);
    Tensor one_expert = ctx.temp(DType::i32, Shape{N, 1});  // [N, 1] every token to expert 0
    ctx.backend.fill(one_expert, 0.0);
    Tensor count = ctx.temp(DType::i64, Shape{1});
    ctx.backend.moe_dispatch_plan(one_expert, Tensor{}, 1, s.order, count);
  }
  ctx.backend.moe_unpermute(s.out, s.order, s.g, y, true);
  return s;
}

void shared_backward(LayerContext& ctx, const MoeParams& p, const SharedActs& s, const Tensor& x,
                     const Tensor& dy, const Tensor& dx) {
  const i64 N = x.size(0);
  ScratchScope scope(ctx.scratch);
  Tensor d_out = ctx.temp(s.out.shape);  // [N, D]
  Tensor dg = ctx.temp(Shape{N, 1});     // [N, 1] ⟨dy_t, SwiGLU_shared(x_t)⟩
  ctx.backend.moe_unpermute_backward(dy, s.out, s.order, s.g, d_out, dg);
  Tensor d_logit = ctx.temp(Shape{N, 1});  // [N, 1]
  ctx.backend.activation_backward(Activation::sigmoid, s.gate_logit, dg, d_logit, false);
  linear_backward(ctx, x, ctx.param(p.shared_gate), d_logit, dx, true, ctx.grad(p.shared_gate),
                  Tensor{});
  swiglu_ffn_backward(
      ctx, x, SwigluWeights{ctx.param(p.shared_w1), ctx.param(p.shared_w3), ctx.param(p.shared_w2)},
      s.gate, s.up, d_out, dx, true,
      SwigluWeights{ctx.grad(p.shared_w1), ctx.grad(p.shared_w3), ctx.grad(p.shared_w2)});
}

// This rank's share of the micro-batch (module comment): the rows [first, first + count) of the
// flattened [B, T_local] tokens, the group that holds the rest, and where its experts live.
struct MoeShard {
  i64 first = 0, count = 0;
  MoeTokenShard tokens;
  ExpertPlacement experts;
};

class Moe : public Sublayer {
 public:
  Moe(const ModelConfig& m, int layer, const ParameterStore& params) : cfg_(m.moe) {
    const std::string pre = "layers." + std::to_string(layer) + ".ffn.";
    p_.router = params.index(pre + "router.weight");
    p_.w1 = params.index(pre + "experts.w1");
    p_.w3 = params.index(pre + "experts.w3");
    p_.w2 = params.index(pre + "experts.w2");
    // This rank's experts: the dim-0 slice of experts.w1 (all of them without expert
    // parallelism), the same for w3 and w2.
    const ParamSpec& w1 = params.spec(p_.w1);
    local_experts_ = w1.shape[0];
    first_expert_ = w1.offset.empty() ? 0 : w1.offset[0];
    LINMOE_CHECK(local_experts_ >= 1 && cfg_.num_experts % local_experts_ == 0 &&
                     first_expert_ % local_experts_ == 0,
                 "moe: layer ", layer, " holds experts [", first_expert_, ", ",
                 first_expert_ + local_experts_, ") of ", cfg_.num_experts,
                 ": not an even slice of the ep group");
    for (int w : {p_.w3, p_.w2}) {
      const ParamSpec& s = params.spec(w);
      LINMOE_CHECK(
          s.shape[0] == local_experts_ && (s.offset.empty() ? 0 : s.offset[0]) == first_expert_,
          "moe: ", s.name, " holds a different expert slice than experts.w1");
    }
    if (cfg_.shared_ffn_hidden_size > 0) {
      p_.shared_w1 = params.index(pre + "shared.w1.weight");
      p_.shared_w3 = params.index(pre + "shared.w3.weight");
      p_.shared_w2 = params.index(pre + "shared.w2.weight");
      p_.shared_gate = params.index(pre + "shared_gate.weight");
    }
  }

  struct Saved : Cache {
    MoeShard shard;
    Tensor x;  // [n, D] this rank's rows of the input
    MoeRouting route;
    MoeDispatch dispatch;
    ExpertActs experts;
    SharedActs shared;
  };

  std::unique_ptr<Cache> forward(LayerContext& ctx, const Tensor& x, const Tensor& y,
                                 SublayerStats* stats) override {
    auto c = std::make_unique<Saved>();
    const Tensor x2 = rows(x), y2 = rows(y);  // [N, D]
    c->shard = shard(ctx, x);
    const MoeShard& sh = c->shard;
    if (sh.count < x2.size(0)) ctx.backend.fill(y2, 0.0);   // the other tp ranks' rows
    const Tensor y_mine = y2.slice(0, sh.first, sh.count);  // [n, D]
    c->x = ctx.save(Shape{sh.count, x2.size(1)});
    ctx.backend.copy(x2.slice(0, sh.first, sh.count), c->x);
    c->route = moe_route(ctx, cfg_, p_.router, c->x, sh.tokens);
    c->dispatch = moe_dispatch(ctx, sh.experts, c->route, c->x);
    c->experts = moe_experts_forward(ctx, p_, c->dispatch);
    moe_combine(ctx, sh.experts, c->dispatch, c->experts.y, y_mine);
    if (p_.has_shared()) c->shared = shared_forward(ctx, p_, c->x, y_mine);
    if (stats) {
      stats->aux_loss = c->route.aux;
      stats->z_loss = c->route.z;
      stats->expert_load = c->route.load;
    }
    return c;
  }

  void backward(LayerContext& ctx, Cache& cache, const Tensor& dy, const Tensor& dx) override {
    auto& c = static_cast<Saved&>(cache);
    const MoeShard& sh = c.shard;
    const Tensor dy2 = rows(dy).slice(0, sh.first, sh.count);  // [n, D] this rank's rows
    const Tensor dx2 = rows(dx).slice(0, sh.first, sh.count);  // [n, D]
    const i64 N = c.x.size(0), k = cfg_.top_k;
    if (p_.has_shared()) shared_backward(ctx, p_, c.shared, c.x, dy2, dx2);
    ScratchScope scope(ctx.scratch);
    // Combine backward: each expert row's gradient and the combine weights' gradient.
    Tensor dy_exp = ctx.temp(c.experts.y.shape);  // [R, D]
    Tensor d_weights = ctx.temp(Shape{N, k});     // [n, k], 0 for dropped slots
    moe_combine_backward(ctx, sh.experts, c.dispatch, c.experts.y, dy2, dy_exp, d_weights);
    Tensor dx_exp = ctx.temp(c.dispatch.x_exp.shape);  // [R, D]
    moe_experts_backward(ctx, p_, c.dispatch, c.experts, dy_exp, dx_exp);
    // Dispatch backward: each token's routed rows sum into dx.
    moe_dispatch_backward(ctx, sh.experts, c.dispatch, dx_exp, dx2);
    moe_route_backward(ctx, cfg_, p_.router, c.x, c.route, d_weights, dx2);
  }

 private:
  // This rank's rows, statistics group and expert placement (the module comment).
  MoeShard shard(const LayerContext& ctx, const Tensor& x) const {
    const i64 B = x.size(0), T = x.size(1), N = B * T;
    MoeShard s;
    s.count = N;
    s.experts.num_experts = cfg_.num_experts;
    s.experts.dispatcher = cfg_.dispatcher;
    s.experts.first = first_expert_;
    s.experts.count = local_experts_;
    const ProcessGroups* g = ctx.groups;
    if (g == nullptr) {
      LINMOE_CHECK(local_experts_ == cfg_.num_experts, "moe: this rank holds ", local_experts_,
                   " of ", cfg_.num_experts, " experts but has no process groups");
      return s;
    }
    const Layout& l = g->layout();
    const Coordinates& at = g->coords();
    LINMOE_CHECK(
        local_experts_ * l.ep == cfg_.num_experts && first_expert_ == at.ep_rank * local_experts_,
        "moe: experts [", first_expert_, ", ", first_expert_ + local_experts_, ") are not ep rank ",
        at.ep_rank, "'s slice of ", cfg_.num_experts, " over ep ", l.ep);
    if (l.ep > 1) {
      s.experts.ep = &g->tensor_group(GroupKind::ep);
      s.experts.ep_host = &g->group(GroupKind::ep);
    }
    s.first = N * at.tp_rank / l.tp;
    s.count = N * (at.tp_rank + 1) / l.tp - s.first;
    if (l.tp * l.cp > 1) {
      s.tokens.group = &g->group(GroupKind::tp_cp);  // host buffers only (moe_router.h)
      // n = b·T_global + t with t the global position (MODEL.md 4): this piece starts at
      // cp_rank·T of a sequence of cp·T.
      s.tokens.token_index.resize(static_cast<std::size_t>(s.count));
      for (i64 i = 0; i < s.count; ++i) {
        const i64 f = s.first + i, b = f / T, t = f % T;
        s.tokens.token_index[static_cast<std::size_t>(i)] =
            b * (T * l.cp) + static_cast<i64>(at.cp_rank) * T + t;
      }
    }
    return s;
  }

  MoeConfig cfg_;
  MoeParams p_;
  i64 local_experts_ = 0, first_expert_ = 0;  // this rank's expert slice
};

}  // namespace

std::unique_ptr<Sublayer> make_moe(const ModelConfig& m, int layer, const ParameterStore& params) {
  LINMOE_CHECK(m.moe.num_experts > 0, "make_moe: layer ", layer, " has no experts");
  LINMOE_CHECK(!m.moe.capacity_factor || !m.moe.capacity_factor_text.empty(),
               "make_moe: moe.capacity_factor is set without its decimal text");
  return std::make_unique<Moe>(m, layer, params);
}

}  // namespace linmoe
