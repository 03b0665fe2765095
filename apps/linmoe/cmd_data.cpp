// linmoe data PREFIX: validates a Megatron indexed dataset and prints its summary.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "apps/linmoe/args.h"
#include "apps/linmoe/commands.h"
#include "core/check.h"
#include "core/log.h"
#include "data/indexed_dataset.h"
#include "data/tokenizer.h"

namespace linmoe {
namespace {

std::string with_commas(long long v) {
  std::string s = std::to_string(v < 0 ? -v : v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3)
    s.insert(static_cast<std::size_t>(i), ",");
  return v < 0 ? "-" + s : s;
}

}  // namespace

int cmd_data(int argc, char** argv) {
  ArgParser args(
      "linmoe data",
      "Validates a Megatron indexed dataset (PREFIX.idx + PREFIX.bin) and prints its\n"
      "documents, tokens, dtype and length statistics. Exit status 2 when it is invalid.");
  std::string prefix, tokenizer;
  int vocab_size = 0, show = 0;
  args.positional("PREFIX", &prefix, "the dataset prefix (PREFIX.bin, PREFIX.idx)");
  args.option("--vocab-size", &vocab_size, "V", "also refuse token ids >= V");
  args.option("--show", &show, "N", "print the first N documents (decoded with --tokenizer)");
  args.option("--tokenizer", &tokenizer, "byte|FILE", "tokenizer for --show; default byte");
  if (!args.parse(argc, argv)) return 0;
  // Accept "PREFIX.idx" / "PREFIX.bin" too.
  for (const char* ext : {".idx", ".bin"}) {
    if (prefix.size() > 4 && prefix.compare(prefix.size() - 4, 4, ext) == 0) {
      prefix.resize(prefix.size() - 4);
    }
  }
  IndexedDataset ds(prefix);
  const TokenRange range = ds.token_range();
  if (range.max >= range.min && range.min < 0) {
    throw UserError(str_cat(data_path(prefix), ": negative token id ", range.min));
  }
  if (vocab_size > 0) ds.validate_vocab(vocab_size);

  std::vector<std::int64_t> lengths = ds.document_lengths();
  std::vector<std::int64_t> sorted = lengths;
  std::sort(sorted.begin(), sorted.end());
  auto pct = [&](double p) -> long long {
    if (sorted.empty()) return 0;
    const auto i = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
    return static_cast<long long>(sorted[i]);
  };
  const std::size_t item = token_dtype_size(ds.dtype());
  std::printf("dataset      %s\n", prefix.c_str());
  std::printf(
      "files        %s (.idx), %s (.bin)\n",
      format_bytes(static_cast<double>(34 + 12 * ds.num_sequences() + 8 * (ds.num_documents() + 1)))
          .c_str(),
      format_bytes(static_cast<double>(ds.bin_bytes())).c_str());
  std::printf("dtype        %s (code %d, %zu bytes)\n", token_dtype_name(ds.dtype()),
              static_cast<int>(ds.dtype()), item);
  std::printf("sequences    %s\n", with_commas(ds.num_sequences()).c_str());
  std::printf("documents    %s\n", with_commas(ds.num_documents()).c_str());
  std::printf("tokens       %s\n", with_commas(ds.num_tokens()).c_str());
  if (range.max >= range.min) {
    std::printf("token ids    %lld .. %lld\n", static_cast<long long>(range.min),
                static_cast<long long>(range.max));
  }
  if (!sorted.empty()) {
    const double mean = static_cast<double>(ds.num_tokens()) / static_cast<double>(sorted.size());
    std::printf(
        "doc tokens   min %lld, p10 %lld, median %lld, mean %.1f, p90 %lld, p99 %lld, max %lld\n",
        static_cast<long long>(sorted.front()), pct(0.1), pct(0.5), mean, pct(0.9), pct(0.99),
        static_cast<long long>(sorted.back()));
  }
  std::printf("valid        yes%s\n",
              vocab_size > 0 ? str_cat(" (token ids < ", vocab_size, ")").c_str() : "");

  if (show > 0) {
    std::unique_ptr<Tokenizer> tok = make_tokenizer(tokenizer.empty() ? "byte" : tokenizer);
    if (range.max >= tok->vocab_size()) {
      throw UserError(str_cat("--show: token ids reach ", range.max, ", beyond the ", tok->name(),
                              " tokenizer's vocabulary of ", tok->vocab_size(),
                              " (choose it with --tokenizer)"));
    }
    for (std::int64_t d = 0; d < std::min<std::int64_t>(show, ds.num_documents()); ++d) {
      const std::int64_t n = std::min<std::int64_t>(lengths[static_cast<std::size_t>(d)], 4096);
      std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
      ds.read_document(d, 0, n, ids.data());
      std::printf("\n--- document %lld (%lld tokens)\n%s\n", static_cast<long long>(d),
                  static_cast<long long>(lengths[static_cast<std::size_t>(d)]),
                  tok->decode(ids).c_str());
    }
  }
  return 0;
}

}  // namespace linmoe
