#include "layers/model.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/log.h"
#include "layers/init.h"
#include "layers/linear.h"
#include "layers/sublayers.h"
#include "parallel/process_groups.h"

namespace linmoe {

struct Model::Block {
  int layer = 0;  // global index
  int mixer_norm = -1, ffn_norm = -1;
  std::unique_ptr<Sublayer> mixer, ffn;
};

// The tensors of one layer kept between forward and backward. [N, D] with N = B·T.
struct Model::BlockActivations {
  Tensor h, n1, rstd1, a, n2, rstd2;
  std::unique_ptr<Sublayer::Cache> mixer_cache, ffn_cache;
};

namespace {

ShardingPlan one_rank_plan(const ModelConfig& m) {
  ShardingPlan p;
  p.stage_layers = {m.num_layers};
  return p;
}

}  // namespace

// One micro-batch in flight: its activations (own arena) until its backward.
struct Model::Slot {
  Arena saved;
  bool active = false, with_backward = false;
  std::int64_t B = 0, T = 0;
  double loss_scale = 1.0;
  std::int64_t tokens_global = 0;  // B·T·cp: the loss is a mean over all of them
  Tensor ids, tgt;                 // [N] i32 on the device
  std::vector<BlockActivations> blocks;
  Tensor h_last;                   // [N, D] the last block's output
  Tensor nf, rstd_f, logits, lse;  // the head (last stage)
};

Model::Model(const ModelConfig& config, Backend& backend, DType dtype)
    : Model(config, backend, dtype, one_rank_plan(config), nullptr) {}

Model::Model(const ModelConfig& config, Backend& backend, DType dtype, const ShardingPlan& plan,
             const ProcessGroups* groups)
    : config_(config), backend_(backend), dtype_(dtype), plan_(plan), groups_(groups) {
  if (plan_.stage_layers.empty()) plan_ = one_rank_plan(config_);
  sharded_ = shard_parameters(config_, plan_);
  // Two regions, dense then experts, each a multiple of 64 elements per rank of its data-
  // parallel group, so ZeRO reduce-scatters them in place into equal, aligned shards.
  const std::int64_t dense_group = groups_ ? groups_->dp_cp().size() : 1;
  const std::int64_t expert_group = groups_ ? groups_->expert_dp().size() : 1;
  bool in_experts = false;
  for (const ShardedParam& p : sharded_) {
    if (p.expert && !in_experts) {
      params_.end_region(64 * dense_group);
      in_experts = true;
    }
    params_.add(p.spec);
  }
  params_.end_region(64 * (in_experts ? expert_group : dense_group));
  params_.allocate(backend_.allocator(), dtype_, dtype_);
  if (plan_.first_stage() || config_.tie_embeddings) embed_ = params_.find("embed.weight");
  if (plan_.last_stage()) {
    final_norm_ = params_.index("final_norm.weight");
    lm_head_ =
        config_.tie_embeddings ? params_.index("embed.weight") : params_.index("lm_head.weight");
  }
  for (int i = plan_.first_layer(); i < plan_.last_layer(); ++i) {
    auto b = std::make_unique<Block>();
    b->layer = i;
    const std::string p = "layers." + std::to_string(i) + ".";
    b->mixer_norm = params_.index(p + "mixer_norm.weight");
    b->ffn_norm = params_.index(p + "ffn_norm.weight");
    b->mixer = config_.layer_kind(i) == 'N' ? make_attention(config_, i, params_)
                                            : make_lsm(config_, i, params_);
    b->ffn = config_.moe.num_experts > 0 ? make_moe(config_, i, params_)
                                         : make_dense_ffn(config_, i, params_);
    blocks_.push_back(std::move(b));
  }
  done_parts_.resize(blocks_.size() + 2);
  const std::size_t head = blocks_.size(), rest = blocks_.size() + 1;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_.spec(static_cast<int>(i)).name;
    std::size_t part = rest;
    if (name.rfind("layers.", 0) == 0) {
      part = static_cast<std::size_t>(std::stoi(name.substr(7)) - plan_.first_layer());
    } else if (name == "final_norm.weight" || name == "lm_head.weight") {
      part = head;
    }
    LINMOE_CHECK(part < done_parts_.size(), "parameter ", name, " outside this stage's layers");
    done_parts_[part].push_back(static_cast<int>(i));
  }
  set_slots(1);
}

