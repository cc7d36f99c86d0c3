"""Files and names: atomic writes, tolerant JSON reads, and untrusted names that never leave their folder.

The one home of each of these (run directories, configs, checkpoints, uploads and the image folder all
use them):

- :func:`atomic_write_bytes` / :func:`atomic_write_json`: a temporary file in the same folder, fsync,
  ``os.replace``; a reader never sees half a file and a crash leaves the old file intact.
- :func:`read_json`: the JSON object in a file, or ``None`` when it is missing, torn or not an object.
- :func:`sanitize_name`: any string as one safe path component.
- :func:`safe_join`: ``root / name`` refusing anything that would leave ``root``.
- :func:`is_inside`: whether a path (symlinks followed) lies inside a folder.
- :func:`display_text` / :func:`display_name`: untrusted text (a field of a run folder's JSON, a folder
  name made of non-UTF-8 bytes) as printable, valid UTF-8 that a page can show.

This module imports only the standard library.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "display_name",
    "display_text",
    "finite_json",
    "is_inside",
    "json_line",
    "read_json",
    "safe_join",
    "sanitize_name",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
_DRIVE = re.compile(r"^[A-Za-z]:")


# --------------------------------------------------------------------------- atomic writes and reads


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, before_replace: Callable[[Path], None] | None = None
) -> None:
    """Write ``data`` to ``path`` atomically (parent folders created).

    Args:
        path: the destination file.
        data: its new content.
        before_replace: tests only: called with the temporary file's path once it is written and
            fsynced, just before ``os.replace`` (to simulate a crash between the two).
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
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN/inf), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


def json_line(obj: Any) -> str:
    """``obj`` as one line of JSON (NaN/inf as ``null``, numpy/torch scalars as numbers), no newline."""
    return json.dumps(finite_json(obj), default=_json_default)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (NaN/inf stored as ``null``, so every reader parses it)."""
    atomic_write_bytes(path, json.dumps(finite_json(obj), indent=2, default=_json_default).encode())


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path``, or ``None`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the parser's depth
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- untrusted names


def display_text(text: str, limit: int = 4000, *, multiline: bool = True) -> str:
    """``text`` as something a page can show: valid UTF-8, printable, at most ``limit`` characters.

    Lone surrogates (from a JSON ``"\\udcff"`` escape, or a file name decoded with
    ``surrogateescape``) and control characters other than newline and tab become visible escapes
    (``\\udcff``, ``\\x1b``), so a hostile value can neither break the page's encoder (protobuf
    refuses surrogates) nor hide itself; a cut text ends in ``"..."``. With ``multiline=False``
    newlines and tabs are escaped too (a name on one line).

    Raises:
        TypeError: ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    limit = max(int(limit), 4)
    cut = len(text) > limit
    text = text[:limit]
    keep = "\n\t" if multiline else ""
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii")
                       for c in text)
        cut = cut or len(text) > limit
        text = text[:limit]
    return text[: limit - 3] + "..." if cut else text


def display_name(name: str | os.PathLike) -> str:
    """A file or folder name as a page shows it: its bytes decoded as UTF-8, undecodable bytes as
    ``\\xff`` escapes, control characters escaped (:func:`display_text`); the real name is kept
    apart (``os.fsencode`` of the path round-trips)."""
    raw = os.fspath(name)
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", "backslashreplace")
    else:
        try:
            text = os.fsencode(raw).decode("utf-8", "backslashreplace")
        except UnicodeError:  # a surrogate that surrogateescape did not make
            text = raw.encode("utf-8", "backslashreplace").decode("utf-8")
    return display_text(text, limit=1024, multiline=False)


def _clean(name: str, max_len: int) -> str:
    clean = _DOTS.sub(".", _UNSAFE.sub("-", name)).strip(".-_")
    return clean[:max_len].strip(".-_")


