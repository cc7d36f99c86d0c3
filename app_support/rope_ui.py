"""The rotary (RoPE) parts of the pages: the bias explorer's rotary mode and a model's position kernel.

RoPE has no table; what the pages draw instead is its *position kernel* (the logit between fixed
contents at each offset, :mod:`relpos.rope_probe`, figures in :mod:`relpos.experiments.rope_figures`).
Every number comes from one cached loader of :mod:`app_support.state`; this module only lays out
widgets and charts, with the bias explorer's widget keys (``be_``) so shared choices (window, heads,
seed, head, query) carry over between a bias family and the rotation.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app_support import interact, state, ui
from relpos import captions, diagnostics, explore, geometry
from relpos.experiments import figure_compare, figure_select, rope_figures
from relpos.experiments import visualize as viz
from relpos.rope_probe import DIRECTION_LABELS, KERNEL_DIRECTIONS
from relpos.rotary import DEFAULT_THETA, DIRECTION_KINDS, GRID_INDEXINGS, ROTARY_MODES

RELATIVE = "relative bias"
ROTARY = "rotary (RoPE)"
#: The bias explorer's first choice: a relative bias family, or a rotary embedding.
POSITION_KINDS: tuple[str, ...] = (RELATIVE, ROTARY)
POSITION_KEY = "be_position"
MODE_LABELS = {"axial": "axial · fixed (EVA-02)", "mixed": "mixed · learned (RoPE-ViT)", "1d": "1d · a sequence (LLaMA)"}
MODE_WORDS = {
    "axial": "fixed frequencies: half the channel pairs turn with the row, half with the column (EVA-02, RoPE-ViT axial)",
    "mixed": "learned frequencies, each pair turning along its own direction per head (RoPE-ViT mixed), shown at "
             "their random init",
    "1d": "the classic rotation of a sequence (RoFormer, LLaMA): pair k turns by t·θ^(−2k/d) at position t",
}
#: The page's opening paragraph while the rotation is chosen.
INTRO = (
    "A rotary position embedding (RoPE) has no table: it turns every query and key by an angle that grows "
    "with its position, so the dot product of two tokens depends on where they are only through their offset. "
    "Its equivalent of a table is the *position kernel*: the logit two tokens with the same content give each "
    "other at each offset. **Try first:** slide the content strength to 0 (only the shared content is left) and "
    "α up to 5, and watch each query's attention take the kernel's shape; then lower θ from 100 to 10: the "
    "pairs turn faster, the kernel narrows and attention gathers around the query."
)
HEAD_DIMS = (8, 16, 32, 64)
#: Widgets one mode draws and the other does not: their values are kept across a switch.
_KEEP = ("be_kind", "be_step", "be_init_std", "be_preset", "be_alpha", "be_rope_mode", "be_rope_head_dim",
         "be_rope_direction", "be_rope_alpha", *(f"be_rope_theta_{m}" for m in ROTARY_MODES),
         *(f"be_rope_indexing_{m}" for m in ROTARY_MODES))


def chosen() -> bool:
    """Whether the bias explorer shows a rotary embedding (known before its radio is drawn)."""
    return st.session_state.get(POSITION_KEY) == ROTARY


def position_choice() -> bool:
    """The bias explorer's "Position information" radio; True when the rotation is chosen."""
    ui.keep_values(_KEEP)
    return st.radio("Position information", POSITION_KINDS, key=POSITION_KEY, horizontal=True,
                    help="A relative bias adds a number per offset to the logits; a rotary embedding (RoPE) "
                    "turns queries and keys by their position instead, so their dot product depends on "
                    "the offset.") == ROTARY


