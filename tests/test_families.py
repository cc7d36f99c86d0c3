"""relpos.families: the one table of bias families and the one resolution of ``rpb_kwargs``."""

from __future__ import annotations

import dataclasses

import pytest

import relpos
import relpos.relative_position as rp
from relpos.families import (
    ALIBI_DISTANCES,
    BIAS_TYPES,
    FAMILIES,
    FAMILY_OPTIONS,
    NUM_CLS_ROWS,
    RPB_KWARGS,
    SCHEME_KEYS,
    SCHEMES,
    BiasFamily,
    check_rpb_kwargs,
    family,
    family_options,
    is_2d_family,
    resolve_bias_kwargs,
    scheme_name,
    scheme_settings,
)


def test_the_table_names_the_six_families_in_order():
    assert BIAS_TYPES == ("1d", "2d", "2d_cls", "t5", "alibi", "cpb")
    assert tuple(FAMILIES) == BIAS_TYPES
    assert all(FAMILIES[n].name == n for n in BIAS_TYPES)


def test_reexported_unchanged_by_relative_position_and_relpos():
    assert relpos.BIAS_TYPES is BIAS_TYPES
    assert rp.BIAS_TYPES is BIAS_TYPES
    assert rp.FAMILY_OPTIONS is FAMILY_OPTIONS and rp.RPB_KWARGS is RPB_KWARGS
    assert rp.ALIBI_DISTANCES is ALIBI_DISTANCES
    assert rp.is_2d_family is is_2d_family and rp.check_rpb_kwargs is check_rpb_kwargs


@pytest.mark.parametrize(
    "name, grid, learned, resizable, extra_rows, class_token",
    [
        ("1d", "1d", True, True, 0, False),
        ("2d", "2d", True, True, 0, False),
        ("2d_cls", "2d", True, True, 3, True),
        ("t5", "1d", True, False, 0, False),
        ("alibi", "either", False, False, 0, False),
        ("cpb", "2d", False, False, 0, False),
    ],
)
def test_flags(name, grid, learned, resizable, extra_rows, class_token):
    f = FAMILIES[name]
    assert (f.grid, f.learned, f.resizable, f.extra_rows, f.class_token) == (
        grid, learned, resizable, extra_rows, class_token
    )
    assert f.label and f.description.endswith(".")


def test_flags_agree_with_the_built_bias():
    for name, f in FAMILIES.items():
        kw = {"window_size": (3, 4)} if f.is_2d() else {"seq_len": 5}
        m = rp.RelativePositionBias(num_heads=2, bias_type=name, **kw)
        assert m.family is f
        assert m.is_learned_table == f.learned
        assert m.has_class_token == f.class_token
        if f.grid == "2d":
            assert m.num_relative_positions == 5 * 7 + f.extra_rows


def test_options_and_defaults():
    assert dict(FAMILIES["t5"].options) == {"num_buckets": 32, "max_distance": 128}
    assert dict(FAMILIES["alibi"].options) == {"alibi_distance": "euclidean"}
    assert dict(FAMILIES["cpb"].options) == {"cpb_hidden_dim": 512, "pretrained_window_size": None, "cpb_coords": "log"}
    assert FAMILY_OPTIONS == {
        "1d": (), "2d": (), "2d_cls": (), "t5": ("num_buckets", "max_distance"),
        "alibi": ("alibi_distance",), "cpb": ("cpb_hidden_dim", "pretrained_window_size", "cpb_coords"),
    }
    assert RPB_KWARGS == (
        "num_heads", "window_size", "seq_len", "bias_type", "init_std",
        "alibi_distance", "cpb_coords", "cpb_hidden_dim", "max_distance", "num_buckets", "pretrained_window_size",
    )
    assert NUM_CLS_ROWS == 3 and ALIBI_DISTANCES == ("euclidean", "manhattan")


def test_the_table_is_read_only():
    with pytest.raises(TypeError):
        FAMILIES["new"] = FAMILIES["2d"]  # type: ignore[index]
    with pytest.raises(TypeError):
        FAMILIES["t5"].options["num_buckets"] = 8  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAMILIES["2d"].learned = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="grid"):
        BiasFamily("x", "X", "An x.", grid="3d", learned=False, resizable=False, extra_rows=0, class_token=False)


