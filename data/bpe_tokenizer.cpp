#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <unordered_map>

#include "core/check.h"
#include "core/json.h"
#include "data/pretokenizer.h"
#include "data/unicode.h"

namespace linmoe {
namespace {

// GPT-2's reversible map from bytes to printable code points (so BPE never sees raw control
// bytes): printable Latin-1 maps to itself, the other 68 bytes to U+0100 onwards.
struct ByteAlphabet {
  std::array<std::string, 256> encode;                     // byte -> UTF-8 of its code point
  std::unordered_map<std::uint32_t, std::uint8_t> decode;  // code point -> byte
  ByteAlphabet() {
    std::uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const std::uint32_t cp = printable ? static_cast<std::uint32_t>(b) : next++;
      utf8_append(encode[static_cast<std::size_t>(b)], cp);
      decode[cp] = static_cast<std::uint8_t>(b);
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a;
  return a;
}

struct AddedToken {
  std::string content;
  std::int32_t id;
  bool special;
};

// One step of the pre-tokenizer: split every piece by a pattern; ByteLevel may first prepend a
// space to each piece.
struct PreStep {
  std::optional<SplitPattern> pattern;
  bool add_prefix_space = false;
};

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(const Json& j, const std::string& source, const std::string& eod_token);
  std::string name() const override { return "bpe:" + source_; }
  std::int64_t vocab_size() const override { return vocab_size_; }
  std::int32_t eod_id() const override { return eod_id_; }
  void encode(std::string_view text, std::vector<std::int32_t>& out) const override;
  std::string decode(const std::int32_t* ids, std::size_t n) const override;
  using Tokenizer::decode;
  using Tokenizer::encode;

 private:
  [[noreturn]] void refuse(const std::string& what) const {
    throw UserError(str_cat(source_, ": ", what));
  }
  void parse_model(const Json& model);
  void parse_pre_tokenizer(const Json& pre);
  void parse_added_tokens(const Json& added);
  void encode_segment(std::string_view text, std::vector<std::int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<std::int32_t>& out) const;
  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }

