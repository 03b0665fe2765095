// Warp-level bf16 tensor-core products on mma.sync.m16n8k16 (row.col, fp32 accumulate): the
// lane → (row, column) maps of the A, B and C fragments (PTX ISA, "Matrix Fragments for
// mma.m16n8k16" with .bf16), bf16 packing, and fragment loads from shared-memory tiles in either
// orientation: plain loads (the layout's definition, and the host test's reference) and the
// ldmatrix address maps the kernels use. Everything but the PTX instructions is
// __host__ __device__ and compiles under g++, so that tests/unit/test_mma_fragments.cpp can
// emulate one warp's product and ldmatrix through these very functions on the CPU.
//
// A warp multiplies a 16×16 A (rows m, columns k) by a 16×8 B (rows k, columns n) into a 16×8 C.
// With gid = lane / 4 and tig = lane % 4, each lane holds
//   A: 4 registers of 2 bf16: register r, half h → row gid + 8·(r % 2), column 2·tig + h + 8·(r /
//   2) B: 2 registers of 2 bf16: register r, half h → row (k) 2·tig + h + 8·r, column (n) gid C: 4
//   floats: element e → row gid + 8·(e / 2), column 2·tig + e % 2
// ("half 0" is the low 16 bits: the lower k or column index.) The C layout of two neighbouring
// 8-column blocks is the A layout of one 16-column block, so a product's accumulator becomes the
// next product's A operand without a trip through shared memory (acc_to_a).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) && !defined(LINMOE_WARP_EMULATION)
#include <cuda_bf16.h>
#define LINMOE_HD __host__ __device__ __forceinline__
#else
#define LINMOE_HD inline
#endif

