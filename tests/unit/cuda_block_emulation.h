// One CUDA thread block on the CPU, for running the tensor-core kernels of
// kernels/cuda/lsm_scalar_decay_mma.cuh in a host test (there is no GPU on the build machines).
// Every CUDA thread is a cooperative fiber (ucontext); __syncthreads and the warp-synchronous
// operations are barriers of the block or of the warp's 32 fibers, so the emulation is
// deterministic. mma.sync.m16n8k16 and ldmatrix are emulated from the PTX ISA's fragment
// definitions (written out independently of kernels/cuda/mma_bf16.cuh's maps), cp.async is a
// plain copy. What this cannot show: races that the hardware's scheduling would expose, memory
// ordering, and timing.
//
// Include before the kernel headers: it defines LINMOE_WARP_EMULATION, the CUDA keywords and
// builtins the kernels use, and declares the instruction wrappers mma_bf16.cuh then expects.
#pragma once
#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>

#define LINMOE_WARP_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __align__(n)
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 0, y = 0, z = 0;
};
struct uint4 {
  unsigned x, y, z, w;
};
struct float2 {
  float x, y;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) {
  return uint4{a, b, c, d};
}
inline float2 make_float2(float a, float b) {
  return float2{a, b};
}
template <class T>
T __ldg(const T* p) {
  return *p;
}

// The running thread's index (set by the scheduler on every switch) and the block's.
inline dim3 threadIdx, blockIdx, gridDim;

namespace linmoe::testing::emu {

struct Fiber {
  ucontext_t ctx{};
  std::vector<char> stack;
  bool done = false;
  int group = -1;  // barrier group waited on (warps 0..W−1, the block W), −1 when runnable
  long gen = 0;    // that group's generation when the wait began
  std::uint32_t x[12]{};  // what this thread deposits for a warp-wide operation
  const void* ptr = nullptr;
};

struct Block {
  int nt = 0;
  std::vector<Fiber> f;
  std::vector<int> arrived;
  std::vector<long> gen;
  ucontext_t sched{};
  int cur = 0;
  std::function<void()> body;
};
inline Block* block = nullptr;
inline bool high_first = false;  // the scheduling order (run_block)
// The kernels' dynamic shared memory (defined by the test); poisoned with NaN before each block
// so that reading what no thread of the block wrote shows.
inline unsigned char* shared_memory = nullptr;
inline std::size_t shared_bytes = 0;

// The calling fiber waits until all `size` members of `group` have arrived.
inline void wait(int group, int size) {
  Fiber& me = block->f[static_cast<std::size_t>(block->cur)];
  me.group = group;
  me.gen = block->gen[static_cast<std::size_t>(group)];
  if (++block->arrived[static_cast<std::size_t>(group)] == size) {
    block->arrived[static_cast<std::size_t>(group)] = 0;
    ++block->gen[static_cast<std::size_t>(group)];
  }
  swapcontext(&me.ctx, &block->sched);
}
inline void warp_sync() {
  wait(static_cast<int>(threadIdx.x / 32), 32);
}
inline Fiber& self() {
  return block->f[threadIdx.x];
}
inline Fiber& lane_of_warp(int lane) {
  return block->f[threadIdx.x / 32 * 32 + static_cast<unsigned>(lane)];
}

inline void trampoline() {
  block->body();
  block->f[static_cast<std::size_t>(block->cur)].done = true;
}

// Runs body() as `nt` threads of the block blockIdx (set by the caller); throws on a deadlock
// (threads waiting on a barrier that can no longer fill).
inline void run_block(int nt, std::function<void()> body) {
  Block b;
  b.nt = nt;
  b.f.resize(static_cast<std::size_t>(nt));
  const int warps = (nt + 31) / 32;
  b.arrived.assign(static_cast<std::size_t>(warps + 1), 0);
  b.gen.assign(static_cast<std::size_t>(warps + 1), 0);
  b.body = std::move(body);
  if (shared_memory) std::memset(shared_memory, 0xff, shared_bytes);
  block = &b;
  for (Fiber& f : b.f) {
    f.stack.resize(256 * 1024);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &b.sched;
    makecontext(&f.ctx, trampoline, 0);
  }
  // Resume the lowest- (or highest-) numbered runnable thread each time: each warp runs as far
  // ahead of the others as the barriers allow, which exposes a missing __syncthreads between a
  // warp's writes and another warp's reads in one direction or the other.
  for (;;) {
    int pick = -1;
    bool any = false;
    for (int i = 0; i < nt; ++i) {
      const int t = high_first ? nt - 1 - i : i;
      Fiber& f = b.f[static_cast<std::size_t>(t)];
      if (f.done) continue;
      any = true;
      if (f.group >= 0 && b.gen[static_cast<std::size_t>(f.group)] == f.gen) continue;
      pick = t;
      break;
    }
    if (!any) break;
    if (pick < 0) throw std::runtime_error("emulated block deadlocked at a barrier");
    Fiber& f = b.f[static_cast<std::size_t>(pick)];
    f.group = -1;
    b.cur = pick;
    threadIdx = dim3{static_cast<unsigned>(pick), 0, 0};
    swapcontext(&b.sched, &f.ctx);
  }
  block = nullptr;
}

// kernel() on every block of a grid.
inline void launch(dim3 grid, int threads, const std::function<void()>& kernel) {
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3{x, y, z};
        run_block(threads, kernel);
      }
    }
  }
}

