"""Page 1: how every (query, key) pair gets a row of the bias table."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_support import interact, links, state, ui
from app_support.frame import page_frame
from relpos import explore, geometry
from relpos.experiments import figure_compare, figure_select
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES

page_frame("Position indices")
interact.prose(
    "Each cell `(i, j)` of this matrix says which row of the bias table query *i* reads for key *j*: "
    "pairs with the same offset share a row, so the matrix is constant along diagonals (and, in 2D, "
    "made of repeated blocks). **Try first:** a 3×3 window, then move the query slider and watch its "
    "row light up the window around it; hover a cell to decode it, click one to choose its query i and key j."
)

c1, c2, c3, c4 = st.columns([1, 1.2, 1, 1])  # one row of controls
with c1:
    kind = st.radio("Positions", explore.INDEX_BIAS_TYPES, key="pi_kind", horizontal=True,
                    format_func=lambda k: "2D window" if FAMILIES[k].is_2d() else "1D sequence",
                    help="Patches of an image on a grid (2D), or tokens in a row (1D).")
    two_d = FAMILIES[kind].is_2d()
with c2:
    size = ui.size_inputs(two_d, "pi", side=3, length=8)
grid, n = geometry.token_grid(size), geometry.num_tokens(size)
with c3:
    query = interact.query_slider("Query token i", grid, key="pi_query",
                                  help="The token that looks (a row of the matrix); tokens are numbered row by row.")
with c4:
    key_tok = interact.key_slider("Key token j", grid, key="pi_key",
                                  help="The token looked at (a column of the matrix).")

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
    interact.selection_line(grid, query, key_tok, widget_key="pi_clear")
    matrix = viz.visualize_position_index(index, window_size=win, seq_len=seq)
    if len(figure_select.heatmap_panels(matrix)[0].z) == n:  # not block-averaged: a cell is a pair (i, j)
        figure_select.add_cell_picker(matrix, note="click: query i = this row, key j = this column")
        figure_select.mark_cells(matrix, [(query, key_tok)])
    row = (viz.query_centric_figure(index.astype(np.float32), query, grid, title=f"Row of query {query} on the window")
           if two_d else figure_compare.query_bars_figure({"table row": index[query]}, query, value_label="table row r",
                                                          title=f"Row of query {query} over the keys"))
    if two_d:  # key j outlined (dashed) beside the query's own cell; a click chooses the query
        figure_select.add_cell_picker(row, note="click: make this patch the query")
        figure_select.mark_cells(row, [divmod(key_tok, grid[1])], color="white", dash="dash")
    ui.side_by_side((matrix, "pi_matrix", interact.on_pair("pi_matrix", grid[1])),
                    (row, "pi_query_map", interact.on_query("pi_query_map")), widths=[3, 2])
links.lesson_nav("pages/1_position_indices.py")
