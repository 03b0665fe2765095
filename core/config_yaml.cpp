#include "core/config_yaml.h"

#include <sstream>

#include "core/check.h"

namespace linmoe {

void apply_overrides(YAML::Node& root, const std::vector<std::string>& overrides) {
  for (const std::string& o : overrides) {
    auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw UserError(str_cat("--set '", o, "': expected key=value, like train.steps=100"));
    }
    std::string key = o.substr(0, eq), text = o.substr(eq + 1);
    std::vector<std::string> parts;
    std::stringstream ss(key);
    std::string part;
    while (std::getline(ss, part, '.')) {
      if (part.empty())
        throw UserError(str_cat("--set '", o, "': empty key segment in '", key, "'"));
      parts.push_back(part);
    }
    YAML::Node value;
    try {
      value = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      throw UserError(str_cat("--set '", o, "': value is not valid YAML: ", e.what()));
    }
    // yaml-cpp nodes are references: rebind `cur` with reset(), never operator= (which writes).
    YAML::Node cur;
    cur.reset(root);
    std::string walked;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      walked += (i ? "." : "") + parts[i];
      YAML::Node next = cur[parts[i]];
      if (!next.IsDefined() || next.IsNull()) {
        cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
        next.reset(cur[parts[i]]);
      } else if (!next.IsMap()) {
        throw UserError(str_cat("--set '", o, "': config: ", walked, " is a value, not a section"));
      }
      cur.reset(next);
    }
    cur[parts.back()] = value;
  }
}

namespace {
const char* precision_name(Precision p) {
  return p == Precision::bf16 ? "bf16" : "fp32";
}
const char* recompute_name(Recompute r) {
  return r == Recompute::full ? "full" : r == Recompute::selective ? "selective" : "none";
}
const char* schedule_name(ScheduleType t) {
  return t == ScheduleType::wsd ? "wsd" : t == ScheduleType::constant ? "constant" : "cosine";
}
YAML::Node datasets(const std::vector<DatasetEntry>& v) {
  YAML::Node n(YAML::NodeType::Sequence);
  for (const DatasetEntry& d : v) {
    YAML::Node e;
    e["path"] = d.path;
    e["weight"] = d.weight;
    n.push_back(e);
  }
  return n;
}
}  // namespace

