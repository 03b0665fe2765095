#include "layers/model_spec.h"

#include "core/check.h"

namespace linmoe {

const char* param_role_name(ParamRole r) {
  switch (r) {
    case ParamRole::embedding:
      return "embedding";
    case ParamRole::lm_head:
      return "lm_head";
    case ParamRole::norm:
      return "norm";
    case ParamRole::mixer:
      return "mixer";
    case ParamRole::router:
      return "router";
    case ParamRole::routed_expert:
      return "routed experts";
    case ParamRole::shared_expert:
      return "shared expert";
    case ParamRole::dense_ffn:
      return "dense ffn";
  }
  return "?";
}

const char* init_kind_name(InitKind k) {
  switch (k) {
    case InitKind::normal:
      return "normal";
    case InitKind::normal_output:
      return "normal_output";
    case InitKind::ones:
      return "ones";
    case InitKind::zeros:
      return "zeros";
    case InitKind::conv:
      return "conv";
    case InitKind::mamba_a_log:
      return "mamba_a_log";
    case InitKind::mamba_dt_bias:
      return "mamba_dt_bias";
  }
  return "?";
}

namespace {

class Collector {
 public:
  explicit Collector(std::vector<ModelParam>& out) : out_(out) {}
  void add(std::string name, Shape shape, ParamRole role, InitKind init, int layer) {
    out_.push_back(ModelParam{std::move(name), shape, role, init, layer});
  }

