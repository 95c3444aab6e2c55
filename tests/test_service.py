"""The daemon as a systemd service: readiness, watchdog, reload and a graceful stop.

systemd is played by a datagram socket the test owns and names in NOTIFY_SOCKET (abstract
``@`` names included); the daemon is a real process, signalled as systemctl would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.client import DaemonClient, RequestRefused
from orchestrator.errors import ConfigError
from orchestrator.notify import Notifier, notify_address, watchdog_interval
from orchestrator.sandbox import Sandbox

from .harness import (
    KEY,
    SECRET,
    faults,
    make_video,
    running,
    submit,
    until_ended,
    wait_for,
    wait_for_sync,
    write_config,
)
from .test_e2e import DaemonProcess


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: collects every datagram the daemon sends."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.messages: list[dict[str, str]] = []

    def expect(self, key: str, *, timeout: float = 30.0) -> dict[str, str]:
        """Blocks until a message carrying ``key`` arrives (earlier ones are kept too)."""
        self.sock.settimeout(timeout)
        while True:
            try:
                raw = self.sock.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"no {key} from the daemon; got {self.messages}") from None
            message = dict(line.split("=", 1) for line in raw.splitlines())
            self.messages.append(message)
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()


def drop_account(text: str, account_id: str) -> str:
    """The accounts file without one [[accounts]] table."""
    head, *tables = text.split("[[accounts]]\n")
    kept = [t for t in tables if f'id = "{account_id}"\n' not in t]
    return head + "".join(f"[[accounts]]\n{t}" for t in kept)


def set_key(text: str, account_id: str, line: str) -> str:
    anchor = f'id = "{account_id}"\n'
    assert anchor in text
    return text.replace(anchor, anchor + line + "\n")


# -- the notification protocol ------------------------------------------------------------


def test_notify_is_silent_without_systemd_and_parses_its_variables() -> None:
    assert Notifier(env={}).send(READY=1) is False
    assert notify_address({"NOTIFY_SOCKET": "@name"}) == b"\0name"
    assert notify_address({"NOTIFY_SOCKET": "/run/x.sock"}) == "/run/x.sock"
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}, pid=7) == 3.0
    # Meant for another process (a parent that spawned us): not ours to honour.
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=7) is None


def test_notify_reaches_a_path_socket_and_survives_a_vanished_one(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    systemd = FakeSystemd(str(path))
    notifier = Notifier(env={"NOTIFY_SOCKET": str(path)})
    notifier.ready("3 accounts")
    assert systemd.expect("READY") == {"READY": "1", "STATUS": "3 accounts"}
    notifier.reloading()
    assert int(systemd.expect("RELOADING")["MONOTONIC_USEC"]) > 0
    systemd.close()
    path.unlink()
    assert notifier.send(STATUS="nobody listens") is False  # logged once, never raised
    notifier.close()


# -- a real daemon under a fake systemd ----------------------------------------------------


@pytest.fixture
def service(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> Iterator[tuple[DaemonProcess, FakeSystemd, Path]]:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        accounts=("acme-us", "acme-uk", "acme-de"),
    )
    full = config.read_text()
    config.write_text(drop_account(full, "acme-de"))
    (tmp_path / "full.toml").write_text(full)
    systemd = FakeSystemd(f"@orchestrator-test-{uuid.uuid4().hex}")
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        yield daemon, systemd, tmp_path
    finally:
        daemon.stop()
        systemd.close()


@pytest.mark.e2e
def test_ready_watchdog_reload_and_stop_are_told_to_systemd(
    service: tuple[DaemonProcess, FakeSystemd, Path],
) -> None:
    daemon, systemd, tmp = service
    video = make_video(tmp / "v.mp4", 300_000)
    for name in ("accounts.toml", "full.toml"):
        text = (tmp / name).read_text()
        (tmp / name).write_text(text.replace("[tiktok]", METRICS_ON_ANY_PORT + "[tiktok]"))
    daemon.spawn({"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "300000"})
    ready = systemd.expect("READY")
    # READY means ready: the socket answers at once, no retry.
    client = DaemonClient(tmp / "orchestrator.sock", timeout=10)
    assert client.request("GET", "/v1/health")[0] == 200
    assert ready["STATUS"].startswith("2 accounts")
    for _ in range(3):
        systemd.expect("WATCHDOG")

    # systemctl reload: acme-de is added, acme-uk removed.
    config = tmp / "accounts.toml"
    config.write_text(drop_account((tmp / "full.toml").read_text(), "acme-uk"))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    assert int(systemd.expect("RELOADING")["MONOTONIC_USEC"]) > 0
    assert systemd.expect("READY")["STATUS"].startswith("2 accounts")
    client.submit({"account": "acme-de", "video_path": str(video)})
    with pytest.raises(RequestRefused):
        client.submit({"account": "acme-uk", "video_path": str(video)})
    exposition = scrape(daemon.log.read_text())
    assert 'orchestrator_account_daily_cap_limit{account="acme-de"}' in exposition
    assert "orchestrator_up 1.0" in exposition

    # An invalid file: the reload is refused and the running configuration stays.
    good = config.read_text()
    config.write_text(good.replace('id = "acme-de"', 'id = "Not An Id"'))
    daemon.proc.send_signal(signal.SIGHUP)
    systemd.expect("RELOADING")
    assert "reload FAILED" in systemd.expect("READY")["STATUS"]
    assert "config.reload_failed" in daemon.log.read_text()
    client.submit({"account": "acme-de", "video_path": str(video), "caption": "still here"})

    daemon.proc.send_signal(signal.SIGTERM)
    assert systemd.expect("STOPPING")["STOPPING"] == "1"
    assert daemon.proc.wait(timeout=30) == 0
    assert_journald_friendly(daemon.log.read_text(), tmp)


METRICS_ON_ANY_PORT = '[metrics]\nlisten = "127.0.0.1:0"\n'


def scrape(log: str) -> str:
    """GET /metrics on the port the daemon logged it bound."""
    port = next(
        json.loads(line)["port"] for line in log.splitlines() if '"metrics.listening"' in line
    )
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def assert_journald_friendly(text: str, tmp: Path) -> None:
    """One JSON object per line, each with a stable action, and no credential anywhere."""
    entries = [json.loads(line) for line in text.splitlines()]
    assert all(e["action"] and e["level"] and e["msg"] for e in entries)
    actions = {e["action"] for e in entries}
    assert {"daemon.ready", "config.reloaded", "config.reload_failed", "daemon.stopped"} <= actions
    secrets = [SECRET]
    for token_file in (tmp / "tokens").glob("*.json"):
        grant = json.loads(token_file.read_text())
        secrets += [grant["access_token"], grant["refresh_token"]]
    for secret in secrets:
        assert secret not in text


# -- graceful stop ---------------------------------------------------------------------------


def jobs_in(state_dir: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(state_dir / "orchestrator.db") as db:
        rows = db.execute("SELECT id, state, uploaded_bytes FROM jobs").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.mark.e2e
def test_sigterm_lets_the_upload_in_flight_finish_and_refuses_new_work(
    service: tuple[DaemonProcess, FakeSystemd, Path], sandbox: Sandbox
) -> None:
    daemon, _, tmp = service
    big = make_video(tmp / "big.mp4", 70_000_000, seed=1)  # 6 chunks of 10 MiB
    sandbox.set_faults(faults({"endpoint": "upload", "fault": "delay", "seconds": 60, "after": 2}))
    client = daemon.start(tmp / "orchestrator.sock")
    _, job = client.submit({"account": "acme-us", "video_path": str(big)})
    wait_for_sync(
        lambda: any(r["endpoint"] == "upload" and r["status"] is None for r in sandbox.requests()),
        what="a chunk to be held in flight",
    )
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    wait_for_sync(lambda: "daemon.stopping" in daemon.log.read_text(), what="the stop to begin")
    with pytest.raises(RequestRefused) as refused:
        client.submit({"account": "acme-uk", "video_path": str(big), "caption": "late"})
    assert refused.value.code == "shutting_down"
    assert client.job(job["id"])["job"]["state"] == "uploading", "reads still work"
    sandbox.set_faults(faults())  # the held chunk goes through; the rest follow
    assert daemon.proc.wait(timeout=30) == 0
    state, uploaded = jobs_in(tmp / "state")[job["id"]]
    assert (state, uploaded) == ("processing", big.stat().st_size)
    log = daemon.log.read_text()
    assert "daemon.drained" in log and "daemon.drain_cut" not in log


@pytest.mark.e2e
def test_the_drain_is_bounded_and_what_it_cuts_resumes_once(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        extra_daemon={"drain_timeout": 0.5},
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    big = make_video(tmp_path / "big.mp4", 70_000_000, seed=3)
    sandbox.set_faults(faults({"endpoint": "upload", "fault": "delay", "seconds": 60, "after": 2}))
    client = daemon.start(tmp_path / "orchestrator.sock")
    try:
        _, job = client.submit({"account": "acme-us", "video_path": str(big)})
        wait_for_sync(
            lambda: any(
                r["endpoint"] == "upload" and r["status"] is None for r in sandbox.requests()
            ),
            what="a chunk to be held in flight",
        )
        assert daemon.stop() == 0  # the held chunk never finishes: the bound ends the wait
        assert "daemon.drain_cut" in daemon.log.read_text()
        assert jobs_in(tmp_path / "state")[job["id"]][0] == "uploading"

        sandbox.set_faults(faults())
        client = daemon.start(tmp_path / "orchestrator.sock")
        wait_for_sync(
            lambda: client.job(job["id"])["job"]["state"] == "processing",
            what="the cut upload to resume",
        )
    finally:
        daemon.stop()
    inits = [r for r in sandbox.requests() if r["endpoint"] == "video_init"]
    assert len(inits) == 1, "the cut job resumed its upload; it was not initialised again"


# -- reload, in process ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_reload_adds_removes_and_changes_accounts_without_restarting_the_others(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        accounts=("acme-us", "acme-uk", "acme-de"),
    )
    full = config.read_text()
    config.write_text(drop_account(full, "acme-de"))
    video = make_video(tmp_path / "v.mp4", 300_000)
    async with running(config) as (daemon, client):
        assert (await client.post("/v1/accounts/acme-uk/pause")).status_code == 200
        waiting = await submit(client, account="acme-uk", video_path=str(video))
        us = daemon.shards["acme-us"]

        new = set_key(drop_account(full, "acme-uk"), "acme-us", "daily_cap = 3")
        config.write_text(new.replace("poll_interval = 5.0", "poll_interval = 7.0"))
        result = await daemon.reload()

        assert (result["added"], result["removed"], result["changed"]) == (
            ["acme-de"],
            ["acme-uk"],
            ["acme-us"],
        )
        assert result["restart_required"] == ["daemon"]
        assert daemon.shards["acme-us"] is us, "an unchanged shard keeps running"
        assert us.account.daily_cap == 3
        assert set(daemon.shards) == {"acme-us", "acme-de"}
        # The removed account's job is kept, reported, and not run.
        assert (await client.get(f"/v1/jobs/{waiting['id']}")).json()["job"]["state"] == "queued"
        assert daemon.statistics()["retired"] == {"acme-uk": 1}
        refused = await client.post(
            "/v1/jobs", json={"account": "acme-uk", "video_path": str(video)}
        )
        assert refused.status_code >= 400
        added = await submit(client, account="acme-de", video_path=str(video), caption="new")
        assert await until_ended(client, added["id"]) == "published"

        # A broken file changes nothing and says why.
        config.write_text(new.replace("daily_cap = 3", 'daily_cap = "three"'))
        refused = await client.post("/v1/reload")  # what `orchestrator reload` sends
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "invalid_config"
        assert "daily_cap" in refused.json()["error"]["message"]
        with pytest.raises(ConfigError, match="daily_cap"):
            await daemon.reload()
        assert daemon.shards["acme-us"] is us and us.account.daily_cap == 3
        last = daemon.statistics()["reload"]
        assert last["ok"] is False and "daily_cap" in last["error"]
        again = await submit(client, account="acme-de", video_path=str(video), caption="after")
        assert await until_ended(client, again["id"]) == "published"

        # Added back while the file is good again: the old jobs run once more.
        config.write_text(full)
        result = await daemon.reload()
        assert result["added"] == ["acme-uk"] and result["ok"]
        assert (await client.post("/v1/accounts/acme-uk/resume")).status_code == 200
        assert await until_ended(client, waiting["id"]) == "published"
        assert daemon.statistics()["retired"] == {}

    posts = sandbox.ledger()
    assert posts["duplicates"] == [] and len(posts["posts"]) == 3


@pytest.mark.anyio
async def test_a_stop_without_work_in_hand_is_immediate(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    async with running(config) as (daemon, _):
        shard = daemon.shards["acme-us"]
        daemon.request_stop()

        async def stopped() -> bool:
            return shard.stopped.is_set()

        await wait_for(stopped, timeout=5, what="the idle shard to stop")
        assert daemon.draining
    assert not os.path.exists(daemon.config.daemon.socket_path)
