#include "data/tokenizer/hf_tokenizer.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "data/tokenizer/added_tokens.h"
#include "data/tokenizer/bpe.h"
#include "data/tokenizer/byte_level.h"
#include "data/tokenizer/regex.h"
#include "data/tokenizer/unicode_normalize.h"
#include "data/tokenizer/utf8.h"

namespace primus::data {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// GPT-2's split pattern, used by the ByteLevel pre-tokenizer when use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 '▁'

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme { kAlways, kFirst, kNever };

struct NormalizerStep {
  enum class Kind { kPrepend, kReplace, kStrip, kUnicode } kind;
  NormalizerStep(Kind k, std::string t = "", std::string c = "", std::shared_ptr<const RegexPattern> r = nullptr)
      : kind(k), text(std::move(t)), content(std::move(c)), regex(std::move(r)) {}
  std::string text;     // Prepend: prefix; Replace: literal pattern (if no regex)
  std::string content;  // Replace: replacement
  std::shared_ptr<const RegexPattern> regex;  // Replace with a regex
  bool left = false, right = false;           // Strip
  UnicodeForm form = UnicodeForm::kNFC;
};

struct PreTokenizerStep {
  enum class Kind { kSplit, kPrefixSpace, kMetaspace } kind;
  PreTokenizerStep(Kind k) : kind(k) {}
  std::shared_ptr<const RegexPattern> regex;  // Split
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  std::string replacement;  // Metaspace
  PrependScheme scheme = PrependScheme::kAlways;
  bool split = true;
  int matcher = -1;  // index of this step's RegexMatcher in a tokenizer instance
};

struct DecoderStep {
  enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip } kind;
  DecoderStep(Kind k) : kind(k) {}
  std::string pattern, content;  // Replace; Strip: content char
  std::string replacement;       // Metaspace
  PrependScheme scheme = PrependScheme::kAlways;
  size_t start = 0, stop = 0;  // Strip
};

// Everything read from the file: immutable, shared by clones.
struct HfSpec {
  std::string path;
  std::string type_name = "HuggingFaceTokenizer";
  std::shared_ptr<const BpeTables> bpe;
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  AddedTokenSplitter raw_splitter, normalized_splitter;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pretokenizer;
  std::vector<std::shared_ptr<const RegexPattern>> regexes;  // one per matcher index
  std::vector<DecoderStep> decoder;
  bool has_decoder = false;
  std::vector<int32_t> template_prefix, template_suffix;
  std::string template_problem;  // non-empty: the post_processor cannot add special tokens
  int64_t vocab_size = 0;
  int32_t eod = -1, bos = -1, pad = -1;
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  PRIMUS_CHECK(in.good(), "cannot open {}", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string where(const HfSpec& s, std::string_view key) { return fmt::format("{} ({})", s.path, key); }

// A token id read from the file: an integer in [0, kMaxTokenId]; anything else (a float, a
// negative or huge number) is a named error rather than an out-of-range conversion or a
// multi-gigabyte id table.
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;
int32_t token_id(const HfSpec& s, const json& v, std::string_view what) {
  if (!v.is_number_integer()) fail("{}: token id {} is not an integer", where(s, what), v.dump());
  const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(kMaxTokenId)
                                               : v.get<int64_t>() >= 0 && v.get<int64_t>() <= kMaxTokenId;
  if (!in_range) fail("{}: token id {} is outside [0, {}]", where(s, what), v.dump(), kMaxTokenId);
  return static_cast<int32_t>(v.get<int64_t>());
}

SplitBehavior parse_behavior(const HfSpec& s, const std::string& b) {
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  fail("{}: unknown split behavior '{}' (expected Isolated, Removed, MergedWithPrevious, MergedWithNext or "
       "Contiguous)",
       where(s, "pre_tokenizer"), b);
}

PrependScheme parse_scheme(const json& j) {
  if (j.contains("prepend_scheme") && j.at("prepend_scheme").is_string()) {
    const std::string v = j.at("prepend_scheme");
    if (v == "first") return PrependScheme::kFirst;
    if (v == "never") return PrependScheme::kNever;
    return PrependScheme::kAlways;
  }
  // Older files: add_prefix_space true/false.
  if (j.contains("add_prefix_space") && j.at("add_prefix_space").is_boolean())
    return j.at("add_prefix_space").get<bool>() ? PrependScheme::kAlways : PrependScheme::kNever;
  return PrependScheme::kAlways;
}

std::shared_ptr<const RegexPattern> pattern_of(const HfSpec& s, const json& p, std::string_view key) {
  if (p.contains("Regex")) return RegexPattern::compile(p.at("Regex").get<std::string>(), where(s, key));
  if (p.contains("String")) return RegexPattern::literal(p.at("String").get<std::string>(), where(s, key));
  fail("{}: pattern {} has neither Regex nor String", where(s, key), p.dump());
}

void parse_normalizer(HfSpec& s, const json& j) {
  if (j.is_null()) return;
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const json& n : j.at("normalizers")) parse_normalizer(s, n);
  } else if (type == "Prepend") {
    s.normalizer.push_back({NormalizerStep::Kind::kPrepend, j.at("prepend").get<std::string>(), "", nullptr});
  } else if (type == "Replace") {
    NormalizerStep step{NormalizerStep::Kind::kReplace, "", j.at("content").get<std::string>(), nullptr};
    if (j.at("pattern").contains("String"))
      step.text = j.at("pattern").at("String").get<std::string>();
    else
      step.regex = pattern_of(s, j.at("pattern"), "normalizer Replace");
    s.normalizer.push_back(step);
  } else if (type == "Strip") {
    NormalizerStep step{NormalizerStep::Kind::kStrip, "", "", nullptr};
    step.left = j.value("strip_left", true);
    step.right = j.value("strip_right", true);
    s.normalizer.push_back(step);
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    NormalizerStep step{NormalizerStep::Kind::kUnicode, "", "", nullptr};
    step.form = type == "NFC" ? UnicodeForm::kNFC
                : type == "NFD" ? UnicodeForm::kNFD
                : type == "NFKC" ? UnicodeForm::kNFKC
                                 : UnicodeForm::kNFKD;
    PRIMUS_CHECK(unicode_normalize_available(),
                 "{}: normalizer {} needs Unicode normalization, and this build has no ICU; install libicu-dev "
                 "and rebuild",
                 where(s, "normalizer"), type);
    s.normalizer.push_back(step);
  } else {
    fail("{}: normalizer type '{}' is not supported (supported: Sequence, Prepend, Replace, Strip, NFC, NFD, "
         "NFKC, NFKD)",
         where(s, "normalizer"), type);
  }
}

