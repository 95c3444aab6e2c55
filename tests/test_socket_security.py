"""The control socket's two gates: the file (mode, group) and each peer's kernel credentials.

Clients of another uid are real processes (``user=65534``), so these tests need root; they
run a stdlib-only script under the system's python3, because the venv's interpreter may live
where nobody can read it. Socket activation is tested on a real daemon process that is handed
its socket as fd 3, the way systemd does it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

import orchestrator
from orchestrator.client import DaemonClient, DaemonUnreachable
from orchestrator.config import DaemonSettings
from orchestrator.errors import ConfigError, DaemonAlreadyRunning
from orchestrator.httpd import (
    AccessPolicy,
    PeerCred,
    Request,
    Response,
    _proc_groups,
    activated_socket,
    authorized,
    serve_control,
)
from orchestrator.sandbox import Sandbox

from .harness import KEY, SECRET, wait_for_sync, write_config

NOBODY = 65534
OPERATORS = 4242  # a gid with no name: numeric ids need not exist in /etc/group
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients as nobody")

# Connects, sends one request, prints the status and body as JSON (or the errno's name).
CLIENT = r"""
import errno, json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"error": errno.errorcode[exc.errno]})); sys.exit()
s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split()[1]), "headers": head.decode().lower(),
                  "body": json.loads(body)}))
