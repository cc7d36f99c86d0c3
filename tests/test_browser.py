"""The app in a real browser: Streamlit server + headless Debian Chromium through Playwright.

The app runs in Streamlit's pages/ mode. A fresh server (its own, started for that test) is asked
for every page by URL first, before anyone opens the home page: each shows its title, the
navigation and the model picker, never "Page not found". Then one server for the module (its own
process group, killed by the fixture's finalizer; runs in a temporary runs root): every page is
opened from the sidebar's navigation, waited on until the script is idle, checked for exceptions
and for its charts, and screenshotted under tests/artifacts/ (git-ignored); a model, layer and head
chosen in the sidebar of one page are still chosen on every other page.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import pytest

from app_support.frame import NAV
from relpos.explore import MAX_HEADS, MAX_WINDOW_SIDE

from browser_support import (ROOT, assert_no_exception, choose, new_page, shot, streamlit_server,
                             wait_charts, wait_idle)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NAV_LINK = "[data-testid='stSidebar'] [data-testid='stPageLink-NavLink']"
# Minimum number of Plotly charts of each page at its defaults (by file name).
MIN_CHARTS = {"1_position_indices.py": 2, "2_bias_explorer.py": 7, "3_attention_maps.py": 3}
# Page title (its label in the navigation) -> (url path, minimum number of charts). The URL is the
# file name without its number prefix (Streamlit's pages/ mode).
PAGES = {
    item.label: (Path(item.path).stem.split("_", 1)[1], MIN_CHARTS.get(Path(item.path).name, 0))
    for item in NAV[1:]
}


@pytest.fixture
def fresh_server(tmp_path_factory):
    """A server no browser has talked to yet (Streamlit decides its multipage mode on the first request)."""
    with streamlit_server(tmp_path_factory) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory) as srv:
        yield srv


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield new_page(context)
    finally:
        context.close()


def open_from_sidebar(pg, title: str) -> None:
    pg.locator(NAV_LINK, has_text=title).first.click()
    wait_idle(pg)


def assert_frame(pg, title: str, where: str) -> None:
    """The page's title, the whole navigation and the model picker are shown, and no dialog is open."""
    assert pg.locator("[data-testid='stDialog']").count() == 0, f"{where}: a dialog (e.g. 'Page not found') is open"
    assert pg.get_by_text("Page not found").count() == 0, where
    assert pg.locator("h1").first.inner_text().strip() == title, where
    # The sidebar is drawn by the same script run but may reach the browser a moment after the main
    # column (seen on a loaded machine: 0 links right after the run went idle): wait for it.
    if _wait_frame(pg):
        return
    assets = pg.assets if hasattr(pg, "assets") else None
    # Streamlit's own code for the sidebar's elements still on its way (a loaded machine): wait for it.
    deadline = time.monotonic() + 60
    while assets is not None and assets.pending and not _frame_drawn(pg) and time.monotonic() < deadline:
        pg.wait_for_timeout(250)
    if _frame_drawn(pg):
        return
    lost = assets.problems() if assets is not None else []
    if assets is not None and assets.failed:  # the browser lost that code: say so, and load the page again
        warnings.warn(f"{where}: the sidebar was incomplete because the browser lost Streamlit's own "
                      f"files {lost}; reloading once", stacklevel=2)
        pg.reload()
        wait_idle(pg)
        if _wait_frame(pg):
            return
    pytest.fail(f"{where}: the sidebar lacks its frame. {_describe(pg, where)}; Streamlit's files lost or "
                f"late: {lost}")


