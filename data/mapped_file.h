// A read-only memory mapping of a whole file (datasets are read in place, never copied).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace linmoe {

class MappedFile {
 public:
  MappedFile() = default;
  // Maps `path` read-only; throws UserError("<path>: cannot open ...") when it cannot.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace linmoe