namespace linmoe {
namespace cuda {
namespace frag {

// ---- fragment maps ----------------------------------------------------------------------------
LINMOE_HD int a_row(int lane, int reg) {
  return lane / 4 + 8 * (reg % 2);
}
LINMOE_HD int a_col(int lane, int reg, int half) {
  return 2 * (lane % 4) + half + 8 * (reg / 2);
}
LINMOE_HD int b_row(int lane, int reg, int half) {
  return 2 * (lane % 4) + half + 8 * reg;
}
LINMOE_HD int b_col(int lane) {
  return lane / 4;
}
LINMOE_HD int c_row(int lane, int e) {
  return lane / 4 + 8 * (e / 2);
}
LINMOE_HD int c_col(int lane, int e) {
  return 2 * (lane % 4) + e % 2;
}

// ---- bf16 bits ----------------------------------------------------------------------------------
// Tiles hold bf16 as raw 16-bit patterns (uint16_t), so the same code runs on the host.
LINMOE_HD float bf16_to_float(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even (as __float2bfloat16_rn); NaN stays NaN.
LINMOE_HD std::uint16_t bf16_bits(float f) {
#ifdef __CUDA_ARCH__
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
#endif
}
LINMOE_HD float round_bf16(float f) {
  return bf16_to_float(bf16_bits(f));
}
// Two bf16 in one register: lo in the low half (the lower k or column index).
LINMOE_HD std::uint32_t pack(std::uint16_t lo, std::uint16_t hi) {
  return static_cast<std::uint32_t>(lo) | (static_cast<std::uint32_t>(hi) << 16);
}
LINMOE_HD std::uint32_t pack_floats(float lo, float hi) {
  return pack(bf16_bits(lo), bf16_bits(hi));
}
LINMOE_HD std::uint16_t lo_half(std::uint32_t r) {
  return static_cast<std::uint16_t>(r & 0xffffu);
}
LINMOE_HD std::uint16_t hi_half(std::uint32_t r) {
  return static_cast<std::uint16_t>(r >> 16);
}
// Two neighbouring 16-bit values (p 4-byte aligned) as one register.
LINMOE_HD std::uint32_t load_pair(const std::uint16_t* p) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const std::uint32_t*>(p);
#else
  return pack(p[0], p[1]);
#endif
}

// ---- fragment loads from a shared-memory tile s with row pitch ld (in elements) ---------------
// A (16 × 16 at rows r0.., columns k0..) from a tile stored [m][k]: A[m][k] = s[m·ld + k].
LINMOE_HD void load_a(std::uint32_t (&a)[4], const std::uint16_t* s, int ld, int r0, int k0,
                      int lane) {
  for (int r = 0; r < 4; ++r)
    a[r] = load_pair(s + (r0 + a_row(lane, r)) * ld + k0 + a_col(lane, r, 0));
}
// A from a tile stored [k][m] (A = tileᵀ): A[m][k] = s[k·ld + m].
LINMOE_HD void load_a_t(std::uint32_t (&a)[4], const std::uint16_t* s, int ld, int r0, int k0,
                        int lane) {
  for (int r = 0; r < 4; ++r) {
    const int m = r0 + a_row(lane, r);
    a[r] = pack(s[(k0 + a_col(lane, r, 0)) * ld + m], s[(k0 + a_col(lane, r, 1)) * ld + m]);
  }
}
// B (16 × 8 at rows k0.., columns n0..) from a tile stored [n][k] (B = tileᵀ, e.g. K in Q·Kᵀ):
// B[k][n] = s[n·ld + k].
LINMOE_HD void load_b(std::uint32_t (&b)[2], const std::uint16_t* s, int ld, int k0, int n0,
                      int lane) {
  for (int r = 0; r < 2; ++r)
    b[r] = load_pair(s + (n0 + b_col(lane)) * ld + k0 + b_row(lane, r, 0));
}
// B from a tile stored [k][n] (e.g. V in A·V): B[k][n] = s[k·ld + n].
LINMOE_HD void load_b_t(std::uint32_t (&b)[2], const std::uint16_t* s, int ld, int k0, int n0,
                        int lane) {
  const int n = n0 + b_col(lane);
  for (int r = 0; r < 2; ++r)
    b[r] = pack(s[(k0 + b_row(lane, r, 0)) * ld + n], s[(k0 + b_row(lane, r, 1)) * ld + n]);
}
// The A operand (16 × 16) made of two 16 × 8 accumulators: columns 0..7 from c0, 8..15 from c1,
// rounded to bf16.
LINMOE_HD void acc_to_a(std::uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_floats(c0[0], c0[1]);
  a[1] = pack_floats(c0[2], c0[3]);
  a[2] = pack_floats(c1[0], c1[1]);
  a[3] = pack_floats(c1[2], c1[3]);
}

// ---- the same loads through ldmatrix (x4: four 8 × 8 matrices of 16-bit values) ----------------
// Lane i supplies the address of row i % 8 of matrix i / 8 (each row 8 contiguous values, 16-byte
// aligned); lane l receives, of matrix m, register m = elements (l / 4, 2·(l % 4)) and
// (l / 4, 2·(l % 4) + 1), or with .trans (2·(l % 4), l / 4) and (2·(l % 4) + 1, l / 4). These
// are the element offsets (from the tile start) each lane supplies; the registers they yield are
// exactly load_a, load_a_t, and load_b / load_b_t for the two 8-column blocks n0 and n0 + 8
// (tests/unit/test_mma_fragments.cpp emulates ldmatrix to check it).
LINMOE_HD int ldsm_a_offset(int lane, int ld, int r0, int k0) {  // non-trans, [m][k] tile
  const int mat = lane / 8, row = lane % 8;
  return (r0 + row + 8 * (mat % 2)) * ld + k0 + 8 * (mat / 2);
}
LINMOE_HD int ldsm_a_t_offset(int lane, int ld, int r0, int k0) {  // .trans, [k][m] tile
  const int mat = lane / 8, row = lane % 8;
  return (k0 + row + 8 * (mat / 2)) * ld + r0 + 8 * (mat % 2);
}
LINMOE_HD int ldsm_b2_offset(int lane, int ld, int k0, int n0) {  // non-trans, [n][k] tile
  const int mat = lane / 8, row = lane % 8;
  return (n0 + row + 8 * (mat / 2)) * ld + k0 + 8 * (mat % 2);
}
LINMOE_HD int ldsm_b2_t_offset(int lane, int ld, int k0, int n0) {  // .trans, [k][n] tile
  const int mat = lane / 8, row = lane % 8;
  return (k0 + row + 8 * (mat % 2)) * ld + n0 + 8 * (mat / 2);
}

// ---- the instructions ---------------------------------------------------------------------------
// Under LINMOE_WARP_EMULATION (host tests) the including file has declared mma_16816,
// ldmatrix_x4, ldmatrix_x4_trans, cp_async16 and cp_async_wait_all itself, emulated per the PTX
// ISA, so that the kernels built on them run on the CPU.
#if defined(__CUDACC__) && !defined(LINMOE_WARP_EMULATION)
// c += a · b on the tensor cores (one 16×8×16 step, fp32 accumulation).
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4],
                                          const std::uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const std::uint16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const std::uint16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
// 16 bytes global → shared, asynchronously; zero-fills the destination when !valid (src must
// still be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
// Commits the issued copies and waits for all of them (this thread's; a barrier publishes them).
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}
#endif

#if defined(__CUDACC__) || defined(LINMOE_WARP_EMULATION)
// The same with B = (b0, b1).
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4],
                                          std::uint32_t b0, std::uint32_t b1) {
  const std::uint32_t b[2] = {b0, b1};
  mma_16816(c, a, b);
}
// load_a, load_a_t through ldmatrix.
__device__ __forceinline__ void ldsm_a(std::uint32_t (&a)[4], const std::uint16_t* s, int ld,
                                       int r0, int k0, int lane) {
  ldmatrix_x4(a, s + ldsm_a_offset(lane, ld, r0, k0));
}
__device__ __forceinline__ void ldsm_a_t(std::uint32_t (&a)[4], const std::uint16_t* s, int ld,
                                         int r0, int k0, int lane) {
  ldmatrix_x4_trans(a, s + ldsm_a_t_offset(lane, ld, r0, k0));
}
// load_b (b[0..1]: columns n0.., b[2..3]: n0 + 8..) and load_b_t, two blocks at once.
__device__ __forceinline__ void ldsm_b2(std::uint32_t (&b)[4], const std::uint16_t* s, int ld,
                                        int k0, int n0, int lane) {
  ldmatrix_x4(b, s + ldsm_b2_offset(lane, ld, k0, n0));
}
__device__ __forceinline__ void ldsm_b2_t(std::uint32_t (&b)[4], const std::uint16_t* s, int ld,
                                          int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, s + ldsm_b2_t_offset(lane, ld, k0, n0));
}
#endif

}  // namespace frag
}  // namespace cuda
}  // namespace linmoe
