"""End to end: the daemon as a real process, killed with SIGKILL mid-flight and restarted.

The sandbox's ledger is the judge: every job must be published exactly once, whatever
instant the daemon died at.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import DaemonClient, DaemonUnreachable
from orchestrator.sandbox import Sandbox, SandboxConfig

from .harness import SCALE, make_video, wait_for_sync, write_config

pytestmark = pytest.mark.e2e
KEY, SECRET = "e2e-key", "e2e-secret-0123456789"
PROCESSING = 600.0  # simulated seconds: long enough to kill the daemon while TikTok works


class DaemonProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, socket_path: Path, *, env: dict[str, str] | None = None) -> DaemonClient:
        self.spawn(env)
        client = DaemonClient(socket_path, timeout=10)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited:\n{self.log.read_text()[-3000:]}")
            try:
                client.request("GET", "/v1/health")
                return True
            except DaemonUnreachable:
                return False

        wait_for_sync(up, what="the daemon to answer")
        return client

    def spawn(self, env: dict[str, str] | None = None) -> None:
        """Start the process without waiting for it (``start`` also waits for the socket)."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "run", "--config", str(self.config)],
                stdout=out,
                stderr=out,
                env={**os.environ, **(env or {})},
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Sandbox, DaemonProcess, Path]]:
    epoch = time.time()
    sandbox_config = SandboxConfig(
        time_scale=SCALE,
        epoch=epoch,
        processing_seconds=PROCESSING,
        client_key=KEY,
        client_secret=SECRET,
    )
    with Sandbox(sandbox_config) as sandbox:
        config = write_config(
            tmp_path,
            sandbox,
            epoch=epoch,
            client_key=KEY,
            client_secret=SECRET,
            accounts=("acme-us", "acme-uk"),
        )
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
        try:
            yield sandbox, daemon, tmp_path
        finally:
            daemon.stop()


def state_of(client: DaemonClient, job_id: str) -> dict[str, Any]:
    return client.job(job_id)["job"]


def test_sigkill_mid_upload_and_mid_processing_publishes_each_job_once(
    env: tuple[Sandbox, DaemonProcess, Path],
) -> None:
    sandbox, daemon, tmp = env
    socket_path = tmp / "orchestrator.sock"
    big = make_video(tmp / "big.mp4", 70_000_000, seed=1)  # 6 chunks of 10 MiB
    small = make_video(tmp / "small.mp4", 300_000, seed=2)

    # 1. Hold the third chunk of the upload in the sandbox, and kill the daemon meanwhile.
    sandbox.set_faults(
        {"rules": [{"endpoint": "upload", "fault": "delay", "seconds": 60, "after": 2}]}
    )
    client = daemon.start(socket_path)
    _, upload_job = client.submit(
        {"account": "acme-us", "video_path": str(big), "caption": "big one"}
    )
    wait_for_sync(
        lambda: any(r["endpoint"] == "upload" and r["status"] is None for r in sandbox.requests()),
        what="a chunk to be in flight",
    )
    assert state_of(client, upload_job["id"])["state"] == "uploading"
    daemon.kill9()
    sandbox.set_faults({"rules": []})  # the held chunk is let go, to a connection now dead

    # 2. Restart: the upload resumes from its checkpoint. Then kill during processing.
    client = daemon.start(socket_path)
    wait_for_sync(
        lambda: state_of(client, upload_job["id"])["state"] == "processing",
        what="the resumed upload to finish",
    )
    _, processing_job = client.submit(
        {"account": "acme-uk", "video_path": str(small), "caption": "small one"}
    )
    wait_for_sync(
        lambda: state_of(client, processing_job["id"])["state"] == "processing",
        what="the second job to reach processing",
    )
    daemon.kill9()

    # 3. Restart: polling resumes where it was; TikTok finishes processing.
    client = daemon.start(socket_path)
    sandbox.advance(PROCESSING)
    for job in (upload_job, processing_job):
        wait_for_sync(
            lambda job=job: state_of(client, job["id"])["state"] == "published",
            what=f"{job['id']} to be published",
        )
    status = client.status()
    assert status["totals"] == {"published": 2}
    assert daemon.stop() == 0

    ledger = sandbox.ledger()
    assert sorted(p["content_sha256"] for p in ledger["posts"]) == sorted(
        [upload_job["content_sha256"], processing_job["content_sha256"]]
    )
    assert ledger["duplicates"] == []
    assert not any(ledger["violations"].values()), ledger["violations"]
    uploads = [r for r in sandbox.requests() if r["endpoint"] == "upload"]
    assert len(uploads) < 12, "the upload resumed; it did not start again from byte 0"
    inits = [r for r in sandbox.requests() if r["endpoint"] == "video_init"]
    assert len(inits) == 2, "no job was initialised twice"
    assert_no_secrets(daemon.log.read_text(), tmp)


