// The data-parallel gradient reduction in buckets that start while the backward runs
// (train/engine.h): with small buckets the step is the same as with one reduction after the
// backward, there are many buckets, and all but the deferred ones start inside the backward.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "kernels/cpu/cpu_backend.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"
#include "train/engine.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

struct Outcome {
  StepResult result;
  std::vector<float> weights;
  std::int64_t dp_calls = 0;
};

Outcome one_step(MpiCommunicator& world, const std::string& layout, double bucket_mb,
                 const std::string& precision) {
  const std::string yaml =
      "run: {seed: 9}\n"
      "model: {vocab_size: 61, hidden_size: 32, num_layers: 4, layer_pattern: LLLN, "
      "ffn_hidden_size: 48, tie_embeddings: true, attention: {num_heads: 4}, "
      "lsm: {type: gla, num_heads: 2, head_dim_k: 8, head_dim_v: 8, chunk_size: 8}, "
      "moe: {num_experts: 4, top_k: 2, ffn_hidden_size: 16}}\n"
      "parallel: {" +
      layout + ", grad_bucket_mb: " + std::to_string(bucket_mb) +
      "}\n"
      "train: {seq_len: 16, micro_batch_size: 2, global_batch_size: 8, steps: 1, precision: " +
      precision + "}\n" + "optimizer: {type: adamw, lr: 1.0e-2}\n";
  Config cfg = load_config_from_string(yaml, {}, "test_grad_overlap");
  resolve_parallel(cfg, world.size());
  ProcessGroups groups(world, layout_from_config(cfg.parallel));
  auto backend = make_cpu_backend(1);
  Engine engine(cfg, *backend, &groups);
  const i64 B = cfg.train.micro_batch_size, T = cfg.train.seq_len;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(B * T));
  int n = 0;
  auto next = [&]() {
    // Different tokens per replica and micro-batch, the same on every run.
    for (std::size_t i = 0; i < ids.size(); ++i) {
      ids[i] = static_cast<std::int32_t>((i * 13 + 7 * n + 29 * groups.coords().dp_rank) % 61);
    }
    ++n;
    Batch b;
    b.tokens = Tensor(ids.data(), DType::i32, Device::cpu, Shape{B, T});
    b.targets = b.tokens;
    return b;
  };
  groups.dp_cp().reset_traffic();
  Outcome o;
  o.result = engine.step(next, 1e-2, 1);
  o.dp_calls = groups.dp_cp().traffic()[CommOp::reduce_scatter].calls +
               groups.dp_cp().traffic()[CommOp::all_reduce].calls;
  engine.gather_master_weights(o.weights);
  return o;
}

void compare(MpiCommunicator& world, const std::string& layout, const std::string& precision) {
  const Outcome whole = one_step(world, layout, 0, precision);
  const Outcome buckets = one_step(world, layout, 0.001, precision);  // 256 values a bucket
  CAPTURE(layout, precision, world.rank());
  CHECK(whole.result.grad_buckets <= 2);  // a region each (dense, experts)
  CHECK(buckets.result.grad_buckets > 10);
  CHECK(buckets.dp_calls > whole.dp_calls);
  // All but the bucket holding the tied embedding copy (pp > 1) start inside the backward.
  CHECK(buckets.result.grad_buckets_overlapped >= buckets.result.grad_buckets - 1);
  CHECK(buckets.result.loss == whole.result.loss);
  CHECK(std::abs(buckets.result.grad_norm - whole.result.grad_norm) <=
        1e-6 * whole.result.grad_norm);
  REQUIRE(buckets.weights.size() == whole.weights.size());
  double worst = 0;
  for (std::size_t i = 0; i < whole.weights.size(); ++i) {
    worst = std::max(worst, std::abs(double(buckets.weights[i]) - whole.weights[i]));
  }
  CHECK(worst <= 1e-6);
}

TEST_CASE("bucketed gradient reduction overlapping the backward equals one reduction", "[mpi]") {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  const std::string w = std::to_string(world.size());
  compare(world, "data: " + w, "fp32");  // ZeRO: uneven reduce-scatters
  compare(world, "data: " + w, "bf16");
  if (world.size() == 4) {
    compare(world, "data: 2, pipeline: 2", "fp32");  // the tied embedding's bucket deferred
    compare(world, "data: 2, tensor: 2, expert: 2", "fp32");
  }
}

}  // namespace
}  // namespace linmoe
