#include "data/preprocess.h"

#include <fmt/core.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "data/line_reader.h"

namespace primus::data {

namespace {

constexpr size_t kBatchLines = 256;
constexpr size_t kBatchBytes = 1 << 20;
constexpr int kMaxBadLineMessages = 10;

struct Batch {
  int64_t seq = 0;
  size_t input = 0;         // index into options.inputs
  int64_t first_line = 0;   // line number of lines[0]
  std::vector<std::string> lines;
  int64_t bytes = 0;
};

// Tokens of one document for one key, with its sequence lengths.
struct KeyDoc {
  std::vector<int32_t> tokens;
  std::vector<int32_t> lengths;
};

struct LineResult {
  bool empty = false;
  std::string error;         // non-empty: bad line
  std::vector<KeyDoc> keys;  // one per json key
};

struct BatchResult {
  Batch batch;
  std::vector<LineResult> lines;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string format_duration(double s) {
  if (s < 0 || s > 1e7) return "?";
  const auto t = static_cast<int64_t>(s);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

}  // namespace

std::string preprocess_output_prefix(const std::string& prefix, const std::string& key, bool split) {
  return fmt::format("{}_{}_{}", prefix, key, split ? "sentence" : "document");
}

std::vector<std::string> split_sentences(std::string_view text, bool keep_newlines) {
  std::vector<std::string> out;
  size_t start = 0;
  auto push = [&](size_t b, size_t e) {
    while (b < e && is_space(text[b])) ++b;
    size_t end = e;
    while (end > b && is_space(text[end - 1])) --end;
    if (end > b) {
      std::string s(text.substr(b, end - b));
      if (keep_newlines && e > end && text.substr(end, e - end).find('\n') != std::string_view::npos) s += '\n';
      out.push_back(std::move(s));
    }
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c != '.' && c != '!' && c != '?') continue;
    size_t j = i + 1;
    while (j < text.size() && (text[j] == '"' || text[j] == '\'' || text[j] == ')' || text[j] == ']')) ++j;
    if (j >= text.size() || !is_space(text[j])) continue;
    size_t k = j;
    while (k < text.size() && is_space(text[k])) ++k;
    if (k >= text.size()) break;
    const unsigned char n = static_cast<unsigned char>(text[k]);
    if ((n >= 'A' && n <= 'Z') || (n >= '0' && n <= '9') || n == '"' || n == '\'' || n >= 0x80) {
      push(start, j);
      start = j;
      i = k - 1;
    }
  }
  push(start, text.size());
  return out;
}

PreprocessStats run_preprocess(const PreprocessOptions& opt, const Tokenizer& prototype) {
  PRIMUS_CHECK(!opt.inputs.empty(), "preprocess: no --input given");
  PRIMUS_CHECK(!opt.output_prefix.empty(), "preprocess: no --output-prefix given");
  PRIMUS_CHECK(!opt.json_keys.empty(), "preprocess: --json-keys is empty");
  PRIMUS_CHECK(opt.workers >= 1 && opt.workers <= 1024, "preprocess: --workers must be in [1, 1024] (got {})",
               opt.workers);
  if (opt.append_eod)
    PRIMUS_CHECK(prototype.eod() >= 0,
                 "--append-eod: the {} has no end-of-document token (no eos_token in tokenizer_config.json and none of "
                 "the usual names in the vocabulary)",
                 prototype.type_name());
  for (const auto& in : opt.inputs) PRIMUS_CHECK(std::filesystem::is_regular_file(in), "input {} does not exist", in);

  PreprocessStats stats;
  const TokenDType dtype = optimal_token_dtype(prototype.vocab_size());
  std::vector<std::unique_ptr<IndexedDatasetWriter>> writers;
  for (const auto& key : opt.json_keys) {
    stats.output_prefixes.push_back(preprocess_output_prefix(opt.output_prefix, key, opt.split_sentences));
    writers.push_back(std::make_unique<IndexedDatasetWriter>(stats.output_prefixes.back(), dtype));
  }
  int64_t total_file_bytes = 0;
  for (const auto& in : opt.inputs) total_file_bytes += static_cast<int64_t>(std::filesystem::file_size(in));

  // ---- shared state ----
  std::mutex mu;
  std::condition_variable cv_work, cv_done, cv_space;
  std::deque<Batch> work;
  std::map<int64_t, BatchResult> done;
  bool reader_finished = false;
  std::atomic<bool> abort{false};
  std::string reader_error;
  int64_t next_to_write = 0;
  int64_t produced = 0;  // batches handed to the workers
  const int64_t max_in_flight = 4 * opt.workers + 2;
  std::atomic<int64_t> file_bytes_done{0};

  // ---- reader ----
  std::thread reader([&] {
    try {
      int64_t seq = 0;
      int64_t bytes_before = 0;
      for (size_t f = 0; f < opt.inputs.size() && !abort; ++f) {
        LineReader lr(opt.inputs[f]);
        Batch b;
        std::string line;
        auto flush = [&] {
          if (b.lines.empty()) return;
          std::unique_lock lock(mu);
          cv_space.wait(lock, [&] { return abort || seq - next_to_write < max_in_flight; });
          if (abort) return;
          b.seq = seq++;
          produced = seq;
          work.push_back(std::move(b));
          b = Batch{};
          cv_work.notify_one();
        };
        while (!abort && lr.next(line)) {
          if (b.lines.empty()) {
            b.input = f;
            b.first_line = lr.line_number();
          }
          b.bytes += static_cast<int64_t>(line.size()) + 1;
          b.lines.push_back(std::move(line));
          line.clear();
          if (b.lines.size() >= kBatchLines || b.bytes >= static_cast<int64_t>(kBatchBytes)) {
            flush();
            file_bytes_done = bytes_before + lr.file_bytes_read();
          }
        }
        flush();
        bytes_before += lr.file_size();
        file_bytes_done = bytes_before;
      }
    } catch (const std::exception& e) {
      std::lock_guard lock(mu);
      reader_error = e.what();
    }
    std::lock_guard lock(mu);
    reader_finished = true;
    cv_work.notify_all();
    cv_done.notify_all();
  });

  // ---- workers ----
  auto tokenize_line = [&](Tokenizer& tok, const std::string& line, LineResult& r) {
    bool blank = true;
    for (char c : line) blank &= is_space(c);
    if (blank) {
      r.empty = true;
      return;
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      r.error = fmt::format("not valid JSON ({})", e.what());
      return;
    }
    if (!j.is_object()) {
      r.error = "not a JSON object";
      return;
    }
    r.keys.resize(opt.json_keys.size());
    for (size_t k = 0; k < opt.json_keys.size(); ++k) {
      const auto it = j.find(opt.json_keys[k]);
      if (it == j.end()) {
        r.error = fmt::format("has no key \"{}\" (--json-keys)", opt.json_keys[k]);
        return;
      }
      std::vector<std::string> sentences;
      if (it->is_string()) {
        if (opt.split_sentences)
          sentences = split_sentences(it->get_ref<const std::string&>(), opt.keep_newlines);
        else
          sentences.push_back(it->get<std::string>());
      } else if (it->is_array()) {  // Megatron: a list is already the sentences
        for (const auto& s : *it) {
          if (!s.is_string()) {
            r.error = fmt::format("key \"{}\" is a list holding a non-string", opt.json_keys[k]);
            return;
          }
          sentences.push_back(s.get<std::string>());
        }
      } else {
        r.error = fmt::format("key \"{}\" is {}, expected a string", opt.json_keys[k], it->type_name());
        return;
      }
      KeyDoc& d = r.keys[k];
      for (const std::string& s : sentences) {
        const size_t before = d.tokens.size();
        tok.encode_append(s, d.tokens, opt.special);
        if (d.tokens.size() > before) d.lengths.push_back(static_cast<int32_t>(d.tokens.size() - before));
      }
      if (opt.append_eod && !d.tokens.empty()) {
        d.tokens.push_back(tok.eod());
        d.lengths.back() += 1;
      }
    }
  };

  std::vector<std::thread> workers;
  std::string worker_error;
  for (int w = 0; w < opt.workers; ++w) {
    workers.emplace_back([&] {
      try {
        auto tok = prototype.clone();
        while (true) {
          Batch b;
          {
            std::unique_lock lock(mu);
            cv_work.wait(lock, [&] { return abort || !work.empty() || reader_finished; });
            if (abort || (work.empty() && reader_finished)) return;
            b = std::move(work.front());
            work.pop_front();
          }
          BatchResult res;
          res.lines.resize(b.lines.size());
          for (size_t i = 0; i < b.lines.size() && !abort; ++i) {
            try {
              tokenize_line(*tok, b.lines[i], res.lines[i]);
            } catch (const std::exception& e) {  // e.g. NullTokenizer given a non-number
              res.lines[i] = LineResult{};
              res.lines[i].error = e.what();
            }
          }
          res.batch = std::move(b);
          std::lock_guard lock(mu);
          const int64_t seq = res.batch.seq;
          done.emplace(seq, std::move(res));
          cv_done.notify_all();
        }
      } catch (const std::exception& e) {
        std::lock_guard lock(mu);
        if (worker_error.empty()) worker_error = e.what();
        abort = true;
        cv_done.notify_all();
        cv_space.notify_all();
        cv_work.notify_all();
      }
    });
  }

  auto stop_threads = [&] {
    {
      std::lock_guard lock(mu);
      abort = true;
    }
    cv_work.notify_all();
    cv_space.notify_all();
    cv_done.notify_all();
    reader.join();
    for (auto& t : workers) t.join();
  };

  // ---- writer (this thread) ----
  const auto t0 = std::chrono::steady_clock::now();
  const bool tty = opt.progress && ::isatty(STDERR_FILENO);
  auto last_print = t0;
  int64_t last_logged_docs = 0;
  auto print_progress = [&](bool final_line) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double mb = static_cast<double>(stats.input_bytes) / 1e6;
    const double frac = total_file_bytes > 0 ? static_cast<double>(file_bytes_done) / total_file_bytes : 0;
    const double eta = frac > 0.001 ? s * (1 - frac) / frac : -1;
    const std::string line =
        fmt::format("[preprocess] {} docs  {:.0f} docs/s  {:.1f} MB/s  {:.2f}M tokens  {:.0f}%  ETA {}",
                    stats.documents, stats.documents / std::max(s, 1e-9), mb / std::max(s, 1e-9),
                    stats.tokens / 1e6, 100 * frac, final_line ? "0s" : format_duration(eta));
    if (tty)
      fmt::print(stderr, "\r{}\x1b[K{}", line, final_line ? "\n" : "");
    else
      fmt::print(stderr, "{}\n", line);
  };

