// The algorithm of the tensor-core scalar-decay LSM kernels (kernels/cuda/lsm_scalar_decay_mma.cuh)
// run on the host — the same phases (forward state pass, chunk outputs; backward: state pass,
// reverse state-gradient pass with the through term, chunk gradients with the diagonal-free decay
// gradient identity), the same tiling helpers (lsm_scalar_decay_tiles.cuh) and the same points
// where values are rounded to bf16 — against the CPU backend's lsm_scalar_decay_forward/backward
// (itself checked against fp64 oracles in tests/lsm/). With the rounding switched off the two
// must agree to fp32 rounding (this checks the mathematics and the chunk bookkeeping); with bf16
// rounding, to the bf16 tolerance of tests/gpu/test_gpu_lsm_decay.cpp (this checks that the
// rounding points cost no more than bf16 inputs and outputs do). Last, the kernels' own code runs
// on the host, one CUDA block at a time on an emulated block of threads (cuda_block_emulation.h:
// barriers, shuffles, ldmatrix and mma.sync per the PTX ISA), and must give the CPU backend's
// results too: this checks their indexing, tiling and synchronisation, short of the hardware.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "kernels/cpu/cpu_backend.h"
#include "unit/cuda_block_emulation.h"  // before the kernels: it defines what they use
// The kernels themselves, compiled for the host on the emulated block.
#include "kernels/cuda/lsm_scalar_decay_mma.cuh"

// The emulated block's dynamic shared memory (the kernels' `extern __shared__ smem_raw`).
namespace linmoe::cuda::lsm_mma {
alignas(16) unsigned char smem_raw[232448];
}  // namespace linmoe::cuda::lsm_mma

namespace linmoe {
namespace {

namespace lm = cuda::lsm_mma;
namespace emu = testing::emu;
using testing::HostTensor;
using i64 = std::int64_t;
using Vec = std::vector<float>;

Backend& cpu() {
  static std::unique_ptr<Backend> backend = make_cpu_backend(2);
  return *backend;
}

struct Case {
  i64 B = 1, T = 65, H = 2, Hk = 2, Dk = 64, Dv = 64;
  bool states = false;  // initial_state and d_final_state given
  bool strong = false;  // log decays down to −30, and −650 at every 997th value
  bool bf16 = true;     // round where the kernels round (else the fp32 mathematics alone)
  std::uint64_t seed = 1;
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(Dk)); }
  float r(float x) const { return bf16 ? cuda::frag::round_bf16(x) : x; }
};

struct Data {
  Vec q, k, v, g, d_o, s0, dfs;  // [B,T,Hk,Dk] ×2, [B,T,H,Dv], [B,T,H], [B,T,H,Dv], [B,H,Dk,Dv] ×2
};
struct Result {
  Vec o, fs, dq, dk, dv, dg, ds0;
};

Vec random_vec(i64 n, std::mt19937& rng, const Case& c, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> u(lo, hi);
  Vec x(static_cast<std::size_t>(n));
  for (float& e : x) e = c.r(u(rng));
  return x;
}

Data make_data(const Case& c) {
  std::mt19937 rng(static_cast<unsigned>(c.seed));
  Data d;
  d.q = random_vec(c.B * c.T * c.Hk * c.Dk, rng, c);
  d.k = random_vec(c.B * c.T * c.Hk * c.Dk, rng, c);
  d.v = random_vec(c.B * c.T * c.H * c.Dv, rng, c);
  d.d_o = random_vec(c.B * c.T * c.H * c.Dv, rng, c);
  const float lo = std::log(c.strong ? 1e-3f : 0.01f), hi = std::log(c.strong ? 30.0f : 1.5f);
  d.g = random_vec(c.B * c.T * c.H, rng, Case{}, lo, hi);
  for (std::size_t i = 0; i < d.g.size(); ++i) {
    d.g[i] = c.r(c.strong && i % 997 == 0 ? -650.0f : -std::exp(d.g[i]));
  }
  if (c.states) {  // fp32 states: not rounded
    Case f32 = c;
    f32.bf16 = false;
    d.s0 = random_vec(c.B * c.H * c.Dk * c.Dv, rng, f32);
    d.dfs = random_vec(c.B * c.H * c.Dk * c.Dv, rng, f32);
  }
  return d;
}

