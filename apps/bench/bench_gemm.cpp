// GEMM benchmark of the CPU backend: time, GFLOP/s and fraction of peak for square and
// model-like shapes, f32 and f64, 1 and 2 threads.
//
//   bench_gemm [--json FILE] [--reps N]
//
// Peak assumed: 2.8 GHz (the nominal clock in lscpu; AVX-512 turbo/licence clocks differ) ×
// threads × FLOPs/cycle/core, with 2 AVX-512 FMA units: 2 × 16 lanes × 2 = 64 f32 FLOPs/cycle,
// 32 for f64. Each row: one warm-up call, then --reps timed calls (default 7); GFLOP/s and %peak
// come from the median, and the minimum is printed too (other jobs on a shared machine inflate
// the median of 2-thread runs: a descheduled thread stalls the other at the end of the call).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"

namespace {

using linmoe::Buffer;
using linmoe::DType;
using linmoe::Shape;
using linmoe::Tensor;

constexpr double kClockGHz = 2.8;
constexpr double kF32FlopsPerCycle = 64;  // 2 FMA units × 16 lanes × 2 FLOPs

struct Case {
  std::int64_t M, N, K;
  bool trans_b;  // layers compute x · Wᵀ: trans_b = true
  DType dtype;
  const char* what;
};

struct Result {
  Case c;
  int threads;
  double ms, min_ms, gflops, peak_pct;  // GFLOP/s and % of peak from the median
};

void fill_random(const Tensor& t, std::uint64_t seed) {
  linmoe::CounterRng rng(seed, "bench_gemm");
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    double v = 2.0 * rng.uniform(static_cast<std::uint64_t>(i)) - 1.0;
    if (t.dtype == DType::f32) {
      static_cast<float*>(t.data)[i] = static_cast<float>(v);
    } else {
      static_cast<double*>(t.data)[i] = v;
    }
  }
}

Result run_case(const Case& c, int threads, int reps) {
  linmoe::CpuBackend backend(threads);
  auto& alloc = linmoe::host_allocator();
  const std::size_t es = linmoe::dtype_size(c.dtype);
  Buffer a(alloc, static_cast<std::size_t>(c.M * c.K) * es, "bench a");
  Buffer b(alloc, static_cast<std::size_t>(c.K * c.N) * es, "bench b");
  Buffer cb(alloc, static_cast<std::size_t>(c.M * c.N) * es, "bench c");
  Tensor ta = a.view(c.dtype, Shape{c.M, c.K});
  Tensor tb = b.view(c.dtype, c.trans_b ? Shape{c.N, c.K} : Shape{c.K, c.N});
  Tensor tc = cb.view(c.dtype, Shape{c.M, c.N});
  fill_random(ta, 1);
  fill_random(tb, 2);
  backend.gemm(ta, false, tb, c.trans_b, tc, 1.0, 0.0);  // warm-up: buffers, threads, caches
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    backend.gemm(ta, false, tb, c.trans_b, tc, 1.0, 0.0);
    auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double gflops = 2.0 * static_cast<double>(c.M * c.N * c.K) / (median * 1e6);
  const double per_cycle = c.dtype == DType::f32 ? kF32FlopsPerCycle : kF32FlopsPerCycle / 2;
  const double peak = kClockGHz * threads * per_cycle;
  return Result{c, threads, median, ms.front(), gflops, 100.0 * gflops / peak};
}

void write_json(const std::string& path, const std::vector<Result>& results) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "bench_gemm: cannot write %s\n", path.c_str());
    std::exit(1);
  }
  std::fprintf(f, "{\n  \"benchmark\": \"gemm\",\n  \"backend\": \"cpu\",\n");
  std::fprintf(f, "  \"peak_assumption\": \"%.1f GHz x threads x %g f32 (%g f64) FLOPs/cycle\",\n",
               kClockGHz, kF32FlopsPerCycle, kF32FlopsPerCycle / 2);
  std::fprintf(f, "  \"results\": [\n");
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    std::fprintf(f,
                 "    {\"M\": %lld, \"N\": %lld, \"K\": %lld, \"op\": \"%s\", \"dtype\": \"%s\", "
                 "\"shape\": \"%s\", \"threads\": %d, \"ms\": %.4f, \"min_ms\": %.4f, "
                 "\"gflops\": %.2f, "
                 "\"peak_pct\": %.1f}%s\n",
                 static_cast<long long>(r.c.M), static_cast<long long>(r.c.N),
                 static_cast<long long>(r.c.K), r.c.trans_b ? "NT" : "NN",
                 linmoe::dtype_name(r.c.dtype), r.c.what, r.threads, r.ms, r.min_ms, r.gflops,
                 r.peak_pct, i + 1 < results.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  int reps = 7;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) {
      json = argv[++i];
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: bench_gemm [--json FILE] [--reps N]\n");
      return 2;
    }
  }
  const std::vector<Case> cases = {
      {1024, 1024, 1024, false, DType::f32, "square"},
      {1024, 1024, 1024, false, DType::f64, "square"},
      {4096, 128, 512, true, DType::f32, "tokens x D -> head dims"},
      {1024, 4096, 1024, true, DType::f32, "up-projection"},
      {1024, 1024, 4096, true, DType::f32, "down-projection"},
      {8, 1024, 1024, true, DType::f32, "skinny (few tokens)"},
      {4096, 8, 1024, true, DType::f32, "router (few experts)"},
      {1024, 4096, 1024, true, DType::f64, "up-projection"},
  };
  std::printf("GEMM, CPU backend: C[M,N] = A[M,K] · op(B), beta = 0; median of %d runs\n", reps);
  std::printf(
      "peak = %.1f GHz x threads x %g f32 FLOPs/cycle (%g f64), assuming 2 AVX-512 FMAs\n\n",
      kClockGHz, kF32FlopsPerCycle, kF32FlopsPerCycle / 2);
  std::printf("%6s %6s %6s %3s %5s %8s %10s %10s %9s %7s  %s\n", "M", "N", "K", "op", "dtype",
              "threads", "median ms", "min ms", "GFLOP/s", "%peak", "shape");
  std::vector<Result> results;
  for (const Case& c : cases) {
    for (int threads : {1, 2}) {
      Result r = run_case(c, threads, reps);
      std::printf("%6lld %6lld %6lld %3s %5s %8d %10.3f %10.3f %9.1f %6.1f%%  %s\n",
                  static_cast<long long>(c.M), static_cast<long long>(c.N),
                  static_cast<long long>(c.K), c.trans_b ? "NT" : "NN", linmoe::dtype_name(c.dtype),
                  threads, r.ms, r.min_ms, r.gflops, r.peak_pct, c.what);
      std::fflush(stdout);
      results.push_back(r);
    }
  }
  if (!json.empty()) write_json(json, results);
  return 0;
}