bool parse_pretokenizer(HfSpec& s, const json& j) {  // returns true if ByteLevel was seen
  if (j.is_null()) return false;
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    bool byte_level = false;
    for (const json& p : j.at("pretokenizers")) byte_level |= parse_pretokenizer(s, p);
    return byte_level;
  }
  if (type == "Split") {
    PreTokenizerStep step{PreTokenizerStep::Kind::kSplit};
    step.regex = pattern_of(s, j.at("pattern"), "pre_tokenizer Split");
    step.behavior = parse_behavior(s, j.value("behavior", "Isolated"));
    step.invert = j.value("invert", false);
    step.matcher = static_cast<int>(s.regexes.size());
    s.regexes.push_back(step.regex);
    s.pretokenizer.push_back(step);
    return false;
  }
  if (type == "ByteLevel") {
    if (j.value("add_prefix_space", false)) s.pretokenizer.push_back({PreTokenizerStep::Kind::kPrefixSpace});
    if (j.value("use_regex", true)) {
      PreTokenizerStep step{PreTokenizerStep::Kind::kSplit};
      step.regex = RegexPattern::compile(kGpt2Pattern, where(s, "pre_tokenizer ByteLevel"));
      step.matcher = static_cast<int>(s.regexes.size());
      s.regexes.push_back(step.regex);
      s.pretokenizer.push_back(step);
    }
    return true;
  }
  if (type == "Metaspace") {
    PreTokenizerStep step{PreTokenizerStep::Kind::kMetaspace};
    step.replacement = j.value("replacement", std::string(kMetaspace));
    step.scheme = parse_scheme(j);
    step.split = j.value("split", true);
    s.pretokenizer.push_back(step);
    return false;
  }
  fail("{}: pre_tokenizer type '{}' is not supported (supported: Sequence, Split, ByteLevel, Metaspace)",
       where(s, "pre_tokenizer"), type);
}

