"""Page 9: the labs: size transfer (Swin V2, Table 1), position shift, and the ablation (Swin, Table 4)."""

from __future__ import annotations

from types import MappingProxyType

import streamlit as st

from app_support import labs_ui, links, state, ui
from app_support.frame import page_frame
from relpos.experiments import lab_views, leaderboard

page_frame("Labs")
st.markdown(
    "Two published results are the reason relative positions exist; each lab repeats one on our task, "
    "over several seeds, and puts the paper's numbers beside ours. A lab is a sweep (every scheme × seed "
    "through the run queue) followed by an evaluation that writes `results.csv` in the sweep's folder: "
    "the figures, tables and the conclusion below are drawn from that file."
)
RUN_EVERY_S = 3.0
ROOT = state.runs_root()
INTRO = MappingProxyType({
    "transfer": "**Size transfer.** Train at a 4x4 patch grid, then move each model to 6x6, 8x8 and 12x12 patches "
                "*without fine-tuning*, each scheme by its own rule: a learned table is resized (bicubic, or BEiT's "
                "geometric method), Swin V2's continuous bias (cpb) is asked for the new offsets, an absolute "
                "embedding is resampled, a rotary embedding is recomputed (or, as EVA does, its coordinates "
                "rescaled to the training grid). Swin V2 found the resized table falling far behind the "
                "log-spaced cpb.",
    "shift": "**Position shift.** Train with both marks in columns 0–9, test with them in columns 6–15: columns 10–15 "
             "never held a mark in training. A relative scheme sees only offsets, so it should still solve the task "
             "there; an absolute embedding never trained those positions.",
    "ablation": "**Ablation.** Swin's Table 4: relative position best, no position worst. Here on the relational "
                "task (`ablation.yaml`) and on handwritten digits (`ablation_digits.yaml`), with seeds.",
})

kind = st.radio("Lab", list(lab_views.LAB_TITLES), format_func=lab_views.LAB_TITLES.get, horizontal=True,
                key="lb_kind", help="Which published result to repeat on our task: moving to another image size, "
                "marks in a region never seen in training, or which position scheme helps at all.")
st.markdown(INTRO[kind])
with ui.guard("prepare the lab's sweep", "check configs/sweeps/ and the runs folder"):
    has_sweeps = bool(lab_views.lab_sweeps(kind, leaderboard.sweeps_root(ROOT)))
    labs_ui.queue_box(kind, ROOT, expanded=not has_sweeps)
chosen, polling = [], False
with ui.guard("list the lab sweeps", f"check that {ROOT}/sweeps/ is readable"):
    chosen = labs_ui.pick_sweeps(kind, ROOT, multi=kind == "ablation")
    polling = any(lab_views.lab_progress(d)["active"] for d in chosen)


def results(kind: str, chosen: list[str]) -> None:
    """Progress (and Evaluate) of each chosen sweep, then the lab's view; polls while members train."""
    with ui.guard("show the lab", "pick another sweep, or evaluate it again"):
        progress = [labs_ui.progress(d) for d in chosen]
        if kind == "transfer":
            labs_ui.transfer_view(chosen[0])
        elif kind == "shift":
            labs_ui.shift_view(chosen[0])
        else:
            labs_ui.ablation_view(chosen)
        active = any(p["active"] for p in progress)
        if st.session_state.get("lb_polling") and not active:  # the last member finished: stop polling
            st.session_state["lb_polling"] = False
            st.rerun(scope="app")


if chosen:
    st.session_state["lb_polling"] = polling
    st.fragment(results, run_every=RUN_EVERY_S if polling else None)(kind, chosen)
links.lesson_nav("pages/9_labs.py")  # "← Back" / "Next →" along the lesson
