"""The operator's CLI against a real in-process daemon and the sandbox: the status dashboard,
``--watch``, ``reload`` and the progress of ``submit --wait``.

The CLI is synchronous (it blocks on the socket), so each call runs in a worker thread while
the daemon keeps serving on the test's event loop.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator import cli
from orchestrator.client import DaemonClient, DaemonUnreachable
from orchestrator.errors import ConfigError
from orchestrator.render import ACCOUNT_COLUMNS, progress_line, status_view
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

pytestmark = pytest.mark.anyio
BIG = 65_000_000  # above the one-chunk limit: uploaded in 10 MiB chunks


class Output:
    """Everything the CLI printed so far (capsys hands each piece out only once)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.out = self.err = ""

    def read(self) -> Output:
        captured = self._capsys.readouterr()
        self.out += captured.out
        self.err += captured.err
        return self


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def cli_main(*argv: str) -> int:
    return await anyio.to_thread.run_sync(cli.main, list(argv))


def secrets_of(tmp_path: Path) -> list[str]:
    found = [SECRET]
    for token_file in (tmp_path / "tokens").glob("*.json"):
        grant = json.loads(token_file.read_text())
        found += [grant["access_token"], grant["refresh_token"]]
    return found


def assert_no_secrets(text: str, tmp_path: Path) -> None:
    for secret in secrets_of(tmp_path):
        assert secret not in text


def cell(table_text: str, account: str, column: str) -> str:
    """One cell of the accounts table, found by the header's column offsets."""
    lines = table_text.splitlines()
    header = next(line for line in lines if line.startswith("ACCOUNT "))
    names = list(ACCOUNT_COLUMNS)
    starts = [header.index(n) for n in names]
    row = next(line for line in lines if line.split("  ", 1)[0] == account)
    i = names.index(column)
    end = starts[i + 1] if i + 1 < len(starts) else None
    return row[starts[i] : end].strip()


@pytest.fixture
def two_accounts(tmp_path: Path, sandbox: Sandbox, epoch: float) -> Path:
    return write_config(
        tmp_path,
        sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        accounts=("acme-us", "acme-uk"),
        extra_daemon={"breaker_failures": 2, "breaker_reset": 1e6},
    )


# -- the dashboard against a real daemon ----------------------------------------------------


