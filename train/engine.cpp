#include "train/engine.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"
#include "core/log.h"
#include "parallel/process_groups.h"

namespace linmoe {

using i64 = std::int64_t;

namespace {

// Tags of the pipeline's point-to-point messages.
constexpr int kActivationTag = 1;
constexpr int kGradientTag = 2;
constexpr int kTiedEmbeddingTag = 3;

ShardingPlan plan_for(const Config& cfg, const ProcessGroups* groups) {
  if (!groups) return make_sharding_plan(cfg, 0, 0, 0);
  const Coordinates& c = groups->coords();
  return make_sharding_plan(cfg, c.tp_rank, c.ep_rank, c.pp_rank);
}

}  // namespace

// A contiguous part of the flat parameter/gradient buffers with one data-parallel reduction
// group: the dense parameters (dp·cp) or the routed experts (expert-dp).
struct Engine::Region {
  std::string name;
  i64 begin = 0, end = 0;          // flat range in the store
  Communicator* group = nullptr;   // null or size 1: nothing to reduce
  bool zero = false;               // reduce-scatter + sharded update + all-gather
  i64 chunk = 0;                   // (end − begin) / group size with ZeRO
  i64 opt_begin = 0, opt_end = 0;  // what this rank updates: its shard, or the whole region
  std::unique_ptr<Optimizer> optimizer;
  Buffer shard;  // [chunk] (ZeRO): a collective's buffers must not overlap

