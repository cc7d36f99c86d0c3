"""TensorBoard event files (relpos.experiments.tensorboard), read back with a parser written here.

The parser below is independent of the writer: TFRecord framing and the protobuf wire format decoded
field by field, every CRC checked against a bit-by-bit CRC-32C reference.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
from pathlib import Path

import pytest

from relpos.experiments import tensorboard as tb
from relpos.experiments.config import apply_overrides
from relpos.experiments.config_utils import load_config
from relpos.experiments.rundir import read_metrics
from relpos.experiments.train import fit

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


# ----------------------------------------------------------------------------- references


def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C one bit at a time (reflected polynomial 0x82F63B78), the definition itself."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    return (rotated + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path) -> list[bytes]:
    """Every TFRecord's data, each length and data CRC checked against the bit-by-bit reference."""
    blob = path.read_bytes()
    out, pos = [], 0
    while pos < len(blob):
        header = blob[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", blob[pos + 8:pos + 12])
        assert len_crc == masked(crc32c_bitwise(header))
        data = blob[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[pos + 12 + length:pos + 16 + length])
        assert len(data) == length and data_crc == masked(crc32c_bitwise(data))
        out.append(data)
        pos += 16 + length
    assert pos == len(blob)
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def wire_fields(buf: bytes) -> list[tuple[int, int, object]]:
    """``(field, wire type, raw value)`` of a protobuf message: int for varints, bytes otherwise."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise AssertionError(f"wire type {wire}")
        out.append((field, wire, value))
    return out


def parse_event(data: bytes) -> dict:
    """``{"wall_time", "step", "file_version", "scalars": {tag: value}}`` of one Event."""
    event: dict = {"scalars": {}, "file_version": None, "step": 0}
    for field, wire, value in wire_fields(data):
        if field == 1:
            assert wire == 1
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            assert wire == 0
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            assert wire == 2
            event["file_version"] = value.decode()
        elif field == 5:  # Summary
            for f, w, v in wire_fields(value):
                assert (f, w) == (1, 2)  # repeated Value
                parts = {ff: vv for ff, _, vv in wire_fields(v)}
                event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
        else:
            raise AssertionError(f"unexpected Event field {field}")
    return event


def read_events(logdir: Path) -> list[dict]:
    files = sorted(logdir.glob("events.out.tfevents.*"))
    events = []
    for path in files:
        parsed = [parse_event(r) for r in read_records(path)]
        assert parsed[0]["file_version"] == "brain.Event:2" and not parsed[0]["scalars"]
        events += parsed[1:]
    return events


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


# ----------------------------------------------------------------------------- CRC and encoding


def test_crc32c_matches_the_standard_test_vectors_and_the_bitwise_definition():
    assert tb.crc32c(b"123456789") == 0xE3069283
    assert tb.crc32c(b"") == 0
    # RFC 3720 (iSCSI) B.4: 32 bytes of zeros, of 0xFF, and 0..31
    assert tb.crc32c(bytes(32)) == 0x8A9136AA
    assert tb.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tb.crc32c(bytes(range(32))) == 0x46DD794E
    rng = random.Random(0)
    for n in (1, 7, 64, 1000):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert tb.crc32c(data) == crc32c_bitwise(data)
        assert tb.crc32c(data[n // 2:], tb.crc32c(data[:n // 2])) == crc32c_bitwise(data)  # continued
        assert tb.masked_crc32c(data) == masked(crc32c_bitwise(data))


def test_encode_event_field_by_field():
    data = tb.encode_event(1.5, 300, scalars={"a/b": 0.25, "c": -2.0})
    assert parse_event(data) == {"wall_time": 1.5, "step": 300, "file_version": None,
                                 "scalars": {"a/b": 0.25, "c": -2.0}}
    # the bytes themselves for a small event: wall_time (0x09 + double), step (0x10 + varint 300 = ac 02)
    assert tb.encode_event(1.5, 300) == b"\x09" + struct.pack("<d", 1.5) + b"\x10\xac\x02"
    first = parse_event(tb.encode_event(2.0, 0, file_version="brain.Event:2"))
    assert first["file_version"] == "brain.Event:2" and first["step"] == 0
    assert parse_event(tb.encode_event(0.0, -1))["step"] == -1  # int64 two's complement, 10 bytes
    big = parse_event(tb.encode_event(0.0, 1, scalars={"x": 1e300}))
    assert big["scalars"]["x"] == math.inf  # out of float32 range: inf, as a cast gives


def test_writer_file_reads_back(tmp_path):
    writer = tb.EventFileWriter(tmp_path / "logs")
    assert writer.path.name.startswith("events.out.tfevents.")
    writer.add_scalars(5, {"train/loss": 1.25, "train/lr": 3e-4}, wall_time=100.0)
    assert writer.write_events([(6, {"train/loss": 1.0}), (7, {})], wall_time=101.0) == 1  # empty skipped
    second = tb.EventFileWriter(tmp_path / "logs")  # same second, same process: its own file
    assert second.path != writer.path
    events = [parse_event(r) for r in read_records(writer.path)]
    assert events[0]["file_version"] == "brain.Event:2"
    assert [(e["step"], e["wall_time"], e["scalars"]) for e in events[1:]] == [
        (5, 100.0, {"train/loss": 1.25, "train/lr": f32(3e-4)}),
        (6, 101.0, {"train/loss": 1.0}),
    ]


def test_scalars_of_maps_the_metrics_lines():
    step = {"kind": "step", "step": 4, "epoch": 1, "train_loss": 0.5, "train_accuracy": 0.75, "lr": 1e-3,
            "seconds": 2.0, "images_per_second": 100.0}
    assert tb.scalars_of(step) == {"train/loss": 0.5, "train/accuracy": 0.75, "train/lr": 1e-3,
                                   "train/images_per_second": 100.0}
    epoch = {"kind": "epoch", "step": 8, "epoch": 2, "train_loss": 0.4, "train_accuracy": 0.8,
             "eval_loss": None, "eval_accuracy": 0.9, "lr": 1e-4, "seconds": 3.0, "best_accuracy": 0.9,
             "images_per_second": 50.0, "diag/entropy": 1.5, "diag/flag": True, "note": "x"}
    assert tb.scalars_of(epoch) == {"epoch/train_loss": 0.4, "epoch/train_accuracy": 0.8, "val/accuracy": 0.9,
                                    "epoch/lr": 1e-4, "epoch/seconds": 3.0, "val/best_accuracy": 0.9,
                                    "diag/entropy": 1.5}
    assert tb.scalars_of({"kind": "other", "train_loss": 1.0}) == {}


# ----------------------------------------------------------------------------- the mirror


def _line(record: dict) -> str:
    return json.dumps(record) + "\n"


def test_mirror_follows_metrics_jsonl_and_never_writes_a_line_twice(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.jsonl"
    assert tb.TensorBoardMirror(run).sync() == 0  # no metrics yet
    s1 = {"kind": "step", "step": 2, "epoch": 1, "train_loss": 1.5, "train_accuracy": 0.25, "lr": 0.001}
    e1 = {"kind": "epoch", "step": 4, "epoch": 1, "train_loss": 1.25, "eval_accuracy": 0.5, "diag/x": 2.0}
    torn = _line({"kind": "step", "step": 6, "train_loss": 0.75})
    metrics.write_text(_line(s1) + "not json\n" + _line(e1) + torn[:10])
    mirror = tb.TensorBoardMirror(run)
    assert mirror.sync() == 2  # the torn last line waits
    assert mirror.sync() == 0
    with open(metrics, "a") as f:
        f.write(torn[10:])
    assert mirror.sync() == 1
    assert tb.TensorBoardMirror(run).sync() == 0  # a resumed trainer or an export: nothing twice
    with open(metrics, "a") as f:
        f.write(_line({"kind": "step", "step": 8, "train_loss": 0.5}))
    assert tb.TensorBoardMirror(run).sync() == 1  # a new mirror writes its own file
    events = read_events(run / "tensorboard")
    assert [(e["step"], e["scalars"]) for e in events] == [
        (2, {"train/loss": 1.5, "train/accuracy": 0.25, "train/lr": f32(0.001)}),
        (4, {"epoch/train_loss": 1.25, "val/accuracy": 0.5, "diag/x": 2.0}),
        (6, {"train/loss": 0.75}),
        (8, {"train/loss": 0.5}),
    ]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_mirror_never_follows_a_symlink_nor_waits_on_a_fifo(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    real = tmp_path / "elsewhere.jsonl"
    real.write_text(_line({"kind": "step", "step": 2, "train_loss": 1.0}))
    (run / "metrics.jsonl").symlink_to(real)
    assert tb.TensorBoardMirror(run).sync() == 0
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")  # a FIFO is refused, never waited on
    assert tb.TensorBoardMirror(run).sync() == 0
    assert not (run / "tensorboard").exists()


def test_export_cli(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(_line({"kind": "step", "step": 2, "train_loss": 1.0}))
    assert tb.main([str(run)]) == 0
    assert "1 events" in capsys.readouterr().out
    assert tb.main([str(run)]) == 0 and "0 events" in capsys.readouterr().out
    assert tb.main([str(tmp_path / "missing")]) == 2


# ----------------------------------------------------------------------------- in a run


@pytest.mark.usefixtures("one_thread")
def test_a_run_with_train_tensorboard_writes_every_metrics_line_as_events(tmp_path):
    run = tmp_path / "run"
    fit(apply_overrides(load_config(TINY), ["train.tensorboard=true"]), run, log_to_stderr=False)
    records = read_metrics(run)
    expected = [(r["step"], {k: f32(v) for k, v in tb.scalars_of(r).items()}) for r in records]
    events = read_events(run / "tensorboard")
    assert [(e["step"], e["scalars"]) for e in events] == expected
    assert {"train/loss", "val/accuracy", "val/loss", "epoch/lr"} <= set().union(*(s for _, s in expected))
    assert any(tag.startswith("diag/") for _, s in expected for tag in s)


@pytest.mark.usefixtures("one_thread")
def test_a_run_without_the_flag_writes_no_event_files(tmp_path):
    run = tmp_path / "run"
    fit(load_config(TINY), run, log_to_stderr=False)
    assert not (run / "tensorboard").exists()


def test_tensorboards_own_reader_agrees(tmp_path):
    loader_mod = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    writer = tb.EventFileWriter(tmp_path)
    writer.add_scalars(3, {"train/loss": 0.5})
    events = list(loader_mod.EventFileLoader(str(writer.path)).Load())
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 3 and events[1].summary.value[0].tag == "train/loss"
    value = events[1].summary.value[0]
    got = value.simple_value if value.HasField("simple_value") else value.tensor.float_val[0]
    assert got == 0.5
