// linmoe: one binary, subcommands (spec/CONFIG.md). Under mpirun/srun every rank runs the same
// subcommand; a plain `linmoe ...` is one rank. Bad input ends every rank with one clear line
// and exit status 2 (parallel/runtime.h).
#include <cstdio>
#include <cstring>
#include <string>

#include "apps/linmoe/commands.h"
#include "core/check.h"
#include "parallel/runtime.h"

namespace linmoe {
namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);                  // single-process tools
  int (*run_ranks)(Runtime&, int, char**);  // commands that use the MPI runtime
  const char* summary;
};

const Command kCommands[] = {
    {"train", nullptr, cmd_train, "train a model: linmoe train -c CONFIG [--set k=v ...]"},
    {"eval", nullptr, cmd_eval, "validation loss and perplexity of a checkpoint"},
    {"preprocess", cmd_preprocess, nullptr,
     "tokenize JSONL or text into a Megatron .bin/.idx dataset"},
    {"inspect", cmd_inspect, nullptr,
     "config, parameter counts, FLOPs, memory and parallel layout"},
    {"convert", cmd_convert, nullptr, "write a checkpoint as one consolidated safetensors file"},
    {"data", cmd_data, nullptr, "summarise and validate a Megatron indexed dataset"},
    {"plot", cmd_plot, nullptr, "draw a run's metrics as an SVG (loss, lr, expert load)"},
};

void print_usage(std::FILE* out) {
  std::fprintf(out,
               "usage: linmoe <command> [options]   (linmoe <command> --help for its options)\n\n"
               "Pretraining of hybrid Linear-MoE language models.\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-12s %s\n", c.name, c.summary);
  std::fprintf(out,
               "\nlaunch: mpirun -np N linmoe train -c X.yaml, srun linmoe train -c X.yaml, or "
               "plain linmoe (one rank)\n");
}

}  // namespace
}  // namespace linmoe

int main(int argc, char** argv) {
  using namespace linmoe;
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    print_usage(stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("linmoe 0.1.0\n");
    return 0;
  }
  for (const Command& c : kCommands) {
    if (std::strcmp(argv[1], c.name) == 0) {
      return run_main(argc, argv, [&](Runtime& rt) {
        return c.run_ranks ? c.run_ranks(rt, argc - 2, argv + 2) : c.run(argc - 2, argv + 2);
      });
    }
  }
  std::fprintf(stderr,
               "linmoe: error: unknown command '%s' (commands: train, eval, preprocess, "
               "inspect, convert, data; see linmoe --help)\n",
               argv[1]);
  return 2;
}
