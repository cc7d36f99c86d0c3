"""Click targets and selection marks for the heatmap figures (no streamlit here).

Streamlit's ``st.plotly_chart(on_select=...)`` reports clicks on scatter points only: a heatmap cell
gives no selection. :func:`add_cell_picker` lays a transparent ``go.Scatter`` over every heatmap of a
figure, one marker per cell, whose ``customdata`` starts with what a click selects: ``(panel, row,
column)``. A client reads those three numbers from the selected point (:func:`picked_cell`) and
decides what they mean (a query patch ``(y, x)`` on a query map, a pair ``(i, j)`` on an index
matrix, a head on small multiples).

Plotly's ``closest`` hover picks a scatter point over a heatmap cell, so the picker takes over the
heatmap's hover: its template is rewritten to read the same numbers from the scatter's
``customdata`` (the hover text is unchanged), and ``hoverdistance=-1`` makes the nearest marker,
which is the centre of the cell under the mouse, the one hovered and clicked.

:func:`mark_cells` and :func:`mark_panel` draw a selection; :func:`image_grid_figure` is an input
image with its patch grid, clickable per patch.

Shape legend: ``P`` panels (heatmaps), ``R x C`` cells of one heatmap, ``K`` hover fields per cell.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from relpos._validation import check_int, check_window_size
from relpos.experiments._figure_core import to_numpy

__all__ = [
    "MAX_PICK_POINTS",
    "PICK_FIELDS",
    "add_cell_picker",
    "heatmap_panels",
    "image_grid_figure",
    "mark_cells",
    "mark_panel",
    "picked_cell",
]

#: Most click markers one figure carries (over all its panels); above it every s-th cell of each
#: side gets one (the hover then says so). 20k SVG points stay responsive in Chromium.
MAX_PICK_POINTS = 20_000
#: The leading ``customdata`` fields of a picker point: panel index, row, column of the cell.
PICK_FIELDS = 3
_PICK_META = "relpos-pick"


def heatmap_panels(fig: go.Figure) -> list[go.Heatmap]:
    """The figure's heatmap traces in drawing order (panel ``k`` is the ``k``-th heatmap)."""
    return [tr for tr in fig.data if tr.type == "heatmap"]


def _axis_values(values: Any, n: int) -> np.ndarray:
    """A heatmap's ``x`` or ``y`` coordinates (``None``: ``0 .. n-1``) as float32 ``(n,)``."""
    if values is None:
        return np.arange(n, dtype=np.float32)
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"heatmap coordinates have {arr.shape[0]} values for {n} cells")
    return arr


def _stride(total: int, max_points: int) -> int:
    """Every how many cells per side a marker goes so that ``total`` cells give ``<= max_points``."""
    return max(1, math.ceil(math.sqrt(total / max_points)))


