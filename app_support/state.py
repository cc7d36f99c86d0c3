"""The app's state: the shared session keys and every cached call into relpos.

Shared choices (the sidebar's model, layer and head) live in plain session keys (:data:`SEL_SOURCE`,
:data:`SEL_LAYER`, :data:`SEL_HEAD`), never in widget keys: in Streamlit's ``pages/`` mode a widget
belongs to one page and its state is dropped when another page runs, a plain key stays.

Every ``st.cache_*`` of the app is here, one loader per resource kind. Models are cached with
``st.cache_resource`` keyed by path (or preset) and modification time and are never mutated (a table
preset works on a copy); derived arrays are cached with ``st.cache_data`` keyed by paths and numbers
(tensors are not hashable). The public loaders take a model *source* (``preset:<name>`` or
``ckpt:<path>``) and add its modification time to the key themselves, so a rewritten file is read again.

About 490 lines, over the usual 400: the design keeps every ``st.cache_*`` loader of the app in this
one module (one place to see what is cached and by which key); each loader is a few lines over a
library call.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from relpos import diagnostics as probes  # (this module's own `diagnostics` is the cached loader)
from relpos import explore, geometry, jobs, presets, rope_probe
from relpos._fileio import display_name
from relpos.checkpoint_import import import_checkpoint
from relpos.experiments import lab_views, labs, leaderboard, rundir, run_table, runqueue
from relpos.experiments import figure_compare, stepthrough
from relpos.experiments.checkpoint import read_checkpoint
from relpos.experiments.config import fresh_model, preset_config as resolved_preset
from relpos.experiments.resize_lab import resize_lab as _resize_lab
from relpos.experiments.shift import shift_example as _run_shift_example
from relpos.experiments.sweep_results import summarize as _summarize_sweep

#: Plain session keys of the shared choices (set with setdefault, never used as widget keys).
SEL_SOURCE = "sel_source"
SEL_LAYER = "sel_layer"
SEL_HEAD = "sel_head"
#: How many heads the sidebar's model has (set by the frame; a page's own head control writes
#: :data:`SEL_HEAD` only below it).
SEL_HEADS = "sel_heads"
PRESET_PREFIX = "preset:"
CKPT_PREFIX = "ckpt:"
#: What the bias tables of the attention page can be: the model's own, or a preset in a copy.
AS_LOADED = "as loaded"


# ----------------------------------------------------------------------------- shared choices


def shared() -> tuple[str | None, int, int]:
    """The shared ``(source, layer, head)`` (source ``None`` when there is no model to choose)."""
    return (
        st.session_state.get(SEL_SOURCE),
        int(st.session_state.get(SEL_LAYER, 0) or 0),
        int(st.session_state.get(SEL_HEAD, 0) or 0),
    )


def select_run_source(path: str | Path) -> None:
    """Make a checkpoint the current model of every page (the sidebar shows it on the next run)."""
    st.session_state[SEL_SOURCE] = CKPT_PREFIX + str(path)


def runs_root() -> Path:
    """Where runs and uploads live: ``$RELPOS_RUNS_ROOT`` or ``checkpoints``."""
    return jobs.default_runs_root()


@st.cache_resource(show_spinner=False)
def _threads_at_start() -> int:
    """The server's torch threads before any cap (all cores, or ``$OMP_NUM_THREADS``); once per process."""
    return torch.get_num_threads()


def cap_threads() -> int:
    """Give this server's torch work (attention maps, diagnostics) at most cores // (active runs + 1)
    threads while runs train, all of its own again when none does; returns the threads set.

    Called by the frame at the top of every page run (the script thread is the one that computes).
    """
    try:
        n = min(_threads_at_start(), runqueue.server_threads(runs_root()))
    except OSError:  # an unreadable runs root: leave the threads as they are
        return torch.get_num_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def mtime(path: str | Path) -> float:
    """Modification time of ``path`` (0.0 when it cannot be read): the change-aware part of a cache key."""
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


def source_options() -> list[str]:
    """Every model source: a fresh model of each preset, then every checkpoint under the runs root."""
    presets = [PRESET_PREFIX + p for p in jobs.list_presets()]
    ckpts = [CKPT_PREFIX + row["path"] for row in jobs.list_checkpoints(runs_root())]
    return presets + ckpts


