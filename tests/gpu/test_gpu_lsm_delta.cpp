// The delta-rule LSM core (kernels/ops.h, MODEL.md section 3: deltanet, gated_deltanet) on the
// CUDA backend (kernels/cuda/lsm_delta_rule.cu) against the CPU backend (itself checked against
// the fp64 token-by-token recurrence and finite differences in tests/lsm): o, final_state, dq,
// dk, dv, d_beta, d_log_decay and d_initial_state; deltanet (no log_decay) and gated; with and
// without an initial state and d_final_state; T not a multiple of the chunk; Dk ≠ Dv with Dv
// spanning several column tiles of the GPU kernels (a partial last tile); head dims 128
// (the large shared-memory layouts) and f64 head dims 64 (the GPU shortens its chunk to fit);
// row-strided views in and out (nothing written outside them); optional gradients left out;
// T = 0; a 65536-token sequence with strong decay and β near 1. bf16 calls with chunk 64 and
// head dims in {64, 128} take the tensor-core forward (lsm_delta_rule_mma.cuh): their own cases
// below, including strided views with aligned rows and a 65531-token sequence. Keys and queries are
// L2- normalised rows, as the layer passes them. Outputs are NaN-poisoned before every call; the
// backward is run twice and must be bit-for-bit deterministic.
//
// Bounds (max |gpu − cpu| / max |cpu|, gpu_compare.h): f64 1e-12; bf16 1e-2 (bf16 inputs and
// outputs, fp32 inside on both sides); f32 1e-3, TESTING.md's bound for fp32-accumulated GPU
// results, not gpu_compare's default 1e-4: the GPU inverts each chunk's (I + A) explicitly where
// the CPU substitutes, sums in other orders, and d_beta and d_log_decay are sums of O(C²)
// products per token with cancellation, so their errors relative to their largest entry are
// several times those of o (the f64 runs check that the mathematics agree to rounding).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/test_util.h"
#include "gpu/gpu_compare.h"
#include "kernels/ops.h"

namespace linmoe {
namespace {

using testing::GpuPair;
using testing::HostTensor;
using i64 = std::int64_t;
using Vec = std::vector<double>;

struct Problem {
  i64 B, T, H, Dk, Dv;
  Shape qk() const { return Shape{B, T, H, Dk}; }
  Shape vo() const { return Shape{B, T, H, Dv}; }
  Shape g() const { return Shape{B, T, H}; }
  Shape state() const { return Shape{B, H, Dk, Dv}; }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(Dk)); }
  std::string str() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
           " Dk=" + std::to_string(Dk) + " Dv=" + std::to_string(Dv);
  }
};

struct Options {
  bool gated = true;       // log_decay given (gated_deltanet) or not (deltanet)
  bool init = false;       // initial_state given
  bool dfinal = false;     // d_final_state given
  double decay_lo = 0.01;  // log decays −exp(u), u uniform in [log lo, log hi]
  double decay_hi = 1.5;
  double beta_lo = 0.0, beta_hi = 1.0;
  std::string str() const {
    return std::string(gated ? "gated" : "deltanet") + (init ? " +initial_state" : "") +
           (dfinal ? " +d_final_state" : "");
  }
};

DType host_dtype(DType dt) {
  return dt == DType::f64 ? DType::f64 : DType::f32;
}

// Uniform host values in the CPU's dtype, rounded to bf16 for a bf16 run (both backends then
// see the same numbers).
HostTensor random_host(DType dt, const Shape& shape, std::uint64_t seed, double lo, double hi) {
  HostTensor t(host_dtype(dt), shape);
  testing::fill_uniform(t.t(), seed, lo, hi);
  if (dt == DType::bf16) testing::round_to_bf16(t.t());
  return t;
}

// Rows of length d scaled to unit L2 norm (the layer's L2norm), then rounded as above.
HostTensor unit_rows(DType dt, const Shape& shape, i64 d, std::uint64_t seed) {
  HostTensor t = random_host(DType::f64, shape, seed, -1, 1);
  Vec x = t.to_f64();
  for (std::size_t r = 0; r < x.size(); r += static_cast<std::size_t>(d)) {
    double s = 0;
    for (std::size_t i = r; i < r + static_cast<std::size_t>(d); ++i) s += x[i] * x[i];
    for (std::size_t i = r; i < r + static_cast<std::size_t>(d); ++i) x[i] /= std::sqrt(s);
  }
  HostTensor out(host_dtype(dt), shape);
  out.from_f64(x);
  if (dt == DType::bf16) testing::round_to_bf16(out.t());
  return out;
}

