"""The Clock port over the real clock."""

from __future__ import annotations

import time


class SystemClock:
    """Clock backed by ``time.monotonic`` and ``time.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
