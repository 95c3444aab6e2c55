"""Prometheus metrics at ``GET /metrics``: what an operator graphs and alerts on.

A scrape reads one ``Snapshot`` (a few grouped queries on the store's reader connection, the
live breakers and the app guard), then renders it in a worker thread: prometheus-client's
collectors are synchronous, and a blocking SQLite read or rendering 10,000 accounts on the
event loop would stall every shard for as long. The snapshot is frozen, so the thread reads
it without locks. TikTok API latency is the one thing measured in-process: ``TikTokClient``
reports every request through ``observe_request``.

Per-account series exist for configured accounts only, and the queue depths only for
(account, lane, state) groups that hold jobs: 10,000 accounts times every lane and state
would be mostly zeros. An absent queue series means zero.

Nothing here reads a token: the store's metric queries select times and states only, and
label values that come from TikTok (error codes) are checked before they are published.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from . import __version__
from .caps import WINDOW, CapState, effective_limit
from .clock import ClockLike
from .config import Config
from .health import BreakerState
from .httpd import Request, Response
from .jobs import JobState
from .limits import AppGuard
from .logs import mask_secrets
from .store import Store

# Seconds. A status call takes tens of milliseconds; a 64 MB chunk on a slow link, minutes.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# Token history lines that are not refreshes (a token file imported, a creator authorizing).
NOT_REFRESHES = frozenset({"imported", "authorized"})
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class BreakerView(Protocol):
    @property
    def state(self) -> BreakerState: ...


class ShardView(Protocol):
    @property
    def breaker(self) -> BreakerView: ...


class DaemonView(Protocol):
    """What the metrics read of the daemon; ``store`` is None until the daemon opens it."""

    @property
    def store(self) -> Store | None: ...

    @property
    def clock(self) -> ClockLike: ...

    @property
    def config(self) -> Config: ...

    @property
    def shards(self) -> Mapping[str, ShardView]: ...

    @property
    def guard(self) -> AppGuard: ...

    @property
    def started_at(self) -> float: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountMetrics:
    account_id: str
    breaker: BreakerState | None  # None: no shard runs for the account (disabled)
    paused: bool
    cap_used: int
    cap_limit: int
    token_state: str | None  # None: the account has no tokens yet
    access_expires_in: float | None
    refresh_expires_in: float | None
    refreshes: tuple[tuple[str, int], ...]  # (outcome, count)


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    """Everything one scrape publishes except the latency histogram, read at ``now``."""

    now: float
    started_at: float
    app_paused: bool
    app_pause_remaining: float
    accounts: tuple[AccountMetrics, ...]
    queue: tuple[tuple[str, str, str, int], ...]  # (account, lane, state, jobs)
    jobs: tuple[tuple[str, int], ...]  # (state, jobs), every state
    attempt_errors: tuple[tuple[str, str, int], ...]  # (code, class, attempts)
    poll_lag: float


def label(value: str | None, *, empty: str = "none") -> str:
    """A label value safe to publish: short, plain, and never shaped like a token."""
    if not value:
        return empty
    if not _LABEL_VALUE.fullmatch(value) or mask_secrets(value) != value:
        return "other"
    return value


class Metrics:
    def __init__(self, daemon: DaemonView) -> None:
        self._daemon = daemon
        self._latency = Histogram(
            "orchestrator_tiktok_request_seconds",
            "Wall-clock seconds of each TikTok API request, by endpoint and outcome "
            "(ok, TikTok's error code, or timeout/connect_error/connection_lost).",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        # Refresh history is append-only: count it once, then add what is new at each scrape.
        self._refreshes: dict[str, dict[str, int]] = {}  # account -> outcome -> count
        self._history_seen = 0
        self._lock = anyio.Lock()

    def observe_request(self, endpoint: str, seconds: float, outcome: str) -> None:
        """The ``on_response`` hook of ``TikTokClient``."""
        self._latency.labels(label(endpoint), label(outcome)).observe(max(0.0, seconds))

    async def handle(self, request: Request) -> Response:
        if request.path != "/metrics":
            return Response.error(404, "not_found", f"no such endpoint: {request.path}")
        if request.method != "GET":
            return Response.error(405, "method_not_allowed", "/metrics answers GET only")
        snapshot = await self.snapshot()
        if snapshot is None:
            return Response.error(503, "starting", "the daemon has not opened its store yet")
        body = await anyio.to_thread.run_sync(self.render, snapshot)
        return Response(status=200, body=body, content_type=CONTENT_TYPE_LATEST)

    def render(self, snapshot: Snapshot) -> bytes:
        """The text exposition of ``snapshot`` and the latency histogram (thread-safe)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(snapshot))
        registry.register(self._latency)
        return generate_latest(registry)

    async def snapshot(self) -> Snapshot | None:
        """Read what a scrape publishes; None before the daemon has opened its store."""
        daemon = self._daemon
        store = daemon.store
        if store is None:
            return None
        async with self._lock:  # two scrapes at once must not both add the same history
            refreshes = await self._refresh_counts(store)
        now = daemon.clock.now()
        open_jobs = await store.open_job_counts()
        totals = await store.job_state_totals()
        inits = await store.init_counts(now - WINDOW, now)
        states = {s.account_id: s for s in await store.account_states()}
        tokens = {t[0]: t for t in await store.token_expiries()}
        errors = await store.attempt_error_counts()
        next_poll = await store.next_poll_time()
        paused_until = daemon.guard.blocked_until(now)
        accounts = []
        for account in daemon.config.accounts:
            state = states.get(account.id)
            token = tokens.get(account.id)
            shard = daemon.shards.get(account.id)
            cap = CapState(
                limit=account.daily_cap, learned_limit=state.learned_cap if state else None
            )
            accounts.append(
                AccountMetrics(
                    account_id=account.id,
                    breaker=shard.breaker.state if shard is not None else None,
                    paused=bool(state and state.paused),
                    cap_used=inits.get(account.id, 0),
                    cap_limit=effective_limit(cap),
                    token_state=token[1] if token else None,
                    access_expires_in=_until(token[2], now) if token else None,
                    refresh_expires_in=_until(token[3], now) if token else None,
                    refreshes=tuple(refreshes.get(account.id, {}).items()),
                )
            )
        return Snapshot(
            now=now,
            started_at=daemon.started_at,
            app_paused=paused_until is not None,
            app_pause_remaining=max(0.0, paused_until - now) if paused_until else 0.0,
            accounts=tuple(accounts),
            queue=tuple(open_jobs),
            jobs=tuple((s.value, totals.get(s.value, 0)) for s in JobState),
            attempt_errors=tuple(
                (label(code), label(error_class, empty="unclassified"), n)
                for code, error_class, n in errors
            ),
            poll_lag=max(0.0, now - next_poll) if next_poll is not None else 0.0,
        )

    async def _refresh_counts(self, store: Store) -> dict[str, dict[str, int]]:
        new, self._history_seen = await store.token_outcomes_after(self._history_seen)
        for account_id, outcome, n in new:
            if outcome not in NOT_REFRESHES:
                counts = self._refreshes.setdefault(account_id, {})
                counts[label(outcome)] = counts.get(label(outcome), 0) + n
        # Copies: the snapshot is read in another thread while later scrapes add to these.
        return {a: dict(counts) for a, counts in self._refreshes.items()}