// The inputs of one case on the host; absent optional tensors have shape [0].
struct Data {
  Data(const Problem& p, DType dtype, std::uint64_t seed, const Options& o)
      : dt(dtype),
        opt(o),
        q(unit_rows(dt, p.qk(), p.Dk, seed + 1)),
        k(unit_rows(dt, p.qk(), p.Dk, seed + 2)),
        v(random_host(dt, p.vo(), seed + 3, -1, 1)),
        beta(random_host(dt, p.g(), seed + 4, o.beta_lo, o.beta_hi)),
        g(random_host(dt, o.gated ? p.g() : Shape{0}, seed + 5, std::log(o.decay_lo),
                      std::log(o.decay_hi))),
        d_o(random_host(dt, p.vo(), seed + 6, -1, 1)),
        s0(random_host(stat_dtype(dt), o.init ? p.state() : Shape{0}, seed + 7, -1, 1)),
        dfs(random_host(stat_dtype(dt), o.dfinal ? p.state() : Shape{0}, seed + 8, -1, 1)) {
    Vec u = g.to_f64();
    for (double& e : u) e = -std::exp(e);
    g.from_f64(u);
    if (dt == DType::bf16) testing::round_to_bf16(g.t());
  }
  DType dt;
  Options opt;
  HostTensor q, k, v, beta, g, d_o, s0, dfs;
};

struct Result {
  Vec o, fs, dq, dk, dv, dbeta, dg, ds0;
};

// The CPU backend on the host tensors (f32 for a bf16 case).
Result run_cpu(GpuPair& gp, const Problem& p, const Data& x, int chunk) {
  const DType dt = host_dtype(x.dt), st = stat_dtype(dt);
  const Tensor g = x.opt.gated ? x.g.t() : Tensor{};
  const Tensor s0 = x.opt.init ? x.s0.t() : Tensor{};
  const Tensor dfs = x.opt.dfinal ? x.dfs.t() : Tensor{};
  HostTensor o(dt, p.vo()), fs(st, p.state());
  testing::poison(o.t()), testing::poison(fs.t());
  gp.cpu->lsm_delta_rule_forward(x.q, x.k, x.v, x.beta, g, p.scale(), chunk, s0, o, fs);
  HostTensor dq(dt, p.qk()), dk(dt, p.qk()), dv(dt, p.vo()), dbeta(dt, p.g()), dg(dt, p.g());
  HostTensor ds0(st, p.state());
  for (const HostTensor* t : {&dq, &dk, &dv, &dbeta, &dg, &ds0}) testing::poison(t->t());
  gp.cpu->lsm_delta_rule_backward(x.q, x.k, x.v, x.beta, g, p.scale(), chunk, s0, x.d_o, dfs, dq,
                                  dk, dv, dbeta, x.opt.gated ? dg.t() : Tensor{}, ds0);
  Result r;
  r.o = o.to_f64(), r.fs = fs.to_f64();
  r.dq = dq.to_f64(), r.dk = dk.to_f64(), r.dv = dv.to_f64(), r.dbeta = dbeta.to_f64();
  if (x.opt.gated) r.dg = dg.to_f64();
  r.ds0 = ds0.to_f64();
  return r;
}

