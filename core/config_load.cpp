// YAML -> typed Config: read every section strictly, resolve derived defaults, validate the
// cross-key rules (spec/CONFIG.md). Every failure is one line naming the key, value and rule.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/check.h"
#include "core/config.h"
#include "core/config_reader.h"
#include "core/config_yaml.h"

namespace linmoe {
namespace {

constexpr std::int64_t kMaxI32 = INT32_MAX;

LsmType parse_lsm_type(const std::string& s) {
  for (LsmType t : {LsmType::linear_attention, LsmType::lightning, LsmType::retention, LsmType::gla,
                    LsmType::hgrn2, LsmType::deltanet, LsmType::gated_deltanet, LsmType::mamba2}) {
    if (s == lsm_type_name(t)) return t;
  }
  LINMOE_CHECK(false, "unhandled lsm type ", s);
  return LsmType::lightning;
}

FeatureMap parse_feature_map(const std::string& s) {
  for (FeatureMap f :
       {FeatureMap::identity, FeatureMap::silu, FeatureMap::elu1, FeatureMap::relu}) {
    if (s == feature_map_name(f)) return f;
  }
  LINMOE_CHECK(false, "unhandled feature map ", s);
  return FeatureMap::silu;
}

void read_run(ConfigSection s, RunConfig& r) {
  r.name = s.get_string("name", r.name);
  r.seed = s.get_uint64("seed", r.seed);
  r.output_dir = s.get_string("output_dir", "runs/" + r.name);
  s.finish();
}

// `used`: the layer pattern has this mixer; otherwise derived sizes need not divide (the
// section is still read strictly, so typos are caught).
void read_attention(ConfigSection s, int hidden, bool used, AttentionConfig& a) {
  a.num_heads = static_cast<int>(s.get_int("num_heads", a.num_heads, 1, kMaxI32));
  a.num_kv_heads = static_cast<int>(s.get_int("num_kv_heads", a.num_heads, 1, kMaxI32));
  if (a.num_heads % a.num_kv_heads != 0) {
    s.fail("num_kv_heads", str_cat("must divide model.attention.num_heads = ", a.num_heads));
  }
  if (s.has("head_dim")) {
    a.head_dim = static_cast<int>(s.get_int("head_dim", 0, 2, kMaxI32));
  } else {
    if (used && hidden % a.num_heads != 0) {
      s.fail("num_heads",
             str_cat("must divide model.hidden_size = ", hidden, " when head_dim is not given"));
    }
    // Unused attention still resolves to a valid (even, ≥ 2) size so the resolved YAML reloads.
    a.head_dim = used ? hidden / a.num_heads : std::max(2, hidden / a.num_heads / 2 * 2);
  }
  if (used && a.head_dim % 2 != 0) {
    s.fail_value("head_dim", std::to_string(a.head_dim), "must be even (RoPE rotates halves)");
  }
  a.rope_theta = s.get_double("rope_theta", a.rope_theta, 0, 1e300, true, false);
  a.qkv_bias = s.get_bool("qkv_bias", a.qkv_bias);
  s.finish();
}

void read_lsm(ConfigSection s, int hidden, int attention_heads, bool used, LsmConfig& l) {
  l.type = parse_lsm_type(s.get_choice("type", "lightning",
                                       {"linear_attention", "lightning", "retention", "gla",
                                        "hgrn2", "deltanet", "gated_deltanet", "mamba2"}));
  l.conv_size = static_cast<int>(s.get_int("conv_size", 4, 0, 64));
  l.chunk_size = static_cast<int>(s.get_int("chunk_size", 64, 1, 4096));
  const bool mamba = l.type == LsmType::mamba2;
  const char* mamba_only[] = {"expand", "state_size", "num_groups"};
  if (mamba) {
    for (const char* k : {"head_dim_k", "feature_map", "output_norm", "output_gate"}) {
      if (s.has(k)) s.fail(k, "does not apply to model.lsm.type mamba2");
    }
    l.expand = static_cast<int>(s.get_int("expand", 2, 1, 64));
    l.state_size = static_cast<int>(s.get_int("state_size", 128, 1, 4096));
    l.num_groups = static_cast<int>(s.get_int("num_groups", 1, 1, kMaxI32));
    l.head_dim_v = static_cast<int>(s.get_int("head_dim_v", 64, 1, kMaxI32));
    std::int64_t d_inner = static_cast<std::int64_t>(l.expand) * hidden;
    if (d_inner % l.head_dim_v != 0) {
      s.fail("head_dim_v", str_cat("must divide expand * hidden_size = ", d_inner));
    }
    int heads = static_cast<int>(d_inner / l.head_dim_v);
    if (s.has("num_heads") && s.get_int("num_heads", 0, 1, kMaxI32) != heads) {
      s.fail("num_heads", str_cat("must equal expand * hidden_size / head_dim_v = ", heads,
                                  " for mamba2 (or be left out)"));
    }
    l.num_heads = heads;
    if (heads % l.num_groups != 0) {
      s.fail("num_groups", str_cat("must divide the mamba2 head count ", heads));
    }
    l.head_dim_k = l.state_size;
    l.feature_map = FeatureMap::identity;
    l.output_norm = false;
    l.output_gate = false;
  } else {
    for (const char* k : mamba_only) {
      if (s.has(k)) s.fail(k, "applies to model.lsm.type mamba2 only");
    }
    l.num_heads = static_cast<int>(s.get_int("num_heads", attention_heads, 1, kMaxI32));
    auto default_dim = [&](const char* key) {
      if (s.has(key)) return static_cast<int>(s.get_int(key, 0, 1, kMaxI32));
      if (hidden % l.num_heads != 0) {
        s.fail("num_heads",
               str_cat("must divide model.hidden_size = ", hidden, " when ", key, " is not given"));
      }
      return hidden / l.num_heads;
    };
    l.head_dim_k = default_dim("head_dim_k");
    l.head_dim_v = default_dim("head_dim_v");
    std::string fm_default = l.type == LsmType::linear_attention ? "elu1" : "silu";
    l.feature_map = parse_feature_map(
        s.get_choice("feature_map", fm_default, {"identity", "silu", "elu1", "relu"}));
    l.output_norm = s.get_bool("output_norm", true);
    if (l.type == LsmType::hgrn2) {
      l.output_gate = s.get_bool("output_gate", false);
      if (l.output_gate) s.fail("output_gate", "hgrn2 has no output gate (MODEL.md 3)");
    } else {
      l.output_gate = s.get_bool("output_gate", true);
    }
  }
  s.finish();
}

void read_moe(ConfigSection s, int dense_ffn, MoeConfig& m) {
  m.num_experts = static_cast<int>(s.get_int("num_experts", 0, 0, 1 << 16));
  m.top_k = static_cast<int>(s.get_int("top_k", 2, 1, 1 << 16));
  if (m.num_experts > 0 && m.top_k > m.num_experts) {
    s.fail("top_k", str_cat("must be <= model.moe.num_experts = ", m.num_experts));
  }
  m.ffn_hidden_size = static_cast<int>(s.get_int("ffn_hidden_size", dense_ffn, 1, kMaxI32));
  m.shared_ffn_hidden_size = static_cast<int>(s.get_int("shared_ffn_hidden_size", 0, 0, kMaxI32));
  m.norm_topk_prob = s.get_bool("norm_topk_prob", false);
  m.aux_loss_coeff = s.get_double("aux_loss_coeff", 0.01, 0, 1e300, false, false);
  m.z_loss_coeff = s.get_double("z_loss_coeff", 0.0, 0, 1e300, false, false);
  if (s.has("capacity_factor")) {
    m.capacity_factor = s.get_double("capacity_factor", 0, 0, 1e300, true, false);
    m.capacity_factor_text = s.node("capacity_factor").Scalar();
  }
  m.dispatcher = s.get_choice("dispatcher", "alltoall", {"alltoall", "allgather"}) == "allgather"
                     ? Dispatcher::allgather
                     : Dispatcher::alltoall;
  s.finish();
}

void read_model(ConfigSection s, ModelConfig& m) {
  m.vocab_size = static_cast<int>(s.get_int("vocab_size", 256, 2, kMaxI32));
  m.hidden_size = static_cast<int>(s.get_int("hidden_size", 128, 1, kMaxI32));
  m.num_layers = static_cast<int>(s.get_int("num_layers", 4, 1, 100000));
  m.layer_pattern = s.get_string("layer_pattern", "LLLN");
  for (char c : m.layer_pattern) {
    if (c != 'L' && c != 'N') {
      s.fail("layer_pattern", "must contain only L (LSM mixer) and N (softmax attention)");
    }
  }
  m.norm_eps = s.get_double("norm_eps", 1e-6, 0, 1, true, false);
  m.init_std = s.get_double("init_std", 0.02, 0, 1e300, true, false);
  m.tie_embeddings = s.get_bool("tie_embeddings", false);
  m.ffn_hidden_size = static_cast<int>(s.get_int("ffn_hidden_size", 512, 1, kMaxI32));
  const bool has_n = m.layer_pattern.find('N') != std::string::npos;
  const bool has_l = m.layer_pattern.find('L') != std::string::npos;
  read_attention(s.section("attention"), m.hidden_size, has_n, m.attention);
  read_lsm(s.section("lsm"), m.hidden_size, m.attention.num_heads, has_l, m.lsm);
  read_moe(s.section("moe"), m.ffn_hidden_size, m.moe);
  s.finish();
}

void read_parallel(ConfigSection s, ParallelConfig& p) {
  p.tensor = static_cast<int>(s.get_int("tensor", 1, 1, 1 << 16));
  p.pipeline = static_cast<int>(s.get_int("pipeline", 1, 1, 1 << 16));
  p.context = static_cast<int>(s.get_int("context", 1, 1, 1 << 16));
  p.expert = static_cast<int>(s.get_int("expert", 1, 1, 1 << 16));
  p.data = static_cast<int>(s.get_int_or_auto("data", 1));
  p.micro_batches = static_cast<int>(s.get_int_or_auto("micro_batches", 1));
  p.grad_bucket_mb = s.get_double("grad_bucket_mb", p.grad_bucket_mb, 0, 1e6, false, true);
  if (s.has("pipeline_layers")) {
    YAML::Node n = s.node("pipeline_layers");
    if (!n.IsSequence()) s.fail("pipeline_layers", "must be a list of layer counts, one per stage");
    for (const auto& e : n) {
      std::int64_t v = 0;
      try {
        v = e.as<std::int64_t>();
      } catch (const YAML::Exception&) {
        s.fail("pipeline_layers", "must be a list of integers");
      }
      if (v < 1) s.fail("pipeline_layers", "every stage needs at least one layer");
      p.pipeline_layers.push_back(static_cast<int>(v));
    }
  }
  s.finish();
}

void read_train(ConfigSection s, TrainConfig& t) {
  t.seq_len = static_cast<int>(s.get_int("seq_len", 256, 1, kMaxI32));
  t.micro_batch_size = static_cast<int>(s.get_int("micro_batch_size", 4, 1, kMaxI32));
  t.global_batch_size = static_cast<int>(s.get_int("global_batch_size", 16, 1, kMaxI32));
  if (s.has("steps") && s.has("tokens")) {
    s.fail("tokens", "give train.steps or train.tokens, not both");
  }
  if (s.has("tokens")) {
    t.tokens = s.get_int("tokens", 0, 1, INT64_MAX);
    std::int64_t per_step = static_cast<std::int64_t>(t.global_batch_size) * t.seq_len;
    t.steps = (t.tokens + per_step - 1) / per_step;
  } else {
    t.steps = s.get_int("steps", 200, 1, INT64_MAX);
  }
  t.precision = s.get_choice("precision", "fp32", {"fp32", "bf16"}) == "bf16" ? Precision::bf16
                                                                              : Precision::fp32;
  std::string rc = s.get_choice("recompute", "none", {"none", "selective", "full"});
  t.recompute = rc == "full"        ? Recompute::full
                : rc == "selective" ? Recompute::selective
                                    : Recompute::none;
  t.log_interval = static_cast<int>(s.get_int("log_interval", 10, 1, kMaxI32));
  t.eval_interval = static_cast<int>(s.get_int("eval_interval", 100, 0, kMaxI32));
  t.eval_steps = static_cast<int>(s.get_int("eval_steps", 10, 1, kMaxI32));
  if (t.global_batch_size % t.micro_batch_size != 0) {
    s.fail("global_batch_size",
           str_cat("must be a multiple of train.micro_batch_size = ", t.micro_batch_size));
  }
  s.finish();
}

void read_schedule(ConfigSection s, std::int64_t steps, ScheduleConfig& c) {
  std::string type = s.get_choice("type", "cosine", {"cosine", "constant", "wsd"});
  c.type = type == "wsd"        ? ScheduleType::wsd
           : type == "constant" ? ScheduleType::constant
                                : ScheduleType::cosine;
  c.warmup_steps = s.get_int("warmup_steps", 0, 0, INT64_MAX);
  c.decay_steps = s.get_int("decay_steps", steps, 1, INT64_MAX);
  if (c.type != ScheduleType::constant && c.decay_steps <= c.warmup_steps) {
    s.fail_value("decay_steps", std::to_string(c.decay_steps),
                 str_cat("must be > warmup_steps = ", c.warmup_steps));
  }
  if (c.type == ScheduleType::wsd) {
    if (!s.has("decay_start")) s.fail("decay_start", "is required by the wsd schedule");
    c.decay_start = s.get_int("decay_start", 0, 1, INT64_MAX);
    if (!(c.decay_start > c.warmup_steps && c.decay_start <= c.decay_steps)) {
      s.fail("decay_start", str_cat("must satisfy warmup_steps (", c.warmup_steps,
                                    ") < decay_start <= decay_steps (", c.decay_steps, ")"));
    }
  } else if (s.has("decay_start")) {
    s.fail("decay_start", "applies to the wsd schedule only");
  }
  s.finish();
}

void read_optimizer(ConfigSection s, std::int64_t steps, OptimizerConfig& o) {
  o.type = s.get_choice("type", "adamw", {"adamw", "sgd"}) == "sgd" ? OptimizerType::sgd
                                                                    : OptimizerType::adamw;
  o.lr = s.get_double("lr", 3e-4, 0, 1e300, false, false);
  o.min_lr = s.get_double("min_lr", 0.0, 0, 1e300, false, false);
  if (o.min_lr > o.lr) s.fail("min_lr", str_cat("must be <= optimizer.lr = ", o.lr));
  if (s.has("betas")) {
    YAML::Node b = s.node("betas");
    std::vector<double> v;
    if (b.IsSequence()) {
      for (const auto& e : b) {
        try {
          v.push_back(e.as<double>());
        } catch (const YAML::Exception&) {
          v.clear();
          break;
        }
      }
    }
    if (v.size() != 2 || !(v[0] >= 0 && v[0] < 1) || !(v[1] >= 0 && v[1] < 1)) {
      s.fail("betas", "must be a list of two numbers in [0, 1)");
    }
    o.beta1 = v[0];
    o.beta2 = v[1];
  }
  o.eps = s.get_double("eps", 1e-8, 0, 1, true, false);
  o.weight_decay = s.get_double("weight_decay", 0.1, 0, 1e300, false, false);
  o.grad_clip = s.get_double("grad_clip", 1.0, 0, 1e300, false, false);
  if (o.type == OptimizerType::sgd) {
    o.momentum = s.get_double("momentum", 0.0, 0, 1, false, true);
    if (s.has("betas")) s.fail("betas", "applies to adamw only");
  } else if (s.has("momentum")) {
    s.fail("momentum", "applies to optimizer.type sgd only");
  }
  read_schedule(s.section("schedule"), steps, o.schedule);
  if (o.schedule.warmup_steps > steps) {
    s.fail_value("schedule.warmup_steps", std::to_string(o.schedule.warmup_steps),
                 str_cat("must be <= train.steps = ", steps));
  }
  o.zero = s.get_bool("zero", true);
  s.finish();
}

std::vector<DatasetEntry> read_dataset_list(ConfigSection& s, const std::string& key) {
  std::vector<DatasetEntry> out;
  if (!s.has(key)) return out;
  YAML::Node n = s.node(key);
  if (!n.IsSequence() || n.size() == 0) {
    s.fail(key, "must be a non-empty list of {path: PREFIX, weight: W}");
  }
  for (std::size_t i = 0; i < n.size(); ++i) {
    ConfigSection e(n[i], s.key_path(key) + "[" + std::to_string(i) + "]");
    DatasetEntry d;
    if (!e.has("path")) e.fail("path", "is required (a Megatron dataset prefix)");
    d.path = e.get_string("path", "");
    d.weight = e.get_double("weight", 1.0, 0, 1e300, true, false);
    e.finish();
    out.push_back(d);
  }
  return out;
}

void read_data(ConfigSection s, std::uint64_t run_seed, DataConfig& d) {
  d.train = read_dataset_list(s, "train");
  d.valid = read_dataset_list(s, "valid");
  d.split = s.get_string("split", "98,2,0");
  {
    std::vector<double> parts;
    std::stringstream ss(d.split);
    std::string item;
    bool ok = true;
    while (std::getline(ss, item, ',')) {
      char* end = nullptr;
      double v = std::strtod(item.c_str(), &end);
      while (end && *end == ' ') ++end;
      if (item.empty() || *end != '\0' || !(v >= 0) || !std::isfinite(v)) ok = false;
      parts.push_back(v);
    }
    double total = 0;
    for (double p : parts) total += p;
    if (!ok || parts.empty() || parts.size() > 3 || !(total > 0)) {
      s.fail("split",
             "must be 1 to 3 comma-separated non-negative numbers with a positive sum, like "
             "\"98,2,0\"");
    }
    parts.resize(3, 0.0);
    for (int i = 0; i < 3; ++i) d.split_fractions[i] = parts[static_cast<std::size_t>(i)] / total;
  }
  d.seed = s.get_uint64("seed", run_seed);
  d.cache_dir = s.has("cache_dir") ? s.get_string("cache_dir", "") : "";
  s.finish();
}

void read_checkpoint(ConfigSection s, const std::string& output_dir, CheckpointConfig& c) {
  c.dir = s.get_string("dir", output_dir + "/ckpt");
  c.interval = static_cast<int>(s.get_int("interval", 0, 0, kMaxI32));
  c.load = s.get_string("load", "auto");
  c.save_initial = s.get_bool("save_initial", false);
  c.keep_last = static_cast<int>(s.get_int("keep_last", 3, 1, kMaxI32));
  c.exit_after_minutes = s.get_double("exit_after_minutes", 0, 0, 1e300, false, false);
  s.finish();
}

// Rules between sections that do not depend on the world size.
void validate_cross(const Config& c) {
  auto fail = [](const std::string& key, const std::string& value, const std::string& rule) {
    throw UserError(str_cat("config: ", key, " = ", value, ": ", rule));
  };
  const ModelConfig& m = c.model;
  const ParallelConfig& p = c.parallel;
  const bool has_attention = m.layer_pattern.find('N') != std::string::npos;
  const bool has_lsm = m.layer_pattern.find('L') != std::string::npos;
  const std::string tp = std::to_string(p.tensor);
  if (has_attention && m.attention.num_heads % p.tensor != 0) {
    fail("model.attention.num_heads", std::to_string(m.attention.num_heads),
         "must be divisible by parallel.tensor = " + tp);
  }
  if (has_attention && m.attention.num_kv_heads % p.tensor != 0) {
    fail("model.attention.num_kv_heads", std::to_string(m.attention.num_kv_heads),
         "must be divisible by parallel.tensor = " + tp);
  }
  if (has_lsm && m.lsm.num_heads % p.tensor != 0) {
    fail("model.lsm.num_heads", std::to_string(m.lsm.num_heads),
         "must be divisible by parallel.tensor = " + tp);
  }
  if (m.moe.num_experts == 0 && m.ffn_hidden_size % p.tensor != 0) {
    fail("model.ffn_hidden_size", std::to_string(m.ffn_hidden_size),
         "must be divisible by parallel.tensor = " + tp);
  }
  if (m.moe.num_experts > 0 && m.moe.num_experts % p.expert != 0) {
    fail("model.moe.num_experts", std::to_string(m.moe.num_experts),
         "must be divisible by parallel.expert = " + std::to_string(p.expert));
  }
  if (m.moe.num_experts == 0 && p.expert > 1) {
    fail("parallel.expert", std::to_string(p.expert), "needs model.moe.num_experts > 0");
  }
  if (p.pipeline_layers.empty()) {
    if (m.num_layers % p.pipeline != 0) {
      fail("model.num_layers", std::to_string(m.num_layers),
           "must be divisible by parallel.pipeline = " + std::to_string(p.pipeline) +
               " (or give parallel.pipeline_layers)");
    }
  } else {
    int sum = 0;
    for (int v : p.pipeline_layers) sum += v;
    if (static_cast<int>(p.pipeline_layers.size()) != p.pipeline || sum != m.num_layers) {
      fail("parallel.pipeline_layers",
           std::to_string(p.pipeline_layers.size()) + " stages, " + std::to_string(sum) + " layers",
           "must list parallel.pipeline = " + std::to_string(p.pipeline) +
               " stage sizes summing to model.num_layers = " + std::to_string(m.num_layers));
    }
  }
  if (m.vocab_size < p.tensor) {
    fail("model.vocab_size", std::to_string(m.vocab_size),
         "must be at least parallel.tensor = " + tp +
             " (each tensor rank holds a vocabulary block)");
  }
  const bool conv_lsm = has_lsm && m.lsm.conv_size > 1 &&
                        (m.lsm.type == LsmType::deltanet || m.lsm.type == LsmType::gated_deltanet ||
                         m.lsm.type == LsmType::mamba2);
  if (conv_lsm && p.context > 1 && c.train.seq_len / p.context < m.lsm.conv_size - 1) {
    fail("train.seq_len", std::to_string(c.train.seq_len),
         str_cat("must give each of the parallel.context = ", p.context,
                 " pieces at least model.lsm.conv_size - 1 = ", m.lsm.conv_size - 1,
                 " tokens (the short convolution's halo comes from one neighbour)"));
  }
  if (c.train.seq_len % p.context != 0) {
    fail("train.seq_len", std::to_string(c.train.seq_len),
         "must be divisible by parallel.context = " + std::to_string(p.context));
  }
}

}  // namespace

Config load_config_from_string(const std::string& yaml, const std::vector<std::string>& overrides,
                               const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw UserError(str_cat(source, ": not valid YAML: ", e.what()));
  }
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  apply_overrides(root, overrides);