Model::~Model() = default;

void Model::initialize(std::uint64_t seed) {
  initialize_parameters(params_, config_, seed, backend_);
}

void Model::set_slots(int n) {
  LINMOE_CHECK(n >= 1, "Model::set_slots(", n, ")");
  while (static_cast<int>(slots_.size()) < n) slots_.push_back(std::make_unique<Slot>());
}

std::size_t Model::activation_peak_bytes() const {
  std::size_t total = scratch_.peak() + recompute_arena_.peak();
  for (const auto& s : slots_) total += s->saved.peak();
  return total;
}

namespace {

// Activation values per token of one layer's parts (the plan's estimate, in elements).
struct LayerPlan {
  std::int64_t block, mixer, ffn;  // block: residual/norm tensors kept by the model (6·D)
};

LayerPlan layer_plan(const ModelConfig& m, int i) {
  const std::int64_t D = m.hidden_size;
  const std::int64_t lsm =
      4 * std::int64_t{m.lsm.num_heads} * (m.lsm.head_dim_k + m.lsm.head_dim_v);
  const std::int64_t attn = 4 * std::int64_t{m.attention.num_heads} * m.attention.head_dim;
  const std::int64_t ffn =
      m.moe.num_experts > 0
          ? 4 * std::int64_t{m.moe.top_k} * (m.moe.ffn_hidden_size + D) + 2 * m.moe.num_experts
          : 3 * std::int64_t{m.ffn_hidden_size};
  const std::int64_t shared =
      m.moe.shared_ffn_hidden_size > 0 ? 3 * m.moe.shared_ffn_hidden_size + 2 : 0;
  return {6 * D, m.layer_kind(i) == 'N' ? attn : lsm, ffn + shared};
}

}  // namespace

std::size_t Model::planned_activation_bytes(const ModelConfig& m, std::int64_t B, std::int64_t T,
                                            DType dtype, Recompute recompute,
                                            const ShardingPlan* plan) {
  // Per layer: the residual and norm tensors here (6·D per token) plus what the sublayers keep
  // (projections, core outputs, expert activations), and the logits. An estimate: the arena
  // grows (and says so) if it is short. Recompute keeps less: selective drops the mixers'
  // part, full keeps only each block's output (the next block's input).
  // With a plan: only the stage's layers, the head only on the last stage, and the sublayers'
  // and logits' tensor-parallel shares.
  const std::int64_t D = m.hidden_size, N = B * T;
  const int first = plan ? plan->first_layer() : 0, last = plan ? plan->last_layer() : m.num_layers;
  const std::int64_t tp = plan ? plan->tp : 1;
  std::int64_t per_token = 0;
  for (int i = first; i < last; ++i) {
    const LayerPlan l = layer_plan(m, i);
    if (recompute == Recompute::full) {
      per_token += D;
    } else {
      per_token += l.block + (l.ffn + (recompute == Recompute::selective ? 0 : l.mixer)) / tp;
    }
  }
  per_token += D;  // the stage's input (the embedding output, or the received activation)
  if (!plan || plan->last_stage()) {
    per_token += 4 * D + 2 * ((m.vocab_size + tp - 1) / tp);  // final norm, logits, their grad
  }
  // Every allocation is rounded up to kAlignment bytes: allow ~48 allocations per layer.
  const std::size_t slack =
      std::size_t{48} * kAlignment * static_cast<std::size_t>(m.num_layers + 2);
  return static_cast<std::size_t>(N * per_token) * dtype_size(dtype) + slack;
}

std::size_t Model::planned_recompute_bytes(const ModelConfig& m, std::int64_t B, std::int64_t T,
                                           DType dtype, Recompute recompute) {
  if (recompute == Recompute::none) return 0;
  std::int64_t most = 0;  // the largest block (full) or mixer (selective) rebuilt at once
  for (int i = 0; i < m.num_layers; ++i) {
    const LayerPlan l = layer_plan(m, i);
    most = std::max(most, recompute == Recompute::full ? l.block + l.mixer + l.ffn + m.hidden_size
                                                       : l.mixer + m.hidden_size);
  }
  // Twice the estimate: one block's sublayer activations vary more by type (mamba2, conv halos,
  // context-parallel states) than a whole model's average.
  return 2 * static_cast<std::size_t>(B * T * most) * dtype_size(dtype) + 48 * kAlignment;
}