// The CUDA backend on the same values in dtype x.dt (states in its statistics dtype). With
// `twice`, the backward runs a second time and must give the same bits.
Result run_gpu(GpuPair& gp, const Problem& p, const Data& x, int chunk, bool twice = false) {
  const DType dt = x.dt, st = stat_dtype(dt);
  const Tensor q = gp.upload_as(x.q, dt), k = gp.upload_as(x.k, dt), v = gp.upload_as(x.v, dt);
  const Tensor beta = gp.upload_as(x.beta, dt), d_o = gp.upload_as(x.d_o, dt);
  const Tensor g = x.opt.gated ? gp.upload_as(x.g, dt) : Tensor{};
  const Tensor s0 = x.opt.init ? gp.upload(x.s0) : Tensor{};
  const Tensor dfs = x.opt.dfinal ? gp.upload(x.dfs) : Tensor{};
  const Tensor o = gp.gpu_empty(dt, p.vo()), fs = gp.gpu_empty(st, p.state());
  gp.gpu->lsm_delta_rule_forward(q, k, v, beta, g, p.scale(), chunk, s0, o, fs);
  const Tensor dq = gp.gpu_empty(dt, p.qk()), dk = gp.gpu_empty(dt, p.qk());
  const Tensor dv = gp.gpu_empty(dt, p.vo()), dbeta = gp.gpu_empty(dt, p.g());
  const Tensor dg = x.opt.gated ? gp.gpu_empty(dt, p.g()) : Tensor{};
  const Tensor ds0 = gp.gpu_empty(st, p.state());
  gp.gpu->lsm_delta_rule_backward(q, k, v, beta, g, p.scale(), chunk, s0, d_o, dfs, dq, dk, dv,
                                  dbeta, dg, ds0);
  Result r;
  r.o = gp.values(o), r.fs = gp.values(fs);
  r.dq = gp.values(dq), r.dk = gp.values(dk), r.dv = gp.values(dv), r.dbeta = gp.values(dbeta);
  if (x.opt.gated) r.dg = gp.values(dg);
  r.ds0 = gp.values(ds0);
  if (twice) {
    gp.gpu->lsm_delta_rule_backward(q, k, v, beta, g, p.scale(), chunk, s0, d_o, dfs, dq, dk, dv,
                                    dbeta, dg, ds0);
    CHECK(gp.values(dq) == r.dq);
    CHECK(gp.values(dk) == r.dk);
    CHECK(gp.values(dv) == r.dv);
    CHECK(gp.values(dbeta) == r.dbeta);
    if (x.opt.gated) CHECK(gp.values(dg) == r.dg);
    CHECK(gp.values(ds0) == r.ds0);
  }
  return r;
}

bool all_finite(const Vec& x) {
  return std::all_of(x.begin(), x.end(), [](double e) { return std::isfinite(e); });
}

double bound(DType dt) {
  return dt == DType::f32 ? 1e-3 : testing::tolerance(dt);
}

// Every output and gradient of `got` within `tol` of `ref` (max_rel_error) and finite.
void compare(const Result& got, const Result& ref, double tol) {
  const std::pair<const char*, std::pair<const Vec*, const Vec*>> fields[] = {
      {"o", {&got.o, &ref.o}},
      {"final_state", {&got.fs, &ref.fs}},
      {"dq", {&got.dq, &ref.dq}},
      {"dk", {&got.dk, &ref.dk}},
      {"dv", {&got.dv, &ref.dv}},
      {"d_beta", {&got.dbeta, &ref.dbeta}},
      {"d_log_decay", {&got.dg, &ref.dg}},
      {"d_initial_state", {&got.ds0, &ref.ds0}}};
  for (const auto& f : fields) {
    INFO(f.first);
    REQUIRE(f.second.first->size() == f.second.second->size());
    CHECK(all_finite(*f.second.first));
    const double err = testing::max_rel_error(*f.second.first, *f.second.second);
    INFO("max relative error " << err << " (bound " << tol << ")");
    CHECK(err <= tol);
  }
}

void check_case(GpuPair& gp, const Problem& p, DType dt, int chunk, const Options& opt,
                std::uint64_t seed, bool twice = false) {
  INFO(p.str() << " chunk=" << chunk << " " << opt.str() << " dtype " << dtype_name(dt));
  const Data x(p, dt, seed, opt);
  compare(run_gpu(gp, p, x, chunk, twice), run_cpu(gp, p, x, chunk), bound(dt));
}

TEST_CASE("gpu lsm_delta_rule matches the CPU backend", "[gpu][lsm]") {
  auto gp = testing::gpu_pair();
  if (!gp) return;
  // Dv = 72: two column tiles (64 + 8) in both kernels; the backward also shortens a 64-token
  // chunk to 32 to fit its shared memory (the bf16 case below keeps 64 in one tile).
  std::uint64_t seed = 100;
  for (DType dt : {DType::f32, DType::f64}) {
    for (i64 T : {1, 7, 63, 65, 130}) {
      for (int chunk : {16, 64}) {
        for (int flags = 0; flags < 8; ++flags) {
          Options opt;
          opt.gated = flags & 1, opt.init = flags & 2, opt.dfinal = flags & 4;
          check_case(*gp, Problem{2, T, 2, 20, 72}, dt, chunk, opt, seed += 16);
        }
      }
    }
  }
}

