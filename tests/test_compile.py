"""train.compile (relpos.experiments.compile): the break-even rule, auto's decision, the fallback to
eager, and a compiled run against an eager one."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from relpos.experiments import compile as comp
from relpos.experiments.checkpoint import read_checkpoint
from relpos.experiments.config import ConfigError, apply_overrides, resolve_config
from relpos.experiments.config_utils import load_config
from relpos.experiments.train import fit

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(*overrides):
    return apply_overrides(load_config(TINY), list(overrides))


def _weights(run: Path) -> dict:
    return read_checkpoint(run / "last.pt")["model"]


# ----------------------------------------------------------------------------- the rule


def test_compile_pays_when_the_saved_time_exceeds_the_compile_time():
    costs = comp.CompileCosts(compile_s=30.0, ratio=0.5)
    # a 10 ms eager step saves 5 ms compiled: 30 s of compiling are won back after 6000 steps
    assert comp.break_even_steps(0.010, costs) == pytest.approx(6000.0)
    assert comp.compile_pays(6001, 0.010, costs) and not comp.compile_pays(5999, 0.010, costs)
    assert comp.break_even_steps(0.0, costs) == float("inf")
    assert not comp.compile_pays(10**9, 0.0, costs)
    # the constants auto uses: the default preset (768 steps of ~18 ms on a quiet machine) stays eager
    assert not comp.compile_pays(768, 0.018)
    assert 0.0 < comp.MEASURED.ratio < 1.0 and comp.MEASURED.compile_s > 0


def test_config_key_takes_auto_true_false():
    assert resolve_config(load_config(TINY))["train"]["compile"] == "auto"
    for text, value in (("auto", "auto"), ("true", True), ("false", False)):
        assert resolve_config(_cfg(f"train.compile={text}"))["train"]["compile"] == value
    for bad in ("maybe", "1", "null", "[auto]"):  # (YAML 1.1 reads yes / no as booleans: allowed)
        with pytest.raises(ConfigError, match=r"train\.compile = .*auto, true or false"):
            resolve_config(_cfg(f"train.compile={bad}"))


def test_training_model_per_setting(monkeypatch):
    monkeypatch.setattr(comp, "compiler_problem", lambda device: None)
    model = nn.Linear(3, 2)
    assert comp.training_model(model, False, 10_000, "cpu") is model
    assert comp.training_model(model, "auto", comp.PROBE_STEPS, "cpu") is model  # nothing left to decide on
    assert comp.training_model(model, "auto", 10_000, "cpu", distributed=True) is model
    wrapped = comp.training_model(model, "auto", 10_000, "cpu")
    assert isinstance(wrapped, comp.TrainingModel) and wrapped.mode == "probing"
    assert comp.training_model(model, True, 5, "cpu").mode == "compiled"
    for bad in ("true", 1, 0, None):
        with pytest.raises(ValueError, match="train.compile"):
            comp.training_model(model, bad, 10, "cpu")


class _FakeCompile:
    """Stands in for torch.compile: counts the calls of the 'compiled' module, which runs eagerly."""

    def __init__(self, fail: bool = False) -> None:
        self.compiled_calls, self.fail = 0, fail

    def __call__(self, module, **kwargs):
        assert kwargs == {"dynamic": False}

        def run(*args, **kw):
            if self.fail:
                raise RuntimeError("InductorError: no working C++ compiler\nmore lines")
            self.compiled_calls += 1
            return module(*args, **kw)

        return run


@pytest.mark.parametrize(("remaining", "compiles"), [(1_000, False), (1_000_000, True)])
def test_auto_times_its_first_steps_then_decides(monkeypatch, remaining, compiles):
    fake = _FakeCompile()
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setattr(comp, "compiler_problem", lambda device: None)
    clock = itertools.count(0.0, 0.010)  # every step takes 10 ms
    monkeypatch.setattr(comp, "perf_counter", lambda: next(clock))
    model = nn.Linear(3, 2)
    wrapped = comp.training_model(model, "auto", remaining, "cpu").train()
    x = torch.randn(4, 3)
    for _ in range(comp.PROBE_STEPS + 1):  # PROBE_STEPS gaps need one call more
        assert torch.equal(wrapped(x), model(x))
    assert wrapped.mode == ("compiled" if compiles else "eager")
    # 1,000 steps x 10 ms x (1 - ratio) saves a few seconds, far below the compile; a million pays
    assert comp.compile_pays(remaining - comp.PROBE_STEPS - 1, 0.010) is compiles
    for _ in range(3):
        wrapped(x)
    assert fake.compiled_calls == (4 if compiles else 0)
    wrapped.eval()
    wrapped(x)  # evaluation is always eager
    assert fake.compiled_calls == (4 if compiles else 0)


def test_a_failing_compile_trains_eagerly_and_says_so(tmp_path, monkeypatch):
    fit(_cfg("train.compile=false"), tmp_path / "eager", log_to_stderr=False)
    monkeypatch.setattr(torch, "compile", _FakeCompile(fail=True))
    result = fit(_cfg("train.compile=true"), tmp_path / "fallback", log_to_stderr=False)
    assert result["state"] == "done"
    log = (tmp_path / "fallback" / "train.log").read_text()
    assert "torch.compile failed (RuntimeError: InductorError: no working C++ compiler); training eagerly" in log
    eager, fallback = _weights(tmp_path / "eager"), _weights(tmp_path / "fallback")
    assert eager.keys() == fallback.keys()
    assert all(torch.equal(eager[k], fallback[k]) for k in eager)  # eager from the first step: the same run


def test_torch_compile_refusing_to_wrap_leaves_the_model_eager(monkeypatch):
    def refuse(module, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    monkeypatch.setattr(comp, "compiler_problem", lambda device: None)
    model = nn.Linear(3, 2)
    wrapped = comp.training_model(model, True, 100, "cpu").train()
    assert wrapped.mode == "eager"
    x = torch.randn(4, 3)
    assert torch.equal(wrapped(x), model(x))


def test_no_compiler_on_the_path_trains_eagerly_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++ or clang++
    problem = comp.compiler_problem("cpu")
    assert problem is not None and "no C++ compiler" in problem
    monkeypatch.setenv("CXX", "my-c++")
    assert "my-c++ not found" in comp.compiler_problem("cpu")
    fake = _FakeCompile()
    monkeypatch.setattr(torch, "compile", fake)
    result = fit(_cfg("train.compile=true"), tmp_path / "run", log_to_stderr=False)
    assert result["state"] == "done" and fake.compiled_calls == 0
    assert "train.compile=true: no C++ compiler" in (tmp_path / "run" / "train.log").read_text()


def test_compiler_problem_for_other_devices():
    assert "mps" in comp.compiler_problem("mps")


@pytest.mark.slow
def test_compiled_and_eager_runs_reach_the_same_accuracy(tmp_path):
    """A real torch.compile against eager, same seed: the same accuracy, losses within 1e-4.

    Tolerance: the compiled kernels fuse and reorder float32 sums, so each step differs by rounding
    (about 1e-7 relative); over the tiny preset's 8 AdamW steps the weights moved apart by at most
    3.5e-7 here (the losses agreed to every printed digit), 30x inside atol 1e-5, and no validation
    sample sits that close to a class boundary, so the accuracies agree exactly (one sample of 64
    would be 0.016).
    """
    if comp.compiler_problem("cpu"):
        pytest.skip("no C++ compiler: torch.compile cannot work here (the fallback is tested above)")
    eager = fit(_cfg("train.compile=false"), tmp_path / "eager", log_to_stderr=False)
    compiled = fit(_cfg("train.compile=true"), tmp_path / "compiled", log_to_stderr=False)
    assert "torch.compile failed" not in (tmp_path / "compiled" / "train.log").read_text()
    a, b = eager["last_epoch"], compiled["last_epoch"]
    assert b["eval_accuracy"] == a["eval_accuracy"]
    for key in ("train_loss", "eval_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    w_eager, w_compiled = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert w_compiled.keys() == w_eager.keys()  # plain keys: no _orig_mod. / module. prefix
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in w_compiled)
    for k in w_eager:
        assert torch.allclose(w_compiled[k], w_eager[k], rtol=1e-3, atol=1e-5), k
