"""Page 2: a bias table, the bias it spreads over the window, and what it does to attention.

The sections are drawn by :mod:`app_support.bias_ui` (a bias family) and :mod:`app_support.rope_ui`
(a rotary embedding); the page stops early (``st.stop``, here only) after the rotary mode.
"""

from __future__ import annotations

import streamlit as st

from app_support import bias_ui, interact, links, rope_ui, ui
from app_support.frame import page_frame

page_frame("Bias explorer")
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

# Four columns of controls; in presenter mode one row of the four a lecture moves, the rest behind a button.
slots = bias_ui.control_slots()
with slots["kind"]:
    rotary = rope_ui.position_choice()  # a bias family (below) or a rotary embedding (app_support/rope_ui.py)
if rotary:
    rope_ui.bias_explorer(slots)
    links.lesson_nav("pages/2_bias_explorer.py")
    st.stop()
controls = bias_ui.controls(slots)
bias_ui.family_caption(controls)
first = interact.first_section()  # presenter mode: the two maps and the step-through right here

with ui.guard("compute the bias", "choose a smaller window, fewer heads, or another preset"):
    arrays = bias_ui.bias_arrays(controls)
    bias_ui.table_section(controls, arrays.table)
    with interact.main_maps(first):
        attention = bias_ui.attention_section(controls)
        bias_ui.step_through(controls)
    bias_ui.spread_section(controls, arrays)
    bias_ui.full_matrices(controls, attention)
links.lesson_nav("pages/2_bias_explorer.py")
