"""Page 6: move one trained checkpoint to another image size by each rule that applies, side by side.

The single-checkpoint view of the size-transfer lab (page 9): the same transfer function
(:func:`relpos.experiments.transfer.transfer_model`, through
:func:`relpos.experiments.resize_lab.resize_lab`) on one checkpoint of any scheme.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app_support import state, ui
from app_support.frame import page_frame
from relpos import jobs
from relpos import captions
from relpos.experiments import figure_compare
from relpos.experiments import visualize as viz
from relpos.experiments.transfer import TRANSFER_METHODS
from relpos.families import FAMILIES, SCHEMES

source, _layer, _head = page_frame("Resize lab")
st.markdown(
    "A model is trained for one patch grid. To run it on larger (or smaller) images, each position scheme "
    "moves by its own rule: a learned bias table is **resized**, bicubic (timm, Swin) or **geometric** (BEiT: "
    "near offsets kept exactly, far ones stretched); Swin V2's continuous bias is re-queried at the new "
    "offsets with its training window held; an absolute embedding is resampled; a model without position "
    "information is evaluated as it is. Pick a checkpoint and a new size: the accuracy of each moved model "
    "on its own dataset at that size, and its tables, side by side. The **Labs** page does the same over a "
    "whole sweep with seeds."
)
ROOT = state.runs_root()

ckpts = []  # stays empty when the list cannot be read (the guard shows why)
with ui.guard("list the checkpoints", f"check that {ROOT}/ is readable"):
    ckpts = jobs.list_checkpoints(ROOT)
if not ckpts:
    st.info("No checkpoint yet: train the default preset on the Train page, then come back.")
    st.stop()
labels = {c["label"]: c["path"] for c in ckpts}
# Start on the sidebar's checkpoint when one is chosen there (the model the user is looking at).
start = next((i for i, p in enumerate(labels.values()) if p == state.checkpoint_path(source)), 0)
label = st.selectbox("Checkpoint", list(labels), index=start, key="rl_ckpt",
                     help="The trained model to move to another image size.")
path = labels[label]
with ui.guard("read the checkpoint", "pick another checkpoint"):
    cfg = state.checkpoint(path)[1].get("config") or {}
    img, patch = int(cfg["data"]["img_size"]), int(cfg["data"]["patch_size"])
    grid = img // patch
    c1, c2 = st.columns(2)
    new_grid = c1.slider("New grid side (patches)", 2, max(3 * grid, 4), min(grid + 2, 3 * grid), key="rl_grid",
                         help=f"Patches per side at the new size (trained: {grid}); the image grows with it.")
    samples = c2.select_slider("Validation images", [64, 256, 512, 1024], value=256, key="rl_samples",
                               help="How many validation images each accuracy is measured on (more: slower, surer).")
    lab = state.resize_lab(path, new_grid * patch, samples, methods=TRANSFER_METHODS)

    where = captions.position_label(lab["scheme"]) if lab["scheme"] in SCHEMES else lab["scheme"]
    st.subheader(f"Accuracy with {where}: grid {lab['old_grid']} → {lab['new_grid']}")
    acc = lab["accuracy"]
    st.dataframe(pd.DataFrame({"model": [r["model"] for r in acc], "img_size": [r["img_size"] for r in acc],
                               "accuracy": [captions.format_accuracy(r["accuracy"], r["n"]) for r in acc]}),
                 hide_index=True)
    skipped = {m: notes[0] for m, notes in lab["notes"].items() if m not in lab["methods"]}
    st.caption("Each accuracy on the first validation images of the checkpoint's dataset (as many as it says), rendered at "
               "*img_size*; 'original': the model at its own size; 'bias off': the first moved model with every "
               "relative position bias switched off, for reference.")
    if skipped:
        st.dataframe(pd.DataFrame({"method": list(skipped), "n/a: why": [r.removeprefix("not applicable: ")
                                                                         for r in skipped.values()]}),
                     hide_index=True, width="stretch", key="rl_na")
        st.caption("Rules that do not apply to this scheme are not run, so no number appears under their name.")
    if not lab["tables"]:
        st.info(f"Scheme {lab['scheme']}: no relative position bias, so no table to show.")
        st.stop()

    st.subheader("Biases at offsets ±1, ±2 (first layer)")
    offsets = pd.DataFrame(lab["offsets"]).pivot_table(index=["offset", "head"], columns="model", values="bias")
    st.dataframe(offsets.round(4))

    fam = FAMILIES.get(lab["bias_type"] or "")
    st.subheader(f"Tables of the first layer ({lab['bias_type']})")
    per_panel = ui.scale_toggle("rl_per_panel")
    figs = {}
    for name in lab["tables"]:
        table, window = lab["tables"][name], lab["window"][name]
        if fam is not None and fam.extra_rows:
            table = table[: -fam.extra_rows]  # the class-token rows are not offsets
        figs[name] = (viz.visualize_bias_table(table, title=name, window_size=window, cols=1)
                      if fam is not None and fam.is_2d() and window is not None else table)
    figure_compare.share_color_axis([f for f in figs.values() if not isinstance(f, np.ndarray)], per_panel=per_panel)
    for col, (name, fig) in zip(st.columns(len(figs)), figs.items()):
        with col:
            if isinstance(fig, np.ndarray):
                st.line_chart(fig, height=240)
            else:
                ui.plotly(fig, key=f"rl_t_{name}")
    with st.expander("What changed"):
        for method, notes in lab["notes"].items():
            if method in lab["methods"]:
                st.markdown(f"**{method}**: " + ("; ".join(notes) or "the grid is unchanged"))
