#include "core/dtype.h"

#include "core/check.h"

namespace linmoe {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::bf16:
      return 2;
    case DType::f64:
      return 8;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
  }
  LINMOE_CHECK(false, "unknown dtype ", static_cast<int>(t));
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::bf16:
      return "bf16";
    case DType::f64:
      return "f64";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
  }
  return "?";
}

const char* device_name(Device d) {
  return d == Device::cpu ? "cpu" : "cuda";
}

bool dtype_is_float(DType t) {
  return t == DType::f32 || t == DType::bf16 || t == DType::f64;
}

DType parse_dtype(const std::string& s, const std::string& what) {
  for (DType t : {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64}) {
    if (s == dtype_name(t)) return t;
  }
  throw UserError(str_cat(what, " = '", s, "': not a dtype (f32, bf16, f64, i32, i64)"));
}

}  // namespace linmoe
