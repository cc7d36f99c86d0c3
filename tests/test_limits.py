"""relpos._limits and relpos._file_limits: untrusted files stay small (issue 15, part 3: "bombs stay small").

Each class of bomb is tried at every reader that meets it: a YAML alias bomb in a config file, in
``--resume``'s ``config.yaml``, in a ``--set`` override and inside a checkpoint's stored config; a
DEFLATE zip bomb as a checkpoint, an import and an upload; a tensor that declares 2^40 elements
over one stored number (.pth and .safetensors); an image decompression bomb. Each must be refused
with a ValueError (ConfigError / CheckpointError / ResourceLimitError) naming the file and the
numbers, before the memory is spent: Python allocations are measured with tracemalloc, and
``torch.load`` (whose C++ allocations tracemalloc cannot see) is shown never to run on a refused
archive. Hypothesis then generates hostile values around each limit and checks the refusal against
an explicit reference (the expanded size computed by hand, ``repr``, the header's width x height).
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relpos import _file_limits
from relpos._file_limits import (
    MAX_IMAGE_PIXELS,
    check_loaded_tensors,
    check_safetensors,
    check_torch_archive,
)
from relpos._limits import MAX_OBJECT_NODES, check_object_size, load_yaml, short_repr
from relpos.checkpoint_import import import_checkpoint, inspect_state_dict, load_state_dict
from relpos.experiments.checkpoint import (
    CheckpointError,
    load_model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from relpos.experiments.config import apply_overrides, build_model, resolve_config
from relpos.experiments.config_utils import ConfigError, load_config
from relpos.explore import image_from_upload
from relpos.guards import ResourceLimitError, memory_budget

SMALL = {"data": {"img_size": 8, "patch_size": 2, "mark_size": 1, "num_train": 64, "num_val": 32},
         "model": {"embed_dim": 16, "depth": 1, "num_heads": 2}}
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MB = 1024 * 1024


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic: ``levels`` anchors, each ``width`` aliases of the one before (``width^levels`` leaves)."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def expanded_size(levels: int, width: int) -> int:
    """Reference: nodes of :func:`billion_laughs` expanded (the mapping, its keys, every level)."""
    sizes = [1 + width]  # a0: the list and its width scalars
    for _ in range(1, levels):
        sizes.append(1 + width * sizes[-1])
    return 1 + levels + sum(sizes)  # mapping + keys + values


def peak_of(fn) -> tuple[BaseException | None, int]:
    """``(exception raised or None, peak bytes Python allocated)`` while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
        exc = None
    except Exception as e:  # noqa: BLE001
        exc = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return exc, peak


