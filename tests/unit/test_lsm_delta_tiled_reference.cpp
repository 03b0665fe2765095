// The algorithm of the tensor-core delta-rule forward (kernels/cuda/lsm_delta_rule_mma.cuh) run
// on the host — the same phases (chunk preparation: A, the fp32 triangular solve, W and Ũ; the
// sequential state pass: P_c, U = Ũ − W P_c, the state update; the chunk outputs), the same tiling
// helpers (lsm_delta_rule_mma_tiles.cuh) and the same points where values are rounded to bf16 —
// against the CPU backend's lsm_delta_rule_forward (itself checked against the fp64 token-by-token
// recurrence in tests/lsm/). With the rounding switched off the two must agree to fp32 rounding
// (the mathematics and the chunk bookkeeping); with bf16 rounding, to the bf16 bound of
// tests/gpu/test_gpu_lsm_delta.cpp (the rounding points cost no more than bf16 inputs and outputs
// do). Last, the kernels' own code runs on emulated blocks (cuda_block_emulation.h: barriers,
// shuffles, ldmatrix and mma.sync per the PTX ISA) and must give the CPU backend's results too:
// this checks their indexing, tiling and synchronisation, short of the hardware. The backward's
// tiled algorithm is here too (tiled_backward), checked against the CPU backward, and its kernels
// (lsm_delta_rule_mma_bwd.cuh) on emulated blocks.
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
#include "kernels/cuda/lsm_delta_rule_mma_bwd.cuh"

// The emulated block's dynamic shared memory (the kernels' `extern __shared__ smem_raw`).
namespace linmoe::cuda::delta_mma {
alignas(16) unsigned char smem_raw[196608];
}  // namespace linmoe::cuda::delta_mma

namespace linmoe {
namespace {

namespace dm = cuda::delta_mma;
namespace emu = testing::emu;
using testing::HostTensor;
using i64 = std::int64_t;
using Vec = std::vector<float>;
using std::size_t;

Backend& cpu() {
  static std::unique_ptr<Backend> backend = make_cpu_backend(2);
  return *backend;
}

struct Case {
  i64 B = 1, T = 65, H = 2, Dk = 64, Dv = 64;
  bool gated = true;        // gated_deltanet (log_decay given) or deltanet
  bool states = false;      // initial_state given
  bool strong = false;      // log decays down to −30, −650 at every 97th value; β in [0.9, 1]
  bool bf16 = true;         // round where the kernels round (else the fp32 mathematics alone)
  bool strided = false;     // emulated kernels only: q, k, v, o, β, g as row-strided views
  bool correlated = false;  // keys share one direction (|cos| ~ 0.5) and β in [0.9, 1]
  std::uint64_t seed = 1;
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(Dk)); }
  float r(float x) const { return bf16 ? cuda::frag::round_bf16(x) : x; }
  // A value as a hi + lo pair of bf16 operands: r(x) + r(x − r(x)).
  float hl(float x) const { return bf16 ? r(x) + r(x - r(x)) : x; }
};

struct Data {
  Vec q, k, v, beta, g, s0;  // [B,T,H,Dk] ×2, [B,T,H,Dv], [B,T,H] ×2, [B,H,Dk,Dv]
  Vec d_o, dfs;              // [B,T,H,Dv], [B,H,Dk,Dv]
};
struct Result {
  Vec o, fs;
};
struct Grads {
  Vec dq, dk, dv, dbeta, dg, ds0;
};

Vec uniform(i64 n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  Vec x(static_cast<size_t>(n));
  for (float& e : x) e = u(rng);
  return x;
}
// Rows of d values with unit L2 norm (the layer's L2norm), then rounded.
Vec unit_rows(i64 n, i64 d, std::mt19937& rng, const Case& c) {
  Vec x = uniform(n, rng, -1.0f, 1.0f);
  for (size_t r = 0; r < x.size(); r += static_cast<size_t>(d)) {
    float s = 0;
    for (size_t i = r; i < r + static_cast<size_t>(d); ++i) s += x[i] * x[i];
    for (size_t i = r; i < r + static_cast<size_t>(d); ++i) x[i] = c.r(x[i] / std::sqrt(s));
  }
  return x;
}

Data make_data(const Case& c) {
  std::mt19937 rng(static_cast<unsigned>(c.seed));
  Data d;
  d.q = unit_rows(c.B * c.T * c.H * c.Dk, c.Dk, rng, c);
  d.k = unit_rows(c.B * c.T * c.H * c.Dk, c.Dk, rng, c);
  if (c.correlated) {  // k ← unit(k + b) with one unit vector b for all: k_i·k_j ~ 0.5
    Vec base = uniform(c.Dk, rng, -1.0f, 1.0f);
    float nb = 0;
    for (float e : base) nb += e * e;
    for (float& e : base) e /= std::sqrt(nb);
    for (size_t r = 0; r < d.k.size(); r += static_cast<size_t>(c.Dk)) {
      float n2 = 0;
      for (size_t x = 0; x < static_cast<size_t>(c.Dk); ++x) {
        d.k[r + x] += base[x];
        n2 += d.k[r + x] * d.k[r + x];
      }
      for (size_t x = 0; x < static_cast<size_t>(c.Dk); ++x) {
        d.k[r + x] = c.r(d.k[r + x] / std::sqrt(n2));
      }
    }
  }
  d.v = uniform(c.B * c.T * c.H * c.Dv, rng, -1.0f, 1.0f);
  d.beta = uniform(c.B * c.T * c.H, rng, c.strong || c.correlated ? 0.9f : 0.0f, 1.0f);
  for (float& e : d.v) e = c.r(e);
  for (float& e : d.beta) e = c.r(e);
  const float lo = std::log(c.strong ? 1e-3f : 0.01f), hi = std::log(c.strong ? 30.0f : 1.5f);
  d.g = uniform(c.B * c.T * c.H, rng, lo, hi);
  for (size_t i = 0; i < d.g.size(); ++i) {
    d.g[i] = c.r(c.strong && i % 97 == 0 ? -650.0f : -std::exp(d.g[i]));
  }
  d.d_o = uniform(c.B * c.T * c.H * c.Dv, rng, -1.0f, 1.0f);
  for (float& e : d.d_o) e = c.r(e);
  if (c.states) {  // fp32: not rounded
    d.s0 = uniform(c.B * c.H * c.Dk * c.Dv, rng, -1.0f, 1.0f);
    d.dfs = uniform(c.B * c.H * c.Dk * c.Dv, rng, -1.0f, 1.0f);
  }
  return d;
}

// ---- the tiled algorithm on the host ------------------------------------------------------------

