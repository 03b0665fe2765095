#include "data/indexed_dataset.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <thread>

#include "core/check.h"

namespace linmoe {

std::size_t token_dtype_size(TokenDType t) {
  switch (t) {
    case TokenDType::u8:
    case TokenDType::i8:
      return 1;
    case TokenDType::i16:
    case TokenDType::u16:
      return 2;
    case TokenDType::i32:
    case TokenDType::f32:
      return 4;
    case TokenDType::i64:
    case TokenDType::f64:
      return 8;
  }
  LINMOE_CHECK(false, "unknown token dtype ", static_cast<int>(t));
  return 0;
}

const char* token_dtype_name(TokenDType t) {
  switch (t) {
    case TokenDType::u8:
      return "uint8";
    case TokenDType::i8:
      return "int8";
    case TokenDType::i16:
      return "int16";
    case TokenDType::i32:
      return "int32";
    case TokenDType::i64:
      return "int64";
    case TokenDType::f64:
      return "float64";
    case TokenDType::f32:
      return "float32";
    case TokenDType::u16:
      return "uint16";
  }
  return "?";
}

TokenDType token_dtype_for_vocab(std::int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDType::u16 : TokenDType::i32;
}

std::string index_path(const std::string& prefix) {
  return prefix + ".idx";
}
std::string data_path(const std::string& prefix) {
  return prefix + ".bin";
}

namespace {

template <class T>
T load_le(const std::uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
  return v;
}

// Min and max of `n` elements of type T at p. Branch-free so the compiler vectorises it.
template <class T>
void scan_range(const std::uint8_t* p, std::size_t n, std::int64_t& lo, std::int64_t& hi) {
  T mn = std::numeric_limits<T>::max(), mx = std::numeric_limits<T>::lowest();
  for (std::size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, p + i * sizeof(T), sizeof(T));
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  if (n) {
    lo = std::min<std::int64_t>(lo, static_cast<std::int64_t>(mn));
    hi = std::max<std::int64_t>(hi, static_cast<std::int64_t>(mx));
  }
}

void scan_bytes(TokenDType t, const std::uint8_t* p, std::size_t n, std::int64_t& lo,
                std::int64_t& hi) {
  switch (t) {
    case TokenDType::u8:
      return scan_range<std::uint8_t>(p, n, lo, hi);
    case TokenDType::i8:
      return scan_range<std::int8_t>(p, n, lo, hi);
    case TokenDType::i16:
      return scan_range<std::int16_t>(p, n, lo, hi);
    case TokenDType::u16:
      return scan_range<std::uint16_t>(p, n, lo, hi);
    case TokenDType::i32:
      return scan_range<std::int32_t>(p, n, lo, hi);
    case TokenDType::i64:
      return scan_range<std::int64_t>(p, n, lo, hi);
    case TokenDType::f32:
    case TokenDType::f64:
      break;  // refused at open
  }
  LINMOE_CHECK(false, "token scan of a float dataset");
}

template <class T>
void convert_to_i32(const std::uint8_t* p, std::int64_t n, std::int32_t* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, p + static_cast<std::size_t>(i) * sizeof(T), sizeof(T));
    out[i] = static_cast<std::int32_t>(v);
  }
}

}  // namespace

// ---- reader ----------------------------------------------------------------------------------