TEST_CASE("gpu lsm_delta_rule in bf16 matches the CPU backend", "[gpu][lsm]") {
  auto gp = testing::gpu_pair();
  if (!gp) return;
  std::uint64_t seed = 5000;
  for (i64 T : {7, 65, 130}) {
    for (int chunk : {16, 64}) {
      for (int flags : {0, 1, 6, 7}) {
        Options opt;
        opt.gated = flags & 1, opt.init = flags & 2, opt.dfinal = flags & 4;
        check_case(*gp, Problem{2, T, 3, 16, 40}, DType::bf16, chunk, opt, seed += 16);
      }
    }
  }
}

TEST_CASE("gpu lsm_delta_rule at model head dims", "[gpu][lsm]") {
  auto gp = testing::gpu_pair();
  if (!gp) return;
  Options opt;
  opt.init = true, opt.dfinal = true;
  std::uint64_t seed = 9000;
  for (bool gated : {false, true}) {
    opt.gated = gated;
    // 128 × 128: the largest shared-memory layouts (two tiles of 64 columns; the backward
    // shortens the chunk to 32).
    for (DType dt : {DType::f32, DType::bf16}) {
      check_case(*gp, Problem{1, 130, 2, 128, 128}, dt, 64, opt, seed += 16, true);
    }
    // f64 at 64 × 64 does not fit a 64-token chunk in shared memory: the GPU takes a shorter one.
    check_case(*gp, Problem{1, 100, 2, 64, 64}, DType::f64, 64, opt, seed += 16, true);
    // Dk > Dv and a chunk that is not a power of two.
    check_case(*gp, Problem{2, 77, 2, 96, 24}, DType::f32, 48, opt, seed += 16);
  }
}

TEST_CASE("gpu lsm_delta_rule bf16 on the tensor cores matches the CPU backend", "[gpu][lsm]") {
  auto gp = testing::gpu_pair();
  if (!gp) return;
  // bf16, chunk 64, Dk and Dv in {64, 128}: the forward takes lsm_delta_rule_mma.cuh, the
  // backward lsm_delta_rule_mma_bwd.cuh. T = 1, a partial last chunk, several chunks; deltanet and
  // gated; with and without the states; strong decays with β near 1.
  std::uint64_t seed = 12000;
  const i64 dims[][2] = {{64, 64}, {64, 128}, {128, 64}, {128, 128}};
  for (const auto& d : dims) {
    for (i64 T : {1, 65, 200}) {
      for (int flags : {0, 3, 6, 7}) {
        Options opt;
        opt.gated = flags & 1, opt.init = flags & 2, opt.dfinal = flags & 4;
        check_case(*gp, Problem{2, T, 2, d[0], d[1]}, DType::bf16, 64, opt, seed += 16);
      }
    }
    Options strong;
    strong.init = true, strong.dfinal = true;
    strong.decay_lo = 1e-4, strong.decay_hi = 20.0;
    strong.beta_lo = 0.9, strong.beta_hi = 1.0;
    check_case(*gp, Problem{1, 321, 3, d[0], d[1]}, DType::bf16, 64, strong, seed += 16);
  }
}

// Values of the [B, T, H, D] view at element `offset` of a contiguous buffer with row stride F
// (per token), gathered contiguously.
Vec gather(const Vec& buffer, i64 offset, i64 F, const Problem& p, i64 H, i64 D) {
  Vec out;
  for (i64 bt = 0; bt < p.B * p.T; ++bt) {
    for (i64 c = 0; c < H * D; ++c)
      out.push_back(buffer[static_cast<std::size_t>(bt * F + offset + c)]);
  }
  return out;
}

// A [B, T, H, D] (D = 0: [B, T, H]) view at column `offset` of a [B, T, F] device tensor.
Tensor view_of(const Tensor& fused, const Problem& p, i64 offset, i64 D) {
  const i64 F = fused.shape[2];
  Tensor t = fused.slice(2, offset, p.H * std::max<i64>(D, 1));
  if (D == 0) {
    t.shape = Shape{p.B, p.T, p.H};
    t.strides = {p.T * F, F, 1, 0, 0, 0};
  } else {
    t.shape = Shape{p.B, p.T, p.H, D};
    t.strides = {p.T * F, F, D, 1, 0, 0};
  }
  return t;
}