// One (b, h) head's rows, gathered: x[t][channel]; g all 0 for deltanet.
struct Head {
  Vec q, k, v, beta, g, d_o;
};
Head gather(const Case& c, const Data& d, i64 b, i64 h) {
  Head s;
  for (i64 t = 0; t < c.T; ++t) {
    const i64 qk = ((b * c.T + t) * c.H + h) * c.Dk, vo = ((b * c.T + t) * c.H + h) * c.Dv;
    const size_t row = static_cast<size_t>((b * c.T + t) * c.H + h);
    s.q.insert(s.q.end(), d.q.begin() + qk, d.q.begin() + qk + c.Dk);
    s.k.insert(s.k.end(), d.k.begin() + qk, d.k.begin() + qk + c.Dk);
    s.v.insert(s.v.end(), d.v.begin() + vo, d.v.begin() + vo + c.Dv);
    if (!d.d_o.empty()) s.d_o.insert(s.d_o.end(), d.d_o.begin() + vo, d.d_o.begin() + vo + c.Dv);
    s.beta.push_back(d.beta[row]);
    s.g.push_back(c.gated ? d.g[row] : 0.0f);
  }
  return s;
}

float& at(Vec& m, i64 row, i64 col, i64 n) {
  return m[static_cast<size_t>(row * n + col)];
}
float at(const Vec& m, i64 row, i64 col, i64 n) {
  return m[static_cast<size_t>(row * n + col)];
}

// The chunk-local quantities of delta_prep_kernel for chunk c: W [64][Dk], Ũ [64][Dv], X
// [64][64] (bf16 rounded), and the cumulative log decays bs [64].
struct Prep {
  Vec w, u, x, bs;
};
// wide (the backward's recomputation): r(diag(β) V) and Ũ as hi + lo pairs.
Prep prepare(const Case& cs0, const Head& s, i64 c, bool wide = false) {
  struct R {
    const Case& c;
    bool wide;
    float r(float x) const { return wide ? c.hl(x) : c.r(x); }
  } cs{cs0, false}, cw{cs0, false}, cu{cs0, wide}, cb{cs0, wide};
  const i64 Dk = cs0.Dk, Dv = cs0.Dv, t0 = c * dm::kChunk, C = dm::kChunk;
  const int L = dm::chunk_len(cs0.T, c);
  Prep p;
  p.bs.assign(C, 0.0f);
  float acc = 0;
  for (int j = 0; j < C; ++j) {
    if (j < L) acc += s.g[static_cast<size_t>(t0 + j)];
    p.bs[static_cast<size_t>(j)] = acc;
  }
  const float* b = p.bs.data();
  auto beta = [&](int i) { return s.beta[static_cast<size_t>(t0 + i)]; };
  // A (strictly lower) and X = (I + A)⁻¹ in fp32, by forward substitution.
  Vec A(C * C, 0.0f), X(C * C, 0.0f);
  for (int i = 0; i < L; ++i) {
    for (int j = 0; j < i; ++j) {
      float kk = 0;
      for (i64 x = 0; x < Dk; ++x) kk += at(s.k, t0 + i, x, Dk) * at(s.k, t0 + j, x, Dk);
      at(A, i, j, C) = beta(i) * dm::decay_factor(b[i] - b[j]) * kk;
    }
  }
  for (int j = 0; j < C; ++j) {
    at(X, j, j, C) = 1.0f;
    for (int i = j + 1; i < C; ++i) {
      float sum = 0;
      for (int p2 = j; p2 < i; ++p2) sum += at(A, i, p2, C) * at(X, p2, j, C);
      at(X, i, j, C) = -sum;
    }
  }
  for (float& e : X) e = cs.r(e);
  p.x = X;
  p.w.assign(static_cast<size_t>(C * Dk), 0.0f);
  p.u.assign(static_cast<size_t>(C * Dv), 0.0f);
  for (int i = 0; i < L; ++i) {
    for (i64 x = 0; x < Dk; ++x) {
      float sum = 0;
      for (int j = 0; j <= i; ++j) {
        sum += at(X, i, j, C) * cw.r(at(s.k, t0 + j, x, Dk) * (beta(j) * dm::decay_factor(b[j])));
      }
      at(p.w, i, x, Dk) = cw.r(sum);
    }
    for (i64 y = 0; y < Dv; ++y) {
      float sum = 0;
      for (int j = 0; j <= i; ++j) sum += at(X, i, j, C) * cb.r(at(s.v, t0 + j, y, Dv) * beta(j));
      at(p.u, i, y, Dv) = cu.r(sum);
    }
  }
  return p;
}

Result tiled(const Case& cs, const Data& d) {
  const i64 Dk = cs.Dk, Dv = cs.Dv, T = cs.T, C = dm::kChunk, nc = dm::chunk_count(T);
  Result r;
  r.o.assign(static_cast<size_t>(cs.B * T * cs.H * Dv), 0.0f);
  r.fs.assign(static_cast<size_t>(cs.B * cs.H * Dk * Dv), 0.0f);
  for (i64 b = 0; b < cs.B; ++b) {
    for (i64 h = 0; h < cs.H; ++h) {
      const Head s = gather(cs, d, b, h);
      const i64 st = (b * cs.H + h) * Dk * Dv;
      Vec P(static_cast<size_t>(Dk * Dv), 0.0f);
      if (cs.states) std::copy(d.s0.begin() + st, d.s0.begin() + st + Dk * Dv, P.begin());
      for (i64 c = 0; c < nc; ++c) {
        const i64 t0 = c * C;
        const int L = dm::chunk_len(T, c);
        const Prep pr = prepare(cs, s, c);
        const float* bs = pr.bs.data();
        // delta_state_kernel: P_c, U = Ũ − W P_c, P ← γ_{L−1} P + (diag(η) K)ᵀ U.
        Vec Pc = P, U(static_cast<size_t>(C * Dv), 0.0f);
        for (float& e : Pc) e = cs.r(e);
        for (int i = 0; i < L; ++i) {
          for (i64 y = 0; y < Dv; ++y) {
            float wp = 0;
            for (i64 x = 0; x < Dk; ++x) wp += at(pr.w, i, x, Dk) * at(Pc, x, y, Dv);
            at(U, i, y, Dv) = cs.r(at(pr.u, i, y, Dv) - wp);
          }
        }
        const float blast = bs[L - 1], el = dm::decay_factor(blast);
        for (i64 x = 0; x < Dk; ++x) {
          for (i64 y = 0; y < Dv; ++y) {
            float upd = 0;
            for (int j = 0; j < L; ++j) {
              upd +=
                  cs.r(at(s.k, t0 + j, x, Dk) * dm::decay_factor(blast - bs[j])) * at(U, j, y, Dv);
            }
            at(P, x, y, Dv) = at(P, x, y, Dv) * el + upd;
          }
        }
        // delta_output_kernel: O = scale (diag(γ) Q P_c + (Q Kᵀ ⊙ M) U).
        for (int i = 0; i < L; ++i) {
          Vec score(static_cast<size_t>(i + 1));
          for (int j = 0; j <= i; ++j) {
            float qk = 0;
            for (i64 x = 0; x < Dk; ++x) qk += at(s.q, t0 + i, x, Dk) * at(s.k, t0 + j, x, Dk);
            const float sc = qk * cs.scale() * dm::decay_factor(bs[i] - bs[j]);
            score[static_cast<size_t>(j)] = cs.r(sc) + cs.r(sc - cs.r(sc));  // hi + lo operands
          }
          const float ei = cs.scale() * dm::decay_factor(bs[i]);
          for (i64 y = 0; y < Dv; ++y) {
            float inter = 0, intra = 0;
            for (i64 x = 0; x < Dk; ++x) inter += at(s.q, t0 + i, x, Dk) * at(Pc, x, y, Dv);
            for (int j = 0; j <= i; ++j) intra += score[static_cast<size_t>(j)] * at(U, j, y, Dv);
            r.o[static_cast<size_t>(((b * T + t0 + i) * cs.H + h) * Dv + y)] =
                cs.r(inter * ei + intra);
          }
        }
      }
      std::copy(P.begin(), P.end(), r.fs.begin() + st);
    }
  }
  return r;
}

