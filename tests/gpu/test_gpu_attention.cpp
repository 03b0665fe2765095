// Causal GQA attention on the CUDA backend (kernels/cuda/attention.cu) against the CPU backend
// (itself checked against an fp64 oracle in tests/attention): forward o and lse, backward dq,
// dk, dv, in f32 (the SIMT path), bf16 (the tensor-core path for head dims it takes, else SIMT)
// and f64; GQA groups 1, 2, 4; sequence lengths that are not multiples of any tile; context-
// parallel pieces (q_offset > 0, Tk ≥ q_offset + Tq, keys past every query's horizon); head
// dims 16 to 256. Outputs are NaN-poisoned before every call, and the backward is run twice to
// check that it is bit-for-bit deterministic.
//
// Bounds (max |gpu − cpu| / max |cpu|, gpu_compare.h): f32 1e-4 (fp32 accumulation, different
// summation order), f64 1e-12, bf16 1e-2 (bf16 inputs and outputs; the tensor-core path also
// rounds P and dS to bf16 before their products, as FlashAttention does).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "gpu/gpu_compare.h"
#include "kernels/ops.h"

namespace linmoe {
namespace {

using testing::HostTensor;
using i64 = std::int64_t;

struct Case {
  i64 B, Tq, Tk, Hq, Hkv, d, q_offset;
  Shape q() const { return Shape{B, Tq, Hq, d}; }
  Shape kv() const { return Shape{B, Tk, Hkv, d}; }
  Shape stat() const { return Shape{B, Hq, Tq}; }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(d)); }
  std::string str() const {
    return "B=" + std::to_string(B) + " Tq=" + std::to_string(Tq) + " Tk=" + std::to_string(Tk) +
           " Hq=" + std::to_string(Hq) + " Hkv=" + std::to_string(Hkv) + " d=" + std::to_string(d) +
           " q_offset=" + std::to_string(q_offset);
  }
};

// Host values in the CPU's dtype (f64 for f64, else f32), rounded to bf16 when dt is bf16 so
// both backends see the same numbers.
HostTensor random_host(DType dt, const Shape& shape, std::uint64_t seed, double range) {
  HostTensor t(dt == DType::f64 ? DType::f64 : DType::f32, shape);
  testing::fill_uniform(t.t(), seed, -range, range);
  if (dt == DType::bf16) testing::round_to_bf16(t.t());
  return t;
}

double error(testing::GpuPair& g, const Tensor& gpu, const Tensor& cpu) {
  return testing::max_rel_error(g.values(gpu), g.values(cpu));
}

// Forward and backward of one case in dtype dt on both backends; returns nothing, CHECKs all.
void check_case(testing::GpuPair& g, const Case& c, DType dt, std::uint64_t seed) {
  INFO(c.str() << " dtype " << dtype_name(dt));
  const DType host_dt = dt == DType::f64 ? DType::f64 : DType::f32;
  const double tol = testing::tolerance(dt);
  // q and k in ±2: logits of a few units, so the softmax rows are far from uniform.
  HostTensor q = random_host(dt, c.q(), seed + 1, 2.0);
  HostTensor k = random_host(dt, c.kv(), seed + 2, 2.0);
  HostTensor v = random_host(dt, c.kv(), seed + 3, 1.0);
  HostTensor d_o = random_host(dt, c.q(), seed + 4, 1.0);
  const Tensor qg = g.upload_as(q, dt), kg = g.upload_as(k, dt), vg = g.upload_as(v, dt);
  const Tensor d_og = g.upload_as(d_o, dt);

  // Forward.
  HostTensor o(host_dt, c.q()), lse(stat_dtype(host_dt), c.stat());
  g.cpu->attention_forward(q, k, v, c.scale(), c.q_offset, o, lse);
  const Tensor og = g.gpu_empty(dt, c.q()), lseg = g.gpu_empty(stat_dtype(dt), c.stat());
  g.gpu->attention_forward(qg, kg, vg, c.scale(), c.q_offset, og, lseg);
  CHECK(error(g, og, o) <= tol);
  CHECK(error(g, lseg, lse) <= tol);

  // Backward from the same o (rounded to bf16 for bf16) and lse on both backends.
  if (dt == DType::bf16) testing::round_to_bf16(o.t());
  const Tensor o_in = g.upload_as(o, dt), lse_in = g.upload(lse);
  HostTensor dq(host_dt, c.q()), dk(host_dt, c.kv()), dv(host_dt, c.kv());
  g.cpu->attention_backward(q, k, v, o, lse, d_o, c.scale(), c.q_offset, dq, dk, dv);
  std::vector<double> first[3];
  for (int run = 0; run < 2; ++run) {
    const Tensor dqg = g.gpu_empty(dt, c.q()), dkg = g.gpu_empty(dt, c.kv());
    const Tensor dvg = g.gpu_empty(dt, c.kv());
    g.gpu->attention_backward(qg, kg, vg, o_in, lse_in, d_og, c.scale(), c.q_offset, dqg, dkg, dvg);
    const std::vector<double> now[3] = {g.values(dqg), g.values(dkg), g.values(dvg)};
    if (run == 0) {
      CHECK(testing::max_rel_error(now[0], dq.to_f64()) <= tol);
      CHECK(testing::max_rel_error(now[1], dk.to_f64()) <= tol);
      CHECK(testing::max_rel_error(now[2], dv.to_f64()) <= tol);
      for (int x = 0; x < 3; ++x) first[x] = now[x];
    } else {
      for (int x = 0; x < 3; ++x) CHECK(now[x] == first[x]);  // deterministic, bit for bit
    }
  }
}

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f64};

