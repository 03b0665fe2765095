// The algorithm of the tensor-core vector-decay LSM kernels (kernels/cuda/lsm_vector_decay_mma.cuh)
// run on the host against the CPU backend's lsm_vector_decay_forward/backward (itself checked
// against fp64 oracles in tests/lsm/). Two ways:
//  - a matrix-level transcription of the kernels' phases (state pass, chunk outputs; backward:
//    state pass, reverse pass with the decay gradient's base term, chunk gradients), with the same
//    sub-chunk reference rows (lsm_vector_decay_tiles.cuh) and the same points where values are
//    rounded to bf16. Without the rounding it must agree with the CPU backend to fp32 rounding
//    (the mathematics and the bookkeeping); with it, to the bf16 tolerance of the GPU tests;
//  - the kernels' own code, one CUDA block at a time on the emulated block of
//    unit/cuda_block_emulation.h (mma.sync, ldmatrix, shuffles and barriers per the PTX ISA): its
//    indexing, fragment building and synchronisation, short of the hardware.
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
#include "kernels/cuda/lsm_vector_decay_mma.cuh"

// The emulated block's dynamic shared memory (the kernels' `extern __shared__ smem_raw`).
namespace linmoe::cuda::lsm_vmma {
alignas(16) unsigned char smem_raw[232448];
}  // namespace linmoe::cuda::lsm_vmma

namespace linmoe {
namespace {

namespace vm = cuda::lsm_vmma;
using testing::HostTensor;
using i64 = std::int64_t;
using Vec = std::vector<float>;
using vm::decay2;
using vm::kChunk;

Backend& cpu() {
  static std::unique_ptr<Backend> backend = make_cpu_backend(2);
  return *backend;
}

struct Case {
  i64 B = 1, T = 65, H = 2, Dk = 64, Dv = 64;
  bool states = false;   // initial_state and d_final_state given
  bool strong = false;   // log decays down to −20 per step (else GLA/HGRN2-like, mostly > −1)
  bool bf16 = true;      // round where the kernels round (else the fp32 mathematics alone)
  bool optional = true;  // final_state, d_initial_state and d_log_decay requested (emulation)
  std::uint64_t seed = 1;
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(Dk)); }
  float r(float x) const { return bf16 ? cuda::frag::round_bf16(x) : x; }
};

struct Data {
  Vec q, k, g, v, d_o, s0, dfs;  // [B,T,H,Dk] ×3, [B,T,H,Dv] ×2, [B,H,Dk,Dv] ×2
};
struct Result {
  Vec o, fs, dq, dk, dv, dg, ds0;
};

Vec random_vec(i64 n, std::mt19937& rng, bool round, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> u(lo, hi);
  Vec x(static_cast<std::size_t>(n));
  for (float& e : x) e = round ? cuda::frag::round_bf16(u(rng)) : u(rng);
  return x;
}

Data make_data(const Case& c) {
  std::mt19937 rng(static_cast<unsigned>(c.seed));
  Data d;
  const i64 nk = c.B * c.T * c.H * c.Dk, nv = c.B * c.T * c.H * c.Dv;
  d.q = random_vec(nk, rng, c.bf16);
  d.k = random_vec(nk, rng, c.bf16);
  d.v = random_vec(nv, rng, c.bf16);
  d.d_o = random_vec(nv, rng, c.bf16);
  // Weak: −e^u with u ∈ [log 1e-3, log 1.5] (GLA's logsigmoid/16, HGRN2's logsigmoid). Strong:
  // uniform in [−20, 0) with one channel in 7 at −20 exactly.
  const Vec u = c.strong ? random_vec(nk, rng, false, -20.0f, 0.0f)
                         : random_vec(nk, rng, false, std::log(1e-3f), std::log(1.5f));
  d.g.resize(u.size());
  for (std::size_t i = 0; i < u.size(); ++i) {
    const float g = c.strong ? (i % 7 == 3 ? -20.0f : u[i]) : -std::exp(u[i]);
    d.g[i] = c.bf16 ? cuda::frag::round_bf16(g) : g;
  }
  if (c.states) {  // fp32 states: not rounded
    d.s0 = random_vec(c.B * c.H * c.Dk * c.Dv, rng, false);
    d.dfs = random_vec(c.B * c.H * c.Dk * c.Dv, rng, false);
  }
  return d;
}

