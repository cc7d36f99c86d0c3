"""Page 1: how every (query, key) pair gets a row of the bias table."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_support import state, ui
from app_support.frame import page_frame
from relpos import explore, geometry
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES

page_frame("Position indices", ":material/grid_on:")
st.markdown(
    "Each cell `(i, j)` of this matrix says which row of the bias table query *i* reads for key *j*: "
    "pairs with the same offset share a row, so the matrix is constant along diagonals (and, in 2D, "
    "made of repeated blocks). **Try first:** a 3×3 window, then move the query slider and watch its "
    "row light up the window around it; hover a cell to decode it."
)

c1, c2, c3 = st.columns([1, 1, 1])
with c1:
    kind = st.radio("Positions", explore.INDEX_BIAS_TYPES, key="pi_kind", horizontal=True,
                    format_func=lambda k: "2D window" if FAMILIES[k].is_2d() else "1D sequence")
    two_d = FAMILIES[kind].is_2d()
with c2:
    size = ui.size_inputs(two_d, "pi", side=3, length=8)
grid, n = geometry.token_grid(size), geometry.num_tokens(size)
with c3:
    query = ui.index_slider("Query token i", n, geometry.center_token(grid), key="pi_query")
    key_tok = ui.index_slider("Key token j", n, 0, key="pi_key")

with ui.guard("draw the index", "choose a smaller window or sequence"):
    index = state.index_matrix(size)
    cell = geometry.decode_cell(size, query, key_tok)
    st.latex(explore.index_formula_latex(cell))
    if two_d:
        st.caption(
            f"query i = {query} at (y, x) = {cell['query']}, key j = {key_tok} at {cell['key']}, "
            f"offset (Δy, Δx) = {cell['offset']} → table row {cell['index']} of {geometry.num_table_rows(size)}."
        )
    else:
        st.caption(f"offset i − j = {cell['offset']} → table row {cell['index']} of {geometry.num_table_rows(size)}.")
    win, seq = (size, None) if two_d else (None, size)
    ui.side_by_side((viz.visualize_position_index(index, window_size=win, seq_len=seq), "pi_matrix"),
                    (viz.query_centric_figure(index.astype(np.float32), query, grid,
                                              title=f"Row of query {query} on the window"), "pi_query_map"),
                    widths=[3, 2])
