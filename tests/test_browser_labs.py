"""The Labs page in a real browser (headless Debian Chromium through Playwright).

A fresh server (its own process group and runs root, stopped by the fixture) serves fabricated lab
sweeps (tests/lab_support.py): each lab is opened from the page's lab picker and waited on until the
script is idle; its figures must be drawn by Plotly (traces in the DOM), its results table must show
the csv's mean ± std, and no exception or error may appear. Screenshots go to tests/artifacts/
(git-ignored).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab_support import TINY_REGIONS, fabricate_lab_sweep, long_rows, transfer_rows
from browser_support import assert_no_exception, new_page, shot, streamlit_server, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SEEDS = (0, 1, 2)
# (lab label, figures at least, a cell of its table: mean ± sample std of the rows below)
LABS = (("Size transfer", 2, "0.613 ± 0.172"), ("Position shift", 2, "0.537 ± 0.016"), ("Ablation", 1, "0.360 ± 0.010"))


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    with streamlit_server(tmp_path_factory) as srv:
        root = Path(srv["runs_root"])
        fabricate_lab_sweep(root, "transfer", {"kind": "transfer", "grids": [6, 8, 12]}, ["2d", "cpb", "absolute"],
                            SEEDS, transfer_rows({
                                "2d/bicubic": {6: [0.99, 0.98, 0.97], 8: [0.94, 0.9, 0.8], 12: [0.805, 0.564, 0.471]},
                                "cpb/log": {6: [1.0, 1.0, 1.0], 8: [0.99, 0.98, 0.99], 12: [0.99, 0.982, 0.988]},
                                "absolute": {6: [0.986, 0.98, 0.97], 8: [0.971, 0.96, 0.95], 12: [0.953, 0.9, 0.93]}}))
        fabricate_lab_sweep(root, "shift", {"kind": "shift", "num_samples": 64}, ["2d", "absolute"], SEEDS,
                            long_rows({"2d": {"region=seen": [0.986, 0.886, 0.986], "region=unseen": [0.822, 0.741, 0.921]},
                                       "absolute": {"region=seen": [0.994, 0.998, 0.99],
                                                    "region=unseen": [0.525, 0.531, 0.555]}}),
                            overrides=TINY_REGIONS, checkpoints=True)
        fabricate_lab_sweep(root, "ablation", {"kind": "ablation"}, ["2d", "none"], SEEDS,
                            long_rows({"2d": {"val/relational": [1.0, 1.0, 0.996]},
                                       "none": {"val/relational": [0.36, 0.35, 0.37]}}))
        yield srv


def test_every_lab_draws_its_figures_and_table(lab_server, browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = new_page(context)
    try:
        pg.goto(f"{lab_server['url']}/labs")
        wait_idle(pg)
        assert_no_exception(pg, "/labs")
        assert pg.locator("h1").first.inner_text().strip() == "Labs"
        for label, figures, cell in LABS:
            pg.locator("[data-testid='stRadio']").filter(has_text="Lab").get_by_text(label, exact=True).click()
            wait_idle(pg)
            assert_no_exception(pg, label)
            plots = pg.locator(".js-plotly-plot")
            plots.nth(figures - 1).wait_for(timeout=60_000)
            assert plots.count() >= figures, label
            for k in range(figures):  # drawn by Plotly: every figure has trace groups in its SVG
                assert plots.nth(k).locator("g.trace, g.imagelayer image, g.heatmaplayer image").count() > 0, (label, k)
            grid = pg.get_by_test_id("stDataFrame").first
            grid.wait_for()
            assert pg.get_by_text("Conclusion").count() >= 1, label
            assert pg.locator("[data-testid='stDataFrame']").filter(has_text=cell).count() >= 1 or \
                pg.get_by_text(cell, exact=True).count() >= 1, (label, cell, shot(pg, f"9_labs_missing_{label}"))
            shot(pg, f"9_labs_{label.replace(' ', '_').lower()}")
    finally:
        context.close()
