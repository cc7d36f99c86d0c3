"""The frame every page starts with: page config, navigation, shared model / layer / head pickers.

The app uses Streamlit's ``pages/`` mode (``app.py`` is the home page, each ``pages/<n>_<name>.py``
is a page at ``/<name>``) with ``client.showSidebarNavigation = false``: this module draws the one
navigation, from the :data:`NAV` table, with ``st.page_link``. Each page's first line is::

    source, layer, head = page_frame("Attention maps")

The shared choices live in plain session keys (:data:`app_support.state.SEL_SOURCE` and friends),
because widget state belongs to one page in this mode. The pickers are widgets with their own keys
that are set from those plain keys before they are drawn and copy back on change (the Streamlit docs'
pattern for a widget whose value must outlive its page); a keyed widget ignores a changed ``index=``
once it exists, so the value is written to its key instead.
"""

from __future__ import annotations

from typing import NamedTuple

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from app_support import interact, links, state, ui
from relpos import captions, jobs
from relpos.diagnostics import model_summary


class NavItem(NamedTuple):
    """One row of the navigation: script (relative to ``app.py``'s folder), label, icon, one line."""

    path: str
    label: str
    icon: str
    blurb: str


#: The navigation, home first; the pages' titles and icons are these labels and icons.
NAV: tuple[NavItem, ...] = (
    NavItem("app.py", "Home", ":material/home:", "what a relative position bias is"),
    NavItem("pages/1_position_indices.py", "Position indices", ":material/grid_on:",
            "how offsets become table rows"),
    NavItem("pages/2_bias_explorer.py", "Bias explorer", ":material/tune:",
            "set a table by hand, see attention change"),
    NavItem("pages/3_attention_maps.py", "Attention maps", ":material/visibility:",
            "a model's attention with and without bias"),
    NavItem("pages/4_train.py", "Train", ":material/model_training:", "train a small model in the background"),
    NavItem("pages/5_checkpoints.py", "Checkpoints & compare", ":material/compare:", "compare what runs learned"),
    NavItem("pages/6_resize_lab.py", "Resize lab", ":material/aspect_ratio:", "move a trained table to a new window"),
    NavItem("pages/7_import_checkpoint.py", "Import checkpoint", ":material/download:",
            "read Swin / BEiT tables from a file"),
    NavItem("pages/8_experiments.py", "Experiments", ":material/leaderboard:",
            "compare position schemes over seeds: a leaderboard"),
    NavItem("pages/9_labs.py", "Labs", ":material/science:",
            "size transfer, position shift, ablation: the papers' results on our task"),
)
#: The browser tab's icon on every page (an emoji: nothing to download).
TAB_ICON = "📐"
#: Page-local keys of the picker widgets (never read by pages: they read the ``state.SEL_*`` keys).
W_SOURCE, W_LAYER, W_HEAD = "frame_source", "frame_layer", "frame_head"


@st.cache_resource(show_spinner=False)
def _reconcile_once(root: str) -> list[str]:
    """Once per server process: runs left 'running' by a dead process become 'failed'.

    Never takes the app down: reconcile already skips a run folder it cannot fix (and lists it
    broken), and anything else (an unreadable runs root, a bug) leaves the runs as they are.
    """
    try:
        return jobs.reconcile_runs(root)
    except Exception:  # noqa: BLE001 - the app must start whatever the runs folder holds
        return []


