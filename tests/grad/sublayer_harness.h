// Gradient checks of one sublayer in fp64: the sublayer's parameters (from model_parameters,
// filtered by name prefix) in an f64 store filled with random values, loss L = Σ y ⊙ R for a
// fixed random R, analytic gradients from backward, central differences from forward.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/memory.h"
#include "core/parameter_store.h"
#include "layers/layer.h"

namespace linmoe::testing {

using SublayerFactory =
    std::function<std::unique_ptr<Sublayer>(const ModelConfig&, int, const ParameterStore&)>;

struct GradCheckResult {
  std::string name;  // parameter name or "input"
  double rel_error;  // ‖fd − analytic‖ / ‖fd‖ over the probed elements
  int probed;        // elements probed
};

// Backward run from gradients at 0 and again from 0.25 everywhere (layers/layer.h: backward
// ACCUMULATES into dx and the parameter gradients): the second must be the first + 0.25.
struct AccumulationResult {
  double worst_diff;                    // max |from_start − (from_zero + 0.25)|
  bool scratch_released_after_forward;  // forward rewound its temporaries (ScratchScope)
  bool scratch_released_after_backward;
};

class SublayerHarness {
 public:
  // `prefix` selects the parameters (e.g. "layers.0.mixer."); B·T tokens of width D.
  SublayerHarness(const ModelConfig& model, int layer, const std::string& prefix,
                  const SublayerFactory& factory, std::int64_t B, std::int64_t T,
                  std::uint64_t seed = 1, double param_scale = 0.5);
  ~SublayerHarness();

  // Overwrite a parameter with given values (e.g. A_log that must stay in range).
  void set_param(const std::string& name, const std::vector<double>& values);
  // L = Σ y·R after one forward (no backward).
  double loss();
  // Runs forward + backward; then finite differences on up to `max_probes` elements of every
  // parameter and of the input (step h); returns one result per tensor.
  std::vector<GradCheckResult> check(int max_probes = 12, double h = 1e-5);
  AccumulationResult check_accumulation();
  // The last forward's output as doubles.
  std::vector<double> output();
  SublayerStats last_stats() const { return stats_; }
  ParameterStore& params() { return store_; }
  Backend& backend() { return *backend_; }
  Tensor input() { return x_; }

 private:
  std::unique_ptr<Backend> backend_;
  ParameterStore store_;
  std::unique_ptr<Sublayer> layer_;
  Buffer x_buf_, r_buf_, y_buf_, dy_buf_, dx_buf_;
  Tensor x_, r_, y_, dy_, dx_;
  Arena saved_, scratch_;
  SublayerStats stats_;
  double moe_aux_coeff_ = 0, moe_z_coeff_ = 0;
  double forward_loss(bool keep_cache, std::unique_ptr<Sublayer::Cache>* cache);
  LayerContext context();
};

}  // namespace linmoe::testing
