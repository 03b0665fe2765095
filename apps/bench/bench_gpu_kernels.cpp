// Kernel benchmark of the CUDA backend (issues 8 and 9): every op family of kernels/ops.h at
// model-like shapes, forward and (where the op has one) backward, through the Backend interface.
//
//   bench_gpu_kernels [--json PATH] [--filter SUBSTR] [--iters N] [--dtype bf16|f32]
//                     [--peak-tflops 790] [--peak-f32-tflops 67] [--peak-gbs 3000]
//                     [--adamw-params 1e9] [--device 0] [--backend cuda|cpu]
//
// Without a CUDA device (or in a build without CUDA) it prints one line and exits 0. --backend
// cpu runs the harness on the CPU backend (f32, with --filter: the shapes are the GPU's), to
// check the harness itself. docs/BENCHMARKS.md says how to run it on the GPU machine.
//
// Timing: one warm-up call, one timed call that sizes the batch, then 5 batches of N calls
// (--iters N; default: enough calls for about 20 ms, 1 to 1000) between backend.synchronize()
// calls, host clock around each batch (launch gaps count; the queue stays full). Time = median
// batch time / N (min also printed). Inputs are random, never zeros. Ops that return a host value
// or validate on the host (moe_permute*, moe_unpermute*, moe_dispatch_plan) synchronise inside
// every call: their times include that.
//
// FLOPs and bytes per row (es = element size; "bytes" = each input read once, each output
// written once: the floor a kernel can reach; FLOPs only where matrix work dominates):
//   gemm             F = 2·M·N·K              B = (M·K + K·N + M·N)·es
//   experts_*        fwd F = 3·2·A·F·D        B = (2·A·D + 3·E·F·D + 6·A·F)·es
//                    bwd F = 6·2·A·F·D        B = (7·A·D + 9·E·F·D + 14·A·F)·es
//   rms_norm         fwd B = 2·N·D·es + D·es + 4N     bwd B = 3·N·D·es + 2·D·es + 4N
//   swiglu           fwd B = 3·N·F·es                 bwd B = 5·N·F·es
//   rope             fwd, bwd B = 2·B·T·H·d·es
//   embedding        fwd B = 2·N·D·es + 4N            bwd B = 3·N·D·es + 4N (rows read+written)
//   cross_entropy    fwd (stats) B = N·V·es + 12N     bwd B = 2·N·V·es + 12N
//   moe_router (f32) softmax fwd 2·N·E·4, bwd 3·N·E·4; topk N·E·4 + N·k·8; plan 8·N·k + 8·E
//   moe_permute      fwd 2·A·D·es + 4A; bwd A·D·es + 2·N·D·es + 4A;
//                    unpermute fwd A·D·es + N·D·es + 4A + N·k·es, bwd + A·D·es + N·k·es
//   adamw            B = 28·P (p, g, m, v read; p, m, v written; f32)
//   attention (causal; P = T(T+1)/2 visible pairs per head)
//                    fwd F = 4·B·Hq·d·P, B = B·T·d·es·(2Hq + 2Hkv) + 4·B·Hq·T
//                    bwd F = 10·B·Hq·d·P, B = B·T·d·es·(4Hq + 4Hkv) + 8·B·Hq·T
//   LSM, chunk C = 64, per token and head (every GEMM of the chunked algorithm once, masked
//   blocks counted in full, triangular solves ignored; x = one [B, T, H, d] tensor's bytes):
//     scalar/vector decay  fwd F = 4·C·d + 4·d²    bwd F = 10·C·d + 10·d²
//     delta rule           fwd F = 10·C·d + 6·d²   bwd F = 20·C·d + 12·d²
//     all                  fwd B = 4x + gates      bwd B = 7x + 2·gates (gates: log_decay, beta)
// Peaks: --peak-tflops (bf16 GEMM, measured 790-798 on this workplace's H100), --peak-gbs
// (3.0 TB/s device copy, read + write) and --peak-f32-tflops (the backend's f32 GEMM is plain
// fp32, never TF32: the datasheet's 67).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/memory.h"
#include "core/rng.h"
#include "kernels/ops.h"

#if LINMOE_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_device.h"
#endif

namespace {

using linmoe::Backend;
using linmoe::Buffer;
using linmoe::DType;
using linmoe::Shape;
using linmoe::Tensor;
using i64 = std::int64_t;

struct Options {
  std::string json, filter;
  int iters = 0, device = 0;  // iters 0: auto
  bool cpu = false;  // --backend cpu: plumbing check of the harness (with --filter and f32)
  bool dtype_given = false;
  DType dtype = DType::bf16;
  double peak_tflops = 790, peak_f32_tflops = 67, peak_gbs = 3000, adamw_params = 1e9;
};

struct Row {
  std::string op, pass, shape, dtype, note;
  double flops = 0, bytes = 0, us = 0, min_us = 0, peak_tflops = 0;
  int iters = 0;
  bool failed = false;
};

// Thrown by the fatal handler so that a failing case (a LINMOE_CHECK in a launcher, out of
// memory) prints its message and the benchmark goes on with the next case.
struct CaseFailed {
  int code;
};

// Owns a case's device tensors and fills them with random values.
class Arena {
 public:
  explicit Arena(Backend& be) : be_(be) {}
  Tensor alloc(DType dt, const Shape& s) {
    bufs_.emplace_back(
        be_.allocator(),
        std::max<std::size_t>(1, static_cast<std::size_t>(s.numel()) * linmoe::dtype_size(dt)),
        "bench");
    return bufs_.back().view(dt, s);
  }
  // Uniform in [lo, hi): a random block of up to 4M values made on the host, copied to the
  // device (converting to dt) and repeated along the tensor by device copies.
  Tensor uniform(DType dt, const Shape& s, double lo, double hi) {
    Tensor t = alloc(dt, s);
    const i64 n = t.numel(), block = std::min<i64>(n, i64{1} << 22);
    Buffer host(linmoe::host_allocator(), static_cast<std::size_t>(block) * 4, "bench host");
    Tensor h = host.view(DType::f32, Shape{block});
    linmoe::CounterRng rng(++seed_, "bench_gpu_kernels");
    float* p = h.ptr<float>();
    for (i64 i = 0; i < block; ++i) {
      p[i] = static_cast<float>(lo + (hi - lo) * rng.uniform(static_cast<std::uint64_t>(i)));
    }
    const Tensor flat = t.reshape(Shape{n});
    be_.copy(h, flat.slice(0, 0, block));
    for (i64 at = block; at < n; at += block) {
      const i64 len = std::min(block, n - at);
      be_.copy(flat.slice(0, 0, len), flat.slice(0, at, len));
    }
    return t;
  }
  // Random i32 in [lo, hi).
  Tensor ints(const Shape& s, i64 lo, i64 hi) {
    Tensor t = alloc(DType::i32, s);
    Buffer host(linmoe::host_allocator(), static_cast<std::size_t>(s.numel()) * 4, "bench host");
    Tensor h = host.view(DType::i32, s);
    linmoe::CounterRng rng(++seed_, "bench_gpu_kernels ids");
    for (i64 i = 0; i < s.numel(); ++i) {
      h.ptr<std::int32_t>()[i] =
          static_cast<std::int32_t>(lo + rng.bits(static_cast<std::uint64_t>(i)) % (hi - lo));
    }
    be_.copy(h, t);
    return t;
  }

