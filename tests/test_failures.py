"""Failures end in known states: retries, the dead-letter queue, review, uncertain.

The daemon runs in-process against the sandbox, whose fault plan makes TikTok misbehave;
the sandbox's ledger proves that no retry ever posted a video twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.sandbox import Sandbox

from .harness import KEY, SECRET, job_state, make_video, running, submit, until_ended, write_config

pytestmark = pytest.mark.anyio


def setup(tmp_path: Path, sandbox: Sandbox, epoch: float) -> tuple[Path, Path]:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    return config, make_video(tmp_path / "clip.mp4", 20_000)


def requests_to(sandbox: Sandbox, endpoint: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.requests() if r["endpoint"] == endpoint]


async def actions(client: httpx.AsyncClient, job_id: str) -> list[str]:
    return [e["action"] for e in (await job_state(client, job_id))["timeline"]]


async def test_a_retryable_init_error_is_retried_and_classified(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config, video = setup(tmp_path, sandbox, epoch)
    sandbox.set_faults(
        {"rules": [{"endpoint": "video_init", "fault": "html_5xx", "http_status": 502, "times": 1}]}
    )
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        assert await until_ended(client, job["id"]) == "published"
        detail = await job_state(client, job["id"])
    assert "job.retry_wait" in [e["action"] for e in detail["timeline"]]
    failed = [a for a in detail["attempts"] if a["outcome"] == "error"]
    assert failed[0]["error_code"] == "http_502"
    assert failed[0]["classification"]["class"] == "retry"
    assert "<html" in failed[0]["raw_response"].lower()
    assert len(sandbox.ledger()["posts"]) == 1


async def test_internal_processing_failure_retries_with_a_new_init_up_to_three_times(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config, video = setup(tmp_path, sandbox, epoch)
    failing = {"endpoint": "video_init", "fault": "processing_failure", "fail_reason": "internal"}
    sandbox.set_faults({"rules": [{**failing, "times": 2}]})
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video), caption="a")
        assert await until_ended(client, job["id"]) == "published"
        assert len(requests_to(sandbox, "video_init")) == 3
        assert len(sandbox.ledger()["posts"]) == 1

        sandbox.set_faults({"rules": [failing]})  # never succeeds
        job = await submit(client, account="acme-us", video_path=str(video), caption="b")
        assert await until_ended(client, job["id"]) == "dead"
        detail = (await job_state(client, job["id"]))["job"]
    assert detail["error"]["code"] == "internal"
    assert len(requests_to(sandbox, "video_init")) == 3 + 3  # a budget of three attempts
    assert len(sandbox.ledger()["posts"]) == 1


async def test_chunk_failures_resume_the_same_upload_and_dlq_requeue_resumes_too(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config, video = setup(tmp_path, sandbox, epoch)
    sandbox.set_faults({"rules": [{"endpoint": "upload", "fault": "html_5xx", "http_status": 503}]})
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        assert await until_ended(client, job["id"], timeout=60) == "dead"
        dead = (await job_state(client, job["id"]))["job"]
        assert dead["publish_id"], "the publish is kept: TikTok may still take the upload"
        listed = (await client.get("/v1/dlq")).json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]

        sandbox.set_faults({"rules": []})
        response = await client.post(f"/v1/dlq/{job['id']}/requeue", json={})
        assert response.status_code == 200, response.text
        assert await until_ended(client, job["id"]) == "published"
        assert "job.resumed" in await actions(client, job["id"])
    assert len(requests_to(sandbox, "video_init")) == 1, "requeue resumed; it did not re-post"
    assert len(sandbox.ledger()["posts"]) == 1


async def test_the_same_asset_rejected_twice_goes_to_review(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config, video = setup(tmp_path, sandbox, epoch)
    sandbox.set_faults(
        {
            "rules": [
                {
                    "endpoint": "video_init",
                    "fault": "processing_failure",
                    "fail_reason": "picture_size_check_failed",
                }
            ]
        }
    )
    async with running(config) as (_, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        assert await until_ended(client, job["id"]) == "dead"
        response = await client.post(f"/v1/dlq/{job['id']}/requeue", json={"fresh": True})
        assert response.json()["job"]["state"] == "queued"
        assert await until_ended(client, job["id"]) == "review"
        status = (await client.get("/v1/status")).json()
    assert [a["job"] for a in status["needs_attention"]] == [job["id"]]
    assert sandbox.ledger()["posts"] == []


async def test_an_uncertain_job_is_resolved_by_the_operator(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config, video = setup(tmp_path, sandbox, epoch)
    sandbox.set_faults({"rules": [{"endpoint": "video_init", "fault": "drop_before", "times": 2}]})
    async with running(config) as (_, client):
        first = await submit(client, account="acme-us", video_path=str(video), caption="1")
        assert await until_ended(client, first["id"]) == "uncertain"
        second = await submit(client, account="acme-us", video_path=str(video), caption="2")
        assert await until_ended(client, second["id"]) == "uncertain"
        status = (await client.get("/v1/status")).json()
        assert {a["job"] for a in status["needs_attention"]} == {first["id"], second["id"]}

        # The request was dropped before TikTok acted: the operator checks, sees no post.
        r = await client.post(f"/v1/jobs/{first['id']}/resolve", json={"posted": False})
        assert r.json()["job"]["state"] == "queued"
        assert await until_ended(client, first["id"]) == "published"
        r = await client.post(f"/v1/jobs/{second['id']}/resolve", json={"posted": True})
        assert r.json()["job"]["state"] == "published"
        again = await client.post(f"/v1/jobs/{second['id']}/resolve", json={"posted": True})
        assert again.status_code == 409
        assert (await client.post(f"/v1/jobs/{second['id']}/resolve", json={})).status_code == 400
    assert len(sandbox.ledger()["posts"]) == 1


async def test_purge_deletes_only_dead_jobs(tmp_path: Path, sandbox: Sandbox, epoch: float) -> None:
    config, video = setup(tmp_path, sandbox, epoch)
    sandbox.set_faults(
        {
            "rules": [
                {"endpoint": "video_init", "fault": "error", "code": "invalid_params", "times": 1}
            ]
        }
    )
    async with running(config) as (_, client):
        dead = await submit(client, account="acme-us", video_path=str(video), caption="x")
        assert await until_ended(client, dead["id"]) == "dead"
        alive = await submit(client, account="acme-us", video_path=str(video), caption="y")
        assert await until_ended(client, alive["id"]) == "published"
        r = await client.post("/v1/dlq/purge", json={"ids": [dead["id"], alive["id"]]})
        assert r.json() == {"purged": 1}
        assert (await client.get(f"/v1/jobs/{dead['id']}")).status_code == 404
        assert (await client.get(f"/v1/jobs/{alive['id']}")).status_code == 200
        assert (await client.post("/v1/dlq/purge", json={})).status_code == 400
