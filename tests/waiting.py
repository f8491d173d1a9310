"""Waiting until another thread or process reaches a state, for tests.

A test waits for the state it needs, never for a guessed length of time: on a loaded machine any
fixed sleep is sometimes too short. The timeout only bounds a hang; it is not what is tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL = 0.02  # seconds between looks: short against every state a test waits for


def until(what: str, condition: Callable[[], T | None], timeout: float) -> T:
    """The first true value of ``condition()``; fails naming ``what`` after ``timeout`` seconds.

    The one way tests wait: every module imports it from here."""
    end = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < end, f"not within {timeout:g} s: {what}"
        time.sleep(POLL)
    return value
