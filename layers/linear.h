// Dense projections in the row-vector convention of MODEL.md: y = x Wᵀ (+ b), W [out, in].
// Free functions over the backend's GEMM; tensor-parallel splits slice W and add a reduction.
#pragma once
#include "layers/layer.h"

namespace linmoe {

// x [N, in] (a 2-D view; [B, T, in] is flattened), W [out, in], b [out] or undefined; y [N, out]
// overwritten.
void linear_forward(LayerContext& ctx, const Tensor& x, const Tensor& w, const Tensor& b,
                    const Tensor& y);
// dx (+)= dy W when dx is defined (accumulate selects += vs =); dW += dyᵀ x; db += Σ_n dy.
void linear_backward(LayerContext& ctx, const Tensor& x, const Tensor& w, const Tensor& dy,
                     const Tensor& dx, bool accumulate_dx, const Tensor& dw, const Tensor& db);

// [..., C] -> [N, C] view of a contiguous tensor.
Tensor rows(const Tensor& t);

}  // namespace linmoe
