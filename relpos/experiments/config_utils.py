"""Read and write YAML configs: safe loading, atomic writes.

``load_config`` never constructs Python objects from tags (``yaml.safe_load``): a file with
``!!python/object`` is refused, not executed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from relpos._fileio import atomic_write_bytes

from relpos._limits import MAX_YAML_BYTES, load_yaml

__all__ = [
    "CONFIGS_DIR_ENV",
    "ConfigError",
    "configs_dir",
    "list_presets",
    "load_config",
    "preset_path",
    "save_config",
    "to_plain",
]

#: Environment variable naming the folder of preset configs (default: ``configs/`` of the repo).
CONFIGS_DIR_ENV = "RELPOS_CONFIGS_DIR"


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the file or key."""


def load_config(config_path: str | Path) -> dict:
    """Load a YAML mapping from ``config_path``.

    The file is read with :func:`relpos._limits.load_yaml`: ``yaml.safe_load`` semantics, at most
    1 MB, 64 levels deep and 100 000 nodes once aliases are expanded (a "billion laughs" file is
    refused before it is built).

    Raises:
        FileNotFoundError: the file does not exist (the message names the path).
        ConfigError: the file cannot be read, is not UTF-8, is over a limit, is not valid YAML,
            uses a Python tag, or is not a mapping (the message names the file).
    """
    if not isinstance(config_path, (str, os.PathLike)):
        raise TypeError(f"config_path must be a str or Path, got {type(config_path).__name__}")
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # never more than the limit, whatever the file's size
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    data = load_yaml(raw, str(path), error=ConfigError)
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
    try:
        text = yaml.safe_dump(to_plain(config), sort_keys=False, default_flow_style=None)
    except yaml.representer.RepresenterError as exc:
        raise TypeError(f"config holds a value YAML cannot store: {exc}") from None
    atomic_write_bytes(save_path, text.encode("utf-8"))


# ----------------------------------------------------------------------------- presets


def configs_dir() -> Path:
    """``$RELPOS_CONFIGS_DIR``, else ``configs/`` of the repository, else ``./configs``."""
    env = os.environ.get(CONFIGS_DIR_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "configs"
    return repo if repo.is_dir() else Path("configs")


def list_presets(folder: str | Path | None = None) -> list[str]:
    """Names of the preset configs (``<name>.yaml`` in ``folder``), ``default`` first."""
    folder = Path(folder) if folder is not None else configs_dir()
    names = sorted(p.stem for p in folder.glob("*.yaml") if p.is_file() and not p.is_symlink())
    return sorted(names, key=lambda n: (n != "default", n))


def preset_path(preset_or_path: str | Path, folder: str | Path | None = None) -> Path:
    """The config file of a preset name (``"tiny"``) or an explicit ``.yaml`` path.

    Raises:
        TypeError: ``preset_or_path`` is not a str or path.
        FileNotFoundError: neither a preset of that name nor a file at that path exists; the
            message lists the presets.
    """
    if not isinstance(preset_or_path, (str, os.PathLike)):
        raise TypeError(
            f"preset_or_config_path must be a preset name or a path, got {type(preset_or_path).__name__}"
        )
    text = os.fspath(preset_or_path)
    folder = Path(folder) if folder is not None else configs_dir()
    if re.fullmatch(r"[A-Za-z0-9_-]+", text):
        candidate = folder / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    path = Path(text)
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"preset_or_config_path {text!r} is neither a preset in {folder} "
        f"({', '.join(list_presets(folder)) or 'none found'}) nor a config file"
    )
