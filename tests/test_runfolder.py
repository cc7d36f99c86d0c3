"""A run folder is untrusted data (relpos.experiments.runfolder, the read side of rundir, runproc's readers).

Hostile contents are generated broadly with hypothesis (any JSON type for every field, NaN and
Infinity, ints like 2**70, invalid UTF-8, non-UTF-8 folder names, symlinks out of the folder, FIFOs,
oversized and deeply nested files): each gives one row, possibly broken with its reason, and never an
exception; the sound runs beside them are listed intact; reconcile and the queue survive them; the
app's Train page and sidebar render over them. Deterministic (derandomized, no example database).
Listing reads a bounded part of each file whatever its size (tracemalloc, no timing asserts).

Cases tried per run of this file: 120 hostile run folders (each listed alone), 120 sound statuses,
120 single hostile fields, 40 runs roots mixing 1-5 hostile folders with 3 sound runs (list,
reconcile, queue), plus the named cases below (the issue's examples, FIFOs, a 200 MB metrics file,
oversized and deeply nested JSON, non-UTF-8 names, an unwritable run, the app's pages). Over 400
lines: the strategies and the folder writers serve every test here, so they stay in one file.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relpos import jobs
from relpos._fileio import display_name, display_text
from relpos.experiments import rundir, runfolder, runproc, runqueue

HYP = settings(max_examples=120, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
STATES = set(rundir.RUN_STATES) | {runfolder.BROKEN}
SECRET_EPOCH, SECRET_ACC = 7_654_321, 0.7654321  # what only a followed symlink could show

# ----------------------------------------------------------------------------- strategies

#: Numbers a hostile writer may put anywhere: huge, negative, non-finite, bool (a JSON true is no number).
hostile_numbers = st.one_of(
    st.integers(), st.sampled_from([2**70, -(2**70), 2**22 + 1, 2**53 + 1, 0, -1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
)
#: Text with surrogates, control characters and anything else (JSON escapes surrogates as \udcff).
hostile_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=40)
hostile_json = st.recursive(
    st.none() | hostile_numbers | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
#: Values that pass every check (what relpos itself writes).
sound_values = {
    "state": st.sampled_from(rundir.RUN_STATES),
    "name": st.text(max_size=20),
    "error": st.none() | st.text(max_size=60),
    "epoch": st.integers(0, 1000), "epochs": st.integers(0, 1000),
    "step": st.integers(0, 10**6), "total_steps": st.integers(0, 10**6),
    "eta_seconds": st.none() | st.floats(0, 1e6),
    "created_at": st.floats(1e9, 2e9), "updated_at": st.floats(1e9, 2e9), "started_at": st.floats(1e9, 2e9),
    "best_accuracy": st.none() | st.floats(0, 1), "eval_accuracy": st.floats(0, 1),
    "eval_loss": st.none() | st.floats(-1e6, 1e6),
    "overrides": st.lists(st.text(alphabet="abc.=123_", min_size=1, max_size=20), max_size=4),
    "config_path": st.text(alphabet="abc/._-", min_size=1, max_size=30),
    "world_size": st.integers(1, 8),
}
field_names = st.sampled_from(sorted(runfolder.STATUS_FIELDS) + ["unknown", "sets", "note"])


def hostile_status() -> st.SearchStrategy[dict]:
    """A status object whose known fields are each sound or hostile, at random."""
    return st.dictionaries(field_names, hostile_json | st.sampled_from(["queued", "running", "done"]), max_size=10)


#: A status that is sound but for at most two fields of any JSON type (which may happen to pass).
nearly_sound_status = st.builds(
    lambda sound, extra: {**sound, **extra},
    st.fixed_dictionaries({"state": sound_values["state"]},
                          optional={k: v for k, v in sound_values.items() if k != "state"}),
    st.dictionaries(field_names, hostile_json, max_size=2),
)
#: status.json as bytes: a hostile object, NaN/Infinity literals, invalid UTF-8, not JSON, not an object.
status_bytes = st.one_of(
    nearly_sound_status.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    hostile_status().map(lambda d: json.dumps(d, allow_nan=True).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"", b"[]", b"null", b"\xff\xfe{}", b'{"state": "done"', b"[" * 50_000 + b"]" * 50_000,
                     b'{"state": "running", "pid": 1e999}', b'{"state": NaN}', b'\xef\xbb\xbf{"state": "done"}']),
)
metrics_line = st.one_of(
    st.dictionaries(st.sampled_from(["kind", "step", "epoch", "train_loss", "train_accuracy", "eval_accuracy",
                                     "eval_loss", "lr"]),
                    hostile_json | st.sampled_from(["step", "epoch"]), max_size=6)
    .map(lambda d: json.dumps(d, allow_nan=True).encode()),
    st.binary(max_size=60), st.just(b'{"kind": "epoch", "epoch": 1, "eval_accuracy": 0.5}'),
)
metrics_bytes = st.lists(metrics_line, max_size=8).map(lambda lines: b"\n".join(lines))
#: Folder names as bytes, UTF-8 or not (never '/', NUL, '.' or '..').
folder_names = st.binary(min_size=1, max_size=30).filter(
    lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b".."))
LINKABLE = (rundir.STATUS_FILE, rundir.METRICS_FILE, runproc.PROCESS_FILE, rundir.CONFIG_FILE, rundir.BEST_CKPT)


@st.composite
def hostile_runs(draw) -> dict:
    """What one hostile run folder holds: its name, files as bytes, and which files are symlinks out."""
    return {
        "name": draw(folder_names),
        "status": draw(status_bytes),
        "process": draw(st.none() | st.builds(lambda pid: json.dumps({"pid": pid, "command": ["python"]}).encode(),
                                                 hostile_numbers) | status_bytes),
        "metrics": draw(st.none() | metrics_bytes),
        "links": draw(st.lists(st.sampled_from(LINKABLE), max_size=2, unique=True)),
    }


def write_run(root: Path, spec: dict, outside: Path) -> Path:
    """Create the run folder ``spec`` describes under ``root`` (a name of raw bytes) and return it."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(root), b"r-" + spec["name"])))
    path.mkdir()
    files = {rundir.STATUS_FILE: spec["status"], runproc.PROCESS_FILE: spec["process"],
             rundir.METRICS_FILE: spec["metrics"]}
    for name, data in files.items():
        if data is not None and name not in spec["links"]:
            (path / name).write_bytes(data)
    for name in spec["links"]:
        (path / name).symlink_to(outside / name)
    return path


