"""Read and write YAML configs: safe loading, atomic writes.

``load_config`` never constructs Python objects from tags (``yaml.safe_load``): a file with
``!!python/object`` is refused, not executed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "load_config", "save_config", "to_plain"]


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the file or key."""


def load_config(config_path: str | Path) -> dict:
    """Load a YAML mapping from ``config_path``.

    Raises:
        FileNotFoundError: the file does not exist (the message names the path).
        ConfigError: the file is not valid YAML, uses a Python tag, or is not a mapping.
    """
    if not isinstance(config_path, (str, os.PathLike)):
        raise TypeError(f"config_path must be a str or Path, got {type(config_path).__name__}")
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML (or uses a tag that is not allowed): {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping at the top level, got {type(data).__name__}")
    return data


def to_plain(value: Any) -> Any:
    """Tuples to lists, numpy/torch scalars to Python numbers, Paths to str, recursively."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def save_config(config: dict, save_path: str | Path) -> None:
    """Write ``config`` as YAML to ``save_path`` (parents created, written atomically)."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if not isinstance(save_path, (str, os.PathLike)):
        raise TypeError(f"save_path must be a str or Path, got {type(save_path).__name__}")
    path = Path(save_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = yaml.safe_dump(to_plain(config), sort_keys=False, default_flow_style=None)
    except yaml.representer.RepresenterError as exc:
        raise TypeError(f"config holds a value YAML cannot store: {exc}") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
