// Data benchmark: the loader's samples/s and GB/s on a ≥1 GB Megatron dataset against a plain
// sequential read of the same .bin, the sample-index build, and preprocess MB/s.
//
//   bench_data_loader [DIR=/tmp] [--gb 1.0] [--seq-len 2048] [--micro-batch 8]
//                     [--tokenizer tokenizer.json] [--keep]
//
// Shapes: uint16 tokens (a 257-id vocabulary), documents of 64..8191 tokens, samples of
// seq_len+1 tokens read in the shuffled sample order (random access over the file) and
// converted to i32 micro-batches [micro_batch, seq_len]. The file is in the page cache for both
// the sequential read and the loader (it was just written and read once to warm it), so this
// measures the loader's CPU cost, not the disk. Prints a table; writes DIR/bench_data_loader.json.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/config.h"
#include "core/json.h"
#include "core/log.h"
#include "data/indexed_dataset.h"
#include "data/loader.h"
#include "data/preprocess.h"
#include "data/tokenizer.h"

namespace {

using namespace linmoe;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Writes a dataset of about `bytes` of uint16 tokens.
void write_dataset(const std::string& prefix, double bytes) {
  std::mt19937_64 rng(1);
  IndexedDatasetWriter w(prefix, TokenDType::u16);
  std::vector<std::int32_t> doc;
  double written = 0;
  while (written < bytes) {
    doc.resize(64 + rng() % 8128);
    std::uint64_t r = 0;
    for (std::size_t i = 0; i < doc.size(); ++i) {
      if (i % 8 == 0) r = rng();
      doc[i] = static_cast<std::int32_t>(r & 0xFF);  // byte ids; 256 ends the document
      r >>= 8;
    }
    doc.back() = 256;
    w.add_document(doc.data(), doc.size());
    written += 2.0 * static_cast<double>(doc.size());
  }
  w.finish();
}

// Plain sequential read of the whole file in 16 MiB chunks; returns seconds.
double sequential_read(const std::string& path, std::uint64_t* checksum) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw UserError(path + ": cannot open");
  std::vector<char> buf(std::size_t{16} << 20);
  const auto t0 = Clock::now();
  std::uint64_t sum = 0;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) {
    sum += static_cast<unsigned char>(buf[n - 1]);  // touch it, so nothing is optimised away
  }
  const double s = seconds_since(t0);
  std::fclose(f);
  *checksum = sum;
  return s;
}

