"""What the lab pages show, as data: the lab sweeps, their progress, the tables, one image's attention.

Streamlit-free (the app is one client; :mod:`app_support.labs_ui` draws what these functions return).
A lab is a sweep whose spec has an ``evaluate:`` section (:mod:`relpos.experiments.labs`); its
numbers are the rows of ``results.csv`` and their summary over seeds
(:func:`relpos.experiments.labs.summarize_results`). This module only arranges them:

* :func:`lab_sweeps`, :func:`lab_specs`, :func:`lab_progress`: the sweep folders and shipped specs of
  one lab kind, and how far a sweep is (members done, evaluated, waiting to be evaluated).
* :func:`results_table` (mean ± std per cell, the seeds and images said), :func:`transfer_methods`
  (which rule moved each scheme, and why the others do not apply), :func:`paper_transfer_rows`,
  :func:`paper_ablation_rows` (the papers' numbers beside ours).
* :func:`shift_pairs`, :func:`mark_token` and :func:`attention_row`: one unseen-region image through an
  absolute and a relative model of the same seed (same images), a query's attention as a patch grid.

Shape legend: ``H`` heads, ``N`` tokens (``P`` prefix tokens, then ``gh * gw`` patches, row-major).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from relpos.experiments import rundir, runqueue
from relpos.experiments.config import ConfigError, build_model
from relpos.experiments.config_utils import configs_dir, load_config
from relpos.experiments.lab_report import PAPER_RESULTS
from relpos.experiments.labs import CHECKPOINTS, LAB_KINDS, check_evaluate, read_results
from relpos.experiments.run_table import read_run_config
from relpos.experiments.sweep_results import SWEEP_FILE, list_sweeps
from relpos.experiments.transfer import TRANSFER_METHODS, methods_for, not_applicable_reason, scheme_label

__all__ = [
    "LAB_TITLES",
    "GRID_EVAL",
    "attention_row",
    "eval_grid",
    "lab_evaluate",
    "lab_progress",
    "lab_specs",
    "lab_sweeps",
    "mark_token",
    "mean_std",
    "paper_ablation_rows",
    "paper_transfer_rows",
    "results_table",
    "shift_pairs",
    "train_grid",
    "transfer_methods",
]

#: The labs in words, in the order the page offers them.
LAB_TITLES: Mapping[str, str] = MappingProxyType(
    {"transfer": "Size transfer", "shift": "Position shift", "ablation": "Ablation"})
#: ``eval`` of a transfer row: ``grid=8x8`` or ``grid=8x8/finetuned``.
GRID_EVAL = re.compile(r"^grid=(\d+)x(\d+)(/finetuned)?$")


# ----------------------------------------------------------------------------- sweeps of a lab


def lab_evaluate(sweep_dir: str | Path) -> dict | None:
    """The checked ``evaluate`` section of a sweep folder's ``sweep.yaml`` (None: not a lab, unreadable)."""
    try:
        return check_evaluate(load_config(Path(sweep_dir) / SWEEP_FILE).get("evaluate"))
    except (OSError, ConfigError, ValueError):
        return None


def lab_sweeps(kind: str, root: str | Path) -> list[dict]:
    """The sweep folders under ``root`` (``<runs root>/sweeps``) whose lab is ``kind``, newest first.

    Returns:
        :func:`relpos.experiments.sweep_results.list_sweeps` rows (``name``, ``dir``, ``created``,
        ``members``, ``spec_path``).
    """
    return [s for s in list_sweeps(root) if (lab_evaluate(s["dir"]) or {}).get("kind") == kind]


