"""The waiting helpers the other tests rely on (tests/support.py)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support import settles


def test_settles_returns_once_reached_and_quiet() -> None:
    count = [0]
    threading.Timer(0.1, lambda: count.__setitem__(0, 3)).start()
    t0 = time.monotonic()
    settles(lambda: count[0], 3, quiet_s=0.2, timeout=5)
    assert 0.3 <= time.monotonic() - t0 < 2


def test_settles_fails_on_one_too_many_during_the_quiet_period() -> None:
    count = [2]
    threading.Timer(0.1, lambda: count.__setitem__(0, 3)).start()
    with pytest.raises(AssertionError, match=r"arrivals: 3, expected it to stay 2"):
        settles(lambda: count[0], 2, quiet_s=1.0, timeout=5, what="arrivals")


def test_settles_fails_at_once_past_the_count_and_on_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="5, expected it to stay 4"):
        settles(lambda: 5, 4, quiet_s=10, timeout=10)
    assert time.monotonic() - t0 < 1
    with pytest.raises(AssertionError, match=r"n: 1 after 0.2s, expected 4"):
        settles(lambda: 1, 4, quiet_s=0.1, timeout=0.2, what="n")
    settles(lambda: (1, "a"), (1, "a"), quiet_s=0.05, timeout=1)  # any value, by equality
