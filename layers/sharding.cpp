#include "layers/sharding.h"

#include "core/check.h"

namespace linmoe {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

enum class Split { none, rows, columns };

// How tensor parallelism splits a parameter (by its MODEL.md 7 name); `partial` marks
// replicated parameters whose gradient each tp rank only holds a part of.
Split tp_split(const ModelParam& p, const ModelConfig& m, bool* partial) {
  *partial = false;
  const std::string& n = p.name;
  if (p.role == ParamRole::embedding || p.role == ParamRole::lm_head) return Split::rows;
  if (p.role == ParamRole::router || p.role == ParamRole::routed_expert ||
      p.role == ParamRole::shared_expert) {
    *partial = true;  // the MoE block splits tokens, not weights, over tp
    return Split::none;
  }
  if (p.role == ParamRole::dense_ffn)
    return ends_with(n, "w2.weight") ? Split::columns : Split::rows;
  if (p.layer < 0 || n.find(".mixer.") == std::string::npos) return Split::none;  // block norms
  if (ends_with(n, "o_proj.weight")) return Split::columns;
  if (ends_with(n, "o_norm.weight") || ends_with(n, "gk_proj.0.weight")) {
    *partial = true;  // one weight shared by all heads; each rank sees its heads' share
    return Split::none;
  }
  (void)m;
  // q/k/v/f/g projections and biases, gk_proj.1, b_proj, a_proj, A_log, dt_bias, conv channels:
  // whole heads along dimension 0.
  return Split::rows;
}

}  // namespace

Range balanced_block(std::int64_t n, int parts, int r) {
  return Range{n * r / parts, n * (r + 1) / parts};
}

int ShardingPlan::first_layer() const {
  int l = 0;
  for (int s = 0; s < pp_rank; ++s) l += stage_layers[static_cast<std::size_t>(s)];
  return l;
}

int ShardingPlan::last_layer() const {
  return first_layer() + stage_layers[static_cast<std::size_t>(pp_rank)];
}

std::vector<int> stage_layer_counts(const ModelConfig& m, const ParallelConfig& p) {
  if (!p.pipeline_layers.empty()) return p.pipeline_layers;
  return std::vector<int>(static_cast<std::size_t>(p.pipeline), m.num_layers / p.pipeline);
}

ShardingPlan make_sharding_plan(const Config& cfg, int tp_rank, int ep_rank, int pp_rank) {
  const ParallelConfig& p = cfg.parallel;
  ShardingPlan plan;
  plan.tp = p.tensor;
  plan.tp_rank = tp_rank;
  plan.ep = p.expert;
  plan.ep_rank = ep_rank;
  plan.pp = p.pipeline;
  plan.pp_rank = pp_rank;
  plan.stage_layers = stage_layer_counts(cfg.model, p);
  const bool has_lsm = cfg.model.layer_pattern.find('L') != std::string::npos;
  if (plan.tp > 1 && has_lsm && cfg.model.lsm.type == LsmType::mamba2) {
    throw UserError(str_cat(
        "config: parallel.tensor = ", plan.tp,
        ": mamba2 layers do not support tensor parallelism yet (the fused in_proj's z/x/B/C/dt "
        "sections would need a non-contiguous split); use parallel.tensor 1 with mamba2"));
  }
  for (int s : plan.stage_layers) {
    if (s < 1) {
      throw UserError(
          str_cat("config: parallel.pipeline_layers: every stage needs at least one "
                  "layer, got ",
                  s));
    }
  }
  return plan;
}

std::vector<ShardedParam> shard_parameters(const ModelConfig& m, const ShardingPlan& plan) {
  std::vector<ShardedParam> dense, experts;
  const int first = plan.first_layer(), last = plan.last_layer();
  for (const ModelParam& p : model_parameters(m)) {
    bool tied_copy = false;
    if (p.layer >= 0) {
      if (p.layer < first || p.layer >= last) continue;
    } else if (p.role == ParamRole::embedding) {
      // The first stage embeds; the last stage's head reads the same tensor when tied.
      const bool head_here = m.tie_embeddings && plan.last_stage();
      if (!plan.first_stage() && !head_here) continue;
      tied_copy = !plan.first_stage();
    } else if (!plan.last_stage()) {
      continue;  // final_norm, lm_head
    }
    ShardedParam s;
    s.param = p;
    s.tied_copy = tied_copy;
    s.expert = p.role == ParamRole::routed_expert;
    s.spec = whole_param(p.name, p.shape);
    bool partial = false;
    const Split split = tp_split(p, m, &partial);
    if (plan.tp > 1 && split != Split::none) {
      const int d = split == Split::rows ? 0 : 1;
      const Range r = balanced_block(p.shape[d], plan.tp, plan.tp_rank);
      s.spec.shape[d] = r.size();
      s.spec.offset[static_cast<std::size_t>(d)] = r.begin;
      s.tp_replicated = false;
    }
    s.tp_partial_grad = plan.tp > 1 && partial;
    if (s.expert && plan.ep > 1) {
      const Range r = balanced_block(p.shape[0], plan.ep, plan.ep_rank);
      s.spec.shape[0] = r.size();
      s.spec.offset[0] = r.begin;
    }
    (s.expert ? experts : dense).push_back(std::move(s));
  }
  dense.insert(dense.end(), experts.begin(), experts.end());
  return dense;
}

}  // namespace linmoe