def assert_no_secrets(text: str, tmp: Path) -> None:
    """No token, refresh token or client secret reaches the log, even in a crash scenario."""
    secrets = [SECRET]
    for token_file in (tmp / "tokens").glob("*.json"):
        grant = json.loads(token_file.read_text())
        secrets += [grant["access_token"], grant["refresh_token"]]
    assert '"action": "daemon.ready"' in text  # the log is really there
    for secret in secrets:
        assert secret not in text


def test_cli_refuses_a_missing_video_and_bad_config(
    env: tuple[Sandbox, DaemonProcess, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.cli import main

    _, daemon, tmp = env
    daemon.start(tmp / "orchestrator.sock")
    code = main(
        [
            "submit",
            "--config",
            str(daemon.config),
            "--account",
            "acme-us",
            "--video",
            str(tmp / "nope.mp4"),
        ]
    )
    assert code == 1 and "no such file" in capsys.readouterr().err
    bad = tmp / "bad.toml"
    bad.write_text(daemon.config.read_text().replace("[daemon]", "[daemon]\nmystery = 1", 1))
    assert main(["check-config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "bad.toml" in err and "mystery" in err and "Traceback" not in err
    assert main(["status", "--socket", str(tmp / "absent.sock")]) == 69
    assert main(["status", "--config", str(daemon.config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accounts"][0]["id"] == "acme-us"


def test_killed_during_a_refresh_comes_back_with_a_working_token(
    env: tuple[Sandbox, DaemonProcess, Path],
) -> None:
    sandbox, daemon, tmp = env
    socket_path = tmp / "orchestrator.sock"
    token_file = tmp / "tokens" / "acme-us.json"
    grant = json.loads(token_file.read_text())
    token_file.write_text(json.dumps(grant | {"expires_in": 0}))  # a refresh is due at once
    # TikTok receives the refresh but has not acted on it when the daemon dies.
    sandbox.set_faults(
        {"rules": [{"endpoint": "token", "fault": "delay", "seconds": 120, "times": 1}]}
    )
    daemon.start(socket_path)
    wait_for_sync(
        lambda: any(r["endpoint"] == "token" and r["status"] is None for r in sandbox.requests()),
        what="a refresh to be in flight",
    )
    daemon.kill9()

    client = daemon.start(socket_path)
    video = make_video(tmp / "after.mp4", 30_000, seed=3)
    _, job = client.submit({"account": "acme-us", "video_path": str(video), "caption": "after"})
    wait_for_sync(
        lambda: state_of(client, job["id"])["state"] == "published", what="a post after restart"
    )
    token = next(a for a in client.status()["accounts"] if a["id"] == "acme-us")["token"]
    assert token["state"] == "valid" and token["expires_in"] > 0
    assert token["refreshes"].get("lost") == 1 and token["refreshes"].get("ok", 0) >= 1
    violations = sandbox.ledger()["violations"]
    assert violations["expired_token_requests"] == 0
    assert violations["refresh_token_reuse"] == 0
    assert daemon.stop() == 0
    assert_no_secrets(daemon.log.read_text(), tmp)


def test_a_second_daemon_on_the_same_socket_is_refused_cleanly(
    env: tuple[Sandbox, DaemonProcess, Path],
) -> None:
    _, daemon, tmp = env
    daemon.start(tmp / "orchestrator.sock")
    other = tmp / "other.toml"
    other.write_text(daemon.config.read_text().replace(str(tmp / "state"), str(tmp / "state2")))
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--config", str(other)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "another daemon is listening" in result.stderr
    assert "Traceback" not in result.stderr
