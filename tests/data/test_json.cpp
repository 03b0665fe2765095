#include <catch2/catch.hpp>

#include "core/json.h"
#include "data_test_util.h"

using namespace linmoe;
using linmoe::testing::require_refused;

TEST_CASE("json: parses every type, keeps key order and exact integers", "[json]") {
  Json v = parse_json(R"( {"b": 1, "a": [true, false, null, -0.5, 1e3, "x"],
                          "big": 9007199254740993, "neg": -42, "o": {}} )");
  REQUIRE(v.is_object());
  CHECK(v.as_object()[0].first == "b");
  CHECK(v.as_object()[1].first == "a");
  CHECK(v.at("b").is_int());
  CHECK(v.at("big").as_int() == 9007199254740993LL);  // not representable as a double
  CHECK(v.at("neg").as_int() == -42);
  const Json::Array& a = v.at("a").as_array();
  REQUIRE(a.size() == 6);
  CHECK(a[0].as_bool());
  CHECK_FALSE(a[1].as_bool());
  CHECK(a[2].is_null());
  CHECK(a[3].as_double() == -0.5);
  CHECK_FALSE(a[4].is_int());
  CHECK(a[4].as_double() == 1000.0);
  CHECK(a[5].as_string() == "x");
  CHECK(v.at("o").size() == 0);
  CHECK(v.find("missing") == nullptr);
}

TEST_CASE("json: string escapes and UTF-16 surrogate pairs", "[json]") {
  Json v =
      parse_json(R"(["a\"b\\c\/\n\t\r\b\f", "\u00e9\u6771", "\ud83d\ude00", "\ud83d", "é直"])");
  const Json::Array& a = v.as_array();
  CHECK(a[0].as_string() == "a\"b\\c/\n\t\r\b\f");
  CHECK(a[1].as_string() == "\xc3\xa9\xe6\x9d\xb1");
  CHECK(a[2].as_string() == "\xf0\x9f\x98\x80");
  CHECK(a[3].as_string() == "\xef\xbf\xbd");  // a lone surrogate becomes U+FFFD
  CHECK(a[4].as_string() == "\xc3\xa9\xe7\x9b\xb4");
}

TEST_CASE("json: dump round-trips", "[json]") {
  Json v = Json::object();
  v["step"] = Json(std::int64_t{100});
  v["loss"] = Json(2.0 / 3.0);
  v["whole"] = Json(2.0);
  v["name"] = Json("a \"quoted\"\nline\x01");
  v["list"].push_back(Json(1));
  v["list"].push_back(Json());
  v["list"].push_back(Json(true));
  for (int indent : {-1, 2}) {
    const std::string text = dump_json(v, indent);
    INFO(text);
    Json back = parse_json(text);
    CHECK(back == v);
    CHECK(back.at("loss").as_double() == 2.0 / 3.0);  // exact
    CHECK_FALSE(back.at("whole").is_int());           // 2.0 stays a double
  }
  CHECK(
      dump_json(v) ==
      R"({"step":100,"loss":0.6666666666666666,"whole":2.0,"name":"a \"quoted\"\nline\u0001","list":[1,null,true]})");
}

TEST_CASE("json: malformed input is refused with the source, line and column", "[json]") {
  require_refused([] { parse_json("{\"a\": 1,\n  \"b\" 2}", "meta.json"); },
                  {"meta.json:2:7", "expected ':'"});
  require_refused([] { parse_json("[1, 2", "x"); }, {"x:1:6", "end of input"});
  require_refused([] { parse_json("{} {}", "x"); }, {"after the JSON value"});
  require_refused([] { parse_json("\"abc", "x"); }, {"unterminated string"});
  require_refused([] { parse_json("[01]", "x"); }, {"expected ',' or ']'"});
  require_refused([] { parse_json("\"\\q\"", "x"); }, {"bad escape"});
  require_refused([] { parse_json(std::string(600, '['), "deep"); }, {"nesting deeper"});
  require_refused([] { parse_json("{\"a\": \"s\"}").at("a").as_int("a"); }, {"expected a number"});
}
