// Numerically stable scalar functions shared by the CPU backend's op files.
#pragma once
#include <algorithm>
#include <cmath>

namespace linmoe::cpu {

// 1/(1 + e^{−x}) without exponentiating a positive number.
template <class T>
T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  T e = std::exp(x);
  return e / (T(1) + e);
}

// log(1 + e^x) = max(x, 0) + log1p(e^{−|x|}).
template <class T>
T softplus(T x) {
  return std::max(x, T(0)) + std::log1p(std::exp(-std::fabs(x)));
}

}  // namespace linmoe::cpu
