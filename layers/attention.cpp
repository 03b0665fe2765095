// The softmax attention mixer ('N') of MODEL.md 2: q/k/v projections (+ biases with
// attention.qkv_bias), RoPE on q and k at global positions, causal GQA attention with scale 1/√d,
// o_proj.
//
// Heads are read from this rank's parameter slices, never from the config's totals: under tensor
// parallelism q_proj/k_proj/v_proj hold a contiguous range of whole heads and o_proj the matching
// columns, so the same code runs on a head slice (tp only adds the row-parallel reduction after
// o_proj and the column-parallel one for dx). Context parallelism (LASP-2H, PARALLEL.md) plugs in
// where the keys are chosen: it all-gathers K and V (after RoPE at global positions) over the cp
// group, attends the local queries with q_offset = cp_rank·T_local and reduce-scatters dK, dV;
// on one rank the keys are the local tokens and q_offset is 0. Piece r only sees keys of pieces
// 0..r, so it keeps just those (Tk = (r+1)·T_local) and sends zeros for the later ones.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "core/check.h"
#include "layers/linear.h"
#include "layers/sublayers.h"
#include "parallel/process_groups.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

struct AttentionCache : Sublayer::Cache {
  i64 B = 0, T = 0;
  i64 position_offset = 0;  // global position of the first local token (RoPE)
  i64 q_offset = 0;         // position of query 0 among the keys (attention_forward's contract)
  Tensor x;                 // [B, T, D] the mixer input (copied: the caller may reuse its buffer)
  Tensor q;                 // [B, T, Hq, d] after RoPE
  Tensor k;                 // [B, Tk, Hkv, d] after RoPE: all visible keys (Tk = T on one rank)
  Tensor v;                 // [B, Tk, Hkv, d]
  int cp_size = 1;          // pieces of the sequence (context parallelism)
  int cp_rank = 0;
  Tensor o;    // [B, T, Hq, d] attention output, the o_proj input
  Tensor lse;  // [B, Hq, T] stat: log-sum-exp of each query's logits
};

class Attention final : public Sublayer {
 public:
  Attention(const ModelConfig& m, int layer, const ParameterStore& params)
      : theta_(m.attention.rope_theta), d_(m.attention.head_dim) {
    const std::string p = "layers." + std::to_string(layer) + ".mixer.";
    wq_ = params.index(p + "q_proj.weight");
    wk_ = params.index(p + "k_proj.weight");
    wv_ = params.index(p + "v_proj.weight");
    wo_ = params.index(p + "o_proj.weight");
    if (m.attention.qkv_bias) {
      bq_ = params.index(p + "q_proj.bias");
      bk_ = params.index(p + "k_proj.bias");
      bv_ = params.index(p + "v_proj.bias");
    }
    LINMOE_CHECK(d_ >= 2 && d_ % 2 == 0, p, "head_dim ", d_, " must be even (RoPE, MODEL.md 2)");

    // This rank's heads: the rows of its q_proj and k_proj slices (all of them on one rank).
    const ParamSpec& q = params.spec(wq_);
    const ParamSpec& k = params.spec(wk_);
    LINMOE_CHECK(q.shape.ndim() == 2 && q.shape[0] % d_ == 0 && q.offset[0] % d_ == 0, p,
                 "q_proj slice ", q.shape.str(), " does not hold whole heads of ", d_);
    LINMOE_CHECK(k.shape.ndim() == 2 && k.shape[0] % d_ == 0 && k.offset[0] % d_ == 0, p,
                 "k_proj slice ", k.shape.str(), " does not hold whole heads of ", d_);
    hq_ = q.shape[0] / d_;
    hkv_ = k.shape[0] / d_;
    D_ = q.shape[1];
    // The kernel maps local query head h to local kv head ⌊h·Hkv/Hq⌋; with equal group sizes
    // Hq/Hkv on every rank that is MODEL.md's global ⌊h·Hkv/Hq⌋.
    LINMOE_CHECK(hkv_ >= 1 && hq_ % hkv_ == 0, p, "kv heads ", hkv_, " must divide query heads ",
                 hq_);
    LINMOE_CHECK(k.shape[1] == D_, p, "k_proj.weight ", k.shape.str(), " vs q_proj ",
                 q.shape.str());
    LINMOE_CHECK(params.spec(wv_).shape == k.shape, p, "v_proj.weight ",
                 params.spec(wv_).shape.str(), " differs from k_proj ", k.shape.str());
    LINMOE_CHECK(params.spec(wo_).shape == (Shape{D_, hq_ * d_}), p, "o_proj.weight ",
                 params.spec(wo_).shape.str(), " must be [", D_, ", ", hq_ * d_, "]");
    if (bq_ >= 0) {
      LINMOE_CHECK(params.spec(bq_).shape == (Shape{hq_ * d_}), p, "q_proj.bias ",
                   params.spec(bq_).shape.str());
      LINMOE_CHECK(params.spec(bk_).shape == (Shape{hkv_ * d_}), p, "k_proj.bias ",
                   params.spec(bk_).shape.str());
      LINMOE_CHECK(params.spec(bv_).shape == (Shape{hkv_ * d_}), p, "v_proj.bias ",
                   params.spec(bv_).shape.str());
    }
  }

