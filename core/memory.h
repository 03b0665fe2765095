// Owning memory: allocators per device, Buffer (one allocation), Arena (bump allocation of
// activations, planned and sized up front). Live and peak bytes are tracked per device and logged.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace linmoe {

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  virtual void* allocate(std::size_t bytes) = 0;  // never returns null for bytes > 0
  virtual void deallocate(void* p, std::size_t bytes) = 0;
  virtual void set_zero(void* p, std::size_t bytes) = 0;  // memset to 0 on the device
};

// 64-byte aligned host memory (cache lines, AVX-512 loads).
Allocator& host_allocator();

struct MemoryStats {
  std::size_t live_bytes = 0;
  std::size_t peak_bytes = 0;
};
// Bookkeeping shared by all allocators of a device.
MemoryStats memory_stats(Device d);
void record_allocation(Device d, std::ptrdiff_t delta_bytes);
void reset_peak_memory(Device d);

class Buffer {
 public:
  Buffer() = default;
  Buffer(Allocator& allocator, std::size_t bytes, std::string name);
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return allocator_ ? allocator_->device() : Device::cpu; }
  const std::string& name() const { return name_; }
  void set_zero();  // every byte 0
  // A contiguous tensor over the buffer starting at byte_offset.
  Tensor view(DType dtype, const Shape& shape, std::size_t byte_offset = 0) const;

 private:
  void release();
  Allocator* allocator_ = nullptr;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  std::string name_;
};

// Bump allocator for activations: a step's tensors are allocated in order and released by
// rewinding to a mark. It starts with the planned capacity (one block); if a plan was too small
// it adds a block and says so once, instead of failing mid-run. used()/peak() count bytes.
class Arena {
 public:
  struct Mark {
    std::size_t block = 0, offset = 0, used = 0;
  };
  Arena() = default;
  Arena(Allocator& allocator, std::size_t capacity_bytes, std::string name);

  Tensor allocate(DType dtype, const Shape& shape);
  Mark mark() const { return {block_, offset_, used_}; }
  void release(const Mark& m);
  void reset() { release(Mark{}); }
  std::size_t capacity() const;  // bytes in all blocks
  std::size_t used() const { return used_; }
  std::size_t peak() const { return peak_; }
  const std::string& name() const { return name_; }

 private:
  Allocator* allocator_ = nullptr;
  std::string name_;
  std::vector<Buffer> blocks_;
  std::size_t block_ = 0, offset_ = 0, used_ = 0, peak_ = 0;
};

constexpr std::size_t kAlignment = 256;  // covers cache lines, AVX-512 and CUDA's 256-byte rule
inline std::size_t align_up(std::size_t n, std::size_t a = kAlignment) {
  return (n + a - 1) / a * a;
}

}  // namespace linmoe
