#include "train/optimizer.h"

#include <algorithm>

#include "core/log.h"

namespace linmoe {

Optimizer::Optimizer(const OptimizerConfig& config, Backend& backend, const ParameterStore& params,
                     std::int64_t begin, std::int64_t end)
    : config_(config),
      backend_(backend),
      params_(params),
      begin_(begin),
      end_(end < 0 ? params.padded_numel() : end) {
  LINMOE_CHECK(0 <= begin_ && begin_ <= end_ && end_ <= params.padded_numel(), "optimizer range [",
               begin_, ", ", end_, ") outside the ", params.padded_numel(), " parameters");
  for (std::size_t i = 0; i < params.size(); ++i) {
    const int id = static_cast<int>(i);
    const std::int64_t lo = std::max(begin_, params.offset_of(id));
    const std::int64_t hi = std::min(end_, params.offset_of(id) + params.spec(id).shape.numel());
    if (lo < hi) pieces_.push_back({lo, hi - lo, params.spec(id).weight_decay});
  }
  const auto bytes = static_cast<std::size_t>(end_ - begin_) * sizeof(float);
  const bool adamw = config_.type == OptimizerType::adamw;
  state_a_ = Buffer(backend.allocator(), bytes, adamw ? "adamw exp_avg" : "sgd momentum_buffer");
  if (adamw) state_b_ = Buffer(backend.allocator(), bytes, "adamw exp_avg_sq");
  for (const std::string& n : state_names()) backend_.fill(state(n), 0.0);
  if (params.flat_params().dtype != DType::f32) {
    // Starts from the model's (rounded) initial weights, as Megatron's fp32 main params do.
    master_ = Buffer(backend.allocator(), bytes, "master weights (fp32)");
    backend_.copy(params.flat_params().slice(0, begin_, end_ - begin_), master_weights());
  }
  log_info("optimizer ", adamw ? "adamw" : "sgd", ": state for ", end_ - begin_, " values, ",
           format_bytes(double(bytes) * (adamw ? 2 : 1)));
}

std::vector<std::string> Optimizer::state_names() const {
  if (config_.type == OptimizerType::adamw) return {"exp_avg", "exp_avg_sq"};
  return {"momentum_buffer"};
}

Tensor Optimizer::state(const std::string& name) const {
  const Shape shape{end_ - begin_};
  if (name == "exp_avg" || name == "momentum_buffer") return state_a_.view(DType::f32, shape);
  LINMOE_CHECK(name == "exp_avg_sq" && config_.type == OptimizerType::adamw,
               "no optimizer state named '", name, "'");
  return state_b_.view(DType::f32, shape);
}

Tensor Optimizer::master_weights() const {
  if (has_master_copy()) return master_.view(DType::f32, Shape{end_ - begin_});
  return params_.flat_params().slice(0, begin_, end_ - begin_);
}

void Optimizer::set_master_weights(const Tensor& values) {
  LINMOE_CHECK(values.numel() == end_ - begin_ && values.dtype == DType::f32,
               "master weights: expected ", end_ - begin_, " f32 values, got ", values.numel());
  backend_.copy(values, master_weights());
  if (has_master_copy()) {
    backend_.copy(master_weights(), params_.flat_params().slice(0, begin_, end_ - begin_));
  }
}

void Optimizer::step(const Tensor& grads, double lr, std::int64_t step) {
  LINMOE_CHECK(grads.dtype == DType::f32 && grads.numel() == params_.padded_numel(),
               "optimizer: gradients must be the store's flat f32 [", params_.padded_numel(), "]");
  const Tensor master = master_weights();
  const Tensor store = params_.flat_params();
  for (const Piece& piece : pieces_) {
    const std::int64_t local = piece.flat_begin - begin_;
    const Tensor p = master.slice(0, local, piece.length);
    const Tensor g = grads.slice(0, piece.flat_begin, piece.length);
    const double wd = piece.weight_decay ? config_.weight_decay : 0.0;
    if (config_.type == OptimizerType::adamw) {
      backend_.adamw_update(p, g, state("exp_avg").slice(0, local, piece.length),
                            state("exp_avg_sq").slice(0, local, piece.length), lr, config_.beta1,
                            config_.beta2, config_.eps, wd, step);
    } else {
      backend_.sgd_update(p, g, state("momentum_buffer").slice(0, local, piece.length), lr,
                          config_.momentum, wd, step);
    }
    // bf16 weights: the model computes with the rounded update.
    if (has_master_copy()) backend_.copy(p, store.slice(0, piece.flat_begin, piece.length));
  }
}

}  // namespace linmoe
