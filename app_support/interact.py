"""Direct manipulation, deep links and presenter mode: how a lecture drives the app.

Selections are plain session keys shared by every page (widget state belongs to one page in
``pages/`` mode): :data:`SEL_QUERY` is the chosen query patch as ``(y, x)`` in grid coordinates (it
survives a change of window by clamping, and a page without a choice shows its centre),
:data:`SEL_KEY` the chosen key of the Position indices page, ``state.SEL_HEAD`` the head. They are
set by clicks on the charts (:func:`on_query`, :func:`on_pair`, :func:`on_head`: ``on_select``
callbacks of ``st.plotly_chart`` over the click layer of :mod:`relpos.experiments.figure_select`)
and by sliders kept in sync for keyboards (:func:`query_slider`, :func:`key_slider`: the slider's
value is written from the shared key before it is drawn and copied back on change).

Presenter mode (:data:`PRESENT`, ``?present=1``): the sidebar starts collapsed, charts get fonts of
18 px or more (:func:`relpos.experiments.figure_present.presenter_layout`, applied by ``ui.plotly``),
prose is hidden (:func:`prose`, :func:`heading`), the controls a lecture moves stand in one row
(:func:`control_slots`) and the main maps come first (:func:`first_section`, :func:`main_maps`).

Deep links (the URL's parameters) and the lesson path are in :mod:`app_support.links`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from app_support import state
from relpos.experiments.figure_select import picked_cell

#: Plain session keys: the chosen query and key patch ``(y, x)`` (``None``: none chosen), presenter mode.
SEL_QUERY = "sel_query"
SEL_KEY = "sel_key"
PRESENT = "present"
#: Widget key of the presenter toggle.
W_PRESENT = "frame_present"


# ----------------------------------------------------------------------------- cells and tokens


def clamp_cell(cell: Sequence[int], grid: tuple[int, int]) -> tuple[int, int]:
    """``cell`` ``(y, x)`` moved inside an ``(h, w)`` grid (the nearest patch)."""
    h, w = grid
    return min(max(int(cell[0]), 0), h - 1), min(max(int(cell[1]), 0), w - 1)


def selected(sel_key: str, grid: tuple[int, int], default: int) -> tuple[int, int]:
    """The shared choice ``sel_key`` on this grid (clamped), or token ``default``'s cell without one."""
    cell = st.session_state.get(sel_key)
    if cell is None:
        return divmod(int(default), grid[1])
    return clamp_cell(cell, grid)


def select(sel_key: str, cell: Sequence[int] | None) -> None:
    """Set (or, with ``None``, clear) a shared choice."""
    st.session_state[sel_key] = None if cell is None else (int(cell[0]), int(cell[1]))


def _slider_copy_back(sel_key: str, widget_key: str, width: int) -> None:
    """``on_change`` of a synced slider: the token it shows becomes the shared ``(y, x)``."""
    select(sel_key, divmod(int(st.session_state[widget_key]), width))


def _synced_slider(label: str, grid: tuple[int, int], sel_key: str, widget_key: str, default: int,
                   **kwargs: Any) -> int:
    """A token slider over ``0 .. h*w - 1`` that shows the shared choice ``sel_key`` and writes it back."""
    h, w = grid
    cell = selected(sel_key, grid, default)
    token = cell[0] * w + cell[1]
    if h * w <= 1:
        return 0
    if st.session_state.get(widget_key) != token:
        st.session_state[widget_key] = token
    st.slider(label, 0, h * w - 1, key=widget_key, on_change=_slider_copy_back, args=(sel_key, widget_key, w),
              **kwargs)
    return token