def _wait_frame(pg, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _frame_drawn(pg) and time.monotonic() < deadline:
        pg.wait_for_timeout(250)
    return _frame_drawn(pg)


def _frame_drawn(pg) -> bool:
    return (pg.locator(NAV_LINK).count() == len(NAV)
            and pg.get_by_test_id("stSelectbox").filter(has_text="Current model").count() == 1)


def _describe(pg, where: str) -> str:
    """What the page shows (for a failure message): links, picker, script state, sidebar text; and a
    screenshot under tests/artifacts/."""
    name = "failed_" + (where.strip("/").replace("/", "_") or "home")
    with contextlib.suppress(Exception):
        shot(pg, name)
    sidebar = pg.locator("[data-testid='stSidebar']")
    text = sidebar.first.inner_text()[:1500] if sidebar.count() else "(no sidebar)"
    state = pg.locator("[data-testid='stApp']").first.get_attribute("data-test-script-state")
    return (f"links {pg.locator(NAV_LINK).count()} of {len(NAV)}, model picker "
            f"{pg.get_by_test_id('stSelectbox').filter(has_text='Current model').count()}, script {state}, "
            f"url {pg.url}; sidebar: {text!r}; screenshot tests/artifacts/{name}.png")


def sidebar_choice(pg, label: str) -> str:
    """The value a sidebar selectbox shows (its combobox input's value)."""
    return pg.locator("[data-testid='stSidebar']").get_by_role("combobox", name=label, exact=True).input_value()


def choose_in_sidebar(pg, label: str, option: str) -> None:
    choose(pg, pg.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").filter(has_text=label), option)


def set_number(pg, label: str, value: int) -> None:
    box = pg.get_by_label(label, exact=True)
    try:
        box.fill(str(value), timeout=30_000)
    except Exception:
        shot(pg, f"failed_set_{label.replace(' ', '_')}")
        raise
    box.press("Enter")
    wait_idle(pg)


def test_deep_links_first_on_a_fresh_server(fresh_server, browser):
    """The very first requests to a fresh server are page URLs (home last): each gets its page with
    the frame (title, navigation, model picker), never "Page not found", and asks no other host
    (a lecture hall may be offline)."""
    for title, (path, charts) in [*PAGES.items(), ("Relative position bias, seen and trained", ("", 0))]:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            pg = new_page(context)
            pg.goto(f"{fresh_server['url']}/{path}")
            wait_idle(pg)
            assert_no_exception(pg, f"/{path}")
            assert_frame(pg, title, f"/{path}")
            assert pg.url.rstrip("/").endswith(f"/{path}".rstrip("/")), pg.url
            assert wait_charts(pg, charts) >= charts, title
            assert not pg.assets.external, f"/{path} asked another host (offline it fails): {pg.assets.external}"
        finally:
            context.close()


def test_sidebar_choices_survive_the_navigation(server, page):
    """Model, layer and head chosen in the sidebar of one page are kept on every page reached by the
    sidebar's links (and back)."""
    page.goto(f"{server['url']}/position_indices")
    wait_idle(page)
    choose_in_sidebar(page, "Current model", "Fresh model · digits preset")
    choose_in_sidebar(page, "Layer", "1")
    choose_in_sidebar(page, "Head", "2")
    for title in [*PAGES, "Home", "Position indices"]:
        open_from_sidebar(page, title)
        assert_no_exception(page, title)
        shown = [sidebar_choice(page, label) for label in ("Current model", "Layer", "Head")]
        assert shown == ["Fresh model · digits preset", "1", "2"], (title, shown)
    open_from_sidebar(page, "Attention maps")
    assert page.get_by_text("layer 1 · head 2").count() >= 1  # the page uses the kept choice


def test_every_page_from_the_sidebar(server, page):
    page.goto(server["url"])
    wait_idle(page)
    assert_no_exception(page, "home")
    assert_frame(page, "Relative position bias, seen and trained", "home")
    shot(page, "0_home")
    for i, (title, (path, charts)) in enumerate(PAGES.items(), start=1):
        open_from_sidebar(page, title)
        assert_no_exception(page, title)
        assert_frame(page, title, title)
        assert page.url.endswith(f"/{path}"), page.url
        assert wait_charts(page, charts) >= charts, title
        shot(page, f"{i}_{path}")


def test_hover_decodes_a_cell(server, page):
    page.goto(f"{server['url']}/position_indices")
    wait_idle(page)
    plot = page.locator(".js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    area = plot.locator(".nsewdrag").first  # the heatmap's plot area
    box = area.bounding_box()
    for fx, fy in ((0.1, 0.9), (0.15, 0.85), (0.5, 0.5)):  # mouse moves must cross cells
        page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy, steps=5)
    hover = page.locator(".hoverlayer .hovertext").first
    hover.wait_for(timeout=10_000)
    text = hover.text_content() or ""
    assert "offset" in text and "table row" in text and "query i" in text, text


def test_largest_window(server, page):
    page.goto(f"{server['url']}/position_indices")
    wait_idle(page)
    set_number(page, "Window height h", MAX_WINDOW_SIDE)
    set_number(page, "Window width w", MAX_WINDOW_SIDE)
    assert_no_exception(page, "indices 32x32")
    assert wait_charts(page, 2) >= 2
    shot(page, "1_indices_largest")
    open_from_sidebar(page, "Bias explorer")
    set_number(page, "Window height h", MAX_WINDOW_SIDE)
    set_number(page, "Window width w", MAX_WINDOW_SIDE)
    set_number(page, "Heads", MAX_HEADS)
    assert_no_exception(page, "bias 32x32x16")
    assert wait_charts(page, PAGES["Bias explorer"][1]) >= PAGES["Bias explorer"][1]
    shot(page, "2_bias_largest")
    # The largest model a preset offers: vit_b16 (12 layers x 12 heads on a 14x14 grid).
    if (ROOT / "configs" / "vit_b16.yaml").is_file():
        choose(page, page.get_by_test_id("stSelectbox").filter(has_text="Current model"),
               "Fresh model · vit_b16 preset", exact=False)
        open_from_sidebar(page, "Attention maps")
        assert_no_exception(page, "attention vit_b16")
        assert wait_charts(page, 4) >= 4
        shot(page, "3_attention_largest")


def test_start_a_run_and_watch_its_curve(server, page):
    page.goto(f"{server['url']}/train")
    wait_idle(page)
    choose(page, page.get_by_test_id("stSelectbox").filter(has_text="Preset"), "tiny")
    page.get_by_test_id("stBaseButton-secondaryFormSubmit").or_(
        page.get_by_test_id("stBaseButton-primaryFormSubmit")
    ).first.click()
    wait_idle(page)
    # The fragment refreshes on its own: the curve appears without any click.
    deadline = time.monotonic() + 240
    while page.locator(".js-plotly-plot").count() == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    assert page.locator(".js-plotly-plot").count() >= 1, shot(page, "4_train_no_curve")
    assert_no_exception(page, "train running")
    deadline = time.monotonic() + 240
    while page.get_by_text("done · epoch").count() == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    wait_idle(page)
    assert page.get_by_text("done · epoch").count() >= 1
    shot(page, "4_train_done")
    # The finished run's checkpoint now shows on the checkpoints page.
    open_from_sidebar(page, "Checkpoints & compare")
    assert_no_exception(page, "checkpoints after a run")
    assert wait_charts(page, 1) >= 1
    shot(page, "5_checkpoints_after_run")
