#include "grad/sublayer_harness.h"

#include <cmath>

#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"
#include "layers/model_spec.h"

namespace linmoe::testing {
namespace {

// Random values that keep activations O(1): weights U(±sqrt(3/fan_in))·scale·2, norms near 1,
// Mamba parameters inside their usual ranges.
void fill_param(const Tensor& t, const ModelParam& p, std::uint64_t seed, double scale) {
  CounterRng rng(seed, p.name);
  double* v = t.ptr<double>();
  const std::int64_t fan_in = p.shape[p.shape.ndim() - 1];
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const double u = rng.uniform(static_cast<std::uint64_t>(i));
    switch (p.init) {
      case InitKind::ones:
        v[i] = 1.0 + 0.4 * (u - 0.5);
        break;
      case InitKind::mamba_a_log:
        v[i] = std::log(1.0 + 3.0 * u);
        break;
      case InitKind::mamba_dt_bias: {
        const double dt = 0.01 + 0.09 * u;
        v[i] = dt + std::log(-std::expm1(-dt));  // softplus⁻¹(dt)
        break;
      }
      case InitKind::zeros:
        v[i] = 0.2 * (u - 0.5);
        break;  // non-zero so bias paths are probed
      default:
        v[i] = (2.0 * u - 1.0) * std::sqrt(3.0 / double(fan_in)) * 2.0 * scale;
    }
  }
}

void fill_uniform_f64(const Tensor& t, std::uint64_t seed, const char* stream) {
  CounterRng rng(seed, stream);
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    t.ptr<double>()[i] = 2.0 * rng.uniform(static_cast<std::uint64_t>(i)) - 1.0;
  }
}

}  // namespace

SublayerHarness::SublayerHarness(const ModelConfig& model, int layer, const std::string& prefix,
                                 const SublayerFactory& factory, std::int64_t B, std::int64_t T,
                                 std::uint64_t seed, double param_scale)
    : backend_(make_cpu_backend(1)) {
  std::vector<ModelParam> specs;
  for (const ModelParam& p : model_parameters(model)) {
    if (p.name.rfind(prefix, 0) == 0) {
      store_.add(whole_param(p.name, p.shape));
      specs.push_back(p);
    }
  }
  LINMOE_CHECK(!specs.empty(), "no parameters start with '", prefix, "'");
  store_.allocate(host_allocator(), DType::f64, DType::f64);
  for (std::size_t i = 0; i < specs.size(); ++i) {
    fill_param(store_.param(static_cast<int>(i)), specs[i], seed, param_scale);
  }
  layer_ = factory(model, layer, store_);
  const Shape shape{B, T, model.hidden_size};
  const auto bytes = static_cast<std::size_t>(shape.numel()) * sizeof(double);
  x_buf_ = Buffer(host_allocator(), bytes, "x");
  r_buf_ = Buffer(host_allocator(), bytes, "r");
  y_buf_ = Buffer(host_allocator(), bytes, "y");
  dy_buf_ = Buffer(host_allocator(), bytes, "dy");
  dx_buf_ = Buffer(host_allocator(), bytes, "dx");
  x_ = x_buf_.view(DType::f64, shape);
  r_ = r_buf_.view(DType::f64, shape);
  y_ = y_buf_.view(DType::f64, shape);
  dy_ = dy_buf_.view(DType::f64, shape);
  dx_ = dx_buf_.view(DType::f64, shape);
  fill_uniform_f64(x_, seed, "harness.x");
  fill_uniform_f64(r_, seed, "harness.r");
  saved_ = Arena(host_allocator(), 1 << 20, "harness saved");
  scratch_ = Arena(host_allocator(), 1 << 20, "harness scratch");
  moe_aux_coeff_ = model.moe.aux_loss_coeff;
  moe_z_coeff_ = model.moe.z_loss_coeff;
}

SublayerHarness::~SublayerHarness() = default;

LayerContext SublayerHarness::context() {
  return LayerContext{*backend_, store_, saved_, scratch_, DType::f64};
}

void SublayerHarness::set_param(const std::string& name, const std::vector<double>& values) {
  Tensor t = store_.param(store_.index(name));
  LINMOE_CHECK(static_cast<std::int64_t>(values.size()) == t.numel(), "set_param ", name);
  for (std::size_t i = 0; i < values.size(); ++i) t.ptr<double>()[i] = values[i];
}

