"""Page 3: where a model's attention goes, with its relative position bias and with it zeroed."""

from __future__ import annotations

import streamlit as st

from app_support import state, ui
from app_support.frame import page_frame
from relpos import diagnostics, explore, geometry, presets
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES

source, layer, head = page_frame("Attention maps", ":material/visibility:")
st.markdown(
    "The current model (sidebar) looks at one input; each map shows how much a query patch attends "
    "to every patch of the image. Left: as the model computes it; right: the same forward with every "
    "relative position bias zeroed, so the difference is what position alone contributes. "
    "**Try first:** pick a trained checkpoint in the sidebar, then move the query over a mark."
)
TABLE_CHOICES = (state.AS_LOADED, *[p for p in presets.BIAS_PRESETS if p != "init"])
if source is None:
    st.warning("Choose a model in the sidebar first.")
    st.stop()

c1, c2, c3 = st.columns(3)
with c1:
    kind = st.radio("Input", ["sample", "upload"], key="am_input", horizontal=True,
                    format_func={"sample": "Dataset sample", "upload": "Upload an image"}.get)
    upload, sample = None, 0
    if kind == "sample":
        sample = int(st.number_input("Sample", 0, 9_999, 0, key="am_sample"))
    else:
        f = st.file_uploader("Image (PNG/JPEG, ≤ 10 MB)", type=["png", "jpg", "jpeg"], key="am_upload")
        if f is None:
            st.info("Upload a picture; it is resized to the model's input size.")
            st.stop()
        upload = f.getvalue()
with c2:
    table = st.selectbox("Bias table", TABLE_CHOICES, key="am_table",
                         help="'as loaded' uses the model's own table; the others replace it in a copy.")
    alpha = st.slider("Preset strength α", 0.0, 5.0, 1.0, 0.1, key="am_alpha",
                      disabled=table in (state.AS_LOADED, "zeros"))

with ui.guard("compute the attention maps",
              "pick another model or input; a checkpoint whose dataset is unavailable needs an upload"):
    summary = diagnostics.model_summary(state.load_source(source)[0])
    fam = FAMILIES.get(summary["bias_type"] or "")
    if table != state.AS_LOADED and (fam is None or not fam.learned):
        st.warning("This model has no relative position bias: the table presets do not apply." if fam is None
                   else f"This model's bias ({fam.label}) has no table to edit. Showing it as loaded.")
        table = state.AS_LOADED
    layer = min(layer, max(0, int(summary["depth"]) - 1))
    res = state.attention_maps(source, table, float(alpha), sample, upload, layer)
    n_all = res["with"].shape[-1]
    grid = summary["grid"] if summary["grid"] else (1, n_all)
    # A class token has no place on the patch grid: the maps leave it out.
    maps_with = geometry.strip_class_token(res["with"], grid)  # (H, N, N) over the patches
    maps_without = geometry.strip_class_token(res["without"], grid)
    n = maps_with.shape[-1]
    if n_all != n:
        st.caption("This model has a class token (token 0); the maps show the patch tokens only.")
    with c3:
        query = ui.index_slider("Query patch", n, geometry.center_token(grid), key="am_query")
        st.caption(f"query {query} at (y, x) = {divmod(query, grid[1])} · layer {layer} · head {head}")
    names = res["class_names"]

    def name(k: int) -> str:
        return names[k] if names and k < len(names) else str(k)

    with c1:
        label = "" if res["label"] is None else f" · label: {name(res['label'])}"
        st.image(explore.upscale_nearest(res["picture"], 160), caption="input" + label, width=160)
        pw, pwo = res["probs_with"], res["probs_without"]
        st.caption(f"prediction with bias: **{name(int(pw.argmax()))}** ({pw.max():.0%}) · "
                   f"bias zeroed: **{name(int(pwo.argmax()))}** ({pwo.max():.0%})")
    if fam is not None:
        d_with = diagnostics.mean_attention_distance(maps_with, grid)
        d_without = diagnostics.mean_attention_distance(maps_without, grid)
        ui.reach_metrics([(f"Reach, head {head}", d_with[head], d_without[head]),
                          (f"Reach, layer {layer} mean", d_with.mean(), d_without.mean())], "patches",
                         "*Reach* is the mean attention distance on this input: how far, on average, each query's "
                         "attention goes. Negative change: the bias pulls attention towards nearby patches.")
        with st.expander(f"Diagnostics of the bias, layer {layer}, per head"):
            rows, _note = state.diagnostics(source, table, float(alpha), sample, upload)
            ui.diagnostics_table(rows, layer, key="am_diag")
    ui.side_by_side(*[(viz.query_centric_figure(maps[head], query, grid, image=res["picture"],
                                                title=f"{what} · layer {layer}, head {head}"), key)
                      for maps, what, key in ((maps_with, "With bias", "am_query_with"),
                                              (maps_without, "Bias zeroed", "am_query_without"))])
    st.subheader(f"All heads of layer {layer}")
    ui.plotly(viz.visualize_attention_weights(maps_with, title=f"Attention, layer {layer}, every head",
                                               window_size=grid), key="am_heads")
    if fam is not None:
        ui.plotly(viz.difference_figure(maps_without, maps_with, kind="bias", names=("bias zeroed", "with bias"),
                                        window_size=grid), key="am_diff")
