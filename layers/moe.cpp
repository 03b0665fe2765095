// The MoE block of MODEL.md 4: route → dispatch (plan + permute) → local experts → combine
// (unpermute with the routing weights), plus the gated shared expert. Each stage is its own
// function so that expert parallelism only inserts the all-to-all of the routed rows between
// dispatch and the experts, and back between the experts and the combine (PARALLEL.md).
#include <string>

#include "core/check.h"
#include "layers/linear.h"
#include "layers/moe_router.h"
#include "layers/sublayers.h"
#include "layers/swiglu_ffn.h"

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

// The routed rows of one micro-batch in expert order.
struct MoeDispatch {
  Tensor order;             // [N·k] i32: kept assignments n·k + s grouped by expert, then −1s
  std::vector<i64> counts;  // [E] kept assignments per expert (rows of x_perm, in order)
  i64 rows = 0;             // A = Σ_e counts[e]
  Tensor x_perm;            // [A, D] token rows in expert order
};

// The experts' activations, saved for backward.
struct ExpertActs {
  Tensor gate, up;  // [A, F]
  Tensor y;         // [A, D] SwiGLU_e of each routed row, before the combine weight
};

struct SharedActs {
  Tensor gate, up;    // [N, Fs] hidden pre-activations
  Tensor out;         // [N, D] SwiGLU_shared(x)
  Tensor gate_logit;  // [N, 1] x shared_gateᵀ
  Tensor g;           // [N, 1] sigmoid(gate_logit)
  Tensor order;       // [N] i32: the identity plan (every token's one slot, in token order)
};

// Dispatch: the plan (a stable sort of the kept assignments by expert) and the gather of the token
// rows. Under expert parallelism the counts are exchanged and x_perm is all-to-all'ed here.
MoeDispatch moe_dispatch(LayerContext& ctx, const MoeRouting& r, int E, const Tensor& x) {
  const i64 N = x.size(0), D = x.size(1), k = r.expert_ids.size(1);
  MoeDispatch d;
  d.order = ctx.saved.allocate(DType::i32, Shape{N * k});
  {
    ScratchScope scope(ctx.scratch);
    Tensor counts = ctx.temp(DType::i64, Shape{E});  // [E]
    d.rows = ctx.backend.moe_dispatch_plan(r.expert_ids, r.keep, E, d.order, counts);
    d.counts.assign(static_cast<std::size_t>(E), 0);
    ctx.backend.copy(counts, Tensor(d.counts.data(), DType::i64, Device::cpu, Shape{E}));
  }
  d.x_perm = ctx.save(Shape{d.rows, D});
  ctx.backend.moe_permute(x, d.order, static_cast<int>(k), d.x_perm);
  return d;
}

SwigluWeights expert_slice(const Tensor& w1, const Tensor& w3, const Tensor& w2, i64 e) {
  return SwigluWeights{w1.select(0, e), w3.select(0, e), w2.select(0, e)};
}

// Local experts: expert e runs its SwiGLU as GEMMs on its contiguous row range of x_perm, with
// experts.w1[e] the [F, D] slice of the [E, F, D] tensor (MODEL.md 4). Empty experts do nothing.
ExpertActs moe_experts_forward(LayerContext& ctx, const MoeParams& p, const MoeDispatch& d) {
  const Tensor w1 = ctx.param(p.w1), w3 = ctx.param(p.w3), w2 = ctx.param(p.w2);
  const i64 F = w1.size(1), D = w1.size(2);
  ExpertActs a;
  a.gate = ctx.save(Shape{d.rows, F});
  a.up = ctx.save(Shape{d.rows, F});
  a.y = ctx.save(Shape{d.rows, D});
  i64 row = 0;
  for (i64 e = 0; e < static_cast<i64>(d.counts.size()); ++e) {
    const i64 n = d.counts[static_cast<std::size_t>(e)];
    if (n == 0) continue;
    swiglu_ffn_forward(ctx, d.x_perm.slice(0, row, n), expert_slice(w1, w3, w2, e),
                       a.gate.slice(0, row, n), a.up.slice(0, row, n), a.y.slice(0, row, n));
    row += n;
  }
  return a;
}

// dx_perm [A, D] overwritten; the experts' weight gradients accumulate.
void moe_experts_backward(LayerContext& ctx, const MoeParams& p, const MoeDispatch& d,
                          const ExpertActs& a, const Tensor& dy_perm, const Tensor& dx_perm) {
  const Tensor w1 = ctx.param(p.w1), w3 = ctx.param(p.w3), w2 = ctx.param(p.w2);
  const Tensor g1 = ctx.grad(p.w1), g3 = ctx.grad(p.w3), g2 = ctx.grad(p.w2);
  i64 row = 0;
  for (i64 e = 0; e < static_cast<i64>(d.counts.size()); ++e) {
    const i64 n = d.counts[static_cast<std::size_t>(e)];
    if (n == 0) continue;
    swiglu_ffn_backward(ctx, d.x_perm.slice(0, row, n), expert_slice(w1, w3, w2, e),
                        a.gate.slice(0, row, n), a.up.slice(0, row, n), dy_perm.slice(0, row, n),
                        dx_perm.slice(0, row, n), false, expert_slice(g1, g3, g2, e));
    row += n;
  }
}