  Config c;
  c.source_path = source;
  ConfigSection top(root, "");
  read_run(top.section("run"), c.run);
  read_model(top.section("model"), c.model);
  read_parallel(top.section("parallel"), c.parallel);
  read_train(top.section("train"), c.train);
  read_optimizer(top.section("optimizer"), c.train.steps, c.optimizer);
  read_data(top.section("data"), c.run.seed, c.data);
  read_checkpoint(top.section("checkpoint"), c.run.output_dir, c.checkpoint);
  {
    ConfigSection s = top.section("device");
    c.device.backend = s.get_choice("backend", "auto", {"auto", "cpu", "cuda"});
    c.device.cpu_threads = static_cast<int>(s.get_int("cpu_threads", 0, 0, 4096));
    s.finish();
  }
  {
    ConfigSection s = top.section("logging");
    c.logging.level = s.get_choice("level", "info", {"trace", "debug", "info", "warn", "error"});
    c.logging.metrics_file = s.get_string("metrics_file", "metrics.jsonl");
    s.finish();
  }
  top.finish();
  validate_cross(c);
  c.resolved_yaml = config_to_yaml(c);
  return c;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream f(path);
  if (!f) throw UserError(str_cat(path, ": cannot open the config file"));
  std::stringstream ss;
  ss << f.rdbuf();
  return load_config_from_string(ss.str(), overrides, path);
}

