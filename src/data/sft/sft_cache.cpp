#include "data/sft/sft_cache.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/strings.h"

namespace primus::data::sft {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "primus-sft-cache-v1";
constexpr char kMaskMagic[8] = {'P', 'R', 'I', 'M', 'U', 'S', 'L', 'M'};
constexpr uint64_t kMaskVersion = 1;
constexpr size_t kMaskHeader = 24;

// The hash state: two 64-bit lanes fed 8 bytes at a time, finished with splitmix64's mixer.
struct Hasher {
  uint64_t a = 0x243F6A8885A308D3ULL, b = 0x13198A2E03707344ULL, n = 0;
  uint8_t tail[8] = {};
  size_t tail_len = 0;

  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  void word(uint64_t w) {
    a = std::rotl((a ^ w) * 0x9E3779B97F4A7C15ULL, 29);
    b = std::rotl((b + w) * 0xC2B2AE3D27D4EB4FULL, 31) ^ a;
  }
  void update(const char* p, size_t len) {
    n += len;
    while (len > 0 && tail_len > 0 && tail_len < 8) {
      tail[tail_len++] = static_cast<uint8_t>(*p++);
      --len;
      if (tail_len == 8) {
        uint64_t w;
        std::memcpy(&w, tail, 8);
        word(w);
        tail_len = 0;
      }
    }
    for (; len >= 8; len -= 8, p += 8) {
      uint64_t w;
      std::memcpy(&w, p, 8);
      word(w);
    }
    while (len-- > 0) tail[tail_len++] = static_cast<uint8_t>(*p++);
  }
  std::string hex() {
    uint64_t w = 0;
    std::memcpy(&w, tail, tail_len);
    word(w ^ (static_cast<uint64_t>(tail_len) << 56));
    const uint64_t h1 = mix(a ^ n), h2 = mix(b + mix(n ^ a));
    return fmt::format("{:016x}{:016x}", h1, h2);
  }
};

// What a cache must describe to be used (cache.json without the counts).
json expected_description(const std::string& input, const SftTokenizer& tok, const CorpusOptions& opt) {
  const fs::path abs = fs::absolute(input).lexically_normal();
  const auto mtime = fs::last_write_time(input).time_since_epoch();
  json d;
  d["format"] = kFormat;
  d["kind"] = opt.kind == RecordKind::kPreference ? "preference" : "sft";
  d["source"] = {{"path", abs.string()},
                 {"size", static_cast<int64_t>(fs::file_size(input))},
                 {"mtime_ns", static_cast<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(mtime).count())},
                 {"hash", hash_file(input)}};
  d["tokenizer"] = opt.tokenizer_identity;
  d["chat_template"] = {{"name", tok.chat_template().name}, {"hash", tok.chat_template().hash}};
  d["loss_mode"] = loss_mode_name(tok.loss_mode());
  d["key"] = hash_bytes(d.dump());
  return d;
}

std::string dir_for(const std::string& input, const CorpusOptions& opt, const std::string& key) {
  const std::string name = fs::path(input).filename().string() + ".primus-sft-" + key;
  if (!opt.cache_dir.empty()) return (fs::path(opt.cache_dir) / name).string();
  return fs::absolute(input).lexically_normal().string() + ".primus-sft-" + key;
}

std::vector<uint8_t> pack_bits(const std::vector<TokenizedExample>& seqs, int64_t total) {
  std::vector<uint8_t> bits(static_cast<size_t>((total + 7) / 8), 0);
  int64_t j = 0;
  for (const auto& s : seqs)
    for (uint8_t m : s.mask) {
      if (m) bits[static_cast<size_t>(j >> 3)] |= static_cast<uint8_t>(1u << (j & 7));
      ++j;
    }
  return bits;
}

int64_t popcount(const std::vector<uint8_t>& bits) {
  int64_t n = 0;
  for (uint8_t b : bits) n += std::popcount(b);
  return n;
}

