// Where a GPT dataset takes its token sequences from: an indexed dataset on disk, or
// synthetic documents (mock_data).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "data/indexed_dataset.h"

namespace primus::data {

class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t num_sequences() const = 0;
  virtual int32_t sequence_length(int64_t i) const = 0;
  // Tokens [offset, offset + length) of sequence i into out.
  virtual void read(int64_t i, int64_t offset, int64_t length, int32_t* out) const = 0;
  virtual std::string name() const = 0;
  // Changes whenever the tokens may have changed (part of the index cache key).
  virtual std::string cache_key() const = 0;
};

class IndexedTokenSource final : public TokenSource {
 public:
  explicit IndexedTokenSource(const std::string& prefix) : ds_(prefix) {}
  int64_t num_sequences() const override { return ds_.num_sequences(); }
  int32_t sequence_length(int64_t i) const override { return ds_.sequence_length(i); }
  void read(int64_t i, int64_t offset, int64_t length, int32_t* out) const override {
    ds_.read(i, offset, length, out);
  }
  std::string name() const override { return ds_.prefix(); }
  std::string cache_key() const override { return ds_.prefix() + "@" + ds_.fingerprint(); }
  const IndexedDataset& dataset() const { return ds_; }

 private:
  IndexedDataset ds_;
};

// mock_data: `count` documents whose lengths (1 .. 2*mean_length) and tokens (ids in
// [0, vocab_size) other than eod) are hashes of (seed, document, position), each ending
// in eod. Nothing is stored: any document can be read in O(its length).
class MockTokenSource final : public TokenSource {
 public:
  MockTokenSource(int64_t vocab_size, int32_t eod, uint64_t seed, int64_t mean_length, int64_t count = 100000);
  int64_t num_sequences() const override { return count_; }
  int32_t sequence_length(int64_t i) const override;
  void read(int64_t i, int64_t offset, int64_t length, int32_t* out) const override;
  std::string name() const override { return "mock_data"; }
  std::string cache_key() const override;

 private:
  int64_t vocab_, mean_, count_;
  int32_t eod_;
  uint64_t seed_;
};

}  // namespace primus::data
