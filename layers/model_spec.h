// Every parameter of the model described by a ModelConfig: MODEL.md section 7 names, global
// (unsharded) shapes, what it is for (parameter counts, weight decay) and how it is initialised
// (MODEL.md section 6). The single source of truth for names: the model, checkpoints, conversion
// and `linmoe inspect` all read it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/tensor.h"

namespace linmoe {

enum class ParamRole {
  embedding,      // embed.weight
  lm_head,        // lm_head.weight (absent when tied)
  norm,           // every RMSNorm weight
  mixer,          // attention / LSM projections and their small parameters
  router,         // MoE router
  routed_expert,  // experts.w1/w3/w2: a token uses top_k of num_experts
  shared_expert,  // shared expert and its gate
  dense_ffn       // dense SwiGLU
};

enum class InitKind {
  normal,         // N(0, init_std)
  normal_output,  // N(0, init_std / sqrt(2·num_layers)): o_proj, w2, out_proj
  ones,           // norms, mamba2 D
  zeros,          // biases
  conv,           // short-convolution weights: U(±1/sqrt(K)) like PyTorch's Conv1d default
  mamba_a_log,    // log(A), A ~ U[1, 16]
  mamba_dt_bias   // softplus⁻¹(dt), dt log-uniform in [1e-3, 1e-1]
};

struct ModelParam {
  std::string name;
  Shape shape;  // global
  ParamRole role;
  InitKind init;
  int layer = -1;                                          // -1 for embed, final_norm, lm_head
  bool weight_decay() const { return shape.ndim() >= 2; }  // MODEL.md 5
};

const char* param_role_name(ParamRole r);
const char* init_kind_name(InitKind k);

std::vector<ModelParam> model_parameters(const ModelConfig& m);

struct ParamCounts {
  std::int64_t total = 0;
  std::int64_t embedding = 0;  // embed + untied lm_head
  std::int64_t active = 0;     // used per token: routed experts count top_k / num_experts
  std::int64_t total_non_embedding() const { return total - embedding; }
  std::int64_t active_non_embedding() const { return active - embedding; }
};
ParamCounts count_parameters(const ModelConfig& m);

}  // namespace linmoe
