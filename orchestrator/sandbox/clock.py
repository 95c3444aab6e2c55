"""The sandbox's simulated clock.

TikTok's rules are measured in minutes, hours and days (rate windows, token lifetimes, daily
caps). A test or a demo cannot wait that long, so the sandbox runs a compressed clock:

    now() = epoch + (time.time() - epoch) * time_scale + offset

``epoch`` and ``time_scale`` are plain numbers, so another process (the daemon under test) can
compute the same simulated time from them without asking. ``offset`` is moved only by
``advance()``, which tests use to jump over a processing delay or an expiry deterministically
instead of sleeping; a process sharing only epoch and scale will not see those jumps.
"""

from __future__ import annotations

import threading
import time


class SimClock:
    """Compressed wall time plus a monotonically growing manual offset."""

    def __init__(self, *, time_scale: float, epoch: float | None) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, not {time_scale!r}")
        self.time_scale = float(time_scale)
        self.epoch = time.time() if epoch is None else float(epoch)
        self._offset = 0.0
        # Its own lock: advance() may race with handler threads reading now().
        self._lock = threading.Lock()

    def now(self) -> float:
        """Simulated seconds since the Unix epoch."""
        with self._lock:
            offset = self._offset
        return self.epoch + (time.time() - self.epoch) * self.time_scale + offset

    def advance(self, seconds: float) -> float:
        """Jump simulated time forward by ``seconds``; returns the new ``now()``.

        Time never goes backwards: token expiries and rate windows assume it.
        """
        if not seconds >= 0:
            raise ValueError(
                f"can only advance by a non-negative number of seconds, not {seconds!r}"
            )
        with self._lock:
            self._offset += float(seconds)
        return self.now()

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset

    def snapshot(self) -> dict[str, float]:
        return {
            "now": self.now(),
            "time_scale": self.time_scale,
            "epoch": self.epoch,
            "offset": self.offset,
        }