def lab_specs(kind: str, folder: str | Path | None = None) -> list[Path]:
    """The shipped sweep specs (``configs/sweeps/*.yaml``) whose ``evaluate.kind`` is ``kind``, by name."""
    if kind not in LAB_KINDS:
        raise ValueError(f"kind = {kind!r} is not allowed: one of {', '.join(LAB_KINDS)}")
    folder = Path(folder) if folder is not None else configs_dir() / "sweeps"
    out = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            evaluate = load_config(path).get("evaluate")
        except (OSError, ConfigError):
            continue
        if isinstance(evaluate, dict) and evaluate.get("kind") == kind:
            out.append(path)
    return out


def lab_progress(sweep_dir: str | Path) -> dict:
    """How far a lab sweep is.

    Returns:
        ``{"kind", "total", "done", "active", "failed", "evaluated" (members with rows in
        results.csv), "to_evaluate" (done members without rows)}``.
    """
    sweep_dir = Path(sweep_dir)
    sweep = load_config(sweep_dir / SWEEP_FILE)
    have = {r["run"] for r in read_results(sweep_dir)}
    counts = dict.fromkeys(("total", "done", "active", "failed", "evaluated", "to_evaluate"), 0)
    for m in sweep.get("members") or []:
        name = Path(m["run"]).name if m.get("run") else ""
        state = (rundir.read_status(m["run"]) or {}).get("state", "missing") if name else "missing"
        counts["total"] += 1
        counts["done"] += state == "done"
        counts["active"] += state in runqueue.ACTIVE_STATES
        counts["failed"] += state not in runqueue.ACTIVE_STATES and state != "done"
        counts["evaluated"] += name in have
        counts["to_evaluate"] += state == "done" and name not in have
    return {"kind": (lab_evaluate(sweep_dir) or {}).get("kind"), **counts}


# ----------------------------------------------------------------------------- tables


def mean_std(s: Mapping[str, Any]) -> str:
    """A summary cell: ``"0.947 ± 0.012"`` (mean ± sample std over seeds), ``"0.947"`` for one seed."""
    return f"{s['mean']:.3f}" + ("" if s["std"] is None else f" ± {s['std']:.3f}")


def eval_grid(ev: str) -> tuple[int, int, bool] | None:
    """``"grid=8x8/finetuned"`` -> ``(8, 8, True)``; None for an eval that is not a grid."""
    m = GRID_EVAL.match(ev)
    return (int(m.group(1)), int(m.group(2)), bool(m.group(3))) if m else None


def _eval_key(ev: str) -> tuple:
    g = eval_grid(ev)
    return (0, g[0], g[1], g[2]) if g else (1, 0, 0, False)  # other evals keep their order


def results_table(
    summary: Sequence[Mapping[str, Any]], *, by: str = "scheme", train: tuple[int, int] | None = None,
    order: Sequence[str] = (),
) -> dict:
    """A lab summary as a table of ``mean ± std`` cells.

    Args:
        summary: :func:`relpos.experiments.labs.summarize_results` rows.
        by: what the rows are: ``"scheme"`` (columns: evaluations, as the shift and ablation tables)
            or ``"eval"`` (columns: schemes, as the issue's transfer table). Grids are sorted by size,
            other evaluations keep the summary's order.
        train: the training grid; with ``by="eval"`` each grid row also says its ratio to it.
        order: schemes to put first, in this order (the others follow as first seen).

    Returns:
        ``{"rows": [{<first column>: label, <column>: cell, ...}], "columns": [...], "seeds": sorted
        seed counts, "images": sorted images per evaluation, "caption": how to read a cell}``. A cell
        whose seed count differs from the most common one says its own (``"(2 seeds)"``); a missing
        combination is ``"–"``. (The most common count; on a tie, the larger.)
    """
    if by not in ("scheme", "eval"):
        raise ValueError(f"by = {by!r} is not allowed: 'scheme' or 'eval'")
    evals = sorted(dict.fromkeys(s["eval"] for s in summary), key=_eval_key)
    seen = list(dict.fromkeys(s["scheme"] for s in summary))
    schemes = [s for s in order if s in seen] + [s for s in seen if s not in order]
    cells = {(s["scheme"], s["eval"]): s for s in summary}
    counts = [s["n"] for s in summary]
    usual = max(set(counts), key=lambda c: (counts.count(c), c)) if counts else 0  # ties: the larger

    def cell(s: Mapping[str, Any] | None) -> str:
        if s is None:
            return "–"
        return mean_std(s) + ("" if s["n"] == usual else f" ({s['n']} seed{'s' if s['n'] != 1 else ''})")

    def eval_label(ev: str) -> str:
        g = eval_grid(ev)
        if g is None:
            return ev
        ratio = f" ({g[0] / train[0]:g}×)" if train else ""
        return f"{g[0]}x{g[1]}{ratio}" + (", fine-tuned" if g[2] else "")

    if by == "eval":
        head, columns = "grid" if all(eval_grid(e) for e in evals) else "eval", schemes
        rows = [{head: eval_label(e), **{s: cell(cells.get((s, e))) for s in schemes}} for e in evals]
    else:
        head, columns = "scheme", evals
        rows = [{head: s, **{e: cell(cells.get((s, e))) for e in evals}} for s in schemes]
    seeds = sorted(set(counts))
    images = sorted({s["images"] for s in summary})
    caption = (f"Accuracy, mean ± sample std over {'/'.join(map(str, seeds)) or 0} seed"
               f"{'s' if seeds != [1] else ''}, on {'/'.join(map(str, images)) or 0} images per evaluation.")
    return {"rows": rows, "columns": [head, *columns], "seeds": seeds, "images": images, "caption": caption}


