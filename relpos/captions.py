"""Sentences and labels derived from numbers: what the app says about a model is computed, not written.

A caption such as "the bias pulls attention towards nearby patches" is only true of some tables; this
module reads a model's own diagnostics (:func:`relpos.diagnostics.diagnostics_table` rows) and says
what *they* show. It also keeps one format for the numbers shown in many places (an accuracy always
with its sample size, a missing value as "–", reach always in patches) and one vocabulary for the
position schemes ("Position information: relative bias (2D table (Swin)) / rotary (axial) / absolute
embedding / none") and for the ablation that applies to a model.

Pure: numbers and names in, strings out; it imports only :mod:`relpos.families` and
:mod:`relpos._validation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from relpos._validation import check_choice
from relpos.families import FAMILIES, ROTARY_EMBEDDINGS, SCHEMES, position_parts

__all__ = [
    "ABLATIONS",
    "BIAS_CHARACTERS",
    "DASH",
    "POSITION_PARTS",
    "REACH_HELP",
    "REACH_NAME",
    "REACH_UNIT",
    "ablation_labels",
    "bias_character",
    "bias_effect_sentence",
    "comparison_rows",
    "format_accuracy",
    "format_number",
    "near_uniform_note",
    "position_label",
    "reach_sentence",
    "scheme_parts",
]

#: What a missing number shows as (never "None" or "nan").
DASH = "–"
#: One name and one unit for the mean attention distance, on every page.
REACH_NAME = "Reach"
REACH_UNIT = "patches"
REACH_HELP = ("Reach is the mean attention distance: how far, on average, each query's attention goes, "
              "in patches (1 = the next patch over).")

#: The parts of a position scheme, in the order the app names them.
POSITION_PARTS: tuple[str, ...] = ("relative", "rotary", "absolute")
#: Part -> (what it is, what the map is called with it switched off).
ABLATIONS: Mapping[str, tuple[str, str]] = {
    "relative": ("relative bias", "relative bias zeroed"),
    "rotary": ("rotary embedding", "rotation off"),
    "absolute": ("absolute embedding", "absolute embedding zeroed"),
}

# Thresholds on the per-head diagnostics (relpos.diagnostics): below LOCAL the bias alone keeps
# attention nearer than uniform attention would, above FAR farther; a symmetry below ANTISYMMETRIC
# says b(Δ) ≈ −b(−Δ) (one side favoured); an entropy above FLAT of log N says softmax(bias) is
# nearly uniform, so the bias barely moves attention whatever its shape.
LOCAL_BELOW = 0.9
FAR_ABOVE = 1.1
ANTISYMMETRIC_BELOW = -0.3
FLAT_ENTROPY = 0.98

#: What each character of a bias head does, as a verb phrase ("the bias ...").
BIAS_CHARACTERS: Mapping[str, str] = {
    "local": "pulls attention towards nearby patches",
    "far": "pushes attention towards distant patches",
    "direction": "favours one direction (an antisymmetric table: direction, not nearness)",
    "flat": "is nearly flat (it barely moves attention)",
    "neutral": "prefers neither near nor far patches",
}


# ----------------------------------------------------------------------------- numbers


def _missing(value: Any) -> bool:
    return value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)


def format_number(value: Any, fmt: str = ".2f", unit: str = "") -> str:
    """``value`` in format ``fmt`` (then `` unit``), or :data:`DASH` when it is missing or not finite."""
    if _missing(value):
        return DASH
    return f"{value:{fmt}}" + (f" {unit}" if unit else "")


def format_accuracy(value: Any, n: Any = None, *, digits: int = 1) -> str:
    """One format for every accuracy in the app: ``"99.2 % on 1024 images"``.

    Args:
        value: a fraction in [0, 1], or None / NaN (then :data:`DASH`).
        n: how many images it was measured on (left out when None).
        digits: decimals of the percentage.
    """
    if _missing(value):
        return DASH
    text = f"{100 * float(value):.{int(digits)}f} %"
    if n is not None and not _missing(n):
        text += f" on {int(n)} image" + ("" if int(n) == 1 else "s")
    return text


def near_uniform_note(lo: float, hi: float) -> str:
    """What a figure says about a map whose values barely vary (its scale is anchored at 0)."""
    return f"near uniform ({lo:.3g}–{hi:.3g}): scale from 0"


# ----------------------------------------------------------------------------- schemes


def scheme_parts(scheme: str) -> dict[str, str | bool | None]:
    """What scheme ``scheme`` (one of :data:`relpos.families.SCHEMES`) gives the model:
    ``{"relative": family or None, "rotary": "axial" | "mixed" | None, "absolute": bool}``."""
    settings = SCHEMES[check_choice("scheme", scheme, tuple(SCHEMES))]
    relative = bool(settings.get("use_relative_position"))
    rotary, absolute = position_parts(settings.get("position_embedding", "auto"), relative)
    return {"relative": settings.get("bias_type") if relative else None, "rotary": rotary, "absolute": absolute}


def position_label(scheme: str | None = None, *, relative: str | None = None, rotary: str | None = None,
                   absolute: bool = False) -> str:
    """A scheme in words, after what each part does: ``"relative bias (2D table (Swin))"``,
    ``"rotary (axial) + absolute embedding"``, ``"none"``.

    Args:
        scheme: a scheme name (:data:`relpos.families.SCHEMES`); or None and the parts given directly:
        relative: the bias family, or None.
        rotary: the rotary mode (``"axial"``, ``"mixed"``; a ``position_embedding`` value such as
            ``"rope_axial"`` is accepted too), or None.
        absolute: whether an absolute embedding is added to the patches.
    """
    if scheme is not None:
        parts = scheme_parts(scheme)
        relative, rotary, absolute = parts["relative"], parts["rotary"], bool(parts["absolute"])
    words = []
    if relative:
        fam = FAMILIES.get(str(relative))
        words.append(f"relative bias ({fam.label if fam else relative})")
    if rotary:
        words.append(f"rotary ({ROTARY_EMBEDDINGS.get(str(rotary), rotary)})")
    if absolute:
        words.append("absolute embedding")
    return " + ".join(words) or "none"


def ablation_labels(part: str | None) -> tuple[str, str]:
    """``(with, without)`` names of a pair of maps for switching ``part`` off (one of
    :data:`POSITION_PARTS`); ``None`` (nothing to switch off) gives ``("as computed", "")``."""
    if part is None:
        return "as computed", ""
    on, off = ABLATIONS[check_choice("part", part, POSITION_PARTS)]
    return f"with the {on}", off


# ----------------------------------------------------------------------------- what a bias does


def bias_character(row: Mapping[str, Any], num_tokens: int | None = None) -> str:
    """One key of :data:`BIAS_CHARACTERS` for one head's diagnostics (``locality_ratio``,
    ``symmetry``, ``bias_entropy``), by the thresholds above: ``"flat"`` first (when ``num_tokens``
    is known), then ``"direction"``, ``"local"``, ``"far"``, else ``"neutral"``."""
    ratio, sym, ent = row.get("locality_ratio"), row.get("symmetry"), row.get("bias_entropy")
    if num_tokens and num_tokens > 1 and not _missing(ent) and ent >= FLAT_ENTROPY * math.log(num_tokens):
        return "flat"
    if not _missing(sym) and sym < ANTISYMMETRIC_BELOW:
        return "direction"
    if not _missing(ratio) and ratio < LOCAL_BELOW:
        return "local"
    if not _missing(ratio) and ratio > FAR_ABOVE:
        return "far"
    return "neutral"


def _heads(heads: Sequence[int]) -> str:
    names = [str(h) for h in heads]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return ("head " if len(names) == 1 else "heads ") + listed


def bias_effect_sentence(rows: Iterable[Mapping[str, Any]], *, num_tokens: int | None = None,
                         subject: str = "The bias") -> str:
    """What a layer's bias does, per group of heads, from its own diagnostics rows (one per head,
    with ``head`` and the measures). Empty when there are no rows.

    E.g. ``"The bias pulls attention towards nearby patches in heads 0 and 2, and favours one direction
    (an antisymmetric table: direction, not nearness) in heads 1 and 3."``
    """
    groups: dict[str, list[int]] = {}
    for row in rows:
        groups.setdefault(bias_character(row, num_tokens), []).append(int(row["head"]))
    if not groups:
        return ""
    if len(groups) == 1:
        (kind, heads), = groups.items()
        every = "in every head" if len(heads) > 1 else f"in {_heads(heads)}"
        return f"{subject} {BIAS_CHARACTERS[kind]} {every}."
    parts = [f"{BIAS_CHARACTERS[k]} in {_heads(h)}" for k, h in sorted(groups.items(), key=lambda kv: kv[1][0])]
    return f"{subject} " + ", ".join(parts[:-1]) + ", and " + parts[-1] + "."


def reach_sentence(with_value: float, without_value: float, part: str) -> str:
    """The change of reach (mean attention distance) when ``part`` (one of :data:`POSITION_PARTS`) is
    switched off, in numbers: ``"Reach: 0.81 patches with the relative bias, 1.23 without it (0.42
    patches shorter with it)."``; empty when a value is missing."""
    if _missing(with_value) or _missing(without_value):
        return ""
    name = ABLATIONS[check_choice("part", part, POSITION_PARTS)][0]
    change = with_value - without_value
    how = ("about the same" if abs(change) < 0.005
           else f"{abs(change):.2f} {REACH_UNIT} {'shorter' if change < 0 else 'longer'} with it")
    return (f"{REACH_NAME}: {with_value:.2f} {REACH_UNIT} with the {name}, {without_value:.2f} without it "
            f"({how}).")