  i64 length() const { return end - begin; }
  int group_size() const { return group ? group->size() : 1; }
  int group_rank() const { return group ? group->rank() : 0; }
};

Engine::Engine(const Config& cfg, Backend& backend, const ProcessGroups* groups)
    : cfg_(cfg),
      backend_(backend),
      groups_(groups),
      dtype_(cfg.train.precision == Precision::bf16 ? DType::bf16 : DType::f32) {
  model_ = std::make_unique<Model>(cfg_.model, backend_, dtype_, plan_for(cfg_, groups_), groups_);
  model_->initialize(cfg_.run.seed);
  model_->set_recompute(cfg_.train.recompute);
  const ParameterStore& params = model_->params();
  if (dtype_ != DType::f32) {
    main_grads_ = Buffer(backend_.allocator(),
                         static_cast<std::size_t>(params.padded_numel()) * sizeof(float),
                         "main gradients (fp32)");
  }
  const std::vector<ShardedParam>& sharded = model_->sharded_params();

  // The store's regions (layers/model.cpp): dense parameters, then the routed experts, each
  // padded to a multiple of its data-parallel group's size.
  for (const ParameterStore::Region& pr : params.regions()) {
    const bool expert = sharded[static_cast<std::size_t>(pr.first)].expert;
    Communicator* group = nullptr;
    if (groups_) {
      group = &groups_->tensor_group(expert ? GroupKind::expert_dp : GroupKind::dp_cp);
    }
    auto r = std::make_unique<Region>();
    r->name = expert ? "expert" : "dense";
    r->begin = pr.begin;
    r->end = pr.end;
    r->group = group && group->size() > 1 ? group : nullptr;
    r->zero = cfg_.optimizer.zero && r->group != nullptr;
    r->opt_begin = r->begin;
    r->opt_end = r->end;
    if (r->zero) {
      const int g = r->group_size();
      LINMOE_CHECK(r->length() % g == 0, "region ", r->name, " of ", r->length(),
                   " values does not split over ", g, " ranks");
      r->chunk = r->length() / g;
      r->opt_begin = r->begin + r->group_rank() * r->chunk;
      r->opt_end = r->opt_begin + r->chunk;
      r->shard = Buffer(backend_.allocator(), static_cast<std::size_t>(r->chunk) * sizeof(float),
                        "zero shard (" + r->name + ")");
    }
    r->optimizer =
        std::make_unique<Optimizer>(cfg_.optimizer, backend_, params, r->opt_begin, r->opt_end);
    regions_.push_back(std::move(r));
  }

  if (groups_ && groups_->layout().pp > 1) model_->set_slots(pipeline_slots());
  plan_buckets();
  model_->set_gradients_done([this](const std::vector<int>& ids) { on_gradients_done(ids); });
}

Engine::~Engine() = default;

// 1F1B keeps at most pp − s micro-batches in flight on stage s, and backwards run in forward
// order, so micro-batch j can reuse the activations slot of j − (pp − s): its backward is done.
int Engine::pipeline_slots() const {
  const int pp = groups_->layout().pp, s = groups_->coords().pp_rank;
  return std::min(pp - s, cfg_.parallel.micro_batches);
}

Tensor Engine::persistent(Buffer& b, DType dtype, const Shape& shape, const char* what) {
  const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
  if (b.bytes() < bytes) b = Buffer(backend_.allocator(), bytes, what);
  return b.view(dtype, shape);
}

Tensor Engine::grads() const {
  const ParameterStore& params = model_->params();
  if (dtype_ == DType::f32) return params.flat_grads();
  return main_grads_.view(DType::f32, Shape{params.padded_numel()});
}

Tensor Engine::grad(int i) const {
  const ParameterStore& params = model_->params();
  return grads()
      .slice(0, params.offset_of(i), params.spec(i).shape.numel())
      .reshape(params.spec(i).shape);
}

void Engine::accumulate_micro_batch_grads() {
  if (dtype_ != DType::f32) move_into_main(model_->params().flat_grads(), grads());
}

// bf16 → f32: main += model, then the model's copy starts again from 0.
void Engine::move_into_main(const Tensor& model_grad, const Tensor& main_grad) {
  backend_.axpy(1.0, model_grad, main_grad);
  backend_.fill(model_grad, 0.0);
}

bool Engine::owns(int i) const {
  const ShardedParam& p = model_->sharded_params()[static_cast<std::size_t>(i)];
  if (p.tied_copy) return false;
  if (!groups_) return true;
  if (p.tp_replicated && groups_->coords().tp_rank != 0) return false;
  const Communicator& data = p.expert ? groups_->expert_dp() : groups_->dp_cp();
  return data.rank() == 0;
}

void Engine::add_losses(const MicroBatchLosses& l, StepResult& r) {
  r.lm_loss += l.lm_loss;
  r.aux_loss += l.aux_loss;
  r.z_loss += l.z_loss;
  // The expert-load table has a row per layer of the whole model (every FFN is MoE when
  // num_experts > 0); this stage's rows start at its first layer.
  if (r.expert_load.empty() && cfg_.model.moe.num_experts > 0) {
    r.expert_load.assign(static_cast<std::size_t>(cfg_.model.num_layers),
                         std::vector<double>(static_cast<std::size_t>(cfg_.model.moe.num_experts)));
  }
  const auto first = static_cast<std::size_t>(model_->plan().first_layer());
  for (std::size_t k = 0; k < l.expert_load.size(); ++k) {
    std::vector<double>& dst = r.expert_load[first + k];
    LINMOE_CHECK(l.expert_load[k].size() == dst.size(), "expert load of ", l.expert_load[k].size(),
                 " experts, expected ", dst.size());
    for (std::size_t e = 0; e < dst.size(); ++e) {
      dst[e] += l.expert_load[k][e];
    }
  }
}

void Engine::run_micro_batches(const std::function<Batch()>& next, StepResult& r) {
  const int M = cfg_.parallel.micro_batches;
  const int dp = groups_ ? groups_->layout().dp : 1;
  for (int j = 0; j < M; ++j) {
    Batch b = next();
    last_backward_ = j == M - 1;  // its parameters are reduced as the backward finishes them
    add_losses(model_->forward_backward(b.tokens, b.targets, 1.0 / (M * dp)), r);
    if (!last_backward_) accumulate_micro_batch_grads();
  }
}

// 1F1B (PipeDream-Flush, Megatron's schedule): stage s runs pp − s − 1 warm-up forwards, then
// alternates one forward and one backward, then drains the remaining backwards. The combined
// send-and-receive calls pair up between neighbours, so blocking transfers cannot deadlock.
void Engine::run_pipeline(const std::function<Batch()>& next, StepResult& r) {
  const int M = cfg_.parallel.micro_batches;
  const Layout& layout = groups_->layout();
  const int pp = layout.pp, s = groups_->coords().pp_rank, dp = layout.dp;
  Communicator& pipe = groups_->tensor_group(GroupKind::pp);
  const bool first = s == 0, last = s == pp - 1;
  const int prev = first ? -1 : s - 1, nxt = last ? -1 : s + 1;
  const int slots = pipeline_slots();
  const double scale = 1.0 / (M * dp);
  const i64 N = i64{cfg_.train.micro_batch_size} * (cfg_.train.seq_len / layout.cp);
  const Shape hs{N, cfg_.model.hidden_size};
  const Tensor h_in = persistent(pipe_in_, dtype_, hs, "pipeline input");
  const Tensor dh = persistent(pipe_grad_, dtype_, hs, "pipeline output gradient");

  int fwd = 0, bwd = 0;
  auto forward = [&]() -> Tensor {
    Batch b = next();
    Model::StageOutput o = model_->stage_forward(fwd % slots, b.tokens, b.targets,
                                                 first ? Tensor{} : h_in, true, scale);
    add_losses(o.losses, r);
    ++fwd;
    return o.h;
  };
  auto backward = [&]() -> Tensor {
    last_backward_ = bwd == M - 1;
    const Tensor dx = model_->stage_backward(bwd++ % slots, dh);
    if (!last_backward_) accumulate_micro_batch_grads();
    return dx;
  };

  const int warmup = std::min(pp - s - 1, M), remaining = M - warmup;
  for (int i = 0; i < warmup; ++i) {
    if (!first) pipe.recv(h_in, prev, kActivationTag);
    const Tensor y = forward();
    if (!last) pipe.send(y, nxt, kActivationTag);
  }
  if (remaining > 0 && !first) pipe.recv(h_in, prev, kActivationTag);
  for (int i = 0; i < remaining; ++i) {
    const Tensor y = forward();
    // send forward, receive the gradient of an earlier micro-batch's output
    if (!last) pipe.send_recv(y, nxt, dh, nxt, kActivationTag, kGradientTag);
    const Tensor dx = backward();
    if (i == remaining - 1) {
      if (!first) pipe.send(dx, prev, kGradientTag);
    } else if (!first) {
      pipe.send_recv(dx, prev, h_in, prev, kGradientTag, kActivationTag);
    }
  }
  for (int i = 0; i < warmup; ++i) {
    if (!last) pipe.recv(dh, nxt, kGradientTag);
    const Tensor dx = backward();
    if (!first) pipe.send(dx, prev, kGradientTag);
  }
}

// A contiguous range [begin, end) of one region's flat fp32 gradients, reduced by one
// non-blocking call once the backward has finished its `pending` parameters.
struct Engine::Bucket {
  Region* region = nullptr;
  i64 begin = 0, end = 0;
  int params = 0, pending = 0;
  bool deferred = false;  // holds a tied embedding copy: launched after the copies' exchange
  bool launched = false;
};

// Consecutive parameters of a region (store order) until a bucket holds grad_bucket_mb; the
// first bucket starts at the region's start and the last ends at its end (padding included).
void Engine::plan_buckets() {
  const ParameterStore& params = model_->params();
  bucket_of_.assign(params.size(), -1);
  finished_.assign(params.size(), 0);
  const double mb = cfg_.parallel.grad_bucket_mb;
  const i64 target = mb > 0 ? std::max<i64>(1, static_cast<i64>(mb * (1 << 20) / 4))
                            : std::numeric_limits<i64>::max();
  const bool tied = groups_ && groups_->layout().pp > 1 && cfg_.model.tie_embeddings;
  const int embed = params.find("embed.weight");
  for (auto& r : regions_) {
    if (!r->group) continue;
    std::vector<int> ids;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const i64 at = params.offset_of(static_cast<int>(i));
      if (at >= r->begin && at < r->end) ids.push_back(static_cast<int>(i));
    }
    std::sort(ids.begin(), ids.end(),
              [&](int a, int b) { return params.offset_of(a) < params.offset_of(b); });
    Bucket b;
    b.region = r.get();
    b.begin = r->begin;
    for (int id : ids) {
      const i64 at = params.offset_of(id);
      if (b.params > 0 && at - b.begin >= target) {
        b.end = at;
        buckets_.push_back(b);
        b = Bucket{};
        b.region = r.get();
        b.begin = at;
      }
      bucket_of_[static_cast<std::size_t>(id)] = static_cast<int>(buckets_.size());
      ++b.params;
      b.deferred = b.deferred || (tied && id == embed);
    }
    b.end = r->end;
    buckets_.push_back(b);
  }
}

