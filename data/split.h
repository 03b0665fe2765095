// Train/valid/test splits of a dataset's documents, from a split string like "98,2,0"
// (Megatron's rule: weights normalised, contiguous document ranges, rounded cumulatively).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>

namespace linmoe {

enum class Split { train = 0, valid = 1, test = 2 };
const char* split_name(Split s);

// "98,2,0" -> {0.98, 0.02, 0}; missing parts are 0; throws UserError naming `key` when a part
// is not a non-negative number or all are 0.
std::array<double, 3> parse_split(const std::string& text, const std::string& key = "data.split");

// Documents [begin, end) of split `s` out of `num_docs`: boundaries round(cumulative weight · N)
// (half to even, as Python's round), shifted so the last boundary is N.
std::pair<std::int64_t, std::int64_t> split_range(std::int64_t num_docs,
                                                  const std::array<double, 3>& weights, Split s);

}  // namespace linmoe