# ----------------------------------------------------------------------------- comparing runs


def comparison_rows(runs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """What two (or more) checkpoints share whatever their schemes: one row per quantity, one column
    per run name. Each run's mapping may hold ``scheme`` (a scheme name or words), ``accuracy``,
    ``n`` (validation images), ``epoch`` and ``metrics`` (its recorded metrics, ``diag/*`` included).

    Returns:
        ``[{"": quantity, <run>: text, ...}, ...]``: position information, accuracy (with its sample
        size), epoch, then each ``diag/*`` mean any run recorded ("–" where one did not).
    """
    names = list(runs)
    keys = sorted({k for r in runs.values() for k in (r.get("metrics") or {}) if str(k).startswith("diag/")})

    def label(r: Mapping[str, Any]) -> str:
        scheme = r.get("scheme")
        return position_label(scheme) if scheme in SCHEMES else (scheme or DASH)

    rows = [
        {"": "position information", **{n: label(runs[n]) for n in names}},
        {"": "validation accuracy", **{n: format_accuracy(runs[n].get("accuracy"), runs[n].get("n")) for n in names}},
        {"": "epoch", **{n: format_number(runs[n].get("epoch"), "d") for n in names}},
    ]
    for key in keys:
        rows.append({"": f"{key} (last epoch)", **{n: format_number((runs[n].get("metrics") or {}).get(key), ".3f")
                                                     for n in names}})
    return rows
