// linmoe train -c CONFIG [--set k=v ...]: the main job.
#include "apps/linmoe/args.h"
#include "apps/linmoe/commands.h"
#include "core/config.h"
#include "core/log.h"
#include "parallel/runtime.h"
#include "train/trainer.h"

namespace linmoe {

int cmd_train(Runtime& runtime, int argc, char** argv) {
  std::string config_path;
  std::vector<std::string> overrides;
  ArgParser args("linmoe train",
                 "Trains the model of a YAML config on its data. Launch plainly (one rank), or "
                 "under mpirun/srun.");
  args.option("--config", &config_path, "FILE", "the run's YAML config", true);
  args.alias("-c", "--config");
  args.multi_option("--set", &overrides, "KEY=VALUE", "override a config key (value as YAML)");
  if (!args.parse(argc, argv)) return 0;
  Config cfg = load_config(config_path, overrides);
  resolve_parallel(cfg, runtime.world_size());
  log_init(runtime.rank(), parse_log_level(cfg.logging.level, "logging.level"));
  Trainer trainer(cfg, runtime);
  return trainer.train();
}

}  // namespace linmoe