def tiny_checkpoint(path: Path, **extra) -> Path:
    cfg = resolve_config(SMALL)
    save_checkpoint(build_model(cfg), None, 1, {"eval_accuracy": 0.5}, path, config=cfg, **extra)
    return path


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def deflate_bomb(good: bytes, entry: str, inflated: int) -> bytes:
    """``good`` (a torch zip) with ``entry`` replaced by ``inflated`` zero bytes, DEFLATE-compressed."""
    src = zipfile.ZipFile(io.BytesIO(good))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            if info.filename.endswith(entry):
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with z.open(zi, "w", force_zip64=True) as w:
                    chunk = bytes(MB)
                    for _ in range(inflated // MB):
                        w.write(chunk)
                    w.write(bytes(inflated % MB))
            else:
                z.writestr(info, src.read(info.filename))
    return out.getvalue()


@pytest.fixture
def no_torch_load(monkeypatch):
    """Record every torch.load call (a refused archive must never reach it)."""
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


# ============================================================================ 1. YAML


def test_billion_laughs_config_file_refused_small(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    assert len(path.read_bytes()) < 600
    assert expanded_size(9, 9) > 4 * 10**8  # what a repr or a copy would walk
    exc, peak = peak_of(lambda: load_config(path))
    assert isinstance(exc, ConfigError), exc
    assert str(path) in str(exc) and str(MAX_OBJECT_NODES) in str(exc)
    assert peak < 2 * MB, peak


def test_recursive_deep_big_and_non_utf8_configs_are_config_errors(tmp_path):
    cases = {
        "recursive.yaml": (b"a: &a [1, *a]\n", "recursive alias"),
        "recursive-map.yaml": (b"a: &a {b: *a}\n", "recursive alias"),
        "deep.yaml": (b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", "deeper than"),
        "deep-map.yaml": (b"".join(b"  " * i + b"k:\n" for i in range(200)) + b"  " * 200 + b"v: 1\n",
                          "deeper than"),
        "big.yaml": (b"description: '" + b"x" * (2 * MB) + b"'\n", "bytes"),
        "latin1.yaml": ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8"),
        "date.yaml": (b"seed: 2001-13-45\n", "cannot construct"),
        "bigint.yaml": (b"seed: " + b"9" * 5000 + b"\n", "cannot construct"),
        "tag.yaml": (b"name: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
        "undefined.yaml": (b"a: *nowhere\n", "not valid YAML"),
        "two-docs.yaml": (b"a: 1\n---\nb: 2\n", "not valid YAML"),
    }
    for name, (data, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ConfigError, match=words) as err:
            load_config(path)
        assert str(path) in str(err.value), name
    ok = tmp_path / "bom.yaml"
    ok.write_bytes(b"\xef\xbb\xbfname: bom\n")  # a UTF-8 BOM is fine
    assert load_config(ok) == {"name": "bom"}


def test_alias_bomb_in_an_override_is_a_config_error():
    value = "[" + ", ".join(["&a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"] + ["*a"] * 10) + "]"
    assert apply_overrides({}, [f"description={value}"])["description"][1] == list(range(1, 11))
    bomb = billion_laughs().replace("\n", ", ").rstrip(", ")
    exc, peak = peak_of(lambda: apply_overrides({}, [f"model.rpb.x={{{bomb}}}"]))
    assert isinstance(exc, ConfigError) and "override" in str(exc), exc
    assert peak < 2 * MB


def test_error_messages_print_bounded_values():
    """A value that passes the YAML limits but is long still prints 200 characters at most."""
    long_list = list(range(50_000))
    for cfg in ({"seed": long_list}, {"data": {"img_size": long_list}}, {"name": "x" * 10**6},
                {"model": {"rpb": {"num_buckets": long_list}}}, {long_list.__repr__()[:10**4]: 1}):
        with pytest.raises(ConfigError) as err:
            resolve_config(cfg)
        assert len(str(err.value)) < 1500, len(str(err.value))


@HYP
@given(levels=st.integers(1, 12), width=st.integers(1, 12))
def test_alias_expansion_is_refused_exactly_past_the_limit(levels, width):
    doc = billion_laughs(levels, width)
    size = expanded_size(levels, width)
    limit = 5_000
    if size > limit:
        with pytest.raises(ValueError, match="expands to more than 5000"):
            load_yaml(doc, "doc", max_nodes=limit)
    else:
        assert load_yaml(doc, "doc", max_nodes=limit) == yaml.safe_load(doc)
        assert check_object_size(yaml.safe_load(doc), "v") == size  # the same count on the value


YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                         st.floats(allow_nan=False), st.text(max_size=30))
YAML_VALUES = st.recursive(
    YAML_SCALARS, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5),
    max_leaves=40,
)


@HYP
@given(value=YAML_VALUES)
def test_safe_load_semantics_within_limits(value):
    text = yaml.safe_dump(value)
    assert load_yaml(text, "doc") == yaml.safe_load(text)


@HYP
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_give_a_value_or_the_chosen_error(data):
    class Refused(ValueError):
        pass

    try:
        load_yaml(data, "doc", error=Refused)
    except Refused as exc:
        assert str(exc).startswith("doc ")


@HYP
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | st.binary(max_size=20),
    lambda c: st.lists(c, max_size=6) | st.tuples(c) | st.tuples(c, c)
    | st.dictionaries(st.text(max_size=5), c, max_size=6) | st.frozensets(st.integers(), max_size=4)
    | st.sets(st.text(max_size=3), max_size=4),
    max_leaves=60), limit=st.integers(8, 300))
