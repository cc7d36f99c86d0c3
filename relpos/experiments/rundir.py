"""The run directory: the filesystem is the job registry.

A run directory holds everything about one training run, so the app can restart, a second tab can
attach, and nothing is lost::

    <run_dir>/config.yaml     resolved config
    <run_dir>/status.json     {"state", "epoch", "epochs", "step", "total_steps", "eta_seconds",
                               "pid", "error", "name", "started_at", "updated_at", ...}
    <run_dir>/metrics.jsonl   one JSON object per logged step ("kind": "step") and per epoch
                              ("kind": "epoch")
    <run_dir>/train.log       human-readable log
    <run_dir>/last.pt, best.pt

Every whole-file write goes through :func:`atomic_write_bytes` (temporary file in the same folder,
fsync, ``os.replace``): a reader never sees half a file, and a crash leaves the old file intact.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "RUN_STATES",
    "TERMINAL_STATES",
    "append_metrics",
    "atomic_write_bytes",
    "atomic_write_json",
    "read_json",
    "read_metrics",
    "read_status",
    "update_status",
]

RUN_STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
LAST_CKPT = "last.pt"
BEST_CKPT = "best.pt"


def atomic_write_bytes(path: str | Path, data: bytes, *, before_replace=None) -> None:
    """Write ``data`` to ``path`` atomically (parents created).

    ``before_replace`` (tests only): called with the temporary file's path once it is written and
    fsynced, just before ``os.replace``; used to simulate a crash between the two.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    # JSON has no NaN/inf; store them as null so every reader can parse the file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(_finite(obj), indent=2, default=_json_default).encode())


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_status(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / STATUS_FILE)


def update_status(run_dir: str | Path, **fields: Any) -> dict:
    """Merge ``fields`` into ``status.json`` (atomically) and return the new status."""
    if "state" in fields and fields["state"] not in RUN_STATES:
        raise ValueError(f"state must be one of {RUN_STATES}, got {fields['state']!r}")
    status = read_status(run_dir) or {}
    status.update(fields)
    status["updated_at"] = time.time()
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)
    return status


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Append one JSON line to ``metrics.jsonl`` (one ``write`` call, flushed)."""
    line = json.dumps(_finite(record), default=_json_default) + "\n"
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete JSON line of ``metrics.jsonl``; a torn last line is skipped."""
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records