def query_slider(label: str, grid: tuple[int, int], key: str, default: int | None = None,
                 **kwargs: Any) -> int:
    """The query token (row-major on ``grid``; default: the centre), in sync with :data:`SEL_QUERY`."""
    default = (grid[0] // 2) * grid[1] + grid[1] // 2 if default is None else default
    return _synced_slider(label, grid, SEL_QUERY, key, default, **kwargs)


def key_slider(label: str, grid: tuple[int, int], key: str, default: int = 0, **kwargs: Any) -> int:
    """The key token (default 0), in sync with :data:`SEL_KEY`."""
    return _synced_slider(label, grid, SEL_KEY, key, default, **kwargs)


def selection_line(grid: tuple[int, int], query: int, key: int | None = None, *, widget_key: str) -> None:
    """What is selected, in words (``query (y, x) = (3, 3) · token 24``), and a button that clears it."""
    w = grid[1]
    text = f"query (y, x) = {divmod(query, w)} · token {query}"
    if key is not None:
        text += f" · key (y, x) = {divmod(key, w)} · token {key}"
    left, right = st.columns([4, 1], vertical_alignment="center")
    left.markdown(f"**Selected** {text}" + ("" if presenting() else " · click a patch to choose another"))
    right.button("Clear selection", key=widget_key, on_click=clear_selection, type="tertiary",
                 icon=":material/close:",
                 help="Forget the clicked query (and key): every page goes back to its default.")


def clear_selection() -> None:
    """Forget the chosen query and key (the pages fall back to their defaults)."""
    select(SEL_QUERY, None)
    select(SEL_KEY, None)


# ----------------------------------------------------------------------------- clicks


def _picked(chart_key: str) -> tuple[int, int, int] | None:
    """``(panel, row, column)`` the chart ``chart_key`` reports as clicked (a bar: ``(curve, 0, x)``)."""
    event = st.session_state.get(chart_key)
    pick = picked_cell(event)
    if pick is not None or not event:
        return pick
    for point in (event.get("selection") or {}).get("points") or []:  # bars over a 1D key axis
        if point.get("customdata") is None and isinstance(point.get("x"), (int, float)):
            return int(point.get("curve_number", 0)), 0, int(point["x"])
    return None


def on_query(chart_key: str) -> Callable[[], None]:
    """``on_select`` of a query map or an input image: the clicked patch ``(y, x)`` becomes the query."""
    def pick() -> None:
        cell = _picked(chart_key)
        if cell is not None:
            select(SEL_QUERY, cell[1:])
    return pick


def on_pair(chart_key: str, width: int) -> Callable[[], None]:
    """``on_select`` of an index matrix (rows: query i, columns: key j, on a grid ``width`` wide)."""
    def pick() -> None:
        cell = _picked(chart_key)
        if cell is not None:
            select(SEL_QUERY, divmod(cell[1], width))
            select(SEL_KEY, divmod(cell[2], width))
    return pick


def on_head(chart_key: str, widget_key: str | None = None) -> Callable[[], None]:
    """``on_select`` of small multiples: the clicked panel's head becomes the shared head (the
    sidebar follows); with ``widget_key``, that page's own head control shows it too."""
    def pick() -> None:
        cell = _picked(chart_key)
        if cell is None:
            return
        head = cell[0]
        if head < int(st.session_state.get(state.SEL_HEADS, head + 1) or head + 1):
            st.session_state[state.SEL_HEAD] = head
        if widget_key is not None:
            st.session_state[widget_key] = head
    return pick


# ----------------------------------------------------------------------------- presenter mode


def presenting() -> bool:
    """Whether presenter mode is on (``?present=1`` or the sidebar toggle)."""
    return bool(st.session_state.get(PRESENT, False))


def _toggle_copy_back() -> None:
    st.session_state[PRESENT] = bool(st.session_state[W_PRESENT])


def presenter_toggle() -> None:
    """The sidebar's presenter-mode switch (shows and sets :data:`PRESENT`)."""
    st.session_state[W_PRESENT] = presenting()
    st.toggle("Presenter mode", key=W_PRESENT, on_change=_toggle_copy_back,
              help="For a lecture hall: sidebar closed, large chart text, explanations hidden, the main maps "
              "first. A link with ?present=1 opens in it.")


def prose(text: str) -> None:
    """Explanatory markdown, hidden in presenter mode (the speaker says it)."""
    if not presenting():
        st.markdown(text)


def control_slots(layout: Sequence[Sequence[str]], main: Sequence[str], *,
                  more_label: str = "More settings") -> dict[str, Any]:
    """Where each of a page's controls goes, by name.

    Args:
        layout: the usual columns, each a list of control names stacked in it.
        main: the controls a lecture moves; in presenter mode they stand in one row, and every other
            control goes behind a "More settings" button at its end (still drawn: values kept).

    Returns:
        ``{name: container}``; ``with slots["alpha"]: st.slider(...)`` draws a control in its place.
    """
    if not presenting():
        cols = st.columns(len(layout))
        return {name: col for col, names in zip(cols, layout) for name in names}
    cols = st.columns([1] * len(main) + [1])
    more = cols[-1].popover(more_label, icon=":material/tune:", width="stretch",
                            help="The controls a lecture seldom moves.")
    slots = {name: more for names in layout for name in names}
    slots.update(zip(main, cols))
    return slots


def first_section() -> Any:
    """An empty container, placed right under the page's controls: in presenter mode the main maps are
    drawn into it (:func:`main_maps`), so they come first; otherwise it stays empty."""
    return st.container()


def main_maps(first: Any) -> Any:
    """The container the page's main maps go into: ``first`` (from :func:`first_section`, right under
    the controls) in presenter mode, a new container in reading order otherwise."""
    return first if presenting() else st.container()


def heading(text: str) -> None:
    """A section heading, left out in presenter mode (the maps' own titles say what they show)."""
    if not presenting():
        st.subheader(text)


def numbers_then_maps() -> tuple[Any, Any]:
    """Two containers ``(numbers, maps)`` in that order on the page, or maps first in presenter mode
    (the maps are what the back row reads; the numbers follow)."""
    upper, lower = st.container(), st.container()
    return (lower, upper) if presenting() else (upper, lower)


def presenter_css() -> None:
    """Presenter mode's page style: less padding above the title, a smaller title, nothing wider than
    the window (long lines wrap). Drawn by the frame; nothing without presenter mode."""
    if not presenting():
        return
    st.html(
        "<style>"
        "[data-testid='stMainBlockContainer']{padding-top:3.6rem;padding-bottom:2rem;max-width:100%;}"
        "[data-testid='stMainBlockContainer'] h1{font-size:1.6rem;padding:0 0 .2rem 0;}"
        "[data-testid='stMetricValue']{font-size:1.6rem;white-space:normal;}"
        "[data-testid='stCaptionContainer']{font-size:1.05rem;}"
        "[data-testid='stMetricLabel'] p,[data-testid='stMetricDelta']{white-space:normal;}"
        "[data-testid='stMain'] *{overflow-wrap:anywhere;}"
        ".relpos-chart-title{font-size:1.35rem;font-weight:600;line-height:1.3;margin:0 0 -.4rem .4rem;}"
        "</style>"
    )


def chart_title(text: str) -> None:
    """A chart's title written above it in presenter mode (large, wrapping; Plotly's own would be cut)."""
    st.html(f"<div class='relpos-chart-title'>{text}</div>")
