"""The Labs page's views: run a lab (queue its shipped sweep), pick a lab sweep, evaluate it, show it.

Nothing here computes: the numbers are the sweep's ``results.csv`` (through :mod:`app_support.state`),
arranged by :mod:`relpos.experiments.lab_views`, drawn by :mod:`relpos.experiments.lab_figures`, and
put in words by :func:`relpos.experiments.lab_report.conclusion`. Queuing and evaluating go through
the sweep library, as the CLI does (:func:`relpos.experiments.leaderboard.queue_sweep`,
:func:`relpos.experiments.labs.evaluate_sweep`). Widget keys start with ``lb_``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import pandas as pd
import streamlit as st

from app_support import runs_ui, state, ui
from relpos.experiments import lab_figures, lab_views, labs, leaderboard
from relpos.experiments.config_utils import load_config
from relpos.experiments.lab_report import PAPER_RESULTS, conclusion
from relpos.experiments.sweep import load_spec

#: The schemes in the papers' order (best first), so our bars read in the same order as their tables.
PAPER_ORDER = ("2d", "absolute+2d", "cpb", "absolute", "none")
#: How an ablation's evaluations read in the legend, in the order the page shows them.
DATASET_NAMES = MappingProxyType({"val/relational": "relational task (default preset)", "val/digits": "digits"})


def dataset_rank(ev: str) -> int:
    """Where an ablation's evaluation goes: the relational task first, then digits, then the rest."""
    names = list(DATASET_NAMES)
    return names.index(ev) if ev in names else len(names)


def pending_key(kind: str) -> str:
    """Session key holding the sweep folder just queued for lab ``kind`` (the picker selects it)."""
    return f"lb_pending_{kind}"


def queue_box(kind: str, root: Path, expanded: bool) -> None:
    """Queue one of the lab's shipped specs (its seeds adjustable), with the estimated time."""
    specs = lab_views.lab_specs(kind)
    if not specs:
        return
    with st.expander(f"Run this lab: queue its sweep ({', '.join(p.name for p in specs)})", expanded=expanded):
        path = specs[0] if len(specs) == 1 else st.selectbox(
            "Sweep file", specs, format_func=lambda p: f"configs/sweeps/{p.name}", key=f"lb_spec_{kind}",
            help="Which prepared sweep of this lab to queue (its schemes, dataset and seeds).")
        given = load_config(path).get("seeds", 1)
        default = min(given if isinstance(given, int) else len(given), leaderboard.MAX_APP_SEEDS)
        seeds = st.slider("Seeds per scheme", 1, leaderboard.MAX_APP_SEEDS, default, key=f"lb_seeds_{kind}_{path.name}",
                          help="Each scheme trains once per seed; every number is then a mean ± std over them.")
        spec = load_spec(path, seeds=seeds)
        st.caption(f"configs/sweeps/{path.name}: {spec['description']} Base preset **{spec['base']}**; "
                   + ", ".join(f"`{k}` = {v}" for k, v in spec["grid"].items()) + ".")
        runs_ui.estimate_line(leaderboard.estimate(spec, state.runs_with_columns()))
        if st.button(f"Queue {leaderboard.count_runs(spec)[2]} runs", type="primary", key=f"lb_queue_{kind}"):
            folder = leaderboard.queue_sweep(path, root, seeds=seeds)
            st.session_state[pending_key(kind)] = str(folder)
            st.toast(f"Queued lab sweep {folder.name}")
        st.caption(f"The same from a terminal (it waits, then evaluates): `python -m relpos.experiments.sweep "
                   f"--spec configs/sweeps/{path.name} --sweep-dir D [--seeds N]`. Queued from here, the members "
                   "train in the run queue; once they are done, press **Evaluate** below.")


