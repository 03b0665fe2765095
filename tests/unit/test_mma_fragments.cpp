// The mma.sync.m16n8k16 bf16 fragment maps and loads of kernels/cuda/mma_bf16.cuh, and the tiling
// helpers of kernels/cuda/lsm_scalar_decay_tiles.cuh, on the host. One warp's mma is emulated
// from the PTX ISA's own fragment tables (transcribed here independently, in the ISA's element
// numbering: a_i, i = 0..7, two per register, the lower i in the low half), so the kernels'
// index functions are checked against the definition, not against themselves.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cuda/lsm_scalar_decay_tiles.cuh"
#include "kernels/cuda/mma_bf16.cuh"

namespace linmoe {
namespace {

namespace frag = cuda::frag;
namespace lm = cuda::lsm_mma;
using u16 = std::uint16_t;
using u32 = std::uint32_t;

// ---- the PTX ISA tables ("Matrix Fragments for mma.m16n8k16", .bf16 A/B, .f32 C/D) ------------
int ptx_a_row(int lane, int i) {
  const int gid = lane >> 2;
  return (i < 2 || (i >= 4 && i < 6)) ? gid : gid + 8;
}
int ptx_a_col(int lane, int i) {
  const int tig = lane % 4;
  return i < 4 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
}
int ptx_b_row(int lane, int i) {
  const int tig = lane % 4;
  return i < 2 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
}
int ptx_b_col(int lane) {
  return lane >> 2;
}
int ptx_c_row(int lane, int i) {
  return i < 2 ? (lane >> 2) : (lane >> 2) + 8;
}
int ptx_c_col(int lane, int i) {
  return (lane % 4) * 2 + (i & 1);
}
u16 element(const u32* regs, int i) {
  return i % 2 == 0 ? frag::lo_half(regs[i / 2]) : frag::hi_half(regs[i / 2]);
}

// One warp's d = a·b + c as the hardware defines it: the operands are gathered from the 32 lanes'
// registers through the PTX tables (each element exactly once), multiplied exactly (double), and
// scattered back. The fp32 accumulation of the hardware differs from this by rounding only.
void emulate_mma(float (&c)[32][4], const u32 (&a)[32][4], const u32 (&b)[32][2]) {
  double A[16][16], B[16][8];
  int seen_a[16][16] = {}, seen_b[16][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const int r = ptx_a_row(lane, i), k = ptx_a_col(lane, i);
      A[r][k] = frag::bf16_to_float(element(a[lane], i));
      ++seen_a[r][k];
    }
    for (int i = 0; i < 4; ++i) {
      const int k = ptx_b_row(lane, i), n = ptx_b_col(lane);
      B[k][n] = frag::bf16_to_float(element(b[lane], i));
      ++seen_b[k][n];
    }
  }
  for (int r = 0; r < 16; ++r) {
    for (int k = 0; k < 16; ++k) REQUIRE(seen_a[r][k] == 1);
  }
  for (int k = 0; k < 16; ++k) {
    for (int n = 0; n < 8; ++n) REQUIRE(seen_b[k][n] == 1);
  }
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const int r = ptx_c_row(lane, i), n = ptx_c_col(lane, i);
      double s = c[lane][i];
      for (int k = 0; k < 16; ++k) s += A[r][k] * B[k][n];
      c[lane][i] = static_cast<float>(s);
    }
  }
}

// A bf16 tile of rows × cols with pitch ld (≥ cols), random values, padding poisoned with NaN.
struct Tile {
  int rows, cols, ld;
  std::vector<u16> bits;
  Tile(int r, int c, int pad, std::mt19937& rng) : rows(r), cols(c), ld(c + pad) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    bits.assign(static_cast<std::size_t>(rows * ld), frag::bf16_bits(NAN));
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < cols; ++j)
        bits[static_cast<std::size_t>(i * ld + j)] = frag::bf16_bits(u(rng));
    }
  }
  float at(int i, int j) const {
    return frag::bf16_to_float(bits[static_cast<std::size_t>(i * ld + j)]);
  }
};

