"""Small pieces of UI the pages share: the error guard, charts, remembered widget values, tables.

Nothing here computes: the numbers come from :mod:`app_support.state` (cached relpos calls); this
module only lays them out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from relpos import explore
from relpos.diagnostics import DIAGNOSTIC_MEASURES
from relpos.families import ALIBI_DISTANCES, FAMILIES

#: Widths the cpb MLP's hidden layer can take in the app.
CPB_HIDDEN_WIDTHS = (16, 32, 64, 128, 256, 512)


@contextlib.contextmanager
def guard(what: str, todo: str) -> Iterator[None]:
    """Show a readable ``st.error`` (what failed, why, what to do) instead of a traceback."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message, never a traceback
        detail = str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}"
        st.error(f"**Could not {what}.** {detail or type(exc).__name__}\n\n**What to do:** {todo}",
                 icon=":material/error:")


def plotly(fig, key: str) -> None:
    """Draw a figure full width (one place to change how every chart is drawn)."""
    st.plotly_chart(fig, key=key, width="stretch", config={"displaylogo": False})


def side_by_side(*charts: tuple[Any, str], widths: Sequence[int] | None = None) -> None:
    """Draw ``(figure, key)`` pairs in columns, left to right."""
    for col, (fig, key) in zip(st.columns(list(widths) if widths else len(charts)), charts):
        with col:
            plotly(fig, key)


def reach_metrics(reaches: Sequence[tuple[str, float, float | None]], unit: str, note: str) -> None:
    """Mean attention distances ("reach"), each with its change against the bias off, then a note.

    Args:
        reaches: ``(label, value, value with the bias off or None for no change shown)`` per metric.
        unit: what the distance counts (``"tokens"``, ``"patches"``).
        note: one caption that says what was measured.
    """
    cols = st.columns([1] * len(reaches) + [2])
    for col, (label, value, off) in zip(cols, reaches):
        delta = None if off is None else f"{value - off:+.2f} vs bias zeroed"
        col.metric(label, f"{value:.2f} {unit}", delta, delta_color="off")
    cols[-1].caption(note)


def clamp_state(key: str, low: int, high: int) -> None:
    """Keep a widget's remembered value inside a range that just changed (e.g. a smaller window)."""
    value = st.session_state.get(key)
    if isinstance(value, (int, float)) and not low <= value <= high:
        st.session_state[key] = min(max(int(value), low), high)


def index_slider(label: str, n: int, default: int, key: str, **kwargs) -> int:
    """A slider over ``0 .. n - 1`` (a token, a head) that keeps its value inside a range that just
    shrank; ``0`` without a slider when there is only one."""
    if n <= 1:
        return 0
    clamp_state(key, 0, n - 1)
    return int(st.slider(label, 0, n - 1, min(default, n - 1), key=key, **kwargs))


def size_inputs(two_d: bool, prefix: str, side: int, length: int) -> tuple[int, int] | int:
    """A window ``(h, w)`` (two inputs, ``side`` each at first) or a sequence length (``length``),
    within the app's limits; keys ``<prefix>_h``, ``<prefix>_w``, ``<prefix>_len``."""
    if two_d:
        return (int(st.number_input("Window height h", 1, explore.MAX_WINDOW_SIDE, side, key=f"{prefix}_h")),
                int(st.number_input("Window width w", 1, explore.MAX_WINDOW_SIDE, side, key=f"{prefix}_w")))
    return int(st.number_input("Sequence length L", 1, explore.MAX_SEQ_LEN, length, key=f"{prefix}_len"))


def keep_values(keys: Sequence[str]) -> None:
    """Keep the values of widgets that are not drawn on every run (e.g. one family's options).

    Streamlit forgets the value of a widget it did not draw in a run; re-assigning the remembered
    value makes it plain session state until the widget is drawn again.
    """
    for key in keys:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def option_keys(prefix: str) -> list[str]:
    """The widget keys :func:`family_options` may use with ``prefix`` (every option of every family)."""
    return sorted({f"{prefix}_{name}" for fam in FAMILIES.values() for name in fam.options})


def family_options(kind: str, prefix: str) -> dict[str, Any]:
    """One widget per option of family ``kind`` (``FAMILIES[kind].options``); the chosen values.

    Options without a widget here (e.g. ``pretrained_window_size``) keep their default. Widget keys
    are ``<prefix>_<option>``.
    """
    chosen: dict[str, Any] = {}
    for name, default in FAMILIES[kind].options.items():
        key = f"{prefix}_{name}"
        if name == "num_buckets":
            chosen[name] = int(st.number_input(name, 4, 128, int(default), key=key,
                                               help="Total buckets; half for keys before the query, half for after."))
        elif name == "max_distance":
            low = chosen.get("num_buckets", 4) // 4 + 1  # the smallest max_distance relpos accepts
            clamp_state(key, low, 4096)
            chosen[name] = int(st.number_input(
                name, low, 4096, max(int(default), low), key=key,
                help="Offsets this far or farther share the last bucket of their direction."))
        elif name == "alibi_distance":
            chosen[name] = st.radio("Distance", ALIBI_DISTANCES, index=ALIBI_DISTANCES.index(default), key=key,
                                    horizontal=True)
        elif name == "cpb_hidden_dim":
            chosen[name] = int(st.select_slider("MLP hidden width", CPB_HIDDEN_WIDTHS, int(default), key=key))
    return chosen


