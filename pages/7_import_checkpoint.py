"""Page 7: read the relative position bias tables of a published checkpoint (Swin, BEiT; timm, HF)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_support import state, ui
from app_support.frame import page_frame
from relpos import jobs
from relpos.checkpoint_import import CHECKPOINT_SUFFIXES
from relpos.experiments import visualize as viz
from relpos.families import FAMILIES

page_frame("Import checkpoint")
st.markdown(
    "Read the relative position bias tables of a published checkpoint. Upload a state dict saved by "
    "the official Swin code, timm (Swin, BEiT) or Hugging Face transformers (Swin, BEiT), as `.pth`, "
    "`.pt`, `.bin` or `.safetensors`. Every key is listed as **mapped**, **renamed** (a bias table "
    "under another project's name) or **dropped** (other weights, derived buffers); each table's "
    "window and head count are inferred from its shape. Files are read in memory with "
    f"`weights_only=True` (≤ {jobs.MAX_UPLOAD_BYTES // 2**20} MB); nothing inside them runs and "
    "nothing is stored."
)

up = st.file_uploader("State dict", type=[s.lstrip(".") for s in CHECKPOINT_SUFFIXES], key="ic_upload",
                      help="A Swin or BEiT weights file from the official code, timm or Hugging Face.")
if up is None:
    st.info("Try it with a Swin-T or BEiT-B checkpoint from timm or the Hugging Face hub (download it first).")
    st.stop()
with ui.guard("read this file", "upload a .pth/.pt/.bin/.safetensors state dict of Swin or BEiT"):
    if up.size > jobs.MAX_UPLOAD_BYTES:
        raise ValueError(f"the file has {up.size / 2**20:.0f} MB; the limit is {jobs.MAX_UPLOAD_BYTES // 2**20} MB")
    info = state.imported_checkpoint(up.getvalue(), up.name)
    st.success(info["summary"])
    keys = pd.DataFrame(info["rows"])
    action = st.segmented_control("Show keys", ["renamed", "mapped", "dropped"], default="renamed", key="ic_action",
                                  help="Which keys of the file to list: bias tables under another name (renamed), "
                                  "names relpos uses too (mapped), everything else (dropped).")
    st.dataframe(keys[keys["action"] == action] if action else keys, hide_index=True)
    tables = [t for t in info["tables"] if t["table"] is not None]
    if tables:
        choice = st.selectbox("Table", range(len(tables)), format_func=lambda i: tables[i]["label"], key="ic_table",
                              help="Which of the file's bias tables to draw (one per block or stage).")
        t = tables[choice]
        extra = FAMILIES[t["kind"]].extra_rows
        table = t["table"][:-extra] if extra else t["table"]  # the class-token rows are not offsets
        ui.plotly(viz.visualize_bias_table(table, title=f"{t['label']} · window {t['window']}, {t['heads']} heads",
                                           window_size=t["window"]), key="ic_fig")
