// The typed configuration of a run (spec/CONFIG.md; every key and default in docs/CONFIG.md).
// Loaded once from YAML plus `--set a.b=v` overrides, validated once, then passed down.
// Derived values (defaults that depend on other keys, like head dims) are resolved by the loader,
// so everything downstream reads plain numbers.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace linmoe {

struct RunConfig {
  std::string name = "run";
  std::uint64_t seed = 1234;
  std::string output_dir = "runs/run";
};

struct AttentionConfig {
  int num_heads = 4;
  int num_kv_heads = 0;  // resolved: default num_heads
  int head_dim = 0;      // resolved: default hidden_size / num_heads
  double rope_theta = 10000.0;
  bool qkv_bias = false;
};

enum class LsmType {
  linear_attention,
  lightning,
  retention,
  gla,
  hgrn2,
  deltanet,
  gated_deltanet,
  mamba2
};
enum class FeatureMap { identity, silu, elu1, relu };
enum class LsmFamily { scalar_decay, vector_decay, delta_rule };

const char* lsm_type_name(LsmType t);
const char* feature_map_name(FeatureMap f);
LsmFamily lsm_family(LsmType t);

struct LsmConfig {
  LsmType type = LsmType::lightning;
  int num_heads = 0;   // resolved: default attention.num_heads (mamba2: expand·D/head_dim_v)
  int head_dim_k = 0;  // resolved: default D/H
  int head_dim_v = 0;  // resolved: default D/H (mamba2: 64)
  FeatureMap feature_map = FeatureMap::silu;  // resolved per variant when not given
  bool output_norm = true;
  bool output_gate = true;  // resolved: hgrn2 has none
  int conv_size = 4;        // delta-rule variants and mamba2; 0 = no convolution
  int chunk_size = 64;
  // mamba2
  int expand = 2;
  int state_size = 128;
  int num_groups = 1;
};

enum class Dispatcher { alltoall, allgather };

struct MoeConfig {
  int num_experts = 0;  // 0 = dense SwiGLU FFN
  int top_k = 2;
  int ffn_hidden_size = 0;  // resolved: default model.ffn_hidden_size
  int shared_ffn_hidden_size = 0;
  bool norm_topk_prob = false;
  double aux_loss_coeff = 0.01;
  double z_loss_coeff = 0.0;
  std::optional<double> capacity_factor;  // empty = dropless
  std::string capacity_factor_text;       // the decimal as written (exact capacity arithmetic)
  Dispatcher dispatcher = Dispatcher::alltoall;
};

struct ModelConfig {
  int vocab_size = 256;
  int hidden_size = 128;
  int num_layers = 4;
  std::string layer_pattern = "LLLN";
  double norm_eps = 1e-6;
  double init_std = 0.02;
  bool tie_embeddings = false;
  int ffn_hidden_size = 512;
  AttentionConfig attention;
  LsmConfig lsm;
  MoeConfig moe;

  // 'L' or 'N' of layer i (the pattern repeats).
  char layer_kind(int i) const {
    return layer_pattern[static_cast<std::size_t>(i) % layer_pattern.size()];
  }
};

struct ParallelConfig {
  int tensor = 1;
  int pipeline = 1;
  int context = 1;
  int expert = 1;
  int data = 0;           // 0 = auto: world / (tensor·context·pipeline); resolved with the world
  int micro_batches = 0;  // 0 = auto: global_batch / (micro_batch·data); resolved with the world
  std::vector<int> pipeline_layers;  // empty = even split
  // Gradients are reduced over data parallelism in buckets of about this many MiB (fp32), each
  // started as soon as the backward has finished its parameters; 0 = one reduction per region
  // after the backward.
  double grad_bucket_mb = 25;
};

enum class Precision { fp32, bf16 };
enum class Recompute { none, selective, full };

struct TrainConfig {
  int seq_len = 256;
  int micro_batch_size = 4;
  int global_batch_size = 16;
  std::int64_t steps = 0;   // resolved from tokens when tokens is given
  std::int64_t tokens = 0;  // 0 = not given
  Precision precision = Precision::fp32;
  Recompute recompute = Recompute::none;
  int log_interval = 10;
  int eval_interval = 100;  // 0 = never
  int eval_steps = 10;
};

enum class ScheduleType { cosine, constant, wsd };
enum class OptimizerType { adamw, sgd };

struct ScheduleConfig {
  ScheduleType type = ScheduleType::cosine;
  std::int64_t warmup_steps = 0;
  std::int64_t decay_steps = 0;  // resolved: default train.steps
  std::int64_t decay_start = 0;  // wsd only (required there)
};

struct OptimizerConfig {
  OptimizerType type = OptimizerType::adamw;
  double lr = 3e-4;
  double min_lr = 0.0;
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // 0 = no clipping
  double momentum = 0.0;   // sgd
  ScheduleConfig schedule;
  bool zero = true;
};

struct DatasetEntry {
  std::string path;  // Megatron prefix (PREFIX.bin / PREFIX.idx)
  double weight = 1.0;
};

struct DataConfig {
  std::vector<DatasetEntry> train;
  std::vector<DatasetEntry> valid;  // empty = take the valid split of train
  std::string split = "98,2,0";
  double split_fractions[3] = {0.98, 0.02, 0.0};  // resolved from split
  std::uint64_t seed = 1234;
  std::string cache_dir;  // empty = next to the data
};

struct CheckpointConfig {
  std::string dir;            // resolved: default <run.output_dir>/ckpt
  int interval = 0;           // 0 = only at the end
  std::string load = "auto";  // auto | none | PATH
  bool save_initial = false;
  int keep_last = 3;
  double exit_after_minutes = 0;  // 0 = off
};

struct DeviceConfig {
  std::string backend = "auto";  // auto | cpu | cuda
  int cpu_threads = 0;           // 0 = the cores of this node shared among its ranks
};

struct LoggingConfig {
  std::string level = "info";
  std::string metrics_file = "metrics.jsonl";
};

struct Config {
  RunConfig run;
  ModelConfig model;
  ParallelConfig parallel;
  TrainConfig train;
  OptimizerConfig optimizer;
  DataConfig data;
  CheckpointConfig checkpoint;
  DeviceConfig device;
  LoggingConfig logging;

  std::string source_path;    // the YAML file it came from
  std::string resolved_yaml;  // every key with its resolved value; printed and checkpointed
};

// Loads `path`, applies the `key=value` overrides (value parsed as YAML: numbers, true/false,
// null, lists, strings), validates, resolves defaults. Throws UserError with one line naming the
// key, the value and the rule on any problem.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);
// The same from YAML text (tests).
Config load_config_from_string(const std::string& yaml, const std::vector<std::string>& overrides,
                               const std::string& source = "<string>");
// Checks that depend on the world size, and resolves parallel.data and parallel.micro_batches.
void resolve_parallel(Config& cfg, int world_size);

}  // namespace linmoe