void Engine::on_gradients_done(const std::vector<int>& ids) {
  if (!last_backward_) return;
  for (int i : ids) {
    if (finished_[static_cast<std::size_t>(i)]) continue;
    finish_parameter(i);
    const int k = bucket_of_[static_cast<std::size_t>(i)];
    if (k < 0) continue;
    Bucket& b = buckets_[static_cast<std::size_t>(k)];
    if (--b.pending == 0 && !b.deferred) launch(b);
  }
}

void Engine::finish_parameter(int i) {
  finished_[static_cast<std::size_t>(i)] = 1;
  ParameterStore& params = model_->params();
  if (dtype_ != DType::f32) move_into_main(params.grad(i), grad(i));
  // A replicated parameter whose gradient each tensor rank holds a part of.
  if (groups_ && groups_->layout().tp > 1 &&
      model_->sharded_params()[static_cast<std::size_t>(i)].tp_partial_grad) {
    groups_->tensor_group(GroupKind::tp).all_reduce(grad(i));
  }
}

void Engine::launch(Bucket& b) {
  b.launched = true;
  Region& r = *b.region;
  auto* flat = static_cast<float*>(grads().data);
  if (!r.zero) {
    r.group->start_all_reduce(flat + b.begin, b.end - b.begin, DType::f32);
    return;
  }
  // Rank k's shard is [begin + k·chunk, +chunk): each gets the part of the bucket inside it.
  std::vector<i64> counts(static_cast<std::size_t>(r.group_size()));
  for (std::size_t k = 0; k < counts.size(); ++k) {
    const i64 lo = r.begin + static_cast<i64>(k) * r.chunk, hi = lo + r.chunk;
    counts[k] = std::max<i64>(0, std::min(hi, b.end) - std::max(lo, b.begin));
  }
  auto* shard = static_cast<float*>(r.shard.data());
  const i64 at = std::max(b.begin, r.opt_begin) - r.opt_begin;
  r.group->start_reduce_scatter_v(flat + b.begin, shard + std::min(at, r.chunk), counts,
                                  DType::f32);
}

