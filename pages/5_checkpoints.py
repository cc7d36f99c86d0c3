"""Page 5: what training learned, two runs side by side, uploads and downloads.

The sections are in :mod:`app_support.checkpoints_ui`; each passes what it read to the next.
"""

from __future__ import annotations

import streamlit as st

from app_support import checkpoints_ui, state
from app_support.frame import page_frame

source, layer, head = page_frame("Checkpoints & compare")
st.markdown(
    "Every run leaves checkpoints (best.pt, last.pt); you can also upload one. Pick checkpoint **A** to "
    "see how far its bias tables moved from their initial values, and **B** to compare two runs: "
    "curves overlaid, accuracy and diagnostics side by side, and the difference of their tables when they "
    "have the same one. **Try first:** queue the Train page's try-first trio (relative bias, no position, "
    "absolute embedding), then compare the relative run with the one without position here."
)
ROOT = state.runs_root()

checkpoints_ui.upload_box(ROOT)
a, b, labels = checkpoints_ui.pick_checkpoints(ROOT, source)  # stops the page when there is nothing to pick
ta, geo = checkpoints_ui.checkpoint_a(a, b, layer, head)  # A's tables and their geometry; None when A cannot be read
if b != checkpoints_ui.NONE and ta is not None and geo is not None:
    checkpoints_ui.compare(a, b, labels, ta, geo, layer)