// ---- the PTX ISA's m16n8k16 fragments (element i of a lane; two per 32-bit register) ----------
inline int a_row(int lane, int i) {
  return (i < 2 || (i >= 4 && i < 6)) ? lane / 4 : lane / 4 + 8;
}
inline int a_col(int lane, int i) {
  return (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}
inline int b_row(int lane, int i) {
  return (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0);
}
inline int c_row(int lane, int i) {
  return i < 2 ? lane / 4 : lane / 4 + 8;
}
inline int c_col(int lane, int i) {
  return (lane % 4) * 2 + (i & 1);
}
inline float bf16_value(std::uint32_t reg, int half) {
  const std::uint32_t u = half ? (reg & 0xffff0000u) : (reg << 16);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace linmoe::testing::emu

inline void __syncthreads() {
  using namespace linmoe::testing::emu;
  wait((block->nt + 31) / 32, block->nt);
}
inline float __shfl_up_sync(unsigned, float v, int off) {
  using namespace linmoe::testing::emu;
  std::memcpy(&self().x[0], &v, 4);
  warp_sync();
  const int lane = static_cast<int>(threadIdx.x % 32);
  float r = v;
  if (lane >= off) std::memcpy(&r, &lane_of_warp(lane - off).x[0], 4);
  warp_sync();
  return r;
}
inline float __shfl_xor_sync(unsigned, float v, int mask) {
  using namespace linmoe::testing::emu;
  std::memcpy(&self().x[0], &v, 4);
  warp_sync();
  float r;
  std::memcpy(&r, &lane_of_warp(static_cast<int>(threadIdx.x % 32) ^ mask).x[0], 4);
  warp_sync();
  return r;
}

namespace linmoe::cuda::frag {

// d = a·b + c for the warp, fp32 sums in k order.
inline void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
  using namespace linmoe::testing::emu;
  Fiber& me = self();
  for (int r = 0; r < 4; ++r) me.x[r] = a[r];
  me.x[4] = b[0], me.x[5] = b[1];
  warp_sync();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const Fiber& o = lane_of_warp(l);
    for (int i = 0; i < 8; ++i) A[a_row(l, i)][a_col(l, i)] = bf16_value(o.x[i / 2], i % 2);
    for (int i = 0; i < 4; ++i) B[b_row(l, i)][l / 4] = bf16_value(o.x[4 + i / 2], i % 2);
  }
  const int lane = static_cast<int>(threadIdx.x % 32);
  float d[4];
  for (int i = 0; i < 4; ++i) {
    float s = c[i];
    for (int k = 0; k < 16; ++k) s += A[c_row(lane, i)][k] * B[k][c_col(lane, i)];
    d[i] = s;
  }
  warp_sync();
  for (int i = 0; i < 4; ++i) c[i] = d[i];
}

// ldmatrix .x4 (.trans): lanes 8m..8m+7 address the 8 rows of matrix m.
inline void ldmatrix_any(std::uint32_t (&r)[4], const std::uint16_t* p, bool trans) {
  using namespace linmoe::testing::emu;
  if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0)
    throw std::runtime_error("ldmatrix row alignment");
  self().ptr = p;
  warp_sync();
  const int lane = static_cast<int>(threadIdx.x % 32), g = lane / 4, q = 2 * (lane % 4);
  for (int m = 0; m < 4; ++m) {
    auto at = [&](int row, int col) {
      return static_cast<std::uint32_t>(
          static_cast<const std::uint16_t*>(lane_of_warp(8 * m + row).ptr)[col]);
    };
    r[m] = trans ? (at(q, g) | at(q + 1, g) << 16) : (at(g, q) | at(g, q + 1) << 16);
  }
  warp_sync();
}
inline void ldmatrix_x4(std::uint32_t (&r)[4], const std::uint16_t* p) {
  ldmatrix_any(r, p, false);
}
inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], const std::uint16_t* p) {
  ldmatrix_any(r, p, true);
}
inline void cp_async16(void* dst, const void* src, bool valid) {
  if (valid) {
    std::memcpy(dst, src, 16);
  } else {
    std::memset(dst, 0, 16);
  }
}
inline void cp_async_wait_all() {}

}  // namespace linmoe::cuda::frag
