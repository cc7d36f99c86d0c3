"""Figures to files: self-contained HTML (offline), PNG and SVG (kaleido driving Chrome/Chromium).

:func:`save_figure` writes atomically (a reader never sees half a file) and renders first, so a
failed render leaves no folder behind; :func:`figure_bytes` gives the same bytes for a download
button. Re-exported by :mod:`relpos.experiments.visualize`, whose builders take ``save_path``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import plotly.graph_objects as go

from relpos._validation import check_choice
from relpos.experiments._figure_core import check_save_path
from relpos.experiments.rundir import atomic_write_bytes

__all__ = ["SAVE_SUFFIXES", "figure_bytes", "figure_payload_bytes", "save_figure"]

#: File suffixes :func:`save_figure` writes.
SAVE_SUFFIXES: tuple[str, ...] = (".html", ".png", ".svg")
#: Chrome/Chromium executables kaleido can drive, in the order they are looked up on the PATH.
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _find_browser() -> str:
    """The Chrome/Chromium kaleido will use; sets ``BROWSER_PATH`` when it was unset."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        if Path(env).is_file() and os.access(env, os.X_OK):
            return env
        raise RuntimeError(
            f"BROWSER_PATH={env!r} is not an executable file. Point BROWSER_PATH at a Chrome or "
            "Chromium executable (e.g. /usr/bin/chromium), or unset it."
        )
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            os.environ["BROWSER_PATH"] = found
            return found
    raise RuntimeError(
        "Saving a figure as PNG or SVG needs Chrome or Chromium (kaleido drives it) and none was "
        "found on the PATH. Install Chromium (Debian/Ubuntu: `sudo apt-get install -y chromium`) "
        "or set the BROWSER_PATH environment variable to a Chrome/Chromium executable; "
        "or save as .html, which needs no browser."
    )


def figure_bytes(fig: go.Figure, fmt: str = "html") -> bytes:
    """The figure as file contents, e.g. for a download button.

    Args:
        fig: the figure.
        fmt: ``"html"`` (self-contained: plotly.js inlined, works offline), ``"png"`` or ``"svg"``
            (rendered by kaleido in Chrome/Chromium, a few seconds per call: each call starts a
            browser).

    Returns:
        The bytes of the file.

    Raises:
        ValueError: unknown ``fmt``.
        RuntimeError: PNG/SVG asked for and no Chrome/Chromium found (the message says how to
            install one or set ``BROWSER_PATH``).
    """
    if not isinstance(fig, go.Figure):
        raise TypeError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    fmt = check_choice("fmt", fmt, tuple(s[1:] for s in SAVE_SUFFIXES))
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
    _find_browser()
    return fig.to_image(format=fmt)


def save_figure(fig: go.Figure, save_path: str | Path) -> Path:
    """Save ``fig`` by suffix: ``.html`` (self-contained, works offline), ``.png`` or ``.svg``
    (through kaleido and Chrome/Chromium). Parent folders are created; the file is written
    atomically (a reader never sees half a file).

    Args:
        fig: the figure.
        save_path: target file.

    Returns:
        The path written.

    Raises:
        ValueError: unknown suffix (the message lists the allowed ones).
        RuntimeError: PNG/SVG asked for and no Chrome/Chromium found.
    """
    if not isinstance(fig, go.Figure):
        raise TypeError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    path = check_save_path(save_path)
    if path is None:
        raise TypeError("save_path must be a str or pathlib.Path, got None")
    suffix = path.suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise ValueError(
            f"save_path must end in one of {', '.join(SAVE_SUFFIXES)}, got {str(save_path)!r}"
        )
    atomic_write_bytes(path, figure_bytes(fig, suffix[1:]))  # renders first: no folder on failure
    return path


def figure_payload_bytes(fig: go.Figure) -> int:
    """Size of the figure's JSON in bytes (what the app sends to the browser per chart)."""
    return len(fig.to_json().encode("utf-8"))
