"""Deep links and the lesson path: a page's state in its address, and "Next →" along the lesson.

:func:`sync_query_params` (called by the frame first on every page) reads the URL's parameters into
the session when the URL is not the one this session last wrote (a link just opened: a new tab, a
pasted link, a "Next →"), then writes the current state back, leaving out what is at its default, so
a slide can open a prepared view (``/bias_explorer?present=1&query=2,4&alpha=2.5``). Shared parameters
(presenter mode, model, layer, head, query) are in :data:`SHARED_PARAMS`, each page's own (its widget
keys) in :data:`PAGE_PARAMS`. :data:`LESSON` orders the teaching pages; :func:`lesson_nav` draws
"← Back" and "Next →" at the bottom of each, carrying the shared state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from app_support import state
from app_support.interact import PRESENT, SEL_KEY, SEL_QUERY
from relpos import explore, presets

#: The query parameters this session last wrote (a plain session key).
_WRITTEN = "_query_params_written"
#: The teaching pages, in the order of a lesson (paths as in :data:`app_support.frame.NAV`).
LESSON: tuple[str, ...] = (
    "pages/1_position_indices.py", "pages/2_bias_explorer.py", "pages/3_attention_maps.py",
    "pages/4_train.py", "pages/9_labs.py",
)


@dataclass(frozen=True)
class Param:
    """One URL parameter: its ``name``, the session ``keys`` it fills (a window fills two), how to read
    it (``kind``: int, float, str, bool, cell, window, source), the value left out of the URL
    (``default``) and the values it may take (``choices`` or ``low``/``high``)."""

    name: str
    keys: tuple[str, ...]
    kind: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None


SHARED_PARAMS: tuple[Param, ...] = (
    Param("present", (PRESENT,), "bool", False),
    Param("model", (state.SEL_SOURCE,), "source"),
    Param("layer", (state.SEL_LAYER,), "int", 0, low=0, high=63),
    Param("head", (state.SEL_HEAD,), "int", 0, low=0, high=explore.MAX_HEADS - 1),
    Param("query", (SEL_QUERY,), "cell"),
)
_WINDOW = (1, explore.MAX_WINDOW_SIDE)
#: Each page's own parameters (by page title); the keys are its widget keys.
PAGE_PARAMS: dict[str, tuple[Param, ...]] = {
    "Position indices": (
        Param("family", ("pi_kind",), "str", explore.INDEX_BIAS_TYPES[0], choices=explore.INDEX_BIAS_TYPES),
        Param("window", ("pi_h", "pi_w"), "window", (3, 3), low=_WINDOW[0], high=_WINDOW[1]),
        Param("length", ("pi_len",), "int", 8, low=1, high=explore.MAX_SEQ_LEN),
        Param("key", (SEL_KEY,), "cell"),
    ),
    "Bias explorer": (
        Param("family", ("be_kind",), "str", "2d", choices=explore.EXPLORE_BIAS_TYPES),
        Param("window", ("be_h", "be_w"), "window", (7, 7), low=_WINDOW[0], high=_WINDOW[1]),
        Param("length", ("be_len",), "int", 16, low=1, high=explore.MAX_SEQ_LEN),
        Param("table", ("be_preset",), "str", "locality", choices=presets.BIAS_PRESETS),
        Param("alpha", ("be_alpha",), "float", 2.0, low=0.0, high=5.0),
        Param("heads", ("be_heads",), "int", 4, low=1, high=explore.MAX_HEADS),
        Param("step", ("be_step",), "int", 3, low=1, high=3),
    ),
    "Attention maps": (
        Param("table", ("am_table",), "str", state.AS_LOADED,
              choices=(state.AS_LOADED, *[p for p in presets.BIAS_PRESETS if p != "init"])),
        Param("alpha", ("am_alpha",), "float", 1.0, low=0.0, high=5.0),
        Param("sample", ("am_sample",), "int", 0, low=0, high=9_999),
    ),
}


def _source_param(source: str) -> str:
    """A model source as a link reads it: the preset's name, or ``run/file.pt``."""
    if source.startswith(state.PRESET_PREFIX):
        return source[len(state.PRESET_PREFIX):]
    return state.source_label(source)


def _source_from_param(text: str) -> str | None:
    """The source a link's ``model`` names: a preset, ``run/file.pt``, or a run (its best, else last
    checkpoint); ``None`` when there is no such model here."""
    options = state.source_options()
    for source in options:
        if _source_param(source) == text:
            return source
    for name in ("best.pt", "last.pt"):
        for source in options:
            if _source_param(source) == f"{text}/{name}":
                return source
    return None