// One (b, h) head's rows, gathered: x[t][channel].
struct Head {
  i64 T, Dk, Dv;
  Vec q, k, v, d_o, g;
};
Head gather(const Case& c, const Data& d, i64 b, i64 h) {
  const i64 hk = h * c.Hk / c.H;
  Head s{c.T, c.Dk, c.Dv, {}, {}, {}, {}, {}};
  for (i64 t = 0; t < c.T; ++t) {
    const i64 qk = ((b * c.T + t) * c.Hk + hk) * c.Dk, vo = ((b * c.T + t) * c.H + h) * c.Dv;
    s.q.insert(s.q.end(), d.q.begin() + qk, d.q.begin() + qk + c.Dk);
    s.k.insert(s.k.end(), d.k.begin() + qk, d.k.begin() + qk + c.Dk);
    s.v.insert(s.v.end(), d.v.begin() + vo, d.v.begin() + vo + c.Dv);
    s.d_o.insert(s.d_o.end(), d.d_o.begin() + vo, d.d_o.begin() + vo + c.Dv);
    s.g.push_back(d.g[static_cast<std::size_t>((b * c.T + t) * c.H + h)]);
  }
  return s;
}

// b_j of every chunk (chunk_cumsum): [NC][64], positions past the chunk's end repeat its last.
Vec cumulative(const Head& s) {
  const i64 nc = lm::chunk_count(s.T);
  Vec bs(static_cast<std::size_t>(nc * lm::kChunk));
  for (i64 c = 0; c < nc; ++c) {
    float acc = 0;
    for (int j = 0; j < lm::kChunk; ++j) {
      if (j < lm::chunk_len(s.T, c)) acc += s.g[static_cast<std::size_t>(c * lm::kChunk + j)];
      bs[static_cast<std::size_t>(c * lm::kChunk + j)] = acc;
    }
  }
  return bs;
}

// chunk_state_kernel: forward S ← e S + Σ_j r(k_j f_j) v_jᵀ, or reverse G ← e G + Σ_i
// r(scale q_i e_i) do_iᵀ. stored[c] = r(state before chunk c's update); with `partner` also
// through[c] = e_{L−1} Σ state ⊙ partner[c]. Returns the last state.
Vec state_pass(const Case& cs, const Head& s, const Vec& bs, const Vec& x, const Vec& y,
               const float* init, bool reverse, Vec& stored, const Vec* partner, Vec* through) {
  const i64 nc = lm::chunk_count(s.T), Dk = s.Dk, Dv = s.Dv;
  Vec S(static_cast<std::size_t>(Dk * Dv), 0.0f);
  if (init) std::copy(init, init + Dk * Dv, S.begin());
  stored.assign(static_cast<std::size_t>(nc * Dk * Dv), 0.0f);
  if (through) through->assign(static_cast<std::size_t>(nc), 0.0f);
  for (i64 step = 0; step < nc; ++step) {
    const i64 c = reverse ? nc - 1 - step : step, t0 = c * lm::kChunk;
    const int L = lm::chunk_len(s.T, c);
    const float* b = &bs[static_cast<std::size_t>(c * lm::kChunk)];
    const float el = lm::decay_factor(b[L - 1]);
    Vec X(static_cast<std::size_t>(L * Dk));
    for (int j = 0; j < L; ++j) {
      const float w =
          reverse ? cs.scale() * lm::decay_factor(b[j]) : lm::decay_factor(b[L - 1] - b[j]);
      for (i64 ch = 0; ch < Dk; ++ch) {
        X[static_cast<std::size_t>(j * Dk + ch)] =
            cs.r(x[static_cast<std::size_t>((t0 + j) * Dk + ch)] * w);
      }
    }
    float part = 0;
    for (i64 e = 0; e < Dk * Dv; ++e) {
      stored[static_cast<std::size_t>(c * Dk * Dv + e)] = cs.r(S[static_cast<std::size_t>(e)]);
      if (partner)
        part +=
            S[static_cast<std::size_t>(e)] * (*partner)[static_cast<std::size_t>(c * Dk * Dv + e)];
    }
    if (through) (*through)[static_cast<std::size_t>(c)] = el * part;
    for (i64 ch = 0; ch < Dk; ++ch) {
      for (i64 col = 0; col < Dv; ++col) {
        float u = 0;
        for (int j = 0; j < L; ++j) {
          u += X[static_cast<std::size_t>(j * Dk + ch)] *
               y[static_cast<std::size_t>((t0 + j) * Dv + col)];
        }
        float& e = S[static_cast<std::size_t>(ch * Dv + col)];
        e = e * el + u;
      }
    }
  }
  return S;
}

