// The scalar- and vector-decay LSM cores (kernels/ops.h, MODEL.md section 3) on the CUDA backend
// against the CPU backend (itself checked against fp64 token-by-token oracles in tests/lsm/):
// o and the final state forward; dq, dk, dv, d_log_decay and d_initial_state backward, with and
// without an initial state and a final-state gradient; T ∈ {1, 7, 63, 65, 130} (not multiples of
// the chunk), chunks 16 and 64, Hk < H (scalar family), Dk ≠ Dv (odd sizes), q/k/v as row-strided
// slices of a fused [B, T, 2·Hk·Dk + H·Dv] buffer (their gradients too), in f32, bf16 and f64;
// and T = 65536 with strong decays (finite, and equal to the CPU's result). The bf16 tensor-core
// path (chunk 64, Dk, Dv ∈ {64, 128}) has its own cases at the end.
//
// Bounds (gpu_compare.h's tolerance(), the max error relative to the reference's largest value):
// f32 1e-4: both backends run the same chunked mathematics in fp32 with the cumulative log
// decays in f64, so the results differ by summation order only (a host emulation of these
// kernels against the fp64 oracle stayed under 1e-6 on these shapes, far inside TESTING.md's
// 1e-3 for fp32-accumulated GPU results); bf16 1e-2 (bf16 inputs and outputs, fp32 inside); f64
// 1e-12 (both ~1e-15 from the oracle).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/test_util.h"
#include "gpu/gpu_compare.h"
#include "kernels/ops.h"

namespace linmoe {
namespace {

using testing::GpuPair;
using testing::HostTensor;
using testing::max_rel_error;
using testing::tolerance;
using i64 = std::int64_t;
using Vec = std::vector<double>;

struct Case {
  bool vector = false;  // the vector-decay family (else scalar decay)
  i64 B = 2, T = 7, H = 4, Hk = 2, Dk = 20, Dv = 36;
  int chunk = 16;
  DType dt = DType::f32;
  bool with_state = false;  // initial_state, d_final_state and d_initial_state given
  bool strided = false;     // q, k, v (and dq, dk, dv) are slices of one fused buffer
  bool strong = false;      // strong decays with resets (−650) every 997th value
  std::uint64_t seed = 1;

  DType host() const { return dt == DType::f64 ? DType::f64 : DType::f32; }
  DType stat() const { return stat_dtype(dt); }
  Shape qk() const { return Shape{B, T, Hk, Dk}; }
  Shape vo() const { return Shape{B, T, H, Dv}; }
  Shape g() const { return vector ? Shape{B, T, H, Dk} : Shape{B, T, H}; }
  Shape state() const { return Shape{B, H, Dk, Dv}; }
  i64 width() const { return 2 * Hk * Dk + H * Dv; }  // the fused row: [q | k | v]
  Shape fused() const { return Shape{B, T, width()}; }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(Dk)); }
  // Optional arguments left out in one corner of the matrix, to cover the undefined paths.
  bool final_state_requested() const { return with_state || !strided; }
  bool decay_grad_requested() const { return with_state || !strided; }
};

// A [B, T, heads, D] row-strided view of a fused [B, T, W] tensor, starting at column `offset`.
Tensor rows_view(const Tensor& fused, i64 offset, i64 heads, i64 D) {
  Tensor t;
  t.data = static_cast<char*>(fused.data) + offset * static_cast<i64>(dtype_size(fused.dtype));
  t.dtype = fused.dtype;
  t.device = fused.device;
  const i64 B = fused.shape[0], T = fused.shape[1], W = fused.shape[2];
  t.shape = Shape{B, T, heads, D};
  t.strides = {T * W, W, D, 1, 0, 0};
  return t;
}

// Columns [offset, offset + width) of a fused [B, T, W] buffer's values, as [B, T, width].
Vec columns(const Vec& fused, const Case& c, i64 offset, i64 width) {
  Vec out;
  out.reserve(static_cast<std::size_t>(c.B * c.T * width));
  for (i64 r = 0; r < c.B * c.T; ++r) {
    for (i64 e = 0; e < width; ++e)
      out.push_back(fused[static_cast<std::size_t>(r * c.width() + offset + e)]);
  }
  return out;
}

