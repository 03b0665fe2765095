// The CUDA backend's core against the CPU backend (gpu_compare.h): construction and allocator,
// copy (every dtype pair, host↔device↔device, host↔host; f64→bf16 ties that double rounding would
// miss; a 68 MiB converting transfer past the staging trim), fill, GEMM (every transpose pair, odd
// sizes, alpha/beta, batched and broadcast operands, row-strided views whose surroundings must stay
// untouched, K = 0, alpha = 0), the element-wise ops and every activation (forward, backward,
// accumulating), SwiGLU, softmax (warp- and block-per-row sizes), the reductions (NaN, ±inf) and
// sum_rows, and a few AdamW/SGD steps. Outputs are NaN-poisoned before each call; misaligned views
// take the unvectorised path. Bounds: tolerance() of gpu_compare.h (f32 1e-4, bf16 1e-2, f64 1e-12)
// as max |gpu − cpu| over max |cpu|; copy and fill are exact; full reductions (double accumulation
// on both sides) agree to 1e-12 of Σ|x|.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gpu/gpu_compare.h"

namespace linmoe::testing {
namespace {

using i64 = std::int64_t;

const DType kFloatDtypes[] = {DType::f32, DType::bf16, DType::f64};

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

double err(GpuPair& g, const Tensor& gpu, const Tensor& cpu) {
  return max_rel_error(g.values(gpu), g.values(cpu));
}

// ---- construction, allocator -------------------------------------------------------------------

TEST_CASE("gpu backend: name, peak, allocator and synchronize", "[gpu][core]") {
  auto g = gpu_pair();
  if (!g) return;
  const std::string name = g->gpu->name();
  CAPTURE(name);
  CHECK(name.rfind("cuda (", 0) == 0);
  CHECK(name.find("sm_") != std::string::npos);
  CHECK(g->gpu->device() == Device::cuda);
  CHECK(g->gpu->peak_flops_per_second() >= 0.0);
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) {
    CHECK(g->gpu->peak_flops_per_second() > 5e14);
  }
  Allocator& a = g->gpu->allocator();
  CHECK(a.device() == Device::cuda);
  const std::size_t live = memory_stats(Device::cuda).live_bytes;
  {
    Buffer b(a, 4096 * sizeof(float), "test");
    CHECK(memory_stats(Device::cuda).live_bytes == live + 4096 * sizeof(float));
    const Tensor t = b.view(DType::f32, Shape{4096});
    g->gpu->fill(t, 3.0);
    b.set_zero();
    for (double v : g->values(t)) REQUIRE(v == 0.0);
  }
  CHECK(memory_stats(Device::cuda).live_bytes == live);
  g->gpu->synchronize();
}

// ---- copy and fill
// -------------------------------------------------------------------------------

// Values for copy tests in `dt`: random over several magnitudes, and (for floats) f64 values
// just above a bf16 tie, which f64 → f32 → bf16 would round the wrong way.
HostTensor copy_source(DType dt, i64 n, std::uint64_t seed) {
  HostTensor h(dt, Shape{n});
  if (!dtype_is_float(dt)) {
    fill_ints(h.t(), seed, 1000003);
    return h;
  }
  HostTensor u(DType::f64, Shape{n});
  fill_uniform(u.t(), seed, -1.0, 1.0);
  std::vector<double> v = u.to_f64();
  for (i64 i = 0; i < n; ++i) {
    const double scale = std::ldexp(1.0, static_cast<int>(i % 40) - 20);
    v[static_cast<std::size_t>(i)] *= scale;
  }
  for (i64 i = 0; i < n && i < 8; ++i) {  // 1 + 2^-8 (a bf16 tie) + a little, and relatives
    const double tie = (1.0 + std::ldexp(1.0, -8)) * std::ldexp(1.0, static_cast<int>(i) - 3);
    v[static_cast<std::size_t>(i)] = (i % 2 ? -1 : 1) * (tie + std::ldexp(tie, -40));
  }
  h.from_f64(v);  // rounded to dt (round to nearest)
  return h;
}

TEST_CASE("gpu copy: every dtype pair, every direction", "[gpu][copy]") {
  auto g = gpu_pair();
  if (!g) return;
  const DType floats[] = {DType::f32, DType::bf16, DType::f64};
  std::vector<std::pair<DType, DType>> pairs;
  for (DType s : floats) {
    for (DType d : floats) pairs.emplace_back(s, d);
  }
  pairs.emplace_back(DType::i32, DType::i32);
  pairs.emplace_back(DType::i64, DType::i64);
  std::uint64_t seed = 10;
  for (const auto& [sd, dd] : pairs) {
    for (i64 n : {i64{1}, i64{1001}, i64{70000}}) {
      CAPTURE(dtype_name(sd), dtype_name(dd), n);
      const HostTensor src = copy_source(sd, n, ++seed);
      HostTensor expected = poisoned_host(dd, Shape{n});
      g->cpu->copy(src, expected);
      const std::vector<double> want = expected.to_f64();

      // host → device
      const Tensor d1 = g->gpu_empty(dd, Shape{n});
      g->gpu->copy(src, d1);
      CHECK(g->values(d1) == want);
      // device → device
      const Tensor s_dev = g->upload(src);
      const Tensor d2 = g->gpu_empty(dd, Shape{n});
      g->gpu->copy(s_dev, d2);
      CHECK(g->values(d2) == want);
      // device → host
      HostTensor h3 = poisoned_host(dd, Shape{n});
      g->gpu->copy(s_dev, h3);
      CHECK(h3.to_f64() == want);
      // host → host through the CUDA backend
      HostTensor h4 = poisoned_host(dd, Shape{n});
      g->gpu->copy(src, h4);
      CHECK(h4.to_f64() == want);
    }
  }
  // An empty copy does nothing.
  const Tensor e = g->gpu_empty(DType::f32, Shape{0});
  HostTensor he(DType::bf16, Shape{0});
  g->gpu->copy(he, e);
}

TEST_CASE("gpu copy: large converting host transfers (staging returned to the pool)",
          "[gpu][copy]") {
  auto g = gpu_pair();
  if (!g) return;
  const i64 n = (i64{17} << 20) + 5;  // 68 MiB of f32: past the staging trim threshold
  HostTensor src(DType::f32, Shape{n});
  fill_uniform(src.t(), 77, -100.0, 100.0);
  HostTensor expected(DType::bf16, Shape{n});
  g->cpu->copy(src, expected);
  const Tensor d = g->gpu_empty(DType::bf16, Shape{n});
  g->gpu->copy(src, d);  // host f32 → device bf16
  HostTensor back(DType::bf16, Shape{n});
  poison(back.t());
  g->gpu->copy(d, back);  // device bf16 → host bf16
  CHECK(std::memcmp(back.t().data, expected.t().data, expected.t().nbytes()) == 0);
  HostTensor wide(DType::f64, Shape{n});
  poison(wide.t());
  g->gpu->copy(d, wide);  // device bf16 → host f64
  HostTensor wide_expected(DType::f64, Shape{n});
  g->cpu->copy(expected, wide_expected);
  CHECK(std::memcmp(wide.t().data, wide_expected.t().data, wide.t().nbytes()) == 0);
}

TEST_CASE("gpu fill: every dtype", "[gpu][copy]") {
  auto g = gpu_pair();
  if (!g) return;
  const DType dtypes[] = {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64};
  const double tie = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  for (DType dt : dtypes) {
    for (double value : {1.3, -2.5, 0.0, -0.0, tie, 123456789.0}) {
      for (i64 n : {i64{1}, i64{1001}}) {
        CAPTURE(dtype_name(dt), value, n);
        HostTensor expected(dt, Shape{n});
        g->cpu->fill(expected, value);
        const Tensor t = g->gpu_empty(dt, Shape{n});
        g->gpu->fill(t, value);
        const std::vector<double> got = g->values(t), want = expected.to_f64();
        CHECK(got == want);
        if (value == 0.0 && dtype_is_float(dt)) {  // the sign of zero survives
          CHECK(std::signbit(got[0]) == std::signbit(value));
        }
      }
    }
  }
}

// ---- GEMM
// ----------------------------------------------------------------------------------------

// A [rows, cols] (or [Bt, rows, cols]) operand, optionally a view into a wider base (row stride
// cols + 5, starting at column 2). `base` and `gpu_base` hold the whole storage.
struct Operand {
  HostTensor base;
  Tensor host, gpu_base, gpu;
};

Operand make_operand(GpuPair& g, DType dt, i64 batch, i64 rows, i64 cols, bool strided,
                     std::uint64_t seed) {
  const i64 width = strided ? cols + 5 : cols;
  const Shape base_shape = batch > 0 ? Shape{batch, rows, width} : Shape{rows, width};
  Operand o{random_host(dt, base_shape, seed), {}, {}, {}};
  const int last = batch > 0 ? 2 : 1;
  o.host = strided ? o.base.t().slice(last, 2, cols) : o.base.t();
  o.gpu_base = g.upload_as(o.base, dt);
  o.gpu = strided ? o.gpu_base.slice(last, 2, cols) : o.gpu_base;
  return o;
}

// Sets the elements of a 2-D or 3-D host view to NaN (the part of c that beta = 0 must not read).
void poison_view(const Tensor& v) {
  const i64 B = v.ndim() == 3 ? v.size(0) : 1;
  for (i64 b = 0; b < B; ++b) {
    for (i64 i = 0; i < v.size(-2); ++i) {
      for (i64 j = 0; j < v.size(-1); ++j) {
        const i64 off = (v.ndim() == 3 ? b * v.stride(0) : 0) + i * v.stride(-2) + j;
        if (v.dtype == DType::f64) {
          static_cast<double*>(v.data)[off] = std::numeric_limits<double>::quiet_NaN();
        } else {
          static_cast<float*>(v.data)[off] = std::numeric_limits<float>::quiet_NaN();
        }
      }
    }
  }
}

struct GemmCase {
  i64 batch;  // 0: 2-D c
  bool a_batched, b_batched;
  i64 M, N, K;
  bool ta, tb, strided;
  double alpha, beta;
};

void run_gemm(GpuPair& g, DType dt, const GemmCase& c, std::uint64_t seed) {
  CAPTURE(dtype_name(dt), c.batch, c.a_batched, c.b_batched, c.M, c.N, c.K, c.ta, c.tb, c.strided,
          c.alpha, c.beta);
  const i64 ab = c.a_batched ? c.batch : 0, bb = c.b_batched ? c.batch : 0;
  Operand a = c.ta ? make_operand(g, dt, ab, c.K, c.M, c.strided, seed)
                   : make_operand(g, dt, ab, c.M, c.K, c.strided, seed);
  Operand b = c.tb ? make_operand(g, dt, bb, c.N, c.K, c.strided, seed + 1)
                   : make_operand(g, dt, bb, c.K, c.N, c.strided, seed + 1);
  // c: random surroundings; its own elements NaN when beta == 0 (never read).
  const i64 width = c.strided ? c.N + 5 : c.N;
  const Shape c_shape = c.batch > 0 ? Shape{c.batch, c.M, width} : Shape{c.M, width};
  HostTensor c_base = random_host(dt, c_shape, seed + 2);
  const int last = c.batch > 0 ? 2 : 1;
  const Tensor c_host = c.strided ? c_base.t().slice(last, 2, c.N) : c_base.t();
  if (c.beta == 0.0) poison_view(c_host);
  const Tensor c_gpu_base = g.upload_as(c_base, dt);
  const Tensor c_gpu = c.strided ? c_gpu_base.slice(last, 2, c.N) : c_gpu_base;

  g.cpu->gemm(a.host, c.ta, b.host, c.tb, c_host, c.alpha, c.beta);
  g.gpu->gemm(a.gpu, c.ta, b.gpu, c.tb, c_gpu, c.alpha, c.beta);
  // The whole base: the product where c is, the untouched surroundings elsewhere.
  CHECK(err(g, c_gpu_base, c_base) <= tolerance(dt));
}

TEST_CASE("gpu gemm: transposes, sizes, alpha/beta, strided views", "[gpu][gemm]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 1000;
  // Up to a size where cuBLAS picks tensor-core tiles.
  const i64 sizes[][3] = {{1, 1, 1}, {37, 53, 29}, {130, 67, 300}, {5, 200, 17}, {256, 384, 520}};
  for (DType dt : kFloatDtypes) {
    for (const auto& s : sizes) {
      for (int t = 0; t < 4; ++t) {
        for (double beta : {0.0, 1.0}) {
          for (bool strided : {false, true}) {
            const bool ta = t & 1, tb = t & 2;
            run_gemm(*g, dt,
                     GemmCase{0, false, false, s[0], s[1], s[2], ta, tb, strided, 0.7, beta},
                     seed += 3);
          }
        }
      }
    }
  }
}

TEST_CASE("gpu gemm: batched and broadcast operands", "[gpu][gemm]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 2000;
  for (DType dt : kFloatDtypes) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      for (bool strided : {false, true}) {
        for (double beta : {0.0, 1.0}) {
          // both batched; a batched with a shared b (one tall product when a, c continue);
          // a shared a with batched b
          run_gemm(*g, dt, GemmCase{3, true, true, 19, 23, 31, ta, tb, strided, 1.0, beta},
                   seed += 3);
          run_gemm(*g, dt, GemmCase{4, true, false, 33, 9, 40, ta, tb, strided, -0.5, beta},
                   seed += 3);
          run_gemm(*g, dt, GemmCase{2, false, true, 7, 65, 12, ta, tb, strided, 2.0, beta},
                   seed += 3);
        }
      }
    }
  }
}

