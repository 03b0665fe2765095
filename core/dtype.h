// Element types and devices, and bf16 <-> f32 conversion (round to nearest even).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace linmoe {

enum class DType : std::uint8_t { f32, bf16, f64, i32, i64 };
enum class Device : std::uint8_t { cpu, cuda };

std::size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* device_name(Device d);
bool dtype_is_float(DType t);
// Parses "f32"/"bf16"/"f64"/"i32"/"i64"; throws UserError naming `what` on anything else.
DType parse_dtype(const std::string& s, const std::string& what);

// bf16 stored as its raw 16 bits; host-side conversions.
struct bf16 {
  std::uint16_t bits = 0;
};

inline float bf16_to_f32(bf16 v) {
  std::uint32_t u = static_cast<std::uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16 f32_to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) {
    return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};  // quiet NaN stays NaN
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return bf16{static_cast<std::uint16_t>(u >> 16)};
}

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}
template <>
constexpr DType dtype_of<bf16>() {
  return DType::bf16;
}
template <>
constexpr DType dtype_of<std::int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<std::int64_t>() {
  return DType::i64;
}

}  // namespace linmoe