void Engine::reduce_gradients(StepResult& result) {
  ParameterStore& params = model_->params();
  result.grad_buckets = static_cast<int>(buckets_.size());
  result.grad_buckets_overlapped = static_cast<int>(
      std::count_if(buckets_.begin(), buckets_.end(), [](const Bucket& b) { return b.launched; }));
  // Whatever the backward did not report (a stage without a head, say) is finished now.
  std::vector<int> all(params.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
  on_gradients_done(all);
  last_backward_ = false;
  if (!groups_) return;
  const Layout& layout = groups_->layout();
  // A tied embedding's copies on the first and last stage: each adds the other's gradient.
  if (layout.pp > 1 && cfg_.model.tie_embeddings) {
    const int s = groups_->coords().pp_rank;
    if (s == 0 || s == layout.pp - 1) {
      const int i = params.index("embed.weight");
      const Tensor g = grad(i);
      const Tensor o = persistent(tied_grad_, g.dtype, g.shape, "tied embedding gradient");
      const int peer = s == 0 ? layout.pp - 1 : 0;
      groups_->tensor_group(GroupKind::pp)
          .send_recv(g, peer, o, peer, kTiedEmbeddingTag, kTiedEmbeddingTag);
      backend_.axpy(1.0, o, g);
    }
  }
  for (Bucket& b : buckets_) {
    if (!b.launched) launch(b);
  }
  const Tensor flat = grads();
  for (auto& r : regions_) {
    if (!r->group) continue;
    r->group->wait_all();
    if (r->zero)
      backend_.copy(r->shard.view(DType::f32, Shape{r->chunk}),
                    flat.slice(0, r->opt_begin, r->chunk));
  }
}

double Engine::gradient_norm_squared() {
  const ParameterStore& params = model_->params();
  const Tensor flat = grads();
  double sum = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const int id = static_cast<int>(i);
    const ShardedParam& p = model_->sharded_params()[i];
    if (p.tied_copy) continue;
    if (groups_ && p.tp_replicated && groups_->coords().tp_rank != 0) continue;
    const i64 lo0 = params.offset_of(id), hi0 = lo0 + params.spec(id).shape.numel();
    for (const auto& r : regions_) {
      if (lo0 < r->begin || lo0 >= r->end) continue;
      // The reduced gradient lives in the shard (ZeRO) or on every replica (count rank 0's).
      i64 lo = lo0, hi = hi0;
      if (r->zero) {
        lo = std::max(lo, r->opt_begin);
        hi = std::min(hi, r->opt_end);
      } else if (r->group_rank() != 0) {
        hi = lo;
      }
      if (lo < hi) sum += backend_.sum_squares(flat.slice(0, lo, hi - lo));
    }
  }
  return groups_ ? groups_->world().all_reduce_sum(sum) : sum;
}