TEST_CASE("gpu gemm: K = 0 and alpha = 0 scale c by beta", "[gpu][gemm]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 3000;
  for (DType dt : kFloatDtypes) {
    for (double beta : {0.0, 1.0, 0.5}) {
      run_gemm(*g, dt, GemmCase{0, false, false, 9, 11, 0, false, false, false, 1.0, beta},
               seed += 3);
      run_gemm(*g, dt, GemmCase{0, false, false, 9, 11, 13, false, true, true, 0.0, beta},
               seed += 3);
      run_gemm(*g, dt, GemmCase{2, true, true, 5, 6, 0, true, false, false, 1.0, beta}, seed += 3);
    }
  }
}

// ---- element-wise
// ----------------------------------------------------------------------------------

// Shapes for element-wise tests, and whether the tensors start one element into their buffer
// (16-byte misaligned: the scalar path).
struct ElemCase {
  Shape shape;
  bool misaligned;
};
const ElemCase kElemCases[] = {{Shape{1}, false},      {Shape{1001}, false}, {Shape{4096}, false},
                               {Shape{33, 31}, false}, {Shape{1001}, true},  {Shape{4096}, true}};

// A device tensor holding `h` (converted to dt), one element into a larger buffer when misaligned.
Tensor upload_case(GpuPair& g, const HostTensor& h, DType dt, bool misaligned) {
  if (!misaligned) return g.upload_as(h, dt);
  const i64 n = h.t().numel();
  HostTensor wide(h.t().dtype, Shape{n + 1});
  fill_uniform(wide.t(), 7);
  std::vector<double> v = wide.to_f64();
  const std::vector<double> hv = h.to_f64();
  for (i64 i = 0; i < n; ++i) v[static_cast<std::size_t>(i + 1)] = hv[static_cast<std::size_t>(i)];
  wide.from_f64(v);
  return g.upload_as(wide, dt).slice(0, 1, n).reshape(h.t().shape);
}

