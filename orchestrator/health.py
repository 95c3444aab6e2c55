"""Per-account circuit breaker: pybreaker counts and keeps state, this module owns the rest.

An account whose calls keep failing for reasons that are its own (catalog entries with
``counts_against_account``) is taken out of rotation for ``reset_timeout`` seconds, then one
probe decides whether it comes back. The async caller does::

    if breaker.admit():
        try:
            ...  # await the call to TikTok
            breaker.record(classification_or_None)
        except BaseException:
            breaker.released()
            raise

Why a wrapper and not pybreaker alone (shared/LIBRARIES.md, pybreaker 1.4.1):

- It has no asyncio API, and a cancellation inside ``calling()`` counts as a failure (and, if
  it trips the breaker, becomes a ``CircuitBreakerError`` a cancel scope cannot absorb). So no
  await ever runs inside pybreaker: the caller awaits outside, then reports a verdict, and
  pybreaker only sees ``call()`` of tiny synchronous functions that return or raise at once.
- It reads wall time (``datetime.now``) to stamp ``opened_at`` and to leave the open state.
  Our storage stamps ``opened_at`` from the injected clock whatever pybreaker passes, and
  ``admit()`` moves open -> half-open by that clock; pybreaker is never called while open.
- Half-open admits every concurrent caller: we keep a single probe slot.
- Exceptions in ``exclude`` count as *successes*: we use no ``exclude``; a call that says
  nothing about the account is ``released()`` and never reaches pybreaker.
- Open -> half-open happens only when a call arrives: ``retry_at()`` tells the router when to
  call ``admit()`` on an open breaker, or the account would never recover.
- Calls in flight when it tripped that fail later would re-open it and push ``opened_at``
  forward: verdicts that arrive while open are dropped.
- Restoring an open breaker without ``opened_at`` lets the next call straight through: a
  ``BreakerSnapshot`` in state OPEN must carry it.

Calls carry no ticket, so in half-open a late verdict of a call admitted before the trip is
taken as the probe's. Rare (the call must outlive ``reset_timeout``) and harmless: the probe's
own verdict then lands on a closed or open breaker and is counted or dropped as usual.
Not thread-safe: use each breaker from the event loop's thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pybreaker

from .catalog import Classification
from .clock import ClockLike
from .logs import fields

log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_FROM_PYBREAKER = {
    pybreaker.STATE_CLOSED: BreakerState.CLOSED,
    pybreaker.STATE_OPEN: BreakerState.OPEN,
    pybreaker.STATE_HALF_OPEN: BreakerState.HALF_OPEN,
}
_TO_PYBREAKER = {ours: theirs for theirs, ours in _FROM_PYBREAKER.items()}


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerSnapshot:
    """What the store persists: enough to restore a breaker after a restart."""

    state: BreakerState
    fail_count: int  # consecutive failures counted against the account
    opened_at: float | None  # simulated seconds; None when closed

    def __post_init__(self) -> None:
        if self.fail_count < 0:
            raise ValueError(f"fail_count must be >= 0, got {self.fail_count}")
        # Invariant: an open snapshot knows when it opened, or a restore would let the next
        # call straight through.
        if self.state is not BreakerState.CLOSED and self.opened_at is None:
            raise ValueError(f"a {self.state} breaker snapshot needs opened_at")


TransitionHook = Callable[[str, BreakerState, BreakerState, BreakerSnapshot], None]


def _ignore_transition(
    account_id: str, old: BreakerState, new: BreakerState, snapshot: BreakerSnapshot
) -> None:
    pass


class _AccountFailure(Exception):
    """Raised inside pybreaker to count one failure; never leaves this module."""


def _succeed() -> None:
    pass


def _fail() -> None:
    raise _AccountFailure


class _ClockStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's state, with ``opened_at`` stamped from the injected clock."""

    def __init__(self, clock: ClockLike, snapshot: BreakerSnapshot) -> None:
        super().__init__("clock")
        self._clock = clock
        self._state = _TO_PYBREAKER[snapshot.state]
        self._fail_counter = snapshot.fail_count
        self._success_counter = 0
        self.opened_at_seconds: float | None = snapshot.opened_at

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state

    def increment_counter(self) -> None:
        self._fail_counter += 1

    def reset_counter(self) -> None:
        self._fail_counter = 0

    def increment_success_counter(self) -> None:
        self._success_counter += 1

    def reset_success_counter(self) -> None:
        self._success_counter = 0

    @property
    def counter(self) -> int:
        return self._fail_counter

    @property
    def success_counter(self) -> int:
        return self._success_counter

    @property
    def opened_at(self) -> datetime | None:
        if self.opened_at_seconds is None:
            return None
        return datetime.fromtimestamp(self.opened_at_seconds, UTC)

    @opened_at.setter
    def opened_at(self, datetime: datetime) -> None:
        # pybreaker passes its wall-clock datetime.now(); the moment that counts is ours.
        self.opened_at_seconds = self._clock.now()


