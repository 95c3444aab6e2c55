"""Retry decisions: properties over any entry, attempt and hint."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.backoff import (
    BASE,
    CAP,
    CLASS_BUDGET,
    HINT_CAP,
    attempt_budget,
    decide,
    full_jitter,
)
from orchestrator.catalog import ENTRIES, Entry, ErrorClass, Kind, lookup

RETRYING = [e for e in ENTRIES if e.error_class in CLASS_BUDGET]
NOT_RETRYING = [e for e in ENTRIES if e.error_class not in CLASS_BUDGET]

entries = st.sampled_from(ENTRIES)
retrying = st.sampled_from([e for e in RETRYING if e.error_class is ErrorClass.RETRY])
attempts = st.integers(min_value=1, max_value=10_000)
rngs = st.randoms(use_true_random=False)
hints = st.floats(min_value=0.001, max_value=1e9, allow_nan=False)


class MaxRandom(random.Random):
    """Always draws the top of the range, to read the jitter's upper bound."""

    def random(self) -> float:
        return 1.0


@given(entry=retrying, rng=rngs)
def test_delay_without_hint_is_within_0_and_cap(entry: Entry, rng: random.Random) -> None:
    budget = attempt_budget(entry)
    assert budget is not None
    for attempt in range(1, budget):
        decision = decide(entry=entry, attempt=attempt, hint=None, rng=rng)
        assert decision.retry
        assert 0.0 <= decision.delay <= CAP


@given(attempt=attempts, rng=rngs)
def test_full_jitter_stays_within_bounds(attempt: int, rng: random.Random) -> None:
    assert 0.0 <= full_jitter(attempt, rng) <= min(CAP, BASE * 2.0 ** min(attempt - 1, 1000))


@given(entry=st.sampled_from(RETRYING), hint=hints, rng=rngs)
def test_delay_honours_the_hint_up_to_a_day(entry: Entry, hint: float, rng: random.Random) -> None:
    decision = decide(entry=entry, attempt=1, hint=hint, rng=rng)
    assert decision.retry
    assert decision.delay >= min(hint, HINT_CAP)
    assert decision.delay <= max(CAP, min(hint, HINT_CAP))


@given(entry=st.sampled_from(RETRYING), hint=st.sampled_from([None, 0.0, -5.0, float("nan")]))
def test_missing_or_nonsense_hints_are_ignored(entry: Entry, hint: float | None) -> None:
    decision = decide(entry=entry, attempt=1, hint=hint, rng=random.Random(1))
    assert 0.0 <= decision.delay <= CAP


@given(entry=entries, attempt=attempts, rng=rngs)
def test_budgets_are_respected(entry: Entry, attempt: int, rng: random.Random) -> None:
    decision = decide(entry=entry, attempt=attempt, hint=None, rng=rng)
    budget = attempt_budget(entry)
    assert decision.retry == (budget is not None and attempt < budget)
    if not decision.retry:
        assert decision.delay == 0.0


def test_internal_fail_reason_retries_after_attempts_1_and_2_not_3() -> None:
    [internal] = lookup("internal", Kind.FAIL_REASON)
    rng = random.Random(7)
    assert decide(entry=internal, attempt=1, hint=None, rng=rng).retry
    assert decide(entry=internal, attempt=2, hint=None, rng=rng).retry
    spent = decide(entry=internal, attempt=3, hint=None, rng=rng)
    assert not spent.retry
    assert spent.reason == "attempt budget of 3 spent"


def test_class_default_budget_applies_without_an_entry_budget() -> None:
    [limited] = lookup("rate_limit_exceeded", Kind.API)
    assert limited.max_attempts is None
    rng = random.Random(7)
    assert decide(entry=limited, attempt=4, hint=None, rng=rng).retry
    assert not decide(entry=limited, attempt=5, hint=None, rng=rng).retry


@given(entry=st.sampled_from(NOT_RETRYING), attempt=attempts, hint=st.none() | hints, rng=rngs)
def test_non_retry_classes_never_retry(
    entry: Entry, attempt: int, hint: float | None, rng: random.Random
) -> None:
    decision = decide(entry=entry, attempt=attempt, hint=hint, rng=rng)
    assert not decision.retry
    assert decision.reason == f"class {entry.error_class} does not retry"


def test_refresh_goes_again_at_once_and_only_once() -> None:
    [expired] = lookup("access_token_invalid", Kind.API)
    decision = decide(entry=expired, attempt=1, hint=None, rng=MaxRandom())
    assert decision.retry
    assert decision.delay == 0.0
    assert decision.reason == "refresh the token, then retry 2 of 2 at once"
    assert not decide(entry=expired, attempt=2, hint=None, rng=MaxRandom()).retry


def test_upper_bound_doubles_until_the_cap() -> None:
    tops = [full_jitter(attempt, MaxRandom()) for attempt in range(1, 10)]
    assert tops == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0]
    assert full_jitter(10**6, MaxRandom()) == CAP


def test_samples_fill_the_doubling_range() -> None:
    rng = random.Random(2024)
    for attempt, top in ((1, 1.0), (3, 4.0), (6, 32.0), (12, 64.0)):
        samples = [full_jitter(attempt, rng) for _ in range(2000)]
        assert max(samples) <= top
        assert max(samples) > top * 0.95  # the whole range is used, not just part of it
        assert min(samples) < top * 0.05


def test_reason_sentences() -> None:
    [internal] = lookup("internal_error", Kind.API)
    first = decide(entry=internal, attempt=1, hint=None, rng=MaxRandom())
    assert first.reason == "retry 2 of 5 in 1.0 s"
    hinted = decide(entry=internal, attempt=1, hint=30.0, rng=MaxRandom())
    assert hinted.delay == 30.0
    assert hinted.reason == "retry 2 of 5 in 30.0 s (server asked for 30 s)"
    [bad] = lookup("invalid_param", Kind.API)
    assert decide(entry=bad, attempt=1, hint=None, rng=MaxRandom()).reason == (
        "class fatal does not retry"
    )


def test_attempt_counts_from_one() -> None:
    [internal] = lookup("internal_error", Kind.API)
    with pytest.raises(ValueError, match="counts from 1"):
        decide(entry=internal, attempt=0, hint=None, rng=random.Random(0))
    with pytest.raises(ValueError, match="counts from 1"):
        full_jitter(0, random.Random(0))
