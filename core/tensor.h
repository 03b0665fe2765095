// Tensor: a non-owning view (pointer, dtype, device, shape, strides in elements).
// Ownership lives in a few explicit places: Buffer (one allocation), Arena (activations),
// ParameterStore (parameters and their gradients).
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"

namespace linmoe {

constexpr int kMaxDims = 6;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims);
  explicit Shape(const std::vector<std::int64_t>& dims);
  int ndim() const { return ndim_; }
  std::int64_t operator[](int i) const { return dims_[static_cast<std::size_t>(i)]; }
  std::int64_t& operator[](int i) { return dims_[static_cast<std::size_t>(i)]; }
  std::int64_t numel() const;
  std::vector<std::int64_t> to_vector() const;
  std::string str() const;  // "[2, 3, 4]"
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }

 private:
  int ndim_ = 0;
  std::array<std::int64_t, kMaxDims> dims_{};
};

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  Shape shape;
  std::array<std::int64_t, kMaxDims> strides{};  // in elements

  Tensor() = default;
  // A contiguous (row-major) view of `data`.
  Tensor(void* data, DType dtype, Device device, const Shape& shape);

  int ndim() const { return shape.ndim(); }
  // Size of dimension d; negative d counts from the end.
  std::int64_t size(int d) const;
  std::int64_t stride(int d) const;
  std::int64_t numel() const { return shape.numel(); }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype); }
  bool is_contiguous() const;
  bool defined() const { return data != nullptr || numel() == 0; }

  // Views. reshape needs a contiguous tensor; slice/select keep strides.
  Tensor reshape(const Shape& new_shape) const;
  Tensor slice(int dim, std::int64_t start, std::int64_t length) const;
  Tensor select(int dim, std::int64_t index) const;  // drops `dim`
  Tensor flatten_to_2d() const;                      // [prod(leading), last]

  template <class T>
  T* ptr() const {
    LINMOE_CHECK(dtype == dtype_of<T>(), "tensor holds ", dtype_name(dtype), ", asked for ",
                 dtype_name(dtype_of<T>()));
    return static_cast<T*>(data);
  }
  std::string str() const;  // "f32[2, 3]@cpu"
};

// Checks used by op launchers: they name the op and the argument.
void check_shape(const Tensor& t, const Shape& expected, const char* op, const char* arg);
void check_dtype(const Tensor& t, DType expected, const char* op, const char* arg);
void check_contiguous(const Tensor& t, const char* op, const char* arg);
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op);

}  // namespace linmoe