// ---- the CPU backend and the comparison ---------------------------------------------------------

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
  const Shape qk{c.B, c.T, c.H, c.Dk}, vo{c.B, c.T, c.H, c.Dv}, g{c.B, c.T, c.H},
      st{c.B, c.H, c.Dk, c.Dv};
  const HostTensor q = host(d.q, qk), k = host(d.k, qk), v = host(d.v, vo);
  const HostTensor beta = host(d.beta, g), lg = host(d.g, g);
  const HostTensor s0 = host(c.states ? d.s0 : Vec(1), c.states ? st : Shape{1});
  HostTensor o(DType::f32, vo), fs(DType::f32, st);
  testing::poison(o.t()), testing::poison(fs.t());
  const Tensor none{};
  cpu().lsm_delta_rule_forward(q, k, v, beta, c.gated ? lg.t() : none, c.scale(), dm::kChunk,
                               c.states ? s0.t() : none, o, fs);
  return Result{values(o), values(fs)};
}

// max |a − b| / max |b| (the GPU tests' measure); NaN fails.
double max_rel(const Vec& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0, top = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
    top = std::max(top, std::abs(static_cast<double>(b[i])));
  }
  return worst / top;
}

std::string describe(const Case& c) {
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
         " Dk=" + std::to_string(c.Dk) + " Dv=" + std::to_string(c.Dv) +
         (c.gated ? " gated" : " deltanet") + (c.states ? " states" : "") +
         (c.strong ? " strong" : "") + (c.bf16 ? " bf16" : " fp32") +
         (c.strided ? " strided" : "") + (c.correlated ? " correlated" : "");
}

void compare(const Case& c) {
  INFO(describe(c));
  const Data d = make_data(c);
  const Result got = tiled(c, d), ref = cpu_result(c, d);
  // fp32: summation order and the fp32 cumulative log decays (the CPU sums them in f64; with
  // strong decays |b| reaches ~10³ inside a chunk and shifts exponents by ~1e-4 relative).
  // bf16: the GPU tests' bound.
  const double tol = c.bf16 ? 1e-2 : c.strong ? 1e-4 : 1e-5;
  const double eo = max_rel(got.o, ref.o), ef = max_rel(got.fs, ref.fs);
  INFO("o: " << eo << ", final_state: " << ef << " (bound " << tol << ")");
  CHECK(eo <= tol);
  CHECK(ef <= tol);
}

TEST_CASE("lsm delta tiled reference: the tensor-core forward matches the CPU backend",
          "[unit][lsm]") {
  std::uint64_t seed = 300;
  for (bool bf16 : {false, true}) {
    for (i64 T : {1, 63, 64, 65, 200}) {
      for (int shape = 0; shape < 5; ++shape) {
        Case c;
        c.bf16 = bf16;
        c.T = T;
        c.B = shape == 0 || shape == 4 ? 2 : 1;
        c.Dk = shape == 1 || shape == 3 ? 128 : 64;
        c.Dv = shape == 2 || shape == 3 ? 128 : 64;
        c.gated = shape != 2;
        c.states = shape != 0 && shape != 4;
        c.strong = shape == 3;
        c.correlated = shape == 4;
        c.seed = ++seed;
        compare(c);
      }
    }
  }
}

// ---- the backward ------------------------------------------------------------------------------

// The chunk quantities the backward recomputes: per chunk the prep, P_c = r(P) and r(U).
struct Chunks {
  std::vector<Prep> prep;
  std::vector<Vec> P, U;
  std::vector<Vec> Phl;  // P as hi + lo bf16 operand pairs (nearly fp32)
};
Chunks forward_chunks(const Case& cs, const Head& s, const float* s0) {
  const i64 Dk = cs.Dk, Dv = cs.Dv, C = dm::kChunk, nc = dm::chunk_count(cs.T);
  Chunks ch;
  Vec P(static_cast<size_t>(Dk * Dv), 0.0f);
  if (s0) std::copy(s0, s0 + Dk * Dv, P.begin());
  for (i64 c = 0; c < nc; ++c) {
    const i64 t0 = c * C;
    const int L = dm::chunk_len(cs.T, c);
    ch.prep.push_back(prepare(cs, s, c, true));
    const Prep& pr = ch.prep.back();
    Vec Pc = P, U(static_cast<size_t>(C * Dv), 0.0f), P_hl = P;  // P_hl: the gradients' copy
    for (float& e : Pc) e = cs.r(e);
    for (float& e : P_hl) e = cs.hl(e);
    for (int i = 0; i < L; ++i) {
      for (i64 y = 0; y < Dv; ++y) {
        float wp = 0;
        for (i64 x = 0; x < Dk; ++x) wp += at(pr.w, i, x, Dk) * at(Pc, x, y, Dv);
        at(U, i, y, Dv) = cs.hl(at(pr.u, i, y, Dv) - wp);
      }
    }
    const float blast = pr.bs[static_cast<size_t>(L - 1)], el = dm::decay_factor(blast);
    for (i64 x = 0; x < Dk; ++x) {
      for (i64 y = 0; y < Dv; ++y) {
        float upd = 0;
        for (int j = 0; j < L; ++j) {
          upd += cs.r(at(s.k, t0 + j, x, Dk) *
                      dm::decay_factor(blast - pr.bs[static_cast<size_t>(j)])) *
                 at(U, j, y, Dv);
        }
        at(P, x, y, Dv) = at(P, x, y, Dv) * el + upd;
      }
    }
    ch.P.push_back(Pc);
    ch.Phl.push_back(P_hl);
    ch.U.push_back(U);
  }
  return ch;
}