def _picked_rows(n: int, stride: int) -> np.ndarray:
    """Row (or column) indices that get a marker: all, or every ``stride``-th centred in its block."""
    if stride == 1:
        return np.arange(n)
    return np.arange(min(stride // 2, n - 1), n, stride)


def _rewrite_template(template: str | None, n_fields: int) -> str:
    """A heatmap hovertemplate reading its customdata and z from the picker's customdata instead:
    ``customdata[k]`` -> ``customdata[k + 3]``, ``z`` -> ``customdata[3 + n_fields]``."""
    value = f"customdata[{PICK_FIELDS + n_fields}]"
    if template is None:
        return "(%{x}, %{y})<br>value = %{" + value + ":.4g}<extra></extra>"
    out = re.sub(r"%\{customdata\[(\d+)\]",
                 lambda m: f"%{{customdata[{int(m.group(1)) + PICK_FIELDS}]", template)
    out = out.replace("%{customdata}", f"%{{customdata[{PICK_FIELDS}]}}")
    return out.replace("%{z", "%{" + value)


def _picker_trace(xs: np.ndarray, ys: np.ndarray, customdata: np.ndarray, template: str,
                  xaxis: str, yaxis: str, name: str) -> go.Scatter:
    """Invisible markers at ``(xs, ys)`` that carry ``customdata`` (P, 3 + ...) and the hover."""
    return go.Scatter(
        x=xs, y=ys, mode="markers", customdata=customdata, hovertemplate=template, name=name,
        marker={"size": 6, "opacity": 0.0, "color": "black"}, showlegend=False, xaxis=xaxis, yaxis=yaxis,
        meta=_PICK_META,
    )  # fmt: skip


def add_cell_picker(fig: go.Figure, *, max_points: int = MAX_PICK_POINTS,
                    note: str | None = None) -> go.Figure:
    """Make every heatmap cell of ``fig`` clickable (in place; the figure is returned).

    Args:
        fig: a figure with one or more ``go.Heatmap`` traces (small multiples: one per panel).
        max_points: most markers in all; above it every s-th cell per side is clickable and the
            hover says ``(nearest clickable cell)``.
        note: a line added to every hover (e.g. ``"click: choose this query"``).

    Returns:
        ``fig``, with one invisible ``go.Scatter`` per heatmap whose point ``(r, c)`` has
        ``customdata = (panel, r, c, *heatmap customdata[r, c], z[r, c])``; the heatmaps' own hover is
        off (the scatter shows the same text) and ``layout.hoverdistance`` is ``-1``.
    """
    max_points = check_int("max_points", max_points)
    panels = heatmap_panels(fig)
    if not panels:
        raise ValueError("fig has no heatmap trace to make clickable")
    total = sum(int(np.asarray(tr.z).size) for tr in panels)
    stride = _stride(total, max_points)
    for k, tr in enumerate(panels):
        z = to_numpy("heatmap z", tr.z)
        if z.ndim != 2:
            raise ValueError(f"heatmap {k} must have a 2D z, got shape {tuple(z.shape)}")
        n_rows, n_cols = z.shape
        rows, cols = _picked_rows(n_rows, stride), _picked_rows(n_cols, stride)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")  # (R', C') each
        rr, cc = rr.reshape(-1), cc.reshape(-1)  # (R'C',)
        fields = [np.full(rr.shape, k, np.float32), rr.astype(np.float32), cc.astype(np.float32)]
        extra = 0
        if tr.customdata is not None:
            cd = np.asarray(tr.customdata, dtype=np.float32)
            cd = cd[..., None] if cd.ndim == 2 else cd  # (R, C, K)
            extra = cd.shape[-1]
            fields.extend(cd[rr, cc].T)  # K arrays of (R'C',)
        fields.append(z[rr, cc])
        customdata = np.stack(fields, axis=-1).astype(np.float32)  # (R'C', 3 + K + 1)
        template = _rewrite_template(tr.hovertemplate, extra)
        extras = [note] if note else []
        if stride > 1:
            extras.append(f"(nearest clickable cell: every {stride}th per side)")
        if extras:
            lines = "<br>" + "<br>".join(extras)
            if "<extra>" in template:
                template = template.replace("<extra>", lines + "<extra>", 1)
            else:
                template += lines
        xs = _axis_values(tr.x, n_cols)[cc]
        ys = _axis_values(tr.y, n_rows)[rr]
        fig.add_trace(_picker_trace(xs, ys, customdata, template, tr.xaxis or "x", tr.yaxis or "y",
                                    f"pick {k}"))
        tr.hoverinfo = "skip"
        tr.hovertemplate = None
    fig.update_layout(hoverdistance=-1, hovermode="closest")
    return fig


def picked_cell(selection: Mapping[str, Any] | None) -> tuple[int, int, int] | None:
    """``(panel, row, column)`` of the first picker point of a Streamlit plotly selection
    (``event.selection`` or the event itself), or ``None`` when nothing was picked."""
    if not selection:
        return None
    selection = selection.get("selection", selection)
    for point in selection.get("points") or []:
        cd = point.get("customdata")
        if isinstance(cd, Mapping):  # a typed array reaches Python as {"0": panel, "1": row, ...}
            try:
                cd = [cd[k] for k in sorted(cd, key=int)]
            except (TypeError, ValueError):
                continue
        if isinstance(cd, Sequence) and not isinstance(cd, str) and len(cd) >= PICK_FIELDS:
            try:
                return int(cd[0]), int(cd[1]), int(cd[2])
            except (TypeError, ValueError):
                continue
    return None


def _cell_half(values: Any, n: int) -> tuple[np.ndarray, float]:
    axis = _axis_values(values, n)
    half = float(axis[1] - axis[0]) / 2 if n > 1 else 0.5
    return axis, half


def mark_cells(
    fig: go.Figure,
    cells: Iterable[tuple[int, int]],
    *,
    panels: Iterable[int] | None = None,
    color: str = "white",
    width: float = 3.0,
    dash: str | None = None,
) -> go.Figure:
    """Outline heatmap cells ``(row, column)`` on panels ``panels`` (default: every heatmap), in place.

    Raises:
        ValueError: a cell outside a panel's rows and columns, or a panel that does not exist.
    """
    heatmaps = heatmap_panels(fig)
    chosen = range(len(heatmaps)) if panels is None else list(panels)
    cells = list(cells)
    for k in chosen:
        if not 0 <= k < len(heatmaps):
            raise ValueError(f"panels must be in [0, {len(heatmaps) - 1}], got {k}")
        tr = heatmaps[k]
        n_rows, n_cols = np.shape(tr.z)
        xs, hx = _cell_half(tr.x, n_cols)
        ys, hy = _cell_half(tr.y, n_rows)
        for r, c in cells:
            if not (0 <= r < n_rows and 0 <= c < n_cols):
                raise ValueError(f"cell (row, column) must be inside {n_rows}x{n_cols}, got ({r}, {c})")
            fig.add_shape(
                type="rect", xref=tr.xaxis or "x", yref=tr.yaxis or "y",
                x0=float(xs[c]) - hx, x1=float(xs[c]) + hx, y0=float(ys[r]) - hy, y1=float(ys[r]) + hy,
                line={"color": color, "width": width, "dash": dash}, layer="above",
            )  # fmt: skip
    return fig


def mark_panel(fig: go.Figure, panel: int, *, color: str = "#d62728", label: str = "selected") -> go.Figure:
    """Frame heatmap panel ``panel`` and add ``label`` to its title (in place): a selected head."""
    heatmaps = heatmap_panels(fig)
    panel = check_int("panel", panel, minimum=0, maximum=len(heatmaps) - 1)
    tr = heatmaps[panel]
    xr, yr = tr.xaxis or "x", tr.yaxis or "y"
    fig.add_shape(
        type="rect", xref=f"{xr} domain", yref=f"{yr} domain", x0=-0.03, x1=1.03, y0=-0.03, y1=1.03,
        line={"color": color, "width": 4}, layer="above",
    )  # fmt: skip
    annotations = list(fig.layout.annotations or ())
    if len(annotations) == len(heatmaps) and label:  # one title per panel, in panel order
        ann = annotations[panel]
        ann.text = f"<b>{ann.text} · {label}</b>"
        ann.font.color = color
        ann.yshift = (ann.yshift or 0) + 10  # above the frame, which reaches 3 % beyond the panel
    return fig


def _png_uri(pic: np.ndarray) -> str:
    """An ``(H, W, 3)`` uint8 picture as a PNG data URI (a fraction of the pixel array's JSON)."""
    from PIL import Image  # optional dependency, as in relpos.experiments.visualize

    buf = io.BytesIO()
    Image.fromarray(pic).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_grid_figure(
    picture: Any,
    grid: tuple[int, int],
    *,
    selected: tuple[int, int] | None = None,
    title: str = "",
    size_px: int = 320,
    note: str = "click a patch to choose it as the query",
) -> go.Figure:
    """An input picture with its patch grid; every patch clickable, the ``selected`` one outlined.

    Args:
        picture: ``(H, W, 3)`` uint8 (e.g. :func:`relpos.explore.display_image`); drawn as it is.
        grid: ``(h, w)`` patches over the picture.
        selected: ``(y, x)`` of the patch to outline, or ``None``.
        title: figure title.
        size_px: the figure's longer side in pixels.
        note: the hover's last line.

    Returns:
        The figure: one ``go.Image`` and one picker trace whose points are ``(0, y, x)`` per patch.
    """
    pic = np.asarray(picture)
    if pic.ndim != 3 or pic.shape[-1] != 3 or pic.dtype != np.uint8:
        raise ValueError(f"picture must be an (H, W, 3) uint8 array, got {pic.dtype} {tuple(pic.shape)}")
    h, w = check_window_size("grid", grid)
    size_px = check_int("size_px", size_px, minimum=64, maximum=2000)
    k = max(1, min(16, math.ceil(size_px / max(pic.shape[:2]))))  # nearest-neighbour blow-up: crisp pixels
    pic = np.repeat(np.repeat(pic, k, axis=0), k, axis=1)  # (kH, kW, 3)
    dy, dx = h / pic.shape[0], w / pic.shape[1]  # grid cells per picture pixel
    fig = go.Figure(go.Image(source=_png_uri(pic), x0=-0.5 + dx / 2, y0=-0.5 + dy / 2, dx=dx, dy=dy,
                             hoverinfo="skip"))
    ys, xs = np.mgrid[0:h, 0:w]  # (h, w) each
    ys, xs = ys.reshape(-1), xs.reshape(-1)  # (h*w,): patch t = y * w + x
    customdata = np.stack([np.zeros_like(ys), ys, xs, ys * w + xs], axis=-1).astype(np.float32)  # (h*w, 4)
    template = f"patch (y, x) = (%{{y}}, %{{x}}) · token %{{customdata[3]}}<br>{note}<extra></extra>"
    fig.add_trace(_picker_trace(xs.astype(np.float32), ys.astype(np.float32), customdata, template, "x", "y",
                                "pick 0"))
    ends = [(c - 0.5, c - 0.5, -0.5, h - 0.5) for c in range(1, w)]  # between columns
    ends += [(-0.5, w - 0.5, r - 0.5, r - 0.5) for r in range(1, h)]  # between rows
    for x0, x1, y0, y1 in ends:
        fig.add_shape(type="line", xref="x", yref="y", x0=x0, x1=x1, y0=y0, y1=y1,
                      line={"color": "rgba(255,255,255,0.45)", "width": 1})
    if selected is not None:
        y, x = selected
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"selected must be a patch (y, x) inside the {h}x{w} grid, got {selected}")
        fig.add_shape(type="rect", xref="x", yref="y", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5,
                      line={"color": "#ffd400", "width": 4}, layer="above")
    scale = size_px / max(h, w)
    fig.update_layout(
        title={"text": title, "x": 0.02} if title else None, width=int(w * scale) + 40,
        height=int(h * scale) + (70 if title else 30),
        margin={"l": 20, "r": 20, "t": 50 if title else 10, "b": 20},
        xaxis={"range": [-0.5, w - 0.5], "showticklabels": False, "showgrid": False, "zeroline": False},
        yaxis={"range": [h - 0.5, -0.5], "showticklabels": False, "showgrid": False, "zeroline": False,
               "scaleanchor": "x", "scaleratio": 1},
        hoverdistance=-1, hovermode="closest",
    )  # fmt: skip
    return fig