// A NaN-poisoned device output of `shape`, misaligned like the inputs when asked.
Tensor empty_case(GpuPair& g, DType dt, const Shape& shape, bool misaligned) {
  if (!misaligned) return g.gpu_empty(dt, shape);
  const i64 n = shape.numel();
  return g.gpu_empty(dt, Shape{n + 1}).slice(0, 1, n).reshape(shape);
}

TEST_CASE("gpu add, mul, axpy, scale", "[gpu][elementwise]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 4000;
  for (DType dt : kFloatDtypes) {
    const DType hd = host_dtype(dt);
    for (const ElemCase& ec : kElemCases) {
      CAPTURE(dtype_name(dt), ec.shape.str(), ec.misaligned);
      const HostTensor a = random_host(dt, ec.shape, ++seed, -3.0, 3.0);
      const HostTensor b = random_host(dt, ec.shape, ++seed, -3.0, 3.0);
      const Tensor ag = upload_case(*g, a, dt, ec.misaligned);
      const Tensor bg = upload_case(*g, b, dt, ec.misaligned);

      HostTensor sum = poisoned_host(hd, ec.shape), prod = poisoned_host(hd, ec.shape);
      g->cpu->add(a, b, sum);
      g->cpu->mul(a, b, prod);
      const Tensor sg = empty_case(*g, dt, ec.shape, ec.misaligned);
      const Tensor pg = empty_case(*g, dt, ec.shape, ec.misaligned);
      g->gpu->add(ag, bg, sg);
      g->gpu->mul(ag, bg, pg);
      CHECK(err(*g, sg, sum) <= tolerance(dt));
      CHECK(err(*g, pg, prod) <= tolerance(dt));

      HostTensor y = random_host(dt, ec.shape, ++seed);
      const Tensor yg = upload_case(*g, y, dt, ec.misaligned);
      g->cpu->axpy(0.37, a, y);
      g->gpu->axpy(0.37, ag, yg);
      CHECK(err(*g, yg, y) <= tolerance(dt));

      g->cpu->scale(y, -1.7);
      g->gpu->scale(yg, -1.7);
      CHECK(err(*g, yg, y) <= tolerance(dt));
    }
  }
}

