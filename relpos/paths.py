"""Paths from untrusted names: run names and uploaded file names never leave their folder.

Two tools, used wherever a name typed in the app, read from a config or sent with an upload
becomes a path:

- :func:`sanitize_name` turns any string into one safe path component (letters, digits, ``.``,
  ``_``, ``-``; never empty, never ``.``/``..``, never hidden, no separator, no NUL).
- :func:`safe_join` joins a relative name under a root folder and refuses (``ValueError`` naming
  the value) absolute paths, ``..`` components, NUL bytes, and anything that resolves outside the
  root, symlinks included.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["safe_join", "sanitize_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")


def sanitize_name(name: str | None, default: str = "run", max_len: int = 64) -> str:
    """A safe single path component made from ``name``.

    Any run of characters outside ``[A-Za-z0-9._-]`` (separators, NUL, spaces, unicode) becomes
    ``-``; runs of dots become one dot; leading and trailing ``.``, ``-``, ``_`` are dropped (so the
    result is never hidden, ``.`` or ``..``); the result is cut to ``max_len`` characters.

    Args:
        name: the untrusted name (None or a string with nothing usable gives ``default``).
        default: returned when nothing usable is left; must itself be safe.
        max_len: the longest result, in characters (>= 1).

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


def _clean(name: str, max_len: int) -> str:
    clean = _DOTS.sub(".", _UNSAFE.sub("-", name)).strip(".-_")
    return clean[:max_len].strip(".-_")


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
    if os.path.isabs(name_s) or name_s.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name_s):
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
    try:
        resolved.relative_to(real_root)
    except ValueError:
        raise ValueError(
            f"name {name_s!r} resolves to {resolved}, outside {real_root} (a symlink out of the folder?)"
        ) from None
    return joined
