// bf16 on the CPU backend: every bf16 tensor argument of an op is widened to an f32 copy, the
// f32 op runs, and the op's outputs are rounded back to bf16 (round to nearest even). These are
// the rounding points of the GPU's bf16 kernels (bf16 in memory, fp32 inside an op), so a CPU
// bf16 run is the reference a GPU bf16 run is checked against; it is not fast.
#pragma once
#include <memory>

#include "kernels/ops.h"

namespace linmoe {

// Wraps an f32/f64 backend (the CPU backend) so that its ops also take bf16 tensors.
std::unique_ptr<Backend> make_bf16_widening(std::unique_ptr<Backend> inner);

}  // namespace linmoe
