#include "metrics/tensorboard_record.h"

#include <array>
#include <cstring>

#include "core/error.h"

namespace primus::metrics::tfevents {

namespace {

// Byte-at-a-time table for the reflected Castagnoli polynomial, built at compile time.
constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : (c >> 1);
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// ---- protobuf encoding -----------------------------------------------------
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (uint64_t{field} << 3) | type); }
void put_fixed64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_fixed32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_bytes_field(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}
void put_double_field(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  put_key(out, field, kFixed64);
  put_fixed64(out, bits);
}

// ---- protobuf decoding -----------------------------------------------------
struct Reader {
  std::string_view data;
  size_t pos = 0;

  bool done() const { return pos >= data.size(); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      PRIMUS_CHECK(pos < data.size(), "truncated varint in an Event protobuf");
      const auto b = static_cast<uint8_t>(data[pos++]);
      v |= uint64_t{b & 0x7Fu} << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes in an Event protobuf");
  }
  uint64_t fixed(int nbytes) {
    PRIMUS_CHECK(pos + nbytes <= data.size(), "truncated fixed{} field in an Event protobuf", nbytes * 8);
    uint64_t v = 0;
    for (int i = 0; i < nbytes; ++i) v |= uint64_t{static_cast<uint8_t>(data[pos + i])} << (8 * i);
    pos += nbytes;
    return v;
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    PRIMUS_CHECK(n <= data.size() - pos, "length-delimited field of {} bytes overruns the message ({} left)",
                 n, data.size() - pos);
    std::string_view s = data.substr(pos, n);
    pos += n;
    return s;
  }
  void skip(uint32_t type) {
    switch (type) {
      case kVarint: varint(); break;
      case kFixed64: fixed(8); break;
      case kLengthDelimited: bytes(); break;
      case kFixed32: fixed(4); break;
      default: fail("unsupported protobuf wire type {} in an Event", type);
    }
  }
};

Scalar decode_value(std::string_view data) {
  Scalar s;
  Reader r{data};
  while (!r.done()) {
    const uint64_t key = r.varint();
    const auto field = static_cast<uint32_t>(key >> 3), type = static_cast<uint32_t>(key & 7);
    if (field == 1 && type == kLengthDelimited) {
      s.tag = std::string(r.bytes());
    } else if (field == 2 && type == kFixed32) {
      const auto bits = static_cast<uint32_t>(r.fixed(4));
      std::memcpy(&s.value, &bits, 4);
    } else {
      r.skip(type);
    }
  }
  return s;
}

uint64_t load_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}
uint32_t load_u32(const char* p) { return static_cast<uint32_t>(load_u64(p) & 0xFFFFFFFFu); }

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = kCrc32cTable[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string frame_record(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_fixed64(out, data.size());
  put_fixed32(out, masked_crc32c(out.data(), 8));
  out.append(data);
  put_fixed32(out, masked_crc32c(data.data(), data.size()));
  return out;
}

std::string encode_file_version_event(double wall_time, std::string_view version) {
  std::string ev;
  put_double_field(ev, 1, wall_time);
  put_bytes_field(ev, 3, version);
  return ev;
}

std::string encode_scalars_event(double wall_time, int64_t step, const std::vector<Scalar>& scalars) {
  std::string summary;
  for (const Scalar& s : scalars) {
    std::string value;
    put_bytes_field(value, 1, s.tag);
    uint32_t bits;
    std::memcpy(&bits, &s.value, 4);
    put_key(value, 2, kFixed32);
    put_fixed32(value, bits);
    put_bytes_field(summary, 1, value);
  }
  std::string ev;
  put_double_field(ev, 1, wall_time);
  put_key(ev, 2, kVarint);
  put_varint(ev, static_cast<uint64_t>(step));  // int64: two's complement as a 10-byte varint if negative
  put_bytes_field(ev, 5, summary);
  return ev;
}

Event decode_event(std::string_view data) {
  Event ev;
  Reader r{data};
  while (!r.done()) {
    const uint64_t key = r.varint();
    const auto field = static_cast<uint32_t>(key >> 3), type = static_cast<uint32_t>(key & 7);
    if (field == 1 && type == kFixed64) {
      const uint64_t bits = r.fixed(8);
      std::memcpy(&ev.wall_time, &bits, 8);
    } else if (field == 2 && type == kVarint) {
      ev.step = static_cast<int64_t>(r.varint());
    } else if (field == 3 && type == kLengthDelimited) {
      ev.file_version = std::string(r.bytes());
    } else if (field == 5 && type == kLengthDelimited) {
      Reader summary{r.bytes()};
      while (!summary.done()) {
        const uint64_t skey = summary.varint();
        const auto sfield = static_cast<uint32_t>(skey >> 3), stype = static_cast<uint32_t>(skey & 7);
        if (sfield == 1 && stype == kLengthDelimited) {
          ev.scalars.push_back(decode_value(summary.bytes()));
        } else {
          summary.skip(stype);
        }
      }
    } else {
      r.skip(type);
    }
  }
  return ev;
}

std::vector<std::string> split_records(std::string_view bytes, std::string_view source,
                                       bool allow_truncated_tail) {
  std::vector<std::string> records;
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t left = bytes.size() - pos;
    if (left < 12) {
      PRIMUS_CHECK(allow_truncated_tail, "{}: truncated record header at byte {} ({} bytes left, 12 needed)",
                   source, pos, left);
      break;
    }
    const uint64_t len = load_u64(bytes.data() + pos);
    const uint32_t len_crc = load_u32(bytes.data() + pos + 8);
    PRIMUS_CHECK(len_crc == masked_crc32c(bytes.data() + pos, 8),
                 "{}: length CRC mismatch in the record at byte {} (stored {:#010x}, computed {:#010x}): "
                 "the file is corrupt or not a TFRecord/tfevents file",
                 source, pos, len_crc, masked_crc32c(bytes.data() + pos, 8));
    if (len + 16 > left) {
      PRIMUS_CHECK(allow_truncated_tail, "{}: record at byte {} declares {} bytes but only {} remain", source,
                   pos, len, left - 12);
      break;
    }
    const char* data = bytes.data() + pos + 12;
    const uint32_t data_crc = load_u32(data + len);
    PRIMUS_CHECK(data_crc == masked_crc32c(data, len),
                 "{}: data CRC mismatch in the record at byte {} (stored {:#010x}, computed {:#010x})", source,
                 pos, data_crc, masked_crc32c(data, len));
    records.emplace_back(data, len);
    pos += 16 + len;
  }
  return records;
}

}  // namespace primus::metrics::tfevents
