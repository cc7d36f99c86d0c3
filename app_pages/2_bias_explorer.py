"""Page 2: a bias table, the bias it spreads over the window, and what it does to attention."""

from __future__ import annotations

import numpy as np
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


# Cached per head: at the largest setting (32x32 window, 16 heads) the full bias is 64 MB, one
# head's 4 MB, and st.cache_data copies what it returns on every hit.
@st.cache_data(max_entries=16, show_spinner=False)
def bias_data(kind, size, heads, init_std, seed, preset, alpha, head) -> dict[str, np.ndarray]:
    rpb = explore.make_bias(kind, size, heads, init_std=init_std, seed=seed, preset=preset, alpha=alpha)
    arrays = explore.bias_arrays(rpb, head=head)
    return {"table": arrays["table"], "bias": arrays["bias"]}


@st.cache_data(max_entries=16, show_spinner=False)
def demo_data(kind, size, heads, init_std, seed, preset, alpha, head, content_scale):
    bias = bias_data(kind, size, heads, init_std, seed, preset, alpha, head)["bias"]  # (1, N, N)
    with_b, without = explore.demo_attention(bias, seed=seed, content_scale=content_scale)
    return with_b[0], without[0]


c1, c2, c3, c4 = st.columns(4)
with c1:
    kind = st.radio("Bias type", ["2d", "1d"], key="be_kind", horizontal=True)
    if kind == "2d":
        h = st.number_input("Window height", 1, explore.MAX_WINDOW_SIDE, 7, key="be_h")
        w = st.number_input("Window width", 1, explore.MAX_WINDOW_SIDE, 7, key="be_w")
        size: tuple[int, int] | int = (int(h), int(w))
        grid = size
    else:
        size = int(st.number_input("Sequence length", 1, explore.MAX_SEQ_LEN, 16, key="be_len"))
        grid = (1, size)
with c2:
    preset = st.selectbox("Table preset", explore.BIAS_PRESETS, index=3, key="be_preset",
                          help="init: the module's truncated-normal init (std init_std); zeros; "
                          "random: normal with std α; locality: −α·distance in every head; "
                          "alibi: −α·m_h·distance with ALiBi's per-head slopes m_h.")
    alpha = st.slider("Strength α", 0.0, 5.0, 2.0, 0.1, key="be_alpha")
    heads = int(st.number_input("Heads", 1, explore.MAX_HEADS, 4, key="be_heads"))
with c3:
    init_std = st.number_input("init_std", 0.0, 2.0, 0.02, 0.01, format="%.3f", key="be_init_std")
    seed = int(st.number_input("Seed", 0, 10_000, 0, key="be_seed"))
    content = st.slider("Content strength (fixed input)", 0.0, 3.0, 1.0, 0.1, key="be_content",
                        help="Std of the fixed random queries and keys; 0 leaves only the bias.")
n = explore.num_tokens(kind, size)
sh.clamp_state("be_head", 0, heads - 1)
sh.clamp_state("be_query", 0, n - 1)
with c4:
    head = st.slider("Head", 0, heads - 1, 0, key="be_head") if heads > 1 else 0
    query = st.slider("Query token", 0, n - 1, explore.center_token(grid), key="be_query") if n > 1 else 0

win = size if kind == "2d" else None
seq = size if kind == "1d" else None
with sh.guard("compute the bias", "choose a smaller window, fewer heads, or another preset"):
    data = bias_data(kind, size, heads, float(init_std), seed, preset, float(alpha), head)
    table, bias = data["table"], data["bias"][0]  # (T, H), (N, N) of the chosen head
    st.subheader("The table, per head")
    sh.plotly(viz.visualize_bias_table(table, window_size=win, seq_len=seq,
                                       title=f"Bias table ({preset}), {table.shape[0]} offsets × {heads} heads"),
              key="be_table")
    st.subheader(f"What it does to attention on a fixed input · head {head}")
    with_b, without = demo_data(kind, size, heads, float(init_std), seed, preset, float(alpha), head,
                                float(content))
    d_with = float(explore.mean_attention_distance(with_b, grid)[0])
    d_without = float(explore.mean_attention_distance(without, grid)[0])
    m1, m2, m3 = st.columns([1, 1, 2])
    m1.metric("Reach with bias", f"{d_with:.2f} tokens", f"{d_with - d_without:+.2f}", delta_color="off")
    m2.metric("Reach without bias", f"{d_without:.2f} tokens")
    m3.caption("Same random queries and keys in both maps; only the bias differs. *Reach* is the mean "
               "attention distance: how far, on average, each query's attention goes.")
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
        sh.plotly(viz.visualize_relative_position_bias(bias, title=f"Full bias B, head {head}",
                                                        window_size=win, seq_len=seq),
                  key="be_bias")
    with right:
        sh.plotly(viz.query_centric_figure(bias, query, grid, cmap="coolwarm", zmid=0.0,
                                           title=f"Bias seen by query {query}, head {head}"),
                  key="be_query_bias")

    st.subheader("Full attention matrices")
    a, b = st.columns(2)
    with a:
        sh.plotly(viz.visualize_attention_weights(with_b, title="Attention with bias", window_size=win,
                                                  seq_len=seq),
                  key="be_full_with")
    with b:
        sh.plotly(viz.visualize_attention_weights(without, title="Attention without bias", window_size=win,
                                                  seq_len=seq),
                  key="be_full_without")
