// Learning-rate schedules (MODEL.md 5): linear warmup, then cosine, constant or
// warmup-stable-decay (wsd) to min_lr.
#pragma once
#include <cstdint>

#include "core/config.h"

namespace linmoe {

// The learning rate of optimizer step s (s = 1, 2, ...).
double learning_rate(const OptimizerConfig& opt, std::int64_t step);

}  // namespace linmoe