def _parse(p: Param, text: str) -> tuple | None:
    """The session values a parameter's text gives (one per key), or ``None`` when it makes no sense."""
    try:
        if p.kind == "bool":
            return (text.strip().lower() in ("1", "true", "yes", "on"),)
        if p.kind == "source":
            source = _source_from_param(text)
            return None if source is None else (source,)
        if p.kind in ("int", "float"):
            value = float(text)
            value = min(max(value, p.low), p.high) if p.low is not None else value
            return (int(round(value)) if p.kind == "int" else round(value, 2),)
        if p.kind == "str":
            return (text,) if p.choices is None or text in p.choices else None
        if p.kind == "cell":
            y, x = (int(v) for v in text.replace(" ", "").split(",", 1))
            return ((max(0, y), max(0, x)),)
        if p.kind == "window":
            h, w = (int(v) for v in text.lower().replace("×", "x").split("x", 1))
            return tuple(min(max(v, int(p.low)), int(p.high)) for v in (h, w))
    except ValueError:
        return None
    raise ValueError(f"unknown parameter kind {p.kind!r} of {p.name!r}")


def _format(p: Param, values: tuple) -> str | None:
    """A parameter's text for the URL, or ``None`` to leave it out (at its default, or unset)."""
    if any(v is None for v in values):
        return None
    value = values[0] if len(values) == 1 else tuple(values)
    if p.kind == "source":
        options = state.source_options()
        return None if not options or value == options[0] else _source_param(value)
    if p.default is not None and value == p.default:
        return None
    if p.kind == "bool":
        return "1" if value else None
    if p.kind == "cell":
        return f"{value[0]},{value[1]}"
    if p.kind == "window":
        return f"{value[0]}x{value[1]}"
    if p.kind == "float":
        return f"{float(value):g}"
    return str(value)


def page_params(title: str) -> tuple[Param, ...]:
    """The parameters of page ``title``: the shared ones, then its own."""
    return SHARED_PARAMS + PAGE_PARAMS.get(title, ())


def load_params(title: str, params: dict[str, str]) -> list[str]:
    """Put a link's parameters into the session; returns the names it could not use."""
    bad = []
    for p in page_params(title):
        if p.name not in params:
            continue
        values = _parse(p, str(params[p.name]))
        if values is None:
            bad.append(p.name)
            continue
        for key, value in zip(p.keys, values):
            st.session_state[key] = value
    return bad


def current_params(title: str) -> dict[str, str]:
    """The page's state as URL parameters (those at their defaults left out)."""
    out = {}
    for p in page_params(title):
        if not all(k in st.session_state for k in p.keys):
            continue
        text = _format(p, tuple(st.session_state[k] for k in p.keys))
        if text is not None:
            out[p.name] = text
    return out


def sync_query_params(title: str) -> None:
    """Read a just-opened link into the session, then write the session's state into the URL.

    A URL is "just opened" when it differs from the parameters this session last wrote (a new tab, a
    pasted link, a "Next →" link); one written here is never read back over a newer choice.
    """
    url = st.query_params.to_dict()
    written = st.session_state.get(_WRITTEN)
    if url and url != written:
        bad = load_params(title, url)
        if bad:
            st.toast(f"This link's {', '.join(bad)} could not be used here (no such model, or a value out of "
                     "range); the page shows its own choice instead.", icon=":material/link_off:")
    want = current_params(title)
    if want != url:
        st.query_params.from_dict(want)
    st.session_state[_WRITTEN] = want


# ----------------------------------------------------------------------------- lesson path


def lesson_nav(path: str) -> None:
    """"← Back" and "Next →" to the neighbours of ``path`` on :data:`LESSON`, carrying the shared
    state (:data:`SHARED_PARAMS`) in their links."""
    if path not in LESSON:
        return
    k = LESSON.index(path)
    carry = {p.name: v for p in SHARED_PARAMS
             if (v := _format(p, tuple(st.session_state.get(key) for key in p.keys))) is not None}
    st.divider()
    left, mid, right = st.columns([1, 2, 1])
    mid.caption(f"Lesson: step {k + 1} of {len(LESSON)}")
    for col, target, label in ((left, k - 1, "← Back"), (right, k + 1, "Next →")):
        if 0 <= target < len(LESSON):
            try:
                col.page_link(LESSON[target], label=label, query_params=carry)
            except StreamlitPageNotFoundError:  # a page run on its own (AppTest.from_file): no registry
                col.caption(label)