// The op on row-strided views of fused buffers: the output rows padded by `pad` values (8 keeps
// bf16 rows 16-byte aligned, as the tensor-core forward needs; 3 does not).
void check_strided(GpuPair& gp_ref, const Problem& p, int chunk, i64 pad) {
  GpuPair* gp = &gp_ref;
  for (DType dt : {DType::f32, DType::bf16}) {
    INFO(p.str() << " chunk=" << chunk << " pad=" << pad << " dtype " << dtype_name(dt));
    Options opt;
    opt.init = true, opt.dfinal = true;
    const Data x(p, dt, 777, opt);
    const Result ref = run_cpu(*gp, p, x, chunk);
    // Inputs: q | k | v per token in one [B, T, 2·H·Dk + H·Dv] buffer; beta | g in [B, T, 2H + 1].
    const i64 E = p.H * p.Dk, Fin = 2 * E + p.H * p.Dv, Fg = 2 * p.H + 1;
    HostTensor fused(host_dtype(dt), Shape{p.B, p.T, Fin}),
        gates(host_dtype(dt), Shape{p.B, p.T, Fg});
    {
      const Vec q = x.q.to_f64(), k = x.k.to_f64(), v = x.v.to_f64();
      const Vec b = x.beta.to_f64(), g = x.g.to_f64();
      Vec f(static_cast<std::size_t>(fused.t().numel())),
          gg(static_cast<std::size_t>(gates.t().numel()));
      for (i64 bt = 0; bt < p.B * p.T; ++bt) {
        const auto at = [](i64 i) { return static_cast<std::size_t>(i); };
        for (i64 c = 0; c < E; ++c) {
          f[at(bt * Fin + c)] = q[at(bt * E + c)];
          f[at(bt * Fin + E + c)] = k[at(bt * E + c)];
        }
        for (i64 c = 0; c < p.H * p.Dv; ++c)
          f[at(bt * Fin + 2 * E + c)] = v[at(bt * p.H * p.Dv + c)];
        for (i64 h = 0; h < p.H; ++h) {
          gg[at(bt * Fg + h)] = b[at(bt * p.H + h)];
          gg[at(bt * Fg + p.H + h)] = g[at(bt * p.H + h)];
        }
        gg[at(bt * Fg + 2 * p.H)] = 0.5;
      }
      fused.from_f64(f);
      gates.from_f64(gg);
    }
    const Tensor fg = gp->upload_as(fused, dt), gg = gp->upload_as(gates, dt);
    const Tensor q = view_of(fg, p, 0, p.Dk), k = view_of(fg, p, E, p.Dk);
    const Tensor v = view_of(fg, p, 2 * E, p.Dv);
    const Tensor beta = view_of(gg, p, 0, 0), g = view_of(gg, p, p.H, 0);
    const Tensor s0 = gp->upload(x.s0), dfs = gp->upload(x.dfs);
    // Outputs: o in [B, T, H·Dv + pad]; dq | dk in [B, T, 2·H·Dk + 5]; dv in [B, T, H·Dv + pad];
    // d_beta | d_log_decay in [B, T, 2H + 1]. The padding must stay NaN.
    const i64 Fo = p.H * p.Dv + pad, Fqk = 2 * E + 5;
    const Tensor o_buf = gp->gpu_empty(dt, Shape{p.B, p.T, Fo});
    const Tensor fs = gp->gpu_empty(stat_dtype(dt), p.state());
    gp->gpu->lsm_delta_rule_forward(q, k, v, beta, g, p.scale(), chunk, s0,
                                    view_of(o_buf, p, 0, p.Dv), fs);
    // d_o as a strided view too.
    HostTensor d_o_wide(host_dtype(dt), Shape{p.B, p.T, Fo});
    {
      const Vec d = x.d_o.to_f64();
      Vec w(static_cast<std::size_t>(d_o_wide.t().numel()), 0.25);
      for (i64 bt = 0; bt < p.B * p.T; ++bt) {
        for (i64 c = 0; c < p.H * p.Dv; ++c) {
          w[static_cast<std::size_t>(bt * Fo + pad + c)] =
              d[static_cast<std::size_t>(bt * p.H * p.Dv + c)];
        }
      }
      d_o_wide.from_f64(w);
    }
    const Tensor d_o = view_of(gp->upload_as(d_o_wide, dt), p, pad, p.Dv);
    const Tensor dqk = gp->gpu_empty(dt, Shape{p.B, p.T, Fqk});
    const Tensor dv_buf = gp->gpu_empty(dt, Shape{p.B, p.T, Fo});
    const Tensor dgates = gp->gpu_empty(dt, Shape{p.B, p.T, Fg});
    const Tensor ds0 = gp->gpu_empty(stat_dtype(dt), p.state());
    gp->gpu->lsm_delta_rule_backward(q, k, v, beta, g, p.scale(), chunk, s0, d_o, dfs,
                                     view_of(dqk, p, 0, p.Dk), view_of(dqk, p, E, p.Dk),
                                     view_of(dv_buf, p, 0, p.Dv), view_of(dgates, p, 0, 0),
                                     view_of(dgates, p, p.H, 0), ds0);
    Result got;
    const Vec o_all = gp->values(o_buf), dqk_all = gp->values(dqk);
    const Vec dv_all = gp->values(dv_buf), dgates_all = gp->values(dgates);
    got.o = gather(o_all, 0, Fo, p, p.H, p.Dv);
    got.fs = gp->values(fs);
    got.dq = gather(dqk_all, 0, Fqk, p, p.H, p.Dk);
    got.dk = gather(dqk_all, E, Fqk, p, p.H, p.Dk);
    got.dv = gather(dv_all, 0, Fo, p, p.H, p.Dv);
    got.dbeta = gather(dgates_all, 0, Fg, p, p.H, 1);
    got.dg = gather(dgates_all, p.H, Fg, p, p.H, 1);
    got.ds0 = gp->values(ds0);
    compare(got, ref, bound(dt));
    // Nothing written outside the views.
    for (i64 bt = 0; bt < p.B * p.T; ++bt) {
      for (i64 c = p.H * p.Dv; c < Fo; ++c) {
        CHECK(std::isnan(o_all[static_cast<std::size_t>(bt * Fo + c)]));
        CHECK(std::isnan(dv_all[static_cast<std::size_t>(bt * Fo + c)]));
      }
      for (i64 c = 2 * E; c < Fqk; ++c)
        CHECK(std::isnan(dqk_all[static_cast<std::size_t>(bt * Fqk + c)]));
      CHECK(std::isnan(dgates_all[static_cast<std::size_t>(bt * Fg + 2 * p.H)]));
    }
  }
}

