// Checkpoints in real training runs: exact resume on the CPU backend (bit-identical losses,
// weights and optimizer state for steps k+1..n), metrics continuing in the same file,
// exit_after_minutes, and on the real binary: SIGTERM (finish the step, save, exit 0), a second
// signal (exit at once), and `linmoe convert` read back by parsers that share no code with the
// writer (one here, and python3's standard library when python3 is installed).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "core/config.h"
#include "core/json.h"
#include "kernels/ops.h"
#include "layers/model.h"
#include "layers/model_spec.h"
#include "parallel/runtime.h"
#include "train/checkpoint.h"
#include "train/safetensors.h"
#include "train/trainer.h"

using namespace linmoe;
namespace fs = std::filesystem;

namespace {

const std::string kRoot = LINMOE_SOURCE_DIR;

std::string temp_dir(const std::string& name) {
  const std::string d = fs::temp_directory_path() / ("linmoe_resume_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Small and fast: 4 sequences of 32 tokens a step; the schedule is fixed by decay_steps so a
// shorter first run follows the same learning rates as the whole run.
std::vector<std::string> small_run(const std::string& out, std::int64_t steps) {
  return {"train.steps=" + std::to_string(steps),
          "train.seq_len=32",
          "train.global_batch_size=4",
          "train.micro_batch_size=2",
          "train.log_interval=100",
          "train.eval_interval=0",
          "optimizer.schedule.warmup_steps=2",
          "optimizer.schedule.decay_steps=8",
          "run.output_dir=" + out,
          "data.train=[{path: " + kRoot + "/corpus/kjv_text_document, weight: 1.0}]",
          "data.cache_dir=" + out + "/cache",
          "device.cpu_threads=1"};  // OpenMP teams on a loaded 2-core machine can crawl
}

int train(const std::string& out, std::int64_t steps, std::vector<std::string> extra = {}) {
  std::vector<std::string> o = small_run(out, steps);
  o.insert(o.end(), extra.begin(), extra.end());
  Config cfg = load_config(kRoot + "/configs/tiny.yaml", o);
  Runtime runtime(nullptr, nullptr);
  resolve_parallel(cfg, runtime.world_size());
  Trainer trainer(cfg, runtime);
  return trainer.train();
}

// step -> train line of metrics.jsonl (the last one written for that step).
std::map<std::int64_t, Json> train_lines(const std::string& path, int* count = nullptr) {
  std::ifstream f(path);
  std::string line;
  std::map<std::int64_t, Json> out;
  int n = 0;
  while (std::getline(f, line)) {
    Json j = parse_json(line);
    if (!j.find("loss")) continue;
    out[j.at("step").as_int()] = j;
    ++n;
  }
  if (count) *count = n;
  return out;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

// Starts the linmoe binary with output to `log`.
pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv;
    std::string bin = LINMOE_BINARY;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

std::vector<std::string> cli_args(const std::string& command,
                                  const std::vector<std::string>& sets) {
  std::vector<std::string> a = {command, "-c", kRoot + "/configs/tiny.yaml"};
  for (const std::string& s : sets) {
    a.push_back("--set");
    a.push_back(s);
  }
  return a;
}

// Waits until metrics.jsonl has `lines` train lines (or the time runs out).
bool wait_for_steps(const std::string& metrics, int lines, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    int n = 0;
    if (fs::exists(metrics)) train_lines(metrics, &n);
    if (n >= lines) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace

TEST_CASE("resume: stopped after step k and resumed, steps k+1..n are bit-identical", "[e2e]") {
  const std::string whole = temp_dir("whole"), parts = temp_dir("parts");
  REQUIRE(train(whole, 8) == 0);
  REQUIRE(train(parts, 3) == 0);  // saves iter_0000003 at its end
  REQUIRE(first_line(parts + "/ckpt/latest") == "iter_0000003");
  REQUIRE(train(parts, 8) == 0);  // load: auto resumes from it

  int lines = 0;
  const auto a = train_lines(whole + "/metrics.jsonl");
  const auto b = train_lines(parts + "/metrics.jsonl", &lines);
  CHECK(lines == 8);  // the resumed run appended steps 4..8 to the same file
  REQUIRE(a.size() == 8);
  REQUIRE(b.size() == 8);
  for (std::int64_t s = 1; s <= 8; ++s) {
    INFO("step " << s);
    for (const char* key : {"loss", "lm_loss", "aux_loss", "z_loss", "grad_norm", "lr", "tokens"}) {
      INFO(key);
      CHECK(a.at(s).at(key) == b.at(s).at(key));  // exact: doubles round-trip through JSON
    }
  }
  // Weights and optimizer state after step 8: byte for byte.
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    INFO(file);
    const std::string x = slurp(whole + "/ckpt/iter_0000008/" + file);
    CHECK(x.size() > 1000000);
    CHECK(x == slurp(parts + "/ckpt/iter_0000008/" + file));
  }
  // Resuming at the end has nothing to do and changes nothing.
  REQUIRE(train(parts, 8) == 0);
  CHECK(train_lines(parts + "/metrics.jsonl").size() == 8);
}

TEST_CASE("resume: load auto falls back past a damaged newest checkpoint", "[e2e]") {
  const std::string out = temp_dir("fallback");
  REQUIRE(train(out, 4, {"checkpoint.interval=2"}) == 0);  // iter_0000002, iter_0000004
  const auto first = train_lines(out + "/metrics.jsonl");
  {
    std::fstream f(out + "/ckpt/iter_0000004/model.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(5000);
    f.put('\x7f');
  }
  REQUIRE(train(out, 6, {"checkpoint.interval=2"}) == 0);  // resumes from iter_0000002
  int lines = 0;
  const auto all = train_lines(out + "/metrics.jsonl", &lines);
  CHECK(lines == 8);  // steps 1..4, then 3..6 again
  // Steps 3 and 4 were recomputed from step 2's checkpoint: the same values again.
  CHECK(all.at(3).at("loss") == first.at(3).at("loss"));
  CHECK(all.at(4).at("grad_norm") == first.at(4).at("grad_norm"));
  CHECK(first_line(out + "/ckpt/latest") == "iter_0000006");
}

TEST_CASE("resume: checkpoint.exit_after_minutes saves and ends the run cleanly", "[e2e]") {
  const std::string out = temp_dir("timeout");
  REQUIRE(train(out, 1000, {"checkpoint.exit_after_minutes=0.00001"}) == 0);
  int lines = 0;
  train_lines(out + "/metrics.jsonl", &lines);
  CHECK(lines == 1);
  CHECK(first_line(out + "/ckpt/latest") == "iter_0000001");
}

TEST_CASE("resume: SIGTERM finishes the step, saves, exits 0; the run then resumes", "[e2e]") {
  const std::string out = temp_dir("sigterm");
  const std::vector<std::string> sets = small_run(out, 100000);
  const pid_t pid = spawn(cli_args("train", sets), out + "/log1.txt");
  REQUIRE(pid > 0);
  REQUIRE(wait_for_steps(out + "/metrics.jsonl", 3, 120));
  ::kill(pid, SIGTERM);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  const std::string log = slurp(out + "/log1.txt");
  INFO(log);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  int lines = 0;
  train_lines(out + "/metrics.jsonl", &lines);
  char name[32];
  std::snprintf(name, sizeof(name), "iter_%07d", lines);
  CHECK(first_line(out + "/ckpt/latest") == name);
  CHECK_THAT(log, Catch::Contains("stopped after step " + std::to_string(lines) + " (SIGTERM)") &&
                      Catch::Contains(out + "/ckpt/" + name));

  // Resume for two more steps: the metrics continue in the same file.
  std::vector<std::string> more = small_run(out, lines + 2);
  more.push_back("optimizer.schedule.decay_steps=100000");
  const pid_t again = spawn(cli_args("train", more), out + "/log2.txt");
  REQUIRE(::waitpid(again, &status, 0) == again);
  INFO(slurp(out + "/log2.txt"));
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  int total = 0;
  const auto m = train_lines(out + "/metrics.jsonl", &total);
  CHECK(total == lines + 2);
  CHECK(m.rbegin()->first == lines + 2);
}

TEST_CASE("resume: kill -9 of a run saving every step leaves a loadable `latest`", "[e2e]") {
  // The real binary saves after every step (in the background) and is killed at arbitrary
  // moments, mostly mid-save; each restart resumes from `latest`, which must always verify.
  const std::string out = temp_dir("kill9");
  std::vector<std::string> sets = small_run(out, 100000);
  sets.push_back("checkpoint.interval=1");
  sets.push_back("optimizer.schedule.decay_steps=100000");
  std::int64_t last_step = 0;
  for (int round = 0; round < 4; ++round) {
    INFO("round " << round);
    const pid_t pid = spawn(cli_args("train", sets), out + "/log.txt");
    int lines = 0;
    if (fs::exists(out + "/metrics.jsonl")) train_lines(out + "/metrics.jsonl", &lines);
    REQUIRE(wait_for_steps(out + "/metrics.jsonl", lines + 3 + round, 120));
    std::this_thread::sleep_for(std::chrono::milliseconds(7 * round));
    ::kill(pid, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));
    const std::string latest = first_line(out + "/ckpt/latest");
    REQUIRE(!latest.empty());
    const LoadedCheckpoint c = open_checkpoint(out + "/ckpt/" + latest);  // throws if incomplete
    CHECK(c.step > last_step);                                            // every round got further
    last_step = c.step;
  }
}

TEST_CASE("resume: a second signal ends the run at once", "[e2e]") {
  const std::string out = temp_dir("twice");
  std::vector<std::string> sets = small_run(out, 100000);
  sets.push_back("train.seq_len=256");  // slow steps (~0.1-0.5 s), so both signals land in one
  sets.push_back("train.global_batch_size=16");
  sets.push_back("train.micro_batch_size=4");
  const pid_t pid = spawn(cli_args("train", sets), out + "/log.txt");
  REQUIRE(wait_for_steps(out + "/metrics.jsonl", 1, 120));
  ::kill(pid, SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ::kill(pid, SIGINT);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  const std::string log = slurp(out + "/log.txt");
  INFO(log);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 128 + SIGINT);
  CHECK_THAT(log, Catch::Contains("second signal"));
  CHECK_FALSE(fs::exists(out + "/ckpt/latest"));
}

TEST_CASE("convert: one consolidated file, read back by independent parsers", "[e2e]") {
  const std::string out = temp_dir("convert");
  // save_initial: iter_0000000 holds the initialisation, which a fresh Model reproduces.
  REQUIRE(train(out, 2, {"checkpoint.save_initial=true"}) == 0);
  const std::string file = out + "/model.safetensors";
  const pid_t pid = spawn({"convert", "--load", out + "/ckpt/iter_0000000", "--output", file},
                          out + "/convert.txt");
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  INFO(slurp(out + "/convert.txt"));
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));

  Config cfg = load_config(kRoot + "/configs/tiny.yaml", small_run(out, 2));
  auto backend = make_backend(BackendKind::cpu, 1);
  Model model(cfg.model, *backend, DType::f32);
  model.initialize(cfg.run.seed);
  ParameterStore& params = model.params();

  // A parser written here from the format's description: length, header text, byte ranges.
  const std::string bytes = slurp(file);
  REQUIRE(bytes.size() > 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  REQUIRE(8 + n <= bytes.size());
  const std::string header = bytes.substr(8, n);
  std::size_t entries = 0;
  for (std::size_t at = header.find("data_offsets"); at != std::string::npos;
       at = header.find("data_offsets", at + 1)) {
    ++entries;
  }
  CHECK(entries == params.size());
  std::ofstream manifest(out + "/manifest.txt");
  std::ofstream raw(out + "/expected.bin", std::ios::binary);
  // In MODEL.md's order, which `linmoe convert` writes (the store keeps experts last).
  for (const ModelParam& mp : model_parameters(cfg.model)) {
    const std::size_t i = static_cast<std::size_t>(params.index(mp.name));
    const ParamSpec& spec = params.spec(static_cast<int>(i));
    INFO(spec.name);
    const std::size_t at = header.find("\"" + spec.name + "\":{");
    REQUIRE(at != std::string::npos);
    const std::size_t close = header.find('}', at);
    const std::string entry = header.substr(at, close - at);
    CHECK_THAT(entry, Catch::Contains("\"dtype\":\"F32\""));
    std::string shape = "\"shape\":[";
    for (int d = 0; d < spec.global_shape.ndim(); ++d) {
      shape += (d ? "," : "") + std::to_string(spec.global_shape[d]);
    }
    CHECK_THAT(entry, Catch::Contains(shape + "]"));
    unsigned long long b = 0, e = 0;
    const std::size_t off = entry.find("\"data_offsets\":[");
    REQUIRE(off != std::string::npos);
    REQUIRE(std::sscanf(entry.c_str() + off, "\"data_offsets\":[%llu,%llu]", &b, &e) == 2);
    const Tensor p = params.param(static_cast<int>(i));
    REQUIRE(e - b == p.nbytes());
    REQUIRE(8 + n + e <= bytes.size());
    CHECK(std::memcmp(bytes.data() + 8 + n + b, p.data, p.nbytes()) == 0);
    manifest << spec.name;
    for (int d = 0; d < spec.global_shape.ndim(); ++d) manifest << " " << spec.global_shape[d];
    manifest << "\n";
    raw.write(static_cast<const char*>(p.data), static_cast<std::streamsize>(p.nbytes()));
  }
  manifest.close();
  raw.close();
  if (std::system("python3 -c 'import json, struct' >/dev/null 2>&1") == 0) {
    const std::string cmd = "python3 " + kRoot + "/tests/checkpoint/read_converted.py " + file +
                            " " + out + "/manifest.txt " + out + "/expected.bin";
    CHECK(std::system(cmd.c_str()) == 0);
  } else {
    WARN("python3 not found: the python reader was skipped");
  }
}
