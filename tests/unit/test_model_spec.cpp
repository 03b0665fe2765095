#include <catch2/catch.hpp>

#include <set>

#include "core/config.h"
#include "layers/model_spec.h"

using namespace linmoe;

namespace {
Config load(const std::string& path) {
  return load_config(std::string(LINMOE_SOURCE_DIR) + "/" + path, {});
}
}  // namespace

TEST_CASE("model spec: the paper configs have the paper's sizes", "[model_spec]") {
  ParamCounts small = count_parameters(load("configs/a0.3b-2b.yaml").model);
  CHECK(small.active_non_embedding() > 0.25e9);
  CHECK(small.active_non_embedding() < 0.40e9);
  CHECK(small.total_non_embedding() > 1.9e9);
  CHECK(small.total_non_embedding() < 2.4e9);
  ParamCounts big = count_parameters(load("configs/a1b-7b.yaml").model);
  CHECK(big.active_non_embedding() > 0.9e9);
  CHECK(big.active_non_embedding() < 1.3e9);
  CHECK(big.total_non_embedding() > 6.5e9);
  CHECK(big.total_non_embedding() < 7.5e9);
}

TEST_CASE("model spec: names and shapes follow MODEL.md", "[model_spec]") {
  Config c = load("configs/tiny.yaml");
  std::vector<ModelParam> ps = model_parameters(c.model);
  std::set<std::string> names;
  for (const auto& p : ps) names.insert(p.name);
  CHECK(names.size() == ps.size());
  CHECK(names.count("embed.weight"));
  CHECK(names.count("layers.0.mixer.q_proj.weight"));
  CHECK(names.count("layers.0.mixer.g_proj.weight"));
  CHECK(names.count("layers.0.mixer.o_norm.weight"));
  CHECK(names.count("layers.3.mixer.o_proj.weight"));  // attention layer
  CHECK_FALSE(names.count("layers.3.mixer.g_proj.weight"));
  CHECK(names.count("layers.1.ffn.experts.w2"));
  CHECK(names.count("lm_head.weight"));
  for (const auto& p : ps) {
    if (p.name == "layers.1.ffn.experts.w2") CHECK(p.shape == Shape({8, 128, 128}));
    if (p.name == "layers.1.ffn.experts.w1") CHECK(p.shape == Shape({8, 128, 128}));
    if (p.name == "embed.weight") CHECK(p.shape == Shape({257, 128}));
    if (p.name == "layers.0.mixer.o_norm.weight") CHECK(p.shape == Shape({32}));
  }

  Config m = load_config_from_string(
      "model: {hidden_size: 64, lsm: {type: mamba2, num_groups: 2, state_size: 16}}\n", {}, "t");
  std::vector<ModelParam> mp = model_parameters(m.model);
  bool saw_in_proj = false;
  for (const auto& p : mp) {
    if (p.name == "layers.0.mixer.in_proj.weight") {
      saw_in_proj = true;
      CHECK(p.shape == Shape({2 * 128 + 2 * 2 * 16 + 2, 64}));  // [2·d_inner + 2GN + H, D]
    }
    if (p.name == "layers.0.mixer.conv1d.weight") CHECK(p.shape == Shape({128 + 64, 1, 4}));
  }
  CHECK(saw_in_proj);

  Config g = load_config_from_string(
      "model: {hidden_size: 64, tie_embeddings: true, lsm: {type: gated_deltanet}}\n", {}, "t");
  std::set<std::string> gn;
  for (const auto& p : model_parameters(g.model)) gn.insert(p.name);
  CHECK(gn.count("layers.0.mixer.q_conv.weight"));
  CHECK(gn.count("layers.0.mixer.A_log"));
  CHECK(gn.count("layers.0.mixer.b_proj.weight"));
  CHECK_FALSE(gn.count("lm_head.weight"));
}
