#include "layers/comm_cost.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;
constexpr i64 kF32 = 4, kF64 = 8, kI64 = 8, kI32 = 4;

CommTerm term(std::string source, std::string what, GroupKind group, CommOp op, i64 calls,
              i64 bytes_out, i64 bytes_in) {
  CommTerm t;
  t.source = std::move(source);
  t.what = std::move(what);
  t.group = group;
  t.op = op;
  t.calls = calls;
  t.bytes_out = bytes_out;
  t.bytes_in = bytes_in;
  return t;
}

// The same terms for `layers` layers (summed).
void append_layers(std::vector<CommTerm>& out, std::vector<CommTerm> one, int layers) {
  if (layers <= 0) return;
  for (CommTerm& t : one) {
    t.layers = layers;
    t.calls *= layers;
    t.bytes_out *= layers;
    t.bytes_in *= layers;
    out.push_back(std::move(t));
  }
}

i64 local_rows(i64 rows, TpSlice tp) {
  return balanced_block(rows, tp.tp, tp.tp_rank).size();
}

std::string lsm_source(const ModelConfig& m) {
  return str_cat("LSM mixer (", lsm_type_name(m.lsm.type), ")");
}

i64 padded(i64 n) {
  constexpr i64 kAlignElems = 64;  // core/parameter_store.cpp: every tensor on 256 bytes
  return (n + kAlignElems - 1) / kAlignElems * kAlignElems;
}

// The gradient reduction of one region of the flat buffers (train/engine.cpp reduce_gradients and
// the ZeRO all-gather in step). layers/model.cpp pads each region to a multiple of 64 elements
// per rank of its data-parallel group, so ZeRO splits it into equal shards in place.
void region_terms(std::vector<CommTerm>& out, const std::string& name, GroupKind group, int size,
                  i64 length, bool zero) {
  if (size <= 1 || length <= 0) return;
  const i64 multiple = 64 * i64{size};
  length = (length + multiple - 1) / multiple * multiple;
  CommTerm t;
  if (zero) {
    const i64 chunk = length / size;
    t = term("gradients", name + " reduce-scatter (ZeRO)", group, CommOp::reduce_scatter, 1,
             length * kF32, chunk * kF32);
    t.per_step = true;
    out.push_back(t);
    t = term("gradients", name + " weights all-gather (ZeRO)", group, CommOp::all_gather, 1,
             chunk * kF32, length * kF32);
  } else {
    t = term("gradients", name + " all-reduce", group, CommOp::all_reduce, 1, length * kF32,
             length * kF32);
  }
  t.per_step = true;
  out.push_back(t);
}

// The 1F1B schedule of train/engine.cpp run_pipeline for stage s, call by call.
void pipeline_terms(std::vector<CommTerm>& out, int pp, int s, int M, i64 bytes) {
  if (pp <= 1) return;
  const bool first = s == 0, last = s == pp - 1;
  i64 sends = 0, recvs = 0, pairs = 0;
  const int warmup = std::min(pp - s - 1, M), remaining = M - warmup;
  for (int i = 0; i < warmup; ++i) {
    if (!first) ++recvs;
    if (!last) ++sends;
  }
  if (remaining > 0 && !first) ++recvs;
  for (int i = 0; i < remaining; ++i) {
    if (!last) ++pairs;  // send y, receive dh
    if (i == remaining - 1) {
      if (!first) ++sends;
    } else if (!first) {
      ++pairs;  // send dx, receive the next h
    }
  }
  for (int i = 0; i < warmup; ++i) {
    if (!last) ++recvs;
    if (!first) ++sends;
  }
  const std::string what = "[N, D] activations and gradients (1F1B)";
  for (auto [op, n] : {std::pair{CommOp::send, sends}, std::pair{CommOp::recv, recvs},
                       std::pair{CommOp::send_recv, pairs}}) {
    if (n == 0) continue;
    CommTerm t = term("pipeline", what, GroupKind::pp, op, n, op == CommOp::recv ? 0 : n * bytes,
                      op == CommOp::send ? 0 : n * bytes);
    t.per_step = true;
    out.push_back(t);
  }
}

}  // namespace