@functools.cache
def _dead_pid() -> int:
    """A pid that has ended. Never write a live pid (1, this process) into a runs root a fixture cleans:
    its finalizer kills run process groups (tests/support.py refuses those now, but do not rely on it)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_outside(tmp: Path) -> Path:
    """Files outside the runs root that a symlink may point to: a sound 'done' run at epoch SECRET_EPOCH."""
    outside = tmp / "outside"
    rundir.update_status(outside, state="done", epoch=SECRET_EPOCH, epochs=SECRET_EPOCH, eval_accuracy=SECRET_ACC,
                         created_at=time.time())
    rundir.append_metrics(outside, {"kind": "epoch", "epoch": SECRET_EPOCH, "eval_accuracy": SECRET_ACC})
    rundir.atomic_write_json(outside / runproc.PROCESS_FILE, {"pid": _dead_pid()})
    (outside / rundir.CONFIG_FILE).write_text("name: secret\n")
    (outside / rundir.BEST_CKPT).write_bytes(b"secret")
    return outside


def assert_row_is_safe(row: dict) -> None:
    """Every value of a list_runs row can be formatted and sent to a page as it is."""
    for key in ("name", "state", "error", "config_path"):
        if row[key] is not None:
            assert isinstance(row[key], str)
            row[key].encode("utf-8")  # no lone surrogate: protobuf would refuse it
    assert row["name"].isprintable()
    assert row["state"] in STATES
    assert isinstance(row["progress"], float) and 0.0 <= row["progress"] <= 1.0
    for key in ("epoch", "epochs"):
        assert row[key] is None or (type(row[key]) is int and 0 <= row[key] <= 2**53)
    assert row["accuracy"] is None or (isinstance(row["accuracy"], float) and 0.0 <= row["accuracy"] <= 1.0)
    assert row["eta_seconds"] is None or (math.isfinite(row["eta_seconds"]) and row["eta_seconds"] >= 0)
    for key in ("updated", "created"):
        assert row[key] is None or (math.isfinite(row[key]) and 0 <= row[key] <= runfolder.MAX_TIME)
        time.localtime(row[key] or 0)  # what the runs table does with it
    assert row["pid"] is None or (type(row["pid"]) is int and 1 <= row["pid"] <= runproc.PID_MAX)
    assert isinstance(row["overrides"], list) and all(isinstance(o, str) and o.isprintable() for o in row["overrides"])
    assert isinstance(row["alive"], bool) and isinstance(row["broken"], bool)
    assert row["broken"] == (row["state"] == runfolder.BROKEN)
    if row["broken"]:
        assert row["error"].startswith("broken run folder: ") and row["problems"]
    json.dumps(row, allow_nan=False)  # finite numbers only


# ----------------------------------------------------------------------------- every hostile folder is one row


@HYP
@given(spec=hostile_runs())
def test_any_hostile_run_folder_is_one_safe_row(spec):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        outside, root = make_outside(tmp), tmp / "runs"
        root.mkdir()
        run = write_run(root, spec, outside)
        record = runfolder.read_run(run)
        assert record is not None  # status.json exists (as a file or a symlink): always a row
        (row,) = jobs.list_runs(root)
        assert row == jobs.run_info(run) | {"queue_position": row["queue_position"]}
        assert_row_is_safe(row)
        assert os.fsencode(row["path"]) == os.path.join(os.fsencode(root), b"r-" + spec["name"])
        assert row["name"] == display_name(b"r-" + spec["name"])
        # Nothing of the outside run is ever read through a symlink.
        assert row["epoch"] != SECRET_EPOCH and row["accuracy"] != SECRET_ACC
        if spec["links"]:
            assert row["broken"] and "symlink" in row["error"]
        # The curves of the run (the one place its metrics are read in full) are clean too.
        tail = rundir.read_metrics_tail(run)
        assert (tail.problem is not None) == (rundir.METRICS_FILE in spec["links"])
        for rec in tail.records:
            json.dumps(rec, allow_nan=False)
            assert all(not isinstance(v, (list, dict)) for v in rec.values())
            assert all(type(v) is not int or abs(v) <= 2**53 for v in rec.values())


@HYP
@given(fields=st.fixed_dictionaries({}, optional=sound_values))
def test_sound_status_round_trips_unbroken(fields):
    """What relpos itself writes passes every check: no false 'broken'."""
    fields.setdefault("state", "done")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "r"
        rundir.atomic_write_json(run / rundir.STATUS_FILE, fields)
        rundir.append_metrics(run, {"kind": "step", "step": 1, "train_loss": 0.5, "lr": 1e-3})
        record = runfolder.read_run(run)
        assert not record.broken, record.problems
        assert record.state == fields["state"] and record.shown_state == fields["state"]
        for key, value in fields.items():
            expected = float(value) if isinstance(value, float) else value
            assert record.status[key] == expected, key


@HYP
@given(key=st.sampled_from(sorted(runfolder.STATUS_FIELDS)), value=hostile_json)
def test_each_field_is_checked_by_type_and_range(key, value):
    """A field either passes (and keeps a value of its kind) or makes the run broken naming the field."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "r"
        status = {"state": "done", key: value} if key != "state" else {"state": value}
        (run).mkdir()
        (run / rundir.STATUS_FILE).write_text(json.dumps(status, allow_nan=True))
        record = runfolder.read_run(run)
        if key in record.status or (value is None and key != "state"):
            assert not record.broken
        else:
            assert record.broken and any(p.startswith(f"status.json: {key} = ") for p in record.problems)
            assert len(record.reason) <= 2000
        got = record.status.get(key)
        if got is not None and key in ("epoch", "epochs", "step", "total_steps"):
            assert type(got) is int and 0 <= got <= 2**53
        if got is not None and key.endswith(("_at",)):
            assert 0 <= got <= runfolder.MAX_TIME
        if got is not None and key.endswith("accuracy"):
            assert 0.0 <= got <= 1.0


