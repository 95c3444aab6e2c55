"""Wiring and lifecycle: the one place that builds the daemon out of its parts.

Start-up order matters: the store is opened and crash leftovers are settled before anything
talks to TikTok; tokens are imported; only then do the shards, the poller and the control
socket start. Signal handlers only flip state: SIGTERM/SIGINT stop intake and cancel the
task group; every write is a short shielded transaction, so cancellation at any await
leaves the store consistent and the next start resumes from its checkpoints.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from . import __version__
from .alerts import AlertManager, Conditions, ErrorRates
from .api import ControlApi
from .clock import Clock, ClockLike
from .config import Config
from .crypto import TokenCipher
from .errors import DaemonAlreadyRunning, TokenError
from .health import AccountBreaker, BreakerSnapshot, BreakerState
from .httpd import serve_tcp, serve_unix
from .limits import AccountBudgets, AppGuard, TokenBucket
from .logs import fields
from .poller import Poller
from .refresher import Refresher
from .routing import Routing
from .shard import Shard
from .store import Store
from .tiktok import TikTokClient
from .tokens import TokenRegistry
from .webhooks import WebhookReceiver

log = logging.getLogger(__name__)


@contextmanager
def hold_state_lock(state_dir: Path) -> Iterator[None]:
    """One daemon per state directory, for the daemon's whole life.

    A second daemon on the same database would "recover" the first one's in-flight jobs
    (and could post them twice), so it must be refused before it opens the store.
    """
    path = state_dir / "daemon.lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DaemonAlreadyRunning(
                f"another daemon (pid {holder}) is using the state directory {state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class Daemon:
    def __init__(self, config: Config, *, clock: ClockLike | None = None) -> None:
        self.config = config
        settings = config.daemon
        self.clock = clock or Clock(scale=settings.time_scale, epoch=settings.clock_epoch)
        self.started_at = time.time()
        self.shards: dict[str, Shard] = {}
        self._budgets: dict[str, AccountBudgets] = {}
        self.api: ControlApi | None = None
        self.poller: Poller | None = None
        self._stop = anyio.Event()
        self._sweep_due = anyio.Event()
        self.store: Store | None = None
        self.webhook_port: int | None = None
        self.tokens: TokenRegistry | None = None
        self.refresher: Refresher | None = None
        self.routing: Routing | None = None
        self.guard = AppGuard()
        self.error_rates = ErrorRates()
        self.alerts: AlertManager | None = None
        self._http: httpx.AsyncClient | None = None

    def budgets(self, account_id: str) -> AccountBudgets:
        if account_id not in self._budgets:
            self._budgets[account_id] = AccountBudgets(self.clock)
        return self._budgets[account_id]

    def statistics(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "shards": {a: s.statistics() for a, s in self.shards.items()},
            "alerts": self.alerts.listing() if self.alerts else [],
            "app_paused_until": self.guard.blocked_until(self.clock.now()),
            "app_paused_reason": self.guard.reason,
        }

    def _verdict(self, account_id: str, failed: bool) -> None:
        self.error_rates.record(account_id, failed=failed, now=self.clock.now())

    async def _conditions(self) -> Conditions:
        assert self.store is not None
        store, now = self.store, self.clock.now()
        tokens = await store.all_tokens()
        return Conditions(
            open_breakers=tuple(
                a for a, s in self.shards.items() if s.breaker.state is not BreakerState.CLOSED
            ),
            reauth_accounts=tuple(
                t.account_id for t in tokens if t.state in ("needs_reauth", "exhausted")
            ),
            uncertain_jobs=tuple(
                (j.id, j.account_id) for j in await store.list_jobs(state="uncertain", limit=100)
            ),
            stuck_jobs=tuple((j.id, j.account_id) for j in await store.stuck_posts(100)),
            error_rates=self.error_rates.snapshot(now),
            app_paused=self.guard.reason if self.guard.blocked_until(now) else None,
        )

    def request_stop(self) -> None:
        if self.api is not None:
            self.api.accepting = False
        self._stop.set()

    def _submitted(self, account_id: str) -> None:
        shard = self.shards.get(account_id)
        if shard is not None:
            shard.wake()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        settings = self.config.daemon
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = self.config.tiktok.client_secret  # read now: a missing secret fails at start
        secret()
        with hold_state_lock(settings.state_dir):
            await self._run_locked(task_status)

    async def _run_locked(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        settings = self.config.daemon
        secret = self.config.tiktok.client_secret
        store = self.store = await Store.open(settings.state_dir / "orchestrator.db")
        try:
            moved = await store.recover(self.clock.now())
            if any(moved.values()):
                log.warning(
                    "settled jobs left mid-flight by the last run: %s",
                    moved,
                    extra=fields("daemon.recovered", **moved),
                )
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
            async with httpx.AsyncClient(limits=limits, timeout=settings.request_timeout) as http:
                self._http = http
                client = TikTokClient(
                    http,
                    base_url=self.config.tiktok.base_url,
                    client_key=self.config.tiktok.client_key,
                    client_secret=secret,
                    timeout=settings.request_timeout,
                    limiter=TokenBucket(
                        self.config.tiktok.app_rate, self.config.tiktok.app_burst, self.clock
                    ),
                )
                await self._serve(store, client, task_status)
        finally:
            await store.close()

    async def _serve(
        self, store: Store, client: TikTokClient, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        settings = self.config.daemon
        tokens = self.tokens = TokenRegistry(
            store,
            client,
            self.clock,
            cipher=self._cipher(),
            margin=self.config.tiktok.refresh_margin,
        )
        sealed = await tokens.seal_plaintext()
        if sealed:
            log.info(
                "encrypted the stored tokens of %d accounts",
                sealed,
                extra=fields("token.sealed", accounts=sealed),
            )
        await tokens.recover_lost()
        for account in self.config.accounts:
            if account.token_file is None:
                continue
            try:
                await tokens.import_file(account.id, account.token_file)
            except TokenError as exc:
                log.error(
                    "%s: %s",
                    account.id,
                    exc.message,
                    extra=fields("token.import_failed", account=account.id),
                )
        self.poller = Poller(
            store=store,
            client=client,
            tokens=tokens,
            budgets=self.budgets,
            clock=self.clock,
            interval=settings.poll_interval,
            on_requeue=self._submitted,
            stuck_after=settings.stuck_after,
            review_stuck_after=settings.review_stuck_after,
        )
        for account in self.config.accounts:
            if account.enabled:
                saved = await store.account_state(account.id)
                breaker = AccountBreaker(
                    account.id,
                    clock=self.clock,
                    fail_max=settings.breaker_failures,
                    reset_timeout=settings.breaker_reset,
                    restore=BreakerSnapshot(
                        state=BreakerState(saved.breaker_state),
                        fail_count=saved.breaker_failures,
                        opened_at=saved.breaker_opened_at,
                    ),
                )
                self.shards[account.id] = Shard(
                    account,
                    store=store,
                    client=client,
                    tokens=tokens,
                    budgets=self.budgets(account.id),
                    clock=self.clock,
                    chunk_size=settings.upload_chunk_size,
                    on_processing=self.poller.wake,
                    breaker=breaker,
                    guard=self.guard,
                    on_verdict=self._verdict,
                )
        self.routing = Routing(
            store=store,
            config=self.config,
            shards=self.shards,
            clock=self.clock,
            wake=self._submitted,
        )
        self.api = ControlApi(
            store=store,
            config=self.config,
            clock=self.clock,
            spool_dir=settings.state_dir / "spool",
            on_submitted=self._submitted,
            live=self.statistics,
            tokens=tokens,
            routing=self.routing,
        )
        for job in await store.list_jobs(state="uncertain", limit=1000):
            log.warning(
                "%s is still uncertain: it may have been posted; resolve it by hand",
                job.id,
                extra=fields("job.uncertain_pending", job=job.id, account=job.account_id),
            )
        async with anyio.create_task_group() as tg, self._timers() as scheduler:
            self.refresher = Refresher(
                tokens, scheduler, self.clock, [a.id for a in self.config.accounts]
            )
            await self.refresher.start()
            tg.start_soon(self.refresher.run, name="refresher")
            await tg.start(serve_unix, settings.socket_path, self.api.handle)
            for shard in self.shards.values():
                tg.start_soon(shard.run, name=f"shard:{shard.account.id}")
            tg.start_soon(self.poller.run, name="poller")
            tg.start_soon(self.routing.run, name="routing")
            self.alerts = AlertManager(
                clock=self.clock,
                snapshot=self._conditions,
                webhook_url=self.config.alerts.webhook_url,
                webhook_secret=self.config.alerts.webhook_secret,
                http=self._http,
            )
            tg.start_soon(self.alerts.run, name="alerts")
            tg.start_soon(self._sweeper, name="sweeper")
            tg.start_soon(self._signals, name="signals")
            if self.config.webhooks is not None:
                hooks = self.config.webhooks
                receiver = WebhookReceiver(
                    store=store,
                    clock=self.clock,
                    secret=self.config.tiktok.client_secret,
                    path=hooks.path,
                    tolerance=hooks.tolerance,
                    poll_now=self.poller.wake,
                )
                self.webhook_port = await tg.start(
                    serve_tcp, hooks.host, hooks.port, receiver.handle
                )
                log.info(
                    "webhooks on %s:%d%s",
                    hooks.host,
                    self.webhook_port,
                    hooks.path,
                    extra=fields("webhook.listening", port=self.webhook_port),
                )
            log.info(
                "orchestrator %s ready: %d accounts, socket %s",
                __version__,
                len(self.shards),
                settings.socket_path,
                extra=fields("daemon.ready", accounts=len(self.shards), pid=os.getpid()),
            )
            task_status.started()
            await self._stop.wait()
            log.info("stopping", extra=fields("daemon.stopping"))
            tg.cancel_scope.cancel()
        settings.socket_path.unlink(missing_ok=True)
        log.info("stopped", extra=fields("daemon.stopped"))

    def _cipher(self) -> TokenCipher | None:
        tiktok = self.config.tiktok
        if tiktok.token_key_file is not None:
            return TokenCipher.from_file(tiktok.token_key_file)
        if tiktok.token_key_credential is not None:
            return TokenCipher.from_credential(tiktok.token_key_credential)
        return None

    @asynccontextmanager
    async def _timers(self) -> AsyncIterator[AsyncIOScheduler]:
        """APScheduler as a timer only: its jobs just wake supervised tasks, and everything it
        would otherwise have to remember lives in SQLite (shared/LIBRARIES.md)."""
        scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        scheduler.add_job(
            self._request_sweep,
            "interval",
            seconds=self.clock.real_seconds(self.config.daemon.reconcile_interval),
            id="reconcile",
        )
        scheduler.start()
        try:
            yield scheduler
        finally:
            scheduler.shutdown(wait=False)

    async def _request_sweep(self) -> None:
        self._sweep_due.set()

    async def _sweeper(self) -> None:
        assert self.poller is not None
        while True:
            await self._sweep_due.wait()
            self._sweep_due = anyio.Event()
            await self.poller.sweep()

    async def _signals(self) -> None:
        # The daemon's one signal owner for its whole life (see shared/LIBRARIES.md).
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info(
                    "received %s",
                    signal.Signals(signum).name,
                    extra=fields("daemon.signal", signal=signal.Signals(signum).name),
                )
                self.request_stop()