"""


# --- the decision ------------------------------------------------------------------------------


POLICY = AccessPolicy(owner_uid=1000, uids=frozenset({1001}), gids=frozenset({50}))


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        (PeerCred(pid=9, uid=0, gid=0), True),  # root
        (PeerCred(pid=9, uid=1000, gid=1000), True),  # the daemon's own user
        (PeerCred(pid=9, uid=1001, gid=1001), True),  # allowed_users
        (PeerCred(pid=9, uid=1002, gid=50), True),  # primary group allowed
        (PeerCred(pid=9, uid=1002, gid=1002, groups=(7, 50)), True),  # supplementary group
        (PeerCred(pid=9, uid=1002, gid=1002, groups=(7, 8)), False),
        (PeerCred(pid=9, uid=65534, gid=65534), False),
    ],
)
def test_authorized(peer: PeerCred, allowed: bool) -> None:
    assert authorized(peer, POLICY) is allowed


def test_policy_for_daemon_counts_the_socket_group_as_allowed() -> None:
    settings = DaemonSettings(
        state_dir=Path("/s"),
        socket_path=Path("/s/o.sock"),
        socket_group=OPERATORS,
        allowed_uids=(1001,),
        allowed_gids=(50,),
    )
    policy = AccessPolicy.for_daemon(settings)
    assert policy == AccessPolicy(
        owner_uid=os.geteuid(), uids=frozenset({1001}), gids=frozenset({50, OPERATORS})
    )
    bare = AccessPolicy.for_daemon(DaemonSettings(state_dir=Path("/s"), socket_path=Path("/s/x")))
    assert (bare.uids, bare.gids) == (frozenset(), frozenset())


@as_root
def test_groups_fall_back_to_proc_and_tolerate_a_vanished_peer() -> None:
    waiting = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    extra = [OPERATORS, OPERATORS + 7]
    with subprocess.Popen(waiting, stdin=subprocess.PIPE, extra_groups=extra) as child:
        assert sorted(_proc_groups(child.pid)) == extra
        assert child.stdin is not None
        child.stdin.close()
    assert _proc_groups(child.pid) == ()  # reaped: /proc/<pid> is gone
    assert _proc_groups(0) == ()  # SO_PEERCRED's pid for a peer in another pid namespace


# --- a real server on a real socket ---------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="orch-sock-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def echo_peer(request: Request) -> Response:
    peer = request.peer
    return Response.json(200, {"ok": True, "uid": None if peer is None else peer.uid})


@asynccontextmanager
async def serving(settings: DaemonSettings) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        await tg.start(serve_control, settings, echo_peer)
        yield
        tg.cancel_scope.cancel()


def settings_for(path: Path, **kw: object) -> DaemonSettings:
    return DaemonSettings(state_dir=path.parent, socket_path=path, **kw)  # type: ignore[arg-type]


async def client_as(
    path: Path, uid: int = NOBODY, *, groups: tuple[int, ...] = ()
) -> dict[str, object]:
    python = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    if python is None:
        pytest.skip("no system python3 that another user can run")
    done = await anyio.run_process(
        [python, "-I", "-c", CLIENT, str(path)], user=uid, group=uid, extra_groups=list(groups)
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_created_socket_has_the_mode_and_group_and_goes_away_after(
    shared_dir: Path,
) -> None:
    path = shared_dir / "c.sock"
    group = OPERATORS if os.geteuid() == 0 else os.getegid()
    async with serving(settings_for(path, socket_mode=0o640, socket_group=group)):
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o640
        assert info.st_gid == group
    assert not path.exists(), "a socket the daemon created is removed when it stops"


@pytest.mark.anyio
async def test_default_mode_is_0660(shared_dir: Path) -> None:
    path = shared_dir / "d.sock"
    async with serving(settings_for(path)):
        assert stat.S_IMODE(path.lstat().st_mode) == 0o660


@pytest.mark.anyio
async def test_a_file_that_is_not_a_socket_is_never_replaced(shared_dir: Path) -> None:
    path = shared_dir / "c.sock"
    path.write_text("precious")
    with pytest.raises(DaemonAlreadyRunning, match="exists and is not a socket"):
        await serve_control(settings_for(path), echo_peer)
    assert path.read_text() == "precious"


@pytest.mark.anyio
async def test_a_stale_socket_is_replaced_but_a_live_one_is_not(shared_dir: Path) -> None:
    path = shared_dir / "c.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening: what a killed daemon leaves behind
    os.link(path, shared_dir / "old")  # keeps the old inode's number from being reused
    stale = path.lstat().st_ino
    async with serving(settings_for(path)):
        assert path.lstat().st_ino != stale
        with pytest.raises(DaemonAlreadyRunning, match="another daemon is listening"):
            await serve_control(settings_for(path), echo_peer)
        live = await client_as(path, os.geteuid())
        assert live["status"] == 200, "the refused second server left the first one alone"


@as_root
@pytest.mark.anyio
async def test_another_uid_is_refused_with_a_json_403(
    shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = shared_dir / "c.sock"
    caplog.set_level(logging.WARNING, logger="orchestrator.httpd")
    async with serving(settings_for(path)):
        # The file gate alone stops nobody (0660, root's group): the kernel refuses.
        assert await client_as(path) == {"error": "EACCES"}
        # Loosen the file, as a SocketMode=0666 or a stray chmod would: the peer check holds.
        path.chmod(0o666)
        answer = await client_as(path)
    assert answer["status"] == 403
    assert answer["body"] == {
        "error": {"code": "forbidden", "message": f"uid {NOBODY} is not allowed to use this socket"}
    }
    assert "connection: close" in str(answer["headers"])
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "api.denied"]
    assert (record.uid, record.gid) == (NOBODY, NOBODY)  # type: ignore[attr-defined]
    assert record.pid > 0  # type: ignore[attr-defined]


@as_root
@pytest.mark.anyio
async def test_a_listed_uid_is_allowed(shared_dir: Path) -> None:
    path = shared_dir / "c.sock"
    async with serving(settings_for(path, allowed_uids=(NOBODY,))):
        path.chmod(0o666)
        answer = await client_as(path)
    assert answer["status"] == 200
    assert answer["body"] == {"ok": True, "uid": NOBODY}


@as_root
@pytest.mark.anyio
async def test_a_listed_supplementary_group_is_allowed(shared_dir: Path) -> None:
    path = shared_dir / "c.sock"
    async with serving(settings_for(path, allowed_gids=(OPERATORS,))):
        path.chmod(0o666)
        assert (await client_as(path, groups=(OPERATORS,)))["status"] == 200
        assert (await client_as(path, groups=(OPERATORS + 1,)))["status"] == 403
        assert (await client_as(path))["status"] == 403


@as_root
@pytest.mark.anyio
async def test_the_socket_group_passes_both_gates(shared_dir: Path) -> None:
    path = shared_dir / "c.sock"
    async with serving(settings_for(path, socket_group=OPERATORS)):
        assert stat.S_IMODE(path.lstat().st_mode) == 0o660  # nothing loosened
        member = await client_as(path, groups=(OPERATORS,))
        outsider = await client_as(path)
    assert member["status"] == 200
    assert outsider == {"error": "EACCES"}


# Serves as an unprivileged user with socket_group = 0 (root's group, which it is not in).
UNPRIVILEGED_SERVER = """
import json, sys
from pathlib import Path
import anyio
from orchestrator.config import DaemonSettings
from orchestrator.httpd import Response, serve_control
from orchestrator.logs import configure

