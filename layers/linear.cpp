#include "layers/linear.h"

namespace linmoe {

Tensor rows(const Tensor& t) {
  return t.ndim() == 2 ? t : t.flatten_to_2d();
}

void linear_forward(LayerContext& ctx, const Tensor& x, const Tensor& w, const Tensor& b,
                    const Tensor& y) {
  const Tensor x2 = rows(x), y2 = rows(y);
  if (b.data) {
    // y = ones[N, 1] · b[1, out] (the bias in every row), then y += x Wᵀ.
    ScratchScope scope(ctx.scratch);
    Tensor ones = ctx.temp(Shape{y2.size(0), 1});
    ctx.backend.fill(ones, 1.0);
    ctx.backend.gemm(ones, false, b.reshape(Shape{1, b.numel()}), false, y2, 1.0, 0.0);
    ctx.backend.gemm(x2, false, w, true, y2, 1.0, 1.0);
  } else {
    ctx.backend.gemm(x2, false, w, true, y2, 1.0, 0.0);
  }
}

void linear_backward(LayerContext& ctx, const Tensor& x, const Tensor& w, const Tensor& dy,
                     const Tensor& dx, bool accumulate_dx, const Tensor& dw, const Tensor& db) {
  const Tensor x2 = rows(x), dy2 = rows(dy);
  if (dx.data) ctx.backend.gemm(dy2, false, w, false, rows(dx), 1.0, accumulate_dx ? 1.0 : 0.0);
  if (dw.data) ctx.backend.gemm(dy2, true, x2, false, dw, 1.0, 1.0);
  if (db.data) ctx.backend.sum_rows(dy2, db, true);
}

}  // namespace linmoe
