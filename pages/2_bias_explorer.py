"""Page 2: a bias table, the bias it spreads over the window, and what it does to attention."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_support import state, ui
from app_support.frame import page_frame
from relpos import diagnostics, explore, geometry, presets
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES

page_frame("Bias explorer", ":material/tune:")
st.markdown(
    "A relative position bias is a small table, one value per offset and head; gathered through the "
    "index it becomes an N×N bias added to the attention logits. Set the table by hand with a "
    "**preset** and see what it does to attention on a fixed input. **Try first:** preset *locality* "
    "as it opens, then slide α down to 0 and up to 5 and watch each query's attention spread out and "
    "gather around itself."
)
st.latex(r"\mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + B\right),\quad "
         r"B^{(h)}_{ij} = \mathrm{table}\big[\mathrm{index}[i,j],\, h\big],\quad "
         r"\text{locality: } \mathrm{table}[r, h] = -\alpha\,\lVert(\Delta y, \Delta x)_r\rVert")
# The page opens on the plain learned 2D table (Swin's).
DEFAULT = next(n for n, f in FAMILIES.items() if f.is_2d() and f.learned and not f.class_token)

# One family's widgets are not drawn while another is chosen: keep their values across a switch.
ui.keep_values(["be_h", "be_w", "be_len", "be_preset", "be_alpha", "be_init_std", *ui.option_keys("be")])
c1, c2, c3, c4 = st.columns(4)
with c1:
    kind = st.selectbox("Bias type", explore.EXPLORE_BIAS_TYPES, index=explore.EXPLORE_BIAS_TYPES.index(DEFAULT),
                        key="be_kind", format_func=lambda k: f"{k} · {FAMILIES[k].label}",
                        help="The bias families of relpos.BIAS_TYPES; each one's own options appear below.")
    fam = FAMILIES[kind]
    size = ui.size_inputs(fam.is_2d(), "be", side=7, length=16)
    grid = geometry.token_grid(size)
    options = ui.family_options(kind, "be")
no_preset = "" if fam.learned else f"{fam.label} has no table to edit, so the presets do not apply."
with c2:
    if fam.learned:
        preset = st.selectbox("Table preset", presets.BIAS_PRESETS, index=3, key="be_preset",
                              help="init: the module's truncated-normal init (std init_std); "
                              "zeros; random: normal with std α; locality: −α·distance in every head; "
                              "alibi: −α·m_h·distance with ALiBi's per-head slopes m_h.")
    else:  # no table to edit: a disabled stand-in that says so
        st.selectbox("Table preset", ["none (no table to edit)"], key="be_preset_none", disabled=True, help=no_preset)
        preset = "init"
    alpha = st.slider("Strength α", 0.0, 5.0, 2.0, 0.1, key="be_alpha", disabled=not fam.learned)
    heads = int(st.number_input("Heads", 1, explore.MAX_HEADS, 4, key="be_heads"))
with c3:
    init_std = st.number_input("init_std", 0.0, 2.0, 0.02, 0.01, format="%.3f", key="be_init_std",
                               disabled=not fam.learned)
    seed = int(st.number_input("Seed", 0, 10_000, 0, key="be_seed"))
    content = st.slider("Content strength (fixed input)", 0.0, 3.0, 1.0, 0.1, key="be_content",
                        help="Std of the fixed random queries and keys; 0 leaves only the bias.")
with c4:
    head = ui.index_slider("Head", heads, 0, key="be_head")
    query = ui.index_slider("Query token", geometry.num_tokens(grid), geometry.center_token(grid), key="be_query")

cls_note = " Token 0 is the class token; the maps over the window leave it out." if fam.class_token else ""
st.caption(f"**{kind}** · {fam.label}: {fam.description} {no_preset}{cls_note}")
win, seq = (size, None) if isinstance(size, tuple) else (None, size)
full_win = None if fam.class_token else win  # with a class token the full matrices are not a window
args = (kind, size, heads, float(init_std), seed, preset, float(alpha), head)
opts = tuple(sorted(options.items()))
with ui.guard("compute the bias", "choose a smaller window, fewer heads, or another preset"):
    data = state.bias_arrays(*args, opts)
    table, full_bias = data["table"], data["bias"][0]  # (T, H), (N, N) of the chosen head (N+1 with a class token)
    bias = geometry.strip_class_token(full_bias, grid)  # (h*w, h*w): the patch tokens only
    st.subheader("The table, per head")
    rows = "buckets" if "num_buckets" in options else "offsets"
    what = f"{table.shape[0] - fam.extra_rows} {rows}" + (
        f" + {fam.extra_rows} class-token rows" if fam.extra_rows else "")
    ui.plotly(viz.visualize_bias_table(table, window_size=win, seq_len=seq, bias_type=kind,
                                       max_distance=options.get("max_distance"),
                                       title=f"{kind} table ({preset if fam.learned else 'computed'}), "
                                             f"{what} × {heads} heads"), key="be_table")
    if fam.extra_rows:
        st.caption("The class token has no position: its rows are one value per head each, "
                   "not part of the offset grid.")
        st.dataframe(pd.DataFrame(table[-fam.extra_rows:].T, columns=list(geometry.CLS_ROW_NAMES)).rename_axis("head"),
                     key="be_cls_rows")
    if "num_buckets" in options:
        st.caption("Which bucket each offset j − i falls in (the table's x axis is this curve's y axis):")
        ui.plotly(viz.t5_bucket_map_figure(options["num_buckets"], options["max_distance"], seq_len=seq),
                  key="be_t5_map")
    st.subheader(f"What it does to attention on a fixed input · head {head}")
    with_full, without_full = state.demo_attention(*args, float(content), opts)
    with_b, without = geometry.strip_class_token(with_full, grid), geometry.strip_class_token(without_full, grid)
    d_with = float(diagnostics.mean_attention_distance(with_b, grid)[0])
    d_without = float(diagnostics.mean_attention_distance(without, grid)[0])
    ui.reach_metrics([("Reach with bias", d_with, d_without), ("Reach without bias", d_without, None)], "tokens",
                     "Same random queries and keys in both maps; only the bias differs. *Reach* is the mean "
                     "attention distance: how far, on average, each query's attention goes"
                     + (" (over the patch tokens; the class token's share is left out)." if fam.class_token else "."))
    ui.side_by_side((viz.query_centric_figure(with_b, query, grid, title=f"Query {query}: with bias"), "be_attn_with"),
                    (viz.query_centric_figure(without, query, grid, title=f"Query {query}: without bias"),
                     "be_attn_without"))
    st.subheader(f"The bias it spreads over the window · head {head}")
    positive = bool((full_bias > 0).all())  # e.g. cpb's 16·sigmoid: a sequential scale, not a diverging one
    cmap, zmid = ("viridis", None) if positive else ("coolwarm", 0.0)
    ui.side_by_side(
        (viz.visualize_relative_position_bias(
            full_bias, title=f"Full bias B, head {head}" + (" (token 0 = class token)" if fam.class_token else ""),
            cmap=cmap, window_size=full_win, seq_len=seq), "be_bias"),
        (viz.query_centric_figure(bias, query, grid, cmap=cmap, zmid=zmid,
                                  title=f"Bias seen by query {query}, head {head}"), "be_query_bias"))
    st.subheader("Full attention matrices")
    ui.side_by_side(*[(viz.visualize_attention_weights(attn, title=f"Attention {what} bias", window_size=full_win,
                                                       seq_len=seq), f"be_full_{what}")
                      for attn, what in ((with_full, "with"), (without_full, "without"))])