// Row-major dot of a[i][·] and b[j][·] over n channels.
float dot(const Vec& a, i64 i, const Vec& b, i64 j, i64 n) {
  float s = 0;
  for (i64 x = 0; x < n; ++x)
    s += a[static_cast<std::size_t>(i * n + x)] * b[static_cast<std::size_t>(j * n + x)];
  return s;
}

// The causal scores r(scale · rows_a[i]·rows_b[j] · M_ij) of chunk c ([64][64], zero outside).
Vec scores(const Case& cs, const Head& s, const Vec& bs, i64 c, const Vec& a, const Vec& b, i64 n) {
  const i64 t0 = c * lm::kChunk;
  const int L = lm::chunk_len(s.T, c);
  const float* bc = &bs[static_cast<std::size_t>(c * lm::kChunk)];
  Vec out(lm::kChunk * lm::kChunk, 0.0f);
  for (int i = 0; i < L; ++i) {
    for (int j = 0; j <= i; ++j) {
      if (!lm::causal_keep(i, j, L)) continue;
      out[static_cast<std::size_t>(i * lm::kChunk + j)] =
          cs.r(dot(a, t0 + i, b, t0 + j, n) * cs.scale() * lm::decay_factor(bc[i] - bc[j]));
    }
  }
  return out;
}

