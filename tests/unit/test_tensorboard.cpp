// TensorBoard event files: CRC32C known answers, record framing, protobuf round trip, and
// a writer/reader round trip. tests/tensorboard/test_tfevents.py checks the same files with
// an independent Python reader written from the format.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../test_util.h"
#include "core/error.h"
#include "metrics/tensorboard_reader.h"
#include "metrics/tensorboard_record.h"
#include "metrics/tensorboard_writer.h"

namespace fs = std::filesystem;
using namespace primus::metrics;

namespace {

using primus::test::read_file;
using primus::test::temp_dir;

}  // namespace

// Published check values of CRC-32C (Castagnoli), e.g. RFC 3720 appendix B.4.
TEST(TfEventsCrc, KnownAnswers) {
  EXPECT_EQ(tfevents::crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(tfevents::crc32c(""), 0x00000000u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(tfevents::crc32c(zeros), 0x8A9136AAu);
  EXPECT_EQ(tfevents::crc32c(ones), 0x62A8AB43u);
  std::string inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<char>(i);
  EXPECT_EQ(tfevents::crc32c(inc), 0x46DD794Eu);
}

TEST(TfEventsCrc, MaskIsRotatePlusConstant) {
  const uint32_t c = tfevents::crc32c("123456789");
  const uint32_t expected = ((c >> 15) | (c << 17)) + 0xa282ead8u;
  EXPECT_EQ(tfevents::masked_crc32c("123456789", 9), expected);
}

TEST(TfEventsRecord, FramingLayout) {
  const std::string data = "hello";
  const std::string rec = tfevents::frame_record(data);
  ASSERT_EQ(rec.size(), 8u + 4u + data.size() + 4u);
  uint64_t len = 0;
  for (int i = 0; i < 8; ++i) len |= uint64_t{static_cast<uint8_t>(rec[i])} << (8 * i);
  EXPECT_EQ(len, data.size());
  EXPECT_EQ(rec.substr(12, data.size()), data);
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(rec[at + i])} << (8 * i);
    return v;
  };
  EXPECT_EQ(u32(8), tfevents::masked_crc32c(rec.data(), 8));
  EXPECT_EQ(u32(12 + data.size()), tfevents::masked_crc32c(data.data(), data.size()));
}

// Hand-assembled protobuf bytes for Event{wall_time=1.5, step=300, summary{value{tag="a",
// simple_value=2.0}}}: keys 0x09 (field 1, fixed64), 0x10 (2, varint), 0x2a (5, bytes),
// 0x0a (Summary.value), 0x0a (Value.tag), 0x15 (Value.simple_value, fixed32).
TEST(TfEventsRecord, EncodesTheExpectedProtobufBytes) {
  const std::string got = tfevents::encode_scalars_event(1.5, 300, {{"a", 2.0f}});
  const std::string want(
      "\x09\x00\x00\x00\x00\x00\x00\xf8\x3f"  // wall_time 1.5 = 0x3FF8000000000000
      "\x10\xac\x02"                          // step 300 as varint
      "\x2a\x0a"                              // summary, 10 bytes
      "\x0a\x08"                              // value, 8 bytes
      "\x0a\x01" "a"                          // tag "a"
      "\x15\x00\x00\x00\x40",                 // simple_value 2.0f = 0x40000000
      9 + 3 + 2 + 2 + 3 + 5);
  EXPECT_EQ(got, want);
  const std::string version = tfevents::encode_file_version_event(0.0);
  EXPECT_NE(version.find("brain.Event:2"), std::string::npos);
}

TEST(TfEventsRecord, DecodeRoundTrip) {
  const auto ev = tfevents::decode_event(
      tfevents::encode_scalars_event(1234.25, 77, {{"lm loss", 3.5f}, {"learning-rate", 3e-4f}}));
  EXPECT_EQ(ev.step, 77);
  EXPECT_DOUBLE_EQ(ev.wall_time, 1234.25);
  ASSERT_EQ(ev.scalars.size(), 2u);
  EXPECT_EQ(ev.scalars[0].tag, "lm loss");
  EXPECT_EQ(ev.scalars[0].value, 3.5f);
  EXPECT_EQ(ev.scalars[1].value, 3e-4f);
  const auto v = tfevents::decode_event(tfevents::encode_file_version_event(5.0));
  ASSERT_TRUE(v.file_version.has_value());
  EXPECT_EQ(*v.file_version, "brain.Event:2");
}

TEST(TfEventsRecord, CorruptBytesAreReported) {
  std::string rec = tfevents::frame_record(tfevents::encode_scalars_event(1, 1, {{"x", 1}}));
  std::string bad = rec;
  bad[14] ^= 0x01;  // flip a bit inside the data
  try {
    tfevents::split_records(bad, "some.tfevents");
    FAIL() << "expected a CRC error";
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find("data CRC mismatch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("some.tfevents"), std::string::npos) << e.what();
  }
  bad = rec;
  bad[0] ^= 0x01;  // corrupt the length
  EXPECT_THROW(tfevents::split_records(bad, "f"), primus::Error);
  // A torn tail (writer killed mid-record) is dropped by default, reported when asked.
  const std::string torn = rec + rec.substr(0, rec.size() - 3);
  EXPECT_EQ(tfevents::split_records(torn, "f").size(), 1u);
  EXPECT_THROW(tfevents::split_records(torn, "f", /*allow_truncated_tail=*/false), primus::Error);
}

// Writes a known sequence; if PRIMUS_TFEVENTS_OUT is set the file goes there so the Python
// reader (tests/tensorboard/test_tfevents.py) can check it independently.
TEST(TensorBoardWriter, WritesReadableEventFile) {
  const char* out = std::getenv("PRIMUS_TFEVENTS_OUT");
  const fs::path dir = out ? fs::path(out) : temp_dir("tb");
  std::string path;
  {
    TensorBoardWriter w(dir.string());
    path = w.path();
    for (int step = 1; step <= 20; ++step) {
      w.add_scalars({{"lm loss", 10.0 / step}, {"learning-rate", 3e-4 * step / 20.0}}, step);
      if (step % 5 == 0) w.add_scalar("lm loss validation", 9.0 / step, step);
      w.flush();
    }
    w.add_scalar("grad-norm", std::nan(""), 21);
  }
  EXPECT_NE(fs::path(path).filename().string().rfind("events.out.tfevents.", 0), std::string::npos);
  const auto records = tfevents::split_records(read_file(path), path, false);
  ASSERT_EQ(records.size(), 1u + 40u + 4u + 1u);
  EXPECT_EQ(tfevents::decode_event(records[0]).file_version.value_or(""), "brain.Event:2");

  const auto scalars = read_tensorboard_scalars(dir.string());
  ASSERT_EQ(scalars.at("lm loss").size(), 20u);
  for (int step = 1; step <= 20; ++step) {
    EXPECT_EQ(scalars.at("lm loss")[step - 1].step, step);
    EXPECT_EQ(scalars.at("lm loss")[step - 1].value, static_cast<float>(10.0 / step));
    EXPECT_EQ(scalars.at("learning-rate")[step - 1].value, static_cast<float>(3e-4 * step / 20.0));
  }
  EXPECT_EQ(scalars.at("lm loss validation").size(), 4u);
  EXPECT_TRUE(std::isnan(scalars.at("grad-norm")[0].value));
  if (!out) fs::remove_all(dir);
}
