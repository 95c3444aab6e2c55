"""A small HTTP/1.1 server on a Unix socket, for the control API (h11 does the parsing).

One handler coroutine per request; keep-alive; bodies capped; every failure inside one
connection is caught there, so a malformed request or a handler bug never reaches the
listener (an exception escaping a connection task would end ``serve()`` for everybody).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.abc
import h11

from .errors import DaemonAlreadyRunning
from .logs import fields

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
READ_SIZE = 64 * 1024
IDLE_TIMEOUT = 60.0


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


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


async def _connection(stream: anyio.abc.SocketStream, handler: Handler) -> None:
    try:
        raw_socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        peer = peer_credentials(raw_socket) if raw_socket.family == socket.AF_UNIX else None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        async with stream:
            while True:
                request = await _read_request(stream, conn, peer)
                if request is None:
                    return
                if isinstance(request, Response):
                    await _send(stream, conn, request)
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
