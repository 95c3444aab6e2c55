"""TikTok webhooks: signature checks, de-duplication, and a nudge to the poller."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.sandbox import Sandbox
from orchestrator.webhooks import WebhookRejected, parse, sign, verify

from .harness import (
    KEY,
    SCALE,
    SECRET,
    job_state,
    make_video,
    running,
    submit,
    wait_for,
    write_config,
)

NOW = 1_800_000_000


def test_signature_round_trip_and_refusals() -> None:
    body = b'{"event": "post.publish.complete"}'
    header = sign(body, "s3cret", NOW)
    verify(header, body, "s3cret", now=NOW + 10, tolerance=300)
    cases = [
        (None, body, NOW, "unsigned"),
        (header, body + b" ", NOW, "bad_signature"),  # the body was changed in transit
        (sign(body, "other", NOW), body, NOW, "bad_signature"),
        (header, body, NOW + 301, "stale_signature"),  # a replay of an old delivery
        ("t=abc,s=00", body, NOW, "bad_signature"),
    ]
    for value, payload, now, code in cases:
        with pytest.raises(WebhookRejected) as caught:
            verify(value, payload, "s3cret", now=now, tolerance=300)
        assert caught.value.code == code


def test_content_arrives_as_a_json_string() -> None:
    body = json.dumps(
        {
            "event": "post.publish.failed",
            "content": json.dumps({"publish_id": "v_pub_file~1", "reason": "internal"}),
        }
    ).encode()
    event = parse(body)
    assert (event.event, event.publish_id, event.detail) == (
        "post.publish.failed",
        "v_pub_file~1",
        {"reason": "internal"},
    )


@pytest.mark.anyio
async def test_a_delivery_makes_the_daemon_ask_tiktok_at_once(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        poll_interval=1e7,  # after one failed poll, the schedule would wait for months
        extra_daemon={"reconcile_interval": 1e7},
        extra_toml='[webhooks]\nlisten = "127.0.0.1:0"\n',
    )
    sandbox.set_faults({"rules": [{"endpoint": "status", "fault": "html_5xx", "http_status": 503}]})
    video = make_video(tmp_path / "a.mp4", 20_000)
    async with running(config) as (daemon, client):
        job = await submit(client, account="acme-us", video_path=str(video))

        async def poll_failed() -> dict[str, Any] | None:
            detail = await job_state(client, job["id"])
            return detail if any(a["step"] == "status" for a in detail["attempts"]) else None

        publish_id = (await wait_for(poll_failed, what="a failed poll"))["job"]["publish_id"]
        sandbox.set_faults({"rules": []})
        sandbox.advance(60)  # TikTok has finished processing
        body = json.dumps(
            {
                "client_key": KEY,
                "event": "post.publish.complete",
                "create_time": int(time.time()),
                "content": json.dumps({"publish_id": publish_id, "publish_type": "DIRECT_PUBLISH"}),
            }
        ).encode()
        simulated_now = int(epoch + (time.time() - epoch) * SCALE)
        url = f"http://127.0.0.1:{daemon.webhook_port}/tiktok/webhook"
        async with httpx.AsyncClient() as http:
            forged = await http.post(
                url, content=body, headers={"TikTok-Signature": sign(body, "wrong", simulated_now)}
            )
            assert forged.status_code == 401
            signed = {"TikTok-Signature": sign(body, SECRET, simulated_now)}
            assert (await http.post(url, content=body, headers=signed)).status_code == 200
            assert (await http.post(url, content=body, headers=signed)).status_code == 200

        async def published() -> dict[str, Any] | None:
            detail = await job_state(client, job["id"])
            return detail if detail["job"]["state"] == "published" else None

        detail = await wait_for(published, what="the job to be published")
    received = [e for e in detail["timeline"] if e["action"] == "webhook.received"]
    assert len(received) == 1, "the redelivery was recognised as a duplicate"
    assert len(sandbox.ledger()["posts"]) == 1