// One (b, h) head: rows x[t][channel].
struct Head {
  i64 T, Dk, Dv;
  Vec q, k, g, v, d_o;
  float at(const Vec& m, i64 t, i64 x, i64 n) const {
    return m[static_cast<std::size_t>(t * n + x)];
  }
};
Head gather(const Case& c, const Data& d, i64 b, i64 h) {
  Head s{c.T, c.Dk, c.Dv, {}, {}, {}, {}, {}};
  for (i64 t = 0; t < c.T; ++t) {
    const i64 qk = ((b * c.T + t) * c.H + h) * c.Dk, vo = ((b * c.T + t) * c.H + h) * c.Dv;
    s.q.insert(s.q.end(), d.q.begin() + qk, d.q.begin() + qk + c.Dk);
    s.k.insert(s.k.end(), d.k.begin() + qk, d.k.begin() + qk + c.Dk);
    s.g.insert(s.g.end(), d.g.begin() + qk, d.g.begin() + qk + c.Dk);
    s.v.insert(s.v.end(), d.v.begin() + vo, d.v.begin() + vo + c.Dv);
    s.d_o.insert(s.d_o.end(), d.d_o.begin() + vo, d.d_o.begin() + vo + c.Dv);
  }
  return s;
}

// The kernels' cumulative log2 decays (cumsum_kernel): [NC·64][Dk], restarting at every chunk,
// rows past the end repeating the last.
Vec cumulative(const Head& s) {
  const i64 nc = vm::chunk_count(s.T);
  Vec bs(static_cast<std::size_t>(nc * kChunk * s.Dk));
  for (i64 c = 0; c < nc; ++c) {
    for (i64 x = 0; x < s.Dk; ++x) {
      float acc = 0;
      for (int j = 0; j < kChunk; ++j) {
        const i64 t = c * kChunk + j;
        if (t < s.T) acc += s.at(s.g, t, x, s.Dk) * vm::kLog2e;
        bs[static_cast<std::size_t>(t * s.Dk + x)] = acc;
      }
    }
  }
  return bs;
}

// Per chunk: the tiles the kernels see (rows ≥ L zero, b padded) as lambdas over chunk rows.
struct Chunk {
  const Case& cs;
  const Head& s;
  const Vec& bs;
  i64 t0;
  int L;
  float q(int i, i64 x) const { return i < L ? s.at(s.q, t0 + i, x, s.Dk) : 0.0f; }
  float k(int i, i64 x) const { return i < L ? s.at(s.k, t0 + i, x, s.Dk) : 0.0f; }
  float v(int i, i64 y) const { return i < L ? s.at(s.v, t0 + i, y, s.Dv) : 0.0f; }
  float d_o(int i, i64 y) const { return i < L ? s.at(s.d_o, t0 + i, y, s.Dv) : 0.0f; }
  float b(int i, i64 x) const { return bs[static_cast<std::size_t>((t0 + i) * s.Dk + x)]; }
};
Chunk chunk_of(const Case& cs, const Head& s, const Vec& bs, i64 c) {
  return Chunk{cs, s, bs, c * kChunk, vm::chunk_len(s.T, c)};
}

