"""Per-account limits in the running daemon: daily caps, pauses, the app-wide pace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.clock import ManualClock
from orchestrator.limits import TokenBucket
from orchestrator.sandbox import Sandbox

from .harness import (
    KEY,
    SECRET,
    banned,
    faults,
    job_state,
    make_video,
    running,
    submit,
    until_ended,
    wait_for,
    write_config,
)


@pytest.mark.anyio
async def test_the_app_bucket_spreads_requests_over_time() -> None:
    clock = ManualClock(1000.0)
    bucket = TokenBucket(5.0, 10, clock)
    for _ in range(10):
        await bucket.acquire()
    assert clock.now() == 1000.0  # the burst goes at once
    for _ in range(90):
        await bucket.acquire()
    assert clock.now() == pytest.approx(1000.0 + 90 / 5.0)


async def states(client: httpx.AsyncClient, jobs: list[dict[str, Any]]) -> list[str]:
    return [(await job_state(client, j["id"]))["job"]["state"] for j in jobs]


async def account_status(client: httpx.AsyncClient, account: str) -> dict[str, Any]:
    status = (await client.get("/v1/status")).json()
    return next(a for a in status["accounts"] if a["id"] == account)  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_the_daily_cap_is_checked_before_dispatch(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        account_toml="daily_cap = 2",
    )
    async with running(config) as (_, client):
        jobs = [
            await submit(
                client,
                account="acme-us",
                video_path=str(make_video(tmp_path / f"{n}.mp4", 10_000 + n, seed=n)),
            )
            for n in range(4)
        ]
        for job in jobs[:2]:
            assert await until_ended(client, job["id"]) == "published"
        acct = await account_status(client, "acme-us")
        assert acct["cap"]["used"] == 2 and acct["cap"]["limit"] == 2
        assert await states(client, jobs[2:]) == ["queued", "queued"]
    ledger = sandbox.ledger()
    assert len(ledger["posts"]) == 2 and ledger["cap_rejections"] == 0
    inits = [r for r in sandbox.requests() if r["endpoint"] == "video_init"]
    assert len(inits) == 2, "no init was sent beyond the cap"


@pytest.mark.anyio
async def test_a_lower_cap_at_tiktok_is_learned_and_the_job_deferred(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        user_options={"acme-us": {"daily_cap": 1}},  # TikTok allows this creator one post a day
        account_toml="daily_cap = 5",
    )
    async with running(config) as (_, client):
        first = await submit(
            client, account="acme-us", video_path=str(make_video(tmp_path / "a.mp4", 10_000))
        )
        assert await until_ended(client, first["id"]) == "published"
        second = await submit(
            client, account="acme-us", video_path=str(make_video(tmp_path / "b.mp4", 10_001))
        )

        async def deferred() -> dict[str, Any] | None:
            detail = await job_state(client, second["id"])
            return detail if detail["job"]["state"] == "retry_wait" else None

        detail = await wait_for(deferred, what="the second job to be deferred")
        assert detail["job"]["error"]["code"] == "spam_risk_too_many_posts"
        acct = await account_status(client, "acme-us")
        assert acct["cap"]["learned"] == 1 and acct["cap"]["limit"] == 1
    assert len(sandbox.ledger()["posts"]) == 1


@pytest.mark.anyio
async def test_a_paused_account_takes_no_work_until_resumed(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    async with running(config) as (_, client):
        paused = await client.post("/v1/accounts/acme-us/pause")
        assert paused.json() == {"account": "acme-us", "paused": True}
        assert (await client.post("/v1/accounts/nobody/pause")).status_code == 404
        job = await submit(
            client, account="acme-us", video_path=str(make_video(tmp_path / "a.mp4", 10_000))
        )
        acct = await account_status(client, "acme-us")
        assert acct["paused"] is True
        assert (await job_state(client, job["id"]))["job"]["state"] == "queued"
        assert sandbox.requests() == [] or all(
            r["endpoint"] != "video_init" for r in sandbox.requests()
        )
        await client.post("/v1/accounts/acme-us/resume")
        assert await until_ended(client, job["id"]) == "published"


@pytest.mark.anyio
async def test_a_failing_account_trips_its_breaker_rests_and_comes_back_after_one_probe(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        accounts=("acme-us", "acme-uk"),
        extra_daemon={"breaker_failures": 3, "breaker_reset": 120.0},
    )
    # The creator is barred from posting (the account's own fault) for the next three calls.
    sandbox.set_faults(faults(banned(times=3, open_id="open-acme-us")))
    videos = [make_video(tmp_path / f"{n}.mp4", 10_000 + n, seed=n) for n in range(6)]
    async with running(config) as (_, client):
        failing = [
            await submit(client, account="acme-us", video_path=str(v), caption="x")
            for v in videos[:3]
        ]
        for job in failing:
            assert await until_ended(client, job["id"]) == "review"
        acct = await account_status(client, "acme-us")
        assert acct["breaker"] == "open"
        # While it rests, its jobs wait; another account is not affected.
        waiting = [
            await submit(client, account="acme-us", video_path=str(v), caption="y")
            for v in videos[3:5]
        ]
        other = await submit(client, account="acme-uk", video_path=str(videos[5]))
        assert await until_ended(client, other["id"]) == "published"
        for job in waiting:
            assert await until_ended(client, job["id"]) == "published"
        assert (await account_status(client, "acme-us"))["breaker"] == "closed"
    calls = [
        r["at"]
        for r in sandbox.requests()
        if r["endpoint"] == "creator_info" and r["open_id"] == "open-acme-us"
    ]
    assert len(calls) == 5  # three failures, one probe, then the other job
    assert calls[3] - calls[2] >= 120.0 - 1, "nothing was sent while the breaker was open"


@pytest.mark.anyio
async def test_an_open_breaker_stays_open_across_a_restart(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        extra_daemon={"breaker_failures": 2, "breaker_reset": 1e6},
    )
    sandbox.set_faults(faults(banned(times=2)))
    videos = [make_video(tmp_path / f"{n}.mp4", 10_000 + n, seed=n) for n in range(3)]
    async with running(config) as (_, client):
        for v in videos[:2]:
            job = await submit(client, account="acme-us", video_path=str(v))
            assert await until_ended(client, job["id"]) == "review"
        assert (await account_status(client, "acme-us"))["breaker"] == "open"
    async with running(config) as (_, client):
        acct = await account_status(client, "acme-us")
        assert acct["breaker"] == "open" and acct["breaker_retry_at"] is not None
        job = await submit(client, account="acme-us", video_path=str(videos[2]))
        assert (await job_state(client, job["id"]))["job"]["state"] == "queued"
    assert len([r for r in sandbox.requests() if r["endpoint"] == "creator_info"]) == 2


@pytest.mark.anyio
async def test_the_app_wide_cap_pauses_every_account_at_once(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        accounts=("acme-uk", "acme-us"),
    )
    sandbox.set_faults(
        {
            "rules": [
                {
                    "endpoint": "video_init",
                    "fault": "error",
                    "code": "reached_active_user_cap",
                    "times": 1,
                }
            ]
        }
    )
    async with running(config) as (daemon, client):
        due = daemon.clock.now() + 30
        later = await submit(
            client,
            account="acme-us",
            video_path=str(make_video(tmp_path / "b.mp4", 10_001)),
            not_before=due,
        )
        first = await submit(
            client, account="acme-uk", video_path=str(make_video(tmp_path / "a.mp4", 10_000))
        )

        async def deferred() -> bool:
            return (await job_state(client, first["id"]))["job"]["state"] == "retry_wait"

        await wait_for(deferred, what="the first job to be deferred")
        status = (await client.get("/v1/status")).json()
        assert status["daemon"]["app_paused_reason"] == "reached_active_user_cap"

        async def past_due() -> bool:
            return daemon.clock.now() > due + 60

        await wait_for(past_due, what="the second job to be due")
        assert (await job_state(client, later["id"]))["job"]["state"] == "queued"
    us = [r for r in sandbox.requests() if r["open_id"] == "open-acme-us"]
    assert us == [], "another account of the same app did not try, and trip, in turn"


def test_429s_across_accounts_pause_the_app_but_one_accounts_do_not() -> None:
    from orchestrator.limits import AppGuard

    guard = AppGuard()
    assert guard.rate_limited("a", 1000.0, None) is None
    assert guard.rate_limited("a", 1001.0, None) is None  # one token's own limit
    assert guard.rate_limited("b", 1002.0, None) is None
    assert guard.rate_limited("c", 1100.0, None) is None  # "a" and "b" are a minute old
    assert guard.rate_limited("d", 1101.0, None) is None
    assert guard.rate_limited("e", 1102.0, None) == 1102.0 + AppGuard.RATE_PAUSE  # c, d, e
    assert guard.blocked_until(1103.0) == 1162.0
    assert guard.blocked_until(1200.0) is None  # the pause ends by itself
