"""Widgets of the Train and Experiments pages: the position-scheme picker, the queue, the runs table
with its filter and groups, links that open a run in the other pages, and the lesson's state.

Nothing here computes: the numbers come from :mod:`relpos.experiments.run_table` and
:mod:`relpos.experiments.leaderboard` (through :mod:`app_support.state`'s cached loaders).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app_support import state, ui
from relpos import captions, explore, jobs
from relpos.experiments import leaderboard, run_table
from relpos.families import FAMILIES, SCHEMES

#: What each embedding choice adds to a patch, in words.
EMBEDDING_LABELS: dict[str, str] = {
    "none": "nothing",
    "absolute": "a learned absolute embedding (ViT)",
    "rope_axial": "rotary, axial (RoPE: x and y frequencies)",
    "rope_mixed": "rotary, mixed (RoPE: learned directions)",
    "rope_axial+absolute": "rotary axial + absolute embedding",
    "rope_mixed+absolute": "rotary mixed + absolute embedding",
}
#: Pages a run's checkpoint can be opened in (label, script).
OPEN_IN = (("Attention maps", "pages/3_attention_maps.py"), ("Checkpoints & compare", "pages/5_checkpoints.py"),
           ("Resize lab", "pages/6_resize_lab.py"))
#: Session key the Train page reads to select a run (set before switching to it).
TRAIN_SELECT = "tr_selected_pending"


def embedding_label(name: str) -> str:
    return EMBEDDING_LABELS.get(name, name)


def bias_label(name: str) -> str:
    return "nothing" if name == "none" else f"{FAMILIES[name].label}"


def scheme_picker(prefix: str, default: str) -> tuple[str, dict[str, Any]]:
    """Every position scheme as two choices (what the patches get, what the attention logits get) and
    the bias family's options; returns ``(scheme, options)``. Widget keys start with ``prefix``."""
    embedding0, bias0 = run_table.split_scheme(default)
    c1, c2 = st.columns(2)
    embedding = c1.selectbox(
        "Added to each patch: where it is", run_table.EMBEDDING_CHOICES,
        index=run_table.EMBEDDING_CHOICES.index(embedding0), format_func=embedding_label, key=f"{prefix}_embedding",
        help="A position embedding tells every patch its own place (absolute), or rotates queries and keys "
        "by it (rotary), before attention compares them.")
    bias = c2.selectbox(
        "Added to the attention logits: how far apart", run_table.BIAS_CHOICES,
        index=run_table.BIAS_CHOICES.index(bias0), format_func=bias_label, key=f"{prefix}_bias",
        help="A relative position bias adds one number per head and per offset between query and key.")
    options: dict[str, Any] = {}
    if bias != "none":
        c2.caption(FAMILIES[bias].description)
        if FAMILIES[bias].options:
            with c2.container(border=True):
                options = ui.family_options(bias, f"{prefix}_opt")
    scheme = run_table.compose_scheme(embedding, bias)
    c1.caption(f"Position information: **{captions.position_label(scheme)}** (`model.scheme={scheme}`)")
    return scheme, options


def cancel(path: str, name: str) -> None:
    """Cancel a queued or running run (a queued one never trains), then rerun the whole page."""
    with st.spinner(f"Stopping {name}..."):
        status = jobs.cancel_run(path, grace=10.0, runs_root=state.runs_root())
    st.toast(f"{name}: {status.get('state')}")
    st.rerun(scope="app")


def queue_panel(rows: Sequence[Mapping[str, Any]], key: str) -> None:
    """The runs that train now and the ones waiting (with their place in the queue), each with Cancel."""
    running = [r for r in rows if r["state"] == "running" or (r["state"] == "queued" and r["queue_position"] is None)]
    waiting = sorted((r for r in rows if r["queue_position"] is not None), key=lambda r: r["queue_position"])
    st.caption(f"{len(running)} training, {len(waiting)} waiting · at most {jobs.max_concurrent_runs()} at once "
               "($RELPOS_MAX_CONCURRENT_RUNS); a queued run starts by itself when a slot frees, browser open or not.")
    for r in [*running, *waiting]:
        cols = st.columns([4, 2, 3, 1], vertical_alignment="center")
        cols[0].markdown(f"`{r['name']}`")
        cols[1].markdown(f"queued **#{r['queue_position']}**" if r["queue_position"] is not None else "training")
        cols[2].progress(float(r["progress"]), text=f"{r.get('scheme') or '?'} · seed {r.get('seed', '?')}")
        if cols[3].button("Cancel", key=f"{key}_cancel_{r['name']}", help="A queued run is removed and never trains."):
            cancel(r["path"], r["name"])


