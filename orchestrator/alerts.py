"""Alerts: conditions a person should know about, opened when they start, resolved when
they clear, and sent to the structured log, the status API and optional webhooks.

Rules are evaluated from snapshots (``Conditions``) by a pure function; ``AlertManager``
diffs the result against the open alerts, so an alert fires once and resolves once.

The error-rate rule compares each account's recent failure rate with its own baseline: a
spike of rejections on an account that usually succeeds matters more than a steady count on
one that always struggles (shared/seeds/001).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .clock import ClockLike
from .logs import fields

log = logging.getLogger(__name__)

RECENT = 900.0  # the window a spike is measured in
BASELINE = 86400.0  # the window "normal" is measured in
SPIKE_MIN_FAILURES = 3
EVALUATE_EVERY = 60.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Alert:
    key: str  # stable identity: kind and subject
    kind: str
    severity: str  # "warning" | "critical"
    message: str
    account: str | None = None
    job: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Conditions:
    """A snapshot of everything the rules look at."""

    open_breakers: tuple[str, ...] = ()
    reauth_accounts: tuple[str, ...] = ()
    uncertain_jobs: tuple[tuple[str, str], ...] = ()  # (job, account)
    stuck_jobs: tuple[tuple[str, str], ...] = ()
    # account -> (recent failures, recent calls, baseline failure rate)
    error_rates: Mapping[str, tuple[int, int, float]] = field(default_factory=dict)
    app_paused: str | None = None


def is_spike(failures: int, calls: int, baseline: float) -> bool:
    """A jump against the account's own normal, not a fixed threshold."""
    if failures < SPIKE_MIN_FAILURES or calls == 0:
        return False
    rate = failures / calls
    return rate >= max(3 * baseline, baseline + 0.2)


def evaluate(c: Conditions) -> dict[str, Alert]:
    alerts = [
        *(
            Alert(
                key=f"breaker:{a}",
                kind="breaker_open",
                severity="warning",
                account=a,
                message=f"{a}: circuit breaker open; its jobs wait, pool jobs go elsewhere",
            )
            for a in c.open_breakers
        ),
        *(
            Alert(
                key=f"reauth:{a}",
                kind="needs_reauth",
                severity="critical",
                account=a,
                message=f"{a}: TikTok refused its tokens; run `orchestrator auth url {a}`",
            )
            for a in c.reauth_accounts
        ),
        *(
            Alert(
                key=f"uncertain:{j}",
                kind="job_uncertain",
                severity="critical",
                account=a,
                job=j,
                message=f"{j} may have been posted; check {a} and run `orchestrator job resolve`",
            )
            for j, a in c.uncertain_jobs
        ),
        *(
            Alert(
                key=f"stuck:{j}",
                kind="job_stuck",
                severity="warning",
                account=a,
                job=j,
                message=f"{j} on {a} has been processing at TikTok for a long time",
            )
            for j, a in c.stuck_jobs
        ),
        *(
            Alert(
                key=f"errors:{a}",
                kind="error_spike",
                severity="warning",
                account=a,
                message=f"{a}: {f} of its last {n} calls failed (usually {base:.0%})",
            )
            for a, (f, n, base) in sorted(c.error_rates.items())
            if is_spike(f, n, base)
        ),
    ]
    if c.app_paused:
        alerts.append(
            Alert(
                key="app:paused",
                kind="app_paused",
                severity="critical",
                message=f"every account is paused: TikTok said {c.app_paused}",
            )
        )
    return {a.key: a for a in alerts}


class ErrorRates:
    """Per-account outcomes in memory, for the error-rate rule (lost on restart, by design:
    a baseline rebuilds within a day)."""

    def __init__(self) -> None:
        self._events: dict[str, deque[tuple[float, bool]]] = {}

    def record(self, account: str, *, failed: bool, now: float) -> None:
        events = self._events.setdefault(account, deque())
        events.append((now, failed))
        while events and events[0][0] < now - BASELINE:
            events.popleft()

    def snapshot(self, now: float) -> dict[str, tuple[int, int, float]]:
        out = {}
        for account, events in self._events.items():
            recent = [f for t, f in events if t >= now - RECENT]
            older = [f for t, f in events if t < now - RECENT]
            baseline = sum(older) / len(older) if older else 0.0
            out[account] = (sum(recent), len(recent), baseline)
        return out


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class AlertManager:
    def __init__(
        self,
        *,
        clock: ClockLike,
        snapshot: Callable[[], Awaitable[Conditions]],
        webhook_url: str | None = None,
        webhook_secret: Callable[[], str] | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._clock = clock
        self._snapshot = snapshot
        self._webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._http = http
        self.open: dict[str, tuple[Alert, float]] = {}
        self._outbox: MemoryObjectSendStream[dict[str, object]] | None = None

    async def check(self, conditions: Conditions) -> list[dict[str, object]]:
        """Open new alerts and resolve cleared ones; returns the notifications made."""
        now = self._clock.now()
        current = evaluate(conditions)
        notes: list[dict[str, object]] = []
        for key, alert in current.items():
            if key not in self.open:
                self.open[key] = (alert, now)
                notes.append(self._note("opened", alert, now))
        for key in [k for k in self.open if k not in current]:
            alert, _ = self.open.pop(key)
            notes.append(self._note("resolved", alert, now))
        for note in notes:
            level = logging.WARNING if note["event"] == "opened" else logging.INFO
            log.log(
                level,
                "alert %s: %s",
                note["event"],
                note["message"],
                extra=fields(
                    f"alert.{note['event']}",
                    alert=note["key"],
                    kind=note["kind"],
                    account=note["account"],
                    job=note["job"],
                ),
            )
            if self._outbox is not None:
                self._outbox.send_nowait(note)
        return notes

    def _note(self, event: str, alert: Alert, now: float) -> dict[str, object]:
        return {
            "event": event,
            "key": alert.key,
            "kind": alert.kind,
            "severity": alert.severity,
            "message": alert.message,
            "account": alert.account,
            "job": alert.job,
            "at": now,
        }

    def listing(self) -> list[dict[str, object]]:
        return [
            self._note("open", alert, since) | {"since": since}
            for alert, since in sorted(self.open.values(), key=lambda p: p[1])
        ]

    async def run(self) -> None:
        """Evaluate every minute; deliver webhooks from a queue so a slow receiver never
        delays the rules."""
        send, receive = anyio.create_memory_object_stream[dict[str, object]](1000)
        self._outbox = send
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._deliver, receive)
            while True:
                await self.check(await self._snapshot())
                await self._clock.sleep(EVALUATE_EVERY)

    async def _deliver(self, notes: MemoryObjectReceiveStream[dict[str, object]]) -> None:
        async for note in notes:
            if not self._webhook_url or self._http is None:
                continue
            body = json.dumps(note, sort_keys=True).encode()
            headers = {"Content-Type": "application/json"}
            if self._webhook_secret is not None:
                headers["X-Orchestrator-Signature"] = sign(body, self._webhook_secret())
            for attempt in range(5):
                try:
                    response = await self._http.post(
                        self._webhook_url, content=body, headers=headers, timeout=10
                    )
                    if response.status_code < 300:
                        break
                except httpx.HTTPError:
                    pass
                await anyio.sleep(min(30.0, 2.0**attempt))
            else:
                log.error(
                    "alert webhook gave up after 5 tries",
                    extra=fields("alert.webhook_failed", alert=note["key"]),
                )