def test_family_lookup_names_the_allowed_values():
    assert family("t5") is FAMILIES["t5"]
    with pytest.raises(ValueError, match=r"bias_type must be one of '1d', '2d'.*got 'rope'"):
        family("rope")


def test_is_2d():
    assert [is_2d_family(n) for n in BIAS_TYPES] == [False, True, True, False, True, True]
    assert is_2d_family("alibi", {"seq_len": 9}) is False
    assert is_2d_family("alibi", {"seq_len": 9, "window_size": (3, 3)}) is True
    assert is_2d_family("alibi", {}) is True


def test_family_options_fill_defaults_and_check_values():
    assert family_options("2d") == {}
    assert family_options("t5", {"num_buckets": 8, "max_distance": None}) == {"num_buckets": 8, "max_distance": 128}
    assert family_options("cpb", {"pretrained_window_size": 4}) == {
        "cpb_hidden_dim": 512, "pretrained_window_size": (4, 4), "cpb_coords": "log"
    }
    assert family_options("alibi", {"num_buckets": None}) == {"alibi_distance": "euclidean"}
    with pytest.raises(ValueError, match=r"options \['num_buckets'\] do not apply to bias_type='alibi'"):
        family_options("alibi", {"num_buckets": 8})
    with pytest.raises(ValueError, match="num_buckets must be an int >= 4, got 2"):
        family_options("t5", {"num_buckets": 2})
    with pytest.raises(ValueError, match="max_distance must be an int >= 3"):
        family_options("t5", {"num_buckets": 8, "max_distance": 2})
    with pytest.raises(ValueError, match="alibi_distance must be one of"):
        family_options("alibi", {"alibi_distance": "chebyshev"})


def test_check_rpb_kwargs():
    kw = {"bias_type": "t5", "num_buckets": 8}
    assert check_rpb_kwargs(kw) is kw
    with pytest.raises(TypeError, match="rpb_kwargs must be a dict, got list"):
        check_rpb_kwargs([])
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]; allowed: num_heads"):
        check_rpb_kwargs({"bogus": 1})
    with pytest.raises(ValueError, match="takes no family options"):
        check_rpb_kwargs({"bias_type": "2d", "alibi_distance": "manhattan"})
    with pytest.raises(ValueError, match=r"rpb_kwargs\['bias_type'\] must be one of"):
        check_rpb_kwargs({"bias_type": "rope"})


def test_resolve_without_grid_fills_heads_and_type_only():
    given = {"window_size": (3, 3)}
    out = resolve_bias_kwargs(given, num_heads=4)
    assert out == {"window_size": (3, 3), "num_heads": 4, "bias_type": "2d"}
    assert given == {"window_size": (3, 3)}  # not modified
    assert resolve_bias_kwargs(None, num_heads=2) == {"num_heads": 2, "bias_type": "2d"}
    with pytest.raises(ValueError, match=r"rpb_kwargs\['num_heads'\] \(3\) must equal the attention's num_heads \(4\)"):
        resolve_bias_kwargs({"num_heads": 3}, num_heads=4)
    with pytest.raises(TypeError, match="rpb_kwargs must be a dict or None, got str"):
        resolve_bias_kwargs("2d", num_heads=4)


@pytest.mark.parametrize(
    "rpb, class_token, expected",
    [
        (None, False, {"bias_type": "2d", "window_size": (2, 3)}),
        ({"bias_type": "cpb"}, False, {"bias_type": "cpb", "window_size": (2, 3)}),
        ({"bias_type": "2d_cls"}, True, {"bias_type": "2d_cls", "window_size": (2, 3)}),
        ({"bias_type": "1d"}, False, {"bias_type": "1d", "seq_len": 6}),
        ({"bias_type": "t5"}, True, {"bias_type": "t5", "seq_len": 7}),
        ({"bias_type": "alibi"}, False, {"bias_type": "alibi", "window_size": (2, 3)}),
        ({"bias_type": "alibi", "seq_len": 7}, True, {"bias_type": "alibi", "seq_len": 7}),
    ],
)
def test_resolve_with_grid_fills_the_size(rpb, class_token, expected):
    out = resolve_bias_kwargs(rpb, num_heads=2, grid=(2, 3), class_token=class_token)
    assert out == {"num_heads": 2, **expected}


