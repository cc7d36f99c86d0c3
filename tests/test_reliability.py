"""Reliability and security suite (issue 6): faults, hostile input, load.

Run it alone with ``pytest -m reliability``. Every case injects one fault or one hostile input and
checks that (a) no run is lost, (b) no foreign code runs (payloads would create a marker file), and
(c) bad input gets a ValueError/TypeError naming what was wrong, never a crash inside torch or a
hang. Training runs use configs/tiny.yaml on the CPU with one thread; every process started here
is killed by a finalizer.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from relpos import explore, geometry, jobs
from relpos.experiments import rundir
from relpos.experiments.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from relpos.experiments.config import apply_overrides, build_model, resolve_config
from relpos.experiments.config_utils import ConfigError, load_config

from support import install_fake_trainer, kill_runs, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SMALL = {"data": {"img_size": 8, "patch_size": 2, "mark_size": 1, "num_train": 64, "num_val": 32},
         "model": {"embed_dim": 16, "depth": 1, "num_heads": 2}}



# ============================================================================ process helpers


class Procs:
    """Start processes in their own session; the finalizer SIGKILLs every group still alive."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        self.procs.append(proc)
        return proc

    def train(self, cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
        return self.start([sys.executable, "-m", "relpos.experiments.train", *args], cwd, env)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.close()


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out or ""




def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


# ============================================================================ kill -9 and resume

# 64 steps per epoch, 3 epochs: long enough to be killed mid-epoch, a few seconds in all.
TRAIN_SETS = ["--set", "train.epochs=3", "--set", "data.num_train=2048", "--set", "train.log_every=1"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, procs):
    ref = procs.train(tmp_path, "--config", str(TINY), "--run-dir", "ref", *TRAIN_SETS)
    run = tmp_path / "run"
    victim = procs.train(tmp_path, "--config", str(TINY), "--run-dir", "run", *TRAIN_SETS)

    def mid_epoch_two():
        s = rundir.read_status(run) or {}
        return s.get("state") == "running" and (s.get("step") or 0) >= 70 and (run / "last.pt").is_file() and s

    status = wait_for(mid_epoch_two, 120, 0.01, "the run to reach step 70")
    os.killpg(victim.pid, signal.SIGKILL)  # fault: kill -9 mid-epoch 2
    victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    assert rundir.read_status(run)["state"] == "running"  # nothing got to record an end
    assert 64 <= read_checkpoint(run / "last.pt")["step"] < 192 and status["step"] < 192
    # the app's reconcile marks it failed (not lost), and --resume brings it to done
    assert jobs.reconcile_runs(tmp_path) == ["run"]
    assert rundir.read_status(run)["state"] == "failed"
    resumed = procs.train(tmp_path, "--config", str(TINY), "--run-dir", "run", "--resume", *TRAIN_SETS)
    out = finish(resumed)
    assert resumed.returncode == 0, out
    out_ref = finish(ref)
    assert ref.returncode == 0, out_ref
    final = rundir.read_status(run)
    assert final["state"] == "done" and final["step"] == 192
    a, b = weights(tmp_path / "ref" / "last.pt"), weights(run / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill9_between_checkpoint_write_and_rename_keeps_the_previous_checkpoint(tmp_path, procs):
    run = tmp_path / "run"
    # the 3rd checkpoint write is epoch 2's (epoch 1 writes last.pt and best.pt)
    victim = procs.train(tmp_path, "--config", str(TINY), "--run-dir", "run", "--set", "train.epochs=2",
                         env={"RELPOS_TEST_KILL_BETWEEN_WRITE_AND_RENAME": "3"})
    out = finish(victim)
    assert victim.returncode == -signal.SIGKILL, out
    ck = read_checkpoint(run / "last.pt")  # the previous checkpoint, whole
    assert ck["epoch"] == 1 and ck["step"] == 4
    model, _ = load_model_from_checkpoint(run / "last.pt")
    load_model_from_checkpoint(run / "best.pt")
    leftovers = [p.name for p in run.iterdir() if p.name not in
                 {"last.pt", "best.pt", "status.json", "metrics.jsonl", "config.yaml", "train.log"}]
    assert all(".tmp" in name or name.startswith(".") for name in leftovers), leftovers
    resumed = procs.train(tmp_path, "--config", str(TINY), "--run-dir", "run", "--resume", "--set", "train.epochs=2")
    out = finish(resumed)
    assert resumed.returncode == 0, out
    assert rundir.read_status(run)["state"] == "done" and read_checkpoint(run / "last.pt")["epoch"] == 2


# ============================================================================ hostile checkpoints


class _OpenPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _good_checkpoint(path: Path, cfg: dict | None = None) -> Path:
    cfg = resolve_config(cfg or SMALL)
    save_checkpoint(build_model(cfg), None, 1, {"eval_accuracy": 0.5}, path, config=cfg)
    return path


def hostile_checkpoints(tmp_path: Path, marker: Path) -> dict[str, bytes]:
    good = _good_checkpoint(tmp_path / "good.pt").read_bytes()
    other_cfg = resolve_config({**SMALL, "model": {"embed_dim": 32, "depth": 2, "num_heads": 4}})
    other = build_model(other_cfg)
    wrong_model = {**torch.load(io.BytesIO(good), weights_only=True), "model": other.state_dict()}
    good_payload = torch.load(io.BytesIO(good), weights_only=True)
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "random-bytes": os.urandom(4096),
        "text": b"this is not a checkpoint\n" * 10,
        "wrong-model": _torch_bytes(wrong_model),
        "not-a-dict": _torch_bytes([1, 2, 3]),
        "newer-format": _torch_bytes({**good_payload, "format_version": 99}),
        "pickle-open-in-torch-zip": _torch_bytes({**good_payload, "extra": _OpenPayload(marker)}),
        "pickle-system-in-torch-zip": _torch_bytes({"format_version": 1, "model": _SystemPayload(marker)}),
        "raw-pickle-system": pickle.dumps({"model": _SystemPayload(marker)}, protocol=2),
        "raw-pickle-open": pickle.dumps(_OpenPayload(marker)),
    }


def test_hostile_checkpoints_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    cases = hostile_checkpoints(tmp_path, marker)
    model = build_model(resolve_config(SMALL))
    uploads = tmp_path / "runs"
    outcomes = {}
    for name, data in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        for reader, call in (
            ("read_checkpoint", lambda: read_checkpoint(path)),
            ("load_checkpoint", lambda: load_checkpoint(model, None, path)),
            ("load_model_from_checkpoint", lambda: load_model_from_checkpoint(path)),
            ("explore.load_checkpoint_model", lambda: explore.load_checkpoint_model(path)),
        ):
            if name == "wrong-model" and reader == "read_checkpoint":
                continue  # a well-formed file: refused when it meets a model, below
            with pytest.raises(CheckpointError) as err:
                call()
            assert str(path) in str(err.value), (name, reader, str(err.value))
            outcomes[(name, reader)] = str(err.value)
        with pytest.raises(ValueError) as err:  # the app's upload path
            jobs.save_upload(data, f"{name}.pt", uploads)
        assert f"{name}.pt" in str(err.value), str(err.value)
        assert not marker.exists(), f"payload {name} ran"
    assert not (uploads / jobs.UPLOADS_DIR).is_dir() or not list((uploads / jobs.UPLOADS_DIR).iterdir())
    assert "weights_only" in outcomes[("pickle-system-in-torch-zip", "read_checkpoint")]
    assert "does not fit" in outcomes[("wrong-model", "load_checkpoint")]
    assert "format_version" in outcomes[("newer-format", "read_checkpoint")]
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_a_checkpoint_whose_config_describes_a_huge_model_is_refused_before_it_is_built(tmp_path):
    """Every key within its range, but the model would need ~200 GB: refused by the memory guard,
    never handed to the allocator (which would raise RuntimeError or take the machine down)."""
    good = torch.load(io.BytesIO(_good_checkpoint(tmp_path / "good.pt").read_bytes()), weights_only=True)
    cfg = dict(good["config"], model={**good["config"]["model"], "embed_dim": 65536, "num_heads": 2})
    path = tmp_path / "huge.pt"
    path.write_bytes(_torch_bytes({**good, "config": cfg}))
    with pytest.raises(CheckpointError, match="memory"):
        load_model_from_checkpoint(path)
    with pytest.raises(ValueError, match="memory"):
        jobs.save_upload(path.read_bytes(), "huge.pt", tmp_path / "runs")


def test_the_import_page_reader_refuses_hostile_files(tmp_path):
    """checkpoint_import.load_state_dict (the Swin/BEiT import page): a clear ValueError, or
    weights_only's own UnpicklingError for a refused pickle; never EOFError/IndexError; no payload runs."""
    from relpos.checkpoint_import import load_state_dict

    marker = tmp_path / "PWNED"
    for name, data in hostile_checkpoints(tmp_path, marker).items():
        if name in ("wrong-model", "newer-format"):
            continue  # well-formed state dicts: importing foreign weights is that page's job
        for filename in (f"{name}.pt", f"{name}.safetensors"):
            with pytest.raises((ValueError, pickle.UnpicklingError)) as err:
                load_state_dict(data, filename)
            assert str(err.value).strip(), (filename, type(err.value))
            if isinstance(err.value, ValueError):
                assert filename in str(err.value)
    assert not marker.exists()


def test_the_payloads_are_live(tmp_path):
    """Control: unpickled without weights_only, the payload does create the marker."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_OpenPayload(marker))).close()
    assert marker.exists()


def test_hostile_upload_names_and_sizes(tmp_path):
    good = _good_checkpoint(tmp_path / "good.pt").read_bytes()
    root = tmp_path / "runs"
    stored = []
    for name in ("../../evil.pt", "/etc/passwd.pt", "..\\..\\win.pt", "a/b/c.pt", ".hidden.pt", "\x00.pt", "x..pt"):
        dest = jobs.save_upload(good, name, root)
        stored.append(dest)
        assert dest.parent == root / jobs.UPLOADS_DIR and not dest.name.startswith("."), dest
    assert len({p.name for p in stored}) == len(stored)  # never overwritten
    assert not (tmp_path / "evil.pt").exists()
    for name, data, words in (
        ("x.exe", good, ".pt or .pth"),
        ("..pt", good, ".pt or .pth"),
        ("../..", good, ".pt or .pth"),
        ("x.pt", good, "limit"),
    ):
        with pytest.raises(ValueError, match=words):
            jobs.save_upload(data, name, root, max_bytes=len(good) - 1 if words == "limit" else len(good))
    # a symlinked uploads folder pointing out of the root is refused
    other = tmp_path / "other_root"
    other.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, other / jobs.UPLOADS_DIR)
    with pytest.raises(ValueError, match="symlink"):
        jobs.save_upload(good, "x.pt", other)
    assert not list(outside.iterdir())


# ============================================================================ hostile YAML


YAML_PAYLOADS = [
    "name: !!python/object/apply:os.system ['touch {m}']\n",
    "model: !!python/object/apply:os.system ['touch {m}']\n",
    "!!python/object/new:os.system ['touch {m}']\n",
    "train:\n  epochs: !!python/object/apply:subprocess.call [['touch', '{m}']]\n",
    "x: !!python/name:os.system\n",
    "data: !!python/object:builtins.dict {{}}\n",
    "a: &a [*a, *a]\nname: !!binary aGVsbG8=\n",
]


@pytest.mark.parametrize("text", YAML_PAYLOADS)
def test_yaml_tags_are_refused_and_run_nothing(tmp_path, text):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(text.format(m=marker))
    with pytest.raises(ConfigError):
        cfg = load_config(path)
        resolve_config(cfg)  # whatever safe_load accepted must still not resolve
    assert not marker.exists()


def test_yaml_override_tags_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    for value in (f"!!python/object/apply:os.system ['touch {marker}']", "!!python/name:os.system"):
        with pytest.raises(ConfigError):
            resolve_config(apply_overrides({}, [f"train.epochs={value}"]))
    assert not marker.exists()


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"model": {"embed_dim": 10**9}}, "model.embed_dim"),
        ({"data": {"img_size": 10**6}}, "data.img_size"),
        ({"train": {"epochs": 10**12}}, "train.epochs"),
        ({"train": {"batch_size": 10**12}}, "train.batch_size"),
        ({"model": {"depth": 10**6}}, "model.depth"),
        ({"model": {"num_heads": 10**6}}, "model.num_heads"),
        ({"data": {"num_train": 10**12}}, "data.num_train"),
        ({"train": {"lr": 1e400}}, "train.lr"),
        ({"train": {"lr": float("nan")}}, "train.lr"),
        ({"model": {"embed_dim": "64"}}, "model.embed_dim"),
        ({"model": {"embed_dim": 64.0}}, "model.embed_dim"),
        ({"model": {"embed_dim": True}}, "model.embed_dim"),
        ({"model": {"use_relative_position": "yes"}}, "model.use_relative_position"),
        ({"model": {"bias_type": "3d"}}, "model.bias_type"),
        ({"model": {"embedding_dim": 64}}, "model.embedding_dim"),
        ({"trian": {"epochs": 1}}, "trian"),
        ({"model": [1, 2]}, "model"),
        ({"name": "../../etc"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "x\x00y"}, "name"),
        ({"data": {"root": "/etc"}}, "data.root"),
        ({"model": {"rpb": {"num_heads": 3}}}, "model.rpb.num_heads"),
        ({"model": {"rpb": {"evil": 1}}}, "evil"),
        ({"train": {"device": "cuda:0; rm -rf /"}}, "train.device"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**70}, "seed"),
    ],
)
def test_bad_config_values_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        resolve_config(cfg)
    assert key in str(err.value)


def test_a_huge_model_is_refused_before_it_is_built():
    """Within every per-key limit, but the model itself would not fit: refused, nothing allocated."""
    from relpos.guards import ResourceLimitError, memory_budget

    cfg = {**SMALL, "data": {**SMALL["data"], "img_size": 512, "patch_size": 2},  # 65536 tokens
           "model": {"embed_dim": 16, "depth": 1, "num_heads": 16}}
    with memory_budget(2048), pytest.raises((ConfigError, ResourceLimitError)) as err:
        resolve_config(cfg)
    assert "memory" in str(err.value) or "65536" in str(err.value)


# ============================================================================ bad arguments table


def _model():
    return build_model(resolve_config(SMALL))


def _bad_args_table():
    import relpos
    from relpos import _fileio as paths
    from relpos import guards
    from relpos.experiments import checkpoint as ck

    rpb2 = lambda: relpos.RelativePositionBias(2, (3, 3))  # noqa: E731
    mha = lambda: relpos.MultiHeadAttention(8, 2)  # noqa: E731
    sdpa = relpos.ScaledDotProductAttention
    q = torch.zeros(1, 2, 4, 4)
    rows = [
        # relative position index functions
        ("index_1d zero", relpos.get_relative_position_index_1d, {"seq_len": 0}, ValueError, "seq_len"),
        ("index_1d float", relpos.get_relative_position_index_1d, {"seq_len": 2.5}, TypeError, "seq_len"),
        ("index_1d str", relpos.get_relative_position_index_1d, {"seq_len": "8"}, TypeError, "seq_len"),
        ("index_1d bool", relpos.get_relative_position_index_1d, {"seq_len": True}, TypeError, "seq_len"),
        ("index_1d tensor", relpos.get_relative_position_index_1d, {"seq_len": torch.tensor([3, 4])}, TypeError,
         "seq_len"),
        ("index_2d neg", relpos.get_relative_position_index_2d, {"window_size": (-1, 3)}, ValueError, "window_size"),
        ("index_2d triple", relpos.get_relative_position_index_2d, {"window_size": (2, 2, 2)}, TypeError,
         "window_size"),
        ("index_2d str", relpos.get_relative_position_index_2d, {"window_size": "77"}, TypeError, "window_size"),
        ("index_2d None", relpos.get_relative_position_index_2d, {"window_size": None}, TypeError, "window_size"),
        # RelativePositionBias
        ("rpb heads 0", relpos.RelativePositionBias, {"num_heads": 0, "window_size": (3, 3)}, ValueError,
         "num_heads"),
        ("rpb no size", relpos.RelativePositionBias, {"num_heads": 2}, ValueError, "window_size"),
        ("rpb 1d no len", relpos.RelativePositionBias, {"num_heads": 2, "bias_type": "1d"}, ValueError, "seq_len"),
        ("rpb type", relpos.RelativePositionBias, {"num_heads": 2, "window_size": 3, "bias_type": "3d"},
         ValueError, "bias_type"),
        ("rpb std nan", relpos.RelativePositionBias, {"num_heads": 2, "window_size": 3, "init_std": float("nan")},
         ValueError, "init_std"),
        ("rpb std neg", relpos.RelativePositionBias, {"num_heads": 2, "window_size": 3, "init_std": -1.0},
         ValueError, "init_std"),
        ("rpb t5 option on 2d", relpos.RelativePositionBias, {"num_heads": 2, "window_size": 3, "num_buckets": 8},
         ValueError, "num_buckets"),
        ("rpb huge window", relpos.RelativePositionBias, {"num_heads": 16, "window_size": (128, 128)},
         ValueError, "memory"),
        ("rpb huge seq", relpos.RelativePositionBias, {"num_heads": 16, "seq_len": 10**6, "bias_type": "1d"},
         ValueError, "memory"),
        ("rpb set_window bad", lambda: rpb2().set_window_size((0, 3)), {}, ValueError, "window"),
        ("rpb set_window huge", lambda: rpb2().set_window_size((4096, 4096)), {}, ValueError, "memory"),
        # attention
        ("sdpa scale neg", sdpa, {"scale": -1.0}, ValueError, "scale"),
        ("sdpa dropout 1", sdpa, {"dropout": 1.0}, ValueError, "dropout"),
        ("sdpa dropout str", sdpa, {"dropout": "0.1"}, TypeError, "dropout"),
        ("sdpa bias shape", lambda: sdpa()(q, q, q, bias=torch.zeros(3, 5, 5)), {}, (ValueError, TypeError), "bias"),
        ("sdpa q rank", lambda: sdpa()(torch.zeros(4, 4), q, q), {}, (ValueError, TypeError), "q"),
        ("sdpa kv mismatch", lambda: sdpa()(q, torch.zeros(1, 2, 5, 3), q), {}, (ValueError, TypeError), ""),
        ("mha heads", relpos.MultiHeadAttention, {"embed_dim": 8, "num_heads": 3}, ValueError, "num_heads"),
        ("mha impl", relpos.MultiHeadAttention, {"embed_dim": 8, "num_heads": 2, "attn_impl": "fast"}, ValueError,
         "attn_impl"),
        ("mha rpb without flag", relpos.MultiHeadAttention, {"embed_dim": 8, "num_heads": 2,
                                                             "rpb_kwargs": {"window_size": 2}}, ValueError, "rpb"),
        ("mha x shape", lambda: mha()(torch.zeros(2, 5, 7)), {}, ValueError, "x"),
        ("mha x type", lambda: mha()([[1.0]]), {}, (ValueError, TypeError), "x"),
        ("mha rpb tokens", lambda: relpos.MultiHeadAttention(8, 2, use_relative_position=True,
                                                             rpb_kwargs={"window_size": (2, 2)})(torch.zeros(1, 5, 8)),
         {}, ValueError, ""),
        ("mha int dtype", lambda: mha()(torch.zeros(1, 4, 8, dtype=torch.long)), {}, TypeError, "x"),
        ("sdpa int dtype", lambda: sdpa()(q.long(), q.long(), q.long()), {}, TypeError, "query"),
        ("sdpa str", lambda: sdpa()("q", q, q), {}, TypeError, "query"),
        ("bias disabled str", lambda: relpos.relative_position_bias_disabled("model").__enter__(), {}, TypeError,
         "model"),
        ("collect str model", relpos.collect_attention_maps, {"model": "model"}, TypeError, "model"),
        ("collect str input", lambda: relpos.collect_attention_maps(_model(), "x"), {}, ValueError, "images"),
        ("index_1d huge", relpos.get_relative_position_index_1d, {"seq_len": 10**7}, ValueError, "memory"),
        ("index_2d huge", relpos.get_relative_position_index_2d, {"window_size": (10**5, 10**5)}, ValueError,
         "memory"),
        ("block ratio", relpos.TransformerBlock, {"embed_dim": 8, "num_heads": 2, "mlp_ratio": 0.0}, ValueError,
         "mlp_ratio"),
        ("block heads", relpos.TransformerBlock, {"embed_dim": 8, "num_heads": 0}, ValueError, "num_heads"),
        # models and data
        ("vit patch", relpos.VisionTransformer, {"img_size": 10, "patch_size": 3}, ValueError, "patch_size"),
        ("vit heads", relpos.VisionTransformer, {"embed_dim": 10, "num_heads": 3}, ValueError, "num_heads"),
        ("vit pos", relpos.VisionTransformer, {"img_size": 8, "patch_size": 2, "embed_dim": 8, "num_heads": 2,
                                               "depth": 1, "position_embedding": "sin"}, ValueError,
         "position_embedding"),
        ("vit cls bias", relpos.VisionTransformer, {"img_size": 8, "patch_size": 2, "embed_dim": 8, "num_heads": 2,
                                                    "depth": 1, "use_relative_position": True, "class_token": True},
         ValueError, "class_token"),
        ("vit huge", relpos.VisionTransformer, {"img_size": 4096, "patch_size": 4, "embed_dim": 8, "num_heads": 2,
                                                "depth": 1, "use_relative_position": True}, ValueError, "memory"),
        ("vit wrong image", lambda: _model()(torch.zeros(1, 3, 16, 16)), {}, ValueError, ""),
        ("vit wrong channels", lambda: _model()(torch.zeros(1, 1, 8, 8)), {}, ValueError, ""),
        ("vit int images", lambda: _model()(torch.zeros(1, 3, 8, 8, dtype=torch.long)), {}, TypeError, "images"),
        ("vit str images", lambda: _model()("x"), {}, ValueError, "images"),
        ("patch embed fwd", lambda: relpos.PatchEmbedding(8, 2, 3, 4)(torch.zeros(1, 3, 9, 9)), {}, ValueError,
         "images"),
        ("dataset str index", lambda: relpos.SyntheticImageDataset(4, 8, 2)["a"], {}, TypeError, "idx"),
        ("rpb set_window str", lambda: rpb2().set_window_size("big"), {}, TypeError, "new_window"),
        ("patch embed", relpos.PatchEmbedding, {"img_size": 8, "patch_size": 0}, ValueError, "patch_size"),
        ("dataset size", relpos.SyntheticImageDataset, {"num_samples": -1, "img_size": 8, "patch_size": 2},
         ValueError, "num_samples"),
        ("dataset patch", relpos.SyntheticImageDataset, {"num_samples": 4, "img_size": 8, "patch_size": 3},
         ValueError, "patch_size"),
        ("dataset index", lambda: relpos.SyntheticImageDataset(4, 8, 2)[10], {}, IndexError, ""),
        ("collect no attn", relpos.collect_attention_maps, {"model": torch.nn.Linear(2, 2)}, ValueError, "model"),
        ("collect huge", lambda: relpos.collect_attention_maps(
            relpos.VisionTransformer(img_size=64, patch_size=2, embed_dim=8, num_heads=2, depth=2, num_classes=2),
            torch.zeros(256, 3, 64, 64)), {}, ValueError, "memory"),
        # config files
        ("load_config missing", relpos.load_config, {"config_path": "/nonexistent/x.yaml"}, FileNotFoundError,
         "not found"),
        ("load_config type", relpos.load_config, {"config_path": 3}, TypeError, "config_path"),
        ("save_config type", relpos.save_config, {"config": [1], "save_path": "x.yaml"}, TypeError, "config"),
        ("resolve type", resolve_config, {"cfg": "train.epochs=3"}, ConfigError, "mapping"),
        ("override syntax", apply_overrides, {"cfg": {}, "overrides": ["epochs"]}, ConfigError, "epochs"),
        ("override key", apply_overrides, {"cfg": {}, "overrides": ["train.epoch=3"]}, ConfigError, "train.epoch"),
        ("override section", apply_overrides, {"cfg": {}, "overrides": ["train=3"]}, ConfigError, "train"),
        # checkpoints
        ("read type", ck.read_checkpoint, {"path": 3}, TypeError, "path"),
        ("read missing", ck.read_checkpoint, {"path": "/nonexistent.pt"}, CheckpointError, "not found"),
        ("read dir", ck.read_checkpoint, {"path": "/tmp"}, CheckpointError, "not found"),
        ("save epoch", lambda: ck.save_checkpoint(_model(), None, -1, {}, "/tmp/never.pt"), {}, ValueError, "epoch"),
        ("save metrics", lambda: ck.save_checkpoint(_model(), None, 0, [], "/tmp/never.pt"), {}, TypeError,
         "metrics"),
        ("save path", lambda: ck.save_checkpoint(_model(), None, 0, {}, 3), {}, TypeError, "save_path"),
        # jobs
        ("start max", jobs.start_run, {"preset_or_config_path": "tiny", "max_concurrent": 0}, ValueError,
         "max_concurrent"),
        ("start preset", jobs.start_run, {"preset_or_config_path": "../../etc/passwd"}, (FileNotFoundError,
                                                                                         ValueError), ""),
        ("start override key", jobs.start_run, {"preset_or_config_path": "tiny", "overrides": {"a b": 1}},
         ValueError, "override"),
        ("start override newline", jobs.start_run, {"preset_or_config_path": "tiny",
                                                    "overrides": {"name": "x\n--resume"}}, ValueError, "single line"),
        ("start overrides type", jobs.start_run, {"preset_or_config_path": "tiny", "overrides": 3}, TypeError,
         "overrides"),
        ("cancel type", jobs.cancel_run, {"run_dir": 3}, TypeError, "run_dir"),
        ("cancel missing", jobs.cancel_run, {"run_dir": "/nonexistent-run"}, FileNotFoundError, "run_dir"),
        ("cancel outside", jobs.cancel_run, {"run_dir": "/tmp", "runs_root": "/var"}, ValueError, "run_dir"),
        ("cancel grace", jobs.cancel_run, {"run_dir": "/tmp", "grace": -1}, ValueError, "grace"),
        ("log_tail lines", jobs.log_tail, {"run_dir": "/tmp", "lines": 0}, ValueError, "lines"),
        ("sanitize type", paths.sanitize_name, {"name": 3}, TypeError, "name"),
        ("reconcile type", jobs.reconcile_runs, {"runs_root": 3}, TypeError, "runs_root"),
        # guards and paths
        ("budget", guards.check_budget, {"estimate": "lots"}, TypeError, "estimate"),
        ("safe_join", paths.safe_join, {"root": "/tmp", "name": "../x"}, ValueError, "'../x'"),
        ("safe_join nul", paths.safe_join, {"root": "/tmp", "name": "\x00"}, ValueError, "NUL"),
        # app helpers
        ("upload type", jobs.save_upload, {"data": "text", "filename": "x.pt", "runs_root": "/tmp"}, TypeError,
         "data"),
        ("upload name type", jobs.save_upload, {"data": b"", "filename": None, "runs_root": "/tmp"}, TypeError,
         "filename"),
        ("app size", explore.check_app_size, {"size": (0, 3)}, ValueError, "window_size"),
        ("app size huge", explore.check_app_size, {"size": (10**4, 10**4)}, ValueError, "window_size"),
        ("index size", geometry.relative_position_index, {"size": (0, 3)}, ValueError, "size"),
        ("index type", geometry.relative_position_index, {"size": "3"}, TypeError, "size"),
    ]
    return rows


BAD_ARGS = _bad_args_table()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("label, fn, kwargs, exc, words", BAD_ARGS, ids=[r[0] for r in BAD_ARGS])
def test_bad_arguments_get_a_clear_error(label, fn, kwargs, exc, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a bad call might write lands here
    monkeypatch.setenv(jobs.RUNS_ROOT_ENV, str(tmp_path / "runs"))
    try:
        fn(**kwargs)
    except exc as err:
        assert not isinstance(err, (RuntimeError, KeyError)) or isinstance(err, ConfigError), err
        if exc is not IndexError:
            assert type(err) is not IndexError, f"{label}: IndexError {err}"
        assert str(err).strip(), f"{label}: empty message"
        assert words.lower() in str(err).lower(), f"{label}: {err!r} does not mention {words!r}"
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"{label}: {type(err).__name__} instead of {exc}: {err}")
    else:
        pytest.fail(f"{label}: accepted {kwargs}")
    assert not list((tmp_path / "runs").glob("*/process.json")) if (tmp_path / "runs").is_dir() else True


# ============================================================================ jobs: concurrency, restart, cancel


FAKE_TRAINER = textwrap.dedent(
    """
    import argparse, os, signal, subprocess, sys, time
    from relpos.experiments import rundir

    p = argparse.ArgumentParser()
    p.add_argument("--config"); p.add_argument("--run-dir"); p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    mode = os.environ.get("FAKE_MODE", "done")
    if mode == "stubborn":  # ignores SIGTERM, and so does a child in its process group
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        rundir.atomic_write_json(os.path.join(a.run_dir, "child.json"), {"pid": child.pid})
    rundir.update_status(a.run_dir, state="running", epoch=0, epochs=3, pid=os.getpid())
    with open(os.path.join(a.run_dir, "writers.log"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    print("fake trainer started", flush=True)
    steps = 3 if mode == "done" else (40 if mode == "slow" else 100_000)
    for e in range(1, steps + 1):
        time.sleep(0.05)
        rundir.update_status(a.run_dir, epoch=e)
    rundir.update_status(a.run_dir, state="done")
    """
)


@pytest.fixture
def fake_jobs(tmp_path, monkeypatch):
    config = install_fake_trainer(tmp_path, monkeypatch, FAKE_TRAINER, "fake_train_rel")
    root = tmp_path / "runs"
    yield config, root
    kill_runs(root)
    for child_file in root.glob("*/child.json"):
        pid = (rundir.read_json(child_file) or {}).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _check_one_writer_per_dir(root: Path) -> list[Path]:
    """The run dirs that got a process (each exactly one, none shared); queued ones have none."""
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / jobs.PROCESS_FILE).exists())
    pids = []
    for d in dirs:
        writers = (d / "writers.log").read_text().split() if (d / "writers.log").exists() else []
        assert len(writers) <= 1, f"{d.name} written by processes {writers}"
        proc_pid = rundir.read_json(d / jobs.PROCESS_FILE)["pid"]
        pids.append(proc_pid)
    assert len(set(pids)) == len(pids)
    return dirs


@pytest.mark.timeout(120)
def test_concurrent_start_clicks_in_threads(fake_jobs, monkeypatch):
    config, root = fake_jobs
    monkeypatch.setenv("FAKE_MODE", "slow")
    barrier = threading.Barrier(4)
    results: list[object] = [None] * 4

    def click(k: int) -> None:
        barrier.wait()
        results[k] = jobs.start_run(config, runs_root=root, name="same name", max_concurrent=2)

    threads = [threading.Thread(target=click, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, Path) for r in results) and len({p.name for p in results}) == 4, results
    started = [r for r in results if jobs.run_pid(r) is not None]
    queued = [r for r in results if jobs.run_pid(r) is None]  # over the limit: queued, not refused
    assert len(started) == 2 and len(queued) == 2, results
    assert sorted(jobs.run_info(r)["queue_position"] for r in queued) == [1, 2]
    for d in started:
        wait_for(lambda d=d: (rundir.read_status(d) or {}).get("state") == "running", 30, what=f"{d} running")
    assert _check_one_writer_per_dir(root) == sorted(started)


CLICKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from relpos import jobs
    from relpos.experiments import runproc
    runproc.TRAIN_MODULE = "fake_train_rel"
    go = Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.005)
    print("STARTED", jobs.start_run(sys.argv[1], runs_root=sys.argv[2], name="same", max_concurrent=2))
    """
)


@pytest.mark.timeout(180)
def test_concurrent_start_clicks_from_separate_processes(fake_jobs, tmp_path, procs):
    config, root = fake_jobs
    go = tmp_path / "go"
    clickers = [procs.start([sys.executable, "-c", CLICKER, str(config), str(root), str(go)], tmp_path,
                            env={"FAKE_MODE": "slow", "PYTHONPATH": os.environ["PYTHONPATH"]}) for _ in range(4)]
    time.sleep(1.0)  # let every interpreter reach the spin loop
    go.touch()
    outs = [finish(p, 60) for p in clickers]
    assert all(o.startswith("STARTED") for o in outs), outs
    made = [Path(o.split(maxsplit=1)[1].strip()) for o in outs]
    assert len(set(made)) == 4  # over the limit: queued, not refused
    dirs = [d for d in made if jobs.run_pid(d) is not None]
    assert len(dirs) == 2, outs
    for d in dirs:
        wait_for(lambda d=d: (rundir.read_status(d) or {}).get("state") in ("running", "done"), 30)
    assert _check_one_writer_per_dir(root) == sorted(dirs)


@pytest.mark.timeout(120)
def test_cancel_escalates_to_sigkill_and_ends_consistent(fake_jobs, monkeypatch):
    config, root = fake_jobs
    monkeypatch.setenv("FAKE_MODE", "stubborn")
    run = jobs.start_run(config, runs_root=root)
    wait_for(lambda: (run / "child.json").exists() and (rundir.read_status(run) or {}).get("state") == "running",
             30, what="the stubborn trainer")
    pid = jobs.run_pid(run)
    child = rundir.read_json(run / "child.json")["pid"]
    os.killpg(pid, signal.SIGTERM)  # control: SIGTERM alone does not stop it
    time.sleep(0.3)
    assert jobs.is_alive(pid, run)
    status = jobs.cancel_run(run, grace=0.5, runs_root=root)
    assert status["state"] == "cancelled"
    assert not jobs.is_alive(pid, run)
    wait_for(lambda: not Path(f"/proc/{child}").exists()
             or Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX", 10,
             what="the grandchild to die")
    (row,) = jobs.list_runs(root)
    assert row["state"] == "cancelled" and not row["alive"]
    assert jobs.reconcile_runs(root) == []  # consistent: nothing left to fix
    assert jobs.cancel_run(run, grace=0.1)["state"] == "cancelled"  # idempotent


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ============================================================================ the app


st_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = st_testing.AppTest
APP = str(ROOT / "app.py")
PAGES = ["pages/1_position_indices.py", "pages/2_bias_explorer.py", "pages/3_attention_maps.py",
         "pages/4_train.py", "pages/5_checkpoints.py"]


@pytest.fixture
def app_root(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv(jobs.RUNS_ROOT_ENV, str(root))
    yield root
    kill_runs(root)


def _clean(at, where: str) -> None:
    assert not at.exception, f"{where}: {[e.value for e in at.exception]}"


def test_app_restart_with_dead_runs_on_disk(app_root):
    dead = app_root / "20260101-000000-dead"
    rundir.update_status(dead, state="running", epoch=2, epochs=5, created_at=time.time(), pid=_dead_pid())
    (dead / jobs.OUTPUT_LOG).write_text("epoch 2 ...\nRuntimeError: out of memory\n")
    stale = app_root / "20260101-000001-stale"
    rundir.update_status(stale, state="queued", created_at=time.time() - 3600)
    done = app_root / "20260101-000002-done"
    rundir.update_status(done, state="done", epoch=5, epochs=5, created_at=time.time() - 60)
    at = AppTest.from_file(APP, default_timeout=120).run()
    _clean(at, "home")
    s = rundir.read_status(dead)
    assert s["state"] == "failed" and "out of memory" in s["error"] and "pid" in s["error"]
    assert rundir.read_status(stale)["state"] == "failed"
    assert rundir.read_status(done)["state"] == "done"
    at.switch_page(PAGES[3]).run()
    _clean(at, "train")
    assert any("out of memory" in e.value for e in at.error)


HOSTILE_RUN_NAMES = ["../../etc/x", "a/b", "..", "\x00", "/tmp/abs", ".hidden", "x" * 40]


@pytest.mark.timeout(300)
def test_app_train_page_with_hostile_run_names(app_root, fake_jobs, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "done")
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(PAGES[3]).run()
    at.selectbox(key="tr_preset").set_value("tiny").run()
    for name in HOSTILE_RUN_NAMES:
        before = {p.name for p in app_root.iterdir()}
        at.text_input(key="tr_name_tiny").set_value(name)
        at.form_submit_button[0].click().run()
        _clean(at, repr(name))
        new = [p for p in app_root.iterdir() if p.name not in before]
        assert len(new) == 1, (name, new, [e.value for e in at.error], [w.value for w in at.warning])
        (run,) = new
        assert run.parent == app_root and run.is_dir() and not run.is_symlink()
        assert "/" not in run.name and "\x00" not in run.name and not run.name.startswith(".")
        wait_for(lambda run=run: (rundir.read_status(run) or {}).get("state") == "done", 30, what=f"{name!r} done")
    tmp = app_root.parent
    assert not (tmp / "etc").exists() and not Path("/tmp/abs").exists()
    assert all(p.parent.parent == app_root for p in app_root.rglob("status.json"))  # no nested run dirs


def _bounds(el) -> tuple[float, float]:
    return (el.proto.min if el.proto.has_min else -float("inf"), el.proto.max if el.proto.has_max else float("inf"))


@pytest.mark.timeout(300)
def test_app_widgets_with_hostile_values(app_root):
    """Values a client could send that the widgets never offer (1e9, -1e9, NaN in every number
    input of every page): never an exception, and every widget still holds an allowed value."""
    tried = 0
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.switch_page(page).run()
        # NaN only into float inputs: Streamlit's own int deserializer fails on it (int(nan)) before any
        # page code runs, so an int widget cannot be protected from the page
        keys = [(el.key, el.proto.data_type == el.proto.FLOAT) for el in at.number_input if el.key]
        for key, is_float in keys:
            for value in (10**9, -(10**9), *([float("nan"), float("inf")] if is_float else [])):
                try:
                    at.number_input(key=key).set_value(value).run()
                except Exception as exc:  # noqa: BLE001
                    pytest.fail(f"{page} {key}={value!r}: {type(exc).__name__}: {exc}")
                tried += 1
                _clean(at, f"{page} {key}={value!r}")
                for el in at.number_input:
                    lo, hi = _bounds(el)
                    assert el.value is None or lo <= el.value <= hi, (page, key, value, el.key, el.value)
    assert tried >= 30

    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(PAGES[3]).run()
    at.selectbox(key="tr_preset").set_value("tiny").run()
    for key, value in (("tr_img_tiny", 512), ("tr_patch_tiny", 1), ("tr_heads_tiny", 16), ("tr_depth_tiny", 24)):
        at.number_input(key=key).set_value(value)
    at.form_submit_button[0].click().run()
    _clean(at, "largest widget values")
    # 512 / 1 = 262144 tokens: refused with a message, nothing started
    assert [e.value for e in at.error], "the largest settings were accepted"
    assert not [p for p in app_root.iterdir() if p.is_dir()]


SESSION = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from streamlit.testing.v1 import AppTest
    app, go, pages = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    while not go.exists():
        time.sleep(0.01)
    at = AppTest.from_file(app, default_timeout=300).run()
    report = [{"page": "home", "exceptions": [str(e.value) for e in at.exception], "rendered": len(at.title)}]
    for page in pages:
        at.switch_page(page).run()
        report.append({"page": page, "exceptions": [str(e.value) for e in at.exception],
                       "rendered": len(at.title) + len(at.markdown) + len(at.header) + len(at.subheader)})
    print("REPORT " + json.dumps(report))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_load_eight_sessions_while_a_run_trains(app_root, tmp_path, procs):
    """8 sessions (one process each: AppTest is not meant to be driven from several threads of one
    process) click through the pages at the same moment while a tiny run trains."""
    run = jobs.start_run("tiny", {"train.epochs": 6, "data.num_train": 2048}, runs_root=app_root)
    go = tmp_path / "go"
    # each session opens 3 pages, starting at a different one: every page is hit by several at once
    sessions = [procs.start([sys.executable, "-c", SESSION, APP, str(go), *(PAGES * 2)[k % 5: k % 5 + 3]],
                            tmp_path, env={jobs.RUNS_ROOT_ENV: str(app_root)}) for k in range(8)]
    wait_for(lambda: (rundir.read_status(run) or {}).get("state") == "running", 120, 0.1, "the run to train")
    go.touch()
    problems = []
    for k, proc in enumerate(sessions):
        out = finish(proc, 500)
        lines = [line for line in out.splitlines() if line.startswith("REPORT ")]
        if proc.returncode != 0 or not lines:
            problems.append(f"session {k} exited {proc.returncode}: {out[-2000:]}")
            continue
        for page in json.loads(lines[-1][len("REPORT "):]):
            if page["exceptions"] or not page["rendered"]:
                problems.append(f"session {k} {page}")
    assert not problems, problems
    status = wait_for(lambda: (s := rundir.read_status(run)) and s.get("state") in rundir.TERMINAL_STATES and s,
                      300, 0.5, "the run to finish")
    assert status["state"] == "done", jobs.log_tail(run)
    load_model_from_checkpoint(run / "last.pt")


def test_server_listens_on_localhost_with_request_protection():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = cfg["server"]
    assert server["address"] in ("localhost", "127.0.0.1")
    assert server.get("enableXsrfProtection", True) is True and server.get("enableCORS", True) is True
    assert 0 < server["maxUploadSize"] <= jobs.MAX_UPLOAD_BYTES // (1024 * 1024)
    assert cfg["client"]["showErrorDetails"] in ("none", False)  # no tracebacks in the browser


def test_symlinks_out_of_the_runs_folder_are_never_followed(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    outside.mkdir()
    secret_run = outside / "20260101-000000-secret"
    rundir.update_status(secret_run, state="running", pid=os.getpid())
    _good_checkpoint(secret_run / "best.pt")
    real = root / "20260101-000001-real"
    rundir.update_status(real, state="done", created_at=time.time())
    os.symlink(secret_run, root / "20260101-000002-link")  # a run dir that is a symlink out
    os.symlink(secret_run / "best.pt", real / "best.pt")  # a checkpoint that is a symlink out
    os.symlink(outside, root / jobs.UPLOADS_DIR)  # an uploads folder that is a symlink out
    assert [r["name"] for r in jobs.list_runs(root)] == [real.name]
    assert jobs.list_checkpoints(root) == []
    with pytest.raises(ValueError, match="symlink"):
        jobs.cancel_run(root / "20260101-000002-link", runs_root=root)
    assert jobs.reconcile_runs(root) == []
    assert rundir.read_status(secret_run)["state"] == "running"  # untouched
    with pytest.raises(ValueError):
        jobs.cancel_run(secret_run, runs_root=root)  # a real dir, but not inside the runs root
