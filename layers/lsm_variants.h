// The LSM variant table of MODEL.md 3: how each `lsm.type` maps onto the kernels — its kernel
// family, its feature map φ as a backend activation, and the fixed per-head decay of the
// constant-decay variants. One place, so the layer, the tests and later the CUDA/parallel code
// agree on the constants.
#pragma once
#include "core/config.h"
#include "kernels/ops.h"

namespace linmoe {

// φ (lsm.feature_map) as the backend activation that computes it.
Activation feature_map_activation(FeatureMap f);

// True for the variants whose decay is one constant per head (linear_attention, lightning,
// retention): the wrapper of MODEL.md 3 with the scalar-decay core and no gate parameters.
bool has_constant_decay(LsmType t);

// log A_h of a constant-decay variant (MODEL.md 3), h the GLOBAL head index in [0, H), H the
// global head count (the same under tensor parallelism):
//   linear_attention 0;  lightning −2^(−8(h+1)/H);  retention log(1 − 2^(−5−h)).
// Fails loudly for any other variant.
double constant_log_decay(LsmType t, int global_head, int num_heads);

}  // namespace linmoe
