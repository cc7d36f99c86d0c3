"""App plumbing shared by the pages: cached calls into relpos, the sidebar's shared choices, errors.

Not a page itself (app.py lists the pages explicitly). Models are cached with ``st.cache_resource``
keyed by path and modification time and are never mutated (presets copy them); derived arrays are
cached with ``st.cache_data`` keyed by paths and numbers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import streamlit as st

from relpos import explore, jobs

# Shared choices, set in the sidebar (app.py) and read by the pages.
SOURCE_KEY = "sb_source"
LAYER_KEY = "sb_layer"
HEAD_KEY = "sb_head"
PRESET_PREFIX = "preset:"
CKPT_PREFIX = "ckpt:"
MAX_CONCURRENT_RUNS = int(os.environ.get("RELPOS_MAX_CONCURRENT_RUNS", "2"))


def runs_root() -> Path:
    """Where runs and uploads live: ``$RELPOS_RUNS_ROOT`` or ``checkpoints``."""
    return jobs.default_runs_root()


@contextlib.contextmanager
def guard(what: str, todo: str) -> Iterator[None]:
    """Show a readable ``st.error`` (what failed, why, what to do) instead of a traceback."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message, never a traceback
        detail = str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}"
        st.error(f"**Could not {what}.** {detail or type(exc).__name__}\n\n**What to do:** {todo}",
                 icon=":material/error:")


def mtime(path: str | Path) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


# ----------------------------------------------------------------------------- models


@st.cache_resource(max_entries=8, show_spinner="Loading checkpoint...")
def _checkpoint_model(path: str, modified: float):
    return explore.load_checkpoint_model(path)


@st.cache_resource(max_entries=8, show_spinner="Building a fresh model...")
def _preset_model(preset: str, modified: float):
    cfg = explore.preset_config(preset)
    return explore.fresh_model(cfg), cfg


@st.cache_data(max_entries=16, show_spinner=False)
def preset_config(preset: str, modified: float) -> dict:
    return explore.preset_config(preset)


def preset_modified(preset: str) -> float:
    return mtime(jobs.preset_path(preset))


def load_source(source: str):
    """``(model, config)`` for a sidebar source (``preset:<name>`` or ``ckpt:<path>``); cached."""
    if source.startswith(PRESET_PREFIX):
        name = source[len(PRESET_PREFIX):]
        return _preset_model(name, preset_modified(name))
    if source.startswith(CKPT_PREFIX):
        path = source[len(CKPT_PREFIX):]
        model, ckpt = _checkpoint_model(path, mtime(path))
        return model, ckpt.get("config", {})
    raise ValueError(f"unknown model source {source!r}")


def source_key(source: str) -> tuple[str, float]:
    """A hashable, change-aware key of a source for ``st.cache_data``."""
    if source.startswith(CKPT_PREFIX):
        return source, mtime(source[len(CKPT_PREFIX):])
    return source, preset_modified(source[len(PRESET_PREFIX):])


def source_options() -> list[str]:
    presets = [PRESET_PREFIX + p for p in jobs.list_presets()]
    ckpts = [CKPT_PREFIX + row["path"] for row in explore.list_checkpoints(runs_root())]
    return presets + ckpts


def source_label(source: str) -> str:
    if source.startswith(PRESET_PREFIX):
        return f"Fresh model · {source[len(PRESET_PREFIX):]} preset"
    path = Path(source[len(CKPT_PREFIX):])
    return f"{path.parent.name}/{path.name}"


def shared() -> tuple[str | None, int, int]:
    """The sidebar's ``(source, layer, head)``."""
    return (
        st.session_state.get(SOURCE_KEY),
        int(st.session_state.get(LAYER_KEY, 0) or 0),
        int(st.session_state.get(HEAD_KEY, 0) or 0),
    )


def select_run_source(path: str | Path) -> None:
    """Make a checkpoint the sidebar's current model (takes effect on the next rerun)."""
    st.session_state["_pending_source"] = CKPT_PREFIX + str(path)


def plotly(fig, key: str) -> None:
    """Draw a figure full width (one place to change how every chart is drawn)."""
    st.plotly_chart(fig, key=key, width="stretch", config={"displaylogo": False})


def clamp_state(key: str, low: int, high: int) -> None:
    """Keep a widget's remembered value inside a range that just changed (e.g. a smaller window)."""
    value = st.session_state.get(key)
    if isinstance(value, (int, float)) and not low <= value <= high:
        st.session_state[key] = min(max(int(value), low), high)
