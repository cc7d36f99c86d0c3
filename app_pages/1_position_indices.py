"""Page 1: how every (query, key) pair gets a row of the bias table."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_pages import _shared as sh
from relpos import explore
from relpos.experiments import visualize as viz

st.title("Position indices")
st.markdown(
    "Each cell `(i, j)` of this matrix says which row of the bias table query *i* reads for key *j*: "
    "pairs with the same offset share a row, so the matrix is constant along diagonals (and, in 2D, "
    "made of repeated blocks). **Try first:** a 3×3 window, then move the query slider and watch its "
    "row light up the window around it; hover a cell to decode it."
)


@st.cache_data(max_entries=32, show_spinner=False)
def index_for(kind: str, size: tuple[int, int] | int) -> np.ndarray:
    return explore.index_matrix(kind, size)


c1, c2, c3 = st.columns([1, 1, 1])
with c1:
    kind = st.radio("Positions", ["2d", "1d"], key="pi_kind", horizontal=True,
                    format_func=lambda k: {"2d": "2D window", "1d": "1D sequence"}[k])
with c2:
    if kind == "2d":
        h = st.number_input("Window height h", 1, explore.MAX_WINDOW_SIDE, 3, key="pi_h")
        w = st.number_input("Window width w", 1, explore.MAX_WINDOW_SIDE, 3, key="pi_w")
        size: tuple[int, int] | int = (int(h), int(w))
        grid = size
    else:
        length = st.number_input("Sequence length L", 1, explore.MAX_SEQ_LEN, 8, key="pi_len")
        size = int(length)
        grid = (1, size)
n = explore.num_tokens(kind, size)
sh.clamp_state("pi_query", 0, n - 1)
sh.clamp_state("pi_key", 0, n - 1)
with c3:
    query = st.slider("Query token i", 0, n - 1, explore.center_token(grid), key="pi_query") if n > 1 else 0
    key_tok = st.slider("Key token j", 0, n - 1, 0, key="pi_key") if n > 1 else 0

with sh.guard("draw the index", "choose a smaller window or sequence"):
    index = index_for(kind, size)
    cell = explore.decode_cell(kind, size, query, key_tok)
    st.latex(explore.index_formula_latex(cell))
    if kind == "2d":
        st.caption(
            f"query i = {query} at (y, x) = {cell['query']}, key j = {key_tok} at {cell['key']}, "
            f"offset (Δy, Δx) = {cell['offset']} → table row {cell['index']} of "
            f"{(2 * grid[0] - 1) * (2 * grid[1] - 1)}."
        )
    else:
        st.caption(f"offset i − j = {cell['offset']} → table row {cell['index']} of {2 * size - 1}.")
    left, right = st.columns([3, 2])
    win = size if kind == "2d" else None
    seq = size if kind == "1d" else None
    with left:
        sh.plotly(viz.visualize_position_index(index, window_size=win, seq_len=seq), key="pi_matrix")
    with right:
        sh.plotly(
            viz.query_centric_figure(index.astype(np.float32), query, grid,
                                     title=f"Row of query {query} on the window"),
            key="pi_query_map",
        )
