// Indexed dataset (.bin/.idx): the bytes follow Megatron's MMIDIDX layout (checked field by
// field from the format, not through our reader), and corruption is reported by file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../test_util.h"
#include "core/error.h"
#include "data/indexed_dataset.h"

namespace fs = std::filesystem;
using namespace primus::data;

namespace {

using primus::test::read_file;
using primus::test::temp_dir;

template <typename T>
T at(const std::string& s, size_t off) {
  T v;
  std::memcpy(&v, s.data() + off, sizeof(T));
  return v;
}
std::string error_of(const std::string& prefix) {
  try {
    IndexedDataset ds(prefix);
  } catch (const primus::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(IndexedDataset, WritesMegatronLayout) {
  const fs::path d = temp_dir("idx_layout");
  const std::string prefix = (d / "x_text_document").string();
  {
    IndexedDatasetWriter w(prefix, TokenDType::kU16);
    const std::vector<int32_t> a{5, 6, 7}, b{8, 9, 10, 11, 12};
    w.add_document(a, std::vector<int32_t>{3});
    w.add_document({}, {});  // empty document: a repeated document index
    w.add_document(b, std::vector<int32_t>{2, 3});
    EXPECT_FALSE(fs::exists(prefix + ".bin"));  // temporary name until finalize
    w.finalize();
  }
  const std::string idx = read_file(prefix + ".idx"), bin = read_file(prefix + ".bin");
  ASSERT_EQ(idx.substr(0, 9), std::string("MMIDIDX\0\0", 9));
  EXPECT_EQ(at<uint64_t>(idx, 9), 1u);   // version
  EXPECT_EQ(static_cast<uint8_t>(idx[17]), 8);  // uint16
  EXPECT_EQ(at<uint64_t>(idx, 18), 3u);  // sequences
  EXPECT_EQ(at<uint64_t>(idx, 26), 4u);  // document indices: 0, 1, 1, 3
  const size_t h = 34;
  EXPECT_EQ(idx.size(), h + 3 * 4 + 3 * 8 + 4 * 8);
  EXPECT_EQ(at<int32_t>(idx, h + 0), 3);
  EXPECT_EQ(at<int32_t>(idx, h + 4), 2);
  EXPECT_EQ(at<int32_t>(idx, h + 8), 3);
  EXPECT_EQ(at<int64_t>(idx, h + 12 + 8), 6);   // pointer of sequence 1: 3 tokens * 2 bytes
  EXPECT_EQ(at<int64_t>(idx, h + 12 + 16), 10);
  const int64_t docs[4] = {0, 1, 1, 3};
  for (int k = 0; k < 4; ++k) EXPECT_EQ(at<int64_t>(idx, h + 36 + 8 * k), docs[k]);
  ASSERT_EQ(bin.size(), 16u);
  EXPECT_EQ(at<uint16_t>(bin, 0), 5);
  EXPECT_EQ(at<uint16_t>(bin, 14), 12);

  IndexedDataset ds(prefix);
  EXPECT_EQ(ds.num_sequences(), 3);
  EXPECT_EQ(ds.num_documents(), 3);
  EXPECT_EQ(ds.num_tokens(), 8);
  EXPECT_EQ(ds.sequence(2), (std::vector<int32_t>{10, 11, 12}));
  int32_t out[2];
  ds.read(2, 1, 2, out);
  EXPECT_EQ(out[0], 11);
  EXPECT_EQ(out[1], 12);
  EXPECT_THROW(ds.read(2, 2, 2, out), primus::Error);
  fs::remove_all(d);
}

TEST(IndexedDataset, Int32ForLargeVocabularies) {
  EXPECT_EQ(optimal_token_dtype(32000), TokenDType::kU16);
  EXPECT_EQ(optimal_token_dtype(65500), TokenDType::kI32);
  EXPECT_EQ(optimal_token_dtype(128256), TokenDType::kI32);
  const fs::path d = temp_dir("idx_i32");
  const std::string prefix = (d / "big").string();
  IndexedDatasetWriter w(prefix, TokenDType::kI32);
  const std::vector<int32_t> a{128000, 9906, 128009};
  w.add_document(a, std::vector<int32_t>{3});
  w.finalize();
  EXPECT_EQ(IndexedDataset(prefix).sequence(0), a);
  EXPECT_EQ(static_cast<uint8_t>(read_file(prefix + ".idx")[17]), 4);
  fs::remove_all(d);
}

TEST(IndexedDataset, UnfinishedWriterLeavesNothing) {
  const fs::path d = temp_dir("idx_tmp");
  {
    IndexedDatasetWriter w((d / "p").string(), TokenDType::kU16);
    w.add_document(std::vector<int32_t>{1, 2}, std::vector<int32_t>{2});
  }  // no finalize: as if the run failed
  EXPECT_TRUE(fs::is_empty(d));
  fs::remove_all(d);
}

TEST(IndexedDataset, CorruptionIsReportedByFile) {
  const fs::path d = temp_dir("idx_corrupt");
  const std::string prefix = (d / "c").string();
  {
    IndexedDatasetWriter w(prefix, TokenDType::kU16);
    w.add_document(std::vector<int32_t>{1, 2, 3, 4}, std::vector<int32_t>{4});
    w.finalize();
  }
  const std::string idx = read_file(prefix + ".idx"), bin = read_file(prefix + ".bin");
  auto write = [](const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; };

  write(prefix + ".idx", idx.substr(0, idx.size() - 3));
  std::string e = error_of(prefix);
  EXPECT_NE(e.find(prefix + ".idx"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  write(prefix + ".idx", "XXIDIDX" + idx.substr(7));
  e = error_of(prefix);
  EXPECT_NE(e.find("MMIDIDX"), std::string::npos) << e;

  write(prefix + ".idx", idx);
  write(prefix + ".bin", bin.substr(0, 6));
  e = error_of(prefix);
  EXPECT_NE(e.find(prefix + ".bin"), std::string::npos) << e;
  EXPECT_NE(e.find("6 bytes"), std::string::npos) << e;

  fs::remove(prefix + ".bin");
  e = error_of(prefix);
  EXPECT_NE(e.find("cannot open"), std::string::npos) << e;
  fs::remove_all(d);
}

// Found by fuzz_indexed_dataset (fuzz/README.md): indexed_dataset_unaligned.fuzz (UBSan: the
// .idx arrays start at byte 34, so a direct int32/int64 load from the mapping is misaligned) and
// indexed_dataset_count_overflow.fuzz (counts whose byte size wraps around uint64 matched the
// file size, then a vector of 2^61 lengths) and indexed_dataset_empty.fuzz (no sequences: a
// memcpy into an empty vector's null data) and indexed_dataset_zero_length_read.fuzz (a
// sequence of length 0 in an empty .bin: a zero-byte memcpy from the unmapped, null .bin into a
// null vector, undefined for memcpy). Each input is the fuzz case as written: its first
// byte x 8 = the .idx's length, the rest the .bin. It must open or fail with a named error, and
// read back whatever it accepts.
class IndexedDatasetFuzzFound : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Cases, IndexedDatasetFuzzFound,
                         ::testing::Values("indexed_dataset_unaligned.fuzz", "indexed_dataset_count_overflow.fuzz",
                                           "indexed_dataset_empty.fuzz", "indexed_dataset_zero_length_read.fuzz"));
TEST_P(IndexedDatasetFuzzFound, OpensOrFailsByName) {
  std::ifstream in(fs::path(PRIMUS_TEST_DATA_DIR) / "fuzz_regressions" / GetParam(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(bytes.empty());
  const size_t cut = std::min(bytes.size() - 1, static_cast<size_t>(static_cast<unsigned char>(bytes[0])) * 8);
  const fs::path dir = fs::temp_directory_path() / ("primus_fuzz_idx_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "ds.idx", std::ios::binary) << bytes.substr(1, cut);
  std::ofstream(dir / "ds.bin", std::ios::binary) << bytes.substr(1 + cut);
  try {
    const IndexedDataset ds((dir / "ds").string());
    int64_t tokens = 0;
    for (int64_t i = 0; i < ds.num_sequences(); ++i) tokens += static_cast<int64_t>(ds.sequence(i).size());
    EXPECT_EQ(tokens, ds.num_tokens());
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find("ds."), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}
