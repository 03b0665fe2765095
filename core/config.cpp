#include "core/config.h"

namespace linmoe {

const char* lsm_type_name(LsmType t) {
  switch (t) {
    case LsmType::linear_attention:
      return "linear_attention";
    case LsmType::lightning:
      return "lightning";
    case LsmType::retention:
      return "retention";
    case LsmType::gla:
      return "gla";
    case LsmType::hgrn2:
      return "hgrn2";
    case LsmType::deltanet:
      return "deltanet";
    case LsmType::gated_deltanet:
      return "gated_deltanet";
    case LsmType::mamba2:
      return "mamba2";
  }
  return "?";
}

const char* feature_map_name(FeatureMap f) {
  switch (f) {
    case FeatureMap::identity:
      return "identity";
    case FeatureMap::silu:
      return "silu";
    case FeatureMap::elu1:
      return "elu1";
    case FeatureMap::relu:
      return "relu";
  }
  return "?";
}

LsmFamily lsm_family(LsmType t) {
  switch (t) {
    case LsmType::gla:
    case LsmType::hgrn2:
      return LsmFamily::vector_decay;
    case LsmType::deltanet:
    case LsmType::gated_deltanet:
      return LsmFamily::delta_rule;
    default:
      return LsmFamily::scalar_decay;
  }
}

}  // namespace linmoe