Result tiled(const Case& cs, const Data& d, bool backward) {
  const i64 Dk = cs.Dk, Dv = cs.Dv, T = cs.T;
  Result r;
  r.o.assign(static_cast<std::size_t>(cs.B * T * cs.H * Dv), 0.0f);
  r.fs.assign(static_cast<std::size_t>(cs.B * cs.H * Dk * Dv), 0.0f);
  r.ds0 = r.fs;
  Vec dq32(static_cast<std::size_t>(cs.B * T * cs.Hk * Dk), 0.0f), dk32 = dq32;
  r.dv = r.o;
  r.dg.assign(static_cast<std::size_t>(cs.B * T * cs.H), 0.0f);
  for (i64 b = 0; b < cs.B; ++b) {
    for (i64 h = 0; h < cs.H; ++h) {
      const Head s = gather(cs, d, b, h);
      const Vec bs = cumulative(s);
      const i64 nc = lm::chunk_count(T), hk = h * cs.Hk / cs.H, st = (b * cs.H + h) * Dk * Dv;
      const float* s0 = cs.states ? &d.s0[static_cast<std::size_t>(st)] : nullptr;
      Vec P;
      const Vec fin = state_pass(cs, s, bs, s.k, s.v, s0, false, P, nullptr, nullptr);
      std::copy(fin.begin(), fin.end(), r.fs.begin() + st);
      auto out_at = [&](i64 t, i64 y) {
        return static_cast<std::size_t>(((b * T + t) * cs.H + h) * Dv + y);
      };
      auto qk_at = [&](i64 t, i64 x) {
        return static_cast<std::size_t>(((b * T + t) * cs.Hk + hk) * Dk + x);
      };
      auto at = [](const Vec& m, i64 row, i64 col, i64 n) {
        return m[static_cast<std::size_t>(row * n + col)];
      };
      if (!backward) {
        for (i64 c = 0; c < nc; ++c) {  // chunk_output_kernel
          const i64 t0 = c * lm::kChunk;
          const int L = lm::chunk_len(T, c);
          const Vec A = scores(cs, s, bs, c, s.q, s.k, Dk);
          const Vec Pc(P.begin() + c * Dk * Dv, P.begin() + (c + 1) * Dk * Dv);
          for (int i = 0; i < L; ++i) {
            const float ei =
                cs.scale() * lm::decay_factor(bs[static_cast<std::size_t>(c * lm::kChunk + i)]);
            for (i64 y = 0; y < Dv; ++y) {
              float inter = 0, intra = 0;
              for (i64 x = 0; x < Dk; ++x) inter += at(s.q, t0 + i, x, Dk) * at(Pc, x, y, Dv);
              for (int j = 0; j <= i; ++j)
                intra += at(A, i, j, lm::kChunk) * at(s.v, t0 + j, y, Dv);
              r.o[out_at(t0 + i, y)] = cs.r(inter * ei + intra);
            }
          }
        }
        continue;
      }
      const float* dfs = cs.states ? &d.dfs[static_cast<std::size_t>(st)] : nullptr;
      Vec G, through;
      const Vec dinit = state_pass(cs, s, bs, s.q, s.d_o, dfs, true, G, &P, &through);
      std::copy(dinit.begin(), dinit.end(), r.ds0.begin() + st);
      for (i64 c = 0; c < nc; ++c) {  // chunk_grad_kernel
        const i64 t0 = c * lm::kChunk;
        const int L = lm::chunk_len(T, c);
        const float* bc = &bs[static_cast<std::size_t>(c * lm::kChunk)];
        const Vec D = scores(cs, s, bs, c, s.d_o, s.v, Dv), A = scores(cs, s, bs, c, s.q, s.k, Dk);
        const Vec Pc(P.begin() + c * Dk * Dv, P.begin() + (c + 1) * Dk * Dv);
        const Vec Gc(G.begin() + c * Dk * Dv, G.begin() + (c + 1) * Dk * Dv);
        Vec rq(lm::kChunk, 0.0f), rk(lm::kChunk, 0.0f), rin(lm::kChunk, 0.0f);
        for (int i = 0; i < L; ++i) {
          const float ei = cs.scale() * lm::decay_factor(bc[i]),
                      fi = lm::decay_factor(bc[L - 1] - bc[i]);
          for (i64 x = 0; x < Dk; ++x) {
            float dq_inter = 0, dq_intra = 0, dk_inter = 0, dk_intra = 0;
            for (i64 y = 0; y < Dv; ++y) {
              dq_inter += at(s.d_o, t0 + i, y, Dv) * at(Pc, x, y, Dv);
              dk_inter += at(s.v, t0 + i, y, Dv) * at(Gc, x, y, Dv);
            }
            dq_inter *= ei, dk_inter *= fi;
            for (int j = 0; j <= i; ++j)
              dq_intra += at(D, i, j, lm::kChunk) * at(s.k, t0 + j, x, Dk);
            for (int j = i; j < L; ++j)
              dk_intra += at(D, j, i, lm::kChunk) * at(s.q, t0 + j, x, Dk);
            const float dqv = dq_inter + dq_intra, dkv = dk_inter + dk_intra;
            rin[i] += at(s.q, t0 + i, x, Dk) * dq_inter;
            rq[i] += at(s.q, t0 + i, x, Dk) * dqv;
            rk[i] += at(s.k, t0 + i, x, Dk) * dkv;
            dq32[qk_at(t0 + i, x)] += dqv;
            dk32[qk_at(t0 + i, x)] += dkv;
          }
          for (i64 y = 0; y < Dv; ++y) {
            float inter = 0, intra = 0;
            for (i64 x = 0; x < Dk; ++x) inter += at(s.k, t0 + i, x, Dk) * at(Gc, x, y, Dv);
            for (int j = i; j < L; ++j) intra += at(A, j, i, lm::kChunk) * at(s.d_o, t0 + j, y, Dv);
            r.dv[out_at(t0 + i, y)] = cs.r(inter * fi + intra);
          }
        }
        // dg_u = through + Σ_v rin_v − Σ_{v<u} (rq_v − rk_v)
        float base = through[static_cast<std::size_t>(c)], prefix = 0;
        for (int v = 0; v < lm::kChunk; ++v) base += rin[v];
        for (int u = 0; u < L; ++u) {
          r.dg[static_cast<std::size_t>((b * T + t0 + u) * cs.H + h)] = cs.r(base - prefix);
          prefix += rq[u] - rk[u];
        }
      }
    }
  }
  for (float& e : dq32) e = cs.r(e);
  for (float& e : dk32) e = cs.r(e);
  r.dq = dq32, r.dk = dk32;
  return r;
}