TEST_CASE("gpu lsm_delta_rule reads and writes row-strided views", "[gpu][lsm]") {
  auto gp = testing::gpu_pair();
  if (!gp) return;
  check_strided(*gp, Problem{2, 45, 3, 12, 20}, 16, 3);
  // bf16 at head dims 64, chunk 64, aligned rows: the tensor-core forward on strided views.
  check_strided(*gp, Problem{2, 130, 2, 64, 64}, 64, 8);
}

TEST_CASE("gpu lsm_delta_rule: optional gradients may be left out", "[gpu][lsm]") {
  auto gp = testing::gpu_pair();
  if (!gp) return;
  const Problem p{2, 37, 2, 6, 5};
  Options opt;
  opt.init = true, opt.dfinal = true;
  const Data x(p, DType::f64, 5, opt);
  const Result full = run_gpu(*gp, p, x, 16);
  // The same backward without d_initial_state and d_log_decay (log_decay still given).
  const Tensor q = gp->upload(x.q), k = gp->upload(x.k), v = gp->upload(x.v);
  const Tensor beta = gp->upload(x.beta), g = gp->upload(x.g), d_o = gp->upload(x.d_o);
  const Tensor s0 = gp->upload(x.s0), dfs = gp->upload(x.dfs);
  const Tensor dq = gp->gpu_empty(DType::f64, p.qk()), dk = gp->gpu_empty(DType::f64, p.qk());
  const Tensor dv = gp->gpu_empty(DType::f64, p.vo()), dbeta = gp->gpu_empty(DType::f64, p.g());
  gp->gpu->lsm_delta_rule_backward(q, k, v, beta, g, p.scale(), 16, s0, d_o, dfs, dq, dk, dv, dbeta,
                                   Tensor{}, Tensor{});
  CHECK(gp->values(dq) == full.dq);
  CHECK(gp->values(dk) == full.dk);
  CHECK(gp->values(dv) == full.dv);
  CHECK(gp->values(dbeta) == full.dbeta);
}

