"""The token registry: refresh timing, onboarding, parking, encryption at rest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from orchestrator.crypto import generate_key
from orchestrator.errors import NeedsReauth
from orchestrator.sandbox import Sandbox, SandboxConfig
from orchestrator.store import TokenRecord
from orchestrator.tokens import cooldown, effective_margin, refresh_due

from .harness import KEY, SECRET, make_video, running, submit, until_ended, wait_for, write_config

NOW = 1_800_000_000.0


def record(**kw: Any) -> TokenRecord:
    base: dict[str, Any] = {
        "account_id": "a",
        "open_id": "o",
        "access_token": "act.x",
        "access_expires_at": NOW + 7200,
        "refresh_token": "rft.x",
        "refresh_expires_at": NOW + 180 * 86400,
        "scopes": frozenset({"video.publish"}),
        "state": "valid",
        "imported_sha256": None,
        "last_error": None,
        "updated_at": NOW,
        "access_issued_at": NOW,
    }
    return TokenRecord(**(base | kw))


def test_refresh_is_scheduled_from_the_real_lifetime() -> None:
    assert refresh_due(record(), 600) == NOW + 7200 - 600
    # A 24 h margin cannot make a 2 h token refresh all the time: at most a quarter of it.
    assert refresh_due(record(), 86400) == NOW + 7200 - 1800
    # Scheduled from expires_in, never from a hard-coded lifetime.
    assert refresh_due(record(access_expires_at=NOW + 86400), 600) == NOW + 86400 - 600
    assert effective_margin(100, 600) == 25


def test_failures_cool_down_and_parked_accounts_are_not_scheduled() -> None:
    assert [cooldown(n) for n in (1, 2, 3, 10)] == [30, 60, 120, 900]
    failing = record(refresh_failures=2, next_refresh_at=NOW + 7000)
    assert refresh_due(failing, 600) == NOW + 7000
    assert refresh_due(record(state="needs_reauth"), 600) is None
    assert refresh_due(record(access_token=None, access_expires_at=None), 600) == NOW


def test_token_values_never_show_in_repr() -> None:
    assert "act.x" not in repr(record()) and "rft.x" not in repr(record())


@pytest.mark.anyio
async def test_onboarding_with_the_code_flow_and_with_a_refresh_token(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    redirect = "http://127.0.0.1:8765/callback"
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        accounts=("acme-us", "acme-uk"),
        without_token_file=("acme-us", "acme-uk"),
        extra_toml="",
    )
    text = config.read_text().replace("[tiktok]\n", f'[tiktok]\nredirect_uri = "{redirect}"\n', 1)
    config.write_text(text)
    async with running(config) as (_, client):
        status = (await client.get("/v1/status")).json()
        assert [a["token"]["state"] for a in status["accounts"]] == ["missing", "missing"]

        started = (await client.post("/v1/accounts/acme-us/auth/url", json={})).json()
        query = parse_qs(urlsplit(started["url"]).query)
        assert started["pkce"] and query["code_challenge_method"] == ["S256"]
        assert query["redirect_uri"] == [redirect] and query["state"] == [started["state"]]
        code = sandbox.authorize(
            open_id="open-acme-us",
            scopes=query["scope"][0].split(","),
            redirect_uri=redirect,
            code_challenge=query["code_challenge"][0],
        )
        forged = f"{redirect}?code={code}&state=somebody-else"
        refused = await client.post("/v1/accounts/acme-us/auth/exchange", json={"redirect": forged})
        assert refused.status_code == 400
        assert "CSRF" in refused.json()["error"]["message"]

        # The refused attempt used up that authorization: the creator starts again.
        again = (await client.post("/v1/accounts/acme-us/auth/url", json={})).json()
        query = parse_qs(urlsplit(again["url"]).query)
        code = sandbox.authorize(
            open_id="open-acme-us",
            scopes=query["scope"][0].split(","),
            redirect_uri=redirect,
            code_challenge=query["code_challenge"][0],
        )
        landed = f"{redirect}?code={code}&state={again['state']}"
        done = await client.post("/v1/accounts/acme-us/auth/exchange", json={"redirect": landed})
        assert done.status_code == 200, done.text
        assert done.json()["token"]["state"] == "valid"

        grant = json.loads((tmp_path / "tokens" / "acme-uk.json").read_text())
        imported = await client.post(
            "/v1/accounts/acme-uk/auth/import", json={"refresh_token": grant["refresh_token"]}
        )
        assert imported.status_code == 200, imported.text
        assert imported.json()["token"]["open_id"] == "open-acme-uk"
        body = imported.text + (await client.get("/v1/status")).text
        video = make_video(tmp_path / "a.mp4", 20_000)
        job = await submit(client, account="acme-uk", video_path=str(video))
        assert await until_ended(client, job["id"]) == "published"
    assert grant["refresh_token"] not in body and grant["access_token"] not in body
    assert sandbox.ledger()["violations"]["refresh_token_reuse"] == 0


@pytest.mark.anyio
async def test_invalid_grant_parks_only_that_account(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    accounts = ("acme-us", "acme-uk", "acme-de")
    config = write_config(
        tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET, accounts=accounts
    )
    for account in ("acme-us", "acme-de"):  # due for a refresh at start; acme-uk is not yet
        path = tmp_path / "tokens" / f"{account}.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"expires_in": 0}))
    sandbox.set_faults(
        {
            "rules": [
                {
                    "endpoint": "token",
                    "open_id": "open-acme-uk",
                    "fault": "oauth_error",
                    "code": "invalid_grant",
                }
            ]
        }
    )
    video = make_video(tmp_path / "a.mp4", 20_000)
    async with running(config) as (daemon, client):
        tokens = daemon.tokens
        assert tokens is not None
        later = {"acme-uk": daemon.clock.now() + 3600}  # still queued when the account parks
        jobs = {
            a: await submit(client, account=a, video_path=str(video), not_before=later.get(a))
            for a in accounts
        }
        # acme-uk's refresh comes after its job is in (a refresh at start would race the
        # submission): TikTok refuses it with invalid_grant.
        with pytest.raises(NeedsReauth):
            await tokens.refresh("acme-uk", stale=await tokens.access_token("acme-uk"))
        assert await until_ended(client, jobs["acme-us"]["id"]) == "published"
        assert await until_ended(client, jobs["acme-de"]["id"]) == "published"

        async def parked() -> dict[str, Any] | None:
            status = (await client.get("/v1/status")).json()
            flagged = [a for a in status["needs_attention"] if a.get("state") == "needs_reauth"]
            return status if flagged else None

        status = await wait_for(parked, what="acme-uk to be parked")
        states = {a["id"]: a["token"]["state"] for a in status["accounts"]}
        assert states == {"acme-us": "valid", "acme-uk": "needs_reauth", "acme-de": "valid"}
        waiting = (await client.get(f"/v1/jobs/{jobs['acme-uk']['id']}")).json()["job"]
        assert waiting["state"] == "queued", "a pinned job waits for its account"
        refused = await client.post(
            "/v1/jobs", json={"account": "acme-uk", "video_path": str(video), "caption": "new"}
        )
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "account_needs_reauth"
    ledger = sandbox.ledger()
    assert ledger["violations"]["expired_token_requests"] == 0
    tokens = [r for r in sandbox.requests() if r["endpoint"] == "token"]
    assert sum(1 for r in tokens if r["open_id"] == "open-acme-uk") == 1, "no hammering"


@pytest.mark.anyio
async def test_tokens_are_encrypted_at_rest(tmp_path: Path, sandbox: Sandbox, epoch: float) -> None:
    key = tmp_path / "token_key"
    key.write_text(generate_key())
    key.chmod(0o600)
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    config.write_text(
        config.read_text().replace("[tiktok]\n", f'[tiktok]\ntoken_key_file = "{key}"\n', 1)
    )
    grant = json.loads((tmp_path / "tokens" / "acme-us.json").read_text())
    video = make_video(tmp_path / "a.mp4", 20_000)
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        assert await until_ended(client, job["id"]) == "published"
    state = tmp_path / "state"
    for db_file in state.glob("orchestrator.db*"):
        raw = db_file.read_bytes()
        assert grant["access_token"].encode() not in raw
        assert grant["refresh_token"].encode() not in raw
    assert (state / "orchestrator.db").stat().st_mode & 0o077 == 0


@pytest.mark.anyio
async def test_fifty_accounts_through_three_simulated_days_of_two_hour_tokens(
    tmp_path: Path,
) -> None:
    scale = 5400.0  # three days in 48 s
    epoch = time.time()
    accounts = tuple(f"acct-{n:02d}" for n in range(50))
    sandbox_config = SandboxConfig(
        time_scale=scale, epoch=epoch, client_key=KEY, client_secret=SECRET, access_ttl=7200
    )
    with Sandbox(sandbox_config) as sandbox:
        config = write_config(
            tmp_path,
            sandbox,
            epoch=epoch,
            client_key=KEY,
            client_secret=SECRET,
            accounts=accounts,
            scale=scale,
            poll_interval=120.0,
        )
        video = make_video(tmp_path / "a.mp4", 20_000)
        async with running(config) as (daemon, client):
            start = daemon.clock.now()
            jobs = []
            for day in range(3):
                for n, account in enumerate(accounts):
                    jobs.append(
                        await submit(
                            client,
                            account=account,
                            video_path=str(video),
                            caption=f"day {day}",
                            not_before=start + day * 86400 + 3600 + n * 600,
                        )
                    )

            async def three_days_passed() -> bool:
                return daemon.clock.now() > start + 3 * 86400

            await wait_for(three_days_passed, timeout=120, what="three simulated days")
            for job in jobs:
                assert await until_ended(client, job["id"], timeout=60) == "published"
            status = (await client.get("/v1/status")).json()
        assert {a["token"]["state"] for a in status["accounts"]} == {"valid"}
        assert all(a["token"]["expires_in"] > 0 for a in status["accounts"])
        assert min(a["token"]["refreshes"].get("ok", 0) for a in status["accounts"]) >= 30
        ledger = sandbox.ledger()
        assert ledger["violations"]["expired_token_requests"] == 0
        assert ledger["violations"]["refresh_token_reuse"] == 0
        assert len(ledger["posts"]) == len(jobs) and ledger["duplicates"] == []


@pytest.mark.anyio
async def test_a_refresh_token_near_its_end_is_warned_about_days_ahead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from orchestrator.clock import ManualClock
    from orchestrator.refresher import Refresher
    from orchestrator.store import Store
    from orchestrator.tokens import TokenRegistry

    store = await Store.open(tmp_path / "db.sqlite")
    try:
        clock = ManualClock(NOW)
        await store.save_token(record(account_id="soon", refresh_expires_at=NOW + 3 * 86400))
        await store.save_token(record(account_id="later", refresh_expires_at=NOW + 90 * 86400))
        registry = TokenRegistry(store, None, clock)  # type: ignore[arg-type]
        refresher = Refresher(registry, AsyncIOScheduler(), clock, ["soon", "later"])
        with caplog.at_level("WARNING"):
            await refresher.sweep()
            await refresher.sweep()  # once a day, not at every sweep
        warned = [r for r in caplog.records if getattr(r, "action", "") == "token.refresh_expiring"]
        assert [r.account for r in warned] == ["soon"]  # type: ignore[attr-defined]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_tokens_are_served_from_memory_and_follow_every_rotation(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    """A post needs the token several times: one read of the row, then the registry's copy,
    which must follow each rotation it writes (a stale copy would reuse a refresh token)."""
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    async with running(config) as (daemon, _):
        tokens, store = daemon.tokens, daemon.store
        assert tokens is not None and store is not None
        reads = 0
        real_get = store.get_token

        async def counting(account_id: str) -> TokenRecord | None:
            nonlocal reads
            reads += 1
            return await real_get(account_id)

        store.get_token = counting  # type: ignore[method-assign]
        first = await tokens.access_token("acme-us")
        for _ in range(5):
            assert await tokens.access_token("acme-us") == first
        assert reads <= 1
        for _ in range(3):
            fresh = await tokens.refresh("acme-us", stale=await tokens.access_token("acme-us"))
            assert await tokens.access_token("acme-us") == fresh.access_token
            assert await tokens.load("acme-us") == fresh
        assert fresh.access_token != first
    assert sandbox.ledger()["violations"]["refresh_token_reuse"] == 0