// The warp product C[16 × 8·NB] = A[r0.., k-range] · B[k-range, n0..] through the header's loads,
// with A from a [m][k] tile (or its transpose [k][m]) and B from an [n][k] tile (or [k][n]).
template <int NB>
void warp_product(float (&c)[NB][32][4], const Tile& a, bool a_t, int r0, const Tile& b, bool b_t,
                  int k0, int kblocks, int n0) {
  for (int kk = 0; kk < kblocks; ++kk) {
    u32 af[32][4];
    for (int lane = 0; lane < 32; ++lane) {
      if (a_t) {
        frag::load_a_t(af[lane], a.bits.data(), a.ld, r0, k0 + 16 * kk, lane);
      } else {
        frag::load_a(af[lane], a.bits.data(), a.ld, r0, k0 + 16 * kk, lane);
      }
    }
    for (int n = 0; n < NB; ++n) {
      u32 bf[32][2];
      for (int lane = 0; lane < 32; ++lane) {
        if (b_t) {
          frag::load_b_t(bf[lane], b.bits.data(), b.ld, k0 + 16 * kk, n0 + 8 * n, lane);
        } else {
          frag::load_b(bf[lane], b.bits.data(), b.ld, k0 + 16 * kk, n0 + 8 * n, lane);
        }
      }
      emulate_mma(c[n], af, bf);
    }
  }
}

TEST_CASE("mma fragments: the header's maps are the PTX tables", "[unit][mma]") {
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < 4; ++reg) {
      CHECK(frag::a_row(lane, reg) == ptx_a_row(lane, 2 * reg));
      CHECK(frag::a_row(lane, reg) == ptx_a_row(lane, 2 * reg + 1));
      for (int half = 0; half < 2; ++half) {
        CHECK(frag::a_col(lane, reg, half) == ptx_a_col(lane, 2 * reg + half));
      }
    }
    for (int reg = 0; reg < 2; ++reg) {
      for (int half = 0; half < 2; ++half) {
        CHECK(frag::b_row(lane, reg, half) == ptx_b_row(lane, 2 * reg + half));
      }
    }
    CHECK(frag::b_col(lane) == ptx_b_col(lane));
    for (int e = 0; e < 4; ++e) {
      CHECK(frag::c_row(lane, e) == ptx_c_row(lane, e));
      CHECK(frag::c_col(lane, e) == ptx_c_col(lane, e));
    }
  }
}

TEST_CASE("mma fragments: bf16 rounding is round-to-nearest-even", "[unit][mma]") {
  CHECK(frag::bf16_bits(1.0f) == 0x3f80);
  CHECK(frag::bf16_bits(-2.0f) == 0xc000);
  CHECK(frag::bf16_bits(1.0f + 1.0f / 256) == 0x3f80);          // a tie: to even (down)
  CHECK(frag::bf16_bits(1.0f + 3.0f / 256) == 0x3f82);          // a tie: to even (up)
  CHECK(frag::bf16_bits(1.0f + 1.0f / 256 + 1e-6f) == 0x3f81);  // past the tie
  CHECK(std::isnan(frag::round_bf16(NAN)));
  CHECK(std::isinf(frag::round_bf16(INFINITY)));
  CHECK(frag::pack(0x1111, 0x2222) == 0x22221111u);
  CHECK(frag::pack_floats(1.0f, -2.0f) == 0xc0003f80u);
}