std::vector<CommTerm> lsm_mixer_cp_terms(const ModelConfig& m, TpSlice tp, int cp, int cp_rank,
                                         i64 B, i64 T_local) {
  (void)T_local;  // the point of LASP-2: nothing below depends on it
  std::vector<CommTerm> out;
  if (cp <= 1) return out;
  const LsmConfig& l = m.lsm;
  const i64 K = l.conv_size;
  i64 H = 0, Dk = 0, Dv = 0, halo_channels = 0;
  i64 per_bh = 0;  // transition elements per (b, h)
  if (l.type == LsmType::mamba2) {
    H = l.num_heads;  // mamba2 runs without tensor parallelism
    Dk = l.state_size;
    Dv = l.head_dim_v;
    per_bh = 1;
    if (K > 0) halo_channels = i64{l.expand} * m.hidden_size + 2 * i64{l.num_groups} * l.state_size;
  } else {
    Dk = l.head_dim_k;
    Dv = l.head_dim_v;
    H = local_rows(i64{l.num_heads} * Dk, tp) / Dk;
    switch (lsm_family(l.type)) {
      case LsmFamily::scalar_decay:
        per_bh = l.type == LsmType::linear_attention ? 0 : 1;
        break;
      case LsmFamily::vector_decay:
        per_bh = Dk;
        break;
      case LsmFamily::delta_rule:
        per_bh = Dk * Dk;
        if (K > 0) halo_channels = H * (2 * Dk + Dv);
        break;
    }
  }
  const i64 summary = (B * H * Dk * Dv + B * H * per_bh) * kF32;
  out.push_back(term(lsm_source(m), "(M,P) fwd + (h,P) bwd", GroupKind::cp, CommOp::all_gather, 2,
                     2 * summary, 2 * summary * cp));
  if (K > 1 && halo_channels > 0) {
    const i64 halo = B * (K - 1) * halo_channels * kF32;
    const i64 to_next = cp_rank + 1 < cp ? halo : 0, to_prev = cp_rank > 0 ? halo : 0;
    // Forward: to the next rank, from the previous; backward the other way.
    out.push_back(term(lsm_source(m), "conv halo fwd + its gradient bwd", GroupKind::cp,
                       CommOp::send_recv, 2, to_next + to_prev, to_prev + to_next));
  }
  return out;
}

std::vector<CommTerm> attention_mixer_cp_terms(const ModelConfig& m, TpSlice tp, int cp, i64 B,
                                               i64 T_local) {
  std::vector<CommTerm> out;
  if (cp <= 1) return out;
  const i64 d = m.attention.head_dim;
  const i64 hkv = local_rows(i64{m.attention.num_kv_heads} * d, tp) / d;
  const i64 n = B * T_local * hkv * d * kF32;  // one of K, V on this rank
  out.push_back(
      term("attention mixer", "K, V fwd", GroupKind::cp, CommOp::all_gather, 2, 2 * n, 2 * n * cp));
  out.push_back(term("attention mixer", "dK, dV bwd", GroupKind::cp, CommOp::reduce_scatter, 2,
                     2 * n * cp, 2 * n));
  return out;
}