def bias_explorer(slots: dict[str, Any]) -> None:
    """The bias explorer with a rotary embedding: controls in the page's ``slots``, then the kernel and
    what the rotation does to attention on the fixed input (one cached call: :func:`state.rope_demo`)."""
    with slots["kind"]:
        mode = st.selectbox("Rotation", ROTARY_MODES, key="be_rope_mode", format_func=MODE_LABELS.get,
                            help="Which RoPE: fixed axial frequencies, RoPE-ViT's learned mixed ones (as "
                            "initialised), or the classic 1D rotation of a sequence.")
    two_d = mode != "1d"
    with slots["size"]:
        size = ui.size_inputs(two_d, "be", side=7, length=16)
        grid = geometry.token_grid(size)
    with slots["options"]:
        theta = float(st.number_input(
            "Base θ", 1.0, 1e6, float(DEFAULT_THETA[mode]), key=f"be_rope_theta_{mode}",
            help="The frequencies are θ^(−k/…): a larger θ gives slower pairs, so the kernel stays close "
            "to its centre value over longer offsets. RoPE-ViT: 100 (axial), 10 (mixed init); LLaMA: 10000."))
        head_dim = int(st.selectbox("Head dim d", HEAD_DIMS, index=1, key="be_rope_head_dim",
                                    help="Channels per head: d/2 pairs, each turning at its own speed "
                                    "(2D: a multiple of 4, half the pairs for each axis)."))
    with slots["preset"]:
        direction = st.selectbox("Content direction", DIRECTION_KINDS, key="be_rope_direction",
                                 format_func=DIRECTION_LABELS.get,
                                 help="The content every query and key shares: the kernel is the logit "
                                 "between two tokens carrying it, at each offset.")
    with slots["alpha"]:
        alpha = st.slider("Shared content α", 0.0, 5.0, 2.0, 0.1, key="be_rope_alpha",
                          help="How much of each query and key is the shared content: its logit is α × the "
                          "kernel with the rotation, α everywhere without (0: random content only).")
    with slots["heads"]:
        heads = int(st.number_input("Heads", 1, explore.MAX_HEADS, 4, key="be_heads",
                                    help="How many attention heads: each has its own kernel when the content or the "
                                    "frequencies differ per head (a fixed rotation turns every head alike)."))
    with slots["init_std"]:
        default = "ij" if mode == "axial" else "xy"
        indexing = st.radio("Grid indexing", GRID_INDEXINGS, index=GRID_INDEXINGS.index(default),
                            key=f"be_rope_indexing_{mode}", horizontal=True, disabled=not two_d,
                            help="timm's meaning: axial 'ij' turns the first half of the pairs with the row, "
                            "'xy' with the column; mixed 'xy' multiplies freqs[0] by the column.")
    seed, content, head, query, per_panel = ui.view_controls(slots, heads, grid, ui.ViewHelp(
        seed="Fixes the random numbers: the same seed draws the same content, frequencies and input.",
        content="Std of the random part of the fixed queries and keys; 0 leaves only the shared content, so "
        "attention follows the kernel.",
        head="Which head's kernel and attention to show (the sidebar's head, when it has one).",
        query="Which token asks the question; its row of attention is drawn. Or click a patch on any map of "
        "one query."))

    interact.prose(
        f"**{ROTARY}** · {mode}: {MODE_WORDS[mode]}. The fixed input: every query and key is the shared content "
        "(weight α) plus random content (std: the content strength); the maps compare them turned and as they are."
    )
    if not interact.presenting():
        st.latex(r"\mathrm{softmax}\!\left(\frac{(R_{p_i} q_i)^\top (R_{p_j} k_j)}{\sqrt{d}}\right),\quad "
                 r"(R_{p_i} q)^\top (R_{p_j} k) = q^\top R_{p_j - p_i}\, k")
    interact.selection_line(grid, query, widget_key="be_clear")
    first = interact.first_section()
    with ui.guard("compute the rotation", "choose a smaller window, fewer heads, or another head dim"):
        data = state.rope_demo(mode, size, heads, head_dim, head, theta, indexing if two_d else None, seed,
                               direction, float(alpha), float(content))
        interact.heading("The position kernel, per head")
        kernel_fig = rope_figures.position_kernel_figure(
            data["kernel"], title=f"Position kernel ({mode}, θ = {theta:g}, d = {head_dim}), {heads} heads")
        ui.plotly_heads(kernel_fig, "be_rope_kernel", head, heads, widget_key="be_head")
        if not interact.presenting():
            st.caption(rope_figures.kernel_caption(direction))
        if data["freqs"] is not None:
            with st.expander("The mixed frequencies of these heads (their random init)"):
                ui.plotly(rope_figures.mixed_frequencies_figure(data["freqs"], title="Mixed frequencies at init"),
                          key="be_rope_freqs")
                st.caption(rope_figures.FREQUENCIES_CAPTION)
        with interact.main_maps(first):
            _attention(data, grid, query, head, two_d, per_panel)
        st.subheader(f"The kernel over the window · head {head}")
        seen = (viz.query_centric_figure(data["seen"], query, grid, cmap="coolwarm", zmid=0.0,
                                         title=f"Kernel seen by query {query}, head {head}") if two_d else
                figure_compare.query_bars_figure({"kernel": data["seen"][query]}, query, value_label="q·k",
                                                 title=f"Kernel seen by query {query}, head {head}"))
        if two_d:
            figure_select.add_cell_picker(seen, note="click: make this patch the query")
        full = viz.visualize_relative_position_bias(data["seen"], title=f"Kernel over every pair, head {head}",
                                                    cmap="coolwarm", window_size=size if two_d else None,
                                                    seq_len=None if two_d else size)
        full.update_layout(coloraxis_colorbar_title_text=rope_figures.KERNEL_VALUE_LABEL)
        ui.side_by_side((full, "be_rope_seen_full"), (seen, "be_rope_seen", interact.on_query("be_rope_seen")))
        st.subheader("Full attention matrices")
        mats = [(viz.visualize_attention_weights(data[k], title=f"Attention {words}", window_size=size if two_d else None,
                                                 seq_len=None if two_d else size), f"be_rope_full_{k}")
                for k, words in (("with", "with the rotation"), ("without", "without it"))]
        figure_compare.share_color_axis([f for f, _ in mats], per_panel=per_panel)
        ui.side_by_side(*mats)


