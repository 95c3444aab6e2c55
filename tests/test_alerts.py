"""Alerts open once, resolve once, judge error rates against each account's own baseline,
and reach a signed webhook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.alerts import Conditions, ErrorRates, evaluate, is_spike, sign
from orchestrator.httpd import Request, Response, serve_tcp
from orchestrator.sandbox import Sandbox

from .harness import (
    KEY,
    SECRET,
    banned,
    faults,
    make_video,
    running,
    submit,
    until_ended,
    wait_for,
    write_config,
)


def test_a_spike_is_judged_against_the_accounts_own_baseline() -> None:
    assert is_spike(5, 10, baseline=0.05)  # usually fine, now half fails
    assert not is_spike(5, 10, baseline=0.45)  # always like this: not news
    assert not is_spike(2, 2, baseline=0.0)  # too few to say


def test_error_rates_split_recent_from_baseline() -> None:
    rates = ErrorRates()
    for n in range(100):
        rates.record("a", failed=n % 20 == 0, now=1000.0 + n * 60)
    for n in range(6):
        rates.record("a", failed=True, now=1000.0 + 100 * 60 + n)
    failures, calls, baseline = rates.snapshot(1000.0 + 100 * 60 + 10)["a"]
    assert (failures, calls) == (6, 20)  # 14 calls of the last 15 minutes were fine, then 6 failed
    assert baseline == pytest.approx(5 / 86)
    assert "errors:a" in evaluate(Conditions(error_rates={"a": (failures, calls, baseline)}))


def test_each_condition_is_one_alert_with_a_stable_key() -> None:
    alerts = evaluate(
        Conditions(
            open_breakers=("a",),
            reauth_accounts=("b",),
            uncertain_jobs=(("j_1", "a"),),
            stuck_jobs=(("j_2", "b"),),
            app_paused="reached_active_user_cap",
        )
    )
    assert set(alerts) == {"breaker:a", "reauth:b", "uncertain:j_1", "stuck:j_2", "app:paused"}


@pytest.mark.anyio
async def test_a_breaker_alert_reaches_the_webhook_opened_then_resolved(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    received: list[tuple[dict[str, Any], str]] = []

    async def receiver(request: Request) -> Response:
        received.append((json.loads(request.body), request.headers["x-orchestrator-signature"]))
        return Response.json(200, {})

    secret_file = tmp_path / "alert_secret"
    secret_file.write_text("hook-secret")
    async with anyio.create_task_group() as hooks:
        port = await hooks.start(serve_tcp, "127.0.0.1", 0, receiver)
        config = write_config(
            tmp_path,
            sandbox,
            epoch=epoch,
            client_key=KEY,
            client_secret=SECRET,
            extra_daemon={"breaker_failures": 2, "breaker_reset": 120.0},
            extra_toml=(
                f'[alerts]\nwebhook_url = "http://127.0.0.1:{port}/hook"\n'
                f'webhook_secret_file = "{secret_file}"\n'
            ),
        )
        sandbox.set_faults(faults(banned(times=2)))
        videos = [make_video(tmp_path / f"{n}.mp4", 10_000 + n, seed=n) for n in range(3)]
        async with running(config) as (_, client):
            for v in videos[:2]:
                job = await submit(client, account="acme-us", video_path=str(v))
                assert await until_ended(client, job["id"]) == "review"
            probe = await submit(client, account="acme-us", video_path=str(videos[2]))
            assert await until_ended(client, probe["id"]) == "published"

            async def resolved() -> bool:
                return any(
                    n["event"] == "resolved" and n["key"] == "breaker:acme-us" for n, _ in received
                )

            await wait_for(resolved, what="the breaker alert to resolve")
        hooks.cancel_scope.cancel()
    breaker = [(n, sig) for n, sig in received if n["key"] == "breaker:acme-us"]
    assert [n["event"] for n, _ in breaker] == ["opened", "resolved"]
    for note, signature in breaker:
        body = json.dumps(note, sort_keys=True).encode()
        assert signature == sign(body, "hook-secret")