// Every orientation the kernels use, at offsets inside padded tiles, against a plain product.
TEST_CASE("mma fragments: warp products through every load reproduce the matrix product",
          "[unit][mma]") {
  std::mt19937 rng(7);
  constexpr int M = 16, K = 48, NB = 4, N = 8 * NB;
  const int r0 = 16, k0 = 16, n0 = 8;  // the product reads a window of bigger tiles
  for (int a_t = 0; a_t < 2; ++a_t) {
    for (int b_t = 0; b_t < 2; ++b_t) {
      INFO("A " << (a_t ? "[k][m]" : "[m][k]") << ", B " << (b_t ? "[k][n]" : "[n][k]"));
      // Storage: A[m][k] at a(r0 + m, k0 + k) or a(k0 + k, r0 + m); B[k][n] at b(n0 + n, k0 + k)
      // or b(k0 + k, n0 + n).
      const Tile a = a_t ? Tile(k0 + K, r0 + M + 3, 8, rng) : Tile(r0 + M, k0 + K + 5, 8, rng);
      const Tile b = b_t ? Tile(k0 + K, n0 + N + 1, 8, rng) : Tile(n0 + N, k0 + K, 8, rng);
      float c[NB][32][4] = {};
      warp_product(c, a, a_t, r0, b, b_t, k0, K / 16, n0);
      double worst = 0;
      for (int n = 0; n < NB; ++n) {
        for (int lane = 0; lane < 32; ++lane) {
          for (int e = 0; e < 4; ++e) {
            const int m = frag::c_row(lane, e), col = 8 * n + frag::c_col(lane, e);
            double ref = 0;
            for (int k = 0; k < K; ++k) {
              const double x = a_t ? a.at(k0 + k, r0 + m) : a.at(r0 + m, k0 + k);
              const double y = b_t ? b.at(k0 + k, n0 + col) : b.at(n0 + col, k0 + k);
              ref += x * y;
            }
            worst = std::max(worst, std::abs(c[n][lane][e] - ref));
          }
        }
      }
      CHECK(worst < 1e-5);
    }
  }
}

// O = (A·B)·V with the first product's accumulators reused as the second's A operand (acc_to_a),
// as the output kernel does with its scores.
TEST_CASE("mma fragments: accumulators become the next A operand", "[unit][mma]") {
  std::mt19937 rng(11);
  const Tile a(16, 32, 8, rng), b(16, 32, 8, rng), v(16, 24, 8, rng);  // b stored [n][k]
  float s[2][32][4] = {};
  warp_product(s, a, false, 0, b, false, 0, 2, 0);  // s = a · bᵀ: 16 × 16
  float o[3][32][4] = {};
  for (int n = 0; n < 3; ++n) {
    u32 af[32][4], bf[32][2];
    for (int lane = 0; lane < 32; ++lane) {
      frag::acc_to_a(af[lane], s[0][lane], s[1][lane]);
      frag::load_b_t(bf[lane], v.bits.data(), v.ld, 0, 8 * n, lane);
    }
    emulate_mma(o[n], af, bf);
  }
  // The reference: S (rounded to bf16) times V.
  float S[16][16];
  for (int nb = 0; nb < 2; ++nb) {
    for (int lane = 0; lane < 32; ++lane) {
      for (int e = 0; e < 4; ++e) {
        S[frag::c_row(lane, e)][8 * nb + frag::c_col(lane, e)] = frag::round_bf16(s[nb][lane][e]);
      }
    }
  }
  double worst = 0;
  for (int n = 0; n < 3; ++n) {
    for (int lane = 0; lane < 32; ++lane) {
      for (int e = 0; e < 4; ++e) {
        const int m = frag::c_row(lane, e), col = 8 * n + frag::c_col(lane, e);
        double ref = 0;
        for (int k = 0; k < 16; ++k) ref += static_cast<double>(S[m][k]) * v.at(k, col);
        worst = std::max(worst, std::abs(o[n][lane][e] - ref));
      }
    }
  }
  CHECK(worst < 1e-5);
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).b16 per the PTX ISA: lanes 8m..8m+7 supply the row
// addresses of matrix m (8 contiguous 16-bit values each); lane l receives register m = matrix m's
// elements (l/4, 2(l%4)), (l/4, 2(l%4)+1), or with .trans (2(l%4), l/4), (2(l%4)+1, l/4).
void emulate_ldmatrix_x4(u32 (&out)[32][4], const Tile& t, const int (&offset)[32], bool trans) {
  for (int lane = 0; lane < 32; ++lane) REQUIRE(offset[lane] % 8 == 0);  // 16-byte rows
  for (int m = 0; m < 4; ++m) {
    u16 M[8][8];
    for (int r = 0; r < 8; ++r) {
      for (int c = 0; c < 8; ++c) M[r][c] = t.bits[static_cast<std::size_t>(offset[8 * m + r] + c)];
    }
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, q = 2 * (lane % 4);
      out[lane][m] = trans ? frag::pack(M[q][g], M[q + 1][g]) : frag::pack(M[g][q], M[g][q + 1]);
    }
  }
}

