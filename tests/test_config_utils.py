"""YAML configs: round trip, safe loading, clear errors."""

from __future__ import annotations

import pytest

from relpos import load_config, save_config
from relpos.experiments.config_utils import ConfigError


def test_round_trip_creates_parents(tmp_path) -> None:
    cfg = {"model": {"embed_dim": 64, "window_size": (7, 7)}, "train": {"lr": 1e-3}, "name": "x"}
    path = tmp_path / "a" / "b" / "cfg.yaml"
    save_config(cfg, path)
    loaded = load_config(path)
    assert loaded == {"model": {"embed_dim": 64, "window_size": [7, 7]}, "train": {"lr": 1e-3}, "name": "x"}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_file_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(missing)


def test_python_tags_are_refused_not_run(tmp_path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"x: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    assert not marker.exists()


def test_non_mapping_and_empty(tmp_path) -> None:
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == {}


def test_save_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(TypeError, match="config"):
        save_config([1, 2], tmp_path / "x.yaml")
    with pytest.raises(TypeError, match="YAML"):
        save_config({"f": object()}, tmp_path / "x.yaml")