 private:
  Backend& be_;
  std::vector<Buffer> bufs_;
  std::uint64_t seed_ = 0;
};

// One case: an op at one shape and dtype with the passes it times.
struct Case {
  std::string op, shape;
  DType dtype;
  std::vector<std::string> passes;
  std::function<void(class Runner&, Arena&, const Case&)> body;
};

std::string label(const std::string& op, const std::string& pass, const std::string& shape,
                  DType dt) {
  return op + " " + pass + " " + shape + " " + linmoe::dtype_name(dt);
}

class Runner {
 public:
  Runner(Backend& backend, const Options& o) : be(backend), opt_(o) {}
  Backend& be;

  // Times fn (one call of the pass) and records a row.
  void time(const Case& c, const std::string& pass, double flops, double bytes,
            const std::function<void()>& fn, const std::string& note = "") {
    if (!matches(label(c.op, pass, c.shape, c.dtype))) return;
    Row r{c.op, pass, c.shape, linmoe::dtype_name(c.dtype), note, flops, bytes};
    r.peak_tflops = c.dtype == DType::f32 ? opt_.peak_f32_tflops : opt_.peak_tflops;
    using clock = std::chrono::steady_clock;
    fn();  // warm-up: first launch, cuBLAS heuristics, workspace growth
    be.synchronize();
    auto w0 = clock::now();
    fn();
    be.synchronize();
    const double call_ms = std::chrono::duration<double, std::milli>(clock::now() - w0).count();
    // --iters calls per batch, or (auto) enough for about 20 ms, 1 to 1000.
    const int n =
        opt_.iters > 0 ? opt_.iters : std::max(1, std::min(1000, static_cast<int>(20.0 / call_ms)));
    std::vector<double> us;
    for (int rep = 0; rep < 5; ++rep) {
      be.synchronize();
      auto t0 = clock::now();
      for (int i = 0; i < n; ++i) fn();
      be.synchronize();
      us.push_back(std::chrono::duration<double, std::micro>(clock::now() - t0).count() / n);
    }
    std::sort(us.begin(), us.end());
    r.us = us[us.size() / 2];
    r.min_us = us.front();
    r.iters = n;
    print(r);
    rows.push_back(r);
  }
  void fail(const Case& c, const std::string& why) {
    Row r{c.op, "-", c.shape, linmoe::dtype_name(c.dtype), "FAILED: " + why};
    r.failed = true;
    print(r);
    rows.push_back(r);
  }
  void note(const std::string& s) {
    std::printf("  note: %s\n", s.c_str());
    notes.push_back(s);
  }
  bool matches(const std::string& l) const {
    return opt_.filter.empty() || l.find(opt_.filter) != std::string::npos;
  }
  void print(const Row& r) const {
    if (r.failed) {
      std::printf("%-22s %-13s %-44s %-5s %s\n", r.op.c_str(), r.pass.c_str(), r.shape.c_str(),
                  r.dtype.c_str(), r.note.c_str());
      std::fflush(stdout);
      return;
    }
    const double tflops = r.flops / (r.us * 1e6), gbs = r.bytes / (r.us * 1e3);
    std::printf("%-22s %-13s %-44s %-5s %10.1f %10.1f %8.1f %8.0f %6.1f%% %6.1f%%  %s\n",
                r.op.c_str(), r.pass.c_str(), r.shape.c_str(), r.dtype.c_str(), r.us, r.min_us,
                tflops, gbs, r.flops > 0 ? 100.0 * tflops / r.peak_tflops : 0.0,
                100.0 * gbs / opt_.peak_gbs, r.note.c_str());
    std::fflush(stdout);
  }
  std::vector<Row> rows;
  std::vector<std::string> notes;