def train_grid(sweep_dir: str | Path) -> tuple[int, int] | None:
    """The patch grid a lab sweep's members train at (its first readable member's config), or None."""
    for m in load_config(Path(sweep_dir) / SWEEP_FILE).get("members") or []:
        cfg = read_run_config(m["run"]) if m.get("run") else None
        if cfg is not None:
            side = int(cfg["data"]["img_size"]) // int(cfg["data"]["patch_size"])
            return side, side
    return None


def transfer_methods(sweep_dir: str | Path) -> dict:
    """Which transfer rule moved each scheme of a transfer sweep, and why the others do not apply.

    Each scheme's model is built (untrained, from a member's config) and asked
    (:func:`relpos.experiments.transfer.methods_for`); the methods are the sweep's
    ``evaluate.methods`` (default: every method that applies to some scheme).

    Returns:
        ``{"methods": [...], "rows": [{"scheme", <method>: results name (e.g. "2d/bicubic") or
        "n/a: <reason>"}]}``.
    """
    sweep_dir = Path(sweep_dir)
    sweep = load_config(sweep_dir / SWEEP_FILE)
    wanted = (lab_evaluate(sweep_dir) or {}).get("methods")
    models: dict[str, Any] = {}
    for m in sweep.get("members") or []:
        cfg = read_run_config(m["run"]) if m.get("run") else None
        if cfg is not None and cfg["model"]["scheme"] not in models:
            with torch.random.fork_rng(devices=[]):
                models[cfg["model"]["scheme"]] = build_model(cfg).eval()
    applies = {s: methods_for(model) for s, model in models.items()}
    methods = list(wanted) if wanted else [m for m in TRANSFER_METHODS if any(m in a for a in applies.values())]
    rows = []
    for scheme, model in models.items():
        row: dict[str, str] = {"scheme": scheme}
        for method in methods:
            reason = not_applicable_reason(model, method)
            if reason is None:
                row[method] = scheme_label(model, scheme, method)
            else:
                row[method] = "n/a: " + reason.removeprefix("not applicable: ")
        rows.append(row)
    return {"methods": methods, "rows": rows}