void IndexedDataset::refuse_idx(const std::string& rule) const {
  throw UserError(str_cat(index_path(prefix_), ": ", rule));
}

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  idx_ = MappedFile(index_path(prefix));
  const std::uint8_t* p = idx_.data();
  const std::size_t size = idx_.size();
  if (size < kIndexHeaderBytes) {
    refuse_idx(
        str_cat("truncated: the header needs ", kIndexHeaderBytes, " bytes, the file has ", size));
  }
  if (std::memcmp(p, kIndexMagic, sizeof(kIndexMagic)) != 0) {
    refuse_idx("wrong magic: not a Megatron indexed dataset index (expected 'MMIDIDX\\0\\0')");
  }
  const auto version = load_le<std::uint64_t>(p + 9);
  if (version != kIndexVersion) {
    refuse_idx(str_cat("unsupported version ", version, " (expected ", kIndexVersion, ")"));
  }
  const std::uint8_t code = p[17];
  if (code < 1 || code > 8) refuse_idx(str_cat("unknown dtype code ", int(code), " (1..8)"));
  dtype_ = static_cast<TokenDType>(code);
  if (dtype_ == TokenDType::f32 || dtype_ == TokenDType::f64) {
    refuse_idx(str_cat("dtype code ", int(code), " (", token_dtype_name(dtype_),
                       ") cannot hold token ids"));
  }
  const auto n = load_le<std::uint64_t>(p + 18);
  const auto m = load_le<std::uint64_t>(p + 26);
  // 34 + 12N + 8M without overflow: bound N and M by the file size first.
  if (n > size / 12 || m > size / 8 || kIndexHeaderBytes + 12 * n + 8 * m > size) {
    refuse_idx(str_cat("truncated: N=", n, " sequences and M=", m,
                       " document entries need 34+12N+8M bytes, the file has ", size));
  }
  if (m < 1) refuse_idx("the document index is empty (M = 0; it needs at least the entry 0)");
  num_sequences_ = static_cast<std::int64_t>(n);
  num_doc_entries_ = static_cast<std::int64_t>(m);
  lengths_ = p + kIndexHeaderBytes;
  offsets_ = lengths_ + 4 * n;
  doc_index_ = offsets_ + 8 * n;

  // Document index: starts at 0, ends at N, never decreases.
  if (document_begin(0) != 0) {
    refuse_idx(str_cat("document index starts at ", document_begin(0), ", not 0"));
  }
  if (load<std::int64_t>(doc_index_, num_doc_entries_ - 1) != num_sequences_) {
    refuse_idx(str_cat("document index ends at ",
                       load<std::int64_t>(doc_index_, num_doc_entries_ - 1),
                       ", not at N = ", num_sequences_));
  }
  for (std::int64_t d = 0; d + 1 < num_doc_entries_; ++d) {
    if (document_end(d) < document_begin(d)) {
      refuse_idx(str_cat("document index decreases at entry ", d + 1, " (", document_begin(d),
                         " then ", document_end(d), ")"));
    }
  }

  bin_ = MappedFile(data_path(prefix));
  const auto bin_size = static_cast<std::int64_t>(bin_.size());
  const auto item = static_cast<std::int64_t>(token_dtype_size(dtype_));
  for (std::int64_t s = 0; s < num_sequences_; ++s) {
    const std::int64_t len = sequence_length(s), off = sequence_offset(s);
    if (len < 0) refuse_idx(str_cat("sequence ", s, " has a negative length ", len));
    if (off < 0 || off % item != 0) {
      refuse_idx(str_cat("sequence ", s, " starts at byte ", off,
                         ", not a non-negative multiple of the item size ", item));
    }
    if (off > bin_size || len > (bin_size - off) / item) {
      throw UserError(str_cat(data_path(prefix_), ": sequence ", s, " (", len,
                              " tokens at byte offset ", off, ") runs past the end of the file (",
                              bin_size, " bytes; truncated .bin, or offsets beyond it)"));
    }
    num_tokens_ += len;
  }
}

std::int64_t IndexedDataset::document_length(std::int64_t doc) const {
  std::int64_t total = 0;
  for (std::int64_t s = document_begin(doc); s < document_end(doc); ++s) {
    total += sequence_length(s);
  }
  return total;
}

std::vector<std::int64_t> IndexedDataset::document_lengths() const {
  std::vector<std::int64_t> out(static_cast<std::size_t>(num_documents()));
  for (std::int64_t d = 0; d < num_documents(); ++d) {
    out[static_cast<std::size_t>(d)] = document_length(d);
  }
  return out;
}

TokenRange IndexedDataset::token_range() const {
  if (range_known_) return range_;
  // Coalesce byte ranges of consecutive sequences (the usual layout is one contiguous run).
  struct Run {
    std::int64_t begin, bytes;
  };
  std::vector<Run> runs;
  const auto item = static_cast<std::int64_t>(token_dtype_size(dtype_));
  for (std::int64_t s = 0; s < num_sequences_; ++s) {
    const std::int64_t off = sequence_offset(s), bytes = sequence_length(s) * item;
    if (bytes == 0) continue;
    if (!runs.empty() && runs.back().begin + runs.back().bytes == off) {
      runs.back().bytes += bytes;
    } else {
      runs.push_back({off, bytes});
    }
  }
  // Cut into pieces of ~64 MiB and scan them on a few threads (memory bound).
  constexpr std::int64_t kPiece = std::int64_t{64} << 20;
  std::vector<Run> pieces;
  for (const Run& r : runs) {
    for (std::int64_t b = 0; b < r.bytes; b += kPiece) {
      pieces.push_back({r.begin + b, std::min(kPiece, r.bytes - b)});
    }
  }
  const std::size_t threads = std::min<std::size_t>(
      pieces.size(), std::max(1u, std::min(8u, std::thread::hardware_concurrency())));
  std::vector<TokenRange> partial(std::max<std::size_t>(threads, 1),
                                  TokenRange{std::numeric_limits<std::int64_t>::max(),
                                             std::numeric_limits<std::int64_t>::lowest()});
  auto work = [&](std::size_t t) {
    for (std::size_t i = t; i < pieces.size(); i += threads) {
      scan_bytes(dtype_, bin_.data() + pieces[i].begin,
                 static_cast<std::size_t>(pieces[i].bytes / item), partial[t].min, partial[t].max);
    }
  };
  if (threads <= 1) {
    if (!pieces.empty()) work(0);
  } else {
    std::vector<std::thread> pool;
    for (std::size_t t = 0; t < threads; ++t) pool.emplace_back(work, t);
    for (auto& th : pool) th.join();
  }
  TokenRange r{0, -1};
  if (!pieces.empty()) {
    r = partial[0];
    for (const TokenRange& q : partial) {
      r.min = std::min(r.min, q.min);
      r.max = std::max(r.max, q.max);
    }
  }
  range_ = r;
  range_known_ = true;
  return r;
}

