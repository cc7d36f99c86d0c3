"""The labs: a sweep's members evaluated after training, as data (``results.csv``) and in words.

A sweep spec (:mod:`relpos.experiments.sweep`) may end with an ``evaluate:`` section; once its
members are done the sweep calls :func:`evaluate_sweep`, which measures each finished member that
has no results yet and rewrites two files in the sweep folder::

    results.csv   long form, one row per member and evaluation: run, scheme, seed, eval, accuracy, n
    results.md    mean ± std over seeds per (scheme, eval), the paper's numbers beside, a conclusion

The kinds (``evaluate.kind``)::

    transfer   relpos.experiments.transfer.evaluate_transfer on the member's checkpoint:
               grids: [6, 8, 12]   methods: [bicubic, geometric, native, rescale] (default: all that
               apply)   finetune_steps: 0   num_samples: 512   checkpoint: last
               eval "grid=8x8" (and "grid=8x8/finetuned"); scheme "2d/bicubic", "cpb/log", "absolute"
    shift      relpos.experiments.shift.evaluate_shift: regions: {seen: [0, 10], unseen: [6, 16]}
               (default: the config's data.train_region / data.val_region)   num_samples   checkpoint
               eval "region=seen", "region=unseen"
    ablation   the member's best validation accuracy (no new evaluation); eval "val/<dataset>"

``scheme`` names the position scheme as the README does (``model.scheme``; a table resized two ways
gives two schemes). The last checkpoint is measured by default, so no evaluation picks a checkpoint
with the data it reports on. The numbers the labs compare with (:data:`PAPER_RESULTS`) and the words
(:func:`conclusion`) are in :mod:`relpos.experiments.lab_report`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from relpos._fileio import atomic_write_bytes
from relpos.experiments import rundir
from relpos.experiments.config import ConfigError, resolve_config
from relpos.experiments.config_utils import load_config
from relpos.experiments.lab_report import PAPER_RESULTS, conclusion, paper_markdown
from relpos.experiments.shift import evaluate_shift
from relpos.experiments.sweep_results import SWEEP_FILE, member_row
from relpos.experiments.transfer import TRANSFER_METHODS, evaluate_transfer

__all__ = [
    "CHECKPOINTS",
    "LAB_KINDS",
    "PAPER_RESULTS",
    "RESULTS_COLUMNS",
    "RESULTS_FILE",
    "RESULTS_MD",
    "check_evaluate",
    "conclusion",
    "evaluate_member",
    "evaluate_sweep",
    "read_results",
    "results_markdown",
    "summarize_results",
    "write_results",
]

LAB_KINDS: tuple[str, ...] = ("transfer", "shift", "ablation")
RESULTS_FILE = "results.csv"
RESULTS_MD = "results.md"
RESULTS_COLUMNS: tuple[str, ...] = ("run", "scheme", "seed", "eval", "accuracy", "n")
#: Which checkpoint of a member a lab measures.
CHECKPOINTS: Mapping[str, str] = MappingProxyType({"last": rundir.LAST_CKPT, "best": rundir.BEST_CKPT})
_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "transfer": ("kind", "grids", "methods", "finetune_steps", "num_samples", "checkpoint"),
    "shift": ("kind", "regions", "num_samples", "checkpoint"),
    "ablation": ("kind",),
})


# ----------------------------------------------------------------------------- the spec section


def _int(key: str, value: Any, minimum: int, error: type[Exception], maximum: int = 1_000_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise error(f"evaluate.{key} = {value!r} is not allowed: an int in [{minimum}, {maximum}]")
    return value


def check_evaluate(section: Any, *, source: str = "spec", error: type[Exception] = ValueError) -> dict | None:
    """The checked ``evaluate:`` section of a sweep spec, with defaults filled (``None`` stays ``None``).

    Args:
        section: the section as read from YAML (see the module docstring for the keys).
        source: where it came from, for the messages (e.g. the spec's path).
        error: the exception class to raise (the sweep passes its ``SweepSpecError``).

    Raises:
        ``error``: an unknown kind or key, or a value out of range; the message names ``source``,
        the key and what is allowed.
    """
    if section is None:
        return None
    if not isinstance(section, dict) or section.get("kind") not in LAB_KINDS:
        raise error(f"{source}: evaluate = {section!r} is not allowed: a mapping with kind one of "
                    f"{', '.join(LAB_KINDS)}")
    kind = section["kind"]
    unknown = sorted(set(section) - set(_KEYS[kind]))
    if unknown:
        raise error(f"{source}: evaluate.{unknown[0]} is not allowed for kind {kind}; allowed: "
                    f"{', '.join(_KEYS[kind])}")
    out: dict[str, Any] = {"kind": kind}
    try:
        if kind in ("transfer", "shift"):
            out["num_samples"] = _int("num_samples", section.get("num_samples", 512), 1, error)
            ckpt = section.get("checkpoint", "last")
            if ckpt not in CHECKPOINTS:
                raise error(f"evaluate.checkpoint = {ckpt!r} is not allowed: one of {', '.join(CHECKPOINTS)}")
            out["checkpoint"] = ckpt
        if kind == "transfer":
            grids = section.get("grids")
            if not isinstance(grids, list) or not grids:
                raise error(f"evaluate.grids = {grids!r} is not allowed: a list of patch grids, "
                            "e.g. [6, 8, 12]")
            out["grids"] = [_int("grids", g, 1, error, maximum=256) for g in grids]
            methods = section.get("methods")
            if methods is not None and (not isinstance(methods, list) or not methods
                                        or any(m not in TRANSFER_METHODS for m in methods)):
                raise error(f"evaluate.methods = {methods!r} is not allowed: a list of "
                            f"{', '.join(TRANSFER_METHODS)} (or leave it out: every method that applies)")
            out["methods"] = methods
            out["finetune_steps"] = _int("finetune_steps", section.get("finetune_steps", 0), 0, error)
        if kind == "shift":
            regions = section.get("regions")
            if regions is not None and (not isinstance(regions, dict) or not regions
                                        or not all(isinstance(k, str) for k in regions)):
                raise error(f"evaluate.regions = {regions!r} is not allowed: a mapping name -> region, "
                            "e.g. {seen: [0, 10], unseen: [6, 16]} (or leave it out: the config's regions)")
            out["regions"] = regions
    except error as exc:
        raise error(f"{source}: {exc}") from None
    return out


# ----------------------------------------------------------------------------- evaluating members


def evaluate_member(run_dir: str | Path, evaluate: Mapping[str, Any], seed: int) -> list[dict]:
    """The lab rows of one finished member (``evaluate`` from :func:`check_evaluate`).

    Returns:
        ``[{"run", "scheme", "seed", "eval", "accuracy", "n"}, ...]``; methods that do not apply
        are left out (the transfer module says why, see ``not_applicable_reason``).
    """
    run_dir = Path(run_dir)
    kind = evaluate["kind"]
    base = {"run": run_dir.name, "seed": seed}
    if kind == "ablation":
        cfg = resolve_config(load_config(run_dir / rundir.CONFIG_FILE))
        row = member_row({"run": str(run_dir), "seed": seed, "cell": {}}, [])
        if row["best_val_acc"] is None:
            return []
        n = cfg["data"]["num_val"]
        return [{**base, "scheme": cfg["model"]["scheme"], "eval": f"val/{cfg['data']['dataset']}",
                 "accuracy": row["best_val_acc"], "n": n}]
    ckpt = str(run_dir / CHECKPOINTS[evaluate["checkpoint"]])
    if kind == "transfer":
        rows = evaluate_transfer(ckpt, evaluate["grids"], evaluate.get("methods"), evaluate["num_samples"],
                                 finetune_steps=evaluate["finetune_steps"], seed=seed)
    else:
        rows = evaluate_shift(ckpt, evaluate.get("regions"), evaluate["num_samples"])
    return [{**base, **{k: r[k] for k in ("scheme", "eval", "accuracy", "n")}}
            for r in rows if r["accuracy"] is not None]


def _format(value: Any) -> Any:
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else value)


def write_results(sweep_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` to ``<sweep_dir>/results.csv`` (atomically; columns :data:`RESULTS_COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULTS_COLUMNS)
    for r in rows:
        writer.writerow([_format(r.get(c)) for c in RESULTS_COLUMNS])
    path = Path(sweep_dir) / RESULTS_FILE
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def read_results(path: str | Path) -> list[dict]:
    """The rows of a ``results.csv`` (file or sweep folder): ``seed``, ``n`` ints, ``accuracy`` float.

    Returns ``[]`` when there is no file. Raises ValueError when the header is not :data:`RESULTS_COLUMNS`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != RESULTS_COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames} are not {list(RESULTS_COLUMNS)}")
        rows = []
        for r in reader:
            rows.append({"run": r["run"], "scheme": r["scheme"], "seed": int(r["seed"]), "eval": r["eval"],
                         "accuracy": float(r["accuracy"]) if r["accuracy"] else None,
                         "n": int(r["n"]) if r["n"] else None})
    return rows