void parse_decoder(HfSpec& s, const json& j) {
  if (j.is_null()) return;
  s.has_decoder = true;
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const json& d : j.at("decoders")) parse_decoder(s, d);
  } else if (type == "ByteLevel") {
    s.decoder.push_back({DecoderStep::Kind::kByteLevel});
  } else if (type == "Metaspace") {
    DecoderStep d{DecoderStep::Kind::kMetaspace};
    d.replacement = j.value("replacement", std::string(kMetaspace));
    d.scheme = parse_scheme(j);
    s.decoder.push_back(d);
  } else if (type == "Replace") {
    PRIMUS_CHECK(j.at("pattern").contains("String"), "{}: decoder Replace with a regex pattern is not supported",
                 where(s, "decoder"));
    DecoderStep d{DecoderStep::Kind::kReplace};
    d.pattern = j.at("pattern").at("String").get<std::string>();
    d.content = j.at("content").get<std::string>();
    s.decoder.push_back(d);
  } else if (type == "ByteFallback") {
    s.decoder.push_back({DecoderStep::Kind::kByteFallback});
  } else if (type == "Fuse") {
    s.decoder.push_back({DecoderStep::Kind::kFuse});
  } else if (type == "Strip") {
    DecoderStep d{DecoderStep::Kind::kStrip};
    d.content = j.value("content", std::string(" "));
    d.start = j.value("start", size_t{0});
    d.stop = j.value("stop", size_t{0});
    s.decoder.push_back(d);
  } else {
    fail("{}: decoder type '{}' is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, "
         "ByteFallback, Fuse, Strip)",
         where(s, "decoder"), type);
  }
}

int32_t special_id(const HfSpec& s, const PieceIdMap& added_ids, const json& j, const std::string& name) {
  if (auto it = added_ids.find(name); it != added_ids.end()) return it->second;
  if (const int32_t id = s.bpe->find(name); id >= 0) return id;
  fail("{}: post_processor names special token '{}' which is neither an added token nor in the vocabulary",
       where(s, "post_processor"), name);
}

void parse_post_processor(HfSpec& s, const PieceIdMap& added_ids, const json& j) {
  if (j.is_null()) return;
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const json& p : j.at("processors")) parse_post_processor(s, added_ids, p);
  } else if (type == "ByteLevel") {
    // Only changes offsets.
  } else if (type == "TemplateProcessing") {
    bool after_sequence = false;
    for (const json& item : j.at("single")) {
      if (item.contains("Sequence")) {
        after_sequence = true;
        continue;
      }
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      std::vector<int32_t> ids;
      const json& map = j.at("special_tokens");
      if (map.contains(name)) {
        for (const json& id : map.at(name).at("ids")) ids.push_back(token_id(s, id, "post_processor"));
      } else {
        ids.push_back(special_id(s, added_ids, j, name));
      }
      auto& dst = after_sequence ? s.template_suffix : s.template_prefix;
      dst.insert(dst.end(), ids.begin(), ids.end());
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    s.template_prefix.push_back(token_id(s, j.at("cls").at(1), "post_processor"));
    s.template_suffix.push_back(token_id(s, j.at("sep").at(1), "post_processor"));
  } else {
    s.template_problem = fmt::format("post_processor type '{}' is not supported", type);
  }
}

std::optional<std::string> token_name(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j.at("content").is_string()) return j.at("content").get<std::string>();
  return std::nullopt;
}

int32_t lookup_token(const HfSpec& s, const PieceIdMap& added_ids, std::string_view name) {
  if (auto it = added_ids.find(name); it != added_ids.end()) return it->second;
  return s.bpe->find(name);
}

// eod/bos/pad from tokenizer_config.json (or special_tokens_map.json) beside the file, else
// the usual names.
void resolve_special_ids(HfSpec& s, const PieceIdMap& added_ids, const fs::path& dir) {
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path p = dir / name;
    if (!fs::exists(p)) continue;
    json cfg;
    try {
      cfg = json::parse(read_file(p));
    } catch (const json::exception& e) {
      fail("{}: not valid JSON ({})", p.string(), e.what());
    }
    auto pick = [&](const char* key, int32_t& dst) {
      if (dst >= 0 || !cfg.contains(key)) return;
      if (auto n = token_name(cfg[key])) dst = lookup_token(s, added_ids, *n);
    };
    pick("eos_token", s.eod);
    pick("bos_token", s.bos);
    pick("pad_token", s.pad);
  }
  auto first_of = [&](std::initializer_list<std::string_view> names) {
    for (std::string_view n : names)
      if (const int32_t id = lookup_token(s, added_ids, n); id >= 0) return id;
    return -1;
  };
  if (s.eod < 0)
    s.eod = first_of({"<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>",
                      "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"});
  if (s.bos < 0)
    s.bos = first_of({"<|begin_of_text|>", "<s>", "<bos>",
                      "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"});
}