float row_dot(const Vec& a, i64 i, const Vec& b, i64 j, i64 n) {
  float s = 0;
  for (i64 x = 0; x < n; ++x) s += at(a, i, x, n) * at(b, j, x, n);
  return s;
}

// The tiled backward of the tensor cores (lsm_delta_rule_mma_bwd.cuh; hl(x) = r(x) + r(x − r(x)),
// a hi + lo operand pair): the chunks recomputed (forward_chunks: Ũ from hl(β v), U = hl(Ũ − W
// r(P_c))); a reverse pass over the chunks per (b, h, 64 columns of Dv) with G in fp32: G_c = r(G),
// dU = diag(η) K G_c + hl(attn)ᵀ dO, R_v = Xᵀ hl(dU), dv = diag(β) R_v, G ← γ_{L−1} G + r(scale
// diag(γ) Q)ᵀ dO − r(diag(βγ) K)ᵀ hl(R_v); then per chunk dq, dk, dβ and dg from P_c, G_c, U and
// R_v, with dg by one scan: dg_u = γ_{L−1}⟨G_c, P_c⟩ + Σ_i w_in_i + Σ_{v<u} (colsum_v − rowsum_v −
// w_in_v + w_out_v) of E = scale M ⊙ Q Kᵀ ⊙ dO Uᵀ − diag(β) M ⊙ K Kᵀ ⊙ R_v Uᵀ (strictly lower), the
// CPU's rectangle sums Σ_{i≥u} Σ_{j<u} E_ij rewritten with E's row and column sums.
Grads tiled_backward(const Case& cs, const Data& d) {
  const i64 Dk = cs.Dk, Dv = cs.Dv, T = cs.T, C = dm::kChunk, nc = dm::chunk_count(T);
  const float scale = cs.scale();
  Grads r;
  r.dq.assign(static_cast<size_t>(cs.B * T * cs.H * Dk), 0.0f);
  r.dk = r.dq;
  r.dv.assign(static_cast<size_t>(cs.B * T * cs.H * Dv), 0.0f);
  r.dbeta.assign(static_cast<size_t>(cs.B * T * cs.H), 0.0f);
  r.dg = r.dbeta;
  r.ds0.assign(static_cast<size_t>(cs.B * cs.H * Dk * Dv), 0.0f);
  for (i64 b = 0; b < cs.B; ++b) {
    for (i64 h = 0; h < cs.H; ++h) {
      const Head s = gather(cs, d, b, h);
      const i64 st = (b * cs.H + h) * Dk * Dv;
      const Chunks ch = forward_chunks(cs, s, cs.states ? &d.s0[static_cast<size_t>(st)] : nullptr);
      auto row = [&](i64 t) { return static_cast<size_t>((b * T + t) * cs.H + h); };
      // Reverse pass.
      Vec G(static_cast<size_t>(Dk * Dv), 0.0f);
      if (cs.states) std::copy(d.dfs.begin() + st, d.dfs.begin() + st + Dk * Dv, G.begin());
      std::vector<Vec> Gc(static_cast<size_t>(nc)), Rv(static_cast<size_t>(nc));
      std::vector<Vec> Ghl(static_cast<size_t>(nc));
      for (i64 c = nc - 1; c >= 0; --c) {
        const i64 t0 = c * C;
        const int L = dm::chunk_len(T, c);
        const Prep& pr = ch.prep[static_cast<size_t>(c)];
        const float* bs = pr.bs.data();
        const float blast = bs[L - 1];
        Vec& g = Gc[static_cast<size_t>(c)];
        g = G;
        for (float& e : g) e = cs.r(e);
        Vec& ghl = Ghl[static_cast<size_t>(c)];
        ghl = G;
        for (float& e : ghl) e = cs.hl(e);
        // dU = diag(η) K G_c + attnᵀ dO, attn_ij = r(scale M_ij q_i·k_j).
        Vec dU(static_cast<size_t>(C * Dv), 0.0f);
        for (int j = 0; j < L; ++j) {
          const float eta = dm::decay_factor(blast - bs[j]);
          Vec a(static_cast<size_t>(L), 0.0f);
          for (int i = j; i < L; ++i) {
            a[static_cast<size_t>(i)] = cs.hl(row_dot(s.k, t0 + j, s.q, t0 + i, Dk) * scale *
                                              dm::decay_factor(bs[i] - bs[j]));
          }
          for (i64 y = 0; y < Dv; ++y) {
            float kg = 0, ad = 0;
            for (i64 x = 0; x < Dk; ++x) kg += at(s.k, t0 + j, x, Dk) * at(g, x, y, Dv);
            for (int i = j; i < L; ++i) ad += a[static_cast<size_t>(i)] * at(s.d_o, t0 + i, y, Dv);
            at(dU, j, y, Dv) = cs.hl(kg * eta + ad);
          }
        }
        // R_v = Xᵀ dU; dv = diag(β) R_v.
        Vec& rv = Rv[static_cast<size_t>(c)];
        rv.assign(static_cast<size_t>(C * Dv), 0.0f);
        for (int j = 0; j < L; ++j) {
          for (i64 y = 0; y < Dv; ++y) {
            float sum = 0;
            for (int i = j; i < L; ++i) sum += at(pr.x, i, j, C) * at(dU, i, y, Dv);
            r.dv[row(t0 + j) * static_cast<size_t>(Dv) + static_cast<size_t>(y)] =
                cs.r(sum * s.beta[static_cast<size_t>(t0 + j)]);
            at(rv, j, y, Dv) = cs.hl(sum);
          }
        }
        // G ← γ_{L−1} G + Σ_i r(scale γ_i q_i) dO_iᵀ − Σ_i r(β_i γ_i k_i) R_v,iᵀ.
        const float el = dm::decay_factor(blast);
        for (i64 x = 0; x < Dk; ++x) {
          for (i64 y = 0; y < Dv; ++y) {
            float upd = 0;
            for (int i = 0; i < L; ++i) {
              const float gi = dm::decay_factor(bs[i]), bi = s.beta[static_cast<size_t>(t0 + i)];
              upd += cs.r(at(s.q, t0 + i, x, Dk) * (scale * gi)) * at(s.d_o, t0 + i, y, Dv);
              upd += cs.r(at(s.k, t0 + i, x, Dk) * -(bi * gi)) * at(rv, i, y, Dv);
            }
            at(G, x, y, Dv) = at(G, x, y, Dv) * el + upd;
          }
        }
      }
      std::copy(G.begin(), G.end(), r.ds0.begin() + st);
      // Chunk gradients.
      for (i64 c = 0; c < nc; ++c) {
        const i64 t0 = c * C;
        const int L = dm::chunk_len(T, c);
        const Prep& pr = ch.prep[static_cast<size_t>(c)];
        const float* bs = pr.bs.data();
        const float blast = bs[L - 1];
        const Vec& P = ch.Phl[static_cast<size_t>(c)];
        const Vec& U = ch.U[static_cast<size_t>(c)];
        const Vec& g = Ghl[static_cast<size_t>(c)];
        const Vec& rv = Rv[static_cast<size_t>(c)];
        float through = 0;
        for (size_t e = 0; e < P.size(); ++e) through += g[e] * P[e];
        through *= dm::decay_factor(blast);
        // Row products [L][Dk]: dO Pᵀ, R_v Pᵀ, U Gᵀ.
        Vec dOP(static_cast<size_t>(C * Dk), 0.0f), RP = dOP, UG = dOP;
        for (int i = 0; i < L; ++i) {
          for (i64 x = 0; x < Dk; ++x) {
            float a1 = 0, a2 = 0, a3 = 0;
            for (i64 y = 0; y < Dv; ++y) {
              a1 += at(s.d_o, t0 + i, y, Dv) * at(P, x, y, Dv);
              a2 += at(rv, i, y, Dv) * at(P, x, y, Dv);
              a3 += at(U, i, y, Dv) * at(g, x, y, Dv);
            }
            at(dOP, i, x, Dk) = a1, at(RP, i, x, Dk) = a2, at(UG, i, x, Dk) = a3;
          }
        }
        // The chunk matrices: Dq = r(scale M ⊙ dO Uᵀ) (j ≤ i), Dm = r(−diag(β) M ⊙ Z) (j < i)
        // with Z = R_v Uᵀ, and E = scale M ⊙ Q Kᵀ ⊙ dO Uᵀ − diag(β) M ⊙ K Kᵀ ⊙ Z (j < i).
        Vec Dq(static_cast<size_t>(C * C), 0.0f), Dm = Dq, E = Dq, db(static_cast<size_t>(C), 0);
        for (int i = 0; i < L; ++i) {
          const float bi = s.beta[static_cast<size_t>(t0 + i)];
          for (int j = 0; j <= i; ++j) {
            const float M = dm::decay_factor(bs[i] - bs[j]);
            const float dmv = row_dot(s.d_o, t0 + i, U, j, Dv);
            at(Dq, i, j, C) = cs.hl(dmv * scale * M);
            if (j == i) continue;
            const float z = row_dot(rv, i, U, j, Dv), kk = row_dot(s.k, t0 + i, s.k, t0 + j, Dk);
            const float qk = row_dot(s.q, t0 + i, s.k, t0 + j, Dk);
            at(Dm, i, j, C) = cs.hl(-(z * bi * M));
            at(E, i, j, C) = dmv * scale * M * qk - z * bi * M * kk;
            db[static_cast<size_t>(i)] -= z * M * kk;
          }
        }
        float total_in = 0;
        Vec cv(static_cast<size_t>(C), 0.0f);
        for (int i = 0; i < L; ++i) {
          const float gi = dm::decay_factor(bs[i]), eta = dm::decay_factor(blast - bs[i]);
          const float bi = s.beta[static_cast<size_t>(t0 + i)];
          float krp = 0, qdop = 0, kug = 0, rvv = 0;
          for (i64 x = 0; x < Dk; ++x) {
            krp += at(s.k, t0 + i, x, Dk) * at(RP, i, x, Dk);
            qdop += at(s.q, t0 + i, x, Dk) * at(dOP, i, x, Dk);
            kug += at(s.k, t0 + i, x, Dk) * at(UG, i, x, Dk);
          }
          for (i64 y = 0; y < Dv; ++y) rvv += at(rv, i, y, Dv) * at(s.v, t0 + i, y, Dv);
          for (i64 x = 0; x < Dk; ++x) {
            float dq = scale * gi * at(dOP, i, x, Dk);
            for (int j = 0; j <= i; ++j) dq += at(Dq, i, j, C) * at(s.k, t0 + j, x, Dk);
            float dk = eta * at(UG, i, x, Dk) - bi * gi * at(RP, i, x, Dk);
            for (int r2 = i; r2 < L; ++r2) dk += at(Dq, r2, i, C) * at(s.q, t0 + r2, x, Dk);
            for (int r2 = i + 1; r2 < L; ++r2) dk += at(Dm, r2, i, C) * at(s.k, t0 + r2, x, Dk);
            for (int j = 0; j < i; ++j) dk += at(Dm, i, j, C) * at(s.k, t0 + j, x, Dk);
            r.dq[row(t0 + i) * static_cast<size_t>(Dk) + static_cast<size_t>(x)] = cs.r(dq);
            r.dk[row(t0 + i) * static_cast<size_t>(Dk) + static_cast<size_t>(x)] = cs.r(dk);
          }
          r.dbeta[row(t0 + i)] = cs.r(db[static_cast<size_t>(i)] + rvv - gi * krp);
          const float w_in = scale * gi * qdop - bi * gi * krp, w_out = eta * kug;
          float rowsum = 0, colsum = 0;
          for (int j = 0; j < L; ++j) rowsum += at(E, i, j, C), colsum += at(E, j, i, C);
          total_in += w_in;
          cv[static_cast<size_t>(i)] = colsum - rowsum - w_in + w_out;
        }
        // dg_u = through + Σ_i w_in_i + Σ_{v<u} (colsum_v − rowsum_v − w_in_v + w_out_v).
        float prefix = 0;
        for (int u = 0; u < L; ++u) {
          r.dg[row(t0 + u)] = cs.r(through + total_in + prefix);
          prefix += cv[static_cast<size_t>(u)];
        }
      }
    }
  }
  if (!cs.gated) r.dg.clear();
  return r;
}