def test_short_repr_is_repr_or_a_cut_prefix(value, limit):
    full = repr(value)
    got = short_repr(value, limit)
    if len(full) <= limit:
        assert got == full
    else:
        assert len(got) <= limit and got.endswith("...")


def test_short_repr_of_bombs_is_bounded():
    a: list = [1]
    a.append(a)
    shared = ["lol"] * 10
    for _ in range(8):
        shared = [shared] * 10  # 10^9 leaves, ~100 objects
    for value in (a, shared, 10**20000, "x" * 10**7, {"k": shared}):
        exc, peak = peak_of(lambda v=value: short_repr(v))
        assert exc is None and peak < MB
        assert len(short_repr(value)) <= 200


@HYP
@given(tree=st.recursive(st.integers() | st.text(max_size=250),
                         lambda c: st.lists(c, max_size=5)
                         | st.dictionaries(st.text(max_size=4), c, max_size=5),
                         max_leaves=50))
def test_object_size_counts_like_the_reference(tree):
    def ref(v):  # the naive expansion: what repr or a deep copy walks
        if isinstance(v, dict):
            return 1 + sum(ref(k) + ref(x) for k, x in v.items())
        if isinstance(v, list):
            return 1 + sum(ref(x) for x in v)
        return 1 + (len(v) // 100 if isinstance(v, str) else 0)

    assert check_object_size(tree, "tree") == ref(tree)


def test_object_size_refuses_dags_cycles_and_depth():
    shared = [0] * 10
    for _ in range(8):
        shared = [shared] * 10
    for value, words in ((shared, "expands"), ({"cfg": shared}, "expands")):
        exc, peak = peak_of(lambda v=value: check_object_size(v, "the config"))
        assert isinstance(exc, ResourceLimitError) and words in str(exc) and peak < MB
    a: dict = {}
    a["self"] = a
    with pytest.raises(ResourceLimitError, match="contains itself"):
        check_object_size(a, "x")
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(ResourceLimitError, match="deeper"):
        check_object_size(deep, "x")


def test_billion_laughs_inside_a_checkpoint_config(tmp_path):
    good = tiny_checkpoint(tmp_path / "good.pt")
    payload = torch.load(good, weights_only=True)
    shared = ["lol"] * 10
    for _ in range(8):
        shared = [shared] * 10
    bomb_cfg = dict(payload["config"], description=shared)
    path = tmp_path / "laughs.pt"
    path.write_bytes(torch_bytes({**payload, "config": bomb_cfg}))
    assert path.stat().st_size < 64 * 1024  # the pickle memo keeps it small
    for reader in (read_checkpoint, load_model_from_checkpoint):
        exc, peak = peak_of(lambda r=reader: r(path))
        assert isinstance(exc, CheckpointError) and str(path) in str(exc) and "expands" in str(exc), exc
        assert peak < 8 * MB, peak
    # a cycle and a deep nesting are refused the same way
    cyc = dict(payload["config"])
    cyc["description"] = [cyc]
    path.write_bytes(torch_bytes({**payload, "config": cyc}))
    with pytest.raises(CheckpointError, match="contains itself"):
        read_checkpoint(path)


def test_resume_config_bomb_and_non_utf8_exit_2(tmp_path, capsys):
    from relpos.experiments import train

    run = tmp_path / "run"
    run.mkdir()
    for data, words in ((billion_laughs().encode(), "expands"), (b"name: caf\xe9\n", "not UTF-8"),
                        (b"a: &a [*a]\n", "recursive")):
        (run / "config.yaml").write_bytes(data)
        exc, peak = peak_of(lambda: train.main(["--resume", "--run-dir", str(run)]))
        assert exc is None
        err = capsys.readouterr().err
        assert words in err and str(run / "config.yaml") in err, err
        assert peak < 4 * MB
        assert train.main(["--resume", "--run-dir", str(run)]) == 2
        capsys.readouterr()
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(billion_laughs())
    assert train.main(["--config", str(cfg)]) == 2
    assert "expands" in capsys.readouterr().err


# ============================================================================ 2. zip bombs


def test_zip_bomb_is_refused_before_torch_load(tmp_path, no_torch_load):
    from relpos import jobs

    good = tiny_checkpoint(tmp_path / "good.pt").read_bytes()
    bomb = deflate_bomb(good, "data/0", 256 * MB)
    assert len(bomb) < 300 * 1024  # ~0.25 MB that inflates to 256 MB
    path = tmp_path / "bomb.pt"
    path.write_bytes(bomb)
    calls = [
        ("check_torch_archive", lambda: check_torch_archive(bomb, "bomb.pt"), ResourceLimitError, "bomb.pt"),
        ("read_checkpoint", lambda: read_checkpoint(path), CheckpointError, str(path)),
        ("load_model_from_checkpoint", lambda: load_model_from_checkpoint(path), CheckpointError, str(path)),
        ("load_state_dict path", lambda: load_state_dict(path), ResourceLimitError, "bomb.pt"),
        ("load_state_dict bytes", lambda: load_state_dict(bomb, "mine.pth"), ResourceLimitError, "mine.pth"),
        ("import_checkpoint", lambda: import_checkpoint(bomb, "mine.pth"), ResourceLimitError, "mine.pth"),
        ("save_upload", lambda: jobs.save_upload(bomb, "my-upload.pt", tmp_path / "runs"), ResourceLimitError,
         "my-upload.pt"),
    ]
    for name, call, kind, shown in calls:
        exc, peak = peak_of(call)
        assert isinstance(exc, kind), (name, exc)
        assert shown in str(exc) and "ratio" in str(exc), (name, str(exc))
        assert ".tmp" not in str(exc)
        assert peak < 4 * MB, (name, peak)
    assert no_torch_load == []
    assert not (tmp_path / "runs" / "uploads").exists() or not list((tmp_path / "runs" / "uploads").iterdir())


def test_upload_refusals_name_the_users_file(tmp_path):
    from relpos import jobs

    good = torch.load(tiny_checkpoint(tmp_path / "good.pt"), weights_only=True)
    for data in (torch_bytes([1, 2]), torch_bytes({**good, "format_version": 99}),
                 torch_bytes({**good, "config": {**good["config"], "seed": "x"}})):
        with pytest.raises(ValueError) as err:
            jobs.save_upload(data, "mine.pt", tmp_path / "runs")
        assert "'mine.pt'" in str(err.value) and ".tmp" not in str(err.value), str(err.value)
    assert not list((tmp_path / "runs" / "uploads").iterdir())


def test_torch_does_inflate_deflate_entries(tmp_path):
    """Control: the bomb is live. A deflated archive under the limits loads, at its full size."""
    t = torch.zeros(MB // 4 * 3)  # 3 MB of zeros: deflates ~1000x, over the ratio limit
    raw = torch_bytes({"w": t})
    small = deflate_bomb(torch_bytes({"w": torch.zeros(1)}), "data/0", 4)  # deflated, tiny: fine
    assert torch.load(io.BytesIO(small), weights_only=True)["w"].numel() == 1
    check_torch_archive(small, "small.pt")
    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    data = out.getvalue()
    assert torch.load(io.BytesIO(data), weights_only=True)["w"].numel() == t.numel()  # torch inflates it
    with pytest.raises(ResourceLimitError, match="ratio"):
        check_torch_archive(data, "deflated.pt")


def test_archive_limits_entries_directory_overlap_and_budget(tmp_path, monkeypatch, no_torch_load):
    good = tiny_checkpoint(tmp_path / "good.pt").read_bytes()
    assert check_torch_archive(good, "good.pt") < len(good)
    # the budget: an honest, stored archive that declares more than the budget
    with memory_budget(0.01):
        with pytest.raises(ResourceLimitError, match="over the memory budget of 10.2 KB"):
            check_torch_archive(good, "good.pt")
    # too many entries (limit lowered so the test file stays small)
    with monkeypatch.context() as m:
        m.setattr(_file_limits, "MAX_ZIP_ENTRIES", 5)
        with pytest.raises(ResourceLimitError, match="zip entries; at most 5"):
            check_torch_archive(good, "many.pt")
    # an end record that declares 2^40 entries / a 1 TB directory: refused before zipfile reads it
    at = good.rfind(b"PK\x06\x06")
    lie = bytearray(good)
    lie[at + 32 : at + 40] = struct.pack("<Q", 2**40)
    with pytest.raises(ResourceLimitError, match="1099511627776 zip entries"):
        check_torch_archive(bytes(lie), "lie.pt")
    lie = bytearray(good)
    lie[at + 40 : at + 48] = struct.pack("<Q", 2**40)
    exc, peak = peak_of(lambda: check_torch_archive(bytes(lie), "lie.pt"))
    assert isinstance(exc, ResourceLimitError) and "zip directory" in str(exc) and peak < MB
    # a pickle over MAX_PICKLE_BYTES (a limit lowered so the test file stays small)
    with monkeypatch.context() as m:
        m.setattr(_file_limits, "MAX_PICKLE_BYTES", 100)
        with pytest.raises(ResourceLimitError, match="its pickle 'archive/data.pkl' is"):
            check_torch_archive(good, "pickle.pt")
    # two directory entries pointing at the same bytes (an overlapping zip bomb)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/a", bytes(1000))
        z.writestr("archive/b", bytes(1000))
    data = bytearray(out.getvalue())
    second = data.rfind(b"PK\x01\x02")
    data[second + 42 : second + 46] = struct.pack("<I", 0)
    with pytest.raises(ResourceLimitError, match="overlaps"):
        check_torch_archive(bytes(data), "overlap.pt")
    assert no_torch_load == []


def test_legacy_and_junk_files_are_refused_unread(tmp_path, no_torch_load):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf, _use_new_zipfile_serialization=False)
    cases = {"legacy.pt": buf.getvalue(), "raw-pickle.pth": pickle.dumps({"m": Payload()}),
             "empty.pt": b"", "text.pt": b"hello" * 100, "zip-magic-only.pt": b"PK\x03\x04" + bytes(10)}
    for name, data in cases.items():
        with pytest.raises(ValueError) as err:
            check_torch_archive(data, name)
        assert name in str(err.value)
        with pytest.raises(ValueError, match=re.escape(name)):
            load_state_dict(data, name)
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            read_checkpoint(path)
    assert no_torch_load == [] and not marker.exists()


@HYP
@given(cut=st.integers(0, 10**6),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6))
def test_mutated_archives_give_value_errors(tmp_path_factory, cut, flips):
    """Truncations and byte flips of a real checkpoint: a ValueError (or weights_only's
    UnpicklingError for the import reader), never another exception."""
    folder = tmp_path_factory.mktemp("mut")
    good = tiny_checkpoint(folder / "good.pt").read_bytes()
    data = bytearray(good[: cut % (len(good) + 1)])
    for pos, byte in flips:
        if data:
            data[pos % len(data)] = byte
    path = folder / "m.pt"
    path.write_bytes(bytes(data))
    for call in (lambda: check_torch_archive(bytes(data), "m.pt"), lambda: read_checkpoint(path)):
        try:
            call()
        except ValueError:
            pass
    try:
        load_state_dict(bytes(data), "m.pt")
    except (ValueError, pickle.UnpicklingError):
        pass