  std::string source_;
  std::unordered_map<std::string, std::int32_t> vocab_;
  std::vector<std::string> id_to_token_;  // [vocab_size]
  std::vector<bool> is_added_;            // [vocab_size]
  struct Merge {
    std::int32_t rank, id;
  };
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::array<std::int32_t, 256> byte_id_{};
  bool ignore_merges_ = false;
  std::vector<PreStep> steps_;
  std::vector<AddedToken> added_;  // longest first
  std::array<bool, 256> added_first_byte_{};
  std::int64_t vocab_size_ = 0;
  std::int32_t eod_id_ = -1;
};

BpeTokenizer::BpeTokenizer(const Json& j, const std::string& source, const std::string& eod_token)
    : source_(source) {
  if (!j.is_object()) refuse("not a tokenizer.json (the top level is not an object)");
  const Json* norm = j.find("normalizer");
  if (norm && !norm->is_null()) {
    const Json* type = norm->find("type");
    // NFC is accepted: it leaves NFC text (nearly all text) unchanged; see docs/DATA.md.
    if (!type || !type->is_string() || type->as_string() != "NFC") {
      refuse(str_cat("unsupported normalizer ", dump_json(*norm),
                     " (supported: null, NFC; the byte-level BPE families use these)"));
    }
  }
  parse_model(j.at("model"));
  const Json* pre = j.find("pre_tokenizer");
  if (!pre || pre->is_null()) refuse("no pre_tokenizer (byte-level BPE needs ByteLevel)");
  parse_pre_tokenizer(*pre);
  if (const Json* added = j.find("added_tokens")) parse_added_tokens(*added);
  id_to_token_.assign(static_cast<std::size_t>(vocab_size_), std::string());
  is_added_.assign(static_cast<std::size_t>(vocab_size_), false);
  for (const auto& [tok, id] : vocab_) id_to_token_[static_cast<std::size_t>(id)] = tok;
  for (const AddedToken& a : added_) {
    id_to_token_[static_cast<std::size_t>(a.id)] = a.content;
    is_added_[static_cast<std::size_t>(a.id)] = true;
  }

  // The end-of-document token.
  std::vector<std::string> candidates;
  if (!eod_token.empty()) {
    candidates.push_back(eod_token);
  } else {
    candidates = {"<|endoftext|>", "<|end_of_text|>", "</s>"};
  }
  for (const std::string& c : candidates) {
    auto it = vocab_.find(c);
    if (it != vocab_.end()) {
      eod_id_ = it->second;
      break;
    }
  }
  if (eod_id_ < 0) {
    refuse(eod_token.empty()
               ? "no end-of-document token (<|endoftext|>, <|end_of_text|>, </s>); name one with "
                 "--eod-token"
               : str_cat("--eod-token '", eod_token, "' is not in the vocabulary"));
  }
}

void BpeTokenizer::parse_model(const Json& model) {
  const Json* type = model.find("type");
  if (type && type->as_string("model.type") != "BPE") {
    refuse(str_cat("model.type '", type->as_string(), "' is not supported (only BPE)"));
  }
  auto is_off = [](const Json* v) {
    return !v || v->is_null() || (v->is_bool() && !v->as_bool()) ||
           (v->is_string() && v->as_string().empty()) || (v->is_number() && v->as_double() == 0);
  };
  if (!is_off(model.find("dropout"))) refuse("model.dropout is not supported");
  if (!is_off(model.find("byte_fallback"))) refuse("model.byte_fallback is not supported");
  if (!is_off(model.find("continuing_subword_prefix")) ||
      !is_off(model.find("end_of_word_suffix"))) {
    refuse("model.continuing_subword_prefix / end_of_word_suffix are not supported");
  }
  if (const Json* im = model.find("ignore_merges"))
    ignore_merges_ = im->as_bool("model.ignore_merges");

  std::int64_t max_id = -1;
  for (const auto& [tok, id] : model.at("vocab").as_object("model.vocab")) {
    const std::int64_t v = id.as_int(str_cat("model.vocab['", tok, "']"));
    if (v < 0 || v > std::numeric_limits<std::int32_t>::max()) {
      refuse(str_cat("model.vocab['", tok, "'] = ", v, " is not a valid id"));
    }
    vocab_[tok] = static_cast<std::int32_t>(v);
    max_id = std::max(max_id, v);
  }
  vocab_size_ = max_id + 1;

  const ByteAlphabet& alpha = byte_alphabet();
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(alpha.encode[static_cast<std::size_t>(b)]);
    if (it == vocab_.end()) {
      refuse(str_cat("the vocabulary lacks byte ", b, " ('",
                     alpha.encode[static_cast<std::size_t>(b)], "'): not a byte-level BPE"));
    }
    byte_id_[static_cast<std::size_t>(b)] = it->second;
  }