HostTensor host(const Vec& x, const Shape& shape) {
  HostTensor t(DType::f32, shape);
  std::copy(x.begin(), x.end(), t.data<float>());
  return t;
}
Vec values(const HostTensor& t) {
  const std::vector<double> v = t.to_f64();
  return Vec(v.begin(), v.end());
}

// The CPU backend on the same (already rounded) values, in f32, chunk 64.
Result cpu_result(const Case& c, const Data& d) {
  const Shape qk{c.B, c.T, c.Hk, c.Dk}, vo{c.B, c.T, c.H, c.Dv}, g{c.B, c.T, c.H},
      st{c.B, c.H, c.Dk, c.Dv};
  const HostTensor q = host(d.q, qk), k = host(d.k, qk), v = host(d.v, vo), lg = host(d.g, g);
  const HostTensor d_o = host(d.d_o, vo);
  const HostTensor s0 = host(c.states ? d.s0 : Vec(1), c.states ? st : Shape{1});
  const HostTensor dfs = host(c.states ? d.dfs : Vec(1), c.states ? st : Shape{1});
  HostTensor o(DType::f32, vo), fs(DType::f32, st), dq(DType::f32, qk), dk(DType::f32, qk);
  HostTensor dv(DType::f32, vo), dg(DType::f32, g), ds0(DType::f32, st);
  for (const HostTensor* t : {&o, &fs, &dq, &dk, &dv, &dg, &ds0}) testing::poison(t->t());
  const Tensor none{};
  const double scale = c.scale();
  cpu().lsm_scalar_decay_forward(q, k, v, lg, scale, lm::kChunk, c.states ? s0.t() : none, o, fs);
  cpu().lsm_scalar_decay_backward(q, k, v, lg, scale, lm::kChunk, c.states ? s0.t() : none, d_o,
                                  c.states ? dfs.t() : none, dq, dk, dv, dg, ds0);
  Result r{values(o), values(fs), values(dq), values(dk), values(dv), values(dg), values(ds0)};
  if (!c.states) r.ds0 = Vec(r.ds0.size(), 0.0f);  // ds0 computed though the state was absent
  return r;
}

// max |a − b| / max |b| (the GPU tests' measure); NaN fails.
double max_rel(const Vec& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0, top = 1e-30;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
    top = std::max(top, std::abs(static_cast<double>(b[i])));
  }
  return worst / top;
}

void compare(const Case& c) {
  INFO("B=" << c.B << " T=" << c.T << " H=" << c.H << " Hk=" << c.Hk << " Dk=" << c.Dk
            << " Dv=" << c.Dv << (c.states ? " states" : "") << (c.strong ? " strong" : "")
            << (c.bf16 ? " bf16" : " fp32"));
  const Data d = make_data(c);
  const Result fwd = tiled(c, d, false), bwd = tiled(c, d, true), ref = cpu_result(c, d);
  // fp32: summation order only (~1e-6 seen), except that with strong decays the kernels' fp32
  // cumulative log decays (|b| up to ~10³ inside a chunk; the CPU sums in f64) shift exponents by
  // ~6e-5 (~3e-5 seen). bf16: the GPU tests' bound (~6e-3 seen).
  const double tol = c.bf16 ? 1e-2 : c.strong ? 1e-4 : 1e-5;
  const struct {
    const char* name;
    const Vec &got, &want;
  } outs[] = {{"o", fwd.o, ref.o},
              {"final_state", fwd.fs, ref.fs},
              {"dq", bwd.dq, ref.dq},
              {"dk", bwd.dk, ref.dk},
              {"dv", bwd.dv, ref.dv},
              {"d_log_decay", bwd.dg, ref.dg},
              {"d_initial_state", bwd.ds0, ref.ds0}};
  for (const auto& out : outs) {
    if (!c.states && std::string(out.name) == "d_initial_state") continue;
    const double err = max_rel(out.got, out.want);
    INFO(out.name << ": max error / max |ref| = " << err << ", bound " << tol);
    CHECK(err <= tol);
  }
}