def pick_sweeps(kind: str, root: Path, multi: bool = False) -> list[str]:
    """The lab sweep folder(s) to show: one (``multi`` False) or several, newest of each name first."""
    sweeps = lab_views.lab_sweeps(kind, leaderboard.sweeps_root(root))
    if not sweeps:
        st.info(f"No {lab_views.LAB_TITLES[kind].lower()} sweep yet under {leaderboard.sweeps_root(root)}/: "
                "queue it above, or run it from a terminal.")
        return []
    dirs = [s["dir"] for s in sweeps]
    label = {s["dir"]: f"{s['name']} · {Path(s['dir']).name} · {s['members']} runs · "
                       f"{ui.clock(s['created'], '%Y-%m-%d %H:%M')}" for s in sweeps}
    key, pending = f"lb_sweep_{kind}", st.session_state.pop(pending_key(kind), None)
    if not multi:
        if pending in dirs or st.session_state.get(key) not in dirs:
            st.session_state[key] = pending if pending in dirs else dirs[0]
        return [st.selectbox("Lab sweep", dirs, format_func=label.get, key=key,
                             help="Which queued run of this lab to show (the newest first).")]
    newest = list({s["name"]: s["dir"] for s in reversed(sweeps)}.values())[::-1]  # newest of each name
    kept = [d for d in st.session_state.get(key, newest) if d in dirs]
    st.session_state[key] = ([pending] if pending in dirs else []) + [d for d in kept if d != pending] or newest
    return st.multiselect("Lab sweeps (their results are pooled)", dirs, format_func=label.get, key=key,
                          help="Several runs of this lab whose results are shown together.")


def progress(sweep_dir: str) -> dict:
    """Where a lab sweep stands, and the Evaluate button once members are done without results."""
    p = lab_views.lab_progress(sweep_dir)
    folder = Path(sweep_dir).resolve()
    shown = folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd()) else folder
    st.caption(f"`{folder.name}`: {p['done']} of {p['total']} members done · {p['active']} queued or "
               f"training · {p['failed']} failed · {p['evaluated']} evaluated (results.csv in `{shown}`)")
    if p["to_evaluate"]:
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        if c1.button(f"Evaluate {p['to_evaluate']} finished member(s)", type="primary",
                     key=f"lb_evaluate_{Path(sweep_dir).name}"):
            bar = c2.progress(0.0, text="Evaluating...")
            out = labs.evaluate_sweep(sweep_dir, progress=lambda i, n: bar.progress(i / n, text=f"member {i} of {n}"))
            for line in (out or {}).get("skipped", []):
                st.toast(f"Not evaluated: {line}")
            st.rerun(scope="app")
        c2.caption("These members finished but the lab has not measured them yet (the CLI does it when it "
                   "waits for the members; a sweep queued from the app is evaluated here).")
    return p


def _table(table: dict, key: str) -> None:
    st.dataframe(pd.DataFrame(table["rows"], columns=table["columns"]), hide_index=True, width="stretch", key=key)
    st.caption(table["caption"])


def _downloads(sweep_dir: str, key: str, named: bool = False) -> None:
    """Download buttons of a lab sweep's results.csv and results.md (``named``: the buttons say whose)."""
    c1, c2, _ = st.columns([1, 1, 1] if named else [1, 1, 3])
    for col, name, mime in ((c1, labs.RESULTS_FILE, "text/csv"), (c2, labs.RESULTS_MD, "text/markdown")):
        path = Path(sweep_dir) / name
        if path.is_file():
            with col:
                label = f"Download {Path(sweep_dir).name}/{name}" if named else f"Download {name}"
                ui.download(label, path.read_bytes(), f"{Path(sweep_dir).name}-{name}", key=f"{key}_{name}",
                            mime=mime)


def _conclusion(kind: str, summary: list[dict]) -> None:
    st.markdown(f"**Conclusion** (derived from the numbers): {conclusion(kind, summary)}")