def paper_transfer_rows() -> list[dict]:
    """Swin V2's Table 1 as rows: one per window (ratio to its training window 8), one column per paper row
    named as our results name that scheme (``"2d/bicubic"``; the paper's names are in
    :data:`~relpos.experiments.lab_report.PAPER_RESULTS`), ``"79.4 / 82.7"`` = top-1 % without / after
    fine-tuning."""
    p = PAPER_RESULTS["transfer"]
    names = {k: k for k in p["rows"]}
    out = [{"window": f"{p['train_window']} (trained)", "ratio": "1×",
            **{names[k]: f"{trained}" for k, (_, trained, _) in p["rows"].items()}}]
    for w in p["windows"]:
        out.append({"window": str(w), "ratio": f"{w / p['train_window']:g}×",
                    **{names[k]: f"{v[w][0]} / {v[w][1]}" for k, (_, _, v) in p["rows"].items()}})
    return out


def paper_ablation_rows() -> list[dict]:
    """Swin's Table 4 position rows as rows (best first, the paper's order): scheme, its row name, values."""
    p = PAPER_RESULTS["ablation"]
    return [{"scheme": k, "paper's row": p["rows"][k][0], **dict(zip(p["benchmarks"], p["rows"][k][1]))}
            for k in p["order"]]


# ----------------------------------------------------------------------------- the picture of why


def shift_pairs(sweep_dir: str | Path) -> dict[int, dict[str, str]]:
    """``{seed: {scheme: checkpoint path}}`` of a shift sweep's done members (the checkpoint its lab
    measures); members of one seed share their images, so their attention can be compared."""
    sweep_dir = Path(sweep_dir)
    sweep = load_config(sweep_dir / SWEEP_FILE)
    ckpt = CHECKPOINTS[(lab_evaluate(sweep_dir) or {}).get("checkpoint", "last")]
    out: dict[int, dict[str, str]] = {}
    for m in sweep.get("members") or []:
        if not m.get("run") or (rundir.read_status(m["run"]) or {}).get("state") != "done":
            continue
        cfg = read_run_config(m["run"])
        path = Path(m["run"]) / ckpt
        if cfg is not None and path.is_file():
            out.setdefault(int(m["seed"]), {})[cfg["model"]["scheme"]] = str(path)
    return dict(sorted(out.items()))


def mark_token(marks: Sequence[int], which: str, patch: int, grid: tuple[int, int]) -> int:
    """The patch token ``y * gw + x`` holding the top-left pixel of mark ``"A"`` or ``"B"``.

    Args:
        marks: ``(y_A, x_A, y_B, x_B)`` top-left pixels (:func:`relpos.experiments.shift.shift_example`).
    """
    if which not in ("A", "B"):
        raise ValueError(f"which = {which!r} is not allowed: 'A' or 'B'")
    y, x = (marks[0], marks[1]) if which == "A" else (marks[2], marks[3])
    return (int(y) // patch) * grid[1] + int(x) // patch


def attention_row(attention: Sequence[Any], layer: int, head: int | None, query: int,
                  grid: tuple[int, int]) -> np.ndarray:
    """Patch ``query``'s attention over the patches, ``(gh, gw)``.

    Args:
        attention: per layer ``(1, H, N, N)`` maps, ``N = P + gh * gw`` (``P`` prefix tokens first).
        layer: the layer.
        head: one head, or None for the mean over the heads.
        query: patch token ``y * gw + x`` (prefix tokens not counted).
        grid: ``(gh, gw)``.

    Returns:
        ``(gh, gw)`` float64 weights on the patches (the prefix keys' share is left out, so a row
        may sum to less than one).
    """
    maps = np.asarray(attention[layer], dtype=np.float64)[0]  # (H, N, N)
    hw = grid[0] * grid[1]
    prefix = maps.shape[-1] - hw
    if prefix < 0 or not 0 <= query < hw:
        raise ValueError(f"query = {query} is not allowed: a patch token in [0, {hw}) of grid {grid}")
    row = maps[:, prefix + query, prefix:]  # (H, gh * gw)
    row = row.mean(axis=0) if head is None else row[head]
    return row.reshape(grid)  # (gh, gw)
