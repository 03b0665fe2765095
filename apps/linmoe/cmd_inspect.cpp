// linmoe inspect: the resolved config, parameter counts (total and active per token), and the
// parallel layout table (which global rank holds which tp/cp/dp/pp/ep coordinates).
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "apps/linmoe/args.h"
#include "apps/linmoe/commands.h"
#include "core/config.h"
#include "core/log.h"
#include "layers/comm_cost.h"
#include "layers/cost.h"
#include "layers/model_spec.h"
#include "parallel/process_groups.h"

namespace linmoe {
namespace {

std::string human(std::int64_t n) {
  char buf[32];
  if (n >= 1000000000) {
    std::snprintf(buf, sizeof(buf), "%.2fB", static_cast<double>(n) / 1e9);
  } else if (n >= 1000000) {
    std::snprintf(buf, sizeof(buf), "%.2fM", static_cast<double>(n) / 1e6);
  } else if (n >= 1000) {
    std::snprintf(buf, sizeof(buf), "%.1fK", static_cast<double>(n) / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(n));
  }
  return buf;
}

void print_parameters(const ModelConfig& m, bool list_tensors) {
  std::vector<ModelParam> params = model_parameters(m);
  std::map<std::string, std::pair<int, std::int64_t>> by_role;  // role -> tensors, values
  for (const ModelParam& p : params) {
    auto& e = by_role[param_role_name(p.role)];
    e.first += 1;
    e.second += p.shape.numel();
  }
  ParamCounts n = count_parameters(m);
  std::printf("\nparameters (%zu tensors)\n", params.size());
  std::printf("  %-16s %8s %16s\n", "role", "tensors", "values");
  for (const auto& [role, e] : by_role) {
    std::printf("  %-16s %8d %16lld  (%s)\n", role.c_str(), e.first,
                static_cast<long long>(e.second), human(e.second).c_str());
  }
  std::printf("  %-25s %16lld  (%s)\n", "total", static_cast<long long>(n.total),
              human(n.total).c_str());
  std::printf("  %-25s %16lld  (%s)\n", "total excl. embeddings",
              static_cast<long long>(n.total_non_embedding()),
              human(n.total_non_embedding()).c_str());
  std::printf("  %-25s %16lld  (%s)\n", "active per token", static_cast<long long>(n.active),
              human(n.active).c_str());
  std::printf("  %-25s %16lld  (%s)\n", "active excl. embeddings",
              static_cast<long long>(n.active_non_embedding()),
              human(n.active_non_embedding()).c_str());
  std::printf(
      "  (embeddings = embed.weight%s; active counts top_k/num_experts of the routed "
      "experts and everything else whole)\n",
      m.tie_embeddings ? ", tied with the LM head" : " + lm_head.weight");
  if (list_tensors) {
    std::printf("\n  %-48s %-20s %-15s %s\n", "name", "shape", "role", "init");
    for (const ModelParam& p : params) {
      std::printf("  %-48s %-20s %-15s %s\n", p.name.c_str(), p.shape.str().c_str(),
                  param_role_name(p.role), init_kind_name(p.init));
    }
  }
}

void print_costs(const Config& c) {
  const std::int64_t T = c.train.seq_len;
  std::printf("\nFLOPs per token at seq_len %lld (forward + backward; what MFU counts)\n",
              static_cast<long long>(T));
  double total = 0;
  for (const FlopsItem& f : flops_per_token(c.model, T)) total += f.per_token;
  for (const FlopsItem& f : flops_per_token(c.model, T)) {
    std::printf("  %-24s %14.4g  %5.1f%%\n", f.name.c_str(), f.per_token,
                100.0 * f.per_token / total);
  }
  std::printf("  %-24s %14.4g  (%.3g per step of %d x %lld tokens)\n", "total", total,
              total * c.train.global_batch_size * static_cast<double>(T), c.train.global_batch_size,
              static_cast<long long>(T));
  const MemoryEstimate m = memory_per_rank(c);
  std::printf(
      "\nmemory per rank (the busiest pipeline stage: its slices, ZeRO shards, 1F1B's "
      "micro-batches "
      "in flight)\n");
  const bool bf16 = c.train.precision == Precision::bf16;
  auto row = [](const char* what, double bytes, const std::string& note = "") {
    std::printf("  %-24s %12s%s\n", what, format_bytes(bytes).c_str(), note.c_str());
  };
  row(bf16 ? "bf16 weights" : "fp32 weights", m.weights);
  row(bf16 ? "gradients (bf16 + fp32)" : "fp32 gradients", m.gradients);
  if (bf16) row("fp32 master weights", m.master);
  row("optimizer state", m.optimizer);
  row("activations (plan)", m.activations,
      str_cat("  (", std::min(c.parallel.pipeline, std::max(1, c.parallel.micro_batches)),
              " x a micro-batch of ", c.train.micro_batch_size, " x ",
              c.train.seq_len / c.parallel.context, " at most, scratch, recompute)"));
  row("buffers", m.buffers, "  (ZeRO shard, pipeline transfers)");
  std::printf("  %-24s %12s\n", "total", format_bytes(m.total()).c_str());
}

// What rank 0 moves per step, from the config and the layout alone (layers/comm_cost.h).
void print_communication(const Config& c) {
  const Layout layout = layout_from_config(c.parallel);
  const Coordinates at = coordinates_of(layout, 0);
  const int M = c.parallel.micro_batches;
  std::vector<CommTerm> terms;
  try {
    terms = communication_terms(c, 0);
  } catch (const UserError& e) {
    std::printf("\ncommunication per step: not available for this layout: %s\n", e.what());
    return;
  }
  std::printf(
      "\ncommunication per step (rank 0's view: tp %d cp %d dp %d pp %d ep %d; micro-batch "
      "[%d, %lld] on this rank, %d per step; fp32 = 4 bytes)\n",
      at.tp_rank, at.cp_rank, at.dp_rank, at.pp_rank, at.ep_rank, c.train.micro_batch_size,
      static_cast<long long>(c.train.seq_len / layout.cp), M);
  if (terms.empty()) {
    std::printf("  none: one rank\n");
    return;
  }
  std::printf("  %-28s %-9s %-15s %6s %12s %12s %12s  %s\n", "source", "group", "collective",
              "calls", "bytes/mb", "bytes/step", "in/step", "what");
  bool any_expected = false;
  for (const CommTerm& t : terms) {
    std::string source = t.source;
    if (t.layers > 1) source += " x" + std::to_string(t.layers);
    const std::int64_t step = t.per_step ? t.bytes_out : t.bytes_out * M;
    const std::int64_t calls = t.per_step ? t.calls : t.calls * M;
    std::string mb = t.per_step ? "-" : format_bytes(double(t.bytes_out));
    if (t.expected) {
      mb += "*";
      any_expected = true;
    }
    const std::int64_t in = t.per_step ? t.bytes_in : t.bytes_in * M;
    const std::string star = t.expected ? "*" : "";
    std::printf("  %-28s %-9s %-15s %6lld %12s %12s %12s  %s\n", source.c_str(),
                group_name(t.group), comm_op_name(t.op), static_cast<long long>(calls), mb.c_str(),
                (format_bytes(double(step)) + star).c_str(),
                (format_bytes(double(in)) + star).c_str(), t.what.c_str());
  }
  std::printf("  per group and step (bytes out, excluding host scalars):");
  for (GroupKind g : kAllGroupKinds) {
    const CommTraffic tr = traffic_of(terms, g, M, true);
    if (tr.calls() == 0) continue;
    std::printf("  %s %s", group_name(g), format_bytes(double(tr.bytes_out())).c_str());
  }
  std::printf("\n");
  std::printf(
      "  bytes: the payload rank 0 hands to each call (all_reduce its buffer, all_gather its "
      "block,\n  reduce_scatter its whole input, all_to_all_v and p2p what leaves the rank; "
      "parallel/communicator.h);\n  in/step: what it gets back; calls, bytes/step and in/step "
      "count the whole step (micro-batch terms x %d).%s\n",
      M,
      any_expected ? "\n  * expected value under uniform routing (dropless); the real "
                     "all-to-all volume depends on the router"
                   : "");
}

}  // namespace

int cmd_inspect(int argc, char** argv) {
  std::string config_path;
  std::vector<std::string> overrides;
  int world_size = 0;
  bool list_tensors = false;
  ArgParser args("linmoe inspect",
                 "Prints the resolved config, parameter counts (total and active per token) and "
                 "the parallel layout table.");
  args.option("--config", &config_path, "FILE", "the run's YAML config", true);
  args.alias("-c", "--config");
  args.multi_option("--set", &overrides, "KEY=VALUE", "override a config key");
  args.option("--world-size", &world_size, "N",
              "ranks to lay out (default: tensor x context x pipeline x data, data auto = 1)");
  args.flag("--tensors", &list_tensors, "list every parameter tensor with its shape");
  if (!args.parse(argc, argv)) return 0;

  Config cfg = load_config(config_path, overrides);
  if (world_size <= 0) {
    const ParallelConfig& p = cfg.parallel;
    int dp = p.data > 0 ? p.data : 1;
    // ep must divide cp·dp: grow dp until it does (the smallest world this layout runs on).
    while ((p.context * dp) % p.expert != 0) ++dp;
    world_size = p.tensor * p.context * p.pipeline * dp;
  }
  resolve_parallel(cfg, world_size);

  std::printf("config %s (resolved)\n%s", cfg.source_path.c_str(), cfg.resolved_yaml.c_str());
  print_parameters(cfg.model, list_tensors);
  print_costs(cfg);

  const ParallelConfig& p = cfg.parallel;
  Layout layout = layout_from_config(p);
  std::printf(
      "\nparallel layout: world %d = tensor %d x context %d x data %d x pipeline %d; "
      "expert %d; %d micro-batches of %d per replica per step\n",
      world_size, p.tensor, p.context, p.data, p.pipeline, p.expert, p.micro_batches,
      cfg.train.micro_batch_size);
  std::printf("%s", layout_table(layout).c_str());
  print_communication(cfg);
  return 0;
}

}  // namespace linmoe