 private:
  std::vector<ModelParam>& out_;
};

void attention_params(const ModelConfig& m, const std::string& p, int i, Collector& c) {
  const AttentionConfig& a = m.attention;
  const std::int64_t D = m.hidden_size, qd = std::int64_t{a.num_heads} * a.head_dim,
                     kvd = std::int64_t{a.num_kv_heads} * a.head_dim;
  c.add(p + "q_proj.weight", {qd, D}, ParamRole::mixer, InitKind::normal, i);
  c.add(p + "k_proj.weight", {kvd, D}, ParamRole::mixer, InitKind::normal, i);
  c.add(p + "v_proj.weight", {kvd, D}, ParamRole::mixer, InitKind::normal, i);
  if (a.qkv_bias) {
    c.add(p + "q_proj.bias", {qd}, ParamRole::mixer, InitKind::zeros, i);
    c.add(p + "k_proj.bias", {kvd}, ParamRole::mixer, InitKind::zeros, i);
    c.add(p + "v_proj.bias", {kvd}, ParamRole::mixer, InitKind::zeros, i);
  }
  c.add(p + "o_proj.weight", {D, qd}, ParamRole::mixer, InitKind::normal_output, i);
}

void mamba2_params(const ModelConfig& m, const std::string& p, int i, Collector& c) {
  const LsmConfig& l = m.lsm;
  const std::int64_t D = m.hidden_size, d_inner = std::int64_t{l.expand} * D, H = l.num_heads,
                     GN = std::int64_t{l.num_groups} * l.state_size, conv_dim = d_inner + 2 * GN;
  c.add(p + "in_proj.weight", {2 * d_inner + 2 * GN + H, D}, ParamRole::mixer, InitKind::normal, i);
  if (l.conv_size > 0) {
    c.add(p + "conv1d.weight", {conv_dim, 1, l.conv_size}, ParamRole::mixer, InitKind::conv, i);
    c.add(p + "conv1d.bias", {conv_dim}, ParamRole::mixer, InitKind::zeros, i);
  }
  c.add(p + "dt_bias", {H}, ParamRole::mixer, InitKind::mamba_dt_bias, i);
  c.add(p + "A_log", {H}, ParamRole::mixer, InitKind::mamba_a_log, i);
  c.add(p + "D", {H}, ParamRole::mixer, InitKind::ones, i);
  c.add(p + "norm.weight", {d_inner}, ParamRole::norm, InitKind::ones, i);
  c.add(p + "out_proj.weight", {D, d_inner}, ParamRole::mixer, InitKind::normal_output, i);
}

void lsm_params(const ModelConfig& m, const std::string& p, int i, Collector& c) {
  const LsmConfig& l = m.lsm;
  if (l.type == LsmType::mamba2) return mamba2_params(m, p, i, c);
  const std::int64_t D = m.hidden_size, H = l.num_heads, kd = H * l.head_dim_k,
                     vd = H * l.head_dim_v, K = l.conv_size;
  c.add(p + "q_proj.weight", {kd, D}, ParamRole::mixer, InitKind::normal, i);
  if (l.type == LsmType::hgrn2) {
    c.add(p + "f_proj.weight", {kd, D}, ParamRole::mixer, InitKind::normal, i);
  } else {
    c.add(p + "k_proj.weight", {kd, D}, ParamRole::mixer, InitKind::normal, i);
  }
  c.add(p + "v_proj.weight", {vd, D}, ParamRole::mixer, InitKind::normal, i);
  if (l.type == LsmType::gla) {
    c.add(p + "gk_proj.0.weight", {16, D}, ParamRole::mixer, InitKind::normal, i);
    c.add(p + "gk_proj.1.weight", {kd, 16}, ParamRole::mixer, InitKind::normal, i);
    c.add(p + "gk_proj.1.bias", {kd}, ParamRole::mixer, InitKind::zeros, i);
  }
  const bool delta = lsm_family(l.type) == LsmFamily::delta_rule;
  if (delta) {
    c.add(p + "b_proj.weight", {H, D}, ParamRole::mixer, InitKind::normal, i);
    if (l.type == LsmType::gated_deltanet) {
      c.add(p + "a_proj.weight", {H, D}, ParamRole::mixer, InitKind::normal, i);
      c.add(p + "A_log", {H}, ParamRole::mixer, InitKind::mamba_a_log, i);
      c.add(p + "dt_bias", {H}, ParamRole::mixer, InitKind::mamba_dt_bias, i);
    }
    if (K > 0) {
      c.add(p + "q_conv.weight", {kd, 1, K}, ParamRole::mixer, InitKind::conv, i);
      c.add(p + "k_conv.weight", {kd, 1, K}, ParamRole::mixer, InitKind::conv, i);
      c.add(p + "v_conv.weight", {vd, 1, K}, ParamRole::mixer, InitKind::conv, i);
    }
  }
  if (l.output_gate) c.add(p + "g_proj.weight", {vd, D}, ParamRole::mixer, InitKind::normal, i);
  if (l.output_norm) c.add(p + "o_norm.weight", {l.head_dim_v}, ParamRole::norm, InitKind::ones, i);
  c.add(p + "o_proj.weight", {D, vd}, ParamRole::mixer, InitKind::normal_output, i);
}

void ffn_params(const ModelConfig& m, const std::string& p, int i, Collector& c) {
  const MoeConfig& e = m.moe;
  const std::int64_t D = m.hidden_size;
  if (e.num_experts == 0) {
    const std::int64_t F = m.ffn_hidden_size;
    c.add(p + "w1.weight", {F, D}, ParamRole::dense_ffn, InitKind::normal, i);
    c.add(p + "w3.weight", {F, D}, ParamRole::dense_ffn, InitKind::normal, i);
    c.add(p + "w2.weight", {D, F}, ParamRole::dense_ffn, InitKind::normal_output, i);
    return;
  }
  const std::int64_t E = e.num_experts, F = e.ffn_hidden_size;
  c.add(p + "router.weight", {E, D}, ParamRole::router, InitKind::normal, i);
  c.add(p + "experts.w1", {E, F, D}, ParamRole::routed_expert, InitKind::normal, i);
  c.add(p + "experts.w3", {E, F, D}, ParamRole::routed_expert, InitKind::normal, i);
  c.add(p + "experts.w2", {E, D, F}, ParamRole::routed_expert, InitKind::normal_output, i);
  if (e.shared_ffn_hidden_size > 0) {
    const std::int64_t Fs = e.shared_ffn_hidden_size;
    c.add(p + "shared.w1.weight", {Fs, D}, ParamRole::shared_expert, InitKind::normal, i);
    c.add(p + "shared.w3.weight", {Fs, D}, ParamRole::shared_expert, InitKind::normal, i);
    c.add(p + "shared.w2.weight", {D, Fs}, ParamRole::shared_expert, InitKind::normal_output, i);
    c.add(p + "shared_gate.weight", {1, D}, ParamRole::shared_expert, InitKind::normal, i);
  }
}

}  // namespace

std::vector<ModelParam> model_parameters(const ModelConfig& m) {
  std::vector<ModelParam> out;
  Collector c(out);
  const std::int64_t V = m.vocab_size, D = m.hidden_size;
  c.add("embed.weight", {V, D}, ParamRole::embedding, InitKind::normal, -1);
  for (int i = 0; i < m.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    c.add(p + "mixer_norm.weight", {D}, ParamRole::norm, InitKind::ones, i);
    if (m.layer_kind(i) == 'N') {
      attention_params(m, p + "mixer.", i, c);
    } else {
      lsm_params(m, p + "mixer.", i, c);
    }
    c.add(p + "ffn_norm.weight", {D}, ParamRole::norm, InitKind::ones, i);
    ffn_params(m, p + "ffn.", i, c);
  }
  c.add("final_norm.weight", {D}, ParamRole::norm, InitKind::ones, -1);
  if (!m.tie_embeddings) c.add("lm_head.weight", {V, D}, ParamRole::lm_head, InitKind::normal, -1);
  return out;
}

ParamCounts count_parameters(const ModelConfig& m) {
  ParamCounts n;
  for (const ModelParam& p : model_parameters(m)) {
    const std::int64_t size = p.shape.numel();
    n.total += size;
    if (p.role == ParamRole::embedding || p.role == ParamRole::lm_head) n.embedding += size;
    n.active += p.role == ParamRole::routed_expert ? size / m.moe.num_experts * m.moe.top_k : size;
  }
  return n;
}

}  // namespace linmoe