Grads cpu_grads(const Case& c, const Data& d) {
  const Shape qk{c.B, c.T, c.H, c.Dk}, vo{c.B, c.T, c.H, c.Dv}, g{c.B, c.T, c.H},
      st{c.B, c.H, c.Dk, c.Dv};
  const HostTensor q = host(d.q, qk), k = host(d.k, qk), v = host(d.v, vo);
  const HostTensor beta = host(d.beta, g), lg = host(d.g, g), d_o = host(d.d_o, vo);
  const HostTensor s0 = host(c.states ? d.s0 : Vec(1), c.states ? st : Shape{1});
  const HostTensor dfs = host(c.states ? d.dfs : Vec(1), c.states ? st : Shape{1});
  HostTensor dq(DType::f32, qk), dk(DType::f32, qk), dv(DType::f32, vo), db(DType::f32, g);
  HostTensor dg(DType::f32, g), ds0(DType::f32, st);
  for (const HostTensor* t : {&dq, &dk, &dv, &db, &dg, &ds0}) testing::poison(t->t());
  const Tensor none{};
  cpu().lsm_delta_rule_backward(q, k, v, beta, c.gated ? lg.t() : none, c.scale(), dm::kChunk,
                                c.states ? s0.t() : none, d_o, c.states ? dfs.t() : none, dq, dk,
                                dv, db, c.gated ? dg.t() : none, ds0);
  Grads r{values(dq), values(dk), values(dv), values(db), values(dg), values(ds0)};
  if (!c.gated) r.dg.clear();
  return r;
}