  std::unique_ptr<Cache> forward(LayerContext& ctx, const Tensor& x, const Tensor& y,
                                 SublayerStats* /*stats*/) override {
    LINMOE_CHECK(x.ndim() == 3 && x.size(2) == D_, "attention mixer input must be [B, T, ", D_,
                 "], got ", x.str());
    Backend& be = ctx.backend;
    auto c = std::make_unique<AttentionCache>();
    const i64 B = x.size(0), T = x.size(1);
    c->B = B;
    c->T = T;
    c->position_offset = ctx.position_offset;
    if (ctx.groups != nullptr) {
      c->cp_size = ctx.groups->layout().cp;
      c->cp_rank = ctx.groups->coords().cp_rank;
    }
    c->q_offset = static_cast<i64>(c->cp_rank) * T;  // LASP-2H: the keys of pieces 0..cp_rank
    LINMOE_CHECK(c->cp_size == 1 || ctx.position_offset == c->q_offset,
                 "attention: context-parallel piece ", c->cp_rank, " of ", T,
                 " tokens must start at position ", c->q_offset, ", got position_offset ",
                 ctx.position_offset);
    c->x = ctx.save(x.shape);  // [B, T, D]
    be.copy(x, c->x);

    // q = x Wqᵀ (+ bq), k, v likewise, viewed per head (MODEL.md 2).
    c->q = ctx.save({B, T, hq_, d_});  // [B, T, Hq, d]
    ScratchScope scope(ctx.scratch);
    const bool cp = c->cp_size > 1;
    const Tensor k = cp ? ctx.temp({B, T, hkv_, d_}) : ctx.save({B, T, hkv_, d_});  // [B,T,Hkv,d]
    const Tensor v = cp ? ctx.temp({B, T, hkv_, d_}) : ctx.save({B, T, hkv_, d_});  // [B,T,Hkv,d]
    linear_forward(ctx, c->x, ctx.param(wq_), bias(ctx, bq_), flat(c->q));
    linear_forward(ctx, c->x, ctx.param(wk_), bias(ctx, bk_), flat(k));
    linear_forward(ctx, c->x, ctx.param(wv_), bias(ctx, bv_), flat(v));

    // RoPE in place at global positions position_offset + t (MODEL.md 2): the saved q and k are
    // the rotated ones, which is what attention_backward needs.
    be.rope_forward(c->q, c->q, theta_, c->position_offset);
    be.rope_forward(k, k, theta_, c->position_offset);
    if (cp) {
      c->k = gather_keys(ctx, k, c->cp_rank);
      c->v = gather_keys(ctx, v, c->cp_rank);
    } else {
      c->k = k;
      c->v = v;
    }

    c->o = ctx.save({B, T, hq_, d_});                                 // [B, T, Hq, d]
    c->lse = ctx.saved.allocate(stat_dtype(ctx.dtype), {B, hq_, T});  // [B, Hq, T]
    be.attention_forward(c->q, c->k, c->v, scale(), c->q_offset, c->o, c->lse);

    // out = concat_h(o) o_projᵀ.
    linear_forward(ctx, flat(c->o), ctx.param(wo_), Tensor{}, y);
    return c;
  }

  void backward(LayerContext& ctx, Cache& cache, const Tensor& dy, const Tensor& dx) override {
    auto& c = dynamic_cast<AttentionCache&>(cache);
    Backend& be = ctx.backend;
    const i64 B = c.B, T = c.T;
    LINMOE_CHECK(dy.ndim() == 3 && dy.size(0) == B && dy.size(1) == T && dy.size(2) == D_,
                 "attention mixer dy ", dy.str(), " does not match its forward [", B, ", ", T, ", ",
                 D_, "]");
    ScratchScope scope(ctx.scratch);

    // out = o Woᵀ: d_o = dy Wo, dWo += dyᵀ o.
    const Tensor d_o = ctx.temp({B, T, hq_, d_});  // [B, T, Hq, d]
    linear_backward(ctx, flat(c.o), ctx.param(wo_), dy, flat(d_o), false, ctx.grad(wo_), Tensor{});

    // Attention: dk, dv are summed over the query heads sharing a kv head, over all visible keys.
    const i64 Tk = c.k.size(1);
    const Tensor dq = ctx.temp({B, T, hq_, d_});    // [B, T, Hq, d]
    const Tensor dk = ctx.temp({B, Tk, hkv_, d_});  // [B, Tk, Hkv, d]
    const Tensor dv = ctx.temp({B, Tk, hkv_, d_});  // [B, Tk, Hkv, d]
    be.attention_backward(c.q, c.k, c.v, c.o, c.lse, d_o, scale(), c.q_offset, dq, dk, dv);
    // LASP-2H: every piece's contributions to a key sum on the key's owner.
    const Tensor dk_local = c.cp_size > 1 ? scatter_key_grads(ctx, dk, T) : dk;  // [B,T,..]
    const Tensor dv_local = c.cp_size > 1 ? scatter_key_grads(ctx, dv, T) : dv;

    // RoPE is a rotation: its gradient is the inverse rotation, in place.
    be.rope_backward(dq, dq, theta_, c.position_offset);
    be.rope_backward(dk_local, dk_local, theta_, c.position_offset);

    // The projections: dx += d· W, dW += d·ᵀ x, db += Σ_n d·.
    linear_backward(ctx, c.x, ctx.param(wq_), flat(dq), dx, true, ctx.grad(wq_),
                    bias_grad(ctx, bq_));
    linear_backward(ctx, c.x, ctx.param(wk_), flat(dk_local), dx, true, ctx.grad(wk_),
                    bias_grad(ctx, bk_));
    linear_backward(ctx, c.x, ctx.param(wv_), flat(dv_local), dx, true, ctx.grad(wv_),
                    bias_grad(ctx, bv_));
  }

