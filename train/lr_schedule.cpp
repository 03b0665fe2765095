#include "train/lr_schedule.h"

#include <cmath>

#include "core/check.h"

namespace linmoe {

double learning_rate(const OptimizerConfig& opt, std::int64_t step) {
  LINMOE_CHECK(step >= 1, "learning_rate of step ", step);
  const ScheduleConfig& s = opt.schedule;
  const double lr = opt.lr, min_lr = opt.min_lr;
  const auto W = static_cast<double>(s.warmup_steps), S = static_cast<double>(step),
             Sd = static_cast<double>(s.decay_steps);
  if (step <= s.warmup_steps) return lr * S / W;
  switch (s.type) {
    case ScheduleType::constant:
      return lr;
    case ScheduleType::cosine:
      if (step >= s.decay_steps) return min_lr;
      return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * (S - W) / (Sd - W)));
    case ScheduleType::wsd: {
      if (step <= s.decay_start) return lr;
      if (step >= s.decay_steps) return min_lr;
      const double d0 = static_cast<double>(s.decay_start);
      return lr + (min_lr - lr) * (S - d0) / (Sd - d0);
    }
  }
  return lr;
}

}  // namespace linmoe