async def main() -> None:
    path = Path(sys.argv[1])
    settings = DaemonSettings(state_dir=path.parent, socket_path=path, socket_group=0)
    async def handler(request):
        return Response.json(200, {})
    async with anyio.create_task_group() as tg:
        await tg.start(serve_control, settings, handler)
        info = path.lstat()
        print(json.dumps({"gid": info.st_gid, "mode": info.st_mode & 0o777}))
        tg.cancel_scope.cancel()

configure("info")
anyio.run(main)
"""


@as_root
def test_a_group_the_daemon_cannot_give_is_a_warning_not_a_crash(shared_dir: Path) -> None:
    python = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    probe = f"import sys; print(sys.version_info[:2] == {tuple(sys.version_info[:2])})"
    if python is None or subprocess.run([python, "-c", probe], capture_output=True).stdout != (
        b"True\n"
    ):
        pytest.skip("needs a system python3 of the venv's version, runnable by nobody")
    home = shared_dir / "run"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    repo = Path(orchestrator.__file__).resolve().parent.parent
    path = str(repo) + os.pathsep + sysconfig.get_paths()["purelib"]
    readable = subprocess.run(
        [python, "-c", "import anyio, orchestrator.httpd"],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    if readable.returncode != 0:
        # A clone under a 0700 directory (mktemp -d): nobody cannot import the package.
        pytest.skip("the checkout and its venv are not readable by nobody here")
    done = subprocess.run(
        [python, "-c", UNPRIVILEGED_SERVER, str(home / "c.sock")],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"gid": NOBODY, "mode": 0o660}
    [warning] = [json.loads(line) for line in done.stderr.splitlines() if "socket_group" in line]
    assert warning["action"] == "api.socket_group_failed"
    assert warning["level"] == "warning"
    assert warning["gid"] == 0
    assert "Traceback" not in done.stderr


# --- socket activation ----------------------------------------------------------------------


def listening_unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_activation_is_ignored_and_forgotten_when_meant_for_another_process() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "PATH": "/bin"}
    assert activated_socket(env, pid=2) is None
    assert env == {"PATH": "/bin"}, "a child must not take the variables as its own"
    env = {"PATH": "/bin"}
    assert activated_socket(env, pid=2) is None
    assert env == {"PATH": "/bin"}


def test_activation_takes_the_first_fd_and_unsets_the_variables(tmp_path: Path) -> None:
    with listening_unix_socket(tmp_path / "a.sock") as original:
        env = {"LISTEN_PID": "42", "LISTEN_FDS": "1"}
        sock = activated_socket(env, pid=42, first_fd=os.dup(original.fileno()))
        assert sock is not None
        with sock:
            assert sock.getsockname() == str(tmp_path / "a.sock")
        assert env == {}


def passed_fd(kind: str, tmp_path: Path) -> int:
    """A file descriptor of the given kind, as systemd might (wrongly) pass one."""
    if kind == "tcp":
        with socket.create_server(("127.0.0.1", 0)) as tcp:
            return os.dup(tcp.fileno())
    if kind == "idle":
        with socket.socket(socket.AF_UNIX) as idle:
            idle.bind(str(tmp_path / "idle.sock"))
            return os.dup(idle.fileno())
    return os.open(tmp_path / "plain", os.O_CREAT | os.O_RDWR)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("tcp", r"fd \d+ is an AF_INET/SOCK_STREAM socket, not AF_UNIX/SOCK_STREAM"),
        ("idle", r"fd \d+ is a socket that is not listening"),
        ("file", r"fd \d+ is not a socket \(Socket operation on non-socket\)"),
    ],
)
def test_activation_refuses_anything_but_a_listening_unix_stream_socket(
    tmp_path: Path, kind: str, expected: str
) -> None:
    fd = passed_fd(kind, tmp_path)
    try:
        with pytest.raises(ConfigError, match=expected) as info:
            activated_socket({"LISTEN_PID": "7", "LISTEN_FDS": "1"}, pid=7, first_fd=fd)
        assert "ListenStream=" in str(info.value)
        os.fstat(fd)  # still open: what systemd passed is not ours to close
    finally:
        os.close(fd)


# Puts the given fd at 3 and sets LISTEN_* for its own pid, then execs the daemon: what
# systemd does for a unit started by its .socket.
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="orchestrator")
os.execv(sys.executable, [sys.executable, "-m", "orchestrator", *sys.argv[2:]])
"""


