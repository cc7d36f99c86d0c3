"""Shared pytest set-up: quiet, deterministic, and nothing left running."""

from __future__ import annotations

import os

import pytest
import torch

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