TEST_CASE("lsm tiled reference: the tensor-core algorithm matches the CPU backend", "[unit][lsm]") {
  std::uint64_t seed = 100;
  for (bool bf16 : {false, true}) {
    for (i64 T : {1, 63, 64, 65, 200}) {
      for (int shape = 0; shape < 3; ++shape) {
        Case c;
        c.bf16 = bf16;
        c.T = T;
        c.B = shape == 0 ? 2 : 1;
        c.H = shape == 2 ? 4 : 2;
        c.Hk = shape == 2 ? 2 : c.H;  // GQA: heads 0, 1 share q/k head 0
        c.Dk = shape == 1 ? 128 : 64;
        c.Dv = shape == 2 ? 128 : 64;
        c.states = shape != 0;
        c.seed = ++seed;
        compare(c);
      }
    }
  }
}

TEST_CASE("lsm tiled reference: strong decays over a long sequence", "[unit][lsm]") {
  for (bool bf16 : {false, true}) {
    Case c;
    c.bf16 = bf16;
    c.T = 2100;  // 33 chunks, the last partial, two −650 resets
    c.H = 2;
    c.Hk = 1;
    c.states = true;
    c.strong = true;
    c.seed = 7;
    compare(c);
  }
}

// ---- the kernels themselves, on emulated blocks
// ---------------------------------------------------

using u16 = std::uint16_t;
using Bits = std::vector<u16>;

Bits to_bits(const Vec& x) {
  Bits b(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) b[i] = cuda::frag::bf16_bits(x[i]);
  return b;
}
Vec from_bits(const Bits& b) {
  Vec x(b.size());
  for (std::size_t i = 0; i < b.size(); ++i) x[i] = cuda::frag::bf16_to_float(b[i]);
  return x;
}
// [B, T, heads, D] rows of a contiguous tensor.
lm::Rows rows(const Bits& x, const Case& c, i64 heads, i64 D) {
  lm::Rows r;
  r.p = x.data(), r.sb = c.T * heads * D, r.st = heads * D, r.sh = D;
  return r;
}
lm::OutRows out_rows(Bits& x, const Case& c, i64 heads, i64 D) {
  lm::OutRows r;
  r.p = x.data(), r.sb = c.T * heads * D, r.st = heads * D, r.sh = D;
  return r;
}

