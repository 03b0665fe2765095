#include "core/parameter_store.h"

#include "core/log.h"

namespace linmoe {

ParamSpec whole_param(std::string name, const Shape& shape) {
  ParamSpec s;
  s.name = std::move(name);
  s.shape = shape;
  s.global_shape = shape;
  s.offset.assign(static_cast<std::size_t>(shape.ndim()), 0);
  s.weight_decay = shape.ndim() >= 2;
  return s;
}

int ParameterStore::add(ParamSpec spec) {
  LINMOE_CHECK(offsets_.empty(), "parameter '", spec.name, "' added after allocation");
  LINMOE_CHECK(!by_name_.count(spec.name), "parameter '", spec.name, "' registered twice");
  LINMOE_CHECK(spec.shape.ndim() == spec.global_shape.ndim() &&
                   static_cast<int>(spec.offset.size()) == spec.shape.ndim(),
               "parameter '", spec.name, "': slice rank mismatch");
  for (int d = 0; d < spec.shape.ndim(); ++d) {
    LINMOE_CHECK(spec.offset[static_cast<std::size_t>(d)] + spec.shape[d] <= spec.global_shape[d],
                 "parameter '", spec.name, "': slice beyond ", spec.global_shape.str());
  }
  int i = static_cast<int>(specs_.size());
  by_name_[spec.name] = i;
  specs_.push_back(std::move(spec));
  return i;
}

void ParameterStore::end_region(std::int64_t multiple) {
  LINMOE_CHECK(offsets_.empty(), "ParameterStore::end_region after allocate");
  LINMOE_CHECK(multiple >= 1, "region multiple ", multiple);
  region_marks_.emplace_back(static_cast<int>(specs_.size()), multiple);
}

void ParameterStore::allocate(Allocator& allocator, DType param_dtype, DType grad_dtype) {
  LINMOE_CHECK(offsets_.empty(), "parameter store allocated twice");
  param_dtype_ = param_dtype;
  grad_dtype_ = grad_dtype;
  constexpr std::int64_t kAlignElems = 64;  // every tensor starts on a 256-byte boundary (f32)
  const int n_params = static_cast<int>(specs_.size());
  if (region_marks_.empty() || region_marks_.back().first < n_params) {
    region_marks_.emplace_back(n_params, 1);
  }
  std::int64_t off = 0;
  int i = 0;
  for (const auto& [end, multiple] : region_marks_) {
    Region r;
    r.begin = off;
    r.first = i;
    for (; i < end; ++i) {
      offsets_.push_back(off);
      off += (specs_[static_cast<std::size_t>(i)].shape.numel() + kAlignElems - 1) / kAlignElems *
             kAlignElems;
    }
    off = r.begin + (off - r.begin + multiple - 1) / multiple * multiple;
    r.end = off;
    r.last = end;
    if (r.last > r.first) regions_.push_back(r);
  }
  padded_numel_ = off;
  auto n = static_cast<std::size_t>(off);
  params_ = Buffer(allocator, n * dtype_size(param_dtype), "parameters");
  grads_ = Buffer(allocator, n * dtype_size(grad_dtype), "gradients");
  // Zeroed, so the alignment padding never feeds norms, reductions or checksums.
  params_.set_zero();
  grads_.set_zero();
  log_info("parameters: ", specs_.size(), " tensors, ", numel(), " values; ",
           format_bytes(double(params_.bytes())), " weights + ",
           format_bytes(double(grads_.bytes())), " gradients on ", device_name(allocator.device()));
}

int ParameterStore::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? -1 : it->second;
}

int ParameterStore::index(const std::string& name) const {
  int i = find(name);
  LINMOE_CHECK(i >= 0, "no parameter named '", name, "'");
  return i;
}

Tensor ParameterStore::param(int i) const {
  return params_.view(param_dtype_, spec(i).shape,
                      static_cast<std::size_t>(offset_of(i)) * dtype_size(param_dtype_));
}

Tensor ParameterStore::grad(int i) const {
  return grads_.view(grad_dtype_, spec(i).shape,
                     static_cast<std::size_t>(offset_of(i)) * dtype_size(grad_dtype_));
}

Tensor ParameterStore::flat_params() const {
  return params_.view(param_dtype_, Shape{padded_numel_});
}

Tensor ParameterStore::flat_grads() const {
  return grads_.view(grad_dtype_, Shape{padded_numel_});
}

std::int64_t ParameterStore::numel() const {
  std::int64_t n = 0;
  for (const ParamSpec& s : specs_) n += s.shape.numel();
  return n;
}

std::int64_t ParameterStore::padded_numel() const {
  return padded_numel_;
}

}  // namespace linmoe
