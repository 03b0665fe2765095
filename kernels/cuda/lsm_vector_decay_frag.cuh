// Block- and warp-level pieces of the tensor-core vector-decay LSM kernels
// (lsm_vector_decay_mma.cuh): tile staging, mma fragments built from a bf16 tile times a
// per-(token, channel) decay factor, and accumulator helpers. A per-channel decay cannot be pulled
// out of a product as a row scale, so the decayed operands (k ⊙ 2^(b_r − b), q ⊙ 2^(b − b_r), …)
// are formed while their fragments are loaded, straight from the staged tiles, and rounded to
// bf16 there. Written against kernels/cuda/mma_bf16.cuh only, so that the kernels also run on the
// emulated block of tests/unit/cuda_block_emulation.h (LINMOE_WARP_EMULATION).
#pragma once
#include <cstdint>

#include "kernels/cuda/lsm_vector_decay_tiles.cuh"
#include "kernels/cuda/mma_bf16.cuh"

namespace linmoe {
namespace cuda {
namespace lsm_vmma {

using frag::bf16_to_float;
using frag::c_col;
using frag::c_row;
using frag::mma_16816;
using frag::pack_floats;
using u16 = std::uint16_t;
using u32 = std::uint32_t;

// ---- staging (cp.async, rows ≥ n zero-filled) ----

// ROWS rows of COLS bf16 (row r at src + r·step) into a tile of pitch ld.
template <int ROWS, int COLS, int NT>
__device__ __forceinline__ void stage_bf16(u16* dst, int ld, const u16* src, i64 step, int n) {
  constexpr int V = COLS / 8;
  static_assert(ROWS * V % NT == 0, "whole pieces per thread");
  LSM_VD_UNROLL
  for (int i = 0; i < ROWS * V / NT; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + i * NT, r = idx / V, c = idx % V;
    const bool ok = r < n;
    frag::cp_async16(dst + r * ld + 8 * c, ok ? src + r * step + 8 * c : src, ok);
  }
}
// ROWS rows of COLS floats (row r at src + r·step) into a tile of pitch ld.
template <int ROWS, int COLS, int NT>
__device__ __forceinline__ void stage_f32(float* dst, int ld, const float* src, int step) {
  constexpr int V = COLS / 4;
  static_assert(ROWS * V % NT == 0, "whole pieces per thread");
  LSM_VD_UNROLL
  for (int i = 0; i < ROWS * V / NT; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + i * NT, r = idx / V, c = idx % V;
    frag::cp_async16(dst + r * ld + 4 * c, src + r * step + 4 * c, true);
  }
}

// ---- decayed fragments ----
// The tile holds rows of tokens and columns of channels; f(token, channel) is the factor applied
// before the value is rounded to bf16.

// A (16 × 16) at rows m0.., columns k0.. from a [m][k] tile: A[m][k] = tile[m][k]·f(m, k).
template <class F>
__device__ __forceinline__ void decayed_a(u32 (&a)[4], const u16* s, int ld, int m0, int k0,
                                          int lane, F f) {
  LSM_VD_UNROLL
  for (int r = 0; r < 4; ++r) {
    const int m = m0 + frag::a_row(lane, r), k = k0 + frag::a_col(lane, r, 0);
    const u32 p = frag::load_pair(s + m * ld + k);
    a[r] = pack_floats(bf16_to_float(frag::lo_half(p)) * f(m, k),
                       bf16_to_float(frag::hi_half(p)) * f(m, k + 1));
  }
}
// A from a [k][m] tile (A = tileᵀ): A[m][k] = tile[k][m]·f(k, m).
template <class F>
__device__ __forceinline__ void decayed_a_t(u32 (&a)[4], const u16* s, int ld, int m0, int k0,
                                            int lane, F f) {
  LSM_VD_UNROLL
  for (int r = 0; r < 4; ++r) {
    const int m = m0 + frag::a_row(lane, r), k = k0 + frag::a_col(lane, r, 0);
    a[r] = pack_floats(bf16_to_float(s[k * ld + m]) * f(k, m),
                       bf16_to_float(s[(k + 1) * ld + m]) * f(k + 1, m));
  }
}
// B (16 × 8) at rows k0.., columns n0.. from a [n][k] tile: B[k][n] = tile[n][k]·f(n, k).
template <class F>
__device__ __forceinline__ void decayed_b(u32 (&b)[2], const u16* s, int ld, int k0, int n0,
                                          int lane, F f) {
  const int n = n0 + frag::b_col(lane);
  LSM_VD_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int k = k0 + frag::b_row(lane, r, 0);
    const u32 p = frag::load_pair(s + n * ld + k);
    b[r] = pack_floats(bf16_to_float(frag::lo_half(p)) * f(n, k),
                       bf16_to_float(frag::hi_half(p)) * f(n, k + 1));
  }
}
// B from a [k][n] tile: B[k][n] = tile[k][n]·f(k, n).
template <class F>
__device__ __forceinline__ void decayed_b_t(u32 (&b)[2], const u16* s, int ld, int k0, int n0,
                                            int lane, F f) {
  const int n = n0 + frag::b_col(lane);
  LSM_VD_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int k = k0 + frag::b_row(lane, r, 0);
    b[r] = pack_floats(bf16_to_float(s[k * ld + n]) * f(k, n),
                       bf16_to_float(s[(k + 1) * ld + n]) * f(k + 1, n));
  }
}

// ---- accumulators ----

template <int NB>
__device__ __forceinline__ void zero(float (&c)[NB][4]) {
  LSM_VD_UNROLL
  for (int n = 0; n < NB; ++n) {
    LSM_VD_UNROLL
    for (int e = 0; e < 4; ++e) c[n][e] = 0.0f;
  }
}
// c[row][col] *= f(row, col) for a warp's 16 rows r0.. and the 8·NB columns c0...
template <int NB, class F>
__device__ __forceinline__ void scale_each(float (&c)[NB][4], int r0, int c0, int lane, F f) {
  LSM_VD_UNROLL
  for (int n = 0; n < NB; ++n) {
    LSM_VD_UNROLL
    for (int e = 0; e < 4; ++e) c[n][e] *= f(r0 + c_row(lane, e), c0 + 8 * n + c_col(lane, e));
  }
}
// c += A·B with A (16 rows r0..) through ldmatrix from tile `as` ([m][k], or [k][m] when kAT)
// and B (columns n0.., 8·NB of them) through ldmatrix from `bs` ([n][k], or [k][n] when kBT),
// k blocks [k_begin, k_end).
template <bool kAT, bool kBT, int NB>
__device__ __forceinline__ void warp_product(float (&c)[NB][4], const u16* as, int lda, int r0,
                                             const u16* bs, int ldb, int n0, int k_begin, int k_end,
                                             int lane) {
  static_assert(NB % 2 == 0, "B blocks go in pairs");
  for (int kk = k_begin; kk < k_end; ++kk) {
    u32 a[4];
    if constexpr (kAT) {
      frag::ldsm_a_t(a, as, lda, r0, 16 * kk, lane);
    } else {
      frag::ldsm_a(a, as, lda, r0, 16 * kk, lane);
    }
    LSM_VD_UNROLL
    for (int n = 0; n < NB; n += 2) {
      u32 b[4];
      if constexpr (kBT) {
        frag::ldsm_b2_t(b, bs, ldb, 16 * kk, n0 + 8 * n, lane);
      } else {
        frag::ldsm_b2(b, bs, ldb, 16 * kk, n0 + 8 * n, lane);
      }
      mma_16816(c[n], a, b[0], b[1]);
      mma_16816(c[n + 1], a, b[2], b[3]);
    }
  }
}
// A warp's 16 × 8·NB accumulators as bf16 rows (row r0 + i at row0 + i·step; rows ≥ L skipped).
template <int NB>
__device__ __forceinline__ void store_rows(const float (&c)[NB][4], u16* row0, i64 step, int r0,
                                           int L, int lane) {
  LSM_VD_UNROLL
  for (int n = 0; n < NB; ++n) {
    LSM_VD_UNROLL
    for (int e = 0; e < 4; e += 2) {
      const int r = r0 + c_row(lane, e);
      if (r < L) {
        *reinterpret_cast<u32*>(row0 + r * step + 8 * n + c_col(lane, e)) =
            pack_floats(c[n][e], c[n][e + 1]);
      }
    }
  }
}
// Eight bf16 (16 bytes) as floats.
__device__ __forceinline__ void unpack8(float (&f)[8], const uint4& v) {
  const u32 w[4] = {v.x, v.y, v.z, v.w};
  LSM_VD_UNROLL
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = bf16_to_float(frag::lo_half(w[i]));
    f[2 * i + 1] = bf16_to_float(frag::hi_half(w[i]));
  }
}
// Sum over the 4 lanes of a quad (one accumulator row's lanes).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

}  // namespace lsm_vmma
}  // namespace cuda
}  // namespace linmoe
