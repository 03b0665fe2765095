// The dense SwiGLU FFN (MODEL.md 1), used when moe.num_experts == 0, and the SwiGLU helpers that
// the MoE block's shared expert uses.
#include "core/check.h"
#include "layers/linear.h"
#include "layers/sublayers.h"
#include "layers/swiglu_ffn.h"

namespace linmoe {

void swiglu_ffn_forward(LayerContext& ctx, const Tensor& x, const SwigluWeights& w,
                        const Tensor& gate, const Tensor& up, const Tensor& y) {
  ScratchScope scope(ctx.scratch);
  linear_forward(ctx, x, w.w1, Tensor{}, gate);  // [N, F]
  linear_forward(ctx, x, w.w3, Tensor{}, up);    // [N, F]
  Tensor h = ctx.temp(gate.shape);               // [N, F]
  ctx.backend.swiglu_forward(gate, up, h);
  linear_forward(ctx, h, w.w2, Tensor{}, y);  // [N, D]
}

void swiglu_ffn_backward(LayerContext& ctx, const Tensor& x, const SwigluWeights& w,
                         const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dx,
                         bool accumulate_dx, const SwigluWeights& dw) {
  ScratchScope scope(ctx.scratch);
  // The hidden is recomputed rather than saved: one elementwise op against an [N, F] tensor.
  Tensor h = ctx.temp(gate.shape);  // [N, F]
  ctx.backend.swiglu_forward(gate, up, h);
  Tensor dh = ctx.temp(gate.shape);  // [N, F]
  linear_backward(ctx, h, w.w2, dy, dh, false, dw.w2, Tensor{});
  Tensor dgate = ctx.temp(gate.shape), dup = ctx.temp(gate.shape);  // [N, F]
  ctx.backend.swiglu_backward(gate, up, dh, dgate, dup);
  linear_backward(ctx, x, w.w1, dgate, dx, accumulate_dx, dw.w1, Tensor{});
  linear_backward(ctx, x, w.w3, dup, dx, true, dw.w3, Tensor{});
}

namespace {

class DenseFfn : public Sublayer {
 public:
  DenseFfn(const ModelConfig& m, int layer, const ParameterStore& params) {
    const std::string p = "layers." + std::to_string(layer) + ".ffn.";
    w1_ = params.index(p + "w1.weight");
    w3_ = params.index(p + "w3.weight");
    w2_ = params.index(p + "w2.weight");
  }

  struct Saved : Cache {
    Tensor x;         // [N, D] the input
    Tensor gate, up;  // [N, F]
  };

  std::unique_ptr<Cache> forward(LayerContext& ctx, const Tensor& x, const Tensor& y,
                                 SublayerStats* stats) override {
    auto c = std::make_unique<Saved>();
    const Tensor x2 = rows(x);  // [N, D]
    const std::int64_t N = x2.size(0), F = ctx.param(w1_).size(0);
    c->x = ctx.save(x2.shape);
    ctx.backend.copy(x2, c->x);
    c->gate = ctx.save(Shape{N, F});
    c->up = ctx.save(Shape{N, F});
    swiglu_ffn_forward(ctx, c->x, weights(ctx), c->gate, c->up, rows(y));
    return c;
  }

  void backward(LayerContext& ctx, Cache& cache, const Tensor& dy, const Tensor& dx) override {
    auto& c = static_cast<Saved&>(cache);
    swiglu_ffn_backward(ctx, c.x, weights(ctx), c.gate, c.up, rows(dy), rows(dx), true,
                        SwigluWeights{ctx.grad(w1_), ctx.grad(w3_), ctx.grad(w2_)});
  }

 private:
  SwigluWeights weights(const LayerContext& ctx) const {
    return SwigluWeights{ctx.param(w1_), ctx.param(w3_), ctx.param(w2_)};
  }
  int w1_ = -1, w3_ = -1, w2_ = -1;
};

}  // namespace

std::unique_ptr<Sublayer> make_dense_ffn(const ModelConfig& m, int layer,
                                         const ParameterStore& params) {
  LINMOE_CHECK(m.moe.num_experts == 0, "make_dense_ffn: layer ", layer, " has ", m.moe.num_experts,
               " experts (use make_moe)");
  return std::make_unique<DenseFfn>(m, layer, params);
}

}  // namespace linmoe
