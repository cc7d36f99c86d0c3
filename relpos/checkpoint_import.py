"""Read the relative position bias tables of published checkpoints (Swin, BEiT; timm, HF).

Shape legend: ``T`` table rows, ``H`` heads, ``(h, w)`` window, ``N`` tokens.

Recognized key names (leading ``module.`` / ``_orig_mod.`` from DDP / ``torch.compile`` are ignored):

==========================  ===========================================================================
source                      key of a ``(T, H)`` table
==========================  ===========================================================================
Swin (official, timm)       ``layers.{s}.blocks.{b}.attn.relative_position_bias_table``
BEiT (unilm, timm)          ``blocks.{i}.attn.relative_position_bias_table``; shared:
                            ``rel_pos_bias.relative_position_bias_table``
HF transformers Swin        ``swin.encoder.layers.{s}.blocks.{b}.attention.self.relative_position_bias_table``
HF transformers BEiT        ``beit.encoder.layer.{i}.attention.attention.relative_position_bias.``
                            ``relative_position_bias_table``; shared:
                            ``beit.encoder.relative_position_bias.relative_position_bias_table``
relpos                      ``blocks.{i}.attn.relative_position_bias.relative_position_bias_table``;
                            shared: ``rel_pos_bias.relative_position_bias_table``
==========================  ===========================================================================

Swin V2's continuous position bias MLP (``...attn.cpb_mlp.{0,2}.*`` official/timm,
``...attention.self.continuous_position_bias_mlp.{0,2}.*`` HF) is recognized too.

Each key of the state dict gets one action: ``"mapped"`` (already a relpos key), ``"renamed"`` (a
table under another project's name, imported under the relpos name), ``"dropped"`` (not imported:
other weights, and derived buffers such as ``relative_position_index``, which is checked against the
index relpos computes). :func:`import_into` adds ``"resized"`` when a table's window differs from the
model's. The window is inferred from ``T = (2h-1)(2w-1)`` (square, or from a saved index), ``+ 3``
rows meaning BEiT's class-token rows. Which relpos bias takes what is read from the family flags
(:data:`relpos.families.FAMILIES`): a learned 2D table takes a table (keeping or dropping the
class-token rows as its ``extra_rows`` say), a bias with a ``cpb_mlp`` takes a Swin V2 MLP.

About 540 lines, over the usual 400: reading, recognising and fitting foreign tables is one
pipeline (load -> inspect -> import_into) whose steps share the key patterns above.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from relpos._file_limits import check_loaded_tensors, check_safetensors, check_torch_archive
from relpos._limits import short_text
from relpos._validation import check_choice
from relpos.experiments.checkpoint import strip_key_prefixes
from relpos.families import FAMILIES, NUM_CLS_ROWS
from relpos.guards import ResourceLimitError, format_bytes, memory_budget_bytes
from relpos.relative_position import (
    RelativePositionBias,
    get_relative_position_index_2d,
    get_relative_position_index_2d_cls,
)
from relpos.resize import RESIZE_METHODS, resize_relative_position_bias_table

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "ImportAction",
    "ImportReport",
    "KeyReport",
    "TableInfo",
    "import_checkpoint",
    "import_into",
    "infer_window_size",
    "inspect_state_dict",
    "load_state_dict",
]

#: File suffixes :func:`load_state_dict` reads.
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")

_WRAPPER_KEYS: tuple[str, ...] = ("model", "state_dict", "module", "model_state", "model_state_dict")

# (source, regex with named groups stage/block/layer) -> what a key is. Order matters: first match wins.
_TABLE = "relative_position_bias_table"
_PATTERNS: list[tuple[str, str, re.Pattern]] = [
    ("relpos", "table", re.compile(rf"^blocks\.(?P<layer>\d+)\.attn\.relative_position_bias\.{_TABLE}$")),
    ("relpos/BEiT (shared)", "table", re.compile(rf"^rel_pos_bias\.{_TABLE}$")),
    ("Swin (official/timm)", "table", re.compile(rf"^layers\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.attn\.{_TABLE}$")),
    ("BEiT (unilm/timm)", "table", re.compile(rf"^blocks\.(?P<layer>\d+)\.attn\.{_TABLE}$")),
    (
        "HF Swin",
        "table",
        re.compile(rf"^swin(?:v2)?\.encoder\.layers\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.attention\.self\.{_TABLE}$"),
    ),
    (
        "HF BEiT",
        "table",
        re.compile(
            rf"^(?:beit|data2vec_vision)\.encoder\.layer\.(?P<layer>\d+)\.attention\.attention\."
            rf"relative_position_bias\.{_TABLE}$"
        ),
    ),
    ("HF BEiT (shared)", "table", re.compile(rf"^(?:beit|data2vec_vision)\.encoder\.relative_position_bias\.{_TABLE}$")),
    (
        "Swin V2 (official/timm)",
        "mlp",
        re.compile(r"^layers\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.attn\.cpb_mlp\.(?P<param>[02]\.(?:weight|bias))$"),
    ),
    (
        "HF Swin V2",
        "mlp",
        re.compile(
            r"^swinv2\.encoder\.layers\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.attention\.self\."
            r"continuous_position_bias_mlp\.(?P<param>[02]\.(?:weight|bias))$"
        ),
    ),
    ("relpos", "mlp", re.compile(r"^blocks\.(?P<layer>\d+)\.attn\.relative_position_bias\.cpb_mlp\.(?P<param>[02]\.(?:weight|bias))$")),
    ("relpos (shared)", "mlp", re.compile(r"^rel_pos_bias\.cpb_mlp\.(?P<param>[02]\.(?:weight|bias))$")),
]
_INDEX_RE = re.compile(r"(?:^|\.)relative_position_index$")
_DERIVED_RE = re.compile(r"(?:^|\.)(relative_coords_table|attn_mask|relative_position_index)$")


@dataclass
class KeyReport:
    """What happened to one key of the state dict."""

    key: str
    action: str  # "mapped" | "renamed" | "dropped"
    target: str | None
    source: str | None
    shape: tuple[int, ...]
    note: str = ""


@dataclass
class TableInfo:
    """One relative position bias found in the state dict (a table, or a Swin V2 MLP).

    ``layer`` is the flat block index (Swin's stages counted in order), ``None`` for a shared bias.
    ``table`` is ``(T, H)`` for a table and ``None`` for a Swin V2 MLP (``cpb_state`` holds its weights).
    """

    source: str
    key: str
    target: str
    layer: int | None
    num_heads: int
    window_size: tuple[int, int] | None
    has_cls_rows: bool
    table: torch.Tensor | None = None
    cpb_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stage: int | None = None
    block: int | None = None

    @property
    def kind(self) -> str:
        """``"table"`` (a ``(T, H)`` table, ``has_cls_rows`` says whether BEiT's rows end it) or ``"mlp"``."""
        return "mlp" if self.table is None else "table"

    @property
    def bias_type(self) -> str:
        """The relpos family this bias loads into, read off :data:`~relpos.families.FAMILIES`: a Swin V2
        MLP the family with a ``cpb_hidden_dim`` option, a table the learned 2D family with as many
        class-token rows."""
        if self.table is None:
            return next(n for n, f in FAMILIES.items() if "cpb_hidden_dim" in f.options)
        rows = NUM_CLS_ROWS if self.has_cls_rows else 0
        return next(n for n, f in FAMILIES.items() if f.learned and f.is_2d() and f.extra_rows == rows)


@dataclass
class ImportReport:
    """Everything :func:`inspect_state_dict` found: one row per key, and the biases themselves."""

    keys: list[KeyReport]
    tables: list[TableInfo]

    @property
    def sources(self) -> list[str]:
        return sorted({t.source for t in self.tables})

    def counts(self) -> dict[str, int]:
        out = {"mapped": 0, "renamed": 0, "dropped": 0}
        for k in self.keys:
            out[k.action] = out.get(k.action, 0) + 1
        return out

    def rows(self) -> list[dict]:
        """One plain dict per key (for a table widget)."""
        return [
            {"key": k.key, "action": k.action, "target": k.target or "", "source": k.source or "",
             "shape": "x".join(map(str, k.shape)), "note": k.note}
            for k in self.keys
        ]

    def summary(self) -> str:
        c = self.counts()
        windows = sorted({t.window_size for t in self.tables if t.window_size}, key=str)
        heads = sorted({t.num_heads for t in self.tables})
        return (
            f"{len(self.tables)} relative position bias(es) from {', '.join(self.sources) or 'no known source'}; "
            f"windows {windows}, heads {heads}; keys: {c['mapped']} mapped, {c['renamed']} renamed, "
            f"{c['dropped']} dropped"
        )


@dataclass
class ImportAction:
    """What :func:`import_into` did to one bias module of the model."""

    target: str
    source_key: str | None
    action: str  # "mapped" | "resized" | "skipped"
    note: str


# ---------------------------------------------------------------- reading files
def load_state_dict(source: str | Path | bytes, filename: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt``/``.bin``/``.ckpt`` or ``.safetensors`` file (or its bytes).

    Pickled files are read with ``torch.load(weights_only=True)``; a state dict nested under
    ``"model"``, ``"state_dict"``, ``"module"`` (or ``"model_state"``) is unwrapped. Sizes are
    checked before reading (:mod:`relpos._file_limits`): a torch file's zip directory (declared
    bytes against the memory budget, DEFLATE ratio, entry count; the legacy non-zip format is
    refused), a safetensors header's shapes against the bytes stored; after reading, every
    tensor's declared size against what it stores (a stride-0 view declaring 2^40 elements is
    refused). Each refusal is a ``ValueError`` naming the file (and the key).

    Args:
        source: a path, or the file's bytes (an upload).
        filename: with bytes, the original file name (its suffix picks the reader).

    Returns:
        ``{key: tensor}`` with only tensor values.
    """
    name = str(source) if not isinstance(source, (bytes, bytearray)) else (filename or "")
    suffix = Path(name).suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"checkpoint file {Path(name).name!r} has suffix {suffix!r}; allowed: {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    label = Path(name).name  # the file as the user knows it
    if suffix == ".safetensors":
        check_safetensors(source, label)  # shapes and offsets against the file and the budget
    else:
        check_torch_archive(source, label)  # the zip directory against the budget, before inflating
    try:  # corrupt, truncated or unsafe files raise many types (EOFError, UnpicklingError, SafetensorError...)
        if suffix == ".safetensors":
            # safetensors holds raw tensors only: no pickle, nothing to execute.
            from safetensors.torch import load as load_safetensors_bytes
            from safetensors.torch import load_file as load_safetensors_file

            if isinstance(source, (bytes, bytearray)):
                obj = load_safetensors_bytes(bytes(source))
            else:
                obj = load_safetensors_file(str(source), device="cpu")
        else:
            f = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise  # weights_only refused the file: torch's own message says what and why
    except Exception as exc:  # noqa: BLE001
        why = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"cannot read checkpoint file {Path(name).name!r}: it is truncated, corrupt or holds "
                         f"objects that weights_only=True refuses ({type(exc).__name__}: {why})") from None
    check_loaded_tensors(obj, label)  # a tensor declaring more than it stores: refused, naming the key
    # unwrap {"model": {...}, "epoch": ...}-style checkpoints
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None or any(isinstance(v, torch.Tensor) and k not in _WRAPPER_KEYS for k, v in obj.items()):
            break
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {Path(name).name!r} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------- window inference
def _odd_sqrt(t: int) -> int | None:
    s = math.isqrt(t)
    return s if s * s == t and s % 2 == 1 else None


def infer_window_size(num_rows: int, index: torch.Tensor | None = None) -> tuple[tuple[int, int], bool] | None:
    """Infer ``((h, w), has_cls_rows)`` from a table's row count ``T`` (and a saved index).

    Square windows come from ``T = (2h-1)^2`` (``+ 3`` class-token rows). A saved
    ``relative_position_index`` of shape ``(N, N)`` settles non-square windows: ``h * w = N`` (or
    ``N - 1`` with a class token) and ``(2h-1)(2w-1) = T`` (``- 3``). ``None`` when nothing fits.
    """
    for cls in (False, True):
        core = num_rows - (NUM_CLS_ROWS if cls else 0)
        if core < 1:
            continue
        if index is not None and index.dim() == 2 and index.shape[0] == index.shape[1]:
            n = index.shape[0] - int(cls)
            # h + w = (4N + 1 - T) / 2 and h * w = N
            s2 = 4 * n + 1 - core
            if s2 <= 0 or s2 % 2:
                continue
            s = s2 // 2
            disc = s * s - 4 * n
            r = math.isqrt(disc) if disc >= 0 else -1
            if r < 0 or r * r != disc or (s + r) % 2:
                continue
            for h, w in (((s + r) // 2, (s - r) // 2), ((s - r) // 2, (s + r) // 2)):
                if h < 1 or w < 1:
                    continue
                ref = get_relative_position_index_2d_cls((h, w)) if cls else get_relative_position_index_2d((h, w))
                if torch.equal(index.long().cpu(), ref):
                    return (h, w), cls
            continue
        side = _odd_sqrt(core)
        if side is not None:
            return ((side + 1) // 2, (side + 1) // 2), cls
    return None


# ---------------------------------------------------------------- inspecting
def _target(kind: str, layer: int | None, param: str | None = None) -> str:
    base = "rel_pos_bias" if layer is None else f"blocks.{layer}.attn.relative_position_bias"
    return f"{base}.relative_position_bias_table" if kind == "table" else f"{base}.cpb_mlp.{param}"  # "mlp"


def _float_copy(key: str, value: torch.Tensor) -> torch.Tensor:
    """A float32 copy of ``value``; a copy over the memory budget, or one the allocator refuses,
    is a ``ValueError`` naming ``key`` (never a RuntimeError from deep inside torch)."""
    need = value.numel() * 4
    if need > memory_budget_bytes():
        raise ResourceLimitError(f"{key}: shape {tuple(value.shape)} needs {format_bytes(need)} as "
                                 f"float32, over the memory budget of {format_bytes(memory_budget_bytes())}")
    try:
        return value.detach().float().clone()
    except RuntimeError as exc:
        raise ValueError(f"{key}: cannot copy shape {tuple(value.shape)}: {short_text(str(exc))}") from None


def inspect_state_dict(state_dict: dict[str, torch.Tensor]) -> ImportReport:
    """Find every relative position bias in ``state_dict`` and say what happens to each key.

    Returns:
        An :class:`ImportReport`: ``keys`` (one :class:`KeyReport` per key, in order) and ``tables``
        (one :class:`TableInfo` per bias, shared first, then by flat layer).
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    matches: dict[str, tuple[str, str, dict]] = {}
    for key in state_dict:
        k = strip_key_prefixes(key)
        for source, kind, pat in _PATTERNS:
            m = pat.match(k)
            if m:
                matches[key] = (source, kind, m.groupdict())
                break

    # Swin stages: flat layer = blocks in earlier stages + block
    stage_blocks: dict[int, int] = {}
    for source, _, g in matches.values():
        if g.get("stage") is not None:
            s, b = int(g["stage"]), int(g["block"])
            stage_blocks[s] = max(stage_blocks.get(s, 0), b + 1)
    offsets, total = {}, 0
    for s in sorted(stage_blocks):
        offsets[s] = total
        total += stage_blocks[s]

    def flat_layer(g: dict) -> int | None:
        if g.get("layer") is not None:
            return int(g["layer"])
        if g.get("stage") is not None:
            return offsets[int(g["stage"])] + int(g["block"])
        return None

    def index_for(key: str) -> torch.Tensor | None:
        k = key[: -len(_TABLE)] + "relative_position_index"
        return state_dict.get(k)

    keys: list[KeyReport] = []
    tables: dict[tuple, TableInfo] = {}
    for key, value in state_dict.items():
        shape = tuple(value.shape)
        if key not in matches:
            if _INDEX_RE.search(key):
                note = "derived buffer (relpos recomputes it)"
                tkey = key[: -len("relative_position_index")] + _TABLE
                t = state_dict.get(tkey)
                if t is not None and t.dim() == 2:
                    inferred = infer_window_size(t.shape[0], value)
                    note += "; matches the Swin/BEiT index" if inferred else "; does NOT match the Swin/BEiT index"
                keys.append(KeyReport(key, "dropped", None, None, shape, note))
            elif _DERIVED_RE.search(key):
                keys.append(KeyReport(key, "dropped", None, None, shape, "derived buffer (relpos recomputes it)"))
            else:
                keys.append(KeyReport(key, "dropped", None, None, shape, "not a relative position bias"))
            continue
        source, kind, g = matches[key]
        layer = flat_layer(g)
        if kind == "table":
            target = _target("table", layer)
            if value.dim() != 2:
                keys.append(KeyReport(key, "dropped", None, source, shape, "a bias table must be (T, H)"))
                continue
            inferred = infer_window_size(value.shape[0], index_for(key))
            if inferred is None:
                keys.append(KeyReport(
                    key, "dropped", None, source, shape,
                    f"{value.shape[0]} rows fit no (2h-1)(2w-1) [+3] window",
                ))
                continue
            window, cls = inferred
            info = TableInfo(
                source=source, key=key, target=target, layer=layer, num_heads=value.shape[1],
                window_size=window, has_cls_rows=cls, table=_float_copy(key, value),
                stage=None if g.get("stage") is None else int(g["stage"]),
                block=None if g.get("block") is None else int(g["block"]),
            )
            tables[("table", layer)] = info
            note = f"window {window}, {value.shape[1]} heads" + (", +3 class-token rows" if cls else "")
        else:
            target = _target("mlp", layer, g["param"])
            info = tables.get(("mlp", layer))
            if info is None:
                info = TableInfo(
                    source=source, key=key, target=_target("mlp", layer, "*"), layer=layer, num_heads=0,
                    window_size=None, has_cls_rows=False,
                    stage=None if g.get("stage") is None else int(g["stage"]),
                    block=None if g.get("block") is None else int(g["block"]),
                )
                tables[("mlp", layer)] = info
            info.cpb_state[g["param"]] = _float_copy(key, value)
            if g["param"] == "2.weight":
                info.num_heads = value.shape[0]
            note = "Swin V2 continuous position bias MLP"
        action = "mapped" if strip_key_prefixes(key) == target else "renamed"
        keys.append(KeyReport(key, action, target, source, shape, note))

    ordered = sorted(tables.values(), key=lambda t: (t.layer is not None, t.layer or 0, t.kind))
    return ImportReport(keys=keys, tables=ordered)


def import_checkpoint(source: str | Path | bytes, filename: str | None = None) -> ImportReport:
    """:func:`load_state_dict` then :func:`inspect_state_dict`."""
    return inspect_state_dict(load_state_dict(source, filename=filename))


# ---------------------------------------------------------------- loading into a model
def _bias_modules(model: nn.Module) -> list[tuple[str, RelativePositionBias]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RelativePositionBias)]


