"""The daemon in-process against the sandbox: real HTTP, real SQLite, real Unix socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.config import load_config
from orchestrator.daemon import Daemon
from orchestrator.sandbox import Sandbox

from .harness import KEY, SECRET, job_state, make_video, running, submit, until_ended, write_config

pytestmark = pytest.mark.anyio


async def test_posts_to_several_accounts_exactly_once(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    accounts = ("acme-us", "acme-uk", "acme-de")
    config = write_config(
        tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET, accounts=accounts
    )
    async with running(config) as (_, client):
        jobs = []
        for i, account in enumerate(accounts):
            for n in range(2):
                video = make_video(
                    tmp_path / f"{account}-{n}.mp4", 50_000 + i * 1000 + n, seed=i * 7 + n
                )
                jobs.append(
                    await submit(
                        client, account=account, video_path=str(video), caption=f"clip {n}"
                    )
                )
        jobs.append(
            await submit(
                client,
                account="acme-de",
                video_url="https://media.example.com/a.mp4",
                caption="pulled",
                privacy_level="PUBLIC_TO_EVERYONE",
            )
        )
        for job in jobs:
            assert await until_ended(client, job["id"]) == "published"
        detail = await job_state(client, jobs[-1]["id"])
        assert detail["job"]["post_ids"], "a public post gets its post id"
        assert [e["action"] for e in detail["timeline"]][:3] == [
            "job.submitted",
            "job.dispatching",
            "job.init_sent",
        ]
        status = (await client.get("/v1/status")).json()
        assert status["totals"] == {"published": 7}
        assert {a["id"]: a["token"]["state"] for a in status["accounts"]} == dict.fromkeys(
            accounts, "valid"
        )
    ledger = sandbox.ledger()
    assert len(ledger["posts"]) == 7 and ledger["duplicates"] == []
    assert not any(ledger["violations"].values()), ledger["violations"]
    posted = {(p["open_id"], p["content_sha256"]) for p in ledger["posts"]}
    assert posted == {(f"open-{j['account']}", j["content_sha256"]) for j in jobs}


async def test_multi_chunk_upload(tmp_path: Path, sandbox: Sandbox, epoch: float) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    video = make_video(tmp_path / "big.mp4", 70_000_000)  # over 64,000,000: must be chunked
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video), caption="big")
        assert await until_ended(client, job["id"]) == "published"
        detail = await job_state(client, job["id"])
    assert detail["job"]["uploaded_bytes"] == 70_000_000
    assert sandbox.ledger()["posts"][0]["content_sha256"] == job["content_sha256"]
    uploads = [r for r in sandbox.requests() if r["endpoint"] == "upload"]
    assert [r["status"] for r in uploads] == [206] * 5 + [201]  # 10 MiB chunks, last absorbs


async def test_submit_validation_and_idempotency(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    video = make_video(tmp_path / "a.mp4", 10_000)
    async with running(config) as (_, client):

        async def refused(payload: Any, status: int, code: str, **kw: Any) -> None:
            response = await client.post("/v1/jobs", json=payload, **kw)
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == code

        await refused(
            {"account": "acme-us", "video_path": str(tmp_path / "missing.mp4")},
            400,
            "video_not_found",
        )
        await refused({"account": "nobody", "video_path": str(video)}, 404, "unknown_account")
        await refused(
            {"account": "acme-us", "video_path": str(video), "colour": 1}, 400, "unknown_field"
        )
        await refused({"account": "acme-us"}, 400, "invalid_request")
        await refused({"account": "acme-us", "video_path": "rel.mp4"}, 400, "invalid_request")
        response = await client.post("/v1/jobs", content=b"{not json")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
        assert (await client.get("/v1/nowhere")).json()["error"]["code"] == "not_found"

        payload = {
            "account": "acme-us",
            "video_path": str(video),
            "caption": "one",
            "idempotency_key": "k-1",
        }
        first = await client.post("/v1/jobs", json=payload)
        again = await client.post("/v1/jobs", json=payload)
        assert first.status_code == 201 and again.status_code == 200
        assert first.json()["job"]["id"] == again.json()["job"]["id"]
        await refused({**payload, "caption": "two"}, 409, "idempotency_conflict")
        # Without a key, the same video and caption for the same account is the same post.
        derived = {"account": "acme-us", "video_path": str(video), "caption": "three"}
        a = await client.post("/v1/jobs", json=derived)
        b = await client.post("/v1/jobs", json=derived)
        assert a.json()["job"]["id"] == b.json()["job"]["id"]
        assert (await until_ended(client, first.json()["job"]["id"])) == "published"
        assert (await until_ended(client, a.json()["job"]["id"])) == "published"
    assert len(sandbox.ledger()["posts"]) == 2


async def test_processing_failure_ends_dead_with_reason(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    sandbox.set_faults(
        {
            "rules": [
                {
                    "endpoint": "video_init",
                    "fault": "processing_failure",
                    "fail_reason": "file_format_check_failed",
                    "times": 1,
                }
            ]
        }
    )
    video = make_video(tmp_path / "a.mp4", 10_000)
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        assert await until_ended(client, job["id"]) == "dead"
        detail = (await job_state(client, job["id"]))["job"]
    assert detail["error"]["code"] == "file_format_check_failed"
    assert sandbox.ledger()["posts"] == []


async def test_init_error_keeps_tiktoks_raw_answer(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    sandbox.set_faults(
        {
            "rules": [
                {
                    "endpoint": "video_init",
                    "fault": "error",
                    "code": "unaudited_client_can_only_post_to_private_accounts",
                }
            ]
        }
    )
    video = make_video(tmp_path / "a.mp4", 10_000)
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        assert await until_ended(client, job["id"]) == "dead"
        detail = await job_state(client, job["id"])
    init = [a for a in detail["attempts"] if a["step"] == "init"]
    assert init[0]["http_status"] == 403
    assert init[0]["error_code"] == "unaudited_client_can_only_post_to_private_accounts"
    assert (
        init[0]["raw_response"]["error"]["code"]
        == "unaudited_client_can_only_post_to_private_accounts"
    )


async def test_init_without_answer_is_uncertain_and_never_reposted(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    sandbox.set_faults({"rules": [{"endpoint": "video_init", "fault": "drop_after", "times": 1}]})
    video = make_video(tmp_path / "a.mp4", 10_000)
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        assert await until_ended(client, job["id"]) == "uncertain"
        inits = [r for r in sandbox.requests() if r["endpoint"] == "video_init"]
    assert len(inits) == 1, "an init whose answer was lost is never sent again"


async def test_expired_access_token_is_refreshed_before_use(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    token_file = tmp_path / "tokens" / "acme-us.json"
    import json

    grant = json.loads(token_file.read_text())
    token_file.write_text(json.dumps({**grant, "expires_in": 0}))  # already expired
    sandbox.set_faults(
        {
            "rules": [
                {
                    "endpoint": "creator_info",
                    "fault": "error",
                    "code": "access_token_invalid",
                    "times": 1,
                }
            ]
        }
    )
    video = make_video(tmp_path / "a.mp4", 10_000)
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        assert await until_ended(client, job["id"]) == "published"
        body = (await client.get("/v1/status")).text
    ledger = sandbox.ledger()
    assert ledger["violations"]["expired_token_requests"] == 0
    assert ledger["violations"]["refresh_token_reuse"] == 0
    refreshes = [r for r in sandbox.requests() if r["endpoint"] == "token"]
    assert len(refreshes) == 2  # once for the expired token, once after the injected 401
    assert grant["access_token"] not in body and grant["refresh_token"] not in body


async def test_malformed_http_does_not_hurt_the_daemon(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    async with running(config) as (daemon, client):
        stream = await anyio.connect_unix(daemon.config.daemon.socket_path)
        await stream.send(b"NOT HTTP AT ALL\r\n\r\n")
        answer = await stream.receive()
        await stream.aclose()
        assert b" 400 " in answer.split(b"\r\n")[0]
        assert (await client.get("/v1/health")).json()["ok"] is True


async def test_a_second_daemon_does_not_steal_the_socket(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    from orchestrator.errors import DaemonAlreadyRunning

    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    async with running(config) as (_, client):
        second = Daemon(load_config(config))
        with pytest.raises(DaemonAlreadyRunning, match="state directory"):
            await second.run()
        assert (await client.get("/v1/health")).status_code == 200
