"""The Bias explorer page's sections (a relative bias family; the rotary mode is :mod:`app_support.rope_ui`).

The page reads as a table of contents: :func:`control_slots` and :func:`controls` draw the widgets
and return a :class:`BiasControls`; every later section takes it (and what an earlier section
computed) as arguments. Every number comes from one cached loader of :mod:`app_support.state`; this
module only lays out widgets and charts. Widget and chart keys start with ``be_``. Nothing here
calls ``st.stop``: the page does, where it stops early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app_support import interact, state, ui
from relpos import captions, diagnostics, explore, geometry, presets
from relpos.experiments import figure_compare, figure_select, stepthrough, stepthrough_figure
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES, BiasFamily

#: The family the page opens on: the plain learned 2D table (Swin's).
DEFAULT = next(n for n, f in FAMILIES.items() if f.is_2d() and f.learned and not f.class_token)
#: Widgets one family draws and another does not: their values are kept across a switch.
_KEEP = ("be_h", "be_w", "be_len", "be_preset", "be_alpha", "be_init_std")


@dataclass(frozen=True)
class BiasControls:
    """What the controls chose (the arguments of the page's cached calls)."""

    kind: str
    size: tuple[int, int] | int
    grid: tuple[int, int]
    options: dict[str, Any]
    preset: str
    alpha: float
    heads: int
    init_std: float
    seed: int
    content: float
    head: int
    query: int
    per_panel: bool

    @property
    def fam(self) -> BiasFamily:
        """The chosen bias family."""
        return FAMILIES[self.kind]

    @property
    def win(self) -> tuple[int, int] | None:
        """The window ``(h, w)`` of a 2D family, else None."""
        return self.size if isinstance(self.size, tuple) else None

    @property
    def seq(self) -> int | None:
        """The sequence length of a 1D family, else None."""
        return None if isinstance(self.size, tuple) else self.size

    @property
    def full_win(self) -> tuple[int, int] | None:
        """The window the full matrices are drawn over (None with a class token: not a window)."""
        return None if self.fam.class_token else self.win

    @property
    def opts(self) -> tuple[tuple[str, Any], ...]:
        """The family's options as a hashable, sorted tuple (for the cached loaders)."""
        return tuple(sorted(self.options.items()))

    @property
    def args(self) -> tuple:
        """The leading arguments of :func:`state.bias_arrays` and :func:`state.demo_attention`."""
        return (self.kind, self.size, self.heads, self.init_std, self.seed, self.preset, self.alpha, self.head)



@dataclass(frozen=True)
class BiasArrays:
    """The chosen head's table and bias (:func:`state.bias_arrays`)."""

    table: np.ndarray  # (T, H)
    full_bias: np.ndarray  # (N, N) of the chosen head (N + 1 with a class token)
    bias: np.ndarray  # (h*w, h*w): the patch tokens only


def no_preset(fam: BiasFamily) -> str:
    """Why the presets do not apply to ``fam`` ("" for a learned table)."""
    return "" if fam.learned else f"{fam.label} has no table to edit, so the presets do not apply."


def control_slots() -> dict[str, Any]:
    """Keeps the values of the widgets one family does not draw, then lays out the controls: four
    columns, or in presenter mode one row of the four a lecture moves and the rest behind a button.
    Returns ``{control name: container}`` (:func:`interact.control_slots`)."""
    ui.keep_values([*_KEEP, *ui.option_keys("be")])
    return interact.control_slots([("kind", "size", "options"), ("preset", "alpha", "heads"),
                                   ("init_std", "seed", "content"), ("head", "query", "scale")],
                                  main=("preset", "alpha", "head", "query"))


def controls(slots: dict[str, Any]) -> BiasControls:
    """Draws the bias family's controls into ``slots`` (family, size and options, preset and strength,
    heads, init spread, seed, content, head, query, colour scale) and returns their values."""
    with slots["kind"]:
        kind = st.selectbox("Relative bias family", explore.EXPLORE_BIAS_TYPES,
                            index=explore.EXPLORE_BIAS_TYPES.index(DEFAULT),
                            key="be_kind", format_func=lambda k: f"{k} · {FAMILIES[k].label}",
                            help="Which kind of relative position bias to build: a learned table over 2D or 1D "
                            "offsets, T5's buckets, ALiBi's fixed penalty or Swin V2's small network.")
        fam = FAMILIES[kind]
    with slots["size"]:
        size = ui.size_inputs(fam.is_2d(), "be", side=7, length=16)
        grid = geometry.token_grid(size)
    with slots["options"]:
        options = ui.family_options(kind, "be")
    with slots["preset"]:
        if fam.learned:
            preset = st.selectbox("Table preset", presets.BIAS_PRESETS, index=3, key="be_preset",
                                  help="init: the module's truncated-normal init (std init_std); "
                                  "zeros; random: normal with std α; locality: −α·distance in every head; "
                                  "alibi: −α·m_h·distance with ALiBi's per-head slopes m_h.")
        else:  # no table to edit: a disabled stand-in that says so
            st.selectbox("Table preset", ["none (no table to edit)"], key="be_preset_none", disabled=True,
                         help=no_preset(fam))
            preset = "init"
    with slots["alpha"]:
        alpha = st.slider("Strength α", 0.0, 5.0, 2.0, 0.1, key="be_alpha", disabled=not fam.learned,
                          help="How strong the preset is: 0 leaves the table flat, 5 makes it dominate attention.")
    with slots["heads"]:
        heads = int(st.number_input("Heads", 1, explore.MAX_HEADS, 4, key="be_heads",
                                    help="How many attention heads; each head has its own column of the table."))
    with slots["init_std"]:
        init_std = st.number_input("Table init spread (std)", 0.0, 2.0, 0.02, 0.01, format="%.3f", key="be_init_std",
                                   disabled=not fam.learned,
                                   help="Standard deviation of the random starting values (the 'init' preset).")
    seed, content, head, query, per_panel = ui.view_controls(slots, heads, grid, ui.ViewHelp(
        seed="Fixes the random numbers: the same seed draws the same table and input.",
        content="Std of the fixed random queries and keys; 0 leaves only the bias.",
        head="Which head's column of the table to show (the sidebar's head, when it has one).",
        query="Which token asks the question; its row of the bias and of attention is drawn. Or click a patch "
        "on any map of one query."))
    return BiasControls(kind=kind, size=size, grid=grid, options=options, preset=preset, alpha=float(alpha),
                        heads=heads, init_std=float(init_std), seed=seed, content=content, head=head,
                        query=query, per_panel=per_panel)


def family_caption(c: BiasControls) -> None:
    """The chosen family in one line (hidden in presenter mode), then the query's selection line."""
    cls_note = " Token 0 is the class token; the maps over the window leave it out." if c.fam.class_token else ""
    if not interact.presenting():
        st.caption(f"**{c.kind}** · {c.fam.label}: {c.fam.description} {no_preset(c.fam)}{cls_note}")
    interact.selection_line(c.grid, c.query, widget_key="be_clear")


def bias_arrays(c: BiasControls) -> BiasArrays:
    """The chosen head's table and bias (one cached call, :func:`state.bias_arrays`); draws nothing."""
    data = state.bias_arrays(*c.args, c.opts)
    full_bias = data["bias"][0]
    return BiasArrays(table=data["table"], full_bias=full_bias, bias=geometry.strip_class_token(full_bias, c.grid))


def table_section(c: BiasControls, table: np.ndarray) -> None:
    """"The table, per head": the table of every head (a click picks the head), the class token's rows
    when the family has them, and T5's bucket map."""
    fam, options = c.fam, c.options
    st.subheader("The table, per head")
    rows = "buckets" if "num_buckets" in options else "offsets"
    what = f"{table.shape[0] - fam.extra_rows} {rows}" + (
        f" + {fam.extra_rows} class-token rows" if fam.extra_rows else "")
    table_fig = viz.visualize_bias_table(table, window_size=c.win, seq_len=c.seq, bias_type=c.kind,
                                         max_distance=options.get("max_distance"),
                                         title=f"{c.kind} table ({c.preset if fam.learned else 'computed'}), "
                                               f"{what} × {c.heads} heads")
    ui.plotly_heads(table_fig, "be_table", c.head, c.heads, widget_key="be_head")
    if fam.extra_rows:
        st.caption("The class token has no position: its rows are one value per head each, "
                   "not part of the offset grid.")
        st.dataframe(pd.DataFrame(table[-fam.extra_rows:].T, columns=list(geometry.CLS_ROW_NAMES)).rename_axis("head"),
                     key="be_cls_rows")
    if "num_buckets" in options:
        st.caption("Which bucket each offset j − i falls in (the table's x axis is this curve's y axis):")
        ui.plotly(viz.t5_bucket_map_figure(options["num_buckets"], options["max_distance"], seq_len=c.seq),
                  key="be_t5_map")


def attention_section(c: BiasControls) -> tuple[np.ndarray, np.ndarray]:
    """"What it does to attention on a fixed input": the reach with and without the bias, and the
    query's two maps (2D) or bars (1D). Returns the full attention ``(with, without)`` of the chosen
    head (:func:`state.demo_attention`), class token included."""
    fam, grid, query = c.fam, c.grid, c.query
    interact.heading(f"What it does to attention on a fixed input · head {c.head}")
    with_full, without_full = state.demo_attention(*c.args, c.content, c.opts)
    with_b, without = geometry.strip_class_token(with_full, grid), geometry.strip_class_token(without_full, grid)
    d_with = float(diagnostics.mean_attention_distance(with_b, grid)[0])
    d_without = float(diagnostics.mean_attention_distance(without, grid)[0])
    numbers, maps = interact.numbers_then_maps()
    with numbers:
        ui.reach_metrics([(f"{captions.REACH_NAME} with bias", d_with, d_without),
                          (f"{captions.REACH_NAME} without bias", d_without, None)],
                         "Same random queries and keys in both maps; only the bias differs. "
                         + captions.reach_sentence(d_with, d_without, "relative")
                         + (" (Over the patch tokens; the class token's share is left out.)" if fam.class_token else ""),
                         off_label="bias removed", unit=captions.REACH_UNIT if fam.is_2d() else "tokens")
    with maps:
        if fam.is_2d():
            pair = [(viz.query_centric_figure(with_b, query, grid, title=f"Query {query}: with bias"), "be_attn_with"),
                    (viz.query_centric_figure(without, query, grid, title=f"Query {query}: without bias"),
                     "be_attn_without")]
            figure_compare.share_color_axis([f for f, _ in pair], per_panel=c.per_panel)
            for fig, _key in pair:
                figure_select.add_cell_picker(fig, note="click: make this patch the query")
            ui.side_by_side(*[(fig, key, interact.on_query(key)) for fig, key in pair])
        else:  # a sequence: bars over the key, both rows on one axis
            ui.plotly(figure_compare.query_bars_figure({"with bias": with_b[query], "without bias": without[query]},
                                                       query, title=f"Query {query}: attention over the keys"),
                      key="be_attn_bars", on_select=interact.on_query("be_attn_bars"))
    return with_full, without_full


def step_through(c: BiasControls) -> None:
    """"The formula, one step at a time": the step radio and the query's logits, bias, sum and softmax
    (with the α sweep to play at step 3 for an α preset on a small window), then its explanation."""
    interact.heading(f"The formula, one step at a time · query {c.query}, head {c.head}")
    step = st.radio("Step", (1, 2, 3), index=2, key="be_step", horizontal=True,
                    format_func={1: "1 · the logits QKᵀ/√d", 2: "2 · + the bias B", 3: "3 · the softmax"}.get,
                    help="Build the formula up: the content logits of the fixed input alone, then the bias "
                    "added to them, then the softmax that turns the sum into attention weights.")
    steps = state.step_through(*c.args, c.query, c.content, c.opts)
    animate = step == 3 and c.preset in stepthrough.ALPHA_PRESETS and geometry.num_tokens(c.grid) <= 256
    sweep = state.alpha_sweep(c.kind, c.size, c.heads, c.init_std, c.seed, c.preset, c.head, c.query, c.content,
                              c.opts) if animate else None
    ui.plotly(stepthrough_figure.step_through_figure(steps, step, sweep=sweep, alpha=c.alpha), key="be_steps")
    if steps["class_token"] is not None:
        st.caption(f"The class token (key 0) takes {steps['class_token']['weights']:.1%} of this query's "
                   "attention; the maps over the window leave it out.")
    interact.prose(
        "Left to right: what the random content alone says (QKᵀ/√d), the bias this query adds to each key, "
        "their sum, and the softmax of the sum: the attention map above. The three logit panels share one "
        "colour scale, so a colour means the same number in all three."
        + (" Press **▶ play** to watch α go from 0 to 5 (the scales hold still while it plays)." if sweep else ""))


def spread_section(c: BiasControls, arrays: BiasArrays) -> None:
    """"The bias it spreads over the window": the full bias B of the chosen head beside the bias the
    query sees (a map in 2D, bars in 1D; a click picks the query)."""
    head, query, fam = c.head, c.query, c.fam
    st.subheader(f"The bias it spreads over the window · head {head}")
    positive = bool((arrays.full_bias > 0).all())  # e.g. cpb's 16·sigmoid: a sequential scale, not a diverging one
    cmap, zmid = ("viridis", None) if positive else ("coolwarm", 0.0)
    full_fig = viz.visualize_relative_position_bias(
        arrays.full_bias,
        title=f"Full bias B, head {head}" + (" (token 0 = class token)" if fam.class_token else ""),
        cmap=cmap, window_size=c.full_win, seq_len=c.seq)
    seen = (viz.query_centric_figure(arrays.bias, query, c.grid, cmap=cmap, zmid=zmid,
                                     title=f"Bias seen by query {query}, head {head}") if fam.is_2d() else
            figure_compare.query_bars_figure({"bias": arrays.bias[query]}, query, value_label="bias",
                                             title=f"Bias seen by query {query}, head {head}"))
    if fam.is_2d():
        figure_select.add_cell_picker(seen, note="click: make this patch the query")
    ui.side_by_side((full_fig, "be_bias"), (seen, "be_query_bias", interact.on_query("be_query_bias")))


def full_matrices(c: BiasControls, attention: tuple[np.ndarray, np.ndarray]) -> None:
    """"Full attention matrices": every query's attention with and without the bias (``attention``, from
    :func:`attention_section`), on one colour scale unless the toggle says per panel."""
    st.subheader("Full attention matrices")
    with_full, without_full = attention
    full = [(viz.visualize_attention_weights(attn, title=f"Attention {what} bias", window_size=c.full_win,
                                             seq_len=c.seq), f"be_full_{what}")
            for attn, what in ((with_full, "with"), (without_full, "without"))]
    figure_compare.share_color_axis([f for f, _ in full], per_panel=c.per_panel)
    ui.side_by_side(*full)
