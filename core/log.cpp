#include "core/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>

namespace linmoe {
namespace {

spdlog::level::level_enum to_spdlog(LogLevel l) {
  switch (l) {
    case LogLevel::trace:
      return spdlog::level::trace;
    case LogLevel::debug:
      return spdlog::level::debug;
    case LogLevel::info:
      return spdlog::level::info;
    case LogLevel::warn:
      return spdlog::level::warn;
    case LogLevel::error:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

std::shared_ptr<spdlog::logger>& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto lg = std::make_shared<spdlog::logger>("linmoe",
                                               std::make_shared<spdlog::sinks::stdout_sink_mt>());
    lg->set_pattern("[%H:%M:%S] %v");
    lg->set_level(spdlog::level::info);
    lg->flush_on(spdlog::level::trace);
    return lg;
  }();
  return l;
}

}  // namespace

LogLevel parse_log_level(const std::string& s, const std::string& key) {
  if (s == "trace") return LogLevel::trace;
  if (s == "debug") return LogLevel::debug;
  if (s == "info") return LogLevel::info;
  if (s == "warn") return LogLevel::warn;
  if (s == "error") return LogLevel::error;
  throw UserError(str_cat(key, " = '", s, "': must be one of trace, debug, info, warn, error"));
}

void log_init(int rank, LogLevel level, bool every_rank) {
  auto& lg = logger();
  // Rank 0 prints plainly; other ranks tag their lines so interleaved output stays readable.
  lg->set_pattern(rank == 0 ? "[%H:%M:%S] %v"
                            : "[%H:%M:%S] [rank " + std::to_string(rank) + "] %v");
  LogLevel effective = (rank == 0 || every_rank) ? level : LogLevel::warn;
  if (effective < level) effective = level;
  lg->set_level(to_spdlog(effective));
}

bool log_enabled(LogLevel level) {
  return logger()->should_log(to_spdlog(level));
}

void log_message(LogLevel level, const std::string& msg) {
  switch (level) {
    case LogLevel::warn:
      logger()->log(to_spdlog(level), "warning: {}", msg);
      break;
    case LogLevel::error:
      logger()->log(to_spdlog(level), "error: {}", msg);
      break;
    default:
      logger()->log(to_spdlog(level), "{}", msg);
  }
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

}  // namespace linmoe