// A valid cache in `dir` (matching `expected`), or null with `why` set.
std::shared_ptr<const TokenizedCorpus> open_cached(const std::string& dir, const json& expected, const std::string& source,
                                                   int per_record, std::string& why) {
  const std::string desc_path = (fs::path(dir) / "cache.json").string();
  std::ifstream d(desc_path);
  if (!d.good()) {
    why = fmt::format("{} is missing", desc_path);
    return nullptr;
  }
  json desc;
  try {
    std::stringstream ss;
    ss << d.rdbuf();
    desc = json::parse(ss.str());
  } catch (const json::exception& e) {
    why = fmt::format("{} is not valid JSON ({})", desc_path, e.what());
    return nullptr;
  }
  for (auto it = expected.begin(); it != expected.end(); ++it)
    if (!desc.is_object() || !desc.contains(it.key()) || desc[it.key()] != it.value()) {
      why = fmt::format("{}: \"{}\" differs from this run's", desc_path, it.key());
      return nullptr;
    }
  int64_t records = 0, sequences = 0, tokens = 0, loss = 0;
  try {
    records = desc.at("records").get<int64_t>();
    sequences = desc.at("sequences").get<int64_t>();
    tokens = desc.at("tokens").get<int64_t>();
    loss = desc.at("loss_tokens").get<int64_t>();
  } catch (const json::exception& e) {
    why = fmt::format("{}: counts missing ({})", desc_path, e.what());
    return nullptr;
  }
  std::unique_ptr<IndexedDataset> idx;
  try {
    idx = std::make_unique<IndexedDataset>((fs::path(dir) / "tokens").string());
  } catch (const std::exception& e) {
    why = e.what();
    return nullptr;
  }
  if (idx->num_sequences() != sequences || idx->num_documents() != records || sequences != records * per_record ||
      idx->num_tokens() != tokens) {
    why = fmt::format("{}/tokens.idx holds {} sequences in {} documents and {} tokens; cache.json says {}, {} and {}",
                      dir, idx->num_sequences(), idx->num_documents(), idx->num_tokens(), sequences, records, tokens);
    return nullptr;
  }
  const std::string mask_path = (fs::path(dir) / "loss_mask.bin").string();
  std::ifstream m(mask_path, std::ios::binary);
  if (!m.good()) {
    why = fmt::format("{} is missing", mask_path);
    return nullptr;
  }
  std::string bytes((std::istreambuf_iterator<char>(m)), std::istreambuf_iterator<char>());
  const size_t want = kMaskHeader + static_cast<size_t>((tokens + 7) / 8);
  uint64_t version = 0, count = 0;
  if (bytes.size() >= kMaskHeader) {
    std::memcpy(&version, bytes.data() + 8, 8);
    std::memcpy(&count, bytes.data() + 16, 8);
  }
  if (bytes.size() < kMaskHeader || std::memcmp(bytes.data(), kMaskMagic, 8) != 0 || version != kMaskVersion ||
      count != static_cast<uint64_t>(tokens) || bytes.size() != want) {
    why = fmt::format("{}: magic '{}', version {}, {} tokens, {} bytes; expected magic PRIMUSLM, version {}, {} "
                      "tokens and {} bytes",
                      mask_path, printable(std::string_view(bytes).substr(0, 8)), version, count, bytes.size(),
                      kMaskVersion, tokens, want);
    return nullptr;
  }
  std::vector<uint8_t> bits(bytes.begin() + kMaskHeader, bytes.end());
  if (popcount(bits) != loss) {
    why = fmt::format("{} holds {} loss tokens; cache.json says {}", mask_path, popcount(bits), loss);
    return nullptr;
  }
  return std::make_shared<TokenizedCorpus>(source, per_record, std::move(idx), std::move(bits));
}

