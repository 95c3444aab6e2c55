"""Refreshes access tokens before they expire, on APScheduler's clock.

APScheduler is used as a timer and nothing more (its traps are in shared/LIBRARIES.md). Each
account's next refresh time ("expiry minus margin") lives in an in-memory heap, rebuilt from
SQLite in one read at every start (nothing depends on the scheduler's own persistence), and
a single APScheduler date job is armed for the earliest of them. One timer rather than one
job per account: with 10,000 accounts, 10,000 date jobs cost about a second at start-up and
11 MB (bench/results/scale-before.json). An hourly sweep catches anything a timer missed.
Timer bodies only put a message on a queue; the supervised ``run`` task does the refreshing,
through the registry's single-flight ``refresh``.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .clock import ClockLike
from .errors import NeedsReauth, TikTokError, TokenError
from .logs import fields
from .tokens import REFRESH_EXPIRY_WARNING, TokenRegistry, refresh_due

log = logging.getLogger(__name__)

SWEEP_EVERY = 3600.0
TIMER = "token-refresh"


class Refresher:
    def __init__(
        self,
        registry: TokenRegistry,
        scheduler: AsyncIOScheduler,
        clock: ClockLike,
        accounts: Iterable[str],
    ) -> None:
        self._registry = registry
        self._scheduler = scheduler
        self._clock = clock
        self.accounts = set(accounts)
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        self._send: MemoryObjectSendStream[str] = send
        self._receive: MemoryObjectReceiveStream[str] = receive
        self._warned: dict[str, float] = {}
        # Invariant: _due holds each scheduled account's one current refresh time; the heap
        # may also hold stale (time, account) pairs, recognised by disagreeing with _due.
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._armed: float | None = None
        registry.on_change = self.reschedule

    def _real_time(self, at: float) -> datetime:
        """The wall-clock moment at which simulated time ``at`` arrives."""
        wait = max(0.0, self._clock.real_seconds(at - self._clock.now()))
        return datetime.now(UTC) + timedelta(seconds=wait)

    def next_due(self) -> float | None:
        """The earliest refresh time scheduled (for status and tests)."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    async def start(self) -> None:
        """Rebuild every account's refresh time from the store in one read, and the sweep."""
        self._scheduler.add_job(
            self._enqueue_sweep,
            "interval",
            seconds=self._clock.real_seconds(SWEEP_EVERY),
            id="token-sweep",
            replace_existing=True,
        )
        timings = await self._registry.timings()
        for account_id in self.accounts:
            timing = timings.get(account_id)
            self._set_due(account_id, timing.due if timing else None)
        self._arm()

    def reschedule(self, account_id: str) -> None:
        """Called by the registry after every token write; the timer follows the store."""
        if account_id in self.accounts:
            self._send.send_nowait(f"schedule:{account_id}")

    async def reschedule_now(self, account_id: str) -> None:
        record = await self._registry.load(account_id)
        due = refresh_due(record, self._registry.margin) if record else None
        self._set_due(account_id, due if account_id in self.accounts else None)
        self._arm()

    def _set_due(self, account_id: str, due: float | None) -> None:
        if due is None:
            self._due.pop(account_id, None)
            return
        if self._due.get(account_id) != due:
            self._due[account_id] = due
            heapq.heappush(self._heap, (due, account_id))

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _arm(self) -> None:
        """Point the one timer at the earliest refresh time (or remove it: nothing is due)."""
        first = self.next_due()
        if first == self._armed:
            return
        if first is None:
            if self._scheduler.get_job(TIMER):
                self._scheduler.remove_job(TIMER)
        else:
            self._scheduler.add_job(
                self._fire, "date", run_date=self._real_time(first), id=TIMER, replace_existing=True
            )
        self._armed = first

    async def _fire(self) -> None:
        self._armed = None
        self._send.send_nowait("due:")

    async def _enqueue_sweep(self) -> None:
        self._send.send_nowait("sweep:")

    async def run(self) -> None:
        async with self._receive:
            async for message in self._receive:
                kind, _, account_id = message.partition(":")
                if kind == "schedule":
                    await self.reschedule_now(account_id)
                elif kind == "due":
                    await self._refresh_due()
                else:
                    await self.sweep()

    async def _refresh_due(self) -> None:
        """Every account whose time has come, earliest first; then re-arm the timer."""
        now = self._clock.now()
        while (first := self.next_due()) is not None and first <= now:
            _, account_id = heapq.heappop(self._heap)
            del self._due[account_id]
            await self.refresh_if_due(account_id)  # reschedules the account
        self._arm()

    async def refresh_if_due(self, account_id: str) -> None:
        if account_id not in self.accounts:
            return  # removed from the accounts file by a reload since its timer was set
        record = await self._registry.load(account_id)
        if record is None:
            return
        due = refresh_due(record, self._registry.margin)
        if due is None or due > self._clock.now():
            await self.reschedule_now(account_id)  # refreshed meanwhile, by a 401 say
            return
        try:
            await self._registry.refresh(account_id, stale=record.access_token)
        except (NeedsReauth, TokenError, TikTokError):
            pass  # recorded, logged and rescheduled (with a cooldown) by the registry
        await self.reschedule_now(account_id)

    async def sweep(self) -> None:
        """Refresh whatever a timer missed; warn days ahead of refresh tokens running out."""
        now = self._clock.now()
        timings = await self._registry.timings()
        for account_id in sorted(self.accounts):
            timing = timings.get(account_id)
            if timing is None:
                continue
            if timing.due is not None and timing.due <= now:
                await self.refresh_if_due(account_id)
            left = (timing.refresh_expires_at or math.inf) - now
            if (
                left < REFRESH_EXPIRY_WARNING
                and now - self._warned.get(account_id, -math.inf) > 86400
            ):
                self._warned[account_id] = now
                log.warning(
                    "the refresh token of %s expires in %.1f days; the creator must authorize "
                    "the app again before then",
                    account_id,
                    left / 86400,
                    extra=fields("token.refresh_expiring", account=account_id, seconds_left=left),
                )