TEST_CASE("gpu activations forward and backward", "[gpu][elementwise]") {
  auto g = gpu_pair();
  if (!g) return;
  const Activation acts[] = {Activation::identity,  Activation::silu, Activation::sigmoid,
                             Activation::elu1,      Activation::relu, Activation::softplus,
                             Activation::logsigmoid};
  std::uint64_t seed = 5000;
  for (DType dt : kFloatDtypes) {
    const DType hd = host_dtype(dt);
    for (Activation f : acts) {
      for (const ElemCase& ec : kElemCases) {
        CAPTURE(dtype_name(dt), activation_name(f), ec.shape.str(), ec.misaligned);
        HostTensor x = random_host(dt, ec.shape, ++seed, -6.0, 6.0);
        {  // extremes where the stable formulas matter
          std::vector<double> v = x.to_f64();
          const double extremes[] = {-40.0, 40.0, 0.0, -0.5};
          for (std::size_t i = 0; i < 4 && i < v.size(); ++i) v[i] = extremes[i];
          x.from_f64(v);
        }
        const HostTensor dy = random_host(dt, ec.shape, ++seed);
        const Tensor xg = upload_case(*g, x, dt, ec.misaligned);
        const Tensor dyg = upload_case(*g, dy, dt, ec.misaligned);

        HostTensor y = poisoned_host(hd, ec.shape);
        g->cpu->activation_forward(f, x, y);
        const Tensor yg = empty_case(*g, dt, ec.shape, ec.misaligned);
        g->gpu->activation_forward(f, xg, yg);
        CHECK(err(*g, yg, y) <= tolerance(dt));

        HostTensor dx = poisoned_host(hd, ec.shape);
        g->cpu->activation_backward(f, x, dy, dx, false);
        const Tensor dxg = empty_case(*g, dt, ec.shape, ec.misaligned);
        g->gpu->activation_backward(f, xg, dyg, dxg, false);
        CHECK(err(*g, dxg, dx) <= tolerance(dt));

        HostTensor acc = random_host(dt, ec.shape, ++seed);  // accumulates into this
        const Tensor accg = upload_case(*g, acc, dt, ec.misaligned);
        g->cpu->activation_backward(f, x, dy, acc, true);
        g->gpu->activation_backward(f, xg, dyg, accg, true);
        CHECK(err(*g, accg, acc) <= tolerance(dt));
      }
    }
  }
}