TEST_CASE("gpu lsm_delta_rule bf16 tensor-core backward: repeatable, optional gradients",
          "[gpu][lsm]") {
  auto gp = testing::gpu_pair();
  if (!gp) return;
  // The tensor-core backward twice on the same inputs gives the same bits (no atomics, no races
  // between its five launches), at every supported head-dim pair and over several chunks.
  std::uint64_t seed = 15000;
  Options opt;
  opt.gated = true, opt.init = true, opt.dfinal = true;
  const i64 dims[][2] = {{64, 64}, {64, 128}, {128, 64}, {128, 128}};
  for (const auto& d : dims) {
    check_case(*gp, Problem{1, 190, 2, d[0], d[1]}, DType::bf16, 64, opt, seed += 16, true);
  }
  // Without d_initial_state and d_log_decay (log_decay given): the same dq, dk, dv, d_beta.
  const Problem p{2, 130, 2, 64, 64};
  const Data x(p, DType::bf16, 16000, opt);
  const Result full = run_gpu(*gp, p, x, 64);
  const Tensor q = gp->upload_as(x.q, DType::bf16), k = gp->upload_as(x.k, DType::bf16);
  const Tensor v = gp->upload_as(x.v, DType::bf16), beta = gp->upload_as(x.beta, DType::bf16);
  const Tensor g = gp->upload_as(x.g, DType::bf16), d_o = gp->upload_as(x.d_o, DType::bf16);
  const Tensor s0 = gp->upload(x.s0), dfs = gp->upload(x.dfs);
  const Tensor dq = gp->gpu_empty(DType::bf16, p.qk()), dk = gp->gpu_empty(DType::bf16, p.qk());
  const Tensor dv = gp->gpu_empty(DType::bf16, p.vo()), dbeta = gp->gpu_empty(DType::bf16, p.g());
  gp->gpu->lsm_delta_rule_backward(q, k, v, beta, g, p.scale(), 64, s0, d_o, dfs, dq, dk, dv, dbeta,
                                   Tensor{}, Tensor{});
  CHECK(gp->values(dq) == full.dq);
  CHECK(gp->values(dk) == full.dk);
  CHECK(gp->values(dv) == full.dv);
  CHECK(gp->values(dbeta) == full.dbeta);
}

TEST_CASE("gpu lsm_delta_rule with T = 0 passes the states through", "[gpu][lsm]") {
  auto gp = testing::gpu_pair();
  if (!gp) return;
  const Problem p{2, 0, 3, 4, 5};
  Options opt;
  opt.init = true, opt.dfinal = true;
  const Data x(p, DType::f32, 9, opt);
  const Result got = run_gpu(*gp, p, x, 16);
  CHECK(got.fs == x.s0.to_f64());
  CHECK(got.ds0 == x.dfs.to_f64());
}

TEST_CASE("gpu lsm_delta_rule stays finite over 65536 tokens", "[gpu][lsm]") {
  auto gp = testing::gpu_pair();
  if (!gp) return;
  // Strong and weak decays, β near 1 (the recurrence nearly overwrites the state each step),
  // an initial state and d_final_state: every output finite and equal to the CPU's.
  const Problem p{1, 65536, 2, 32, 32};
  std::uint64_t seed = 31000;
  for (DType dt : {DType::f32, DType::bf16}) {
    for (bool gated : {false, true}) {
      Options opt;
      opt.gated = gated, opt.init = true, opt.dfinal = true;
      opt.decay_lo = 1e-4, opt.decay_hi = 20.0;
      opt.beta_lo = 0.9, opt.beta_hi = 1.0;
      check_case(*gp, p, dt, 64, opt, seed += 16);
    }
  }
  // The same at head dims 64 in bf16: the tensor-core forward (T = 65536 − 5: a partial chunk).
  for (bool gated : {false, true}) {
    Options opt;
    opt.gated = gated, opt.init = true, opt.dfinal = true;
    opt.decay_lo = 1e-4, opt.decay_hi = 20.0;
    opt.beta_lo = 0.9, opt.beta_hi = 1.0;
    check_case(*gp, Problem{1, 65531, 2, 64, 64}, DType::bf16, 64, opt, seed += 16);
  }
}

}  // namespace
}  // namespace linmoe