def _attention(data: dict, grid: tuple[int, int], query: int, head: int, two_d: bool, per_panel: bool) -> None:
    """The fixed input's attention with and without the rotation: reach, then the query's two maps."""
    interact.heading(f"What it does to attention on a fixed input · head {head}")
    d_with = float(diagnostics.mean_attention_distance(data["with"], grid)[0])
    d_without = float(diagnostics.mean_attention_distance(data["without"], grid)[0])
    numbers, maps = interact.numbers_then_maps()
    with numbers:
        ui.reach_metrics([(f"{captions.REACH_NAME} with the rotation", d_with, d_without),
                          (f"{captions.REACH_NAME} without it", d_without, None)],
                         "Same queries and keys in both maps; only the rotation differs. "
                         + captions.reach_sentence(d_with, d_without, "rotary"),
                         off_label="rotation off", unit=captions.REACH_UNIT if two_d else "tokens")
    with maps:
        if two_d:
            pair = [(viz.query_centric_figure(data["with"], query, grid, title=f"Query {query}: with the rotation"),
                     "be_rope_attn_with"),
                    (viz.query_centric_figure(data["without"], query, grid, title=f"Query {query}: without it"),
                     "be_rope_attn_without")]
            figure_compare.share_color_axis([f for f, _ in pair], per_panel=per_panel)
            for fig, _key in pair:
                figure_select.add_cell_picker(fig, note="click: make this patch the query")
            ui.side_by_side(*[(fig, key, interact.on_query(key)) for fig, key in pair])
        else:
            ui.plotly(figure_compare.query_bars_figure(
                {"with the rotation": data["with"][query], "without it": data["without"][query]}, query,
                title=f"Query {query}: attention over the keys"), key="be_rope_attn_bars",
                on_select=interact.on_query("be_rope_attn_bars"))


def model_kernel(source: str, table: str, alpha: float, sample: int, upload: bytes | None, layer: int,
                 head: int, key: str) -> None:
    """A rotary model's position kernel for one layer, the content chosen here (a widget keyed ``key``):
    all-ones, random, or the layer's mean query and key on the shown input."""
    direction = st.radio("Content of the kernel", KERNEL_DIRECTIONS, key=key, horizontal=True,
                         format_func=DIRECTION_LABELS.get,
                         help="The kernel is the logit two tokens carrying this content give each other at "
                         "each offset; the mean is taken over this input's patches, before the rotation.")
    kernel = state.rope_kernel(source, table, alpha, sample, upload, layer, direction)
    fig = rope_figures.position_kernel_figure(kernel, title=f"Position kernel, layer {layer}")
    ui.plotly_heads(fig, f"{key}_fig", head, kernel.shape[0])
    st.caption(rope_figures.kernel_caption(direction))


def checkpoint_rotation(path: str, layer: int) -> bool:
    """What a checkpoint's rotary embedding learned, layer ``layer``: for "mixed", its frequencies per head
    before vs after training and the kernel before vs after (one scale each, unless the toggle drawn
    here says per panel); for a fixed rotation, its kernel. Returns False (drawing nothing) when the
    checkpoint has no rotary embedding."""
    direction = st.session_state.get("ck_rope_direction", DIRECTION_KINDS[0])
    rot = state.checkpoint_rotary(path, direction)
    summary = rot["summary"]
    if summary is None:
        return False
    li = min(layer, summary["layers"] - 1)
    st.markdown(f"**The rotation ({summary['mode']}, θ = {summary['theta']:g}), layer {li}**")
    if rot["learned_freqs"]:
        fig = rope_figures.mixed_frequencies_figure(rot["learned_freqs"][li], rot["initial_freqs"][li],
                                                    title=f"Mixed frequencies per head, layer {li}: before vs after")
        ui.plotly(fig, key="ck_rope_freqs")
        st.caption(rope_figures.FREQUENCIES_CAPTION)
    st.radio("Content of the kernel", DIRECTION_KINDS, key="ck_rope_direction", horizontal=True,
             format_func=DIRECTION_LABELS.get,
             help="The kernel is the logit two tokens carrying this content give each other at each offset.")
    learned = rope_figures.position_kernel_figure(rot["kernels"][li], title=f"Position kernel after training, layer {li}")
    if not rot["learned_freqs"]:  # a fixed rotation: training cannot change it
        ui.plotly(learned, key="ck_rope_kernel")
        st.caption(rope_figures.kernel_caption(direction) + " This rotation is fixed: training does not change it.")
        return True
    per_panel = ui.scale_toggle("ck_rope_per_panel")
    initial = rope_figures.position_kernel_figure(rot["initial_kernels"][li],
                                                  title=f"Position kernel before training, layer {li}")
    rope_figures.share_kernel_scale([initial, learned], per_panel=per_panel)
    ui.plotly(learned, key="ck_rope_kernel")
    with st.expander("Before training: the initial kernel" + ("" if per_panel else ", on the same colour scale")):
        ui.plotly(initial, key="ck_rope_kernel_initial")
    st.caption(rope_figures.kernel_caption(direction))
    return True