// state_kernel: forward S ← e_L ⊙ S + Σ_j r(k_j ⊙ f_j) v_jᵀ; reverse G ← e_L ⊙ G + Σ_i
// r(scale q_i ⊙ e_i) do_iᵀ with base[c][x] = Σ_y G_entering[x][y]·P_c[x][y]. stored[c] =
// r(state before chunk c's update). Returns the last state.
Vec state_pass(const Case& cs, const Head& s, const Vec& bs, const float* init, bool reverse,
               Vec& stored, const Vec* P, Vec* base) {
  const i64 nc = vm::chunk_count(s.T), Dk = s.Dk, Dv = s.Dv;
  Vec S(static_cast<std::size_t>(Dk * Dv), 0.0f);
  if (init) std::copy(init, init + Dk * Dv, S.begin());
  stored.assign(static_cast<std::size_t>(nc * Dk * Dv), 0.0f);
  if (base) base->assign(static_cast<std::size_t>(nc * Dk), 0.0f);
  for (i64 step = 0; step < nc; ++step) {
    const i64 c = reverse ? nc - 1 - step : step;
    const Chunk ch = chunk_of(cs, s, bs, c);
    for (i64 e = 0; e < Dk * Dv; ++e)
      stored[static_cast<std::size_t>(c * Dk * Dv + e)] = cs.r(S[static_cast<std::size_t>(e)]);
    for (i64 x = 0; x < Dk; ++x) {
      const float bl = ch.b(ch.L - 1, x), el = decay2(bl);
      Vec X(kChunk);
      for (int j = 0; j < kChunk; ++j) {
        X[j] = reverse ? cs.r(cs.scale() * ch.q(j, x) * decay2(ch.b(j, x)))
                       : cs.r(ch.k(j, x) * decay2(bl - ch.b(j, x)));
      }
      float part = 0;
      for (i64 y = 0; y < Dv; ++y) {
        float u = 0;
        for (int j = 0; j < kChunk; ++j) u += X[j] * (reverse ? ch.d_o(j, y) : ch.v(j, y));
        float& e = S[static_cast<std::size_t>(x * Dv + y)];
        e = e * el + u;
        if (P) part += e * (*P)[static_cast<std::size_t>((c * Dk + x) * Dv + y)];
      }
      if (base) (*base)[static_cast<std::size_t>(c * Dk + x)] = part;
    }
  }
  return S;
}

// The scores of a chunk, [64][64]: A_ij = r(scale Σ_x q_ix k_jx 2^(b_ix − b_jx)) with the
// off-diagonal sub-chunk blocks factorised at row_ref(i / 16) and rounded as the kernels round,
// or (plain) D_ij = r(scale do_i·v_j). Zero outside causal_keep.
Vec scores(const Chunk& ch, bool plain) {
  const Case& cs = ch.cs;
  Vec out(kChunk * kChunk, 0.0f);
  for (int i = 0; i < ch.L; ++i) {
    const int n = vm::row_ref(i / vm::kSub);
    for (int j = 0; j <= i; ++j) {
      float acc = 0;
      if (plain) {
        for (i64 y = 0; y < ch.s.Dv; ++y) acc += ch.d_o(i, y) * ch.v(j, y);
      } else if (j < n) {
        for (i64 x = 0; x < ch.s.Dk; ++x) {
          acc += cs.r(ch.q(i, x) * decay2(ch.b(i, x) - ch.b(n, x))) *
                 cs.r(ch.k(j, x) * decay2(ch.b(n, x) - ch.b(j, x)));
        }
      } else {
        for (i64 x = 0; x < ch.s.Dk; ++x)
          acc += ch.q(i, x) * ch.k(j, x) * decay2(ch.b(i, x) - ch.b(j, x));
      }
      out[static_cast<std::size_t>(i * kChunk + j)] = cs.r(acc * cs.scale());
    }
  }
  return out;
}

struct Grads {
  Vec dq, dk, dv, dg;  // [64][Dk] ×2, [64][Dv], [64][Dk] of one chunk, unrounded
};

