"""The Attention maps page's sections: where a model's attention goes, with and without its position information.

The page reads as a table of contents: the controls are drawn in three steps (:func:`input_controls`
before anything is computed, :func:`model_controls` once the model is known, :func:`view_controls`
once its grid is), each returning a small frozen dataclass that the later sections take as
arguments. Every number comes from one cached loader of :mod:`app_support.state`; this module only
lays out widgets and charts. Widget and chart keys start with ``am_``. Nothing here calls
``st.stop``: a function that finds nothing to draw returns None and the page stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import streamlit as st

from app_support import interact, rope_ui, state, ui
from relpos import captions, diagnostics, explore, geometry, presets
from relpos.experiments import figure_compare, figure_select
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES, BiasFamily

#: The "Relative bias table" choices: the model's own table, or a preset in a copy of it.
TABLE_CHOICES = (state.AS_LOADED, *[p for p in presets.BIAS_PRESETS if p != "init"])


@dataclass(frozen=True)
class Inputs:
    """The model (sidebar), the picture and the table it looks at (the cached loaders' first arguments)."""

    source: str
    table: str
    alpha: float
    sample: int
    upload: bytes | None


@dataclass(frozen=True)
class Model:
    """The model as the page shows it: ``inputs`` with the table it really uses, the layer (clamped to
    its depth) and the part of its position information switched off (None: it has none)."""

    inputs: Inputs
    summary: dict[str, Any]
    fam: BiasFamily | None
    layer: int
    part: str | None
    on_label: str
    off_label: str


@dataclass(frozen=True)
class Maps:
    """One forward's attention (:func:`state.attention_maps`), the class token left out of the maps."""

    res: dict[str, Any]
    grid: tuple[int, int]
    with_: np.ndarray  # (H, N, N) over the patches, as computed
    without: np.ndarray  # (H, N, N) with ``part`` switched off


@dataclass(frozen=True)
class View:
    """Which query and head the maps show, and how."""

    query: int
    head: int
    style: str
    per_panel: bool


def control_slots() -> tuple[dict[str, Any], Any]:
    """Lays out the controls (three columns, or in presenter mode one row of the four a lecture moves and
    the rest behind a button). Returns ``(slots, first)``: ``{control name: container}`` (plus
    ``"prediction"``: under the image, or ``first`` in presenter mode) and the container right under
    the controls where presenter mode draws the prediction and the two maps."""
    slots = interact.control_slots([("input", "sample", "image"), ("table", "alpha", "part"),
                                    ("query", "style", "scale")],
                                   main=("sample", "table", "part", "query"))
    first = interact.first_section()
    slots["prediction"] = first if interact.presenting() else slots["image"]
    return slots, first


def input_controls(slots: dict[str, Any], source: str) -> Inputs | None:
    """Draws the input (a validation sample or an upload), the table and its strength. Returns None,
    after a note, while an upload is chosen but no picture given (the page then stops)."""
    with slots["input"]:
        kind = st.radio("Input", ["sample", "upload"], key="am_input", horizontal=True,
                        format_func={"sample": "Dataset sample", "upload": "Upload an image"}.get,
                        help="Look at a picture of the model's own validation set, or at one of yours.")
        upload, sample = None, 0
    with slots["sample"]:
        if kind == "sample":
            sample = int(st.number_input("Validation sample", 0, 9_999, 0, key="am_sample",
                                         help="Which picture of the validation set (the same number, the same picture)."))
        else:
            f = st.file_uploader("Image (PNG/JPEG, ≤ 10 MB)", type=["png", "jpg", "jpeg"], key="am_upload",
                                 help="Any picture; it is resized to the model's input size.")
            if f is None:
                st.info("Upload a picture; it is resized to the model's input size.")
                return None
            upload = f.getvalue()
    with slots["table"]:
        table = st.selectbox("Relative bias table", TABLE_CHOICES, key="am_table",
                             help="'as loaded' uses the model's own table; the others replace it in a copy.")
    with slots["alpha"]:
        alpha = st.slider("Preset strength α", 0.0, 5.0, 1.0, 0.1, key="am_alpha",
                          disabled=table in (state.AS_LOADED, "zeros"),
                          help="How strong the replacement table is (larger: a stronger pull).")
    return Inputs(source=source, table=table, alpha=float(alpha), sample=sample, upload=upload)


def model_controls(slots: dict[str, Any], inputs: Inputs, layer: int) -> Model:
    """Reads the model's summary; warns (and keeps the table as loaded) when a preset does not apply;
    draws "Switch off" (the parts of position information this model has) into ``slots``."""
    summary = diagnostics.model_summary(state.load_source(inputs.source)[0])
    fam = FAMILIES.get(summary["bias_type"] or "")
    if inputs.table != state.AS_LOADED and (fam is None or not fam.learned):
        st.warning("This model has no relative position bias: the table presets do not apply." if fam is None
                   else f"This model's bias ({fam.label}) has no table to edit. Showing it as loaded.")
        inputs = replace(inputs, table=state.AS_LOADED)
    parts = tuple(summary["position"])  # what this model has that can be switched off
    with slots["part"]:
        part = st.selectbox("Switch off", parts, key="am_part", format_func=lambda p: captions.ABLATIONS[p][0],
                            help="The right-hand map is the same forward with this source of position "
                            "information removed.") if parts else None
    on_label, off_label = captions.ablation_labels(part)
    return Model(inputs=inputs, summary=summary, fam=fam, layer=min(layer, max(0, int(summary["depth"]) - 1)),
                 part=part, on_label=on_label, off_label=off_label)


def attention(model: Model) -> Maps:
    """The attention with and without ``model.part`` (one cached call, :func:`state.attention_maps`); a
    caption when the model has a class token (it has no place on the patch grid: the maps leave it out)."""
    i = model.inputs
    res = state.attention_maps(i.source, i.table, i.alpha, i.sample, i.upload, model.layer, model.part)
    n_all = res["with"].shape[-1]
    grid = model.summary["grid"] if model.summary["grid"] else (1, n_all)
    maps = Maps(res=res, grid=grid, with_=geometry.strip_class_token(res["with"], grid),
                without=geometry.strip_class_token(res["without"], grid))
    if n_all != maps.with_.shape[-1]:
        st.caption("This model has a class token (token 0); the maps show the patch tokens only.")
    return maps


def view_controls(slots: dict[str, Any], grid: tuple[int, int], layer: int, head: int) -> View:
    """Draws the query patch (and, outside presenter mode, where it is), the overlay style and the colour
    scale toggle into ``slots``; returns them with the sidebar's ``head``."""
    with slots["query"]:
        query = interact.query_slider("Query patch", grid, key="am_query",
                                      help="Which patch asks the question; its row of attention is drawn (y·w + x). "
                                      "Or click a patch on a map or on the input image.")
        if not interact.presenting():  # the selection line under the controls says it
            st.caption(f"query {query} at (y, x) = {divmod(query, grid[1])} · layer {layer} · head {head}")
    with slots["style"]:
        style = st.radio("Draw attention as", figure_compare.OVERLAY_STYLES, key="am_style", horizontal=True,
                         format_func={"veil": "veil", "contours": "contour lines", "colour": "colour map"}.get,
                         help="Veil: the picture untouched where the query looks, fogged where it does not. "
                         "Contour lines: lines of equal attention over the plain picture. Colour map: blended.")
    with slots["scale"]:
        per_panel = ui.scale_toggle("am_per_panel")
    return View(query=query, head=head, style=style, per_panel=per_panel)


def class_name(names: Sequence[str] | None, k: int) -> str:
    """Class ``k``'s name when the dataset has one, else its number."""
    return names[k] if names and k < len(names) else str(k)


def input_column(slots: dict[str, Any], model: Model, maps: Maps, view: View) -> None:
    """The input picture with its label (its patches clickable: a click makes a patch the query), and
    the prediction with and without ``model.part`` under it (``slots["prediction"]``)."""
    res, grid, names = maps.res, maps.grid, maps.res["class_names"]
    with slots["image"]:
        label = "" if res["label"] is None else f" · label: {class_name(names, res['label'])}"
        if model.summary["grid"]:  # the input with its patches: a click makes a patch the query
            ui.plotly(figure_select.image_grid_figure(res["picture"], grid, selected=divmod(view.query, grid[1]),
                                                      title="input" + label, size_px=200),
                      key="am_input_image", on_select=interact.on_query("am_input_image"))
        else:
            st.image(explore.upscale_nearest(res["picture"], 160), caption="input" + label, width=160)
    with slots["prediction"]:
        pw, pwo = res["probs_with"], res["probs_without"]
        said = f"prediction: **{class_name(names, int(pw.argmax()))}** ({pw.max():.0%})"
        st.caption(f"{said} · {model.off_label}: **{class_name(names, int(pwo.argmax()))}** ({pwo.max():.0%})"
                   if model.part else
                   f"{said} · this model has no position information (no relative bias, rotation or absolute "
                   "embedding), so there is nothing to switch off.")


def reach_section(model: Model, maps: Maps, view: View) -> None:
    """The reach of the head and of the layer with and without ``model.part``, with the bias's own
    diagnostics in words and, per head, in an expander. Nothing without a part to switch off."""
    if model.part is None:
        return
    i, layer, head = model.inputs, model.layer, view.head
    d_with = diagnostics.mean_attention_distance(maps.with_, maps.grid)
    d_without = diagnostics.mean_attention_distance(maps.without, maps.grid)
    rows = state.diagnostics(i.source, i.table, i.alpha, i.sample, i.upload)[0] if model.fam is not None else []
    said = captions.bias_effect_sentence([r for r in rows if r["layer"] == layer], num_tokens=maps.with_.shape[-1],
                                         subject=f"In layer {layer} the relative bias (by its own diagnostics)")
    reach = captions.reach_sentence(float(d_with.mean()), float(d_without.mean()), model.part)
    ui.reach_metrics([(f"{captions.REACH_NAME}, head {head}", d_with[head], d_without[head]),
                      (f"{captions.REACH_NAME}, layer {layer} mean", d_with.mean(), d_without.mean())],
                     f"{reach} {said}", off_label=model.off_label)
    if rows:
        with st.expander(f"Diagnostics of the bias, layer {layer}, per head"):
            ui.diagnostics_table(rows, layer, key="am_diag")


def paired_maps(first: Any, model: Model, maps: Maps, view: View) -> None:
    """The selection line and the query's attention over the picture, as computed and with ``model.part``
    switched off (a click picks the query); first on the page in presenter mode."""
    part, on_label, off_label, layer, head = model.part, model.on_label, model.off_label, model.layer, view.head
    with interact.main_maps(first):
        interact.selection_line(maps.grid, view.query, widget_key="am_clear")
        pair = [(maps.with_, f"{on_label[0].upper()}{on_label[1:]}" if part else "As computed", "am_query_with")]
        if part is not None:
            pair.append((maps.without, f"{off_label[0].upper()}{off_label[1:]}", "am_query_without"))
        figs = [(figure_compare.attention_over_image(m[head], view.query, maps.grid, maps.res["picture"],
                                                     style=view.style, marks=maps.res["marks"],
                                                     title=f"{what} · layer {layer}, head {head}"),
                 key) for m, what, key in pair]
        figure_compare.share_color_axis([f for f, _ in figs], per_panel=view.per_panel)
        for fig, _key in figs:
            figure_select.add_cell_picker(fig, note="click: make this patch the query")
        ui.side_by_side(*[(fig, key, interact.on_query(key)) for fig, key in figs])
        if maps.res["marks"]:
            st.caption("Marks outlined and labelled: **A** red, **B** blue; the query's patch is outlined in yellow. "
                       + ("One colour scale for both maps." if part and not view.per_panel else ""))


def all_heads(model: Model, maps: Maps, view: View) -> None:
    """"All heads of layer …": every head's attention matrix (a click shows that head above)."""
    st.subheader(f"All heads of layer {model.layer}")
    heads_fig = viz.visualize_attention_weights(maps.with_, title=f"Attention, layer {model.layer}, every head "
                                                "(click a head to show it above)", window_size=maps.grid)
    ui.plotly_heads(heads_fig, "am_heads", view.head, maps.with_.shape[0])


def difference(model: Model, maps: Maps) -> None:
    """What switching ``model.part`` off changes, every head; nothing without a part to switch off."""
    if model.part is not None:
        ui.plotly(viz.difference_figure(maps.without, maps.with_, kind="bias",
                                        names=(model.off_label, "as computed"), window_size=maps.grid),
                  key="am_diff")


def rope_kernel(model: Model, view: View) -> None:
    """A rotary model's position kernel for the layer (RoPE has no table: the kernel stands in for
    one, :func:`rope_ui.model_kernel`); nothing for a model without a rotation."""
    if model.summary["rotary"]:
        i = model.inputs
        st.subheader(f"The rotation's position kernel · layer {model.layer}")
        rope_ui.model_kernel(i.source, i.table, i.alpha, i.sample, i.upload, model.layer, view.head, key="am_rope")
