// Context-parallel traffic per layer against the sequence length (PARALLEL.md: "Communication per
// LSM layer is independent of the sequence length: that is the point"). Under mpirun with
// cp = the world, one LSM mixer of each given family (LASP-2) and one softmax attention mixer
// (LASP-2H) run forward + backward on this rank's piece of one sequence of seq_len tokens; the
// cp communicator's counters (parallel/communicator.h) give the bytes each rank handed to its
// calls, printed beside the analytic value (layers/comm_cost.h), which they must equal.
//
//   mpirun --bind-to none -np 4 build/bench/bench_cp_traffic [--min-seq 1024] [--max-seq 65536]
//       [--lsm lightning,gated_deltanet] [--time-cap 120] [--json out.json]
//
// Bytes per rank = the most any rank handed to its cp calls for the layer (forward + backward);
// the delta rule's conv halos make the ranks differ slightly (the first and last send one halo,
// the others two). A mixer is skipped at the longer lengths once its next run would take longer
// than --time-cap seconds (attention's cost grows with T², so ×4 per doubling; the analytic
// column stays). On 2 CPU cores, cp = 2, attention at 64K takes about 75 s. Not a test: the
// exit status is 1 only when a measured value differs from the analytic one.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/json.h"
#include "core/log.h"
#include "core/memory.h"
#include "core/parameter_store.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"
#include "layers/comm_cost.h"
#include "layers/layer.h"
#include "layers/model_spec.h"
#include "layers/sublayers.h"
#include "parallel/process_groups.h"
#include "parallel/runtime.h"

namespace {

using namespace linmoe;
using i64 = std::int64_t;
using Clock = std::chrono::steady_clock;

const char* const kPrefix = "layers.0.mixer.";
constexpr i64 kD = 32;

ModelConfig model_for(const std::string& lsm_type, char kind) {
  const std::string yaml =
      "model: {vocab_size: 16, hidden_size: " + std::to_string(kD) +
      ", num_layers: 1, layer_pattern: " + std::string(1, kind) +
      ", attention: {num_heads: 2, num_kv_heads: 1, head_dim: 16}, lsm: {type: " + lsm_type +
      ", num_heads: 2, head_dim_k: 16, head_dim_v: 16, conv_size: 4, chunk_size: 64}}\n";
  return load_config_from_string(yaml, {}, "bench_cp_traffic").model;
}

// One mixer with whole parameters (every cp rank holds all of them), small random values.
class Mixer {
 public:
  Mixer(const ModelConfig& m, char kind, Backend& be) : be_(be) {
    for (const ModelParam& p : model_parameters(m)) {
      if (p.name.rfind(kPrefix, 0) == 0) store_.add(whole_param(p.name, p.shape));
    }
    store_.allocate(be_.allocator(), DType::f32, DType::f32);
    for (std::size_t i = 0; i < store_.size(); ++i) {
      const Tensor t = store_.param(static_cast<int>(i));
      CounterRng rng(7, store_.spec(static_cast<int>(i)).name);
      const i64 fan_in = t.shape[t.ndim() - 1];
      auto* v = static_cast<float*>(t.data);
      for (i64 e = 0; e < t.numel(); ++e) {
        const double u = rng.uniform(static_cast<std::uint64_t>(e));
        v[e] = static_cast<float>((2.0 * u - 1.0) / std::sqrt(double(fan_in)));
      }
    }
    layer_ = kind == 'N' ? make_attention(m, 0, store_) : make_lsm(m, 0, store_);
  }

