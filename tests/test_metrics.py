"""Prometheus metrics: a real daemon against the sandbox, scraped and parsed.

The daemon runs in-process with the TikTok client's ``on_response`` hook feeding the
``Metrics`` under test; the exposition is parsed with prometheus-client's own parser and
checked against what the sandbox and the store say happened.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import daemon as daemon_module
from orchestrator.config import load_config
from orchestrator.daemon import Daemon
from orchestrator.errors import TikTokApiError, TikTokTransportError
from orchestrator.httpd import Request, serve_tcp
from orchestrator.metrics import Metrics, label
from orchestrator.sandbox import Sandbox
from orchestrator.tiktok import TikTokClient

from .harness import (
    KEY,
    SECRET,
    api,
    faults,
    make_video,
    submit,
    until_ended,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.anyio

Samples = list[tuple[str, dict[str, str], float]]


def hooked(metrics: Metrics) -> Callable[..., TikTokClient]:
    """Builds the daemon's TikTok client with ``metrics`` hearing every response, beside any
    hook the daemon passes itself."""

    def build(*args: Any, **kwargs: Any) -> TikTokClient:
        wired = kwargs.pop("on_response", None)

        def both(endpoint: str, seconds: float, outcome: str) -> None:
            metrics.observe_request(endpoint, seconds, outcome)
            if wired is not None:
                wired(endpoint, seconds, outcome)

        return TikTokClient(*args, on_response=both, **kwargs)

    return build


@asynccontextmanager
async def running_with_metrics(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Daemon, Metrics, httpx.AsyncClient]]:
    daemon = Daemon(load_config(config_path))
    metrics = Metrics(daemon)
    monkeypatch.setattr(daemon_module, "TikTokClient", hooked(metrics))
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        async with api(daemon.config.daemon.socket_path) as client:
            yield daemon, metrics, client
        daemon.request_stop()


def get(path: str, method: str = "GET") -> Request:
    return Request(method=method, path=path, query={}, headers={}, body=b"")


async def scrape(metrics: Metrics) -> tuple[str, Samples]:
    response = await metrics.handle(get("/metrics"))
    assert response.status == 200, response.body
    assert response.content_type == CONTENT_TYPE_LATEST
    text = response.body.decode()
    samples = [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample called ``name`` whose labels include ``labels``."""
    found = [v for n, ls, v in samples if n == name and labels.items() <= ls.items()]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} samples"
    return found[0] if found else None


async def test_a_scrape_reports_jobs_caps_tokens_errors_and_latency(
    tmp_path: Path, sandbox: Sandbox, epoch: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        accounts=("acme-us", "beta-uk"),
    )
    video = make_video(tmp_path / "clip.mp4", 20_000)
    # Every init of beta-uk is refused with a fatal code: its job goes to the dead letters.
    sandbox.set_faults(
        faults(
            {
                "endpoint": "video_init",
                "fault": "error",
                "code": "invalid_params",
                "open_id": "open-beta-uk",
            }
        )
    )
    lifetime = json.loads((tmp_path / "tokens" / "acme-us.json").read_text())["expires_in"]
    async with running_with_metrics(config, monkeypatch) as (daemon, metrics, client):
        ok = [
            await submit(client, account="acme-us", video_path=str(video), caption=c)
            for c in ("one", "two")
        ]
        bad = await submit(client, account="beta-uk", video_path=str(video), caption="three")
        later = await submit(
            client,
            account="acme-us",
            video_path=str(video),
            caption="tomorrow",
            not_before=daemon.clock.now() + 86400,
        )
        assert [await until_ended(client, j["id"]) for j in ok] == ["published", "published"]
        assert await until_ended(client, bad["id"]) == "dead"
        assert daemon.tokens is not None
        await daemon.tokens.refresh("acme-us", stale=None, force=True)
        text, samples = await scrape(metrics)
        _, again = await scrape(metrics)  # history is added up once, not at every scrape
        assert daemon.store is not None
        tokens = await daemon.store.all_tokens()

    assert value(samples, "orchestrator_up") == 1
    assert value(samples, "orchestrator_build_info", version="0.1.0") == 1
    assert value(samples, "orchestrator_app_paused") == 0
    # Jobs by state, all accounts; the queue of one account by lane and state.
    assert value(samples, "orchestrator_jobs", state="published") == 2
    assert value(samples, "orchestrator_jobs", state="dead") == 1
    assert value(samples, "orchestrator_jobs", state="queued") == 1
    assert value(samples, "orchestrator_jobs", state="uncertain") == 0
    queued = {"account": "acme-us", "lane": "new", "state": "queued"}
    assert value(samples, "orchestrator_account_queue_jobs", **queued) == 1
    assert value(samples, "orchestrator_account_queue_jobs", account="beta-uk") is None
    assert later["state"] == "queued"
    # The failed attempt, by TikTok's code and the catalog's class.
    errors = {"code": "invalid_params", "class": "fatal"}
    assert value(samples, "orchestrator_attempt_errors_total", **errors) == 1
    # Caps: posts made, against the configured cap.
    posts = sandbox.ledger()["posts"]
    assert len(posts) == 2
    assert value(samples, "orchestrator_account_daily_cap_used", account="acme-us") == 2
    assert value(samples, "orchestrator_account_daily_cap_used", account="beta-uk") == 0
    assert value(samples, "orchestrator_account_daily_cap_limit", account="acme-us") == 15
    # Healthy breakers, tokens within their lifetime, the forced refresh counted.
    for account in ("acme-us", "beta-uk"):
        assert value(samples, "orchestrator_account_breaker_state", account=account) == 0
        expiry = value(samples, "orchestrator_account_token_expiry_seconds", account=account)
        assert expiry is not None and 0 < expiry <= lifetime
        assert value(samples, "orchestrator_account_token_state", account=account) == 1
    refreshed = {"account": "acme-us", "outcome": "ok"}
    assert value(samples, "orchestrator_account_token_refreshes_total", **refreshed) == 1
    assert value(again, "orchestrator_account_token_refreshes_total", **refreshed) == 1
    assert value(samples, "orchestrator_account_token_refreshes_total", account="beta-uk") is None
    assert value(samples, "orchestrator_poll_lag_seconds") == 0
    # Latency, measured in-process through the client's hook.
    inits = {"endpoint": "init", "outcome": "ok"}
    assert value(samples, "orchestrator_tiktok_request_seconds_count", **inits) == 2
    refused = {"endpoint": "init", "outcome": "invalid_params"}
    assert value(samples, "orchestrator_tiktok_request_seconds_count", **refused) == 1
    refresh = {"endpoint": "refresh", "outcome": "ok"}
    assert value(samples, "orchestrator_tiktok_request_seconds_count", **refresh) == 1
    creator = value(
        samples, "orchestrator_tiktok_request_seconds_count", endpoint="creator_info", outcome="ok"
    )
    assert creator is not None and creator >= 3
    # No credential, however it is spelled.
    secrets = [t for r in tokens for t in (r.access_token, r.refresh_token) if t]
    assert len(secrets) == 4
    for secret in [*secrets, SECRET]:
        assert secret not in text


