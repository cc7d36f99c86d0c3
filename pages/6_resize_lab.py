"""Page 6: move a trained bias table to another window size, by each method, side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_support import state, ui
from app_support.frame import page_frame
from relpos import jobs
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES

source, _layer, _head = page_frame("Resize lab", ":material/aspect_ratio:")
st.markdown(
    "A bias table is trained for one window. To run the model on larger (or smaller) images, the table "
    "must be resized: **bicubic** treats it as an image (timm, Swin); **geometric** (BEiT) keeps the "
    "near offsets exactly and stretches the far ones. Pick a checkpoint and a new image size: the "
    "tables, the biases at offsets ±1 and ±2, and the accuracy of each resized model on its own "
    "dataset at the new size are shown side by side."
)
ROOT = state.runs_root()

with ui.guard("list the checkpoints", f"check that {ROOT}/ is readable"):
    ckpts = jobs.list_checkpoints(ROOT)
if not ckpts:
    st.info("No checkpoint yet: train the default preset on the Train page, then come back.")
    st.stop()
labels = {c["label"]: c["path"] for c in ckpts}
# Start on the sidebar's checkpoint when one is chosen there (the model the user is looking at).
start = next((i for i, p in enumerate(labels.values()) if p == state.checkpoint_path(source)), 0)
label = st.selectbox("Checkpoint", list(labels), index=start, key="rl_ckpt")
path = labels[label]
with ui.guard("read the checkpoint", "pick another checkpoint"):
    cfg = state.checkpoint(path)[1].get("config") or {}
    img, patch = int(cfg["data"]["img_size"]), int(cfg["data"]["patch_size"])
    grid = img // patch
    c1, c2 = st.columns(2)
    new_grid = c1.slider("New grid side (patches)", 2, max(3 * grid, 4), min(grid + 2, 3 * grid), key="rl_grid")
    samples = c2.select_slider("Validation images", [64, 256, 512, 1024], value=256, key="rl_samples")
    lab = state.resize_lab(path, new_grid * patch, samples)

    st.subheader(f"Accuracy: grid {lab['old_grid']} → {lab['new_grid']}")
    st.dataframe(pd.DataFrame(lab["accuracy"]), hide_index=True)
    st.caption("'bias off': the first moved model with every relative position bias switched off, for reference.")
    if not lab["tables"]:
        st.info(f"Scheme {lab['scheme']}: no relative position bias, so no table to show.")
        st.stop()

    st.subheader("Biases at offsets ±1, ±2 (first layer)")
    offsets = pd.DataFrame(lab["offsets"]).pivot_table(index=["offset", "head"], columns="model", values="bias")
    st.dataframe(offsets.round(4))

    fam = FAMILIES.get(lab["bias_type"] or "")
    st.subheader(f"Tables of the first layer ({lab['bias_type']})")
    for col, name in zip(st.columns(len(lab["tables"])), lab["tables"]):
        table, window = lab["tables"][name], lab["window"][name]
        if fam is not None and fam.extra_rows:
            table = table[: -fam.extra_rows]  # the class-token rows are not offsets
        with col:
            if fam is not None and fam.is_2d() and window is not None:
                ui.plotly(viz.visualize_bias_table(table, title=name, window_size=window, cols=1), key=f"rl_t_{name}")
            else:
                st.line_chart(table, height=240)
    with st.expander("What changed"):
        for method, notes in lab["notes"].items():
            st.markdown(f"**{method}**: " + "; ".join(notes))