def transfer_view(sweep_dir: str) -> None:
    """Accuracy against grid (ours and the paper's), the tables side by side, which rule moved what."""
    res = state.lab_results(sweep_dir)
    if not res["summary"]:
        st.info("No results yet: the members train, then the lab measures each at the new grids.")
        return
    train = lab_views.train_grid(sweep_dir) or (1, 1)
    p = PAPER_RESULTS["transfer"]
    colors = lab_figures.scheme_colors([*(s["scheme"] for s in res["summary"]), *p["rows"]])
    ui.side_by_side((lab_figures.transfer_figure(res["summary"], train, colors=colors), "lb_tr_ours"),
                    (lab_figures.paper_transfer_figure(colors=colors), "lb_tr_paper"))
    _conclusion("transfer", res["summary"])
    st.subheader(f"Ours: trained at {train[0]}x{train[1]}")
    _table(lab_views.results_table(res["summary"], by="eval", train=train), key="lb_tr_table")
    st.subheader("The paper: Swin V2, Table 1")
    c1, c2 = st.columns([3, 2])
    c1.dataframe(pd.DataFrame(lab_views.paper_transfer_rows()), hide_index=True, width="stretch", key="lb_tr_paper_t")
    rows = "; ".join(f"{k}: {label}" for k, (label, _, _) in p["rows"].items())
    c2.caption(f"{p['source']}: {p['setting']}. Each cell: without / after fine-tuning. Rows: {rows}. Our grids "
               "are the same ratios of the training size (1.5×, 2×, 3×) as the paper's windows 12, 16 and 24.")
    st.subheader("Which rule moved each scheme")
    methods = state.transfer_methods(sweep_dir)
    cells = pd.DataFrame(methods["rows"], columns=["scheme", *methods["methods"]])
    st.dataframe(cells.map(lambda c: "n/a" if str(c).startswith("n/a: ") else c), hide_index=True,
                 width="stretch", key="lb_tr_methods")
    why_not: dict[tuple[str, str], list[str]] = {}  # (methods, reason) -> schemes
    for r in methods["rows"]:
        for reason in dict.fromkeys(c for c in r.values() if str(c).startswith("n/a: ")):
            ms = " and ".join(m for m in methods["methods"] if r[m] == reason)
            why_not.setdefault((ms, reason.removeprefix("n/a: ")), []).append(r["scheme"])
    st.markdown("\n".join(f"- **{ms}**: n/a for {', '.join(schemes)}: {reason}"
                           for (ms, reason), schemes in why_not.items()))
    st.caption("A cell names the result it produced (the columns above); n/a: that rule does not apply to the "
               "scheme, so no number is printed under its name. bicubic, geometric: the learned table resized "
               "(timm/Swin, BEiT); native: the scheme's own rule (cpb re-queried with the training window held, "
               "absolute embedding resampled bicubically, t5/alibi recomputed, no position as it is).")
    _downloads(sweep_dir, "lb_tr_dl")


def shift_view(sweep_dir: str) -> None:
    """Seen vs unseen accuracy per scheme, the table, the words, and one image through two models."""
    res = state.lab_results(sweep_dir)
    if not res["summary"]:
        st.info("No results yet: the members train, then the lab measures each in both regions.")
        return
    table = lab_views.results_table(res["summary"], by="scheme", order=PAPER_ORDER)
    ui.plotly(lab_figures.bars_figure(
        res["summary"], res["rows"], groups=["region=seen", "region=unseen"], schemes=PAPER_ORDER,
        group_names={"region=seen": "seen region (where it trained)", "region=unseen": "unseen region"},
        title="Accuracy where the marks were during training, and where they never were<br>"
              f"<sup>{table['caption']} Error bar: one std; dots: seeds.</sup>"), key="lb_sh_bars")
    _conclusion("shift", res["summary"])
    _table(table, key="lb_sh_table")
    _downloads(sweep_dir, "lb_sh_dl")
    why(sweep_dir)


