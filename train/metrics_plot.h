// Pictures of a run: metrics.jsonl (FORMATS.md 3) drawn as one self-contained SVG that any
// browser opens (no dependencies): the loss (train, lm, eval), the learning rate, the gradient
// norm, the throughput, and for MoE runs the expert load — a heat map of the latest step's load
// per layer and expert, and each layer's busiest expert over the run. `linmoe plot` writes it;
// training writes <output_dir>/metrics.svg at each evaluation and at the end.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace linmoe {

struct MetricsHistory {
  // Train lines, by step (a resumed run that logs a step again replaces the earlier line).
  std::vector<double> step, loss, lm_loss, grad_norm, lr, tokens_per_s;
  std::vector<double> eval_step, eval_loss;
  // expert_load[i][layer][e]: the train line i's load (fraction of assignments); empty for dense.
  std::vector<std::vector<std::vector<double>>> expert_load;
};

// Reads a metrics.jsonl; UserError naming the file and line when a line does not parse or lacks
// "step"/"loss"/"eval_loss".
MetricsHistory read_metrics(const std::string& path);

// The SVG document.
std::string metrics_svg(const MetricsHistory& h, const std::string& title);

// read_metrics + metrics_svg, written atomically (a temporary file renamed over svg_path).
void write_metrics_svg(const std::string& metrics_path, const std::string& svg_path,
                       const std::string& title);

}  // namespace linmoe
