#include "layers/lsm_variants.h"

#include <cmath>

#include "core/check.h"

namespace linmoe {

Activation feature_map_activation(FeatureMap f) {
  switch (f) {
    case FeatureMap::identity:
      return Activation::identity;
    case FeatureMap::silu:
      return Activation::silu;
    case FeatureMap::elu1:
      return Activation::elu1;
    case FeatureMap::relu:
      return Activation::relu;
  }
  LINMOE_CHECK(false, "unknown feature map ", static_cast<int>(f));
  return Activation::identity;
}

bool has_constant_decay(LsmType t) {
  switch (t) {
    case LsmType::linear_attention:
    case LsmType::lightning:
    case LsmType::retention:
      return true;
    default:
      return false;
  }
}

double constant_log_decay(LsmType t, int global_head, int num_heads) {
  LINMOE_CHECK(num_heads >= 1 && global_head >= 0 && global_head < num_heads, "head ", global_head,
               " of ", num_heads);
  const double h = global_head, H = num_heads;
  switch (t) {
    case LsmType::linear_attention:
      return 0.0;
    case LsmType::lightning:
      // λ_h = exp(−2^(−8(h+1)/H)) for every H (MODEL.md 3; not ALiBi's interleaved list).
      return -std::exp2(-8.0 * (h + 1.0) / H);
    case LsmType::retention:
      // γ_h = 1 − 2^(−5−h); log1p keeps the tiny decays of the late heads accurate.
      return std::log1p(-std::exp2(-5.0 - h));
    default:
      break;
  }
  LINMOE_CHECK(false, "model.lsm.type ", lsm_type_name(t), " has no constant per-head decay");
  return 0.0;
}

}  // namespace linmoe