# ============================================================================ 3. declared sizes


def test_pth_declaring_2_40_elements(tmp_path):
    huge = torch.zeros(1).expand(2**20, 2**20)  # 2^40 elements over one stored float
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    data = torch_bytes({"model": {key: huge}})
    assert len(data) < 4096
    path = tmp_path / "huge.pth"
    path.write_bytes(data)
    for name, call, shown in (
        ("load_state_dict path", lambda: load_state_dict(path), "huge.pth"),
        ("load_state_dict bytes", lambda: load_state_dict(data, "mine.pth"), "mine.pth"),
        ("import_checkpoint", lambda: import_checkpoint(data, "mine.pth"), "mine.pth"),
    ):
        exc, peak = peak_of(call)
        assert isinstance(exc, ResourceLimitError), (name, exc)
        assert shown in str(exc) and key in str(exc) and "4.0 TB" in str(exc), str(exc)
        assert peak < MB
    # the inspector alone (a state dict handed over in memory): a ValueError naming the key
    table = torch.zeros(1).expand(1023**2, 2**20)  # a 1023 x 1023 window's rows: a table it would copy
    with pytest.raises(ValueError, match=re.escape(key)):
        inspect_state_dict({key: table})
    assert inspect_state_dict({key: huge}).tables == []  # 2^20 rows fit no window: never copied
    # a relpos checkpoint whose model holds such a view
    good = tiny_checkpoint(tmp_path / "good.pt")
    payload = torch.load(good, weights_only=True)
    payload["model"]["head.weight"] = torch.zeros(1).expand(2**30, 16)
    bad = tmp_path / "view.pt"
    bad.write_bytes(torch_bytes(payload))
    with pytest.raises(CheckpointError, match="model/head.weight"):
        read_checkpoint(bad)


