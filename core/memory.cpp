#include "core/memory.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/log.h"

namespace linmoe {
namespace {

struct DeviceCounters {
  std::atomic<std::size_t> live{0};
  std::atomic<std::size_t> peak{0};
};

DeviceCounters& counters(Device d) {
  static DeviceCounters c[2];
  return c[d == Device::cpu ? 0 : 1];
}

class HostAllocator final : public Allocator {
 public:
  Device device() const override { return Device::cpu; }
  void* allocate(std::size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* p = std::aligned_alloc(kAlignment, align_up(bytes));
    if (!p) fatal_error(str_cat("out of host memory allocating ", format_bytes(double(bytes))));
    record_allocation(Device::cpu, static_cast<std::ptrdiff_t>(bytes));
    return p;
  }
  void deallocate(void* p, std::size_t bytes) override {
    if (!p) return;
    std::free(p);
    record_allocation(Device::cpu, -static_cast<std::ptrdiff_t>(bytes));
  }
  void set_zero(void* p, std::size_t bytes) override {
    if (p) std::memset(p, 0, bytes);
  }
};

}  // namespace

Allocator& host_allocator() {
  static HostAllocator a;
  return a;
}

MemoryStats memory_stats(Device d) {
  return MemoryStats{counters(d).live.load(), counters(d).peak.load()};
}

void record_allocation(Device d, std::ptrdiff_t delta_bytes) {
  DeviceCounters& c = counters(d);
  std::size_t now = c.live.fetch_add(static_cast<std::size_t>(delta_bytes)) +
                    static_cast<std::size_t>(delta_bytes);
  std::size_t peak = c.peak.load();
  while (now > peak && !c.peak.compare_exchange_weak(peak, now)) {
  }
}

void reset_peak_memory(Device d) {
  counters(d).peak.store(counters(d).live.load());
}

Buffer::Buffer(Allocator& allocator, std::size_t bytes, std::string name)
    : allocator_(&allocator), bytes_(bytes), name_(std::move(name)) {
  data_ = allocator.allocate(bytes);
  log_debug("allocated ", name_, ": ", format_bytes(double(bytes)), " on ",
            device_name(allocator.device()));
}

Buffer::~Buffer() {
  release();
}

Buffer::Buffer(Buffer&& o) noexcept
    : allocator_(o.allocator_), data_(o.data_), bytes_(o.bytes_), name_(std::move(o.name_)) {
  o.allocator_ = nullptr;
  o.data_ = nullptr;
  o.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    allocator_ = o.allocator_;
    data_ = o.data_;
    bytes_ = o.bytes_;
    name_ = std::move(o.name_);
    o.allocator_ = nullptr;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void Buffer::release() {
  if (allocator_ && data_) allocator_->deallocate(data_, bytes_);
  data_ = nullptr;
  bytes_ = 0;
}

void Buffer::set_zero() {
  if (allocator_ && data_) allocator_->set_zero(data_, bytes_);
}

Tensor Buffer::view(DType dtype, const Shape& shape, std::size_t byte_offset) const {
  std::size_t need = byte_offset + static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
  LINMOE_CHECK(need <= bytes_, "view of ", need, " bytes in buffer '", name_, "' of ", bytes_);
  return Tensor(static_cast<char*>(data_) + byte_offset, dtype, device(), shape);
}

Arena::Arena(Allocator& allocator, std::size_t capacity_bytes, std::string name)
    : allocator_(&allocator), name_(std::move(name)) {
  blocks_.emplace_back(allocator, std::max<std::size_t>(capacity_bytes, kAlignment), name_);
  log_debug("arena '", name_, "': ", format_bytes(double(capacity_bytes)), " on ",
            device_name(allocator.device()));
}

Tensor Arena::allocate(DType dtype, const Shape& shape) {
  LINMOE_CHECK(allocator_, "allocation from an unset arena");
  const std::size_t bytes = align_up(static_cast<std::size_t>(shape.numel()) * dtype_size(dtype));
  while (offset_ + bytes > blocks_[block_].bytes()) {
    // The current block is full: move on, adding a block when none is left.
    used_ += blocks_[block_].bytes() - offset_;
    ++block_;
    offset_ = 0;
    if (block_ == blocks_.size()) {
      const std::size_t size = std::max(bytes, blocks_.front().bytes() / 2);
      log_warn("arena '", name_, "' grew by ", format_bytes(double(size)), " beyond its plan of ",
               format_bytes(double(blocks_.front().bytes())));
      blocks_.emplace_back(*allocator_, size, name_);
    }
  }
  Tensor t = blocks_[block_].view(dtype, shape, offset_);
  offset_ += bytes;
  used_ += bytes;
  if (used_ > peak_) peak_ = used_;
  return t;
}

void Arena::release(const Mark& m) {
  LINMOE_CHECK(m.used <= used_, "arena '", name_, "' release to ", m.used, " above ", used_);
  block_ = m.block;
  offset_ = m.offset;
  used_ = m.used;
}

std::size_t Arena::capacity() const {
  std::size_t n = 0;
  for (const Buffer& b : blocks_) n += b.bytes();
  return n;
}

}  // namespace linmoe
