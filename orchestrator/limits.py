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


class TokenBucket:
    """The app-wide limit: ``rate`` requests a second on average, bursts of up to ``burst``.

    TikTok's per-token budgets do not stop a thousand accounts from hitting the app's
    infrastructure at once; this spreads every call of the app over time (5/s by default).
    """

    def __init__(self, rate: float, burst: float, clock: ClockLike) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock.now()
        self._lock = anyio.Lock()

    def delay(self, now: float) -> float:
        """Seconds until one request may go (0 when it may go now); refills as a side effect."""
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        # A hair of tolerance: float refills land at 0.9999… and would ask for a 1e-17 s wait
        # that a clock at 1.8e9 s cannot even represent.
        return 0.0 if self._tokens >= 1 - 1e-9 else (1 - self._tokens) / self.rate

    async def acquire(self) -> None:
        async with self._lock:
            while (wait := self.delay(self._clock.now())) > 0:
                await self._clock.sleep(wait)
            self._tokens -= 1


class AccountBudgets:
    """One account's per-endpoint windows, shared by its shard and the poller."""

    def __init__(self, clock: ClockLike, *, margin: float = 1.0) -> None:
        self._clock = clock
        self._margin = margin
        # Made on first use: of 10,000 accounts most are idle, and three windows with their
        # locks are about 3 KB an account (bench/results/scale-before.json).
        self._windows: dict[str, SlidingWindow] = {}

    def _window(self, endpoint: str) -> SlidingWindow:
        window = self._windows.get(endpoint)
        if window is None:
            # TikTok's clock and ours may disagree by a little: keep a one-request margin.
            limit = max(1, int(TIKTOK_BUDGETS[endpoint] - self._margin))
            window = self._windows[endpoint] = SlidingWindow(limit, 60.0, self._clock)
        return window

    async def acquire(self, endpoint: str) -> None:
        await self._window(endpoint).acquire()


class AppGuard:
    """Pauses every account of the app together when TikTok says the app itself is at its
    limit (``reached_active_user_cap``), or when several accounts are told to slow down at
    once (429s across accounts mean the app, not one token, is over a limit), instead of
    letting each account trip in turn."""

    DEFAULT_PAUSE = 3600.0
    # 429s from this many different accounts within RATE_WINDOW pause the app RATE_PAUSE.
    RATE_ACCOUNTS, RATE_WINDOW, RATE_PAUSE = 3, 60.0, 60.0

    def __init__(self) -> None:
        self.until: float | None = None
        self.reason: str | None = None
        self._limited: dict[str, float] = {}

    def rate_limited(self, account_id: str, now: float, hint: float | None) -> float | None:
        """Note a 429 for an account; returns the pause if it makes the 429s app-wide."""
        self._limited[account_id] = now
        self._limited = {a: t for a, t in self._limited.items() if t > now - self.RATE_WINDOW}
        if len(self._limited) < self.RATE_ACCOUNTS:
            return None
        self._limited.clear()
        return self.trip(
            now, reason="rate_limit_exceeded on several accounts", hint=hint or self.RATE_PAUSE
        )

    def trip(self, now: float, *, reason: str, hint: float | None) -> float:
        """Pause until the hint (or an hour) has passed; returns when posting may resume."""
        until = now + (hint if hint is not None else self.DEFAULT_PAUSE)
        self.until = max(self.until or 0.0, until)
        self.reason = reason
        return self.until

    def blocked_until(self, now: float) -> float | None:
        if self.until is not None and self.until <= now:
            self.until, self.reason = None, None
        return self.until
