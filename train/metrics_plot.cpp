#include "train/metrics_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/check.h"
#include "core/json.h"

namespace linmoe {
namespace {

// One logged train line.
struct TrainRow {
  double loss = 0, lm_loss = 0, grad_norm = 0, lr = 0, tokens_per_s = 0;
  std::vector<std::vector<double>> expert_load;
};

double number_or_nan(const Json& j, const char* key) {
  const Json* v = j.find(key);
  return v && v->is_number() ? v->as_double() : std::nan("");
}

std::string fmt(double v) {
  char buf[32];
  const double a = std::abs(v);
  if (a != 0 && (a < 1e-3 || a >= 1e5)) {
    std::snprintf(buf, sizeof buf, "%.2g", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.4g", v);
  }
  return buf;
}

// Text for XML: the title comes from the user.
std::string escaped(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// About five round tick values covering [lo, hi].
std::vector<double> ticks(double lo, double hi) {
  const double span = hi - lo;
  const double raw = span / 5;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  std::vector<double> out;
  for (double t = std::ceil(lo / step) * step; t <= hi + 1e-9 * span; t += step) out.push_back(t);
  return out;
}

struct Series {
  std::string name, color;
  const std::vector<double>* x;
  const std::vector<double>* y;
  bool dots = false;  // markers instead of a line (eval points)
};

struct Box {
  double x, y, w, h;
};

// A line chart with axes, ticks and a legend; NaN points are skipped.
void line_chart(std::ostringstream& o, const Box& b, const std::string& title,
                const std::vector<Series>& series) {
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const Series& s : series) {
    for (std::size_t i = 0; i < s.x->size(); ++i) {
      const double x = (*s.x)[i], y = (*s.y)[i];
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  }
  o << "<text x='" << b.x << "' y='" << b.y - 8 << "' class='title'>" << escaped(title)
    << "</text>\n";
  o << "<rect x='" << b.x << "' y='" << b.y << "' width='" << b.w << "' height='" << b.h
    << "' class='frame'/>\n";
  if (!(x0 <= x1)) {
    o << "<text x='" << b.x + b.w / 2 << "' y='" << b.y + b.h / 2
      << "' class='note' text-anchor='middle'>no data</text>\n";
    return;
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) {
    const double pad = y0 == 0 ? 1 : std::abs(y0) * 0.05;
    y0 -= pad, y1 += pad;
  }
  const double ypad = (y1 - y0) * 0.05;
  y0 -= ypad, y1 += ypad;
  auto px = [&](double x) { return b.x + (x - x0) / (x1 - x0) * b.w; };
  auto py = [&](double y) { return b.y + b.h - (y - y0) / (y1 - y0) * b.h; };
  for (double t : ticks(y0, y1)) {
    o << "<line x1='" << b.x << "' x2='" << b.x + b.w << "' y1='" << py(t) << "' y2='" << py(t)
      << "' class='grid'/><text x='" << b.x - 4 << "' y='" << py(t) + 4
      << "' class='tick' text-anchor='end'>" << fmt(t) << "</text>\n";
  }
  for (double t : ticks(x0, x1)) {
    o << "<text x='" << px(t) << "' y='" << b.y + b.h + 14 << "' class='tick' "
      << "text-anchor='middle'>" << fmt(t) << "</text>\n";
  }
  o << "<text x='" << b.x + b.w << "' y='" << b.y + b.h + 28
    << "' class='tick' text-anchor='end'>step</text>\n";
  double legend_x = b.x + 6;
  for (const Series& s : series) {
    std::ostringstream pts;
    int n = 0;
    for (std::size_t i = 0; i < s.x->size(); ++i) {
      const double x = (*s.x)[i], y = (*s.y)[i];
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      if (s.dots) {
        o << "<circle cx='" << px(x) << "' cy='" << py(y) << "' r='3' fill='" << s.color << "'/>\n";
      } else {
        pts << px(x) << ',' << py(y) << ' ';
      }
      ++n;
    }
    if (!s.dots && n > 0) {
      o << "<polyline points='" << pts.str() << "' fill='none' stroke='" << s.color
        << "' stroke-width='1.5'/>\n";
    }
    o << "<text x='" << legend_x << "' y='" << b.y + 14 << "' class='legend' fill='" << s.color
      << "'>" << escaped(s.name) << "</text>\n";
    legend_x += 8.0 * static_cast<double>(s.name.size()) + 16;
  }
}

// Load × E: 1 is a balanced expert. Blue below, white at 1, red at 2 and above.
std::string load_color(double balanced_ratio) {
  const double t = std::clamp(balanced_ratio - 1.0, -1.0, 1.0);
  const int fade = static_cast<int>(std::lround(255 * (1 - std::abs(t))));
  char buf[16];
  if (t >= 0) {
    std::snprintf(buf, sizeof buf, "#ff%02x%02x", fade, fade);
  } else {
    std::snprintf(buf, sizeof buf, "#%02x%02xff", fade, fade);
  }
  return buf;
}

void load_heat_map(std::ostringstream& o, const Box& b, double step,
                   const std::vector<std::vector<double>>& load) {
  o << "<text x='" << b.x << "' y='" << b.y - 8 << "' class='title'>expert load at step "
    << fmt(step) << " (× experts: 1 = balanced)</text>\n";
  const auto L = static_cast<double>(load.size());
  const auto E = static_cast<double>(load.front().size());
  const double label = 56, cw = (b.w - label) / E, ch = std::min(28.0, b.h / L);
  for (std::size_t l = 0; l < load.size(); ++l) {
    const double y = b.y + static_cast<double>(l) * ch;
    o << "<text x='" << b.x + label - 6 << "' y='" << y + ch / 2 + 4
      << "' class='tick' text-anchor='end'>layer " << l << "</text>\n";
    for (std::size_t e = 0; e < load[l].size(); ++e) {
      const double r = load[l][e] * E;
      o << "<rect x='" << b.x + label + static_cast<double>(e) * cw << "' y='" << y << "' width='"
        << cw << "' height='" << ch << "' fill='" << load_color(r)
        << "' stroke='#ddd'><title>layer " << l << ", expert " << e << ": " << fmt(load[l][e])
        << " of the assignments</title></rect>\n";
    }
  }
  for (std::size_t e = 0; e < load.front().size(); ++e) {
    o << "<text x='" << b.x + label + (static_cast<double>(e) + 0.5) * cw << "' y='"
      << b.y + L * ch + 14 << "' class='tick' text-anchor='middle'>" << e << "</text>\n";
  }
  o << "<text x='" << b.x + label << "' y='" << b.y + L * ch + 30
    << "' class='note'>expert; white = balanced, blue = idle, red = twice its share</text>\n";
}

}  // namespace

MetricsHistory read_metrics(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw UserError(str_cat(path, ": cannot open the metrics file"));
  std::map<double, TrainRow> train;
  std::map<double, double> eval;
  std::string line;
  for (int n = 1; std::getline(f, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = str_cat(path, ":", n);
    const Json j = parse_json(line, where);
    if (!j.is_object() || !j.find("step")) {
      throw UserError(str_cat(where, ": a metrics line needs \"step\" (FORMATS.md 3)"));
    }
    const double step = j.at("step").as_double(where + " step");
    if (const Json* e = j.find("eval_loss")) {
      eval[step] = e->as_double(where + " eval_loss");
      continue;
    }
    if (!j.find("loss")) {
      throw UserError(str_cat(where, ": a train line needs \"loss\" (FORMATS.md 3)"));
    }
    TrainRow r;
    r.loss = j.at("loss").as_double(where + " loss");
    r.lm_loss = number_or_nan(j, "lm_loss");
    r.grad_norm = number_or_nan(j, "grad_norm");
    r.lr = number_or_nan(j, "lr");
    r.tokens_per_s = number_or_nan(j, "tokens_per_s");
    if (const Json* el = j.find("expert_load")) {
      for (const Json& layer : el->as_array(where + " expert_load")) {
        std::vector<double> row;
        for (const Json& x : layer.as_array(where + " expert_load")) row.push_back(x.as_double());
        r.expert_load.push_back(std::move(row));
      }
    }
    train[step] = std::move(r);
  }
  MetricsHistory h;
  for (auto& [step, r] : train) {
    h.step.push_back(step);
    h.loss.push_back(r.loss);
    h.lm_loss.push_back(r.lm_loss);
    h.grad_norm.push_back(r.grad_norm);
    h.lr.push_back(r.lr);
    h.tokens_per_s.push_back(r.tokens_per_s);
    h.expert_load.push_back(std::move(r.expert_load));
  }
  for (const auto& [step, loss] : eval) {
    h.eval_step.push_back(step);
    h.eval_loss.push_back(loss);
  }
  return h;
}

std::string metrics_svg(const MetricsHistory& h, const std::string& title) {
  // Each layer's busiest expert (load × E) over the run, for the MoE panel.
  std::vector<std::vector<double>> busiest;
  const std::vector<std::vector<double>>* last_load = nullptr;
  double last_load_step = 0;
  for (std::size_t i = 0; i < h.expert_load.size(); ++i) {
    const auto& load = h.expert_load[i];
    if (load.empty() || load.front().empty()) continue;
    if (busiest.size() < load.size()) {
      busiest.resize(load.size(), std::vector<double>(h.step.size(), std::nan("")));
    }
    for (std::size_t l = 0; l < load.size(); ++l) {
      const double most = *std::max_element(load[l].begin(), load[l].end());
      busiest[l][i] = most * static_cast<double>(load[l].size());
    }
    last_load = &load;
    last_load_step = h.step[i];
  }
  const bool moe = last_load != nullptr;
  const double W = 1060, panel_w = 420, panel_h = 200, left = 70, gap_x = 90, top = 60, gap_y = 70;
  const int rows = moe ? 3 : 2;
  const double H = top + rows * (panel_h + gap_y);
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif'>\n"
    << "<style>.title{font-size:13px;font-weight:bold}.tick{font-size:10px;fill:#555}"
       ".legend{font-size:11px}.note{font-size:12px;fill:#888}.frame{fill:none;stroke:#999}"
       ".grid{stroke:#eee}</style>\n"
    << "<rect width='100%' height='100%' fill='white'/>\n"
    << "<text x='" << left << "' y='28' font-size='16' font-weight='bold'>" << escaped(title)
    << "</text>\n";
  auto box = [&](int row, int col) {
    return Box{left + col * (panel_w + gap_x), top + row * (panel_h + gap_y), panel_w, panel_h};
  };
  line_chart(o, box(0, 0), "loss",
             {{"loss", "#1f77b4", &h.step, &h.loss},
              {"lm loss", "#aec7e8", &h.step, &h.lm_loss},
              {"eval loss", "#d62728", &h.eval_step, &h.eval_loss, true}});
  line_chart(o, box(0, 1), "learning rate", {{"lr", "#2ca02c", &h.step, &h.lr}});
  line_chart(o, box(1, 0), "gradient norm (before clipping)",
             {{"grad norm", "#9467bd", &h.step, &h.grad_norm}});
  line_chart(o, box(1, 1), "throughput (tokens/s, whole job)",
             {{"tokens/s", "#8c564b", &h.step, &h.tokens_per_s}});
  if (moe) {
    load_heat_map(o, box(2, 0), last_load_step, *last_load);
    static const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                    "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
    std::vector<Series> s;
    std::vector<std::string> names;
    names.reserve(busiest.size());
    for (std::size_t l = 0; l < busiest.size(); ++l) names.push_back("layer " + std::to_string(l));
    for (std::size_t l = 0; l < busiest.size(); ++l) {
      s.push_back({names[l], kColors[l % 8], &h.step, &busiest[l]});
    }
    line_chart(o, box(2, 1), "busiest expert's load × experts (1 = balanced)", s);
  }
  o << "</svg>\n";
  return o.str();
}

void write_metrics_svg(const std::string& metrics_path, const std::string& svg_path,
                       const std::string& title) {
  const std::string svg = metrics_svg(read_metrics(metrics_path), title);
  const std::string tmp = svg_path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw UserError(str_cat(svg_path, ": cannot write the plot"));
    f << svg;
    if (!f.flush()) throw UserError(str_cat(svg_path, ": cannot write the plot"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, svg_path, ec);
  if (ec) throw UserError(str_cat(svg_path, ": cannot write the plot: ", ec.message()));
}

}  // namespace linmoe
