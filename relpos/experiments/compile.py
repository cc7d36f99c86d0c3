"""``train.compile``: train with ``torch.compile`` when it pays, else eagerly.

``torch.compile`` makes a training step of the default model cost a fraction (:data:`MEASURED`
``.ratio``) of its eager time, after a compile of :data:`MEASURED` ``.compile_s`` seconds. So it pays
only when a run is long: with an eager step of ``t`` seconds and ``n`` steps left, compiling saves
``n * t * (1 - ratio)`` and costs ``compile_s`` (:func:`compile_pays`). The settings:

- ``false``: eager, always.
- ``true``: compiled from the first step.
- ``auto`` (default): the first :data:`PROBE_STEPS` steps run eagerly and are timed (the run's own
  pace, on this machine and its load, for this model); then the model is compiled if the steps left
  pay for it, else the run stays eager. The default preset (768 steps) stays eager.

Only training is compiled (:class:`TrainingModel`, the module ``train_epoch`` drives): evaluation, the
per-epoch diagnostics and the checkpoints use the plain model, so a checkpoint keeps plain keys
(no ``_orig_mod.``) and evaluation never waits for a second compile. Compiling needs a C++ compiler
on the CPU (Triton on CUDA): without one, or when the compile fails, the run goes on eagerly and
says so in its log (``train.log``). Compiled and eager runs agree to float rounding (fused kernels
add in another order), not bit for bit; ``tests/test_compile.py`` checks the accuracy. So a compiled
run's ``--resume`` matches an uninterrupted run to rounding only (an eager one matches it exactly),
and with ``model.dropout > 0`` the compiled dropout masks are drawn differently from eager ones.
Under torchrun, ``auto`` stays eager (each rank would time its own steps, and they could disagree).

A cancel (SIGTERM) that lands during the compile waits for it (the step it is in ends first).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import statistics
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import torch
from torch import nn

__all__ = [
    "COMPILE_SETTINGS",
    "MEASURED",
    "PROBE_STEPS",
    "CompileCosts",
    "TrainingModel",
    "break_even_steps",
    "compile_pays",
    "compiler_problem",
    "training_model",
]

#: The values of ``train.compile``.
COMPILE_SETTINGS: tuple[Any, ...] = ("auto", True, False)
#: Eager steps timed before ``auto`` decides.
PROBE_STEPS = 20

logger = logging.getLogger("relpos.train")


@dataclass(frozen=True)
class CompileCosts:
    """What compiling costs and buys.

    Attributes:
        compile_s: seconds of the first compiled training step beyond an eager one (a cold compile
            cache; a warm on-disk cache, ``TORCHINDUCTOR_CACHE_DIR``, makes later runs cheaper).
        ratio: compiled / eager time of a training step (forward, backward, AdamW).
    """

    compile_s: float
    ratio: float


#: Default model (configs/default.yaml: 16 tokens, embed 64, depth 2, batch 64), 1 torch thread (what
#: each of 2 queued runs gets on 2 cores), torch 2.13 CPU, measured with ``python -m
#: benchmarks.compile_bench --steps 40`` on this 2-core machine when quiet (2026-11-29 06:21 UTC, load
#: average below 1, two runs): a cold-cache compile of 23.4 and 24.0 s, then a compiled step at 0.85-0.88
#: of the eager one (12.9-13.8 ms eager); a warm on-disk cache compiles in 4 s. The issue had measured
#: 0.55-0.60 after about 33 s; these runs do not reproduce that saving. Under load (10-25) the same
#: benchmark gave 136-319 s to compile and ratios from 0.5 to 1.0 (both steps wait for a core), too
#: noisy to use. So: 24 s and the upper end of the quiet ratios, 0.88 (compiling in doubt costs more
#: than not). Break-even at a 13 ms eager step: 24 / (0.013 * 0.12) ~ 15,000 steps (20 default runs).
MEASURED = CompileCosts(compile_s=24.0, ratio=0.88)


def compile_pays(steps: int, eager_step_s: float, costs: CompileCosts = MEASURED) -> bool:
    """Whether ``steps`` training steps of ``eager_step_s`` seconds each are worth compiling for:
    ``steps * eager_step_s * (1 - ratio) > compile_s``."""
    return steps * eager_step_s * (1.0 - costs.ratio) > costs.compile_s


def break_even_steps(eager_step_s: float, costs: CompileCosts = MEASURED) -> float:
    """Steps after which a compiled run catches up with an eager one (``inf`` for a free step)."""
    saved = eager_step_s * (1.0 - costs.ratio)
    return costs.compile_s / saved if saved > 0 else float("inf")


def compiler_problem(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` cannot work for ``device`` here, or None when it can.

    The CPU backend compiles C++ (``$CXX``, else ``g++``, ``c++`` or ``clang++`` on the PATH); CUDA
    needs Triton. Other devices (MPS) are not compiled by relpos.
    """
    device = torch.device(device)
    if device.type == "cpu":
        names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
        if not any(shutil.which(n) for n in names):
            return f"no C++ compiler for torch.compile's CPU backend ({' / '.join(names)} not found)"
        return None
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (torch.compile on CUDA needs it)"
        return None
    return f"relpos does not compile for device {device.type!r}"


