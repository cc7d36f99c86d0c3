"""Shared pytest set-up: quiet, deterministic, and nothing left running."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from relpos import jobs
from browser_support import launch_browser
from support import kill_runs

# The app's support package (app_support/, beside app.py) is not installed: the server finds it
# because app.py's folder is on sys.path; tests that import it or run a page on its own need the same.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Two cores: keep torch from oversubscribing them when tests spawn subprocesses.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("RELPOS_TEST", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (bit-exact comparisons across processes, less contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    """A temporary runs root (``RELPOS_RUNS_ROOT``); every run started under it is killed afterwards."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv(jobs.RUNS_ROOT_ENV, str(root))
    yield root
    kill_runs(root)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every browser test (each test opens its own contexts)."""
    with launch_browser() as b:
        yield b
