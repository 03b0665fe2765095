// linmoe eval -c CONFIG --load DIR: validation loss and perplexity of a checkpoint's weights on
// the config's validation data (the same measurement as train.eval_interval).
#include <cstdio>

#include "apps/linmoe/args.h"
#include "apps/linmoe/commands.h"
#include "core/config.h"
#include "core/log.h"
#include "parallel/runtime.h"
#include "train/trainer.h"

namespace linmoe {

int cmd_eval(Runtime& runtime, int argc, char** argv) {
  std::string config_path, load;
  std::vector<std::string> overrides;
  ArgParser args("linmoe eval",
                 "Validation loss and perplexity of a checkpoint on the config's validation data "
                 "(data.valid, or the validation part of data.split).");
  args.option("--config", &config_path, "FILE", "the run's YAML config", true);
  args.alias("-c", "--config");
  args.option("--load", &load, "DIR",
              "a checkpoint folder (iter_N) or a checkpoint.dir (its newest complete checkpoint)",
              true);
  args.multi_option("--set", &overrides, "KEY=VALUE", "override a config key (value as YAML)");
  if (!args.parse(argc, argv)) return 0;
  Config cfg = load_config(config_path, overrides);
  resolve_parallel(cfg, runtime.world_size());
  log_init(runtime.rank(), parse_log_level(cfg.logging.level, "logging.level"));
  if (cfg.data.valid.empty() && cfg.data.split_fractions[1] <= 0) {
    throw UserError(
        str_cat("linmoe eval: the config has no validation data (data.valid is empty "
                "and data.split = \"",
                cfg.data.split, "\" gives the validation split nothing)"));
  }
  cfg.checkpoint.load = load;
  Trainer trainer(cfg, runtime);
  const std::int64_t step = trainer.load_checkpoint(false);
  const EvalResult r = trainer.evaluate();
  if (runtime.rank() == 0) {
    std::printf(
        "eval of %s (step %lld): loss %.6f | perplexity %.4f | %d micro-batches of %d x %d "
        "tokens\n",
        load.c_str(), static_cast<long long>(step), r.loss, r.perplexity, r.batches,
        cfg.train.micro_batch_size, cfg.train.seq_len);
  }
  return 0;
}

}  // namespace linmoe
