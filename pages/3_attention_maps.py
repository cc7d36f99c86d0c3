"""Page 3: where a model's attention goes, with its relative position bias and with it zeroed."""

from __future__ import annotations

import streamlit as st

from app_support import interact, links, rope_ui, state, ui
from app_support.frame import page_frame
from relpos import captions, diagnostics, explore, geometry, presets
from relpos.experiments import figure_compare, figure_select
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES

source, layer, head = page_frame("Attention maps", ":material/visibility:")
interact.prose(
    "The current model (sidebar) looks at one input; each map shows how much a query patch attends "
    "to every patch of the image: the picture stays as it is, and a veil clears where the query looks. "
    "Left: as the model computes it; right: the same forward with one source of position information "
    "switched off (the relative bias, the rotation or the absolute embedding, whichever the model has), "
    "so the difference is what that part contributes. "
    "**Try first:** pick a trained checkpoint in the sidebar, then click a patch on a mark (or on the input "
    "image) to make it the query; click a head in *All heads* to show that head."
)
TABLE_CHOICES = (state.AS_LOADED, *[p for p in presets.BIAS_PRESETS if p != "init"])
if source is None:
    st.warning("Choose a model in the sidebar first.")
    st.stop()

# Three columns of controls; in presenter mode one row of the four a lecture moves, the rest behind a button.
slots = interact.control_slots([("input", "sample", "image"), ("table", "alpha", "part"), ("query", "style", "scale")],
                               main=("sample", "table", "part", "query"))
first = interact.first_section()  # presenter mode: the prediction and the two maps right here
slots["prediction"] = first if interact.presenting() else slots["image"]
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
            st.stop()
        upload = f.getvalue()
with slots["table"]:
    table = st.selectbox("Relative bias table", TABLE_CHOICES, key="am_table",
                         help="'as loaded' uses the model's own table; the others replace it in a copy.")
with slots["alpha"]:
    alpha = st.slider("Preset strength α", 0.0, 5.0, 1.0, 0.1, key="am_alpha",
                      disabled=table in (state.AS_LOADED, "zeros"),
                      help="How strong the replacement table is (larger: a stronger pull).")

