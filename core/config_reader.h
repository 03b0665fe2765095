// Strict, typed reading of one YAML mapping (a config section). Every read marks its key as
// known; finish() rejects any key that was never read. Every failure is a UserError of one line:
//   config: <section.key> = <value>: <rule>
// Internal to the config loader (included only by core/config_*.cpp; exposes yaml-cpp).
#pragma once
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace linmoe {

class ConfigSection {
 public:
  // `path` is the dotted name of the section ("" for the top level).
  ConfigSection(const YAML::Node& node, std::string path);

  std::string key_path(const std::string& key) const;
  bool has(const std::string& key);  // present and not null; marks it known
  // The raw node (marks it known); an undefined node when absent.
  YAML::Node node(const std::string& key);
  ConfigSection section(const std::string& key);  // absent -> an empty section

  std::int64_t get_int(const std::string& key, std::int64_t def, std::int64_t min,
                       std::int64_t max = INT32_MAX);
  // Absent or null -> nullopt.
  std::optional<std::int64_t> get_optional_int(const std::string& key, std::int64_t min,
                                               std::int64_t max = INT32_MAX);
  std::uint64_t get_uint64(const std::string& key, std::uint64_t def);
  double get_double(const std::string& key, double def, double min, double max, bool min_open,
                    bool max_open);
  bool get_bool(const std::string& key, bool def);
  std::string get_string(const std::string& key, const std::string& def, bool allow_empty = false);
  // One of `choices`.
  std::string get_choice(const std::string& key, const std::string& def,
                         const std::vector<std::string>& choices);
  // An integer, or the word "auto" (returned as 0).
  std::int64_t get_int_or_auto(const std::string& key, std::int64_t min);

  // Fails with `rule` for key (value shown as written).
  [[noreturn]] void fail(const std::string& key, const std::string& rule) const;
  [[noreturn]] void fail_value(const std::string& key, const std::string& value,
                               const std::string& rule) const;
  // Rejects keys that were never read, naming the first one and the known keys.
  void finish() const;

 private:
  YAML::Node node_;
  std::string path_;
  std::set<std::string> known_;
};

// The value of a node as the user wrote it (scalars verbatim, others in YAML flow style).
std::string yaml_value_text(const YAML::Node& n);

}  // namespace linmoe