def _until(at: float | None, now: float) -> float | None:
    return None if at is None else at - now


class _SnapshotCollector:
    """Metric families from one frozen snapshot (a prometheus-client custom collector)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._s = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self._s
        yield GaugeMetricFamily("orchestrator_up", "1 while the daemon answers.", value=1)
        yield InfoMetricFamily(
            "orchestrator_build", "The running orchestrator.", value={"version": __version__}
        )
        yield GaugeMetricFamily(
            "orchestrator_start_time_seconds",
            "When the daemon started, in Unix seconds.",
            value=s.started_at,
        )
        yield GaugeMetricFamily(
            "orchestrator_app_paused",
            "1 while every account is paused together (TikTok limited the app itself).",
            value=int(s.app_paused),
        )
        yield GaugeMetricFamily(
            "orchestrator_app_pause_remaining_seconds",
            "Seconds until the app-wide pause ends (0 when not paused).",
            value=s.app_pause_remaining,
        )
        yield from self._accounts()
        yield self._family(
            GaugeMetricFamily(
                "orchestrator_account_queue_jobs",
                "Jobs not yet finished, per account, lane and state (absent means 0; account "
                '"" holds pool jobs no account could take yet).',
                labels=["account", "lane", "state"],
            ),
            (([a, lane, state], n) for a, lane, state, n in s.queue),
        )
        yield self._family(
            GaugeMetricFamily(
                "orchestrator_jobs", "Jobs per state, all accounts.", labels=["state"]
            ),
            (([state], n) for state, n in s.jobs),
        )
        yield self._family(
            CounterMetricFamily(
                "orchestrator_attempt_errors",
                "Failed calls to TikTok recorded in the attempts table, by TikTok's error code "
                '("none" for no answer) and the catalog\'s class.',
                labels=["code", "class"],
            ),
            (([code, error_class], n) for code, error_class, n in s.attempt_errors),
        )
        yield GaugeMetricFamily(
            "orchestrator_poll_lag_seconds",
            "How late the most overdue status poll of a processing post is (simulated clock).",
            value=s.poll_lag,
        )

    def _accounts(self) -> Iterable[Metric]:
        accounts = self._s.accounts
        yield self._family(
            GaugeMetricFamily(
                "orchestrator_account_breaker_state",
                "The account's circuit breaker: 0 closed, 1 half-open, 2 open.",
                labels=["account"],
            ),
            (([a.account_id], BREAKER_VALUES[a.breaker]) for a in accounts if a.breaker),
        )
        yield self._family(
            GaugeMetricFamily(
                "orchestrator_account_paused",
                "1 while an operator has paused the account.",
                labels=["account"],
            ),
            (([a.account_id], int(a.paused)) for a in accounts),
        )
        yield self._family(
            GaugeMetricFamily(
                "orchestrator_account_daily_cap_used",
                "Direct posts TikTok accepted for the account in the last 24 h.",
                labels=["account"],
            ),
            (([a.account_id], a.cap_used) for a in accounts),
        )
        yield self._family(
            GaugeMetricFamily(
                "orchestrator_account_daily_cap_limit",
                "The account's daily cap in force (configured, or lower if TikTok taught us).",
                labels=["account"],
            ),
            (([a.account_id], a.cap_limit) for a in accounts),
        )
        yield self._family(
            GaugeMetricFamily(
                "orchestrator_account_token_expiry_seconds",
                "Seconds until the account's access token expires (negative: expired).",
                labels=["account"],
            ),
            (
                ([a.account_id], a.access_expires_in)
                for a in accounts
                if a.access_expires_in is not None
            ),
        )
        yield self._family(
            GaugeMetricFamily(
                "orchestrator_account_refresh_token_expiry_seconds",
                "Seconds until the account's refresh token expires (then it must re-authorize).",
                labels=["account"],
            ),
            (
                ([a.account_id], a.refresh_expires_in)
                for a in accounts
                if a.refresh_expires_in is not None
            ),
        )
        yield self._family(
            GaugeMetricFamily(
                "orchestrator_account_token_state",
                "1 for the account's token state (valid, needs_reauth, exhausted, ...).",
                labels=["account", "state"],
            ),
            (([a.account_id, a.token_state], 1) for a in accounts if a.token_state),
        )
        yield self._family(
            CounterMetricFamily(
                "orchestrator_account_token_refreshes",
                "Token refreshes by outcome (ok, failed, lost, needs_reauth, ...), from the "
                "stored history.",
                labels=["account", "outcome"],
            ),
            (([a.account_id, outcome], n) for a in accounts for outcome, n in a.refreshes),
        )

    @staticmethod
    def _family(
        family: GaugeMetricFamily | CounterMetricFamily,
        samples: Iterable[tuple[list[str], float]],
    ) -> Metric:
        for labels, value in samples:
            family.add_metric(labels, value)
        return family
