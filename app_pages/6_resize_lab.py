"""Page 6: move a trained bias table to another window size, by each method, side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_pages import _shared as sh
from relpos import explore
from relpos.experiments import visualize as viz
from relpos.resize import RESIZE_METHODS, resize_lab

st.title("Resize lab")
st.markdown(
    "A bias table is trained for one window. To run the model on larger (or smaller) images, the table "
    "must be resized: **bicubic** treats it as an image (timm, Swin); **geometric** (BEiT) keeps the "
    "near offsets exactly and stretches the far ones. Pick a checkpoint and a new image size: the "
    "tables, the biases at offsets ±1 and ±2, and the accuracy of each resized model on its own "
    "dataset at the new size are shown side by side."
)
ROOT = sh.runs_root()


@st.cache_data(max_entries=8, show_spinner="Resizing and evaluating...")
def lab_for(path: str, modified: float, new_img_size: int, max_samples: int) -> dict:
    return resize_lab(path, new_img_size, max_samples=max_samples)


with sh.guard("list the checkpoints", f"check that {ROOT}/ is readable"):
    ckpts = explore.list_checkpoints(ROOT)
if not ckpts:
    st.info("No checkpoint yet: train the default preset on the Train page, then come back.")
    st.stop()
labels = {c["label"]: c["path"] for c in ckpts}
# Start on the sidebar's checkpoint when one is chosen there (the model the user is looking at).
current = str(st.session_state.get(sh.SOURCE_KEY) or "")
start = next((i for i, p in enumerate(labels.values()) if current == sh.CKPT_PREFIX + p), 0)
label = st.selectbox("Checkpoint", list(labels), index=start, key="rl_ckpt")
path = labels[label]
with sh.guard("read the checkpoint", "pick another checkpoint"):
    _, ckpt = sh._checkpoint_model(path, sh.mtime(path))
    cfg = ckpt.get("config") or {}
    img, patch = int(cfg["data"]["img_size"]), int(cfg["data"]["patch_size"])
    grid = img // patch
    c1, c2 = st.columns(2)
    new_grid = c1.slider("New grid side (patches)", 2, max(3 * grid, 4), min(grid + 2, 3 * grid), key="rl_grid")
    samples = c2.select_slider("Validation images", [64, 256, 512, 1024], value=256, key="rl_samples")
    lab = lab_for(path, sh.mtime(path), new_grid * patch, samples)

    st.subheader(f"Accuracy: grid {lab['old_grid']} → {lab['new_grid']}")
    st.dataframe(pd.DataFrame(lab["accuracy"]), hide_index=True)
    st.caption("'bias off': the bicubic model with every relative position bias switched off, for reference.")

    st.subheader("Biases at offsets ±1, ±2 (first layer)")
    offsets = pd.DataFrame(lab["offsets"]).pivot_table(index=["offset", "head"], columns="model", values="bias")
    st.dataframe(offsets.round(4))

    st.subheader(f"Tables of the first layer ({lab['bias_type']})")
    cols = st.columns(1 + len(RESIZE_METHODS))
    for col, name in zip(cols, ["original", *RESIZE_METHODS]):
        table, window = lab["tables"][name], lab["window"][name]
        if lab["bias_type"] == "2d_cls":
            table = table[:-3]  # the 3 class-token rows are not offsets
        with col:
            if lab["bias_type"] in ("2d", "2d_cls", "alibi", "cpb") and window is not None:
                sh.plotly(viz.visualize_bias_table(table, title=name, window_size=window, cols=1), key=f"rl_t_{name}")
            else:
                st.line_chart(table, height=240)
    with st.expander("What changed"):
        for method, notes in lab["notes"].items():
            st.markdown(f"**{method}**: " + "; ".join(notes))
