"""Argument checks shared by every public constructor and function.

Each check raises a ``TypeError`` or ``ValueError`` whose message names the argument, the value
received and what is allowed, so a bad config or widget value fails at the call that made it,
never deep inside torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer in ``[minimum, maximum]``."""
    # bool is an int subclass; True as a size is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        if not isinstance(value, np.integer):
            raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
        value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {allowed}, got {value!r}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite float within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if not isinstance(value, (np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
        value = float(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    lo_ok = minimum is None or (value >= minimum if min_inclusive else value > minimum)
    hi_ok = maximum is None or (value <= maximum if max_inclusive else value < maximum)
    if not (lo_ok and hi_ok):
        lo = "-inf" if minimum is None else f"{minimum}"
        hi = "inf" if maximum is None else f"{maximum}"
        lb = "[" if min_inclusive and minimum is not None else "("
        rb = "]" if max_inclusive and maximum is not None else ")"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r} ({type(value).__name__})")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_window_size(name: str, value: Any, *, maximum: int | None = None) -> tuple[int, int]:
    """A (height, width) pair of positive ints; a bare int means a square window."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(
            f"{name} must be a (height, width) pair of positive ints, got {value!r}"
        )
    h = check_int(f"{name}[0] (height)", value[0], maximum=maximum)
    w = check_int(f"{name}[1] (width)", value[1], maximum=maximum)
    return (h, w)
