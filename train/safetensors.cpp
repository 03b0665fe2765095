#include "train/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/check.h"

namespace linmoe {
namespace {

constexpr std::uint64_t kLaneMultiplier =
    0x9e3779b97f4a7c15ULL;                             // odd: multiplication is a bijection
constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;  // the reference reader's limit

std::uint64_t rotl(std::uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}

std::uint64_t load_le64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::uint64_t fmix64(std::uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

std::string errno_text() {
  return std::strerror(errno);
}

// POSIX writes so the file can be fsynced before the checkpoint is declared complete.
class OutFile {
 public:
  explicit OutFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw UserError(str_cat(path, ": cannot create: ", errno_text()), false);
  }
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  void write(const void* data, std::size_t bytes) {
    checksum_.update(data, bytes);
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      const ssize_t n = ::write(fd_, p, std::min<std::size_t>(bytes, std::size_t{1} << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw UserError(str_cat(path_, ": cannot write: ", errno_text()), false);
      p += n;
      bytes -= static_cast<std::size_t>(n);
      written_ += static_cast<std::uint64_t>(n);
    }
  }
  FileDigest finish() {
    if (::fsync(fd_) != 0) throw UserError(str_cat(path_, ": fsync failed: ", errno_text()), false);
    if (::close(fd_) != 0) throw UserError(str_cat(path_, ": close failed: ", errno_text()), false);
    fd_ = -1;
    return {written_, checksum_.value()};
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t written_ = 0;
  Checksum64 checksum_;
};

std::int64_t numel_of(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

}  // namespace

void Checksum64::block(const unsigned char* p) {
  for (int l = 0; l < 4; ++l)
    lanes_[l] = rotl(lanes_[l] ^ load_le64(p + 8 * l), 27) * kLaneMultiplier;
}

void Checksum64::update(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += bytes;
  if (pending_bytes_ > 0) {
    const std::size_t take = std::min(bytes, 32 - pending_bytes_);
    std::memcpy(pending_ + pending_bytes_, p, take);
    pending_bytes_ += take;
    p += take;
    bytes -= take;
    if (pending_bytes_ < 32) return;
    block(pending_);
    pending_bytes_ = 0;
  }
  for (; bytes >= 32; p += 32, bytes -= 32) block(p);
  std::memcpy(pending_, p, bytes);
  pending_bytes_ = bytes;
}

std::uint64_t Checksum64::value() const {
  std::uint64_t lanes[4] = {lanes_[0], lanes_[1], lanes_[2], lanes_[3]};
  if (pending_bytes_ > 0) {  // the tail, zero-padded; the length below tells the padding apart
    unsigned char last[32] = {};
    std::memcpy(last, pending_, pending_bytes_);
    for (int l = 0; l < 4; ++l)
      lanes[l] = rotl(lanes[l] ^ load_le64(last + 8 * l), 27) * kLaneMultiplier;
  }
  std::uint64_t h = fmix64(total_);
  for (std::uint64_t lane : lanes) h = fmix64(h ^ lane) * kLaneMultiplier;
  return fmix64(h);
}

std::string checksum_hex(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

FileDigest digest_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(str_cat(path, ": cannot open: ", errno_text()), false);
  Checksum64 c;
  std::vector<char> buf(std::size_t{1} << 22);
  FileDigest d;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = static_cast<std::size_t>(in.gcount());
    c.update(buf.data(), n);
    d.bytes += n;
  }
  d.checksum = c.value();
  return d;
}

FileDigest write_safetensors(const std::string& path, const std::vector<SafetensorsInput>& tensors,
                             const Json& metadata, const std::function<void()>& after_header) {
  Json header = Json::object();
  if (metadata.is_object() && metadata.size() > 0) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const SafetensorsInput& t : tensors) {
    LINMOE_CHECK(t.name != "__metadata__" && header.find(t.name) == nullptr,
                 "safetensors: duplicate or reserved tensor name '", t.name, "'");
    Json shape = Json::array();
    for (std::int64_t d : t.shape) shape.push_back(Json(d));
    const std::uint64_t bytes = static_cast<std::uint64_t>(numel_of(t.shape)) * sizeof(float);
    Json e = Json::object();
    e["dtype"] = "F32";
    e["shape"] = shape;
    Json offsets = Json::array();
    offsets.push_back(Json(offset));
    offsets.push_back(Json(offset + bytes));
    e["data_offsets"] = offsets;
    header[t.name] = e;
    offset += bytes;
  }
  std::string text = dump_json(header);
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  OutFile out(path);
  out.write(len, 8);
  out.write(text.data(), text.size());
  if (after_header) after_header();
  // The host is little-endian (x86-64, aarch64), so fp32 values are written as they lie.
  for (const SafetensorsInput& t : tensors) {
    out.write(t.data, static_cast<std::size_t>(numel_of(t.shape)) * sizeof(float));
  }
  return out.finish();
}

std::int64_t SafetensorsEntry::numel() const {
  return numel_of(shape);
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  auto bad = [&](const std::string& what) {
    return UserError(str_cat(path, ": not a valid safetensors file: ", what));
  };
  f.map_ = MappedFile(path);
  const unsigned char* bytes = f.map_.data();
  Checksum64 c;
  c.update(bytes, f.map_.size());
  f.digest_ = {f.map_.size(), c.value()};
  const std::uint64_t size = f.map_.size();
  if (size < 8)
    throw bad(str_cat("the file has ", size, " bytes, fewer than the 8-byte header length"));
  const std::uint64_t n = load_le64(bytes);
  if (n > kMaxHeaderBytes || n > size - 8) {
    throw bad(str_cat("header length ", n, " does not fit the file's ", size, " bytes"));
  }
  f.data_start_ = static_cast<std::size_t>(8 + n);
  const std::uint64_t data_bytes = size - 8 - n;
  Json header;
  try {
    header = parse_json(
        std::string_view(reinterpret_cast<const char*>(bytes) + 8, static_cast<std::size_t>(n)),
        path + " (header)");
  } catch (const UserError& e) {
    throw bad(e.what());
  }
  if (!header.is_object()) throw bad("the header is not a JSON object");
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& [name, v] : header.as_object()) {
    if (name == "__metadata__") {
      if (!v.is_object()) throw bad("__metadata__ is not an object");
      for (const auto& [k, mv] : v.as_object()) {
        if (!mv.is_string()) throw bad(str_cat("__metadata__.", k, " is not a string"));
      }
      f.metadata_ = v;
      continue;
    }
    SafetensorsEntry e;
    e.name = name;
    const Json* dtype = v.is_object() ? v.find("dtype") : nullptr;
    const Json* shape = v.is_object() ? v.find("shape") : nullptr;
    const Json* offsets = v.is_object() ? v.find("data_offsets") : nullptr;
    if (!dtype || !shape || !offsets || !dtype->is_string() || !shape->is_array() ||
        !offsets->is_array() || offsets->size() != 2) {
      throw bad(str_cat("tensor '", name, "' needs dtype, shape and data_offsets [begin, end]"));
    }
    e.dtype = dtype->as_string();
    if (e.dtype != "F32")
      throw bad(str_cat("tensor '", name, "' has dtype ", e.dtype, " (linmoe reads F32)"));
    for (const Json& d : shape->as_array()) {
      if (!d.is_int() || d.as_int() < 0 || d.as_int() > (std::int64_t{1} << 40)) {
        throw bad(str_cat("tensor '", name, "' has an invalid shape"));
      }
      e.shape.push_back(d.as_int());
    }
    const Json& b = offsets->as_array()[0];
    const Json& en = offsets->as_array()[1];
    if (!b.is_int() || !en.is_int() || b.as_int() < 0 || en.as_int() < b.as_int()) {
      throw bad(str_cat("tensor '", name, "' has invalid data_offsets"));
    }
    e.begin = static_cast<std::uint64_t>(b.as_int());
    e.end = static_cast<std::uint64_t>(en.as_int());
    if (e.end > data_bytes) {
      throw bad(str_cat("tensor '", name, "' data_offsets [", e.begin, ", ", e.end,
                        "] run past the data section's ", data_bytes, " bytes (truncated?)"));
    }
    if (e.end - e.begin != static_cast<std::uint64_t>(e.numel()) * sizeof(float)) {
      throw bad(str_cat("tensor '", name, "' has ", e.end - e.begin, " bytes for shape of ",
                        e.numel(), " F32 values"));
    }
    ranges.emplace_back(e.begin, e.end);
    f.entries_.push_back(std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t at = 0;
  for (const auto& [b, e] : ranges) {
    if (b != at) throw bad(str_cat("tensor data overlaps or leaves a hole at byte ", at));
    at = e;
  }
  if (at != data_bytes) {
    throw bad(str_cat("the tensors cover ", at, " of the data section's ", data_bytes, " bytes"));
  }
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  for (const SafetensorsEntry& e : entries_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

const float* SafetensorsFile::data(const SafetensorsEntry& e) const {
  return reinterpret_cast<const float*>(map_.data() + data_start_ + e.begin);
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

}  // namespace linmoe