  const Json::Array& merges = model.at("merges").as_array("model.merges");
  merges_.reserve(merges.size());
  for (std::size_t r = 0; r < merges.size(); ++r) {
    std::string a, b;
    if (merges[r].is_string()) {  // "a b"
      const std::string& m = merges[r].as_string();
      const std::size_t sp = m.find(' ');
      if (sp == std::string::npos || m.find(' ', sp + 1) != std::string::npos) {
        refuse(str_cat("model.merges[", r, "] = '", m, "' is not two tokens"));
      }
      a = m.substr(0, sp);
      b = m.substr(sp + 1);
    } else {  // ["a", "b"]
      const Json::Array& pr = merges[r].as_array(str_cat("model.merges[", r, "]"));
      if (pr.size() != 2) refuse(str_cat("model.merges[", r, "] is not a pair"));
      a = pr[0].as_string("merge");
      b = pr[1].as_string("merge");
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
    if (ia == vocab_.end() || ib == vocab_.end() || iab == vocab_.end()) {
      refuse(str_cat("model.merges[", r, "] ('", a, "', '", b,
                     "') uses a token not in the vocabulary"));
    }
    // The first (lowest-rank) occurrence of a pair wins.
    merges_.emplace(pair_key(ia->second, ib->second),
                    Merge{static_cast<std::int32_t>(r), iab->second});
  }
}

void BpeTokenizer::parse_pre_tokenizer(const Json& pre) {
  auto add_step = [&](const Json& p) {
    const std::string& type = p.at("type").as_string("pre_tokenizer.type");
    if (type == "ByteLevel") {
      PreStep s;
      if (const Json* aps = p.find("add_prefix_space")) s.add_prefix_space = aps->as_bool();
      const Json* use_regex = p.find("use_regex");
      if (!use_regex || use_regex->as_bool("use_regex")) s.pattern = SplitPattern::gpt2;
      steps_.push_back(s);
    } else if (type == "Split") {
      const Json& pat = p.at("pattern");
      const Json* rx = pat.find("Regex");
      if (!rx) refuse("pre_tokenizer Split: only Regex patterns are supported");
      std::optional<SplitPattern> known = identify_split_pattern(rx->as_string());
      if (!known) {
        refuse(str_cat("pre_tokenizer Split: unknown pattern ", dump_json(*rx),
                       " (supported: the GPT-2, Llama-3 and Qwen2 patterns)"));
      }
      const Json* behavior = p.find("behavior");
      if (behavior && behavior->as_string() != "Isolated") {
        refuse(str_cat("pre_tokenizer Split: behavior '", behavior->as_string(),
                       "' is not supported (Isolated)"));
      }
      const Json* invert = p.find("invert");
      if (invert && invert->as_bool()) refuse("pre_tokenizer Split: invert is not supported");
      steps_.push_back({known, false});
    } else {
      refuse(str_cat("pre_tokenizer type '", type,
                     "' is not supported (ByteLevel, Split, Sequence of them)"));
    }
  };
  const std::string& type = pre.at("type").as_string("pre_tokenizer.type");
  if (type == "Sequence") {
    for (const Json& p : pre.at("pretokenizers").as_array()) add_step(p);
  } else {
    add_step(pre);
  }
}

void BpeTokenizer::parse_added_tokens(const Json& added) {
  for (const Json& t : added.as_array("added_tokens")) {
    AddedToken a;
    a.content = t.at("content").as_string("added_tokens.content");
    const std::int64_t id = t.at("id").as_int("added_tokens.id");
    if (id < 0 || id > std::numeric_limits<std::int32_t>::max()) {
      refuse(str_cat("added token '", a.content, "' has id ", id));
    }
    a.id = static_cast<std::int32_t>(id);
    a.special = t.find("special") && t.at("special").as_bool();
    for (const char* flag : {"single_word", "lstrip", "rstrip"}) {
      const Json* f = t.find(flag);
      if (f && f->as_bool()) {
        refuse(str_cat("added token '", a.content, "': ", flag, " is not supported"));
      }
    }
    if (a.content.empty()) continue;
    vocab_[a.content] = a.id;
    vocab_size_ = std::max<std::int64_t>(vocab_size_, a.id + 1);
    added_first_byte_[static_cast<unsigned char>(a.content[0])] = true;
    added_.push_back(std::move(a));
  }
  std::stable_sort(added_.begin(), added_.end(), [](const AddedToken& x, const AddedToken& y) {
    return x.content.size() > y.content.size();
  });
}

void BpeTokenizer::encode(std::string_view text, std::vector<std::int32_t>& out) const {
  // Cut out added tokens (leftmost, then longest); encode the text between them.
  std::size_t start = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (!added_first_byte_[static_cast<unsigned char>(text[i])]) continue;
    for (const AddedToken& a : added_) {
      if (text.compare(i, a.content.size(), a.content) == 0) {
        if (i > start) encode_segment(text.substr(start, i - start), out);
        out.push_back(a.id);
        i += a.content.size();
        start = i;
        --i;  // the loop's ++i
        break;
      }
    }
  }
  if (start < text.size()) encode_segment(text.substr(start), out);
}