// chunk_grad_kernel on one chunk: P, G its state and state gradient (bf16 values), base its
// decay-gradient base.
Grads chunk_grads(const Chunk& ch, const float* P, const float* G, const float* base) {
  const Case& cs = ch.cs;
  const i64 Dk = ch.s.Dk, Dv = ch.s.Dv;
  const Vec D = scores(ch, true), A = scores(ch, false);
  auto Dij = [&](int i, int j) { return D[static_cast<std::size_t>(i * kChunk + j)]; };
  auto Aij = [&](int i, int j) { return A[static_cast<std::size_t>(i * kChunk + j)]; };
  Grads gr;
  gr.dq.assign(static_cast<std::size_t>(kChunk * Dk), 0.0f);
  gr.dk = gr.dq, gr.dg = gr.dq;
  gr.dv.assign(static_cast<std::size_t>(kChunk * Dv), 0.0f);
  Vec rr(static_cast<std::size_t>(kChunk * Dk));
  for (int i = 0; i < kChunk; ++i) {
    const int w = i / vm::kSub, n = vm::row_ref(w), r = vm::col_ref(w), sub_end = n + vm::kSub;
    for (i64 x = 0; x < Dk; ++x) {
      const float bl = ch.b(ch.L - 1, x);
      // dq: (scale 2^b_n (dO Pᵀ) + D_{<n} r(K 2^(b_n − b))) 2^(b_i − b_n) + diagonal block.
      float acc = 0;
      for (i64 y = 0; y < Dv; ++y) acc += ch.d_o(i, y) * P[x * Dv + y];
      acc *= cs.scale() * decay2(ch.b(n, x));
      for (int j = 0; j < n; ++j)
        acc += Dij(i, j) * cs.r(ch.k(j, x) * decay2(ch.b(n, x) - ch.b(j, x)));
      acc *= decay2(ch.b(i, x) - ch.b(n, x));
      for (int j = n; j <= i; ++j) acc += Dij(i, j) * ch.k(j, x) * decay2(ch.b(i, x) - ch.b(j, x));
      gr.dq[static_cast<std::size_t>(i * Dk + x)] = acc;
      // dk (row i as key j): (2^(b_L − b_r) V Gᵀ + D_{>sub}ᵀ r(Q 2^(b − b_r))) 2^(b_r − b_j) +
      // diag.
      float bcc = 0;
      for (i64 y = 0; y < Dv; ++y) bcc += ch.v(i, y) * G[x * Dv + y];
      bcc *= decay2(bl - ch.b(r, x));
      for (int u = sub_end; u < kChunk; ++u)
        bcc += Dij(u, i) * cs.r(ch.q(u, x) * decay2(ch.b(u, x) - ch.b(r, x)));
      bcc *= decay2(ch.b(r, x) - ch.b(i, x));
      for (int u = i; u < sub_end; ++u)
        bcc += Dij(u, i) * ch.q(u, x) * decay2(ch.b(u, x) - ch.b(i, x));
      gr.dk[static_cast<std::size_t>(i * Dk + x)] = bcc;
      rr[static_cast<std::size_t>(i * Dk + x)] = ch.q(i, x) * acc - ch.k(i, x) * bcc;
    }
    // dv = r(K ⊙ f) G + Aᵀ dO.
    for (i64 y = 0; y < Dv; ++y) {
      float acc = 0;
      for (i64 x = 0; x < Dk; ++x)
        acc += cs.r(ch.k(i, x) * decay2(ch.b(ch.L - 1, x) - ch.b(i, x))) * G[x * Dv + y];
      for (int u = i; u < kChunk; ++u) acc += Aij(u, i) * ch.d_o(u, y);
      gr.dv[static_cast<std::size_t>(i * Dv + y)] = acc;
    }
  }
  // dg_u = base − Σ_{v<u} (q_v ⊙ dq_v − k_v ⊙ dk_v).
  for (i64 x = 0; x < Dk; ++x) {
    float prefix = 0;
    for (int u = 0; u < kChunk; ++u) {
      gr.dg[static_cast<std::size_t>(u * Dk + x)] = base[x] - prefix;
      prefix += rr[static_cast<std::size_t>(u * Dk + x)];
    }
  }
  return gr;
}

