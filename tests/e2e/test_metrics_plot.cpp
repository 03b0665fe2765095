// The run's picture (train/metrics_plot.h): metrics.jsonl read back (a resumed run's repeated
// steps replaced, evaluations apart), drawn as SVG with a line per series and a heat-map cell per
// layer and expert; bad files named with their line.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "core/check.h"
#include "train/metrics_plot.h"

using namespace linmoe;

namespace {

std::string write_file(const std::string& name, const std::string& text) {
  const std::string path =
      std::filesystem::temp_directory_path() / (std::to_string(getpid()) + "_" + name);
  std::ofstream(path) << text;
  return path;
}

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (std::size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("metrics plot: history, resumed steps, SVG panels", "[plot]") {
  const std::string path = write_file(
      "linmoe_plot_metrics.jsonl",
      R"({"step": 1, "loss": 5.0, "lm_loss": 4.9, "grad_norm": 2, "lr": 1e-4, "tokens_per_s": 100, "expert_load": [[0.5, 0.25, 0.25], [0.4, 0.3, 0.3]]}
{"step": 2, "loss": 4.0, "lm_loss": 3.9, "grad_norm": 1, "lr": 2e-4, "tokens_per_s": 110, "expert_load": [[0.4, 0.3, 0.3], [0.34, 0.33, 0.33]]}
{"step": 2, "eval_loss": 4.1, "eval_ppl": 60.3}

{"step": 2, "loss": 3.5, "lm_loss": 3.4, "grad_norm": 1, "lr": 2e-4, "tokens_per_s": 120, "expert_load": [[0.6, 0.2, 0.2], [0.34, 0.33, 0.33]]}
{"step": 3, "loss": 3.0, "lm_loss": 2.9, "grad_norm": 0.5, "lr": 3e-4, "tokens_per_s": 120, "expert_load": [[0.34, 0.33, 0.33], [0.34, 0.33, 0.33]]}
)");
  const MetricsHistory h = read_metrics(path);
  REQUIRE(h.step == std::vector<double>{1, 2, 3});
  CHECK(h.loss == std::vector<double>{5.0, 3.5, 3.0});  // the resumed run's step 2 wins
  CHECK(h.eval_step == std::vector<double>{2});
  REQUIRE(h.expert_load.size() == 3);
  CHECK(h.expert_load[1][0][0] == 0.6);

  const std::string svg = metrics_svg(h, "run <tiny>");
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("run &lt;tiny&gt;") != std::string::npos);  // escaped
  // loss, lm loss, lr, grad norm, tokens/s, and the busiest-expert line of each of 2 layers.
  CHECK(count(svg, "<polyline") == 7);
  CHECK(count(svg, "<circle") == 1);           // the evaluation
  CHECK(count(svg, "<rect x=") == 5 + 2 * 3);  // the 5 charts' frames and 2 × 3 cells
  CHECK(svg.find("layer 1, expert 2") != std::string::npos);
  CHECK(svg.find("expert load at step 3") != std::string::npos);

  // A dense model: no expert panels.
  MetricsHistory dense = h;
  for (auto& l : dense.expert_load) l.clear();
  const std::string d = metrics_svg(dense, "dense");
  CHECK(d.find("expert load") == std::string::npos);
  CHECK(count(d, "<polyline") == 5);
}

TEST_CASE("metrics plot: bad files are named with their line", "[plot]") {
  const std::string bad =
      write_file("linmoe_plot_bad.jsonl", "{\"step\": 1, \"loss\": 2}\n{oops\n");
  CHECK_THROWS_WITH(read_metrics(bad), Catch::Contains("linmoe_plot_bad.jsonl:2"));
  const std::string no_loss = write_file("linmoe_plot_noloss.jsonl", "{\"step\": 1}\n");
  CHECK_THROWS_WITH(read_metrics(no_loss), Catch::Contains("a train line needs \"loss\""));
  CHECK_THROWS_WITH(read_metrics("/nonexistent/metrics.jsonl"),
                    Catch::Contains("/nonexistent/metrics.jsonl: cannot open"));
}