// Log decays −exp(u), u uniform in [log lo, log hi]; with `strong` also −650 (below exp's range:
// the state is wiped) at every 997th value.
void fill_log_decays(HostTensor& g, const Case& c) {
  const double lo = c.strong ? 1e-3 : 0.01, hi = c.strong ? 30.0 : 1.5;
  testing::fill_uniform(g, c.seed + 4, std::log(lo), std::log(hi));
  Vec v = g.to_f64();
  for (std::size_t i = 0; i < v.size(); ++i) {
    v[i] = c.strong && i % 997 == 0 ? -650.0 : -std::exp(v[i]);
  }
  g.from_f64(v);
}

// The host inputs of one case (in the host dtype; bf16 cases hold bf16-representable values).
struct Inputs {
  explicit Inputs(const Case& c)
      : fused(c.host(), c.strided ? c.fused() : Shape{1}),
        q_own(c.host(), c.strided ? Shape{1} : c.qk()),
        k_own(c.host(), c.strided ? Shape{1} : c.qk()),
        v_own(c.host(), c.strided ? Shape{1} : c.vo()),
        g(c.host(), c.g()),
        d_o(c.host(), c.vo()),
        s0(c.stat(), c.state()),
        dfs(c.stat(), c.state()) {
    if (c.strided) {
      testing::fill_uniform(fused, c.seed + 1);
      q = rows_view(fused, 0, c.Hk, c.Dk);
      k = rows_view(fused, c.Hk * c.Dk, c.Hk, c.Dk);
      v = rows_view(fused, 2 * c.Hk * c.Dk, c.H, c.Dv);
    } else {
      testing::fill_uniform(q_own, c.seed + 1);
      testing::fill_uniform(k_own, c.seed + 2);
      testing::fill_uniform(v_own, c.seed + 3);
      q = q_own, k = k_own, v = v_own;
    }
    fill_log_decays(g, c);
    testing::fill_uniform(d_o, c.seed + 5);
    testing::fill_uniform(s0, c.seed + 6);
    testing::fill_uniform(dfs, c.seed + 7);
    if (c.dt == DType::bf16) {
      for (const Tensor* t : {&fused.t(), &q_own.t(), &k_own.t(), &v_own.t(), &g.t(), &d_o.t()}) {
        testing::round_to_bf16(*t);
      }
    }
  }
  HostTensor fused, q_own, k_own, v_own, g, d_o, s0, dfs;
  Tensor q, k, v;
};

// The same inputs on the device, in the case's dtype (states in the stat dtype).
struct DeviceInputs {
  DeviceInputs(GpuPair& p, const Case& c, const Inputs& in) {
    if (c.strided) {
      fused = p.upload_as(in.fused, c.dt);
      q = rows_view(fused, 0, c.Hk, c.Dk);
      k = rows_view(fused, c.Hk * c.Dk, c.Hk, c.Dk);
      v = rows_view(fused, 2 * c.Hk * c.Dk, c.H, c.Dv);
    } else {
      q = p.upload_as(in.q, c.dt), k = p.upload_as(in.k, c.dt), v = p.upload_as(in.v, c.dt);
    }
    g = p.upload_as(in.g, c.dt);
    d_o = p.upload_as(in.d_o, c.dt);
    s0 = p.upload(in.s0);
    dfs = p.upload(in.dfs);
  }
  Tensor fused, q, k, v, g, d_o, s0, dfs;
};

void forward(Backend& be, const Case& c, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& g, const Tensor& s0, const Tensor& o, const Tensor& fs) {
  if (c.vector) {
    be.lsm_vector_decay_forward(q, k, v, g, c.scale(), c.chunk, s0, o, fs);
  } else {
    be.lsm_scalar_decay_forward(q, k, v, g, c.scale(), c.chunk, s0, o, fs);
  }
}

