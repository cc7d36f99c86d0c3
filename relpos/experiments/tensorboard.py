"""TensorBoard event files for a run, written without the ``tensorboard`` package.

A run with ``train.tensorboard: true`` mirrors its ``metrics.jsonl`` into event files under
``<run_dir>/tensorboard/``, so ``tensorboard --logdir checkpoints`` shows relpos runs next to other
projects' runs. The trainer calls :meth:`TensorBoardMirror.sync` after every logged step and every
epoch; a run trained without the flag can be exported afterwards::

    python -m relpos.experiments.tensorboard checkpoints/default-20250101-120000 [more runs ...]

What goes where (``step`` is the optimizer step of the metrics line)::

    "step" lines    train/loss  train/accuracy  train/lr  train/images_per_second
    "epoch" lines   epoch/train_loss  epoch/train_accuracy  epoch/lr  epoch/seconds
                    val/loss  val/accuracy  val/best_accuracy  and every diag/* key as it is

The format, written by hand (the few fields TensorBoard reads; ``tensorboard/compat/proto/
event.proto`` and ``summary.proto``, TFRecord framing from ``tensorflow/core/lib/io/record_writer.cc``)::

    record  := uint64 len (little-endian) | uint32 masked_crc(len bytes) | data | uint32 masked_crc(data)
    masked_crc(b) := ((c >> 15) | (c << 17)) + 0xA282EAD8  (mod 2**32), c = CRC-32C (Castagnoli) of b
    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }     Value { string tag = 1; float simple_value = 2; }

A file starts with an event whose ``file_version`` is ``"brain.Event:2"``; each metrics line
becomes one event with one ``Value`` per scalar. ``wall_time`` is the time the line is mirrored
(within one logging interval of when it was written during training; the export time afterwards).
How far ``metrics.jsonl`` has been mirrored is kept in ``tensorboard/mirror.json``, so a resumed run
or a second export never writes a line twice.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import stat
import struct
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from relpos._fileio import atomic_write_json, read_json

__all__ = [
    "EPOCH_TAGS",
    "FILE_VERSION",
    "STEP_TAGS",
    "TB_DIR",
    "EventFileWriter",
    "TensorBoardMirror",
    "crc32c",
    "encode_event",
    "encode_record",
    "export_run",
    "main",
    "masked_crc32c",
    "scalars_of",
]

#: Folder of a run directory that holds its event files.
TB_DIR = "tensorboard"
#: The ``file_version`` of the first event of every file (what TensorBoard's reader checks).
FILE_VERSION = "brain.Event:2"
#: Tags of a ``"step"`` line's scalars.
STEP_TAGS: Mapping[str, str] = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "lr": "train/lr",
    "images_per_second": "train/images_per_second",
}
#: Tags of an ``"epoch"`` line's scalars (and every ``diag/*`` key, under its own name).
EPOCH_TAGS: Mapping[str, str] = {
    "train_loss": "epoch/train_loss",
    "train_accuracy": "epoch/train_accuracy",
    "lr": "epoch/lr",
    "seconds": "epoch/seconds",
    "eval_loss": "val/loss",
    "eval_accuracy": "val/accuracy",
    "best_accuracy": "val/best_accuracy",
}
_MIRROR_STATE = "mirror.json"
_METRICS_FILE = "metrics.jsonl"  # relpos.experiments.rundir.METRICS_FILE (not imported: rundir needs nothing of this)
_READ_CHUNK = 8 << 20  # bytes of metrics.jsonl read per pass of a sync
_FLOAT32_MAX = 3.4028234663852886e38
_CRC32C_POLY = 0x82F63B78  # Castagnoli, bit-reversed
_MASK_DELTA = 0xA282EAD8


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _CRC32C_POLY if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()  # immutable: 256 ints


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc``; ``crc32c(b"123456789") == 0xE3069283``."""
    c = crc ^ 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C TFRecord stores: ``((c >> 15) | (c << 17)) + 0xA282EAD8`` mod 2**32."""
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, ``data``, masked CRC of ``data``."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# ----------------------------------------------------------------------------- protobuf, by hand


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 two's complement (protobuf encodes a negative int64 in 10 bytes)
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:  # out of float32 range: +-inf, as a cast would
        value = math.copysign(math.inf, value)
    return struct.pack("<f", value)


def encode_event(
    wall_time: float, step: int, *, file_version: str | None = None, scalars: Mapping[str, float] | None = None
) -> bytes:
    """The bytes of one ``Event`` message.

    Args:
        wall_time: seconds since the epoch (``Event.wall_time``, a double).
        step: the global step (``Event.step``, an int64).
        file_version: ``Event.file_version`` (the first event of a file), or None.
        scalars: tag -> value, each a ``Summary.Value`` with ``simple_value`` (a float32), or None.
    """
    out = _key(1, 1) + struct.pack("<d", float(wall_time)) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode("utf-8")) + _key(2, 5) + _float32(float(v)))
            for tag, v in scalars.items()
        )
        out += _length_delimited(5, values)
    return out


# ----------------------------------------------------------------------------- writing


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def scalars_of(record: Mapping[str, object]) -> dict[str, float]:
    """The TensorBoard scalars of one metrics line (:data:`STEP_TAGS`, :data:`EPOCH_TAGS`, ``diag/*``).

    Only finite numbers are kept; a line of another kind gives ``{}``.
    """
    kind = record.get("kind")
    tags = STEP_TAGS if kind == "step" else EPOCH_TAGS if kind == "epoch" else None
    if tags is None:
        return {}
    out = {}
    for key, value in record.items():
        tag = tags.get(key) if isinstance(key, str) else None
        if tag is None and kind == "epoch" and isinstance(key, str) and key.startswith("diag/"):
            tag = key
        number = _number(value)
        if tag is not None and number is not None:
            out[tag] = number
    return out


class EventFileWriter:
    """Appends events to one new file ``<logdir>/events.out.tfevents.<time>.<host>.<pid>.relpos``.

    The file is created with its ``file_version`` event; every :meth:`add_scalars` opens it, appends
    one record and closes it (nothing stays open between calls).

    Args:
        logdir: the folder (created).
    """

    def __init__(self, logdir: str | os.PathLike) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        host = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in socket.gethostname())[:64] or "host"
        base = f"events.out.tfevents.{int(now):010d}.{host}.{os.getpid()}"
        for k in range(1, 1000):  # two writers of one process in one second get distinct files
            path = self.logdir / f"{base}.{k}.relpos"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(encode_record(encode_event(now, 0, file_version=FILE_VERSION)))
            self.path = path
            return
        raise RuntimeError(f"could not create a new event file in {self.logdir}")

    def write_events(self, events: Iterable[tuple[int, Mapping[str, float]]], wall_time: float | None = None) -> int:
        """Append one event per ``(step, scalars)`` (empty scalars are skipped); returns how many."""
        wall = time.time() if wall_time is None else wall_time
        records = [encode_record(encode_event(wall, step, scalars=s)) for step, s in events if s]
        if records:
            with open(self.path, "ab") as f:
                f.write(b"".join(records))
        return len(records)

    def add_scalars(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
        """Append one event with ``scalars`` (tag -> value) at ``step``."""
        self.write_events([(step, scalars)], wall_time)


class TensorBoardMirror:
    """Mirrors a run's ``metrics.jsonl`` into ``<run_dir>/tensorboard/`` as it grows.

    Each :meth:`sync` reads the complete lines added since the last one (a torn last line waits for
    the next sync) and appends their scalars to this mirror's event file (created on the first
    event). The offset reached is saved in ``tensorboard/mirror.json``, so another mirror of the
    same run (a resumed trainer, an export) carries on where this one stopped.

    Args:
        run_dir: the run directory.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.logdir = self.run_dir / TB_DIR
        self._writer: EventFileWriter | None = None

    def _offset(self) -> int:
        state = read_json(self.logdir / _MIRROR_STATE) or {}
        offset = state.get("metrics_offset")
        return offset if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0 else 0

    def sync(self) -> int:
        """Mirror the new complete lines of ``metrics.jsonl``; returns the number of events written."""
        path = self.run_dir / _METRICS_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))  # a FIFO never blocks
        except OSError:  # no metrics yet (or a symlink: never followed)
            return 0
        written = 0
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                return 0
            offset = self._offset()
            if offset > info.st_size:  # metrics.jsonl was replaced: start again
                offset = 0
            while offset < info.st_size:
                f.seek(offset)
                chunk = f.read(min(_READ_CHUNK, info.st_size - offset))
                end = chunk.rfind(b"\n") + 1
                if end == 0:
                    if len(chunk) < _READ_CHUNK:
                        break  # a torn last line: the next sync reads it whole
                    end = len(chunk)  # a single over-long line: skipped
                events = [e for e in (_event_of(line) for line in chunk[:end].splitlines()) if e is not None]
                if events:
                    if self._writer is None:
                        self._writer = EventFileWriter(self.logdir)
                    written += self._writer.write_events(events)
                offset += end
                atomic_write_json(self.logdir / _MIRROR_STATE, {"metrics_offset": offset})
        return written


def _event_of(line: bytes) -> tuple[int, dict[str, float]] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63:
        return None
    scalars = scalars_of(record)
    return (step, scalars) if scalars else None


def export_run(run_dir: str | os.PathLike) -> tuple[Path, int]:
    """Write what ``<run_dir>/metrics.jsonl`` holds and was not mirrored yet; returns the folder and
    the number of events written."""
    mirror = TensorBoardMirror(run_dir)
    return mirror.logdir, mirror.sync()


def main(argv: list[str] | None = None) -> int:
    """``python -m relpos.experiments.tensorboard RUN_DIR...``: export runs' metrics as event files."""
    p = argparse.ArgumentParser(prog="relpos-tensorboard", description="Write TensorBoard event files from "
                                "runs' metrics.jsonl (into <run>/tensorboard/; already mirrored lines are skipped).")
    p.add_argument("run_dirs", nargs="+", help="run directories")
    args = p.parse_args(argv)
    status = 0
    for run in args.run_dirs:
        if not (Path(run) / _METRICS_FILE).is_file():
            print(f"relpos-tensorboard: {run} has no {_METRICS_FILE}", file=sys.stderr)
            status = 2
            continue
        logdir, n = export_run(run)
        print(f"{logdir}: {n} events")
    return status


if __name__ == "__main__":
    sys.exit(main())