def source_label(source: str) -> str:
    """How a source reads in a picker: ``Fresh model · default preset`` or ``<run>/<file>``."""
    if source.startswith(PRESET_PREFIX):
        return f"Fresh model · {source[len(PRESET_PREFIX):]} preset"
    path = Path(source[len(CKPT_PREFIX):])
    return f"{display_name(path.parent.name)}/{display_name(path.name)}"  # a non-UTF-8 folder name shows as \\xff


def checkpoint_path(source: str | None) -> str | None:
    """The checkpoint file of a ``ckpt:`` source, else ``None``."""
    return source[len(CKPT_PREFIX):] if source and source.startswith(CKPT_PREFIX) else None


def source_modified(source: str) -> float:
    """Modification time of a source's file (the preset's YAML or the checkpoint)."""
    if source.startswith(PRESET_PREFIX):
        return mtime(jobs.preset_path(source[len(PRESET_PREFIX):]))
    return mtime(source[len(CKPT_PREFIX):])


# ----------------------------------------------------------------------------- models


@st.cache_resource(max_entries=8, show_spinner="Loading checkpoint...")
def _checkpoint_model(path: str, modified: float):
    return explore.load_checkpoint_model(path)


@st.cache_resource(max_entries=8, show_spinner="Building a fresh model...")
def _preset_model(preset: str, modified: float):
    cfg = resolved_preset(preset)
    return fresh_model(cfg), cfg


@st.cache_data(max_entries=16, show_spinner=False)
def _preset_config(preset: str, modified: float) -> dict:
    return resolved_preset(preset)


def checkpoint(path: str) -> tuple:
    """``(model, checkpoint dict)`` of a checkpoint file; cached, never mutate the model."""
    return _checkpoint_model(path, mtime(path))


def preset_config(preset: str) -> dict:
    """The resolved config of ``configs/<preset>.yaml``; cached until the file changes."""
    return _preset_config(preset, mtime(jobs.preset_path(preset)))


def load_source(source: str) -> tuple:
    """``(model, config)`` of a source (``preset:<name>`` or ``ckpt:<path>``); cached, never mutate it."""
    if source.startswith(PRESET_PREFIX):
        name = source[len(PRESET_PREFIX):]
        return _preset_model(name, source_modified(source))
    if source.startswith(CKPT_PREFIX):
        model, ckpt = checkpoint(source[len(CKPT_PREFIX):])
        return model, ckpt.get("config", {})
    raise ValueError(f"unknown model source {source!r}; expected '{PRESET_PREFIX}<name>' or '{CKPT_PREFIX}<path>'")


@st.cache_resource(max_entries=4, show_spinner=False)
def _shown_model(source: str, modified: float, table: str, alpha: float):
    model, cfg = load_source(source)
    if table != AS_LOADED:
        model = presets.apply_bias_preset(model, table, alpha=alpha)  # a copy; the cached model stays intact
    return model, cfg


def _model_input(model, cfg: dict, sample: int, upload: bytes | None) -> tuple:
    """``(image (C, H, W), label or None, class names)``: dataset sample ``sample`` or the uploaded picture."""
    if upload is None:
        return explore.sample_input(cfg, sample)
    embed = model.patch_embed
    image = explore.image_from_upload(upload, embed.img_size[0], embed.in_channels)
    return image, None, explore.dataset_classes(cfg)


# ----------------------------------------------------------------------------- derived arrays


@st.cache_data(max_entries=32, show_spinner=False)
def index_matrix(size: tuple[int, int] | int) -> np.ndarray:
    """The ``(N, N)`` relative position index of a window ``(h, w)`` or a sequence of ``L`` tokens."""
    return geometry.relative_position_index(explore.check_app_size(size)).numpy()


