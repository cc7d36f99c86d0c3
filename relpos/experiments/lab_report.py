"""What the labs compare with, and what they conclude in words.

The papers' numbers are kept as data (:data:`PAPER_RESULTS`), beside ours and never mixed into
``results.csv``; :func:`conclusion` turns a lab summary (:func:`relpos.experiments.labs.
summarize_results`) into plain words derived from the numbers: which ordering we measured, and
whether it agrees with the paper's, contradicts it, or is too close to call with the seeds we ran
(two schemes whose means differ by less than the larger standard deviation over seeds).

Sources:

* **transfer**: Liu et al., *Swin Transformer V2: Scaling Up Capacity and Resolution*, CVPR 2022,
  Table 1: Swin-T trained on ImageNet-1K at window 8 (256 px), tested at windows 12, 16, 20, 24
  without fine-tuning / after fine-tuning, top-1 %. Our default task trains at a 4x4 grid and tests
  at 6x6, 8x8, 12x12: the paper's windows 12, 16, 24 are the same ratios (1.5, 2, 3).
* **ablation**: Liu et al., *Swin Transformer: Hierarchical Vision Transformer using Shifted
  Windows*, ICCV 2021, Table 4 (Swin-T with shifted windows): ImageNet-1K top-1 %, COCO box AP,
  ADE20K mIoU per position scheme.
* **shift**: no paper number; the expectation is the definition of a relative scheme (only offsets
  enter), against an absolute embedding that never trained the unseen positions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

__all__ = ["PAPER_RESULTS", "conclusion", "paper_markdown"]

_SWINV2: Mapping[str, Any] = MappingProxyType({
    "source": "Liu et al., Swin Transformer V2, CVPR 2022, Table 1",
    "setting": "Swin-T, ImageNet-1K top-1 %, trained at window 8; tested at larger windows without "
               "fine-tuning / after fine-tuning",
    "train_window": 8,
    "windows": (12, 16, 20, 24),
    # scheme (as our results name it) -> (paper's row, accuracy at window 8,
    #                                     {window: (without fine-tuning, fine-tuned)})
    "rows": MappingProxyType({
        "2d/bicubic": ("Parameterized position bias (Swin V1, bicubic)", 81.7,
                       MappingProxyType({12: (79.4, 82.7), 16: (77.2, 83.0), 20: (73.2, 83.2),
                                         24: (68.7, 83.2)})),
        "cpb/linear": ("Linear-Spaced CPB", 81.7,
                       MappingProxyType({12: (82.0, 82.9), 16: (81.2, 83.3), 20: (79.8, 83.6),
                                         24: (77.6, 83.7)})),
        "cpb/log": ("Log-Spaced CPB", 81.8,
                    MappingProxyType({12: (82.4, 83.2), 16: (81.7, 83.8), 20: (80.4, 84.0),
                                      24: (79.1, 84.2)})),
    }),
    "order": ("cpb/log", "cpb/linear", "2d/bicubic"),  # best first, at every window without fine-tuning
})
_SWIN: Mapping[str, Any] = MappingProxyType({
    "source": "Liu et al., Swin Transformer, ICCV 2021, Table 4",
    "setting": "Swin-T with shifted windows; ImageNet-1K top-1 %, COCO box AP, ADE20K mIoU",
    "benchmarks": ("ImageNet-1K top-1", "COCO AP box", "ADE20K mIoU"),
    # scheme -> (paper's row, (top-1, AP box, mIoU))
    "rows": MappingProxyType({
        "none": ("no pos.", (80.1, 49.2, 43.8)),
        "absolute": ("abs. pos.", (80.5, 49.0, 43.2)),
        "absolute+2d": ("abs.+rel. pos.", (81.3, 50.2, 44.0)),
        "2d": ("rel. pos.", (81.3, 50.5, 46.1)),
    }),
    "extra": "rel. pos. w/o app. (bias only, no query-key term): 79.3 / 48.2 / 44.1; no relpos counterpart",
    "order": ("2d", "absolute+2d", "absolute", "none"),  # ImageNet top-1: 81.3 = 81.3 > 80.5 > 80.1
})

#: The papers' numbers the labs show beside ours (read-only; see the module docstring).
PAPER_RESULTS: Mapping[str, Mapping[str, Any] | None] = MappingProxyType(
    {"transfer": _SWINV2, "ablation": _SWIN, "shift": None}
)


def paper_markdown(kind: str) -> str:
    """The paper's table for lab ``kind`` in markdown, with its citation ("" when there is none)."""
    if kind == "transfer":
        p = _SWINV2
        head = ["scheme (paper's row)", "window 8", *(f"window {w}" for w in p["windows"])]
        lines = [f"Reference: {p['source']} ({p['setting']}).", "",
                 "| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
        for scheme, (label, trained, by_window) in p["rows"].items():
            cells = [f"{by_window[w][0]} / {by_window[w][1]}" for w in p["windows"]]
            lines.append(f"| {scheme} ({label}) | {trained} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    if kind == "ablation":
        p = _SWIN
        lines = [f"Reference: {p['source']} ({p['setting']}).", "",
                 "| scheme (paper's row) | " + " | ".join(p["benchmarks"]) + " |", "|---|---|---|---|"]
        for scheme, (label, values) in p["rows"].items():
            lines.append(f"| {scheme} ({label}) | " + " | ".join(str(v) for v in values) + " |")
        return "\n".join(lines + ["", f"Also in the paper: {p['extra']}."])
    return ""


# ----------------------------------------------------------------------------- words from numbers

_GRID_RE = re.compile(r"^grid=(\d+)x(\d+)(/finetuned)?$")


def _fmt(s: Mapping[str, Any]) -> str:
    return f"{s['scheme']} {s['mean']:.3f}" + ("" if s["std"] is None else f" ± {s['std']:.3f}")


def _seeds(items: Sequence[Mapping[str, Any]]) -> str:
    ns = sorted({s["n"] for s in items})
    return f"{'/'.join(map(str, ns))} seed{'s' if ns != [1] else ''}"


def _compare(better: Mapping[str, Any], worse: Mapping[str, Any]) -> str:
    """"agree" when ``better`` leads beyond the noise, "close" within it, "contradict" otherwise."""
    gap = better["mean"] - worse["mean"]
    noise = max(better["std"] or 0.0, worse["std"] or 0.0)
    if abs(gap) <= noise or gap == 0:
        return "close"
    return "agree" if gap > 0 else "contradict"


def _verdict(by: Mapping[str, Mapping[str, Any]], order: Sequence[str], paper: str) -> str:
    """Compare our means with the paper's ``order`` (best first) for the schemes we have."""
    present = [s for s in order if s in by]
    if len(present) < 2:
        return f"Too few of the paper's schemes ({', '.join(order)}) to compare the ordering with {paper}."
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
    results = {(a, b): _compare(by[a], by[b]) for a, b in pairs}
    ranked = sorted(present, key=lambda s: -by[s]["mean"])
    ours = " > ".join(ranked)
    against = [f"{b} ahead of {a} ({by[b]['mean']:.3f} vs {by[a]['mean']:.3f})"
               for (a, b), r in results.items() if r == "contradict"]
    close = [f"{a} and {b}" for (a, b), r in results.items() if r == "close"]
    if against:
        text = f"Contradicts {paper}: here {'; '.join(against)}, where the paper has the reverse."
    elif ranked == present:
        text = f"Same ordering as {paper}: {ours}."
    else:  # our means are ordered otherwise, but only within the seeds' spread
        text = (f"Not the ordering of {paper} by the means (here {ours}), but every pair out of the paper's "
                "order is within one standard deviation, so these seeds do not contradict it.")
    if close:
        text += f" Too close to call with these seeds (within one standard deviation): {'; '.join(close)}."
    return text


def _transfer(summary: Sequence[Mapping[str, Any]]) -> str:
    plain = [s for s in summary if (m := _GRID_RE.match(s["eval"])) and not m.group(3)]
    if not plain:
        return "No evaluation at a new grid without fine-tuning."
    largest = max(plain, key=lambda s: int(_GRID_RE.match(s["eval"]).group(1)))["eval"]
    at = sorted((s for s in plain if s["eval"] == largest), key=lambda s: -s["mean"])
    p = _SWINV2
    paper = ", ".join(f"{p['rows'][k][0]} {p['rows'][k][2][24][0]} %" for k in p["order"])
    text = (f"At {largest.removeprefix('grid=')} without fine-tuning ({_seeds(at)}): "
            + ", ".join(_fmt(s) for s in at) + f". Swin V2 at window 24 (3x its training window): {paper}. "
            + _verdict({s["scheme"]: s for s in at}, p["order"], "the paper"))
    tuned = [s for s in summary if s["eval"] == f"{largest}/finetuned"]
    if len(tuned) > 1 and len(at) > 1:
        before = at[0]["mean"] - at[-1]["mean"]
        after = max(s["mean"] for s in tuned) - min(s["mean"] for s in tuned)
        how = "narrowed" if after < before else "did not narrow"
        text += (f" After fine-tuning at that size the spread of the means {how} from {before:.3f} to "
                 f"{after:.3f} (the paper: all rows 83.2-84.2 % after fine-tuning).")
    return text


def _kind_of(scheme: str) -> str:
    if scheme == "none":
        return "none"
    if scheme == "absolute":
        return "absolute"
    return "absolute + relative" if scheme.startswith("absolute+") else "relative"


def _shift(summary: Sequence[Mapping[str, Any]]) -> str:
    seen = {s["scheme"]: s for s in summary if s["eval"] == "region=seen"}
    unseen = {s["scheme"]: s for s in summary if s["eval"] == "region=unseen"}
    schemes = [s for s in unseen if s in seen]
    if not schemes:
        return "Needs both region=seen and region=unseen results."
    parts = [f"{s} {seen[s]['mean']:.3f} -> {unseen[s]['mean']:.3f}"
             + ("" if unseen[s]["std"] is None else f" ± {unseen[s]['std']:.3f}") for s in schemes]
    text = f"Seen -> unseen region ({_seeds([unseen[s] for s in schemes])}): " + ", ".join(parts) + ". "
    rel = [s for s in schemes if _kind_of(s) == "relative"]
    ab = [s for s in schemes if _kind_of(s) == "absolute"]
    if rel and ab:
        worst_rel = min(rel, key=lambda s: unseen[s]["mean"])
        best_ab = max(ab, key=lambda s: unseen[s]["mean"])
        verdict = _compare(unseen[worst_rel], unseen[best_ab])
        if verdict == "agree":
            text += ("As expected: every relative scheme kept more of its accuracy where it never saw a mark "
                     f"than the absolute embedding did (worst relative {worst_rel} "
                     f"{unseen[worst_rel]['mean']:.3f} vs {best_ab} {unseen[best_ab]['mean']:.3f}).")
        elif verdict == "close":
            text += (f"Not settled: the weakest relative scheme ({worst_rel}) and {best_ab} are within one "
                     "standard deviation of each other in the unseen region.")
        else:
            text += (f"Unexpected: {best_ab} ({unseen[best_ab]['mean']:.3f}) beat the relative {worst_rel} "
                     f"({unseen[worst_rel]['mean']:.3f}) in the unseen region.")
    else:
        text += "Relative and absolute schemes are both needed for the comparison."
    return text


def _ablation(summary: Sequence[Mapping[str, Any]]) -> str:
    texts = []
    p = _SWIN
    named = [f"{p['rows'][k][0]} {p['rows'][k][1][0]}" for k in p["order"]]
    paper = " = ".join(named[:2]) + " > " + " > ".join(named[2:])  # the paper ties rel. and abs.+rel.
    for ev in dict.fromkeys(s["eval"] for s in summary):
        items = sorted((s for s in summary if s["eval"] == ev), key=lambda s: -s["mean"])
        by = {s["scheme"]: s for s in items}
        text = f"{ev} ({_seeds(items)}): " + " > ".join(_fmt(s) for s in items) + "."
        best, worst = items[0]["scheme"], items[-1]["scheme"]
        if len(items) > 1 and "none" in by:
            shape = _kind_of(best) != "none" and _kind_of(best) != "absolute" and worst == "none"
            text += (" Relative best and no position worst, as in the paper." if shape else
                     f" Not the paper's shape (relative best, no position worst): here {best} leads and "
                     f"{worst} trails.")
        # the paper ties rel. and abs.+rel.; compare the strict steps only
        order = [s for s in ("2d", "absolute", "none") if s in by]
        if len(order) > 1:
            text += " " + _verdict(by, order, "Swin Table 4 on rel. > abs. > none")
        texts.append(text)
    return " ".join(texts) + f" (Swin Table 4, ImageNet-1K top-1: {paper}.)"


def conclusion(kind: str, summary: Sequence[Mapping[str, Any]]) -> str:
    """A plain-words conclusion of a lab summary, derived from its numbers (see the module docstring).

    Args:
        kind: ``"transfer"``, ``"shift"`` or ``"ablation"``.
        summary: rows of :func:`relpos.experiments.labs.summarize_results`.

    Raises:
        ValueError: an unknown ``kind``.
    """
    makers = {"transfer": _transfer, "shift": _shift, "ablation": _ablation}
    if kind not in makers:
        raise ValueError(f"kind = {kind!r} is not allowed: one of {', '.join(makers)}")
    if not summary:
        return "No results yet."
    return makers[kind](summary)
