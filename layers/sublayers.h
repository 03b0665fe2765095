// The sublayers of MODEL.md, built from the config for layer i. Each finds its parameters in
// the store by their MODEL.md names ("layers.{i}.mixer.q_proj.weight", ...), which
// model_parameters() registered.
#pragma once
#include <memory>

#include "layers/layer.h"

namespace linmoe {

// 'N': softmax attention with RoPE and GQA (MODEL.md 2). layers/attention.cpp
std::unique_ptr<Sublayer> make_attention(const ModelConfig& m, int layer,
                                         const ParameterStore& params);
// 'L': the LSM wrapper of MODEL.md 3 with the core of lsm.type's kernel family (scalar decay:
// linear_attention, lightning, retention; vector decay: gla, hgrn2; delta rule: deltanet,
// gated_deltanet), or the mamba2 block. layers/lsm*.cpp, layers/mamba2.cpp
std::unique_ptr<Sublayer> make_lsm(const ModelConfig& m, int layer, const ParameterStore& params);
std::unique_ptr<Sublayer> make_mamba2(const ModelConfig& m, int layer,
                                      const ParameterStore& params);
// FFN: the MoE block (MODEL.md 4) when moe.num_experts > 0, else a dense SwiGLU.
// layers/moe.cpp, layers/dense_ffn.cpp
std::unique_ptr<Sublayer> make_moe(const ModelConfig& m, int layer, const ParameterStore& params);
std::unique_ptr<Sublayer> make_dense_ffn(const ModelConfig& m, int layer,
                                         const ParameterStore& params);

}  // namespace linmoe