struct Named {
  const char* name;
  const Vec &got, &want;
};
std::vector<Named> named(const Grads& got, const Grads& want) {
  return {{"dq", got.dq, want.dq},          {"dk", got.dk, want.dk},
          {"dv", got.dv, want.dv},          {"d_beta", got.dbeta, want.dbeta},
          {"d_log_decay", got.dg, want.dg}, {"d_initial_state", got.ds0, want.ds0}};
}

void compare_backward(const Case& c) {
  INFO(describe(c));
  const Data d = make_data(c);
  const Grads got = tiled_backward(c, d), ref = cpu_grads(c, d);
  // fp32: d_beta and d_log_decay are sums of O(C²) products per token with cancellation (~3e-5
  // seen). bf16: TESTING.md's 1e-2. With every operand single bf16, d_log_decay reached 1.8e-2
  // (its terms cancel; the rounding of r(β v), Ũ and U in the recomputed chunks mattered most), so
  // those, P_c and G_c of the gradients, and attn, dU, R_v, Dq, Dm enter as hi + lo pairs (≤ 6.5e-3
  // seen over four seed sets).
  const double tol = c.bf16 ? 1e-2 : 1e-4;
  for (const Named& n : named(got, ref)) {
    const double err = max_rel(n.got, n.want);
    INFO(n.name << ": " << err << " (bound " << tol << ")");
    CHECK(err <= tol);
  }
}

TEST_CASE("lsm delta tiled reference: the tensor-core backward matches the CPU backend",
          "[unit][lsm]") {
  std::uint64_t seed = 500;
  for (bool bf16 : {false, true}) {
    for (i64 T : {1, 63, 64, 65, 200}) {
      for (int shape = 0; shape < 4; ++shape) {
        Case c;
        c.bf16 = bf16;
        c.T = T;
        c.B = shape == 0 ? 2 : 1;
        c.Dk = shape == 1 || shape == 3 ? 128 : 64;
        c.Dv = shape >= 2 ? 128 : 64;
        c.gated = shape != 2;
        c.states = shape != 0;
        c.strong = shape == 3;
        c.seed = ++seed;
        compare_backward(c);
      }
    }
  }
}

// ---- the kernels themselves, on emulated blocks
// ---------------------------------------------------

using u16 = std::uint16_t;
using Bits = std::vector<u16>;

Bits to_bits(const Vec& x) {
  Bits b(x.size());
  for (size_t i = 0; i < x.size(); ++i) b[i] = cuda::frag::bf16_bits(x[i]);
  return b;
}
Vec from_bits(const Bits& b) {
  Vec x(b.size());
  for (size_t i = 0; i < b.size(); ++i) x[i] = cuda::frag::bf16_to_float(b[i]);
  return x;
}
// A [B, T, H, D] tensor (D = 1: [B, T, H]) with `pad` values after every token's H·D (a view into
// a fused buffer, as the layer passes q, k, v and o); the padding is NaN.
constexpr u16 kNaN = 0x7fc0;
Bits spread(const Bits& x, const Case& c, i64 D, i64 pad) {
  const i64 F = c.H * D + pad;
  Bits out(static_cast<size_t>(c.B * c.T * F), kNaN);
  for (i64 bt = 0; bt < c.B * c.T; ++bt) {
    std::copy(x.begin() + bt * c.H * D, x.begin() + (bt + 1) * c.H * D, out.begin() + bt * F);
  }
  return out;
}
dm::Rows rows(const Bits& x, const Case& c, i64 D, i64 pad) {
  dm::Rows r;
  r.p = x.data(), r.sb = c.T * (c.H * D + pad), r.st = c.H * D + pad, r.sh = D;
  return r;
}

// lsm_delta_rule_mma_launch.cuh's forward with the launches emulated.
template <int DK, int DV>
Result emulated(const Case& c, const Data& d) {
  const i64 pad = c.strided ? 8 : 0, gpad = c.strided ? 3 : 0;  // 8: rows stay 16-byte aligned
  const Bits q = spread(to_bits(d.q), c, DK, pad), k = spread(to_bits(d.k), c, DK, pad);
  const Bits v = spread(to_bits(d.v), c, DV, pad), beta = spread(to_bits(d.beta), c, 1, gpad);
  const Bits g = spread(to_bits(d.g), c, 1, gpad);
  dm::Problem p{c.B, c.T, c.H, dm::chunk_count(c.T), c.scale(), c.gated};
  const i64 rows_all = c.B * c.H * p.NC * dm::kChunk;
  // Poisoned: every element read must have been written.
  Bits W(static_cast<size_t>(rows_all * DK), kNaN), U(static_cast<size_t>(rows_all * DV), kNaN);
  Bits P(static_cast<size_t>(c.B * c.H * p.NC * DK * DV), kNaN);
  Bits o(static_cast<size_t>(c.B * c.T * (c.H * DV + pad)), kNaN);
  Result r;
  r.fs.assign(static_cast<size_t>(c.B * c.H * DK * DV), NAN);
  const dm::Rows gr = c.gated ? rows(g, c, 1, gpad) : dm::Rows{};
  const dim3 chunks{static_cast<unsigned>(c.B * c.H * p.NC), 1, 1};

  const dm::PrepArgs pa{
      p, rows(k, c, DK, pad), rows(v, c, DV, pad), rows(beta, c, 1, gpad), gr, W.data(), U.data()};
  emu::launch(chunks, dm::kThreads, [&] { dm::delta_prep_kernel<DK, DV>(pa); });
  dm::StateArgs sa;
  sa.p = p, sa.Dv = DV, sa.k = rows(k, c, DK, pad), sa.g = gr, sa.w = W.data(), sa.u = U.data();
  sa.init = c.states ? d.s0.data() : nullptr, sa.fin = r.fs.data(), sa.states = P.data();
  const dim3 state_grid{static_cast<unsigned>(c.B * c.H), DV / dm::kVTile, 1};
  emu::launch(state_grid, dm::kThreads, [&] { dm::delta_state_kernel<DK>(sa); });
  const dm::Rows orow = rows(o, c, DV, pad);
  const dm::OutRows orows{o.data(), orow.sb, orow.st, orow.sh};
  const dm::OutputArgs oa{p,    rows(q, c, DK, pad), rows(k, c, DK, pad), gr, U.data(), P.data(),
                          orows};
  emu::launch(chunks, dm::kThreads, [&] { dm::delta_output_kernel<DK, DV>(oa); });
  // Gather o; nothing written into the padding.
  Bits dense;
  for (i64 bt = 0; bt < c.B * c.T; ++bt) {
    const auto row = o.begin() + bt * (c.H * DV + pad);
    dense.insert(dense.end(), row, row + c.H * DV);
    for (i64 e = 0; e < pad; ++e) CHECK(row[c.H * DV + e] == kNaN);
  }
  r.o = from_bits(dense);
  return r;
}

