// Communication per step, computed from the config and the layout alone (no MPI): what each
// code path of the model and the engine hands to the Communicator, in the units of its traffic
// counters (parallel/communicator.h: bytes_out = the payload this rank hands in, bytes_in = what
// it gets back; all_to_all_v and send_recv without the parts that stay on the rank). `linmoe
// inspect` prints it; tests/parallel/test_comm_accounting.cpp checks it against the counters.
//
// The formulas follow the code (N = B·T_local tokens of a micro-batch on this rank, D the hidden
// size, activations fp32 = 4 bytes; Hl, Hkv_l the heads this tp rank holds):
//   tensor    layers/model.cpp: one all-reduce [N, D] of each sublayer's output (forward) and of
//             its input gradient (backward); the vocabulary-parallel embedding [N, D]; the head's
//             lse (two f64 [N]), target logit [N] and d(normed h) [N, D]. The engine all-reduces
//             the gradients of tp_partial_grad parameters once per step.
//   context   layers/lasp2.cpp: per LSM layer ONE all-gather of (M, P) forward and ONE of (h, P)
//             backward, M [B, Hl, Dk, Dv] and P [B, Hl] (scalar), [B, Hl, Dk] (vector),
//             [B, Hl, Dk, Dk] (matrix) or nothing (linear_attention), in the stat dtype (f32);
//             conv halos: send_recv of [B, K−1, channels] to the next rank (forward) and of its
//             gradient to the previous one (backward). Independent of T. layers/attention.cpp:
//             all-gather K and V [B, T_local, Hkv_l, d] forward, reduce-scatter dK, dV
//             [cp, B, T_local, Hkv_l, d] backward: linear in T. The loss sum: one host scalar.
//   expert    layers/moe_dispatch.cpp: per MoE layer the counts all-gather and four
//             all_to_all_v of routed rows (x and y forward, dy and dx backward). The rows depend
//             on the routing: the values are EXPECTATIONS under uniform routing (each of the
//             n·k assignments of this rank's n tokens lands on another ep rank with probability
//             (ep−1)/ep), dropless (with a capacity factor they are an upper bound).
//   data      train/engine.cpp, once per step: the dense region (dp_cp) and the expert region
//             (expert_dp) of the flat gradients (each tensor padded to 64 elements, each region to
//             64 x the group size: layers/model.cpp), reduce-scattered and the weights
//             all-gathered (ZeRO) or all-reduced.
//   pipeline  the 1F1B schedule's send / recv / send_recv of [N, D] activations and gradients,
//             simulated call by call for this stage; the tied embedding's gradient exchange.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "layers/sharding.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace linmoe {

struct CommTerm {
  std::string source;  // "LSM mixer (lightning)", "attention mixer", "MoE FFN", "dense FFN",
                       // "embedding", "head", "gradients", "pipeline", "bookkeeping"
  std::string what;    // e.g. "(M,P) fwd + (h,P) bwd"
  GroupKind group = GroupKind::world;
  CommOp op = CommOp::all_reduce;
  int layers = 1;              // layers this term covers (already summed over them)
  std::int64_t calls = 0;      // per micro-batch, or per step when per_step
  std::int64_t bytes_out = 0;  // idem
  std::int64_t bytes_in = 0;   // idem
  bool per_step = false;       // once per optimizer step (gradients, pipeline, bookkeeping)
  bool expected = false;       // routing-dependent: expectation under uniform routing
};

// This rank's tensor-parallel slice of a mixer: tp and its tp rank.
struct TpSlice {
  int tp = 1, tp_rank = 0;
};

// One LSM mixer layer (any family, mamba2 included) on this rank's cp piece [B, T_local]:
// forward + backward, over the cp group (empty for cp = 1).
std::vector<CommTerm> lsm_mixer_cp_terms(const ModelConfig& m, TpSlice tp, int cp, int cp_rank,
                                         std::int64_t B, std::int64_t T_local);
// One softmax attention layer likewise (LASP-2H).
std::vector<CommTerm> attention_mixer_cp_terms(const ModelConfig& m, TpSlice tp, int cp,
                                               std::int64_t B, std::int64_t T_local);

// Everything global rank `rank` moves in one training step of the resolved config `cfg`
// (parallel.data and micro_batches resolved): per micro-batch terms (model forward + backward)
// and per-step terms (gradient reduction, ZeRO all-gather, the pipeline schedule, bookkeeping).
std::vector<CommTerm> communication_terms(const Config& cfg, int rank);

// The terms of `group` as counters: per micro-batch terms × micro_batches, plus the per-step
// ones when include_per_step. Comparable with Communicator::traffic().
CommTraffic traffic_of(const std::vector<CommTerm>& terms, GroupKind group, int micro_batches,
                       bool include_per_step);

}  // namespace linmoe