Result tiled(const Case& cs, const Data& d) {
  const i64 Dk = cs.Dk, Dv = cs.Dv, T = cs.T;
  Result r;
  r.o.assign(static_cast<std::size_t>(cs.B * T * cs.H * Dv), 0.0f);
  r.dv = r.o;
  r.dq.assign(static_cast<std::size_t>(cs.B * T * cs.H * Dk), 0.0f);
  r.dk = r.dq, r.dg = r.dq;
  r.fs.assign(static_cast<std::size_t>(cs.B * cs.H * Dk * Dv), 0.0f);
  r.ds0 = r.fs;
  for (i64 b = 0; b < cs.B; ++b) {
    for (i64 h = 0; h < cs.H; ++h) {
      const Head s = gather(cs, d, b, h);
      const Vec bs = cumulative(s);
      const i64 nc = vm::chunk_count(T), st = (b * cs.H + h) * Dk * Dv;
      const float* s0 = cs.states ? &d.s0[static_cast<std::size_t>(st)] : nullptr;
      const float* dfs = cs.states ? &d.dfs[static_cast<std::size_t>(st)] : nullptr;
      Vec P, G, base;
      const Vec fin = state_pass(cs, s, bs, s0, false, P, nullptr, nullptr);
      const Vec dinit = state_pass(cs, s, bs, dfs, true, G, &P, &base);
      std::copy(fin.begin(), fin.end(), r.fs.begin() + st);
      std::copy(dinit.begin(), dinit.end(), r.ds0.begin() + st);
      for (i64 c = 0; c < nc; ++c) {
        const Chunk ch = chunk_of(cs, s, bs, c);
        const float* Pc = &P[static_cast<std::size_t>(c * Dk * Dv)];
        const float* Gc = &G[static_cast<std::size_t>(c * Dk * Dv)];
        // chunk_output_kernel: o = scale r(Q ⊙ e) P + A V.
        const Vec A = scores(ch, false);
        const Grads gr = chunk_grads(ch, Pc, Gc, &base[static_cast<std::size_t>(c * Dk)]);
        for (int i = 0; i < ch.L; ++i) {
          const i64 ko = ((b * T + ch.t0 + i) * cs.H + h) * Dk,
                    vo = ((b * T + ch.t0 + i) * cs.H + h) * Dv;
          for (i64 y = 0; y < Dv; ++y) {
            float inter = 0, intra = 0;
            for (i64 x = 0; x < Dk; ++x)
              inter += cs.r(ch.q(i, x) * decay2(ch.b(i, x))) * Pc[x * Dv + y];
            for (int j = 0; j <= i; ++j)
              intra += A[static_cast<std::size_t>(i * kChunk + j)] * ch.v(j, y);
            r.o[static_cast<std::size_t>(vo + y)] = cs.r(inter * cs.scale() + intra);
            r.dv[static_cast<std::size_t>(vo + y)] =
                cs.r(gr.dv[static_cast<std::size_t>(i * Dv + y)]);
          }
          for (i64 x = 0; x < Dk; ++x) {
            r.dq[static_cast<std::size_t>(ko + x)] =
                cs.r(gr.dq[static_cast<std::size_t>(i * Dk + x)]);
            r.dk[static_cast<std::size_t>(ko + x)] =
                cs.r(gr.dk[static_cast<std::size_t>(i * Dk + x)]);
            r.dg[static_cast<std::size_t>(ko + x)] =
                cs.r(gr.dg[static_cast<std::size_t>(i * Dk + x)]);
          }
        }
      }
    }
  }
  return r;
}

// ---- the kernels on the emulated block
// -------------------------------------------------------------

using u16 = std::uint16_t;

