"""Checkpoints: round trip, weights_only loading, atomic writes, clear errors, self-rebuilding models."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import relpos.experiments.checkpoint as ckpt_mod
from relpos.experiments.checkpoint import (
    CheckpointError,
    load_model_from_checkpoint,
    read_checkpoint,
    strip_prefixes,
)
from relpos.experiments.config import build_model, resolve_config
from relpos.experiments.train import load_checkpoint, save_checkpoint

TINY = {"data": {"img_size": 8, "patch_size": 2, "mark_size": 1}, "model": {"embed_dim": 16, "depth": 1, "num_heads": 2}}


def _trained(cfg=TINY):
    cfg = resolve_config(cfg)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    opt.step()
    return cfg, model, opt


def test_round_trip_model_optimizer_epoch_metrics(tmp_path):
    cfg, model, opt = _trained()
    path = tmp_path / "deep" / "ck.pt"  # parents are created
    save_checkpoint(model, opt, 3, {"eval_accuracy": 0.75, "note": "x"}, path, config=cfg)
    raw = torch.load(path, weights_only=True)  # only tensors and primitives inside
    assert raw["format_version"] == 1 and raw["epoch"] == 3 and raw["config"] == cfg

    torch.manual_seed(123)
    _, model2, _ = _trained()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0)
    epoch, metrics = load_checkpoint(model2, opt2, path)
    assert epoch == 3 and metrics == {"eval_accuracy": 0.75, "note": "x"}
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert opt2.param_groups[0]["lr"] == 1e-2
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)


def test_rebuild_from_checkpoint_alone_and_prefixes(tmp_path):
    cfg, model, opt = _trained()
    path = tmp_path / "ck.pt"
    save_checkpoint(model, opt, 1, {}, path, config=cfg)
    rebuilt, ck = load_model_from_checkpoint(path)
    assert not rebuilt.training and ck["epoch"] == 1
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    assert torch.equal(rebuilt(x), model(x))
    # a state dict saved from a DDP/compiled model loads too
    wrapped = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    assert list(strip_prefixes(wrapped)) == list(model.state_dict())
    torch.save({"format_version": 1, "model": wrapped, "config": cfg}, tmp_path / "wrapped.pt")
    load_model_from_checkpoint(tmp_path / "wrapped.pt")


def test_errors_name_the_file_and_keys(tmp_path):
    cfg, model, opt = _trained()
    good = tmp_path / "good.pt"
    save_checkpoint(model, opt, 1, {}, good, config=cfg)
    with pytest.raises(CheckpointError, match="not found.*missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        read_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt is not a relpos checkpoint"):
        read_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format_version": 1, "model": {}, "obj": Path("x")}, pickled)  # not allowed by weights_only
    with pytest.raises(CheckpointError, match="pickled.pt"):
        read_checkpoint(pickled)
    other = build_model({**TINY, "model": {**TINY["model"], "embed_dim": 32}})
    with pytest.raises(CheckpointError, match=r"good.pt does not fit.*shape mismatches: blocks\.0\.attn"):
        load_checkpoint(other, None, good)
    deeper = build_model({**TINY, "model": {**TINY["model"], "depth": 2}})
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\."):
        load_checkpoint(deeper, None, good)


def test_a_write_killed_before_rename_leaves_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    script = textwrap.dedent(
        f"""
        import torch
        from relpos.experiments.checkpoint import save_checkpoint
        model = torch.nn.Linear(2, 2)
        with torch.no_grad():
            model.weight.fill_(1.0)
        save_checkpoint(model, None, 1, {{"v": 1}}, {str(path)!r})
        with torch.no_grad():
            model.weight.fill_(2.0)
        save_checkpoint(model, None, 2, {{"v": 2}}, {str(path)!r})  # killed before os.replace
        print("not reached")
        """
    )
    env = {**os.environ, ckpt_mod.KILL_ENV: "2"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9 and "not reached" not in proc.stdout, proc.stderr
    ck = read_checkpoint(path)
    assert ck["epoch"] == 1 and torch.equal(ck["model"]["weight"], torch.ones(2, 2))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.")  # the complete temp file
    assert torch.load(tmp_path / leftovers[0], weights_only=True)["epoch"] == 2


def test_in_process_hook_sees_the_temp_file(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(ckpt_mod, "BEFORE_REPLACE_HOOK", lambda tmp: seen.append((tmp, tmp.exists())))
    save_checkpoint(torch.nn.Linear(1, 1), None, 0, {}, tmp_path / "a.pt")
    assert len(seen) == 1 and seen[0][1] and seen[0][0].parent == tmp_path
    assert not seen[0][0].exists() and (tmp_path / "a.pt").exists()