// lsm_scalar_decay_mma_launch.cuh's forward and backward with the launches emulated.
template <int DK, int DV>
Result emulated(const Case& c, const Data& d) {
  const u16 nan = 0x7fc0;  // poison: every output element must be written
  const Bits q = to_bits(d.q), k = to_bits(d.k), v = to_bits(d.v), g = to_bits(d.g);
  const Bits d_o = to_bits(d.d_o);
  const lm::Problem p{c.B, c.T, c.H, c.Hk, lm::chunk_count(c.T), c.scale()};
  const i64 nstate = c.B * c.H * p.NC * DK * DV;
  const int parts = (DK / lm::kSTile) * (DV / lm::kSTile);  // state tiles
  const float* s0 = c.states ? d.s0.data() : nullptr;
  const float* dfs = c.states ? d.dfs.data() : nullptr;
  const dim3 state_grid{static_cast<unsigned>(c.B * c.H), static_cast<unsigned>(DV / lm::kSTile),
                        static_cast<unsigned>(DK / lm::kSTile)};
  const dim3 chunk_grid{static_cast<unsigned>(c.B * c.H * p.NC), 1, 1};
  const int state_threads = lm::StateTiles::kThreads, chunk_threads = 32 * lm::kWarps;
  Result r;
  Bits P(static_cast<std::size_t>(nstate), nan), G = P;
  r.fs.assign(static_cast<std::size_t>(c.B * c.H * DK * DV), NAN);
  r.ds0 = r.fs;

  // forward
  Bits o(static_cast<std::size_t>(c.B * c.T * c.H * DV), nan);
  auto state_args = [&](const Bits& x, i64 xh, const Bits& y, bool reverse, const float* init,
                        float* fin, Bits& states, const Bits* partner, float* through) {
    lm::StateArgs a;
    a.p = p, a.Dk = DK, a.Dv = DV;
    a.x = rows(x, c, xh, DK), a.y = rows(y, c, c.H, DV), a.g = rows(g, c, c.H, 1);
    a.reverse = reverse, a.init = init, a.fin = fin, a.states = states.data();
    a.partner = partner ? partner->data() : nullptr, a.through = through;
    return a;
  };
  const lm::StateArgs fa = state_args(k, c.Hk, v, false, s0, r.fs.data(), P, nullptr, nullptr);
  emu::launch(state_grid, state_threads, [&] { lm::chunk_state_kernel(fa); });
  const lm::OutputArgs oa{p,
                          rows(q, c, c.Hk, DK),
                          rows(k, c, c.Hk, DK),
                          rows(v, c, c.H, DV),
                          rows(g, c, c.H, 1),
                          P.data(),
                          out_rows(o, c, c.H, DV)};
  emu::launch(chunk_grid, chunk_threads, [&] { lm::chunk_output_kernel<DK, DV>(oa); });
  r.o = from_bits(o);

  // backward
  std::fill(P.begin(), P.end(), nan);
  Vec through(static_cast<std::size_t>(c.B * c.H * p.NC * parts), NAN);
  const bool grouped = c.Hk < c.H;
  Vec dq32(static_cast<std::size_t>(grouped ? c.B * c.T * c.H * DK : 0), NAN), dk32 = dq32;
  Bits dq(static_cast<std::size_t>(c.B * c.T * c.Hk * DK), nan), dk = dq;
  Bits dv(static_cast<std::size_t>(c.B * c.T * c.H * DV), nan);
  Bits dg(static_cast<std::size_t>(c.B * c.T * c.H), nan);
  lm::StateArgs ba = fa;
  ba.fin = nullptr;
  emu::launch(state_grid, state_threads, [&] { lm::chunk_state_kernel(ba); });
  const lm::StateArgs ra = state_args(q, c.Hk, d_o, true, dfs, r.ds0.data(), G, &P, through.data());
  emu::launch(state_grid, state_threads, [&] { lm::chunk_state_kernel(ra); });
  lm::GradArgs ga{};
  ga.p = p;
  ga.q = rows(q, c, c.Hk, DK), ga.k = rows(k, c, c.Hk, DK), ga.v = rows(v, c, c.H, DV);
  ga.g = rows(g, c, c.H, 1), ga.d_o = rows(d_o, c, c.H, DV);
  ga.P = P.data(), ga.G = G.data(), ga.through = through.data(), ga.parts = parts;
  ga.dq = out_rows(dq, c, c.Hk, DK), ga.dk = out_rows(dk, c, c.Hk, DK);
  ga.dv = out_rows(dv, c, c.H, DV);
  ga.dq32 = grouped ? dq32.data() : nullptr, ga.dk32 = grouped ? dk32.data() : nullptr;
  ga.dg = dg.data(), ga.dg_sb = c.T * c.H, ga.dg_st = c.H, ga.dg_sh = 1;
  emu::launch(chunk_grid, chunk_threads, [&] { lm::chunk_grad_kernel<DK, DV>(ga); });
  if (grouped) {  // lsm_decay::group_sum_kernel: heads in order, fp32, then bf16
    const i64 group = c.H / c.Hk;
    for (i64 row = 0; row < c.B * c.T; ++row) {
      for (i64 hk = 0; hk < c.Hk; ++hk) {
        for (i64 x = 0; x < DK; ++x) {
          float sq = 0, sk = 0;
          for (i64 j = 0; j < group; ++j) {
            sq += dq32[static_cast<std::size_t>((row * c.H + hk * group + j) * DK + x)];
            sk += dk32[static_cast<std::size_t>((row * c.H + hk * group + j) * DK + x)];
          }
          dq[static_cast<std::size_t>((row * c.Hk + hk) * DK + x)] = cuda::frag::bf16_bits(sq);
          dk[static_cast<std::size_t>((row * c.Hk + hk) * DK + x)] = cuda::frag::bf16_bits(sk);
        }
      }
    }
  }
  r.dq = from_bits(dq), r.dk = from_bits(dk), r.dv = from_bits(dv), r.dg = from_bits(dg);
  return r;
}

