// End-to-end training throughput of a config on one device: tokens/s, TFLOP/s and MFU (model
// FLOPs per token from layers/cost.h: every matmul at 2 FLOPs per multiply-add, forward +
// backward, attention over its causal half, the LSM chunk kernels; recompute not counted), and
// the peak memory against `linmoe inspect`'s estimate. Synthetic tokens (no dataset), one
// optimizer step per measured iteration, after warm-up steps.
//
//   bench_train CONFIG [--seq 2048,8192] [--steps 5] [--warmup 2] [--backend auto|cpu|cuda]
//                      [--json PATH] [--set key=value ...]
//
// --set slices a model that does not fit (e.g. --set model.num_layers=8): the table prints the
// parameter counts it ran with. MFU is against the backend's peak (CUDA: the device's dense bf16
// tensor-core peak; the CPU backend reports none).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/json.h"
#include "core/log.h"
#include "core/memory.h"
#include "kernels/ops.h"
#include "layers/cost.h"
#include "layers/model_spec.h"
#include "train/engine.h"

namespace {

using namespace linmoe;
using Clock = std::chrono::steady_clock;

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::atoi(item.c_str()));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::fprintf(stderr,
                 "usage: bench_train CONFIG [--seq 2048,8192] [--steps N] [--warmup N] "
                 "[--backend auto|cpu|cuda] [--json PATH] [--set key=value ...]\n");
    return 2;
  }
  const std::string config = argv[1];
  std::vector<int> seqs;
  int steps = 5, warmup = 2;
  std::string backend_name = "auto", json_path;
  std::vector<std::string> sets;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--seq")
      seqs = parse_list(v);
    else if (k == "--steps")
      steps = std::atoi(v.c_str());
    else if (k == "--warmup")
      warmup = std::atoi(v.c_str());
    else if (k == "--backend")
      backend_name = v;
    else if (k == "--json")
      json_path = v;
    else if (k == "--set")
      sets.push_back(v);
    else {
      std::fprintf(stderr, "bench_train: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  log_init(0, LogLevel::warn);
  try {
    auto backend = make_backend(parse_backend_kind(backend_name, "--backend"));
    Config base = load_config(config, sets);
    if (seqs.empty()) seqs.push_back(base.train.seq_len);
    const ParamCounts counts = count_parameters(base.model);
    std::printf("bench_train %s on %s: %.3g parameters (%.3g active per token), precision %s\n",
                config.c_str(), backend->name().c_str(), double(counts.total),
                double(counts.active), base.train.precision == Precision::bf16 ? "bf16" : "fp32");
    std::printf("%7s %5s %9s %9s %10s %9s %7s %9s %9s\n", "seq", "batch", "tok/step", "ms/step",
                "tokens/s", "TFLOP/s", "MFU", "peak GiB", "est GiB");
    Json rows = Json::array();
    for (int seq : seqs) {
      Config cfg = base;
      cfg.train.seq_len = seq;
      cfg.train.global_batch_size = cfg.train.micro_batch_size;  // one micro-batch a step
      cfg.parallel.micro_batches = 0;
      resolve_parallel(cfg, 1);
      const std::int64_t B = cfg.train.micro_batch_size, T = seq;
      std::vector<std::int32_t> ids(static_cast<std::size_t>(B * T));
      std::uint64_t x = 88172645463325252ull;  // xorshift: any tokens will do
      for (auto& id : ids) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        id = static_cast<std::int32_t>(x % static_cast<std::uint64_t>(cfg.model.vocab_size));
      }
      const Tensor tokens(ids.data(), DType::i32, Device::cpu, Shape{B, T});
      backend->synchronize();
      reset_peak_memory(backend->device());
      Engine engine(cfg, *backend, nullptr);
      auto next = [&]() {
        Batch b;
        b.tokens = tokens;
        b.targets = tokens;
        return b;
      };
      for (int s = 1; s <= warmup; ++s) engine.step(next, 1e-4, s);
      backend->synchronize();
      const auto t0 = Clock::now();
      for (int s = 1; s <= steps; ++s) engine.step(next, 1e-4, warmup + s);
      backend->synchronize();
      const double ms =
          std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / std::max(1, steps);
      const double tok_s = static_cast<double>(B * T) / (ms / 1e3);
      const double tflops = total_flops_per_token(cfg.model, T) * tok_s / 1e12;
      const double peak = backend->peak_flops_per_second();
      const double mfu = peak > 0 ? tflops * 1e12 / peak : 0;
      const double gib = 1024.0 * 1024 * 1024;
      const double mem = static_cast<double>(memory_stats(backend->device()).peak_bytes) / gib;
      const double est = memory_per_rank(cfg).total() / gib;
      char mfu_text[16] = "      -";  // no peak known (the CPU backend)
      if (peak > 0) std::snprintf(mfu_text, sizeof mfu_text, "%6.1f%%", 100 * mfu);
      std::printf("%7d %5lld %9lld %9.1f %10.0f %9.3f %7s %9.2f %9.2f\n", seq,
                  static_cast<long long>(B), static_cast<long long>(B * T), ms, tok_s, tflops,
                  mfu_text, mem, est);
      Json row = Json::object();
      row["config"] = config;
      row["seq_len"] = seq;
      row["micro_batch_size"] = B;
      row["ms_per_step"] = ms;
      row["tokens_per_s"] = tok_s;
      row["tflops_per_device"] = tflops;
      row["mfu"] = mfu;
      row["peak_gib"] = mem;
      row["estimate_gib"] = est;
      row["parameters"] = counts.total;
      row["active_parameters"] = counts.active;
      row["device"] = backend->name();
      rows.push_back(row);
    }
    if (!json_path.empty()) std::ofstream(json_path) << dump_json(rows, 2) << "\n";
  } catch (const UserError& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 2;
  }
  return 0;
}
