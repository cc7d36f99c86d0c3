"""What every browser test needs: a Streamlit server of its own, Debian's Chromium, and waits.

A test module gets the session's Chromium from the ``browser`` fixture (``conftest.py``) and a server
from :func:`streamlit_server` (a fresh ``streamlit run app.py`` in its own process group and runs root,
killed on exit). Pages come from :func:`new_page`, which records Streamlit's own files that failed or
never arrived (:class:`AssetWatch`), so a test can tell the browser's transport from the app.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from relpos import jobs
from support import kill_runs

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("RELPOS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def streamlit_server(tmp_path_factory):
    """A fresh ``streamlit run app.py`` in its own process group and runs root; killed on exit."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make chromium installs it)")
    pytest.importorskip("playwright.sync_api")
    runs_root = tmp_path_factory.mktemp("browser-runs")
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "wb")
    env = dict(os.environ, **{jobs.RUNS_ROOT_ENV: str(runs_root), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok" and proc.poll() is None:  # ours, not another's
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:  # e.g. the port was taken meanwhile
                log.flush()
                raise RuntimeError(f"server did not come up: {Path(log.name).read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"url": base, "runs_root": runs_root, "log": Path(log.name)}
    finally:
        kill_runs(runs_root)
        kill_group(proc)
        log.close()


@contextlib.contextmanager
def launch_browser() -> Iterator:
    """Headless Debian Chromium through Playwright (skips the test when either is missing)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make chromium installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class AssetWatch:
    """The page's own files (Streamlit's JavaScript chunks) that failed or are still loading.

    Streamlit loads each element's code on first use (about 100 chunks per fresh browser context): a
    chunk that never arrives leaves its elements undrawn (0 sidebar links when PageLink's chunk is
    lost, no picker when Selectbox's is), which is the browser's transport, not the app. Tests tell the
    two apart with this record.
    """

    def __init__(self, pg) -> None:
        self.pending: dict[str, float] = {}
        self.failed: list[str] = []
        self.external: list[str] = []  # requests to any other host (an offline lecture hall has none)
        pg.on("request", self._start)
        pg.on("requestfinished", self._end)
        pg.on("requestfailed", self._fail)
        pg.on("console", self._console)

    @staticmethod
    def _ours(url: str) -> bool:
        return "/static/" in url

    def _start(self, request) -> None:
        if self._ours(request.url):
            self.pending[request.url] = time.monotonic()
        if not request.url.startswith(("http://127.0.0.1:", "data:", "blob:", "about:")):
            self.external.append(request.url)

    def _end(self, request) -> None:
        self.pending.pop(request.url, None)

    def _fail(self, request) -> None:
        self.pending.pop(request.url, None)
        if self._ours(request.url):
            self.failed.append(f"{request.url} ({request.failure})")

    def _console(self, msg) -> None:
        if "dynamically imported module" in msg.text:
            self.failed.append(msg.text[:300])

    def problems(self, older_than_s: float = 5.0) -> list[str]:
        now = time.monotonic()
        stuck = [f"{url} still loading after {now - t0:.0f} s" for url, t0 in self.pending.items()
                 if now - t0 > older_than_s]
        return self.failed + stuck


def new_page(context, timeout_ms: int = 90_000):
    """A page of ``context`` with an :class:`AssetWatch` (``pg.assets``)."""
    pg = context.new_page()
    pg.set_default_timeout(timeout_ms)
    pg.assets = AssetWatch(pg)
    return pg


def wait_idle(pg, settle_ms: int = 400) -> None:
    """Wait until the page has a title and the script has finished (checked twice, so a rerun that
    just began is seen). The title first: before its first script run a page is 'notRunning' too."""
    pg.wait_for_selector("h1", timeout=120_000)
    for _ in range(2):
        pg.wait_for_timeout(settle_ms)
        pg.wait_for_selector(IDLE, timeout=120_000)


def assert_no_exception(pg, where: str) -> None:
    exceptions = pg.locator("[data-testid='stException']")
    assert exceptions.count() == 0, f"{where}: {exceptions.first.inner_text()[:2000]}"
    errors = pg.locator("[data-testid='stAlertContentError']")
    assert errors.count() == 0, f"{where}: {errors.first.inner_text()[:2000]}"


def wait_charts(pg, minimum: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    count = pg.locator(".js-plotly-plot").count()
    while count < minimum and time.monotonic() < deadline:
        pg.wait_for_timeout(250)
        count = pg.locator(".js-plotly-plot").count()
    return count


def shot(pg, name: str) -> Path:
    """Screenshot the whole page: Streamlit scrolls inside its own container, so grow the
    viewport to the content's height first (then restore it)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    size = pg.viewport_size
    height = pg.evaluate(
        "() => { const m = document.querySelector(\"[data-testid='stMainBlockContainer']\");"
        " return m ? m.scrollHeight + 120 : document.body.scrollHeight; }"
    )
    pg.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height), 6000))})
    pg.wait_for_timeout(600)  # let Plotly re-lay out
    pg.screenshot(path=str(path))
    pg.set_viewport_size(size)
    return path


def choose(pg, selectbox, option: str, exact: bool = True, attempts: int = 3) -> None:
    """Open ``selectbox`` (a locator of an ``stSelectbox``) and pick ``option``, then wait until idle.

    A rerun that lands between the click and the pick (a fragment polling, a slow first render)
    closes the list: open it again, up to ``attempts`` times, before failing.
    """
    item = pg.get_by_role("option", name=option, exact=exact)
    for attempt in range(attempts):
        selectbox.first.click()
        try:
            item.wait_for(state="visible", timeout=15_000)
            item.click(timeout=15_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: the list closed; open it again
            if attempt == attempts - 1:
                raise
            pg.keyboard.press("Escape")
            wait_idle(pg)
    wait_idle(pg)
