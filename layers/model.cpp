#include "layers/model.h"

#include <cmath>

#include "core/log.h"
#include "layers/init.h"
#include "layers/linear.h"
#include "layers/model_spec.h"
#include "layers/sublayers.h"

namespace linmoe {

struct Model::Block {
  int mixer_norm = -1, ffn_norm = -1;
  std::unique_ptr<Sublayer> mixer, ffn;
};

namespace {

// The tensors of one layer kept between forward and backward. [N, D] with N = B·T.
struct BlockActivations {
  Tensor h, n1, rstd1, a, n2, rstd2;
  std::unique_ptr<Sublayer::Cache> mixer_cache, ffn_cache;
};

}  // namespace

struct Model::ForwardState {
  std::vector<BlockActivations> blocks;
};

Model::Model(const ModelConfig& config, Backend& backend, DType dtype)
    : config_(config), backend_(backend), dtype_(dtype) {
  for (const ModelParam& p : model_parameters(config_)) {
    params_.add(whole_param(p.name, p.shape));
  }
  params_.allocate(backend_.allocator(), dtype_, dtype_);
  embed_ = params_.index("embed.weight");
  final_norm_ = params_.index("final_norm.weight");
  lm_head_ = config_.tie_embeddings ? embed_ : params_.index("lm_head.weight");
  for (int i = 0; i < config_.num_layers; ++i) {
    auto b = std::make_unique<Block>();
    const std::string p = "layers." + std::to_string(i) + ".";
    b->mixer_norm = params_.index(p + "mixer_norm.weight");
    b->ffn_norm = params_.index(p + "ffn_norm.weight");
    b->mixer = config_.layer_kind(i) == 'N' ? make_attention(config_, i, params_)
                                            : make_lsm(config_, i, params_);
    b->ffn = config_.moe.num_experts > 0 ? make_moe(config_, i, params_)
                                         : make_dense_ffn(config_, i, params_);
    blocks_.push_back(std::move(b));
  }
}

Model::~Model() = default;

void Model::initialize(std::uint64_t seed) {
  initialize_parameters(params_, config_, seed, backend_);
}

std::size_t Model::planned_activation_bytes(const ModelConfig& m, std::int64_t B, std::int64_t T,
                                            DType dtype) {
  // Per layer: the residual and norm tensors here (6·D per token) plus what the sublayers keep
  // (projections, core outputs, expert activations), and the logits. An estimate: the arena
  // grows (and says so) if it is short.
  const std::int64_t D = m.hidden_size, N = B * T;
  const std::int64_t lsm =
      4 * std::int64_t{m.lsm.num_heads} * (m.lsm.head_dim_k + m.lsm.head_dim_v);
  const std::int64_t attn = 4 * std::int64_t{m.attention.num_heads} * m.attention.head_dim;
  const std::int64_t ffn =
      m.moe.num_experts > 0
          ? 4 * std::int64_t{m.moe.top_k} * (m.moe.ffn_hidden_size + D) + 2 * m.moe.num_experts
          : 3 * std::int64_t{m.ffn_hidden_size};
  const std::int64_t shared =
      m.moe.shared_ffn_hidden_size > 0 ? 3 * m.moe.shared_ffn_hidden_size + 2 : 0;
  std::int64_t per_token = 0;
  for (int i = 0; i < m.num_layers; ++i) {
    per_token += 6 * D + (m.layer_kind(i) == 'N' ? attn : lsm) + ffn + shared;
  }
  per_token += 4 * D + 2 * m.vocab_size;  // final norm, logits and their gradient
  // Every allocation is rounded up to kAlignment bytes: allow ~48 allocations per layer.
  const std::size_t slack =
      std::size_t{48} * kAlignment * static_cast<std::size_t>(m.num_layers + 2);
  return static_cast<std::size_t>(N * per_token) * dtype_size(dtype) + slack;
}

MicroBatchLosses Model::forward_backward(const Tensor& tokens, const Tensor& targets,
                                         double loss_scale) {
  return run(tokens, targets, true, loss_scale);
}

MicroBatchLosses Model::forward(const Tensor& tokens, const Tensor& targets) {
  return run(tokens, targets, false, 1.0);
}

MicroBatchLosses Model::run(const Tensor& tokens, const Tensor& targets, bool backward,
                            double loss_scale) {
  LINMOE_CHECK(tokens.ndim() == 2 && tokens.dtype == DType::i32, "tokens must be [B, T] i32, got ",
               tokens.str());
  check_shape(targets, tokens.shape, "model", "targets");
  const std::int64_t B = tokens.size(0), T = tokens.size(1), N = B * T, D = config_.hidden_size,
                     V = config_.vocab_size;
  const DType stat = stat_dtype(dtype_);
  Backend& be = backend_;
  const std::size_t plan = planned_activation_bytes(config_, B, T, dtype_);
  if (saved_.capacity() < plan) {
    // Sized from the config's plan once per shape; a short plan grows the arena (with a note).
    saved_ = Arena(be.allocator(), plan, "activations");
    scratch_ = Arena(be.allocator(), plan / 4 + (std::size_t{1} << 20), "scratch");
    log_info("activation arenas: ", format_bytes(double(plan)), " planned for a [", B, ", ", T,
             "] micro-batch");
  }
  saved_.reset();
  scratch_.reset();
  LayerContext ctx{be, params_, saved_, scratch_, dtype_};
  ctx.loss_scale = loss_scale;

  // Token ids on the backend's device.
  Tensor ids = saved_.allocate(DType::i32, Shape{N});
  Tensor tgt = saved_.allocate(DType::i32, Shape{N});
  be.copy(tokens.reshape(Shape{N}), ids);
  be.copy(targets.reshape(Shape{N}), tgt);

  MicroBatchLosses out;
  out.tokens = N;
  ForwardState st;
  st.blocks.resize(blocks_.size());

  // h = embed.weight[tokens]  [N, D]
  Tensor h = ctx.save(Shape{N, D});
  be.embedding_forward(ids, params_.param(embed_), h);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    Block& b = *blocks_[i];
    BlockActivations& act = st.blocks[i];
    act.h = h;
    act.n1 = ctx.save(Shape{N, D});
    act.rstd1 = saved_.allocate(stat, Shape{N});
    be.rms_norm_forward(h, params_.param(b.mixer_norm), config_.norm_eps, act.n1, act.rstd1);
    act.a = ctx.save(Shape{N, D});
    SublayerStats mixer_stats;
    act.mixer_cache = b.mixer->forward(ctx, act.n1.reshape(Shape{B, T, D}),
                                       act.a.reshape(Shape{B, T, D}), &mixer_stats);
    be.axpy(1.0, h, act.a);  // a = h + Mixer(RMSNorm(h))
    act.n2 = ctx.save(Shape{N, D});
    act.rstd2 = saved_.allocate(stat, Shape{N});
    be.rms_norm_forward(act.a, params_.param(b.ffn_norm), config_.norm_eps, act.n2, act.rstd2);
    Tensor next = ctx.save(Shape{N, D});
    SublayerStats ffn_stats;
    act.ffn_cache = b.ffn->forward(ctx, act.n2.reshape(Shape{B, T, D}),
                                   next.reshape(Shape{B, T, D}), &ffn_stats);
    be.axpy(1.0, act.a, next);  // h = a + FFN(RMSNorm(a))
    out.aux_loss += ffn_stats.aux_loss;
    out.z_loss += ffn_stats.z_loss;
    if (!ffn_stats.expert_load.empty()) out.expert_load.push_back(ffn_stats.expert_load);
    h = next;
  }