 private:
  const Options& opt_;
};

double es(DType dt) {
  return static_cast<double>(linmoe::dtype_size(dt));
}

// ---- the case table -------------------------------------------------------------------------
// Model constants: A0.3B-2B (configs/a0.3b-2b.yaml) and issue 9's LSM shapes.
constexpr i64 kD = 1024;     // hidden size
constexpr i64 kF = 896;      // expert FFN size
constexpr i64 kE = 64;       // experts
constexpr int kTopK = 8;     // experts per token
constexpr i64 kV = 151936;   // vocabulary (Qwen2)
constexpr i64 kTok = 16384;  // tokens of a micro-batch (B·T = 16K)
constexpr int kChunk = 64;   // LSM chunk (config default)

std::string ll(i64 v) {
  return std::to_string(v);
}

void add_gemms(std::vector<Case>& cs, DType dt) {
  struct G {
    i64 M, N, K;
    const char* what;
  };
  const i64 rows = kTok * kTopK / kE;  // 2048 tokens per expert with even routing
  for (const G g : {G{4096, 4096, 4096, "square"}, G{rows, kF, kD, "expert w1/w3"},
                    G{rows, kD, kF, "expert w2"}, G{kTok, 3 * kD, kD, "fused qkv proj"}}) {
    cs.push_back({"gemm",
                  "M=" + ll(g.M) + " N=" + ll(g.N) + " K=" + ll(g.K) + " NT " + g.what,
                  dt,
                  {"fwd"},
                  [=](Runner& r, Arena& a, const Case& c) {
                    Tensor A = a.uniform(dt, Shape{g.M, g.K}, -1, 1);
                    Tensor B = a.uniform(dt, Shape{g.N, g.K}, -1, 1);
                    Tensor C = a.alloc(dt, Shape{g.M, g.N});
                    r.time(c, "fwd", 2.0 * g.M * g.N * g.K,
                           (g.M * g.K + g.N * g.K + g.M * g.N) * es(dt),
                           [&] { r.be.gemm(A, false, B, true, C, 1.0, 0.0); });
                  }});
  }
}

// The MoE layer's expert FFNs (SwiGLU: gate = x·W1ᵀ, up = x·W3ᵀ, h = silu(gate)·up, y = h·W2ᵀ)
// over A = N·k rows grouped by expert. Routing "even": A/E rows per expert; "skewed": expert e
// gets a share ∝ 1/(1 + e mod 16) and every 8th expert none (what a young router does).
std::vector<i64> expert_rows(i64 A, bool skewed) {
  std::vector<i64> rows(static_cast<std::size_t>(kE), A / kE);
  if (!skewed) return rows;
  double total = 0;
  for (i64 e = 0; e < kE; ++e) total += e % 8 == 7 ? 0.0 : 1.0 / static_cast<double>(1 + e % 16);
  i64 given = 0;
  for (i64 e = 0; e < kE; ++e) {
    const double w = e % 8 == 7 ? 0.0 : 1.0 / static_cast<double>(1 + e % 16);
    rows[static_cast<std::size_t>(e)] = static_cast<i64>(static_cast<double>(A) * w / total);
    given += rows[static_cast<std::size_t>(e)];
  }
  rows[0] += A - given;
  return rows;
}

// One MoE layer's expert tensors: x, dy [A, D]; gate, up, h and their gradients [A, F];
// weights and their gradients [E, F, D] (w2: [E, D, F]).
struct Experts {
  Experts(Arena& a, DType dt, i64 A)
      : x(a.uniform(dt, Shape{A, kD}, -1, 1)),
        dy(a.uniform(dt, Shape{A, kD}, -1, 1)),
        w1(a.uniform(dt, Shape{kE, kF, kD}, -0.05, 0.05)),
        w3(a.uniform(dt, Shape{kE, kF, kD}, -0.05, 0.05)),
        w2(a.uniform(dt, Shape{kE, kD, kF}, -0.05, 0.05)),
        g1(a.uniform(dt, Shape{kE, kF, kD}, -0.01, 0.01)),
        g3(a.uniform(dt, Shape{kE, kF, kD}, -0.01, 0.01)),
        g2(a.uniform(dt, Shape{kE, kD, kF}, -0.01, 0.01)),
        gate(a.alloc(dt, Shape{A, kF})),
        up(a.alloc(dt, Shape{A, kF})),
        h(a.alloc(dt, Shape{A, kF})),
        dh(a.alloc(dt, Shape{A, kF})),
        dgate(a.alloc(dt, Shape{A, kF})),
        dup(a.alloc(dt, Shape{A, kF})),
        y(a.alloc(dt, Shape{A, kD})),
        dx(a.alloc(dt, Shape{A, kD})) {}
  Tensor x, dy, w1, w3, w2, g1, g3, g2, gate, up, h, dh, dgate, dup, y, dx;
};

// The per-expert loop layers/moe.cpp ran before the grouped GEMM: cuBLAS GEMMs per expert.
void experts_loop_forward(Backend& be, const Experts& t, const std::vector<i64>& rows) {
  i64 at = 0;
  for (i64 e = 0; e < kE; ++e) {
    const i64 n = rows[static_cast<std::size_t>(e)];
    if (n == 0) continue;
    const Tensor x = t.x.slice(0, at, n), g = t.gate.slice(0, at, n), u = t.up.slice(0, at, n);
    const Tensor h = t.h.slice(0, at, n);
    be.gemm(x, false, t.w1.select(0, e), true, g, 1.0, 0.0);
    be.gemm(x, false, t.w3.select(0, e), true, u, 1.0, 0.0);
    be.swiglu_forward(g, u, h);
    be.gemm(h, false, t.w2.select(0, e), true, t.y.slice(0, at, n), 1.0, 0.0);
    at += n;
  }
}
void experts_loop_backward(Backend& be, const Experts& t, const std::vector<i64>& rows) {
  i64 at = 0;
  for (i64 e = 0; e < kE; ++e) {
    const i64 n = rows[static_cast<std::size_t>(e)];
    if (n == 0) continue;
    auto s = [&](const Tensor& v) { return v.slice(0, at, n); };
    be.swiglu_forward(s(t.gate), s(t.up), s(t.h));
    be.gemm(s(t.dy), false, t.w2.select(0, e), false, s(t.dh), 1.0, 0.0);
    be.gemm(s(t.dy), true, s(t.h), false, t.g2.select(0, e), 1.0, 1.0);
    be.swiglu_backward(s(t.gate), s(t.up), s(t.dh), s(t.dgate), s(t.dup));
    be.gemm(s(t.dgate), false, t.w1.select(0, e), false, s(t.dx), 1.0, 0.0);
    be.gemm(s(t.dup), false, t.w3.select(0, e), false, s(t.dx), 1.0, 1.0);
    be.gemm(s(t.dgate), true, s(t.x), false, t.g1.select(0, e), 1.0, 1.0);
    be.gemm(s(t.dup), true, s(t.x), false, t.g3.select(0, e), 1.0, 1.0);
    at += n;
  }
}

// What layers/moe.cpp does now: one grouped GEMM per projection, SwiGLU on all rows at once.
void experts_grouped_forward(Backend& be, const Experts& t, const std::vector<i64>& rows) {
  be.grouped_gemm(t.x, t.w1, true, rows, t.gate, 1.0, 0.0);
  be.grouped_gemm(t.x, t.w3, true, rows, t.up, 1.0, 0.0);
  be.swiglu_forward(t.gate, t.up, t.h);
  be.grouped_gemm(t.h, t.w2, true, rows, t.y, 1.0, 0.0);
}
void experts_grouped_backward(Backend& be, const Experts& t, const std::vector<i64>& rows) {
  be.swiglu_forward(t.gate, t.up, t.h);
  be.grouped_gemm(t.dy, t.w2, false, rows, t.dh, 1.0, 0.0);
  be.grouped_gemm_wgrad(t.dy, t.h, rows, t.g2, 1.0, 1.0);
  be.swiglu_backward(t.gate, t.up, t.dh, t.dgate, t.dup);
  be.grouped_gemm(t.dgate, t.w1, false, rows, t.dx, 1.0, 0.0);
  be.grouped_gemm(t.dup, t.w3, false, rows, t.dx, 1.0, 1.0);
  be.grouped_gemm_wgrad(t.dgate, t.x, rows, t.g1, 1.0, 1.0);
  be.grouped_gemm_wgrad(t.dup, t.x, rows, t.g3, 1.0, 1.0);
}

void add_experts(std::vector<Case>& cs, DType dt) {
  const i64 A = kTok * kTopK, n = A / kE;
  // fwd: F = 3 GEMMs · 2·A·F·D; B = x, y, 3 weights, gate/up written, gate/up/h read, h written.
  // bwd: F = 6 GEMMs; B = the sequence's traffic: 7·A·D + 14·A·F + 9·E·F·D (weight gradients
  // read and written).
  const double fwd_flops = 3 * 2.0 * A * kF * kD, bwd_flops = 2 * fwd_flops;
  const double fwd_bytes = (2.0 * A * kD + 3.0 * kE * kF * kD + 6.0 * A * kF) * es(dt);
  const double bwd_bytes = (7.0 * A * kD + 9.0 * kE * kF * kD + 14.0 * A * kF) * es(dt);
  for (const bool skewed : {false, true}) {
    const std::string shape = "E=" + ll(kE) +
                              (skewed ? " skewed rows, 8 empty" : " rows/expert=" + ll(n)) +
                              " D=" + ll(kD) + " F=" + ll(kF);
    const std::vector<i64> rows = expert_rows(A, skewed);
    cs.push_back(
        {"experts_loop", shape, dt, {"fwd", "bwd"}, [=](Runner& r, Arena& a, const Case& c) {
           const Experts t(a, dt, A);
           r.time(
               c, "fwd", fwd_flops, fwd_bytes, [&] { experts_loop_forward(r.be, t, rows); },
               "a loop of cuBLAS GEMMs per expert (layers/moe.cpp before issue 8)");
           r.time(c, "bwd", bwd_flops, bwd_bytes, [&] { experts_loop_backward(r.be, t, rows); });
         }});
    cs.push_back(
        {"experts_grouped", shape, dt, {"fwd", "bwd"}, [=](Runner& r, Arena& a, const Case& c) {
           const Experts t(a, dt, A);
           r.time(
               c, "fwd", fwd_flops, fwd_bytes, [&] { experts_grouped_forward(r.be, t, rows); },
               "one grouped GEMM per projection (layers/moe.cpp)");
           r.time(c, "bwd", bwd_flops, bwd_bytes, [&] { experts_grouped_backward(r.be, t, rows); });
         }});
  }
  const std::string even =
      "E=" + ll(kE) + " rows/expert=" + ll(n) + " D=" + ll(kD) + " F=" + ll(kF);
  cs.push_back({"experts_batched", even, dt, {"fwd"}, [=](Runner& r, Arena& a, const Case& c) {
                  Tensor x = a.uniform(dt, Shape{kE, n, kD}, -1, 1);
                  Tensor w1 = a.uniform(dt, Shape{kE, kF, kD}, -0.05, 0.05);
                  Tensor w3 = a.uniform(dt, Shape{kE, kF, kD}, -0.05, 0.05);
                  Tensor w2 = a.uniform(dt, Shape{kE, kD, kF}, -0.05, 0.05);
                  Tensor g = a.alloc(dt, Shape{kE, n, kF}), u = a.alloc(dt, Shape{kE, n, kF});
                  Tensor h = a.alloc(dt, Shape{kE, n, kF}), y = a.alloc(dt, Shape{kE, n, kD});
                  r.time(
                      c, "fwd", fwd_flops, fwd_bytes,
                      [&] {
                        r.be.gemm(x, false, w1, true, g, 1.0, 0.0);
                        r.be.gemm(x, false, w3, true, u, 1.0, 0.0);
                        r.be.swiglu_forward(g.reshape(Shape{A, kF}), u.reshape(Shape{A, kF}),
                                            h.reshape(Shape{A, kF}));
                        r.be.gemm(h, false, w2, true, y, 1.0, 0.0);
                      },
                      "strided-batched GEMM, equal rows per expert: the bound for the grouped one");
                }});
}

void add_pointwise(std::vector<Case>& cs, DType dt) {
  {  // RMSNorm over N = 64K tokens (the tensors exceed the 50 MB L2)
    const i64 N = 4 * kTok;
    cs.push_back({"rms_norm",
                  "N=" + ll(N) + " D=" + ll(kD),
                  dt,
                  {"fwd", "bwd"},
                  [=](Runner& r, Arena& a, const Case& c) {
                    Tensor x = a.uniform(dt, Shape{N, kD}, -2, 2);
                    Tensor w = a.uniform(dt, Shape{kD}, 0.5, 1.5);
                    Tensor y = a.alloc(dt, Shape{N, kD}), dx = a.alloc(dt, Shape{N, kD});
                    Tensor rstd = a.alloc(DType::f32, Shape{N});
                    Tensor dy = a.uniform(dt, Shape{N, kD}, -1, 1);
                    Tensor dw = a.uniform(dt, Shape{kD}, 0, 0.01);
                    r.time(c, "fwd", 0, 2.0 * N * kD * es(dt) + kD * es(dt) + 4.0 * N,
                           [&] { r.be.rms_norm_forward(x, w, 1e-6, y, rstd); });
                    r.time(c, "bwd", 0, 3.0 * N * kD * es(dt) + 2.0 * kD * es(dt) + 4.0 * N,
                           [&] { r.be.rms_norm_backward(dy, x, w, rstd, dx, dw); });
                  }});
  }
  {  // SwiGLU on the expert rows: A = N·k = 128K rows of F
    const i64 N = kTok * kTopK;
    cs.push_back({"swiglu",
                  "N=" + ll(N) + " F=" + ll(kF),
                  dt,
                  {"fwd", "bwd"},
                  [=](Runner& r, Arena& a, const Case& c) {
                    Tensor g = a.uniform(dt, Shape{N, kF}, -3, 3);
                    Tensor u = a.uniform(dt, Shape{N, kF}, -3, 3);
                    Tensor o = a.alloc(dt, Shape{N, kF}), dout = a.uniform(dt, Shape{N, kF}, -1, 1);
                    Tensor dg = a.alloc(dt, Shape{N, kF}), du = a.alloc(dt, Shape{N, kF});
                    r.time(c, "fwd", 0, 3.0 * N * kF * es(dt),
                           [&] { r.be.swiglu_forward(g, u, o); });
                    r.time(c, "bwd", 0, 5.0 * N * kF * es(dt),
                           [&] { r.be.swiglu_backward(g, u, dout, dg, du); });
                  }});
  }
  {  // RoPE on q: B=8, T=2048, H=16, d=128
    const i64 B = 8, T = 2048, H = 16, d = 128;
    cs.push_back({"rope",
                  "B=8 T=2048 H=16 d=128",
                  dt,
                  {"fwd", "bwd"},
                  [=](Runner& r, Arena& a, const Case& c) {
                    Tensor x = a.uniform(dt, Shape{B, T, H, d}, -1, 1);
                    Tensor y = a.alloc(dt, Shape{B, T, H, d});
                    const double bytes = 2.0 * B * T * H * d * es(dt);
                    r.time(c, "fwd", 0, bytes, [&] { r.be.rope_forward(x, y, 10000.0, 0); });
                    r.time(c, "bwd", 0, bytes, [&] { r.be.rope_backward(y, x, 10000.0, 0); });
                  }});
  }
  {  // Embedding: N = 16K ids into the [V, D] table
    cs.push_back({"embedding",
                  "N=" + ll(kTok) + " V=" + ll(kV) + " D=" + ll(kD),
                  dt,
                  {"fwd", "bwd"},
                  [=](Runner& r, Arena& a, const Case& c) {
                    Tensor ids = a.ints(Shape{kTok}, 0, kV);
                    Tensor table = a.uniform(dt, Shape{kV, kD}, -0.02, 0.02);
                    Tensor out = a.alloc(dt, Shape{kTok, kD});
                    Tensor dout = a.uniform(dt, Shape{kTok, kD}, -1, 1);
                    Tensor dtable = a.uniform(dt, Shape{kV, kD}, -0.01, 0.01);
                    r.time(c, "fwd", 0, 2.0 * kTok * kD * es(dt) + 4.0 * kTok,
                           [&] { r.be.embedding_forward(ids, table, out, 0); });
                    r.time(
                        c, "bwd", 0, 3.0 * kTok * kD * es(dt) + 4.0 * kTok,
                        [&] { r.be.embedding_backward(ids, dout, dtable, 0); },
                        "dtable accumulates: touched rows read + written");
                  }});
  }
  // Cross-entropy over the vocabulary split in tp blocks (this rank holds ids [0, V/tp)).
  for (const i64 tp : {1, 8}) {
    const i64 Vl = kV / tp;
    cs.push_back({"cross_entropy",
                  "N=" + ll(kTok) + " V/tp=" + ll(Vl) + " (tp=" + ll(tp) + ")",
                  dt,
                  {"fwd", "bwd"},
                  [=](Runner& r, Arena& a, const Case& c) {
                    Tensor logits = a.uniform(dt, Shape{kTok, Vl}, -4, 4);
                    Tensor targets = a.ints(Shape{kTok}, 0, kV);
                    Tensor lse = a.alloc(DType::f32, Shape{kTok});
                    Tensor tl = a.alloc(DType::f32, Shape{kTok});
                    Tensor dloss = a.uniform(DType::f32, Shape{kTok}, 1e-5, 1e-4);
                    Tensor dlogits = a.alloc(dt, Shape{kTok, Vl});
                    r.time(c, "fwd", 0, kTok * Vl * es(dt) + 12.0 * kTok,
                           [&] { r.be.cross_entropy_stats(logits, targets, 0, lse, tl); });
                    r.time(c, "bwd", 0, 2.0 * kTok * Vl * es(dt) + 12.0 * kTok, [&] {
                      r.be.cross_entropy_backward(logits, targets, 0, lse, dloss, dlogits);
                    });
                  }});
  }
}

// Router and permutation: N = 16K tokens, E = 64 experts, top-8. The router runs in f32 (the
// stat dtype) whatever the model dtype; the permutation moves rows of the model dtype.
void add_moe(std::vector<Case>& cs, DType dt, bool with_router) {
  const i64 N = kTok, k = kTopK, A = N * k;
  if (with_router) {
    cs.push_back(
        {"moe_router",
         "N=" + ll(N) + " E=" + ll(kE) + " k=" + ll(k),
         DType::f32,
         {"softmax_fwd", "softmax_bwd", "topk", "dispatch_plan"},
         [=](Runner& r, Arena& a, const Case& c) {
           Tensor logits = a.uniform(DType::f32, Shape{N, kE}, -2, 2);
           Tensor probs = a.alloc(DType::f32, Shape{N, kE});
           Tensor dprobs = a.uniform(DType::f32, Shape{N, kE}, -1, 1);
           Tensor dlogits = a.alloc(DType::f32, Shape{N, kE});
           Tensor ids = a.alloc(DType::i32, Shape{N, k}), w = a.alloc(DType::f32, Shape{N, k});
           Tensor order = a.alloc(DType::i32, Shape{A}), counts = a.alloc(DType::i64, Shape{kE});
           r.be.softmax_forward(logits, probs);
           r.be.moe_topk(probs, k, true, ids, w);
           r.time(c, "softmax_fwd", 0, 2.0 * N * kE * 4,
                  [&] { r.be.softmax_forward(logits, probs); });
           r.time(c, "softmax_bwd", 0, 3.0 * N * kE * 4,
                  [&] { r.be.softmax_backward(probs, dprobs, dlogits); });
           r.time(c, "topk", 0, N * kE * 4.0 + N * k * 8.0,
                  [&] { r.be.moe_topk(probs, k, true, ids, w); });
           r.time(
               c, "dispatch_plan", 0, N * k * 4.0 * 2 + kE * 8.0,
               [&] { r.be.moe_dispatch_plan(ids, Tensor{}, static_cast<int>(kE), order, counts); },
               "returns A to the host: synchronises");
         }});
  }
  cs.push_back(
      {"moe_permute",
       "N=" + ll(N) + " k=" + ll(k) + " A=" + ll(A) + " D=" + ll(kD),
       dt,
       {"fwd", "bwd", "unpermute_fwd", "unpermute_bwd"},
       [=](Runner& r, Arena& a, const Case& c) {
         // A real plan: random router probabilities, top-k, dispatch plan (no drops: A = N·k).
         Tensor logits = a.uniform(DType::f32, Shape{N, kE}, -2, 2);
         Tensor probs = a.alloc(DType::f32, Shape{N, kE});
         Tensor ids = a.alloc(DType::i32, Shape{N, k}), w32 = a.alloc(DType::f32, Shape{N, k});
         Tensor order = a.alloc(DType::i32, Shape{A}), counts = a.alloc(DType::i64, Shape{kE});
         r.be.softmax_forward(logits, probs);
         r.be.moe_topk(probs, k, true, ids, w32);
         const i64 kept =
             r.be.moe_dispatch_plan(ids, Tensor{}, static_cast<int>(kE), order, counts);
         LINMOE_CHECK(kept == A, "moe_permute bench: plan kept ", kept, " of ", A);
         Tensor w = a.alloc(dt, Shape{N, k});
         r.be.copy(w32, w);
         Tensor x = a.uniform(dt, Shape{N, kD}, -1, 1), xp = a.alloc(dt, Shape{A, kD});
         Tensor dx = a.uniform(dt, Shape{N, kD}, -1, 1), dxp = a.uniform(dt, Shape{A, kD}, -1, 1);
         Tensor out = a.alloc(dt, Shape{N, kD}), dy = a.alloc(dt, Shape{A, kD});
         Tensor dw = a.alloc(dt, Shape{N, k});
         const double rowsA = A * kD * es(dt), rowsN = N * kD * es(dt);
         const char* sync = "validates order on the host: synchronises";
         r.time(
             c, "fwd", 0, 2 * rowsA + 4.0 * A, [&] { r.be.moe_permute(x, order, k, xp); }, sync);
         r.time(
             c, "bwd", 0, rowsA + 2 * rowsN + 4.0 * A,
             [&] { r.be.moe_permute_backward(dxp, order, k, dx); }, sync);
         r.time(
             c, "unpermute_fwd", 0, rowsA + rowsN + 4.0 * A + N * k * es(dt),
             [&] { r.be.moe_unpermute(xp, order, w, out, false); }, sync);
         r.time(
             c, "unpermute_bwd", 0, 2 * rowsA + rowsN + 4.0 * A + 2.0 * N * k * es(dt),
             [&] { r.be.moe_unpermute_backward(out, xp, order, w, dy, dw); }, sync);
       }});
}

void add_adamw(std::vector<Case>& cs, double params) {
  const i64 P = static_cast<i64>(params);
  cs.push_back({"adamw",
                "P=" + ll(P) + " (p, g, m, v f32)",
                DType::f32,
                {"update"},
                [=](Runner& r, Arena& a, const Case& c) {
                  Tensor p = a.uniform(DType::f32, Shape{P}, -0.02, 0.02);
                  Tensor g = a.uniform(DType::f32, Shape{P}, -1e-3, 1e-3);
                  Tensor m = a.uniform(DType::f32, Shape{P}, -1e-4, 1e-4);
                  Tensor v = a.uniform(DType::f32, Shape{P}, 1e-9, 1e-8);
                  std::int64_t step = 100;
                  r.time(c, "update", 0, 28.0 * P, [&] {
                    r.be.adamw_update(p, g, m, v, 3e-4, 0.9, 0.95, 1e-8, 0.1, ++step);
                  });
                }});
}

// Causal GQA attention: Hq = 16, Hkv = 4, d = 128.
void add_attention(std::vector<Case>& cs, DType dt) {
  const i64 Hq = 16, Hkv = 4, d = 128;
  struct BT {
    i64 B, T;
  };
  for (const BT bt : {BT{8, 2048}, BT{2, 8192}, BT{1, 16384}, BT{1, 8192}, BT{1, 32768}}) {
    const i64 B = bt.B, T = bt.T;
    cs.push_back(
        {"attention",
         "B=" + ll(B) + " T=" + ll(T) + " Hq=16 Hkv=4 d=128 causal",
         dt,
         {"fwd", "bwd", "fwd+bwd"},
         [=](Runner& r, Arena& a, const Case& c) {
           Tensor q = a.uniform(dt, Shape{B, T, Hq, d}, -1, 1);
           Tensor k = a.uniform(dt, Shape{B, T, Hkv, d}, -1, 1);
           Tensor v = a.uniform(dt, Shape{B, T, Hkv, d}, -1, 1);
           Tensor o = a.alloc(dt, Shape{B, T, Hq, d}), lse = a.alloc(DType::f32, Shape{B, Hq, T});
           Tensor d_o = a.uniform(dt, Shape{B, T, Hq, d}, -1, 1);
           Tensor dq = a.alloc(dt, Shape{B, T, Hq, d});
           Tensor dk = a.alloc(dt, Shape{B, T, Hkv, d}), dv = a.alloc(dt, Shape{B, T, Hkv, d});
           const double scale = 1.0 / std::sqrt(static_cast<double>(d));
           const double pairs = 0.5 * static_cast<double>(T) * static_cast<double>(T + 1);
           const double ff = 4.0 * B * Hq * d * pairs, fb = 10.0 * B * Hq * d * pairs;
           const double tok = static_cast<double>(B * T) * d * es(dt);
           const double bf = tok * (2 * Hq + 2 * Hkv) + 4.0 * B * Hq * T;
           const double bb = tok * (4 * Hq + 4 * Hkv) + 8.0 * B * Hq * T;
           auto fwd = [&] { r.be.attention_forward(q, k, v, scale, 0, o, lse); };
           auto bwd = [&] { r.be.attention_backward(q, k, v, o, lse, d_o, scale, 0, dq, dk, dv); };
           fwd();
           r.time(c, "fwd", ff, bf, fwd);
           r.time(c, "bwd", fb, bb, bwd);
           r.time(c, "fwd+bwd", ff + fb, bf + bb, [&] {
             fwd();
             bwd();
           });
         }});
  }
}

// The LSM families at issue 9's shapes: B·T = 16K (B=8, T=2048) and 64K (B=8, T=8192) tokens,
// H = 8 and 16, Dk = Dv = 128, chunk 64, no initial or final state.
enum class Lsm { scalar, vector, delta, gated_delta };

void add_lsm(std::vector<Case>& cs, DType dt) {
  const i64 d = 128;
  struct F {
    Lsm kind;
    const char* op;
    const char* fla;
  };
  for (const F f : {F{Lsm::scalar, "lsm_scalar_decay", "fla simple_gla / retention"},
                    F{Lsm::vector, "lsm_vector_decay", "fla chunk_gla"},
                    F{Lsm::delta, "lsm_delta_rule", "fla chunk_delta_rule"},
                    F{Lsm::gated_delta, "lsm_gated_delta_rule", "fla chunk_gated_delta_rule"}}) {
    for (const i64 T : {i64{2048}, i64{8192}}) {
      for (const i64 H : {i64{8}, i64{16}}) {
        const i64 B = 8;
        cs.push_back(
            {f.op,
             "B=" + ll(B) + " T=" + ll(T) + " H=" + ll(H) + " d=128",
             dt,
             {"fwd", "bwd", "fwd+bwd"},
             [=](Runner& r, Arena& a, const Case& c) {
               const Shape qs{B, T, H, d}, hs{B, T, H};
               const bool delta = f.kind == Lsm::delta || f.kind == Lsm::gated_delta;
               Tensor q, k;
               if (delta) {  // the caller L2-normalises q and k
                 q = a.alloc(dt, qs), k = a.alloc(dt, qs);
                 Tensor inv = a.alloc(DType::f32, Shape{B * T * H});
                 for (const Tensor& t : {q, k}) {
                   Tensor raw = a.uniform(dt, qs, -1, 1);
                   r.be.l2_norm_forward(raw.reshape(Shape{B * T * H, d}), 1e-6,
                                        t.reshape(Shape{B * T * H, d}), inv);
                 }
               } else {
                 q = a.uniform(dt, qs, -1, 1), k = a.uniform(dt, qs, -1, 1);
               }
               Tensor v = a.uniform(dt, qs, -1, 1), o = a.alloc(dt, qs);
               Tensor d_o = a.uniform(dt, qs, -1, 1);
               Tensor dq = a.alloc(dt, qs), dk = a.alloc(dt, qs), dv = a.alloc(dt, qs);
               Tensor g, dg, beta, dbeta;
               if (f.kind == Lsm::vector) {
                 g = a.uniform(dt, qs, -0.1, -0.001), dg = a.alloc(dt, qs);
               } else if (f.kind != Lsm::delta) {
                 g = a.uniform(dt, hs, -0.1, -0.001), dg = a.alloc(dt, hs);
               }
               if (delta) beta = a.uniform(dt, hs, 0.1, 0.9), dbeta = a.alloc(dt, hs);
               const double scale = 1.0 / std::sqrt(static_cast<double>(d));
               const double th = static_cast<double>(B * T * H), C = kChunk;
               const double ff = th * (delta ? 10 * C * d + 6.0 * d * d : 4 * C * d + 4.0 * d * d);
               const double fb =
                   th * (delta ? 20 * C * d + 12.0 * d * d : 10 * C * d + 10.0 * d * d);
               const double x = th * d * es(dt);  // one [B, T, H, d] tensor
               const double gates = (g.data ? static_cast<double>(g.numel()) : 0.0) * es(dt) +
                                    (delta ? th * es(dt) : 0.0);
               const double bf = 4 * x + gates, bb = 7 * x + 2 * gates;
               std::function<void()> fwd, bwd;
               switch (f.kind) {
                 case Lsm::scalar:
                   fwd = [&] {
                     r.be.lsm_scalar_decay_forward(q, k, v, g, scale, kChunk, {}, o, {});
                   };
                   bwd = [&] {
                     r.be.lsm_scalar_decay_backward(q, k, v, g, scale, kChunk, {}, d_o, {}, dq, dk,
                                                    dv, dg, {});
                   };
                   break;
                 case Lsm::vector:
                   fwd = [&] {
                     r.be.lsm_vector_decay_forward(q, k, v, g, scale, kChunk, {}, o, {});
                   };
                   bwd = [&] {
                     r.be.lsm_vector_decay_backward(q, k, v, g, scale, kChunk, {}, d_o, {}, dq, dk,
                                                    dv, dg, {});
                   };
                   break;
                 case Lsm::delta:
                 case Lsm::gated_delta:
                   fwd = [&] {
                     r.be.lsm_delta_rule_forward(q, k, v, beta, g, scale, kChunk, {}, o, {});
                   };
                   bwd = [&] {
                     r.be.lsm_delta_rule_backward(q, k, v, beta, g, scale, kChunk, {}, d_o, {}, dq,
                                                  dk, dv, dbeta, dg, {});
                   };
                   break;
               }
               r.time(c, "fwd", ff, bf, fwd, std::string("vs ") + f.fla);
               r.time(c, "bwd", fb, bb, bwd);
               r.time(c, "fwd+bwd", ff + fb, bf + bb, [&] {
                 fwd();
                 bwd();
               });
             }});
      }
    }
  }
}

std::vector<Case> make_cases(const Options& o) {
  std::vector<Case> cs;
  std::vector<DType> dts;
  if (o.dtype_given) {
    dts = {o.dtype};
  } else {
    dts = {DType::bf16};
  }
  for (DType dt : o.dtype_given ? dts : std::vector<DType>{DType::bf16, DType::f32}) {
    add_gemms(cs, dt);
  }
  for (DType dt : dts) {
    add_experts(cs, dt);
    add_pointwise(cs, dt);
    add_moe(cs, dt, dt == dts.front());
  }
  add_adamw(cs, o.adamw_params);
  for (DType dt : dts) add_attention(cs, dt);
  for (DType dt : dts) add_lsm(cs, dt);
  return cs;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      out += ' ';
    } else {
      out += ch;
    }
  }
  return out;
}

