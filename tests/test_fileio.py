"""relpos._fileio: atomic writes, tolerant reads, and untrusted names that never leave their folder."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from relpos._fileio import atomic_write_bytes, atomic_write_json, is_inside, json_line, read_json, safe_join, sanitize_name

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

HOSTILE_NAMES = [
    "../../etc/x", "a/b", "..", ".", "\x00", "a\x00b", "/etc/passwd", "C:\\Windows\\x", "..\\..\\x",
    "", "   ", "....", ".hidden", "-rf", "name with spaces", "ünïcødé", "a" * 500, "x/../../y",
    "\n", "run\r\nname", "~root", "$(rm -rf /)", "`id`", "a;b|c&d",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_sanitize_name_is_one_safe_component(name):
    out = sanitize_name(name)
    assert SAFE.match(out), (name, out)
    assert out not in (".", "..") and "/" not in out and "\\" not in out and "\x00" not in out
    assert ".." not in out and len(out) <= 48


def test_sanitize_name_examples_and_defaults():
    assert sanitize_name("my run #1") == "my-run-1"
    assert sanitize_name("../../etc/x") == "etc-x"
    assert sanitize_name("model.v2.pt") == "model.v2.pt"
    assert sanitize_name("..") == "run" and sanitize_name(None) == "run" and sanitize_name("", "ckpt") == "ckpt"
    assert sanitize_name("abcdef", max_len=3) == "abc"
    # the stricter rules of the two sanitizers it replaced: dots collapsed (paths), 48 characters (jobs)
    assert sanitize_name("my run/../../etc") == "my-run-.-.-etc"
    assert sanitize_name("ok_name-1.2") == "ok_name-1.2"
    assert len(sanitize_name("x" * 500)) == 48 and len(sanitize_name("x" * 500, max_len=64)) == 64
    assert sanitize_name("-_.a.b._-") == "a.b"


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"name": 3}, TypeError, "name"),
        ({"name": b"x"}, TypeError, "name"),
        ({"name": "x", "default": "../x"}, ValueError, "default"),
        ({"name": "x", "default": ""}, ValueError, "default"),
        ({"name": "x", "max_len": 0}, ValueError, "max_len"),
        ({"name": "x", "max_len": True}, ValueError, "max_len"),
    ],
)
def test_sanitize_name_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        sanitize_name(**kwargs)


def test_safe_join_inside(tmp_path):
    assert safe_join(tmp_path, "run1") == tmp_path / "run1"
    assert safe_join(str(tmp_path), "run1/best.pt") == tmp_path / "run1" / "best.pt"
    assert safe_join(tmp_path, "a..b") == tmp_path / "a..b"  # dots inside a name are fine
    (tmp_path / "inner").mkdir()
    os.symlink(tmp_path / "inner", tmp_path / "link")  # a symlink that stays inside is fine
    assert safe_join(tmp_path, "link/x") == tmp_path / "link" / "x"


@pytest.mark.parametrize(
    "name, words",
    [
        ("../x", "'..'"),
        ("..", "'..'"),
        ("a/../../x", "'..'"),
        ("a\\..\\..\\x", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:\\x", "absolute"),
        ("\x00", "NUL"),
        ("a\x00b", "NUL"),
        ("", "empty"),
        ("  ", "empty"),
    ],
)
def test_safe_join_refuses(tmp_path, name, words):
    with pytest.raises(ValueError, match=re.escape(words)) as err:
        safe_join(tmp_path, name)
    assert repr(name) in str(err.value)


def test_safe_join_refuses_symlinks_out_of_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, root / "escape")
    os.symlink(outside / "secret", root / "secret.pt")
    for name in ("escape", "escape/secret", "secret.pt"):
        with pytest.raises(ValueError, match="outside"):
            safe_join(root, name)
    os.symlink(root / "loop", root / "loop")  # a loop: refused, not an exception from deep inside
    with pytest.raises(ValueError, match="loop"):
        safe_join(root, "loop/x")


def test_safe_join_types(tmp_path):
    with pytest.raises(TypeError, match="name"):
        safe_join(tmp_path, 3)
    with pytest.raises(TypeError, match="root"):
        safe_join(None, "x")
    with pytest.raises(TypeError):
        safe_join(tmp_path, b"x")
    assert isinstance(safe_join(tmp_path, Path("x")), Path)


def test_is_inside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    assert is_inside(root / "a", root) and is_inside(root, root) and is_inside(str(root / "a" / "new"), str(root))
    assert not is_inside(outside, root) and not is_inside(root / ".." / "outside", root)
    os.symlink(outside, root / "escape")
    assert not is_inside(root / "escape", root) and not is_inside(root / "escape" / "x", root)
    assert not is_inside(root / "missing", root, strict=True) and is_inside(root / "missing", root)
    os.symlink(root / "loop", root / "loop")
    assert not is_inside(root / "loop", root)  # a loop is not inside (no exception)


def test_atomic_write_bytes_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"one")
    assert path.read_bytes() == b"one"
    seen = []

    def crash(tmp):
        seen.append(tmp.read_bytes())
        raise KeyboardInterrupt  # killed between the write and the rename

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"two", before_replace=crash)
    assert seen == [b"two"] and path.read_bytes() == b"one"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]  # no temporary file left


def test_json_writes_nan_as_null_and_scalars_as_numbers(tmp_path):
    obj = {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(0.5), "d": torch.tensor(3), "e": Path("x")}
    atomic_write_json(tmp_path / "s.json", obj)
    expected = {"a": None, "b": [1.0, None], "c": 0.5, "d": 3, "e": "x"}
    assert json.loads((tmp_path / "s.json").read_text()) == expected
    assert json.loads(json_line(obj)) == expected and "\n" not in json_line(obj)
    assert read_json(tmp_path / "s.json") == expected
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})


def test_read_json_tolerates_missing_torn_and_foreign(tmp_path):
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "torn.json").write_text('{"state": "runn')
    assert read_json(tmp_path / "torn.json") is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_json(tmp_path / "list.json") is None
