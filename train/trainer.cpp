#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "core/log.h"
#include "core/memory.h"
#include "data/loader.h"
#include "kernels/ops.h"
#include "layers/cost.h"
#include "layers/model.h"
#include "parallel/host_text.h"
#include "parallel/process_groups.h"
#include "parallel/runtime.h"
#include "train/checkpoint.h"
#include "train/checkpoint_gather.h"
#include "train/engine.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"
#include "train/metrics_plot.h"
#include "train/optimizer.h"
#include "train/signals.h"

namespace linmoe {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string si(double v) {  // 12.3k, 4.56M
  char buf[32];
  if (v >= 1e9) {
    std::snprintf(buf, sizeof(buf), "%.2fG", v / 1e9);
  } else if (v >= 1e6) {
    std::snprintf(buf, sizeof(buf), "%.2fM", v / 1e6);
  } else if (v >= 1e3) {
    std::snprintf(buf, sizeof(buf), "%.1fk", v / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  }
  return buf;
}

// "MFU 41.2%" where the device's peak is known, else the achieved rate ("64.3 GFLOP/s").
std::string throughput_text(double tflops, double peak) {
  char buf[48];
  if (peak > 0) {
    std::snprintf(buf, sizeof(buf), "MFU %.1f%%", 100.0 * tflops * 1e12 / peak);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f GFLOP/s", tflops * 1e3);
  }
  return buf;
}

bool has_valid_split(const Config& c) {
  return !c.data.valid.empty() || c.data.split_fractions[1] > 0;
}

}  // namespace

struct Trainer::State {
  Config cfg;
  Runtime& rt;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ProcessGroups> groups;  // several ranks only
  std::unique_ptr<Engine> engine;
  std::unique_ptr<DataLoader> train_data;
  std::unique_ptr<MetricsWriter> metrics;  // rank 0
  double flops_per_token = 0;
  bool loaded = false;                       // load_checkpoint() ran
  std::int64_t start_step = 0;               // the loaded checkpoint's step
  std::int64_t tokens_at_start = 0;          // and its token count
  std::unique_ptr<CheckpointWriter> writer;  // rank 0
  State(const Config& c, Runtime& r) : cfg(c), rt(r) {}
  // The host (MPI) world: bookkeeping scalars, the error text and the checkpoint's host vectors.
  Communicator* world() { return groups ? &groups->world() : nullptr; }
  bool root() const { return rt.rank() == 0; }
  int dp_rank() const { return groups ? groups->coords().dp_rank : 0; }
  int cp_rank() const { return groups ? groups->coords().cp_rank : 0; }
};

Trainer::Trainer(const Config& config, Runtime& runtime)
    : s_(std::make_unique<State>(config, runtime)) {
  Config& c = s_->cfg;
  if (c.data.train.empty()) {
    throw UserError("config: data.train = <absent>: training needs at least one dataset");
  }
  const int threads =
      c.device.cpu_threads > 0 ? c.device.cpu_threads : runtime.cpu_threads_per_rank();
  s_->backend = make_backend(parse_backend_kind(c.device.backend, "device.backend"), threads,
                             runtime.local_rank());
  if (c.train.precision == Precision::bf16 && s_->backend->device() == Device::cpu) {
    // Allowed: the CPU's bf16 ops round every stored value like the GPU's, so this is the
    // reference a GPU bf16 run is checked against; it is slower than fp32 there.
    log_warn(
        "train.precision = bf16 on the CPU backend: bf16 storage with fp32 arithmetic, "
        "slower than fp32 (meant for checks; train in fp32 on CPUs)");
  }
  const Layout layout = layout_from_config(c.parallel);
  if (runtime.world_size() > 1) {
    s_->groups = std::make_unique<ProcessGroups>(runtime.world(), layout);
    if (s_->backend->device() == Device::cuda) {
      // Device tensors travel over NCCL, ordered with the backend's kernels.
      Backend& be = *s_->backend;
      s_->groups->enable_device_groups(
          be.stream_handle(), be.allocator(),
          [&be](const Tensor& src, const Tensor& dst) { be.copy(src, dst); });
    }
  }
  log_info("linmoe train: ", c.run.name, " on ", s_->backend->name(), ", ", runtime.world_size(),
           " rank(s): ", layout.str(), ", ZeRO-1 ", c.optimizer.zero ? "on" : "off");
  log_info("resolved config (", c.source_path, "):\n", c.resolved_yaml);
  s_->engine = std::make_unique<Engine>(c, *s_->backend, s_->groups.get());
  s_->train_data = std::make_unique<DataLoader>(c, Split::train, s_->dp_rank(), layout.dp,
                                                s_->cp_rank(), layout.cp);
  if (s_->root()) {
    s_->metrics = std::make_unique<MetricsWriter>(c.run.output_dir + "/" + c.logging.metrics_file);
  }
  s_->flops_per_token = total_flops_per_token(c.model, c.train.seq_len);
}

Trainer::~Trainer() = default;

EvalResult Trainer::evaluate() {
  const Config& c = s_->cfg;
  EvalResult r;
  if (!has_valid_split(c)) return r;
  const Layout layout = layout_from_config(c.parallel);
  DataLoader valid(c, Split::valid, s_->dp_rank(), layout.dp, s_->cp_rank(), layout.cp);
  r.batches = c.train.eval_steps;
  r.loss = s_->engine->evaluate([&] { return valid.next_micro_batch(); }, r.batches);
  r.perplexity = std::exp(r.loss);
  return r;
}

std::int64_t Trainer::load_checkpoint(bool with_optimizer) {
  const Config& c = s_->cfg;
  s_->loaded = true;
  const std::string& load = c.checkpoint.load;
  if (load == "none") {
    log_info("checkpoint.load = none: starting from the initialisation");
    return 0;
  }
  const std::string where = load == "auto" ? c.checkpoint.dir : load;
  std::optional<LoadedCheckpoint> ckpt = find_checkpoint(where);
  if (!ckpt) {
    if (load != "auto") {
      throw UserError(str_cat("checkpoint.load = ", load, ": no checkpoint there (neither ",
                              "meta.json nor iter_* folders)"));
    }
    log_info("no checkpoint under ", where, ": starting from the initialisation");
    return 0;
  }
  // Each rank checks only the slices it holds: agree on the outcome, so a mismatch stops every
  // rank with the first failing rank's message instead of leaving the others waiting.
  std::string error;
  try {
    restore_engine(*ckpt, *s_->engine, *s_->backend, with_optimizer);
  } catch (const UserError& e) {
    error = e.what();
  }
  if (Communicator* world = s_->world()) {
    const int failing =
        static_cast<int>(world->all_reduce_min(error.empty() ? world->size() : world->rank()));
    if (failing < world->size()) broadcast_text(*world, error, failing);
  }
  if (!error.empty()) throw UserError(error);
  if (with_optimizer) s_->train_data->set_consumed_samples(ckpt->consumed_samples);
  s_->start_step = ckpt->step;
  s_->tokens_at_start = ckpt->tokens;
  log_info("loaded checkpoint ", ckpt->dir, ": step ", ckpt->step, ", ", ckpt->consumed_samples,
           " samples, ", ckpt->tokens, " tokens consumed",
           with_optimizer ? "; resuming after it" : " (weights only)");
  return ckpt->step;
}

// Snapshots the state (the only part that stalls training) and writes it in the background.
// Returns the stall in seconds.
double Trainer::save_checkpoint(std::int64_t step, std::int64_t tokens) {
  const Config& c = s_->cfg;
  const auto t0 = Clock::now();
  report_saved();  // waits for the previous save
  // Rank 0 writes what every rank's owned slices add up to (train/checkpoint_gather.h).
  CheckpointSnapshot others;
  CheckpointSnapshot& snap = s_->root() ? s_->writer->begin() : others;
  snap.step = step;
  snap.consumed_samples = s_->train_data->consumed_samples();
  snap.tokens = tokens;
  Json meta = Json::object();
  meta["config"] = c.resolved_yaml;
  Json layout = Json::object();
  layout["world_size"] = s_->rt.world_size();
  layout["tensor"] = c.parallel.tensor;
  layout["pipeline"] = c.parallel.pipeline;
  layout["context"] = c.parallel.context;
  layout["expert"] = c.parallel.expert;
  layout["data"] = c.parallel.data;
  layout["zero"] = c.optimizer.zero;
  layout["files"] =
      "model*.safetensors and optimizer*.safetensors hold every slice once (rank R's in "
      "the -rankR files, rank 0's in model.safetensors); __metadata__.linmoe_slices gives "
      "each slice's global shape and offset";
  meta["layout"] = layout;
  Json sched = Json::object();
  sched["type"] = c.optimizer.schedule.type == ScheduleType::cosine     ? "cosine"
                  : c.optimizer.schedule.type == ScheduleType::constant ? "constant"
                                                                        : "wsd";
  sched["step"] = step;
  sched["lr"] = step > 0 ? learning_rate(c.optimizer, step) : 0.0;
  sched["state"] = "none: the learning rate is a function of the step (MODEL.md 5)";
  meta["scheduler"] = sched;
  Json rng = Json::object();
  rng["seed"] = c.run.seed;
  rng["generator"] = "Philox-4x32-10, counter-based";
  rng["state"] = "none: every random value is a function of (seed, stream, index)";
  meta["rng"] = rng;
  Json data = Json::object();
  data["consumed_samples"] = snap.consumed_samples;
  data["data_seed"] = c.data.seed;
  data["global_batch_size"] = c.train.global_batch_size;
  data["seq_len"] = c.train.seq_len;
  meta["data_iterator"] = data;
  Json opt = Json::object();
  opt["type"] = c.optimizer.type == OptimizerType::adamw ? "adamw" : "sgd";
  Json names = Json::array();
  for (const std::string& n : s_->engine->optimizer_state_names()) names.push_back(n);
  opt["state"] = names;
  meta["optimizer"] = opt;
  snap.meta = std::move(meta);
  gather_snapshot(*s_->engine, *s_->backend, s_->world(), snap);
  if (!s_->root()) return seconds_since(t0);
  s_->writer->submit();
  const double stall = seconds_since(t0);
  log_info("checkpoint at step ", step, ": training paused ", stall * 1e3,
           " ms for the snapshot; writing ", s_->writer->root(), "/", checkpoint_name(step),
           " in the background");
  return stall;
}

// Logs a finished background save (rethrowing its error).
void Trainer::report_saved() {
  if (!s_->writer) return;
  const std::string dir = s_->writer->wait();
  if (!dir.empty()) {
    log_info("checkpoint saved: ", dir, " (written in ", s_->writer->last_write_seconds(), " s)");
  }
}

void Trainer::plot_metrics() {
  if (!s_->metrics) return;
  const std::string svg = s_->cfg.run.output_dir + "/metrics.svg";
  try {
    write_metrics_svg(s_->metrics->path(), svg,
                      s_->cfg.run.name + " (" + s_->metrics->path() + ")");
  } catch (const UserError& e) {
    log_warn("no plot: ", e.what());  // a picture never stops training
  }
}

int Trainer::train() {
  const Config& c = s_->cfg;
  Backend& be = *s_->backend;
  Engine& engine = *s_->engine;
  const int M = c.parallel.micro_batches;
  const std::int64_t tokens_per_step = std::int64_t{c.train.global_batch_size} * c.train.seq_len;
  const double peak = be.peak_flops_per_second();
  log_info("training ", c.train.steps, " steps of ", c.train.global_batch_size, " x ",
           c.train.seq_len, " tokens (", M, " micro-batches of ", c.train.micro_batch_size, "); ",
           si(s_->flops_per_token), "FLOP per token; metrics in ",
           c.run.output_dir + "/" + c.logging.metrics_file);

  StopSignals signals;
  const std::int64_t first_step = (s_->loaded ? s_->start_step : load_checkpoint(true)) + 1;
  const std::int64_t tokens_base = s_->tokens_at_start - (first_step - 1) * tokens_per_step;
  if (first_step > c.train.steps) {
    log_info("the checkpoint is at step ", first_step - 1, " and train.steps = ", c.train.steps,
             ": nothing to train");
    return 0;
  }
  if (s_->root()) {
    s_->writer = std::make_unique<CheckpointWriter>(c.checkpoint.dir, c.checkpoint.keep_last);
  }
  log_info("checkpoints: every ", c.checkpoint.interval, " steps and at the end to ",
           c.checkpoint.dir, " (keep_last ", c.checkpoint.keep_last, ")");
  if (c.checkpoint.save_initial && first_step == 1) save_checkpoint(0, 0);

  const auto start = Clock::now();
  double last_loss = 0;
  std::int64_t last_step = first_step - 1;
  for (std::int64_t step = first_step; step <= c.train.steps; ++step) {
    const auto step_start = Clock::now();
    const double lr = learning_rate(c.optimizer, step);
    const StepResult sum =
        engine.step([&] { return s_->train_data->next_micro_batch(); }, lr, step);
    const double grad_norm = sum.grad_norm;
    be.synchronize();
    if (step == first_step && sum.grad_buckets > 0) {
      log_info("gradient reduction: ", sum.grad_buckets, " bucket(s) of up to ",
               c.parallel.grad_bucket_mb, " MiB, ", sum.grad_buckets_overlapped,
               " started during the backward");
    }

    const double step_s = seconds_since(step_start), elapsed = seconds_since(start);
    const double tok_s = static_cast<double>(tokens_per_step) / step_s;
    // Per rank (per GPU): the job's model FLOPs shared by its ranks.
    const double tflops = s_->flops_per_token * tok_s / 1e12 / s_->rt.world_size();
    const double mem_gib =
        static_cast<double>(memory_stats(be.device()).peak_bytes) / (1024.0 * 1024.0 * 1024.0);
    Json line = Json::object();
    line["step"] = step;
    line["loss"] = sum.loss;
    line["lm_loss"] = sum.lm_loss;
    line["aux_loss"] = sum.aux_loss;
    line["z_loss"] = sum.z_loss;
    line["grad_norm"] = grad_norm;
    line["lr"] = lr;
    line["tokens"] = tokens_base + step * tokens_per_step;
    line["step_ms"] = step_s * 1e3;
    line["tokens_per_s"] = tok_s;
    line["tflops_per_gpu"] = tflops;
    line["mfu"] = peak > 0 ? Json(tflops * 1e12 / peak) : Json();
    line["mem_gib"] = mem_gib;
    if (!sum.expert_load.empty()) {
      Json loads = Json::array();
      for (const auto& layer : sum.expert_load) {
        Json l = Json::array();
        for (double f : layer) l.push_back(f);
        loads.push_back(l);
      }
      line["expert_load"] = loads;
    }
    if (s_->metrics) s_->metrics->write(line);
    last_loss = sum.loss;

    if (step == 1 || step % c.train.log_interval == 0 || step == c.train.steps) {
      const double eta = elapsed / static_cast<double>(step - first_step + 1) *
                         static_cast<double>(c.train.steps - step);
      char buf[320];
      std::snprintf(buf, sizeof(buf),
                    "step %*lld/%lld | loss %.4f | lm %.4f | aux %.4f | grad %.3f | lr %.2e | "
                    "%s tok/s | %.0f ms/step | %s | elapsed %s | ETA %s",
                    static_cast<int>(std::to_string(c.train.steps).size()),
                    static_cast<long long>(step), static_cast<long long>(c.train.steps), sum.loss,
                    sum.lm_loss, sum.aux_loss, grad_norm, lr, si(tok_s).c_str(), step_s * 1e3,
                    throughput_text(tflops, peak).c_str(), format_duration(elapsed).c_str(),
                    format_duration(eta).c_str());
      log_info(buf);
    }
    const bool last = step == c.train.steps;
    if (c.train.eval_interval > 0 && (step % c.train.eval_interval == 0 || last) &&
        has_valid_split(c)) {
      EvalResult e = evaluate();
      char buf[160];
      std::snprintf(buf, sizeof(buf),
                    "eval at step %lld | loss %.4f | perplexity %.3f | %d micro-batches",
                    static_cast<long long>(step), e.loss, e.perplexity, e.batches);
      log_info(buf);
      Json ev = Json::object();
      ev["step"] = step;
      ev["eval_loss"] = e.loss;
      ev["eval_ppl"] = e.perplexity;
      if (s_->metrics) s_->metrics->write(ev);
      plot_metrics();
    }
    last_step = step;
    if (s_->writer && s_->writer->finished()) report_saved();
    // Every rank must agree to stop at the same step (signals and clocks differ per rank).
    int signal = StopSignals::requested();
    bool out_of_time =
        c.checkpoint.exit_after_minutes > 0 && elapsed >= c.checkpoint.exit_after_minutes * 60.0;
    if (Communicator* world = s_->world()) {
      signal = static_cast<int>(world->all_reduce_max_i64(signal));
      out_of_time = world->all_reduce_max_i64(out_of_time ? 1 : 0) != 0;
    }
    if (signal != 0 || out_of_time) {
      save_checkpoint(step, tokens_base + step * tokens_per_step);
      report_saved();
      plot_metrics();
      log_info("stopped after step ", step, " (",
               signal ? StopSignals::name(signal) : "checkpoint.exit_after_minutes",
               "); the checkpoint is ", c.checkpoint.dir, "/", checkpoint_name(step),
               "; run again to resume");
      return 0;
    }
    if (last || (c.checkpoint.interval > 0 && step % c.checkpoint.interval == 0)) {
      save_checkpoint(step, tokens_base + step * tokens_per_step);
    }
  }
  report_saved();
  plot_metrics();
  const double total = seconds_since(start);
  const double trained = static_cast<double>((last_step - first_step + 1) * tokens_per_step);
  log_info("done: ", last_step, " steps (", last_step - first_step + 1, " in this run), ",
           si(trained), " tokens in ", format_duration(total), " (", si(trained / total),
           " tok/s); final loss ", last_loss, "; peak activation arenas ",
           format_bytes(double(engine.model().activation_peak_bytes())));
  return 0;
}

}  // namespace linmoe
