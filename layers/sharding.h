// Which slice of every parameter a rank holds (spec/PARALLEL.md), and how its gradient is
// reduced. The single place that knows the tensor-, expert- and pipeline-parallel splits:
//   tensor parallel  column-parallel rows (q/k/v/f/g/gate projections, w1/w3, per-head b_proj,
//                    a_proj, A_log, dt_bias, conv channels) and row-parallel columns (o_proj,
//                    w2) by whole heads; the vocabulary rows of embed/lm_head in balanced blocks
//                    [V·r/tp, V·(r+1)/tp); everything else replicated.
//   expert parallel  experts.w1/w3/w2 split along the expert dimension over the ep group.
//   pipeline         a stage holds its layers; embed on the first stage, final_norm and the head
//                    on the last (and a copy of embed there when the embeddings are tied).
// Slices are boxes of the global tensor (ParamSpec offset/shape), so initialisation and
// checkpoints never depend on the layout.
#pragma once
#include <string>
#include <vector>

#include "core/config.h"
#include "core/parameter_store.h"
#include "layers/model_spec.h"

namespace linmoe {

// The part of the parallel layout that decides slices (no communicators: `linmoe inspect` and
// tests use it without MPI).
struct ShardingPlan {
  int tp = 1, tp_rank = 0;
  int ep = 1, ep_rank = 0;
  int pp = 1, pp_rank = 0;
  std::vector<int> stage_layers;  // layers per stage (pp entries)
  int first_layer() const;        // this stage's layers: [first_layer, last_layer)
  int last_layer() const;
  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp - 1; }
};

// The plan of a rank from the resolved config and its coordinates. UserError for layouts the
// layers cannot split (e.g. mamba2's fused in_proj under tensor parallelism).
ShardingPlan make_sharding_plan(const Config& cfg, int tp_rank, int ep_rank, int pp_rank);
// Stage sizes: parallel.pipeline_layers, or num_layers / pp each.
std::vector<int> stage_layer_counts(const ModelConfig& m, const ParallelConfig& p);

struct ShardedParam {
  ModelParam param;  // name, global shape, role, init
  ParamSpec spec;    // this rank's slice
  // Replicated over the tp group (not split). Its gradient is identical on every tp rank unless
  // tp_partial_grad.
  bool tp_replicated = true;
  // Each tp rank holds only part of the gradient of this replicated parameter (per-head
  // contributions to o_norm, the MoE's token split): sum it over tp.
  bool tp_partial_grad = false;
  // Routed experts: gradients reduce over the expert-data-parallel group, not dp·cp.
  bool expert = false;
  // The last stage's copy of a tied embedding (pp > 1): its gradient is summed with the first
  // stage's; not written to checkpoints, not counted twice in the gradient norm.
  bool tied_copy = false;
};

// This rank's parameters in registration order: every non-expert parameter first, then the
// expert ones (so the flat buffers split into a dense and an expert region for ZeRO).
std::vector<ShardedParam> shard_parameters(const ModelConfig& m, const ShardingPlan& plan);

// Balanced block [n·r/parts, n·(r+1)/parts) of n.
struct Range {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const { return end - begin; }
};
Range balanced_block(std::int64_t n, int parts, int r);

}  // namespace linmoe