std::string config_to_yaml(const Config& c) {
  YAML::Node r;
  r["run"]["name"] = c.run.name;
  r["run"]["seed"] = c.run.seed;
  r["run"]["output_dir"] = c.run.output_dir;

  const ModelConfig& m = c.model;
  YAML::Node model;
  model["vocab_size"] = m.vocab_size;
  model["hidden_size"] = m.hidden_size;
  model["num_layers"] = m.num_layers;
  model["layer_pattern"] = m.layer_pattern;
  model["norm_eps"] = m.norm_eps;
  model["init_std"] = m.init_std;
  model["tie_embeddings"] = m.tie_embeddings;
  model["ffn_hidden_size"] = m.ffn_hidden_size;
  model["attention"]["num_heads"] = m.attention.num_heads;
  model["attention"]["num_kv_heads"] = m.attention.num_kv_heads;
  model["attention"]["head_dim"] = m.attention.head_dim;
  model["attention"]["rope_theta"] = m.attention.rope_theta;
  model["attention"]["qkv_bias"] = m.attention.qkv_bias;
  YAML::Node lsm;
  lsm["type"] = lsm_type_name(m.lsm.type);
  lsm["num_heads"] = m.lsm.num_heads;
  if (m.lsm.type == LsmType::mamba2) {
    lsm["head_dim_v"] = m.lsm.head_dim_v;
    lsm["expand"] = m.lsm.expand;
    lsm["state_size"] = m.lsm.state_size;
    lsm["num_groups"] = m.lsm.num_groups;
  } else {
    lsm["head_dim_k"] = m.lsm.head_dim_k;
    lsm["head_dim_v"] = m.lsm.head_dim_v;
    lsm["feature_map"] = feature_map_name(m.lsm.feature_map);
    lsm["output_norm"] = m.lsm.output_norm;
    lsm["output_gate"] = m.lsm.output_gate;
  }
  lsm["conv_size"] = m.lsm.conv_size;
  lsm["chunk_size"] = m.lsm.chunk_size;
  model["lsm"] = lsm;
  YAML::Node moe;
  moe["num_experts"] = m.moe.num_experts;
  moe["top_k"] = m.moe.top_k;
  moe["ffn_hidden_size"] = m.moe.ffn_hidden_size;
  moe["shared_ffn_hidden_size"] = m.moe.shared_ffn_hidden_size;
  moe["norm_topk_prob"] = m.moe.norm_topk_prob;
  moe["aux_loss_coeff"] = m.moe.aux_loss_coeff;
  moe["z_loss_coeff"] = m.moe.z_loss_coeff;
  if (m.moe.capacity_factor) {
    moe["capacity_factor"] = YAML::Load(m.moe.capacity_factor_text);
  } else {
    moe["capacity_factor"] = YAML::Node(YAML::NodeType::Null);
  }
  moe["dispatcher"] = m.moe.dispatcher == Dispatcher::allgather ? "allgather" : "alltoall";
  model["moe"] = moe;
  r["model"] = model;

  const ParallelConfig& p = c.parallel;
  r["parallel"]["tensor"] = p.tensor;
  r["parallel"]["pipeline"] = p.pipeline;
  r["parallel"]["context"] = p.context;
  r["parallel"]["expert"] = p.expert;
  if (p.data)
    r["parallel"]["data"] = p.data;
  else
    r["parallel"]["data"] = "auto";
  if (p.micro_batches)
    r["parallel"]["micro_batches"] = p.micro_batches;
  else
    r["parallel"]["micro_batches"] = "auto";
  if (!p.pipeline_layers.empty()) r["parallel"]["pipeline_layers"] = p.pipeline_layers;
  r["parallel"]["grad_bucket_mb"] = p.grad_bucket_mb;

  const TrainConfig& t = c.train;
  r["train"]["seq_len"] = t.seq_len;
  r["train"]["micro_batch_size"] = t.micro_batch_size;
  r["train"]["global_batch_size"] = t.global_batch_size;
  r["train"]["steps"] = t.steps;
  r["train"]["precision"] = precision_name(t.precision);
  r["train"]["recompute"] = recompute_name(t.recompute);
  r["train"]["log_interval"] = t.log_interval;
  r["train"]["eval_interval"] = t.eval_interval;
  r["train"]["eval_steps"] = t.eval_steps;

  const OptimizerConfig& o = c.optimizer;
  YAML::Node opt;
  opt["type"] = o.type == OptimizerType::sgd ? "sgd" : "adamw";
  opt["lr"] = o.lr;
  opt["min_lr"] = o.min_lr;
  if (o.type == OptimizerType::adamw) {
    YAML::Node betas(YAML::NodeType::Sequence);
    betas.push_back(o.beta1);
    betas.push_back(o.beta2);
    opt["betas"] = betas;
  } else {
    opt["momentum"] = o.momentum;
  }
  opt["eps"] = o.eps;
  opt["weight_decay"] = o.weight_decay;
  opt["grad_clip"] = o.grad_clip;
  opt["schedule"]["type"] = schedule_name(o.schedule.type);
  opt["schedule"]["warmup_steps"] = o.schedule.warmup_steps;
  opt["schedule"]["decay_steps"] = o.schedule.decay_steps;
  if (o.schedule.type == ScheduleType::wsd) opt["schedule"]["decay_start"] = o.schedule.decay_start;
  opt["zero"] = o.zero;
  r["optimizer"] = opt;

  r["data"]["train"] = datasets(c.data.train);
  if (c.data.valid.empty()) {
    r["data"]["valid"] = YAML::Node(YAML::NodeType::Null);
  } else {
    r["data"]["valid"] = datasets(c.data.valid);
  }
  r["data"]["split"] = c.data.split;
  r["data"]["seed"] = c.data.seed;
  if (c.data.cache_dir.empty()) {
    r["data"]["cache_dir"] = YAML::Node(YAML::NodeType::Null);
  } else {
    r["data"]["cache_dir"] = c.data.cache_dir;
  }

  r["checkpoint"]["dir"] = c.checkpoint.dir;
  r["checkpoint"]["interval"] = c.checkpoint.interval;
  r["checkpoint"]["load"] = c.checkpoint.load;
  r["checkpoint"]["save_initial"] = c.checkpoint.save_initial;
  r["checkpoint"]["keep_last"] = c.checkpoint.keep_last;
  r["checkpoint"]["exit_after_minutes"] = c.checkpoint.exit_after_minutes;
  r["device"]["backend"] = c.device.backend;
  r["device"]["cpu_threads"] = c.device.cpu_threads;
  r["logging"]["level"] = c.logging.level;
  r["logging"]["metrics_file"] = c.logging.metrics_file;

  YAML::Emitter e;
  e << r;
  return std::string(e.c_str()) + "\n";
}

}  // namespace linmoe
