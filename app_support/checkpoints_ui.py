"""The Checkpoints & compare page's sections: upload, the checkpoint pickers, what A learned (with its
downloads), and A and B side by side.

The page (``pages/5_checkpoints.py``) calls them in order and passes what one section read to the next.
Nothing here computes: checkpoints are listed and stored by :mod:`relpos.jobs`, read through
:mod:`app_support.state`'s cached loaders, drawn by :mod:`relpos.experiments.visualize` and
:mod:`relpos.experiments.figure_compare`. Widget keys start with ``ck_``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import yaml

from app_support import rope_ui, state, ui
from relpos import captions, jobs
from relpos.experiments import figure_compare
from relpos.experiments import visualize as viz
from relpos.families import SCHEMES

#: Checkpoint B's "no comparison" choice.
NONE = "(none)"


def upload_box(root: Path) -> None:
    """The "Upload a checkpoint" expander: a .pt file is checked and stored under the runs folder."""
    with st.expander("Upload a checkpoint", expanded=False):
        st.caption(f"A .pt file saved by relpos (≤ {jobs.MAX_UPLOAD_BYTES // 2**20} MB). It is opened with "
                   "torch.load(weights_only=True), so no code inside it runs, and stored under "
                   f"{root}/{jobs.UPLOADS_DIR}/ with a safe name.")
        up = st.file_uploader("Checkpoint file", type=["pt", "pth"], key="ck_upload",
                              help="A best.pt or last.pt written by relpos training (on another machine, say).")
        if up is not None and st.session_state.get("ck_last_upload") != up.file_id:
            st.session_state["ck_last_upload"] = up.file_id
            try:
                saved = jobs.save_upload(up.getvalue(), up.name, root)
            except (ValueError, TypeError, OSError) as exc:
                st.error(f"**Upload refused.** {exc}\n\n**What to do:** upload a best.pt or last.pt written by "
                         "relpos training.", icon=":material/error:")
            else:
                st.success(f"Saved as {saved.parent.name}/{saved.name}; it is now in the lists below and the "
                           "sidebar.")


def pick_checkpoints(root: Path, source: str | None) -> tuple[str, str, dict[str, str]]:
    """The checkpoints table and the pickers of checkpoint A (first the sidebar's) and B (first the newest
    of another run). Returns ``(a, b, labels)``: A's path, B's path or :data:`NONE`, each path's label.
    Stops the page when there is no checkpoint or the list cannot be read (the error is shown)."""
    a, b, labels = None, NONE, {}  # set by the guarded block below; a block that fails leaves them so
    with ui.guard("list the checkpoints", f"check that {root}/ is readable"):
        ckpts = jobs.list_checkpoints(root)
        if not ckpts:
            st.info("No checkpoint yet: start a run on the Train page (the tiny preset takes seconds) or upload one.")
            st.stop()
        runs = {r["name"]: r for r in jobs.list_runs(root)}
        ui.checkpoints_table(ckpts, runs, key="ck_table", records={c["path"]: state.checkpoint_record(c["path"])
                                                                   for c in ckpts})
        paths = [c["path"] for c in ckpts]
        labels = {c["path"]: c["label"] for c in ckpts}
        if st.session_state.get("ck_a") not in paths:  # start on the sidebar's checkpoint
            st.session_state["ck_a"] = (state.checkpoint_path(source) if state.checkpoint_path(source) in paths
                                        else paths[0])
        if st.session_state.get("ck_b") not in [NONE, *paths]:
            # Default B: the newest checkpoint of another run (two files of one run are rarely the point).
            run_a = Path(st.session_state["ck_a"]).parent
            st.session_state["ck_b"] = next((p for p in paths if Path(p).parent != run_a), NONE)
        c1, c2 = st.columns(2)
        a = c1.selectbox("Checkpoint A", paths, key="ck_a", format_func=labels.get,
                         help="The checkpoint whose learned tables, diagnostics and curves are shown.")
        b = c2.selectbox("Checkpoint B (compare)", [NONE, *paths], key="ck_b",
                         format_func=lambda p: labels.get(p, p),
                         help="A second checkpoint to compare with A: curves, accuracy, diagnostics and, when the "
                         "tables match, their difference.")
    if a is None:  # the list could not be read (the error is shown above): nothing below can work
        st.stop()
    return a, b, labels


def checkpoint_a(a: str, b: str, layer: int, head: int = 0) -> tuple[dict | None, dict | None]:
    """Everything about A: what it learned at ``layer`` (or why it has no table; a click on a head's
    panel makes it the shared ``head``), its rotary embedding,
    its own curves when there is no B, and its downloads. Returns A's tables and their geometry (the
    keyword arguments of the table figures), both None when A cannot be read (the error is shown)."""
    ta, geo = None, None
    with ui.guard("read checkpoint A", "pick another checkpoint; an upload must be a relpos checkpoint"):
        ta = state.checkpoint_tables(a)
        geo = {"window_size": ta["window_size"], "seq_len": ta["seq_len"], "bias_type": ta["bias_type"],
               "max_distance": ta["max_distance"]}
        st.subheader(f"What A learned · layer {layer}")
        fig_learned = learned_table(a, ta, geo, layer, head)
        rope_ui.checkpoint_rotation(a, layer)  # a rotary embedding: its mixed frequencies and kernel (else nothing)
        if b == NONE and (own := state.run_curves([a])):
            ui.plotly(figure_compare.smoothed_curves_figure(own, title="A's training"), key="ck_a_curves")
            if figure_compare.has_diagnostics(own):
                ui.plotly(figure_compare.diagnostics_curves_figure(own), key="ck_a_diag")
        downloads(a, ta, fig_learned)
    return ta, geo


def learned_table(a: str, ta: Mapping[str, Any], geo: Mapping[str, Any], layer: int,
                  head: int = 0) -> go.Figure | None:
    """A's learned table at ``layer`` (its initial one in an expander), its diagnostics per head and what
    training changed; an info line when A has no relative bias. With several heads drawn as small
    multiples, ``head``'s panel is outlined and a click on a panel makes that head the shared one.
    Returns the learned table's figure (without the click layer), or None without one."""
    if not ta["learned"]:
        scheme_a = (ta["config"].get("model") or {}).get("scheme")
        where = captions.position_label(scheme_a) if scheme_a in SCHEMES else "?"
        st.info(f"A has no relative position bias (its position information: {where}): no table to show. "
                "Its curves and accuracy are still shown and compared.")
        return None
    li = min(layer, len(ta["learned"]) - 1)
    learned, initial = ta["learned"][li], ta["initial"][li]
    st.caption(ui.table_caption(ta["bias_type"], two_d=ta["window_size"] is not None)
               + " Below: learned minus initial, i.e. what training changed.")
    # Full width: a half column squeezed the small multiples of four heads unreadably.
    fig_learned = viz.visualize_bias_table(learned, **geo, title=f"Learned table ({ta['bias_type']}), layer {li}")
    fig_initial = viz.visualize_bias_table(initial, **geo, title=f"Initial table (before training), layer {li}")
    per_panel = ui.scale_toggle("ck_per_panel")
    figure_compare.share_color_axis([fig_initial, fig_learned], per_panel=per_panel)
    ui.plotly_heads(fig_learned, "ck_learned", head, learned.shape[-1], keep=True)  # the download stays plain
    with st.expander("Before training: the initial table" + ("" if per_panel else ", on the same colour scale")):
        ui.plotly(fig_initial, key="ck_initial")
    rows, note = state.diagnostics(state.CKPT_PREFIX + a)
    st.markdown(f"**Diagnostics per head, layer {li}** · {note}")
    n_tokens = (ta["window_size"][0] * ta["window_size"][1]) if ta["window_size"] else ta["seq_len"]
    st.caption(captions.bias_effect_sentence([r for r in rows if r["layer"] == li], num_tokens=n_tokens,
                                             subject=f"By these numbers, layer {li}'s bias"))
    ui.diagnostics_table(rows, li, key="ck_diag", explain=True)
    ui.plotly_heads(viz.difference_figure(initial, learned, names=("initial", "learned"), kind="table", **geo),
                    "ck_change", head, learned.shape[-1])
    return fig_learned