def test_the_issue_examples_each_give_one_broken_row_with_the_field(tmp_path):
    root = tmp_path / "runs"
    cases = {
        "state-list": {"state": ["running"]},
        "created-text": {"state": "done", "created_at": "yesterday"},
        "overrides-number": {"state": "queued", "overrides": 3},
        "pid-2-70": {"state": "running", "pid": 2**70},
        "epoch-neg": {"state": "done", "epoch": -1},
        "acc-2": {"state": "done", "eval_accuracy": 2.0},
    }
    for name, status in cases.items():
        rundir.atomic_write_json(root / name / rundir.STATUS_FILE, status)
    nan = root / "updated-nan"
    nan.mkdir()
    (nan / rundir.STATUS_FILE).write_text('{"state": "done", "updated_at": NaN, "eta_seconds": Infinity}')
    rows = {r["name"]: r for r in jobs.list_runs(root)}
    assert len(rows) == len(cases) + 1
    for name, key in [("state-list", "state"), ("created-text", "created_at"), ("overrides-number", "overrides"),
                      ("pid-2-70", "pid"), ("epoch-neg", "epoch"), ("acc-2", "eval_accuracy")]:
        assert rows[name]["state"] == "broken" and f"status.json: {key} = " in rows[name]["error"], name
    assert "2**22" in rows["pid-2-70"]["error"] and rows["pid-2-70"]["pid"] is None
    # NaN and Infinity are read as null (JSON has neither): allowed, not broken.
    assert rows["updated-nan"]["state"] == "done" and rows["updated-nan"]["updated"] is None
    assert not jobs.is_alive(2**70) and runproc.run_pid(root / "pid-2-70") is None