@HYP
@given(rows=st.integers(1, 2**22), cols=st.integers(1, 64))
def test_declared_view_sizes_against_storage(rows, cols):
    """Reference: declared = rows * cols * 4 bytes over a 4-byte storage; refused iff over 1 MB + 4."""
    t = torch.zeros(1).expand(rows, cols)
    declared = rows * cols * 4
    if declared > 4 + MB:
        with pytest.raises(ResourceLimitError, match="stride-0"):
            check_loaded_tensors({"w": t}, "f.pth")
    else:
        assert check_loaded_tensors({"w": t}, "f.pth") == declared


def test_loaded_tensors_against_the_budget():
    state = {f"w{i}": torch.zeros(64 * 1024) for i in range(8)}  # 8 x 256 KB
    assert check_loaded_tensors(state, "f.pt") == 2 * MB
    with memory_budget(1.5):
        with pytest.raises(ResourceLimitError, match="f.pt: tensor w"):
            check_loaded_tensors(state, "f.pt")
    # shared storage (tied weights, qkv slices) and nesting are fine
    w = torch.zeros(12, 4)
    assert check_loaded_tensors({"a": w, "b": [w[:4], (w[4:],)]}, "f.pt") == 12 * 4 * 4 * 2


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_safetensors_declaring_more_than_stored(tmp_path):
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    cases = {
        "shape": ({key: {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 4]}}, b"\0" * 4,
                  "stores 4 bytes"),
        "offsets": ({key: {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}, b"\0" * 4,
                    "truncated"),
        "malformed": ({key: {"dtype": "F32", "shape": "big", "data_offsets": [0, 4]}}, b"\0" * 4,
                      "malformed"),
        "not-object": ({key: 5}, b"", "not an object"),
    }
    for name, (header, data, words) in cases.items():
        blob = safetensors_bytes(header, data)
        with pytest.raises(ValueError, match=words) as err:
            load_state_dict(blob, f"{name}.safetensors")
        assert f"{name}.safetensors" in str(err.value) and key in str(err.value)
    huge_header = struct.pack("<Q", 2**40) + b"{}"
    exc, peak = peak_of(lambda: load_state_dict(huge_header, "hdr.safetensors"))
    assert isinstance(exc, ResourceLimitError) and "hdr.safetensors" in str(exc) and peak < MB
    deep = struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError, match="not JSON"):
        check_safetensors(deep, "deep.safetensors")
    # within the budget and honest: read
    from safetensors.torch import save as save_safetensors

    blob = save_safetensors({key: torch.arange(6.0).reshape(3, 2)})
    assert check_safetensors(blob, "ok.safetensors") == 24
    assert torch.equal(load_state_dict(blob, "ok.safetensors")[key], torch.arange(6.0).reshape(3, 2))
    with memory_budget(0.00001):
        with pytest.raises(ResourceLimitError, match="over the memory budget"):
            load_state_dict(blob, "ok.safetensors")