// Combine: y_t = Σ_{e∈I_t, kept} w_{t,e} · SwiGLU_e(x_t). A dropped assignment adds nothing and
// never renormalises the token's other weights (MODEL.md 4); a token with none gets 0 here and
// keeps its residual in the block.
void moe_combine(LayerContext& ctx, const MoeRouting& r, const MoeDispatch& d, const ExpertActs& a,
                 const Tensor& y) {
  ctx.backend.moe_unpermute(a.y, d.order, r.weights, y, false);
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

class Moe : public Sublayer {
 public:
  Moe(const ModelConfig& m, int layer, const ParameterStore& params) : cfg_(m.moe) {
    const std::string pre = "layers." + std::to_string(layer) + ".ffn.";
    p_.router = params.index(pre + "router.weight");
    p_.w1 = params.index(pre + "experts.w1");
    p_.w3 = params.index(pre + "experts.w3");
    p_.w2 = params.index(pre + "experts.w2");
    // Every expert lives on this rank until expert parallelism splits them.
    LINMOE_CHECK(params.spec(p_.w1).shape[0] == cfg_.num_experts, "moe: layer ", layer, " holds ",
                 params.spec(p_.w1).shape[0], " of ", cfg_.num_experts,
                 " experts; expert parallelism is not implemented");
    if (cfg_.shared_ffn_hidden_size > 0) {
      p_.shared_w1 = params.index(pre + "shared.w1.weight");
      p_.shared_w3 = params.index(pre + "shared.w3.weight");
      p_.shared_w2 = params.index(pre + "shared.w2.weight");
      p_.shared_gate = params.index(pre + "shared_gate.weight");
    }
  }

  struct Saved : Cache {
    Tensor x;  // [N, D] the input
    MoeRouting route;
    MoeDispatch dispatch;
    ExpertActs experts;
    SharedActs shared;
  };

  std::unique_ptr<Cache> forward(LayerContext& ctx, const Tensor& x, const Tensor& y,
                                 SublayerStats* stats) override {
    auto c = std::make_unique<Saved>();
    const Tensor x2 = rows(x), y2 = rows(y);  // [N, D]
    c->x = ctx.save(x2.shape);
    ctx.backend.copy(x2, c->x);
    c->route = moe_route(ctx, cfg_, p_.router, c->x);
    c->dispatch = moe_dispatch(ctx, c->route, cfg_.num_experts, c->x);
    c->experts = moe_experts_forward(ctx, p_, c->dispatch);
    moe_combine(ctx, c->route, c->dispatch, c->experts, y2);
    if (p_.has_shared()) c->shared = shared_forward(ctx, p_, c->x, y2);
    if (stats) {
      stats->aux_loss = c->route.aux;
      stats->z_loss = c->route.z;
      stats->expert_load = c->route.load;
    }
    return c;
  }

  void backward(LayerContext& ctx, Cache& cache, const Tensor& dy, const Tensor& dx) override {
    auto& c = static_cast<Saved&>(cache);
    const Tensor dy2 = rows(dy), dx2 = rows(dx);  // [N, D]
    const i64 N = c.x.size(0), k = cfg_.top_k;
    if (p_.has_shared()) shared_backward(ctx, p_, c.shared, c.x, dy2, dx2);
    ScratchScope scope(ctx.scratch);
    // Combine backward: each routed row's gradient and the combine weights' gradient.
    Tensor dy_perm = ctx.temp(c.experts.y.shape);  // [A, D]
    Tensor d_weights = ctx.temp(Shape{N, k});      // [N, k], 0 for dropped slots
    ctx.backend.moe_unpermute_backward(dy2, c.experts.y, c.dispatch.order, c.route.weights, dy_perm,
                                       d_weights);
    Tensor dx_perm = ctx.temp(c.dispatch.x_perm.shape);  // [A, D]
    moe_experts_backward(ctx, p_, c.dispatch, c.experts, dy_perm, dx_perm);
    // Dispatch backward: each token's routed rows sum into dx.
    ctx.backend.moe_permute_backward(dx_perm, c.dispatch.order, static_cast<int>(k), dx2);
    moe_route_backward(ctx, cfg_, p_.router, c.x, c.route, d_weights, dx2);
  }

 private:
  MoeConfig cfg_;
  MoeParams p_;
};

}  // namespace

std::unique_ptr<Sublayer> make_moe(const ModelConfig& m, int layer, const ParameterStore& params) {
  LINMOE_CHECK(m.moe.num_experts > 0, "make_moe: layer ", layer, " has no experts");
  LINMOE_CHECK(!m.moe.capacity_factor || !m.moe.capacity_factor_text.empty(),
               "make_moe: moe.capacity_factor is set without its decimal text");
  return std::make_unique<Moe>(m, layer, params);
}

}  // namespace linmoe