std::size_t Model::planned_scratch_bytes(const ModelConfig& m, std::int64_t B, std::int64_t T,
                                         DType dtype, const ShardingPlan* plan) {
  // Temporaries live for one sublayer (or the head) at a time: the largest layer's kept
  // activations bound them (the tiny models use 50–95% of it), or the logits' gradient.
  const int first = plan ? plan->first_layer() : 0, last = plan ? plan->last_layer() : m.num_layers;
  const std::int64_t tp = plan ? plan->tp : 1;
  std::int64_t most = 0;
  for (int i = first; i < last; ++i) {
    const LayerPlan l = layer_plan(m, i);
    most = std::max(most, l.block + (l.mixer + l.ffn) / tp);
  }
  if (!plan || plan->last_stage()) most = std::max(most, 2 * ((m.vocab_size + tp - 1) / tp));
  return static_cast<std::size_t>(B * T * most) * dtype_size(dtype) + (std::size_t{1} << 20);
}

void Model::tp_all_reduce(const Tensor& t) {
  if (groups_ && plan_.tp > 1) groups_->tensor_group(GroupKind::tp).all_reduce(t);
}

void Model::prepare_slot(Slot& s, std::int64_t B, std::int64_t T) {
  const std::size_t plan = planned_activation_bytes(config_, B, T, dtype_, recompute_, &plan_);
  const std::size_t rplan = planned_recompute_bytes(config_, B, T, dtype_, recompute_);
  if (recompute_arena_.capacity() < rplan) {
    recompute_arena_ = Arena(backend_.allocator(), rplan, "recompute");
  }
  if (s.saved.capacity() < plan) {
    // Sized from the config's plan once per shape; a short plan grows the arena (with a note).
    s.saved = Arena(backend_.allocator(), plan, "activations");
    log_info("activation arena: ", format_bytes(double(plan)), " planned for a [", B, ", ", T,
             "] micro-batch");
  }
  const std::size_t splan = planned_scratch_bytes(config_, B, T, dtype_, &plan_);
  if (scratch_.capacity() < splan) scratch_ = Arena(backend_.allocator(), splan, "scratch");
  s.saved.reset();
  s.blocks.clear();
  s.blocks.resize(blocks_.size());
  s.B = B;
  s.T = T;
}

LayerContext Model::context(Slot& s) {
  LayerContext ctx{backend_, params_, s.saved, scratch_, dtype_};
  ctx.loss_scale = s.loss_scale;
  ctx.groups = groups_;
  if (groups_) ctx.position_offset = groups_->coords().cp_rank * s.T;
  return ctx;
}

LayerContext Model::recompute_context(Slot& s) {
  LayerContext ctx = context(s);
  return LayerContext{backend_,       params_,   recompute_arena_,
                      scratch_,       dtype_,    ctx.position_offset,
                      ctx.loss_scale, ctx.groups};
}

// a = h + Mixer(RMSNorm(h)); next = a + FFN(RMSNorm(a)). The block's tensors and the FFN's
// activations go to ctx.saved, the mixer's to mixer_ctx.saved; next [N, D] is the caller's.
void Model::block_forward(std::size_t i, BlockActivations& act, LayerContext& ctx,
                          LayerContext& mixer_ctx, const Tensor& h, const Tensor& next,
                          SublayerStats* ffn_stats, std::int64_t B, std::int64_t T) {
  Backend& be = backend_;
  Block& b = *blocks_[i];
  const std::int64_t N = B * T, D = config_.hidden_size;
  const DType stat = stat_dtype(dtype_);
  act.h = h;
  act.n1 = ctx.save(Shape{N, D});
  act.rstd1 = ctx.saved.allocate(stat, Shape{N});
  be.rms_norm_forward(h, params_.param(b.mixer_norm), config_.norm_eps, act.n1, act.rstd1);
  act.a = ctx.save(Shape{N, D});
  SublayerStats mixer_stats;
  act.mixer_cache = b.mixer->forward(mixer_ctx, act.n1.reshape(Shape{B, T, D}),
                                     act.a.reshape(Shape{B, T, D}), &mixer_stats);
  tp_all_reduce(act.a);
  act.n2 = ctx.save(Shape{N, D});
  act.rstd2 = ctx.saved.allocate(stat, Shape{N});
  // a = h + Mixer(RMSNorm(h)) and RMSNorm(a), one pass (the residual add fused into the norm).
  be.rms_norm_forward(act.a, params_.param(b.ffn_norm), config_.norm_eps, act.n2, act.rstd2, h);
  act.ffn_cache =
      b.ffn->forward(ctx, act.n2.reshape(Shape{B, T, D}), next.reshape(Shape{B, T, D}), ffn_stats);
  tp_all_reduce(next);
  be.axpy(1.0, act.a, next);  // h = a + FFN(RMSNorm(a))
}

