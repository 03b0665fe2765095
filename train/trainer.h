// The training loop (MODEL.md 5): per step, the global batch's micro-batches run forward and
// backward with gradient accumulation; the global gradient norm is taken (and clipped); the
// optimizer steps with the scheduled learning rate. Logs a line every log_interval, writes
// metrics.jsonl, evaluates on the validation split every eval_interval, and stops with a clear
// message at the first non-finite loss or gradient.
#pragma once
#include <memory>

#include "core/config.h"

namespace linmoe {

class Runtime;

struct EvalResult {
  double loss = 0, perplexity = 0;
  int batches = 0;
};

class Trainer {
 public:
  Trainer(const Config& config, Runtime& runtime);
  ~Trainer();
  // Trains config.train.steps steps; returns the process exit status.
  int train();
  // Mean lm loss over eval_steps validation micro-batches (a fresh pass from the start of the
  // split each time, so evaluations are comparable).
  EvalResult evaluate();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace linmoe