void BpeTokenizer::encode_segment(std::string_view text, std::vector<std::int32_t>& out) const {
  // Apply the pre-tokenizer steps in order; each refines the pieces of the previous one.
  std::vector<std::string> pieces{std::string(text)};
  std::vector<std::size_t> lengths;
  for (const PreStep& s : steps_) {
    std::vector<std::string> next;
    for (std::string& p : pieces) {
      if (s.add_prefix_space && (p.empty() || p[0] != ' ')) p.insert(p.begin(), ' ');
      if (!s.pattern) {
        next.push_back(std::move(p));
        continue;
      }
      lengths.clear();
      split_pieces(*s.pattern, p, lengths);
      std::size_t off = 0;
      for (std::size_t len : lengths) {
        next.push_back(p.substr(off, len));
        off += len;
      }
    }
    pieces = std::move(next);
  }
  for (const std::string& p : pieces) encode_piece(p, out);
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<std::int32_t>& out) const {
  if (piece.empty()) return;
  const ByteAlphabet& alpha = byte_alphabet();
  if (ignore_merges_) {  // a piece that is a whole vocabulary entry is taken as is
    std::string mapped;
    for (char c : piece) mapped += alpha.encode[static_cast<unsigned char>(c)];
    auto it = vocab_.find(mapped);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<std::int32_t> sym(piece.size());
  for (std::size_t i = 0; i < piece.size(); ++i) {
    sym[i] = byte_id_[static_cast<unsigned char>(piece[i])];
  }
  // Repeatedly merge every occurrence (left to right) of the lowest-ranked adjacent pair.
  while (sym.size() > 1) {
    std::int32_t best_rank = std::numeric_limits<std::int32_t>::max();
    std::uint64_t best_key = 0;
    for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = merges_.find(pair_key(sym[i], sym[i + 1]));
      if (it != merges_.end() && it->second.rank < best_rank) {
        best_rank = it->second.rank;
        best_key = it->first;
      }
    }
    if (best_rank == std::numeric_limits<std::int32_t>::max()) break;
    const std::int32_t merged = merges_.at(best_key).id;
    std::size_t w = 0;
    for (std::size_t i = 0; i < sym.size(); ++i) {
      if (i + 1 < sym.size() && pair_key(sym[i], sym[i + 1]) == best_key) {
        sym[w++] = merged;
        ++i;
      } else {
        sym[w++] = sym[i];
      }
    }
    sym.resize(w);
  }
  out.insert(out.end(), sym.begin(), sym.end());
}

std::string BpeTokenizer::decode(const std::int32_t* ids, std::size_t n) const {
  const ByteAlphabet& alpha = byte_alphabet();
  std::string out;
  for (std::size_t k = 0; k < n; ++k) {
    LINMOE_CHECK(ids[k] >= 0 && ids[k] < vocab_size_, "token id ", ids[k], " outside [0, ",
                 vocab_size_, ")");
    const std::string& tok = id_to_token_[static_cast<std::size_t>(ids[k])];
    if (is_added_[static_cast<std::size_t>(ids[k])]) {
      out += tok;
      continue;
    }
    // Map the printable alphabet back to bytes.
    for (std::size_t i = 0; i < tok.size();) {
      std::size_t len;
      const std::uint32_t cp = utf8_decode(tok, i, len);
      auto it = alpha.decode.find(cp);
      if (it != alpha.decode.end()) {
        out += static_cast<char>(it->second);
      } else {
        out.append(tok, i, len);  // not from the byte alphabet: keep as is
      }
      i += len;
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> parse_bpe_tokenizer(const std::string& json_text,
                                               const std::string& source,
                                               const std::string& eod_token) {
  Json j = parse_json(json_text, source);
  return std::make_unique<BpeTokenizer>(j, source, eod_token);
}

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& path,
                                              const std::string& eod_token) {
  Json j = read_json_file(path);
  return std::make_unique<BpeTokenizer>(j, path, eod_token);
}

}  // namespace linmoe
