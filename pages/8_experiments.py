"""Page 8: compare position schemes over seeds: queue a sweep, watch its leaderboard fill in."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_support import runs_ui, state, ui
from app_support.frame import page_frame
from relpos import jobs
from relpos.experiments import leaderboard
from relpos.experiments.config_utils import load_config
from relpos.experiments.sweep import list_sweeps, load_spec
from relpos.experiments.sweep_figures import cell_colors, leaderboard_figure, sweep_curves_figure

page_frame("Experiments")
st.markdown(
    "Which position scheme learns the task, how sure are we? A **sweep** trains every scheme (and every "
    "value of the keys you vary) once per seed through the run queue, then ranks them by validation "
    "accuracy, mean ± std over the seeds. The same sweep runs from a terminal: "
    "`python -m relpos.experiments.sweep --spec configs/sweeps/families.yaml`; it shows up here too."
)
RUN_EVERY_S = 3.0
ROOT = state.runs_root()
PENDING = "ex_sweep_pending"

with ui.guard("prepare the sweep", "check the sweep file, the values you typed, and the configs/ folder"):
    st.subheader("Queue a sweep")
    mode = st.radio("Start from", ["a sweep file", "build one here"], horizontal=True, key="ex_mode",
                    help="Run a prepared sweep from configs/sweeps/, or choose the schemes and keys here.")
    source, seeds, files = None, None, leaderboard.spec_files()
    if mode == "a sweep file" and not files:
        st.info("No sweep file in configs/sweeps/: build one here instead.", icon=":material/info:")
        mode = "build one here"
    if mode == "a sweep file":
        path = st.selectbox("Sweep file", files, format_func=lambda p: f"configs/sweeps/{p.name}", key="ex_file",
                            help="A prepared comparison: which preset, which schemes, which keys to vary.")
        raw = load_config(path)
        given = raw.get("seeds", 1)
        default = min(given if isinstance(given, int) else len(given), leaderboard.MAX_APP_SEEDS)
        chosen = st.slider("Seeds per cell", 1, leaderboard.MAX_APP_SEEDS, default, key=f"ex_file_seeds_{path.name}",
                           help="Each cell trains once per seed; the leaderboard shows the mean ± std over them.")
        seeds = None if chosen == default and isinstance(given, int) and given <= leaderboard.MAX_APP_SEEDS else chosen
        spec = load_spec(path, seeds=seeds)
        st.caption(f"{spec['description'] or spec['name']} · base preset **{spec['base']}** · grid "
                   + ", ".join(f"`{k}` = {v}" for k, v in spec["grid"].items()))
        source = path
    else:
        spec = source = runs_ui.sweep_builder(jobs.list_presets())
    runs_ui.estimate_line(leaderboard.estimate(spec, state.runs_with_columns()))
    c1, c2 = st.columns([1, 1])
    if c1.button(f"Queue {leaderboard.count_runs(spec)[2]} runs", type="primary", key="ex_queue"):
        folder = leaderboard.queue_sweep(source, ROOT, seeds=seeds)
        st.session_state[PENDING] = str(folder)
        st.toast(f"Queued sweep {folder.name}")
    if c2.button("Prepare a lesson", key="ex_lesson", icon=":material/school:",
                 help="Queue the demo set (relative, absolute, none, one run of every other scheme: configs/sweeps/"
                 "lesson.yaml) so the class never waits; again later re-queues only what is missing."):
        st.session_state[PENDING] = str(leaderboard.prepare_lesson(ROOT))
        st.toast("Lesson queued")
    runs_ui.lesson_note(ROOT)


def results_section() -> None:
    """The chosen sweep: leaderboard, bar chart, curves, failures, and links to its members."""
    with ui.guard("show the sweep", f"check that {leaderboard.sweeps_root(ROOT)}/ is readable"):
        st.subheader("Results")
        sweeps = list_sweeps(leaderboard.sweeps_root(ROOT))
        if not sweeps:
            st.info("No sweep yet. Queue one above, or from a terminal.")
            return
        dirs = [s["dir"] for s in sweeps]
        label = {s["dir"]: f"{s['name']} · {Path(s['dir']).name} · {s['members']} runs · {ui.clock(s['created'], '%Y-%m-%d %H:%M')}"
                 for s in sweeps}
        pending = st.session_state.pop(PENDING, None)
        if pending in dirs or st.session_state.get("ex_sweep") not in dirs:
            st.session_state["ex_sweep"] = pending if pending in dirs else dirs[0]
        chosen = st.selectbox("Sweep", dirs, format_func=label.get, key="ex_sweep",
                              help="Which sweep's leaderboard and curves to show (the newest first).")
        view = state.sweep_view(chosen)
        runs = view["sweep"]["runs"]
        done, waiting = sum(r["state"] == "done" for r in runs), sum(r["state"] in jobs.ACTIVE_STATES for r in runs)
        st.caption(f"{done} of {len(runs)} runs done · {waiting} queued or training · {len(runs) - done - waiting} "
                   f"failed · folder `{chosen}` (runs.csv, summary.csv, summary.md)")
        rows = view["rows"]
        colors = cell_colors(list(view["curves"]))  # one colour per cell, in grid order, in both figures
        runs_ui.leaderboard_table(rows, key="ex_leaderboard")
        # uirevision: a zoom survives the refresh while members train.
        # Full width each: ten schemes' labels (name, mean ± std, n) need the room.
        ui.plotly(leaderboard_figure(rows, colors).update_layout(uirevision=chosen), key="ex_bars")
        ui.plotly(sweep_curves_figure(view["curves"], colors).update_layout(uirevision=chosen), key="ex_curves")
        failed = [r for r in runs if r["state"] in ("failed", "cancelled", "missing")]
        if failed:
            st.warning("**Failed members** (the others still finish):\n\n" + "\n".join(
                f"- `{r['run'] or '(never queued)'}` (seed {r['seed']}, {r['state']}): {r['error'] or ''}" for r in failed),
                icon=":material/warning:")
        members = {m["run"]: f"{Path(m['run']).name} · seed {m['seed']}" for m in view["sweep"].get("members") or []
                   if m.get("run")}
        if members:
            path = st.selectbox("Open a member", list(members), key="ex_member", format_func=members.get,
                                help="One run of the sweep, to open in another page with the buttons below.")
            runs_ui.open_run_links(path, Path(path).name, key="ex_open")
        if st.session_state.get("ex_polling") and not view["active"]:  # done since the last refresh: stop polling
            st.session_state["ex_polling"] = False
            st.rerun(scope="app")


active = any(r["state"] in jobs.ACTIVE_STATES for r in jobs.list_runs(ROOT))
st.session_state["ex_polling"] = active
st.fragment(results_section, run_every=RUN_EVERY_S if active else None)()
