"""The lecture features in a real browser (Streamlit server + headless Debian Chromium, Playwright).

Clicks on real pixels: a patch of a query map and of the input image becomes the query, a cell of the
index matrix the (query, key) pair, a panel of the small multiples the sidebar's head; the shown
"query (y, x)" text and the sliders follow, and "Clear selection" forgets the choice. Presenter mode
(``?present=1``) at a 1280x720 projector and at 150 % zoom (853x480 CSS pixels at scale 1.5): the
sidebar collapsed, nothing wider than the window, no chart title cut, the first chart's top above the
fold. A deep link opens a prepared view; "Next →" carries the state. Screenshots go to
tests/artifacts/ and /tmp/shots/ (look at them).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from browser_support import ARTIFACTS, assert_no_exception, new_page, streamlit_server, wait_charts, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = Path("/tmp/shots")
PROJECTOR = {"width": 1280, "height": 720}
ZOOMED = {"width": 853, "height": 480}  # 1280x720 at 150 % zoom, in CSS pixels


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory) as srv:
        yield srv


def open_page(browser, url: str, viewport: dict = PROJECTOR, scale: float = 1.0):
    context = browser.new_context(viewport=viewport, device_scale_factor=scale)
    pg = new_page(context, timeout_ms=120_000)
    pg.goto(url)
    wait_idle(pg, settle_ms=800)
    return context, pg


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"lecture_{name}.png"
    pg.screenshot(path=str(path))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)


def chart(pg, key: str):
    """The Plotly chart drawn with Streamlit key ``key`` (its container has class ``st-key-<key>``)."""
    loc = pg.locator(f".st-key-{key} .js-plotly-plot").first
    loc.wait_for(timeout=120_000)
    loc.scroll_into_view_if_needed()
    pg.wait_for_timeout(500)
    return loc


def click_cell(pg, key: str, row: int, col: int, rows: int, cols: int, panel: int = 0) -> None:
    """Click the centre of cell (row, col) of panel ``panel`` (rows from the top) of chart ``key``."""
    sub = "xy" if panel == 0 else f"x{panel + 1}y{panel + 1}"
    area = chart(pg, key).locator(f".draglayer .{sub} .nsewdrag").first
    box = area.bounding_box()
    x = box["x"] + (col + 0.5) / cols * box["width"]
    y = box["y"] + (row + 0.5) / rows * box["height"]
    pg.mouse.move(x - 3, y - 3)
    pg.mouse.move(x, y, steps=3)
    pg.mouse.click(x, y)
    wait_idle(pg, settle_ms=800)


def selected(pg) -> str:
    return pg.get_by_text(re.compile(r"^Selected query")).first.inner_text()


def sidebar_right(pg) -> float:
    """Where the sidebar ends on screen (0 or less: collapsed)."""
    box = pg.locator("[data-testid='stSidebar']").bounding_box()
    return box["x"] + box["width"]


def slider_value(pg, label: str) -> str:
    """The value a slider shows over its thumb."""
    box = pg.get_by_test_id("stSlider").filter(has_text=label)
    return box.get_by_test_id("stSliderThumbValue").inner_text()


def test_clicks_choose_the_query_and_the_pair(server, browser):
    context, pg = open_page(browser, f"{server['url']}/position_indices")
    try:
        assert "query (y, x) = (1, 1) · token 4" in selected(pg)  # the 3x3 window's centre
        click_cell(pg, "pi_query_map", 0, 0, 3, 3)  # a patch of the query's map becomes the query
        assert "query (y, x) = (0, 0) · token 0" in selected(pg)
        assert slider_value(pg, "Query token i") == "0"
        click_cell(pg, "pi_matrix", 7, 2, 9, 9)  # index matrix cell (i, j) = (7, 2)
        text = selected(pg)
        assert "query (y, x) = (2, 1) · token 7" in text and "key (y, x) = (0, 2) · token 2" in text, text
        assert slider_value(pg, "Query token i") == "7" and slider_value(pg, "Key token j") == "2"
        assert "query=2%2C1" in pg.url or "query=2,1" in pg.url, pg.url
        shot(pg, "indices_clicked")
        pg.get_by_role("button", name=re.compile("Clear selection")).click()
        wait_idle(pg, settle_ms=800)
        assert "query (y, x) = (1, 1) · token 4" in selected(pg)
        assert_no_exception(pg, "indices after clicks")
    finally:
        context.close()


def test_clicks_choose_a_head_and_a_patch_of_the_image(server, browser):
    context, pg = open_page(browser, f"{server['url']}/attention_maps")
    try:
        assert wait_charts(pg, 4) >= 4
        heads = chart(pg, "am_heads").locator(".draglayer .nsewdrag").count()
        assert heads >= 3, heads
        click_cell(pg, "am_heads", 1, 1, 4, 4, panel=2)  # anywhere on head 2's panel
        box = pg.locator("[data-testid='stSidebar']").get_by_role("combobox", name="Head", exact=True)
        assert box.input_value() == "2"
        assert pg.get_by_text("head 2 · selected").count() >= 1
        ticks = pg.get_by_test_id("stSlider").filter(has_text="Query patch").get_by_test_id("stSliderTickBar")
        side = int(round((int(ticks.inner_text().split()[-1]) + 1) ** 0.5))  # the preset's square grid
        click_cell(pg, "am_input_image", 0, 1, side, side)  # a patch of the input picture
        assert "query (y, x) = (0, 1) · token 1" in selected(pg)
        click_cell(pg, "am_query_with", side - 1, 0, side, side)  # a patch of the map
        assert f"query (y, x) = ({side - 1}, 0) · token {(side - 1) * side}" in selected(pg)
        assert_no_exception(pg, "attention maps after clicks")
        shot(pg, "attention_clicked")
    finally:
        context.close()


LAYOUT_JS = """() => {
  const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
  const wide = [];
  for (const e of document.querySelectorAll('[data-testid="stMain"] *')) {
    if (e.closest('svg') || e.closest('.katex-mathml')) continue;  // clipped by their SVG; MathML is hidden
    const r = e.getBoundingClientRect(), s = getComputedStyle(e);
    if (r.width > 0 && r.right > vw + 1 && s.visibility !== 'hidden' && s.display !== 'none')
      wide.push(e.tagName + ' ' + (e.getAttribute('data-testid') || ''));
  }
  const cut = [];
  for (const svg of document.querySelectorAll('.js-plotly-plot .main-svg:first-of-type')) {
    const box = svg.getBoundingClientRect();
    for (const t of svg.parentNode.querySelectorAll('.gtitle, .annotation-text, .xtitle, .ytitle')) {
      const r = t.getBoundingClientRect();
      const out = r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1;
      if (r.width > 0 && out) cut.push(t.textContent.slice(0, 60));
    }
  }
  const sidebar = document.querySelector('[data-testid="stSidebar"]');
  const first = document.querySelector('.js-plotly-plot');
  return {vw, vh, scrollW: document.documentElement.scrollWidth, wide: wide.slice(0, 8), cut,
          sidebarRight: sidebar ? sidebar.getBoundingClientRect().right : 0,
          firstChartTop: first ? first.getBoundingClientRect().top : null};
}"""


@pytest.mark.parametrize("size", ["projector", "zoomed"])
@pytest.mark.parametrize("path", ["bias_explorer", "attention_maps", "position_indices"])
def test_presenter_mode_fits_a_projector(server, browser, path, size):
    viewport, scale = (PROJECTOR, 1.0) if size == "projector" else (ZOOMED, 1.5)
    context, pg = open_page(browser, f"{server['url']}/{path}?present=1", viewport, scale)
    try:
        assert wait_charts(pg, 1) >= 1
        pg.wait_for_timeout(1500)  # Plotly lays out the charts
        assert_no_exception(pg, f"{path} presenting")
        info = pg.evaluate(LAYOUT_JS)
        shot(pg, f"presenter_{path}_{size}")
        assert info["sidebarRight"] <= 1, info  # collapsed
        assert info["scrollW"] <= info["vw"] and not info["wide"], info  # nothing wider than the window
        assert not info["cut"], info  # no chart title or label outside its chart
        assert info["firstChartTop"] is not None and info["firstChartTop"] < info["vh"] - 80, info
        assert pg.get_by_text("Presenter mode").count() >= 1  # the switch, in the collapsed sidebar
    finally:
        context.close()


def test_a_deep_link_opens_the_prepared_view(server, browser):
    url = f"{server['url']}/bias_explorer?present=1&query=1,5&alpha=3.5&step=2"
    context, pg = open_page(browser, url)
    try:
        assert "query (y, x) = (1, 5) · token 12" in selected(pg)
        assert slider_value(pg, "Strength α") == "3.50"
        assert slider_value(pg, "Query token") == "12"
        assert pg.get_by_text("relative position bias is a small table").count() == 0  # prose hidden
        assert sidebar_right(pg) <= 1  # collapsed
        assert re.search(r"query=1(%2C|,)5", pg.url), pg.url
        assert "alpha=3.5" in pg.url and "present=1" in pg.url, pg.url
        assert_no_exception(pg, "deep link")
        shot(pg, "deep_link")
    finally:
        context.close()


def test_the_switch_turns_presenter_mode_on(server, browser):
    context, pg = open_page(browser, f"{server['url']}/position_indices")
    try:
        assert sidebar_right(pg) > 100 and pg.get_by_text("row light up the window").count() == 1
        pg.get_by_text("Presenter mode", exact=True).click()
        wait_idle(pg, settle_ms=1500)
        assert sidebar_right(pg) <= 1, "the sidebar closes"
        assert pg.get_by_text("row light up the window").count() == 0  # the prose goes
        assert "present=1" in pg.url, pg.url
    finally:
        context.close()


def test_next_carries_the_state_along_the_lesson(server, browser):
    context, pg = open_page(browser, f"{server['url']}/position_indices?query=0,1")
    try:
        assert "query (y, x) = (0, 1) · token 1" in selected(pg)
        pg.get_by_role("link", name="Next →").click()
        wait_idle(pg, settle_ms=800)
        assert "/bias_explorer" in pg.url and ("query=0%2C1" in pg.url or "query=0,1" in pg.url), pg.url
        assert "query (y, x) = (0, 1) · token 1" in selected(pg)
        assert pg.get_by_role("link", name="← Back").count() == 1
        assert_no_exception(pg, "after Next")
    finally:
        context.close()
