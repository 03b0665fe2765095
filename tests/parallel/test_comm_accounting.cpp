// The Communicator's traffic counters (parallel/communicator.h) against the analytic
// communication model (layers/comm_cost.h), exactly: calls, bytes out and bytes in of every
// operation kind on every group of every rank.
//  - one Model forward + backward (one micro-batch) under tp, cp and tp·cp layouts, for LSM
//    families with a scalar, a vector and a matrix transition (the delta rule with conv halos),
//    mamba2 and softmax attention (LASP-2H): the per-micro-batch terms;
//  - one Engine step (several micro-batches, gradient reduction, ZeRO, the 1F1B pipeline, the
//    host bookkeeping): every term.
// A dense FFN (moe.num_experts 0) keeps the routing-dependent all-to-all out; the counters of
// raw calls are checked on their own first.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"
#include "layers/comm_cost.h"
#include "layers/model.h"
#include "layers/sharding.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"
#include "train/engine.h"

namespace linmoe {
namespace {

using i64 = std::int64_t;

TEST_CASE("Communicator counts calls and payload bytes per operation kind", "[mpi][traffic]") {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  const int n = world.size(), r = world.rank();
  world.reset_traffic();
  std::vector<float> a(10, 1.0f), b(10 * static_cast<std::size_t>(n));
  world.all_reduce(a.data(), 10, DType::f32);
  world.all_gather(a.data(), b.data(), 10, DType::f32);
  world.reduce_scatter(b.data(), a.data(), 10, DType::f32);
  std::vector<double> d(3, 1.0);
  world.broadcast(d.data(), 3, DType::f64, n - 1);
  // all_to_all_v: 2 elements to every rank (1 to itself); only the others' blocks count.
  std::vector<std::int64_t> counts(static_cast<std::size_t>(n), 2), displs;
  for (int q = 0; q < n; ++q) displs.push_back(2 * q);
  std::vector<std::int32_t> s(2 * static_cast<std::size_t>(n)), t(s.size());
  world.all_to_all_v(s.data(), counts, displs, t.data(), counts, displs, DType::i32);
  // A ring of send_recv: every rank sends 5 f32 to the next and receives 5 from the previous.
  world.send_recv(a.data(), 5, (r + 1) % n, b.data(), 5, (r + n - 1) % n, DType::f32);
  world.all_reduce_sum(1.0);
  world.barrier();

  const CommTraffic& tr = world.traffic();
  CHECK(tr[CommOp::all_reduce].calls == 1);
  CHECK(tr[CommOp::all_reduce].bytes_out == 40);
  CHECK(tr[CommOp::all_reduce].bytes_in == 40);
  CHECK(tr[CommOp::all_gather].bytes_out == 40);
  CHECK(tr[CommOp::all_gather].bytes_in == 40 * n);
  CHECK(tr[CommOp::reduce_scatter].bytes_out == 40 * n);
  CHECK(tr[CommOp::reduce_scatter].bytes_in == 40);
  CHECK(tr[CommOp::broadcast].bytes_out == (r == n - 1 ? 24 : 0));
  CHECK(tr[CommOp::broadcast].bytes_in == (r == n - 1 ? 0 : 24));
  CHECK(tr[CommOp::all_to_all_v].calls == 1);
  CHECK(tr[CommOp::all_to_all_v].bytes_out == 8 * (n - 1));
  CHECK(tr[CommOp::all_to_all_v].bytes_in == 8 * (n - 1));
  CHECK(tr[CommOp::send_recv].calls == 1);
  CHECK(tr[CommOp::send_recv].bytes_out == 20);
  CHECK(tr[CommOp::send_recv].bytes_in == 20);
  CHECK(tr[CommOp::host].calls == 1);
  CHECK(tr[CommOp::host].bytes_out == 8);
  CHECK(tr[CommOp::send].calls == 0);
  CHECK(tr.bytes_out() == 40 + 40 + 40 * n + tr[CommOp::broadcast].bytes_out + 8 * (n - 1) + 20);
  if (n > 1) {
    if (r == 0) world.send(a.data(), 3, DType::f32, 1, 4);
    if (r == 1) world.recv(a.data(), 3, DType::f32, 0, 4);
    CHECK(world.traffic()[CommOp::send].bytes_out == (r == 0 ? 12 : 0));
    CHECK(world.traffic()[CommOp::recv].bytes_in == (r == 1 ? 12 : 0));
  }
  const CommTraffic before = world.traffic();
  world.all_reduce(a.data(), 4, DType::f32);
  const CommTraffic diff = world.traffic() - before;
  CHECK(diff[CommOp::all_reduce].calls == 1);
  CHECK(diff[CommOp::all_reduce].bytes_out == 16);
  world.reset_traffic();
  CHECK(world.traffic().calls() == 0);
}

struct LayoutCase {
  int tp = 1, cp = 1, dp = 1, pp = 1;
  std::string lsm = "lightning";
  std::string pattern = "LLN";
  bool zero = true;
  bool tied = false;
  int micro_batches = 2;
  int experts = 0, ep = 1;  // MoE FFN with experts > 0
  std::string dispatcher = "alltoall";
  bool capacity = false;
  std::string name() const {
    return "tp" + std::to_string(tp) + " cp" + std::to_string(cp) + " dp" + std::to_string(dp) +
           " pp" + std::to_string(pp) + " " + lsm + " " + pattern + (zero ? " zero" : "") +
           (tied ? " tied" : "") +
           (experts
                ? " moe ep" + std::to_string(ep) + " " + dispatcher + (capacity ? " capacity" : "")
                : "");
  }
};

Config config_for(const LayoutCase& c, int world) {
  std::string lsm = "type: " + c.lsm + ", chunk_size: 8";
  if (c.lsm == "mamba2") {
    lsm += ", expand: 2, head_dim_v: 8, state_size: 6, num_groups: 1, conv_size: 4";
  } else {
    lsm += ", num_heads: 4, head_dim_k: 4, head_dim_v: 6, conv_size: 3";
  }
  const int T = 11 * c.cp;  // pieces of 11 tokens: not a multiple of the chunk
  const int B = 2;
  const std::string yaml =
      "run: {seed: 5}\n"
      "model: {vocab_size: 37, hidden_size: 16, num_layers: 4, layer_pattern: " +
      c.pattern + ", ffn_hidden_size: 24, tie_embeddings: " + (c.tied ? "true" : "false") +
      ", attention: {num_heads: 4, num_kv_heads: 2}, lsm: {" + lsm +
      "}, moe: {num_experts: " + std::to_string(c.experts) + ", top_k: 2, ffn_hidden_size: 8" +
      ", dispatcher: " + c.dispatcher + (c.capacity ? ", capacity_factor: 1.0" : "") +
      "}}\n"
      "parallel: {tensor: " +
      std::to_string(c.tp) + ", context: " + std::to_string(c.cp) +
      ", pipeline: " + std::to_string(c.pp) + ", data: " + std::to_string(c.dp) +
      ", expert: " + std::to_string(c.ep) +
      "}\n"
      "train: {seq_len: " +
      std::to_string(T) + ", micro_batch_size: " + std::to_string(B) +
      ", global_batch_size: " + std::to_string(B * c.dp * c.micro_batches) +
      ", steps: 1}\n"
      "optimizer: {type: adamw, lr: 1.0e-3, zero: " +
      (c.zero ? "true" : "false") + "}\n";
  Config cfg = load_config_from_string(yaml, {}, "test_comm_accounting");
  resolve_parallel(cfg, world);
  return cfg;
}

std::vector<LayoutCase> layouts(int world) {
  std::vector<LayoutCase> out;
  auto add = [&](LayoutCase c) {
    if (c.tp * c.cp * c.dp * c.pp == world) out.push_back(c);
  };
  for (const char* lsm : {"lightning", "gla", "gated_deltanet", "mamba2", "linear_attention"}) {
    LayoutCase c;
    c.cp = world;
    c.lsm = lsm;
    add(c);
  }
  for (const char* lsm : {"lightning", "deltanet"}) {
    LayoutCase c;
    c.tp = 2;
    c.cp = world / 2;
    c.lsm = lsm;
    add(c);
  }
  LayoutCase dp;
  dp.dp = world;
  add(dp);
  LayoutCase dp_no_zero = dp;
  dp_no_zero.zero = false;
  dp_no_zero.cp = 2;
  dp_no_zero.dp = world / 2;
  add(dp_no_zero);
  LayoutCase pp;
  pp.pp = 2;
  pp.dp = world / 2;
  pp.micro_batches = 3;
  pp.tied = true;
  add(pp);
  LayoutCase tp_pp;
  tp_pp.tp = 2;
  tp_pp.pp = world / 2;
  tp_pp.micro_batches = 3;
  add(tp_pp);
  return out;
}

// MoE layouts: the all-to-all volume depends on the routing (checked by calls only).
std::vector<LayoutCase> moe_layouts(int world) {
  std::vector<LayoutCase> out;
  auto add = [&](LayoutCase c) {
    c.experts = 4;
    if (c.tp * c.cp * c.dp * c.pp == world && (c.cp * c.dp) % c.ep == 0) out.push_back(c);
  };
  LayoutCase a2a;
  a2a.dp = world;
  a2a.ep = world;
  add(a2a);
  LayoutCase ag = a2a;
  ag.dispatcher = "allgather";
  add(ag);
  LayoutCase tc;
  tc.tp = 2;
  tc.cp = world / 2;
  tc.ep = world / 2;
  add(tc);
  LayoutCase cap;
  cap.cp = 2;
  cap.dp = world / 2;
  cap.ep = 2;
  cap.capacity = true;
  add(cap);
  LayoutCase pp;
  pp.pp = 2;
  pp.dp = world / 2;
  pp.ep = world / 2;
  pp.micro_batches = 3;
  add(pp);
  return out;
}

// Every kind of every group: measured == analytic; returns the number of mismatches.
// With `routed`, the all_to_all_v bytes (routing-dependent) are only printed.
int compare(const ProcessGroups& groups, const std::vector<CommTerm>& terms, int micro_batches,
            bool per_step, const std::string& what, bool routed = false) {
  int bad = 0;
  for (GroupKind g : kAllGroupKinds) {
    const CommTraffic got = groups.group(g).traffic();
    const CommTraffic want = traffic_of(terms, g, micro_batches, per_step);
    for (int k = 0; k < kNumCommOps; ++k) {
      const CommOp op = static_cast<CommOp>(k);
      const CommOpTraffic& a = got[op];
      const CommOpTraffic& b = want[op];
      INFO(what << " rank " << groups.world().rank() << " group " << group_name(g) << " "
                << comm_op_name(op) << ": measured " << a.calls << " calls " << a.bytes_out
                << " B out " << a.bytes_in << " B in; analytic " << b.calls << " calls "
                << b.bytes_out << " B out " << b.bytes_in << " B in");
      CHECK(a.calls == b.calls);
      if (routed && op == CommOp::all_to_all_v) {
        if (a.calls > 0 && groups.world().rank() == 0) {
          std::printf(
              "  %s: all_to_all_v measured %lld B out, expected under uniform routing "
              "%lld B (%.2fx)\n",
              what.c_str(), static_cast<long long>(a.bytes_out),
              static_cast<long long>(b.bytes_out),
              static_cast<double>(a.bytes_out) / static_cast<double>(b.bytes_out));
        }
        bad += a.calls != b.calls;
        continue;
      }
      CHECK(a.bytes_out == b.bytes_out);
      CHECK(a.bytes_in == b.bytes_in);
      bad += a.calls != b.calls || a.bytes_out != b.bytes_out || a.bytes_in != b.bytes_in;
    }
  }
  return bad;
}

void reset(const ProcessGroups& groups) {
  for (GroupKind g : kAllGroupKinds) groups.group(g).reset_traffic();
}

// Tokens [B, T_local] for this rank, deterministic per (rank, micro-batch).
struct Tokens {
  std::vector<std::int32_t> ids, tgt;
  Tokens(i64 B, i64 T, int vocab, std::uint64_t seed) {
    CounterRng rng(seed, "tokens");
    for (i64 i = 0; i < B * T; ++i) {
      ids.push_back(
          static_cast<std::int32_t>(rng.uniform(static_cast<std::uint64_t>(2 * i)) * vocab) %
          vocab);
      tgt.push_back(
          static_cast<std::int32_t>(rng.uniform(static_cast<std::uint64_t>(2 * i + 1)) * vocab) %
          vocab);
    }
  }
  Tensor t(std::vector<std::int32_t>& v, i64 B, i64 T) {
    return Tensor(v.data(), DType::i32, Device::cpu, Shape{B, T});
  }
};

TEST_CASE("Model forward + backward: measured tp/cp traffic equals the analytic model",
          "[mpi][traffic]") {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  auto backend = make_cpu_backend(1);
  for (const LayoutCase& lc : layouts(world.size())) {
    if (lc.pp > 1) continue;  // Model::forward_backward runs whole models
    const Config cfg = config_for(lc, world.size());
    ProcessGroups groups(world, layout_from_config(cfg.parallel));
    const Coordinates& at = groups.coords();
    const ShardingPlan plan = make_sharding_plan(cfg, at.tp_rank, at.ep_rank, at.pp_rank);
    Model model(cfg.model, *backend, DType::f32, plan, &groups);
    model.initialize(cfg.run.seed);
    const i64 B = cfg.train.micro_batch_size, T = cfg.train.seq_len / lc.cp;
    Tokens tok(B, T, cfg.model.vocab_size, 100 + static_cast<std::uint64_t>(at.cp_rank));
    reset(groups);
    model.forward_backward(tok.t(tok.ids, B, T), tok.t(tok.tgt, B, T), 1.0);
    const std::vector<CommTerm> terms = communication_terms(cfg, world.rank());
    const int bad = compare(groups, terms, 1, false, "model " + lc.name());
    if (world.rank() == 0) {
      const CommTraffic cp = groups.cp().traffic(), tp = groups.tp().traffic();
      std::printf("np%d model %-40s tp %8lld B  cp %8lld B  %s\n", world.size(), lc.name().c_str(),
                  static_cast<long long>(tp.bytes_out()), static_cast<long long>(cp.bytes_out()),
                  bad ? "MISMATCH" : "exact");
    }
  }
}

TEST_CASE("Engine step: measured traffic of every group equals the analytic model",
          "[mpi][traffic]") {
  MpiCommunicator world(MPI_COMM_WORLD, "world");
  auto backend = make_cpu_backend(1);
  std::vector<LayoutCase> all = layouts(world.size());
  for (const LayoutCase& c : moe_layouts(world.size())) all.push_back(c);
  for (const LayoutCase& lc : all) {
    const Config cfg = config_for(lc, world.size());
    ProcessGroups groups(world, layout_from_config(cfg.parallel));
    Engine engine(cfg, *backend, &groups);
    const i64 B = cfg.train.micro_batch_size, T = cfg.train.seq_len / lc.cp;
    std::vector<Tokens> batches;
    for (int j = 0; j < cfg.parallel.micro_batches; ++j) {
      batches.emplace_back(B, T, cfg.model.vocab_size,
                           1000 + 10 * static_cast<std::uint64_t>(j) + groups.coords().cp_rank);
    }
    int next_batch = 0;
    auto next = [&]() {
      Tokens& tk = batches[static_cast<std::size_t>(next_batch++)];
      Batch b;
      b.tokens = tk.t(tk.ids, B, T);
      b.targets = tk.t(tk.tgt, B, T);
      b.first_position = groups.coords().cp_rank * T;
      return b;
    };
    reset(groups);
    engine.step(next, 1e-3, 1);
    const std::vector<CommTerm> terms = communication_terms(cfg, world.rank());
    const int bad = compare(groups, terms, cfg.parallel.micro_batches, true, "step " + lc.name(),
                            lc.experts > 0 && lc.dispatcher == "alltoall");
    if (world.rank() == 0) {
      std::printf("np%d step  %-40s world %lld calls, %s\n", world.size(), lc.name().c_str(),
                  static_cast<long long>(groups.world().traffic()[CommOp::host].calls),
                  bad ? "MISMATCH" : "exact");
    }
  }
}

}  // namespace
}  // namespace linmoe
