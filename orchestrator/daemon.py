"""Wiring and lifecycle: the one place that builds the daemon out of its parts.

Start-up order matters: the store is opened and crash leftovers are settled before anything
talks to TikTok; tokens are imported; only then do the shards, the poller and the control
socket start, and only then is systemd told READY=1.

Signals only flip state. SIGHUP re-reads the accounts file (``reload``): new accounts start,
removed ones stop taking jobs (their jobs stay in the store), changed ones take their new
settings without touching other shards, and an invalid file changes nothing. SIGTERM/SIGINT
stop intake, let every shard finish the job in hand for up to ``drain_timeout`` seconds, then
cancel the rest; every write is a short shielded transaction, so cancellation at any await
leaves the store consistent and the next start resumes from its checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import fields as dataclass_fields
from dataclasses import replace
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
from .config import AccountSettings, Config, load_config
from .crypto import TokenCipher
from .errors import ConfigError, DaemonAlreadyRunning, TokenError
from .health import AccountBreaker, BreakerSnapshot, BreakerState
from .httpd import serve_control, serve_tcp
from .jobs import TERMINAL
from .limits import AccountBudgets, AppGuard, TokenBucket
from .logs import fields
from .metrics import Metrics
from .notify import Notifier
from .poller import Poller
from .refresher import Refresher
from .routing import Routing
from .shard import Shard
from .store import AccountState, Store
from .tiktok import TikTokClient
from .tokens import TokenRegistry
from .webhooks import WebhookReceiver

log = logging.getLogger(__name__)

# How often (wall seconds) systemd's STATUS= line and the retired-account counts are refreshed.
STATUS_EVERY = 10.0
# What a reload applies; other sections are read, compared and reported as needing a restart.
RELOADABLE = frozenset({"accounts", "path"})


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
    def __init__(
        self,
        config: Config,
        *,
        clock: ClockLike | None = None,
        notifier: Notifier | None = None,
        owns_process: bool = False,
    ) -> None:
        """``owns_process``: the daemon is the whole process (``orchestrator run``), so it may
        tune process-wide things such as the garbage collector."""
        self.config = config
        self._owns_process = owns_process
        self.notifier = notifier or Notifier()
        settings = config.daemon
        self.clock = clock or Clock(scale=settings.time_scale, epoch=settings.clock_epoch)
        self.started_at = time.time()
        self.shards: dict[str, Shard] = {}
        # Shards of accounts a reload removed, finishing the job they had in hand.
        self._retiring: dict[str, Shard] = {}
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
        self._client: TikTokClient | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._reload_lock = anyio.Lock()
        self.last_reload: dict[str, Any] | None = None
        self.retired: dict[str, int] = {}
        self.draining = False
        self._drain_timeout = config.daemon.drain_timeout
        self.metrics = Metrics(self)
        self.metrics_port: int | None = None

    def budgets(self, account_id: str) -> AccountBudgets:
        if account_id not in self._budgets:
            self._budgets[account_id] = AccountBudgets(self.clock)
        return self._budgets[account_id]

    def statistics(
        self, accounts: list[str] | None = None, *, troubled: bool = False
    ) -> dict[str, Any]:
        """The live half of the status API. ``accounts``: the shards described in full (None:
        every one; a full description costs about 7 us a shard, which 10,000 shards turn into
        a stalled loop). ``troubled``: also name every account whose shard needs an operator
        (paused, breaker not closed, daily cap spent), from a cheap look at each shard, and
        describe those shards too, so a status can pick whom to show without describing
        everyone."""
        if accounts is None:
            shards = self.shards
        else:
            shards = {a: s for a in accounts if (s := self.shards.get(a)) is not None}
        described = {a: s.statistics() for a, s in shards.items()}
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "shards": described,
            "alerts": self.alerts.listing() if self.alerts else [],
            "app_paused_until": self.guard.blocked_until(self.clock.now()),
            "app_paused_reason": self.guard.reason,
            "reload": self.last_reload,
            "retired": dict(self.retired),
            "draining": self.draining,
        }
        if troubled:
            now, closed = self.clock.now(), BreakerState.CLOSED
            found: dict[str, list[str]] = {}
            for account_id, shard in self.shards.items():
                paused, breaker = shard.paused, shard.breaker.state
                spent = shard.headroom(now) <= 0
                if paused or breaker is not closed or spent:
                    found[account_id] = [
                        why
                        for why, yes in (
                            ("paused", paused),
                            (f"breaker {breaker.value}", breaker is not closed),
                            ("daily cap spent", spent),
                        )
                        if yes
                    ]
            out["troubled"] = found
            for account_id in found.keys() - described.keys():
                described[account_id] = self.shards[account_id].statistics()
        return out

    def _verdict(self, account_id: str, failed: bool) -> None:
        self.error_rates.record(account_id, failed=failed, now=self.clock.now())

    async def _conditions(self) -> Conditions:
        assert self.store is not None
        store, now = self.store, self.clock.now()
        tokens = await store.token_expiries()  # states only: no token row is decoded
        return Conditions(
            open_breakers=tuple(
                a for a, s in self.shards.items() if s.breaker.state is not BreakerState.CLOSED
            ),
            reauth_accounts=tuple(
                account for account, state, _, _ in tokens if state in ("needs_reauth", "exhausted")
            ),
            uncertain_jobs=tuple(
                (j.id, j.account_id) for j in await store.list_jobs(state="uncertain", limit=100)
            ),
            stuck_jobs=tuple((j.id, j.account_id) for j in await store.stuck_posts(100)),
            error_rates=self.error_rates.snapshot(now),
            app_paused=self.guard.reason if self.guard.blocked_until(now) else None,
        )

    def request_stop(self, *, drain: bool = True) -> None:
        """Stop intake now; finish the jobs in hand (``drain``) within the bound, then exit."""
        if self.api is not None:
            self.api.accepting = False
        if not drain:
            self._drain_timeout = 0.0
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
                    on_response=self.metrics.observe_request,
                    limiter=TokenBucket(
                        self.config.tiktok.app_rate, self.config.tiktok.app_burst, self.clock
                    ),
                )
                self._client = client
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
        failed = await tokens.import_files(
            [(a.id, a.token_file) for a in self.config.accounts if a.token_file is not None]
        )
        for account_id, exc in failed.items():
            log.error(
                "%s: %s",
                account_id,
                exc.message,
                extra=fields("token.import_failed", account=account_id),
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
        saved = {s.account_id: s for s in await store.account_states()}
        for account in self.config.accounts:
            if account.enabled:
                self.shards[account.id] = await self._build_shard(account, saved.get(account.id))
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
            reload=self.reload,
        )
        for job in await store.list_jobs(state="uncertain", limit=1000):
            log.warning(
                "%s is still uncertain: it may have been posted; resolve it by hand",
                job.id,
                extra=fields("job.uncertain_pending", job=job.id, account=job.account_id),
            )
        await self._count_retired()
        async with anyio.create_task_group() as tg, self._timers() as scheduler:
            self._tg = tg
            self.refresher = Refresher(
                tokens, scheduler, self.clock, [a.id for a in self.config.accounts]
            )
            await self.refresher.start()
            tg.start_soon(self.refresher.run, name="refresher")
            await tg.start(serve_control, settings, self.api.handle)
            for shard in self.shards.values():
                tg.start_soon(shard.run, name=f"shard:{shard.account.id}")
            tg.start_soon(self._watchdog, name="watchdog")
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
            if self.config.metrics is not None:
                where = self.config.metrics
                self.metrics_port = await tg.start(
                    serve_tcp, where.host, where.port, self.metrics.handle
                )
                log.info(
                    "metrics on http://%s:%d/metrics",
                    where.host,
                    self.metrics_port,
                    extra=fields("metrics.listening", port=self.metrics_port),
                )
            log.info(
                "orchestrator %s ready: %d accounts, socket %s",
                __version__,
                len(self.shards),
                settings.socket_path,
                extra=fields("daemon.ready", accounts=len(self.shards), pid=os.getpid()),
            )
            # What start-up built lives as long as the daemon: out of the collector's reach.
            # At 10,000 accounts each full collection walked it again, 250-280 ms in which
            # the loop answered nothing (bench.scale, status p99).
            if self._owns_process:
                gc.collect()
                gc.freeze()
            task_status.started()
            self.notifier.ready(self._status_line())
            tg.start_soon(self._status_reporter, name="status")
            await self._stop.wait()
            await self._drain()
            tg.cancel_scope.cancel()
        log.info("stopped", extra=fields("daemon.stopped"))
        self.notifier.close()

    async def _build_shard(
        self, account: AccountSettings, saved: AccountState | None = None
    ) -> Shard:
        """``saved``: the account's stored state when the caller has read it already (a start
        reads every account's in one query); read here otherwise (a reload's new account)."""
        assert self.store is not None and self._client is not None and self.tokens is not None
        assert self.poller is not None
        settings = self.config.daemon
        if saved is None:
            saved = await self.store.account_state(account.id)
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
        return Shard(
            account,
            store=self.store,
            client=self._client,
            tokens=self.tokens,
            budgets=self.budgets(account.id),
            clock=self.clock,
            chunk_size=settings.upload_chunk_size,
            on_processing=self.poller.wake,
            breaker=breaker,
            guard=self.guard,
            on_verdict=self._verdict,
        )

    async def _start_shard(self, shard: Shard, previous: Shard | None) -> None:
        if previous is not None:
            # Removed and added back before its last job ended: one shard per account, always.
            await previous.stopped.wait()
        await shard.run()

    async def _retire(self, shard: Shard) -> None:
        await shard.stopped.wait()
        if self._retiring.get(shard.account.id) is shard:
            del self._retiring[shard.account.id]
        log.info(
            "%s no longer takes jobs (removed from the accounts file)",
            shard.account.id,
            extra=fields("account.retired", account=shard.account.id),
        )

    async def _import_token(self, account: AccountSettings) -> None:
        assert self.tokens is not None
        if account.token_file is None:
            return
        try:
            await self.tokens.import_file(account.id, account.token_file)
        except TokenError as exc:
            log.error(
                "%s: %s",
                account.id,
                exc.message,
                extra=fields("token.import_failed", account=account.id),
            )

    # -- stopping -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Intake is already closed. Every shard finishes the job in hand, within the bound;
        whatever is still running then is cancelled and resumes from its checkpoint."""
        self.draining = True
        busy = {a: s.current_job for a, s in self.shards.items() if s.current_job}
        self.notifier.stopping(f"draining {len(busy)} jobs in flight")
        log.info(
            "stopping: intake closed, %d jobs in flight get up to %.0f s to finish",
            len(busy),
            self._drain_timeout,
            extra=fields("daemon.stopping", in_flight=len(busy)),
        )
        running = [*self.shards.values(), *self._retiring.values()]
        for shard in running:
            shard.stop()
        with anyio.move_on_after(self._drain_timeout):
            for shard in running:
                await shard.stopped.wait()
        cut = {s.account.id: s.current_job for s in running if s.current_job}
        if cut:
            log.warning(
                "the drain bound passed with %d jobs still in flight; they resume from their "
                "checkpoints at the next start",
                len(cut),
                extra=fields("daemon.drain_cut", jobs=sorted(j for j in cut.values() if j)),
            )
        else:
            log.info("drained: no job in flight", extra=fields("daemon.drained"))

    # -- reporting to systemd -----------------------------------------------------------------

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself: if the loop stops turning, systemd notices."""
        interval = self.notifier.watchdog
        if interval is None:
            return
        while True:
            self.notifier.ping()
            await anyio.sleep(interval / 3)

    def _status_line(self) -> str:
        active = [s for s in self.shards.values() if not s.stopping]
        paused = sum(1 for s in active if s.paused)
        busy = sum(1 for s in active if s.current_job)
        open_breakers = sum(1 for s in active if s.breaker.state is not BreakerState.CLOSED)
        parts = [f"{len(active)} accounts ({busy} posting, {paused} paused"]
        parts[0] += f", {open_breakers} breakers open)" if open_breakers else ")"
        if self.retired:
            parts.append(f"{len(self.retired)} retired with jobs")
        if self.alerts is not None and (alerts := len(self.alerts.listing())):
            parts.append(f"{alerts} alerts")
        if self.last_reload is not None and not self.last_reload["ok"]:
            parts.append("last reload FAILED")
        return "; ".join(parts)

    async def _status_reporter(self) -> None:
        while True:
            await anyio.sleep(STATUS_EVERY)
            if self.retired:
                # Only retired accounts' counts move without a reload (their jobs finish or
                # are cancelled); with none, an idle daemon does not scan 100,000 jobs.
                await self._count_retired()
            self.notifier.status(self._status_line())

    async def _count_retired(self) -> None:
        """Accounts no longer in the file that still have jobs: reported, never deleted."""
        assert self.store is not None
        configured = {a.id for a in self.config.accounts if a.enabled}
        retired: dict[str, int] = {}
        for account_id, states in (await self.store.counts()).items():
            open_jobs = sum(n for state, n in states.items() if state not in TERMINAL)
            if account_id and account_id not in configured and open_jobs:
                retired[account_id] = open_jobs
        self.retired = retired

    # -- reload -------------------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Read the accounts file again and apply it; raises ConfigError and changes nothing
        when the new file is invalid."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                result = await self._apply(load_config(self.config.path))
            except ConfigError as exc:
                self.last_reload = {
                    "at": time.time(),
                    "ok": False,
                    "error": exc.message,
                    "added": [],
                    "removed": [],
                    "changed": [],
                    "restart_required": [],
                }
                log.error(
                    "reload refused, the running configuration stays: %s",
                    exc.message,
                    extra=fields("config.reload_failed"),
                )
                raise
            finally:
                self.notifier.ready(self._status_line())
            self.last_reload = result
            log.info(
                "reloaded %s: %d added, %d removed, %d changed",
                self.config.path,
                len(result["added"]),
                len(result["removed"]),
                len(result["changed"]),
                extra=fields(
                    "config.reloaded",
                    added=result["added"],
                    removed=result["removed"],
                    changed=result["changed"],
                    restart_required=result["restart_required"] or None,
                ),
            )
            return result

    async def _apply(self, new: Config) -> dict[str, Any]:
        assert self._tg is not None and self.refresher is not None
        old = self.config
        restart_required = sorted(
            f.name
            for f in dataclass_fields(Config)
            if f.init and f.name not in RELOADABLE and getattr(old, f.name) != getattr(new, f.name)
        )
        config = replace(old, accounts=new.accounts)
        before = {a.id: a for a in old.accounts if a.enabled}
        after = {a.id: a for a in config.accounts if a.enabled}
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(a for a in after.keys() & before.keys() if after[a] != before[a])

        self.config = config
        if self.api is not None:
            self.api.reconfigure(config)
        if self.routing is not None:
            self.routing.reconfigure(config)
        for account_id in removed:
            shard = self.shards.pop(account_id)
            shard.stop()  # it finishes the job in hand; the rest stays queued in the store
            self._retiring[account_id] = shard
            self._tg.start_soon(self._retire, shard)
            self.refresher.accounts.discard(account_id)
        for account_id in changed:
            shard = self.shards[account_id]
            shard.account = after[account_id]
            shard.wake()
        for account_id in added:
            account = after[account_id]
            await self._import_token(account)
            shard = await self._build_shard(account)
            self.shards[account_id] = shard
            self._tg.start_soon(self._start_shard, shard, self._retiring.get(account_id))
            self.refresher.accounts.add(account_id)
            await self.refresher.reschedule_now(account_id)
        await self._count_retired()
        return {
            "at": time.time(),
            "ok": True,
            "error": None,
            "added": added,
            "removed": removed,
            "changed": changed,
            "restart_required": restart_required,
            "retired": dict(self.retired),
        }

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
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info(
                    "received %s",
                    signal.Signals(signum).name,
                    extra=fields("daemon.signal", signal=signal.Signals(signum).name),
                )
                if signum == signal.SIGHUP:
                    with contextlib.suppress(ConfigError):  # logged and kept in status
                        await self.reload()
                else:
                    self.request_stop()