void Engine::finish_losses(StepResult& r) {
  const int M = cfg_.parallel.micro_batches;
  double div = M;
  if (groups_) {
    // One contributor per replica and stage: the statistics are equal over tp and cp.
    const Coordinates& c = groups_->coords();
    const bool stats_rank = c.tp_rank == 0 && c.cp_rank == 0;
    const bool loss_rank = stats_rank && model_->plan().last_stage();
    std::vector<double> v{loss_rank ? r.lm_loss : 0.0, stats_rank ? r.aux_loss : 0.0,
                          stats_rank ? r.z_loss : 0.0};
    for (auto& layer : r.expert_load) {
      for (double x : layer) v.push_back(stats_rank ? x : 0.0);
    }
    groups_->world().all_reduce_sum(v);
    r.lm_loss = v[0];
    r.aux_loss = v[1];
    r.z_loss = v[2];
    std::size_t k = 3;
    for (auto& layer : r.expert_load) {
      for (double& x : layer) x = v[k++];
    }
    div *= groups_->layout().dp;
  }
  r.lm_loss /= div;
  r.aux_loss /= div;
  r.z_loss /= div;
  for (auto& layer : r.expert_load) {
    for (double& x : layer) x /= div;
  }
  r.loss = r.lm_loss + cfg_.model.moe.aux_loss_coeff * r.aux_loss +
           cfg_.model.moe.z_loss_coeff * r.z_loss;
}

