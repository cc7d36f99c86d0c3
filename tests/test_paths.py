"""relpos.paths: untrusted run names and file names never leave their folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from relpos.paths import safe_join, sanitize_name

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
    assert ".." not in out and len(out) <= 64


def test_sanitize_name_examples_and_defaults():
    assert sanitize_name("my run #1") == "my-run-1"
    assert sanitize_name("../../etc/x") == "etc-x"
    assert sanitize_name("model.v2.pt") == "model.v2.pt"
    assert sanitize_name("..") == "run" and sanitize_name(None) == "run" and sanitize_name("", "ckpt") == "ckpt"
    assert sanitize_name("abcdef", max_len=3) == "abc"


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
