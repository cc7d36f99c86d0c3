"""relpos explorer: the home page of the app.

Run with ``streamlit run app.py``. The app uses Streamlit's ``pages/`` mode: this file is the home
page and every ``pages/<n>_<name>.py`` is a page at ``/<name>``. Each of them, this one included,
starts with :func:`app_support.frame.page_frame` (page config, the navigation and the shared model,
layer and head pickers in the sidebar).
"""

from __future__ import annotations

import streamlit as st

from app_support.frame import NAV, page_frame

page_frame("Home", heading="Relative position bias, seen and trained")
st.markdown(
    "Attention compares every token with every other token, but on its own it does not know "
    "*where* they are. A **relative position bias** adds one learned number per head and per "
    "offset between query and key, looked up from a small table, to the attention logits:"
)
st.latex(
    r"\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + B\right)V,"
    r"\qquad B_{ij} = \mathrm{table}\big[\mathrm{index}[i, j]\big]"
)
st.markdown(
    "`index[i, j]` numbers the offset from key *j* to query *i*; in a 2D window with tokens "
    "*(y, x)* it is `(Δy + h − 1)(2w − 1) + (Δx + w − 1)`. Every pair with the same offset "
    "shares one table entry, so a table of `(2h − 1)(2w − 1)` rows per head covers the window."
)
st.subheader("Where to start")
pages = NAV[1:]
for row in range(0, len(pages), 4):  # rows of four, aligned
    for col, (number, item) in zip(st.columns(4), enumerate(pages[row : row + 4], start=row + 1)):
        with col:
            st.page_link(item.path, label=f"{number} · {item.label}")
            st.caption(item.blurb)
st.info(
    "New here? Open **Position indices** and move the query slider; then open **Bias explorer** "
    "(it starts on the *locality* preset) and slide α: watch each query's attention gather around "
    "itself. To see a trained model, start the *default* preset on **Train** (about a minute).",
    icon=":material/lightbulb:",
)
st.info(
    "Teaching? Switch on **Presenter mode** in the sidebar (or add `?present=1` to a page's address): large "
    "chart text, the main maps first, no prose. Click a patch on any map to make it the query; every "
    "choice is in the address, so a link opens the view you prepared. The teaching pages end with "
    "**Next →**, from Position indices to Labs.",
    icon=":material/co_present:",
)
