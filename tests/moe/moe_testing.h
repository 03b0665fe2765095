// Small helpers of the MoE op tests: integer tensors from and to std::vector<int>.
#pragma once
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "common/test_util.h"

namespace linmoe::testing {

inline HostTensor int_tensor(const Shape& s, const std::vector<int>& v) {
  HostTensor t(DType::i32, s);
  for (std::size_t i = 0; i < v.size(); ++i) t.data<std::int32_t>()[i] = v[i];
  REQUIRE(static_cast<std::int64_t>(v.size()) == t.t().numel());
  return t;
}

inline std::vector<int> ints(const HostTensor& t) {
  std::vector<int> v;
  for (double x : t.to_f64()) v.push_back(static_cast<int>(x));
  return v;
}

inline std::vector<std::int64_t> int64s(const HostTensor& t) {
  std::vector<std::int64_t> v;
  for (std::int64_t i = 0; i < t.t().numel(); ++i) v.push_back(t.data<std::int64_t>()[i]);
  return v;
}

inline HostTensor float_tensor(DType dt, const Shape& s, const std::vector<double>& v) {
  HostTensor t(dt, s);
  t.from_f64(v);
  return t;
}

}  // namespace linmoe::testing