std::vector<CommTerm> communication_terms(const Config& cfg, int rank) {
  const Layout L = layout_from_config(cfg.parallel);
  const Coordinates c = coordinates_of(L, rank);
  const ShardingPlan plan = make_sharding_plan(cfg, c.tp_rank, c.ep_rank, c.pp_rank);
  const ModelConfig& m = cfg.model;
  const i64 B = cfg.train.micro_batch_size, T = cfg.train.seq_len / L.cp, N = B * T;
  const i64 D = m.hidden_size, act = N * D * kF32;
  const int M = cfg.parallel.micro_batches;
  const TpSlice tps{L.tp, c.tp_rank};
  const bool moe = m.moe.num_experts > 0;
  const std::string ffn = moe ? "MoE FFN" : "dense FFN";
  int nl = 0, na = 0;
  for (int i = plan.first_layer(); i < plan.last_layer(); ++i) (m.layer_kind(i) == 'N' ? na : nl)++;

  std::vector<CommTerm> out;
  // ---- tensor parallel (layers/model.cpp) ------------------------------------------------------
  if (L.tp > 1) {
    const std::string both = "[N, D] output fwd + input gradient bwd";
    if (plan.first_stage()) {
      out.push_back(term("embedding", "[N, D] vocab-parallel lookup fwd", GroupKind::tp,
                         CommOp::all_reduce, 1, act, act));
    }
    append_layers(
        out, {term(lsm_source(m), both, GroupKind::tp, CommOp::all_reduce, 2, 2 * act, 2 * act)},
        nl);
    append_layers(
        out,
        {term("attention mixer", both, GroupKind::tp, CommOp::all_reduce, 2, 2 * act, 2 * act)},
        na);
    append_layers(out, {term(ffn, both, GroupKind::tp, CommOp::all_reduce, 2, 2 * act, 2 * act)},
                  nl + na);
    if (plan.last_stage()) {
      const i64 b = 2 * N * kF64 + N * kF32 + act;
      out.push_back(term("head", "lse (2 x f64 [N]) + target logit fwd, [N, D] bwd", GroupKind::tp,
                         CommOp::all_reduce, 4, b, b));
    }
  }
  // ---- context parallel (layers/lasp2.cpp, layers/attention.cpp) --------------------------------
  if (L.cp > 1) {
    append_layers(out, lsm_mixer_cp_terms(m, tps, L.cp, c.cp_rank, B, T), nl);
    append_layers(out, attention_mixer_cp_terms(m, tps, L.cp, B, T), na);
    if (plan.last_stage()) {
      out.push_back(term("head", "loss sum", GroupKind::cp, CommOp::host, 1, kF64, kF64));
    }
  }
  // ---- MoE (layers/moe_router.cpp, layers/moe_dispatch.cpp) -------------------------------------
  if (moe) {
    const i64 E = m.moe.num_experts, k = m.moe.top_k;
    const i64 n = N * (c.tp_rank + 1) / L.tp - N * c.tp_rank / L.tp;  // this tp rank's rows
    std::vector<CommTerm> one;
    const int group_tc = L.tp * L.cp;
    if (group_tc > 1) {
      one.push_back(term(ffn, "router token count", GroupKind::tp_cp, CommOp::host, 1, kI64, kI64));
      one.push_back(term(ffn, "router statistics f64 [2E+1]", GroupKind::tp_cp, CommOp::all_reduce,
                         1, (2 * E + 1) * kF64, (2 * E + 1) * kF64));
      if (m.moe.capacity_factor) {
        const i64 rows = (N + L.tp - 1) / L.tp, W = 1 + 2 * k;
        one.push_back(
            term(ffn, "capacity rows max", GroupKind::tp_cp, CommOp::host, 1, kI64, kI64));
        one.push_back(term(ffn, "capacity rows f64 [rows, 1+2k]", GroupKind::tp_cp,
                           CommOp::all_gather, 1, rows * W * kF64, group_tc * rows * W * kF64));
      }
    }
    if (L.ep > 1) {
      const i64 ep = L.ep;
      if (m.moe.dispatcher == Dispatcher::alltoall) {
        one.push_back(term(ffn, "expert counts i64 [E]", GroupKind::ep, CommOp::all_gather, 1,
                           E * kI64, ep * E * kI64));
        const auto rows = static_cast<i64>(
            std::llround(static_cast<double>(n * k) * static_cast<double>(ep - 1) / ep));
        CommTerm t = term(ffn, "routed rows x, y fwd + dy, dx bwd", GroupKind::ep,
                          CommOp::all_to_all_v, 4, 4 * rows * D * kF32, 4 * rows * D * kF32);
        t.expected = true;
        one.push_back(t);
      } else {
        const i64 keep = m.moe.capacity_factor ? 1 : 0;
        one.push_back(term(ffn, "token count", GroupKind::ep, CommOp::host, 1, kI64, ep * kI64));
        const i64 fwd_g = n * k * kF32 + n * k * kI32 + keep * n * k * kI32 + n * D * kF32;
        one.push_back(term(ffn,
                           "weights, ids" + std::string(keep ? ", keep" : "") + ", x fwd + dy bwd",
                           GroupKind::ep, CommOp::all_gather, 3 + keep + 1, fwd_g + n * D * kF32,
                           ep * (fwd_g + n * D * kF32)));
        one.push_back(term(ffn, "y fwd + d weights, dx bwd", GroupKind::ep, CommOp::reduce_scatter,
                           3, ep * n * (2 * D + k) * kF32, n * (2 * D + k) * kF32));
      }
    }
    append_layers(out, one, nl + na);
  }
  // ---- pipeline (train/engine.cpp) --------------------------------------------------------------
  pipeline_terms(out, L.pp, c.pp_rank, M, act);
  // ---- gradients, once per step (train/engine.cpp) ----------------------------------------------
  const std::vector<ShardedParam> sharded = shard_parameters(m, plan);
  i64 dense = 0, expert = 0, partial = 0, partial_n = 0;
  for (const ShardedParam& p : sharded) {
    (p.expert ? expert : dense) += padded(p.spec.shape.numel());
    if (p.tp_partial_grad) {
      partial += p.spec.shape.numel();
      ++partial_n;
    }
  }
  if (L.tp > 1 && partial_n > 0) {
    CommTerm t = term("gradients", "tp-partial parameters", GroupKind::tp, CommOp::all_reduce,
                      partial_n, partial * kF32, partial * kF32);
    t.per_step = true;
    out.push_back(t);
  }
  if (L.pp > 1 && m.tie_embeddings && (plan.first_stage() || plan.last_stage())) {
    for (const ShardedParam& p : sharded) {
      if (p.param.role != ParamRole::embedding) continue;
      const i64 b = p.spec.shape.numel() * kF32;
      CommTerm t =
          term("gradients", "tied embedding copies", GroupKind::pp, CommOp::send_recv, 1, b, b);
      t.per_step = true;
      out.push_back(t);
    }
  }
  region_terms(out, "dense", GroupKind::dp_cp, L.cp * L.dp, dense, cfg.optimizer.zero);
  region_terms(out, "expert", GroupKind::expert_dp, L.cp * L.dp / L.ep, expert, cfg.optimizer.zero);
  // ---- bookkeeping (host scalars over the world) ------------------------------------------------
  if (L.world_size() > 1) {
    const i64 losses = 3 + (moe ? i64{m.num_layers} * m.moe.num_experts : 0);
    CommTerm t = term("bookkeeping", "losses, expert load, gradient norm", GroupKind::world,
                      CommOp::host, 2, (losses + 1) * kF64, (losses + 1) * kF64);
    t.per_step = true;
    out.push_back(t);
  }
  return out;
}

CommTraffic traffic_of(const std::vector<CommTerm>& terms, GroupKind group, int micro_batches,
                       bool include_per_step) {
  CommTraffic t;
  for (const CommTerm& c : terms) {
    if (c.group != group || (c.per_step && !include_per_step)) continue;
    const i64 times = c.per_step ? 1 : micro_batches;
    CommOpTraffic& o = t[c.op];
    o.calls += times * c.calls;
    o.bytes_out += times * c.bytes_out;
    o.bytes_in += times * c.bytes_in;
  }
  return t;
}

}  // namespace linmoe
