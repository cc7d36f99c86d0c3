"""Page 3: where a model's attention goes, with its relative position bias and with it zeroed."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_pages import _shared as sh
from relpos import explore
from relpos.experiments import visualize as viz

st.title("Attention maps")
st.markdown(
    "The current model (sidebar) looks at one input; each map shows how much a query patch attends "
    "to every patch of the image. Left: as the model computes it; right: the same forward with every "
    "relative position bias zeroed, so the difference is what position alone contributes. "
    "**Try first:** pick a trained checkpoint in the sidebar, then move the query over a mark."
)

TABLE_CHOICES = ("as loaded", *[p for p in explore.BIAS_PRESETS if p != "init"])


# Cached per layer: st.cache_data copies what it returns on every hit, and a 32x32 patch grid makes
# each layer's maps 4 MB per head.
@st.cache_data(max_entries=16, show_spinner="Running the model...")
def maps_for(source: str, modified: float, table: str, alpha: float, sample: int,
             upload: bytes | None, layer: int) -> dict:
    model, cfg = sh.load_source(source)
    if table != "as loaded":
        model = explore.apply_bias_preset(model, table, alpha=alpha)  # a copy; the cache stays intact
    if upload is not None:
        embed = model.patch_embed
        image = explore.image_from_upload(upload, embed.img_size[0], embed.in_channels)
        label, classes = None, explore.dataset_classes(cfg)
    else:
        image, label, classes = explore.sample_input(cfg, sample)
    return {
        "picture": explore.display_image(image),
        "label": label,
        "with": explore.attention_maps(model, image, with_bias=True)[layer],  # (H, N, N)
        "without": explore.attention_maps(model, image, with_bias=False)[layer],
        "probs_with": explore.predict(model, image),
        "probs_without": explore.predict(model, image, with_bias=False),
        "class_names": classes,
    }


@st.cache_data(max_entries=16, show_spinner="Measuring the bias...")
def diagnostics_for(source: str, modified: float, table: str, alpha: float, sample: int,
                    upload: bytes | None) -> list[dict]:
    """Per-head diagnostics of the shown model on the shown input (one cached call into relpos.explore)."""
    model, cfg = sh.load_source(source)
    if table != "as loaded":
        model = explore.apply_bias_preset(model, table, alpha=alpha)
    if upload is not None:
        embed = model.patch_embed
        image = explore.image_from_upload(upload, embed.img_size[0], embed.in_channels)
    else:
        image = explore.sample_input(cfg, sample)[0]
    key = f"{source}|{table}|{alpha}"
    return explore.cached_diagnostics(key, modified, model, image[None],
                                      input_key=("upload", hash(upload)) if upload is not None else ("sample", sample))


source, layer, head = sh.shared()
if source is None:
    st.warning("Choose a model in the sidebar first.")
    st.stop()

c1, c2, c3 = st.columns(3)
with c1:
    kind = st.radio("Input", ["sample", "upload"], key="am_input", horizontal=True,
                    format_func={"sample": "Dataset sample", "upload": "Upload an image"}.get)
    upload_bytes = None
    sample = 0
    if kind == "sample":
        sample = int(st.number_input("Sample", 0, 9_999, 0, key="am_sample"))
    else:
        f = st.file_uploader("Image (PNG/JPEG, ≤ 10 MB)", type=["png", "jpg", "jpeg"], key="am_upload")
        if f is None:
            st.info("Upload a picture; it is resized to the model's input size.")
            st.stop()
        upload_bytes = f.getvalue()
with c2:
    table = st.selectbox("Bias table", TABLE_CHOICES, key="am_table",
                         help="'as loaded' uses the model's own table; the others replace it in a copy.")
    alpha = st.slider("Preset strength α", 0.0, 5.0, 1.0, 0.1, key="am_alpha",
                      disabled=table in ("as loaded", "zeros"))

with sh.guard("compute the attention maps",
              "pick another model or input; a checkpoint whose dataset is unavailable needs an upload"):
    model, cfg = sh.load_source(source)
    summary = explore.model_summary(model)
    if summary["bias_type"] is None and table != "as loaded":
        st.warning("This model has no relative position bias: the table presets do not apply.")
        table = "as loaded"
    elif summary["bias_type"] not in (None, *explore.LEARNED_BIAS_TYPES) and table != "as loaded":
        st.warning(f"This model's bias ({summary['bias_type']}) has no table to edit: "
                   + ("ALiBi's is fixed by its head slopes" if summary["bias_type"] == "alibi"
                      else "cpb's is computed by its MLP") + ". Showing it as loaded.")
        table = "as loaded"
    layer = min(layer, max(0, int(summary["depth"]) - 1))
    res = maps_for(source, sh.source_key(source)[1], table, float(alpha), sample, upload_bytes, layer)
    n_all = res["with"].shape[-1]
    grid = summary["grid"] if summary["grid"] else (1, n_all)
    # A class token (e.g. bias_type 2d_cls) has no place on the patch grid: the maps leave it out.
    maps_with = explore.grid_part(res["with"], grid)  # (H, N, N) over the patches
    maps_without = explore.grid_part(res["without"], grid)
    n = maps_with.shape[-1]
    if n_all != n:
        st.caption("This model has a class token (token 0); the maps show the patch tokens only.")
    sh.clamp_state("am_query", 0, n - 1)
    with c3:
        query = st.slider("Query patch", 0, n - 1, explore.center_token(grid), key="am_query") if n > 1 else 0
        st.caption(f"query {query} at (y, x) = {divmod(query, grid[1])} · layer {layer} · head {head}")
    picture = res["picture"]
    names = res["class_names"]

    def name(k: int) -> str:
        return names[k] if names and k < len(names) else str(k)

    with c1:
        st.image(explore.upscale_nearest(picture, 160), caption="input" + (f" · label: {name(res['label'])}" if res["label"] is not None
                                              else ""), width=160)
        pw, pwo = res["probs_with"], res["probs_without"]
        st.caption(f"prediction with bias: **{name(int(pw.argmax()))}** ({pw.max():.0%}) · "
                   f"bias zeroed: **{name(int(pwo.argmax()))}** ({pwo.max():.0%})")

    if summary["bias_type"] is not None:
        d_with = explore.mean_attention_distance(maps_with, grid)
        d_without = explore.mean_attention_distance(maps_without, grid)
        m1, m2, m3 = st.columns([1, 1, 2])
        m1.metric(f"Reach, head {head}", f"{d_with[head]:.2f} patches",
                  f"{d_with[head] - d_without[head]:+.2f} vs bias zeroed", delta_color="off")
        m2.metric(f"Reach, layer {layer} mean", f"{d_with.mean():.2f} patches",
                  f"{d_with.mean() - d_without.mean():+.2f} vs bias zeroed", delta_color="off")
        m3.caption("*Reach* is the mean attention distance on this input: how far, on average, each "
                   "query's attention goes. Negative change: the bias pulls attention towards nearby patches.")
        with st.expander(f"Diagnostics of the bias, layer {layer}, per head"):
            rows = diagnostics_for(source, sh.source_key(source)[1], table, float(alpha), sample, upload_bytes)
            per_head = pd.DataFrame([r for r in rows if r["layer"] == layer]).set_index("head").drop(columns="layer")
            diag = per_head.T.rename(columns=lambda h: f"head {h}")  # (measures, heads)
            diag["what it measures"] = [explore.DIAGNOSTIC_MEASURES[m] for m in diag.index]
            st.dataframe(diag, width="stretch", key="am_diag")
    a, b = st.columns(2)
    with a:
        sh.plotly(viz.query_centric_figure(maps_with[head], query, grid, image=picture,
                                           title=f"With bias · layer {layer}, head {head}"),
                  key="am_query_with")
    with b:
        sh.plotly(viz.query_centric_figure(maps_without[head], query, grid, image=picture,
                                           title=f"Bias zeroed · layer {layer}, head {head}"),
                  key="am_query_without")
    st.subheader(f"All heads of layer {layer}")
    sh.plotly(viz.visualize_attention_weights(maps_with, title=f"Attention, layer {layer}, every head",
                                               window_size=grid),
              key="am_heads")
    if summary["bias_type"] is not None:
        sh.plotly(viz.difference_figure(maps_without, maps_with, kind="bias",
                                        names=("bias zeroed", "with bias"), window_size=grid),
                  key="am_diff")
