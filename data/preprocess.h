// Tokenizes a corpus into a Megatron indexed dataset (linmoe preprocess).
// Input: JSONL (one object per line, the text under `json_key`) or plain text (one document per
// line). Each non-empty document becomes one sequence, followed by the end-of-document id when
// append_eod. Batches of lines are tokenized on `workers` threads and written in input order, so
// the output does not depend on the number of workers.
#pragma once
#include <cstdint>
#include <string>

#include "data/tokenizer.h"

namespace linmoe {

enum class InputFormat { auto_detect, jsonl, text };

struct PreprocessOptions {
  std::string input;
  std::string output_prefix;
  InputFormat format = InputFormat::auto_detect;  // auto: .jsonl/.json -> jsonl, else text
  std::string json_key = "text";
  bool append_eod = true;
  int workers = 0;        // 0 = the machine's hardware threads
  bool progress = false;  // a progress line on stderr (documents/s, MB/s, ETA)
};

struct PreprocessStats {
  std::int64_t documents = 0;      // written
  std::int64_t empty_skipped = 0;  // empty lines or empty texts
  std::int64_t tokens = 0;
  std::int64_t input_bytes = 0;
  double seconds = 0;
};

// Throws UserError("<input>:<line>: <what>") on a bad line, or naming the output on I/O errors.
PreprocessStats preprocess_corpus(const PreprocessOptions& options, const Tokenizer& tokenizer);

}  // namespace linmoe