def _fit_table(info: TableInfo, m: RelativePositionBias, method: str) -> tuple[torch.Tensor, str, str]:
    """The table of ``info`` shaped for ``m``: returns (table, action, note)."""
    table, notes, action = info.table, [], "mapped"
    if info.has_cls_rows and not m.family.extra_rows:
        table = table[:-NUM_CLS_ROWS]
        notes.append("dropped the 3 class-token rows")
    elif not info.has_cls_rows and m.family.extra_rows:
        table = torch.cat([table, m.relative_position_bias_table.detach()[-NUM_CLS_ROWS:].float().cpu()])
        notes.append("kept the model's 3 class-token rows")
    if info.window_size != m.window_size:
        table = resize_relative_position_bias_table(table, info.window_size, m.window_size, method=method)
        action = "resized"
        notes.append(f"resized {info.window_size} -> {m.window_size} ({method})")
    return table, action, "; ".join(notes)


@torch.no_grad()
def import_into(
    model: nn.Module,
    report_or_state_dict: ImportReport | dict[str, torch.Tensor],
    method: str = "bicubic",
) -> list[ImportAction]:
    """Copy the imported biases into ``model``'s :class:`RelativePositionBias` modules.

    Pairing: a shared bias goes to a shared bias (or to every block's, and the note says so); per-block
    biases go to the model's in order (flat layer ``i`` to the ``i``-th bias module); a per-block
    source into a shared model uses layer 0. Tables go into modules with a learned 2D table
    (class-token rows dropped or kept as needed) and are resized with ``method`` when the window
    differs; Swin V2 MLPs go into modules with a ``cpb_mlp`` (no resize needed: coordinates are
    recomputed). Other biases (1D, fixed) are skipped. Head counts must agree.

    Returns:
        One :class:`ImportAction` per bias module of the model ("mapped", "resized" or "skipped").
    """
    check_choice("method", method, RESIZE_METHODS)
    report = report_or_state_dict
    if isinstance(report, dict):
        report = inspect_state_dict(report)
    if not isinstance(report, ImportReport):
        raise TypeError(f"report_or_state_dict must be an ImportReport or a state dict, got {type(report).__name__}")
    mods = _bias_modules(model)
    if not mods:
        raise ValueError(f"model ({type(model).__name__}) has no RelativePositionBias to import into")
    shared = [t for t in report.tables if t.layer is None]
    per_layer = [t for t in report.tables if t.layer is not None]
    model_shared = len(mods) == 1 and not mods[0][0].startswith("blocks.")
    actions: list[ImportAction] = []
    for i, (name, m) in enumerate(mods):
        want = "mlp" if hasattr(m, "cpb_mlp") else "table"
        pool_shared = [t for t in shared if t.kind == want]
        pool_layer = [t for t in per_layer if t.kind == want]
        info, how = None, ""
        if model_shared:
            if pool_shared:
                info = pool_shared[0]
            elif pool_layer:
                info, how = pool_layer[0], f"shared bias from layer {pool_layer[0].layer}"
        else:
            if i < len(pool_layer):
                info = pool_layer[i]
            elif pool_shared:
                info, how = pool_shared[0], "the checkpoint's shared bias, copied into every block"
        if info is None:
            actions.append(ImportAction(
                name, None, "skipped", f"no {'Swin V2 MLP' if want == 'mlp' else 'table'} in the checkpoint for this module"
            ))
            continue
        if want == "table" and not (m.family.learned and m.window_size is not None):
            actions.append(ImportAction(name, info.key, "skipped", f"bias_type {m.bias_type!r} has no 2D table to load"))
            continue
        if info.num_heads != m.num_heads:
            actions.append(ImportAction(
                name, info.key, "skipped", f"heads differ: checkpoint {info.num_heads}, model {m.num_heads}"
            ))
            continue
        if want == "mlp":
            try:
                m.cpb_mlp.load_state_dict({k: v for k, v in info.cpb_state.items()})
            except RuntimeError as exc:
                actions.append(ImportAction(name, info.key, "skipped", f"cpb_mlp shapes differ: {exc}"))
                continue
            m.invalidate_cache()
            actions.append(ImportAction(name, info.key, "mapped", "; ".join(x for x in (how, "cpb_mlp loaded") if x)))
            continue
        table, action, note = _fit_table(info, m, method)
        p = m.relative_position_bias_table
        p.copy_(table.to(dtype=p.dtype, device=p.device))
        m.invalidate_cache()
        actions.append(ImportAction(name, info.key, action, "; ".join(x for x in (how, note) if x)))
    return actions