// Writes the cache of `corpus` to `dir` through a temporary directory; returns "" or why not.
std::string write_cache(const std::string& dir, json desc, const TokenizedCorpus& corpus, int64_t vocab_size) {
  static std::atomic<int> counter{0};
  const std::string tmp = fmt::format("{}.tmp-{}-{}", dir, ::getpid(), counter++);
  try {
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    {
      IndexedDatasetWriter w((fs::path(tmp) / "tokens").string(), optimal_token_dtype(vocab_size));
      const int per = corpus.sequences_per_record();
      std::vector<int32_t> toks, lens;
      std::vector<uint8_t> bits;
      for (int64_t r = 0; r < corpus.num_records(); ++r) {
        toks.clear();
        lens.clear();
        for (int64_t s = r * per; s < (r + 1) * per; ++s) {
          const int64_t len = corpus.length(s);
          toks.resize(toks.size() + static_cast<size_t>(len));
          bits.resize(static_cast<size_t>(len));
          corpus.read(s, 0, len, toks.data() + toks.size() - len, bits.data());
          lens.push_back(static_cast<int32_t>(len));
        }
        w.add_document(toks, lens);
      }
      w.finalize();
    }
    {
      std::ofstream m((fs::path(tmp) / "loss_mask.bin").string(), std::ios::binary);
      const uint64_t n = static_cast<uint64_t>(corpus.num_tokens());
      m.write(kMaskMagic, 8);
      m.write(reinterpret_cast<const char*>(&kMaskVersion), 8);
      m.write(reinterpret_cast<const char*>(&n), 8);
      m.write(reinterpret_cast<const char*>(corpus.mask_bits().data()),
              static_cast<std::streamsize>(corpus.mask_bits().size()));
      PRIMUS_CHECK(m.good(), "cannot write {}/loss_mask.bin", tmp);
    }
    desc["records"] = corpus.num_records();
    desc["sequences"] = corpus.num_sequences();
    desc["tokens"] = corpus.num_tokens();
    desc["loss_tokens"] = corpus.loss_tokens();
    {
      std::ofstream j((fs::path(tmp) / "cache.json").string());
      j << desc.dump(1) << "\n";
      PRIMUS_CHECK(j.good(), "cannot write {}/cache.json", tmp);
    }
    if (fs::exists(dir)) fs::remove_all(dir);  // a corrupt cache, already reported
    std::error_code ec;
    fs::rename(tmp, dir, ec);
    if (ec) {
      fs::remove_all(tmp);
      return fmt::format("cannot rename {} to {}: {} (another process may have written it)", tmp, dir, ec.message());
    }
    return "";
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    return fmt::format("cannot write the SFT cache {}: {}", dir, e.what());
  }
}

}  // namespace

std::string hash_bytes(std::string_view bytes) {
  Hasher h;
  h.update(bytes.data(), bytes.size());
  return h.hex();
}

std::string hash_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PRIMUS_CHECK(in.good(), "cannot read {}", path);
  Hasher h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h.update(buf.data(), static_cast<size_t>(in.gcount()));
  }
  return h.hex();
}

std::string tokenizer_identity(const Tokenizer& tok, const std::string& model_path) {
  std::string s = fmt::format("{} vocab={} bos={} eod={} pad={}", tok.type_name(), tok.vocab_size(), tok.bos(),
                              tok.eod(), tok.pad());
  if (model_path.empty()) return s;
  std::vector<fs::path> files;
  if (fs::is_directory(model_path)) {
    for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "merges.txt"})
      files.push_back(fs::path(model_path) / f);
  } else {
    files.push_back(model_path);
    files.push_back(fs::path(model_path).parent_path() / "tokenizer_config.json");
  }
  for (const auto& f : files)
    if (fs::is_regular_file(f)) s += fmt::format(" {}={}", f.filename().string(), hash_file(f.string()));
  return s;
}

// ---- TokenizedCorpus -----------------------------------------------------------------------

TokenizedCorpus::TokenizedCorpus(std::string source, int per_record, std::vector<TokenizedExample> seqs)
    : source_(std::move(source)), per_record_(per_record) {
  PRIMUS_CHECK(per_record == 1 || per_record == 2, "sequences per record must be 1 or 2 (got {})", per_record);
  PRIMUS_CHECK(seqs.size() % static_cast<size_t>(per_record) == 0, "{} sequences for {} per record", seqs.size(),
               per_record);
  for (const auto& s : seqs) {
    PRIMUS_CHECK(s.tokens.size() == s.mask.size(), "{}: {} tokens but {} mask entries", source_, s.tokens.size(),
                 s.mask.size());
    offsets_.push_back(offsets_.back() + static_cast<int64_t>(s.tokens.size()));
  }
  tokens_.reserve(static_cast<size_t>(offsets_.back()));
  for (const auto& s : seqs) tokens_.insert(tokens_.end(), s.tokens.begin(), s.tokens.end());
  mask_bits_ = pack_bits(seqs, offsets_.back());
  loss_tokens_ = popcount(mask_bits_);
}

