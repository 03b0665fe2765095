#include "layers/init.h"

#include <cmath>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "core/memory.h"
#include "core/rng.h"
#include "layers/model_spec.h"

namespace linmoe {
namespace {

// The value of global element `index` of a parameter.
double init_value(const ModelParam& p, const ModelConfig& m, const CounterRng& rng,
                  std::uint64_t index) {
  switch (p.init) {
    case InitKind::normal:
      return m.init_std * rng.normal(index);
    case InitKind::normal_output:
      return m.init_std / std::sqrt(2.0 * m.num_layers) * rng.normal(index);
    case InitKind::ones:
      return 1.0;
    case InitKind::zeros:
      return 0.0;
    case InitKind::conv: {
      // PyTorch Conv1d's default bound for a depthwise [C, 1, K] kernel: 1/sqrt(fan_in = K).
      const double bound = 1.0 / std::sqrt(static_cast<double>(p.shape[p.shape.ndim() - 1]));
      return bound * (2.0 * rng.uniform(index) - 1.0);
    }
    case InitKind::mamba_a_log:
      return std::log(1.0 + 15.0 * rng.uniform(index));  // A ∈ [1, 16]
    case InitKind::mamba_dt_bias: {
      // dt log-uniform in [1e-3, 1e-1]; the bias is softplus⁻¹(dt) = dt + log(1 − e^−dt).
      const double dt =
          std::exp(std::log(1e-3) + rng.uniform(index) * (std::log(1e-1) - std::log(1e-3)));
      return dt + std::log(-std::expm1(-dt));
    }
  }
  return 0.0;
}

}  // namespace

void initialize_parameters(ParameterStore& params, const ModelConfig& m, std::uint64_t seed,
                           Backend& backend) {
  std::unordered_map<std::string, ModelParam> by_name;
  for (const ModelParam& p : model_parameters(m)) by_name.emplace(p.name, p);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& spec = params.spec(static_cast<int>(i));
    auto it = by_name.find(spec.name);
    LINMOE_CHECK(it != by_name.end(), "parameter '", spec.name, "' is not in the model spec");
    const ModelParam& p = it->second;
    LINMOE_CHECK(p.shape == spec.global_shape, "parameter '", spec.name, "': global shape ",
                 spec.global_shape.str(), " vs spec ", p.shape.str());
    const CounterRng rng(seed, spec.name);
    // Walk the local slice in row-major order and map each element to its global index.
    const int nd = spec.shape.ndim();
    std::vector<double> values(static_cast<std::size_t>(spec.shape.numel()));
    std::vector<std::int64_t> idx(static_cast<std::size_t>(nd), 0);
    for (std::size_t n = 0; n < values.size(); ++n) {
      std::int64_t global = 0;
      for (int d = 0; d < nd; ++d) {
        global = global * spec.global_shape[d] + spec.offset[static_cast<std::size_t>(d)] +
                 idx[static_cast<std::size_t>(d)];
      }
      values[n] = init_value(p, m, rng, static_cast<std::uint64_t>(global));
      for (int d = nd - 1; d >= 0; --d) {
        if (++idx[static_cast<std::size_t>(d)] < spec.shape[d]) break;
        idx[static_cast<std::size_t>(d)] = 0;
      }
    }
    // Stage in f64 on the host, then let the backend convert and place it.
    Buffer host(host_allocator(), values.size() * sizeof(double), "init staging");
    std::memcpy(host.data(), values.data(), values.size() * sizeof(double));
    backend.copy(host.view(DType::f64, spec.shape), params.param(static_cast<int>(i)));
  }
}

}  // namespace linmoe