TEST_CASE("gpu swiglu forward and backward", "[gpu][swiglu]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 6000;
  for (DType dt : kFloatDtypes) {
    const DType hd = host_dtype(dt);
    for (const ElemCase& ec : kElemCases) {
      CAPTURE(dtype_name(dt), ec.shape.str(), ec.misaligned);
      const HostTensor gate = random_host(dt, ec.shape, ++seed, -5.0, 5.0);
      const HostTensor up = random_host(dt, ec.shape, ++seed, -2.0, 2.0);
      const HostTensor dout = random_host(dt, ec.shape, ++seed);
      const Tensor gg = upload_case(*g, gate, dt, ec.misaligned);
      const Tensor ug = upload_case(*g, up, dt, ec.misaligned);
      const Tensor dg = upload_case(*g, dout, dt, ec.misaligned);

      HostTensor out = poisoned_host(hd, ec.shape);
      g->cpu->swiglu_forward(gate, up, out);
      const Tensor og = empty_case(*g, dt, ec.shape, ec.misaligned);
      g->gpu->swiglu_forward(gg, ug, og);
      CHECK(err(*g, og, out) <= tolerance(dt));

      HostTensor dgate = poisoned_host(hd, ec.shape), dup = poisoned_host(hd, ec.shape);
      g->cpu->swiglu_backward(gate, up, dout, dgate, dup);
      const Tensor dgg = empty_case(*g, dt, ec.shape, ec.misaligned);
      const Tensor dug = empty_case(*g, dt, ec.shape, ec.misaligned);
      g->gpu->swiglu_backward(gg, ug, dg, dgg, dug);
      CHECK(err(*g, dgg, dgate) <= tolerance(dt));
      CHECK(err(*g, dug, dup) <= tolerance(dt));

      // In place: the gradients overwrite gate and up.
      const Tensor gg2 = upload_case(*g, gate, dt, ec.misaligned);
      const Tensor ug2 = upload_case(*g, up, dt, ec.misaligned);
      g->gpu->swiglu_backward(gg2, ug2, dg, gg2, ug2);
      CHECK(err(*g, gg2, dgate) <= tolerance(dt));
      CHECK(err(*g, ug2, dup) <= tolerance(dt));
    }
  }
}