TokenizedCorpus::TokenizedCorpus(std::string source, int per_record, std::unique_ptr<IndexedDataset> tokens,
                                 std::vector<uint8_t> mask_bits)
    : source_(std::move(source)), per_record_(per_record), mapped_(std::move(tokens)), mask_bits_(std::move(mask_bits)) {
  for (int32_t len : mapped_->sequence_lengths()) offsets_.push_back(offsets_.back() + len);
  loss_tokens_ = popcount(mask_bits_);
}

TokenizedCorpus::~TokenizedCorpus() = default;

void TokenizedCorpus::read(int64_t seq, int64_t offset, int64_t n, int32_t* tokens, uint8_t* mask) const {
  PRIMUS_CHECK(seq >= 0 && seq < num_sequences() && offset >= 0 && n >= 0 && offset + n <= length(seq),
               "{}: tokens [{}, {}) of sequence {} are outside its {} tokens (of {} sequences)", source_, offset,
               offset + n, seq, seq < num_sequences() && seq >= 0 ? length(seq) : 0, num_sequences());
  const int64_t base = offsets_[seq] + offset;
  if (mapped_)
    mapped_->read(seq, offset, n, tokens);
  else
    std::memcpy(tokens, tokens_.data() + base, static_cast<size_t>(n) * sizeof(int32_t));
  for (int64_t k = 0; k < n; ++k) {
    const int64_t j = base + k;
    mask[k] = (mask_bits_[static_cast<size_t>(j >> 3)] >> (j & 7)) & 1;
  }
}

// ---- load or build -------------------------------------------------------------------------

std::string sft_cache_dir(const std::string& input, const SftTokenizer& tok, const CorpusOptions& opt) {
  return dir_for(input, opt, expected_description(input, tok, opt)["key"].get<std::string>());
}

CorpusLoad load_or_build_corpus(const std::string& input, SftTokenizer& tok, const CorpusOptions& opt) {
  PRIMUS_CHECK(opt.kind != RecordKind::kAny, "load_or_build_corpus: the kind must be SFT or preference");
  PRIMUS_CHECK(fs::is_regular_file(input), "chat data file {} does not exist", input);
  const int per = opt.kind == RecordKind::kPreference ? 2 : 1;
  CorpusLoad out;
  json desc;
  if (opt.use_cache) {
    desc = expected_description(input, tok, opt);
    out.cache_dir = dir_for(input, opt, desc["key"].get<std::string>());
    if (fs::exists(out.cache_dir)) {
      std::string why;
      out.corpus = open_cached(out.cache_dir, desc, input, per, why);
      if (out.corpus) {
        out.from_cache = true;
        return out;
      }
      out.warning = fmt::format("SFT cache {} is not usable ({}); tokenizing {} again", out.cache_dir, why, input);
      fmt::print(stderr, "warning: {}\n", out.warning);
    }
  }
  std::vector<TokenizedExample> seqs;
  for (const ChatRecord& r : read_chat_records(input, opt.kind)) {
    if (per == 2) {
      auto [c, rj] = tok.tokenize_preference(r);
      seqs.push_back(std::move(c));
      seqs.push_back(std::move(rj));
    } else {
      seqs.push_back(tok.tokenize(r));
    }
  }
  auto corpus = std::make_shared<TokenizedCorpus>(input, per, std::move(seqs));
  out.corpus = corpus;
  if (opt.use_cache) {
    if (!opt.cache_dir.empty()) {
      std::error_code ec;
      fs::create_directories(opt.cache_dir, ec);
    }
    const std::string err = write_cache(out.cache_dir, desc, *corpus, tok.tokenizer().vocab_size());
    if (!err.empty()) {
      out.warning += (out.warning.empty() ? "" : "; ") + err;
      fmt::print(stderr, "warning: {}\n", err);
      out.cache_dir.clear();
    }
  }
  return out;
}

}  // namespace primus::data::sft
