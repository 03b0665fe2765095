// A small JSON reader and writer (RFC 8259): tokenizer.json, checkpoint meta.json, metrics lines.
// Values keep object keys in file order (a writer's output is stable and diffable) and integers
// exactly (an int64 as written, not through a double).
//
//   Json v = parse_json(text, "meta.json");     // throws UserError("meta.json:3:14: ...")
//   v.at("step").as_int();  v.find("opt");  v["x"] = Json(1.5);  dump_json(v, 2)
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace linmoe {

class Json {
 public:
  enum class Type { null, boolean, number, string, array, object };
  using Array = std::vector<Json>;
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() = default;  // null
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::boolean), bool_(b) {}
  Json(int v) : Json(static_cast<std::int64_t>(v)) {}
  Json(std::int64_t v)
      : type_(Type::number), is_int_(true), int_(v), num_(static_cast<double>(v)) {}
  Json(std::uint64_t v) : Json(static_cast<std::int64_t>(v)) {}
  Json(double v) : type_(Type::number), num_(v) {}
  Json(const char* s) : type_(Type::string), str_(s) {}
  Json(std::string s) : type_(Type::string), str_(std::move(s)) {}
  static Json array(Array a = {});
  static Json object(Object o = {});

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::null; }
  bool is_bool() const { return type_ == Type::boolean; }
  bool is_number() const { return type_ == Type::number; }
  bool is_int() const { return type_ == Type::number && is_int_; }  // written without . or e
  bool is_string() const { return type_ == Type::string; }
  bool is_array() const { return type_ == Type::array; }
  bool is_object() const { return type_ == Type::object; }

  // Typed access; the wrong type throws UserError naming `what` (e.g. the key's path).
  bool as_bool(const std::string& what = "value") const;
  std::int64_t as_int(const std::string& what = "value") const;  // exact integers only
  double as_double(const std::string& what = "value") const;
  const std::string& as_string(const std::string& what = "value") const;
  const Array& as_array(const std::string& what = "value") const;
  const Object& as_object(const std::string& what = "value") const;
  Array& mutable_array();
  Object& mutable_object();

  // Objects: the member or nullptr; at() throws UserError when missing.
  const Json* find(std::string_view key) const;
  const Json& at(std::string_view key) const;
  // Inserts null when missing (turns a null into an object first).
  Json& operator[](std::string_view key);
  void push_back(Json v);  // arrays (turns a null into an array first)
  std::size_t size() const;

  bool operator==(const Json& o) const;
  bool operator!=(const Json& o) const { return !(*this == o); }

 private:
  static const char* type_name(Type t);
  [[noreturn]] void wrong_type(Type want, const std::string& what) const;
  Type type_ = Type::null;
  bool bool_ = false;
  bool is_int_ = false;
  std::int64_t int_ = 0;
  double num_ = 0.0;
  std::string str_;
  Array arr_;
  Object obj_;
};

// Parses one JSON text (surrounding whitespace allowed). Errors are UserErrors
// "<source>:<line>:<col>: <what>". Duplicate keys keep the last value (as most readers do).
Json parse_json(std::string_view text, const std::string& source = "<json>");

// [1, 2, 3] from integers, and back (UserError naming `what` when it is not an integer array).
Json int_array(const std::vector<std::int64_t>& v);
std::vector<std::int64_t> read_int_array(const Json& j, const std::string& what);
// Reads and parses a file; errors name the path.
Json read_json_file(const std::string& path);

// Compact (indent < 0: one line, no spaces) or pretty-printed. Doubles round-trip exactly
// (shortest %.17g form); NaN and infinities, which JSON lacks, are written as null.
std::string dump_json(const Json& v, int indent = -1);
// Appends `s` as a JSON string literal (quotes, escapes; UTF-8 passes through).
void append_json_string(std::string& out, std::string_view s);

}  // namespace linmoe