# Cached per head: at the largest setting (32x32 window, 16 heads) the full bias is 64 MB, one
# head's 4 MB, and st.cache_data copies what it returns on every hit.
@st.cache_data(max_entries=16, show_spinner=False)
def bias_arrays(kind: str, size, heads: int, init_std: float, seed: int, preset: str, alpha: float, head: int,
                options: tuple = ()) -> dict[str, np.ndarray]:
    """A hand-set bias: its ``table`` ``(T, H)`` and head ``head``'s gathered ``bias`` ``(1, N, N)``."""
    rpb = presets.make_bias(kind, explore.check_app_size(size), heads, init_std=init_std, seed=seed, preset=preset, alpha=alpha,
                            **dict(options))
    arrays = presets.bias_arrays(rpb, head=head)
    return {"table": arrays["table"], "bias": arrays["bias"]}


@st.cache_data(max_entries=16, show_spinner=False)
def demo_attention(kind: str, size, heads: int, init_std: float, seed: int, preset: str, alpha: float, head: int,
                   content_scale: float, options: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """Attention ``(N, N)`` of fixed random queries and keys with and without :func:`bias_arrays`' bias."""
    bias = bias_arrays(kind, size, heads, init_std, seed, preset, alpha, head, options)["bias"]  # (1, N, N)
    with_b, without = presets.demo_attention(bias, seed=seed, content_scale=content_scale)
    return with_b[0], without[0]


@st.cache_data(max_entries=32, show_spinner=False)
def step_through(kind: str, size, heads: int, init_std: float, seed: int, preset: str, alpha: float, head: int,
                 query: int, content_scale: float, options: tuple = ()) -> dict:
    """One query of :func:`demo_attention` through the formula, step by step
    (:func:`relpos.experiments.stepthrough.step_through`: logits, bias, their sum, the softmax)."""
    return stepthrough.step_through(kind, explore.check_app_size(size), heads, head, query, init_std=init_std,
                                    seed=seed, preset=preset, alpha=alpha, content_scale=content_scale,
                                    options=dict(options))


@st.cache_data(max_entries=8, show_spinner="Computing the steps for every α from 0 to 5...")
def alpha_sweep(kind: str, size, heads: int, init_std: float, seed: int, preset: str, head: int, query: int,
                content_scale: float, options: tuple = ()) -> dict:
    """:func:`step_through` for every α of the animation (:func:`relpos.experiments.stepthrough.alpha_sweep`)."""
    return stepthrough.alpha_sweep(kind, explore.check_app_size(size), heads, head, query, init_std=init_std,
                                   seed=seed, preset=preset, content_scale=content_scale, options=dict(options))


@st.cache_data(max_entries=16, show_spinner=False)
def rope_demo(mode: str, size, heads: int, head_dim: int, head: int, theta: float, indexing: str | None, seed: int,
              direction: str, alpha: float, content_scale: float) -> dict:
    """A hand-set rotary embedding on its own (:func:`relpos.rope_probe.rope_demo`): its position kernel
    ``(H, 2h-1, 2w-1)`` (or ``(H, 2L-1)``) and head ``head``'s attention on the fixed input with and
    without the rotation (``(N, N)`` each); mixed frequencies ``(2, H, P)`` for "mixed"."""
    return rope_probe.rope_demo(mode, explore.check_app_size(size), heads, head_dim, head, theta=theta,
                                grid_indexing=indexing, seed=seed, direction=direction, alpha=alpha,
                                content_scale=content_scale)


# Cached per layer: st.cache_data copies what it returns on every hit, and a 32x32 patch grid makes
# each layer's maps 4 MB per head.
@st.cache_data(max_entries=16, show_spinner="Running the model...")
def _attention_maps(source: str, modified: float, table: str, alpha: float, sample: int,
                    upload: bytes | None, layer: int, part: str | None) -> dict:
    model, cfg = _shown_model(source, modified, table, alpha)
    image, label, classes = _model_input(model, cfg, sample, upload)
    with probes.position_disabled(model, part):  # context-local: other sessions see the model whole
        without = probes.attention_maps(model, image)[layer]  # (H, N, N)
        probs_without = probes.predict(model, image)
    try:
        marks = [] if upload is not None else figure_compare.sample_marks(cfg, sample)
    except Exception:  # noqa: BLE001 - marks are a help for the eye; without them the maps still stand
        marks = []
    return {
        "picture": explore.display_image(image),
        "label": label,
        "with": probes.attention_maps(model, image)[layer],  # (H, N, N)
        "without": without,
        "probs_with": probes.predict(model, image),
        "probs_without": probs_without,
        "class_names": classes,
        "marks": marks,
    }


def attention_maps(source: str, table: str, alpha: float, sample: int, upload: bytes | None, layer: int,
                   part: str | None = "relative") -> dict:
    """One layer's maps ``(H, N, N)`` as computed (``"with"``) and with position part ``part`` switched
    off (``"without"``: "relative", "rotary", "absolute"; :func:`relpos.diagnostics.position_disabled`),
    the picture, both predictions and the input's marks (:func:`relpos.experiments.figure_compare.sample_marks`)."""
    return _attention_maps(source, source_modified(source), table, alpha, sample, upload, layer, part)


@st.cache_data(max_entries=16, show_spinner="Reading the rotation...")
def _rope_kernel(source: str, modified: float, table: str, alpha: float, sample: int, upload: bytes | None,
                 layer: int, direction: str, seed: int) -> np.ndarray:
    model, cfg = _shown_model(source, modified, table, alpha)
    image = _model_input(model, cfg, sample, upload)[0] if direction == "mean" else None
    return rope_probe.layer_kernel(model, layer, direction, image=image, seed=seed)


def rope_kernel(source: str, table: str, alpha: float, sample: int, upload: bytes | None, layer: int,
                direction: str, seed: int = 0) -> np.ndarray:
    """Layer ``layer``'s position kernel ``(H, 2h-1, 2w-1)`` of a source's rotary model, for content
    ``direction`` ("ones", "random" seeded by ``seed``, or "mean": the layer's mean query and key on the
    input of :func:`attention_maps`): :func:`relpos.rope_probe.layer_kernel`."""
    return _rope_kernel(source, source_modified(source), table, alpha, sample, upload, layer, direction, seed)


@st.cache_data(max_entries=256, show_spinner=False)
def _checkpoint_record(path: str, modified: float) -> dict:
    ckpt = read_checkpoint(path)
    metrics = ckpt.get("metrics") if isinstance(ckpt.get("metrics"), dict) else {}
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return {"accuracy": metrics.get("eval_accuracy"), "epoch": ckpt.get("epoch"),
            "n": (cfg.get("data") or {}).get("num_val"), "metrics": dict(metrics),
            "scheme": (cfg.get("model") or {}).get("scheme")}


def checkpoint_record(path: str) -> dict:
    """What a checkpoint file itself records: ``{"accuracy"`` (its epoch's eval accuracy), ``"epoch"``,
    ``"n"`` (validation images), ``"metrics"``, ``"scheme"}``; all None when it cannot be read."""
    try:
        return dict(_checkpoint_record(str(path), mtime(path)))
    except Exception:  # noqa: BLE001 - a table cell, not a page: an unreadable file shows "–"
        return {"accuracy": None, "epoch": None, "n": None, "metrics": {}, "scheme": None}


@st.cache_data(max_entries=16, show_spinner="Measuring the bias...")
def _diagnostics(source: str, modified: float, table: str, alpha: float, sample: int,
                 upload: bytes | None) -> tuple[list[dict], str]:
    model, cfg = _shown_model(source, modified, table, alpha)
    try:
        image = _model_input(model, cfg, sample, upload)[0]
        inputs, note = image[None], ("the uploaded picture" if upload is not None else f"validation sample {sample}")
    except Exception as exc:  # noqa: BLE001 - without data, the bias-only measures still apply
        inputs, note = None, f"bias-only measures (its dataset is not available here: {str(exc)[:120]})"
    return probes.diagnostics_table(model, inputs), note


def diagnostics(source: str, table: str = AS_LOADED, alpha: float = 0.0, sample: int = 0,
                upload: bytes | None = None) -> tuple[list[dict], str]:
    """Per-(layer, head) diagnostics rows of a source's model on one input, and what that input was."""
    rows, note = _diagnostics(source, source_modified(source), table, alpha, sample, upload)
    return [dict(r) for r in rows], note


@st.cache_data(max_entries=16, show_spinner="Reading checkpoint...")
def _checkpoint_tables(path: str, modified: float) -> dict:
    model, ckpt = _checkpoint_model(path, modified)
    cfg = ckpt.get("config", {})
    learned = probes.bias_tables(model)
    return {
        **probes.table_geometry(model),  # bias_type, window_size, seq_len, max_distance
        "config": cfg,
        "learned": learned,
        "initial": probes.bias_tables(fresh_model(cfg)) if learned else [],  # rebuilt with its seed
        "epoch": ckpt.get("epoch"),
        "metrics": ckpt.get("metrics", {}),
    }


def checkpoint_tables(path: str) -> dict:
    """A checkpoint's learned tables per layer, its initial tables, their geometry and its config."""
    return _checkpoint_tables(path, mtime(path))


@st.cache_data(max_entries=16, show_spinner="Reading the rotation...")
def _checkpoint_rotary(path: str, modified: float, direction: str, seed: int) -> dict:
    model, ckpt = _checkpoint_model(path, modified)
    summary = rope_probe.rotary_summary(model)
    if summary is None:
        return {"summary": None}
    fresh = fresh_model(ckpt.get("config", {}))  # rebuilt with its seed: the rotation before training
    layers = range(summary["layers"])
    return {
        "summary": summary,
        "learned_freqs": rope_probe.mixed_frequencies(model),
        "initial_freqs": rope_probe.mixed_frequencies(fresh),
        "kernels": [rope_probe.layer_kernel(model, i, direction, seed=seed) for i in layers],
        "initial_kernels": [rope_probe.layer_kernel(fresh, i, direction, seed=seed) for i in layers],
    }


def checkpoint_rotary(path: str, direction: str = "ones", seed: int = 0) -> dict:
    """A checkpoint's rotary embedding: ``{"summary"`` (:func:`relpos.rope_probe.rotary_summary`, None
    without one), ``"learned_freqs"``/``"initial_freqs"`` (``(2, H, P)`` per layer, "mixed" only; the
    initial ones from a fresh model of its config and seed), ``"kernels"``/``"initial_kernels"`` (per
    layer, content ``direction``)``}``; cached until the file changes."""
    return _checkpoint_rotary(path, mtime(path), direction, seed)


@st.cache_data(max_entries=8, show_spinner="Resizing and evaluating...")
def _resize_lab_result(path: str, modified: float, new_img_size: int, max_samples: int,
                       methods: tuple[str, ...] | None) -> dict:
    return _resize_lab(path, new_img_size, methods=methods, max_samples=max_samples)


def resize_lab(path: str, new_img_size: int, max_samples: int, methods: tuple[str, ...] | None = None) -> dict:
    """:func:`relpos.experiments.resize_lab.resize_lab` of a checkpoint, cached until the file changes
    (``methods``: the transfer methods to try; those that do not apply get a note saying why)."""
    return _resize_lab_result(path, mtime(path), new_img_size, max_samples, methods)


@st.cache_data(max_entries=4, show_spinner="Reading the state dict...")
def imported_checkpoint(data: bytes, name: str) -> dict:
    """The import report of an uploaded state dict: summary, one row per key, the tables as arrays."""
    report = import_checkpoint(data, filename=name)
    return {
        "summary": report.summary(),
        "rows": report.rows(),
        "tables": [
            {"label": f"{t.target}  ←  {t.key}", "kind": t.bias_type, "window": t.window_size, "heads": t.num_heads,
             "table": None if t.table is None else t.table.numpy()}
            for t in report.tables
        ],
    }


def run_curves(paths: list[str]) -> dict[str, list[dict]]:
    """``{run name: metrics records}`` of the run directories (under the runs root) these checkpoints are in.

    Uploads and files outside a run have no curves; two files of one run give one entry. Run names
    are display-safe; the records are bounded (:func:`relpos.experiments.rundir.read_metrics`).
    """
    root = runs_root().resolve()
    curves: dict[str, list[dict]] = {}
    for path in paths:
        run = Path(path).parent
        if (run / rundir.STATUS_FILE).is_file() and run.parent.resolve() == root:
            curves.setdefault(display_name(run.name), rundir.read_metrics(run))
    return curves


# ----------------------------------------------------------------------------- runs and sweeps


@st.cache_data(max_entries=1024, show_spinner=False)
def _run_columns(path: bytes, status_modified: float, config_modified: float) -> dict:
    return run_table.run_columns(os.fsdecode(path))  # bytes: a folder name that is not UTF-8 hashes too


def runs_with_columns() -> list[dict]:
    """:func:`relpos.jobs.list_runs` rows of the runs root, each with its config columns
    (:func:`relpos.experiments.run_table.run_columns`: scheme, seed, preset, changed...), cached per
    run until its status or config file changes."""
    rows = jobs.list_runs(runs_root())
    for row in rows:
        run = Path(row["path"])
        row.update(_run_columns(os.fsencode(row["path"]), mtime(run / rundir.STATUS_FILE),
                                mtime(run / rundir.CONFIG_FILE)))
    return rows


@st.cache_data(max_entries=16, show_spinner="Reading the sweep...")
def _sweep_view(sweep_dir: str, signature: tuple) -> dict:
    sweep = _summarize_sweep(sweep_dir)  # also rewrites runs.csv, summary.csv and summary.md
    return {"sweep": sweep, "rows": leaderboard.leaderboard_rows(sweep), "curves": leaderboard.sweep_curves(sweep),
            "active": leaderboard.is_active(sweep)}


def sweep_view(sweep_dir: str | Path) -> dict:
    """A sweep as it stands: ``{"sweep"`` (load_sweep's dict), ``"rows"`` (the leaderboard), ``"curves"``,
    ``"active"}``; read again whenever a member writes (:func:`relpos.experiments.leaderboard.sweep_signature`)."""
    return _sweep_view(str(sweep_dir), leaderboard.sweep_signature(sweep_dir))


# ----------------------------------------------------------------------------- labs


@st.cache_data(max_entries=32, show_spinner=False)
def _lab_results(sweep_dir: str, modified: float) -> dict:
    rows = labs.read_results(sweep_dir)
    return {"rows": rows, "summary": labs.summarize_results(rows)}


def lab_results(sweep_dir: str | Path) -> dict:
    """A lab sweep's ``results.csv`` rows and their summary over seeds (``{"rows", "summary"}``), read
    again when the file changes."""
    return _lab_results(str(sweep_dir), mtime(Path(sweep_dir) / labs.RESULTS_FILE))


@st.cache_data(max_entries=16, show_spinner="Asking each scheme's model which rules apply...")
def _transfer_methods(sweep_dir: str, signature: tuple) -> dict:
    return lab_views.transfer_methods(sweep_dir)


def transfer_methods(sweep_dir: str | Path) -> dict:
    """:func:`relpos.experiments.lab_views.transfer_methods` of a transfer sweep, cached while no member writes."""
    return _transfer_methods(str(sweep_dir), leaderboard.sweep_signature(sweep_dir))


@st.cache_data(max_entries=16, show_spinner="Running the image through the model...")
def _shift_example(path: str, modified: float, index: int) -> dict:
    ex = _run_shift_example(path, index=index)
    cfg = run_table.read_run_config(Path(path).parent) or {}
    data = cfg.get("data") or {}
    region = data.get("train_region") or {}
    return {**{k: ex[k] for k in ("label", "prediction", "classes", "marks", "grid", "scheme")},
            "picture": explore.display_image(ex["image"]), "attention": [a.numpy() for a in ex["attention"]],
            "patch": data.get("patch_size"), "mark_size": data.get("mark_size"),
            "seen_cols": tuple(region["cols"]) if region.get("cols") else None, "num_val": data.get("num_val")}


def shift_example(path: str, index: int) -> dict:
    """One unseen-region image through a shift-lab checkpoint: ``{"picture" (H, W, 3), "label",
    "prediction", "classes", "marks", "grid", "scheme", "attention" [(1, H, N, N) numpy per layer],
    "patch", "mark_size", "seen_cols", "num_val"}``; cached until the checkpoint changes."""
    return _shift_example(path, mtime(path), int(index))
