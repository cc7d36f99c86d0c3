"""The Train page's sections: the try-first button, the settings form, starting runs, and the runs section.

The page (``pages/4_train.py``) calls them in order; each draws one section. The runs section polls:
the page wraps :func:`runs_fragment` with ``st.fragment(..., run_every=RUN_EVERY_S)`` while a run is
queued or training (:func:`any_active` decides), so only that section reruns every few seconds. Nothing
here computes: runs start and are read through :mod:`relpos.jobs` and :mod:`relpos.experiments` (the
runs table through :mod:`app_support.state`'s cached loaders). Widget keys start with ``tr_``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import streamlit as st

from app_support import runs_ui, state, ui
from relpos import captions, explore, jobs
from relpos._fileio import sanitize_name
from relpos.experiments import figure_compare, leaderboard, run_table, rundir
from relpos.experiments.config import DATASETS, check_run_settings
from relpos.families import SCHEMES

#: Seconds between two refreshes of the runs section while a run is queued or training.
RUN_EVERY_S = 2.0
#: Datasets the form offers (a folder needs a path the form does not ask for).
FORM_DATASETS = tuple(d for d in DATASETS if d != "folder")
#: The try-first trio: a relative bias, no position at all, an absolute embedding.
TRY_FIRST = ("2d", "none", "absolute")


class StartRequest(NamedTuple):
    """What the settings form asks to train once Start is pressed (the widgets' values, unconverted)."""

    preset: str
    cfg: dict
    scheme: str
    options: dict[str, Any]
    values: dict[str, Any]  # dataset, img_size, patch_size, depth, num_heads, epochs, lr
    seed: int
    repeat: int
    name: str


def try_first_button(root: Path) -> None:
    """The button that queues the try-first trio on the *default* preset as a sweep (shown on Experiments)."""
    if st.button("Queue the try-first trio on *default*: relative bias vs none vs absolute embedding",
                 key="tr_try_first", help="Three runs of the default preset that differ only in their position "
                 "information: a relative bias (2D table), none at all, an absolute embedding. Compare them below."):
        with ui.guard("queue the trio", "check the configs/ folder and the runs folder"):
            spec = leaderboard.build_spec("try-first", "default", TRY_FIRST, seeds=1,
                                          description="Relative 2D table vs no position vs absolute embedding.")
            folder = leaderboard.queue_sweep(spec, root)
            st.session_state["ex_sweep_pending"] = str(folder)
            st.toast(f"Queued {folder.name}: its leaderboard is on Experiments")


def settings_form() -> StartRequest | None:
    """The preset picker, the position-scheme picker and the settings form (stops the page without a
    preset). Returns what to train when Start was pressed in this run, else None."""
    presets = jobs.list_presets()
    if not presets:
        st.error("No preset found in configs/.")
        st.stop()
    preset = st.selectbox("Preset", presets, key="tr_preset",
                          help="configs/<name>.yaml; 'default' trains in about a minute, 'tiny' in seconds.")
    cfg = state.preset_config(preset)
    data, model_cfg, train_cfg = cfg["data"], cfg["model"], cfg["train"]
    st.subheader("Position information")
    scheme, options = runs_ui.scheme_picker(f"tr_{preset}", model_cfg["scheme"])
    with st.form("tr_form", border=True):
        st.caption(f"Settings start from configs/{preset}.yaml; only what you change here is overridden.")
        c1, c2, c3, c4 = st.columns(4)
        ds_default = data["dataset"]
        choices = list(FORM_DATASETS) if ds_default in FORM_DATASETS else [ds_default, *FORM_DATASETS]
        dataset = c1.selectbox("Dataset", choices, index=choices.index(ds_default), key=f"tr_dataset_{preset}",
                               help="Which pictures to learn from; 'relational' needs position to be solved.")
        img_size = c1.number_input("Image size", 4, 512, int(data["img_size"]), key=f"tr_img_{preset}",
                                   help="Side of the square input pictures, in pixels.")
        patch = c1.number_input("Patch size", 1, 64, int(data["patch_size"]), key=f"tr_patch_{preset}",
                                help="The bias window (and the rotary grid) is the patch grid: image / patch per side.")
        depth = c2.number_input("Depth (blocks)", 1, 24, int(model_cfg["depth"]), key=f"tr_depth_{preset}",
                                help="How many transformer blocks are stacked.")
        heads = c2.number_input("Heads", 1, explore.MAX_HEADS, int(model_cfg["num_heads"]), key=f"tr_heads_{preset}",
                                help="Attention heads per block; the embedding width must divide by it.")
        epochs = c3.number_input("Epochs", 1, 1000, int(train_cfg["epochs"]), key=f"tr_epochs_{preset}",
                                 help="How many times training goes through the training set.")
        lr = c3.number_input("Learning rate", 1e-5, 1.0, float(train_cfg["lr"]), format="%.5f", key=f"tr_lr_{preset}",
                             help="Size of each optimisation step (the peak, after warm-up).")
        seed = c4.number_input("Seed", 0, 2**31 - 1, int(cfg["seed"]), key=f"tr_seed_{preset}",
                               help="Fixes the random start and the data order: the same seed trains the same model.")
        repeat = c4.number_input("Repeat × N seeds", 1, leaderboard.MAX_APP_SEEDS, 1, key=f"tr_repeat_{preset}",
                                 help="N runs with seeds seed, seed+1, ...: the spread tells how sure a result is.")
        name = c2.text_input("Run name (optional)", "", max_chars=40, key=f"tr_name_{preset}",
                             help="A name for the run folder; empty: the preset and scheme.")
        st.caption(f"Patch grid now: {int(data['img_size']) // int(data['patch_size'])} per side "
                   "(image size / patch size; changed values apply on Start).")
        submitted = st.form_submit_button("Start", type="primary")
    if not submitted:
        return None
    values = dict(dataset=dataset, img_size=img_size, patch_size=patch, depth=depth, num_heads=heads,
                  epochs=epochs, lr=lr)
    return StartRequest(preset, cfg, scheme, options, values, seed, repeat, name)


def start_runs(request: StartRequest, root: Path) -> None:
    """Queue the requested run (one per seed), select the first and rerun the page; or say why the
    settings cannot train."""
    preset, cfg, scheme, values = request.preset, request.cfg, request.scheme, request.values
    seeds = run_table.seeds_from(int(request.seed), int(request.repeat))
    base = sanitize_name(request.name or (preset if scheme == cfg["model"]["scheme"] else f"{preset}-{scheme}"))
    try:
        settings = dict(dataset=values["dataset"], img_size=int(values["img_size"]),
                        patch_size=int(values["patch_size"]), depth=int(values["depth"]),
                        num_heads=int(values["num_heads"]), epochs=int(values["epochs"]), lr=float(values["lr"]))
        plans = [run_table.run_overrides(cfg, scheme=scheme, options=request.options, seed=s, **settings)
                 for s in seeds]
        check_run_settings(cfg, plans[0], max_grid_side=explore.MAX_WINDOW_SIDE)
        dirs = [jobs.start_run(preset, o, runs_root=root, name=f"{base}-s{s}" if len(seeds) > 1 else base)
                for s, o in zip(seeds, plans)]
    except (ValueError, TypeError) as exc:
        st.error(f"**These settings cannot train:** {exc}\n\n**What to do:** change the setting named "
                 "above and press Start again.", icon=":material/error:")
    else:
        st.session_state[runs_ui.TRAIN_SELECT] = dirs[0].name
        st.toast(f"Queued {len(dirs)} run(s): {', '.join(d.name for d in dirs)}")
        st.rerun()


def any_active(root: Path) -> bool:
    """Whether a run is queued or training (the runs section then polls); False for an unreadable folder
    (the runs section says so)."""
    try:
        return any(r["state"] in jobs.ACTIVE_STATES for r in jobs.list_runs(root))
    except OSError:
        return False


def runs_fragment(root: Path) -> None:
    """The runs section, run as a fragment (see the page): the queue, the runs table (filter, groups,
    overlaid curves) and the chosen run. Once the last active run finished it reruns the whole page, so
    that polling stops."""
    with ui.guard("show the runs", f"check that {root}/ is readable, then reload the page"):
        jobs.reconcile_runs(root)  # a trainer killed from outside (OOM, kill -9) shows as failed at once
        rows = state.runs_with_columns()
        active_rows = [r for r in rows if r["state"] in jobs.ACTIVE_STATES]
        if active_rows:
            st.subheader("Queue")
            runs_ui.queue_panel(active_rows, key="tr_queue")
        st.subheader("Runs")
        if not rows:
            st.info(f"No run yet in {root}/. Start one above.")
            return
        smooth = runs_overview(rows)
        chosen_run(rows, smooth)
        # A run finished since the last refresh: rerun the whole page once so polling stops.
        if st.session_state.get("tr_polling") and not active_rows:
            st.session_state["tr_polling"] = False
            st.rerun(scope="app")


def runs_overview(rows: Sequence[Mapping[str, Any]]) -> float:
    """The filter, grouping and smoothing pickers, the groups and runs tables of the runs the filter
    shows, and the overlaid curves of any of them picked. Returns the curve smoothing."""
    f1, f2, f3 = st.columns([3, 1, 1])
    shown = run_table.filter_runs(rows, f1.text_input(
        "Filter", key="tr_filter", placeholder="e.g. t5 done seed",
        help="Show only the runs whose name, state, scheme, preset, seed or sweep contain every word typed."))
    group = f2.selectbox("Group by", ["(no grouping)", *run_table.GROUP_KEYS], key="tr_group",
                         help="One row per value of this column: how many runs, accuracy mean ± std.")
    smooth = f3.slider("Curve smoothing", 0.0, 0.99, 0.6, 0.01, key="tr_smooth",
                       help="Averages out the step-to-step noise of the training curves (as TensorBoard does); "
                       "0 shows the raw points, the raw curve stays faint underneath.")
    if group != "(no grouping)":
        runs_ui.groups_table(shown, group, key="tr_groups")
    runs_ui.runs_table(shown, key="tr_table")
    overlay = st.multiselect("Overlay the curves of", [r["name"] for r in shown], key="tr_overlay",
                             placeholder="choose any number of runs",
                             help="Draw the curves of several runs on one chart (one colour per run).")
    if overlay:
        over = {n: rundir.read_metrics(next(r["path"] for r in rows if r["name"] == n)) for n in overlay}
        ui.plotly(figure_compare.smoothed_curves_figure(over, smoothing=smooth, title="Overlaid runs",
                                                        uirevision="tr_overlay"), key="tr_overlay_curves")
        if figure_compare.has_diagnostics(over):
            ui.plotly(figure_compare.diagnostics_curves_figure(over, uirevision="tr_overlay_diag"),
                      key="tr_overlay_diag")
    return smooth


def chosen_run(rows: Sequence[Mapping[str, Any]], smooth: float) -> None:
    """The run picker (on the run just started or opened from another page) and that run: its settings,
    progress with Cancel, what broke, its curves, its log and a button to use its checkpoint."""
    names = [r["name"] for r in rows]
    pending = st.session_state.pop(runs_ui.TRAIN_SELECT, None)
    if pending in names or st.session_state.get("tr_run") not in names:
        st.session_state["tr_run"] = pending if pending in names else names[0]
    selected = st.selectbox("Run", names, key="tr_run", help="The run whose progress, curves and log are shown.")
    info = next(r for r in rows if r["name"] == selected)
    active = info["state"] in jobs.ACTIVE_STATES
    where = captions.position_label(info["scheme"]) if info["scheme"] in SCHEMES else "?"
    st.caption(f"preset **{info['preset']}** · position information: **{where}** · seed {info['seed']} · "
               f"changed: {', '.join(info['changed']) or 'nothing'}")
    cols = st.columns([3, 1])
    waiting = f" · queued #{info['queue_position']}" if info["queue_position"] is not None else ""
    cols[0].progress(float(info["progress"]), text=ui.run_status(info, active) + waiting)
    # A broken folder's run may still have a live trainer: Cancel reaches it too.
    if (active or info["alive"]) and cols[1].button("Cancel", key="tr_cancel", type="secondary"):
        runs_ui.cancel(info["path"], selected)
    if info["broken"]:
        st.warning("**This run's folder is broken:** some of its files fail their checks (below), so it is "
                   "shown as far as it can be read. **What to do:** delete the folder, or start the run again.",
                   icon=":material/warning:")
        st.code(info["error"], language=None)
    elif info["state"] == "failed" and info["error"]:
        st.error(f"**This run failed.** {info['error'][:2000]}\n\n**What to do:** read the log below, "
                 "fix the setting it names, and start a new run.", icon=":material/error:")
    run_curves(info, smooth)
    with st.expander("Log (last 30 lines)", expanded=info["state"] == "failed"):
        st.code(jobs.log_tail(info["path"], lines=30) or "(empty)", language=None)
    if info["state"] == "done" and runs_ui.checkpoint_of(info["path"]) and st.button(
            "Use this run's checkpoint in the sidebar", key="tr_use"):
        state.select_run_source(runs_ui.checkpoint_of(info["path"]))
        st.rerun(scope="app")


def run_curves(info: Mapping[str, Any], smooth: float) -> None:
    """One run's training curves and bias diagnostics per epoch, from the last 8 MiB of its metrics."""
    selected = info["name"]
    tail = rundir.read_metrics_tail(info["path"])  # at most its last 8 MiB, whatever the file's size
    if tail.records:
        ui.plotly(figure_compare.smoothed_curves_figure({selected: tail.records}, smoothing=smooth,
                                                        uirevision=selected), key="tr_curves")
        if figure_compare.has_diagnostics({selected: tail.records}):
            ui.plotly(figure_compare.diagnostics_curves_figure({selected: tail.records},
                                                               uirevision=f"{selected}-diag"), key="tr_diag")
        else:
            st.caption("No bias diagnostics per epoch: training logs them only for a relative bias.")
        if tail.skipped_bytes:
            st.caption(f"Showing the last {len(tail.records):,} lines of metrics.jsonl "
                       f"({tail.skipped_bytes / 2**20:,.0f} MB of {tail.size / 2**20:,.0f} MB left out).")
    else:
        st.caption(f"Curves appear after the first logged step. {tail.problem or ''}")