std::vector<std::pair<std::string, std::string>> parse_merges(const HfSpec& s, const json& merges) {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const json& m : merges) {
    if (m.is_string()) {
      const std::string& line = m.get_ref<const std::string&>();
      const size_t sp = line.find(' ', 1);  // a merge part is never empty
      PRIMUS_CHECK(sp != std::string::npos, "{}: merge '{}' has no space between its two parts",
                   where(s, "model.merges"), line);
      out.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    } else {
      PRIMUS_CHECK(m.is_array() && m.size() == 2, "{}: merge {} is not a pair", where(s, "model.merges"), m.dump());
      out.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    }
  }
  return out;
}

// The BPE tables from model.vocab/merges; vocabulary strings are turned into raw bytes when
// the pre-tokenizer is byte-level.
std::shared_ptr<BpeTables> build_bpe(const HfSpec& s, const json& model, bool byte_level) {
  auto t = std::make_shared<BpeTables>();
  t->byte_level = byte_level;
  t->byte_fallback = model.value("byte_fallback", false);
  t->ignore_merges = model.value("ignore_merges", false);
  t->fuse_unk = model.value("fuse_unk", false);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
      fail("{}: BPE option {}={:?} is not supported", where(s, "model"), key, model[key].get<std::string>());
  }
  const json& vocab = model.at("vocab");
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) max_id = std::max(max_id, token_id(s, it.value(), "model.vocab"));
  t->id_to_piece.resize(static_cast<size_t>(max_id + 1));
  t->piece_to_id.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    std::string piece = it.key();
    if (byte_level)
      if (auto raw = byte_level_decode(piece)) piece = std::move(*raw);
    const int32_t id = token_id(s, it.value(), "model.vocab");
    t->id_to_piece[static_cast<size_t>(id)] = piece;
    t->piece_to_id.emplace(std::move(piece), id);
  }
  if (model.contains("unk_token") && model["unk_token"].is_string())
    t->unk_id = t->find(model["unk_token"].get<std::string>());
  if (byte_level) {
    for (int b = 0; b < 256; ++b) {
      t->byte_ids[b] = t->find(std::string(1, static_cast<char>(b)));
      PRIMUS_CHECK(t->byte_ids[b] >= 0,
                   "{}: byte-level vocabulary has no token for byte 0x{:02X} ('{}'); the file is not a complete "
                   "byte-level BPE",
                   where(s, "model.vocab"), b, byte_level_encode(std::string(1, static_cast<char>(b))));
    }
  } else if (t->byte_fallback) {
    for (int b = 0; b < 256; ++b) t->byte_ids[b] = t->find(fmt::format("<0x{:02X}>", b));
  }
  const auto merges = parse_merges(s, model.at("merges"));
  t->merges.reserve(merges.size());
  int32_t rank = 0;
  for (const auto& [l, r] : merges) {
    std::string left = l, right = r;
    if (byte_level) {
      if (auto raw = byte_level_decode(l)) left = std::move(*raw);
      if (auto raw = byte_level_decode(r)) right = std::move(*raw);
    }
    t->add_merge(left, right, rank++);  // merges of unknown pieces can never apply
  }
  return t;
}

std::shared_ptr<const HfSpec> build_spec(const json& j, const std::string& path, const fs::path& config_dir) {
  auto s = std::make_shared<HfSpec>();
  s->path = path;
  const json& model = j.at("model");
  const std::string model_type = model.value("type", model.contains("merges") ? "BPE" : "");
  if (model_type != "BPE") {
    fail("{}: model type '{}' is not supported; only BPE tokenizer.json files are read (for a Unigram "
         "SentencePiece model use --tokenizer-type SentencePieceTokenizer with its .model file)",
         where(*s, "model.type"), model_type);
  }
  const bool byte_level = parse_pretokenizer(*s, j.value("pre_tokenizer", json()));
  parse_normalizer(*s, j.value("normalizer", json()));
  parse_decoder(*s, j.value("decoder", json()));
  s->bpe = build_bpe(*s, model, byte_level);

  PieceIdMap added_ids;
  int64_t max_id = static_cast<int64_t>(s->bpe->id_to_piece.size()) - 1;
  std::vector<AddedToken> raw_tokens, normalized_tokens;
  for (const json& a : j.value("added_tokens", json::array())) {
    AddedToken t;
    t.content = a.at("content").get<std::string>();
    t.id = token_id(*s, a.at("id"), "added_tokens");
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    t.normalized = a.value("normalized", !t.special);
    max_id = std::max<int64_t>(max_id, t.id);
    added_ids.emplace(t.content, t.id);
    s->added_by_id.emplace(t.id, s->added.size());
    s->added.push_back(t);
    // Without a normalizer both kinds are matched on the same text: one pass.
    (t.normalized && !s->normalizer.empty() ? normalized_tokens : raw_tokens).push_back(t);
  }
  s->raw_splitter = AddedTokenSplitter(raw_tokens);
  s->normalized_splitter = AddedTokenSplitter(normalized_tokens);
  s->vocab_size = max_id + 1;
  parse_post_processor(*s, added_ids, j.value("post_processor", json()));
  resolve_special_ids(*s, added_ids, config_dir);
  return s;
}

