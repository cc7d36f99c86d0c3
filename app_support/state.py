"""The app's state: the shared session keys and every cached call into relpos.

Shared choices (the sidebar's model, layer and head) live in plain session keys (:data:`SEL_SOURCE`,
:data:`SEL_LAYER`, :data:`SEL_HEAD`), never in widget keys: in Streamlit's ``pages/`` mode a widget
belongs to one page and its state is dropped when another page runs, a plain key stays.

Every ``st.cache_*`` of the app is here, one loader per resource kind. Models are cached with
``st.cache_resource`` keyed by path (or preset) and modification time and are never mutated (a table
preset works on a copy); derived arrays are cached with ``st.cache_data`` keyed by paths and numbers
(tensors are not hashable). The public loaders take a model *source* (``preset:<name>`` or
``ckpt:<path>``) and add its modification time to the key themselves, so a rewritten file is read again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from relpos import diagnostics as probes  # (this module's own `diagnostics` is the cached loader)
from relpos import explore, geometry, jobs, presets
from relpos.checkpoint_import import import_checkpoint
from relpos.experiments import leaderboard, rundir, run_table
from relpos.experiments.config import fresh_model, preset_config as resolved_preset
from relpos.experiments.resize_lab import resize_lab as _resize_lab
from relpos.experiments.sweep_results import summarize as _summarize_sweep

#: Plain session keys of the shared choices (set with setdefault, never used as widget keys).
SEL_SOURCE = "sel_source"
SEL_LAYER = "sel_layer"
SEL_HEAD = "sel_head"
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
    return f"{path.parent.name}/{path.name}"


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


# Cached per layer: st.cache_data copies what it returns on every hit, and a 32x32 patch grid makes
# each layer's maps 4 MB per head.
@st.cache_data(max_entries=16, show_spinner="Running the model...")
def _attention_maps(source: str, modified: float, table: str, alpha: float, sample: int,
                    upload: bytes | None, layer: int) -> dict:
    model, cfg = _shown_model(source, modified, table, alpha)
    image, label, classes = _model_input(model, cfg, sample, upload)
    return {
        "picture": explore.display_image(image),
        "label": label,
        "with": probes.attention_maps(model, image, with_bias=True)[layer],  # (H, N, N)
        "without": probes.attention_maps(model, image, with_bias=False)[layer],
        "probs_with": probes.predict(model, image),
        "probs_without": probes.predict(model, image, with_bias=False),
        "class_names": classes,
    }


def attention_maps(source: str, table: str, alpha: float, sample: int, upload: bytes | None, layer: int) -> dict:
    """One layer's maps ``(H, N, N)`` with and without the bias, the picture and both predictions."""
    return _attention_maps(source, source_modified(source), table, alpha, sample, upload, layer)


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


@st.cache_data(max_entries=8, show_spinner="Resizing and evaluating...")
def _resize_lab_result(path: str, modified: float, new_img_size: int, max_samples: int) -> dict:
    return _resize_lab(path, new_img_size, max_samples=max_samples)


def resize_lab(path: str, new_img_size: int, max_samples: int) -> dict:
    """:func:`relpos.experiments.resize_lab.resize_lab` of a checkpoint, cached until the file changes."""
    return _resize_lab_result(path, mtime(path), new_img_size, max_samples)


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

    Uploads and files outside a run have no curves; two files of one run give one entry.
    """
    root = runs_root().resolve()
    curves: dict[str, list[dict]] = {}
    for path in paths:
        run = Path(path).parent
        if (run / rundir.STATUS_FILE).is_file() and run.parent.resolve() == root:
            curves.setdefault(run.name, rundir.read_metrics(run))
    return curves


# ----------------------------------------------------------------------------- runs and sweeps


@st.cache_data(max_entries=1024, show_spinner=False)
def _run_columns(path: str, status_modified: float, config_modified: float) -> dict:
    return run_table.run_columns(path)


def runs_with_columns() -> list[dict]:
    """:func:`relpos.jobs.list_runs` rows of the runs root, each with its config columns
    (:func:`relpos.experiments.run_table.run_columns`: scheme, seed, preset, changed...), cached per
    run until its status or config file changes."""
    rows = jobs.list_runs(runs_root())
    for row in rows:
        run = Path(row["path"])
        row.update(_run_columns(row["path"], mtime(run / rundir.STATUS_FILE), mtime(run / rundir.CONFIG_FILE)))
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
