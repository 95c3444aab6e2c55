"""Rate limiters: the daemon throttles itself before TikTok has to.

``SlidingWindow`` admits at most ``limit`` events in any ``window`` seconds of simulated time,
which is how TikTok counts its per-token budgets (shared/TIKTOK_API.md §3). ``delay`` is pure
arithmetic over the recorded times; ``acquire`` sleeps through the clock until a slot frees.
"""

from __future__ import annotations

from collections import deque

import anyio

from .clock import ClockLike

# Per user access token, per endpoint (shared/TIKTOK_API.md §3).
TIKTOK_BUDGETS = {"init": 6, "creator_info": 20, "status": 30}


class SlidingWindow:
    def __init__(self, limit: int, window: float, clock: ClockLike) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = anyio.Lock()

    def delay(self, now: float) -> float:
        """Seconds until one more event fits in the window (0 when it fits now)."""
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.window - now

    async def acquire(self) -> None:
        async with self._lock:
            while (wait := self.delay(self._clock.now())) > 0:
                # A hair past the edge, so the oldest event has surely left the window.
                await self._clock.sleep(wait + 0.001)
            self._times.append(self._clock.now())

    def used(self, now: float) -> int:
        self.delay(now)
        return len(self._times)


class AccountBudgets:
    """One account's per-endpoint windows, shared by its shard and the poller."""

    def __init__(self, clock: ClockLike, *, margin: float = 1.0) -> None:
        # TikTok's clock and ours may disagree by a little: keep a one-request margin.
        self._windows = {
            name: SlidingWindow(max(1, int(limit - margin)), 60.0, clock)
            for name, limit in TIKTOK_BUDGETS.items()
        }

    async def acquire(self, endpoint: str) -> None:
        await self._windows[endpoint].acquire()