// ---- the tokenizer instance ---------------------------------------------------------

class HfTokenizer final : public Tokenizer {
 public:
  explicit HfTokenizer(std::shared_ptr<const HfSpec> spec) : spec_(std::move(spec)), encoder_(spec_->bpe) {
    for (const auto& r : spec_->regexes) matchers_.push_back(std::make_unique<RegexMatcher>(r));
  }

  void encode_append(std::string_view text, std::vector<int32_t>& out, SpecialTokens special) override {
    if (special == SpecialTokens::kAdd) {
      PRIMUS_CHECK(spec_->template_problem.empty(), "{}: cannot add special tokens: {}", spec_->path,
                   spec_->template_problem);
      out.insert(out.end(), spec_->template_prefix.begin(), spec_->template_prefix.end());
    }
    std::string_view t = text;
    if (!utf8_is_valid(text)) {
      clean_ = utf8_sanitize(text);
      t = clean_;
    }
    segments_.clear();
    spec_->raw_splitter.split(t, segments_);
    // Copy: encode_plain reuses segments_ for normalized added tokens.
    const std::vector<TextSegment> top = segments_;
    for (const TextSegment& seg : top) {
      if (seg.token_id >= 0)
        out.push_back(seg.token_id);
      else
        encode_plain(t.substr(seg.begin, seg.end - seg.begin), seg.begin == 0, out);
    }
    if (special == SpecialTokens::kAdd)
      out.insert(out.end(), spec_->template_suffix.begin(), spec_->template_suffix.end());
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      if (auto it = spec_->added_by_id.find(id); it != spec_->added_by_id.end()) {
        const AddedToken& a = spec_->added[it->second];
        if (!(skip_special && a.special)) tokens.push_back(a.content);
        continue;
      }
      PRIMUS_CHECK(id >= 0 && id < static_cast<int32_t>(spec_->bpe->id_to_piece.size()),
                   "{}: decode got id {} outside the vocabulary [0, {})", spec_->path, id, spec_->vocab_size);
      tokens.push_back(spec_->bpe->id_to_piece[id]);
    }
    return run_decoders(std::move(tokens));
  }

  int64_t vocab_size() const override { return spec_->vocab_size; }
  int32_t eod() const override { return spec_->eod; }
  int32_t bos() const override { return spec_->bos; }
  int32_t pad() const override { return spec_->pad; }
  int32_t token_to_id(std::string_view token) const override {
    for (const AddedToken& a : spec_->added)
      if (a.content == token) return a.id;
    if (spec_->bpe->byte_level) {
      if (auto raw = byte_level_decode(token)) return spec_->bpe->find(*raw);
    }
    return spec_->bpe->find(token);
  }
  std::vector<int32_t> special_ids() const override {
    std::vector<int32_t> ids;
    for (const AddedToken& a : spec_->added)
      if (a.special) ids.push_back(a.id);
    return ids;
  }
  std::string type_name() const override { return spec_->type_name; }
  std::unique_ptr<Tokenizer> clone() const override { return std::make_unique<HfTokenizer>(spec_); }

 private:
  struct Range {
    uint32_t begin, end;
  };

  void encode_plain(std::string_view text, bool at_start, std::vector<int32_t>& out) {
    if (text.empty()) return;
    if (spec_->normalizer.empty()) {
      pretokenize_and_encode(text, at_start, out);
      return;
    }
    std::string normalized = normalize(text);
    if (spec_->normalized_splitter.empty()) {
      pretokenize_and_encode(normalized, at_start, out);
      return;
    }
    segments_.clear();
    spec_->normalized_splitter.split(normalized, segments_);
    const std::vector<TextSegment> parts = segments_;
    for (const TextSegment& seg : parts) {
      if (seg.token_id >= 0)
        out.push_back(seg.token_id);
      else
        pretokenize_and_encode(std::string_view(normalized).substr(seg.begin, seg.end - seg.begin),
                               at_start && seg.begin == 0, out);
    }
  }

  std::string normalize(std::string_view text) {
    std::string s(text);
    for (const NormalizerStep& n : spec_->normalizer) {
      switch (n.kind) {
        case NormalizerStep::Kind::kPrepend:
          if (!s.empty()) s.insert(0, n.text);
          break;
        case NormalizerStep::Kind::kReplace:
          s = n.regex ? replace_regex(s, *n.regex, n.content) : replace_all(s, n.text, n.content);
          break;
        case NormalizerStep::Kind::kStrip:
          s = strip_whitespace(s, n.left, n.right);
          break;
        case NormalizerStep::Kind::kUnicode:
          s = unicode_normalize(s, n.form);
          break;
      }
    }
    return s;
  }

  static std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    if (from.empty()) return std::string(s);
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (true) {
      const size_t k = s.find(from, i);
      if (k == std::string_view::npos) break;
      out.append(s.substr(i, k - i)).append(to);
      i = k + from.size();
    }
    out.append(s.substr(i));
    return out;
  }

  static std::string replace_regex(std::string_view s, const RegexPattern& re, std::string_view to) {
    // Rare (normalizers with regex patterns): a matcher per call is fine.
    RegexMatcher m(std::shared_ptr<const RegexPattern>(std::shared_ptr<const RegexPattern>{}, &re));
    std::string out;
    size_t i = 0, b = 0, e = 0, from = 0;
    while (from <= s.size() && m.find(s, from, b, e)) {
      out.append(s.substr(i, b - i)).append(to);
      i = e;
      from = e > b ? e : e + 1;
    }
    out.append(s.substr(std::min(i, s.size())));
    return out;
  }

  static std::string strip_whitespace(std::string_view s, bool left, bool right) {
    size_t b = 0, e = s.size();
    auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
    if (left)
      while (b < e && ws(s[b])) ++b;
    if (right)
      while (e > b && ws(s[e - 1])) --e;
    return std::string(s.substr(b, e - b));
  }

  // Applies one Split step to every range of `base`, writing the new ranges to `next`.
  void split_ranges(const PreTokenizerStep& step, std::string_view base, const std::vector<Range>& in,
                    std::vector<Range>& next) {
    RegexMatcher& m = *matchers_[step.matcher];
    next.clear();
    for (const Range& r : in) {
      const std::string_view piece = base.substr(r.begin, r.end - r.begin);
      size_t pos = 0, from = 0, b = 0, e = 0;
      // (begin, end, is_match) spans covering the piece.
      spans_.clear();
      while (from <= piece.size() && m.find(piece, from, b, e)) {
        if (e == b) {  // empty match: step over one character
          from = b + 1;
          while (from < piece.size() && (static_cast<uint8_t>(piece[from]) & 0xC0) == 0x80) ++from;
          continue;
        }
        if (b > pos) spans_.push_back({pos, b, false});
        spans_.push_back({b, e, true});
        pos = from = e;
      }
      if (pos < piece.size()) spans_.push_back({pos, piece.size(), false});
      if (step.invert)
        for (Span& sp : spans_) sp.match = !sp.match;
      emit_spans(step.behavior, r.begin, next);
    }
  }

  struct Span {
    size_t begin, end;
    bool match;
  };

  void emit_spans(SplitBehavior behavior, uint32_t offset, std::vector<Range>& next) {
    auto push = [&](size_t b, size_t e) {
      if (e > b) next.push_back({static_cast<uint32_t>(offset + b), static_cast<uint32_t>(offset + e)});
    };
    switch (behavior) {
      case SplitBehavior::kIsolated:
        for (const Span& sp : spans_) push(sp.begin, sp.end);
        break;
      case SplitBehavior::kRemoved:
        for (const Span& sp : spans_)
          if (!sp.match) push(sp.begin, sp.end);
        break;
      case SplitBehavior::kMergedWithPrevious: {
        size_t start = 0;
        bool open = false;
        for (const Span& sp : spans_) {
          if (sp.match) {
            push(open ? start : sp.begin, sp.end);
            open = false;
          } else {
            if (open) push(start, sp.begin);
            start = sp.begin;
            open = true;
          }
        }
        if (open) push(start, spans_.back().end);
        break;
      }
      case SplitBehavior::kMergedWithNext: {
        size_t start = 0;
        bool open = false;
        for (const Span& sp : spans_) {
          if (sp.match) {
            if (open) push(start, sp.begin);
            start = sp.begin;
            open = true;
          } else {
            push(open ? start : sp.begin, sp.end);
            open = false;
          }
        }
        if (open) push(start, spans_.back().end);
        break;
      }
      case SplitBehavior::kContiguous: {
        size_t i = 0;
        while (i < spans_.size()) {
          size_t j = i;
          while (j + 1 < spans_.size() && spans_[j + 1].match == spans_[i].match) ++j;
          push(spans_[i].begin, spans_[j].end);
          i = j + 1;
        }
        break;
      }
    }
  }

  // Steps that rewrite the text (prefix space, Metaspace) build a new buffer.
  void rewrite_ranges(const PreTokenizerStep& step, std::string_view base, const std::vector<Range>& in,
                      bool at_start, std::string& buf, std::vector<Range>& next) {
    buf.clear();
    next.clear();
    for (size_t k = 0; k < in.size(); ++k) {
      const std::string_view piece = base.substr(in[k].begin, in[k].end - in[k].begin);
      const auto start = static_cast<uint32_t>(buf.size());
      if (step.kind == PreTokenizerStep::Kind::kPrefixSpace) {
        if (piece.empty() || piece[0] != ' ') buf.push_back(' ');
        buf.append(piece);
        next.push_back({start, static_cast<uint32_t>(buf.size())});
        continue;
      }
      // Metaspace: spaces become the replacement, which is prepended per the scheme.
      const std::string& rep = step.replacement;
      const bool first_piece = at_start && in[k].begin == 0;
      const bool starts_with_rep = piece.substr(0, 1) == " " || piece.substr(0, rep.size()) == rep;
      if (!starts_with_rep && (step.scheme == PrependScheme::kAlways ||
                               (step.scheme == PrependScheme::kFirst && first_piece)))
        buf.append(rep);
      for (char c : piece) {
        if (c == ' ')
          buf.append(rep);
        else
          buf.push_back(c);
      }
      const auto end = static_cast<uint32_t>(buf.size());
      if (!step.split) {
        next.push_back({start, end});
        continue;
      }
      // Split before every replacement (MergedWithNext).
      uint32_t word = start;
      std::string_view all(buf);
      for (uint32_t i = start; i < end;) {
        if (i > word && all.compare(i, rep.size(), rep) == 0) {
          next.push_back({word, i});
          word = i;
        }
        i += (all.compare(i, rep.size(), rep) == 0) ? static_cast<uint32_t>(rep.size()) : 1;
      }
      if (end > word) next.push_back({word, end});
    }
  }

  void pretokenize_and_encode(std::string_view text, bool at_start, std::vector<int32_t>& out) {
    if (text.empty()) return;
    std::string_view base = text;
    ranges_a_.assign(1, Range{0, static_cast<uint32_t>(text.size())});
    std::vector<Range>* cur = &ranges_a_;
    std::vector<Range>* nxt = &ranges_b_;
    std::string* buf = &buf_a_;
    for (const PreTokenizerStep& step : spec_->pretokenizer) {
      if (step.kind == PreTokenizerStep::Kind::kSplit) {
        split_ranges(step, base, *cur, *nxt);
      } else {
        rewrite_ranges(step, base, *cur, at_start, *buf, *nxt);
        base = *buf;
        buf = (buf == &buf_a_) ? &buf_b_ : &buf_a_;
      }
      std::swap(cur, nxt);
    }
    for (const Range& r : *cur) encoder_.encode_word(base.substr(r.begin, r.end - r.begin), out);
  }

  std::string run_decoders(std::vector<std::string> tokens) const {
    if (!spec_->has_decoder) {
      std::string out;
      for (size_t i = 0; i < tokens.size(); ++i) out.append(i ? " " : "").append(tokens[i]);
      return utf8_sanitize(out);
    }
    for (const DecoderStep& d : spec_->decoder) {
      switch (d.kind) {
        case DecoderStep::Kind::kByteLevel: {
          // Pieces are already raw bytes; join them and repair broken UTF-8.
          std::string joined;
          for (const std::string& t : tokens) joined.append(t);
          tokens.assign(1, utf8_sanitize(joined));
          break;
        }
        case DecoderStep::Kind::kMetaspace:
          for (size_t i = 0; i < tokens.size(); ++i) {
            std::string t = replace_all(tokens[i], d.replacement, " ");
            if (i == 0 && d.scheme != PrependScheme::kNever && !t.empty() && t[0] == ' ') t.erase(0, 1);
            tokens[i] = std::move(t);
          }
          break;
        case DecoderStep::Kind::kReplace:
          for (std::string& t : tokens) t = replace_all(t, d.pattern, d.content);
          break;
        case DecoderStep::Kind::kByteFallback:
          tokens = byte_fallback(tokens);
          break;
        case DecoderStep::Kind::kFuse: {
          std::string joined;
          for (const std::string& t : tokens) joined.append(t);
          tokens.assign(1, std::move(joined));
          break;
        }
        case DecoderStep::Kind::kStrip:
          for (std::string& t : tokens) {
            size_t b = 0, e = t.size();
            for (size_t k = 0; k < d.start && b < e && t.compare(b, d.content.size(), d.content) == 0; ++k)
              b += d.content.size();
            for (size_t k = 0; k < d.stop && e >= b + d.content.size() &&
                               t.compare(e - d.content.size(), d.content.size(), d.content) == 0;
                 ++k)
              e -= d.content.size();
            t = t.substr(b, e - b);
          }
          break;
      }
    }
    std::string out;
    for (const std::string& t : tokens) out.append(t);
    return utf8_sanitize(out);
  }

  // Runs of <0xXX> tokens become their bytes when those form valid UTF-8, else one U+FFFD
  // per byte (HuggingFace's ByteFallback decoder).
  static std::vector<std::string> byte_fallback(const std::vector<std::string>& tokens) {
    std::vector<std::string> out;
    std::string bytes;
    size_t count = 0;
    auto flush = [&] {
      if (count == 0) return;
      if (utf8_is_valid(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t k = 0; k < count; ++k) out.push_back("\xEF\xBF\xBD");
      }
      bytes.clear();
      count = 0;
    };
    for (const std::string& t : tokens) {
      unsigned value = 0;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
          std::sscanf(t.c_str() + 3, "%2x", &value) == 1) {
        bytes.push_back(static_cast<char>(value));
        ++count;
      } else {
        flush();
        out.push_back(t);
      }
    }
    flush();
    return out;
  }

  std::shared_ptr<const HfSpec> spec_;
  BpeEncoder encoder_;
  std::vector<std::unique_ptr<RegexMatcher>> matchers_;
  // Scratch buffers reused across calls (no allocation per word).
  std::string clean_, buf_a_, buf_b_;
  std::vector<TextSegment> segments_;
  std::vector<Range> ranges_a_, ranges_b_;
  std::vector<Span> spans_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) {
  fs::path file = path;
  if (fs::is_directory(file)) file /= "tokenizer.json";
  PRIMUS_CHECK(fs::exists(file),
               "HuggingFaceTokenizer: {} does not exist; --tokenizer-model takes a tokenizer.json or the directory "
               "of a model that has one",
               file.string());
  json j;
  try {
    j = json::parse(read_file(file));
  } catch (const json::exception& e) {
    fail("{}: not a valid tokenizer.json ({})", file.string(), e.what());
  }
  PRIMUS_CHECK(j.is_object() && j.contains("model"),
               "{}: has no \"model\" key; a HuggingFace tokenizer.json is expected (for a SentencePiece .model use "
               "--tokenizer-type SentencePieceTokenizer)",
               file.string());
  try {
    return std::make_unique<HfTokenizer>(build_spec(j, file.string(), file.parent_path()));
  } catch (const json::exception& e) {
    fail("{}: unexpected structure ({})", file.string(), e.what());
  }
}

