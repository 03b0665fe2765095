// linmoe preprocess: JSONL or plain text -> a Megatron .bin/.idx dataset (docs/DATA.md).
#include <cstdio>
#include <string>

#include "apps/linmoe/args.h"
#include "apps/linmoe/commands.h"
#include "core/check.h"
#include "data/indexed_dataset.h"
#include "data/preprocess.h"
#include "data/tokenizer.h"

namespace linmoe {

int cmd_preprocess(int argc, char** argv) {
  ArgParser args(
      "linmoe preprocess",
      "Tokenizes JSONL (one object per line) or plain text (one document per line) into\n"
      "PREFIX.bin/PREFIX.idx, Megatron-LM's indexed dataset format. Every document is\n"
      "followed by the tokenizer's end-of-document id.");
  PreprocessOptions opt;
  std::string tokenizer = "byte", format = "auto", eod_token;
  bool append_eod = false, no_eod = false, quiet = false;
  args.option("--input", &opt.input, "FILE", "FILE.jsonl (or .json) or a text file", true);
  args.option("--output-prefix", &opt.output_prefix, "PREFIX", "writes PREFIX.bin and PREFIX.idx",
              true);
  args.option("--tokenizer", &tokenizer, "byte|FILE",
              "'byte' (257 ids) or a Hugging Face tokenizer.json (byte-level BPE); default byte");
  args.option("--json-key", &opt.json_key, "KEY", "the JSONL field holding the text; default text");
  args.option("--format", &format, "auto|jsonl|text",
              "input format; auto: .jsonl/.json are JSONL, anything else text");
  args.option("--workers", &opt.workers, "N", "tokenizing threads; default: all hardware threads");
  args.option("--eod-token", &eod_token, "TOKEN",
              "end-of-document token of a tokenizer.json (default <|endoftext|>, <|end_of_text|> "
              "or </s>)");
  args.flag("--append-eod", &append_eod, "append the end-of-document id (the default)");
  args.flag("--no-eod", &no_eod, "do not append the end-of-document id");
  args.flag("--quiet", &quiet, "no progress line");
  if (!args.parse(argc, argv)) return 0;
  if (append_eod && no_eod) throw UserError("--append-eod and --no-eod contradict each other");
  opt.append_eod = !no_eod;
  if (format == "auto") {
    opt.format = InputFormat::auto_detect;
  } else if (format == "jsonl") {
    opt.format = InputFormat::jsonl;
  } else if (format == "text") {
    opt.format = InputFormat::text;
  } else {
    throw UserError(str_cat("--format: '", format, "' is not one of auto, jsonl, text"));
  }
  if (opt.workers < 0) throw UserError(str_cat("--workers: ", opt.workers, " is negative"));
  opt.progress = !quiet;

  std::unique_ptr<Tokenizer> tok = make_tokenizer(tokenizer, eod_token);
  PreprocessStats st = preprocess_corpus(opt, *tok);
  std::printf(
      "preprocess: %s -> %s.{bin,idx}: %lld documents (%lld empty skipped), %lld tokens, "
      "tokenizer %s (vocabulary %lld, end-of-document %d), dtype %s; %.1f MB in %.2f s = %.1f "
      "MB/s\n",
      opt.input.c_str(), opt.output_prefix.c_str(), static_cast<long long>(st.documents),
      static_cast<long long>(st.empty_skipped), static_cast<long long>(st.tokens),
      tok->name().c_str(), static_cast<long long>(tok->vocab_size()), tok->eod_id(),
      token_dtype_name(token_dtype_for_vocab(tok->vocab_size())),
      static_cast<double>(st.input_bytes) / 1e6, st.seconds,
      static_cast<double>(st.input_bytes) / 1e6 / std::max(st.seconds, 1e-9));
  return 0;
}

}  // namespace linmoe
