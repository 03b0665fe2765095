// Owning memory: allocators per device, Buffer (one allocation), Arena (bump allocation of
// activations, planned and sized up front). Live and peak bytes are tracked per device and logged.
#pragma once
#include <cstddef>
#include <string>

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

// Bump allocator over one buffer: activations of a step are allocated in order and released by
// rewinding to a mark. Exhausting it is a planning bug and fails loudly with the sizes.
class Arena {
 public:
  Arena() = default;
  Arena(Allocator& allocator, std::size_t capacity_bytes, std::string name);

  Tensor allocate(DType dtype, const Shape& shape);
  std::size_t mark() const { return top_; }
  void release(std::size_t mark);
  void reset() { release(0); }
  std::size_t capacity() const { return buffer_.bytes(); }
  std::size_t used() const { return top_; }
  std::size_t peak() const { return peak_; }

 private:
  Buffer buffer_;
  std::size_t top_ = 0;
  std::size_t peak_ = 0;
};

constexpr std::size_t kAlignment = 256;  // covers cache lines, AVX-512 and CUDA's 256-byte rule
inline std::size_t align_up(std::size_t n, std::size_t a = kAlignment) {
  return (n + a - 1) / a * a;
}

}  // namespace linmoe
