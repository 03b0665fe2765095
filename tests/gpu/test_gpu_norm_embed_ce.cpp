// The CUDA backend's RMSNorm, L2 norm, RoPE, embedding, cross-entropy and causal conv1d against
// the CPU backend (gpu_compare.h) in f32, bf16 and f64: odd sizes, vocabulary shards with ids and
// targets outside them and ignored targets, repeated token ids, halos present and absent,
// row-strided views, accumulating gradients (pre-filled), in-place RoPE, and run-to-run bitwise
// determinism of every accumulated gradient. Outputs are NaN-poisoned before each call.
// Bounds: tolerance() of gpu_compare.h (f32 1e-4, bf16 1e-2, f64 1e-12), as max |gpu − cpu|
// over max |cpu|.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "gpu/gpu_compare.h"

namespace linmoe::testing {
namespace {

using i64 = std::int64_t;

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f64};

// The CPU computes bf16 cases in f32 (on bf16-rounded inputs).
DType host_dtype(DType dt) {
  return dt == DType::bf16 ? DType::f32 : dt;
}

// Random host values for a `dt` case (rounded to bf16 when dt is bf16).
HostTensor random_host(DType dt, const Shape& shape, std::uint64_t seed, double lo = -1.0,
                       double hi = 1.0) {
  HostTensor h(host_dtype(dt), shape);
  fill_uniform(h.t(), seed, lo, hi);
  if (dt == DType::bf16) round_to_bf16(h.t());
  return h;
}

HostTensor poisoned_host(DType dt, const Shape& shape) {
  HostTensor h(dt, shape);
  poison(h.t());
  return h;
}

double err(GpuPair& g, const Tensor& gpu, const HostTensor& cpu) {
  return max_rel_error(g.values(gpu), cpu.to_f64());
}

TEST_CASE("gpu rms_norm forward and backward", "[gpu][norm]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 100;
  const i64 shapes[][2] = {{1, 1}, {7, 33}, {130, 257}, {1000, 40}, {65, 1500}, {3, 5000}};
  for (DType dt : kDtypes) {
    const DType hd = host_dtype(dt), sd = stat_dtype(dt);
    for (const auto& s : shapes) {
      const i64 N = s[0], D = s[1];
      CAPTURE(dtype_name(dt), N, D);
      const HostTensor x = random_host(dt, Shape{N, D}, ++seed, -2.0, 2.0);
      const HostTensor w = random_host(dt, Shape{D}, ++seed, 0.5, 1.5);
      const HostTensor dy = random_host(dt, Shape{N, D}, ++seed);
      HostTensor dw = random_host(dt, Shape{D}, ++seed);  // pre-filled: dw accumulates
      const Tensor xg = g->upload_as(x, dt), wg = g->upload_as(w, dt), dyg = g->upload_as(dy, dt);
      const Tensor dwg = g->upload_as(dw, dt), dwg2 = g->upload_as(dw, dt);

      HostTensor y = poisoned_host(hd, Shape{N, D}), rstd = poisoned_host(sd, Shape{N});
      g->cpu->rms_norm_forward(x, w, 1e-5, y, rstd);
      const Tensor yg = g->gpu_empty(dt, Shape{N, D}), rg = g->gpu_empty(sd, Shape{N});
      g->gpu->rms_norm_forward(xg, wg, 1e-5, yg, rg);
      CHECK(err(*g, yg, y) <= tolerance(dt));
      CHECK(err(*g, rg, rstd) <= tolerance(dt));

      HostTensor dx = poisoned_host(hd, Shape{N, D});
      g->cpu->rms_norm_backward(dy, x, w, rstd, dx, dw);
      const Tensor dxg = g->gpu_empty(dt, Shape{N, D});
      g->gpu->rms_norm_backward(dyg, xg, wg, rg, dxg, dwg);
      CHECK(err(*g, dxg, dx) <= tolerance(dt));
      CHECK(err(*g, dwg, dw) <= tolerance(dt));
      // Deterministic: the same call from the same dw gives the same bits.
      g->gpu->rms_norm_backward(dyg, xg, wg, rg, dxg, dwg2);
      CHECK(g->values(dwg2) == g->values(dwg));
    }
  }
}

// The fused residual add (x ← x + residual, then the norm of the stored sum) and the
// accumulated dx, against the CPU backend's fused forms.
TEST_CASE("gpu rms_norm with a fused residual add and an accumulated dx", "[gpu][norm]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 150;
  const i64 shapes[][2] = {{1, 1}, {7, 33}, {130, 256}, {65, 1500}};
  for (DType dt : kDtypes) {
    const DType hd = host_dtype(dt), sd = stat_dtype(dt);
    for (const auto& s : shapes) {
      const i64 N = s[0], D = s[1];
      CAPTURE(dtype_name(dt), N, D);
      HostTensor x = random_host(dt, Shape{N, D}, ++seed, -2.0, 2.0);
      const HostTensor res = random_host(dt, Shape{N, D}, ++seed, -2.0, 2.0);
      const HostTensor w = random_host(dt, Shape{D}, ++seed, 0.5, 1.5);
      const HostTensor dy = random_host(dt, Shape{N, D}, ++seed);
      HostTensor dx = random_host(dt, Shape{N, D}, ++seed);  // the running gradient
      HostTensor dw = random_host(dt, Shape{D}, ++seed);
      const Tensor xg = g->upload_as(x, dt), resg = g->upload_as(res, dt), wg = g->upload_as(w, dt);
      const Tensor dyg = g->upload_as(dy, dt), dxg = g->upload_as(dx, dt),
                   dwg = g->upload_as(dw, dt);

      HostTensor y = poisoned_host(hd, Shape{N, D}), rstd = poisoned_host(sd, Shape{N});
      g->cpu->rms_norm_forward(x, w, 1e-5, y, rstd, res);
      const Tensor yg = g->gpu_empty(dt, Shape{N, D}), rg = g->gpu_empty(sd, Shape{N});
      g->gpu->rms_norm_forward(xg, wg, 1e-5, yg, rg, resg);
      CHECK(err(*g, xg, x) <= tolerance(dt));  // the sum, in place
      CHECK(err(*g, yg, y) <= tolerance(dt));
      CHECK(err(*g, rg, rstd) <= tolerance(dt));

      g->cpu->rms_norm_backward(dy, x, w, rstd, dx, dw, true);
      g->gpu->rms_norm_backward(dyg, xg, wg, rg, dxg, dwg, true);
      CHECK(err(*g, dxg, dx) <= tolerance(dt));
      CHECK(err(*g, dwg, dw) <= tolerance(dt));
    }
  }
}

TEST_CASE("gpu l2_norm forward and backward", "[gpu][norm]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 200;
  const i64 shapes[][2] = {{1, 1}, {9, 64}, {300, 127}, {5, 2000}};
  for (DType dt : kDtypes) {
    const DType hd = host_dtype(dt), sd = stat_dtype(dt);
    for (const auto& s : shapes) {
      const i64 N = s[0], d = s[1];
      CAPTURE(dtype_name(dt), N, d);
      const HostTensor x = random_host(dt, Shape{N, d}, ++seed);
      const HostTensor dy = random_host(dt, Shape{N, d}, ++seed);
      const Tensor xg = g->upload_as(x, dt), dyg = g->upload_as(dy, dt);
      HostTensor y = poisoned_host(hd, Shape{N, d}), r = poisoned_host(sd, Shape{N});
      g->cpu->l2_norm_forward(x, 1e-6, y, r);
      const Tensor yg = g->gpu_empty(dt, Shape{N, d}), rg = g->gpu_empty(sd, Shape{N});
      g->gpu->l2_norm_forward(xg, 1e-6, yg, rg);
      CHECK(err(*g, yg, y) <= tolerance(dt));
      CHECK(err(*g, rg, r) <= tolerance(dt));
      HostTensor dx = poisoned_host(hd, Shape{N, d});
      g->cpu->l2_norm_backward(x, r, dy, dx);
      const Tensor dxg = g->gpu_empty(dt, Shape{N, d});
      g->gpu->l2_norm_backward(xg, rg, dyg, dxg);
      CHECK(err(*g, dxg, dx) <= tolerance(dt));
    }
  }
}

TEST_CASE("gpu rope forward and backward, in place and at large positions", "[gpu][rope]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 300;
  const i64 shapes[][4] = {{1, 1, 1, 2}, {2, 7, 3, 10}, {2, 33, 4, 64}, {1, 5, 9, 128}};
  for (DType dt : kDtypes) {
    const DType hd = host_dtype(dt);
    for (const auto& s : shapes) {
      for (i64 offset : {i64{0}, i64{17}, i64{123457}}) {
        const Shape shape{s[0], s[1], s[2], s[3]};
        CAPTURE(dtype_name(dt), shape.str(), offset);
        const HostTensor x = random_host(dt, shape, ++seed);
        HostTensor y = poisoned_host(hd, shape);
        g->cpu->rope_forward(x, y, 10000.0, offset);
        // Out of place, then in place.
        const Tensor xg = g->upload_as(x, dt), yg = g->gpu_empty(dt, shape);
        g->gpu->rope_forward(xg, yg, 10000.0, offset);
        CHECK(err(*g, yg, y) <= tolerance(dt));
        const Tensor zg = g->upload_as(x, dt);
        g->gpu->rope_forward(zg, zg, 10000.0, offset);
        CHECK(err(*g, zg, y) <= tolerance(dt));

        const HostTensor dy = random_host(dt, shape, ++seed);
        HostTensor dx = poisoned_host(hd, shape);
        g->cpu->rope_backward(dy, dx, 500000.0, offset);
        const Tensor dyg = g->upload_as(dy, dt), dxg = g->gpu_empty(dt, shape);
        g->gpu->rope_backward(dyg, dxg, 500000.0, offset);
        CHECK(err(*g, dxg, dx) <= tolerance(dt));
        g->gpu->rope_backward(dyg, dyg, 500000.0, offset);
        CHECK(err(*g, dyg, dx) <= tolerance(dt));
      }
    }
  }
}

TEST_CASE("gpu embedding over vocabulary shards, deterministic backward", "[gpu][embedding]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 400;
  const i64 V = 23;  // global vocabulary
  // Shards [0, 23), [0, 11), [11, 23) and the single row [22, 23).
  const i64 shards[][2] = {{0, 23}, {0, 11}, {11, 12}, {22, 1}};
  for (DType dt : kDtypes) {
    const DType hd = host_dtype(dt);
    for (i64 D : {1, 5, 64, 131}) {      // 64: 16-byte row copies
      for (i64 N : {1, 9, 300, 5000}) {  // 300 and 5000 tokens over 23 ids: many repeats
        HostTensor ids(DType::i32, Shape{N});
        fill_ints(ids.t(), ++seed, V);
        const Tensor idsg = g->upload(ids);
        for (const auto& sh : shards) {
          const i64 start = sh[0], Vl = sh[1];
          CAPTURE(dtype_name(dt), D, N, start, Vl);
          const HostTensor table = random_host(dt, Shape{Vl, D}, ++seed);
          const HostTensor dout = random_host(dt, Shape{N, D}, ++seed);
          HostTensor dtable = random_host(dt, Shape{Vl, D}, ++seed);  // pre-filled: accumulates
          const Tensor tg = g->upload_as(table, dt), dog = g->upload_as(dout, dt);
          const Tensor dtg = g->upload_as(dtable, dt), dtg2 = g->upload_as(dtable, dt);

          HostTensor out = poisoned_host(hd, Shape{N, D});
          g->cpu->embedding_forward(ids, table, out, start);
          const Tensor og = g->gpu_empty(dt, Shape{N, D});
          g->gpu->embedding_forward(idsg, tg, og, start);
          CHECK(max_abs_diff(g->values(og), out.to_f64()) == 0.0);  // a copy is exact

          g->cpu->embedding_backward(ids, dout, dtable, start);
          g->gpu->embedding_backward(idsg, dog, dtg, start);
          if (dt == DType::bf16) {
            CHECK(err(*g, dtg, dtable) <= tolerance(dt));
          } else {
            // Same additions in the same (token) order as the CPU: the same bits.
            CHECK(max_abs_diff(g->values(dtg), dtable.to_f64()) == 0.0);
          }
          g->gpu->embedding_backward(idsg, dog, dtg2, start);
          CHECK(g->values(dtg2) == g->values(dtg));
        }
      }
    }
  }
}

TEST_CASE("gpu cross-entropy over vocabulary shards with ignored targets", "[gpu][ce]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 500;
  struct Case {
    i64 N, V, start, Vl;
  };
  // Whole vocabulary, both halves of a split one (targets on either side), and a wide row.
  const Case cases[] = {
      {1, 7, 0, 7},      {7, 1000, 0, 1000},   {64, 1000, 0, 517},      {64, 1000, 517, 483},
      {33, 300, 299, 1}, {3, 40000, 0, 40000}, {5, 40000, 20000, 20000}};
  for (DType dt : kDtypes) {
    const DType hd = host_dtype(dt), sd = stat_dtype(dt);
    for (const Case& c : cases) {
      CAPTURE(dtype_name(dt), c.N, c.V, c.start, c.Vl);
      const HostTensor logits = random_host(dt, Shape{c.N, c.Vl}, ++seed, -8.0, 8.0);
      HostTensor targets(DType::i32, Shape{c.N});
      fill_ints(targets.t(), ++seed, c.V);
      for (i64 n = 2; n < c.N; n += 5) targets.data<std::int32_t>()[n] = -1;  // ignored
      const Tensor lg = g->upload_as(logits, dt), tg = g->upload(targets);

      HostTensor lse = poisoned_host(sd, Shape{c.N}), tl = poisoned_host(sd, Shape{c.N});
      g->cpu->cross_entropy_stats(logits, targets, c.start, lse, tl);
      const Tensor lseg = g->gpu_empty(sd, Shape{c.N}), tlg = g->gpu_empty(sd, Shape{c.N});
      g->gpu->cross_entropy_stats(lg, tg, c.start, lseg, tlg);
      CHECK(err(*g, lseg, lse) <= tolerance(dt));
      CHECK(max_abs_diff(g->values(tlg), tl.to_f64()) == 0.0);  // a copy (or 0) is exact

      // The backward with the same lse on both sides (the layer passes the global one).
      const HostTensor dloss = random_host(sd, Shape{c.N}, ++seed, 0.1, 1.0);
      const Tensor lse_in = g->upload(lse), dlg = g->upload(dloss);
      HostTensor dx = poisoned_host(hd, Shape{c.N, c.Vl});
      g->cpu->cross_entropy_backward(logits, targets, c.start, lse, dloss, dx);
      const Tensor dxg = g->gpu_empty(dt, Shape{c.N, c.Vl});
      g->gpu->cross_entropy_backward(lg, tg, c.start, lse_in, dlg, dxg);
      CHECK(err(*g, dxg, dx) <= tolerance(dt));
    }
  }
}

// Columns [off, off + C) of a [B, L, W] device tensor's values, and whether every other column
// still holds the poison (NaN): a strided output must not write outside its view.
std::vector<double> columns(const std::vector<double>& wide, i64 rows, i64 W, i64 off, i64 C,
                            bool* outside_untouched) {
  std::vector<double> out;
  *outside_untouched = true;
  for (i64 r = 0; r < rows; ++r) {
    for (i64 k = 0; k < W; ++k) {
      const double v = wide[static_cast<std::size_t>(r * W + k)];
      if (k >= off && k < off + C) {
        out.push_back(v);
      } else if (!std::isnan(v)) {
        *outside_untouched = false;
      }
    }
  }
  return out;
}

TEST_CASE("gpu causal_conv1d with halos, bias and row-strided views", "[gpu][conv]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 600;
  const i64 shapes[][4] = {{1, 1, 1, 1},    {2, 9, 5, 4},    {3, 37, 70, 4},
                           {2, 300, 40, 4}, {1, 13, 17, 11}, {2, 2, 6, 4}};  // [B, T, C, K]
  const i64 pad = 3;  // x, y and halo are column slices [1, 1 + C) of [., ., C + pad] tensors
  for (DType dt : kDtypes) {
    const DType hd = host_dtype(dt);
    for (const auto& s : shapes) {
      const i64 B = s[0], T = s[1], C = s[2], K = s[3], W = C + pad;
      for (int variant = 0; variant < 4; ++variant) {
        const bool with_halo = variant & 1, with_bias = variant & 2;
        CAPTURE(dtype_name(dt), B, T, C, K, with_halo, with_bias);
        const HostTensor xw = random_host(dt, Shape{B, T, W}, ++seed);
        const HostTensor hw = random_host(dt, Shape{B, K - 1, W}, ++seed);
        const HostTensor w = random_host(dt, Shape{C, K}, ++seed);
        const HostTensor bias = random_host(dt, Shape{C}, ++seed);
        const HostTensor dy = random_host(dt, Shape{B, T, C}, ++seed);
        HostTensor dw = random_host(dt, Shape{C, K}, ++seed);  // pre-filled: accumulate
        HostTensor db = random_host(dt, Shape{C}, ++seed);
        const Tensor x = xw.t().slice(2, 1, C);
        const Tensor halo = with_halo ? hw.t().slice(2, 1, C) : Tensor{};
        const Tensor xg = g->upload_as(xw, dt).slice(2, 1, C);
        const Tensor halog = with_halo ? g->upload_as(hw, dt).slice(2, 1, C) : Tensor{};
        const Tensor wg = g->upload_as(w, dt), bg = g->upload_as(bias, dt);
        const Tensor dyg = g->upload_as(dy, dt);
        const Tensor dwg = g->upload_as(dw, dt), dbg = g->upload_as(db, dt);
        const Tensor dwg2 = g->upload_as(dw, dt), dbg2 = g->upload_as(db, dt);

        HostTensor y = poisoned_host(hd, Shape{B, T, C});
        g->cpu->causal_conv1d_forward(x, w, with_bias ? bias.t() : Tensor{}, halo, y);
        const Tensor ywide = g->gpu_empty(dt, Shape{B, T, W});
        g->gpu->causal_conv1d_forward(xg, wg, with_bias ? bg : Tensor{}, halog,
                                      ywide.slice(2, 1, C));
        bool untouched = false;
        const auto yv = columns(g->values(ywide), B * T, W, 1, C, &untouched);
        CHECK(max_rel_error(yv, y.to_f64()) <= tolerance(dt));
        CHECK(untouched);

        // Backward: d_halo whenever a halo was given; dbias only with a bias.
        HostTensor dx = poisoned_host(hd, Shape{B, T, C});
        HostTensor dh = poisoned_host(hd, Shape{B, K - 1, C});
        const Tensor dhc = with_halo ? dh.t() : Tensor{};
        g->cpu->causal_conv1d_backward(x, w, halo, dy, dx, dw, with_bias ? db.t() : Tensor{}, dhc);
        const Tensor dxwide = g->gpu_empty(dt, Shape{B, T, W});
        const Tensor dhg = with_halo ? g->gpu_empty(dt, Shape{B, K - 1, C}) : Tensor{};
        g->gpu->causal_conv1d_backward(xg, wg, halog, dyg, dxwide.slice(2, 1, C), dwg,
                                       with_bias ? dbg : Tensor{}, dhg);
        const auto dxv = columns(g->values(dxwide), B * T, W, 1, C, &untouched);
        CHECK(max_rel_error(dxv, dx.to_f64()) <= tolerance(dt));
        CHECK(untouched);
        if (with_halo) CHECK(err(*g, dhg, dh) <= tolerance(dt));
        CHECK(err(*g, dwg, dw) <= tolerance(dt));
        CHECK(err(*g, dbg, db) <= tolerance(dt));  // unchanged without a bias gradient

        // Deterministic accumulation; and dw alone (dbias undefined) gives the same dw.
        const Tensor dxg2 = g->gpu_empty(dt, Shape{B, T, C});
        g->gpu->causal_conv1d_backward(xg, wg, halog, dyg, dxg2, dwg2, with_bias ? dbg2 : Tensor{},
                                       Tensor{});
        CHECK(g->values(dwg2) == g->values(dwg));
        CHECK(g->values(dbg2) == g->values(dbg));
        CHECK(max_rel_error(g->values(dxg2), dx.to_f64()) <= tolerance(dt));
      }
    }
  }
}

TEST_CASE("gpu causal_conv1d bias gradient alone and T = 0 halo gradient", "[gpu][conv]") {
  auto g = gpu_pair();
  if (!g) return;
  for (DType dt : kDtypes) {
    const DType hd = host_dtype(dt);
    CAPTURE(dtype_name(dt));
    const i64 B = 2, T = 50, C = 9, K = 3;
    const HostTensor x = random_host(dt, Shape{B, T, C}, 701);
    const HostTensor w = random_host(dt, Shape{C, K}, 702);
    const HostTensor dy = random_host(dt, Shape{B, T, C}, 703);
    HostTensor db = random_host(dt, Shape{C}, 704);
    const Tensor xg = g->upload_as(x, dt), wg = g->upload_as(w, dt), dyg = g->upload_as(dy, dt);
    const Tensor dbg = g->upload_as(db, dt);
    HostTensor dx = poisoned_host(hd, Shape{B, T, C});
    g->cpu->causal_conv1d_backward(x, w, Tensor{}, dy, dx, Tensor{}, db, Tensor{});
    const Tensor dxg = g->gpu_empty(dt, Shape{B, T, C});
    g->gpu->causal_conv1d_backward(xg, wg, Tensor{}, dyg, dxg, Tensor{}, dbg, Tensor{});
    CHECK(err(*g, dxg, dx) <= tolerance(dt));
    CHECK(err(*g, dbg, db) <= tolerance(dt));

    // An empty sequence piece: y and dx are empty, d_halo is overwritten with zeros.
    const HostTensor x0 = random_host(dt, Shape{B, 0, C}, 705);
    const HostTensor h = random_host(dt, Shape{B, K - 1, C}, 706);
    const Tensor x0g = g->upload_as(x0, dt), hg = g->upload_as(h, dt);
    const Tensor dhg = g->gpu_empty(dt, Shape{B, K - 1, C});
    g->gpu->causal_conv1d_backward(x0g, wg, hg, g->gpu_empty(dt, Shape{B, 0, C}),
                                   g->gpu_empty(dt, Shape{B, 0, C}), Tensor{}, Tensor{}, dhg);
    const auto dh = g->values(dhg);
    CHECK(max_rel_error(dh, std::vector<double>(dh.size(), 0.0)) == 0.0);
  }
}

}  // namespace
}  // namespace linmoe::testing
