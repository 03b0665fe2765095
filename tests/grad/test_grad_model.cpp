// The whole model's backward against central finite differences in fp64 (TESTING.md 3):
// embedding, LSM and attention mixers, MoE, final norm and head, with aux and z losses on.
#include <catch2/catch.hpp>

#include <cmath>

#include "common/test_util.h"
#include "core/config.h"
#include "core/memory.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"
#include "layers/model.h"

using namespace linmoe;

namespace {

struct ModelCase {
  const char* name;
  const char* yaml;
};

double rel_err_model(const char* yaml) {
  Config cfg = load_config_from_string(yaml, {}, "grad-model");
  auto backend = make_cpu_backend(1);
  Model model(cfg.model, *backend, DType::f64);
  model.initialize(7);
  // Larger weights than the 0.02 init so every path carries signal; routing margins stay wide.
  ParameterStore& p = model.params();
  CounterRng rng(3, "grad-model");
  Tensor flat = p.flat_params();
  for (std::size_t i = 0; i < p.size(); ++i) {
    Tensor t = p.param(static_cast<int>(i));
    const bool norm = p.spec(static_cast<int>(i)).name.find("norm") != std::string::npos;
    for (std::int64_t j = 0; j < t.numel(); ++j) {
      const double u = rng.uniform(static_cast<std::uint64_t>(p.offset_of(int(i)) + j));
      t.ptr<double>()[j] = norm ? 1.0 + 0.4 * (u - 0.5) : 0.6 * (u - 0.5);
    }
  }
  (void)flat;
  const std::int64_t B = 2, T = 9;
  testing::HostTensor tokens(DType::i32, Shape{B, T}), targets(DType::i32, Shape{B, T});
  testing::fill_ints(tokens.t(), 1, cfg.model.vocab_size);
  testing::fill_ints(targets.t(), 2, cfg.model.vocab_size);

  backend->fill(p.flat_grads(), 0.0);
  model.forward_backward(tokens.t(), targets.t(), 1.0);
  double num = 0, den = 0;
  const double h = 1e-5;
  for (std::size_t i = 0; i < p.size(); ++i) {
    Tensor t = p.param(static_cast<int>(i)), g = p.grad(static_cast<int>(i));
    const std::int64_t n = t.numel();
    for (int k = 0; k < 3; ++k) {
      const std::int64_t j = (k * 7919 + n / 2) % n;
      double* v = t.ptr<double>() + j;
      const double orig = *v;
      *v = orig + h;
      const double lp = model.forward(tokens.t(), targets.t()).loss;
      *v = orig - h;
      const double lm = model.forward(tokens.t(), targets.t()).loss;
      *v = orig;
      const double fd = (lp - lm) / (2 * h), an = g.ptr<double>()[j];
      INFO(p.spec(int(i)).name << "[" << j << "]: fd " << fd << " analytic " << an);
      CHECK(std::fabs(fd - an) <= 1e-6 * std::max(1.0, std::fabs(fd)) + 1e-9);
      num += (fd - an) * (fd - an);
      den += fd * fd;
    }
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("model: whole-model backward matches finite differences (fp64)", "[grad][model]") {
  const ModelCase cases[] = {
      {"hybrid LN, lightning, MoE top-2 with aux and z losses",
       "model: {vocab_size: 11, hidden_size: 16, num_layers: 2, layer_pattern: LN,"
       " attention: {num_heads: 2}, lsm: {type: lightning, num_heads: 2, chunk_size: 4},"
       " moe: {num_experts: 4, top_k: 2, ffn_hidden_size: 8, aux_loss_coeff: 0.01,"
       " z_loss_coeff: 0.001}}\n"},
      {"tied embeddings, retention, dense FFN",
       "model: {vocab_size: 13, hidden_size: 8, num_layers: 2, layer_pattern: LL,"
       " tie_embeddings: true, ffn_hidden_size: 12, attention: {num_heads: 2},"
       " lsm: {type: retention, num_heads: 2, chunk_size: 4}}\n"},
  };
  for (const ModelCase& c : cases) {
    INFO(c.name);
    CHECK(rel_err_model(c.yaml) < 1e-6);
  }
}
