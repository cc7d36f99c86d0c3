"""app_support.interact with streamlit.testing.v1.AppTest: shared selections, deep links, presenter mode.

A chosen query patch is one plain session key shared by every page (the sliders follow it, clamped to
each page's grid, and write it back); a link's parameters fill the state and the state is written back
to the URL; clicks (the charts' on_select callbacks) set the query, the (query, key) pair and the head;
presenter mode hides the prose and puts the controls a lecture moves in one row; "Next →" carries the
shared state. Runs go to a temporary runs root.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest
import torch

from app_support import interact, links
from app_support.state import SEL_HEAD, SEL_HEADS, SEL_LAYER, SEL_SOURCE

st_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = st_testing.AppTest

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180
INDICES, BIAS = "pages/1_position_indices.py", "pages/2_bias_explorer.py"
ATTENTION = "pages/3_attention_maps.py"


def page(path: str, **params: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / path), default_timeout=TIMEOUT)
    at.query_params.update(params)
    return at


def assert_clean(at: AppTest, where: str) -> None:
    assert not at.exception, f"{where}: {[e.value for e in at.exception]}"
    assert not at.error, f"{where}: {[e.value for e in at.error]}"


def slider(at: AppTest, key: str) -> int:
    return at.slider(key=key).value


def selected_text(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Selected**"))


def test_a_link_fills_the_state_the_sliders_and_writes_itself_back(runs_root):
    at = page(INDICES, query="0,2", key="1,1", window="4x4").run()
    assert_clean(at, "indices from a link")
    assert at.session_state[interact.SEL_QUERY] == (0, 2) and at.session_state[interact.SEL_KEY] == (1, 1)
    assert (at.number_input(key="pi_h").value, at.number_input(key="pi_w").value) == (4, 4)
    assert slider(at, "pi_query") == 2 and slider(at, "pi_key") == 1 * 4 + 1
    assert "query (y, x) = (0, 2) · token 2" in selected_text(at)
    assert "key (y, x) = (1, 1) · token 5" in selected_text(at)
    assert at.query_params == {"query": "0,2", "key": "1,1", "window": "4x4"}
    at = page(INDICES, query="a,b", window="99x2").run()  # nonsense is left out, a window is clamped
    assert_clean(at, "a bad link")
    assert interact.SEL_QUERY not in at.session_state or at.session_state[interact.SEL_QUERY] is None
    assert (at.number_input(key="pi_h").value, at.number_input(key="pi_w").value) == (32, 2)
    assert [t.value for t in at.toast] and "query" in at.toast[0].value


def test_a_link_names_the_model_by_preset_and_layer_head(runs_root):
    at = page(ATTENTION, model="digits", layer="1", head="2").run()
    assert_clean(at, "attention maps from a link")
    assert at.session_state[SEL_SOURCE] == "preset:digits"
    assert (at.session_state[SEL_LAYER], at.session_state[SEL_HEAD]) == (1, 2)
    assert at.query_params == {"model": "digits", "layer": "1", "head": "2"}
    at = page(ATTENTION, model="no-such-run").run()
    assert_clean(at, "an unknown model")
    assert at.session_state[SEL_SOURCE] == "preset:default"  # the first choice, and a toast says why
    assert "model" in at.toast[0].value and "model" not in at.query_params


def test_the_query_is_shared_by_the_pages_and_clamped_to_each_grid(runs_root):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.session_state[interact.SEL_QUERY] = (5, 6)
    at.switch_page(INDICES).run()  # a 3x3 window: the nearest patch is (2, 2)
    assert_clean(at, "indices")
    assert slider(at, "pi_query") == 8 and at.session_state[interact.SEL_QUERY] == (5, 6)
    defaults = {"pi_kind": at.radio(key="pi_kind").value, "pi_h": at.number_input(key="pi_h").value}
    at.switch_page(BIAS).run()  # 7x7: the choice itself, token 5 * 7 + 6
    assert_clean(at, "bias explorer")
    assert slider(at, "be_query") == 41
    bias_keys = ("be_kind", "be_preset", "be_alpha", "be_heads", "be_step", "be_h")
    defaults |= {k: at.session_state[k] for k in bias_keys}
    at.switch_page(ATTENTION).run()
    assert_clean(at, "attention maps")
    w = int(at.slider(key="am_query").max + 1) ** 0.5  # the default preset's square grid
    assert slider(at, "am_query") == min(5, w - 1) * w + min(6, w - 1)
    defaults |= {k: at.session_state[k] for k in ("am_table", "am_alpha", "am_sample")}
    # The link parameters leave out exactly these widgets' defaults.
    params = {k: p for title in links.PAGE_PARAMS for p in links.PAGE_PARAMS[title] for k in p.keys}
    for key, value in defaults.items():
        default = params[key].default
        assert (value if params[key].kind != "window" else (value, value)) == (
            default if params[key].kind != "window" else tuple(default)), key


def test_a_slider_writes_the_query_back_and_clear_forgets_it(runs_root):
    at = page(INDICES).run()
    assert slider(at, "pi_query") == 4  # the centre of 3x3, nothing chosen yet
    at.slider(key="pi_query").set_value(1).run()
    assert at.session_state[interact.SEL_QUERY] == (0, 1)
    assert at.query_params == {"query": "0,1"}
    at.slider(key="pi_key").set_value(7).run()
    assert at.session_state[interact.SEL_KEY] == (2, 1)
    at.button(key="pi_clear").click().run()
    assert at.session_state[interact.SEL_QUERY] is None and at.session_state[interact.SEL_KEY] is None
    assert slider(at, "pi_query") == 4 and slider(at, "pi_key") == 0
    assert at.query_params == {}


def test_presenter_mode_hides_the_prose_and_keeps_one_row_of_controls(runs_root):
    plain = page(BIAS).run()
    assert any("relative position bias is a small table" in m.value for m in plain.markdown)
    at = page(BIAS, present="1").run()
    assert_clean(at, "presenter")
    assert at.session_state[interact.PRESENT] is True and at.toggle(key=interact.W_PRESENT).value is True
    assert not any("relative position bias is a small table" in m.value for m in at.markdown)
    assert not at.get("latex") and not any("What it does" in s.value for s in at.subheader)
    # The four controls a lecture moves, side by side in the first row; the rest in "More settings".
    row = at.columns[:5]
    assert [len(c.get("slider")) + len(c.get("selectbox")) for c in row[:4]] == [1, 1, 1, 1]
    assert any("More settings" in str(p.proto) for p in at.get("popover"))
    assert at.query_params == {"present": "1"}
    at.toggle(key=interact.W_PRESENT).set_value(False).run()
    assert any("relative position bias is a small table" in m.value for m in at.markdown)
    assert at.query_params == {}


def test_clicks_set_the_query_the_pair_and_the_head(runs_root):
    def script():
        import streamlit as st

        from app_support import interact
        from app_support.state import SEL_HEAD, SEL_HEADS

        def event(*cells):
            return {"selection": {"points": [{"customdata": [float(v) for v in c] + [0.5]} for c in cells]}}

        st.session_state[SEL_HEADS] = 4
        st.session_state["fake_query"] = event((0, 2, 5))
        interact.on_query("fake_query")()
        st.session_state["fake_pair"] = event((0, 7, 2))
        interact.on_pair("fake_pair", 3)()
        st.session_state["fake_head"] = event((3, 0, 0))
        interact.on_head("fake_head", "be_head")()
        st.session_state["fake_far_head"] = event((9, 0, 0))  # beyond the sidebar model's 4 heads
        interact.on_head("fake_far_head", "other_head")()
        st.session_state["fake_nothing"] = {"selection": {"points": []}}
        interact.on_query("fake_nothing")()  # an emptied selection changes nothing
        st.session_state["fake_bar"] = {"selection": {"points": [{"curve_number": 0, "x": 4, "y": 0.1}]}}
        interact.on_query("fake_bar")()

    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert_clean(at, "callbacks")
    # The index matrix's (row 7, column 2) on a 3-wide grid: query (2, 1), key (0, 2); then the bar over
    # key 4 of a sequence (a row): query (0, 4).
    assert at.session_state[interact.SEL_KEY] == (0, 2)
    assert at.session_state[interact.SEL_QUERY] == (0, 4)
    assert at.session_state[SEL_HEAD] == 3 and at.session_state["be_head"] == 3
    assert at.session_state["other_head"] == 9 and at.session_state[SEL_HEADS] == 4


def test_next_carries_the_shared_state(runs_root):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.session_state[interact.SEL_QUERY] = (1, 2)
    at.session_state[interact.PRESENT] = True
    at.switch_page(INDICES).run()
    assert_clean(at, "indices")
    nav = {el.proto.label: el.proto for el in at.get("page_link")
             if el.proto.label in ("← Back", "Next →")}
    assert set(nav) == {"Next →"}  # the first lesson page has no "← Back"
    assert nav["Next →"].page.endswith("bias_explorer") or "bias_explorer" in nav["Next →"].page
    assert parse_qs(nav["Next →"].query_string) == {"present": ["1"], "query": ["1,2"]}
    assert links.LESSON[0] == INDICES and links.LESSON[-1] == "pages/9_labs.py"