void write_json(const std::string& path, const Options& o, const std::string& device,
                const Runner& r) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "bench_gpu_kernels: cannot write %s\n", path.c_str());
    std::exit(1);
  }
  std::fprintf(f, "{\n  \"benchmark\": \"bench_gpu_kernels\",\n  \"device\": \"%s\",\n",
               json_escape(device).c_str());
  std::fprintf(f, "  \"peak_tflops_bf16\": %g,\n  \"peak_tflops_f32\": %g,\n  \"peak_gbs\": %g,\n",
               o.peak_tflops, o.peak_f32_tflops, o.peak_gbs);
  std::fprintf(f, "  \"notes\": [");
  for (std::size_t i = 0; i < r.notes.size(); ++i) {
    std::fprintf(f, "%s\"%s\"", i ? ", " : "", json_escape(r.notes[i]).c_str());
  }
  std::fprintf(f, "],\n  \"rows\": [\n");
  for (std::size_t i = 0; i < r.rows.size(); ++i) {
    const Row& w = r.rows[i];
    const double tflops = w.us > 0 ? w.flops / (w.us * 1e6) : 0,
                 gbs = w.us > 0 ? w.bytes / (w.us * 1e3) : 0;
    std::fprintf(f,
                 "    {\"impl\": \"linmoe\", \"op\": \"%s\", \"pass\": \"%s\", \"shape\": \"%s\", "
                 "\"dtype\": \"%s\", \"us\": %.3f, \"min_us\": %.3f, \"iters\": %d, "
                 "\"flops\": %.6g, \"bytes\": %.6g, \"tflops\": %.3f, \"gbs\": %.1f, "
                 "\"pct_peak_flops\": %.2f, \"pct_peak_bw\": %.2f, \"failed\": %s, "
                 "\"note\": \"%s\"}%s\n",
                 w.op.c_str(), w.pass.c_str(), json_escape(w.shape).c_str(), w.dtype.c_str(), w.us,
                 w.min_us, w.iters, w.flops, w.bytes, tflops, gbs,
                 w.flops > 0 ? 100.0 * tflops / w.peak_tflops : 0.0, 100.0 * gbs / o.peak_gbs,
                 w.failed ? "true" : "false", json_escape(w.note).c_str(),
                 i + 1 < r.rows.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  std::fclose(f);
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: bench_gpu_kernels [--json PATH] [--filter SUBSTR] [--iters N] "
               "[--dtype bf16|f32]\n"
               "                         [--peak-tflops 790] [--peak-f32-tflops 67] "
               "[--peak-gbs 3000] [--adamw-params 1e9] [--device 0]\n"
               "                         [--backend cuda|cpu]   (cpu: a check of the harness "
               "itself; use --filter and --dtype f32)\n");
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") usage();
    if (i + 1 >= argc) usage();
    const char* v = argv[++i];
    if (a == "--json") {
      o.json = v;
    } else if (a == "--filter") {
      o.filter = v;
    } else if (a == "--iters") {
      o.iters = std::max(1, std::atoi(v));
    } else if (a == "--dtype") {
      o.dtype_given = true;
      if (!std::strcmp(v, "bf16")) {
        o.dtype = DType::bf16;
      } else if (!std::strcmp(v, "f32")) {
        o.dtype = DType::f32;
      } else {
        usage();
      }
    } else if (a == "--peak-tflops") {
      o.peak_tflops = std::atof(v);
    } else if (a == "--peak-f32-tflops") {
      o.peak_f32_tflops = std::atof(v);
    } else if (a == "--peak-gbs") {
      o.peak_gbs = std::atof(v);
    } else if (a == "--adamw-params") {
      o.adamw_params = std::atof(v);
    } else if (a == "--backend") {
      if (!std::strcmp(v, "cpu")) {
        o.cpu = true;
      } else if (std::strcmp(v, "cuda")) {
        usage();
      }
    } else if (a == "--device") {
      o.device = std::atoi(v);
    } else {
      usage();
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  std::unique_ptr<Backend> be;
  std::string device;
  if (opt.cpu) {
    be = linmoe::make_backend(linmoe::BackendKind::cpu);
    device = be->name();
  } else {
#if LINMOE_HAVE_CUDA
    if (linmoe::cuda_device_count() <= opt.device) {
      std::printf(
          "bench_gpu_kernels: no CUDA device is available on this machine; nothing to run\n");
      return 0;
    }
    be = linmoe::make_cuda_backend(opt.device);
    device = linmoe::cuda_device_description(opt.device);
#else
    std::printf(
        "bench_gpu_kernels: this build has no CUDA backend (LINMOE_CUDA=OFF); nothing to run\n");
    return 0;
#endif
  }
  linmoe::set_fatal_handler([](int code) { throw CaseFailed{code}; });
  Runner r(*be, opt);
  std::printf("%s backend kernels on %s\n", opt.cpu ? "CPU" : "CUDA", device.c_str());
  std::printf(
      "peaks: %g TFLOP/s bf16 GEMM, %g TFLOP/s f32 GEMM (no TF32), %g GB/s HBM; time = "
      "median of 5 batches of %d calls (0: ~20 ms each)\n",
      opt.peak_tflops, opt.peak_f32_tflops, opt.peak_gbs, opt.iters);
  r.note(
      "experts_grouped times layers/moe.cpp's grouped GEMMs (one per projection), experts_loop "
      "the per-expert loop of cuBLAS GEMMs it replaced, both with even and skewed routing; "
      "experts_batched (cuBLAS strided-batched, equal rows per expert) is the bound for the even "
      "case");
  r.note(
      "moe_permute*/moe_unpermute* and moe_dispatch_plan synchronise with the host inside "
      "every call (order validation / host result): their times include it");
  std::printf("\n%-22s %-13s %-44s %-5s %10s %10s %8s %8s %7s %7s  %s\n", "op", "pass", "shape",
              "dtype", "us", "min us", "TFLOP/s", "GB/s", "%peakF", "%peakBW", "note");
  for (const Case& c : make_cases(opt)) {
    bool any = false;
    for (const std::string& p : c.passes) any = any || r.matches(label(c.op, p, c.shape, c.dtype));
    if (!any) continue;
    try {
      Arena a(*be);
      c.body(r, a, c);
    } catch (const CaseFailed& e) {
      r.fail(c, "check failed (message above), exit code " + std::to_string(e.code));
    } catch (const std::exception& e) {
      r.fail(c, e.what());
    }
    try {
      be->synchronize();
    } catch (const CaseFailed&) {
      std::printf("bench_gpu_kernels: the device is in an error state; stopping\n");
      break;
    }
  }
  if (!opt.json.empty()) {
    write_json(opt.json, opt, device, r);
    std::printf("\nwrote %zu rows to %s\n", r.rows.size(), opt.json.c_str());
  }
  return 0;
}
