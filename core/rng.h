// Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011). A value is a pure
// function of (seed, stream name, element index), so the same tensor gets the same numbers on
// any backend and under any parallel layout: a rank holding a slice asks for the global indices
// of its elements. The CUDA backend implements the same function.
#pragma once
#include <cstdint>
#include <string>

namespace linmoe {

// 64-bit FNV-1a hash of a name; the stream id of a tensor.
std::uint64_t hash_name(const std::string& name);

struct Philox4x32 {
  std::uint32_t out[4];
};
// One Philox-4x32-10 block for counter (c0..c3) and key (k0, k1).
Philox4x32 philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                         std::uint32_t k0, std::uint32_t k1);

class CounterRng {
 public:
  CounterRng(std::uint64_t seed, const std::string& stream);
  CounterRng(std::uint64_t seed, std::uint64_t stream_id);
  // Uniform in (0, 1), 24 random bits, never 0 or 1.
  float uniform(std::uint64_t index) const;
  // Standard normal (Box-Muller on the first two words of the block).
  float normal(std::uint64_t index) const;
  std::uint32_t bits(std::uint64_t index) const;  // 32 raw bits

 private:
  Philox4x32 block(std::uint64_t index) const;
  std::uint32_t k0_, k1_, s0_, s1_;
};

}  // namespace linmoe