// ---- softmax
// -------------------------------------------------------------------------------------

TEST_CASE("gpu softmax forward and backward", "[gpu][softmax]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 7000;
  // Short rows take a warp each, rows past 1024 a block each.
  const i64 shapes[][2] = {{1, 1},    {37, 5},   {64, 64},  {19, 1000},
                           {7, 1024}, {7, 1025}, {5, 3001}, {300, 8}};
  for (DType dt : kFloatDtypes) {
    const DType hd = host_dtype(dt);
    for (const auto& s : shapes) {
      const Shape shape{s[0], s[1]};
      CAPTURE(dtype_name(dt), shape.str());
      const HostTensor x = random_host(dt, shape, ++seed, -8.0, 8.0);
      HostTensor y = poisoned_host(hd, shape);
      g->cpu->softmax_forward(x, y);
      const Tensor xg = g->upload_as(x, dt), yg = g->gpu_empty(dt, shape);
      g->gpu->softmax_forward(xg, yg);
      CHECK(err(*g, yg, y) <= tolerance(dt));

      // The backward from the same probabilities on both sides.
      if (dt == DType::bf16) round_to_bf16(y.t());
      const HostTensor dy = random_host(dt, shape, ++seed);
      HostTensor dx = poisoned_host(hd, shape);
      g->cpu->softmax_backward(y, dy, dx);
      const Tensor y2 = g->upload_as(y, dt), dyg = g->upload_as(dy, dt);
      const Tensor dxg = g->gpu_empty(dt, shape);
      g->gpu->softmax_backward(y2, dyg, dxg);
      CHECK(err(*g, dxg, dx) <= tolerance(dt));
    }
  }
}

// ---- reductions
// ------------------------------------------------------------------------------------

TEST_CASE("gpu sum, sum_squares, max_abs, all_finite", "[gpu][reduce]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 8000;
  for (DType dt : kFloatDtypes) {
    for (i64 n : {i64{1}, i64{1000}, i64{5000}, i64{(1 << 20) + 3}}) {
      CAPTURE(dtype_name(dt), n);
      const HostTensor x = random_host(dt, Shape{n}, ++seed, -2.0, 3.0);
      const Tensor xg = g->upload_as(x, dt);
      double abs_sum = 0;
      for (double v : x.to_f64()) abs_sum += std::abs(v);
      const double bound = 1e-12 * abs_sum + 1e-300;
      CHECK(std::abs(g->gpu->sum(xg) - g->cpu->sum(x)) <= bound);
      CHECK(std::abs(g->gpu->sum_squares(xg) - g->cpu->sum_squares(x)) <= 3 * bound);
      CHECK(g->gpu->max_abs(xg) == g->cpu->max_abs(x));
      CHECK(g->gpu->all_finite(xg));

      // A non-finite value anywhere is found; NaN wins max_abs.
      const double bads[] = {std::numeric_limits<double>::infinity(),
                             -std::numeric_limits<double>::infinity(),
                             std::numeric_limits<double>::quiet_NaN()};
      for (double bad : bads) {
        for (i64 at : {i64{0}, n / 2, n - 1}) {
          CAPTURE(bad, at);
          std::vector<double> v = x.to_f64();
          v[static_cast<std::size_t>(at)] = bad;
          HostTensor xb(host_dtype(dt), Shape{n});
          xb.from_f64(v);
          const Tensor xbg = g->upload_as(xb, dt);
          CHECK_FALSE(g->gpu->all_finite(xbg));
          const double m = g->gpu->max_abs(xbg);
          if (std::isnan(bad)) {
            CHECK(std::isnan(m));
          } else {
            CHECK(m == std::numeric_limits<double>::infinity());
          }
        }
      }
    }
    // Empty tensors: the identities.
    const Tensor e = g->gpu_empty(dt, Shape{0});
    CHECK(g->gpu->sum(e) == 0.0);
    CHECK(g->gpu->sum_squares(e) == 0.0);
    CHECK(g->gpu->max_abs(e) == 0.0);
    CHECK(g->gpu->all_finite(e));
  }
}