MicroBatchLosses Model::forward_backward(const Tensor& tokens, const Tensor& targets,
                                         double loss_scale) {
  LINMOE_CHECK(plan_.pp == 1, "Model::forward_backward runs a whole model; use the stage API");
  MicroBatchLosses out = stage_forward(0, tokens, targets, Tensor{}, true, loss_scale).losses;
  stage_backward(0, Tensor{});
  return out;
}

MicroBatchLosses Model::forward(const Tensor& tokens, const Tensor& targets) {
  LINMOE_CHECK(plan_.pp == 1, "Model::forward runs a whole model; use the stage API");
  return stage_forward(0, tokens, targets, Tensor{}, false, 1.0).losses;
}

Model::StageOutput Model::stage_forward(int slot, const Tensor& tokens, const Tensor& targets,
                                        const Tensor& h_in, bool with_backward, double loss_scale) {
  LINMOE_CHECK(tokens.ndim() == 2 && tokens.dtype == DType::i32, "tokens must be [B, T] i32, got ",
               tokens.str());
  check_shape(targets, tokens.shape, "model", "targets");
  LINMOE_CHECK(slot >= 0 && slot < static_cast<int>(slots_.size()), "slot ", slot, " of ",
               slots_.size());
  Slot& s = *slots_[static_cast<std::size_t>(slot)];
  LINMOE_CHECK(!s.active, "activation slot ", slot, " is still in use");
  const std::int64_t B = tokens.size(0), T = tokens.size(1), N = B * T, D = config_.hidden_size;
  Backend& be = backend_;
  prepare_slot(s, B, T);
  s.active = with_backward;
  s.with_backward = with_backward;
  s.loss_scale = loss_scale;
  const int cp = groups_ ? groups_->layout().cp : 1;
  s.tokens_global = N * cp;
  LayerContext ctx = context(s);

  s.ids = s.saved.allocate(DType::i32, Shape{N});
  s.tgt = s.saved.allocate(DType::i32, Shape{N});
  be.copy(tokens.reshape(Shape{N}), s.ids);
  be.copy(targets.reshape(Shape{N}), s.tgt);

  StageOutput out;
  out.losses.tokens = s.tokens_global;
  Tensor h = ctx.save(Shape{N, D});  // [N, D]
  if (plan_.first_stage()) {
    // h = embed.weight[tokens]: each tp rank holds a vocabulary block, the others give zeros.
    be.embedding_forward(s.ids, params_.param(embed_), h, params_.spec(embed_).offset[0]);
    tp_all_reduce(h);
  } else {
    check_shape(h_in, Shape{N, D}, "pipeline stage", "input");
    be.copy(h_in, h);
  }
  // Recompute (train.recompute): selective keeps everything but the mixers' internals, full
  // keeps only each block's input; stage_backward rebuilds the rest in the recompute arena.
  LayerContext rctx = recompute_context(s);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    BlockActivations& act = s.blocks[i];
    Tensor next = ctx.save(Shape{N, D});
    SublayerStats ffn_stats;
    if (recompute_ == Recompute::full) {
      block_forward(i, act, rctx, rctx, h, next, &ffn_stats, B, T);
    } else {
      block_forward(i, act, ctx, recompute_ == Recompute::selective ? rctx : ctx, h, next,
                    &ffn_stats, B, T);
    }
    if (recompute_ != Recompute::none) {
      act.mixer_cache.reset();
      if (recompute_ == Recompute::full) act = BlockActivations{};
      act.h = h;
      recompute_arena_.reset();
    }
    out.losses.aux_loss += ffn_stats.aux_loss;
    out.losses.z_loss += ffn_stats.z_loss;
    if (!ffn_stats.expert_load.empty()) out.losses.expert_load.push_back(ffn_stats.expert_load);
    h = next;
  }
  s.h_last = h;
  if (plan_.last_stage()) {
    head_forward(s, ctx, out.losses, loss_scale);
  } else {
    out.h = h;
  }
  out.losses.loss = out.losses.lm_loss + config_.moe.aux_loss_coeff * out.losses.aux_loss +
                    config_.moe.z_loss_coeff * out.losses.z_loss;
  if (!with_backward) {
    s.blocks.clear();  // drop the sublayer caches
  }
  return out;
}

