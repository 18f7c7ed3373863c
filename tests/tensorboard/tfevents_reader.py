"""An independent reader of TensorBoard event files, written from the format alone.

Record framing (TFRecord): uint64 length | uint32 masked_crc32c(length bytes) |
data | uint32 masked_crc32c(data); little endian; masked(c) = ((c >> 15 | c << 17) +
0xa282ead8) mod 2**32; CRC-32C is the Castagnoli CRC (reflected polynomial 0x82F63B78).

Each record is a tensorflow.Event protobuf; we decode wall_time (1, double), step
(2, int64 varint), file_version (3, string) and summary (5) -> value (1) -> tag (1,
string) / simple_value (2, float). Unknown fields are skipped by wire type.

No TensorFlow, protobuf or tensorboard package is used (Debian's python3 has none),
and nothing is shared with the C++ writer.
"""
import struct


def crc32c(data: bytes) -> int:
    # Bitwise, no table: slow but obviously the definition.
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(blob: bytes):
    """Yields record payloads; raises ValueError on a CRC mismatch or truncation."""
    pos = 0
    while pos < len(blob):
        if len(blob) - pos < 12:
            raise ValueError(f"truncated header at byte {pos}")
        (length,) = struct.unpack_from("<Q", blob, pos)
        (length_crc,) = struct.unpack_from("<I", blob, pos + 8)
        if length_crc != masked_crc32c(blob[pos:pos + 8]):
            raise ValueError(f"length CRC mismatch at byte {pos}")
        start = pos + 12
        end = start + length
        if end + 4 > len(blob):
            raise ValueError(f"truncated record at byte {pos}")
        data = blob[start:end]
        (data_crc,) = struct.unpack_from("<I", blob, end)
        if data_crc != masked_crc32c(data):
            raise ValueError(f"data CRC mismatch at byte {pos}")
        yield data
        pos = end + 4


def _varint(buf: bytes, pos: int):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yields (field_number, wire_type, value) for a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value = buf[pos:pos + 8]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value = buf[pos:pos + n]
            pos += n
        elif wire == 5:
            value = buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def decode_event(data: bytes) -> dict:
    event = {"wall_time": None, "step": 0, "file_version": None, "scalars": []}
    for field, wire, value in _fields(data):
        if field == 1 and wire == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2 and wire == 0:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3 and wire == 2:
            event["file_version"] = value.decode("utf-8")
        elif field == 5 and wire == 2:
            for sfield, swire, svalue in _fields(value):
                if sfield == 1 and swire == 2:
                    tag, simple = None, None
                    for vfield, vwire, vvalue in _fields(svalue):
                        if vfield == 1 and vwire == 2:
                            tag = vvalue.decode("utf-8")
                        elif vfield == 2 and vwire == 5:
                            simple = struct.unpack("<f", vvalue)[0]
                    event["scalars"].append((tag, simple))
    return event


def read_event_file(path: str):
    with open(path, "rb") as f:
        return [decode_event(r) for r in read_records(f.read())]
