"""Matplotlib colormap names -> Plotly colorscales.

The seed API takes matplotlib names (``cmap="coolwarm"``); Plotly has no ``coolwarm`` and spells
the others in CamelCase. :func:`resolve_colorscale` maps the common matplotlib names and passes
Plotly's own scale names through unchanged.
"""

from __future__ import annotations

import functools

import plotly.colors

__all__ = ["DIVERGING_SCALES", "MATPLOTLIB_TO_PLOTLY", "resolve_colorscale"]

#: matplotlib name -> Plotly colorscale name (``_r`` reverses a Plotly scale).
MATPLOTLIB_TO_PLOTLY: dict[str, str] = {
    "viridis": "Viridis",
    "magma": "Magma",
    "inferno": "Inferno",
    "plasma": "Plasma",
    "cividis": "Cividis",
    "coolwarm": "RdBu_r",
    "bwr": "RdBu_r",
    "seismic": "RdBu_r",
    "RdBu": "RdBu",
    "RdBu_r": "RdBu_r",
    "PiYG": "PiYG",
    "PRGn": "PRGn",
    "BrBG": "BrBG",
    "PuOr": "PuOr",
    "Spectral": "Spectral",
    "Blues": "Blues",
    "Reds": "Reds",
    "Greens": "Greens",
    "Oranges": "Oranges",
    "Purples": "Purples",
    "Greys": "Greys",
    "gray": "gray",
    "grey": "gray",
    "hot": "Hot",
    "jet": "Jet",
    "turbo": "Turbo",
    "YlOrRd": "YlOrRd",
    "YlGnBu": "YlGnBu",
}

#: Plotly scale names (lower case, without ``_r``) that diverge around a midpoint.
DIVERGING_SCALES: frozenset[str] = frozenset(
    {"rdbu", "piyg", "prgn", "brbg", "puor", "spectral", "rdylbu", "rdylgn", "picnic", "portland",
     "balance", "curl", "delta", "tealrose", "temps", "tropic", "armyrose", "fall", "geyser", "earth"}
)


@functools.lru_cache(maxsize=1)
def _plotly_names() -> frozenset[str]:
    # Every named scale Plotly accepts, in lower case; "_r" reversals are accepted too.
    return frozenset(name.lower() for name in plotly.colors.named_colorscales())


def resolve_colorscale(cmap: str) -> str:
    """Return the Plotly colorscale name for a matplotlib or Plotly colormap name.

    Args:
        cmap: a matplotlib name (``"viridis"``, ``"coolwarm"``, ``"gray"``, ...) or a Plotly
            colorscale name (``"Viridis"``, ``"RdBu_r"``, ``"Tealrose"``, ...).

    Returns:
        A name Plotly accepts as ``colorscale``.

    Raises:
        TypeError: ``cmap`` is not a string.
        ValueError: the name is neither a known matplotlib name nor a Plotly scale; the message
            lists the matplotlib names allowed.
    """
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a colormap name (str), got {cmap!r} ({type(cmap).__name__})")
    if cmap in MATPLOTLIB_TO_PLOTLY:
        return MATPLOTLIB_TO_PLOTLY[cmap]
    base = cmap[:-2] if cmap.endswith("_r") else cmap
    if base.lower() in _plotly_names():
        return cmap
    allowed = ", ".join(sorted(MATPLOTLIB_TO_PLOTLY, key=str.lower))
    raise ValueError(
        f"cmap must be a matplotlib colormap name ({allowed}) or a Plotly colorscale name "
        f"(plotly.colors.named_colorscales(), optionally with '_r'), got {cmap!r}"
    )


def is_diverging(colorscale: str) -> bool:
    """Whether a resolved Plotly scale name is a diverging scale (drawn centred at a midpoint)."""
    base = colorscale[:-2] if colorscale.endswith("_r") else colorscale
    return base.lower() in DIVERGING_SCALES
