// train.recompute (selective: the mixers' internals rebuilt in backward; full: whole blocks
// rebuilt from their inputs) changes memory and time, never results: losses and every gradient
// are bit-identical to keeping all activations, for each LSM family, attention, MoE and dense
// FFNs; and the activation memory falls (none > selective > full).
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "core/config.h"
#include "kernels/cpu/cpu_backend.h"
#include "layers/model.h"

using namespace linmoe;
using namespace linmoe::testing;

namespace {

struct Run {
  double loss;
  std::vector<float> grads;
  std::size_t peak;
};

Run run(const Config& cfg, Recompute r) {
  auto backend = make_cpu_backend(1);
  Model model(cfg.model, *backend, DType::f32);
  model.initialize(11);
  model.set_recompute(r);
  const std::int64_t B = 2, T = 24;
  HostTensor tokens(DType::i32, Shape{B, T}), targets(DType::i32, Shape{B, T});
  fill_ints(tokens, 1, cfg.model.vocab_size);
  fill_ints(targets, 2, cfg.model.vocab_size);
  backend->fill(model.params().flat_grads(), 0.0);
  Run out;
  // Two micro-batches: the second reuses arenas the first left behind.
  out.loss = model.forward_backward(tokens, targets, 0.5).loss;
  out.loss += model.forward_backward(targets, tokens, 0.5).loss;
  const Tensor g = model.params().flat_grads();
  out.grads.assign(g.ptr<float>(), g.ptr<float>() + g.numel());
  out.peak = model.activation_peak_bytes();
  return out;
}

}  // namespace

TEST_CASE("recompute: selective and full give bit-identical losses and gradients", "[grad]") {
  const std::vector<std::string> mixers = {
      "lsm: {type: lightning, num_heads: 2, chunk_size: 8}",
      "lsm: {type: gla, num_heads: 2, chunk_size: 8}",
      "lsm: {type: gated_deltanet, num_heads: 2, chunk_size: 8}",
      "lsm: {type: mamba2, head_dim_v: 16, state_size: 8, chunk_size: 8}",
  };
  for (const std::string& lsm : mixers) {
    for (const char* ffn : {"moe: {num_experts: 4, top_k: 2, ffn_hidden_size: 16, "
                            "shared_ffn_hidden_size: 8, z_loss_coeff: 0.001}",
                            "moe: {num_experts: 0}"}) {
      const std::string yaml =
          "model: {vocab_size: 37, hidden_size: 32, num_layers: 3, "
          "layer_pattern: LNL, ffn_hidden_size: 48, attention: "
          "{num_heads: 2, num_kv_heads: 1}, " +
          lsm + ", " + ffn + "}\n";
      INFO(yaml);
      const Config cfg = load_config_from_string(yaml, {}, "recompute");
      const Run none = run(cfg, Recompute::none);
      const Run selective = run(cfg, Recompute::selective);
      const Run full = run(cfg, Recompute::full);
      CHECK(selective.loss == none.loss);
      CHECK(full.loss == none.loss);
      REQUIRE(selective.grads.size() == none.grads.size());
      CHECK(std::memcmp(selective.grads.data(), none.grads.data(), none.grads.size() * 4) == 0);
      CHECK(std::memcmp(full.grads.data(), none.grads.data(), none.grads.size() * 4) == 0);
      CHECK(selective.peak < none.peak);
      CHECK(full.peak < selective.peak);
    }
  }
}
