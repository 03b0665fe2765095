// metrics.jsonl (FORMATS.md 3): one JSON object a line, appended and flushed every line, so a
// resumed run continues the same file and a crash loses nothing written.
#pragma once
#include <cstdio>
#include <string>

#include "core/json.h"

namespace linmoe {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  explicit MetricsWriter(const std::string& path);  // creates parent folders; appends
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const Json& line);
  const std::string& path() const { return path_; }

 private:
  std::FILE* file_ = nullptr;
  std::string path_;
};

// "1h02m", "3m12s", "42s", "0.8s"
std::string format_duration(double seconds);

}  // namespace linmoe