def _changed(value: Any) -> str:
    return ", ".join(value) if value else "nothing"


def runs_table(rows: Sequence[Mapping[str, Any]], key: str) -> None:
    """The runs with their config columns: state, scheme, seed, preset, changed keys, accuracy, progress."""
    frame = pd.DataFrame({
        "run": [r["name"] for r in rows],
        "state": [r["state"] + (f" #{r['queue_position']}" if r["queue_position"] is not None else "") for r in rows],
        "scheme": [r.get("scheme") or "?" for r in rows],
        "seed": [r.get("seed") for r in rows],
        "preset": [r.get("preset") or "?" for r in rows],
        "changed": [_changed(r.get("changed")) for r in rows],
        "val accuracy": [captions.format_accuracy(r["accuracy"], r.get("num_val")) for r in rows],
        "progress": [r["progress"] for r in rows],
        "sweep": [r.get("sweep") or "" for r in rows],
        "updated": [ui.clock(r["updated"]) for r in rows],
    })
    st.dataframe(frame, hide_index=True, width="stretch", key=key, column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "changed": st.column_config.TextColumn("changed", width="large"),
    })


def groups_table(rows: Sequence[Mapping[str, Any]], by: str, key: str) -> None:
    """One row per value of column ``by``: runs, accuracy mean ± std over the runs that have one."""
    groups = run_table.group_runs(rows, by)
    st.dataframe(pd.DataFrame({
        by: [g[by] for g in groups],
        "runs": [g["runs"] for g in groups],
        "n": [g["n"] for g in groups],
        "accuracy (%)": [pct_mean_std(g["acc_mean"], g["acc_std"]) for g in groups],
        "best": [captions.format_accuracy(g["acc_best"]) for g in groups],
    }), hide_index=True, width="stretch", key=key)


def pct_mean_std(mean: float | None, std: float | None) -> str:
    """``"96.1 ± 1.2"`` (percent), ``"96.1"`` without a std, ``"–"`` without a mean."""
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def checkpoint_of(path: str | Path) -> Path | None:
    """A run's best checkpoint (else its last), or None before it saved one."""
    return next((p for p in (Path(path) / "best.pt", Path(path) / "last.pt") if p.is_file()), None)


def open_run_links(path: str, name: str, key: str) -> None:
    """Buttons that make a run the sidebar's model and open another page (or the Train page on it)."""
    ckpt = checkpoint_of(path)
    cols = st.columns(len(OPEN_IN) + 1)
    for col, (label, page) in zip(cols, OPEN_IN):
        if col.button(label, key=f"{key}_{page}", disabled=ckpt is None, icon=":material/open_in_new:",
                      help="Make this run's checkpoint the sidebar's model and open the page."):
            state.select_run_source(ckpt)
            st.switch_page(page)
    if cols[-1].button("Train page", key=f"{key}_train", icon=":material/open_in_new:",
                       help="Its progress, curves and log on the Train page."):
        st.session_state[TRAIN_SELECT] = name
        st.switch_page("pages/4_train.py")


def lesson_note(root: Path) -> None:
    """Where the lesson's demo runs stand (nothing before "Prepare a lesson" was pressed)."""
    lesson = leaderboard.lesson_state(root)
    if lesson is None:
        return
    done, total = lesson["done"], lesson["total"]
    if lesson["active"]:
        st.info(f"**Lesson:** {done} of {total} demo runs ready, {lesson['active']} queued or training.",
                icon=":material/school:")
    else:
        failed = f" ({lesson['failed']} failed: press Prepare a lesson again)" if lesson["failed"] else ""
        st.success(f"**Lesson ready:** {done} of {total} demo runs trained{failed}. The leaderboard is on "
                   "**Experiments** (sweep *lesson*); open any run from there.", icon=":material/school:")


