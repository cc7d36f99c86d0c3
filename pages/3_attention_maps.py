"""Page 3: where a model's attention goes, with its relative position bias and with it zeroed.

The sections are drawn by :mod:`app_support.maps_ui`; the page stops early (``st.stop``, here only)
without a model, or while an upload is chosen but no picture given.
"""

from __future__ import annotations

import streamlit as st

from app_support import interact, links, maps_ui, ui
from app_support.frame import page_frame

source, layer, head = page_frame("Attention maps")
interact.prose(
    "The current model (sidebar) looks at one input; each map shows how much a query patch attends "
    "to every patch of the image: the picture stays as it is, and a veil clears where the query looks. "
    "Left: as the model computes it; right: the same forward with one source of position information "
    "switched off (the relative bias, the rotation or the absolute embedding, whichever the model has), "
    "so the difference is what that part contributes. "
    "**Try first:** pick a trained checkpoint in the sidebar, then click a patch on a mark (or on the input "
    "image) to make it the query; click a head in *All heads* to show that head."
)
if source is None:
    st.warning("Choose a model in the sidebar first.")
    st.stop()

# Three columns of controls; in presenter mode one row of the four a lecture moves, the rest behind a button.
slots, first = maps_ui.control_slots()  # first: presenter mode draws the prediction and the two maps there
inputs = maps_ui.input_controls(slots, source)
if inputs is None:  # an upload chosen, no picture yet
    st.stop()

with ui.guard("compute the attention maps",
              "pick another model or input; a checkpoint whose dataset is unavailable needs an upload"):
    model = maps_ui.model_controls(slots, inputs, layer)
    maps = maps_ui.attention(model)
    view = maps_ui.view_controls(slots, maps.grid, model.layer, head)
    maps_ui.input_column(slots, model, maps, view)
    maps_ui.reach_section(model, maps, view)
    maps_ui.paired_maps(first, model, maps, view)
    maps_ui.all_heads(model, maps, view)
    maps_ui.difference(model, maps)
    maps_ui.rope_kernel(model, view)
links.lesson_nav("pages/3_attention_maps.py")