def sanitize_name(name: str | None, default: str = "run", max_len: int = 48) -> str:
    """A safe single path component made from ``name`` (a run name, an uploaded file's stem).

    Any run of characters outside ``[A-Za-z0-9._-]`` (separators, NUL, spaces, unicode) becomes
    ``-``; runs of dots become one dot; leading and trailing ``.``, ``-``, ``_`` are dropped (so the
    result is never hidden, ``.`` or ``..``); the result is cut to ``max_len`` characters. These are
    the stricter of the two sanitizers it replaces (``relpos.paths`` collapsed dots and checked the
    default; ``jobs`` cut at 48 characters): both rules hold.

    Args:
        name: the untrusted name (``None`` or a string with nothing usable gives ``default``).
        default: returned when nothing usable is left; must itself be safe.
        max_len: the longest result, in characters (>= 1; default 48).

    Returns:
        A non-empty string matching ``[A-Za-z0-9][A-Za-z0-9._-]*``.

    Raises:
        TypeError: ``name`` is not a str or None.
        ValueError: ``default`` is not itself a safe name, or ``max_len`` < 1.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    if not isinstance(default, str) or not default or _clean(default, max_len) != default:
        raise ValueError(f"default must be a safe name (letters, digits, '.', '_', '-'), got {default!r}")
    if name is None:
        return default
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    return _clean(name, max_len) or default


def is_inside(path: str | os.PathLike, root: str | os.PathLike, *, strict: bool = False) -> bool:
    """Whether ``path``, resolved (symlinks followed), lies inside the resolved ``root`` (or is it).

    Args:
        path: the path to check.
        root: the folder it must stay in.
        strict: ``path`` must also exist (a missing path is then not inside).

    Returns:
        ``False`` too when ``path`` cannot be resolved (a symlink loop, a missing path with ``strict``).
    """
    try:
        Path(path).resolve(strict=strict).relative_to(Path(root).resolve())
    except (OSError, RuntimeError, ValueError):
        return False
    return True


def safe_join(root: str | os.PathLike, name: str | os.PathLike) -> Path:
    """``root / name``, refusing anything that would leave ``root``.

    ``name`` may have several components (``"run/best.pt"``); none may be ``..``. The joined path is
    resolved (symlinks followed) and must stay inside the resolved root: a symlink inside ``root``
    pointing out of it is refused. The path need not exist.

    Args:
        root: the folder everything must stay in.
        name: a relative path below ``root``.

    Returns:
        The joined path (not resolved: ``Path(root) / name``).

    Raises:
        TypeError: ``root`` or ``name`` is not a str or path.
        ValueError: ``name`` is empty, absolute, contains NUL or a ``..`` component, or resolves
            outside ``root`` (the message names the value).
    """
    for arg, value in (("root", root), ("name", name)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{arg} must be a str or path, got {value!r} ({type(value).__name__})")
    root_s, name_s = os.fspath(root), os.fspath(name)
    if not isinstance(root_s, str) or not isinstance(name_s, str):
        raise TypeError(f"root and name must be text paths, got {root!r} and {name!r}")
    if "\x00" in root_s:
        raise ValueError(f"root {root_s!r} contains a NUL byte")
    if not name_s or not name_s.strip():
        raise ValueError(f"name {name_s!r} is empty; give a file or folder name inside {root_s!r}")
    if "\x00" in name_s:
        raise ValueError(f"name {name_s!r} contains a NUL byte")
    parts = name_s.replace("\\", "/").split("/")
    if os.path.isabs(name_s) or name_s.startswith(("/", "\\")) or _DRIVE.match(name_s):
        raise ValueError(f"name {name_s!r} is an absolute path; give a name inside {root_s!r}")
    if ".." in parts:
        raise ValueError(f"name {name_s!r} contains '..'; it must stay inside {root_s!r}")
    base = Path(root_s)
    joined = base / name_s
    real_root = base.resolve()
    try:
        resolved = joined.resolve()
    except (OSError, RuntimeError) as exc:  # e.g. a symlink loop
        raise ValueError(f"name {name_s!r} cannot be resolved inside {root_s!r}: {exc}") from None
    if not resolved.is_relative_to(real_root):
        raise ValueError(
            f"name {name_s!r} resolves to {resolved}, outside {real_root} (a symlink out of the folder?)"
        )
    return joined
