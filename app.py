"""relpos explorer: the frame and router of the multipage app.

Run with ``streamlit run app.py``. The pages are listed explicitly below; the sidebar holds the
choices every page shares (the current model, layer and head), so they survive page switches.
"""

from __future__ import annotations

import streamlit as st

from app_pages import _shared as sh
from relpos import jobs

st.set_page_config(page_title="relpos · relative position bias", page_icon=":material/explore:", layout="wide")


@st.cache_resource(show_spinner=False)
def _reconcile_once(root: str) -> list[str]:
    """Once per server process: runs left 'running' by a dead process become 'failed'."""
    try:
        return jobs.reconcile_runs(root)
    except OSError:
        return []


def home() -> None:
    st.title("Relative position bias, seen and trained")
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
    links = [
        ("app_pages/1_position_indices.py", "1 · Position indices", "how offsets become table rows"),
        ("app_pages/2_bias_explorer.py", "2 · Bias explorer", "set a table by hand, see attention change"),
        ("app_pages/3_attention_maps.py", "3 · Attention maps", "a model's attention with and without bias"),
        ("app_pages/4_train.py", "4 · Train", "train a small model in the background"),
        ("app_pages/5_checkpoints.py", "5 · Checkpoints", "compare what runs learned"),
        ("app_pages/6_resize_lab.py", "6 · Resize lab", "move a trained table to a new window"),
        ("app_pages/7_import_checkpoint.py", "7 · Import", "read Swin / BEiT tables from a file"),
    ]
    for row in range(0, len(links), 4):  # rows of four, aligned
        for col, (page, label, what) in zip(st.columns(4), links[row : row + 4]):
            with col:
                st.page_link(page, label=label)
                st.caption(what)
    st.info(
        "New here? Open **Position indices** and move the query slider; then open **Bias explorer** "
        "(it starts on the *locality* preset) and slide α: watch each query's attention gather around "
        "itself. To see a trained model, start the *default* preset on **Train** (about a minute).",
        icon=":material/lightbulb:",
    )


def sidebar() -> None:
    """The shared choices: model (fresh preset or checkpoint), layer, head."""
    pending = st.session_state.pop("_pending_source", None)
    if pending is not None:
        st.session_state[sh.SOURCE_KEY] = pending
    with st.sidebar:
        st.header("Model")
        with sh.guard("list the models", "check that configs/ and the runs folder are readable"):
            options = sh.source_options()
            if not options:
                st.warning("No preset in configs/ and no checkpoint yet.")
                return
            if st.session_state.get(sh.SOURCE_KEY) not in options:
                st.session_state[sh.SOURCE_KEY] = options[0]
            source = st.selectbox(
                "Current model",
                options,
                key=sh.SOURCE_KEY,
                format_func=sh.source_label,
                help="A fresh (untrained) model of a preset, or a checkpoint of a run or an upload. "
                "Attention maps and Checkpoints use it.",
            )
        with sh.guard("load this model", "pick another model above, or re-run its training"):
            model, _cfg = sh.load_source(source)
            summary = sh.explore.model_summary(model)
            depth = max(1, int(summary["depth"] or 1))
            heads = max(1, int(summary["num_heads"] or 1))
            for key, n in ((sh.LAYER_KEY, depth), (sh.HEAD_KEY, heads)):
                if int(st.session_state.get(key, 0) or 0) >= n:
                    st.session_state[key] = 0
            st.selectbox("Layer", list(range(depth)), key=sh.LAYER_KEY)
            st.selectbox("Head", list(range(heads)), key=sh.HEAD_KEY)
            grid = summary["grid"]
            bias = summary["bias_type"] or "none"
            st.caption(
                f"{depth} layers · {heads} heads · patch grid {grid[0]}×{grid[1]} · "
                f"relative bias: {bias} · {summary['params']:,} parameters"
            )


def main() -> None:
    _reconcile_once(str(sh.runs_root().resolve()))
    pages = [
        st.Page(home, title="Home", icon=":material/home:", default=True, url_path="home"),
        st.Page("app_pages/1_position_indices.py", title="Position indices", icon=":material/grid_on:"),
        st.Page("app_pages/2_bias_explorer.py", title="Bias explorer", icon=":material/tune:"),
        st.Page("app_pages/3_attention_maps.py", title="Attention maps", icon=":material/visibility:"),
        st.Page("app_pages/4_train.py", title="Train", icon=":material/model_training:"),
        st.Page("app_pages/5_checkpoints.py", title="Checkpoints & compare", icon=":material/compare:"),
        st.Page("app_pages/6_resize_lab.py", title="Resize lab", icon=":material/aspect_ratio:"),
        st.Page("app_pages/7_import_checkpoint.py", title="Import checkpoint", icon=":material/download:"),
    ]
    page = st.navigation(pages)
    sidebar()
    page.run()


main()
