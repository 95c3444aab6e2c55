"""A small HTTP/1.1 server on a Unix socket, for the control API (h11 does the parsing).

One handler coroutine per request; keep-alive; bodies capped; every failure inside one
connection is caught there, so a malformed request or a handler bug never reaches the
listener (an exception escaping a connection task would end ``serve()`` for everybody).

Whoever can submit posts can post to every account, so the control socket has two gates:
the file (mode 0660, a configurable group) and, on every connection, the peer's kernel
credentials (SO_PEERCRED) checked against ``authorized``. The second gate matters because
the first one is easy to widen by accident (a socket handed over by systemd, a directory
mounted elsewhere). TCP listeners (webhooks, metrics) have no peer credentials and no gate.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.abc
import h11

from .errors import ConfigError, DaemonAlreadyRunning
from .logs import fields

if TYPE_CHECKING:
    from .config import DaemonSettings

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
READ_SIZE = 64 * 1024
IDLE_TIMEOUT = 60.0
# sd_listen_fds(3): passed sockets start at fd 3.
LISTEN_FDS_START = 3
# <asm-generic/socket.h>; Python 3.11 does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int
    # Supplementary groups; read only when a group decides (see ``_refusal``).
    groups: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessPolicy:
    """Who may use the control socket besides root and the daemon's own user."""

    owner_uid: int
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()

    @classmethod
    def for_daemon(cls, settings: DaemonSettings) -> AccessPolicy:
        # The socket's group is the operators' group: its members pass the file gate, so
        # refusing them here would only make the 0660 mode a lie.
        group = () if settings.socket_group is None else (settings.socket_group,)
        return cls(
            owner_uid=os.geteuid(),
            uids=frozenset(settings.allowed_uids),
            gids=frozenset((*settings.allowed_gids, *group)),
        )


def authorized(peer: PeerCred, policy: AccessPolicy) -> bool:
    if peer.uid in (0, policy.owner_uid) or peer.uid in policy.uids:
        return True
    return not policy.gids.isdisjoint((peer.gid, *peer.groups))


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer: PeerCred | None = None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}


@dataclass(frozen=True, kw_only=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any) -> Response:
        body = json.dumps(payload, ensure_ascii=False, indent=None).encode() + b"\n"
        return cls(status=status, body=body)

    @classmethod
    def error(cls, status: int, code: str, message: str) -> Response:
        return cls.json(status, {"error": {"code": code, "message": message}})


Handler = Callable[[Request], Awaitable[Response]]


def peer_credentials(sock: socket.socket) -> PeerCred | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)


def peer_groups(sock: socket.socket, pid: int) -> tuple[int, ...]:
    """The peer's supplementary groups as they were when it connected.

    SO_PEERGROUPS (Linux 4.13+) is exact. /proc/<pid>/status is the fallback (an old kernel,
    or more groups than one getsockopt buffer holds): it tells the process's groups now,
    and the process may be gone, which simply means no groups.
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
    except OSError:
        return _proc_groups(pid)
    return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])


def _proc_groups(pid: int) -> tuple[int, ...]:
    if pid <= 0:  # the peer lives in another pid namespace
        return ()
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return ()
    for line in status.splitlines():
        if line.startswith("Groups:"):
            return tuple(int(g) for g in line.split()[1:] if g.isdigit())
    return ()


async def prepare_socket_path(path: Path) -> None:
    """Remove a stale socket left by a dead daemon; refuse to touch anything else.

    anyio's listener unlinks whatever is at the path, which would let a second daemon
    silently take the first one's socket: check for a live peer first.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(mode):
        raise DaemonAlreadyRunning(f"{path} exists and is not a socket; refusing to replace it")
    try:
        stream = await anyio.connect_unix(path)
    except OSError:
        path.unlink()
        return
    await stream.aclose()
    raise DaemonAlreadyRunning(f"another daemon is listening on {path}")