def evaluate_sweep(
    sweep_dir: str | Path, *, progress: Callable[[int, int], None] | None = None
) -> dict | None:
    """Evaluate the finished members of a sweep that have no results yet; rewrite results.csv and .md.

    Reads ``<sweep_dir>/sweep.yaml`` (its ``evaluate`` section and members). Members that are not
    done are skipped (a later run of the sweep evaluates them); rows of runs that are no longer
    members are dropped. ``progress(done, total)`` is called after each member.

    Returns:
        ``None`` when the spec has no ``evaluate`` section, else ``{"kind", "rows", "summary",
        "markdown", "skipped": [run names not evaluated]}``.
    """
    sweep_dir = Path(sweep_dir)
    sweep = load_config(sweep_dir / SWEEP_FILE)
    evaluate = check_evaluate(sweep.get("evaluate"), source=str(sweep_dir / SWEEP_FILE))
    if evaluate is None:
        return None
    members = [m for m in sweep.get("members") or [] if m.get("run")]
    names = {Path(m["run"]).name for m in members}
    rows = [r for r in read_results(sweep_dir) if r["run"] in names]
    have = {r["run"] for r in rows}
    skipped = []
    for i, m in enumerate(members):
        run_dir = Path(m["run"])
        state = (rundir.read_status(run_dir) or {}).get("state")
        if run_dir.name not in have:
            if state == "done":
                try:
                    rows += evaluate_member(run_dir, evaluate, int(m["seed"]))
                except (OSError, ConfigError, ValueError) as exc:  # a broken member must not lose the others
                    skipped.append(f"{run_dir.name}: {str(exc).splitlines()[0][:200]}")
                write_results(sweep_dir, rows)  # after every member: an interrupted lab keeps its work
            else:
                skipped.append(f"{run_dir.name}: state {state}")
        if progress is not None:
            progress(i + 1, len(members))
    write_results(sweep_dir, rows)
    summary = summarize_results(rows)
    markdown = results_markdown(summary, evaluate["kind"], title=f"Lab {sweep.get('name', sweep_dir.name)}",
                                skipped=skipped)
    atomic_write_bytes(sweep_dir / RESULTS_MD, markdown.encode())
    return {"kind": evaluate["kind"], "rows": rows, "summary": summary, "markdown": markdown,
            "skipped": skipped}


