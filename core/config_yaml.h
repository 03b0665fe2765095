// YAML plumbing of the config: `--set` overrides onto the parsed tree, and the resolved config
// back to YAML text (printed at start, stored in checkpoints). Internal to core/config_*.cpp.
#pragma once
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "core/config.h"

namespace linmoe {

// Each override is "a.b.c=value"; value is parsed as YAML (numbers, true/false, null, [lists],
// {maps}, strings). Missing sections are created; the strict reader then rejects unknown keys.
void apply_overrides(YAML::Node& root, const std::vector<std::string>& overrides);

// Every key of the Config with its resolved value.
std::string config_to_yaml(const Config& c);

}  // namespace linmoe
