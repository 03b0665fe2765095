#include "data/preprocess.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <future>
#include <thread>
#include <vector>

#include "core/check.h"
#include "core/json.h"
#include "data/indexed_dataset.h"

namespace linmoe {
namespace {

using Clock = std::chrono::steady_clock;

// A batch of input lines: the raw bytes and the number of the first line (for messages).
struct LineBatch {
  std::string bytes;
  std::int64_t first_line = 1;
};

// Tokens of a batch's documents, back to back. lengths: [documents]
struct TokenBatch {
  std::vector<std::int32_t> tokens;
  std::vector<std::size_t> lengths;
  std::int64_t empty = 0;
};

bool ends_with(const std::string& s, const char* suffix) {
  const std::size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

TokenBatch tokenize_batch(const LineBatch& batch, const PreprocessOptions& opt, bool jsonl,
                          const Tokenizer& tok) {
  TokenBatch out;
  out.tokens.reserve(batch.bytes.size() / 2);
  std::string_view rest(batch.bytes);
  std::int64_t line_no = batch.first_line;
  while (!rest.empty()) {
    std::size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    std::string_view text = line;
    std::string owned;
    if (jsonl) {
      if (line.find_first_not_of(" \t") == std::string_view::npos) {
        ++line_no;
        continue;  // blank lines between records
      }
      const std::string where = str_cat(opt.input, ":", line_no);
      Json rec = parse_json(line, where);
      const Json* v = rec.is_object() ? rec.find(opt.json_key) : nullptr;
      if (!v || !v->is_string()) {
        throw UserError(str_cat(where, ": no string field '", opt.json_key,
                                "' (choose the field with --json-key)"));
      }
      owned = v->as_string();
      text = owned;
    }
    ++line_no;
    if (text.empty()) {
      ++out.empty;
      continue;
    }
    const std::size_t before = out.tokens.size();
    tok.encode(text, out.tokens);
    if (opt.append_eod) out.tokens.push_back(tok.eod_id());
    out.lengths.push_back(out.tokens.size() - before);
  }
  return out;
}

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  const auto t = static_cast<long long>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}

}  // namespace

PreprocessStats preprocess_corpus(const PreprocessOptions& opt, const Tokenizer& tok) {
  const auto t0 = Clock::now();
  bool jsonl = opt.format == InputFormat::jsonl;
  if (opt.format == InputFormat::auto_detect) {
    jsonl = ends_with(opt.input, ".jsonl") || ends_with(opt.input, ".json");
  }
  std::FILE* in = std::fopen(opt.input.c_str(), "rb");
  if (!in) throw UserError(str_cat(opt.input, ": cannot open: ", std::strerror(errno)));
  std::fseek(in, 0, SEEK_END);
  const long total_bytes = std::ftell(in);
  std::fseek(in, 0, SEEK_SET);

  int workers =
      opt.workers > 0 ? opt.workers : static_cast<int>(std::thread::hardware_concurrency());
  workers = std::max(1, workers);
  const bool tty = ::isatty(STDERR_FILENO) != 0;

  PreprocessStats stats;
  try {
    IndexedDatasetWriter writer(opt.output_prefix, token_dtype_for_vocab(tok.vocab_size()));
    std::deque<std::future<TokenBatch>> in_flight;
    std::vector<char> chunk(std::size_t{4} << 20);
    std::string carry;  // a partial last line
    std::int64_t next_line = 1;
    auto last_report = t0;

    auto write_front = [&]() {
      TokenBatch b = in_flight.front().get();
      in_flight.pop_front();
      const std::int32_t* p = b.tokens.data();
      for (std::size_t len : b.lengths) {
        writer.add_document(p, len);
        p += len;
      }
      stats.empty_skipped += b.empty;
      const auto now = Clock::now();
      if (opt.progress && now - last_report > std::chrono::seconds(tty ? 1 : 10)) {
        last_report = now;
        const double s = std::chrono::duration<double>(now - t0).count();
        const double done = static_cast<double>(stats.input_bytes);
        const double frac = total_bytes > 0 ? done / static_cast<double>(total_bytes) : 0.0;
        std::fprintf(
            stderr, "%spreprocess: %lld documents, %.0f docs/s, %.1f MB/s, %.0f%%, ETA %s%s",
            tty ? "\r" : "", static_cast<long long>(writer.num_documents()),
            static_cast<double>(writer.num_documents()) / s, done / s / 1e6, 100 * frac,
            format_duration(frac > 0 ? s * (1 - frac) / frac : -1).c_str(), tty ? "   " : "\n");
        std::fflush(stderr);
      }
    };

    auto submit = [&](std::string bytes) {
      LineBatch batch{std::move(bytes), next_line};
      next_line += std::count(batch.bytes.begin(), batch.bytes.end(), '\n') + 1;
      in_flight.push_back(
          std::async(std::launch::async, [batch = std::move(batch), &opt, jsonl, &tok]() {
            return tokenize_batch(batch, opt, jsonl, tok);
          }));
      // Bounded: at most two batches per worker in flight, written in order.
      while (in_flight.size() > static_cast<std::size_t>(2 * workers)) write_front();
    };

    while (true) {
      const std::size_t got = std::fread(chunk.data(), 1, chunk.size(), in);
      if (got == 0) break;
      stats.input_bytes += static_cast<std::int64_t>(got);
      carry.append(chunk.data(), got);
      // Cut batches of ~1 MiB at line ends.
      std::size_t start = 0;
      while (carry.size() - start > (std::size_t{1} << 20)) {
        std::size_t cut = carry.find('\n', start + (std::size_t{1} << 20));
        if (cut == std::string::npos) break;
        submit(carry.substr(start, cut - start));
        start = cut + 1;
      }
      carry.erase(0, start);
    }
    if (std::ferror(in)) throw UserError(str_cat(opt.input, ": read error"));
    if (!carry.empty()) submit(std::move(carry));
    while (!in_flight.empty()) write_front();
    stats.documents = writer.num_documents();
    stats.tokens = writer.num_tokens();
    writer.finish();
  } catch (...) {
    std::fclose(in);
    throw;
  }
  std::fclose(in);
  stats.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (opt.progress && tty) std::fprintf(stderr, "\n");
  return stats;
}

}  // namespace linmoe
