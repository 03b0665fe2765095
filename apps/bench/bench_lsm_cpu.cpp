// Throughput of the scalar-decay LSM core on the CPU backend (kernels/ops.h), forward and
// forward + backward, at the tiny training config's shapes by default.
//   bench_lsm_cpu [B T H Dk Dv chunk threads dtype(f32|f64)]
// Prints one table row per measurement and a JSON line. Not a test: no timed assertions.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "core/memory.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"

namespace {

using linmoe::Buffer;
using linmoe::DType;
using linmoe::Shape;
using linmoe::Tensor;

struct Owned {
  Buffer buffer;
  Tensor t;
  Owned(DType dt, const Shape& s)
      : buffer(linmoe::host_allocator(),
               static_cast<std::size_t>(s.numel()) * linmoe::dtype_size(dt), "bench"),
        t(buffer.view(dt, s)) {}
};

void fill(const Tensor& t, std::uint64_t seed, double lo, double hi) {
  linmoe::CounterRng rng(seed, "bench.lsm");
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const double u = lo + (hi - lo) * rng.uniform(static_cast<std::uint64_t>(i));
    if (t.dtype == DType::f32) {
      static_cast<float*>(t.data)[i] = static_cast<float>(u);
    } else {
      static_cast<double*>(t.data)[i] = u;
    }
  }
}

struct Timing {
  double median, best;  // seconds per call
};

// Median and best seconds per call of fn over `reps` calls after one warm-up call (the best is
// the number to read on a shared machine, where other jobs stretch some calls).
template <class Fn>
Timing time_calls(int reps, Fn&& fn) {
  fn();
  std::vector<double> s;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  return Timing{s[s.size() / 2], s.front()};
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t B = 4, T = 256, H = 4, Dk = 32, Dv = 32;
  int chunk = 64, threads = 2;
  std::string dtype = "f32";
  if (argc > 1) {
    if (argc != 9) {
      std::fprintf(stderr, "usage: %s [B T H Dk Dv chunk threads f32|f64]\n", argv[0]);
      return 2;
    }
    B = std::atoll(argv[1]), T = std::atoll(argv[2]), H = std::atoll(argv[3]);
    Dk = std::atoll(argv[4]), Dv = std::atoll(argv[5]);
    chunk = std::atoi(argv[6]), threads = std::atoi(argv[7]), dtype = argv[8];
  }
  const DType dt = dtype == "f64" ? DType::f64 : DType::f32;
  auto backend = linmoe::make_cpu_backend(threads);

  Owned q(dt, Shape{B, T, H, Dk}), k(dt, Shape{B, T, H, Dk}), v(dt, Shape{B, T, H, Dv});
  Owned g(dt, Shape{B, T, H}), o(dt, Shape{B, T, H, Dv}), d_o(dt, Shape{B, T, H, Dv});
  Owned dq(dt, Shape{B, T, H, Dk}), dk(dt, Shape{B, T, H, Dk}), dv(dt, Shape{B, T, H, Dv});
  Owned dg(dt, Shape{B, T, H});
  fill(q.t, 1, -1, 1), fill(k.t, 2, -1, 1), fill(v.t, 3, -1, 1), fill(g.t, 4, -1, -0.01);
  fill(d_o.t, 5, -1, 1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dk));

  const int reps = 50;
  const Timing fwd = time_calls(reps, [&] {
    backend->lsm_scalar_decay_forward(q.t, k.t, v.t, g.t, scale, chunk, Tensor{}, o.t, Tensor{});
  });
  const Timing fwd_bwd = time_calls(reps, [&] {
    backend->lsm_scalar_decay_forward(q.t, k.t, v.t, g.t, scale, chunk, Tensor{}, o.t, Tensor{});
    backend->lsm_scalar_decay_backward(q.t, k.t, v.t, g.t, scale, chunk, Tensor{}, d_o.t, Tensor{},
                                       dq.t, dk.t, dv.t, dg.t, Tensor{});
  });
  const double tokens = static_cast<double>(B * T);
  std::printf("lsm_scalar_decay on %s, %s, B=%lld T=%lld H=%lld Dk=%lld Dv=%lld chunk=%d\n",
              backend->name().c_str(), dtype.c_str(), static_cast<long long>(B),
              static_cast<long long>(T), static_cast<long long>(H), static_cast<long long>(Dk),
              static_cast<long long>(Dv), chunk);
  std::printf("%-18s %12s %14s %12s %14s\n", "pass", "median ms", "tokens/s", "best ms",
              "tokens/s");
  for (const auto& [pass, t] : {std::pair<const char*, Timing>{"forward", fwd},
                                std::pair<const char*, Timing>{"forward+backward", fwd_bwd}}) {
    std::printf("%-18s %12.3f %14.0f %12.3f %14.0f\n", pass, t.median * 1e3, tokens / t.median,
                t.best * 1e3, tokens / t.best);
  }
  std::printf(
      "{\"op\": \"lsm_scalar_decay\", \"backend\": \"%s\", \"dtype\": \"%s\", \"B\": %lld, "
      "\"T\": %lld, \"H\": %lld, \"Dk\": %lld, \"Dv\": %lld, \"chunk\": %d, "
      "\"forward_tokens_per_s\": %.0f, \"forward_backward_tokens_per_s\": %.0f, "
      "\"best_forward_tokens_per_s\": %.0f, \"best_forward_backward_tokens_per_s\": %.0f}\n",
      backend->name().c_str(), dtype.c_str(), static_cast<long long>(B), static_cast<long long>(T),
      static_cast<long long>(H), static_cast<long long>(Dk), static_cast<long long>(Dv), chunk,
      tokens / fwd.median, tokens / fwd_bwd.median, tokens / fwd.best, tokens / fwd_bwd.best);
  return 0;
}
