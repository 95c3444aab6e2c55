"""Pool jobs: the router picks an account, records why, and moves jobs off unhealthy ones."""

from __future__ import annotations

from pathlib import Path

import pytest

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

pytestmark = pytest.mark.anyio


def pool_config(tmp_path: Path, sandbox: Sandbox, epoch: float, **kw: object) -> Path:
    return write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        accounts=("acme-uk", "acme-us"),
        account_toml='tags = ["fit"]',
        **kw,  # type: ignore[arg-type]
    )


async def test_pool_jobs_avoid_an_account_whose_breaker_is_open(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = pool_config(
        tmp_path, sandbox, epoch, extra_daemon={"breaker_failures": 2, "breaker_reset": 1e6}
    )
    sandbox.set_faults(faults(banned(open_id="open-acme-uk")))
    videos = [make_video(tmp_path / f"{n}.mp4", 10_000 + n, seed=n) for n in range(4)]
    async with running(config) as (_, client):
        for v in videos[:2]:
            job = await submit(client, account="acme-uk", video_path=str(v))
            assert await until_ended(client, job["id"]) == "review"
        pooled = [await submit(client, pool="pool:fit", video_path=str(v)) for v in videos[2:]]
        for job in pooled:
            assert await until_ended(client, job["id"]) == "published"
            detail = await job_state(client, job["id"])
            assert detail["job"]["account"] == "acme-us"
            routed = next(e for e in detail["timeline"] if e["action"] == "job.routed")
            considered = " ".join(routed["detail"]["considered"])
            assert "acme-uk" in considered and "breaker open" in considered
    assert {p["open_id"] for p in sandbox.ledger()["posts"]} == {"open-acme-us"}


async def test_queued_pool_jobs_move_when_their_account_is_paused(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = pool_config(tmp_path, sandbox, epoch)
    videos = [make_video(tmp_path / f"{n}.mp4", 10_000 + n, seed=n) for n in range(2)]
    async with running(config) as (daemon, client):
        later = daemon.clock.now() + 86400  # not due yet: they sit in their queues
        jobs = [
            await submit(client, pool="pool:fit", video_path=str(v), not_before=later)
            for v in videos
        ]
        accounts = [(await job_state(client, j["id"]))["job"]["account"] for j in jobs]
        assert sorted(accounts) == ["acme-uk", "acme-us"], "spread over the least loaded"
        pinned = await submit(
            client, account="acme-uk", video_path=str(videos[0]), caption="pinned", not_before=later
        )
        await client.post("/v1/accounts/acme-uk/pause")

        async def moved() -> bool:
            for job in jobs:
                if (await job_state(client, job["id"]))["job"]["account"] != "acme-us":
                    return False
            return True

        await wait_for(moved, what="the pool job to leave the paused account")
        assert (await job_state(client, pinned["id"]))["job"]["account"] == "acme-uk"


async def test_a_bad_pool_spec_is_refused(tmp_path: Path, sandbox: Sandbox, epoch: float) -> None:
    config = pool_config(tmp_path, sandbox, epoch)
    video = make_video(tmp_path / "a.mp4", 10_000)
    async with running(config) as (_, client):
        for payload in (
            {"pool": "fit", "video_path": str(video)},
            {"pool": "pool:fit", "account": "acme-us", "video_path": str(video)},
        ):
            r = await client.post("/v1/jobs", json=payload)
            assert r.status_code == 400, r.text


async def test_a_hundred_accounts_use_their_caps_fully_and_never_exceed_them(
    tmp_path: Path, epoch: float
) -> None:
    from orchestrator.sandbox import SandboxConfig

    scale, cap, accounts = 600.0, 3, tuple(f"acct-{n:03d}" for n in range(100))
    with Sandbox(
        SandboxConfig(
            time_scale=scale, epoch=epoch, client_key=KEY, client_secret=SECRET, daily_cap=cap
        )
    ) as sandbox:
        config = write_config(
            tmp_path,
            sandbox,
            epoch=epoch,
            client_key=KEY,
            client_secret=SECRET,
            accounts=accounts,
            scale=scale,
            poll_interval=60.0,
            account_toml=f'tags = ["fit"]\ndaily_cap = {cap}',
        )
        allowed = cap * len(accounts)
        videos = [make_video(tmp_path / f"{n}.mp4", 5_000 + n, seed=n) for n in range(40)]
        async with running(config) as (_, client):
            for n in range(allowed + 100):  # more work than the caps allow
                await submit(
                    client, pool="pool:fit", video_path=str(videos[n % 40]), caption=f"#{n}"
                )

            async def all_allowed_published() -> bool:
                status = (await client.get("/v1/status")).json()
                return status["totals"].get("published", 0) >= allowed

            await wait_for(all_allowed_published, timeout=120, what="the caps to be used")
            status = (await client.get("/v1/status")).json()
        assert status["totals"]["published"] == allowed  # 100% of what the caps allow
        ledger = sandbox.ledger()
        per_account: dict[str, int] = {}
        for post in ledger["posts"]:
            per_account[post["open_id"]] = per_account.get(post["open_id"], 0) + 1
        assert max(per_account.values()) == cap and len(per_account) == len(accounts)
        assert ledger["violations"]["rate_limited"] == 0, "the sandbox never answered 429"
        assert ledger["cap_rejections"] == 0 and ledger["violations"]["cap_exceeded"] == 0
        assert ledger["duplicates"] == []
