"""Page 2: a bias table, the bias it spreads over the window, and what it does to attention."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_support import interact, links, rope_ui, state, ui
from app_support.frame import page_frame
from relpos import captions, diagnostics, explore, geometry, presets
from relpos.experiments import figure_compare, figure_select, stepthrough, stepthrough_figure
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES

page_frame("Bias explorer", ":material/tune:")
interact.prose(rope_ui.INTRO if rope_ui.chosen() else  # the rotation's own opening, else the bias's:
    "A relative position bias is a small table, one value per offset and head; gathered through the "
    "index it becomes an N×N bias added to the attention logits. Set the table by hand with a "
    "**preset** and see what it does to attention on a fixed input. **Try first:** preset *locality* "
    "as it opens, then slide α down to 0 and up to 5 and watch each query's attention spread out and "
    "gather around itself."
)
if not interact.presenting() and not rope_ui.chosen():  # the step-through carries it on screen; RoPE has its own
    st.latex(r"\mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + B\right),\quad "
             r"B^{(h)}_{ij} = \mathrm{table}\big[\mathrm{index}[i,j],\, h\big],\quad "
             r"\text{locality: } \mathrm{table}[r, h] = -\alpha\,\lVert(\Delta y, \Delta x)_r\rVert")
# The page opens on the plain learned 2D table (Swin's).
DEFAULT = next(n for n, f in FAMILIES.items() if f.is_2d() and f.learned and not f.class_token)

# One family's widgets are not drawn while another is chosen: keep their values across a switch.
ui.keep_values(["be_h", "be_w", "be_len", "be_preset", "be_alpha", "be_init_std", *ui.option_keys("be")])
# Four columns of controls; in presenter mode one row of the four a lecture moves, the rest behind a button.
slots = interact.control_slots([("kind", "size", "options"), ("preset", "alpha", "heads"),
                                ("init_std", "seed", "content"), ("head", "query", "scale")],
                               main=("preset", "alpha", "head", "query"))
with slots["kind"]:
    rotary = rope_ui.position_choice()  # a bias family (below) or a rotary embedding (app_support/rope_ui.py)
if rotary:
    rope_ui.bias_explorer(slots)
    links.lesson_nav("pages/2_bias_explorer.py")
    st.stop()
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
no_preset = "" if fam.learned else f"{fam.label} has no table to edit, so the presets do not apply."
with slots["preset"]:
    if fam.learned:
        preset = st.selectbox("Table preset", presets.BIAS_PRESETS, index=3, key="be_preset",
                              help="init: the module's truncated-normal init (std init_std); "
                              "zeros; random: normal with std α; locality: −α·distance in every head; "
                              "alibi: −α·m_h·distance with ALiBi's per-head slopes m_h.")
    else:  # no table to edit: a disabled stand-in that says so
        st.selectbox("Table preset", ["none (no table to edit)"], key="be_preset_none", disabled=True, help=no_preset)
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
with slots["seed"]:
    seed = int(st.number_input("Seed", 0, 10_000, 0, key="be_seed",
                               help="Fixes the random numbers: the same seed draws the same table and input."))
with slots["content"]:
    content = st.slider("Content strength (fixed input)", 0.0, 3.0, 1.0, 0.1, key="be_content",
                        help="Std of the fixed random queries and keys; 0 leaves only the bias.")
with slots["head"]:
    head = ui.head_slider("Head", heads, key="be_head",
                          help="Which head's column of the table to show (the sidebar's head, when it has one).")
with slots["query"]:
    query = interact.query_slider("Query token", grid, key="be_query",
                                  help="Which token asks the question; its row of the bias and of attention is "
                                  "drawn. Or click a patch on any map of one query.")
with slots["scale"]:
    per_panel = ui.scale_toggle("be_per_panel")

cls_note = " Token 0 is the class token; the maps over the window leave it out." if fam.class_token else ""
if not interact.presenting():
    st.caption(f"**{kind}** · {fam.label}: {fam.description} {no_preset}{cls_note}")
interact.selection_line(grid, query, widget_key="be_clear")
first = interact.first_section()  # presenter mode: the two maps and the step-through right here
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
    table_fig = viz.visualize_bias_table(table, window_size=win, seq_len=seq, bias_type=kind,
                                         max_distance=options.get("max_distance"),
                                         title=f"{kind} table ({preset if fam.learned else 'computed'}), "
                                               f"{what} × {heads} heads")
    if len(figure_select.heatmap_panels(table_fig)) == heads > 1:  # small multiples: a click picks the head
        figure_select.add_cell_picker(table_fig, note="click: show this head")
        figure_select.mark_panel(table_fig, head)
    ui.plotly(table_fig, key="be_table", on_select=interact.on_head("be_table", "be_head"))
    if fam.extra_rows:
        st.caption("The class token has no position: its rows are one value per head each, "
                   "not part of the offset grid.")
        st.dataframe(pd.DataFrame(table[-fam.extra_rows:].T, columns=list(geometry.CLS_ROW_NAMES)).rename_axis("head"),
                     key="be_cls_rows")
    if "num_buckets" in options:
        st.caption("Which bucket each offset j − i falls in (the table's x axis is this curve's y axis):")
        ui.plotly(viz.t5_bucket_map_figure(options["num_buckets"], options["max_distance"], seq_len=seq),
                  key="be_t5_map")
    with interact.main_maps(first):
        interact.heading(f"What it does to attention on a fixed input · head {head}")
        with_full, without_full = state.demo_attention(*args, float(content), opts)
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
                figure_compare.share_color_axis([f for f, _ in pair], per_panel=per_panel)
                for fig, _key in pair:
                    figure_select.add_cell_picker(fig, note="click: make this patch the query")
                ui.side_by_side(*[(fig, key, interact.on_query(key)) for fig, key in pair])
            else:  # a sequence: bars over the key, both rows on one axis
                ui.plotly(figure_compare.query_bars_figure({"with bias": with_b[query], "without bias": without[query]},
                                                           query, title=f"Query {query}: attention over the keys"),
                          key="be_attn_bars", on_select=interact.on_query("be_attn_bars"))
        interact.heading(f"The formula, one step at a time · query {query}, head {head}")
        step = st.radio("Step", (1, 2, 3), index=2, key="be_step", horizontal=True,
                        format_func={1: "1 · the logits QKᵀ/√d", 2: "2 · + the bias B", 3: "3 · the softmax"}.get,
                        help="Build the formula up: the content logits of the fixed input alone, then the bias "
                        "added to them, then the softmax that turns the sum into attention weights.")
        steps = state.step_through(kind, size, heads, float(init_std), seed, preset, float(alpha), head, query,
                                   float(content), opts)
        animate = step == 3 and preset in stepthrough.ALPHA_PRESETS and geometry.num_tokens(grid) <= 256
        sweep = state.alpha_sweep(kind, size, heads, float(init_std), seed, preset, head, query, float(content),
                                  opts) if animate else None
        ui.plotly(stepthrough_figure.step_through_figure(steps, step, sweep=sweep, alpha=float(alpha)), key="be_steps")
        if steps["class_token"] is not None:
            st.caption(f"The class token (key 0) takes {steps['class_token']['weights']:.1%} of this query's "
                       "attention; the maps over the window leave it out.")
        interact.prose(
            "Left to right: what the random content alone says (QKᵀ/√d), the bias this query adds to each key, "
            "their sum, and the softmax of the sum: the attention map above. The three logit panels share one "
            "colour scale, so a colour means the same number in all three."
            + (" Press **▶ play** to watch α go from 0 to 5 (the scales hold still while it plays)." if sweep else ""))
    st.subheader(f"The bias it spreads over the window · head {head}")
    positive = bool((full_bias > 0).all())  # e.g. cpb's 16·sigmoid: a sequential scale, not a diverging one
    cmap, zmid = ("viridis", None) if positive else ("coolwarm", 0.0)
    full_fig = viz.visualize_relative_position_bias(
        full_bias, title=f"Full bias B, head {head}" + (" (token 0 = class token)" if fam.class_token else ""),
        cmap=cmap, window_size=full_win, seq_len=seq)
    seen = (viz.query_centric_figure(bias, query, grid, cmap=cmap, zmid=zmid,
                                     title=f"Bias seen by query {query}, head {head}") if fam.is_2d() else
            figure_compare.query_bars_figure({"bias": bias[query]}, query, value_label="bias",
                                             title=f"Bias seen by query {query}, head {head}"))
    if fam.is_2d():
        figure_select.add_cell_picker(seen, note="click: make this patch the query")
    ui.side_by_side((full_fig, "be_bias"), (seen, "be_query_bias", interact.on_query("be_query_bias")))
    st.subheader("Full attention matrices")
    full = [(viz.visualize_attention_weights(attn, title=f"Attention {what} bias", window_size=full_win,
                                             seq_len=seq), f"be_full_{what}")
            for attn, what in ((with_full, "with"), (without_full, "without"))]
    figure_compare.share_color_axis([f for f, _ in full], per_panel=per_panel)
    ui.side_by_side(*full)
links.lesson_nav("pages/2_bias_explorer.py")
