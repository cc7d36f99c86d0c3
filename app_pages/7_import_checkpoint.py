"""Page 7: read the relative position bias tables of a published checkpoint (Swin, BEiT; timm, HF)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_pages import _shared as sh
from relpos import explore
from relpos.checkpoint_import import CHECKPOINT_SUFFIXES, import_checkpoint
from relpos.experiments import visualize as viz

st.title("Import a published checkpoint")
st.markdown(
    "Upload a state dict saved by the official Swin code, timm (Swin, BEiT) or Hugging Face "
    "transformers (Swin, BEiT), as `.pth`, `.pt`, `.bin` or `.safetensors`. Every key is listed as "
    "**mapped**, **renamed** (a bias table under another project's name) or **dropped** (other "
    "weights, derived buffers); each table's window and head count are inferred from its shape. "
    f"Files are read in memory with `weights_only=True` (≤ {explore.MAX_UPLOAD_BYTES // 2**20} MB); "
    "nothing inside them runs and nothing is stored."
)


@st.cache_data(max_entries=4, show_spinner="Reading the state dict...")
def inspect_upload(data: bytes, name: str) -> dict:
    report = import_checkpoint(data, filename=name)
    return {
        "summary": report.summary(),
        "rows": report.rows(),
        "tables": [
            {"label": f"{t.target}  ←  {t.key}", "kind": t.kind, "window": t.window_size, "heads": t.num_heads,
             "table": None if t.table is None else t.table.numpy()}
            for t in report.tables
        ],
    }


up = st.file_uploader("State dict", type=[s.lstrip(".") for s in CHECKPOINT_SUFFIXES], key="ic_upload")
if up is None:
    st.info("Try it with a Swin-T or BEiT-B checkpoint from timm or the Hugging Face hub (download it first).")
    st.stop()
with sh.guard("read this file", "upload a .pth/.pt/.bin/.safetensors state dict of Swin or BEiT"):
    if up.size > explore.MAX_UPLOAD_BYTES:
        raise ValueError(f"the file has {up.size / 2**20:.0f} MB; the limit is {explore.MAX_UPLOAD_BYTES // 2**20} MB")
    info = inspect_upload(up.getvalue(), up.name)
    st.success(info["summary"])
    keys = pd.DataFrame(info["rows"])
    action = st.segmented_control("Show keys", ["renamed", "mapped", "dropped"], default="renamed", key="ic_action")
    st.dataframe(keys[keys["action"] == action] if action else keys, hide_index=True)
    tables = [t for t in info["tables"] if t["table"] is not None]
    if tables:
        choice = st.selectbox("Table", range(len(tables)), format_func=lambda i: tables[i]["label"], key="ic_table")
        t = tables[choice]
        table = t["table"][:-3] if t["kind"] == "2d_cls" else t["table"]
        sh.plotly(
            viz.visualize_bias_table(table, title=f"{t['label']} · window {t['window']}, {t['heads']} heads",
                                     window_size=t["window"]),
            key="ic_fig",
        )
