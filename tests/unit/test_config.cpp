// Config loading: defaults, overrides, resolution, and every rejection with its one-line message.
#include <catch2/catch.hpp>

#include "core/check.h"
#include "core/config.h"

using namespace linmoe;

namespace {

const char* kBase = R"(
run: {name: t, seed: 7}
model:
  vocab_size: 257
  hidden_size: 64
  num_layers: 4
  layer_pattern: "LLLN"
  attention: {num_heads: 4}
  lsm: {type: lightning}
  moe: {num_experts: 8, top_k: 2, ffn_hidden_size: 32}
train: {seq_len: 32, micro_batch_size: 2, global_batch_size: 8, steps: 10}
optimizer: {lr: 1.0e-3, schedule: {type: cosine, warmup_steps: 2}}
data: {train: [{path: corpus/x, weight: 1.0}]}
)";

// Loads kBase with overrides and returns the error message ("" when it loads).
std::string error_of(const std::vector<std::string>& overrides, int world = 1,
                     const std::string& yaml = kBase) {
  try {
    Config c = load_config_from_string(yaml, overrides, "test.yaml");
    resolve_parallel(c, world);
  } catch (const UserError& e) {
    CHECK(e.exit_code() == 2);
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("config: defaults and derived values resolve", "[config]") {
  Config c = load_config_from_string(kBase, {}, "test.yaml");
  resolve_parallel(c, 1);
  CHECK(c.model.attention.num_kv_heads == 4);
  CHECK(c.model.attention.head_dim == 16);
  CHECK(c.model.lsm.num_heads == 4);
  CHECK(c.model.lsm.head_dim_k == 16);
  CHECK(c.model.lsm.head_dim_v == 16);
  CHECK(c.model.lsm.feature_map == FeatureMap::silu);
  CHECK(c.model.lsm.output_gate);
  CHECK(c.model.moe.ffn_hidden_size == 32);
  CHECK_FALSE(c.model.moe.capacity_factor.has_value());
  CHECK(c.parallel.data == 1);
  CHECK(c.parallel.micro_batches == 4);
  CHECK(c.optimizer.schedule.decay_steps == 10);
  CHECK(c.optimizer.min_lr == 0.0);
  CHECK(c.checkpoint.dir == "runs/t/ckpt");
  CHECK(c.data.seed == 7);  // defaults to run.seed
  CHECK(c.data.split_fractions[0] == Approx(0.98));
  CHECK(c.resolved_yaml.find("micro_batches: 4") != std::string::npos);
}

TEST_CASE("config: --set overrides, including new sections and lists", "[config]") {
  Config c = load_config_from_string(
      kBase,
      {"train.steps=50", "model.lsm.type=gla", "optimizer.betas=[0.8, 0.9]",
       "model.moe.capacity_factor=1.25", "parallel.tensor=2", "device.backend=cpu"},
      "test.yaml");
  resolve_parallel(c, 4);
  CHECK(c.train.steps == 50);
  CHECK(c.model.lsm.type == LsmType::gla);
  CHECK(c.optimizer.beta1 == 0.8);
  CHECK(c.optimizer.beta2 == 0.9);
  CHECK(*c.model.moe.capacity_factor == 1.25);
  CHECK(c.model.moe.capacity_factor_text == "1.25");
  CHECK(c.parallel.data == 2);
  CHECK(c.parallel.micro_batches == 2);
  CHECK(c.device.backend == "cpu");
}

TEST_CASE("config: variant defaults", "[config]") {
  Config la = load_config_from_string(kBase, {"model.lsm.type=linear_attention"}, "t");
  CHECK(la.model.lsm.feature_map == FeatureMap::elu1);
  Config h = load_config_from_string(kBase, {"model.lsm.type=hgrn2"}, "t");
  CHECK_FALSE(h.model.lsm.output_gate);
  Config m = load_config_from_string(kBase, {"model.lsm={type: mamba2}"}, "t");
  CHECK(m.model.lsm.num_heads == 2);  // 2·64/64
  CHECK(m.model.lsm.head_dim_v == 64);
  CHECK(m.model.lsm.state_size == 128);
  Config tok = load_config_from_string(kBase,
                                       {"train={seq_len: 32, micro_batch_size: 2, "
                                        "global_batch_size: 8, tokens: 1000}"},
                                       "t");
  CHECK(tok.train.steps == 4);  // ceil(1000 / (8·32))
}

TEST_CASE("config: every rejection names the key, the value and the rule", "[config]") {
  struct Case {
    std::vector<std::string> overrides;
    int world;
    std::string expected;
  };
  const Case cases[] = {
      {{"model.hiden_size=64"}, 1, "config: model.hiden_size = 64: unknown key (model knows:"},
      {{"bogus=1"}, 1, "config: bogus = 1: unknown key (top-level knows:"},
      {{"model.hidden_size=abc"}, 1, "config: model.hidden_size = abc: must be an integer"},
      {{"model.hidden_size=0"}, 1, "config: model.hidden_size = 0: must be >= 1"},
      {{"model.hidden_size=1.5"}, 1, "config: model.hidden_size = 1.5: must be an integer"},
      {{"model.norm_eps=0"}, 1, "config: model.norm_eps = 0: must be > 0"},
      {{"model.tie_embeddings=maybe"},
       1,
       "config: model.tie_embeddings = maybe: must be true or false"},
      {{"model.layer_pattern=LLXN"},
       1,
       "config: model.layer_pattern = LLXN: must contain only L (LSM mixer) and N"},
      {{"model.lsm.type=mamba3"},
       1,
       "config: model.lsm.type = mamba3: must be one of linear_attention, lightning, retention"},
      {{"model.attention.num_kv_heads=3"},
       1,
       "config: model.attention.num_kv_heads = 3: must divide model.attention.num_heads = 4"},
      {{"model.moe.top_k=9"},
       1,
       "config: model.moe.top_k = 9: must be <= model.moe.num_experts = 8"},
      {{"parallel.tensor=3"},
       3,
       "config: model.attention.num_heads = 4: must be divisible by parallel.tensor = 3"},
      {{"parallel.pipeline=3"},
       3,
       "config: model.num_layers = 4: must be divisible by parallel.pipeline = 3"},
      {{"parallel.context=3"},
       3,
       "config: train.seq_len = 32: must be divisible by parallel.context = 3"},
      {{"parallel.expert=3"},
       3,
       "config: model.moe.num_experts = 8: must be divisible by parallel.expert = 3"},
      {{"parallel.tensor=2"},
       3,
       "config: parallel = tensor 2 x context 1 x pipeline 1 = 2: must divide the world size 3"},
      {{"parallel.data=2"},
       4,
       "config: parallel.data = 2: tensor x context x data x pipeline = 2 must equal the world "
       "size 4"},
      {{},
       3,
       "config: train.global_batch_size = 8: must be divisible by micro_batch_size x data = 2 x 3"},
      {{"parallel.expert=2", "parallel.context=1"},
       1,
       "config: parallel.expert = 2: must divide context x data = 1"},
      {{"train.global_batch_size=7"},
       1,
       "config: train.global_batch_size = 7: must be a multiple of train.micro_batch_size = 2"},
      {{"train.tokens=1000"},
       1,
       "config: train.tokens = 1000: give train.steps or train.tokens, not both"},
      {{"optimizer.min_lr=1"}, 1, "config: optimizer.min_lr = 1: must be <= optimizer.lr = 0.001"},
      {{"optimizer.betas=[0.9]"},
       1,
       "config: optimizer.betas = [0.9]: must be a list of two numbers in [0, 1)"},
      {{"optimizer.momentum=0.9"},
       1,
       "config: optimizer.momentum = 0.9: applies to optimizer.type sgd only"},
      {{"optimizer.schedule.type=wsd"},
       1,
       "config: optimizer.schedule.decay_start = <absent>: is required by the wsd schedule"},
      {{"optimizer.schedule={type: wsd, warmup_steps: 2, decay_start: 11}"},
       1,
       "config: optimizer.schedule.decay_start = 11: must satisfy warmup_steps (2) < decay_start "
       "<= decay_steps (10)"},
      {{"optimizer.schedule.warmup_steps=20"},
       1,
       "config: optimizer.schedule.decay_steps = 10: must be > warmup_steps = 20"},
      {{"model.lsm={type: hgrn2, output_gate: true}"},
       1,
       "config: model.lsm.output_gate = true: hgrn2 has no output gate"},
      {{"model.lsm={type: mamba2, num_heads: 3}"},
       1,
       "config: model.lsm.num_heads = 3: must equal expand * hidden_size / head_dim_v = 2"},
      {{"model.lsm={type: lightning, state_size: 64}"},
       1,
       "config: model.lsm.state_size = 64: applies to model.lsm.type mamba2 only"},
      {{"data.split=98,x"}, 1, "config: data.split = 98,x: must be 1 to 3 comma-separated"},
      {{"data.train=[{weight: 1}]"}, 1, "config: data.train[0].path = <absent>: is required"},
      {{"data.train=[{path: a, weight: -1}]"}, 1, "config: data.train[0].weight = -1: must be > 0"},
      {{"device.backend=tpu"}, 1, "config: device.backend = tpu: must be one of auto, cpu, cuda"},
      {{"model.moe.capacity_factor=0"}, 1, "config: model.moe.capacity_factor = 0: must be > 0"},
      {{"parallel.pipeline=2", "parallel.pipeline_layers=[1, 2]"},
       2,
       "config: parallel.pipeline_layers = 2 stages, 3 layers: must list parallel.pipeline = 2 "
       "stage sizes summing to model.num_layers = 4"},
      {{"train.seq_len=32=3"}, 1, "config: train.seq_len = 32=3: must be an integer"},
      {{"train"}, 1, "--set 'train': expected key=value"},
      {{"train.seq_len.x=1"},
       1,
       "--set 'train.seq_len.x=1': config: train.seq_len is a value, not a section"},
  };
  for (const Case& c : cases) {
    std::string joined;
    for (const auto& o : c.overrides) joined += o + " ";
    INFO("overrides: " << joined << " world " << c.world);
    std::string msg = error_of(c.overrides, c.world);
    CHECK(msg.rfind(c.expected, 0) == 0);
    CHECK(msg.find('\n') == std::string::npos);  // one line
  }
}

TEST_CASE("config: head rules apply only to the mixers the pattern uses", "[config]") {
  // hidden 20 is not divisible by the 4 default heads, but an all-LSM model never builds
  // attention (and the other way round).
  CHECK(
      error_of({"model.hidden_size=20", "model.layer_pattern=L", "model.lsm.num_heads=5"}).empty());
  CHECK(error_of({"model.hidden_size=20", "model.layer_pattern=N",
                  "model.attention={num_heads: 5, head_dim: 4}"})
            .empty());
  CHECK(error_of({"model.hidden_size=18", "model.layer_pattern=LN", "model.lsm.num_heads=3"})
            .rfind("config: model.attention.num_heads = 4: must divide model.hidden_size = 18",
                   0) == 0);
}

TEST_CASE("config: YAML syntax errors and missing files name the file", "[config]") {
  std::string msg = error_of({}, 1, "model: {hidden_size: [1, 2");
  CHECK(msg.rfind("test.yaml: not valid YAML", 0) == 0);
  try {
    load_config("/nonexistent/x.yaml", {});
    FAIL("no error");
  } catch (const UserError& e) {
    CHECK(std::string(e.what()) == "/nonexistent/x.yaml: cannot open the config file");
  }
  CHECK(error_of({}, 1, "[1, 2]").rfind("config: <top level> = [1, 2]: must be a mapping", 0) == 0);
}

TEST_CASE("config: the resolved YAML loads back to the same config", "[config]") {
  Config a = load_config_from_string(kBase, {"model.lsm.type=gated_deltanet"}, "t");
  resolve_parallel(a, 1);
  Config b = load_config_from_string(a.resolved_yaml, {}, "resolved");
  resolve_parallel(b, 1);
  CHECK(a.resolved_yaml == b.resolved_yaml);
}
