// The training loop (MODEL.md 5): per step, the global batch's micro-batches run forward and
// backward with gradient accumulation; the global gradient norm is taken (and clipped); the
// optimizer steps with the scheduled learning rate. Logs a line every log_interval, writes
// metrics.jsonl, evaluates on the validation split every eval_interval, and stops with a clear
// message at the first non-finite loss or gradient.
//
// Checkpoints (docs/CHECKPOINTS.md): train() first loads checkpoint.load (auto: the newest
// complete checkpoint under checkpoint.dir, if any); it saves every checkpoint.interval steps,
// at the end, at step 0 with save_initial, and when SIGTERM/SIGINT or exit_after_minutes asks
// it to stop (then it exits 0 after the save). Saves snapshot the state and write it in the
// background, so training stalls only for the copy.
#pragma once
#include <cstdint>
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
  // Trains up to config.train.steps steps; returns the process exit status.
  int train();
  // Loads checkpoint.load (auto | none | PATH) into the model, and when with_optimizer also the
  // optimizer state and the data position. Returns the checkpoint's step (0: nothing loaded).
  // train() calls it unless it was called before.
  std::int64_t load_checkpoint(bool with_optimizer = true);
  // Mean lm loss over eval_steps validation micro-batches (a fresh pass from the start of the
  // split each time, so evaluations are comparable).
  EvalResult evaluate();

 private:
  double save_checkpoint(std::int64_t step, std::int64_t tokens);
  void report_saved();
  void plot_metrics();  // rank 0: <output_dir>/metrics.svg from metrics.jsonl
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace linmoe