// About `bytes` of English-like text, one document per line.
void write_text(const std::string& path, double bytes) {
  static const char* kWords[] = {
      "the",      "of",       "and",       "to",    "in",    "a",      "is",      "that",
      "for",      "it",       "as",        "was",   "with",  "be",     "by",      "on",
      "not",      "he",       "this",      "are",   "or",    "his",    "from",    "at",
      "which",    "but",      "have",      "an",    "had",   "they",   "you",     "were",
      "their",    "one",      "all",       "we",    "can",   "her",    "has",     "there",
      "been",     "if",       "more",      "when",  "will",  "would",  "who",     "so",
      "no",       "model",    "training",  "data",  "token", "linear", "mixture", "experts",
      "sequence", "parallel", "attention", "state", "1999",  "42,",    "it's",    "don't",
      "(see",     "below).",  "Hello",     "World."};
  std::mt19937 rng(2);
  std::ofstream out(path, std::ios::binary);
  std::string line;
  double written = 0;
  while (written < bytes) {
    line.clear();
    const std::size_t len = 200 + rng() % 4000;
    while (line.size() < len) {
      line += kWords[rng() % (sizeof(kWords) / sizeof(kWords[0]))];
      line += ' ';
    }
    line.back() = '\n';
    out << line;
    written += static_cast<double>(line.size());
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "/tmp", tokenizer_json;
  double gb = 1.0;
  int seq_len = 2048, micro_batch = 8;
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_data_loader: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--gb") {
      gb = std::atof(next().c_str());
    } else if (a == "--seq-len") {
      seq_len = std::atoi(next().c_str());
    } else if (a == "--micro-batch") {
      micro_batch = std::atoi(next().c_str());
    } else if (a == "--tokenizer") {
      tokenizer_json = next();
    } else if (a == "--keep") {
      keep = true;
    } else if (a == "-h" || a == "--help") {
      std::printf(
          "usage: bench_data_loader [DIR=/tmp] [--gb 1.0] [--seq-len 2048] "
          "[--micro-batch 8] [--tokenizer tokenizer.json] [--keep]\n");
      return 0;
    } else {
      dir = a;
    }
  }
  try {
    log_init(0, LogLevel::warn);
    const std::string work = dir + "/linmoe_bench_data";
    std::filesystem::create_directories(work);
    const std::string prefix = work + "/bench";
    Json report = Json::object();
    report["threads"] = Json(static_cast<int>(std::thread::hardware_concurrency()));
    report["seq_len"] = Json(seq_len);
    report["micro_batch"] = Json(micro_batch);

    auto t0 = Clock::now();
    write_dataset(prefix, gb * 1e9);
    const double write_s = seconds_since(t0);
    IndexedDataset ds(prefix);
    const double bin_bytes = static_cast<double>(ds.bin_bytes());
    std::printf(
        "dataset: %s.{bin,idx}: %.2f GB, %lld documents, %lld tokens (uint16), written in "
        "%.1f s\n",
        prefix.c_str(), bin_bytes / 1e9, static_cast<long long>(ds.num_documents()),
        static_cast<long long>(ds.num_tokens()), write_s);

    t0 = Clock::now();
    ds.validate_vocab(257);
    const double scan_s = seconds_since(t0);

    std::uint64_t sum = 0;
    sequential_read(data_path(prefix), &sum);  // warm the page cache
    const double seq_s = sequential_read(data_path(prefix), &sum);

    Config cfg;
    cfg.model.vocab_size = 257;
    cfg.train.seq_len = seq_len;
    cfg.train.micro_batch_size = micro_batch;
    cfg.train.global_batch_size = micro_batch;
    cfg.data.train = {{prefix, 1.0}};
    cfg.data.split_fractions[0] = 1.0;
    cfg.data.split_fractions[1] = 0.0;
    cfg.data.split_fractions[2] = 0.0;
    cfg.data.cache_dir = work;
    for (const auto& e : std::filesystem::directory_iterator(work)) {
      if (e.path().extension() == ".sidx") std::filesystem::remove(e.path());
    }
    t0 = Clock::now();
    auto loader = std::make_unique<DataLoader>(cfg, Split::train);
    loader->read_sample(0, std::vector<std::int32_t>(static_cast<std::size_t>(seq_len) + 1).data());
    const double build_s = seconds_since(t0);
    loader.reset();
    t0 = Clock::now();
    loader = std::make_unique<DataLoader>(cfg, Split::train);
    loader->read_sample(0, std::vector<std::int32_t>(static_cast<std::size_t>(seq_len) + 1).data());
    const double cached_s = seconds_since(t0);

    // One pass over the epoch's samples (the whole file, in shuffled order).
    const std::int64_t samples_epoch = loader->sample_index(0).samples_per_epoch();
    const std::int64_t batches = samples_epoch / micro_batch;
    t0 = Clock::now();
    std::int64_t check = 0;
    for (std::int64_t k = 0; k < batches; ++k) {
      Batch b = loader->next_micro_batch();
      check += b.tokens.ptr<std::int32_t>()[0];
    }
    const double load_s = seconds_since(t0);
    const double samples = static_cast<double>(batches * micro_batch);
    const double sample_bytes = samples * (seq_len + 1) * 2.0;  // bytes of .bin read

    std::printf("\n%-48s %12s %12s\n", "measurement", "value", "unit");
    auto row = [](const char* what, double v, const char* unit) {
      std::printf("%-48s %12.2f %12s\n", what, v, unit);
    };
    row("sequential fread of .bin (page cache)", bin_bytes / seq_s / 1e9, "GB/s");
    row("token-id scan at open (validate_vocab)", bin_bytes / scan_s / 1e9, "GB/s");
    row("loader open: id scan + index build (no cache)", build_s * 1e3, "ms");
    row("loader open: id scan + index from cache", cached_s * 1e3, "ms");
    row("loader: samples (shuffled, prefetched)", samples / load_s, "samples/s");
    row("loader: tokens", samples * seq_len / load_s / 1e6, "Mtokens/s");
    row("loader: .bin bytes read", sample_bytes / load_s / 1e9, "GB/s");
    row("loader / sequential read", (sample_bytes / load_s) / (bin_bytes / seq_s), "ratio");
    report["bin_bytes"] = Json(bin_bytes);
    report["sequential_read_gb_s"] = Json(bin_bytes / seq_s / 1e9);
    report["vocab_scan_gb_s"] = Json(bin_bytes / scan_s / 1e9);
    report["loader_open_build_ms"] = Json(build_s * 1e3);
    report["loader_open_cached_ms"] = Json(cached_s * 1e3);
    report["loader_samples_per_s"] = Json(samples / load_s);
    report["loader_gb_s"] = Json(sample_bytes / load_s / 1e9);

    // Preprocess: ~200 MB of text (scaled with --gb), byte tokenizer and optionally a BPE.
    const std::string text = work + "/text.txt";
    write_text(text, 0.2e9 * std::min(1.0, gb));
    std::vector<std::pair<std::string, std::string>> toks = {{"byte", "byte"}};
    if (!tokenizer_json.empty()) toks.push_back({"bpe", tokenizer_json});
    for (const auto& [name, spec] : toks) {
      std::unique_ptr<Tokenizer> tok = make_tokenizer(spec);
      PreprocessOptions opt;
      opt.input = text;
      opt.output_prefix = work + "/pre_" + name;
      PreprocessStats st = preprocess_corpus(opt, *tok);
      const double mbs = static_cast<double>(st.input_bytes) / 1e6 / st.seconds;
      const std::string label = "preprocess, " + name + " tokenizer (all threads)";
      row(label.c_str(), mbs, "MB/s");
      report["preprocess_" + name + "_mb_s"] = Json(mbs);
    }
    std::printf("\n(%u hardware threads; checksum %llu %lld)\n",
                std::thread::hardware_concurrency(), static_cast<unsigned long long>(sum),
                static_cast<long long>(check));
    std::ofstream(dir + "/bench_data_loader.json") << dump_json(report, 2) << "\n";
    loader.reset();
    if (!keep) std::filesystem::remove_all(work);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_data_loader: %s\n", e.what());
    return 2;
  }
  return 0;
}
