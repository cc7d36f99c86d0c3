"""Page 5: what training learned, two runs side by side, uploads and downloads."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import yaml

from app_support import state, ui
from app_support.frame import page_frame
from relpos import explore, jobs
from relpos.experiments import visualize as viz

source, layer, _head = page_frame("Checkpoints & compare", ":material/compare:")
st.markdown(
    "Every run leaves checkpoints (best.pt, last.pt); you can also upload one. Pick checkpoint **A** to "
    "see how far its bias tables moved from their initial values, and **B** to compare two runs: "
    "curves overlaid and the difference of their tables. **Try first:** train the default preset with "
    "and without the bias, then compare their accuracy curves here."
)
ROOT = state.runs_root()
NONE = "(none)"

with st.expander("Upload a checkpoint", expanded=False):
    st.caption(f"A .pt file saved by relpos (≤ {jobs.MAX_UPLOAD_BYTES // 2**20} MB). It is opened with "
               "torch.load(weights_only=True), so no code inside it runs, and stored under "
               f"{ROOT}/{jobs.UPLOADS_DIR}/ with a safe name.")
    up = st.file_uploader("Checkpoint file", type=["pt", "pth"], key="ck_upload")
    if up is not None and st.session_state.get("ck_last_upload") != up.file_id:
        st.session_state["ck_last_upload"] = up.file_id
        try:
            saved = jobs.save_upload(up.getvalue(), up.name, ROOT)
        except (ValueError, TypeError, OSError) as exc:
            st.error(f"**Upload refused.** {exc}\n\n**What to do:** upload a best.pt or last.pt written by "
                     "relpos training.", icon=":material/error:")
        else:
            st.success(f"Saved as {saved.parent.name}/{saved.name}; it is now in the lists below and the sidebar.")

with ui.guard("list the checkpoints", f"check that {ROOT}/ is readable"):
    ckpts = jobs.list_checkpoints(ROOT)
    if not ckpts:
        st.info("No checkpoint yet: start a run on the Train page (the tiny preset takes seconds) or upload one.")
        st.stop()
    runs = {r["name"]: r for r in jobs.list_runs(ROOT)}
    ui.checkpoints_table(ckpts, runs, key="ck_table")
    paths = [c["path"] for c in ckpts]
    labels = {c["path"]: c["label"] for c in ckpts}
    if st.session_state.get("ck_a") not in paths:  # start on the sidebar's checkpoint
        st.session_state["ck_a"] = state.checkpoint_path(source) if state.checkpoint_path(source) in paths else paths[0]
    if st.session_state.get("ck_b") not in [NONE, *paths]:
        # Default B: the newest checkpoint of another run (two files of one run are rarely the point).
        run_a = Path(st.session_state["ck_a"]).parent
        st.session_state["ck_b"] = next((p for p in paths if Path(p).parent != run_a), NONE)
    c1, c2 = st.columns(2)
    a = c1.selectbox("Checkpoint A", paths, key="ck_a", format_func=labels.get)
    b = c2.selectbox("Checkpoint B (compare)", [NONE, *paths], key="ck_b", format_func=lambda p: labels.get(p, p))

with ui.guard("read checkpoint A", "pick another checkpoint; an upload must be a relpos checkpoint"):
    ta = state.checkpoint_tables(a)
    geo = {"window_size": ta["window_size"], "seq_len": ta["seq_len"], "bias_type": ta["bias_type"],
           "max_distance": ta["max_distance"]}
    st.subheader(f"What A learned · layer {layer}")
    if not ta["learned"]:
        st.info("A has no relative position bias (trained with the bias off): nothing to show here. "
                "Its curves are still compared below.")
    else:
        li = min(layer, len(ta["learned"]) - 1)
        learned, initial = ta["learned"][li], ta["initial"][li]
        st.caption(ui.table_caption(ta["bias_type"], two_d=ta["window_size"] is not None)
                   + " Below: learned minus initial, i.e. what training changed.")
        # Full width: a half column squeezed the small multiples of four heads unreadably.
        fig_learned = viz.visualize_bias_table(learned, **geo, title=f"Learned table ({ta['bias_type']}), layer {li}")
        ui.plotly(fig_learned, key="ck_learned")
        rows, note = state.diagnostics(state.CKPT_PREFIX + a)
        st.markdown(f"**Diagnostics per head, layer {li}** · {note}")
        ui.diagnostics_table(rows, li, key="ck_diag", explain=True)
        ui.plotly(viz.difference_figure(initial, learned, names=("initial", "learned"), kind="table", **geo),
                  key="ck_change")
    st.subheader("Downloads")
    stem = Path(a).parent.name
    d1, d2, d3 = st.columns(3)
    with d1:
        ui.download("Checkpoint A (.pt)", lambda: Path(a).read_bytes(), f"{stem}-{Path(a).name}", key="ck_dl_ckpt")
    with d2:
        ui.download("Config of A (.yaml)", yaml.safe_dump(ta["config"], sort_keys=False), f"{stem}-config.yaml",
                    key="ck_dl_cfg", mime="text/yaml")
    if ta["learned"]:
        with d3:
            ui.download("Table figure (.html, offline)", lambda: fig_learned.to_html(include_plotlyjs=True),
                        f"{stem}-table.html", key="ck_dl_fig", mime="text/html")

if b != NONE:
    with ui.guard("compare A and B", "pick two checkpoints with the same window and number of heads"):
        tb = state.checkpoint_tables(b)
        st.subheader("A and B side by side")
        st.caption(f"A = {labels[a]} · B = {labels[b]}")
        curves = state.run_curves([a, b])  # {run name: metrics} of the runs A and B come from
        if curves:
            if len(curves) == 1:
                st.caption("A and B come from the same run: one set of curves." if Path(a).parent == Path(b).parent
                           else "Only one of A and B has training curves (the other is an upload).")
            ui.plotly(viz.training_curves_figure(curves), key="ck_curves")
        if ta["learned"] and tb["learned"]:
            li = min(layer, len(ta["learned"]) - 1, len(tb["learned"]) - 1)
            explore.table_difference(ta["learned"][li], tb["learned"][li])  # readable error on mismatch
            ui.plotly(viz.difference_figure(ta["learned"][li], tb["learned"][li], kind="table", names=("A", "B"),
                                            **geo, title=f"Table difference B − A, layer {li}"), key="ck_ab_diff")
        else:
            st.info("Table difference needs both checkpoints to have a relative position bias.")
