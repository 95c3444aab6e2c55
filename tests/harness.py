"""Shared test scaffolding: a sandbox, a config pointed at it, and condition waits.

Waits poll a condition with a deadline; nothing sleeps for a fixed time hoping something
happened. Scenarios run the sandbox and the daemon on one compressed clock (same epoch and
scale), so TikTok's minutes pass in fractions of a second.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx

from orchestrator.config import load_config
from orchestrator.daemon import Daemon
from orchestrator.demo import toml_value
from orchestrator.sandbox import Sandbox

T = TypeVar("T")
SCALE = 60.0
KEY, SECRET = "test-key", "test-secret-value-1234"


def write_config(
    tmp_path: Path,
    sandbox: Sandbox,
    *,
    epoch: float,
    client_key: str,
    client_secret: str,
    accounts: Sequence[str] = ("acme-us",),
    scale: float = SCALE,
    poll_interval: float = 5.0,
    user_options: dict[str, dict[str, Any]] | None = None,
    extra_daemon: dict[str, Any] | None = None,
    extra_toml: str = "",
    without_token_file: Sequence[str] = (),
    account_toml: str = "",
) -> Path:
    """Creates sandbox users for ``accounts``, their token files, and the accounts TOML."""
    (tmp_path / "tokens").mkdir(exist_ok=True)
    secret = tmp_path / "client_secret"
    secret.write_text(client_secret)
    daemon = {
        "state_dir": tmp_path / "state",
        "socket_path": tmp_path / "orchestrator.sock",
        "log_level": "debug",
        "poll_interval": poll_interval,
        "time_scale": scale,
        "clock_epoch": epoch,
        "request_timeout": 10.0,
        **(extra_daemon or {}),
    }
    lines = ["[daemon]", *(f"{k} = {toml_value(v)}" for k, v in daemon.items())]
    lines += [
        "[tiktok]",
        f"base_url = {toml_value(sandbox.base_url)}",
        f"client_key = {toml_value(client_key)}",
        f"client_secret_file = {toml_value(secret)}",
    ]
    for account in accounts:
        options = (user_options or {}).get(account, {})
        grant = sandbox.create_user(open_id=f"open-{account}", **options)
        token_file = tmp_path / "tokens" / f"{account}.json"
        token_file.write_text(json.dumps(grant))
        lines += [
            "[[accounts]]",
            f"id = {toml_value(account)}",
            'scopes = ["video.publish", "video.upload"]',
            'privacy_level = "SELF_ONLY"',
        ]
        if account not in without_token_file:
            lines.append(f"token_file = {toml_value(token_file)}")
        if account_toml:
            lines.append(account_toml)
    path = tmp_path / "accounts.toml"
    path.write_text("\n".join(lines) + "\n" + extra_toml)
    return path


def faults(*rules: dict[str, Any]) -> dict[str, Any]:
    """A sandbox fault plan from rules."""
    return {"rules": list(rules)}


def banned(times: int | None = None, open_id: str | None = None) -> dict[str, Any]:
    """creator_info says the creator may not post: a failure that is the account's own."""
    rule: dict[str, Any] = {
        "endpoint": "creator_info",
        "fault": "error",
        "code": "spam_risk_user_banned_from_posting",
    }
    if times is not None:
        rule["times"] = times
    if open_id is not None:
        rule["open_id"] = open_id
    return rule


def make_video(path: Path, size: int, seed: int = 0) -> Path:
    import random

    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + random.Random(seed).randbytes(size - 12))
    return path


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; fail loudly at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await anyio.sleep(0.02)


def wait_for_sync(
    probe: Callable[[], T | None], *, timeout: float = 30.0, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def api(socket_path: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(socket_path)), base_url="http://orchestrator"
    )


@asynccontextmanager
async def running(config_path: Path) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    daemon = Daemon(load_config(config_path))
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        async with api(daemon.config.daemon.socket_path) as client:
            yield daemon, client
        daemon.request_stop(drain=False)


async def job_state(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def until_ended(client: httpx.AsyncClient, job_id: str, timeout: float = 30) -> str:
    async def ended() -> str | None:
        state = (await job_state(client, job_id))["job"]["state"]
        return state if state in {"published", "dead", "uncertain", "review"} else None

    return await wait_for(ended, timeout=timeout, what=f"{job_id} to end")


async def submit(client: httpx.AsyncClient, **payload: Any) -> dict[str, Any]:
    response = await client.post("/v1/jobs", json=payload)
    assert response.status_code == 201, response.text
    return response.json()["job"]  # type: ignore[no-any-return]
