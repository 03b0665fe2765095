// compare_runs REF RUN TOL: the parallel invariant of spec/PARALLEL.md, checked on two finished
// `linmoe train` runs (each: an output folder with metrics.jsonl and a checkpoint folder):
//   - every step's loss, lm_loss, aux_loss and grad_norm agree to relative TOL;
//   - every parameter of the final checkpoint, assembled whole from whatever slices the run's
//     ranks wrote, agrees to TOL relative to the reference tensor's norm (‖a − b‖ / ‖b‖), and so
//     does each optimizer state.
// Prints one line per quantity with the worst error; exit 0 when all pass, 1 otherwise.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/json.h"
#include "layers/model_spec.h"
#include "train/checkpoint.h"

using namespace linmoe;

namespace {

std::vector<Json> read_steps(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw UserError(path + ": cannot open");
  std::vector<Json> steps;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    Json j = parse_json(line, path);
    if (j.find("loss")) steps.push_back(j);
  }
  return steps;
}

double rel(double a, double b) {
  return std::abs(a - b) / std::max(std::abs(b), 1e-30);
}

double tensor_error(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return n > 0 ? std::sqrt(d / n) : std::sqrt(d);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: compare_runs REF_DIR RUN_DIR TOL\n");
    return 2;
  }
  const std::string ref = argv[1], run = argv[2];
  const double tol = std::stod(argv[3]);
  try {
    bool ok = true;
    const std::vector<Json> a = read_steps(run + "/metrics.jsonl"),
                            b = read_steps(ref + "/metrics.jsonl");
    if (a.size() != b.size() || b.empty()) {
      std::printf("FAIL steps: %zu in the run, %zu in the reference\n", a.size(), b.size());
      return 1;
    }
    for (const char* key : {"loss", "lm_loss", "aux_loss", "z_loss", "grad_norm"}) {
      double worst = 0;
      for (std::size_t s = 0; s < b.size(); ++s) {
        worst = std::max(worst, rel(a[s].at(key).as_double(), b[s].at(key).as_double()));
      }
      const bool pass = worst <= tol;
      ok = ok && pass;
      std::printf("%s %-10s worst relative error over %zu steps: %.3g\n", pass ? "ok  " : "FAIL",
                  key, b.size(), worst);
    }
    std::optional<LoadedCheckpoint> ca = find_checkpoint(run + "/ckpt"),
                                    cb = find_checkpoint(ref + "/ckpt");
    if (!ca || !cb) {
      std::printf("FAIL: no checkpoint under %s/ckpt or %s/ckpt\n", run.c_str(), ref.c_str());
      return 1;
    }
    const Config cfg = load_config_from_string(cb->meta.at("config").as_string(), {}, "meta.json");
    std::vector<std::string> states;
    for (const Json& n : cb->meta.at("optimizer").at("state").as_array()) {
      states.push_back(n.as_string());
    }
    double worst_w = 0, worst_s = 0;
    std::string worst_w_name, worst_s_name;
    for (const ModelParam& p : model_parameters(cfg.model)) {
      const std::vector<std::int64_t> shape = p.shape.to_vector();
      const double e =
          tensor_error(assemble_tensor(*ca, p.name, shape), assemble_tensor(*cb, p.name, shape));
      if (e > worst_w || worst_w_name.empty()) {
        worst_w = e;
        worst_w_name = p.name;
      }
    }
    for (const ModelParam& p : model_parameters(cfg.model)) {
      const std::vector<std::int64_t> shape = p.shape.to_vector();
      for (const std::string& st : states) {
        const std::string n = p.name + "." + st;
        const double e = tensor_error(assemble_tensor(*ca, n, shape, "optimizer"),
                                      assemble_tensor(*cb, n, shape, "optimizer"));
        if (e > worst_s || worst_s_name.empty()) {
          worst_s = e;
          worst_s_name = n;
        }
      }
    }
    const bool pass = worst_w <= tol;
    ok = ok && pass;
    std::printf("%s weights    worst relative error %.3g (%s), step %lld\n", pass ? "ok  " : "FAIL",
                worst_w, worst_w_name.c_str(), static_cast<long long>(ca->step));
    // The second moment squares gradients: its relative error is about twice theirs.
    const bool pass_s = worst_s <= 2 * tol;
    ok = ok && pass_s;
    std::printf("%s optimizer  worst relative error %.3g (%s)\n", pass_s ? "ok  " : "FAIL", worst_s,
                worst_s_name.c_str());
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::printf("FAIL: %s\n", e.what());
    return 1;
  }
}