// A [B, T, H, D] bf16 tensor whose token rows are `pad` elements longer than H·D (a strided view,
// as a slice of a fused projection would be).
struct Strided {
  i64 B, T, H, D, pad;
  std::vector<u16> bits;
  Strided(i64 b, i64 t, i64 h, i64 d, i64 p = 8)
      : B(b),
        T(t),
        H(h),
        D(d),
        pad(p),
        bits(static_cast<std::size_t>(b * t * (h * d + p)), 0x7fc0) {}
  i64 st() const { return H * D + pad; }
  std::size_t at(i64 b, i64 t, i64 h, i64 x) const {
    return static_cast<std::size_t>((b * T + t) * st() + h * D + x);
  }
  void set(const Vec& dense) {  // dense [B,T,H,D]
    for (i64 b = 0; b < B; ++b)
      for (i64 t = 0; t < T; ++t)
        for (i64 h = 0; h < H; ++h)
          for (i64 x = 0; x < D; ++x)
            bits[at(b, t, h, x)] = cuda::frag::bf16_bits(
                dense[static_cast<std::size_t>(((b * T + t) * H + h) * D + x)]);
  }
  Vec get() const {
    Vec dense(static_cast<std::size_t>(B * T * H * D));
    for (i64 b = 0; b < B; ++b)
      for (i64 t = 0; t < T; ++t)
        for (i64 h = 0; h < H; ++h)
          for (i64 x = 0; x < D; ++x)
            dense[static_cast<std::size_t>(((b * T + t) * H + h) * D + x)] =
                cuda::frag::bf16_to_float(bits[at(b, t, h, x)]);
    return dense;
  }
  vm::Rows rows() const { return vm::Rows{bits.data(), T * st(), st(), D}; }
  vm::OutRows out_rows() { return vm::OutRows{bits.data(), T * st(), st(), D}; }
};

