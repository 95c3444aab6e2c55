"""The systemd unit: what the daemon relies on is really in it, and it stays hardened.

A unit file fails quietly: systemd skips a misspelt key, or a value with a comment after it,
with a warning nobody reads, and the service then runs without its watchdog or its sandbox.
So these tests read the files as systemd does, score and verify them with systemd-analyze
where it exists, and finally start the real daemon the way the unit describes it: its
command line, its credentials, its reload command, its stop signal and timeout.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.client import DEFAULT_SOCKET, DaemonClient
from orchestrator.config import DaemonSettings
from orchestrator.crypto import generate_key
from orchestrator.sandbox import Sandbox

from .harness import KEY, SECRET, write_config

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "systemd" / "orchestrator.service"
SOCKET = ROOT / "systemd" / "orchestrator.socket"
SYSUSERS = ROOT / "systemd" / "orchestrator.sysusers"
MAX_EXPOSURE = 1.2

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Section -> key -> every value given, in order (keys such as LoadCredential= repeat)."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{path.name}:{number}"
        assert not line.endswith("\\"), f"{where}: continuation lines are not expected"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"{where}: not a KEY=VALUE in a section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= is given {len(values)} times: {values}"
    return values[0]


_SPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
_SPAN_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|sec|s|min|h|)")


def seconds(span: str) -> float:
    """A systemd time span ("45s", "1min 30s", "30") in seconds."""
    total, pos = 0.0, 0
    while pos < len(span):
        match = _SPAN_PART.match(span, pos)
        assert match and match.end() > pos, f"not a time span systemd reads: {span!r}"
        total += float(match[1]) * _SPAN_UNITS[match[2]]
        pos = match.end()
    return total


@pytest.fixture(scope="module")
def service() -> Unit:
    return parse_unit(SERVICE)


def credentials(service: Unit) -> dict[str, str]:
    """LoadCredential= as credential name -> the file systemd copies it from."""
    pairs = (value.split(":", 1) for value in service["Service"]["LoadCredential"])
    return {name: source for name, source in pairs}


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    return tool


def exposure(unit: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """The overall exposure systemd-analyze gives ``unit``, with the run (exit code included)."""
    run = subprocess.run(
        [
            analyze(),
            "security",
            "--offline=true",
            f"--threshold={round(MAX_EXPOSURE * 10)}",
            "--no-pager",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SYSTEMD_COLORS": "0", "PATH": "/usr/bin:/bin"},
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", run.stdout)
    assert match, f"no overall exposure in the output:\n{run.stdout}\n{run.stderr}"
    return float(match[1]), run


def test_no_value_carries_a_comment() -> None:
    # systemd reads "30s # ping" as the value and drops the whole setting.
    for path in (SERVICE, SOCKET):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped and stripped[0] not in "#;[":
                value = stripped.partition("=")[2]
                assert "#" not in value and ";" not in value, f"{path.name}:{number}: {line!r}"


def test_exposure_is_at_most_1_2() -> None:
    score, run = exposure(SERVICE)
    report = run.stdout + run.stderr
    assert score <= MAX_EXPOSURE, report
    assert run.returncode == 0, report


def test_the_exposure_check_fails_a_weaker_unit(tmp_path: Path) -> None:
    # Proves the check above can fail: without its system call filter and read-only
    # system, the same unit scores worse and the threshold makes systemd-analyze exit 1.
    weaker = tmp_path / "orchestrator.service"
    kept = [
        line
        for line in SERVICE.read_text().splitlines()
        if not line.startswith(("SystemCallFilter=", "ProtectSystem=", "CapabilityBoundingSet="))
    ]
    weaker.write_text("\n".join(kept) + "\n")
    score, run = exposure(weaker)
    assert score > MAX_EXPOSURE
    assert run.returncode != 0


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    # verify checks every key and value, and that the commands exist: point ExecStart at the
    # orchestrator installed next to this Python instead of /usr/local/bin.
    tool = analyze()
    installed = Path(sys.executable).with_name("orchestrator")
    text = SERVICE.read_text().replace("/usr/local/bin/orchestrator ", f"{installed} ")
    assert str(installed) in text
    (tmp_path / SERVICE.name).write_text(text)
    shutil.copy(SOCKET, tmp_path / SOCKET.name)
    run = subprocess.run(
        [tool, "verify", "--man=no", SERVICE.name, SOCKET.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_readiness_watchdog_reload_and_restart(service: Unit) -> None:
    assert one(service, "Service", "Type") == "notify"
    assert one(service, "Service", "NotifyAccess") == "main"
    # The loop pings every WatchdogSec/2; much below 10 s a long stall of the disk would
    # count as a hung daemon.
    assert 10 <= seconds(one(service, "Service", "WatchdogSec")) <= 120
    reload = shlex.split(one(service, "Service", "ExecReload"))
    assert Path(reload[0]).is_absolute() and Path(reload[0]).name == "kill"
    assert reload[1:] == ["-HUP", "$MAINPID"]
    assert one(service, "Service", "Restart") == "on-failure"


def test_the_stop_timeout_outlasts_the_drain(service: Unit) -> None:
    drain = next(f.default for f in dataclasses.fields(DaemonSettings) if f.name == "drain_timeout")
    assert isinstance(drain, float)
    # After the drain the daemon still checkpoints what it cut and closes the store.
    assert seconds(one(service, "Service", "TimeoutStopSec")) >= drain + 10
    assert service["Service"].get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    assert service["Service"].get("KillMode", ["control-group"]) == ["control-group"]


def test_identity_directories_and_sandbox(service: Unit) -> None:
    s = "Service"
    for key in ("StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert one(service, s, key) == "orchestrator"
    argv = shlex.split(one(service, s, "ExecStart"))
    assert argv[1:] == ["run", "--config", "/etc/orchestrator/accounts.toml"]
    user, group = one(service, s, "User"), one(service, s, "Group")
    assert user not in ("root", "0")
    # systemd-sysusers creates the user and its group of the same name.
    assert re.search(rf"^u {re.escape(user)} ", SYSUSERS.read_text(), re.M) and group == user
    # Writes go to the state and runtime directories only.
    assert one(service, s, "ProtectSystem") == "strict"
    assert "ReadWritePaths" not in service[s]
    families = set(one(service, s, "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # A private user namespace would show every peer of the control socket as uid 65534,
    # and the daemon's SO_PEERCRED check would refuse every operator.
    assert service[s].get("PrivateUsers", ["no"]) == ["no"]


def test_credentials_are_the_ones_the_example_documents(service: Unit) -> None:
    documented = re.findall(
        r'^#?\s*(?:client_secret|token_key)_credential = "([^"]+)"',
        (ROOT / "accounts.example.toml").read_text(),
        re.M,
    )
    loaded = credentials(service)
    assert sorted(loaded) == sorted(documented) == ["client-secret", "token-key"]
    readme = (ROOT / "README.md").read_text()
    for source in loaded.values():
        assert source.startswith("/etc/orchestrator/credentials/")
        assert source in readme, f"the README's install section does not create {source}"


def test_the_socket_unit_matches_the_service_and_the_cli(service: Unit) -> None:
    sock = parse_unit(SOCKET)
    path = Path(one(sock, "Socket", "ListenStream"))
    assert path == DEFAULT_SOCKET
    assert path.parent == Path("/run") / one(service, "Service", "RuntimeDirectory")
    assert one(sock, "Socket", "SocketGroup") == one(service, "Service", "Group")
    assert one(sock, "Socket", "SocketMode") == "0660"
    # Otherwise stopping the service would delete the socket the socket unit still listens on.
    assert one(service, "Service", "RuntimeDirectoryPreserve") == "yes"


class Notifications:
    """The receiving end of NOTIFY_SOCKET, as systemd holds it."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path, self.log = path, log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.seen: list[dict[str, str]] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def expect(self, key: str, *, timeout: float = 30.0) -> dict[str, str]:
        """The next message carrying ``key``; fails early, with the log, if the daemon died."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                raw = self.sock.recv(4096).decode()
            except TimeoutError:
                if self.proc is not None and self.proc.poll() is not None:
                    tail = self.log.read_text()[-3000:]
                    raise AssertionError(f"the daemon exited before {key}:\n{tail}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {key} from the daemon; got {self.seen}") from None
                continue
            message = dict(line.split("=", 1) for line in raw.splitlines())
            self.seen.append(message)
            if key in message:
                return message


def test_the_daemon_runs_as_the_unit_describes(
    tmp_path: Path, sandbox: Sandbox, epoch: float, service: Unit
) -> None:
    s = service["Service"]
    reload = shlex.split(one(service, "Service", "ExecReload"))
    if not Path(reload[0]).exists():
        pytest.skip(f"{reload[0]} does not exist on this machine")
    # The credentials as systemd lays them out: one file per LoadCredential= name.
    names = credentials(service)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "client-secret").write_text(SECRET)
    (creds / "token-key").write_text(generate_key() + "\n")
    assert sorted(p.name for p in creds.iterdir()) == sorted(names)
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    text = re.sub(
        r"^client_secret_file = .*$",
        'client_secret_credential = "client-secret"\ntoken_key_credential = "token-key"',
        config.read_text(),
        flags=re.M,
    )
    (tmp_path / "client_secret").unlink()
    config.write_text(text)

    argv = shlex.split(one(service, "Service", "ExecStart"))
    argv = [str(Path(sys.executable).with_name("orchestrator")), *argv[1:-1], str(config)]
    log = tmp_path / "daemon.log"
    notify = Notifications(tmp_path / "notify", log)
    env = {
        "PATH": "/usr/bin:/bin",
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": str(int(seconds(s["WatchdogSec"][0]) * 1_000_000)),
        "CREDENTIALS_DIRECTORY": str(creds),
    }
    with open(log, "wb") as out:
        proc = notify.proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env, cwd="/")
    try:
        notify.expect("READY")
        client = DaemonClient(tmp_path / "orchestrator.sock", timeout=10)
        assert client.request("GET", "/v1/health")

        command = [proc.pid if arg == "$MAINPID" else arg for arg in reload]
        subprocess.run([str(arg) for arg in command], check=True, timeout=10)
        assert notify.expect("RELOADING")["RELOADING"] == "1"
        assert notify.expect("READY")["READY"] == "1"

        proc.send_signal(getattr(signal, s.get("KillSignal", ["SIGTERM"])[0]))
        notify.expect("STOPPING")
        assert proc.wait(timeout=seconds(one(service, "Service", "TimeoutStopSec"))) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.sock.close()
    assert SECRET not in log.read_text()