# ----------------------------------------------------------------------------- summaries


def summarize_results(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Mean and spread over seeds per ``(scheme, eval)``, in first-seen order.

    Returns:
        ``[{"scheme", "eval", "n" (members), "mean", "std" (sample std, n - 1; None below 2),
        "min", "max", "images" (images per evaluation, the largest n)}]``; rows without an
        accuracy are left out.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("accuracy") is not None:
            groups.setdefault((r["scheme"], r["eval"]), []).append(r)
    out = []
    for (scheme, ev), items in groups.items():
        acc = [float(r["accuracy"]) for r in items]
        mean = sum(acc) / len(acc)
        std = math.sqrt(sum((a - mean) ** 2 for a in acc) / (len(acc) - 1)) if len(acc) > 1 else None
        out.append({"scheme": scheme, "eval": ev, "n": len(acc), "mean": mean, "std": std, "min": min(acc),
                    "max": max(acc), "images": max((r.get("n") or 0) for r in items)})
    return out


def _cell(s: Mapping[str, Any]) -> str:
    return f"{s['mean']:.3f}" + ("" if s["std"] is None else f" ± {s['std']:.3f}")


def results_markdown(
    summary: Sequence[Mapping[str, Any]], kind: str | None = None, *, title: str = "Lab results",
    skipped: Sequence[str] = (),
) -> str:
    """The summary as a markdown table (rows: schemes; columns: evaluations; mean ± std over seeds),
    followed, for a known ``kind``, by the paper's numbers and the conclusion in words."""
    evals = list(dict.fromkeys(s["eval"] for s in summary))
    schemes = list(dict.fromkeys(s["scheme"] for s in summary))
    by = {(s["scheme"], s["eval"]): s for s in summary}
    seeds = sorted({s["n"] for s in summary})
    images = sorted({s["images"] for s in summary})
    lines = [f"# {title}", ""]
    if summary:
        plural = "s" if seeds != [1] else ""
        lines += [f"Accuracy, mean ± std over {'/'.join(map(str, seeds))} seed{plural}, on "
                  f"{'/'.join(map(str, images))} images per evaluation.", "",
                  "| scheme | " + " | ".join(evals) + " |", "|---|" + "---|" * len(evals)]
        for scheme in schemes:
            lines.append(f"| {scheme} | " + " | ".join(_cell(by[(scheme, e)]) if (scheme, e) in by else "–"
                                                       for e in evals) + " |")
    else:
        lines.append("No results yet.")
    if kind in LAB_KINDS:
        paper = paper_markdown(kind)
        if paper:
            lines += ["", paper]
        if summary:
            lines += ["", "**Conclusion.** " + conclusion(kind, summary)]
    if skipped:
        lines += ["", "Not evaluated: " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"
