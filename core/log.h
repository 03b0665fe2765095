// Rank-aware logging (spdlog behind a small API, so headers stay free of spdlog).
// Rank 0 logs at the configured level; other ranks log warnings and errors only, unless
// every_rank is set. Messages are built with str_cat-style argument lists:
//   log_info("step ", step, " loss ", loss);
#pragma once
#include <string>

#include "core/check.h"

namespace linmoe {

enum class LogLevel { trace, debug, info, warn, error };

// Parses "trace|debug|info|warn|error"; throws UserError naming `key` otherwise.
LogLevel parse_log_level(const std::string& s, const std::string& key);
void log_init(int rank, LogLevel level, bool every_rank = false);
void log_message(LogLevel level, const std::string& msg);
bool log_enabled(LogLevel level);

template <class... A>
void log_debug(const A&... a) {
  if (log_enabled(LogLevel::debug)) log_message(LogLevel::debug, str_cat(a...));
}
template <class... A>
void log_info(const A&... a) {
  if (log_enabled(LogLevel::info)) log_message(LogLevel::info, str_cat(a...));
}
template <class... A>
void log_warn(const A&... a) {
  if (log_enabled(LogLevel::warn)) log_message(LogLevel::warn, str_cat(a...));
}
template <class... A>
void log_error(const A&... a) {
  log_message(LogLevel::error, str_cat(a...));
}

// "1.50 GiB", "12.0 MiB", "512 B"
std::string format_bytes(double bytes);

}  // namespace linmoe
