// Parameters and their gradients, each in one flat buffer (so clipping, ZeRO sharding and
// gradient reduction work on contiguous memory). Tensors are registered first, then allocated
// once; memory is logged. A parameter knows its global shape and this rank's slice of it, which
// is what checkpoints store and what makes initialisation independent of the layout.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/memory.h"

namespace linmoe {

struct ParamSpec {
  std::string name;                  // MODEL.md section 7 name, e.g. "layers.0.mixer.q_proj.weight"
  Shape shape;                       // this rank's slice
  Shape global_shape;                // the whole tensor
  std::vector<std::int64_t> offset;  // start of the slice in each dimension of global_shape
  bool weight_decay = false;         // MODEL.md 5: rank >= 2 tensors
};

// A whole (unsliced) parameter.
ParamSpec whole_param(std::string name, const Shape& shape);

class ParameterStore {
 public:
  int add(ParamSpec spec);  // returns the parameter's index
  // Closes a region: the parameters added since the previous region (or the start) occupy a
  // flat range whose length allocate() pads to a multiple of `multiple` elements, so that a
  // collective can split it into equal blocks (ZeRO's reduce-scatter over the region's data-
  // parallel group). Parameters not in a closed region form a last region of their own.
  void end_region(std::int64_t multiple);
  struct Region {
    std::int64_t begin = 0, end = 0;  // flat element range (end − begin: a multiple of multiple)
    int first = 0, last = 0;          // parameter indices [first, last)
  };
  const std::vector<Region>& regions() const { return regions_; }
  // Allocates the flat parameter and gradient buffers; no add() afterwards.
  void allocate(Allocator& allocator, DType param_dtype, DType grad_dtype);
  bool allocated() const { return !offsets_.empty() || specs_.empty(); }

  std::size_t size() const { return specs_.size(); }
  const ParamSpec& spec(int i) const { return specs_.at(static_cast<std::size_t>(i)); }
  int find(const std::string& name) const;   // -1 when absent
  int index(const std::string& name) const;  // fails loudly when absent
  Tensor param(int i) const;
  Tensor grad(int i) const;
  Tensor flat_params() const;  // [numel_padded]
  Tensor flat_grads() const;
  std::int64_t numel() const;         // sum of parameter sizes (this rank)
  std::int64_t padded_numel() const;  // flat buffer length including alignment padding
  std::int64_t offset_of(int i) const { return offsets_.at(static_cast<std::size_t>(i)); }

 private:
  std::vector<ParamSpec> specs_;
  std::unordered_map<std::string, int> by_name_;
  std::vector<std::int64_t> offsets_;  // element offset of each parameter in the flat buffers
  std::vector<std::pair<int, std::int64_t>> region_marks_;  // (end parameter index, multiple)
  std::vector<Region> regions_;
  std::int64_t padded_numel_ = 0;
  Buffer params_, grads_;
  DType param_dtype_ = DType::f32, grad_dtype_ = DType::f32;
};

}  // namespace linmoe
