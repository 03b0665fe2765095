// Parameter initialisation (MODEL.md 6): deterministic given the seed, and the same for every
// parallel layout — each value is a function of (seed, parameter name, global element index),
// so a rank holding a slice computes exactly its part of the whole tensor.
#pragma once
#include <cstdint>

#include "core/config.h"
#include "core/parameter_store.h"
#include "kernels/ops.h"

namespace linmoe {

// Fills every parameter of `params` (f32 or f64, host or device) per its InitKind in
// model_parameters(m).
void initialize_parameters(ParameterStore& params, const ModelConfig& m, std::uint64_t seed,
                           Backend& backend);

}  // namespace linmoe
