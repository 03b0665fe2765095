// Training end to end on the bundled corpus: the loss falls, metrics.jsonl has the keys of
// FORMATS.md 3, and evaluation reports a perplexity.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "core/config.h"
#include "core/json.h"
#include "parallel/runtime.h"
#include "train/trainer.h"

using namespace linmoe;

TEST_CASE("train: the tiny model's loss falls on the bundled corpus", "[e2e]") {
  const std::string root = LINMOE_SOURCE_DIR;
  if (!std::filesystem::exists(root + "/corpus/kjv_text_document.idx")) {
    FAIL("the bundled corpus is missing: run scripts/prepare_corpus.sh build/linmoe");
  }
  const std::string out =  // per process: two test runs at once must not share it
      std::filesystem::temp_directory_path() / ("linmoe_e2e_train_" + std::to_string(getpid()));
  std::filesystem::remove_all(out);
  Config cfg = load_config(
      root + "/configs/tiny.yaml",
      {"train.steps=40", "train.seq_len=128", "train.global_batch_size=8",
       "train.micro_batch_size=4", "train.log_interval=10", "train.eval_interval=20",
       "train.eval_steps=2", "optimizer.schedule.warmup_steps=5", "run.output_dir=" + out,
       "data.train=[{path: " + root + "/corpus/kjv_text_document, weight: 1.0}]",
       "data.cache_dir=" + out + "/cache"});
  Runtime runtime(nullptr, nullptr);  // MPI is already started by the test main
  resolve_parallel(cfg, runtime.world_size());
  Trainer trainer(cfg, runtime);
  REQUIRE(trainer.train() == 0);

  std::ifstream f(out + "/metrics.jsonl");
  std::string line;
  std::vector<double> losses;
  int evals = 0;
  while (std::getline(f, line)) {
    Json j = parse_json(line);
    if (j.find("eval_loss")) {
      ++evals;
      CHECK(j.at("eval_ppl").as_double() > 1.0);
      continue;
    }
    for (const char* key :
         {"step", "loss", "lm_loss", "aux_loss", "z_loss", "grad_norm", "lr", "tokens", "step_ms",
          "tokens_per_s", "tflops_per_gpu", "mfu", "mem_gib", "expert_load"}) {
      CHECK(j.find(key) != nullptr);
    }
    losses.push_back(j.at("loss").as_double());
  }
  REQUIRE(losses.size() == 40);
  CHECK(evals == 2);
  // A byte-level model starts near ln(257) ≈ 5.55 and must learn byte statistics quickly.
  CHECK(losses.front() > 5.0);
  double last5 = 0;
  for (std::size_t i = losses.size() - 5; i < losses.size(); ++i) last5 += losses[i] / 5;
  CHECK(last5 < losses.front() - 1.5);
}