TEST_CASE("gpu sum_rows, overwrite and accumulate", "[gpu][reduce]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 9000;
  const i64 shapes[][2] = {{1, 7}, {1000, 33}, {5000, 300}, {3, 2000}, {70000, 5}, {0, 5}};
  for (DType dt : kFloatDtypes) {
    const DType hd = host_dtype(dt);
    for (const auto& s : shapes) {
      for (bool accumulate : {false, true}) {
        const i64 N = s[0], C = s[1];
        CAPTURE(dtype_name(dt), N, C, accumulate);
        const HostTensor x = random_host(dt, Shape{N, C}, ++seed);
        HostTensor out =
            accumulate ? random_host(dt, Shape{C}, ++seed) : poisoned_host(hd, Shape{C});
        const Tensor xg = g->upload_as(x, dt);
        const Tensor og = accumulate ? g->upload_as(out, dt) : g->gpu_empty(dt, Shape{C});
        g->cpu->sum_rows(x, out, accumulate);
        g->gpu->sum_rows(xg, og, accumulate);
        CHECK(err(*g, og, out) <= tolerance(dt));
        // Deterministic: the same call gives the same bits.
        const Tensor og2 = accumulate ? g->upload_as(random_host(dt, Shape{C}, seed), dt)
                                      : g->gpu_empty(dt, Shape{C});
        g->gpu->sum_rows(xg, og2, accumulate);
        CHECK(g->values(og2) == g->values(og));
      }
    }
  }
}

// ---- optimizer
// -------------------------------------------------------------------------------------

TEST_CASE("gpu adamw and sgd over a few steps", "[gpu][optimizer]") {
  auto g = gpu_pair();
  if (!g) return;
  std::uint64_t seed = 10000;
  for (DType dt : {DType::f32, DType::f64}) {
    for (i64 n : {i64{1}, i64{1001}, i64{4096}}) {
      CAPTURE(dtype_name(dt), n);
      const Shape shape{n};
      // AdamW from zero state.
      HostTensor p = random_host(dt, shape, ++seed), m(dt, shape), v(dt, shape);
      g->cpu->fill(m, 0.0);
      g->cpu->fill(v, 0.0);
      const Tensor pg = g->upload(p), mg = g->upload(m), vg = g->upload(v);
      for (std::int64_t step = 1; step <= 3; ++step) {
        const HostTensor grad = random_host(dt, shape, ++seed);
        const Tensor gg = g->upload(grad);
        g->cpu->adamw_update(p, grad, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.1, step);
        g->gpu->adamw_update(pg, gg, mg, vg, 1e-2, 0.9, 0.999, 1e-8, 0.1, step);
      }
      CHECK(err(*g, pg, p) <= tolerance(dt));
      CHECK(err(*g, mg, m) <= tolerance(dt));
      CHECK(err(*g, vg, v) <= tolerance(dt));

      // SGD with momentum: the buffer is not read at step 1 (poisoned).
      HostTensor q = random_host(dt, shape, ++seed), buf = poisoned_host(dt, shape);
      const Tensor qg = g->upload(q), bg = g->upload(buf);
      // SGD without momentum and without a buffer.
      HostTensor r = random_host(dt, shape, ++seed);
      const Tensor rg = g->upload(r);
      for (std::int64_t step = 1; step <= 3; ++step) {
        const HostTensor grad = random_host(dt, shape, ++seed);
        const Tensor gg = g->upload(grad);
        g->cpu->sgd_update(q, grad, buf, 0.05, 0.9, 0.01, step);
        g->gpu->sgd_update(qg, gg, bg, 0.05, 0.9, 0.01, step);
        g->cpu->sgd_update(r, grad, Tensor{}, 0.05, 0.0, 0.01, step);
        g->gpu->sgd_update(rg, gg, Tensor{}, 0.05, 0.0, 0.01, step);
      }
      CHECK(err(*g, qg, q) <= tolerance(dt));
      CHECK(err(*g, bg, buf) <= tolerance(dt));
      CHECK(err(*g, rg, r) <= tolerance(dt));
    }
  }
}

}  // namespace
}  // namespace linmoe::testing