// The ldmatrix address maps the kernels use yield the registers of the (PTX-checked) plain loads.
TEST_CASE("mma fragments: ldmatrix addresses give the plain loads' registers", "[unit][mma]") {
  std::mt19937 rng(3);
  const Tile t(64, 56, 8, rng);  // pitch 64: 16-byte rows
  REQUIRE(t.ld % 8 == 0);
  for (int r0 : {0, 16, 32}) {
    for (int k0 : {0, 16, 32}) {
      INFO("r0 (or n0) = " << r0 << ", k0 = " << k0);
      int off[4][32];
      for (int lane = 0; lane < 32; ++lane) {
        off[0][lane] = frag::ldsm_a_offset(lane, t.ld, r0, k0);
        off[1][lane] = frag::ldsm_a_t_offset(lane, t.ld, r0, k0);
        off[2][lane] = frag::ldsm_b2_offset(lane, t.ld, k0, r0);
        off[3][lane] = frag::ldsm_b2_t_offset(lane, t.ld, k0, r0);
      }
      u32 got[4][32][4];
      for (int v = 0; v < 4; ++v) emulate_ldmatrix_x4(got[v], t, off[v], v % 2 == 1);
      int mismatches = 0;
      for (int lane = 0; lane < 32; ++lane) {
        u32 a[4], at[4], b0[2], b1[2], bt0[2], bt1[2];
        frag::load_a(a, t.bits.data(), t.ld, r0, k0, lane);
        frag::load_a_t(at, t.bits.data(), t.ld, r0, k0, lane);
        frag::load_b(b0, t.bits.data(), t.ld, k0, r0, lane);
        frag::load_b(b1, t.bits.data(), t.ld, k0, r0 + 8, lane);
        frag::load_b_t(bt0, t.bits.data(), t.ld, k0, r0, lane);
        frag::load_b_t(bt1, t.bits.data(), t.ld, k0, r0 + 8, lane);
        const u32 want_b[4] = {b0[0], b0[1], b1[0], b1[1]},
                  want_bt[4] = {bt0[0], bt0[1], bt1[0], bt1[1]};
        for (int r = 0; r < 4; ++r) {
          mismatches += got[0][lane][r] != a[r];
          mismatches += got[1][lane][r] != at[r];
          mismatches += got[2][lane][r] != want_b[r];
          mismatches += got[3][lane][r] != want_bt[r];
        }
      }
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("lsm tiles: chunk bounds cover every T, the last chunk partial", "[unit][mma]") {
  for (std::int64_t T : {1, 2, 63, 64, 65, 127, 128, 200, 65536}) {
    INFO("T = " << T);
    const std::int64_t nc = lm::chunk_count(T);
    std::int64_t covered = 0;
    for (std::int64_t c = 0; c < nc; ++c) {
      const int L = lm::chunk_len(T, c);
      CHECK(L >= 1);
      CHECK(L <= lm::kChunk);
      if (c + 1 < nc) CHECK(L == lm::kChunk);
      covered += L;
    }
    CHECK(covered == T);
  }
}

TEST_CASE("lsm tiles: each warp's block ranges hold every causal pair of its rows", "[unit][mma]") {
  for (int L : {1, 17, 63, 64}) {
    for (int w = 0; w < lm::kWarps; ++w) {
      for (int i = 16 * w; i < 16 * w + 16; ++i) {
        for (int j = 0; j < lm::kChunk; ++j) {
          if (!lm::causal_keep(i, j, L)) continue;
          CHECK(j / 8 < lm::score_col_blocks(w));  // the score column block is computed
          CHECK(j / 16 < lm::lower_k_blocks(w));   // dq, o: j ≤ i in the k range of rows i
        }
        // dk, dv of row j = i: every i' ≥ j lies in k blocks [upper_k_begin(w), 4).
        for (int i2 = i; i2 < lm::kChunk; ++i2) CHECK(i2 / 16 >= lm::upper_k_begin(w));
      }
    }
  }
  CHECK_FALSE(lm::causal_keep(3, 4, 64));
  CHECK_FALSE(lm::causal_keep(40, 2, 40));  // row outside a partial chunk
  CHECK(lm::decay_factor(-61.0f) == 0.0f);
  CHECK(lm::decay_factor(0.0f) == 1.0f);
}

}  // namespace
}  // namespace linmoe
