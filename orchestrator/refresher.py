"""Refreshes access tokens before they expire, on APScheduler's clock.

APScheduler is used as a timer and nothing more (its traps are in shared/LIBRARIES.md): one
in-memory date job per account at "expiry minus margin", rebuilt from SQLite at every start
(nothing depends on the scheduler's own persistence), and an hourly sweep that catches
anything a job missed. Job bodies only put an account id on a queue; the supervised
``run`` task does the refreshing, through the registry's single-flight ``refresh``.
"""

from __future__ import annotations

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
        registry.on_change = self.reschedule

    def _real_time(self, at: float) -> datetime:
        """The wall-clock moment at which simulated time ``at`` arrives."""
        wait = max(0.0, self._clock.real_seconds(at - self._clock.now()))
        return datetime.now(UTC) + timedelta(seconds=wait)

    async def start(self) -> None:
        """Rebuild every account's timer from the store, and the hourly sweep."""
        self._scheduler.add_job(
            self._enqueue_sweep,
            "interval",
            seconds=self._clock.real_seconds(SWEEP_EVERY),
            id="token-sweep",
            replace_existing=True,
        )
        for account_id in sorted(self.accounts):
            await self.reschedule_now(account_id)

    def reschedule(self, account_id: str) -> None:
        """Called by the registry after every token write; the timer follows the store."""
        if account_id in self.accounts:
            self._send.send_nowait(f"schedule:{account_id}")

    async def reschedule_now(self, account_id: str) -> None:
        record = await self._registry.load(account_id)
        job_id = f"refresh:{account_id}"
        due = refresh_due(record, self._registry.margin) if record else None
        if due is None:
            if self._scheduler.get_job(job_id):
                self._scheduler.remove_job(job_id)
            return
        self._scheduler.add_job(
            self._enqueue,
            "date",
            run_date=self._real_time(due),
            args=[account_id],
            id=job_id,
            replace_existing=True,
        )

    async def _enqueue(self, account_id: str) -> None:
        self._send.send_nowait(f"refresh:{account_id}")

    async def _enqueue_sweep(self) -> None:
        self._send.send_nowait("sweep:")

    async def run(self) -> None:
        async with self._receive:
            async for message in self._receive:
                kind, _, account_id = message.partition(":")
                if kind == "schedule":
                    await self.reschedule_now(account_id)
                elif kind == "refresh":
                    await self.refresh_if_due(account_id)
                else:
                    await self.sweep()

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
        for account_id in sorted(self.accounts):
            record = await self._registry.load(account_id)
            if record is None:
                continue
            due = refresh_due(record, self._registry.margin)
            if due is not None and due <= now:
                await self.refresh_if_due(account_id)
            left = (record.refresh_expires_at or math.inf) - now
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
