// Megatron-LM's indexed dataset (PREFIX.bin + PREFIX.idx), spec/FORMATS.md section 1: the same
// magic, version, dtype codes and array layout as MMapIndexedDataset, so corpora tokenized by
// Megatron's tools load unchanged and ours load in Megatron.
//
// A document is the run of sequences doc_index[d] .. doc_index[d+1]-1 (one sequence per
// document in the usual case). Readers map both files and validate all of the structure at
// open; token ids are checked against a vocabulary by validate_vocab (a vectorised scan).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "data/mapped_file.h"

namespace linmoe {

// Megatron's dtype codes.
enum class TokenDType : std::uint8_t {
  u8 = 1,
  i8 = 2,
  i16 = 3,
  i32 = 4,
  i64 = 5,
  f64 = 6,
  f32 = 7,
  u16 = 8
};
std::size_t token_dtype_size(TokenDType t);
const char* token_dtype_name(TokenDType t);
// What writers use: u16 below 65,500 ids (Megatron's rule), else i32.
TokenDType token_dtype_for_vocab(std::int64_t vocab_size);

inline constexpr char kIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr std::uint64_t kIndexVersion = 1;
inline constexpr std::size_t kIndexHeaderBytes = 34;

std::string index_path(const std::string& prefix);  // PREFIX.idx
std::string data_path(const std::string& prefix);   // PREFIX.bin

struct TokenRange {
  std::int64_t min = 0, max = -1;  // max < min: no tokens
};

class IndexedDataset {
 public:
  // Maps and validates PREFIX.idx and PREFIX.bin: magic, version, dtype code, that the arrays
  // fit the file, the document index, offsets and lengths inside .bin. Throws
  // UserError("<file>: <rule>").
  explicit IndexedDataset(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  std::int64_t num_sequences() const { return num_sequences_; }
  std::int64_t num_documents() const { return num_doc_entries_ - 1; }
  std::int64_t num_tokens() const { return num_tokens_; }
  std::size_t bin_bytes() const { return bin_.size(); }

  // The arrays sit at unaligned offsets of the mapping (34 + ...): read through memcpy.
  std::int32_t sequence_length(std::int64_t seq) const { return load<std::int32_t>(lengths_, seq); }
  std::int64_t sequence_offset(std::int64_t seq) const {  // bytes into .bin
    return load<std::int64_t>(offsets_, seq);
  }
  // Sequence ids [document_begin(d), document_end(d)) form document d.
  std::int64_t document_begin(std::int64_t doc) const {
    return load<std::int64_t>(doc_index_, doc);
  }
  std::int64_t document_end(std::int64_t doc) const {
    return load<std::int64_t>(doc_index_, doc + 1);
  }
  std::int64_t document_length(std::int64_t doc) const;  // tokens
  // Tokens of every document, [num_documents()].
  std::vector<std::int64_t> document_lengths() const;

  // Smallest and largest token id over all sequences (one scan of .bin, then cached).
  TokenRange token_range() const;
  // Refuses a negative id or an id ≥ vocab_size: UserError("<PREFIX.bin>: token id ...").
  void validate_vocab(std::int64_t vocab_size) const;

  // Copies `count` tokens of sequence `seq` from token `offset` on, as i32. out: [count]
  void read_sequence(std::int64_t seq, std::int64_t offset, std::int64_t count,
                     std::int32_t* out) const;
  // The same across the sequences of document `doc`.
  void read_document(std::int64_t doc, std::int64_t offset, std::int64_t count,
                     std::int32_t* out) const;

 private:
  template <class T>
  static T load(const std::uint8_t* base, std::int64_t i) {
    T v;
    std::memcpy(&v, base + static_cast<std::size_t>(i) * sizeof(T), sizeof(T));
    return v;
  }
  [[noreturn]] void refuse_idx(const std::string& rule) const;
  std::string prefix_;
  MappedFile idx_, bin_;
  TokenDType dtype_ = TokenDType::u16;
  std::int64_t num_sequences_ = 0, num_doc_entries_ = 0, num_tokens_ = 0;
  const std::uint8_t* lengths_ = nullptr;    // i32[N]
  const std::uint8_t* offsets_ = nullptr;    // i64[N], bytes into .bin
  const std::uint8_t* doc_index_ = nullptr;  // i64[M]
  mutable bool range_known_ = false;
  mutable TokenRange range_;
};

// Writes PREFIX.bin as documents arrive and PREFIX.idx at finish(). Files are written under
// temporary names and renamed by finish(), so a crash never leaves a valid-looking half dataset.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, TokenDType dtype);
  ~IndexedDatasetWriter();  // without finish(): removes the temporary files
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // One sequence that is a whole document (the usual case). tokens: [n]
  void add_document(const std::int32_t* tokens, std::size_t n);
  // Megatron's multi-sequence documents: add_sequence ... then end_document.
  void add_sequence(const std::int32_t* tokens, std::size_t n);
  void end_document();
  void finish();

  std::int64_t num_documents() const { return static_cast<std::int64_t>(doc_index_.size()) - 1; }
  std::int64_t num_tokens() const { return num_tokens_; }

 private:
  std::string prefix_, bin_tmp_, idx_tmp_;
  TokenDType dtype_;
  std::FILE* bin_ = nullptr;
  std::vector<std::int32_t> lengths_;
  std::vector<std::int64_t> doc_index_{0};
  std::vector<std::uint8_t> scratch_;
  std::int64_t num_tokens_ = 0;
  bool finished_ = false;
};

}  // namespace linmoe
