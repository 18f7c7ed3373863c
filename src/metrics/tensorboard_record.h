// The bytes of a TensorBoard event file, written and read without TensorFlow or protobuf.
//
// An event file is a sequence of TFRecords, each framed as
//     uint64 length (little endian) | uint32 masked_crc32c(length bytes) |
//     data[length]                  | uint32 masked_crc32c(data)
// where masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2^32), and CRC32C is the
// Castagnoli CRC (reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF).
//
// Each record's data is a serialized `tensorflow.Event` protobuf. We need only:
//     Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
//               Summary summary = 5; }
//     Summary { repeated Value value = 1; }
//     Value   { string tag = 1; float simple_value = 2; }
// Protobuf wire format: key = (field_number << 3) | wire_type, wire types 0 (varint),
// 1 (fixed64), 2 (length-delimited), 5 (fixed32); integers little endian.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace primus::metrics::tfevents {

// CRC32C (Castagnoli) of `data`; crc32c("123456789") == 0xE3069283.
uint32_t crc32c(const void* data, size_t size);
inline uint32_t crc32c(std::string_view s) { return crc32c(s.data(), s.size()); }
uint32_t masked_crc32c(const void* data, size_t size);

// One TFRecord: the framing above around `data`.
std::string frame_record(std::string_view data);

// Serialized Event protobufs.
std::string encode_file_version_event(double wall_time, std::string_view version = "brain.Event:2");
struct Scalar {
  std::string tag;
  float value = 0;
};
std::string encode_scalars_event(double wall_time, int64_t step, const std::vector<Scalar>& scalars);

// A decoded Event (only the fields above; other fields are skipped).
struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::optional<std::string> file_version;
  std::vector<Scalar> scalars;
};
Event decode_event(std::string_view data);  // throws primus::Error on malformed bytes

// Splits a whole event file into records, verifying both CRCs of each; `source` names the
// file in errors. A truncated final record (a writer killed mid-write) is dropped when
// `allow_truncated_tail`, else reported.
std::vector<std::string> split_records(std::string_view file_bytes, std::string_view source,
                                       bool allow_truncated_tail = true);

}  // namespace primus::metrics::tfevents