  // Forward + backward of this rank's piece [1, T_local, D]; returns the seconds it took.
  double run(i64 T_local, const ProcessGroups& groups) {
    const std::size_t bytes =
        (std::size_t{64} << 20) + static_cast<std::size_t>(T_local) * groups.layout().cp * 2048;
    Arena saved(be_.allocator(), bytes, "bench saved"), scratch(be_.allocator(), bytes, "scratch");
    Buffer xb(be_.allocator(), static_cast<std::size_t>(T_local * kD) * 4, "x");
    Buffer yb(be_.allocator(), xb.bytes(), "y"), dyb(be_.allocator(), xb.bytes(), "dy");
    Buffer dxb(be_.allocator(), xb.bytes(), "dx");
    const Shape s{1, T_local, kD};
    const Tensor x = xb.view(DType::f32, s), y = yb.view(DType::f32, s);
    const Tensor dy = dyb.view(DType::f32, s), dx = dxb.view(DType::f32, s);
    CounterRng rng(11 + static_cast<std::uint64_t>(groups.coords().cp_rank), "bench.x");
    for (i64 e = 0; e < x.numel(); ++e) {
      static_cast<float*>(x.data)[e] =
          static_cast<float>(rng.uniform(static_cast<std::uint64_t>(e)) - 0.5);
      static_cast<float*>(dy.data)[e] =
          static_cast<float>(rng.uniform(static_cast<std::uint64_t>(e + x.numel())) - 0.5);
    }
    be_.fill(dx, 0.0);
    be_.fill(store_.flat_grads(), 0.0);
    LayerContext ctx{be_, store_, saved, scratch, DType::f32};
    ctx.groups = &groups;
    ctx.position_offset = groups.coords().cp_rank * T_local;
    const auto t0 = Clock::now();
    std::unique_ptr<Sublayer::Cache> cache = layer_->forward(ctx, x, y, nullptr);
    layer_->backward(ctx, *cache, dy, dx);
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }

 private:
  Backend& be_;
  ParameterStore store_;
  std::unique_ptr<Sublayer> layer_;
};

i64 sum_out(const std::vector<CommTerm>& terms) {
  i64 n = 0;
  for (const CommTerm& t : terms) n += t.bytes_out;
  return n;
}

i64 max_over_ranks(Communicator& world, i64 v) {
  return world.all_reduce_max_i64(v);
}

struct Column {
  std::string name;  // "lightning", "gated_deltanet", "attention"
  char kind;         // 'L' or 'N'
  ModelConfig model;
  std::unique_ptr<Mixer> mixer;
  bool capped = false;   // a run took longer than --time-cap: the longer lengths are skipped
  bool skipped = false;  // some length was skipped
};

std::string bytes_str(i64 b) {
  return b < 0 ? std::string("-") : std::to_string(b);
}

}  // namespace