  try {
    while (true) {
      BatchResult res;
      {
        std::unique_lock lock(mu);
        cv_done.wait(lock, [&] {
          return abort || done.count(next_to_write) || (reader_finished && next_to_write == produced);
        });
        if (abort) break;
        auto it = done.find(next_to_write);
        if (it == done.end()) break;  // the reader is done and every batch is written
        res = std::move(it->second);
        done.erase(it);
        ++next_to_write;
        cv_space.notify_one();
      }
      const std::string& file = opt.inputs[res.batch.input];
      for (size_t i = 0; i < res.lines.size(); ++i) {
        LineResult& r = res.lines[i];
        stats.input_bytes += static_cast<int64_t>(res.batch.lines[i].size()) + 1;
        if (r.empty) {
          ++stats.empty_lines;
          continue;
        }
        if (!r.error.empty()) {
          const int64_t line_no = res.batch.first_line + static_cast<int64_t>(i);
          if (!opt.skip_bad_lines)
            fail("{}:{}: {}; fix the line or pass --skip-bad-lines to skip and count such lines", file, line_no,
                 r.error);
          if (stats.bad_lines < kMaxBadLineMessages)
            fmt::print(stderr, "\n[preprocess] skipping {}:{}: {}\n", file, line_no, r.error);
          ++stats.bad_lines;
          continue;
        }
        for (size_t k = 0; k < writers.size(); ++k) {
          writers[k]->add_document(r.keys[k].tokens, r.keys[k].lengths);
          stats.tokens += static_cast<int64_t>(r.keys[k].tokens.size());
        }
        ++stats.documents;
      }
      if (opt.progress) {
        const auto now = std::chrono::steady_clock::now();
        if (tty ? now - last_print > std::chrono::milliseconds(500)
                : stats.documents - last_logged_docs >= opt.log_interval) {
          print_progress(false);
          last_print = now;
          last_logged_docs = stats.documents;
        }
      }
    }
  } catch (...) {
    stop_threads();
    throw;  // the writers' destructors remove the temporary files
  }
  stop_threads();
  if (!worker_error.empty()) fail("preprocess: {}", worker_error);
  if (!reader_error.empty()) fail("preprocess: {}", reader_error);
  for (auto& w : writers) w->finalize();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (opt.progress) print_progress(true);
  return stats;
}

}  // namespace primus::data