std::unique_ptr<Tokenizer> load_gpt2_bpe_tokenizer(const std::string& vocab_json, const std::string& merges_txt) {
  PRIMUS_CHECK(!vocab_json.empty() && !merges_txt.empty(),
               "GPT2BPETokenizer needs --vocab-file (vocab.json) and --merge-file (merges.txt)");
  json j;
  j["model"]["type"] = "BPE";
  try {
    j["model"]["vocab"] = json::parse(read_file(vocab_json));
  } catch (const json::exception& e) {
    fail("{}: not a valid vocab.json ({})", vocab_json, e.what());
  }
  std::ifstream in(merges_txt);
  PRIMUS_CHECK(in.good(), "cannot open merges file {}", merges_txt);
  json merges = json::array();
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    merges.push_back(line);
  }
  j["model"]["merges"] = merges;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}};
  auto spec = build_spec(j, vocab_json, fs::path(vocab_json).parent_path());
  auto mutable_spec = std::const_pointer_cast<HfSpec>(spec);
  mutable_spec->type_name = "GPT2BPETokenizer";
  mutable_spec->eod = spec->bpe->find("<|endoftext|>");
  PRIMUS_CHECK(mutable_spec->eod >= 0, "{}: has no <|endoftext|> token, which GPT2BPETokenizer uses as end of document",
               vocab_json);
  return std::make_unique<HfTokenizer>(spec);
}

}  // namespace primus::data