// logits = RMSNorm(h) lm_headᵀ [N, Vl] on this rank's vocabulary block; per token
// loss = lse − logit[target] with lse and the target logit reduced over the tp blocks.
void Model::head_forward(Slot& s, LayerContext& ctx, MicroBatchLosses& out, double /*loss_scale*/) {
  Backend& be = backend_;
  const DType stat = stat_dtype(dtype_);
  const std::int64_t N = s.B * s.T, D = config_.hidden_size;
  const Tensor w = params_.param(lm_head_);
  const std::int64_t Vl = w.size(0), vocab_start = params_.spec(lm_head_).offset[0];
  s.nf = ctx.save(Shape{N, D});
  s.rstd_f = s.saved.allocate(stat, Shape{N});
  be.rms_norm_forward(s.h_last, params_.param(final_norm_), config_.norm_eps, s.nf, s.rstd_f);
  s.logits = ctx.save(Shape{N, Vl});
  be.gemm(s.nf, false, w, true, s.logits, 1.0, 0.0);
  s.lse = s.saved.allocate(stat, Shape{N});
  ScratchScope scope(scratch_);
  Tensor target_logit = scratch_.allocate(stat, Shape{N});
  be.cross_entropy_stats(s.logits, s.tgt, vocab_start, s.lse, target_logit);
  if (groups_ && plan_.tp > 1) {
    // lse over the whole vocabulary = m + log Σ_r exp(lse_r − m), m the max over the blocks.
    // Combined on the host ([N] values per micro-batch); a device op can replace it later.
    Communicator& tp = groups_->group(GroupKind::tp);  // host vectors (MPI)
    std::vector<double> lse(static_cast<std::size_t>(N)), m, e(static_cast<std::size_t>(N));
    be.copy(s.lse, Tensor(lse.data(), DType::f64, Device::cpu, Shape{N}));
    m = lse;
    tp.all_reduce(m.data(), N, DType::f64, ReduceOp::max);
    for (std::size_t n = 0; n < lse.size(); ++n) e[n] = std::exp(lse[n] - m[n]);
    tp.all_reduce(e.data(), N, DType::f64, ReduceOp::sum);
    // Ignored positions (target < 0) give lse 0 on every block, and 0 in all.
    std::vector<std::int32_t> tgt(static_cast<std::size_t>(N));
    be.copy(s.tgt, Tensor(tgt.data(), DType::i32, Device::cpu, Shape{N}));
    for (std::size_t n = 0; n < lse.size(); ++n) {
      lse[n] = tgt[n] < 0 ? 0.0 : m[n] + std::log(e[n]);
    }
    be.copy(Tensor(lse.data(), DType::f64, Device::cpu, Shape{N}), s.lse);
    groups_->tensor_group(GroupKind::tp).all_reduce(target_logit);  // in exactly one block
  }
  double loss_sum = be.sum(s.lse) - be.sum(target_logit);
  if (groups_ && groups_->layout().cp > 1)
    loss_sum = groups_->group(GroupKind::cp).all_reduce_sum(loss_sum);
  out.lm_loss = loss_sum / static_cast<double>(s.tokens_global);
}

