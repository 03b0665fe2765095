// `linmoe inspect`'s memory per rank (layers/cost.h memory_per_rank) against what training
// allocates: one Engine step per layout, the peak of the allocator's bookkeeping on every rank,
// the busiest rank within 10% of the estimate (issue: "inspect memory estimates agree with
// measured peaks within 10%"). fp32 and bf16, recompute none / selective / full, ZeRO, 1F1B.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/memory.h"
#include "kernels/cpu/cpu_backend.h"
#include "layers/cost.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"
#include "train/engine.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

struct MemoryCase {
  std::string name, lsm = "lightning", precision = "fp32", recompute = "none";
  int tp = 1, pp = 1, dp = 1, cp = 1, experts = 8;
};

Config config_for(const MemoryCase& c, int world) {
  const std::string yaml =
      "run: {seed: 3}\n"
      "model: {vocab_size: 257, hidden_size: 128, num_layers: 4, layer_pattern: LLLN, "
      "ffn_hidden_size: 256, attention: {num_heads: 4}, lsm: {type: " +
      c.lsm + (c.lsm == "mamba2" ? "" : ", num_heads: 4, head_dim_k: 32, head_dim_v: 32") +
      "}, moe: {num_experts: " + std::to_string(c.experts) +
      ", top_k: 2, ffn_hidden_size: 128}}\n" + "parallel: {tensor: " + std::to_string(c.tp) +
      ", pipeline: " + std::to_string(c.pp) + ", context: " + std::to_string(c.cp) +
      ", data: " + std::to_string(c.dp) + "}\n" +
      "train: {seq_len: 256, micro_batch_size: 4, global_batch_size: " +
      std::to_string(4 * c.dp * 4) + ", steps: 1, precision: " + c.precision +
      ", recompute: " + c.recompute + "}\n" + "optimizer: {type: adamw, lr: 1.0e-3}\n";
  Config cfg = load_config_from_string(yaml, {}, "test_memory_estimate");
  resolve_parallel(cfg, world);
  return cfg;
}

std::vector<MemoryCase> cases(int world) {
  std::vector<MemoryCase> all;
  if (world == 1) {
    for (const char* p : {"fp32", "bf16"}) {
      for (const char* r : {"none", "selective", "full"}) {
        MemoryCase c;
        c.precision = p;
        c.recompute = r;
        c.name = std::string(p) + " recompute " + r;
        all.push_back(c);
      }
    }
    for (const char* lsm : {"gla", "gated_deltanet", "mamba2"}) {
      MemoryCase c;
      c.lsm = lsm;
      c.name = std::string(lsm) + " bf16";
      c.precision = "bf16";
      all.push_back(c);
    }
    MemoryCase dense;
    dense.experts = 0;
    dense.name = "dense ffn";
    all.push_back(dense);
  }
  if (world == 2) {
    all.push_back({"dp2 zero bf16", "lightning", "bf16", "none", 1, 1, 2, 1});
    all.push_back({"pp2", "lightning", "fp32", "none", 1, 2, 1, 1});
    all.push_back({"tp2", "lightning", "fp32", "none", 2, 1, 1, 1});
    all.push_back({"cp2 selective", "gla", "fp32", "selective", 1, 1, 1, 2});
  }
  if (world == 4) {
    all.push_back({"tp2 pp2 bf16", "lightning", "bf16", "none", 2, 2, 1, 1});
    all.push_back({"pp2 dp2 zero", "lightning", "fp32", "none", 1, 2, 2, 1});
    all.push_back({"pp4 bf16 full", "lightning", "bf16", "full", 1, 4, 1, 1});
  }
  return all;
}

TEST_CASE("inspect's memory per rank matches the measured peak within 10%", "[mpi][memory]") {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  auto backend = make_cpu_backend(1);
  for (const MemoryCase& mc : cases(world.size())) {
    const Config cfg = config_for(mc, world.size());
    ProcessGroups groups(world, layout_from_config(cfg.parallel));
    const std::size_t before = memory_stats(Device::cpu).live_bytes;
    reset_peak_memory(Device::cpu);
    double measured = 0, used = 0;
    {
      Engine engine(cfg, *backend, world.size() > 1 ? &groups : nullptr);
      const i64 B = cfg.train.micro_batch_size, T = cfg.train.seq_len / mc.cp;
      std::vector<std::int32_t> ids(static_cast<std::size_t>(B * T));
      for (std::size_t i = 0; i < ids.size(); ++i) {
        ids[i] = static_cast<std::int32_t>((i * 7 + 3) % 257);
      }
      auto next = [&]() {
        Batch b;
        b.tokens = Tensor(ids.data(), DType::i32, Device::cpu, Shape{B, T});
        b.targets = b.tokens;
        b.first_position = groups.coords().cp_rank * T;
        return b;
      };
      engine.step(next, 1e-3, 1);
      measured = static_cast<double>(memory_stats(Device::cpu).peak_bytes - before);
      used = static_cast<double>(engine.model().activation_peak_bytes());
    }
    std::vector<double> most{measured, used};
    world.all_reduce(most.data(), 2, DType::f64, ReduceOp::max);
    const MemoryEstimate e = memory_per_rank(cfg);
    const double ratio = most[0] / e.total();
    if (world.rank() == 0) {
      // The arenas' bytes in use at their peak, against their planned capacity: the headroom.
      std::printf(
          "np%d %-22s estimate %7.2f MiB  measured %7.2f MiB (%.3f)  activations used %6.2f of "
          "%6.2f MiB\n",
          world.size(), mc.name.c_str(), e.total() / (1 << 20), most[0] / (1 << 20), ratio,
          most[1] / (1 << 20), e.activations / (1 << 20));
    }
    CAPTURE(mc.name, e.total(), most[0]);
    CHECK(ratio > 0.9);
    CHECK(ratio < 1.1);
  }
}

}  // namespace
}  // namespace linmoe
