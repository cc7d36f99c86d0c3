"""Page 5: what training learned, two runs side by side, uploads and downloads."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st
import yaml

from app_pages import _shared as sh
from relpos import explore, jobs
from relpos.experiments import rundir
from relpos.experiments import visualize as viz

st.title("Checkpoints & compare")
st.markdown(
    "Every run leaves checkpoints (best.pt, last.pt); you can also upload one. Pick checkpoint **A** to "
    "see how far its bias tables moved from their initial values, and **B** to compare two runs: "
    "curves overlaid and the difference of their tables. **Try first:** train the default preset with "
    "and without the bias, then compare their accuracy curves here."
)
ROOT = sh.runs_root()
NONE = "(none)"


@st.cache_data(max_entries=16, show_spinner="Reading checkpoint...")
def tables_for(path: str, modified: float) -> dict:
    model, ckpt = sh._checkpoint_model(path, modified)
    cfg = ckpt.get("config", {})
    learned = explore.bias_tables(model)
    initial = explore.initial_tables(cfg) if learned else []
    geometry = explore.table_geometry(model)
    return {
        "config": cfg,
        "learned": learned,
        "initial": initial,
        "window_size": geometry["window_size"],
        "seq_len": geometry["seq_len"],
        "bias_type": geometry["bias_type"],
        "max_distance": geometry["max_distance"],
        "epoch": ckpt.get("epoch"),
        "metrics": ckpt.get("metrics", {}),
    }


@st.cache_data(max_entries=16, show_spinner="Measuring the bias...")
def diagnostics_for(path: str, modified: float, sample: int) -> tuple[list[dict], str]:
    """Per-head diagnostics of a checkpoint on sample ``sample`` of its dataset (bias-only measures
    when the dataset cannot be built here); one cached call into relpos.explore."""
    model, ckpt = sh._checkpoint_model(path, modified)
    try:
        image, _label, _classes = explore.sample_input(ckpt.get("config", {}), sample)
        inputs, note = image[None], f"validation sample {sample}"
    except Exception as exc:  # noqa: BLE001 - without data, the bias-only measures still apply
        inputs, note = None, f"bias-only measures (its dataset is not available here: {str(exc)[:120]})"
    return explore.cached_diagnostics(path, modified, model, inputs, input_key=sample if inputs is not None else None), note


def run_dir_of(path: str) -> Path | None:
    parent = Path(path).parent
    return parent if (parent / rundir.STATUS_FILE).is_file() and parent.parent.resolve() == ROOT.resolve() else None


# ------------------------------------------------------------------------------------- upload
with st.expander("Upload a checkpoint", expanded=False):
    st.caption(f"A .pt file saved by relpos (≤ {explore.MAX_UPLOAD_BYTES // 2**20} MB). It is opened with "
               "torch.load(weights_only=True), so no code inside it runs, and stored under "
               f"{ROOT}/{explore.UPLOADS_DIR}/ with a safe name.")
    up = st.file_uploader("Checkpoint file", type=["pt", "pth"], key="ck_upload")
    if up is not None and st.session_state.get("ck_last_upload") != up.file_id:
        st.session_state["ck_last_upload"] = up.file_id
        try:
            saved = explore.save_upload(up.getvalue(), up.name, ROOT)
        except (ValueError, TypeError, OSError) as exc:
            st.error(f"**Upload refused.** {exc}\n\n**What to do:** upload a best.pt or last.pt written by "
                     "relpos training.", icon=":material/error:")
        else:
            st.success(f"Saved as {saved.parent.name}/{saved.name}; it is now in the lists below and the sidebar.")

with sh.guard("list the checkpoints", f"check that {ROOT}/ is readable"):
    ckpts = explore.list_checkpoints(ROOT)
    if not ckpts:
        st.info("No checkpoint yet: start a run on the Train page (the tiny preset takes seconds) or upload one.")
        st.stop()
    runs = {r["name"]: r for r in jobs.list_runs(ROOT)}
    st.dataframe(
        pd.DataFrame({
            "checkpoint": [c["label"] for c in ckpts],
            "kind": [c["kind"] for c in ckpts],
            "run state": [runs.get(c["run"], {}).get("state", "") for c in ckpts],
            "val accuracy": [runs.get(c["run"], {}).get("accuracy") for c in ckpts],
            "size (MB)": [round(c["size"] / 2**20, 2) for c in ckpts],
            "saved": [time.strftime("%Y-%m-%d %H:%M", time.localtime(c["mtime"])) for c in ckpts],
        }),
        hide_index=True, width="stretch", key="ck_table",
        column_config={"val accuracy": st.column_config.NumberColumn(format="percent")},
    )
    paths = [c["path"] for c in ckpts]
    labels = {c["path"]: c["label"] for c in ckpts}
    source, layer, _head = sh.shared()
    default_a = source[len(sh.CKPT_PREFIX):] if source and source.startswith(sh.CKPT_PREFIX) else paths[0]
    if st.session_state.get("ck_a") not in paths:
        st.session_state["ck_a"] = default_a if default_a in paths else paths[0]
    if st.session_state.get("ck_b") not in [NONE, *paths]:
        # Default B: the newest checkpoint of another run (two files of one run are rarely the point).
        run_a = Path(st.session_state["ck_a"]).parent
        st.session_state["ck_b"] = next((p for p in paths if Path(p).parent != run_a), NONE)
    c1, c2 = st.columns(2)
    a = c1.selectbox("Checkpoint A", paths, key="ck_a", format_func=labels.get)
    b = c2.selectbox("Checkpoint B (compare)", [NONE, *paths], key="ck_b",
                     format_func=lambda p: labels.get(p, p))

with sh.guard("read checkpoint A", "pick another checkpoint; an upload must be a relpos checkpoint"):
    ta = tables_for(a, sh.mtime(a))
    win, seq = ta["window_size"], ta["seq_len"]
    fam = {"bias_type": ta["bias_type"], "max_distance": ta["max_distance"]}
    st.subheader(f"What A learned · layer {layer}")
    if not ta["learned"]:
        st.info("A has no relative position bias (trained with the bias off): nothing to show here. "
                "Its curves are still compared below.")
    else:
        li = min(layer, len(ta["learned"]) - 1)
        learned, initial = ta["learned"][li], ta["initial"][li]
        st.caption({"t5": "One curve per head over the T5 buckets (hover: the offsets in each bucket). ",
                    "1d": "One curve per head over offsets i − j. "}.get(
                       ta["bias_type"], "Each small map is one head's table over offsets (Δy, Δx); the centre is "
                       "offset (0, 0)" + (" (the 3 class-token rows are written under it)" if ta["bias_type"] == "2d_cls"
                                          else "") + ". ")
                   + "Below: learned minus initial, i.e. what training changed.")
        fig_learned = viz.visualize_bias_table(learned, window_size=win, seq_len=seq, **fam,
                                               title=f"Learned table ({ta['bias_type']}), layer {li}")
        # Full width: a half column squeezed the small multiples of four heads unreadably.
        sh.plotly(fig_learned, key="ck_learned")
        diag_rows, diag_note = diagnostics_for(a, sh.mtime(a), 0)
        st.markdown(f"**Diagnostics per head, layer {li}** · {diag_note}")
        # One row per measure, one column per head, then what the measure says.
        per_head = pd.DataFrame([r for r in diag_rows if r["layer"] == li]).set_index("head").drop(columns="layer")
        diag = per_head.T.rename(columns=lambda h: f"head {h}")  # (measures, heads)
        diag["what it measures"] = [explore.DIAGNOSTIC_MEASURES[m] for m in diag.index]
        st.dataframe(diag, width="stretch", key="ck_diag",
                     column_config={"what it measures": st.column_config.TextColumn(width="large"),
                                    **{c: st.column_config.NumberColumn(format="%.4f")
                                       for c in diag.columns[:-1]}})
        with st.expander("What the measures mean"):
            st.markdown("\n".join(f"- **{m}**: {text}" for m, text in explore.DIAGNOSTIC_MEASURES.items()))
        fig_change = viz.difference_figure(initial, learned, names=("initial", "learned"), kind="table",
                                            window_size=win, seq_len=seq, **fam)
        sh.plotly(fig_change, key="ck_change")

    st.subheader("Downloads")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Checkpoint A (.pt)", data=lambda: Path(a).read_bytes(),
                       file_name=explore.safe_download_name(f"{Path(a).parent.name}-{Path(a).name}"),
                       mime="application/octet-stream", key="ck_dl_ckpt", on_click="ignore")
    d2.download_button("Config of A (.yaml)", data=yaml.safe_dump(ta["config"], sort_keys=False),
                       file_name=explore.safe_download_name(f"{Path(a).parent.name}-config.yaml"),
                       mime="text/yaml", key="ck_dl_cfg", on_click="ignore")
    if ta["learned"]:
        d3.download_button("Table figure (.html, offline)",
                           data=lambda: fig_learned.to_html(include_plotlyjs=True, full_html=True),
                           file_name=explore.safe_download_name(f"{Path(a).parent.name}-table.html"),
                           mime="text/html", key="ck_dl_fig", on_click="ignore")

if b != NONE:
    with sh.guard("compare A and B", "pick two checkpoints with the same window and number of heads"):
        tb = tables_for(b, sh.mtime(b))
        st.subheader("A and B side by side")
        st.caption(f"A = {labels[a]} · B = {labels[b]}")
        curves = {}
        for path in (a, b):
            rd = run_dir_of(path)
            if rd is not None:
                curves[f"{rd.name}"] = rundir.read_metrics(rd)
        if len(curves) == 2 or (len(curves) == 1 and run_dir_of(a) != run_dir_of(b)):
            sh.plotly(viz.training_curves_figure(curves), key="ck_curves")
        elif run_dir_of(a) == run_dir_of(b) and run_dir_of(a) is not None:
            st.caption("A and B come from the same run: one set of curves.")
            sh.plotly(viz.training_curves_figure(curves), key="ck_curves")
        if ta["learned"] and tb["learned"]:
            li = min(layer, len(ta["learned"]) - 1, len(tb["learned"]) - 1)
            explore.table_difference(ta["learned"][li], tb["learned"][li])  # readable error on mismatch
            sh.plotly(viz.difference_figure(ta["learned"][li], tb["learned"][li], kind="table",
                                            names=("A", "B"), window_size=win, seq_len=seq, **fam,
                                            title=f"Table difference B − A, layer {li}"),
                      key="ck_ab_diff")
        else:
            st.info("Table difference needs both checkpoints to have a relative position bias.")