// Forward and backward through the kernels, launched as lsm_vector_decay.cu launches them.
template <int DK, int DV>
Result emulated_dims(const Case& c, const Data& d) {
  const i64 B = c.B, T = c.T, H = c.H, NC = vm::chunk_count(T), nvt = DV / vm::kVTile;
  const vm::Problem p{B, T, H, NC, c.scale()};
  Strided q(B, T, H, DK), k(B, T, H, DK), g(B, T, H, DK, 0), v(B, T, H, DV), d_o(B, T, H, DV);
  q.set(d.q), k.set(d.k), g.set(d.g), v.set(d.v), d_o.set(d.d_o);
  Strided o(B, T, H, DV), dq(B, T, H, DK), dk(B, T, H, DK), dv(B, T, H, DV), dg(B, T, H, DK);
  Vec bc(static_cast<std::size_t>(B * H * NC * kChunk * DK), NAN);
  std::vector<u16> P(static_cast<std::size_t>(B * H * NC * DK * DV), 0x7fc0), G = P;  // NaN
  Vec base(static_cast<std::size_t>(B * H * NC * nvt * DK), NAN);
  Result r;
  r.fs.assign(static_cast<std::size_t>(B * H * DK * DV), NAN);
  r.ds0 = r.fs;
  const float* s0 = c.states ? d.s0.data() : nullptr;
  const float* dfs = c.states ? d.dfs.data() : nullptr;
  namespace emu = testing::emu;

  const i64 ncum = B * H * NC * DK;
  const unsigned cum_grid =
      static_cast<unsigned>((ncum + vm::kCumsumThreads - 1) / vm::kCumsumThreads);
  emu::launch(dim3{cum_grid, 1, 1}, vm::kCumsumThreads,
              [&] { vm::cumsum_kernel(p, DK, g.rows(), bc.data()); });
  const dim3 state_grid{static_cast<unsigned>(B * H), static_cast<unsigned>(nvt),
                        static_cast<unsigned>(DK / vm::kXTile)};
  float* fs = c.optional ? r.fs.data() : nullptr;
  float* ds0 = c.optional ? r.ds0.data() : nullptr;
  const vm::StateArgs fa{p,  DV, k.rows(), v.rows(), bc.data(), false,
                         s0, fs, P.data(), nullptr,  nullptr};
  emu::launch(state_grid, vm::StateTiles::kThreads, [&] { vm::state_kernel<DK>(fa); });
  const dim3 chunk_grid{static_cast<unsigned>(B * H * NC), 1, 1};
  const vm::OutputArgs oa{p, q.rows(), k.rows(), v.rows(), bc.data(), P.data(), o.out_rows()};
  emu::launch(chunk_grid, vm::kChunkThreads, [&] { vm::output_kernel<DK, DV>(oa); });

  const vm::StateArgs ra{p,   DV,  q.rows(), d_o.rows(), bc.data(),  true,
                         dfs, ds0, G.data(), P.data(),   base.data()};
  emu::launch(state_grid, vm::StateTiles::kThreads, [&] { vm::state_kernel<DK>(ra); });
  vm::GradArgs ga{};
  ga.p = p;
  ga.q = q.rows(), ga.k = k.rows(), ga.v = v.rows(), ga.d_o = d_o.rows();
  ga.bc = bc.data(), ga.P = P.data(), ga.G = G.data(), ga.base = base.data();
  ga.nvt = static_cast<int>(nvt);
  ga.dq = dq.out_rows(), ga.dk = dk.out_rows(), ga.dv = dv.out_rows();
  if (c.optional) ga.dg = dg.bits.data();
  ga.dg_sb = T * dg.st(), ga.dg_st = dg.st(), ga.dg_sh = DK;
  emu::launch(chunk_grid, vm::kChunkThreads, [&] { vm::grad_kernel<DK, DV>(ga); });
  r.o = o.get(), r.dq = dq.get(), r.dk = dk.get(), r.dv = dv.get(), r.dg = dg.get();
  if (!c.optional) r.fs.clear(), r.ds0.clear(), r.dg.clear();  // not requested: not compared
  return r;
}

