// safetensors files (Hugging Face's format, FORMATS.md 2): an 8-byte little-endian header length
// N, N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
// {string: string}}, then the tensor bytes (offsets relative to the end of the header). linmoe
// writes F32 only, in the order given, padding the header with spaces to 8 bytes as the
// reference writer does. The reader validates everything before use and names the file in
// every error (UserError), so a truncated or tampered file is refused, never a crash.
//
// Files carry a 64-bit checksum (Checksum64) that checkpoints record in meta.json.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/json.h"
#include "data/mapped_file.h"

namespace linmoe {

// The checksum of checkpoint files: four interleaved lanes over 8-byte little-endian words,
// each lane h = (rotl(h ^ w, 27)) · K (an odd 64-bit constant, so every step is a bijection
// and a changed word always changes its lane), the tail bytes zero-padded into a last word, the
// lanes and the byte length folded with murmur3's fmix64. Several GB/s on one core, so it
// never dominates a save; it detects truncation and tampering, it is not cryptographic.
class Checksum64 {
 public:
  static constexpr const char* kAlgorithm = "linmoe-lanes64-v1";
  void update(const void* data, std::size_t bytes);
  std::uint64_t value() const;

 private:
  void block(const unsigned char* p);  // 32 bytes
  std::uint64_t lanes_[4] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL, 0xa4093822299f31d0ULL,
                             0x082efa98ec4e6c89ULL};
  unsigned char pending_[32] = {};
  std::size_t pending_bytes_ = 0;
  std::uint64_t total_ = 0;
};
std::string checksum_hex(std::uint64_t v);  // 16 lowercase hex digits

struct FileDigest {
  std::uint64_t bytes = 0;
  std::uint64_t checksum = 0;
};
// Size and checksum of a whole file (UserError naming it when unreadable).
FileDigest digest_file(const std::string& path);

struct SafetensorsInput {
  std::string name;
  std::vector<std::int64_t> shape;
  const float* data;  // numel(shape) values, host memory
};

// Writes `path` (created or replaced) and fsyncs it. `metadata`: an object of strings (may be
// empty). `after_header`, when set, runs once the header is on disk (tests kill a save there).
// Returns the size and checksum of the bytes written.
FileDigest write_safetensors(const std::string& path, const std::vector<SafetensorsInput>& tensors,
                             const Json& metadata,
                             const std::function<void()>& after_header = nullptr);

struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte range in the data section
  std::int64_t numel() const;
};

// A safetensors file, memory-mapped (loading a large checkpoint does not copy it), validated: the
// header length fits the file, the header is a JSON object, every entry has dtype F32, a
// non-negative shape and data_offsets whose length matches the shape, inside the data section, not
// overlapping, covering it exactly.
class SafetensorsFile {
 public:
  // Reads and validates `path`; the digest of the bytes read is computed on the way.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& tensors() const { return entries_; }
  const SafetensorsEntry* find(const std::string& name) const;  // nullptr when absent
  const float* data(const SafetensorsEntry& e) const;
  const Json& metadata() const { return metadata_; }  // the __metadata__ object (or empty)
  const FileDigest& digest() const { return digest_; }

 private:
  std::string path_;
  MappedFile map_;
  std::size_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  Json metadata_ = Json::object();
  FileDigest digest_;
};

// Syncs a directory (so a rename inside it is durable). Errors are ignored where the
// filesystem does not support it.
void fsync_directory(const std::string& dir);

}  // namespace linmoe
