"""The retry policy as a pure function, and ``settle`` against a real store."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.catalog import classify_error, classify_fail_reason
from orchestrator.clock import ManualClock
from orchestrator.errors import TikTokApiError
from orchestrator.jobs import JobState
from orchestrator.retries import JobFailed, local, settle, verdict
from orchestrator.store import Store

from .test_store import NOW, make_job

RNG = random.Random(7)


def test_fatal_goes_dead_and_review_goes_to_a_human() -> None:
    fatal = classify_fail_reason("file_format_check_failed")
    assert verdict(fatal, attempt=1, hint=None, rng=RNG).to is JobState.DEAD
    review = classify_fail_reason("spam_risk_text")
    assert verdict(review, attempt=1, hint=None, rng=RNG).to is JobState.REVIEW


def test_a_second_content_rejection_of_the_same_asset_goes_to_review() -> None:
    fatal = classify_fail_reason("picture_size_check_failed")
    assert fatal.entry.content_rejection
    assert verdict(fatal, attempt=1, hint=None, rng=RNG, rejections=1).to is JobState.DEAD
    assert verdict(fatal, attempt=1, hint=None, rng=RNG, rejections=2).to is JobState.REVIEW


def test_daily_cap_defers_instead_of_failing_and_honours_the_hint() -> None:
    cap = classify_error(
        TikTokApiError(
            "cap", endpoint="video_init", http_status=403, code="spam_risk_too_many_posts"
        )
    )
    v = verdict(cap, attempt=3, hint=7200.0, rng=RNG)
    assert v.to is JobState.RETRY_WAIT and v.delay == 7200.0


def test_force_wins_over_the_policy() -> None:
    c = local("init_outcome_unknown")
    assert verdict(c, attempt=1, hint=None, rng=RNG, force=JobState.UNCERTAIN).to is (
        JobState.UNCERTAIN
    )


def test_unknown_codes_retry_a_few_times_then_die() -> None:
    unknown = classify_error(
        TikTokApiError("?", endpoint="video_init", http_status=400, code="brand_new_code")
    )
    assert not unknown.known
    outcomes = [verdict(unknown, attempt=n, hint=None, rng=RNG).to for n in (1, 2, 3)]
    assert outcomes == [JobState.RETRY_WAIT, JobState.RETRY_WAIT, JobState.DEAD]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "db.sqlite")
    yield s
    await s.close()


@pytest.mark.anyio
async def test_settle_counts_unknown_codes_and_keeps_the_reason(store: Store) -> None:
    await store.submit(replace(make_job(), state=JobState.DISPATCHING, attempt_count=1), "p")
    job = await store.get_job("j_1")
    assert job is not None
    exc = TikTokApiError("?", endpoint="video_init", http_status=400, code="brand_new_code")
    clock = ManualClock(NOW)
    job = await settle(store, clock, RNG, job, JobFailed(classify_error(exc), "odd answer"))
    assert job.state is JobState.RETRY_WAIT and job.lane == "retry"
    assert job.not_before >= NOW
    [unknown] = await store.unknown_codes()
    assert (unknown.code, unknown.count, unknown.last_job) == ("brand_new_code", 1, "j_1")
    events, _ = await store.timeline("j_1")
    assert events[-1].detail["class"] == "retry" and events[-1].detail["known"] is False


@pytest.mark.anyio
async def test_a_flood_of_due_retries_does_not_delay_a_new_job(store: Store) -> None:
    for n in range(500):
        retry = replace(
            make_job(f"j_r{n}", f"kr{n}"),
            state=JobState.RETRY_WAIT,
            lane="retry",
            not_before=NOW - 600,
        )
        await store.submit(retry, f"r{n}")
    await store.submit(replace(make_job("j_new", "knew"), not_before=NOW), "new")
    nxt = await store.next_job("acme-us", NOW)
    assert nxt is not None and nxt.id == "j_new"