with ui.guard("compute the attention maps",
              "pick another model or input; a checkpoint whose dataset is unavailable needs an upload"):
    summary = diagnostics.model_summary(state.load_source(source)[0])
    fam = FAMILIES.get(summary["bias_type"] or "")
    if table != state.AS_LOADED and (fam is None or not fam.learned):
        st.warning("This model has no relative position bias: the table presets do not apply." if fam is None
                   else f"This model's bias ({fam.label}) has no table to edit. Showing it as loaded.")
        table = state.AS_LOADED
    layer = min(layer, max(0, int(summary["depth"]) - 1))
    parts = tuple(summary["position"])  # what this model has that can be switched off
    with slots["part"]:
        part = st.selectbox("Switch off", parts, key="am_part", format_func=lambda p: captions.ABLATIONS[p][0],
                            help="The right-hand map is the same forward with this source of position "
                            "information removed.") if parts else None
    on_label, off_label = captions.ablation_labels(part)
    res = state.attention_maps(source, table, float(alpha), sample, upload, layer, part)
    n_all = res["with"].shape[-1]
    grid = summary["grid"] if summary["grid"] else (1, n_all)
    # A class token has no place on the patch grid: the maps leave it out.
    maps_with = geometry.strip_class_token(res["with"], grid)  # (H, N, N) over the patches
    maps_without = geometry.strip_class_token(res["without"], grid)
    n = maps_with.shape[-1]
    if n_all != n:
        st.caption("This model has a class token (token 0); the maps show the patch tokens only.")
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
    names = res["class_names"]

    def name(k: int) -> str:
        return names[k] if names and k < len(names) else str(k)

    with slots["image"]:
        label = "" if res["label"] is None else f" · label: {name(res['label'])}"
        if summary["grid"]:  # the input with its patches: a click makes a patch the query
            ui.plotly(figure_select.image_grid_figure(res["picture"], grid, selected=divmod(query, grid[1]),
                                                      title="input" + label, size_px=200),
                      key="am_input_image", on_select=interact.on_query("am_input_image"))
        else:
            st.image(explore.upscale_nearest(res["picture"], 160), caption="input" + label, width=160)
    with slots["prediction"]:
        pw, pwo = res["probs_with"], res["probs_without"]
        said = f"prediction: **{name(int(pw.argmax()))}** ({pw.max():.0%})"
        st.caption(f"{said} · {off_label}: **{name(int(pwo.argmax()))}** ({pwo.max():.0%})" if part else
                   f"{said} · this model has no position information (no relative bias, rotation or absolute "
                   "embedding), so there is nothing to switch off.")
    if part is not None:
        d_with = diagnostics.mean_attention_distance(maps_with, grid)
        d_without = diagnostics.mean_attention_distance(maps_without, grid)
        rows = state.diagnostics(source, table, float(alpha), sample, upload)[0] if fam is not None else []
        said = captions.bias_effect_sentence([r for r in rows if r["layer"] == layer], num_tokens=n,
                                             subject=f"In layer {layer} the relative bias (by its own diagnostics)")
        ui.reach_metrics([(f"{captions.REACH_NAME}, head {head}", d_with[head], d_without[head]),
                          (f"{captions.REACH_NAME}, layer {layer} mean", d_with.mean(), d_without.mean())],
                         f"{captions.reach_sentence(float(d_with.mean()), float(d_without.mean()), part)} {said}",
                         off_label=off_label)
        if rows:
            with st.expander(f"Diagnostics of the bias, layer {layer}, per head"):
                ui.diagnostics_table(rows, layer, key="am_diag")
    with interact.main_maps(first):
        interact.selection_line(grid, query, widget_key="am_clear")
        pair = [(maps_with, f"{on_label[0].upper()}{on_label[1:]}" if part else "As computed", "am_query_with")]
        if part is not None:
            pair.append((maps_without, f"{off_label[0].upper()}{off_label[1:]}", "am_query_without"))
        figs = [(figure_compare.attention_over_image(maps[head], query, grid, res["picture"], style=style,
                                                     marks=res["marks"], title=f"{what} · layer {layer}, head {head}"),
                 key) for maps, what, key in pair]
        figure_compare.share_color_axis([f for f, _ in figs], per_panel=per_panel)
        for fig, _key in figs:
            figure_select.add_cell_picker(fig, note="click: make this patch the query")
        ui.side_by_side(*[(fig, key, interact.on_query(key)) for fig, key in figs])
        if res["marks"]:
            st.caption("Marks outlined and labelled: **A** red, **B** blue; the query's patch is outlined in yellow. "
                       + ("One colour scale for both maps." if part and not per_panel else ""))
    st.subheader(f"All heads of layer {layer}")
    heads_fig = viz.visualize_attention_weights(maps_with, title=f"Attention, layer {layer}, every head "
                                                "(click a head to show it above)", window_size=grid)
    if maps_with.shape[0] > 1:
        figure_select.add_cell_picker(heads_fig, note="click: show this head")
        figure_select.mark_panel(heads_fig, head)
    ui.plotly(heads_fig, key="am_heads", on_select=interact.on_head("am_heads"))
    if part is not None:
        ui.plotly(viz.difference_figure(maps_without, maps_with, kind="bias", names=(off_label, "as computed"),
                                        window_size=grid), key="am_diff")
    if summary["rotary"]:  # RoPE has no table: its position kernel stands in for one
        st.subheader(f"The rotation's position kernel · layer {layer}")
        rope_ui.model_kernel(source, table, float(alpha), sample, upload, layer, head, key="am_rope")
links.lesson_nav("pages/3_attention_maps.py")
