"""Waiting on a condition instead of sleeping and hoping.

A test that sleeps a fixed time and then asserts passes on a quiet machine and
fails on a loaded one; one that waits for the condition it needs is as fast as
the machine allows and fails only when the condition never comes.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "the condition") -> T:
    """Poll `condition` until it returns something truthy, and return that; after
    `timeout` seconds (a bound on a hang, not a measurement) raise AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.01)
