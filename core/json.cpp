#include "core/json.h"

#include "core/utf8.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/check.h"

namespace linmoe {

Json Json::array(Array a) {
  Json j;
  j.type_ = Type::array;
  j.arr_ = std::move(a);
  return j;
}

Json Json::object(Object o) {
  Json j;
  j.type_ = Type::object;
  j.obj_ = std::move(o);
  return j;
}

const char* Json::type_name(Type t) {
  switch (t) {
    case Type::null:
      return "null";
    case Type::boolean:
      return "a boolean";
    case Type::number:
      return "a number";
    case Type::string:
      return "a string";
    case Type::array:
      return "an array";
    case Type::object:
      return "an object";
  }
  return "?";
}

void Json::wrong_type(Type want, const std::string& what) const {
  throw UserError(str_cat(what, ": expected ", type_name(want), ", found ", type_name(type_)));
}

bool Json::as_bool(const std::string& what) const {
  if (type_ != Type::boolean) wrong_type(Type::boolean, what);
  return bool_;
}

std::int64_t Json::as_int(const std::string& what) const {
  if (type_ != Type::number) wrong_type(Type::number, what);
  if (!is_int_) throw UserError(str_cat(what, ": expected an integer, found ", num_));
  return int_;
}

double Json::as_double(const std::string& what) const {
  if (type_ != Type::number) wrong_type(Type::number, what);
  return num_;
}

const std::string& Json::as_string(const std::string& what) const {
  if (type_ != Type::string) wrong_type(Type::string, what);
  return str_;
}

const Json::Array& Json::as_array(const std::string& what) const {
  if (type_ != Type::array) wrong_type(Type::array, what);
  return arr_;
}

const Json::Object& Json::as_object(const std::string& what) const {
  if (type_ != Type::object) wrong_type(Type::object, what);
  return obj_;
}

Json::Array& Json::mutable_array() {
  if (type_ == Type::null) type_ = Type::array;
  LINMOE_CHECK(type_ == Type::array, "json: not an array");
  return arr_;
}

Json::Object& Json::mutable_object() {
  if (type_ == Type::null) type_ = Type::object;
  LINMOE_CHECK(type_ == Type::object, "json: not an object");
  return obj_;
}

const Json* Json::find(std::string_view key) const {
  if (type_ != Type::object) return nullptr;
  // Last match wins, as in parsing duplicates.
  for (auto it = obj_.rbegin(); it != obj_.rend(); ++it) {
    if (it->first == key) return &it->second;
  }
  return nullptr;
}

const Json& Json::at(std::string_view key) const {
  if (type_ != Type::object) wrong_type(Type::object, str_cat("key '", key, "'"));
  const Json* v = find(key);
  if (!v) throw UserError(str_cat("missing key '", key, "'"));
  return *v;
}

Json& Json::operator[](std::string_view key) {
  Object& o = mutable_object();
  for (auto it = o.rbegin(); it != o.rend(); ++it) {
    if (it->first == key) return it->second;
  }
  o.emplace_back(std::string(key), Json());
  return o.back().second;
}

void Json::push_back(Json v) {
  mutable_array().push_back(std::move(v));
}

std::size_t Json::size() const {
  if (type_ == Type::array) return arr_.size();
  if (type_ == Type::object) return obj_.size();
  return 0;
}

bool Json::operator==(const Json& o) const {
  if (type_ != o.type_) return false;
  switch (type_) {
    case Type::null:
      return true;
    case Type::boolean:
      return bool_ == o.bool_;
    case Type::number:
      return (is_int_ && o.is_int_) ? int_ == o.int_ : num_ == o.num_;
    case Type::string:
      return str_ == o.str_;
    case Type::array:
      return arr_ == o.arr_;
    case Type::object:
      return obj_ == o.obj_;
  }
  return false;
}

// ---- parsing ---------------------------------------------------------------------------------

namespace {

class Parser {
 public:
  Parser(std::string_view text, const std::string& source) : s_(text), source_(source) {}

  Json parse_document() {
    skip_ws();
    Json v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 512;  // a hostile file must not overflow the stack

  [[noreturn]] void fail(const std::string& what) const {
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < pos_ && i < s_.size(); ++i) {
      if (s_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw UserError(str_cat(source_, ":", line, ":", col, ": ", what));
  }

  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool consume_literal(std::string_view lit) {
    if (s_.substr(pos_, lit.size()) == lit) {
      pos_ += lit.size();
      return true;
    }
    return false;
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than 512");
    if (pos_ >= s_.size()) fail("unexpected end of input");
    char c = s_[pos_];
    switch (c) {
      case '{':
        return parse_object(depth);
      case '[':
        return parse_array(depth);
      case '"':
        return Json(parse_string());
      case 't':
        if (consume_literal("true")) return Json(true);
        break;
      case 'f':
        if (consume_literal("false")) return Json(false);
        break;
      case 'n':
        if (consume_literal("null")) return Json();
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    }
    fail(str_cat("unexpected character '", c, "'"));
  }

  Json parse_object(int depth) {
    ++pos_;  // {
    Json obj = Json::object();
    Json::Object& members = obj.mutable_object();
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return obj;
    }
    while (true) {
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a string key");
      std::string key = parse_string();
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != ':') fail("expected ':'");
      ++pos_;
      skip_ws();
      members.emplace_back(std::move(key), parse_value(depth + 1));
      skip_ws();
      if (pos_ >= s_.size()) fail("unexpected end of input in an object");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == '}') {
        ++pos_;
        return obj;
      }
      fail("expected ',' or '}'");
    }
  }

