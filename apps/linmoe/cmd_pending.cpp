// Subcommands whose work has not landed yet say so plainly (docs/STATUS.md tracks them).
#include <cstdio>

#include "apps/linmoe/args.h"
#include "apps/linmoe/commands.h"
#include "core/check.h"

namespace linmoe {
namespace {

int not_yet(const char* command, const char* summary, const char* lands_with, int argc,
            char** argv) {
  ArgParser args(command, summary);
  std::string config, load, output;
  std::vector<std::string> sets;
  args.option("--config", &config, "FILE", "the run's YAML config");
  args.alias("-c", "--config");
  args.multi_option("--set", &sets, "KEY=VALUE", "override a config key");
  args.option("--load", &load, "DIR", "checkpoint directory");
  args.option("--output", &output, "FILE", "output file");
  if (!args.parse(argc, argv)) return 0;
  throw UserError(
      str_cat(command, ": not available yet: it lands with ", lands_with, " (see docs/STATUS.md)"));
}

}  // namespace

int cmd_eval(Runtime&, int argc, char** argv) {
  // Evaluation itself runs inside `linmoe train` (train.eval_interval); evaluating a saved model
  // needs checkpoints.
  return not_yet("linmoe eval", "Validation loss and perplexity of a checkpoint.",
                 "the checkpoint issue", argc, argv);
}
int cmd_convert(int argc, char** argv) {
  return not_yet("linmoe convert", "Writes a checkpoint as one consolidated safetensors file.",
                 "the checkpoint issue", argc, argv);
}

}  // namespace linmoe