Tensor Model::stage_backward(int slot, const Tensor& dh_out) {
  LINMOE_CHECK(slot >= 0 && slot < static_cast<int>(slots_.size()), "slot ", slot);
  Slot& s = *slots_[static_cast<std::size_t>(slot)];
  LINMOE_CHECK(s.active && s.with_backward, "stage_backward on slot ", slot,
               " without a forward that kept its activations");
  Backend& be = backend_;
  LayerContext ctx = context(s);
  const std::int64_t B = s.B, T = s.T, N = B * T, D = config_.hidden_size;
  Tensor dh = ctx.save(Shape{N, D});
  if (plan_.last_stage()) {
    head_backward(s, ctx);
    be.rms_norm_backward(s.nf, s.h_last, params_.param(final_norm_), s.rstd_f, dh,
                         params_.grad(final_norm_));
    gradients_done(blocks_.size());
  } else {
    check_shape(dh_out, Shape{N, D}, "pipeline stage", "output gradient");
    be.copy(dh_out, dh);
  }
  Tensor dn = ctx.save(Shape{N, D});  // gradient at a norm's output
  for (std::size_t r = blocks_.size(); r-- > 0;) {
    Block& b = *blocks_[r];
    BlockActivations& act = s.blocks[r];
    if (recompute_ != Recompute::none) {
      // Rebuild what forward dropped (same inputs, same collectives: the same values).
      recompute_arena_.reset();
      LayerContext rctx = recompute_context(s);
      SublayerStats ignored;
      if (recompute_ == Recompute::full) {
        const Tensor next = rctx.save(Shape{N, D});
        block_forward(r, act, rctx, rctx, act.h, next, &ignored, B, T);
      } else {
        const Tensor y = rctx.save(Shape{N, D});  // the mixer's output, not needed again
        act.mixer_cache = b.mixer->forward(rctx, act.n1.reshape(Shape{B, T, D}),
                                           y.reshape(Shape{B, T, D}), &ignored);
      }
    }
    // h_next = a + FFN(RMSNorm(a)): da = dh + RMSNorm'(FFN'(dh)).
    be.fill(dn, 0.0);
    b.ffn->backward(ctx, *act.ffn_cache, dh.reshape(Shape{B, T, D}), dn.reshape(Shape{B, T, D}));
    tp_all_reduce(dn);
    be.rms_norm_backward(dn, act.a, params_.param(b.ffn_norm), act.rstd2, dh,
                         params_.grad(b.ffn_norm), true);  // dh += RMSNorm'(dn)
    // a = h + Mixer(RMSNorm(h)): dh = da + RMSNorm'(Mixer'(da)).
    be.fill(dn, 0.0);
    b.mixer->backward(ctx, *act.mixer_cache, dh.reshape(Shape{B, T, D}),
                      dn.reshape(Shape{B, T, D}));
    tp_all_reduce(dn);
    be.rms_norm_backward(dn, act.h, params_.param(b.mixer_norm), act.rstd1, dh,
                         params_.grad(b.mixer_norm), true);
    act.ffn_cache.reset();
    act.mixer_cache.reset();
    gradients_done(r);
  }
  s.active = false;
  if (plan_.first_stage()) {
    be.embedding_backward(s.ids, dh, params_.grad(embed_), params_.spec(embed_).offset[0]);
  }
  gradients_done(blocks_.size() + 1);
  return plan_.first_stage() ? Tensor{} : dh;
}

// dlogits = (softmax − onehot) · loss_scale / (tokens of the micro-batch) on this vocabulary
// block; d lm_head += dlogitsᵀ nf; then d(normed h) overwrites s.nf.
void Model::head_backward(Slot& s, LayerContext& /*ctx*/) {
  Backend& be = backend_;
  const DType stat = stat_dtype(dtype_);
  const std::int64_t N = s.B * s.T;
  const Tensor w = params_.param(lm_head_);
  const std::int64_t vocab_start = params_.spec(lm_head_).offset[0];
  ScratchScope scope(scratch_);
  Tensor dloss = scratch_.allocate(stat, Shape{N});
  be.fill(dloss, s.loss_scale / static_cast<double>(s.tokens_global));
  Tensor dlogits = scratch_.allocate(dtype_, s.logits.shape);  // [N, Vl]
  be.cross_entropy_backward(s.logits, s.tgt, vocab_start, s.lse, dloss, dlogits);
  be.gemm(dlogits, true, s.nf, false, params_.grad(lm_head_), 1.0, 1.0);
  // d(normed h) = dlogits · lm_head, partial over the vocabulary blocks; it replaces nf, which
  // the final norm's backward no longer needs (it reads h and rstd).
  be.gemm(dlogits, false, w, false, s.nf, 1.0, 0.0);
  tp_all_reduce(s.nf);
}

}  // namespace linmoe
