"""Page 2: a bias table, the bias it spreads over the window, and what it does to attention."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app_pages import _shared as sh
from relpos import explore
from relpos.experiments import visualize as viz

st.title("Bias explorer")
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


FAMILY_HELP = {
    "2d": "a learned table over the (2h−1)×(2w−1) offsets of an h×w window (Swin).",
    "1d": "a learned table over the 2L−1 offsets of a sequence of L tokens.",
    "2d_cls": "the 2D table plus 3 class-token rows (BEiT): cls→token, token→cls, cls→cls. Token 0 is the "
              "class token, so the bias covers h·w + 1 tokens; the maps over the window leave it out.",
    "t5": "a learned table over log-spaced buckets of the offset j − i (T5): nearby offsets get a bucket "
          "each, far ones share buckets, beyond max_distance all share the last one.",
    "alibi": "no parameters: −m_h · distance with a fixed slope m_h per head (ALiBi), here on a 2D window.",
    "cpb": "Swin V2's continuous position bias: a small MLP maps log-spaced offsets to 16·sigmoid(·), one "
           "value per offset and head (drawn: the MLP's output grid at its seeded init).",
}
NO_PRESET = {
    "alibi": "ALiBi has no table to edit: its bias is fixed by the head slopes, so presets do not apply.",
    "cpb": "cpb has no table to edit: its table is computed by its MLP (16·sigmoid(MLP(log offsets))), so "
           "presets do not apply; the seed changes the MLP's init.",
}


# Cached per head: at the largest setting (32x32 window, 16 heads) the full bias is 64 MB, one
# head's 4 MB, and st.cache_data copies what it returns on every hit.
@st.cache_data(max_entries=16, show_spinner=False)
def bias_data(kind, size, heads, init_std, seed, preset, alpha, head, options=()) -> dict[str, np.ndarray]:
    rpb = explore.make_bias(kind, size, heads, init_std=init_std, seed=seed, preset=preset, alpha=alpha,
                            **dict(options))
    arrays = explore.bias_arrays(rpb, head=head)
    return {"table": arrays["table"], "bias": arrays["bias"]}


@st.cache_data(max_entries=16, show_spinner=False)
def demo_data(kind, size, heads, init_std, seed, preset, alpha, head, content_scale, options=()):
    bias = bias_data(kind, size, heads, init_std, seed, preset, alpha, head, options)["bias"]  # (1, N, N)
    with_b, without = explore.demo_attention(bias, seed=seed, content_scale=content_scale)
    return with_b[0], without[0]


# Widgets of one family are not drawn while another is chosen, and Streamlit forgets the values of
# widgets it did not draw: re-assigning them keeps a window or option across a family switch.
for _key in ("be_h", "be_w", "be_len", "be_buckets", "be_maxdist", "be_alibi_dist", "be_cpb_hidden",
             "be_preset", "be_alpha", "be_init_std"):
    if _key in st.session_state:
        st.session_state[_key] = st.session_state[_key]

c1, c2, c3, c4 = st.columns(4)
options: dict = {}
with c1:
    kind = st.selectbox("Bias type", explore.EXPLORE_BIAS_TYPES, index=explore.EXPLORE_BIAS_TYPES.index("2d"),
                        key="be_kind",
                        help="The bias families of relpos.BIAS_TYPES; each one's own options appear below.")
    if kind in ("1d", "t5"):
        size: tuple[int, int] | int = int(st.number_input("Sequence length", 1, explore.MAX_SEQ_LEN, 16,
                                                          key="be_len"))
    else:
        h = st.number_input("Window height", 1, explore.MAX_WINDOW_SIDE, 7, key="be_h")
        w = st.number_input("Window width", 1, explore.MAX_WINDOW_SIDE, 7, key="be_w")
        size = (int(h), int(w))
    grid = explore.family_grid(kind, size)
    if kind == "t5":
        nb = int(st.number_input("num_buckets", 4, 128, 32, key="be_buckets",
                                 help="Total buckets; half for keys before the query, half for after."))
        sh.clamp_state("be_maxdist", nb // 4 + 1, 4096)
        md = int(st.number_input("max_distance", nb // 4 + 1, 4096, max(128, nb // 4 + 1), key="be_maxdist",
                                 help="Offsets this far or farther share the last bucket of their direction."))
        options = {"num_buckets": nb, "max_distance": md}
    elif kind == "alibi":
        options = {"alibi_distance": st.radio("Distance", ["euclidean", "manhattan"], key="be_alibi_dist",
                                              horizontal=True)}
    elif kind == "cpb":
        options = {"cpb_hidden_dim": int(st.select_slider("MLP hidden width", [16, 32, 64, 128, 256, 512],
                                                          512, key="be_cpb_hidden"))}
learned = kind in explore.LEARNED_BIAS_TYPES
with c2:
    if learned:
        preset = st.selectbox("Table preset", explore.BIAS_PRESETS, index=3, key="be_preset",
                              help="init: the module's truncated-normal init (std init_std); "
                              "zeros; random: normal with std α; locality: −α·distance in every head; "
                              "alibi: −α·m_h·distance with ALiBi's per-head slopes m_h.")
    else:  # no table to edit: a disabled stand-in that says so
        st.selectbox("Table preset", ["none (no table to edit)"], key="be_preset_none", disabled=True,
                     help=NO_PRESET[kind])
        preset = "init"
    alpha = st.slider("Strength α", 0.0, 5.0, 2.0, 0.1, key="be_alpha", disabled=not learned)
    heads = int(st.number_input("Heads", 1, explore.MAX_HEADS, 4, key="be_heads"))
with c3:
    init_std = st.number_input("init_std", 0.0, 2.0, 0.02, 0.01, format="%.3f", key="be_init_std",
                               disabled=not learned)
    seed = int(st.number_input("Seed", 0, 10_000, 0, key="be_seed"))
    content = st.slider("Content strength (fixed input)", 0.0, 3.0, 1.0, 0.1, key="be_content",
                        help="Std of the fixed random queries and keys; 0 leaves only the bias.")
n = grid[0] * grid[1]  # patch tokens (the class token of 2d_cls is not on the grid)
sh.clamp_state("be_head", 0, heads - 1)
sh.clamp_state("be_query", 0, n - 1)
with c4:
    head = st.slider("Head", 0, heads - 1, 0, key="be_head") if heads > 1 else 0
    query = st.slider("Query token", 0, n - 1, explore.center_token(grid), key="be_query") if n > 1 else 0

st.caption(f"**{kind}**: {FAMILY_HELP[kind]}" + (f" {NO_PRESET[kind]}" if kind in NO_PRESET else ""))
win = size if isinstance(size, tuple) else None
seq = size if not isinstance(size, tuple) else None
opts = tuple(sorted(options.items()))
with sh.guard("compute the bias", "choose a smaller window, fewer heads, or another preset"):
    data = bias_data(kind, size, heads, float(init_std), seed, preset, float(alpha), head, opts)
    table, full_bias = data["table"], data["bias"][0]  # (T, H), (N, N) of the chosen head (N+1 for 2d_cls)
    bias = explore.grid_part(full_bias, grid)  # (h*w, h*w): the patch tokens only
    st.subheader("The table, per head")
    what = {"t5": f"{table.shape[0]} buckets", "cpb": f"MLP output over {table.shape[0]} offsets",
            "2d_cls": f"{table.shape[0] - 3} offsets + 3 class-token rows"}.get(kind, f"{table.shape[0]} offsets")
    label = preset if learned else ("fixed slopes" if kind == "alibi" else "seeded MLP")
    sh.plotly(viz.visualize_bias_table(table, window_size=win, seq_len=seq, bias_type=kind,
                                       max_distance=options.get("max_distance"),
                                       title=f"{kind} table ({label}), {what} × {heads} heads"),
              key="be_table")
    if kind == "2d_cls":
        st.caption("The class token has no position: its three rows are one value per head each, "
                   "not part of the offset grid.")
        st.dataframe(pd.DataFrame(table[-3:].T, columns=list(viz.CLS_ROW_NAMES)).rename_axis("head"),
                     key="be_cls_rows")
    if kind == "t5":
        st.caption("Which bucket each offset j − i falls in (the table's x axis is this curve's y axis):")
        sh.plotly(viz.t5_bucket_map_figure(options["num_buckets"], options["max_distance"], seq_len=seq),
                  key="be_t5_map")
    st.subheader(f"What it does to attention on a fixed input · head {head}")
    with_full, without_full = demo_data(kind, size, heads, float(init_std), seed, preset, float(alpha), head,
                                        float(content), opts)
    with_b, without = explore.grid_part(with_full, grid), explore.grid_part(without_full, grid)
    d_with = float(explore.mean_attention_distance(with_b, grid)[0])
    d_without = float(explore.mean_attention_distance(without, grid)[0])
    m1, m2, m3 = st.columns([1, 1, 2])
    m1.metric("Reach with bias", f"{d_with:.2f} tokens", f"{d_with - d_without:+.2f}", delta_color="off")
    m2.metric("Reach without bias", f"{d_without:.2f} tokens")
    m3.caption("Same random queries and keys in both maps; only the bias differs. *Reach* is the mean "
               "attention distance: how far, on average, each query's attention goes"
               + (" (over the patch tokens; the class token's share is left out)." if kind == "2d_cls" else "."))
    a, b = st.columns(2)
    with a:
        sh.plotly(viz.query_centric_figure(with_b, query, grid, title=f"Query {query}: with bias"),
                  key="be_attn_with")
    with b:
        sh.plotly(viz.query_centric_figure(without, query, grid, title=f"Query {query}: without bias"),
                  key="be_attn_without")
    st.subheader(f"The bias it spreads over the window · head {head}")
    left, right = st.columns(2)
    with left:
        cls_note = " (token 0 = class token)" if kind == "2d_cls" else ""
        sh.plotly(viz.visualize_relative_position_bias(full_bias, title=f"Full bias B, head {head}{cls_note}",
                                                        cmap="viridis" if kind == "cpb" else "coolwarm",
                                                        window_size=win if kind != "2d_cls" else None,
                                                        seq_len=seq),
                  key="be_bias")
    with right:
        sh.plotly(viz.query_centric_figure(bias, query, grid, cmap="viridis" if kind == "cpb" else "coolwarm",
                                           zmid=None if kind == "cpb" else 0.0,
                                           title=f"Bias seen by query {query}, head {head}"),
                  key="be_query_bias")

    st.subheader("Full attention matrices")
    a, b = st.columns(2)
    full_win = win if kind != "2d_cls" else None
    with a:
        sh.plotly(viz.visualize_attention_weights(with_full, title="Attention with bias", window_size=full_win,
                                                  seq_len=seq),
                  key="be_full_with")
    with b:
        sh.plotly(viz.visualize_attention_weights(without_full, title="Attention without bias",
                                                  window_size=full_win, seq_len=seq),
                  key="be_full_without")
