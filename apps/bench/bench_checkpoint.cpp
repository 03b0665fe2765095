// Checkpoint benchmark: the training stall per save (the host snapshot of weights and optimizer
// state, the only part of a save on the training thread) and the background write, for a
// config's model. The snapshot copies 3 fp32 values per parameter with AdamW (weights, exp_avg,
// exp_avg_sq); the write adds the checksum and the files.
//
//   bench_checkpoint CONFIG [--fraction F=1] [--dir DIR=/tmp/linmoe_bench_ckpt]
//
// Shapes: one flat fp32 parameter of F x (the config's parameter count) values with an AdamW
// (or SGD) optimizer over it, on the CPU backend (a model too big for this machine's memory is
// measured at a fraction F and scaled linearly: the work is memory copies, linear in bytes).
// The host buffers are allocated and first touched once before the first save (as the trainer
// does before step 1, reported as "prepared"); each save's stall is then one copy. Prints a table;
// writes DIR/bench.json.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/config.h"
#include "core/json.h"
#include "core/log.h"
#include "core/parameter_store.h"
#include "kernels/ops.h"
#include "layers/model_spec.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"

namespace {
using namespace linmoe;
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_checkpoint CONFIG [--fraction F] [--dir DIR]\n");
    return 2;
  }
  std::string config = argv[1], dir = "/tmp/linmoe_bench_ckpt";
  double fraction = 1.0;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--fraction") fraction = std::atof(argv[i + 1]);
    if (std::string(argv[i]) == "--dir") dir = argv[i + 1];
  }
  log_init(0, LogLevel::warn);
  try {
    const Config cfg = load_config(config, {});
    const std::int64_t total = count_parameters(cfg.model).total;
    const auto n = static_cast<std::int64_t>(static_cast<double>(total) * fraction);
    auto backend = make_backend(BackendKind::cpu, 0);
    ParameterStore params;
    params.add(whole_param("flat.weight", Shape{n}));
    params.allocate(backend->allocator(), DType::f32, DType::f32);
    backend->fill(params.flat_params(), 0.01);
    Optimizer optimizer(cfg.optimizer, *backend, params);
    std::filesystem::remove_all(dir);

    CheckpointSnapshot snap;
    const auto tp = Clock::now();
    prepare_snapshot(params, optimizer, snap);  // the trainer does this before step 1
    const double prepare = seconds_since(tp);
    double stall[3] = {0, 0, 0}, write[3] = {0, 0, 0};
    for (int s = 0; s < 3; ++s) {
      const auto t0 = Clock::now();
      snap.step = s + 1;
      take_snapshot(params, optimizer, *backend, snap);
      stall[s] = seconds_since(t0);
      const auto t1 = Clock::now();
      write_checkpoint(snap, dir);
      rotate_checkpoints(dir, 1);
      write[s] = seconds_since(t1);
    }
    const double bytes = static_cast<double>(snap.params.size() + snap.optimizer_state.size()) * 4;
    const double scale = 1.0 / fraction;
    std::printf("checkpoint stall, %s: %lld parameters (%.3g of %lld), %s snapshot, %s\n",
                cfg.run.name.c_str(), static_cast<long long>(n), fraction,
                static_cast<long long>(total), format_bytes(bytes).c_str(),
                backend->name().c_str());
    std::printf("  %-6s %12s %12s %14s %14s\n", "save", "stall ms", "write s", "stall ms (1x)",
                "write s (1x)");
    for (int s = 0; s < 3; ++s) {
      std::printf("  %-6d %12.1f %12.2f %14.1f %14.2f\n", s + 1, stall[s] * 1e3, write[s],
                  stall[s] * 1e3 * scale, write[s] * scale);
    }
    std::printf(
        "  snapshot copy rate: %.2f GB/s; buffers prepared at startup in %.2f s (%.2f s at 1x)\n",
        bytes / stall[2] / 1e9, prepare, prepare * scale);
    Json j = Json::object();
    j["config"] = config;
    j["parameters_measured"] = n;
    j["parameters_total"] = total;
    j["snapshot_bytes"] = bytes;
    j["prepare_s"] = prepare;
    j["stall_ms"] = Json::array({Json(stall[0] * 1e3), Json(stall[1] * 1e3), Json(stall[2] * 1e3)});
    j["stall_ms_full_model"] = stall[2] * 1e3 * scale;
    j["write_s_full_model"] = write[2] * scale;
    std::ofstream(dir + "/bench.json") << dump_json(j, 2) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_checkpoint: %s\n", e.what());
    return 2;
  }
  return 0;
}
