"""The per-account circuit breaker, on a ManualClock: tripping, one probe, restore, health."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.catalog import Classification, classify_error, classify_fail_reason
from orchestrator.clock import ManualClock
from orchestrator.errors import TikTokApiError
from orchestrator.health import AccountBreaker, BreakerSnapshot, BreakerState, health_score

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
TIMEOUT = 300.0

Transition = tuple[str, BreakerState, BreakerState, BreakerSnapshot]


def make(
    clock: ManualClock, *, restore: BreakerSnapshot | None = None
) -> tuple[AccountBreaker, list[Transition]]:
    seen: list[Transition] = []
    breaker = AccountBreaker(
        "acct-1",
        clock=clock,
        fail_max=3,
        reset_timeout=TIMEOUT,
        restore=restore,
        on_transition=lambda *args: seen.append(args),
    )
    return breaker, seen


def trip(breaker: AccountBreaker) -> None:
    for _ in range(3):
        assert breaker.admit()
        breaker.failed()
    assert breaker.state is OPEN


def api_error(code: str) -> Classification:
    return classify_error(TikTokApiError("refused", endpoint="video_init", code=code))


def test_fail_max_consecutive_failures_trip_it() -> None:
    clock = ManualClock()
    breaker, seen = make(clock)
    breaker.failed()
    breaker.failed()
    assert breaker.state is CLOSED
    assert seen == []
    breaker.failed()
    assert breaker.state is OPEN
    assert not breaker.admit()
    snap = BreakerSnapshot(state=OPEN, fail_count=3, opened_at=clock.now())
    assert seen == [("acct-1", CLOSED, OPEN, snap)]
    assert breaker.snapshot() == snap
    assert breaker.retry_at() == clock.now() + TIMEOUT


def test_a_success_in_between_resets_the_count() -> None:
    breaker, seen = make(ManualClock())
    for _ in range(5):
        breaker.failed()
        breaker.failed()
        breaker.succeeded()
        assert breaker.snapshot().fail_count == 0
    assert breaker.state is CLOSED
    assert seen == []


def test_open_refuses_until_reset_timeout_then_admits_exactly_one_probe() -> None:
    clock = ManualClock()
    breaker, seen = make(clock)
    trip(breaker)
    clock.advance(TIMEOUT - 0.001)
    assert not breaker.admit()
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.admit()
    assert breaker.state is HALF_OPEN
    assert seen[-1][1:3] == (OPEN, HALF_OPEN)
    assert breaker.probe_in_flight
    assert breaker.retry_at() is None
    assert not breaker.admit()
    assert not breaker.admit()


def test_probe_success_closes_it() -> None:
    clock = ManualClock()
    breaker, seen = make(clock)
    trip(breaker)
    clock.advance(TIMEOUT)
    assert breaker.admit()
    breaker.succeeded()
    assert breaker.state is CLOSED
    assert seen[-1] == (
        "acct-1",
        HALF_OPEN,
        CLOSED,
        BreakerSnapshot(state=CLOSED, fail_count=0, opened_at=None),
    )
    assert breaker.admit()
    assert breaker.admit()
    assert breaker.retry_at() is None


def test_probe_failure_reopens_it_with_a_fresh_opened_at() -> None:
    clock = ManualClock()
    breaker, seen = make(clock)
    trip(breaker)
    first = breaker.snapshot().opened_at
    clock.advance(TIMEOUT + 7)
    assert breaker.admit()
    breaker.failed()
    assert breaker.state is OPEN
    assert seen[-1][1:3] == (HALF_OPEN, OPEN)
    assert seen[-1][3].opened_at == clock.now() != first
    assert breaker.retry_at() == clock.now() + TIMEOUT
    assert not breaker.admit()


def test_released_during_half_open_lets_another_probe_in_and_counts_nothing() -> None:
    clock = ManualClock()
    breaker, seen = make(clock)
    trip(breaker)
    clock.advance(TIMEOUT)
    assert breaker.admit()
    before = breaker.snapshot()
    breaker.released()
    assert breaker.snapshot() == before
    assert breaker.state is HALF_OPEN
    assert breaker.retry_at() is not None
    assert len(seen) == 2
    assert breaker.admit()
    assert not breaker.admit()


def test_failures_reported_after_the_trip_do_not_move_opened_at() -> None:
    clock = ManualClock()
    breaker, seen = make(clock)
    for _ in range(5):  # five calls in flight
        assert breaker.admit()
    for _ in range(3):
        breaker.failed()
    opened = breaker.snapshot()
    clock.advance(100)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # a late success is not the probe either
    assert breaker.snapshot() == opened
    assert len(seen) == 1
    clock.advance(TIMEOUT - 100)
    assert breaker.admit()


def test_verdicts_in_half_open_without_a_probe_count_nothing() -> None:
    clock = ManualClock()
    breaker, _ = make(clock)
    trip(breaker)
    clock.advance(TIMEOUT)
    assert breaker.admit()
    breaker.released()
    before = breaker.snapshot()
    breaker.failed()
    breaker.succeeded()
    assert breaker.snapshot() == before


def test_record_counts_only_what_counts_against_the_account() -> None:
    asset = classify_fail_reason("file_format_check_failed")
    server = api_error("internal_error")
    banned = api_error("scope_not_authorized")
    removed = classify_fail_reason("auth_removed")
    assert not asset.entry.counts_against_account
    assert not server.entry.counts_against_account
    assert banned.entry.counts_against_account
    assert removed.entry.counts_against_account

    breaker, seen = make(ManualClock())
    for _ in range(10):
        breaker.record(asset)
        breaker.record(server)
    assert breaker.snapshot().fail_count == 0
    breaker.record(banned)
    breaker.record(removed)
    breaker.record(None)
    assert breaker.snapshot().fail_count == 0
    breaker.record(banned)
    breaker.record(removed)
    breaker.record(asset)  # says nothing: neither resets nor counts
    assert breaker.snapshot().fail_count == 2
    breaker.record(banned)
    assert breaker.state is OPEN
    assert len(seen) == 1


def test_record_releases_a_probe_on_a_failure_that_is_not_the_accounts() -> None:
    clock = ManualClock()
    breaker, _ = make(clock)
    trip(breaker)
    clock.advance(TIMEOUT)
    assert breaker.admit()
    breaker.record(classify_fail_reason("file_format_check_failed"))
    assert breaker.state is HALF_OPEN
    assert breaker.admit()
    breaker.record(None)
    assert breaker.state is CLOSED


def test_a_restored_open_snapshot_stays_open_until_its_timeout() -> None:
    clock = ManualClock()
    opened_at = clock.now() - 100
    breaker, seen = make(
        clock, restore=BreakerSnapshot(state=OPEN, fail_count=3, opened_at=opened_at)
    )
    assert breaker.state is OPEN
    assert breaker.retry_at() == opened_at + TIMEOUT
    assert not breaker.admit()
    clock.advance(TIMEOUT - 100 - 1)
    assert not breaker.admit()
    clock.advance(1)
    assert breaker.admit()
    assert not breaker.admit()
    assert seen == [
        (
            "acct-1",
            OPEN,
            HALF_OPEN,
            BreakerSnapshot(state=HALF_OPEN, fail_count=3, opened_at=opened_at),
        )
    ]


def test_a_restored_half_open_snapshot_admits_one_probe() -> None:
    clock = ManualClock()
    snap = BreakerSnapshot(state=HALF_OPEN, fail_count=3, opened_at=clock.now() - 400)
    breaker, _ = make(clock, restore=snap)
    assert breaker.admit()
    assert not breaker.admit()


def test_a_restored_closed_snapshot_keeps_its_count() -> None:
    breaker, seen = make(
        ManualClock(), restore=BreakerSnapshot(state=CLOSED, fail_count=2, opened_at=None)
    )
    breaker.failed()
    assert breaker.state is OPEN
    assert len(seen) == 1


@pytest.mark.parametrize(
    "steps",
    [
        [],
        ["fail"],
        ["fail", "fail", "fail"],
        ["fail", "fail", "fail", "wait", "admit"],
        ["fail", "fail", "fail", "wait", "admit", "fail"],
    ],
)
def test_snapshot_round_trip(steps: list[str]) -> None:
    clock = ManualClock()
    breaker, _ = make(clock)
    for step in steps:
        if step == "fail":
            breaker.failed()
        elif step == "wait":
            clock.advance(TIMEOUT)
        else:
            assert breaker.admit()
    snap = breaker.snapshot()
    restored, _ = make(clock, restore=snap)
    assert restored.snapshot() == snap
    assert restored.state is breaker.state
    # A probe in flight at the snapshot died with the process: the restored one may probe.
    assert not restored.probe_in_flight
    expected = None if snap.opened_at is None else snap.opened_at + TIMEOUT
    assert restored.retry_at() == expected


def test_an_open_snapshot_needs_opened_at() -> None:
    with pytest.raises(ValueError, match="opened_at"):
        BreakerSnapshot(state=OPEN, fail_count=3, opened_at=None)
    with pytest.raises(ValueError, match="fail_count"):
        BreakerSnapshot(state=CLOSED, fail_count=-1, opened_at=None)


def test_time_is_the_injected_clock_not_the_wall() -> None:
    clock = ManualClock(start=1_000.0)  # 1970: pybreaker's wall clock would say it elapsed
    breaker, _ = make(clock)
    trip(breaker)
    assert breaker.snapshot().opened_at == 1_000.0
    assert not breaker.admit()
    clock.advance(TIMEOUT)
    assert breaker.admit()


def test_transitions_are_logged_with_an_action(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="orchestrator.health")
    trip(make(ManualClock())[0])
    [record] = caplog.records
    logged = {k: getattr(record, k) for k in ("action", "account", "from_state", "to_state")}
    assert logged == {
        "action": "breaker.transition",
        "account": "acct-1",
        "from_state": "closed",
        "to_state": "open",
    }


snapshots = st.builds(
    BreakerSnapshot,
    state=st.sampled_from(BreakerState),
    fail_count=st.integers(0, 1_000),
    opened_at=st.floats(0, 4e9),
)
counts = st.integers(0, 10_000)


@given(snapshots, counts, counts)
def test_health_score_is_within_bounds_and_zero_when_open(
    snap: BreakerSnapshot, failures: int, calls: int
) -> None:
    score = health_score(snap, recent_failures=failures, recent_calls=calls)
    assert 0.0 <= score <= 1.0
    if snap.state is OPEN:
        assert score == 0.0


@given(snapshots, counts, counts)
def test_health_score_drops_with_more_failures(
    snap: BreakerSnapshot, failures: int, calls: int
) -> None:
    more = health_score(snap, recent_failures=failures + 1, recent_calls=calls)
    assert more <= health_score(snap, recent_failures=failures, recent_calls=calls)


def test_health_score_examples() -> None:
    closed = BreakerSnapshot(state=CLOSED, fail_count=0, opened_at=None)
    assert health_score(closed, recent_failures=0, recent_calls=0) == 1.0
    assert health_score(closed, recent_failures=1, recent_calls=4) == 0.75
    assert health_score(closed, recent_failures=3, recent_calls=0) == 0.0
    streak = BreakerSnapshot(state=CLOSED, fail_count=1, opened_at=None)
    assert health_score(streak, recent_failures=1, recent_calls=4) == 0.375
    with pytest.raises(ValueError, match=">= 0"):
        health_score(closed, recent_failures=-1, recent_calls=0)