 private:
  // LASP-2H forward: all-gathers the local keys (or values) t [B, T, Hkv, d] over the cp group and
  // keeps the pieces 0..cp_rank, the ones this piece's queries can see, as [B, (cp_rank+1)·T,
  // Hkv, d] in ctx.saved.
  static Tensor gather_keys(LayerContext& ctx, const Tensor& t, int cp_rank) {
    Communicator& cp = ctx.groups->tensor_group(GroupKind::cp);
    const i64 B = t.size(0), T = t.size(1);
    const Tensor all = ctx.temp({static_cast<i64>(cp.size()), B, T, t.size(2), t.size(3)});
    cp.all_gather(t, all);  // [cp, B, T, Hkv, d]
    const i64 pieces = cp_rank + 1;
    const Tensor out = ctx.save({B, pieces * T, t.size(2), t.size(3)});  // [B, Tk, Hkv, d]
    for (i64 r = 0; r < pieces; ++r) {
      for (i64 b = 0; b < B; ++b) {
        ctx.backend.copy(all.select(0, r).select(0, b), out.select(0, b).slice(0, r * T, T));
      }
    }
    return out;
  }

  // LASP-2H backward: g [B, Tk, Hkv, d] holds this piece's gradients for the keys of pieces
  // 0..Tk/T−1; returns [B, T, Hkv, d] (scratch) = the sum over the cp group of every piece's
  // gradient for this rank's keys (reduce-scatter; the pieces it cannot see are zeros).
  static Tensor scatter_key_grads(LayerContext& ctx, const Tensor& g, i64 T) {
    Communicator& cp = ctx.groups->tensor_group(GroupKind::cp);
    const i64 B = g.size(0), pieces = g.size(1) / T;
    LINMOE_CHECK(pieces * T == g.size(1) && pieces <= cp.size(), "attention: key gradients ",
                 g.str(), " are not whole pieces of ", T);
    const Tensor all =
        ctx.temp({static_cast<i64>(cp.size()), B, T, g.size(2), g.size(3)});  // [cp, B, T, Hkv, d]
    if (pieces < cp.size()) ctx.backend.fill(all.slice(0, pieces, cp.size() - pieces), 0.0);
    for (i64 r = 0; r < pieces; ++r) {
      for (i64 b = 0; b < B; ++b) {
        ctx.backend.copy(g.select(0, b).slice(0, r * T, T), all.select(0, r).select(0, b));
      }
    }
    const Tensor out = ctx.temp({B, T, g.size(2), g.size(3)});  // [B, T, Hkv, d]
    cp.reduce_scatter(all, out);
    return out;
  }

  double scale() const { return 1.0 / std::sqrt(static_cast<double>(d_)); }

  // [B, T, H, d] -> [B·T, H·d]: the per-head view as the projection's rows.
  static Tensor flat(const Tensor& t) {
    return t.reshape({t.size(0) * t.size(1), t.size(2) * t.size(3)});
  }
  static Tensor bias(const LayerContext& ctx, int i) { return i >= 0 ? ctx.param(i) : Tensor{}; }
  static Tensor bias_grad(const LayerContext& ctx, int i) {
    return i >= 0 ? ctx.grad(i) : Tensor{};
  }

  double theta_;
  i64 d_;                                      // head_dim
  int wq_ = -1, wk_ = -1, wv_ = -1, wo_ = -1;  // parameter indices
  int bq_ = -1, bk_ = -1, bv_ = -1;            // biases (-1 without qkv_bias)
  i64 hq_ = 0, hkv_ = 0;                       // local query and kv heads
  i64 D_ = 0;                                  // hidden size
};

}  // namespace

std::unique_ptr<Sublayer> make_attention(const ModelConfig& m, int layer,
                                         const ParameterStore& params) {
  return std::make_unique<Attention>(m, layer, params);
}

}  // namespace linmoe