def page_frame(title: str, heading: str | None = None) -> tuple[str | None, int, int]:
    """Start a page: config, navigation, the shared pickers in the sidebar, then the page's title.

    Args:
        title: the page's name (browser tab, and its label in :data:`NAV`); also its heading unless
            ``heading`` is given. The tab's icon is :data:`TAB_ICON` on every page: for a Material
            icon Streamlit fetches the favicon from Google's font servers, which an offline lecture
            hall cannot reach; an emoji needs nothing.
        heading: a heading other than ``title`` (the home page's).

    Returns:
        The shared ``(source, layer, head)``: the current model source (``None`` when there is no
        model to choose), and the layer and head every page shows.
    """
    links.sync_query_params(title)  # a link's ?model=..&present=1 first: it may collapse the sidebar
    st.set_page_config(page_title=f"{title} · relpos", page_icon=TAB_ICON, layout="wide",
                       initial_sidebar_state="collapsed" if interact.presenting() else "auto")
    interact.presenter_css()
    _reconcile_once(str(state.runs_root().resolve()))
    state.cap_threads()  # while runs train, the page's torch work leaves them their cores
    with st.sidebar:
        navigation()
        st.divider()
        model_picker()
        st.divider()
        interact.presenter_toggle()  # last: the pickers keep their places
    st.title(heading or title)
    return state.shared()


def navigation(items: tuple[NavItem, ...] = NAV) -> None:
    """One ``st.page_link`` per row of ``items`` (the current page is highlighted)."""
    for item in items:
        try:
            st.page_link(item.path, label=item.label, icon=item.icon)
        except StreamlitPageNotFoundError:  # a page run on its own (e.g. AppTest.from_file): no registry
            st.caption(item.label)


def _copy_back(sel_key: str, widget_key: str) -> None:
    """``on_change``: the picker's new value becomes the shared choice."""
    st.session_state[sel_key] = st.session_state[widget_key]


def _picker(label: str, options: list, sel_key: str, widget_key: str, **kwargs) -> object:
    """A selectbox showing shared choice ``sel_key`` (its value must be one of ``options``)."""
    st.session_state[widget_key] = st.session_state[sel_key]
    return st.selectbox(label, options, key=widget_key, on_change=_copy_back, args=(sel_key, widget_key), **kwargs)


def model_picker() -> None:
    """The shared choices: model (a fresh preset or a checkpoint), layer and head."""
    st.header("Model")
    source = None
    with ui.guard("list the models", "check that configs/ and the runs folder are readable"):
        options = state.source_options()
        if not options:
            st.session_state.pop(state.SEL_SOURCE, None)
            st.warning("No preset in configs/ and no checkpoint yet.")
            return
        st.session_state.setdefault(state.SEL_SOURCE, options[0])
        if st.session_state[state.SEL_SOURCE] not in options:  # e.g. a deleted run
            st.session_state[state.SEL_SOURCE] = options[0]
        source = _picker("Current model", options, state.SEL_SOURCE, W_SOURCE, format_func=state.source_label,
                         help="A fresh (untrained) model of a preset, or a checkpoint of a run or an upload. "
                         "Attention maps and Checkpoints use it.")
    if source is None:
        return
    with ui.guard("load this model", "pick another model above, or re-run its training"):
        model, _cfg = state.load_source(source)
        summary = model_summary(model)
        depth = max(1, int(summary["depth"] or 1))
        heads = max(1, int(summary["num_heads"] or 1))
        st.session_state[state.SEL_HEADS] = heads
        for label, sel_key, widget_key, n, tip in (
                ("Layer", state.SEL_LAYER, W_LAYER, depth, "Which transformer block's attention the pages show."),
                ("Head", state.SEL_HEAD, W_HEAD, heads,
                 "Which attention head the pages show; every page's head control follows this one.")):
            st.session_state.setdefault(sel_key, 0)
            if not 0 <= int(st.session_state[sel_key] or 0) < n:
                st.session_state[sel_key] = 0
            _picker(label, list(range(n)), sel_key, widget_key, help=tip)
        grid = summary["grid"]
        where = captions.position_label(relative=summary["bias_type"], rotary=summary["rotary"],
                                        absolute=summary["absolute"])
        st.caption(f"{depth} layers · {heads} heads · patch grid {grid[0]}×{grid[1]} · "
                   f"position information: {where} · {summary['params']:,} parameters")
