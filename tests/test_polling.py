"""Following accepted posts to the end: the schedule, fail_reasons, stuck posts, the sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.jobs import EARLY_POLLS, MIN_POLL_GAP, next_poll_at
from orchestrator.sandbox import Sandbox, SandboxConfig

from .harness import (
    KEY,
    SECRET,
    job_state,
    make_video,
    running,
    submit,
    until_ended,
    wait_for,
    write_config,
)


def test_poll_schedule_is_early_then_steady() -> None:
    since = 1000.0
    times = []
    for polls in range(7):
        times.append(next_poll_at(since=since, polls=polls, now=since, steady=120.0) - since)
    assert times == [10.0, 30.0, 60.0, 120.0, 240.0, 360.0, 480.0]
    assert EARLY_POLLS == (10.0, 30.0, 60.0, 120.0)
    # A late poll is not followed by a burst of catch-up polls.
    late = since + 1000
    assert next_poll_at(since=since, polls=1, now=late, steady=120.0) == late + MIN_POLL_GAP


async def until_state(client: httpx.AsyncClient, job_id: str, state: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        detail = await job_state(client, job_id)
        return detail if detail["job"]["state"] == state else None

    return await wait_for(reached, what=f"{job_id} to be {state}")


def assert_store_matches_ledger(sandbox: Sandbox, published: list[dict[str, Any]]) -> None:
    ledger = sandbox.ledger()
    assert ledger["duplicates"] == []
    assert not any(ledger["violations"].values()), ledger["violations"]
    assert sorted(p["publish_id"] for p in ledger["posts"]) == sorted(
        j["publish_id"] for j in published
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fail_reason", "expected"),
    [
        ("file_format_check_failed", "dead"),  # fatal: fix the asset
        ("spam_risk_text", "review"),  # a judgement on the content: a human decides
        ("auth_removed", "review"),  # the creator revoked access: re-authorize
        ("spam_risk_too_many_posts", "retry_wait"),  # the daily cap: try later, not failed
    ],
)
async def test_failed_posts_end_by_their_fail_reasons_class(
    tmp_path: Path, sandbox: Sandbox, epoch: float, fail_reason: str, expected: str
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    sandbox.set_faults(
        {
            "rules": [
                {
                    "endpoint": "video_init",
                    "fault": "processing_failure",
                    "fail_reason": fail_reason,
                    "times": 1,
                }
            ]
        }
    )
    video = make_video(tmp_path / "a.mp4", 20_000)
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        detail = await until_state(client, job["id"], expected)
    assert detail["job"]["error"]["code"] == fail_reason
    assert sandbox.ledger()["posts"] == []


@pytest.mark.anyio
async def test_slow_processing_is_polled_on_schedule_not_hammered(
    tmp_path: Path, epoch: float
) -> None:
    with Sandbox(
        SandboxConfig(
            time_scale=60,
            epoch=epoch,
            processing_seconds=400.0,
            client_key=KEY,
            client_secret=SECRET,
        )
    ) as sandbox:
        config = write_config(
            tmp_path,
            sandbox,
            epoch=epoch,
            client_key=KEY,
            client_secret=SECRET,
            poll_interval=120.0,
        )
        video = make_video(tmp_path / "a.mp4", 20_000)
        async with running(config) as (_, client):
            job = await submit(client, account="acme-us", video_path=str(video))
            assert await until_ended(client, job["id"], timeout=60) == "published"
            published = (await job_state(client, job["id"]))["job"]
        polls = [r for r in sandbox.requests() if r["endpoint"] == "status"]
        # 10, 30, 60, 120, 240, 360 s: still processing; 480 s: done.
        assert 6 <= len(polls) <= 8, len(polls)
        assert_store_matches_ledger(sandbox, [published])


@pytest.mark.anyio
async def test_a_post_stuck_forever_raises_an_alert_then_goes_to_review(
    tmp_path: Path, epoch: float
) -> None:
    scale = 600.0  # ten simulated minutes a second
    with Sandbox(
        SandboxConfig(time_scale=scale, epoch=epoch, client_key=KEY, client_secret=SECRET)
    ) as sandbox:
        config = write_config(
            tmp_path,
            sandbox,
            epoch=epoch,
            client_key=KEY,
            client_secret=SECRET,
            scale=scale,
            poll_interval=120.0,
            extra_daemon={"stuck_after": 600.0, "review_stuck_after": 3000.0},
        )
        sandbox.set_faults({"rules": [{"endpoint": "video_init", "fault": "stuck"}]})
        video = make_video(tmp_path / "a.mp4", 20_000)
        async with running(config) as (_, client):
            job = await submit(client, account="acme-us", video_path=str(video))

            async def flagged() -> dict[str, Any] | None:
                status = (await client.get("/v1/status")).json()
                stuck = [a for a in status["needs_attention"] if a["state"] == "stuck"]
                return stuck[0] if stuck else None

            alert = await wait_for(flagged, what="the stuck alert")
            assert alert["job"] == job["id"]
            detail = await until_state(client, job["id"], "review")
        assert detail["job"]["error"]["code"] == "processing_stuck"
        assert "job.stuck" in [e["action"] for e in detail["timeline"]]
        assert sandbox.ledger()["posts"] == []


@pytest.mark.anyio
async def test_the_sweep_settles_a_post_the_poller_lost_track_of(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        # After a failed poll the poller waits poll_interval: here, for months.
        poll_interval=1e7,
        extra_daemon={"reconcile_interval": 120.0},
    )
    sandbox.set_faults({"rules": [{"endpoint": "status", "fault": "html_5xx", "http_status": 503}]})
    video = make_video(tmp_path / "a.mp4", 20_000)
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))

        async def poll_failed() -> bool:
            attempts = (await job_state(client, job["id"]))["attempts"]
            return any(a["step"] == "status" for a in attempts)

        await wait_for(poll_failed, what="a failed status poll")
        sandbox.set_faults({"rules": []})
        detail = await until_state(client, job["id"], "published")
    published = [e for e in detail["timeline"] if e["action"] == "job.published"]
    assert published[0]["detail"]["via"] == "sweep"
    assert_store_matches_ledger(sandbox, [detail["job"]])


@pytest.mark.anyio
async def test_a_post_on_an_account_waiting_for_reauth_is_asked_about_hourly(
    tmp_path: Path, epoch: float
) -> None:
    """Without a token the status cannot be read; the poller waits an hour between tries
    instead of warning every poll interval until a person re-authorizes the account."""
    from orchestrator.errors import NeedsReauth
    from orchestrator.poller import PARKED_POLL

    with Sandbox(
        SandboxConfig(
            time_scale=60,
            epoch=epoch,
            processing_seconds=100_000.0,
            client_key=KEY,
            client_secret=SECRET,
        )
    ) as sandbox:
        config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
        video = make_video(tmp_path / "v.mp4", 20_000)
        async with running(config) as (daemon, client):
            job = await submit(client, account="acme-us", video_path=str(video))

            async def processing() -> bool:
                return (await job_state(client, job["id"]))["job"]["state"] == "processing"

            await wait_for(processing, what="the post to reach processing")
            tokens, store = daemon.tokens, daemon.store
            assert tokens is not None and store is not None
            sandbox.set_faults(
                {"rules": [{"endpoint": "token", "fault": "oauth_error", "code": "invalid_grant"}]}
            )
            with pytest.raises(NeedsReauth):
                await tokens.refresh("acme-us", stale=await tokens.access_token("acme-us"))
            asked_at = daemon.clock.now()
            if daemon.poller is not None:
                daemon.poller.wake()

            async def parked_poll() -> float | None:
                row = await store.get_job(job["id"])
                assert row is not None and row.state.value == "processing"
                due = row.next_poll_at or 0.0
                return due if due >= asked_at + PARKED_POLL else None

            await wait_for(parked_poll, what="the poller to back off to an hourly ask")
    statuses = [r for r in sandbox.requests() if r["endpoint"] == "status"]
    assert all(r["status"] == 200 for r in statuses), "no status call left without a token"