@dataclass(kw_only=True)
class ActivatedDaemon:
    proc: subprocess.Popen[bytes]
    log: Path
    inode: int
    exit_code: int | None = None
    clients: list[DaemonClient] = field(default_factory=list)

    def actions(self) -> list[str]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line).get("action") for line in lines if line[:1] == "{"]


@contextmanager
def activated_daemon(tmp_path: Path, config: Path, path: Path) -> Iterator[ActivatedDaemon]:
    """A real daemon process handed a listening socket at ``path`` as fd 3, then SIGTERM."""
    log_path = tmp_path / "daemon.log"
    with listening_unix_socket(path) as sock, open(log_path, "wb") as log:
        os.chmod(path, 0o660)
        proc = subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, str(sock.fileno()), "run", "--config", str(config)],
            pass_fds=[sock.fileno()],
            stdout=log,
            stderr=log,
        )
        daemon = ActivatedDaemon(proc=proc, log=log_path, inode=path.lstat().st_ino)
        try:
            client = DaemonClient(path, timeout=10)
            daemon.clients.append(client)

            def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"daemon exited:\n{log_path.read_text()[-3000:]}")
                try:
                    return client.request("GET", "/v1/health")[0] == 200
                except DaemonUnreachable:
                    return False

            wait_for_sync(up, what="the socket-activated daemon to answer")
            yield daemon
        finally:
            for client in daemon.clients:
                client.close()
            proc.send_signal(signal.SIGTERM)
            daemon.exit_code = proc.wait(timeout=30)


@pytest.mark.e2e
def test_a_daemon_started_by_socket_activation_serves_on_the_passed_socket(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    path = tmp_path / "orchestrator.sock"  # write_config's socket_path
    with activated_daemon(tmp_path, config, path) as daemon:
        cli = subprocess.run(
            [sys.executable, "-m", "orchestrator", "status", "--json", "--socket", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cli.returncode == 0, cli.stderr
        assert [a["id"] for a in json.loads(cli.stdout)["accounts"]] == ["acme-us"]
        assert path.lstat().st_ino == daemon.inode, "the daemon must not re-create the socket"
    assert daemon.exit_code == 0
    assert "api.socket_activated" in daemon.actions()
    assert "api.socket_path_mismatch" not in daemon.actions()


@pytest.mark.e2e
def test_the_socket_from_systemd_outlives_the_daemon(
    tmp_path: Path, sandbox: Sandbox, epoch: float
) -> None:
    config = write_config(tmp_path, sandbox, epoch=epoch, client_key=KEY, client_secret=SECRET)
    path = tmp_path / "orchestrator.sock"
    with activated_daemon(tmp_path, config, path) as daemon:
        pass
    assert daemon.exit_code == 0
    # systemd keeps listening on it and starts the daemon again on the next connection.
    assert path.lstat().st_ino == daemon.inode
