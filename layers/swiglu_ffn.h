// The SwiGLU feed-forward of MODEL.md 1, shared by the dense FFN and the shared expert of the MoE
// block (MODEL.md 4): y = (silu(x w1ᵀ) ⊙ (x w3ᵀ)) w2ᵀ. The routed experts compute the same with
// one grouped GEMM per projection (layers/moe.cpp).
#pragma once
#include "layers/layer.h"

namespace linmoe {

struct SwigluWeights {
  Tensor w1;  // [F, D] gate
  Tensor w3;  // [F, D] up
  Tensor w2;  // [D, F] down
};

// x [N, D]; gate, up [N, F] are written (the caller keeps them for backward); y [N, D]
// overwritten. The hidden silu(gate) ⊙ up is a temporary.
void swiglu_ffn_forward(LayerContext& ctx, const Tensor& x, const SwigluWeights& w,
                        const Tensor& gate, const Tensor& up, const Tensor& y);
// Given the forward's x, gate and up: dx (+)= ∂L/∂x (accumulate_dx selects += vs =); the three
// weight gradients in `dw` ACCUMULATE.
void swiglu_ffn_backward(LayerContext& ctx, const Tensor& x, const SwigluWeights& w,
                         const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dx,
                         bool accumulate_dx, const SwigluWeights& dw);

}  // namespace linmoe