void backward(Backend& be, const Case& c, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& g, const Tensor& s0, const Tensor& d_o, const Tensor& dfs,
              const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dg,
              const Tensor& ds0) {
  if (c.vector) {
    be.lsm_vector_decay_backward(q, k, v, g, c.scale(), c.chunk, s0, d_o, dfs, dq, dk, dv, dg, ds0);
  } else {
    be.lsm_scalar_decay_backward(q, k, v, g, c.scale(), c.chunk, s0, d_o, dfs, dq, dk, dv, dg, ds0);
  }
}

// Every value finite (a device result must be checked on its own: max_rel_error also fails on
// a non-finite value, but this names the cause).
bool all_finite(const Vec& x) {
  for (double e : x) {
    if (!std::isfinite(e)) return false;
  }
  return true;
}

void check_close(const char* what, const Vec& gpu, const Vec& cpu, double tol) {
  INFO(what << ": GPU vs CPU, bound " << tol);
  CHECK(all_finite(gpu));
  CHECK(max_rel_error(gpu, cpu) <= tol);
}

// Runs one case forward and backward on both backends and compares every output.
void run_case(GpuPair& p, const Case& c) {
  INFO((c.vector ? "vector" : "scalar")
       << " decay, " << dtype_name(c.dt) << ", B=" << c.B << " T=" << c.T << " H=" << c.H
       << " Hk=" << c.Hk << " Dk=" << c.Dk << " Dv=" << c.Dv << " chunk=" << c.chunk
       << (c.with_state ? ", states" : "") << (c.strided ? ", strided" : "")
       << (c.strong ? ", strong decays" : ""));
  const double tol = tolerance(c.dt);
  const Inputs in(c);
  const DeviceInputs dev(p, c, in);
  const Tensor none{};
  const Tensor s0_c = c.with_state ? in.s0.t() : none, s0_g = c.with_state ? dev.s0 : none;

  // ---- forward
  HostTensor o_c(c.host(), c.vo()), fs_c(c.stat(), c.state());
  testing::poison(o_c);
  testing::poison(fs_c);
  const Tensor o_g = p.gpu_empty(c.dt, c.vo()), fs_g = p.gpu_empty(c.stat(), c.state());
  const bool want_fs = c.final_state_requested();
  forward(*p.cpu, c, in.q, in.k, in.v, in.g, s0_c, o_c, want_fs ? fs_c.t() : none);
  forward(*p.gpu, c, dev.q, dev.k, dev.v, dev.g, s0_g, o_g, want_fs ? fs_g : none);
  check_close("o", p.values(o_g), o_c.to_f64(), tol);
  if (want_fs) check_close("final_state", p.values(fs_g), fs_c.to_f64(), tol);

  // ---- backward
  const Tensor dfs_c = c.with_state ? in.dfs.t() : none, dfs_g = c.with_state ? dev.dfs : none;
  HostTensor dg_c(c.host(), c.g()), ds0_c(c.stat(), c.state());
  testing::poison(dg_c);
  testing::poison(ds0_c);
  const Tensor dg_g = p.gpu_empty(c.dt, c.g()), ds0_g = p.gpu_empty(c.stat(), c.state());
  const Tensor dg_cv = c.decay_grad_requested() ? dg_c.t() : none;
  const Tensor dg_gv = c.decay_grad_requested() ? dg_g : none;
  const Tensor ds0_cv = c.with_state ? ds0_c.t() : none, ds0_gv = c.with_state ? ds0_g : none;
  if (c.strided) {
    HostTensor grads_c(c.host(), c.fused());
    testing::poison(grads_c);
    const Tensor grads_g = p.gpu_empty(c.dt, c.fused());
    const i64 ok = c.Hk * c.Dk, ov = 2 * c.Hk * c.Dk;
    backward(*p.cpu, c, in.q, in.k, in.v, in.g, s0_c, in.d_o, dfs_c,
             rows_view(grads_c, 0, c.Hk, c.Dk), rows_view(grads_c, ok, c.Hk, c.Dk),
             rows_view(grads_c, ov, c.H, c.Dv), dg_cv, ds0_cv);
    backward(*p.gpu, c, dev.q, dev.k, dev.v, dev.g, s0_g, dev.d_o, dfs_g,
             rows_view(grads_g, 0, c.Hk, c.Dk), rows_view(grads_g, ok, c.Hk, c.Dk),
             rows_view(grads_g, ov, c.H, c.Dv), dg_gv, ds0_gv);
    const Vec gg = p.values(grads_g), gc = grads_c.to_f64();
    check_close("dq", columns(gg, c, 0, ok), columns(gc, c, 0, ok), tol);
    check_close("dk", columns(gg, c, ok, ok), columns(gc, c, ok, ok), tol);
    check_close("dv", columns(gg, c, ov, c.H * c.Dv), columns(gc, c, ov, c.H * c.Dv), tol);
  } else {
    HostTensor dq_c(c.host(), c.qk()), dk_c(c.host(), c.qk()), dv_c(c.host(), c.vo());
    testing::poison(dq_c);
    testing::poison(dk_c);
    testing::poison(dv_c);
    const Tensor dq_g = p.gpu_empty(c.dt, c.qk()), dk_g = p.gpu_empty(c.dt, c.qk());
    const Tensor dv_g = p.gpu_empty(c.dt, c.vo());
    backward(*p.cpu, c, in.q, in.k, in.v, in.g, s0_c, in.d_o, dfs_c, dq_c, dk_c, dv_c, dg_cv,
             ds0_cv);
    backward(*p.gpu, c, dev.q, dev.k, dev.v, dev.g, s0_g, dev.d_o, dfs_g, dq_g, dk_g, dv_g, dg_gv,
             ds0_gv);
    check_close("dq", p.values(dq_g), dq_c.to_f64(), tol);
    check_close("dk", p.values(dk_g), dk_c.to_f64(), tol);
    check_close("dv", p.values(dv_g), dv_c.to_f64(), tol);
  }
  if (c.decay_grad_requested()) check_close("d_log_decay", p.values(dg_g), dg_c.to_f64(), tol);
  if (c.with_state) check_close("d_initial_state", p.values(ds0_g), ds0_c.to_f64(), tol);
}