StepResult Engine::step(const std::function<Batch()>& next, double lr, std::int64_t step) {
  ParameterStore& params = model_->params();
  backend_.fill(params.flat_grads(), 0.0);
  if (dtype_ != DType::f32) backend_.fill(grads(), 0.0);
  std::fill(finished_.begin(), finished_.end(), 0);
  for (Bucket& b : buckets_) {
    b.pending = b.params;
    b.launched = false;
  }
  StepResult r;
  if (groups_ && groups_->layout().pp > 1) {
    run_pipeline(next, r);
  } else {
    run_micro_batches(next, r);
  }
  finish_losses(r);
  reduce_gradients(r);
  r.grad_norm = std::sqrt(gradient_norm_squared());
  if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
    std::string first = "none on this rank";
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (!backend_.all_finite(grad(static_cast<int>(i)))) {
        first = params.spec(static_cast<int>(i)).name;
        break;
      }
    }
    throw UserError(
        str_cat("step ", step, ": the loss is ", r.loss, " and the gradient norm ", r.grad_norm,
                "; first non-finite gradient: ", first, " (lower optimizer.lr or check the data)"),
        true, 3);
  }
  const double clip = cfg_.optimizer.grad_clip;
  const Tensor flat = grads();
  for (auto& reg : regions_) {
    if (clip > 0 && r.grad_norm > clip && reg->opt_end > reg->opt_begin) {
      backend_.scale(flat.slice(0, reg->opt_begin, reg->opt_end - reg->opt_begin),
                     clip / (r.grad_norm + 1e-6));
    }
    reg->optimizer->step(flat, lr, step);
  }
  // ZeRO: every replica takes the updated shards of the others.
  const Tensor weights = params.flat_params();
  for (auto& reg : regions_) {
    if (!reg->zero) continue;
    const Tensor shard = reg->shard.view(dtype_, Shape{reg->chunk});  // f32 or bf16 weights
    backend_.copy(weights.slice(0, reg->opt_begin, reg->chunk), shard);
    reg->group->all_gather(shard, weights.slice(0, reg->begin, reg->length()));
  }
  return r;
}

double Engine::evaluate(const std::function<Batch()>& next, int n) {
  // n micro-batches in all, whatever the layout: replica r's i-th is micro-batch i·dp + r. Every
  // replica runs ⌈n/dp⌉ (expert parallelism spans replicas, so all take part in each round);
  // those past n are run but not counted.
  const int dp = groups_ ? groups_->layout().dp : 1;
  const int r = groups_ ? groups_->coords().dp_rank : 0;
  const int rounds = (n + dp - 1) / dp;
  double sum = 0;
  const bool pipelined = groups_ && groups_->layout().pp > 1;
  const int s = pipelined ? groups_->coords().pp_rank : 0;
  const bool first = s == 0, last = !pipelined || s == groups_->layout().pp - 1;
  const i64 N = i64{cfg_.train.micro_batch_size} *
                (cfg_.train.seq_len / (groups_ ? groups_->layout().cp : 1));
  Tensor h_in;
  if (pipelined && !first) {
    h_in = persistent(pipe_in_, dtype_, Shape{N, cfg_.model.hidden_size}, "pipeline input");
  }
  for (int i = 0; i < rounds; ++i) {
    Batch b = next();
    // Forward only; a pipeline stage receives, runs and passes on, micro-batch by micro-batch.
    if (!first) groups_->tensor_group(GroupKind::pp).recv(h_in, s - 1, kActivationTag);
    Model::StageOutput o = model_->stage_forward(0, b.tokens, b.targets, h_in, false, 1.0);
    if (!last) groups_->tensor_group(GroupKind::pp).send(o.h, s + 1, kActivationTag);
    if (i * dp + r < n) sum += o.losses.lm_loss;
  }
  if (!groups_) return sum / n;
  const Coordinates& c = groups_->coords();
  const bool loss_rank = c.tp_rank == 0 && c.cp_rank == 0 && model_->plan().last_stage();
  return groups_->world().all_reduce_sum(loss_rank ? sum : 0.0) / n;
}

std::vector<std::string> Engine::optimizer_state_names() const {
  return regions_.empty() ? std::vector<std::string>{} : regions_.front()->optimizer->state_names();
}