void resolve_parallel(Config& c, int world_size) {
  ParallelConfig& p = c.parallel;
  auto fail = [](const std::string& key, const std::string& value, const std::string& rule) {
    throw UserError(str_cat("config: ", key, " = ", value, ": ", rule));
  };
  const int model_parallel = p.tensor * p.context * p.pipeline;
  if (world_size % model_parallel != 0) {
    fail("parallel",
         str_cat("tensor ", p.tensor, " x context ", p.context, " x pipeline ", p.pipeline, " = ",
                 model_parallel),
         str_cat("must divide the world size ", world_size));
  }
  const int dp = world_size / model_parallel;
  if (p.data != 0 && p.data != dp) {
    fail("parallel.data", std::to_string(p.data),
         str_cat("tensor x context x data x pipeline = ", model_parallel * p.data,
                 " must equal the world size ", world_size, " (or use auto)"));
  }
  p.data = dp;
  if ((p.context * dp) % p.expert != 0) {
    fail("parallel.expert", std::to_string(p.expert),
         str_cat("must divide context x data = ", p.context * dp));
  }
  const int per_step = c.train.micro_batch_size * dp;
  if (c.train.global_batch_size % per_step != 0) {
    fail("train.global_batch_size", std::to_string(c.train.global_batch_size),
         str_cat("must be divisible by micro_batch_size x data = ", c.train.micro_batch_size, " x ",
                 dp));
  }
  const int mb = c.train.global_batch_size / per_step;
  if (p.micro_batches != 0 && p.micro_batches != mb) {
    fail("parallel.micro_batches", std::to_string(p.micro_batches),
         str_cat("must equal global_batch_size / (micro_batch_size x data) = ", mb,
                 " (or use auto)"));
  }
  p.micro_batches = mb;
  c.resolved_yaml = config_to_yaml(c);
}

}  // namespace linmoe