// The matrix of awkward cases for one family.
void run_family(bool vector) {
  auto p = testing::gpu_pair();
  if (!p) return;
  std::uint64_t seed = vector ? 1000 : 1;
  for (DType dt : {DType::f32, DType::bf16, DType::f64}) {
    for (i64 T : {1, 7, 63, 65, 130}) {
      for (int chunk : {16, 64}) {
        for (bool with_state : {false, true}) {
          for (bool strided : {false, true}) {
            Case c;
            c.vector = vector;
            c.B = 2;
            c.T = T;
            c.H = vector ? 3 : 4;
            c.Hk = vector ? 3 : 2;  // the scalar family shares q/k heads (mamba2's groups)
            c.Dk = vector ? 17 : 20;
            c.Dv = vector ? 33 : 36;
            c.chunk = chunk;
            c.dt = dt;
            c.with_state = with_state;
            c.strided = strided;
            c.seed = seed += 10;
            run_case(*p, c);
          }
        }
      }
    }
  }
}

TEST_CASE("gpu lsm_scalar_decay: forward and backward match the CPU backend", "[gpu][lsm]") {
  run_family(false);
}

TEST_CASE("gpu lsm_vector_decay: forward and backward match the CPU backend", "[gpu][lsm]") {
  run_family(true);
}