Result emulated(const Case& c, const Data& d) {
  if (c.Dk == 64) return c.Dv == 64 ? emulated_dims<64, 64>(c, d) : emulated_dims<64, 128>(c, d);
  return c.Dv == 64 ? emulated_dims<128, 64>(c, d) : emulated_dims<128, 128>(c, d);
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
  const Shape qk{c.B, c.T, c.H, c.Dk}, vo{c.B, c.T, c.H, c.Dv}, st{c.B, c.H, c.Dk, c.Dv};
  const HostTensor q = host(d.q, qk), k = host(d.k, qk), v = host(d.v, vo), lg = host(d.g, qk);
  const HostTensor d_o = host(d.d_o, vo);
  const HostTensor s0 = host(c.states ? d.s0 : Vec(1), c.states ? st : Shape{1});
  const HostTensor dfs = host(c.states ? d.dfs : Vec(1), c.states ? st : Shape{1});
  HostTensor o(DType::f32, vo), fs(DType::f32, st), dq(DType::f32, qk), dk(DType::f32, qk);
  HostTensor dv(DType::f32, vo), dg(DType::f32, qk), ds0(DType::f32, st);
  for (const HostTensor* t : {&o, &fs, &dq, &dk, &dv, &dg, &ds0}) testing::poison(t->t());
  const Tensor none{};
  const double scale = c.scale();
  cpu().lsm_vector_decay_forward(q, k, v, lg, scale, kChunk, c.states ? s0.t() : none, o, fs);
  cpu().lsm_vector_decay_backward(q, k, v, lg, scale, kChunk, c.states ? s0.t() : none, d_o,
                                  c.states ? dfs.t() : none, dq, dk, dv, dg, ds0);
  Result r{values(o), values(fs), values(dq), values(dk), values(dv), values(dg), values(ds0)};
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

void expect_close(const Case& c, const Result& got, const Result& want, double tol) {
  const struct {
    const char* name;
    const Vec &got, &want;
  } outs[] = {{"o", got.o, want.o},
              {"final_state", got.fs, want.fs},
              {"dq", got.dq, want.dq},
              {"dk", got.dk, want.dk},
              {"dv", got.dv, want.dv},
              {"d_log_decay", got.dg, want.dg},
              {"d_initial_state", got.ds0, want.ds0}};
  for (const auto& out : outs) {
    if (out.got.empty()) continue;
    const double err = max_rel(out.got, out.want);
    INFO(out.name << ": max error / max |ref| = " << err << ", bound " << tol);
    CHECK(err <= tol);
  }
  (void)c;
}

std::string describe(const Case& c) {
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
         " Dk=" + std::to_string(c.Dk) + " Dv=" + std::to_string(c.Dv) +
         (c.states ? " states" : "") + (c.strong ? " strong" : " weak") +
         (c.bf16 ? " bf16" : " fp32");
}

// fp32: summation order only, except that with strong decays the fp32 cumulative log decays
// (|b| up to ~2·10³ inside a chunk; the CPU sums in f64) shift exponents by ~1e-4. bf16: the GPU
// tests' bound.
double tolerance(const Case& c) {
  return c.bf16 ? 1e-2 : c.strong ? 1e-4 : 1e-5;
}

TEST_CASE("lsm vector tiled reference: the tensor-core algorithm matches the CPU backend",
          "[unit][lsm]") {
  std::uint64_t seed = 300;
  for (bool bf16 : {false, true}) {
    for (i64 T : {1, 15, 63, 64, 65, 200}) {
      for (int shape = 0; shape < 4; ++shape) {
        Case c;
        c.bf16 = bf16;
        c.T = T;
        c.B = shape == 0 ? 2 : 1;
        c.Dk = shape == 1 || shape == 3 ? 128 : 64;  // 1: HGRN2-like 128/128, 2: GLA-like 64/128
        c.Dv = shape == 0 ? 64 : 128;
        c.states = shape != 0;
        c.strong = shape == 3 || (shape == 0 && T == 200);
        c.seed = ++seed;
        INFO(describe(c));
        const Data d = make_data(c);
        expect_close(c, tiled(c, d), cpu_result(c, d), tolerance(c));
      }
    }
  }
}

TEST_CASE("lsm vector tiled reference: the kernels on an emulated block match the CPU backend",
          "[unit][lsm]") {
  std::uint64_t seed = 700;
  for (i64 T : {1, 15, 64, 65, 200}) {
    for (int shape = 0; shape < 4; ++shape) {
      Case c;
      c.T = T;
      c.B = shape == 0 ? 2 : 1;
      c.H = shape == 0 ? 2 : 1;
      c.Dk = shape == 1 || shape == 3 ? 128 : 64;
      c.Dv = shape == 2 || shape == 3 ? 128 : 64;
      c.states = shape != 0;
      c.strong = shape % 2 == 1;
      c.seed = ++seed;
      INFO("emulated kernels: " << describe(c));
      const Data d = make_data(c);
      expect_close(c, emulated(c, d), cpu_result(c, d), tolerance(c));
    }
  }
  // Many chunks (both state-pass buffers, forward and reverse) with strong decays; then the
  // optional outputs left out.
  for (bool optional : {true, false}) {
    Case c;
    c.T = optional ? 1000 : 130;
    c.H = 1;
    c.states = true;
    c.strong = true;
    c.optional = optional;
    c.seed = optional ? 799 : 800;
    INFO("emulated kernels: " << describe(c) << (optional ? "" : ", optional outputs left out"));
    const Data d = make_data(c);
    expect_close(c, emulated(c, d), cpu_result(c, d), tolerance(c));
  }
}

}  // namespace
}  // namespace linmoe
