#include "core/config_reader.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "core/check.h"

namespace linmoe {

std::string yaml_value_text(const YAML::Node& n) {
  if (!n.IsDefined()) return "<absent>";
  if (n.IsNull()) return "null";
  if (n.IsScalar()) return n.Scalar();
  YAML::Emitter e;
  e << YAML::Flow << n;
  return e.c_str();
}

ConfigSection::ConfigSection(const YAML::Node& node, std::string path)
    : node_(node), path_(std::move(path)) {
  if (node_.IsDefined() && !node_.IsNull() && !node_.IsMap()) {
    throw UserError(str_cat("config: ", path_.empty() ? "<top level>" : path_, " = ",
                            yaml_value_text(node_), ": must be a mapping of keys to values"));
  }
}

std::string ConfigSection::key_path(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

void ConfigSection::fail(const std::string& key, const std::string& rule) const {
  YAML::Node v = node_.IsMap() ? node_[key] : YAML::Node();
  fail_value(key, yaml_value_text(v), rule);
}

void ConfigSection::fail_value(const std::string& key, const std::string& value,
                               const std::string& rule) const {
  throw UserError(str_cat("config: ", key_path(key), " = ", value, ": ", rule));
}

bool ConfigSection::has(const std::string& key) {
  known_.insert(key);
  if (!node_.IsMap()) return false;
  YAML::Node v = node_[key];
  return v.IsDefined() && !v.IsNull();
}

YAML::Node ConfigSection::node(const std::string& key) {
  known_.insert(key);
  if (!node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  return node_[key];
}

ConfigSection ConfigSection::section(const std::string& key) {
  YAML::Node n = node(key);
  if (!n.IsDefined() || n.IsNull())
    return ConfigSection(YAML::Node(YAML::NodeType::Map), key_path(key));
  return ConfigSection(n, key_path(key));
}

static bool parse_integer(const std::string& s, std::int64_t* out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno == ERANGE || *end != '\0') {
    // Accept integral floats written like 1e6 or 2.0e3 (common for token counts).
    char* fend = nullptr;
    double d = std::strtod(s.c_str(), &fend);
    if (*fend != '\0' || !std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e18) {
      return false;
    }
    *out = static_cast<std::int64_t>(d);
    return true;
  }
  *out = v;
  return true;
}

std::int64_t ConfigSection::get_int(const std::string& key, std::int64_t def, std::int64_t min,
                                    std::int64_t max) {
  std::optional<std::int64_t> v = get_optional_int(key, min, max);
  return v ? *v : def;
}

std::optional<std::int64_t> ConfigSection::get_optional_int(const std::string& key,
                                                            std::int64_t min, std::int64_t max) {
  if (!has(key)) return std::nullopt;
  YAML::Node n = node_[key];
  std::int64_t v = 0;
  if (!n.IsScalar() || !parse_integer(n.Scalar(), &v)) fail(key, "must be an integer");
  if (v < min) fail(key, str_cat("must be >= ", min));
  if (v > max) fail(key, str_cat("must be <= ", max));
  return v;
}

std::uint64_t ConfigSection::get_uint64(const std::string& key, std::uint64_t def) {
  if (!has(key)) return def;
  YAML::Node n = node_[key];
  const std::string s = n.IsScalar() ? n.Scalar() : "";
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || s[0] == '-' || *end != '\0' || errno == ERANGE) {
    fail(key, "must be a non-negative integer below 2^64");
  }
  return v;
}

double ConfigSection::get_double(const std::string& key, double def, double min, double max,
                                 bool min_open, bool max_open) {
  if (!has(key)) return def;
  YAML::Node n = node_[key];
  const std::string s = n.IsScalar() ? n.Scalar() : "";
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(v)) fail(key, "must be a finite number");
  if (min_open ? !(v > min) : !(v >= min))
    fail(key, str_cat("must be ", min_open ? "> " : ">= ", min));
  if (max_open ? !(v < max) : !(v <= max))
    fail(key, str_cat("must be ", max_open ? "< " : "<= ", max));
  return v;
}

bool ConfigSection::get_bool(const std::string& key, bool def) {
  if (!has(key)) return def;
  YAML::Node n = node_[key];
  const std::string s = n.IsScalar() ? n.Scalar() : "";
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  fail(key, "must be true or false");
}

std::string ConfigSection::get_string(const std::string& key, const std::string& def,
                                      bool allow_empty) {
  if (!has(key)) return def;
  YAML::Node n = node_[key];
  if (!n.IsScalar()) fail(key, "must be a string");
  if (!allow_empty && n.Scalar().empty()) fail(key, "must not be empty");
  return n.Scalar();
}

std::string ConfigSection::get_choice(const std::string& key, const std::string& def,
                                      const std::vector<std::string>& choices) {
  std::string v = get_string(key, def);
  for (const std::string& c : choices) {
    if (v == c) return v;
  }
  std::string list;
  for (std::size_t i = 0; i < choices.size(); ++i) list += (i ? ", " : "") + choices[i];
  fail_value(key, v, "must be one of " + list);
}

std::int64_t ConfigSection::get_int_or_auto(const std::string& key, std::int64_t min) {
  if (!has(key)) return 0;
  YAML::Node n = node_[key];
  if (n.IsScalar() && n.Scalar() == "auto") return 0;
  std::int64_t v = 0;
  if (!n.IsScalar() || !parse_integer(n.Scalar(), &v)) fail(key, "must be an integer or auto");
  if (v < min) fail(key, str_cat("must be >= ", min, " or auto"));
  return v;
}

void ConfigSection::finish() const {
  if (!node_.IsMap()) return;
  for (const auto& kv : node_) {
    const std::string k = kv.first.Scalar();
    if (known_.count(k)) continue;
    std::string list;
    for (const std::string& known : known_) list += (list.empty() ? "" : ", ") + known;
    throw UserError(str_cat("config: ", key_path(k), " = ", yaml_value_text(kv.second),
                            ": unknown key (", path_.empty() ? "top-level" : path_,
                            " knows: ", list, ")"));
  }
}

}  // namespace linmoe
