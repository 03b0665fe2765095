// Helpers for the data tests: a temporary directory, little-endian byte building (an
// independent writer of spec/FORMATS.md section 1) and "refused with these words" checks.
#pragma once
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"

namespace linmoe::testing {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/linmoe_data_test_XXXXXX";
    char* p = ::mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void put_le(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

// PREFIX.idx bytes exactly as the spec's table lays them out.
inline std::string spec_index_bytes(int dtype_code, const std::vector<std::int32_t>& lengths,
                                    const std::vector<std::int64_t>& offsets,
                                    const std::vector<std::int64_t>& doc_index,
                                    std::uint64_t version = 1) {
  std::string out("MMIDIDX\0\0", 9);
  put_le(out, version, 8);
  put_le(out, static_cast<std::uint64_t>(dtype_code), 1);
  put_le(out, lengths.size(), 8);
  put_le(out, doc_index.size(), 8);
  for (std::int32_t l : lengths) put_le(out, static_cast<std::uint32_t>(l), 4);
  for (std::int64_t o : offsets) put_le(out, static_cast<std::uint64_t>(o), 8);
  for (std::int64_t d : doc_index) put_le(out, static_cast<std::uint64_t>(d), 8);
  return out;
}

// Offsets of back-to-back sequences of `item` bytes per token.
inline std::vector<std::int64_t> packed_offsets(const std::vector<std::int32_t>& lengths,
                                                int item) {
  std::vector<std::int64_t> off;
  std::int64_t o = 0;
  for (std::int32_t l : lengths) {
    off.push_back(o);
    o += static_cast<std::int64_t>(l) * item;
  }
  return off;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs fn and requires a UserError whose message holds every one of `words`.
inline void require_refused(const std::function<void()>& fn,
                            std::initializer_list<std::string> words) {
  try {
    fn();
  } catch (const UserError& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    for (const std::string& w : words) CHECK(msg.find(w) != std::string::npos);
    return;
  }
  FAIL("no UserError was thrown (expected one mentioning " << *words.begin() << ")");
}

}  // namespace linmoe::testing
