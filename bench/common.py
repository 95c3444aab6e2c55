"""What the benchmarks share: the sandbox and the daemon as separate processes, /proc readings,
readiness, seeding, and the results file.

Everything runs as real processes so that each one's CPU and memory can be read from /proc
on its own: the sandbox (``python -m orchestrator.sandbox``), the daemon (``orchestrator run``)
and, for the overhead comparison, a bare httpx script. Readiness is the daemon's sd_notify
``READY=1`` on a datagram socket this harness owns; a daemon that does not send it yet is
detected by polling ``GET /v1/health`` instead, and the result says which one was used.

Sections (B2 may add functions at the end):
    machine and results        machine(), write_results(), print_table(), percentile()
    /proc                      cpu_seconds(), memory_kib()
    the sandbox                SandboxProcess
    the daemon                 write_config(), NotifySocket, DaemonProcess
    seeding                    seed_jobs()
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
CLIENT_KEY = "bench-key"
CLIENT_SECRET = "bench-secret-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- machine and results ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine a figure was measured on, as BENCHMARKS.md records it."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gib": round(mem_kib / 1024**2, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "sqlite": __import__("sqlite3").sqlite_version,
    }


def write_results(name: str, data: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "command": " ".join([".venv/bin/python -m", f"bench.{name}", *sys.argv[1:]]),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    metric: str
    value: str
    target: str = ""
    met: bool | None = None


def print_table(title: str, rows: Sequence[Row]) -> None:
    width = max(len(r.metric) for r in rows)
    vwidth = max(len(r.value) for r in rows)
    print(f"\n{title}")
    for r in rows:
        verdict = "" if r.met is None else ("  met" if r.met else "  MISSED")
        target = f"  (target {r.target})" if r.target else ""
        print(f"  {r.metric:<{width}}  {r.value:>{vwidth}}{target}{verdict}")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): the value a p% share of samples is at or under."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# -- /proc -----------------------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU of one process (not its children), from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    rest = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU per thread of a process (thread id -> seconds); the main thread's id is the pid."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = cpu_seconds(f"{pid}/task/{task.name}")
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return out


def split_cpu(pid: int, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """How much CPU went to the event loop's thread and how much to worker threads (SQLite's
    connection threads, ``to_thread`` work) between two ``thread_cpu_seconds`` readings."""
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    others = sum(v - before.get(t, 0.0) for t, v in after.items() if t != pid)
    return {"event_loop_thread": round(main, 3), "other_threads": round(others, 3)}


def memory_kib(pid: int | str = "self", key: str = "VmHWM") -> int:
    """A line of /proc/PID/status in KiB: VmHWM is the peak resident set, VmRSS the current."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# -- the sandbox -----------------------------------------------------------------------------


class SandboxProcess:
    """``python -m orchestrator.sandbox`` in its own process (its CPU is not the daemon's).

    Users ``user-1`` .. ``user-N`` and their token files are created by the sandbox itself
    (``--users N --write-tokens DIR``) before it prints the line with its URL.
    """

    def __init__(
        self,
        work: Path,
        *,
        users: int,
        epoch: float,
        time_scale: float,
        extra: Sequence[str] = (),
    ) -> None:
        self.work = work
        self.tokens_dir = work / "tokens"
        self.log = work / "sandbox.log"
        args = [
            PYTHON,
            "-m",
            "orchestrator.sandbox",
            "--port",
            "0",
            "--epoch",
            repr(epoch),
            "--time-scale",
            repr(time_scale),
            "--client-key",
            CLIENT_KEY,
            "--client-secret",
            CLIENT_SECRET,
            *(["--users", str(users), "--write-tokens", str(self.tokens_dir)] if users else []),
            *extra,
        ]
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("sandbox listening on "):
            self.proc.kill()
            raise RuntimeError(f"the sandbox did not start:\n{self.log.read_text()[-2000:]}")
        self.base_url = line.split()[-1]
        self.http = httpx.Client(base_url=self.base_url, timeout=120)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def token_file(self, n: int) -> Path:
        return self.tokens_dir / f"user-{n}.json"

    def ledger(self) -> dict[str, Any]:
        return self._get("/_sandbox/ledger")  # type: ignore[no-any-return]

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return self._get(f"/_sandbox/requests?since={since}")  # type: ignore[no-any-return]

    def set_faults(self, plan: Mapping[str, Any]) -> None:
        self.http.put("/_sandbox/faults", json=plan).raise_for_status()

    def _get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the daemon ------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    from orchestrator.demo import toml_value

    return toml_value(value)