def why(sweep_dir: str) -> None:
    """One unseen-region image through the absolute and a relative model of the same seed, side by side."""
    st.subheader("Why: one image of the unseen region, seen by two models")
    pairs = {s: m for s, m in lab_views.shift_pairs(sweep_dir).items() if "absolute" in m and len(m) > 1}
    relative = {s: [k for k in m if k not in ("absolute", "none") and not k.startswith("absolute")] for s, m in pairs.items()}
    seeds = [s for s in pairs if relative[s]]
    if not seeds:
        st.info("Needs a finished absolute member and a finished relative one of the same seed.")
        return
    c1, c2, c3, c4, c5 = st.columns(5)
    seed = c1.selectbox("Seed", seeds, key="lb_sh_seed", help="Which seed's pair of models to compare.")
    rel = c2.selectbox("Relative scheme", relative[seed], key="lb_sh_rel",
                       help="The model with relative position information shown beside the absolute one.")
    ex = {name: state.shift_example(pairs[seed][name], int(st.session_state.get("lb_sh_index", 0)))
          for name in ("absolute", rel)}
    a, b = ex["absolute"], ex[rel]
    index = c3.number_input("Test image", 0, int(a["num_val"] or 1) - 1, key="lb_sh_index",
                            help="Which image of the unseen region to run through both models.")
    layer = c4.selectbox("Layer", range(len(a["attention"])), index=len(a["attention"]) - 1, key="lb_sh_layer",
                         help="Which transformer block's attention to draw (the last one decides).")
    heads = a["attention"][0].shape[1]
    head = c5.selectbox("Head", [None, *range(heads)], format_func=lambda h: "mean of the heads" if h is None else f"head {h}",
                        key="lb_sh_head", help="One attention head, or the mean of them all.")
    which = st.radio("Query patch", ["A", "B"], format_func=lambda m: f"the patch of mark {m}", horizontal=True,
                     key="lb_sh_query", help="Whose attention to draw: the patch of mark A or of mark B.")
    if a["marks"] != b["marks"]:
        st.warning("The two models saw different images (their configs differ); the marks shown are the absolute model's.")
    grid, patch = tuple(a["grid"]), int(a["patch"])
    q = lab_views.mark_token(a["marks"], which, patch, grid)
    maps = {f"{e['scheme']}: answers {e['classes'][e['prediction']]}"
            f" ({'right' if e['prediction'] == e['label'] else 'wrong'})":
            lab_views.attention_row(e["attention"], int(layer), head, q, grid) for e in (a, b)}
    ui.plotly(lab_figures.shift_attention_figure(a["picture"], maps, a["marks"], mark_size=int(a["mark_size"]),
                                                 patch=patch, query=divmod(q, grid[1]), seen_cols=a["seen_cols"]),
              key="lb_sh_why")
    st.caption(f"Test image {index} of the unseen region (seed {seed}); the answer is **{a['classes'][a['label']]}** "
               f"(the direction from A to B). Each map: how much the query patch (dotted) attends to each patch, "
               f"layer {layer}, {'mean of the heads' if head is None else f'head {head}'}, both maps on one scale; "
               "each title says whether that model found the direction. A relative model compares offsets, which "
               "it learned everywhere; the absolute embedding of the columns right of the dashed line was never "
               "trained with a mark there, so even where it finds the other mark it may misjudge where it is.")


def ablation_view(sweep_dirs: Sequence[str]) -> None:
    """Our schemes on each dataset next to Swin's Table 4, with seeds."""
    rows = sorted((r for d in sweep_dirs for r in state.lab_results(d)["rows"]), key=lambda r: dataset_rank(r["eval"]))
    summary = labs.summarize_results(rows)
    if not summary:
        st.info("No results yet: the members train; the ablation reads each one's best validation accuracy.")
        return
    table = lab_views.results_table(summary, by="scheme", order=PAPER_ORDER)
    ui.plotly(lab_figures.bars_figure(summary, rows, schemes=PAPER_ORDER, group_names=DATASET_NAMES,
                                      title="Best validation accuracy per scheme and dataset<br>"
                                            f"<sup>{table['caption']} Error bar: one std; dots: seeds.</sup>"),
              key="lb_ab_bars")
    _conclusion("ablation", summary)
    p = PAPER_RESULTS["ablation"]
    c1, c2 = st.columns([2, 3])
    with c1:
        st.subheader("Ours")
        _table(table, key="lb_ab_table")
    with c2:
        st.subheader("The paper")
        paper = pd.DataFrame(lab_views.paper_ablation_rows())
        st.dataframe(paper, hide_index=True, width="stretch", key="lb_ab_paper",
                     column_config={b: st.column_config.NumberColumn(format="%.1f") for b in p["benchmarks"]})
        st.caption(f"{p['source']}: {p['setting']}; best first. Also in the paper: {p['extra']}.")
    for d in sweep_dirs:
        _downloads(d, f"lb_ab_dl_{Path(d).name}", named=len(sweep_dirs) > 1)
