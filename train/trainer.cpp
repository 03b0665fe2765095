#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "core/log.h"
#include "core/memory.h"
#include "data/loader.h"
#include "kernels/ops.h"
#include "layers/cost.h"
#include "layers/model.h"
#include "parallel/runtime.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"
#include "train/optimizer.h"

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
  std::unique_ptr<Model> model;
  std::unique_ptr<Optimizer> optimizer;
  std::unique_ptr<DataLoader> train_data;
  std::unique_ptr<MetricsWriter> metrics;
  double flops_per_token = 0;
  State(const Config& c, Runtime& r) : cfg(c), rt(r) {}
};

Trainer::Trainer(const Config& config, Runtime& runtime)
    : s_(std::make_unique<State>(config, runtime)) {
  Config& c = s_->cfg;
  if (runtime.world_size() > 1) {
    throw UserError(str_cat("linmoe train on ", runtime.world_size(),
                            " ranks: the parallel algorithms (data, tensor, context, expert, "
                            "pipeline) are not implemented yet (docs/STATUS.md); run one rank"));
  }
  if (c.data.train.empty()) {
    throw UserError("config: data.train = <absent>: training needs at least one dataset");
  }
  const int threads =
      c.device.cpu_threads > 0 ? c.device.cpu_threads : runtime.cpu_threads_per_rank();
  s_->backend = make_backend(parse_backend_kind(c.device.backend, "device.backend"), threads);
  if (c.train.precision == Precision::bf16 && s_->backend->device() == Device::cpu) {
    throw UserError(
        "config: train.precision = bf16: the CPU backend trains in fp32 (bf16 needs the CUDA "
        "backend)");
  }
  log_info("linmoe train: ", c.run.name, " on ", s_->backend->name());
  log_info("resolved config (", c.source_path, "):\n", c.resolved_yaml);
  s_->model = std::make_unique<Model>(c.model, *s_->backend, DType::f32);
  s_->model->initialize(c.run.seed);
  s_->optimizer = std::make_unique<Optimizer>(c.optimizer, *s_->backend, s_->model->params());
  s_->train_data = std::make_unique<DataLoader>(c, Split::train);
  s_->metrics = std::make_unique<MetricsWriter>(c.run.output_dir + "/" + c.logging.metrics_file);
  s_->flops_per_token = total_flops_per_token(c.model, c.train.seq_len);
}

Trainer::~Trainer() = default;

EvalResult Trainer::evaluate() {
  const Config& c = s_->cfg;
  EvalResult r;
  if (!has_valid_split(c)) return r;
  DataLoader valid(c, Split::valid);
  double sum = 0;
  for (int i = 0; i < c.train.eval_steps; ++i) {
    Batch b = valid.next_micro_batch();
    sum += s_->model->forward(b.tokens, b.targets).lm_loss;
    ++r.batches;
  }
  r.loss = sum / r.batches;
  r.perplexity = std::exp(r.loss);
  return r;
}

int Trainer::train() {
  const Config& c = s_->cfg;
  Backend& be = *s_->backend;
  Model& model = *s_->model;
  ParameterStore& params = model.params();
  const int M = c.parallel.micro_batches;
  const std::int64_t tokens_per_step = std::int64_t{c.train.global_batch_size} * c.train.seq_len;
  const double peak = be.peak_flops_per_second();
  log_info("training ", c.train.steps, " steps of ", c.train.global_batch_size, " x ",
           c.train.seq_len, " tokens (", M, " micro-batches of ", c.train.micro_batch_size, "); ",
           si(s_->flops_per_token), "FLOP per token; metrics in ", s_->metrics->path());

  const auto start = Clock::now();
  double last_loss = 0;
  for (std::int64_t step = 1; step <= c.train.steps; ++step) {
    const auto step_start = Clock::now();
    be.fill(params.flat_grads(), 0.0);
    MicroBatchLosses sum;
    for (int j = 0; j < M; ++j) {
      Batch batch = s_->train_data->next_micro_batch();
      MicroBatchLosses r = model.forward_backward(batch.tokens, batch.targets, 1.0 / M);
      sum.loss += r.loss / M;
      sum.lm_loss += r.lm_loss / M;
      sum.aux_loss += r.aux_loss / M;
      sum.z_loss += r.z_loss / M;
      if (sum.expert_load.empty()) sum.expert_load.resize(r.expert_load.size());
      for (std::size_t l = 0; l < r.expert_load.size(); ++l) {
        sum.expert_load[l].resize(r.expert_load[l].size());
        for (std::size_t e = 0; e < r.expert_load[l].size(); ++e) {
          sum.expert_load[l][e] += r.expert_load[l][e] / M;
        }
      }
    }
    const double grad_norm = std::sqrt(be.sum_squares(params.flat_grads()));
    if (!std::isfinite(sum.loss) || !std::isfinite(grad_norm)) {
      std::string first = "none";
      for (std::size_t i = 0; i < params.size(); ++i) {
        if (!be.all_finite(params.grad(static_cast<int>(i)))) {
          first = params.spec(static_cast<int>(i)).name;
          break;
        }
      }
      throw UserError(str_cat("step ", step, ": the loss is ", sum.loss, " and the gradient norm ",
                              grad_norm, "; first non-finite gradient: ", first,
                              " (lower optimizer.lr or check the data)"),
                      true, 3);
    }
    if (c.optimizer.grad_clip > 0 && grad_norm > c.optimizer.grad_clip) {
      be.scale(params.flat_grads(), c.optimizer.grad_clip / (grad_norm + 1e-6));
    }
    const double lr = learning_rate(c.optimizer, step);
    s_->optimizer->step(lr, step);
    be.synchronize();

    const double step_s = seconds_since(step_start), elapsed = seconds_since(start);
    const double tok_s = static_cast<double>(tokens_per_step) / step_s;
    const double tflops = s_->flops_per_token * tok_s / 1e12;
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
    line["tokens"] = step * tokens_per_step;
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
    s_->metrics->write(line);
    last_loss = sum.loss;

    if (step == 1 || step % c.train.log_interval == 0 || step == c.train.steps) {
      const double eta =
          elapsed / static_cast<double>(step) * static_cast<double>(c.train.steps - step);
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
      s_->metrics->write(ev);
    }
  }
  const double total = seconds_since(start);
  log_info("done: ", c.train.steps, " steps, ", si(double(c.train.steps * tokens_per_step)),
           " tokens in ", format_duration(total), " (",
           si(double(c.train.steps * tokens_per_step) / total), " tok/s); final loss ", last_loss,
           "; peak activation arenas ", format_bytes(double(model.activation_peak_bytes())));
  return 0;
}

}  // namespace linmoe