class TrainingModel(nn.Module):
    """The module ``train_epoch`` trains: ``model`` itself, compiled now, or compiled once it pays.

    In eval mode it always calls ``model`` eagerly. In training mode: with ``compile_now`` the
    compiled model; otherwise (``auto``) ``model`` for the first :data:`PROBE_STEPS` calls, timing
    the gaps between them (a whole step: data, forward, backward, optimizer), then the compiled
    model if :func:`compile_pays` for the steps left. If the first compiled call fails, it logs a
    warning and stays eager (a genuine error in the model then raises from the eager call).

    Args:
        model: the model (or its ``DistributedDataParallel`` wrapper); its parameters are the ones trained.
        remaining_steps: training steps this run has left.
        compile_now: compile before the first step (``train.compile: true``).
        costs: the compile costs ``auto`` weighs.
    """

    def __init__(self, model: nn.Module, remaining_steps: int, *, compile_now: bool = False,
                 costs: CompileCosts = MEASURED) -> None:
        super().__init__()
        self.module = model
        self.remaining_steps = int(remaining_steps)
        self.costs = costs
        #: "probing" (auto, timing eager steps), "compiled", "eager" (decided or fallen back).
        self.mode = "probing"
        self._compiled: list[Any] = []  # the compiled module, kept out of the registered submodules
        self._first_compiled_call = False
        self._calls = 0
        self._last: float | None = None
        self._gaps: list[float] = []
        if compile_now:
            self._start_compiling()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.training:
            return self.module(*args, **kwargs)
        if self.mode == "probing":
            self._probe()
        self._calls += 1
        if self.mode != "compiled":
            return self.module(*args, **kwargs)
        if not self._first_compiled_call:
            return self._compiled[0](*args, **kwargs)
        try:
            out = self._compiled[0](*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: train eagerly instead
            self._fall_back(exc)
            return self.module(*args, **kwargs)
        self._first_compiled_call = False
        return out

    def _start_compiling(self) -> None:
        """Wrap the model with ``torch.compile`` (it compiles on the next call); eager if that refuses."""
        try:
            self._compiled = [torch.compile(self.module, dynamic=False)]
        except Exception as exc:  # noqa: BLE001 - e.g. a Python version Dynamo does not support
            self._fall_back(exc)
            return
        self.mode, self._first_compiled_call = "compiled", True

    def _fall_back(self, exc: Exception) -> None:
        self.mode, self._compiled = "eager", []
        first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
        logger.warning("torch.compile failed (%s: %s); training eagerly", type(exc).__name__, first_line)

    def _probe(self) -> None:
        """Time the gap since the last call; after PROBE_STEPS gaps, decide (auto)."""
        now = perf_counter()
        if self._last is not None:
            self._gaps.append(now - self._last)
        self._last = now
        if len(self._gaps) < PROBE_STEPS:
            return
        step_s = statistics.median(self._gaps)
        left = self.remaining_steps - self._calls
        pays = compile_pays(left, step_s, self.costs)
        logger.info(
            "train.compile=auto: %d steps left at %.1f ms per eager step; compiling (~%.0f s) would save "
            "%.0f s: %s", left, step_s * 1e3, self.costs.compile_s, left * step_s * (1 - self.costs.ratio),
            "compiling" if pays else "staying eager",
        )
        if pays:
            self._start_compiling()
        else:
            self.mode = "eager"


def training_model(model: nn.Module, setting: Any, remaining_steps: int, device: torch.device | str, *,
                   distributed: bool = False) -> nn.Module:
    """The module to train for ``train.compile`` = ``setting`` (``"auto"``, True or False).

    Args:
        model: the model (or its ``DistributedDataParallel`` wrapper).
        setting: ``train.compile``.
        remaining_steps: training steps the run has left.
        device: where it trains.
        distributed: several processes train (torchrun): ``auto`` stays eager there, since each
            rank would time its own steps and the ranks could decide apart.

    Returns:
        ``model`` itself when nothing would be compiled (``false``; ``auto`` with no more steps left
        than :data:`PROBE_STEPS` or under torchrun; no compiler: then a warning is logged), else a
        :class:`TrainingModel` around it.

    Raises:
        ValueError: ``setting`` is not auto, True or False.
    """
    if not isinstance(setting, bool) and not (isinstance(setting, str) and setting == "auto"):
        raise ValueError(f"train.compile = {setting!r} is not allowed: auto, true or false")
    if setting is False or (setting == "auto" and (distributed or remaining_steps <= PROBE_STEPS)):
        return model
    problem = compiler_problem(device)
    if problem is not None:
        logger.warning("train.compile=%s: %s; training eagerly", "true" if setting is True else setting, problem)
        return model
    return TrainingModel(model, remaining_steps, compile_now=setting is True)
