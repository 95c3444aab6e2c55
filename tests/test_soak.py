"""The chaos soak's short form: every sandbox fault, SIGKILLs, and the ledger as the judge.

``bench/soak.py`` holds the soak; this runs it for about a minute with a fixed seed (set
``SOAK_SEED`` to replay another) and fails on any invariant it finds broken. The long form is
``python -m bench.soak --long``. The settle phase waits on the jobs, not on a clock, so a
loaded machine makes the test slower, never red; the timeout is only for a hang (about 60 s
idle, 75 s beside other test runs on 2 cores).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bench.soak import SHORT, SoakPlan, problems, run_soak, table, where_is
from orchestrator.router import AccountView, choose, parse_target
from orchestrator.sandbox import Sandbox

from .harness import (
    KEY,
    SECRET,
    faults,
    job_state,
    make_video,
    running,
    submit,
    until_ended,
    wait_for,
    write_config,
)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_chaos_soak_leaves_every_job_settled_and_the_ledger_clean(tmp_path: Path) -> None:
    seed = int(os.environ.get("SOAK_SEED", "8"))
    plan = SoakPlan(seed=seed, **SHORT)  # type: ignore[arg-type]
    summary = run_soak(plan, tmp_path)
    print(table(summary))
    assert problems(summary) == [], f"seed {seed}: rerun with SOAK_SEED={seed}"
    # The soak must really have hurt: kills, and most fault classes firing.
    assert summary["kills"] >= 5
    assert summary["fault_rules_fired"] >= summary["fault_rules"] * 0.8
    states = summary["final_states"]
    assert states.get("published", 0) > summary["jobs"] // 2
    assert {"dead", "cancelled", "review"} <= set(states), states


@pytest.mark.anyio
async def test_an_init_whose_answer_was_lost_counts_against_the_daily_cap(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    """Found by the long soak (cap_rejections 1): TikTok counts an init it accepted even if
    its answer never arrived, so the daemon must too, or it sends an init past the cap, gets
    spam_risk_too_many_posts, and learns a lower cap for good."""
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        user_options={"acme-us": {"daily_cap": 2}},
        account_toml="daily_cap = 2",
    )
    sandbox.set_faults(faults({"endpoint": "video_init", "fault": "drop_after", "times": 1}))
    videos = [make_video(tmp_path / f"{n}.mp4", 10_000 + n, seed=n) for n in range(3)]
    async with running(config) as (_, client):
        lost = await submit(client, account="acme-us", video_path=str(videos[0]))
        assert await until_ended(client, lost["id"]) == "uncertain"

        async def cap() -> dict[str, Any]:
            status = (await client.get("/v1/status")).json()
            return status["accounts"][0]["cap"]  # type: ignore[no-any-return]

        async def counted() -> bool:
            return (await cap())["used"] == 1

        await wait_for(counted, timeout=10, what="the lost init to count against the cap")
        second = await submit(client, account="acme-us", video_path=str(videos[1]))
        assert await until_ended(client, second["id"]) == "published"
        third = await submit(client, account="acme-us", video_path=str(videos[2]))

        async def held() -> bool:
            c = await cap()
            job = (await job_state(client, third["id"]))["job"]
            return c["used"] == 2 and job["state"] == "queued"

        await wait_for(held, timeout=10, what="the third job to wait for the cap")
        assert (await cap())["learned"] is None
    assert sandbox.ledger()["cap_rejections"] == 0


def test_the_router_lets_an_inbox_upload_go_to_an_account_at_its_daily_cap() -> None:
    """Found by the long soak (inbox pool jobs left with no account for hours): TikTok's daily
    cap counts Direct Post inits only, so it must not keep an inbox upload from an account."""
    pool = parse_target("pool:soak")
    capped = AccountView(
        id="capped",
        tags=frozenset({"soak"}),
        region=None,
        enabled=True,
        paused=False,
        breaker_open=False,
        token_ok=True,
        scopes=frozenset({"video.publish", "video.upload"}),
        headroom=0,
        health=1.0,
        queued=0,
    )
    assert choose(pool, [capped], scope="video.publish").account is None
    assert choose(pool, [capped], scope="video.upload", capped=False).account == "capped"


@pytest.mark.anyio
async def test_an_inbox_pool_job_is_routed_to_an_account_at_its_daily_cap(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        user_options={"acme-us": {"daily_cap": 1}},
        account_toml='daily_cap = 1\ntags = ["fit"]',
    )
    videos = [make_video(tmp_path / f"{n}.mp4", 10_000 + n, seed=n) for n in range(3)]
    async with running(config) as (_, client):
        first = await submit(client, account="acme-us", video_path=str(videos[0]))
        assert await until_ended(client, first["id"]) == "published"
        direct = await submit(client, pool="pool:fit", video_path=str(videos[1]))
        inbox = await submit(client, pool="pool:fit", video_path=str(videos[2]), mode="inbox")
        assert await until_ended(client, inbox["id"]) == "published"
        assert (await job_state(client, inbox["id"]))["job"]["account"] == "acme-us"
        held = await job_state(client, direct["id"])
        assert held["job"]["state"] == "queued" and held["job"]["account"] is None
        routed = next(e for e in held["timeline"] if e["action"] == "job.routed")
        assert "daily cap" in routed["detail"]["reason"]
    assert [p["mode"] for p in sandbox.ledger()["posts"]] == ["direct", "inbox"]


NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _account(id: str, *, token: str = "valid", used: int = 0, breaker: str = "closed") -> Any:
    cap = {"used": used, "limit": 15, "blocked_until": None, "next_slot": NOW + 600}
    return {"id": id, "token": {"state": token}, "breaker": breaker, "paused": False, "cap": cap}


def _job(state: str, account: str | None, **changes: Any) -> dict[str, Any]:
    job = {"id": "j_1", "state": state, "account": account, "mode": "direct", "pool": None}
    job |= {"publish_id": None, "not_before": "2027-01-15T08:00:00Z", "error": None}
    return job | changes


@pytest.mark.parametrize(
    ("job", "accounts", "place"),
    [
        (_job("review", "a"), [_account("a")], "human"),
        (_job("processing", "a", publish_id="p"), [_account("a")], "moving"),
        (_job("processing", "a", publish_id="p"), [_account("a", token="needs_reauth")], "reauth"),
        (_job("uploading", "a", publish_id="p"), [_account("a", token="needs_reauth")], "moving"),
        (_job("queued", "a"), [_account("a", used=15)], "window"),
        (_job("queued", "a", mode="inbox"), [_account("a", used=15)], "moving"),
        (_job("queued", "a", publish_id="p"), [_account("a", used=15)], "moving"),
        (
            _job(
                "retry_wait",
                "a",
                mode="inbox",
                not_before="2027-01-15T09:00:00Z",
                error={"code": "spam_risk_too_many_pending_share"},
            ),
            [_account("a")],
            "window",
        ),
        (_job("queued", None, pool="pool:soak"), [_account("a", used=15)], "no_account"),
        (_job("queued", None, pool="pool:soak"), [_account("a", used=15), _account("b")], "moving"),
        (
            _job("queued", None, pool="pool:soak", mode="inbox"),
            [_account("a", used=15)],
            "moving",
        ),
        (
            _job("queued", "a", pool="pool:soak"),
            [_account("a", breaker="open"), _account("b")],
            "moving",
        ),
    ],
)
def test_the_soak_tells_waiting_for_a_human_or_a_window_from_stuck(
    job: dict[str, Any], accounts: list[dict[str, Any]], place: str
) -> None:
    assert where_is(job, {a["id"]: a for a in accounts}, NOW) == place


@pytest.mark.anyio
async def test_an_inbox_upload_does_not_wait_behind_a_direct_post_held_by_the_daily_cap(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    """Found by the long soak (inbox jobs overdue by hours on accounts at their cap): the
    daily cap holds Direct Post inits only, but the shard idled until the cap freed whenever
    the job at the head of its queue was a direct post, so the inbox uploads queued behind it
    waited for a cap that does not apply to them."""
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        user_options={"acme-us": {"daily_cap": 1}},
        account_toml="daily_cap = 1",
    )
    videos = [make_video(tmp_path / f"{n}.mp4", 10_000 + n, seed=n) for n in range(3)]
    async with running(config) as (_, client):
        first = await submit(client, account="acme-us", video_path=str(videos[0]))
        assert await until_ended(client, first["id"]) == "published"
        held = await submit(client, account="acme-us", video_path=str(videos[1]))
        inbox = await submit(client, account="acme-us", video_path=str(videos[2]), mode="inbox")
        assert await until_ended(client, inbox["id"], timeout=10) == "published"
        assert (await job_state(client, held["id"]))["job"]["state"] == "queued"
    assert [p["mode"] for p in sandbox.ledger()["posts"]] == ["direct", "inbox"]