async def serve_unix(
    path: Path,
    handler: Handler,
    *,
    mode: int = 0o660,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await prepare_socket_path(path)
    listener = await anyio.create_unix_listener(path)
    os.chmod(path, mode)
    async with listener:
        task_status.started()
        await listener.serve(lambda stream: _connection(stream, handler))


async def serve_control(
    settings: DaemonSettings,
    handler: Handler,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The control API: on the socket systemd passed us, or on one created at socket_path.

    Every connection is checked against the access policy before its requests reach
    ``handler``. A socket created here is removed again on the way out (if it is still
    ours); a socket from systemd belongs to systemd and is left alone.
    """
    policy = AccessPolicy.for_daemon(settings)
    path = settings.socket_path
    inherited = activated_socket(os.environ, os.getpid())
    created: tuple[int, int] | None = None
    if inherited is not None:
        listener = await anyio.abc.SocketListener.from_socket(inherited)
        _log_activated(listener, path)
    else:
        await prepare_socket_path(path)
        listener = await anyio.create_unix_listener(path, mode=settings.socket_mode)
        status = path.stat()
        created = (status.st_dev, status.st_ino)
        if settings.socket_group is not None:
            _set_group(path, settings.socket_group)
    try:
        async with listener:
            task_status.started()
            await listener.serve(lambda stream: _connection(stream, handler, policy))
    finally:
        if created is not None:
            _remove_if_ours(path, created)


def activated_socket(
    environ: MutableMapping[str, str], pid: int, *, first_fd: int = LISTEN_FDS_START
) -> socket.socket | None:
    """The listening socket systemd opened for this process (socket activation), if any.

    Like sd_listen_fds(unset_environment=1): the variables are removed once read, so that
    no child process mistakes them for its own.
    """
    if "LISTEN_PID" not in environ:
        return None
    ours = environ.get("LISTEN_PID") == str(pid)
    count = environ.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if not ours or not count.isdigit() or int(count) < 1:
        return None
    if int(count) > 1:
        log.warning(
            "systemd passed %s sockets; only the first (fd 3) is used",
            count,
            extra=fields("api.socket_extra_fds", count=int(count)),
        )
    return _listening_unix_socket(first_fd)


def _listening_unix_socket(fd: int) -> socket.socket:
    hint = "orchestrator.socket needs one ListenStream= naming a path (a Unix stream socket)"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        message = f"socket activation: fd {fd} is not a socket ({exc.strerror}); {hint}"
        raise ConfigError(message) from exc
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    unix_stream = sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
    if not unix_stream or not listening:
        kind = f"an {sock.family.name}/{sock.type.name} socket, not AF_UNIX/SOCK_STREAM"
        sock.detach()  # not ours to close: whatever it is, systemd keeps it
        reason = kind if not unix_stream else "a socket that is not listening"
        raise ConfigError(f"socket activation: fd {fd} is {reason}; {hint}")
    return sock


def _log_activated(listener: anyio.abc.SocketListener, path: Path) -> None:
    bound = listener.extra(anyio.abc.SocketAttribute.local_address)
    name = os.fsdecode(bound) if isinstance(bound, str | bytes) else str(bound)
    log.info("control API on %s, from systemd", name, extra=fields("api.socket_activated"))
    if name != str(path):
        # The CLI finds the daemon through daemon.socket_path, not through systemd.
        log.warning(
            "the socket from systemd is %s but daemon.socket_path is %s; the CLI will not "
            "find the daemon unless both name the same path",
            name,
            path,
            extra=fields("api.socket_path_mismatch"),
        )


def _set_group(path: Path, gid: int) -> None:
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        # Not fatal: root and the daemon's user still get in, and allowed_* still apply
        # to anyone who can reach the socket; only the group's file access is missing.
        log.warning(
            "cannot give the socket %s to group %d (the daemon is not a member of it); its "
            "members cannot connect. Run the daemon with that group (systemd: Group= or "
            "SupplementaryGroups=), or use orchestrator.socket with SocketGroup=",
            path,
            gid,
            extra=fields("api.socket_group_failed", gid=gid),
        )


def _remove_if_ours(path: Path, identity: tuple[int, int]) -> None:
    try:
        status = path.lstat()
        if (status.st_dev, status.st_ino) == identity:
            path.unlink()
    except OSError:
        pass


async def serve_tcp(
    host: str,
    port: int,
    handler: Handler,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The same server on TCP (webhooks); ``task_status`` reports the bound port."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started(bound)
        await listener.serve(lambda stream: _connection(stream, handler))


async def _connection(
    stream: anyio.abc.SocketStream, handler: Handler, policy: AccessPolicy | None = None
) -> None:
    try:
        raw_socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        peer = peer_credentials(raw_socket) if raw_socket.family == socket.AF_UNIX else None
        refusal = None if policy is None else _refusal(raw_socket, peer, policy)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        async with stream:
            while True:
                request = await _read_request(stream, conn, peer)
                if request is None:
                    return
                if isinstance(request, Response):
                    await _send(stream, conn, request)
                    return
                if refusal is not None:
                    # Answered after the request is read: HTTP clients only listen then.
                    await _send(stream, conn, refusal)
                    return
                try:
                    response = await handler(request)
                except Exception:
                    log.exception(
                        "control API handler failed for %s %s",
                        request.method,
                        request.path,
                        extra=fields("api.handler_failed", path=request.path),
                    )
                    response = Response.error(500, "internal", "the daemon failed to answer")
                await _send(stream, conn, response)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, h11.ProtocolError):
        return
    except Exception:
        log.exception("control API connection failed", extra=fields("api.connection_failed"))


def _refusal(sock: socket.socket, peer: PeerCred | None, policy: AccessPolicy) -> Response | None:
    """None if the peer may talk to the daemon, else the 403 it gets (and a log line)."""
    if peer is not None and not authorized(peer, policy) and policy.gids:
        peer = replace(peer, groups=peer_groups(sock, peer.pid))
    if peer is not None and authorized(peer, policy):
        return None
    if peer is None:  # fail closed: no credentials, no way to tell who it is
        message = "the peer's credentials cannot be read, so it is not allowed to use this socket"
        log.warning(message, extra=fields("api.denied"))
    else:
        message = f"uid {peer.uid} is not allowed to use this socket"
        log.warning(
            "refused the control API to uid %d (gid %d, pid %d): not root, not the daemon's "
            "user, not in daemon.allowed_users or allowed_groups or socket_group",
            peer.uid,
            peer.gid,
            peer.pid,
            extra=fields("api.denied", uid=peer.uid, gid=peer.gid, pid=peer.pid),
        )
    response = Response.error(403, "forbidden", message)
    return replace(response, headers={"Connection": "close"})


async def _read_request(
    stream: anyio.abc.SocketStream, conn: h11.Connection, peer: PeerCred | None
) -> Request | Response | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return Response.error(400, "bad_request", f"malformed HTTP request: {exc}")
        if event is h11.NEED_DATA:
            with anyio.move_on_after(IDLE_TIMEOUT):
                try:
                    data = await stream.receive(READ_SIZE)
                except anyio.EndOfStream:
                    data = b""
                conn.receive_data(data)
                continue
            return None
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return Response.error(413, "too_large", f"request body over {MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            target = urlsplit(head.target.decode("latin-1"))
            return Request(
                method=head.method.decode("ascii"),
                path=target.path,
                query=dict(parse_qsl(target.query)),
                headers={k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers},
                body=bytes(body),
                peer=peer,
            )
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


async def _send(stream: anyio.abc.SocketStream, conn: h11.Connection, response: Response) -> None:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers.items(),
    ]
    try:
        out = conn.send(h11.Response(status_code=response.status, headers=headers))
        out += conn.send(h11.Data(data=response.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return
    await stream.send(out or b"")
