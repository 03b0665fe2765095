#include "core/rng.h"

#include <cmath>

namespace linmoe {

std::uint64_t hash_name(const std::string& name) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

Philox4x32 philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                         std::uint32_t k0, std::uint32_t k1) {
  constexpr std::uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr std::uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    std::uint64_t p0 = static_cast<std::uint64_t>(kM0) * c0;
    std::uint64_t p1 = static_cast<std::uint64_t>(kM1) * c2;
    std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    std::uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

CounterRng::CounterRng(std::uint64_t seed, const std::string& stream)
    : CounterRng(seed, hash_name(stream)) {}

CounterRng::CounterRng(std::uint64_t seed, std::uint64_t stream_id)
    : k0_(static_cast<std::uint32_t>(seed)),
      k1_(static_cast<std::uint32_t>(seed >> 32)),
      s0_(static_cast<std::uint32_t>(stream_id)),
      s1_(static_cast<std::uint32_t>(stream_id >> 32)) {}

Philox4x32 CounterRng::block(std::uint64_t index) const {
  // counter = (index, stream): distinct streams never share a counter under one key.
  return philox4x32_10(static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32),
                       s0_, s1_, k0_, k1_);
}

static float to_open_unit(std::uint32_t x) {
  return (static_cast<float>(x >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

float CounterRng::uniform(std::uint64_t index) const {
  return to_open_unit(block(index).out[0]);
}

float CounterRng::normal(std::uint64_t index) const {
  Philox4x32 b = block(index);
  // Box-Muller in double so the CPU value is the reference the GPU matches to ~1 ulp.
  double u1 = (static_cast<double>(b.out[0]) + 0.5) / 4294967296.0;
  double u2 = (static_cast<double>(b.out[1]) + 0.5) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

std::uint32_t CounterRng::bits(std::uint64_t index) const {
  return block(index).out[0];
}

}  // namespace linmoe