double SublayerHarness::forward_loss(bool keep_cache, std::unique_ptr<Sublayer::Cache>* cache) {
  saved_.reset();
  scratch_.reset();
  LayerContext ctx = context();
  stats_ = SublayerStats{};
  std::unique_ptr<Sublayer::Cache> c = layer_->forward(ctx, x_, y_, &stats_);
  double l = 0;
  for (std::int64_t i = 0; i < y_.numel(); ++i) l += y_.ptr<double>()[i] * r_.ptr<double>()[i];
  l += moe_aux_coeff_ * stats_.aux_loss + moe_z_coeff_ * stats_.z_loss;
  if (keep_cache) *cache = std::move(c);
  return l;
}

double SublayerHarness::loss() {
  return forward_loss(false, nullptr);
}

std::vector<double> SublayerHarness::output() {
  std::vector<double> v(static_cast<std::size_t>(y_.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = y_.ptr<double>()[i];
  return v;
}

AccumulationResult SublayerHarness::check_accumulation() {
  AccumulationResult r{0.0, true, true};
  auto run = [&](double start) {
    backend_->fill(store_.flat_grads(), start);
    backend_->fill(dx_, start);
    saved_.reset();
    scratch_.reset();
    LayerContext ctx = context();
    std::unique_ptr<Sublayer::Cache> cache = layer_->forward(ctx, x_, y_, nullptr);
    r.scratch_released_after_forward &= scratch_.used() == 0;
    backend_->copy(r_, dy_);
    layer_->backward(ctx, *cache, dy_, dx_);
    r.scratch_released_after_backward &= scratch_.used() == 0;
    std::vector<double> g(dx_.ptr<double>(), dx_.ptr<double>() + dx_.numel());
    const Tensor grads = store_.flat_grads();
    g.insert(g.end(), grads.ptr<double>(), grads.ptr<double>() + grads.numel());
    return g;
  };
  const std::vector<double> from_zero = run(0.0), from_start = run(0.25);
  for (std::size_t i = 0; i < from_zero.size(); ++i) {
    r.worst_diff = std::max(r.worst_diff, std::fabs(from_start[i] - (from_zero[i] + 0.25)));
  }
  return r;
}

std::vector<GradCheckResult> SublayerHarness::check(int max_probes, double h) {
  // Gradients start at a non-zero constant and it is taken off afterwards: a backward that
  // overwrites instead of accumulating (MODEL contract: dx +=, dW +=) fails here.
  constexpr double kStart = 0.25;
  backend_->fill(store_.flat_grads(), kStart);
  backend_->fill(dx_, kStart);
  std::unique_ptr<Sublayer::Cache> cache;
  forward_loss(true, &cache);
  backend_->copy(r_, dy_);
  LayerContext ctx = context();
  layer_->backward(ctx, *cache, dy_, dx_);
  cache.reset();
  for (Tensor t : {store_.flat_grads(), dx_}) {
    for (std::int64_t i = 0; i < t.numel(); ++i) t.ptr<double>()[i] -= kStart;
  }

  auto probe = [&](const std::string& name, const Tensor& value, const Tensor& grad) {
    const std::int64_t n = value.numel();
    const int probes = static_cast<int>(std::min<std::int64_t>(n, max_probes));
    double num = 0, den = 0, an = 0;
    for (int k = 0; k < probes; ++k) {
      // Spread the probes over the tensor, with an odd stride so rows and columns both vary.
      const std::int64_t i = (static_cast<std::int64_t>(k) * 7919 + n / 3) % n;
      double* v = value.ptr<double>() + i;
      const double orig = *v;
      *v = orig + h;
      const double lp = loss();
      *v = orig - h;
      const double lm = loss();
      *v = orig;
      const double fd = (lp - lm) / (2 * h), a = grad.ptr<double>()[i];
      num += (fd - a) * (fd - a);
      den += fd * fd;
      an += a * a;
    }
    double rel = std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
    if (den < 1e-20 && an < 1e-20) rel = 0.0;  // both vanish (e.g. an unused slot)
    return GradCheckResult{name, rel, probes};
  };

  std::vector<GradCheckResult> out;
  for (std::size_t i = 0; i < store_.size(); ++i) {
    const int id = static_cast<int>(i);
    out.push_back(probe(store_.spec(id).name, store_.param(id), store_.grad(id)));
  }
  out.push_back(probe("input", x_, dx_));
  return out;
}

}  // namespace linmoe::testing