// bf16 with chunk 64 and Dk, Dv ∈ {64, 128} takes the tensor-core kernels
// (kernels/cuda/lsm_scalar_decay_mma.cuh): partial last chunks, GQA, states, strided rows.
TEST_CASE("gpu lsm_scalar_decay: the bf16 tensor-core path matches the CPU backend", "[gpu][lsm]") {
  auto p = testing::gpu_pair();
  if (!p) return;
  std::uint64_t seed = 5000;
  for (i64 T : {1, 63, 64, 65, 200}) {
    for (int dims = 0; dims < 4; ++dims) {
      for (bool with_state : {false, true}) {
        Case c;
        c.T = T;
        c.B = 2;
        c.H = 4;
        c.Hk = dims % 2 == 0 ? 2 : 4;
        c.Dk = dims < 2 ? 64 : 128;
        c.Dv = dims == 1 || dims == 2 ? 128 : 64;
        c.chunk = 64;
        c.dt = DType::bf16;
        c.with_state = with_state;
        c.strided = (T + dims) % 2 == 1;
        c.seed = seed += 10;
        run_case(*p, c);
      }
    }
  }
}

TEST_CASE("gpu lsm_scalar_decay: the bf16 tensor-core path at T = 65536 with strong decays",
          "[gpu][lsm]") {
  auto p = testing::gpu_pair();
  if (!p) return;
  for (i64 D : {64, 128}) {
    Case c;
    c.B = 1;
    c.T = 65536;
    c.H = 2;
    c.Hk = 1;
    c.Dk = D;
    c.Dv = D;
    c.chunk = 64;
    c.dt = DType::bf16;
    c.with_state = true;
    c.strong = true;
    c.seed = 91 + static_cast<std::uint64_t>(D);
    run_case(*p, c);  // run_case checks every output finite first
  }
}

TEST_CASE("gpu lsm decay: T = 65536 with strong decays stays finite and matches the CPU",
          "[gpu][lsm]") {
  auto p = testing::gpu_pair();
  if (!p) return;
  for (bool vector : {false, true}) {
    Case c;
    c.vector = vector;
    c.B = 1;
    c.T = 65536;
    c.H = 2;
    c.Hk = vector ? 2 : 1;
    c.Dk = 16;
    c.Dv = 16;
    c.chunk = 64;
    c.dt = DType::f32;
    c.with_state = true;
    c.strong = true;
    c.seed = vector ? 77 : 55;
    run_case(*p, c);
  }
}

// bf16 vector decay with chunk 64 and Dk, Dv ∈ {64, 128} takes the tensor-core kernels
// (kernels/cuda/lsm_vector_decay_mma.cuh): GLA-like (64/128), HGRN2-like (128/128) and the other
// two dims, partial last chunks, states, strided rows, optional outputs left out; then T = 65536
// with strong per-channel decays (finite, and equal to the CPU's result).
TEST_CASE("gpu lsm_vector_decay: the bf16 tensor-core path matches the CPU backend", "[gpu][lsm]") {
  auto p = testing::gpu_pair();
  if (!p) return;
  std::uint64_t seed = 9000;
  for (i64 T : {1, 15, 63, 64, 65, 200}) {
    for (int dims = 0; dims < 4; ++dims) {
      for (bool with_state : {false, true}) {
        Case c;
        c.vector = true;
        c.T = T;
        c.B = 2;
        c.H = 3;
        c.Hk = 3;
        c.Dk = dims < 2 ? 64 : 128;
        c.Dv = dims == 1 || dims == 2 ? 128 : 64;
        c.chunk = 64;
        c.dt = DType::bf16;
        c.with_state = with_state;
        c.strided = (T + dims) % 2 == 1;
        c.strong = dims == 3 && T == 200;
        c.seed = seed += 10;
        run_case(*p, c);
      }
    }
  }
  for (i64 D : {64, 128}) {
    Case c;
    c.vector = true;
    c.B = 1;
    c.T = 65536;
    c.H = 2;
    c.Hk = 2;
    c.Dk = D;
    c.Dv = D;
    c.chunk = 64;
    c.dt = DType::bf16;
    c.with_state = true;
    c.strong = true;
    c.seed = 191 + static_cast<std::uint64_t>(D);
    run_case(*p, c);  // run_case checks every output finite first
  }
}

}  // namespace
}  // namespace linmoe