def write_config(
    path: Path,
    *,
    base_url: str,
    accounts: Iterable[tuple[str, Path]],
    daemon: Mapping[str, Any],
    tiktok: Mapping[str, Any] | None = None,
    account: Mapping[str, Any] | None = None,
) -> Path:
    """An accounts TOML: ``daemon`` and ``tiktok`` keys as given, one table per account."""
    secret = path.parent / "client_secret"
    secret.write_text(CLIENT_SECRET)
    lines = ["[daemon]", *(f"{k} = {_toml(v)}" for k, v in daemon.items())]
    lines += [
        "[tiktok]",
        f"base_url = {_toml(base_url)}",
        f"client_key = {_toml(CLIENT_KEY)}",
        f"client_secret_file = {_toml(secret)}",
        *(f"{k} = {_toml(v)}" for k, v in (tiktok or {}).items()),
    ]
    per_account = [f"{k} = {_toml(v)}" for k, v in (account or {}).items()]
    for account_id, token_file in accounts:
        lines += [
            "[[accounts]]",
            f"id = {_toml(account_id)}",
            'scopes = ["video.publish", "video.upload"]',
            f"token_file = {_toml(token_file)}",
            *per_account,
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


class NotifySocket:
    """The ``$NOTIFY_SOCKET`` a service manager would own: a datagram socket we read."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[dict[str, str]]:
        """Messages received since the last call, each as its KEY=VALUE pairs."""
        fresh = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            pairs = dict(
                line.split("=", 1) for line in data.decode(errors="replace").splitlines() if line
            )
            self.messages.append((time.monotonic(), pairs))
            fresh.append(pairs)
        return fresh

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Readiness:
    seconds: float  # from just before the process was spawned
    method: str  # "sd_notify READY=1" or "GET /v1/health"
    health_seconds: float | None  # when the control socket first answered, for comparison


class DaemonProcess:
    """``orchestrator run --config FILE`` as a process, with readiness and /proc readings."""

    def __init__(self, config: Path, work: Path, *, profile: Path | None = None) -> None:
        self.config = config
        # Run under cProfile, which writes this file when the daemon exits cleanly.
        self.profile = profile
        self.work = work
        self.socket_path = Path(_read_socket_path(config))
        self.log = work / "daemon.log"
        self.notify = NotifySocket(work / "notify.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path)}
        self.notify.drain()
        exe = Path(PYTHON).parent / "orchestrator"
        command = [str(exe)] if exe.exists() else [PYTHON, "-m", "orchestrator"]
        if self.profile is not None:
            command = [PYTHON, "-m", "cProfile", "-o", str(self.profile), "-m", "orchestrator"]
        with open(self.log, "ab") as out:
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(
                [*command, "run", "--config", str(self.config)],
                stdout=out,
                stderr=out,
                env=env,
                cwd=ROOT,
            )

    def wait_ready(self, timeout: float = 300.0, grace: float = 2.0) -> Readiness:
        """Wait for READY=1 on the notify socket, or for the control socket to answer.

        Whichever comes first is noted; once the socket answers, READY=1 is awaited for
        ``grace`` more seconds (a daemon that sends it sends it at about the same moment),
        and the notify time is used if it came.
        """
        assert self.proc is not None
        deadline = self.spawned_at + timeout
        health_at: float | None = None
        while True:
            now = time.monotonic()
            for message in self.notify.drain():
                if message.get("READY") == "1":
                    return Readiness(
                        seconds=self.notify.messages[-1][0] - self.spawned_at,
                        method="sd_notify READY=1",
                        health_seconds=None if health_at is None else health_at - self.spawned_at,
                    )
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{self.log.read_text()[-3000:]}")
            if health_at is None and self._health():
                health_at = time.monotonic()
            if health_at is not None and now - health_at > grace:
                return Readiness(
                    seconds=health_at - self.spawned_at,
                    method="GET /v1/health",
                    health_seconds=health_at - self.spawned_at,
                )
            if now > deadline:
                raise RuntimeError(f"the daemon was not ready after {timeout:g} s")
            time.sleep(0.005)

    def _health(self) -> bool:
        try:
            with self.client(timeout=1.0) as c:
                return c.get("/v1/health").status_code == 200
        except (httpx.TransportError, OSError):
            return False

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket_path)),
            base_url="http://orchestrator",
            timeout=timeout,
        )

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self, key: str = "VmHWM") -> int:
        return memory_kib(self.pid, key)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.notify.close()


def _read_socket_path(config: Path) -> str:
    from orchestrator.config import load_config

    return str(load_config(config).daemon.socket_path)


def wait_until(probe: Any, *, timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``probe()`` until it returns something truthy; raise at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


# -- seeding ---------------------------------------------------------------------------------


def make_video(path: Path, size: int, seed: int = 0) -> Path:
    import random

    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + random.Random(seed).randbytes(size - 12))
    return path


def seed_jobs(
    config_path: Path,
    bodies: Iterable[dict[str, Any]],
    *,
    now: float,
    batch: int = 5000,
) -> dict[str, Any]:
    """Queue jobs straight into the daemon's store, before it starts, through the code the
    control API runs for ``POST /v1/jobs`` (``parse_submission``, ``spool_video``,
    ``build_job``, ``Store.submit_many``: the same checks and rows as ``Store.submit``), minus
    the HTTP hop. Each distinct video file is spooled once, as the content-addressed spool
    would leave it anyway. Returns counts and the time it took.
    """
    import anyio

    from orchestrator.config import load_config
    from orchestrator.intake import build_job, parse_submission, spool_video
    from orchestrator.store import Store

    config = load_config(config_path)
    spool_dir = config.daemon.state_dir / "spool"
    config.daemon.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def run() -> dict[str, Any]:
        started = time.monotonic()
        spooled: dict[str, tuple[Path, str, int]] = {}
        store = await Store.open(config.daemon.state_dir / "orchestrator.db")
        created = existing = 0
        try:
            pending: list[tuple[Any, str]] = []
            for body in bodies:
                sub = parse_submission(body)
                video = None
                if sub.video_path is not None:
                    key = str(sub.video_path)
                    if key not in spooled:
                        spooled[key] = spool_video(sub.video_path, spool_dir)
                    video = spooled[key]
                pending.append(build_job(sub, now=now, spooled=video))
                if len(pending) >= batch:
                    outcomes = await store.submit_many(pending)
                    created += outcomes.count("created")
                    existing += len(outcomes) - outcomes.count("created")
                    pending = []
            if pending:
                outcomes = await store.submit_many(pending)
                created += outcomes.count("created")
                existing += len(outcomes) - outcomes.count("created")
        finally:
            await store.close()
        return {"created": created, "existing": existing, "seconds": time.monotonic() - started}

    return anyio.run(run, backend="asyncio")
