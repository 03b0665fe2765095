// safetensors: round trip, and every rejection names the file (FORMATS.md 2).
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "train/safetensors.h"

using namespace linmoe;
namespace fs = std::filesystem;

namespace {

std::string temp_dir(const std::string& name) {
  const std::string d = fs::temp_directory_path() / ("linmoe_st_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}
// A file from a hand-written header (independent of the writer) and `data_bytes` zero bytes.
void write_raw(const std::string& path, const std::string& header, std::size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<std::size_t>(i)] = static_cast<char>(header.size() >> (8 * i));
  out += header;
  out.append(data_bytes, '\0');
  write_all(path, out);
}

// The message of the UserError that opening `path` throws ("" when it opens).
std::string open_error(const std::string& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("safetensors: round trip keeps names, shapes, values, metadata", "[unit]") {
  const std::string dir = temp_dir("roundtrip");
  std::vector<float> a(6), b(5), c;
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = 0.5f * static_cast<float>(i) - 1.25f;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i) * 1e-30f + 3.0f;
  Json meta = Json::object();
  meta["format"] = "pt";
  const FileDigest d = write_safetensors(
      dir + "/x.safetensors",
      {{"layers.0.w", {2, 3}, a.data()}, {"b", {5}, b.data()}, {"empty", {0, 4}, c.data()}}, meta);
  const SafetensorsFile f = SafetensorsFile::open(dir + "/x.safetensors");
  CHECK(d.bytes == fs::file_size(dir + "/x.safetensors"));
  CHECK(d.checksum == f.digest().checksum);
  CHECK(d.checksum == digest_file(dir + "/x.safetensors").checksum);
  REQUIRE(f.tensors().size() == 3);
  CHECK(f.tensors()[0].name == "layers.0.w");
  CHECK(f.tensors()[0].shape == std::vector<std::int64_t>{2, 3});
  CHECK(f.metadata().at("format").as_string() == "pt");
  CHECK(std::memcmp(f.data(*f.find("layers.0.w")), a.data(), 24) == 0);
  CHECK(std::memcmp(f.data(*f.find("b")), b.data(), 20) == 0);
  CHECK(f.find("empty")->numel() == 0);
  CHECK(f.find("missing") == nullptr);
  // The header length is a multiple of 8 (the data section starts aligned).
  const std::string bytes = read_all(dir + "/x.safetensors");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  CHECK(n % 8 == 0);
  CHECK(bytes.size() == 8 + n + 44);
}

TEST_CASE("safetensors: the checksum changes with any byte, the length, and order", "[unit]") {
  std::string s(1000, 'a');
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 7);
  auto sum = [](const std::string& x) {
    Checksum64 c;
    c.update(x.data(), x.size());
    return c.value();
  };
  Checksum64 split;  // streaming in odd pieces gives the same value
  split.update(s.data(), 3);
  split.update(s.data() + 3, 61);
  split.update(s.data() + 64, s.size() - 64);
  CHECK(split.value() == sum(s));
  for (std::size_t at : {0, 1, 31, 32, 500, 999}) {
    std::string t = s;
    t[at] = static_cast<char>(t[at] ^ 1);
    CHECK(sum(t) != sum(s));
  }
  CHECK(sum(s + std::string(1, '\0')) != sum(s));  // zero padding is told apart by the length
  CHECK(sum(s.substr(0, 999)) != sum(s));
  CHECK(checksum_hex(0x1234).size() == 16);
}

TEST_CASE("safetensors: every malformed file is refused with its name", "[unit]") {
  const std::string dir = temp_dir("reject");
  const std::string p = dir + "/bad.safetensors";
  std::vector<float> v(4, 1.0f);
  write_safetensors(dir + "/good.safetensors", {{"w", {4}, v.data()}}, Json::object());
  const std::string good = read_all(dir + "/good.safetensors");

  SECTION("missing file") {
    CHECK_THAT(open_error(dir + "/none.safetensors"), Catch::Contains("none.safetensors"));
  }
  SECTION("shorter than the length field") {
    write_all(p, "abc");
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors") && Catch::Contains("8-byte"));
  }
  SECTION("header length past the end") {
    write_all(p, good.substr(0, 20));
    CHECK_THAT(open_error(p),
               Catch::Contains("bad.safetensors") && Catch::Contains("header length"));
  }
  SECTION("truncated data") {
    write_all(p, good.substr(0, good.size() - 4));
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors") && Catch::Contains("'w'"));
  }
  SECTION("extra bytes after the data") {
    write_all(p, good + "xxxx");
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors") && Catch::Contains("cover"));
  }
  SECTION("header is not JSON") {
    write_raw(p, "{\"w\": {\"dtype\": ", 16);
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors"));
  }
  SECTION("header is not an object") {
    write_raw(p, "[1, 2]  ", 0);
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors") && Catch::Contains("object"));
  }
  SECTION("offsets out of range") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})", 16);
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors") && Catch::Contains("run past"));
  }
  SECTION("offsets that do not match the shape") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16);
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors") && Catch::Contains("'w'"));
  }
  SECTION("reversed offsets") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 16);
    CHECK_THAT(open_error(p),
               Catch::Contains("bad.safetensors") && Catch::Contains("invalid data_offsets"));
  }
  SECTION("overlapping tensors") {
    write_raw(p,
              R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
              12);
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors") && Catch::Contains("overlaps"));
  }
  SECTION("a dtype linmoe does not read") {
    write_raw(p, R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4);
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors") && Catch::Contains("F16"));
  }
  SECTION("negative shape") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4);
    CHECK_THAT(open_error(p), Catch::Contains("bad.safetensors") && Catch::Contains("shape"));
  }
  SECTION("entry without data_offsets") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[1]}})", 4);
    CHECK_THAT(open_error(p),
               Catch::Contains("bad.safetensors") && Catch::Contains("data_offsets"));
  }
  SECTION("non-string metadata") {
    write_raw(p, R"({"__metadata__":{"a":1}})", 0);
    CHECK_THAT(open_error(p),
               Catch::Contains("bad.safetensors") && Catch::Contains("__metadata__"));
  }
}
