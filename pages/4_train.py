"""Page 4: train a small model in the background and watch it learn."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_support import state, ui
from app_support.frame import page_frame
from relpos import explore, jobs
from relpos.experiments import rundir
from relpos.experiments import visualize as viz
from relpos.experiments.config import DATASETS, check_run_settings, train_overrides

page_frame("Train", ":material/model_training:")
st.markdown(
    "Pick a preset, change the main settings, press **Start**: training runs as a separate process, "
    "so it goes on through page switches, closed tabs and app restarts. Progress, curves and the log "
    "refresh on their own. **Try first:** start the *default* preset once with the bias on and once "
    "with it off, then compare the two runs on the Checkpoints page."
)
RUN_EVERY_S = 2.0
ROOT = state.runs_root()
FORM_DATASETS = tuple(d for d in DATASETS if d != "folder")  # a folder needs a path the form does not ask for

with ui.guard("read the presets", "check the configs/ folder"):
    presets = jobs.list_presets()
    if not presets:
        st.error("No preset found in configs/.")
        st.stop()
    preset = st.selectbox("Preset", presets, key="tr_preset",
                          help="configs/<name>.yaml; 'default' trains in about a minute, 'tiny' in seconds.")
    cfg = state.preset_config(preset)
    data, model_cfg, train_cfg = cfg.get("data", {}), cfg.get("model", {}), cfg.get("train", {})
    with st.form("tr_form", border=True):
        st.caption(f"Settings start from configs/{preset}.yaml; only what you change here is overridden.")
        c1, c2, c3, c4 = st.columns(4)
        ds_default = data.get("dataset", "relational")
        options = list(FORM_DATASETS) if ds_default in FORM_DATASETS else [ds_default, *FORM_DATASETS]
        dataset = c1.selectbox("Dataset", options, index=options.index(ds_default), key=f"tr_dataset_{preset}")
        img_size = c1.number_input("Image size", 4, 512, int(data.get("img_size", 32)), key=f"tr_img_{preset}")
        patch = c1.number_input("Patch size", 1, 64, int(data.get("patch_size", 4)), key=f"tr_patch_{preset}")
        depth = c2.number_input("Depth (blocks)", 1, 24, int(model_cfg.get("depth", 2)), key=f"tr_depth_{preset}")
        heads = c2.number_input("Heads", 1, explore.MAX_HEADS, int(model_cfg.get("num_heads", 4)),
                                key=f"tr_heads_{preset}")
        use_bias = c3.toggle("Relative position bias", bool(model_cfg.get("use_relative_position", True)),
                             key=f"tr_bias_{preset}")
        epochs = c3.number_input("Epochs", 1, 1000, int(train_cfg.get("epochs", 5)), key=f"tr_epochs_{preset}")
        lr = c4.number_input("Learning rate", 1e-5, 1.0, float(train_cfg.get("lr", 1e-3)), format="%.5f",
                             key=f"tr_lr_{preset}")
        name = c4.text_input("Run name (optional)", "", max_chars=40, key=f"tr_name_{preset}")
        submitted = st.form_submit_button("Start", type="primary")
    if submitted:
        overrides = train_overrides(
            cfg, dataset=dataset, img_size=int(img_size), patch_size=int(patch), depth=int(depth),
            num_heads=int(heads), use_relative_position=bool(use_bias), epochs=int(epochs), lr=float(lr),
        )
        try:
            check_run_settings(cfg, overrides, max_grid_side=explore.MAX_WINDOW_SIDE)
            run_dir = jobs.start_run(preset, overrides, runs_root=ROOT, name=name or None)
        except jobs.RunLimitError as exc:
            st.warning(f"**Not started:** {exc}.", icon=":material/hourglass_top:")
        except (ValueError, TypeError) as exc:
            st.error(f"**These settings cannot train:** {exc}\n\n**What to do:** change the setting named "
                     "above and press Start again.", icon=":material/error:")
        else:
            st.session_state["tr_selected_pending"] = run_dir.name
            st.toast(f"Started {run_dir.name}")
            st.rerun()


def runs_section() -> None:
    """The runs and the chosen run's progress, curves and log (a fragment that polls while one is active)."""
    with ui.guard("show the runs", f"check that {ROOT}/ is readable, then reload the page"):
        jobs.reconcile_runs(ROOT)  # a trainer killed from outside (OOM, kill -9) shows as failed at once
        rows = jobs.list_runs(ROOT)
        st.subheader("Runs")
        if not rows:
            st.info(f"No run yet in {ROOT}/. Start one above.")
            return
        ui.runs_table(rows, key="tr_table")
        names = [r["name"] for r in rows]
        pending = st.session_state.pop("tr_selected_pending", None)
        if pending in names or st.session_state.get("tr_run") not in names:
            st.session_state["tr_run"] = pending if pending in names else names[0]
        selected = st.selectbox("Run", names, key="tr_run")
        info = next(r for r in rows if r["name"] == selected)
        active = info["state"] in jobs.ACTIVE_STATES
        preset_name = Path(info["config_path"]).stem if info.get("config_path") else "?"
        st.caption(f"preset **{preset_name}** · changed: {', '.join(info.get('overrides') or []) or 'nothing'}")
        cols = st.columns([3, 1])
        cols[0].progress(float(info["progress"]), text=ui.run_status(info, active))
        if active and cols[1].button("Cancel", key="tr_cancel", type="secondary"):
            with st.spinner("Stopping the run..."):
                status = jobs.cancel_run(info["path"], grace=10.0, runs_root=ROOT)
            st.toast(f"{selected}: {status.get('state')}")
            st.rerun(scope="app")
        if info["state"] == "failed" and info["error"]:
            st.error(f"**This run failed.** {info['error'][:2000]}\n\n**What to do:** read the log below, "
                     "fix the setting it names, and start a new run.", icon=":material/error:")
        records = rundir.read_metrics(info["path"])
        if records:
            ui.plotly(viz.training_curves_figure({selected: records}), key="tr_curves")
        else:
            st.caption("Curves appear after the first logged step.")
        with st.expander("Log (last 30 lines)", expanded=info["state"] == "failed"):
            st.code(jobs.log_tail(info["path"], lines=30) or "(empty)", language=None)
        best = next((p for p in ("best.pt", "last.pt") if (Path(info["path"]) / p).is_file()), None)
        if info["state"] == "done" and best and st.button("Use this run's checkpoint in the sidebar", key="tr_use"):
            state.select_run_source(Path(info["path"]) / best)
            st.rerun(scope="app")
        # A run finished since the last refresh: rerun the whole page once so polling stops.
        if st.session_state.get("tr_polling") and not any(r["state"] in jobs.ACTIVE_STATES for r in rows):
            st.session_state["tr_polling"] = False
            st.rerun(scope="app")


any_active = any(r["state"] in jobs.ACTIVE_STATES for r in jobs.list_runs(ROOT))
st.session_state["tr_polling"] = any_active
st.fragment(runs_section, run_every=RUN_EVERY_S if any_active else None)()
