// linmoe plot RUN: draws a run's metrics.jsonl as an SVG (loss, learning rate, gradient norm,
// throughput, expert load) — train/metrics_plot.h.
#include <cstdio>
#include <filesystem>
#include <string>

#include "apps/linmoe/args.h"
#include "apps/linmoe/commands.h"
#include "train/metrics_plot.h"

namespace linmoe {

int cmd_plot(int argc, char** argv) {
  ArgParser args("linmoe plot",
                 "Draws a run's metrics.jsonl as one SVG (open it in a browser): the loss with\n"
                 "evaluations, learning rate, gradient norm, throughput and, for MoE models, the\n"
                 "expert load per layer. Training writes the same picture to\n"
                 "<run.output_dir>/metrics.svg at each evaluation and at the end.");
  std::string run, output;
  args.positional("RUN", &run, "a run's output folder, or its metrics .jsonl file");
  args.option("--output", &output, "FILE", "where to write; default: metrics.svg beside it");
  if (!args.parse(argc, argv)) return 0;
  namespace fs = std::filesystem;
  const std::string metrics =
      fs::is_directory(run) ? (fs::path(run) / "metrics.jsonl").string() : run;
  if (output.empty()) output = (fs::path(metrics).parent_path() / "metrics.svg").string();
  write_metrics_svg(metrics, output, metrics);
  std::printf("wrote %s\n", output.c_str());
  return 0;
}

}  // namespace linmoe