Result emulated_any(const Case& c, const Data& d) {
  emu::shared_memory = dm::smem_raw, emu::shared_bytes = sizeof(dm::smem_raw);
  static_assert(dm::PrepTiles<128, 128>::smem <= sizeof(dm::smem_raw), "shared memory");
  static_assert(dm::OutputTiles<128, 128>::smem <= sizeof(dm::smem_raw), "shared memory");
  static_assert(dm::StateTiles<128>::smem <= sizeof(dm::smem_raw), "shared memory");
  if (c.Dk == 64 && c.Dv == 64) return emulated<64, 64>(c, d);
  if (c.Dk == 64 && c.Dv == 128) return emulated<64, 128>(c, d);
  if (c.Dk == 128 && c.Dv == 64) return emulated<128, 64>(c, d);
  REQUIRE((c.Dk == 128 && c.Dv == 128));
  return emulated<128, 128>(c, d);
}

void compare_emulated(const Case& c) {
  INFO((emu::high_first ? "high" : "low") << "-first emulated kernels: " << describe(c));
  const Data d = make_data(c);
  const Result got = emulated_any(c, d), ref = cpu_result(c, d), host_tiled = tiled(c, d);
  const struct {
    const char* name;
    const Vec &got, &cpu, &host;
  } outs[] = {{"o", got.o, ref.o, host_tiled.o}, {"final_state", got.fs, ref.fs, host_tiled.fs}};
  for (const auto& out : outs) {
    const double vs_cpu = max_rel(out.got, out.cpu), vs_host = max_rel(out.got, out.host);
    INFO(out.name << ": max error / max |ref| against the CPU backend " << vs_cpu
                  << " (bound 1e-2), against the host tiled algorithm " << vs_host
                  << " (bound 5e-3: bf16 rounding flips at most)");
    CHECK(vs_cpu <= 1e-2);
    CHECK(vs_host <= 5e-3);
  }
}

TEST_CASE("lsm delta tiled reference: the kernels' code on emulated blocks matches the CPU backend",
          "[unit][lsm]") {
  std::uint64_t seed = 700;
  for (int shape = 0; shape < 4; ++shape) {
    emu::high_first = shape % 2 == 1;  // both scheduling orders over the cases
    Case c;
    c.T = shape == 0 ? 130 : shape == 1 ? 1 : shape == 2 ? 64 : 65;
    c.B = shape == 0 ? 2 : 1;
    c.H = shape == 0 ? 1 : 2;
    c.Dk = shape == 1 || shape == 3 ? 128 : 64;
    c.Dv = shape >= 2 ? 128 : 64;
    c.gated = shape != 2;
    c.states = shape != 1;
    c.strong = shape == 3;
    c.strided = shape == 0 || shape == 3;
    c.seed = ++seed;
    compare_emulated(c);
  }
}

