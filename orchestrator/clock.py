"""The clock seam: every component asks it for ``now()`` and sleeps through it.

A ``Clock`` with ``scale=1`` is wall time. With ``scale=N`` it runs N times faster than wall
time from a shared ``epoch``, which is how the daemon and the sandbox agree on a compressed
day: both compute ``epoch + (time.time() - epoch) * scale`` from the same two numbers, so they
agree without talking to each other. Tests that need full control use ``ManualClock``.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class ClockLike(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch, in simulated time."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of simulated time."""
        ...

    def real_seconds(self, seconds: float) -> float:
        """How many wall-clock seconds ``seconds`` of simulated time take."""
        ...


class Clock:
    def __init__(self, *, scale: float = 1.0, epoch: float | None = None) -> None:
        if scale <= 0:
            raise ValueError("clock scale must be positive")
        self.scale = scale
        self.epoch = time.time() if epoch is None else epoch

    def now(self) -> float:
        real = time.time()
        return self.epoch + (real - self.epoch) * self.scale

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self.scale)

    def real_seconds(self, seconds: float) -> float:
        return seconds / self.scale


class ManualClock:
    """A clock that moves only when told to; ``sleep`` yields once and advances time."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()

    def real_seconds(self, seconds: float) -> float:
        return 0.0