Result emulated_any(const Case& c, const Data& d) {
  emu::shared_memory = lm::smem_raw, emu::shared_bytes = sizeof(lm::smem_raw);
  if (c.Dk == 64 && c.Dv == 64) return emulated<64, 64>(c, d);
  if (c.Dk == 64 && c.Dv == 128) return emulated<64, 128>(c, d);
  if (c.Dk == 128 && c.Dv == 64) return emulated<128, 64>(c, d);
  REQUIRE((c.Dk == 128 && c.Dv == 128));
  return emulated<128, 128>(c, d);
}

void compare_emulated(const Case& c) {
  INFO((emu::high_first ? "high" : "low")
       << "-first emulated kernels: B=" << c.B << " T=" << c.T << " H=" << c.H << " Hk=" << c.Hk
       << " Dk=" << c.Dk << " Dv=" << c.Dv << (c.states ? " states" : "")
       << (c.strong ? " strong" : ""));
  const Data d = make_data(c);
  const Result got = emulated_any(c, d), ref = cpu_result(c, d), tiled_f = tiled(c, d, false),
               tiled_b = tiled(c, d, true);
  const struct {
    const char* name;
    const Vec &got, &cpu, &host;
  } outs[] = {{"o", got.o, ref.o, tiled_f.o},
              {"final_state", got.fs, ref.fs, tiled_f.fs},
              {"dq", got.dq, ref.dq, tiled_b.dq},
              {"dk", got.dk, ref.dk, tiled_b.dk},
              {"dv", got.dv, ref.dv, tiled_b.dv},
              {"d_log_decay", got.dg, ref.dg, tiled_b.dg},
              {"d_initial_state", got.ds0, ref.ds0, tiled_b.ds0}};
  for (const auto& out : outs) {
    if (!c.states && std::string(out.name) == "d_initial_state") continue;
    const double vs_cpu = max_rel(out.got, out.cpu), vs_host = max_rel(out.got, out.host);
    INFO(out.name << ": max error / max |ref| against the CPU backend " << vs_cpu
                  << " (bound 1e-2), against the host tiled algorithm " << vs_host
                  << " (bound 5e-3: a bf16 rounding flip at most)");
    CHECK(vs_cpu <= 1e-2);
    CHECK(vs_host <= 5e-3);
  }
}

TEST_CASE("lsm tiled reference: the kernels' code on emulated blocks matches the CPU backend",
          "[unit][lsm]") {
  std::uint64_t seed = 900;
  for (i64 T : {1, 64, 130}) {
    for (int shape = 0; shape < 4; ++shape) {
      emu::high_first = (T + shape) % 2 == 1;  // both scheduling orders over the cases
      Case c;
      c.T = T;
      c.B = shape == 0 ? 2 : 1;
      c.H = shape == 3 ? 4 : 2;
      c.Hk = shape == 3 ? 2 : (shape == 2 ? 1 : c.H);
      c.Dk = shape == 1 || shape == 3 ? 128 : 64;
      c.Dv = shape >= 2 ? 128 : 64;
      c.states = shape != 0;
      c.strong = shape == 2;
      c.seed = ++seed;
      compare_emulated(c);
    }
  }
}

}  // namespace
}  // namespace linmoe