  // logits = RMSNorm(h) lm_headᵀ  [N, V]; loss per token = lse − logit[target].
  Tensor nf = ctx.save(Shape{N, D});
  Tensor rstd_f = saved_.allocate(stat, Shape{N});
  be.rms_norm_forward(h, params_.param(final_norm_), config_.norm_eps, nf, rstd_f);
  Tensor logits = ctx.save(Shape{N, V});
  be.gemm(nf, false, params_.param(lm_head_), true, logits, 1.0, 0.0);
  Tensor lse = saved_.allocate(stat, Shape{N});
  Tensor target_logit = saved_.allocate(stat, Shape{N});
  be.cross_entropy_stats(logits, tgt, 0, lse, target_logit);
  out.lm_loss = (be.sum(lse) - be.sum(target_logit)) / static_cast<double>(N);
  out.loss = out.lm_loss + config_.moe.aux_loss_coeff * out.aux_loss +
             config_.moe.z_loss_coeff * out.z_loss;
  if (!backward) return out;

  // Backward. dlogits = (softmax − onehot) · loss_scale / N.
  Tensor dloss = scratch_.allocate(stat, Shape{N});
  be.fill(dloss, loss_scale / static_cast<double>(N));
  Tensor dlogits = ctx.save(Shape{N, V});
  be.cross_entropy_backward(logits, tgt, 0, lse, dloss, dlogits);
  Tensor dnf = ctx.save(Shape{N, D});
  be.gemm(dlogits, false, params_.param(lm_head_), false, dnf, 1.0, 0.0);
  be.gemm(dlogits, true, nf, false, params_.grad(lm_head_), 1.0, 1.0);
  Tensor dh = ctx.save(Shape{N, D});
  be.rms_norm_backward(dnf, h, params_.param(final_norm_), rstd_f, dh, params_.grad(final_norm_));
  Tensor dn = ctx.save(Shape{N, D});     // gradient at a norm's output
  Tensor dnorm = ctx.save(Shape{N, D});  // gradient through a norm to its input
  for (std::size_t r = blocks_.size(); r-- > 0;) {
    Block& b = *blocks_[r];
    BlockActivations& act = st.blocks[r];
    // h_next = a + FFN(RMSNorm(a)): da = dh + RMSNorm'(FFN'(dh)).
    be.fill(dn, 0.0);
    b.ffn->backward(ctx, *act.ffn_cache, dh.reshape(Shape{B, T, D}), dn.reshape(Shape{B, T, D}));
    be.rms_norm_backward(dn, act.a, params_.param(b.ffn_norm), act.rstd2, dnorm,
                         params_.grad(b.ffn_norm));
    be.axpy(1.0, dnorm, dh);
    // a = h + Mixer(RMSNorm(h)): dh = da + RMSNorm'(Mixer'(da)).
    be.fill(dn, 0.0);
    b.mixer->backward(ctx, *act.mixer_cache, dh.reshape(Shape{B, T, D}),
                      dn.reshape(Shape{B, T, D}));
    be.rms_norm_backward(dn, act.h, params_.param(b.mixer_norm), act.rstd1, dnorm,
                         params_.grad(b.mixer_norm));
    be.axpy(1.0, dnorm, dh);
    act.ffn_cache.reset();
    act.mixer_cache.reset();
  }
  be.embedding_backward(ids, dh, params_.grad(embed_));
  return out;
}

}  // namespace linmoe
