"""Small pieces of UI the pages share: the error guard, charts, remembered widget values, tables.

Nothing here computes: the numbers come from :mod:`app_support.state` (cached relpos calls); this
module only lays them out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_support import interact, state
from relpos import captions, explore
from relpos.diagnostics import DIAGNOSTIC_MEASURES
from relpos.experiments import figure_select
from relpos.experiments.figure_present import presenter_layout, take_title
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


def plotly(fig, key: str, on_select: Callable[[], None] | None = None) -> None:
    """Draw a figure full width (one place to change how every chart is drawn): in presenter mode with
    fonts of 18 px or more and its title written above it (HTML wraps a long title, Plotly would cut
    it); with ``on_select``, a click on a point (the click layer of
    :mod:`relpos.experiments.figure_select`) calls it before the rerun."""
    if interact.presenting():
        title = take_title(fig)
        presenter_layout(fig)
        if title:
            interact.chart_title(title)
    clicks = {"on_select": on_select, "selection_mode": "points"} if on_select is not None else {}
    st.plotly_chart(fig, key=key, width="stretch", config={"displaylogo": False}, **clicks)


def plotly_heads(fig: go.Figure, key: str, head: int, heads: int, widget_key: str | None = None, *,
                 keep: bool = False) -> None:
    """Draw small multiples with one panel per head: ``head``'s panel outlined, and a click on a panel
    makes that head the shared one (and ``widget_key``'s, when given; :func:`interact.on_head`).

    A figure that is not one heatmap panel per head (one head, curves, bars) is drawn as it is. With
    ``keep`` the click layer and the outline go on a copy, so ``fig`` stays fit for a download.
    """
    if heads < 2 or len(figure_select.heatmap_panels(fig)) != heads:
        plotly(fig, key)
        return
    shown = go.Figure(fig) if keep else fig
    figure_select.add_cell_picker(shown, note="click: show this head")
    if 0 <= head < heads:
        figure_select.mark_panel(shown, head)
    plotly(shown, key, on_select=interact.on_head(key, widget_key))


def side_by_side(*charts: tuple[Any, ...], widths: Sequence[int] | None = None) -> None:
    """Draw ``(figure, key)`` or ``(figure, key, on_select)`` tuples in columns, left to right."""
    for col, chart in zip(st.columns(list(widths) if widths else len(charts)), charts):
        with col:
            plotly(*chart)


def reach_metrics(reaches: Sequence[tuple[str, float, float | None]], note: str, *,
                  off_label: str = "bias zeroed", unit: str = captions.REACH_UNIT) -> None:
    """Mean attention distances ("reach", always in :data:`relpos.captions.REACH_UNIT`), each with its
    change against the map with a position part switched off, then a note.

    Args:
        reaches: ``(label, value, value with the part off or None for no change shown)`` per metric.
        note: one caption that says what was measured.
        off_label: what the other map is ("relative bias zeroed", "rotation off", ...).
        unit: what the distance counts (patches; a 1D sequence counts tokens).
    """
    cols = st.columns([1] * len(reaches) + [2])
    for col, (label, value, off) in zip(cols, reaches):
        delta = None if off is None else f"{value - off:+.2f} vs {off_label}"
        col.metric(label, f"{value:.2f} {unit}", delta, delta_color="off", help=captions.REACH_HELP)
    cols[-1].caption(note)


def scale_toggle(key: str) -> bool:
    """The "per panel" switch of a paired figure: ``True`` gives each panel its own colour scale."""
    return bool(st.toggle("Per-panel colour scales", False, key=key,
                          help="Off: both maps share one colour scale, so equal colours mean equal values. "
                          "On: each map is stretched over its own range (shapes easier to see, colours not comparable)."))


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


def head_slider(label: str, n: int, key: str, **kwargs) -> int:
    """A page's own head control (``0 .. n - 1``) that *is* the sidebar's head: it shows the shared
    head (:data:`app_support.state.SEL_HEAD`) and a move writes it back, so the two never disagree.

    Only a head beyond the sidebar model's heads (``state.SEL_HEADS``; e.g. head 10 of a hand-set
    16-head table beside a 4-head model) stays the page's own; the caption under it says so.
    """
    if n <= 1:
        return 0
    shared = int(st.session_state.get(state.SEL_HEAD, 0) or 0)
    seen = f"{key}_seen_shared"  # the shared head this control last followed
    if 0 <= shared < n and st.session_state.get(seen) != shared:
        st.session_state[key] = shared
    st.session_state[seen] = shared
    st.session_state.setdefault(key, 0)
    clamp_state(key, 0, n - 1)

    def copy_back() -> None:
        value = int(st.session_state[key])
        if value < int(st.session_state.get(state.SEL_HEADS, n) or n):
            st.session_state[state.SEL_HEAD] = value

    value = int(st.slider(label, 0, n - 1, key=key, on_change=copy_back, **kwargs))
    if value != shared:
        st.caption(f"The sidebar's head {shared} is beyond these {n} heads: showing head {value}." if shared >= n
                   else f"Head {value} is beyond the sidebar model's heads: it is this page's own.")
    return value


def size_inputs(two_d: bool, prefix: str, side: int, length: int) -> tuple[int, int] | int:
    """A window ``(h, w)`` (two inputs, ``side`` each at first) or a sequence length (``length``),
    within the app's limits; keys ``<prefix>_h``, ``<prefix>_w``, ``<prefix>_len``. The two window
    inputs sit side by side (one row of controls, also in presenter mode)."""
    if two_d:
        col_h, col_w = st.columns(2)
        return (int(col_h.number_input("Window height h", 1, explore.MAX_WINDOW_SIDE, side, key=f"{prefix}_h",
                                       help="Rows of patches in the window.")),
                int(col_w.number_input("Window width w", 1, explore.MAX_WINDOW_SIDE, side, key=f"{prefix}_w",
                                       help="Columns of patches in the window.")))
    return int(st.number_input("Sequence length L", 1, explore.MAX_SEQ_LEN, length, key=f"{prefix}_len",
                               help="Number of tokens in the sequence."))


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
            chosen[name] = int(st.number_input(
                "Number of distance buckets", 4, 128, int(default), key=key,
                help="Total buckets; half for keys before the query, half for after."))
        elif name == "max_distance":
            low = chosen.get("num_buckets", 4) // 4 + 1  # the smallest max_distance relpos accepts
            clamp_state(key, low, 4096)
            chosen[name] = int(st.number_input(
                "Distance where the buckets end", low, 4096, max(int(default), low), key=key,
                help="Offsets this far or farther share the last bucket of their direction."))
        elif name == "alibi_distance":
            chosen[name] = st.radio("Distance measured as", ALIBI_DISTANCES, index=ALIBI_DISTANCES.index(default),
                                    key=key, horizontal=True,
                                    help="How far apart two patches are for the penalty: straight-line "
                                    "(euclidean) or along the grid (manhattan).")
        elif name == "cpb_hidden_dim":
            chosen[name] = int(st.select_slider("MLP hidden width", CPB_HIDDEN_WIDTHS, int(default), key=key,
                                                help="Units in the small network that turns an offset into "
                                                "one bias per head; Swin V2 uses 512."))
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
        "val accuracy": [captions.format_accuracy(r["accuracy"], r.get("num_val")) for r in rows],
        "updated": [clock(r["updated"]) for r in rows],
    })
    st.dataframe(frame, hide_index=True, width="stretch", key=key, column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
    })


def checkpoints_table(ckpts: list[dict], runs: Mapping[str, dict], key: str,
                      records: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """The checkpoint files with their run's state, each file's own recorded accuracy (``records``:
    path -> ``{"accuracy", "n", "epoch"}`` read from the file, so best.pt shows its epoch's accuracy,
    not the run's last), size and date."""
    records = records or {}
    own = [records.get(c["path"], {}) for c in ckpts]
    st.dataframe(
        pd.DataFrame({
            "checkpoint": [c["label"] for c in ckpts],
            "kind": [c["kind"] for c in ckpts],
            "run state": [runs.get(c["run"], {}).get("state", "") for c in ckpts],
            "epoch": [captions.format_number(r.get("epoch"), "d") for r in own],
            "val accuracy (its own)": [captions.format_accuracy(r.get("accuracy"), r.get("n")) for r in own],
            "size (MB)": [round(c["size"] / 2**20, 2) for c in ckpts],
            "saved": [clock(c["mtime"], "%Y-%m-%d %H:%M") for c in ckpts],
        }),
        hide_index=True, width="stretch", key=key,
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
    return text + f" · val accuracy {captions.format_accuracy(info['accuracy'], info.get('num_val'))}"


def download(label: str, data: Any, file_name: str, key: str, mime: str = "application/octet-stream") -> None:
    """A download button with a safe file name; ``data`` may be a callable, run only when clicked."""
    st.download_button(label, data=data, file_name=explore.safe_download_name(file_name), mime=mime, key=key,
                       on_click="ignore")


class ViewHelp(NamedTuple):
    """The help texts of :func:`view_controls` (the bias and the rotary explorer word them for their own case)."""

    seed: str
    content: str
    head: str
    query: str


def view_controls(slots: dict, heads: int, grid: tuple[int, int],
                  words: ViewHelp) -> tuple[int, float, int, int, bool]:
    """The Bias explorer's view controls, shared by its bias and rotary modes (same keys, so a switch
    keeps them): seed, content strength, head, query token and the colour-scale toggle, each in its slot.

    Returns:
        ``(seed, content, head, query, per_panel)``.
    """
    with slots["seed"]:
        seed = int(st.number_input("Seed", 0, 10_000, 0, key="be_seed", help=words.seed))
    with slots["content"]:
        content = st.slider("Content strength (fixed input)", 0.0, 3.0, 1.0, 0.1, key="be_content",
                            help=words.content)
    with slots["head"]:
        head = head_slider("Head", heads, key="be_head", help=words.head)
    with slots["query"]:
        query = interact.query_slider("Query token", grid, key="be_query", help=words.query)
    with slots["scale"]:
        per_panel = scale_toggle("be_per_panel")
    return seed, float(content), head, query, per_panel
