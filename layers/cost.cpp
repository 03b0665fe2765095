#include "layers/cost.h"

#include <algorithm>

#include "layers/model.h"
#include "layers/model_spec.h"
#include "layers/sharding.h"

namespace linmoe {

std::vector<FlopsItem> flops_per_token(const ModelConfig& m, std::int64_t seq_len) {
  // Forward FLOPs per token; ×3 at the end for forward + backward.
  double attn_proj = 0, attn_core = 0, lsm_proj = 0, lsm_core = 0, router = 0, experts = 0,
         dense = 0, head = 0;
  for (const ModelParam& p : model_parameters(m)) {
    if (p.shape.ndim() < 2) continue;  // vectors: negligible elementwise work
    const double n = static_cast<double>(p.shape.numel());
    switch (p.role) {
      case ParamRole::mixer:
        (m.layer_kind(p.layer) == 'N' ? attn_proj : lsm_proj) += 2 * n;
        break;
      case ParamRole::router:
        router += 2 * n;
        break;
      case ParamRole::routed_expert:
        experts += 2 * n / m.moe.num_experts * m.moe.top_k;
        break;
      case ParamRole::shared_expert:
        experts += 2 * n;
        break;
      case ParamRole::dense_ffn:
        dense += 2 * n;
        break;
      case ParamRole::lm_head:
        head += 2 * n;
        break;
      case ParamRole::embedding:
        if (m.tie_embeddings) head += 2 * n;  // the tied head is a matmul; the lookup is free
        break;
      case ParamRole::norm:
        break;
    }
  }
  const double T = static_cast<double>(seq_len);
  const double C = static_cast<double>(std::min<std::int64_t>(m.lsm.chunk_size, seq_len));
  const LsmConfig& l = m.lsm;
  for (int i = 0; i < m.num_layers; ++i) {
    if (m.layer_kind(i) == 'N') {
      // QKᵀ and PV over (T+1)/2 visible keys on average: 2·2·d per key per head.
      attn_core += 4.0 * m.attention.num_heads * m.attention.head_dim * (T + 1) / 2;
    } else {
      // Intra-chunk: (C+1)/2 keys (QKᵀ with d_k, PV with d_v); inter-chunk: q·S and the state
      // update, 2·d_k·d_v each.
      const double dk = l.head_dim_k, dv = l.head_dim_v;
      lsm_core += l.num_heads * (2.0 * (C + 1) / 2 * (dk + dv) + 4.0 * dk * dv);
    }
  }
  std::vector<FlopsItem> items;
  auto add = [&](const char* name, double fwd) {
    if (fwd > 0) items.push_back({name, 3.0 * fwd});
  };
  add("attention projections", attn_proj);
  add("attention core", attn_core);
  add("lsm projections", lsm_proj);
  add("lsm core (chunk)", lsm_core);
  add("moe router", router);
  add("moe experts (active)", experts);
  add("dense ffn", dense);
  add("lm head", head);
  return items;
}

double total_flops_per_token(const ModelConfig& m, std::int64_t seq_len) {
  double t = 0;
  for (const FlopsItem& f : flops_per_token(m, seq_len)) t += f.per_token;
  return t;
}

MemoryEstimate memory_per_rank(const Config& c) {
  const ParallelConfig& p = c.parallel;
  const int dp = std::max(1, p.data), data_group = p.context * dp;
  const bool zero = c.optimizer.zero && data_group > 1;
  const double states = c.optimizer.type == OptimizerType::adamw ? 2.0
                        : c.optimizer.momentum != 0              ? 1.0
                                                                 : 0.0;
  const bool bf16 = c.train.precision == Precision::bf16;
  const DType dtype = bf16 ? DType::bf16 : DType::f32;
  const double size = static_cast<double>(dtype_size(dtype));
  const std::int64_t B = c.train.micro_batch_size, T = c.train.seq_len / p.context;
  const double N = static_cast<double>(B * T), D = static_cast<double>(c.model.hidden_size);
  const int micro_batches = std::max(1, p.micro_batches);
  MemoryEstimate best;
  for (int stage = 0; stage < p.pipeline; ++stage) {
    const ShardingPlan plan = make_sharding_plan(c, 0, 0, stage);
    double dense = 0, expert = 0, vocab_slice = 0;
    for (const ShardedParam& s : shard_parameters(c.model, plan)) {
      (s.expert ? expert : dense) += static_cast<double>(s.spec.shape.numel());
      if (s.spec.name == "embed.weight") vocab_slice = static_cast<double>(s.spec.shape.numel());
    }
    const double expert_group = static_cast<double>(data_group) / p.expert;
    // What this rank updates: its ZeRO shard of each region, or all of it.
    const double updated =
        zero ? dense / data_group + expert / std::max(1.0, expert_group) : dense + expert;
    MemoryEstimate e;
    e.weights = size * (dense + expert);
    e.gradients = size * (dense + expert) + (bf16 ? 4.0 * (dense + expert) : 0.0);
    e.master = bf16 ? 4.0 * updated : 0.0;
    e.optimizer = 4.0 * states * updated;
    // As Model::prepare_slot sizes them: a saved-activation arena per micro-batch in flight,
    // the scratch arena and the recompute arena.
    const double saved = static_cast<double>(
        Model::planned_activation_bytes(c.model, B, T, dtype, c.train.recompute, &plan));
    const int in_flight = p.pipeline > 1 ? std::min(p.pipeline - stage, micro_batches) : 1;
    e.activations = saved * in_flight +
                    static_cast<double>(Model::planned_scratch_bytes(c.model, B, T, dtype, &plan)) +
                    static_cast<double>(
                        Model::planned_recompute_bytes(c.model, B, T, dtype, c.train.recompute));
    if (zero) e.buffers += 4.0 * updated;  // the reduce-scatter's shard (engine.cpp)
    if (p.pipeline > 1) {
      e.buffers += 2 * N * D * size;  // the received activation and output gradient
      const bool tied_end = stage == 0 || stage == p.pipeline - 1;
      if (c.model.tie_embeddings && tied_end) e.buffers += 4.0 * vocab_slice;
    }
    if (e.total() > best.total()) best = e;
  }
  return best;
}

}  // namespace linmoe