// lsm_delta_rule_mma_launch.cuh's backward with the launches emulated.
template <int DK, int DV>
Grads emulated_backward(const Case& c, const Data& d) {
  const i64 pad = c.strided ? 8 : 0, gpad = c.strided ? 3 : 0;
  const Bits q = spread(to_bits(d.q), c, DK, pad), k = spread(to_bits(d.k), c, DK, pad);
  const Bits v = spread(to_bits(d.v), c, DV, pad), beta = spread(to_bits(d.beta), c, 1, gpad);
  const Bits g = spread(to_bits(d.g), c, 1, gpad), d_o = spread(to_bits(d.d_o), c, DV, pad);
  dm::Problem p{c.B, c.T, c.H, dm::chunk_count(c.T), c.scale(), c.gated};
  const i64 nch = c.B * c.H * p.NC, rows_all = nch * dm::kChunk;
  auto poisoned = [](i64 n) { return Vec(static_cast<size_t>(n), NAN); };
  Bits W(static_cast<size_t>(rows_all * DK), kNaN), X(static_cast<size_t>(nch * 64 * 64), kNaN);
  Vec U = poisoned(rows_all * DV), Rv = poisoned(rows_all * DV), Ps = poisoned(nch * DK * DV);
  Vec Gs = poisoned(nch * DK * DV), dqp = poisoned(rows_all * DK), dkp = poisoned(rows_all * DK);
  Vec dots = poisoned(rows_all * 4);
  Bits dq(static_cast<size_t>(c.B * c.T * (c.H * DK + pad)), kNaN), dk = dq;
  Bits dv(static_cast<size_t>(c.B * c.T * (c.H * DV + pad)), kNaN);
  Bits db(static_cast<size_t>(c.B * c.T * (c.H + gpad)), kNaN), dg = db;
  Grads r;
  r.ds0 = poisoned(c.B * c.H * DK * DV);
  const dm::Rows gr = c.gated ? rows(g, c, 1, gpad) : dm::Rows{};
  auto out = [&](Bits& x, i64 D, i64 pd) {
    const dm::Rows rr = rows(x, c, D, pd);
    return dm::OutRows{x.data(), rr.sb, rr.st, rr.sh};
  };
  const dim3 chunks{static_cast<unsigned>(nch), 1, 1};
  const dim3 heads{static_cast<unsigned>(c.B * c.H), DV / dm::kVTile, 1};

  dm::PrepArgs pa{
      p, rows(k, c, DK, pad), rows(v, c, DV, pad), rows(beta, c, 1, gpad), gr, W.data(), nullptr};
  pa.u_wide = U.data(), pa.x = X.data();
  emu::launch(chunks, dm::kThreads, [&] { dm::delta_prep_kernel<DK, DV, true>(pa); });
  dm::BwdStateArgs sa;
  sa.p = p, sa.Dv = DV, sa.k = rows(k, c, DK, pad), sa.g = gr, sa.w = W.data(), sa.u = U.data();
  sa.init = c.states ? d.s0.data() : nullptr, sa.states = Ps.data();
  emu::launch(heads, dm::kThreads, [&] { dm::delta_bwd_state_kernel<DK>(sa); });
  dm::ReverseArgs ra;
  ra.p = p, ra.Dv = DV, ra.q = rows(q, c, DK, pad), ra.k = rows(k, c, DK, pad);
  ra.beta = rows(beta, c, 1, gpad), ra.g = gr, ra.d_o = rows(d_o, c, DV, pad), ra.x = X.data();
  ra.dfs = c.states ? d.dfs.data() : nullptr, ra.gstates = Gs.data(), ra.rv = Rv.data();
  ra.dv = out(dv, DV, pad), ra.ds0 = r.ds0.data();
  emu::launch(heads, dm::kThreads, [&] { dm::delta_bwd_reverse_kernel<DK>(ra); });
  dm::GradArgs ga;
  ga.p = p, ga.q = ra.q, ga.k = ra.k, ga.v = rows(v, c, DV, pad), ga.beta = ra.beta, ga.g = gr;
  ga.d_o = ra.d_o, ga.u = U.data(), ga.rv = Rv.data(), ga.pstates = Ps.data();
  ga.gstates = Gs.data(), ga.dq_part = dqp.data(), ga.dk_part = dkp.data();
  ga.dots = dots.data(), ga.dq = out(dq, DK, pad), ga.dk = out(dk, DK, pad);
  ga.dbeta = out(db, 1, gpad);
  if (c.gated) ga.dg = out(dg, 1, gpad);
  emu::launch(chunks, dm::kThreads, [&] { dm::delta_bwd_rows_kernel<DK, DV>(ga); });
  emu::launch(chunks, dm::kThreads, [&] { dm::delta_bwd_chunk_kernel<DK, DV>(ga); });
  // Gather; nothing written into the padding.
  auto dense = [&](const Bits& x, i64 D, i64 pd) {
    Bits o;
    for (i64 bt = 0; bt < c.B * c.T; ++bt) {
      const auto row = x.begin() + bt * (c.H * D + pd);
      o.insert(o.end(), row, row + c.H * D);
      for (i64 e = 0; e < pd; ++e) CHECK(row[c.H * D + e] == kNaN);
    }
    return from_bits(o);
  };
  r.dq = dense(dq, DK, pad), r.dk = dense(dk, DK, pad), r.dv = dense(dv, DV, pad);
  r.dbeta = dense(db, 1, gpad);
  if (c.gated) r.dg = dense(dg, 1, gpad);
  return r;
}

Grads emulated_backward_any(const Case& c, const Data& d) {
  emu::shared_memory = dm::smem_raw, emu::shared_bytes = sizeof(dm::smem_raw);
  static_assert(dm::PrepTiles<128, 128, true>::smem <= sizeof(dm::smem_raw), "shared memory");
  static_assert(dm::BwdStateTiles<128>::smem <= sizeof(dm::smem_raw), "shared memory");
  static_assert(dm::ReverseTiles<128>::smem <= sizeof(dm::smem_raw), "shared memory");
  static_assert(dm::RowsTiles<128, 128>::smem <= sizeof(dm::smem_raw), "shared memory");
  static_assert(dm::ChunkTiles<128, 128>::smem <= sizeof(dm::smem_raw), "shared memory");
  if (c.Dk == 64 && c.Dv == 64) return emulated_backward<64, 64>(c, d);
  if (c.Dk == 64 && c.Dv == 128) return emulated_backward<64, 128>(c, d);
  if (c.Dk == 128 && c.Dv == 64) return emulated_backward<128, 64>(c, d);
  REQUIRE((c.Dk == 128 && c.Dv == 128));
  return emulated_backward<128, 128>(c, d);
}

void compare_emulated_backward(const Case& c) {
  INFO((emu::high_first ? "high" : "low") << "-first emulated backward kernels: " << describe(c));
  const Data d = make_data(c);
  const Grads got = emulated_backward_any(c, d), ref = cpu_grads(c, d);
  const Grads host_tiled = tiled_backward(c, d);
  const std::vector<Named> vs_cpu = named(got, ref), vs_host = named(got, host_tiled);
  for (size_t i = 0; i < vs_cpu.size(); ++i) {
    if (!c.states && std::string(vs_cpu[i].name) == "d_initial_state") continue;
    const double e_cpu = max_rel(vs_cpu[i].got, vs_cpu[i].want);
    const double e_host = max_rel(vs_host[i].got, vs_host[i].want);
    // Against the host algorithm: the kernels keep some hi + lo pairs in fp32 (Ũ, U, dU, R_v):
    // bf16 outputs may then differ by one unit in the last place, up to 2⁻⁷ of the largest.
    INFO(vs_cpu[i].name << ": against the CPU backend " << e_cpu
                        << " (bound 1e-2), against the host tiled algorithm " << e_host
                        << " (bound 8e-3)");
    CHECK(e_cpu <= 1e-2);
    CHECK(e_host <= 8e-3);
  }
}

TEST_CASE("lsm delta tiled reference: the backward kernels on emulated blocks match the CPU",
          "[unit][lsm]") {
  // Every head-dim pair; several chunks, T = 1 and partial chunks; deltanet and gated; with and
  // without the states; strong decays; correlated keys; strided views.
  std::uint64_t seed = 900;
  for (int shape = 0; shape < 4; ++shape) {
    emu::high_first = shape % 2 == 1;
    Case c;
    c.T = shape == 0 ? 130 : shape == 1 ? 1 : shape == 2 ? 65 : 64;
    c.B = shape == 0 ? 2 : 1;
    c.H = shape == 0 ? 1 : 2;
    c.Dk = shape >= 2 ? 128 : 64;
    c.Dv = shape == 1 || shape == 2 ? 128 : 64;
    c.gated = shape != 1;
    c.states = shape != 0;
    c.strong = shape == 2;
    c.correlated = shape == 3;
    c.strided = shape != 1;
    c.seed = ++seed;
    compare_emulated_backward(c);
  }
}

}  // namespace
}  // namespace linmoe
