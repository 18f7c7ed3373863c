"""Checks the C++ TensorBoard writer with the independent reader in tfevents_reader.py.

Runs the GoogleTest case TensorBoardWriter.WritesReadableEventFile with
PRIMUS_TFEVENTS_OUT pointing at a fresh directory, then reads the event file back:
CRCs of every record, the file-version event first, and every scalar's tag, step and
float32 value against the formula the C++ test used.

usage: test_tfevents.py --tests-binary build/bin/primus_tests
"""
import argparse
import math
import os
import re
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tfevents_reader as tf  # noqa: E402


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tests-binary", required=True)
    args = ap.parse_args()

    # Known answers of the reference CRC itself (RFC 3720 B.4 and the common check value).
    assert tf.crc32c(b"123456789") == 0xE3069283
    assert tf.crc32c(bytes(32)) == 0x8A9136AA
    assert tf.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tf.crc32c(bytes(range(32))) == 0x46DD794E

    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, PRIMUS_TFEVENTS_OUT=out)
        run = subprocess.run([args.tests_binary, "--gtest_filter=TensorBoardWriter.WritesReadableEventFile"],
                             env=env, capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stdout, run.stderr)
            return 1
        files = [f for f in os.listdir(out) if "tfevents" in f]
        assert len(files) == 1, files
        assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\.[^.]+.*\.\d+", files[0]), files[0]
        path = os.path.join(out, files[0])
        events = tf.read_event_file(path)
        with open(path, "rb") as f:
            blob = bytearray(f.read())

    # A flipped bit inside a record's data must be caught (so the CRC check can fail).
    blob[len(blob) // 2] ^= 0x10
    try:
        list(tf.read_records(bytes(blob)))
        raise AssertionError("a corrupted event file passed the CRC checks")
    except ValueError:
        pass

    assert events[0]["file_version"] == "brain.Event:2", events[0]
    assert events[0]["wall_time"] > 1.5e9
    series = {}
    for ev in events[1:]:
        assert ev["wall_time"] >= events[0]["wall_time"]
        for tag, value in ev["scalars"]:
            series.setdefault(tag, []).append((ev["step"], value))
    assert [s for s, _ in series["lm loss"]] == list(range(1, 21))
    for step, value in series["lm loss"]:
        assert value == f32(10.0 / step), (step, value)
    for step, value in series["learning-rate"]:
        assert value == f32(3e-4 * step / 20.0), (step, value)
    assert [s for s, _ in series["lm loss validation"]] == [5, 10, 15, 20]
    for step, value in series["lm loss validation"]:
        assert value == f32(9.0 / step)
    assert len(series["grad-norm"]) == 1 and math.isnan(series["grad-norm"][0][1])

    print(f"ok: {len(events)} events, tags {sorted(series)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