@HYP
@given(shape=st.lists(st.integers(0, 2**33), max_size=4),
       dtype=st.sampled_from(["F32", "F16", "I64", "U8", "F4", "XX"]),
       begin=st.integers(0, 64), length=st.integers(0, 64), stored=st.integers(0, 128))
def test_safetensors_headers_are_checked_against_the_bytes(shape, dtype, begin, length, stored):
    blob = safetensors_bytes({"t": {"dtype": dtype, "shape": shape, "data_offsets": [begin, begin + length]}},
                             bytes(stored))
    itemsize = {"F32": 4, "F16": 2, "I64": 8, "U8": 1}.get(dtype)
    declared = math.prod(shape) * itemsize if itemsize else length
    honest = begin + length <= stored and declared == length
    if honest:
        assert check_safetensors(blob, "t.safetensors") == length
    else:
        with pytest.raises(ValueError, match="t.safetensors"):
            check_safetensors(blob, "t.safetensors")
    try:
        load_state_dict(blob, "t.safetensors")
    except ValueError:
        pass


# ============================================================================ 4. images


def png(width: int, height: int, rows: int = 1) -> bytes:
    """A PNG whose header says ``width x height`` (RGB); only ``rows`` rows of data follow."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes((1 + 3 * width) * min(rows, height)), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_png_names_its_size():
    for w, h, words in ((20_000, 20_000, "400000000 pixels"),  # over Pillow's own bomb limit
                        (100_000, 100_000, "10000000000 pixels"),
                        (8_000, 8_000, "8000x8000 = 64000000 pixels"),  # Pillow only warns; ours refuses
                        (40_001, 1_000, "40001x1000")):
        data = png(w, h, rows=16)
        assert len(data) < 10 * 1024 * 1024
        exc, peak = peak_of(lambda d=data: image_from_upload(d, 16, 3))
        assert type(exc) is ValueError and words in str(exc), exc
        assert "(40 megapixels) are accepted" in str(exc)
        assert peak < 2 * MB, peak


def test_small_images_still_decode():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(buf, "PNG")
    x = image_from_upload(buf.getvalue(), 8, 3)
    assert x.shape == (3, 8, 8) and torch.allclose(x[0], torch.ones(8, 8))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, 89-179 MP
@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_image_headers_refused_exactly_past_the_limit(width, height):
    data = png(width, height, rows=0)
    try:
        image_from_upload(data, 8, 3)
    except ValueError as exc:
        if width * height > MAX_IMAGE_PIXELS:
            assert f"{width * height} pixels" in str(exc), str(exc)
            assert "(40 megapixels) are accepted" in str(exc)
        else:
            assert "not an image Pillow can read" in str(exc)  # the data is missing, not too big
    else:
        assert width * height <= MAX_IMAGE_PIXELS


@HYP
@given(data=st.binary(max_size=400))
def test_random_image_bytes_give_value_errors(data):
    try:
        image_from_upload(b"\x89PNG\r\n\x1a\n" + data, 8, 3)
    except ValueError:
        pass
    try:
        image_from_upload(data, 8, 1)
    except ValueError:
        pass


def test_the_limit_modules_sit_low_in_the_layers():
    """They may import only the standard library, PyYAML, relpos.guards/_validation and each other, so
    every reader (config, data, checkpoints, jobs, explore) can use them without a cycle."""
    import ast

    allowed = {"relpos._limits", "relpos._validation", "relpos.guards"}
    for module in ("_limits", "_file_limits"):
        tree = ast.parse((Path(_file_limits.__file__).parent / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("relpos"):
                assert node.module in allowed, (module, node.module)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] in ("torch", "numpy") for n in names), (module, names)