# ----------------------------------------------------------------------------- sweeps

#: Schemes the sweep builder offers as checkboxes (those :data:`relpos.families.SCHEMES` knows).
SWEEP_SCHEMES: tuple[str, ...] = tuple(s for s in ("none", "absolute", *FAMILIES, "absolute+2d", "rope_axial",
                                                   "rope_mixed") if s in SCHEMES)
SWEEP_DEFAULT = ("none", "absolute", "2d")


def sweep_builder(presets: Sequence[str]) -> dict:
    """A preset, schemes as checkboxes (each family's options under it), keys to vary and seeds; the spec."""
    c1, c2 = st.columns([1, 2])
    base = c1.selectbox("Preset", presets, key="ex_base",
                        help="configs/<name>.yaml: the settings every run of the sweep starts from.")
    name = c1.text_input("Sweep name", "compare", max_chars=40, key="ex_name",
                         help="A name for the sweep's folder and leaderboard.")
    seeds = c1.slider("Seeds per cell", 1, leaderboard.MAX_APP_SEEDS, 3, key="ex_seeds",
                      help="Each cell trains once per seed; the leaderboard shows the mean ± std over them.")
    vary = c1.multiselect("Keys to vary (each value × each scheme)", leaderboard.VARY_KEYS, key="ex_vary",
                          help="Settings to try several values of; every value is trained with every scheme.")
    grid = {key: leaderboard.parse_values(c1.text_input(f"{key} values", key=f"ex_vary_{key}",
                                                        placeholder="comma-separated, e.g. 0.001, 0.003",
                                                        help=f"The values of {key} to try, separated by commas."), key)
            for key in vary}
    c2.markdown("**Schemes to compare**")
    schemes, options = [], {}
    cols = c2.columns(3)
    for k, scheme in enumerate(SWEEP_SCHEMES):
        with cols[k % 3]:
            if st.checkbox(scheme, scheme in SWEEP_DEFAULT, key=f"ex_scheme_{scheme}",  # the words: in its help
                           help=f"Train with this position information: {captions.position_label(scheme)}."):
                schemes.append(scheme)
                bias = run_table.split_scheme(scheme)[1]
                if bias != "none" and FAMILIES[bias].options:
                    with st.expander(f"{scheme} options"):
                        options[scheme] = ui.family_options(bias, f"ex_opt_{scheme}")
    return leaderboard.build_spec(name, base, schemes, options=options,
                                  vary={k: v for k, v in grid.items() if v}, seeds=int(seeds))


def estimate_line(est: Mapping[str, Any]) -> None:
    """How many runs and about how long (and where the time comes from)."""
    c1, c2 = st.columns([1, 3])
    cells, seeds = est["cells"], est["seeds"]
    c1.metric("Runs", est["runs"], f"{cells} cell{'s' * (cells != 1)} × {seeds} seed{'s' * (seeds != 1)}",
              delta_color="off", delta_arrow="off")
    total = est["total_s"]
    c2.metric("Estimated time", "unknown" if total is None else explore.format_eta(total),
              None if total is None else f"{explore.format_eta(est['per_run_s'])} per run, {est['limit']} at once",
              delta_color="off", delta_arrow="off")
    c2.caption(f"Per-run time {est['source']}.")


def leaderboard_table(rows: Sequence[Mapping[str, Any]], key: str) -> None:
    """The leaderboard: rank, cell, finished seeds, accuracy mean ± std, on how many validation images."""
    st.dataframe(pd.DataFrame({
        "rank": [r["rank"] for r in rows],
        "cell": [r["label"] for r in rows],
        "n": [r["n"] for r in rows],
        "accuracy (%) mean ± std": [pct_mean_std(r["acc_mean"], r["acc_std"]) for r in rows],
        "val images": [r["val_images"] for r in rows],
        "failed": [r["n_failed"] for r in rows],
        "pending": [r["n_pending"] for r in rows],
        "wall s": [r["wall_s_mean"] for r in rows],
        "params": [r["params_mean"] for r in rows],
    }), hide_index=True, width="stretch", key=key, column_config={
        "wall s": st.column_config.NumberColumn(format="%.1f"), "params": st.column_config.NumberColumn(format="%d")})