class _Transitions(pybreaker.CircuitBreakerListener):
    """Collects state changes; they are reported once the pybreaker call has returned.

    pybreaker notifies before its storage holds the new state, and under its lock, so a hook
    called from here would read a stale snapshot.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[BreakerState, BreakerState]] = []

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if old_state is not None and old_state.name != new_state.name:
            self.pending.append((_FROM_PYBREAKER[old_state.name], _FROM_PYBREAKER[new_state.name]))


_CLOSED = BreakerSnapshot(state=BreakerState.CLOSED, fail_count=0, opened_at=None)


class AccountBreaker:
    """The circuit breaker of one account, on simulated time."""

    def __init__(
        self,
        account_id: str,
        *,
        clock: ClockLike,
        fail_max: int = 5,
        reset_timeout: float = 300.0,
        restore: BreakerSnapshot | None = None,
        on_transition: TransitionHook = _ignore_transition,
    ) -> None:
        if fail_max < 1:
            raise ValueError(f"fail_max must be >= 1, got {fail_max}")
        if not reset_timeout >= 0:
            raise ValueError(f"reset_timeout must be >= 0, got {reset_timeout}")
        self.account_id = account_id
        self._clock = clock
        self._reset_timeout = reset_timeout
        self._on_transition = on_transition
        self._storage = _ClockStorage(clock, restore or _CLOSED)
        self._transitions = _Transitions()
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            state_storage=self._storage,
            listeners=[self._transitions],
            name=account_id,
        )
        # Invariant: True only in HALF_OPEN, from the admit() that let the probe in until its
        # verdict or release. A restored half-open breaker has none: that probe died with us.
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        return _FROM_PYBREAKER[self._storage.state]

    @property
    def probe_in_flight(self) -> bool:
        return self._probe_in_flight

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        return BreakerSnapshot(
            state=state,
            fail_count=self._storage.counter,
            opened_at=None if state is BreakerState.CLOSED else self._storage.opened_at_seconds,
        )

    def retry_at(self) -> float | None:
        """When ``admit()`` will let a probe in; None if closed or a probe is in flight.

        In the past for a half-open breaker with a free probe slot: probe now.
        """
        state = self.state
        if state is BreakerState.CLOSED or self._probe_in_flight:
            return None
        opened_at = self._storage.opened_at_seconds
        assert opened_at is not None  # Invariant of a non-closed breaker, see BreakerSnapshot.
        return opened_at + self._reset_timeout

    def admit(self) -> bool:
        """May a call go to this account now? In half-open, True once: for the one probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            retry_at = self.retry_at()
            if retry_at is None or self._clock.now() < retry_at:
                return False
            self._breaker.half_open()
            self._report()
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def succeeded(self) -> None:
        """An admitted call worked: reset the failure count, or close after a probe."""
        if not self._takes_verdict():
            return
        self._probe_in_flight = False
        self._breaker.call(_succeed)
        self._report()

    def failed(self) -> None:
        """An admitted call failed for a reason of the account's own: count it."""
        if not self._takes_verdict():
            return
        self._probe_in_flight = False
        try:
            self._breaker.call(_fail)
        except (_AccountFailure, pybreaker.CircuitBreakerError):
            # CircuitBreakerError is how pybreaker says this failure tripped it.
            pass
        self._report()

    def released(self) -> None:
        """An admitted call ended without a verdict: free the probe slot, count nothing."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False

    def record(self, classification: Classification | None) -> None:
        """Report an admitted call's outcome: None for success, else its classification."""
        if classification is None:
            self.succeeded()
        elif classification.entry.counts_against_account:
            self.failed()
        else:
            self.released()

    def _takes_verdict(self) -> bool:
        # While open, only calls that were in flight at the trip can report; in half-open
        # without a probe, likewise. Neither may move opened_at or close the breaker.
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and self._probe_in_flight
        )

    def _report(self) -> None:
        pending = self._transitions.pending
        while pending:
            old, new = pending.pop(0)
            snapshot = self.snapshot()
            log_at = logging.WARNING if new is BreakerState.OPEN else logging.INFO
            log.log(
                log_at,
                "breaker of %s: %s -> %s",
                self.account_id,
                old,
                new,
                extra=_transition_fields(self.account_id, old, new, snapshot),
            )
            self._on_transition(self.account_id, old, new, snapshot)


def _transition_fields(
    account_id: str, old: BreakerState, new: BreakerState, snapshot: BreakerSnapshot
) -> dict[str, Any]:
    return fields(
        "breaker.transition",
        account=account_id,
        from_state=str(old),
        to_state=str(new),
        fail_count=snapshot.fail_count,
        opened_at=snapshot.opened_at,
    )


def health_score(snapshot: BreakerSnapshot, *, recent_failures: int, recent_calls: int) -> float:
    """How healthy an account looks, 0..1, for a router that prefers healthy accounts.

    0 when open. Otherwise the recent success rate, divided by one plus the consecutive
    failures (a streak says more about now than the window does), halved in half-open (one
    probe is all it may take). Failures beyond calls (counts from different windows) count
    as calls.
    """
    if recent_failures < 0 or recent_calls < 0:
        raise ValueError("recent_failures and recent_calls must be >= 0")
    if snapshot.state is BreakerState.OPEN:
        return 0.0
    calls = max(recent_calls, recent_failures)
    success_rate = 1.0 - recent_failures / calls if calls else 1.0
    score = success_rate / (1 + snapshot.fail_count)
    if snapshot.state is BreakerState.HALF_OPEN:
        score /= 2
    return score