// A ZeRO region's shards are all-gathered by its (tensor) group: MPI gathers straight into the
// host vector; a device communicator (NCCL) gathers into a device staging buffer the size of the
// largest such region, which is then copied to the host.
void Engine::gather_ranges(const std::function<Tensor(Region&)>& range_of, float* out) {
  const ParameterStore& params = model_->params();
  i64 stage_numel = 0;  // the largest ZeRO region whose group cannot write host memory
  for (const auto& r : regions_) {
    if (r->zero && r->group->device() != Device::cpu) {
      stage_numel = std::max(stage_numel, r->length());
    }
  }
  Buffer stage;  // freed on return
  if (stage_numel > 0) {
    stage = Buffer(backend_.allocator(), static_cast<std::size_t>(stage_numel) * sizeof(float),
                   "checkpoint gather");
  }
  std::fill(out, out + params.padded_numel(), 0.0f);  // the padding between parameters
  const Tensor host(out, DType::f32, Device::cpu, Shape{params.padded_numel()});
  for (auto& r : regions_) {
    const Tensor range = range_of(*r);  // [opt_end − opt_begin]
    const Tensor host_region = host.slice(0, r->begin, r->length());
    if (!r->zero) {
      backend_.copy(range, host_region);
      continue;
    }
    const Tensor shard = r->shard.view(DType::f32, Shape{r->chunk});
    backend_.copy(range, shard);
    if (r->group->device() == Device::cpu) {
      r->group->all_gather(shard, host_region);
      continue;
    }
    const Tensor staged = stage.view(DType::f32, Shape{r->length()});
    r->group->all_gather(shard, staged);
    backend_.copy(staged, host_region);
  }
  backend_.synchronize();
}

void Engine::gather_optimizer_state(std::vector<float>& out) {
  const std::vector<std::string> names = optimizer_state_names();
  const auto padded = static_cast<std::size_t>(model_->params().padded_numel());
  out.resize(padded * names.size());  // keeps its capacity (and first-touched pages) between saves
  for (std::size_t k = 0; k < names.size(); ++k) {
    gather_ranges([&](Region& r) { return r.optimizer->state(names[k]); }, out.data() + k * padded);
  }
}

void Engine::gather_master_weights(std::vector<float>& out) {
  const ParameterStore& params = model_->params();
  out.resize(static_cast<std::size_t>(params.padded_numel()));
  if (dtype_ == DType::f32) {  // every rank holds its whole store after the all-gather
    backend_.copy(params.flat_params(),
                  Tensor(out.data(), DType::f32, Device::cpu, Shape{params.padded_numel()}));
    backend_.synchronize();
    return;
  }
  gather_ranges([](Region& r) { return r.optimizer->master_weights(); }, out.data());
}

void Engine::scatter_master_weights(const std::vector<float>& weights) {
  const ParameterStore& params = model_->params();
  LINMOE_CHECK(static_cast<i64>(weights.size()) == params.padded_numel(), "master weights size");
  const Tensor host(const_cast<float*>(weights.data()), DType::f32, Device::cpu,
                    Shape{params.padded_numel()});
  for (auto& r : regions_) {
    r->optimizer->set_master_weights(host.slice(0, r->opt_begin, r->opt_end - r->opt_begin));
  }
  backend_.synchronize();
}

void Engine::scatter_optimizer_state(const std::vector<std::vector<float>>& state) {
  const std::vector<std::string> names = optimizer_state_names();
  LINMOE_CHECK(state.size() == names.size(), "optimizer state: ", state.size(), " tensors for ",
               names.size(), " names");
  const ParameterStore& params = model_->params();
  for (std::size_t k = 0; k < names.size(); ++k) {
    LINMOE_CHECK(static_cast<i64>(state[k].size()) == params.padded_numel(),
                 "optimizer state size");
    const Tensor host(const_cast<float*>(state[k].data()), DType::f32, Device::cpu,
                      Shape{params.padded_numel()});
    for (auto& r : regions_) {
      const Tensor st = r->optimizer->state(names[k]);
      if (st.numel() > 0) backend_.copy(host.slice(0, r->opt_begin, st.numel()), st);
    }
  }
  backend_.synchronize();
}

}  // namespace linmoe