void IndexedDataset::validate_vocab(std::int64_t vocab_size) const {
  TokenRange r = token_range();
  if (r.max < r.min) return;  // no tokens
  if (r.min < 0) {
    throw UserError(str_cat(data_path(prefix_), ": negative token id ", r.min));
  }
  if (r.max >= vocab_size) {
    throw UserError(str_cat(data_path(prefix_), ": token id ", r.max,
                            " is not below the model's vocabulary size ", vocab_size,
                            " (model.vocab_size)"));
  }
}

void IndexedDataset::read_sequence(std::int64_t seq, std::int64_t offset, std::int64_t count,
                                   std::int32_t* out) const {
  LINMOE_CHECK(
      seq >= 0 && seq < num_sequences_ && offset >= 0 && offset + count <= sequence_length(seq),
      "read_sequence out of range: sequence ", seq, " tokens [", offset, ", ", offset + count, ")");
  const std::uint8_t* p = bin_.data() + sequence_offset(seq) +
                          static_cast<std::size_t>(offset) * token_dtype_size(dtype_);
  switch (dtype_) {
    case TokenDType::u8:
      return convert_to_i32<std::uint8_t>(p, count, out);
    case TokenDType::i8:
      return convert_to_i32<std::int8_t>(p, count, out);
    case TokenDType::i16:
      return convert_to_i32<std::int16_t>(p, count, out);
    case TokenDType::u16:
      return convert_to_i32<std::uint16_t>(p, count, out);
    case TokenDType::i32:
      return convert_to_i32<std::int32_t>(p, count, out);
    case TokenDType::i64:
      return convert_to_i32<std::int64_t>(p, count, out);
    case TokenDType::f32:
    case TokenDType::f64:
      break;
  }
  LINMOE_CHECK(false, "read of a float dataset");
}

void IndexedDataset::read_document(std::int64_t doc, std::int64_t offset, std::int64_t count,
                                   std::int32_t* out) const {
  for (std::int64_t s = document_begin(doc); s < document_end(doc) && count > 0; ++s) {
    const std::int64_t len = sequence_length(s);
    if (offset >= len) {
      offset -= len;
      continue;
    }
    const std::int64_t take = std::min(count, len - offset);
    read_sequence(s, offset, take, out);
    out += take;
    count -= take;
    offset = 0;
  }
  LINMOE_CHECK(count == 0, "read_document past the end of document ", doc);
}

// ---- writer ----------------------------------------------------------------------------------

namespace {

void write_all(std::FILE* f, const void* p, std::size_t n, const std::string& path) {
  if (n && std::fwrite(p, 1, n, f) != n) {
    throw UserError(str_cat(path, ": write failed: ", std::strerror(errno)));
  }
}

template <class T>
void pack_tokens(const std::int32_t* tokens, std::size_t n, std::uint8_t* out) {
  for (std::size_t i = 0; i < n; ++i) {
    const T v = static_cast<T>(tokens[i]);
    std::memcpy(out + i * sizeof(T), &v, sizeof(T));
  }
}

}  // namespace

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, TokenDType dtype)
    : prefix_(prefix), dtype_(dtype) {
  if (dtype == TokenDType::f32 || dtype == TokenDType::f64) {
    throw UserError(str_cat(prefix, ": token datasets need an integer dtype"));
  }
  const std::string tag = str_cat(".tmp", ::getpid());
  bin_tmp_ = data_path(prefix) + tag;
  idx_tmp_ = index_path(prefix) + tag;
  bin_ = std::fopen(bin_tmp_.c_str(), "wb");
  if (!bin_) throw UserError(str_cat(bin_tmp_, ": cannot create: ", std::strerror(errno)));
  std::setvbuf(bin_, nullptr, _IOFBF, 1 << 20);
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (finished_) return;
  if (bin_) std::fclose(bin_);
  std::remove(bin_tmp_.c_str());
  std::remove(idx_tmp_.c_str());
}