async def test_overdue_polls_show_as_poll_lag(
    tmp_path: Path, sandbox: Sandbox, epoch: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    video = make_video(tmp_path / "clip.mp4", 20_000)
    # TikTok's status endpoint hangs (for less than the client's 10 s deadline): the first
    # poll of the post cannot finish, and the schedule falls behind while the clock runs.
    sandbox.set_faults(faults({"endpoint": "status", "fault": "delay", "seconds": 8.0}))
    async with running_with_metrics(config, monkeypatch) as (_, metrics, client):
        await submit(client, account="acme-us", video_path=str(video))

        async def lag() -> Samples | None:
            _, samples = await scrape(metrics)
            behind = value(samples, "orchestrator_poll_lag_seconds")
            return samples if behind is not None and behind >= 60 else None

        samples = await wait_for(lag, timeout=7.0, what="the poll schedule to fall behind")
        sandbox.set_faults(faults())  # wakes the held request
    processing = {"account": "acme-us", "lane": "new", "state": "processing"}
    assert value(samples, "orchestrator_account_queue_jobs", **processing) == 1
    slow = value(samples, "orchestrator_tiktok_request_seconds_count", endpoint="status")
    assert slow is None  # the hanging request has not answered yet


async def test_metrics_answer_over_tcp_and_refuse_other_paths(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    daemon = Daemon(load_config(config))
    metrics = Metrics(daemon)
    starting = await metrics.handle(get("/metrics"))
    assert starting.status == 503
    assert json.loads(starting.body)["error"]["code"] == "starting"
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        port = await tg.start(serve_tcp, "127.0.0.1", 0, metrics.handle)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            response = await http.get("/metrics")
            missing = await http.get("/v1/status")
            posted = await http.post("/metrics")
        tg.cancel_scope.cancel()
        daemon.request_stop()
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert "orchestrator_account_breaker_state" in response.text
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert posted.status_code == 405


async def test_the_client_reports_each_request_once_with_a_short_outcome(
    sandbox: Sandbox,
) -> None:
    grant = sandbox.create_user(open_id="open-solo")
    heard: list[tuple[str, float, str]] = []

    def hook(endpoint: str, seconds: float, outcome: str) -> None:
        heard.append((endpoint, seconds, outcome))
        if outcome == "connection_lost":
            raise RuntimeError("a broken hook must not change the call's result")

    async with httpx.AsyncClient() as http:
        tiktok = TikTokClient(
            http,
            base_url=sandbox.base_url,
            client_key=KEY,
            client_secret=lambda: SECRET,
            timeout=10.0,
            on_response=hook,
        )
        await tiktok.creator_info(grant["access_token"])
        sandbox.set_faults(
            faults(
                {"endpoint": "creator_info", "fault": "error", "code": "rate_limit_exceeded"},
            )
        )
        with pytest.raises(TikTokApiError):
            await tiktok.creator_info(grant["access_token"])
        sandbox.set_faults(faults({"endpoint": "creator_info", "fault": "drop_before"}))
        with pytest.raises(TikTokTransportError):
            await tiktok.creator_info(grant["access_token"])
        sandbox.set_faults(
            faults({"endpoint": "token", "fault": "oauth_error", "code": "invalid_grant"})
        )
        with pytest.raises(TikTokApiError):
            await tiktok.refresh_token(grant["refresh_token"])
        sandbox.set_faults(faults())
        await tiktok.refresh_token(grant["refresh_token"])
    assert [(e, o) for e, _, o in heard] == [
        ("creator_info", "ok"),
        ("creator_info", "rate_limit_exceeded"),
        ("creator_info", "connection_lost"),
        ("refresh", "invalid_grant"),
        ("refresh", "ok"),
    ]
    assert all(0 <= seconds < 10 for _, seconds, _ in heard)


def test_label_values_from_tiktok_are_published_only_when_plain() -> None:
    assert label("spam_risk_too_many_posts") == "spam_risk_too_many_posts"
    assert label("http_502") == "http_502"
    assert label(None) == "none"
    assert label("", empty="unclassified") == "unclassified"
    assert label("act.1234567890abcdef") == "other"  # shaped like an access token
    assert label("https://upload.example/?upload_token=x") == "other"
    assert label("x" * 65) == "other"
