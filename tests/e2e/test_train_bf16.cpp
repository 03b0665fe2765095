// Mixed-precision training (train.precision: bf16) end to end on the CPU backend, whose bf16 ops
// round where the GPU's do (kernels/cpu/bf16_widening.h): the loss curve tracks fp32's, the
// checkpoint holds the fp32 master weights, and a resumed run continues bit for bit.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/config.h"
#include "core/json.h"
#include "parallel/runtime.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

using namespace linmoe;

namespace {

const std::string kRoot = LINMOE_SOURCE_DIR;

// Trains the tiny model (small batches) into `out` and returns the loss of every step run.
std::vector<double> train(const std::string& out, std::vector<std::string> overrides) {
  if (!std::filesystem::exists(kRoot + "/corpus/kjv_text_document.idx")) {
    FAIL("the bundled corpus is missing: run scripts/prepare_corpus.sh build/linmoe");
  }
  std::vector<std::string> sets = {
      "train.seq_len=128",
      "train.global_batch_size=8",
      "train.micro_batch_size=4",
      "train.log_interval=4",
      "train.eval_interval=0",
      "optimizer.schedule.warmup_steps=2",
      "run.output_dir=" + out,
      "data.train=[{path: " + kRoot + "/corpus/kjv_text_document, weight: 1.0}]",
      "data.cache_dir=" + out + "/cache"};
  sets.insert(sets.end(), overrides.begin(), overrides.end());
  Config cfg = load_config(kRoot + "/configs/tiny.yaml", sets);
  Runtime runtime(nullptr, nullptr);  // MPI is already started by the test main
  resolve_parallel(cfg, runtime.world_size());
  std::filesystem::remove(out + "/metrics.jsonl");
  Trainer trainer(cfg, runtime);
  REQUIRE(trainer.train() == 0);
  std::ifstream f(out + "/metrics.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(f, line);) {
    const Json j = parse_json(line);
    if (!j.find("eval_loss")) losses.push_back(j.at("loss").as_double());
  }
  return losses;
}

// Per process: two test runs at once (two build folders) must not share a folder.
std::string fresh_dir(const std::string& name) {
  const std::string dir =
      std::filesystem::temp_directory_path() / (name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}

}  // namespace

TEST_CASE("train bf16: the loss curve tracks fp32's", "[e2e][bf16]") {
  const std::vector<std::string> common = {"train.steps=12", "checkpoint.interval=0",
                                           "checkpoint.load=none"};
  std::vector<std::string> f32 = common, b16 = common;
  b16.push_back("train.precision=bf16");
  const std::vector<double> a = train(fresh_dir("linmoe_bf16_curve_f32"), f32);
  const std::vector<double> b = train(fresh_dir("linmoe_bf16_curve_bf16"), b16);
  REQUIRE(a.size() == 12);
  REQUIRE(b.size() == 12);
  double largest = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i, a[i], b[i]);
    const double rel = std::abs(a[i] - b[i]) / a[i];
    largest = std::max(largest, rel);
    CHECK(rel < 0.02);  // bf16 activations: ~2^-8 per rounding, a few percent at most per step
  }
  CHECK(b.back() < b.front() - 1.0);  // it learns
  // And the run really was bf16 (a precision silently ignored would agree to fp32 rounding).
  CHECK(largest > 1e-4);
}

TEST_CASE("train bf16: the checkpoint holds fp32 master weights and resumes bit for bit",
          "[e2e][bf16]") {
  // The schedule must not depend on train.steps (cosine decays over it by default).
  const std::vector<std::string> bf16 = {"train.precision=bf16", "checkpoint.interval=3",
                                         "optimizer.schedule.decay_steps=6"};
  auto with = [&](std::vector<std::string> v, const std::string& s) {
    v.push_back(s);
    return v;
  };
  const std::string whole = fresh_dir("linmoe_bf16_whole"), split = fresh_dir("linmoe_bf16_split");
  const std::vector<double> straight = train(whole, with(bf16, "train.steps=6"));
  const std::vector<double> first = train(split, with(bf16, "train.steps=3"));
  const std::vector<double> resumed = train(split, with(bf16, "train.steps=6"));
  REQUIRE(straight.size() == 6);
  REQUIRE(first.size() == 3);
  REQUIRE(resumed.size() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(first[i] == straight[i]);
    CHECK(resumed[i] == straight[3 + i]);  // exact: the master weights came back in full
  }

  // Updated weights in fp32: some values are not bf16 numbers (their low 16 bits are not 0).
  const LoadedCheckpoint ckpt = open_checkpoint(split + "/ckpt/iter_0000006");
  const std::vector<float> norm = assemble_tensor(ckpt, "final_norm.weight", {128});
  int not_bf16 = 0;
  for (float x : norm) {
    std::uint32_t bits;
    std::memcpy(&bits, &x, 4);
    not_bf16 += (bits & 0xffffu) != 0;
  }
  CHECK(not_bf16 > 64);
}
