#include "data/split.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "core/check.h"

namespace linmoe {

const char* split_name(Split s) {
  switch (s) {
    case Split::train:
      return "train";
    case Split::valid:
      return "valid";
    case Split::test:
      return "test";
  }
  return "?";
}

std::array<double, 3> parse_split(const std::string& text, const std::string& key) {
  std::array<double, 3> w{0, 0, 0};
  std::size_t part = 0, start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    const std::string piece =
        text.substr(start, comma == std::string::npos ? comma : comma - start);
    if (part >= 3) throw UserError(str_cat(key, ": '", text, "' has more than 3 parts"));
    char* end = nullptr;
    const double v = std::strtod(piece.c_str(), &end);
    if (piece.empty() || end != piece.c_str() + piece.size() || !(v >= 0) || !std::isfinite(v)) {
      throw UserError(str_cat(key, ": '", text, "': part '", piece,
                              "' is not a non-negative number (expected e.g. \"98,2,0\")"));
    }
    w[part++] = v;
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (w[0] + w[1] + w[2] <= 0) throw UserError(str_cat(key, ": '", text, "' is all zero"));
  return w;
}

std::pair<std::int64_t, std::int64_t> split_range(std::int64_t num_docs,
                                                  const std::array<double, 3>& weights, Split s) {
  const double sum = weights[0] + weights[1] + weights[2];
  LINMOE_CHECK(sum > 0, "split weights sum to ", sum);
  std::int64_t bounds[4] = {0, 0, 0, 0};
  for (int i = 0; i < 3; ++i) {
    // nearbyint rounds half to even in the default rounding mode, like Python's round().
    bounds[i + 1] =
        bounds[i] +
        static_cast<std::int64_t>(std::nearbyint(weights[i] / sum * static_cast<double>(num_docs)));
  }
  const std::int64_t diff = bounds[3] - num_docs;
  for (int i = 1; i < 4; ++i) {
    bounds[i] -= diff;
    bounds[i] = std::min(num_docs, std::max(bounds[i - 1], bounds[i]));  // degenerate weights
  }
  const int k = static_cast<int>(s);
  return {bounds[k], bounds[k + 1]};
}

}  // namespace linmoe