TEST_CASE("gpu attention: sequence lengths off the tiles, every dtype", "[gpu][attention]") {
  auto g = testing::gpu_pair();
  if (!g) return;
  std::uint64_t seed = 100;
  for (DType dt : kDtypes) {
    for (i64 T : {1, 7, 65, 130}) {
      check_case(*g, Case{2, T, T, 2, 1, 64, 0}, dt, seed += 10);
    }
  }
}

TEST_CASE("gpu attention: GQA groups 1, 2 and 4", "[gpu][attention]") {
  auto g = testing::gpu_pair();
  if (!g) return;
  std::uint64_t seed = 200;
  for (DType dt : kDtypes) {
    for (i64 Hkv : {4, 2, 1}) {
      check_case(*g, Case{1, 97, 97, 4, Hkv, 64, 0}, dt, seed += 10);
    }
  }
}

// bf16 takes the tensor-core path for multiples of 8 up to 128 (16, 40 and 96 padded) and the
// SIMT path for 20 and 256.
TEST_CASE("gpu attention: head dims 16 to 256", "[gpu][attention]") {
  auto g = testing::gpu_pair();
  if (!g) return;
  std::uint64_t seed = 300;
  for (DType dt : kDtypes) {
    for (i64 d : {16, 20, 40, 64, 96, 128, 256}) {
      check_case(*g, Case{1, 70, 70, 2, 1, d, 0}, dt, seed += 10);
    }
  }
}

TEST_CASE("gpu attention: context-parallel pieces (q_offset > 0)", "[gpu][attention]") {
  auto g = testing::gpu_pair();
  if (!g) return;
  std::uint64_t seed = 400;
  for (DType dt : kDtypes) {
    // The last piece: Tk = q_offset + Tq.
    check_case(*g, Case{1, 65, 130, 4, 2, 64, 65}, dt, seed += 10);
    // A middle piece: keys past every query's horizon get zero gradients.
    check_case(*g, Case{2, 33, 150, 2, 2, 128, 40}, dt, seed += 10);
    // One query deep into the sequence, and an offset inside a tile.
    check_case(*g, Case{1, 1, 200, 4, 1, 64, 199}, dt, seed += 10);
    check_case(*g, Case{1, 50, 80, 2, 1, 16, 7}, dt, seed += 10);
  }
}

TEST_CASE("gpu attention: longer sequences on the fast paths", "[gpu][attention]") {
  auto g = testing::gpu_pair();
  if (!g) return;
  check_case(*g, Case{1, 515, 515, 4, 2, 128, 0}, DType::bf16, 500);
  check_case(*g, Case{1, 300, 700, 2, 1, 64, 400}, DType::bf16, 510);
  check_case(*g, Case{1, 515, 515, 4, 2, 128, 0}, DType::f32, 520);
}

TEST_CASE("gpu attention: no queries leaves zero key gradients", "[gpu][attention]") {
  auto g = testing::gpu_pair();
  if (!g) return;
  const Case c{1, 0, 9, 2, 1, 32, 3};
  for (DType dt : kDtypes) {
    const Tensor q = g->gpu_empty(dt, c.q()), k = g->upload_as(random_host(dt, c.kv(), 1, 1), dt);
    const Tensor o = g->gpu_empty(dt, c.q()), lse = g->gpu_empty(stat_dtype(dt), c.stat());
    g->gpu->attention_forward(q, k, k, c.scale(), c.q_offset, o, lse);
    const Tensor dq = g->gpu_empty(dt, c.q()), dk = g->gpu_empty(dt, c.kv());
    const Tensor dv = g->gpu_empty(dt, c.kv());
    g->gpu->attention_backward(q, k, k, o, lse, q, c.scale(), c.q_offset, dq, dk, dv);
    for (double x : g->values(dk)) CHECK(x == 0.0);
    for (double x : g->values(dv)) CHECK(x == 0.0);
  }
}

}  // namespace
}  // namespace linmoe
