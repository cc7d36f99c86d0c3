"""The Experiments and Train pages in a real browser (Streamlit server + headless Debian Chromium).

A fresh server of its own (its own process group and runs root, both killed by the fixture's
finalizer, runs included; :func:`test_browser.streamlit_server`): the tiny sweep
(``configs/sweeps/tiny.yaml``, two one-epoch runs of the tiny preset, real trainers) is queued from
the Experiments page, and its leaderboard fills in by itself (the page polls while members train),
with no click after Queue. Then the Train page shows every position scheme and the finished runs.
Screenshots go to tests/artifacts/ (git-ignored), 1440 pixels wide.
"""

from __future__ import annotations

import time

import pytest

from browser_support import assert_no_exception, choose, new_page, shot, streamlit_server, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VIEWPORT = {"width": 1440, "height": 900}


@pytest.fixture
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory) as srv:
        yield srv


@pytest.fixture
def page(server, browser):
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield new_page(context)
    finally:
        context.close()


def wait_text(pg, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while pg.get_by_text(text).count() == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not shown after {timeout_s} s; see {shot(pg, 'experiments_timeout')}")
        pg.wait_for_timeout(500)


def settled_count(pg, test_id: str, timeout_s: float = 60) -> int:
    """How many elements with this test id the page shows once that number stops changing (1 s)."""
    deadline, last, since = time.monotonic() + timeout_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = pg.get_by_test_id(test_id).count()
        if count != last:
            last, since = count, time.monotonic()
        elif count and time.monotonic() - since >= 1.0:
            return count
        pg.wait_for_timeout(200)
    return last


def test_queue_a_small_sweep_and_watch_its_leaderboard_fill_in(server, page):
    page.goto(f"{server['url']}/experiments")
    wait_idle(page)
    assert_no_exception(page, "experiments")
    choose(page, page.get_by_test_id("stSelectbox").filter(has_text="Sweep file"), "configs/sweeps/tiny.yaml")
    runs = page.get_by_test_id("stMetric").filter(has_text="Runs").get_by_test_id("stMetricValue")
    assert runs.inner_text().strip() == "2"
    page.get_by_role("button", name="Queue 2 runs").click()
    wait_idle(page)
    assert_no_exception(page, "queued")
    # No more clicks: the results fragment polls until both members are done.
    wait_text(page, "2 of 2 runs done", 300)
    wait_idle(page)
    assert_no_exception(page, "done")
    bars = page.locator(".js-plotly-plot").first
    bars.scroll_into_view_if_needed()
    labels = bars.locator(".xtick text")  # each cell: its name, then mean ± std (n=seeds)
    texts = labels.all_text_contents()  # SVG text: no inner text
    assert len(texts) == 2 and all("(n=1)" in t for t in texts), texts
    assert page.locator(".js-plotly-plot").count() >= 2  # the bars and the curves
    sweep = next((server["runs_root"] / "sweeps").iterdir())
    assert (sweep / "summary.md").read_text().count("| 1 |") == 2  # both cells finished one seed
    shot(page, "8_experiments_tiny_sweep")
    # The Train page: every scheme as two choices, and the sweep's runs in the table.
    page.goto(f"{server['url']}/train")
    wait_idle(page)
    assert_no_exception(page, "train")
    assert page.get_by_text("model.scheme=2d", exact=True).count() == 1  # the tiny preset's scheme, named
    inputs = settled_count(page, "stNumberInput")  # the form's; 2d has no family option
    choose(page, page.get_by_test_id("stSelectbox").filter(has_text="Added to the attention logits"), "T5 buckets")
    assert settled_count(page, "stNumberInput") == inputs + 2  # t5's two options follow the choice
    shot(page, "4_train_schemes")
