#include "core/tensor.h"

#include <sstream>

namespace linmoe {

Shape::Shape(std::initializer_list<std::int64_t> dims) {
  LINMOE_CHECK(dims.size() <= static_cast<std::size_t>(kMaxDims),
               "too many dimensions: ", dims.size());
  for (std::int64_t d : dims) dims_[static_cast<std::size_t>(ndim_++)] = d;
}

Shape::Shape(const std::vector<std::int64_t>& dims) {
  LINMOE_CHECK(dims.size() <= static_cast<std::size_t>(kMaxDims),
               "too many dimensions: ", dims.size());
  for (std::int64_t d : dims) dims_[static_cast<std::size_t>(ndim_++)] = d;
}

std::int64_t Shape::numel() const {
  std::int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= dims_[static_cast<std::size_t>(i)];
  return n;
}

std::vector<std::int64_t> Shape::to_vector() const {
  return std::vector<std::int64_t>(dims_.begin(), dims_.begin() + ndim_);
}

std::string Shape::str() const {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < ndim_; ++i) os << (i ? ", " : "") << dims_[static_cast<std::size_t>(i)];
  os << "]";
  return os.str();
}

bool Shape::operator==(const Shape& o) const {
  if (ndim_ != o.ndim_) return false;
  for (int i = 0; i < ndim_; ++i) {
    if (dims_[static_cast<std::size_t>(i)] != o.dims_[static_cast<std::size_t>(i)]) return false;
  }
  return true;
}

Tensor::Tensor(void* data_, DType dtype_, Device device_, const Shape& shape_)
    : data(data_), dtype(dtype_), device(device_), shape(shape_) {
  std::int64_t s = 1;
  for (int i = shape.ndim() - 1; i >= 0; --i) {
    strides[static_cast<std::size_t>(i)] = s;
    s *= shape[i];
  }
}

std::int64_t Tensor::size(int d) const {
  int i = d < 0 ? d + ndim() : d;
  LINMOE_CHECK(i >= 0 && i < ndim(), "dimension ", d, " out of range for ", str());
  return shape[i];
}

std::int64_t Tensor::stride(int d) const {
  int i = d < 0 ? d + ndim() : d;
  LINMOE_CHECK(i >= 0 && i < ndim(), "dimension ", d, " out of range for ", str());
  return strides[static_cast<std::size_t>(i)];
}

bool Tensor::is_contiguous() const {
  std::int64_t s = 1;
  for (int i = ndim() - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides[static_cast<std::size_t>(i)] != s) return false;
    s *= shape[i];
  }
  return true;
}

Tensor Tensor::reshape(const Shape& new_shape) const {
  LINMOE_CHECK(is_contiguous(), "reshape of a non-contiguous tensor ", str());
  LINMOE_CHECK(new_shape.numel() == numel(), "reshape ", str(), " to ", new_shape.str());
  return Tensor(data, dtype, device, new_shape);
}

Tensor Tensor::slice(int dim, std::int64_t start, std::int64_t length) const {
  int d = dim < 0 ? dim + ndim() : dim;
  LINMOE_CHECK(d >= 0 && d < ndim(), "slice dimension ", dim, " of ", str());
  LINMOE_CHECK(start >= 0 && length >= 0 && start + length <= shape[d], "slice [", start, ", ",
               start + length, ") of dimension ", d, " of ", str());
  Tensor t = *this;
  t.shape[d] = length;
  t.data = static_cast<char*>(data) + start * strides[static_cast<std::size_t>(d)] *
                                          static_cast<std::int64_t>(dtype_size(dtype));
  return t;
}

Tensor Tensor::select(int dim, std::int64_t index) const {
  int d = dim < 0 ? dim + ndim() : dim;
  Tensor s = slice(d, index, 1);
  Tensor t;
  t.data = s.data;
  t.dtype = dtype;
  t.device = device;
  std::vector<std::int64_t> dims;
  int j = 0;
  for (int i = 0; i < ndim(); ++i) {
    if (i == d) continue;
    dims.push_back(shape[i]);
    t.strides[static_cast<std::size_t>(j++)] = strides[static_cast<std::size_t>(i)];
  }
  t.shape = Shape(dims);
  return t;
}

Tensor Tensor::flatten_to_2d() const {
  LINMOE_CHECK(ndim() >= 1, "flatten of a scalar");
  std::int64_t last = shape[ndim() - 1];
  return reshape(Shape{last == 0 ? 0 : numel() / last, last});
}

std::string Tensor::str() const {
  return str_cat(dtype_name(dtype), shape.str(), "@", device_name(device));
}

void check_shape(const Tensor& t, const Shape& expected, const char* op, const char* arg) {
  LINMOE_CHECK(t.shape == expected, op, ": ", arg, " has shape ", t.shape.str(), ", expected ",
               expected.str());
}

void check_dtype(const Tensor& t, DType expected, const char* op, const char* arg) {
  LINMOE_CHECK(t.dtype == expected, op, ": ", arg, " is ", dtype_name(t.dtype), ", expected ",
               dtype_name(expected));
}

void check_contiguous(const Tensor& t, const char* op, const char* arg) {
  LINMOE_CHECK(t.is_contiguous(), op, ": ", arg, " ", t.str(), " must be contiguous");
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  LINMOE_CHECK(a.dtype == b.dtype, op, ": mixed dtypes ", dtype_name(a.dtype), " and ",
               dtype_name(b.dtype));
}

}  // namespace linmoe
