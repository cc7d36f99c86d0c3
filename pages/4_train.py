"""Page 4: train small models in the background, in a queue, with any position scheme, and compare runs.

The sections are in :mod:`app_support.train_ui`. The runs section polls: ``st.fragment`` below wraps
:func:`app_support.train_ui.runs_fragment` with ``run_every`` while a run is queued or training, so
only that section reruns every :data:`~app_support.train_ui.RUN_EVERY_S` seconds; once the last run
finished, the fragment reruns the whole page (``tr_polling``), which stops the polling.
"""

from __future__ import annotations

import streamlit as st

from app_support import links, runs_ui, state, train_ui, ui
from app_support.frame import page_frame

page_frame("Train")
st.markdown(
    "Pick a preset and a **position scheme**, press **Start**: each run trains as a separate process in "
    "a queue (at most a few at once; the rest wait and start by themselves), through page switches, "
    "closed tabs and app restarts. **Try first:** the *default* preset with a relative bias (*2D table*), "
    "then with nothing at all, then with an absolute embedding, and compare them below or on **Experiments**."
)
ROOT = state.runs_root()

train_ui.try_first_button(ROOT)
runs_ui.lesson_note(ROOT)
with ui.guard("read the presets", "check the configs/ folder"):
    request = train_ui.settings_form()  # preset, position scheme, settings: what to train once Start is pressed
    if request is not None:
        train_ui.start_runs(request, ROOT)  # queue the run(s), select the first one, rerun the page

any_active = train_ui.any_active(ROOT)
st.session_state["tr_polling"] = any_active
st.fragment(train_ui.runs_fragment, run_every=train_ui.RUN_EVERY_S if any_active else None)(ROOT)
links.lesson_nav("pages/4_train.py")  # "← Back" / "Next →" along the lesson