def downloads(a: str, ta: Mapping[str, Any], fig_learned: go.Figure | None) -> None:
    """Download buttons: checkpoint A, its config and (when A has a table) the table figure as HTML."""
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


def compare(a: str, b: str, labels: Mapping[str, str], ta: Mapping[str, Any], geo: Mapping[str, Any],
            layer: int) -> None:
    """A and B side by side: their runs' curves, a table of accuracy and diagnostics, and the difference of
    their tables at ``layer`` when they have the same one (else why not)."""
    with ui.guard("compare A and B", "pick two relpos checkpoints"):
        tb = state.checkpoint_tables(b)
        st.subheader("A and B side by side")
        st.caption(f"A = {labels[a]} · B = {labels[b]}")
        curves = state.run_curves([a, b])  # {run name: metrics} of the runs A and B come from
        if curves:
            if len(curves) == 1:
                st.caption("A and B come from the same run: one set of curves." if Path(a).parent == Path(b).parent
                           else "Only one of A and B has training curves (the other is an upload).")
            ui.plotly(figure_compare.smoothed_curves_figure(curves), key="ck_curves")
            if figure_compare.has_diagnostics(curves):
                ui.plotly(figure_compare.diagnostics_curves_figure(curves), key="ck_ab_diag")
        ra, rb = state.checkpoint_record(a), state.checkpoint_record(b)
        st.dataframe(pd.DataFrame(captions.comparison_rows({"A": ra, "B": rb})), hide_index=True, width="stretch",
                     key="ck_ab_compare")
        geo_b = (tb["bias_type"], tb["window_size"], tb["seq_len"])
        same = (ta["learned"] and tb["learned"] and (ta["bias_type"], ta["window_size"], ta["seq_len"]) == geo_b
                and ta["learned"][0].shape == tb["learned"][0].shape)
        if same:
            li = min(layer, len(ta["learned"]) - 1, len(tb["learned"]) - 1)
            ui.plotly(viz.difference_figure(ta["learned"][li], tb["learned"][li], kind="table", names=("A", "B"),
                                            **geo, title=f"Table difference B − A, layer {li}"), key="ck_ab_diff")
        else:
            what = [captions.position_label(r["scheme"]) if r["scheme"] in SCHEMES else "?" for r in (ra, rb)]
            sizes = (f" ({ta['bias_type']} over {ta['window_size'] or ta['seq_len']} vs {tb['bias_type']} over "
                     f"{tb['window_size'] or tb['seq_len']})" if ta["learned"] and tb["learned"] else "")
            st.info(f"A ({what[0]}) and B ({what[1]}) do not have the same relative bias table{sizes}, so their "
                    "tables cannot be subtracted. What they share is compared above: the curves, the accuracy on "
                    "the validation images and the diagnostics.", icon=":material/compare_arrows:")
