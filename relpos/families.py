"""The relative position bias families: one table that says what each family is.

Every other module reads these flags instead of comparing family names; adding a family touches this
module, its implementation (:mod:`relpos.relative_position`) and their tests, nothing else.

=========  ======  =======  =========  ==========  ===========  =========================================
family     grid    learned  resizable  extra_rows  class_token  options (default)
=========  ======  =======  =========  ==========  ===========  =========================================
"1d"       1d      yes      yes        0           no           -
"2d"       2d      yes      yes        0           no           -
"2d_cls"   2d      yes      yes        3           yes          -
"t5"       1d      yes      no         0           no           num_buckets (32), max_distance (128)
"alibi"    either  no       no         0           no           alibi_distance ("euclidean")
"cpb"      2d      no       no         0           no           cpb_hidden_dim (512), pretrained_window_size,
                                                                 cpb_coords ("log")
=========  ======  =======  =========  ==========  ===========  =========================================

``grid``: "2d" families take a ``window_size`` ``(h, w)``, "1d" ones a ``seq_len``; "either" (ALiBi)
is 2D with a ``window_size`` and 1D with only a ``seq_len``. ``resizable``: the learned table is
resampled to a new window (bicubic or geometric); the others rebuild their fixed tensors or keep
their buckets. ``extra_rows``: BEiT's class-token rows at the end of the table (cls -> token,
token -> cls, cls -> cls).

The second part names the position *schemes* a model can use: the ``position_embedding`` values
(:data:`POSITION_EMBEDDINGS`, the rotary ones in :data:`ROTARY_EMBEDDINGS`, read by
:func:`position_parts`) and :data:`SCHEMES`, every embedding with or without a bias family.

This module imports only :mod:`relpos._validation` and the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from relpos._validation import check_choice, check_int, check_window_size

__all__ = [
    "ALIBI_DISTANCES",
    "BIAS_TYPES",
    "CPB_COORDS",
    "DEFAULT_BIAS_TYPE",
    "FAMILIES",
    "FAMILY_OPTIONS",
    "NUM_CLS_ROWS",
    "POSITION_EMBEDDINGS",
    "ROTARY_EMBEDDINGS",
    "RPB_KWARGS",
    "SCHEMES",
    "SCHEME_KEYS",
    "BiasFamily",
    "check_rpb_kwargs",
    "family",
    "family_options",
    "is_2d_family",
    "position_parts",
    "resolve_bias_kwargs",
    "scheme_name",
    "scheme_settings",
]

#: BEiT's class-token rows appended to a 2D table (cls -> token, token -> cls, cls -> cls).
NUM_CLS_ROWS = 3

#: Values of the "alibi" option ``alibi_distance`` (they only differ in 2D).
ALIBI_DISTANCES: tuple[str, ...] = ("euclidean", "manhattan")

#: Values of the "cpb" option ``cpb_coords``: Swin V2's log-spaced coordinates (its default) or the
#: linear-spaced ones it compares them with (Swin V2, Table 1).
CPB_COORDS: tuple[str, ...] = ("log", "linear")

_GRIDS = ("1d", "2d", "either")


@dataclass(frozen=True)
class BiasFamily:
    """What one bias family is (see the module docstring's table).

    Attributes:
        name: the ``bias_type`` string, e.g. ``"2d"``.
        label: a human label for the app, e.g. ``"2D table (Swin)"``.
        description: one plain-words sentence.
        grid: ``"2d"`` (``window_size``), ``"1d"`` (``seq_len``) or ``"either"`` (2D with a
            ``window_size``, else 1D).
        learned: has a learned ``(T, H)`` table parameter.
        resizable: its table can be moved to a new window (bicubic / geometric).
        extra_rows: class-token rows at the end of the table.
        class_token: needs (and implies) a class token.
        options: family option name -> default (``None``: no default value).
    """

    name: str
    label: str
    description: str
    grid: str
    learned: bool
    resizable: bool
    extra_rows: int
    class_token: bool
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("grid", self.grid, _GRIDS)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def is_2d(self, rpb_kwargs: Mapping[str, Any] | None = None) -> bool:
        """Whether this family (with these kwargs) biases a 2D grid (``window_size``) or a 1D sequence.

        An "either" family is 2D when ``rpb_kwargs`` has a ``window_size`` or no ``seq_len``.
        """
        if self.grid == "either":
            kw = rpb_kwargs or {}
            return kw.get("window_size") is not None or kw.get("seq_len") is None
        return self.grid == "2d"


def _families(*items: BiasFamily) -> Mapping[str, BiasFamily]:
    return MappingProxyType({f.name: f for f in items})


#: Every bias family by name, in the order of :data:`BIAS_TYPES` (read-only).
FAMILIES: Mapping[str, BiasFamily] = _families(
    BiasFamily(
        "1d", "1D table (Shaw)", "One learned scalar per head for each signed distance i - j in a sequence.",
        grid="1d", learned=True, resizable=True, extra_rows=0, class_token=False,
    ),
    BiasFamily(
        "2d", "2D table (Swin)", "One learned scalar per head for each 2D offset (dy, dx) in a window.",
        grid="2d", learned=True, resizable=True, extra_rows=0, class_token=False,
    ),
    BiasFamily(
        "2d_cls", "2D table + class token (BEiT)",
        "The Swin table plus three learned rows for the class token (cls to token, token to cls, cls to cls).",
        grid="2d", learned=True, resizable=True, extra_rows=NUM_CLS_ROWS, class_token=True,
    ),
    BiasFamily(
        "t5", "T5 buckets", "Learned scalars shared by log-spaced buckets of the signed distance (exact when near).",
        grid="1d", learned=True, resizable=False, extra_rows=0, class_token=False,
        options={"num_buckets": 32, "max_distance": 128},
    ),
    BiasFamily(
        "alibi", "ALiBi", "A fixed penalty: minus a per-head slope times the distance, nothing learned.",
        grid="either", learned=False, resizable=False, extra_rows=0, class_token=False,
        options={"alibi_distance": "euclidean"},
    ),
    BiasFamily(
        "cpb", "Continuous MLP (Swin V2)", "A small MLP maps log-spaced offsets to one bias per head.",
        grid="2d", learned=False, resizable=False, extra_rows=0, class_token=False,
        options={"cpb_hidden_dim": 512, "pretrained_window_size": None, "cpb_coords": "log"},
    ),
)

#: The bias families ``RelativePositionBias`` accepts as ``bias_type``.
BIAS_TYPES: tuple[str, ...] = tuple(FAMILIES)

#: The family used when none is named (Swin's 2D table): the default of ``bias_type`` everywhere.
DEFAULT_BIAS_TYPE = "2d"

#: Family-specific keyword arguments; giving one to another family is a ``ValueError``.
FAMILY_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {name: tuple(f.options) for name, f in FAMILIES.items()}
)

_OPTION_NAMES: tuple[str, ...] = tuple(sorted({o for opts in FAMILY_OPTIONS.values() for o in opts}))

#: Every keyword ``RelativePositionBias`` accepts (what ``rpb_kwargs`` may hold).
RPB_KWARGS: tuple[str, ...] = ("num_heads", "window_size", "seq_len", "bias_type", "init_std", *_OPTION_NAMES)


def family(name: Any) -> BiasFamily:
    """The :class:`BiasFamily` called ``name``.

    Raises:
        ValueError: ``name`` is not one of :data:`BIAS_TYPES` (the message lists them).
    """
    return FAMILIES[check_choice("bias_type", name, BIAS_TYPES)]


def is_2d_family(bias_type: str, rpb_kwargs: Mapping[str, Any] | None = None) -> bool:
    """Whether ``bias_type`` (with these kwargs) biases a 2D grid (``window_size``) or a 1D sequence."""
    return family(bias_type).is_2d(rpb_kwargs)


def _check_option_names(bias_type: str, given: Mapping[str, Any]) -> None:
    """Refuse family options (not ``None``) that ``bias_type`` does not take."""
    allowed = FAMILY_OPTIONS[bias_type]
    foreign = sorted(k for k, v in given.items() if v is not None and k in _OPTION_NAMES and k not in allowed)
    if foreign:
        raise ValueError(
            f"options {foreign} do not apply to bias_type={bias_type!r}; it takes "
            + (f"{', '.join(allowed)}" if allowed else "no family options")
        )


def family_options(bias_type: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checked options of family ``bias_type``: ``given`` (``None`` = default) over the defaults.

    Args:
        bias_type: one of :data:`BIAS_TYPES`.
        given: option name -> value; ``None`` values mean "the default", and options of other
            families are refused unless ``None``.

    Returns:
        ``{option: value}`` for every option of the family, e.g. ``{"num_buckets": 32,
        "max_distance": 128}`` for "t5" (an empty dict for families without options).

    Raises:
        ValueError: an option of another family, or a value out of range (``num_buckets >= 4``,
            ``max_distance > num_buckets // 4``, ``alibi_distance`` in :data:`ALIBI_DISTANCES`,
            ``cpb_hidden_dim >= 1``, ``pretrained_window_size`` a window, ``cpb_coords`` in
            :data:`CPB_COORDS`).
        TypeError: a value of the wrong type.
    """
    fam = family(bias_type)
    given = dict(given or {})
    _check_option_names(fam.name, given)
    out = {k: (given[k] if given.get(k) is not None else default) for k, default in fam.options.items()}
    if "num_buckets" in out:
        out["num_buckets"] = check_int("num_buckets", out["num_buckets"], minimum=4)
    if "max_distance" in out:
        out["max_distance"] = check_int(
            "max_distance", out["max_distance"], minimum=out.get("num_buckets", 4) // 4 + 1
        )
    if "alibi_distance" in out:
        out["alibi_distance"] = check_choice("alibi_distance", out["alibi_distance"], ALIBI_DISTANCES)
    if "cpb_hidden_dim" in out:
        out["cpb_hidden_dim"] = check_int("cpb_hidden_dim", out["cpb_hidden_dim"])
    if "cpb_coords" in out:
        out["cpb_coords"] = check_choice("cpb_coords", out["cpb_coords"], CPB_COORDS)
    if out.get("pretrained_window_size") is not None:
        out["pretrained_window_size"] = check_window_size("pretrained_window_size", out["pretrained_window_size"])
    return out


def check_rpb_kwargs(rpb_kwargs: dict) -> dict:
    """Check the names in ``rpb_kwargs`` before building a bias from them.

    Returns:
        ``rpb_kwargs`` itself (unchanged).

    Raises:
        TypeError: ``rpb_kwargs`` is not a dict.
        ValueError: a key is not a ``RelativePositionBias`` argument, or a family option is given
            to a family that does not take it; the message names the keys and what is allowed.
    """
    if not isinstance(rpb_kwargs, dict):
        raise TypeError(f"rpb_kwargs must be a dict, got {type(rpb_kwargs).__name__}")
    unknown = sorted(k for k in rpb_kwargs if k not in RPB_KWARGS)
    if unknown:
        raise ValueError(f"rpb_kwargs has unknown keys {unknown}; allowed: {', '.join(RPB_KWARGS)}")
    bias_type = check_choice("rpb_kwargs['bias_type']", rpb_kwargs.get("bias_type", DEFAULT_BIAS_TYPE), BIAS_TYPES)
    _check_option_names(bias_type, rpb_kwargs)
    return rpb_kwargs


def resolve_bias_kwargs(
    rpb_kwargs: Mapping[str, Any] | None,
    *,
    num_heads: int,
    grid: tuple[int, int] | None = None,
    class_token: bool = False,
) -> dict[str, Any]:
    """The one resolution of ``rpb_kwargs`` into ``RelativePositionBias`` keyword arguments.

    Fills ``num_heads`` and ``bias_type`` (default :data:`DEFAULT_BIAS_TYPE`) and checks the names and family
    options. With a patch ``grid`` ``(gh, gw)`` (a model), it also fills the size: ``window_size =
    grid`` for a 2D family, ``seq_len = gh * gw`` (+ 1 with a class token) for a 1D one; given
    values must agree. Family option values are left as given (the bias fills the defaults).

    Args:
        rpb_kwargs: ``RelativePositionBias`` keyword arguments, or ``None`` (all defaults).
        num_heads: the attention's number of heads.
        grid: the token grid ``(gh, gw)``; ``None`` (a bare attention layer) leaves the size as given.
        class_token: whether token 0 is a class token (only with ``grid``).

    Returns:
        A new dict (``rpb_kwargs`` is not modified).

    Raises:
        TypeError: ``rpb_kwargs`` is not a dict or None.
        ValueError: unknown keys, foreign family options, a ``num_heads``/``window_size``/``seq_len``
            that disagrees with the model, or a family that cannot place the class token (or needs one).
    """
    if rpb_kwargs is None:
        rpb_kwargs = {}
    if not isinstance(rpb_kwargs, dict):
        raise TypeError(f"rpb_kwargs must be a dict or None, got {type(rpb_kwargs).__name__}")
    kwargs = dict(rpb_kwargs)
    given = kwargs.setdefault("num_heads", num_heads)
    if given != num_heads:
        raise ValueError(
            f"rpb_kwargs['num_heads'] ({given!r}) must equal the attention's num_heads ({num_heads})"
        )
    kwargs.setdefault("bias_type", DEFAULT_BIAS_TYPE)
    check_rpb_kwargs(kwargs)
    if grid is None:
        return kwargs
    fam = FAMILIES[kwargs["bias_type"]]
    gh, gw = check_window_size("grid", grid)
    if fam.class_token and not class_token:
        raise ValueError(f"bias_type={fam.name!r} needs class_token=True (it biases a class token)")
    if fam.is_2d(kwargs):
        if class_token and not fam.class_token:
            with_cls = [n for n, f in FAMILIES.items() if f.class_token]
            one_d = [n for n, f in FAMILIES.items() if f.grid == "1d"]
            raise ValueError(
                f"class_token=True with bias_type={fam.name!r}: a 2D bias cannot place the class "
                f"token; use bias_type={with_cls[0]!r} or a 1D family ({', '.join(map(repr, one_d))})"
            )
        window = kwargs.get("window_size")
        if window is not None and check_window_size("rpb_kwargs['window_size']", window) != (gh, gw):
            raise ValueError(f"rpb_kwargs['window_size'] {window!r} does not match the patch grid ({gh}, {gw})")
        kwargs["window_size"] = (gh, gw)
    else:
        n = gh * gw + int(bool(class_token))
        seq_len = kwargs.get("seq_len")
        if seq_len is None:
            kwargs["seq_len"] = n
        elif seq_len != n:
            raise ValueError(
                f"rpb_kwargs['seq_len'] ({seq_len!r}) must equal the number of tokens ({n}"
                + (", class token included)" if class_token else ")")
            )
    return kwargs


# ----------------------------------------------------------------------------- position schemes

#: Rotary position embeddings a ViT can hold, by ``position_embedding`` value: the
#: :class:`relpos.rotary.RotaryPositionEmbedding` ``mode`` each stands for (RoPE-ViT's two 2D kinds).
ROTARY_EMBEDDINGS: Mapping[str, str] = MappingProxyType({"rope_axial": "axial", "rope_mixed": "mixed"})

#: Values of ``VisionTransformer(position_embedding=...)`` (``model.position_embedding``): "auto"
#: (absolute without a relative bias, none with one), "absolute" (a learned embedding added to the
#: patches), "none", a rotary embedding in every attention layer ("rope_axial", "rope_mixed"), or a
#: rotary one together with the absolute embedding ("rope_mixed+absolute": RoPE-ViT's "+APE" rows).
#: A relative bias (``use_relative_position``) can come on top of any of them.
POSITION_EMBEDDINGS: tuple[str, ...] = (
    "auto", "absolute", "none", *ROTARY_EMBEDDINGS, *(f"{r}+absolute" for r in ROTARY_EMBEDDINGS)
)


def position_parts(position_embedding: Any, use_relative_position: bool = False) -> tuple[str | None, bool]:
    """What a ``position_embedding`` value adds to the model: ``(rotary mode or None, absolute?)``.

    ``"auto"`` is ``"none"`` with a relative bias and ``"absolute"`` without one, as in the ViT.
    E.g. ``"rope_mixed+absolute" -> ("mixed", True)``, ``"none" -> (None, False)``.

    Raises:
        ValueError: not one of :data:`POSITION_EMBEDDINGS` (the message lists them).
    """
    pe = check_choice("position_embedding", position_embedding, POSITION_EMBEDDINGS)
    if pe == "auto":
        pe = "none" if use_relative_position else "absolute"
    rotary, _, rest = pe.partition("+")
    return ROTARY_EMBEDDINGS.get(rotary), pe == "absolute" or rest == "absolute"


#: The model config keys a position scheme stands for (``model.<key>``).
SCHEME_KEYS: tuple[str, ...] = ("use_relative_position", "position_embedding", "bias_type", "class_token")


def _bias_scheme(name: str, embedding: str = "none") -> Mapping[str, Any]:
    """The settings of the scheme "family ``name``" on top of ``position_embedding=embedding``."""
    fam = FAMILIES[name]
    settings: dict[str, Any] = {
        "use_relative_position": True,
        "position_embedding": embedding,
        "bias_type": name,
    }
    if fam.class_token:
        settings["class_token"] = True
    elif fam.grid != "1d":  # a 2D bias in a ViT cannot place a class token
        settings["class_token"] = False
    return MappingProxyType(settings)


def _embedding_scheme(embedding: str) -> Mapping[str, Any]:
    """The settings of a scheme without a relative bias (``embedding`` alone)."""
    return MappingProxyType({"use_relative_position": False, "position_embedding": embedding})


_ROTARY_EMBEDDINGS_ALL = tuple(pe for pe in POSITION_EMBEDDINGS if position_parts(pe)[0] is not None)

#: Every position scheme by name: what tells the model where a patch is, as the config keys
#: (:data:`SCHEME_KEYS`) it sets; ``model.scheme`` in a config names one. "none" and "absolute"
#: need no bias; every family ``f`` is a scheme, and so is ``"absolute+f"`` (both at once: the
#: Swin paper's "abs. + rel. pos." row). The rotary schemes are ``"rope_axial"``, ``"rope_mixed"``
#: and the same with the absolute embedding (``"rope_mixed+absolute"``), each also with a bias
#: (``"rope_mixed+2d"``, ``"rope_mixed+absolute+2d"``): the name is always the position embedding,
#: then ``+`` the bias family. Keys a scheme leaves out (e.g. ``class_token`` for a 1D family or a
#: rotary embedding alone) stay as the config says.
SCHEMES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "none": _embedding_scheme("none"),
    "absolute": _embedding_scheme("absolute"),
    **{name: _bias_scheme(name) for name in FAMILIES},
    **{f"absolute+{name}": _bias_scheme(name, "absolute") for name in FAMILIES},
    **{pe: _embedding_scheme(pe) for pe in _ROTARY_EMBEDDINGS_ALL},
    **{f"{pe}+{name}": _bias_scheme(name, pe) for pe in _ROTARY_EMBEDDINGS_ALL for name in FAMILIES},
})


def scheme_settings(name: Any) -> Mapping[str, Any]:
    """The config keys (``use_relative_position``, ``position_embedding``, ...) scheme ``name`` sets.

    Raises:
        ValueError: ``name`` is not one of :data:`SCHEMES` (the message lists them).
    """
    return SCHEMES[check_choice("scheme", name, tuple(SCHEMES))]


def scheme_name(use_relative_position: bool, position_embedding: str, bias_type: str) -> str:
    """The scheme the old keys describe, e.g. ``(True, "absolute", "2d") -> "absolute+2d"``,
    ``(False, "rope_mixed", ...) -> "rope_mixed"``, ``(True, "rope_axial", "2d") -> "rope_axial+2d"``.

    ``position_embedding="auto"`` means "absolute" without a relative bias and "none" with one
    (as in ``VisionTransformer``); ``bias_type`` is ignored without a relative bias.
    """
    check_choice("position_embedding", position_embedding, POSITION_EMBEDDINGS)
    if position_embedding == "auto":
        position_embedding = "none" if use_relative_position else "absolute"
    if not use_relative_position:
        return position_embedding
    family(bias_type)
    return bias_type if position_embedding == "none" else f"{position_embedding}+{bias_type}"