@pytest.mark.parametrize(
    "rpb, class_token, match",
    [
        ({"bias_type": "2d_cls"}, False, "bias_type='2d_cls' needs class_token=True"),
        ({"bias_type": "2d"}, True, "a 2D bias cannot place the class token; use bias_type='2d_cls'"),
        ({"window_size": (3, 3)}, False, r"rpb_kwargs\['window_size'\] \(3, 3\) does not match the patch grid \(2, 3\)"),
        ({"bias_type": "1d", "seq_len": 6}, True, r"must equal the number of tokens \(7, class token included\)"),
        ({"bias_type": "t5", "seq_len": 5}, False, r"must equal the number of tokens \(6\)"),
    ],
)
def test_resolve_with_grid_refuses_what_disagrees(rpb, class_token, match):
    with pytest.raises(ValueError, match=match):
        resolve_bias_kwargs(rpb, num_heads=2, grid=(2, 3), class_token=class_token)


def test_resolved_kwargs_build_the_bias():
    for name in BIAS_TYPES:
        cls = FAMILIES[name].class_token or not FAMILIES[name].is_2d()
        kw = resolve_bias_kwargs({"bias_type": name}, num_heads=2, grid=(3, 3), class_token=cls)
        m = rp.RelativePositionBias(**kw)
        assert m().shape == (2, 9 + int(cls), 9 + int(cls))


def test_schemes_cover_every_family_and_name_themselves():
    assert list(SCHEMES)[:2] == ["none", "absolute"]
    assert [s for s in SCHEMES if s in FAMILIES] == list(BIAS_TYPES)
    assert [s for s in SCHEMES if s.startswith("absolute+")] == [f"absolute+{b}" for b in BIAS_TYPES]
    for name, settings in SCHEMES.items():
        assert set(settings) <= set(SCHEME_KEYS)
        assert scheme_name(settings["use_relative_position"], settings["position_embedding"],
                           settings.get("bias_type", "2d")) == name
    assert scheme_settings("2d_cls")["class_token"] is True  # BEiT's table needs the class token
    assert scheme_settings("2d")["class_token"] is False  # a 2D table cannot place one
    assert "class_token" not in scheme_settings("1d")  # a 1D family works either way
    assert scheme_name(True, "auto", "t5") == "t5" and scheme_name(False, "auto", "2d") == "absolute"
    with pytest.raises(ValueError, match="scheme"):
        scheme_settings("rope")


def test_rotary_schemes_and_position_parts():
    from relpos.families import POSITION_EMBEDDINGS, ROTARY_EMBEDDINGS, SCHEMES, position_parts, scheme_name

    assert dict(ROTARY_EMBEDDINGS) == {"rope_axial": "axial", "rope_mixed": "mixed"}
    rotary = [s for s in SCHEMES if s.startswith("rope_")]
    assert rotary[:4] == ["rope_axial", "rope_mixed", "rope_axial+absolute", "rope_mixed+absolute"]
    assert len(rotary) == 4 + 4 * len(BIAS_TYPES)  # each rotary embedding alone and with every family
    assert dict(SCHEMES["rope_mixed"]) == {"use_relative_position": False, "position_embedding": "rope_mixed"}
    assert SCHEMES["rope_axial+absolute+2d_cls"]["class_token"] is True
    assert scheme_name(True, "rope_mixed+absolute", "2d") == "rope_mixed+absolute+2d"
    parts = {pe: position_parts(pe) for pe in POSITION_EMBEDDINGS}
    assert parts == {"auto": (None, True), "absolute": (None, True), "none": (None, False),
                     "rope_axial": ("axial", False), "rope_mixed": ("mixed", False),
                     "rope_axial+absolute": ("axial", True), "rope_mixed+absolute": ("mixed", True)}
    assert position_parts("auto", use_relative_position=True) == (None, False)
    with pytest.raises(ValueError, match="position_embedding must be one of .*rope_mixed.*got 'rope'"):
        position_parts("rope")