void IndexedDatasetWriter::add_sequence(const std::int32_t* tokens, std::size_t n) {
  LINMOE_CHECK(!finished_, "add_sequence after finish");
  if (n > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
    throw UserError(str_cat(prefix_, ": a sequence of ", n, " tokens exceeds the int32 length"));
  }
  // Every id must fit the dtype: the dtype is chosen from the vocabulary, so this only fails
  // when a tokenizer produces an id outside its own vocabulary.
  std::int64_t lo, hi;
  switch (dtype_) {
    case TokenDType::u8:
      lo = 0, hi = 255;
      break;
    case TokenDType::i8:
      lo = -128, hi = 127;
      break;
    case TokenDType::i16:
      lo = -32768, hi = 32767;
      break;
    case TokenDType::u16:
      lo = 0, hi = 65535;
      break;
    default:
      lo = std::numeric_limits<std::int32_t>::min(), hi = std::numeric_limits<std::int32_t>::max();
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (tokens[i] < lo || tokens[i] > hi) {
      throw UserError(str_cat(prefix_, ": token id ", tokens[i], " does not fit dtype ",
                              token_dtype_name(dtype_)));
    }
  }
  const std::size_t item = token_dtype_size(dtype_);
  scratch_.resize(n * item);
  switch (dtype_) {
    case TokenDType::u8:
      pack_tokens<std::uint8_t>(tokens, n, scratch_.data());
      break;
    case TokenDType::i8:
      pack_tokens<std::int8_t>(tokens, n, scratch_.data());
      break;
    case TokenDType::i16:
      pack_tokens<std::int16_t>(tokens, n, scratch_.data());
      break;
    case TokenDType::u16:
      pack_tokens<std::uint16_t>(tokens, n, scratch_.data());
      break;
    case TokenDType::i32:
      pack_tokens<std::int32_t>(tokens, n, scratch_.data());
      break;
    case TokenDType::i64:
      pack_tokens<std::int64_t>(tokens, n, scratch_.data());
      break;
    default:
      LINMOE_CHECK(false, "float dtype");
  }
  write_all(bin_, scratch_.data(), scratch_.size(), bin_tmp_);
  lengths_.push_back(static_cast<std::int32_t>(n));
  num_tokens_ += static_cast<std::int64_t>(n);
}

void IndexedDatasetWriter::end_document() {
  doc_index_.push_back(static_cast<std::int64_t>(lengths_.size()));
}

void IndexedDatasetWriter::add_document(const std::int32_t* tokens, std::size_t n) {
  add_sequence(tokens, n);
  end_document();
}

void IndexedDatasetWriter::finish() {
  LINMOE_CHECK(!finished_, "finish called twice");
  if (doc_index_.back() != static_cast<std::int64_t>(lengths_.size())) end_document();
  if (std::fclose(bin_) != 0) {
    bin_ = nullptr;
    throw UserError(str_cat(bin_tmp_, ": write failed: ", std::strerror(errno)));
  }
  bin_ = nullptr;

  std::FILE* f = std::fopen(idx_tmp_.c_str(), "wb");
  if (!f) throw UserError(str_cat(idx_tmp_, ": cannot create: ", std::strerror(errno)));
  const std::uint64_t version = kIndexVersion;
  const auto code = static_cast<std::uint8_t>(dtype_);
  const std::uint64_t n = lengths_.size(), m = doc_index_.size();
  std::vector<std::int64_t> offsets(lengths_.size());
  std::int64_t off = 0;
  for (std::size_t i = 0; i < lengths_.size(); ++i) {
    offsets[i] = off;
    off += static_cast<std::int64_t>(lengths_[i]) *
           static_cast<std::int64_t>(token_dtype_size(dtype_));
  }
  try {
    write_all(f, kIndexMagic, sizeof(kIndexMagic), idx_tmp_);
    write_all(f, &version, 8, idx_tmp_);
    write_all(f, &code, 1, idx_tmp_);
    write_all(f, &n, 8, idx_tmp_);
    write_all(f, &m, 8, idx_tmp_);
    write_all(f, lengths_.data(), 4 * n, idx_tmp_);
    write_all(f, offsets.data(), 8 * n, idx_tmp_);
    write_all(f, doc_index_.data(), 8 * m, idx_tmp_);
  } catch (...) {
    std::fclose(f);
    throw;
  }
  if (std::fclose(f) != 0) throw UserError(str_cat(idx_tmp_, ": write failed"));
  // .bin first, .idx last: an .idx present means the pair is complete.
  std::remove(index_path(prefix_).c_str());
  if (std::rename(bin_tmp_.c_str(), data_path(prefix_).c_str()) != 0 ||
      std::rename(idx_tmp_.c_str(), index_path(prefix_).c_str()) != 0) {
    throw UserError(str_cat(prefix_, ": cannot rename the finished files: ", std::strerror(errno)));
  }
  finished_ = true;
}

}  // namespace linmoe