def diagnostics_table(rows: list[dict], layer: int, key: str, explain: bool = False) -> None:
    """Layer ``layer``'s diagnostics: one row per measure, one column per head, then what it measures."""
    per_head = pd.DataFrame([r for r in rows if r["layer"] == layer]).set_index("head").drop(columns="layer")
    diag = per_head.T.rename(columns=lambda h: f"head {h}")  # (measures, heads)
    diag["what it measures"] = [DIAGNOSTIC_MEASURES[m] for m in diag.index]
    st.dataframe(diag, width="stretch", key=key,
                 column_config={"what it measures": st.column_config.TextColumn(width="large"),
                                **{c: st.column_config.NumberColumn(format="%.4f") for c in diag.columns[:-1]}})
    if explain:
        with st.expander("What the measures mean"):
            st.markdown("\n".join(f"- **{m}**: {text}" for m, text in DIAGNOSTIC_MEASURES.items()))


def clock(seconds: float | None, fmt: str = "%H:%M:%S") -> str:
    """A local time of day (or date) for a table cell; empty for no time."""
    return time.strftime(fmt, time.localtime(seconds)) if seconds else ""


def runs_table(rows: list[dict], key: str) -> None:
    """The runs of the runs root: state, progress, epoch, validation accuracy, last update."""
    frame = pd.DataFrame({
        "run": [r["name"] for r in rows],
        "state": [r["state"] for r in rows],
        "progress": [r["progress"] for r in rows],
        "epoch": [f"{r['epoch'] or 0}/{r['epochs'] or '?'}" for r in rows],
        "accuracy": [r["accuracy"] for r in rows],
        "updated": [clock(r["updated"]) for r in rows],
    })
    st.dataframe(frame, hide_index=True, width="stretch", key=key, column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "accuracy": st.column_config.NumberColumn("val accuracy", format="percent"),
    })


def checkpoints_table(ckpts: list[dict], runs: Mapping[str, dict], key: str) -> None:
    """The checkpoint files with their run's state and accuracy, size and date."""
    st.dataframe(
        pd.DataFrame({
            "checkpoint": [c["label"] for c in ckpts],
            "kind": [c["kind"] for c in ckpts],
            "run state": [runs.get(c["run"], {}).get("state", "") for c in ckpts],
            "val accuracy": [runs.get(c["run"], {}).get("accuracy") for c in ckpts],
            "size (MB)": [round(c["size"] / 2**20, 2) for c in ckpts],
            "saved": [clock(c["mtime"], "%Y-%m-%d %H:%M") for c in ckpts],
        }),
        hide_index=True, width="stretch", key=key,
        column_config={"val accuracy": st.column_config.NumberColumn(format="percent")},
    )


def table_caption(bias_type: str, two_d: bool) -> str:
    """How to read :func:`relpos.experiments.visualize.visualize_bias_table`'s chart of a family's table."""
    fam = FAMILIES[bias_type]
    if not two_d:
        over = "the T5 buckets (hover: the offsets in each bucket)" if "num_buckets" in fam.options else "offsets i − j"
        return f"One curve per head over {over}."
    rows = f" (the {fam.extra_rows} class-token rows are written under it)" if fam.extra_rows else ""
    return f"Each small map is one head's table over offsets (Δy, Δx); the centre is offset (0, 0){rows}."


def run_status(info: Mapping[str, Any], active: bool) -> str:
    """One line about a run (:func:`relpos.jobs.list_runs` row): state, epoch, ETA while active, accuracy."""
    text = f"{info['state']} · epoch {info['epoch'] or 0}/{info['epochs'] or '?'}"
    text += f" · ETA {explore.format_eta(info['eta_seconds'])}" if active else ""
    return text + (f" · val accuracy {info['accuracy']:.1%}" if info["accuracy"] is not None else "")


def download(label: str, data: Any, file_name: str, key: str, mime: str = "application/octet-stream") -> None:
    """A download button with a safe file name; ``data`` may be a callable, run only when clicked."""
    st.download_button(label, data=data, file_name=explore.safe_download_name(file_name), mime=mime, key=key,
                       on_click="ignore")