  Json parse_array(int depth) {
    ++pos_;  // [
    Json arr = Json::array();
    Json::Array& items = arr.mutable_array();
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return arr;
    }
    while (true) {
      skip_ws();
      items.push_back(parse_value(depth + 1));
      skip_ws();
      if (pos_ >= s_.size()) fail("unexpected end of input in an array");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == ']') {
        ++pos_;
        return arr;
      }
      fail("expected ',' or ']'");
    }
  }

  unsigned hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<unsigned>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<unsigned>(c - 'A' + 10);
      } else {
        fail("bad hex digit in \\u escape");
      }
    }
    return v;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      // Copy the run of plain characters in one go (vocabularies are large).
      std::size_t start = pos_;
      while (pos_ < s_.size() && s_[pos_] != '"' && s_[pos_] != '\\' &&
             static_cast<unsigned char>(s_[pos_]) >= 0x20) {
        ++pos_;
      }
      out.append(s_.data() + start, pos_ - start);
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c != '\\') fail("control character in a string");
      ++pos_;
      if (pos_ >= s_.size()) fail("unterminated string");
      char e = s_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            // A high surrogate must be followed by a low one; a lone one becomes U+FFFD
            // (what Python and serde do with lenient decoding).
            if (pos_ + 6 <= s_.size() && s_[pos_] == '\\' && s_[pos_ + 1] == 'u') {
              std::size_t save = pos_;
              pos_ += 2;
              unsigned lo = hex4();
              if (lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
              } else {
                pos_ = save;
                cp = 0xFFFD;
              }
            } else {
              cp = 0xFFFD;
            }
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            cp = 0xFFFD;
          }
          utf8_append(out, cp);
          break;
        }
        default:
          fail(str_cat("bad escape '\\", e, "'"));
      }
    }
  }

  Json parse_number() {
    std::size_t start = pos_;
    bool is_int = true;
    if (s_[pos_] == '-') ++pos_;
    if (pos_ >= s_.size() || !(s_[pos_] >= '0' && s_[pos_] <= '9')) fail("bad number");
    if (s_[pos_] == '0') {
      ++pos_;
    } else {
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      is_int = false;
      ++pos_;
      if (pos_ >= s_.size() || !(s_[pos_] >= '0' && s_[pos_] <= '9')) fail("bad number");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      is_int = false;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (pos_ >= s_.size() || !(s_[pos_] >= '0' && s_[pos_] <= '9')) fail("bad number");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    std::string text(s_.substr(start, pos_ - start));
    if (is_int) {
      errno = 0;
      long long v = std::strtoll(text.c_str(), nullptr, 10);
      if (errno != ERANGE) return Json(static_cast<std::int64_t>(v));
      // Too large for int64: keep it as a double.
    }
    return Json(std::strtod(text.c_str(), nullptr));
  }

  std::string_view s_;
  const std::string& source_;
  std::size_t pos_ = 0;
};

void dump_value(const Json& v, int indent, int level, std::string& out) {
  auto newline = [&](int lvl) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent * lvl), ' ');
  };
  switch (v.type()) {
    case Json::Type::null:
      out += "null";
      return;
    case Json::Type::boolean:
      out += v.as_bool() ? "true" : "false";
      return;
    case Json::Type::number: {
      if (v.is_int()) {
        out += std::to_string(v.as_int());
        return;
      }
      double d = v.as_double();
      if (!std::isfinite(d)) {
        out += "null";
        return;
      }
      char buf[32];
      for (int prec = 15; prec <= 17; ++prec) {  // the shortest form that reads back exactly
        std::snprintf(buf, sizeof(buf), "%.*g", prec, d);
        if (std::strtod(buf, nullptr) == d) break;
      }
      std::string s = buf;
      // Keep it a non-integer on re-read: "2" -> "2.0".
      if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
      out += s;
      return;
    }
    case Json::Type::string:
      append_json_string(out, v.as_string());
      return;
    case Json::Type::array: {
      const Json::Array& a = v.as_array();
      out += '[';
      for (std::size_t i = 0; i < a.size(); ++i) {
        if (i) out += ',';
        newline(level + 1);
        dump_value(a[i], indent, level + 1, out);
      }
      if (!a.empty()) newline(level);
      out += ']';
      return;
    }
    case Json::Type::object: {
      const Json::Object& o = v.as_object();
      out += '{';
      for (std::size_t i = 0; i < o.size(); ++i) {
        if (i) out += ',';
        newline(level + 1);
        append_json_string(out, o[i].first);
        out += indent < 0 ? ":" : ": ";
        dump_value(o[i].second, indent, level + 1, out);
      }
      if (!o.empty()) newline(level);
      out += '}';
      return;
    }
  }
}

}  // namespace

Json parse_json(std::string_view text, const std::string& source) {
  return Parser(text, source).parse_document();
}

Json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(str_cat(path, ": cannot open file"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_json(ss.str(), path);
}

std::string dump_json(const Json& v, int indent) {
  std::string out;
  dump_value(v, indent, 0, out);
  return out;
}

void append_json_string(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

Json int_array(const std::vector<std::int64_t>& v) {
  Json a = Json::array();
  for (std::int64_t x : v) a.push_back(Json(x));
  return a;
}

std::vector<std::int64_t> read_int_array(const Json& j, const std::string& what) {
  std::vector<std::int64_t> v;
  for (const Json& x : j.as_array(what)) v.push_back(x.as_int(what));
  return v;
}

}  // namespace linmoe