# ----------------------------------------------------------------------------- files: symlinks, FIFOs, sizes


def test_files_are_never_followed_or_waited_on_and_sizes_are_bounded(tmp_path):
    root, outside = tmp_path / "runs", make_outside(tmp_path)
    fifo = root / "fifo"
    rundir.update_status(fifo, state="done")
    os.mkfifo(fifo / rundir.METRICS_FILE)  # opening it to read would block forever
    fifo_status = root / "fifo-status"
    fifo_status.mkdir()
    os.mkfifo(fifo_status / rundir.STATUS_FILE)
    big = root / "big"
    big.mkdir()
    (big / rundir.STATUS_FILE).write_text(json.dumps({"state": "done", "error": "x" * (rundir.MAX_JSON_BYTES + 1)}))
    deep = root / "deep"
    deep.mkdir()
    (deep / rundir.STATUS_FILE).write_text('{"state": "done", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    linked_dir = root / "linked-dir"
    linked_dir.symlink_to(outside)  # a run folder that is a symlink: skipped by the list
    dir_ckpt = root / "dir-ckpt"
    rundir.update_status(dir_ckpt, state="done")
    (dir_ckpt / rundir.BEST_CKPT).mkdir()
    rows = {r["name"]: r for r in jobs.list_runs(root)}
    assert sorted(rows) == ["big", "deep", "dir-ckpt", "fifo", "fifo-status"]
    assert "metrics.jsonl is not a regular file" in rows["fifo"]["error"]
    assert "status.json is not a regular file" in rows["fifo-status"]["error"]
    assert "the limit is" in rows["big"]["error"]
    assert "not valid JSON" in rows["deep"]["error"]
    assert "best.pt is not a regular file" in rows["dir-ckpt"]["error"]
    assert runfolder.read_run(linked_dir).problems == ("the run folder is a symlink; it is never followed",)
    assert rundir.read_metrics(fifo) == [] and rundir.read_status(fifo_status) is None
    assert jobs.list_checkpoints(root) == []


def test_listing_reads_a_bounded_tail_whatever_the_metrics_size(tmp_path):
    """A 200 MB metrics.jsonl (sparse, so the test is cheap) costs the list 64 KiB, and the curves 8 MiB."""
    root = tmp_path / "runs"
    run = root / "huge"
    rundir.update_status(run, state="running", created_at=time.time())  # no accuracy in status: the tail is read
    with open(run / rundir.METRICS_FILE, "wb") as f:
        f.truncate(200 * 2**20)
        f.seek(0, os.SEEK_END)
        f.write(b"\n" + json.dumps({"kind": "epoch", "epoch": 3, "eval_accuracy": 0.625}).encode() + b"\n")
    tracemalloc.start()
    try:
        (row,) = jobs.list_runs(root)
        _, list_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        tail = rundir.read_metrics_tail(run)
        _, curves_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert row["accuracy"] == 0.625
    assert list_peak < 2 * 2**20, list_peak
    assert curves_peak < 3 * rundir.MAX_METRICS_BYTES, curves_peak
    assert tail.size > 200 * 2**20 and tail.skipped_bytes >= tail.size - rundir.MAX_METRICS_BYTES
    assert tail.records == [{"kind": "epoch", "epoch": 3, "eval_accuracy": 0.625}]


def test_metrics_lines_are_cleaned_and_counted(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    lines = [b'{"kind": "step", "step": 1, "train_loss": NaN, "lr": Infinity}', b"\xff\xfe not utf-8",
             b'{"kind": "step", "step": 1267650600228229401496703205376, "train_loss": [1, 2]}',
             b'{"kind": "epoch", "epoch": 1, "eval_accuracy": 0.5, "note": "\\udcff\\u001b"}', b"[1, 2]",
             b'{"kind": "step", "st']
    (run / rundir.METRICS_FILE).write_bytes(b"\n".join(lines))
    tail = rundir.read_metrics_tail(run)
    assert tail.bad_lines == 3 and tail.skipped_bytes == 0 and tail.problem is None
    assert tail.records == [
        {"kind": "step", "step": 1, "train_loss": None, "lr": None},
        {"kind": "step", "step": None, "train_loss": None},
        {"kind": "epoch", "epoch": 1, "eval_accuracy": 0.5, "note": "\\udcff\\x1b"},
    ]


# ----------------------------------------------------------------------------- the list, reconcile and the queue


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=st.lists(hostile_runs(), min_size=1, max_size=5, unique_by=lambda s: s["name"]))
def test_good_runs_stay_intact_among_hostile_ones_and_reconcile_survives(specs, monkeypatch):
    launched: list[Path] = []
    monkeypatch.setattr(runqueue, "_launch", lambda run_dir, status, limit: launched.append(run_dir) or False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        outside, root = make_outside(tmp), tmp / "runs"
        root.mkdir()
        good = {
            "good-done": dict(state="done", epoch=3, epochs=3, eval_accuracy=0.875, created_at=1.7e9,
                              updated_at=1.7e9 + 5, overrides=["train.epochs=3"]),
            "good-dead": dict(state="running", epoch=1, epochs=3, created_at=1.7e9 + 1, pid=_dead_pid()),
            "good-queued": dict(state="queued", created_at=1.7e9 + 2, config_path=str(tmp / "none.yaml")),
        }
        for name, status in good.items():
            rundir.atomic_write_json(root / name / rundir.STATUS_FILE, status)
        hostile = [write_run(root, spec, outside) for spec in specs]
        before = {name: row for name, row in ((r["name"], r) for r in jobs.list_runs(root)) if name in good}
        rows = jobs.list_runs(root)
        assert len(rows) == len(good) + len(hostile)
        for row in rows:
            assert_row_is_safe(row)
        by_name = {r["name"]: r for r in rows}
        assert by_name["good-done"] == before["good-done"]
        assert by_name["good-done"]["accuracy"] == 0.875 and by_name["good-done"]["state"] == "done"
        assert by_name["good-done"]["overrides"] == ["train.epochs=3"] and not by_name["good-done"]["broken"]
        assert by_name["good-queued"]["queue_position"] is not None
        changed = runqueue.reconcile(root, limit=8)
        assert "good-dead" in changed
        assert rundir.read_status(root / "good-dead")["state"] == "failed"
        assert rundir.read_status(root / "good-done") == good["good-done"]
        # Only sound waiting runs are ever handed to a trainer; a broken folder never is.
        assert all(not runfolder.read_run(p, metrics=False).broken for p in launched)
        assert (root / "good-queued").resolve() in [p.resolve() for p in launched]
        # Outside files untouched: nothing was written through a symlink.
        assert rundir.read_status(outside)["epoch"] == SECRET_EPOCH


def test_reconcile_skips_a_run_it_cannot_write_and_goes_on(tmp_path, monkeypatch, capsys):
    root = tmp_path / "runs"
    for name in ("a-stuck", "b-dead"):
        rundir.update_status(root / name, state="running", pid=_dead_pid(), created_at=time.time())
    real_update = rundir.update_status

    def update(run_dir, **fields):
        if Path(run_dir).name == "a-stuck":
            raise PermissionError(13, "Permission denied")
        return real_update(run_dir, **fields)

    monkeypatch.setattr(rundir, "update_status", update)
    assert jobs.reconcile_runs(root) == ["b-dead"]
    assert "reconcile skipped a-stuck" in capsys.readouterr().err


def test_non_utf8_names_are_shown_escaped_and_kept_real(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    raw = os.path.join(os.fsencode(root), b"run-\xff\xfe\x1b")
    os.mkdir(raw)
    run = Path(os.fsdecode(raw))
    rundir.update_status(run, state="done", created_at=time.time())
    (run / rundir.BEST_CKPT).write_bytes(b"not a checkpoint")
    (row,) = jobs.list_runs(root)
    assert row["name"] == "run-\\xff\\xfe\\x1b" and os.fsencode(row["path"]) == raw
    (ckpt,) = jobs.list_checkpoints(root)
    assert ckpt["label"] == "run-\\xff\\xfe\\x1b/best.pt" and ckpt["run"] == row["name"]
    assert os.fsencode(ckpt["path"]) == os.path.join(raw, b"best.pt")
    assert display_text("a\udcffb") == "a\\udcffb"


# ----------------------------------------------------------------------------- the app over a hostile runs folder


def hostile_root(root: Path, tmp: Path) -> None:
    """A runs folder with one of each defect the issue names, and one sound run."""
    outside = make_outside(tmp)
    rundir.update_status(root / "sound", state="done", epoch=2, epochs=2, eval_accuracy=0.5, created_at=time.time())
    rundir.append_metrics(root / "sound", {"kind": "epoch", "epoch": 1, "eval_accuracy": 0.5, "train_loss": 1.0})
    for name, status in {"state-list": {"state": ["x"]}, "created-text": {"state": "done", "created_at": "now"},
                         "overrides-number": {"state": "queued", "overrides": 7},
                         "pid-huge": {"state": "running", "pid": 2**70}}.items():
        rundir.atomic_write_json(root / name / rundir.STATUS_FILE, status)
    nan = root / "updated-nan"
    nan.mkdir()
    (nan / rundir.STATUS_FILE).write_text('{"state": "running", "updated_at": NaN, "pid": %d}' % _dead_pid())
    bad_metrics = root / "metrics-not-utf8"
    rundir.update_status(bad_metrics, state="done", created_at=time.time())
    (bad_metrics / rundir.METRICS_FILE).write_bytes(b'{"kind": "step", "step": 1, "train_loss": 1}\n\xff\xfe\n')
    linked = root / "metrics-symlink"
    rundir.update_status(linked, state="done", created_at=time.time())
    (linked / rundir.METRICS_FILE).symlink_to(outside / rundir.METRICS_FILE)
    raw = os.path.join(os.fsencode(root), b"bytes-\xff\xfe")
    os.mkdir(raw)
    rundir.update_status(os.fsdecode(raw), state="done", created_at=time.time())
    Path(os.fsdecode(raw), rundir.BEST_CKPT).write_bytes(b"junk, not a checkpoint")
    rundir.update_status(root / "second", state="done", created_at=time.time())
    (root / "second" / rundir.BEST_CKPT).write_bytes(b"junk too")


def test_app_pages_render_over_a_hostile_runs_folder(runs_root, tmp_path):
    st_testing = pytest.importorskip("streamlit.testing.v1")
    from app_support.frame import W_SOURCE

    hostile_root(runs_root, tmp_path)
    app = str(Path(__file__).resolve().parents[1] / "app.py")
    at = st_testing.AppTest.from_file(app, default_timeout=120).run()  # the reconcile at start runs over it
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    labels = at.sidebar.selectbox(key=W_SOURCE).options  # the labels, as sent to the browser
    assert "bytes-\\xff\\xfe/best.pt" in labels, labels
    at.switch_page("pages/4_train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    run_picker = at.selectbox(key="tr_run")
    names = list(run_picker.options)
    assert "sound" in names and "bytes-\\xff\\xfe" in names and len(names) == 10
    for name in names:  # every run, selected, renders: broken ones with their reason, none with a traceback
        at.selectbox(key="tr_run").set_value(name).run()
        assert not at.exception, (name, [e.value for e in at.exception])
        # The one error allowed: a run whose trainer is gone, failed by the reconcile at start (as designed).
        assert all(e.value.startswith("**This run failed.**") for e in at.error), (name, [e.value for e in at.error])
        assert name != "sound" or not at.error
    at.switch_page("pages/5_checkpoints.py").run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert errors and all("Could not read checkpoint A" in e for e in errors), errors  # junk A, said once
    assert not any("is not defined" in e for e in errors)  # the compare block does not use A's missing names