async def test_status_shows_breaker_cap_queues_and_last_error_after_failures(
    tmp_path: Path,
    sandbox: Sandbox,
    two_accounts: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # acme-uk's creator is barred from posting twice: its breaker opens, its next job waits.
    sandbox.set_faults(faults(banned(times=2, open_id="open-acme-uk")))
    videos = [make_video(tmp_path / f"{n}.mp4", 20_000 + n, seed=n) for n in range(4)]
    async with running(two_accounts) as (daemon, client):
        for video in videos[:2]:
            job = await submit(client, account="acme-uk", video_path=str(video))
            assert await until_ended(client, job["id"]) == "review"
        await submit(client, account="acme-uk", video_path=str(videos[2]))  # it waits
        ok = await submit(client, account="acme-us", video_path=str(videos[3]))
        assert await until_ended(client, ok["id"]) == "published"
        socket = str(daemon.config.daemon.socket_path)

        output = Output(capsys)
        assert await cli_main("status", "--socket", socket) == 0
        text = output.read().out
        assert await cli_main("status", "--socket", socket, "--json") == 0
        document = json.loads(output.read().out[len(text) :])

    uk = next(a for a in document["accounts"] if a["id"] == "acme-uk")
    us = next(a for a in document["accounts"] if a["id"] == "acme-us")
    assert uk["breaker"] == "open" and uk["breaker_retry_at"]
    assert uk["state"] == "active" and us["state"] == "active"
    assert uk["jobs"] == {"review": 2, "queued": 1}
    assert us["cap"]["used"] == 1 and us["cap"]["limit"] == 15
    assert document["daemon"]["draining"] is False

    assert cell(text, "acme-uk", "BREAKER").startswith("open, probe ")
    assert cell(text, "acme-uk", "CAP 24H") == "0/15"
    assert cell(text, "acme-uk", "NEW") == "1"
    assert cell(text, "acme-uk", "NEEDS HUMAN") == "2"
    assert cell(text, "acme-us", "BREAKER") == "closed"
    assert cell(text, "acme-us", "CAP 24H") == "1/15"
    assert cell(text, "acme-us", "PUBLISHED") == "1"
    assert cell(text, "acme-us", "TOKEN").startswith("valid ")
    assert "NEEDS A HUMAN: " in text  # the two jobs in review
    assert_no_secrets(text + json.dumps(document), tmp_path)


async def test_status_shows_each_accounts_lanes_and_last_error(
    tmp_path: Path,
    sandbox: Sandbox,
    two_accounts: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox.set_faults(faults(banned(times=1, open_id="open-acme-uk")))
    videos = [make_video(tmp_path / f"{n}.mp4", 20_000 + n, seed=n) for n in range(2)]
    async with running(two_accounts) as (daemon, client):
        job = await submit(client, account="acme-uk", video_path=str(videos[0]))
        assert await until_ended(client, job["id"]) == "review"
        ok = await submit(client, account="acme-us", video_path=str(videos[1]))
        assert await until_ended(client, ok["id"]) == "published"
        socket = str(daemon.config.daemon.socket_path)
        output = Output(capsys)
        assert await cli_main("status", "--socket", socket, "--json") == 0
        document = json.loads(output.read().out)
        assert await cli_main("status", "--socket", socket) == 0
        text = output.read().out
    uk = next(a for a in document["accounts"] if a["id"] == "acme-uk")
    us = next(a for a in document["accounts"] if a["id"] == "acme-us")
    assert uk["last_error"]["code"] == "spam_risk_user_banned_from_posting"
    assert uk["last_error"]["job"] == job["id"] and uk["last_error"]["age"] >= 0
    assert us["last_error"] is None
    # Two accounts: the whole table by default; acme-uk's error needs attention.
    assert document["accounts_view"] == "all" and document["account_count"] == 2
    assert uk["attention"] == ["error in the last hour"] and us["attention"] == []
    assert cell(text, "acme-uk", "LAST ERROR").startswith("spam_risk_user_banned_from_posting ")
    assert cell(text, "acme-us", "LAST ERROR") == "-"


async def test_watch_redraws_frames_then_stops_and_exits_69_when_the_daemon_goes(
    two_accounts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(two_accounts) as (daemon, _):
        socket = str(daemon.config.daemon.socket_path)
        output = Output(capsys)
        assert await cli_main("status", "--socket", socket, "--watch", "0.01", "--count", "3") == 0
        frames = output.read().out.split(cli.FRAME_RULE + "\n")
        assert len(frames) == 3 and all("acme-uk" in f for f in frames)
        assert cli.CLEAR_SCREEN not in output.out  # not a terminal: frames follow each other

        assert (
            await cli_main(
                "status", "--socket", socket, "--watch", "0.01", "--count", "2", "--json"
            )
            == 0
        )
        documents = [json.loads(line) for line in output.read().out.splitlines()[-2:]]
        assert [len(d["accounts"]) for d in documents] == [2, 2]

        # Watching with no end: the daemon stops under it.
        async with anyio.create_task_group() as tg:
            result: list[int] = []

            async def watch() -> None:
                result.append(await cli_main("status", "--socket", socket, "--watch", "0.01"))

            tg.start_soon(watch)

            async def drawn() -> bool:
                return "ACCOUNT" in output.read().out.split(cli.FRAME_RULE)[-1]

            output.out = ""
            await wait_for(drawn, what="a first frame")
            daemon.request_stop()
        assert result == [cli.EX_UNAVAILABLE]
        assert "the daemon went away" in output.read().err
        assert "Traceback" not in output.err


def test_watch_on_a_terminal_clears_between_frames_and_ctrl_c_exits_0() -> None:
    frames = iter([{"n": 1}, {"n": 2}, {"n": 3}])
    screen = Terminal()
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    code = cli.watch(
        lambda: next(frames), lambda s: f"frame {s['n']}", interval=2.0, out=screen, sleep=sleep
    )
    assert code == 0 and naps == [2.0, 2.0]
    assert screen.getvalue() == (
        f"{cli.CLEAR_SCREEN}frame 1\n{cli.CLEAR_SCREEN}frame 2\n\n"  # a newline after ^C
    )


def test_watch_says_the_daemon_went_away(capsys: pytest.CaptureFixture[str]) -> None:
    answers: Iterator[dict[str, Any]] = iter([{"n": 1}])

    def fetch() -> dict[str, Any]:
        for answer in answers:
            return answer
        raise DaemonUnreachable("cannot reach the daemon at /x.sock (ConnectError)")

    out = io.StringIO()
    code = cli.watch(fetch, str, interval=0.0, out=out, sleep=lambda _: None)
    assert code == 69 and out.getvalue().count("{'n': 1}") == 1
    assert "the daemon went away: cannot reach" in capsys.readouterr().err


# -- reload -------------------------------------------------------------------------------


async def test_reload_exit_codes_0_78_69(
    tmp_path: Path, two_accounts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers: list[dict[str, Any] | ConfigError] = [
        {"ok": True, "added": ["acme-fr"], "removed": ["acme-uk"], "changed": [], "at": 1.0},
        ConfigError("must be a string", file="accounts.toml", account="acme-fr", field="region"),
    ]

    async def reload() -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, ConfigError):
            raise answer
        return answer

    output = Output(capsys)
    async with running(two_accounts) as (daemon, _):
        assert daemon.api is not None
        daemon.api._reload = reload  # the daemon's real ControlApi, with the reload under test
        socket = daemon.config.daemon.socket_path
        assert await cli_main("reload", "--socket", str(socket)) == 0
        assert output.read().out == "reloaded: 1 added (acme-fr), 1 removed (acme-uk), 0 changed\n"

        assert await cli_main("reload", "--socket", str(socket)) == cli.EX_CONFIG
        err = output.read().err
        assert "reload refused; the running configuration stays" in err
        assert "accounts.toml, account 'acme-fr', field 'region': must be a string" in err
        assert "Traceback" not in err
    assert await cli_main("reload", "--socket", str(socket)) == cli.EX_UNAVAILABLE
    assert "cannot reach the daemon" in output.read().err


async def test_reload_route_answers_422_and_503(two_accounts: Path) -> None:
    async def invalid() -> dict[str, Any]:
        raise ConfigError("unknown key", file="accounts.toml", field="mystery")

    async with running(two_accounts) as (daemon, client):
        assert daemon.api is not None
        daemon.api._reload = invalid
        response = await client.post("/v1/reload")
        assert (response.status_code, response.json()) == (
            422,
            {
                "error": {
                    "code": "invalid_config",
                    "message": "accounts.toml, field 'mystery': unknown key",
                }
            },
        )
        daemon.api._reload = None
        response = await client.post("/v1/reload")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"


# -- submit --wait ---------------------------------------------------------------------------


async def test_submit_wait_prints_each_state_with_the_uploads_byte_counts(
    tmp_path: Path, sandbox: Sandbox, two_accounts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = make_video(tmp_path / "big.mp4", BIG, seed=5)
    # Hold the third chunk: the job stays in uploading with two chunks checkpointed.
    sandbox.set_faults(
        {"rules": [{"endpoint": "upload", "fault": "delay", "seconds": 60, "after": 2}]}
    )
    output = Output(capsys)
    async with running(two_accounts) as (daemon, _):
        socket = str(daemon.config.daemon.socket_path)
        async with anyio.create_task_group() as tg:
            result: list[int] = []

            async def wait() -> None:
                result.append(
                    await cli_main(
                        "submit",
                        "--socket",
                        socket,
                        "--account",
                        "acme-us",
                        "--video",
                        str(video),
                        "--caption",
                        "big one",
                        "--wait",
                    )
                )

            tg.start_soon(wait)

            async def uploading() -> bool:
                return "uploading" in output.read().out

            await wait_for(uploading, what="the CLI to show the upload")
            sandbox.set_faults({"rules": []})  # let the held chunk go
        assert result == [0]
    lines = output.read().out.splitlines()
    states = [line.split(": ", 1)[1].split(" ")[0] for line in lines[1:]]
    assert states[-1] == "published" and "uploading" in states
    upload_line = next(line for line in lines if ": uploading " in line)
    assert upload_line.endswith(f"/{BIG:,} bytes ({int(upload_line.split('(')[1].split('%')[0])}%)")
    assert f"processing {BIG:,}/{BIG:,} bytes (100%)" in output.out
    assert_no_secrets(output.out + output.err, tmp_path)


async def test_submit_wait_redraws_a_progress_line_on_a_terminal(
    tmp_path: Path, sandbox: Sandbox, two_accounts: Path
) -> None:
    video = make_video(tmp_path / "big.mp4", BIG, seed=6)
    sandbox.set_faults(
        {"rules": [{"endpoint": "upload", "fault": "delay", "seconds": 60, "after": 2}]}
    )
    terminal, out = Terminal(), io.StringIO()
    async with running(two_accounts) as (daemon, client):
        job = await submit(client, account="acme-us", video_path=str(video))
        with DaemonClient(daemon.config.daemon.socket_path) as cli_client:
            async with anyio.create_task_group() as tg:
                result: list[int] = []

                async def wait() -> None:
                    result.append(
                        await anyio.to_thread.run_sync(
                            lambda: cli._wait(
                                cli_client, job["id"], quiet=False, out=out, err=terminal, poll=0.02
                            )
                        )
                    )

                tg.start_soon(wait)
                held = f"uploading {2 * 10_485_760:,}/{BIG:,} bytes"

                async def redrawn() -> bool:
                    return held in terminal.getvalue()

                await wait_for(redrawn, what="the progress line at the held chunk")
                sandbox.set_faults({"rules": []})
        assert result == [0]
    drawn = terminal.getvalue()
    assert drawn.startswith(cli.CLEAR_LINE) and f"{cli.CLEAR_LINE}{job['id']}: {held}" in drawn
    assert "published" in out.getvalue() and cli.CLEAR_LINE not in out.getvalue()


def test_progress_line_counts_bytes_while_uploading() -> None:
    job = {"id": "j_1", "state": "uploading", "video_size": 3_000_000, "uploaded_bytes": 1_000_000}
    assert progress_line(job) == "  j_1: uploading 1,000,000/3,000,000 bytes (33%)"
    assert progress_line(job | {"state": "processing"}).endswith("3,000,000/3,000,000 bytes (100%)")
    assert progress_line(job | {"state": "queued"}) == "  j_1: queued"
    failed = job | {"state": "retry_wait", "error": {"code": "rate_limit_exceeded"}}
    assert progress_line(failed) == "  j_1: retry_wait [rate_limit_exceeded]"


# -- the dashboard as a pure view -------------------------------------------------------------


def dashboard(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "daemon": {
            "version": "0.1.0",
            "pid": 42,
            "started_at": "2025-01-02T03:00:00Z",
            "now": "2025-01-02T04:00:00Z",
            "accepting": True,
            "draining": False,
            "config": "/etc/orchestrator/accounts.toml",
            "reload": None,
        },
        "accounts": [
            {
                "id": "acme-us",
                "state": "active",
                "breaker": "closed",
                "token": {"state": "valid", "expires_in": 5400},
                "cap": {"used": 3, "limit": 15},
                "queues": {"new": 4, "retry": 2},
                "jobs": {"queued": 4, "retry_wait": 2, "published": 9, "review": 1},
                "last_error": None,
            },
            {
                "id": "acme-uk",
                "state": "parked",
                "breaker": "open",
                "breaker_retry_at": "2025-01-02T04:05:00Z",
                "token": {"state": "needs_reauth", "expires_in": None},
                "cap": {"used": 0, "limit": 15},
                "queues": {"new": 1},
                "jobs": {"queued": 1, "dead": 3},
                "last_error": {"code": "access_token_invalid", "at": "x", "age": 190},
            },
            {
                "id": "acme-de",
                "state": "retired",
                "token": {"state": "valid", "expires_in": 60},
                "breaker": None,
                "cap": None,
                "queues": {"retry": 5},
                "jobs": {"retry_wait": 5},
                "last_error": None,
            },
        ],
        "alerts": [
            {"severity": "warning", "since": "2025-01-02T03:59:00Z", "message": "acme-uk parked"}
        ],
        "totals": {"published": 9, "queued": 5},
        "open": 14,
        "retired": {"acme-de": 5},
    }
    return document | overrides


def test_the_dashboard_renders_each_accounts_story() -> None:
    text = status_view(dashboard())
    assert cell(text, "acme-us", "STATE") == "active"
    assert cell(text, "acme-us", "TOKEN") == "valid 1h30m"
    assert cell(text, "acme-us", "CAP 24H") == "3/15"
    assert (cell(text, "acme-us", "NEW"), cell(text, "acme-us", "RETRY")) == ("4", "2")
    assert cell(text, "acme-us", "NEEDS HUMAN") == "1"
    assert cell(text, "acme-uk", "STATE") == "parked"
    assert cell(text, "acme-uk", "BREAKER") == "open, probe 04:05:00Z"
    assert cell(text, "acme-uk", "TOKEN") == "needs_reauth"
    assert cell(text, "acme-uk", "LAST ERROR") == "access_token_invalid 3m ago"
    assert cell(text, "acme-de", "STATE") == "retired"
    assert cell(text, "acme-de", "RETRY") == "5"
    assert "ALERT (warning) since 2025-01-02T03:59:00Z: acme-uk parked" in text
    assert "1 open alert(s)" in text
    assert "retired accounts (removed from the file; their jobs stay in the store): " in text
    assert "acme-de (5 not finished)" in text


def test_a_failed_reload_and_draining_stand_out() -> None:
    document = dashboard()
    document["daemon"] |= {
        "draining": True,
        "reload": {
            "ok": False,
            "at": "2025-01-02T03:30:00Z",
            "error": "accounts.toml, account 'acme-fr', field 'region': must be a string",
        },
    }
    text = status_view(document)
    assert "DRAINING" in text.splitlines()[0]
    assert (
        "LAST RELOAD FAILED at 2025-01-02T03:30:00Z: accounts.toml, account 'acme-fr', "
        "field 'region': must be a string (the running configuration is unchanged)"
    ) in text
    document["daemon"]["reload"] = {
        "ok": True,
        "at": "2025-01-02T03:30:00Z",
        "added": ["acme-fr"],
        "removed": [],
        "changed": ["acme-us", "acme-uk"],
        "restart_required": ["webhooks"],
    }
    assert (
        "last reload at 2025-01-02T03:30:00Z: 1 added (acme-fr), 0 removed, 2 changed "
        "(acme-us, acme-uk); needs a restart to apply: webhooks"
    ) in status_view(document)


def test_the_dashboard_renders_an_older_daemons_document() -> None:
    document = dashboard()
    for key in ("draining", "reload"):
        del document["daemon"][key]
    del document["retired"]
    for account in document["accounts"]:
        for key in ("state", "queues", "last_error"):
            del account[key]
    text = status_view(document)
    assert cell(text, "acme-us", "NEW") == "4" and cell(text, "acme-us", "RETRY") == "2"
    assert cell(text, "acme-uk", "LAST ERROR") == "-"
    assert "accepting jobs" in text