int main(int argc, char** argv) {
  return run_main(argc, argv, [&](Runtime& rt) {
    i64 min_seq = 1024, max_seq = 65536;
    double time_cap = 120;
    std::string json_path, lsm_list = "lightning,gated_deltanet";
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string a = argv[i], v = argv[i + 1];
      if (a == "--min-seq") {
        min_seq = std::atoll(v.c_str());
      } else if (a == "--max-seq") {
        max_seq = std::atoll(v.c_str());
      } else if (a == "--time-cap") {
        time_cap = std::atof(v.c_str());
      } else if (a == "--json") {
        json_path = v;
      } else if (a == "--lsm") {
        lsm_list = v;
      } else {
        throw UserError("bench_cp_traffic: unknown option " + a +
                        " (--min-seq, --max-seq, --lsm, --time-cap, --json)");
      }
    }
    log_init(rt.rank(), LogLevel::warn);
    MpiCommunicator& world = rt.world();
    const int cp = world.size();
    Layout layout;
    layout.cp = cp;
    ProcessGroups groups(world, layout);
    const int r = groups.coords().cp_rank;
    auto backend = make_cpu_backend(1);

    std::vector<Column> cols;
    std::stringstream list(lsm_list);
    for (std::string t; std::getline(list, t, ',');) {
      Column c{t, 'L', model_for(t, 'L'), nullptr};
      cols.push_back(std::move(c));
    }
    cols.push_back(Column{"attention", 'N', model_for("lightning", 'N'), nullptr});
    for (Column& c : cols) c.mixer = std::make_unique<Mixer>(c.model, c.kind, *backend);

    if (world.rank() == 0) {
      std::printf(
          "context-parallel traffic per layer, cp = %d, B = 1, D = %lld; bytes = the most any "
          "rank hands to its cp calls per layer, forward + backward, in bytes (measured / "
          "analytic)\n",
          cp, static_cast<long long>(kD));
      std::printf(
          "LSM: 2 heads, d_k = d_v = 16 (gated_deltanet: conv 4); attention: 2 query "
          "heads, 1 kv head, head_dim 16\n");
      std::printf("%9s", "seq_len");
      for (const Column& c : cols) std::printf(" | %-25s", (c.name + " meas / analytic").c_str());
      std::printf(" | %s | %s\n", "attn / first LSM", "seconds per column (fwd+bwd)");
    }
    Json rows = Json::array();
    int mismatches = 0;
    for (i64 T = min_seq; T <= max_seq; T *= 2) {
      const i64 T_local = T / cp;
      Json row = Json::object();
      row["seq_len"] = T;
      row["cp"] = cp;
      std::vector<i64> measured, analytic;
      std::vector<double> times;
      for (Column& c : cols) {
        const std::vector<CommTerm> terms =
            c.kind == 'N' ? attention_mixer_cp_terms(c.model, TpSlice{}, cp, 1, T_local)
                          : lsm_mixer_cp_terms(c.model, TpSlice{}, cp, r, 1, T_local);
        const i64 want = max_over_ranks(world, sum_out(terms));
        i64 got = -1;
        double seconds = 0;
        c.skipped = c.skipped || c.capped;
        if (!c.capped) {
          groups.cp().reset_traffic();
          seconds = c.mixer->run(T_local, groups);
          const i64 mine = groups.cp().traffic().bytes_out();
          const int bad = mine != sum_out(terms) ? 1 : 0;
          mismatches += static_cast<int>(world.all_reduce_sum_i64(bad));
          got = max_over_ranks(world, mine);
          seconds = world.all_reduce_max(seconds);
          // The next length doubles T: attention costs about 4x (T²), the LSMs 2x.
          if (seconds * (c.kind == 'N' ? 4 : 2) > time_cap) c.capped = true;
        }
        measured.push_back(got);
        times.push_back(got < 0 ? -1.0 : seconds);
        analytic.push_back(want);
        Json col = Json::object();
        col["measured_bytes"] = got < 0 ? Json() : Json(got);
        col["analytic_bytes"] = want;
        col["seconds"] = got < 0 ? Json() : Json(seconds);
        row[c.name] = col;
      }
      const double ratio = static_cast<double>(analytic.back()) / static_cast<double>(analytic[0]);
      row["attention_over_lsm"] = ratio;
      rows.push_back(row);
      if (world.rank() == 0) {
        std::printf("%9lld", static_cast<long long>(T));
        for (std::size_t i = 0; i < cols.size(); ++i) {
          const std::string cell = bytes_str(measured[i]) + " / " + bytes_str(analytic[i]);
          std::printf(" | %-25s", cell.c_str());
        }
        std::printf(" | %15.1fx |", ratio);
        for (double t : times) std::printf(" %7.2f", t);
        std::printf("\n");
        std::fflush(stdout);
      }
    }
    if (world.rank() == 0) {
      for (const Column& c : cols) {
        if (c.skipped) {
          std::printf(
              "%s: longer lengths not run, predicted over --time-cap %.0f s (analytic only)\n",
              c.name.c_str(), time_cap);
        }
      }
      std::printf("%s\n", mismatches ? "MISMATCH between measured and analytic bytes"
                                     : "measured == analytic on every rank");
      if (!json_path.empty()) {
        Json j = Json::object();
        j["bench"] = "cp_traffic";
        j["cp"] = cp;
        j["hidden_size"] = kD;
        j["rows"] = rows;
        std::ofstream(json_path) << dump_json(j, 2) << "\n";
      }
    }
    return mismatches ? 1 : 0;
  });
}
