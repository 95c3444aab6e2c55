"""The HTTP layer: stdlib ``ThreadingHTTPServer`` speaking keep-alive HTTP/1.1 on loopback.

A request goes: route -> read the body (except an upload chunk's, read later) -> log it and
pick a fault -> apply the fault or let ``SandboxState`` decide -> write the ``Reply`` with a
Content-Length. The log entry is completed *before* the answer is written, so a client that
has its answer always finds the request finished in ``requests()``.

Dropping a connection means answering nothing at all: the socket is shut down, and an httpx
client sees ``RemoteProtocolError`` or ``ReadError``, as it would from a real network fault.
"""

from __future__ import annotations

import socket
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from .admin import handle_admin
from .faults import Rule
from .state import SandboxState
from .wire import Reply, api_error, json_reply, parse_form

ROUTES = {
    "/v2/oauth/token/": "token",
    "/v2/oauth/revoke/": "revoke",
    "/v2/post/publish/creator_info/query/": "creator_info",
    "/v2/post/publish/video/init/": "video_init",
    "/v2/post/publish/inbox/video/init/": "inbox_init",
    "/v2/post/publish/content/init/": "content_init",
    "/v2/post/publish/status/fetch/": "status",
    "/v2/post/publish/cancel/": "cancel",
    "/upload/": "upload",
}
_PIECE = 1 << 16
_DRAIN_LIMIT = 256_000_000  # bigger unread bodies are not drained: the connection is closed


class ClientGone(Exception):
    """The client stopped sending mid-body; nothing can be answered."""


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops a burst of new connections (a benchmark
    # opening one per account at once saw read errors); a real API does not.
    request_queue_size = 128
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], state: SandboxState) -> None:
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(conn)

    def close_connections(self) -> None:
        """Ends idle keep-alive connections too, so nothing answers after ``stop()``."""
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client went away; that is what clients do
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SandboxServer
    timeout = 300  # real seconds of socket silence before an idle connection is closed
    # Headers and body go out in two writes; with Nagle on, the second waits for the
    # client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is the record; stderr stays quiet

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        try:
            if path.startswith("/_sandbox/"):
                body = self._read_body()
                if body is not None:
                    self._write(handle_admin(self.server.state, self.command, path, query, body))
                return
            endpoint = ROUTES.get(path)
            expected = "PUT" if endpoint == "upload" else "POST"
            if endpoint is None or self.command != expected:
                if self._read_body() is not None:
                    status, code = (404, "not_found") if endpoint is None else (405, "bad_method")
                    self._write(api_error(code, f"{self.command} {path}", status, ""))
                return
            if endpoint == "upload":
                self._upload(path, query)
            else:
                self._api(endpoint, path)
        except ClientGone:
            self.close_connection = True

    # -- Content Posting and OAuth -----------------------------------------------------------

    def _api(self, endpoint: str, path: str) -> None:
        body = self._read_body()
        if body is None:
            return
        state = self.server.state
        authorization = self.headers.get("Authorization")
        form = parse_form(self.headers.get("Content-Type"), body)
        hint = {"authorization": authorization, "form": form}
        record, rule, wake = state.arrive(endpoint, self.command, path, open_id_hint=hint)

        def act() -> Reply:
            if endpoint in ("token", "revoke"):
                return state.oauth(endpoint, form)
            return state.api(endpoint, authorization, body, record)

        self._with_fault(endpoint, record, rule, wake, act)

    def _upload(self, path: str, raw_query: str) -> None:
        state = self.server.state
        query = {k: v[0] for k, v in parse_qs(raw_query).items()}
        record, rule, wake = state.arrive("upload", "PUT", path, open_id_hint={"query": query})

        def act() -> Reply:
            headers = {
                key: self.headers.get(key)
                for key in ("content-type", "content-range", "content-length")
            }
            begun = state.upload_begin(query, headers)
            if isinstance(begun, Reply):
                self._discard_body()
                return begun
            ticket, sha = begun
            try:
                remaining = ticket.length
                while remaining:
                    piece = self.rfile.read(min(_PIECE, remaining))
                    if not piece:
                        raise ClientGone
                    sha.update(piece)
                    remaining -= len(piece)
            except BaseException as exc:
                state.upload_abort(ticket)  # or the upload would stay busy for good
                if isinstance(exc, OSError | ClientGone):
                    raise ClientGone from exc
                raise
            return state.upload_commit(ticket, sha)

        self._with_fault("upload", record, rule, wake, act)

    def _with_fault(
        self,
        endpoint: str,
        record: dict[str, Any],
        rule: Rule | None,
        wake: threading.Event,
        act: Callable[[], Reply],
    ) -> None:
        state = self.server.state
        fault = rule.fault if rule else None
        if fault == "drop_before":
            state.complete(record, 0)
            self._drop()
            return
        try:
            if rule is not None and fault in ("error", "oauth_error", "html_5xx"):
                if endpoint == "upload":
                    self._discard_body()
                reply = state.fault_reply(rule, endpoint)
            else:
                if rule is not None and fault == "delay":
                    wake.wait(rule.seconds)
                reply = act()
        except ClientGone:
            state.complete(record, 0)
            raise
        except Exception as exc:
            # A bug in the sandbox: say so loudly, on stderr and in the answer, rather than
            # leave the request in flight for ever.
            traceback.print_exc()
            self.close_connection = True
            reply = api_error("internal_error", f"sandbox bug: {exc!r}", 500, "")
        if fault == "drop_after":
            state.complete(record, 0)
            self._drop()
            return
        state.complete(record, reply.status)
        self._write(reply)

    # -- bytes -------------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The whole body, or None after answering 400/411 for one that cannot be read."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._write(json_reply(411, {"error": "send a Content-Length, not chunked encoding"}))
            return None
        raw = self.headers.get("Content-Length") or "0"
        if not raw.isdigit() or int(raw) > _DRAIN_LIMIT:
            self.close_connection = True
            self._write(json_reply(400, {"error": "bad or oversized Content-Length"}))
            return None
        body = self.rfile.read(int(raw))
        if len(body) != int(raw):
            raise ClientGone
        return body

    def _discard_body(self) -> None:
        """Reads an unwanted body so the connection can serve the next request, or, when
        its length is unknown or huge, marks the connection to close after the answer."""
        raw = self.headers.get("Content-Length") or ""
        if self.headers.get("Transfer-Encoding") or not raw.isdigit() or int(raw) > _DRAIN_LIMIT:
            self.close_connection = True
            return
        remaining = int(raw)
        while remaining:
            piece = self.rfile.read(min(_PIECE, remaining))
            if not piece:
                raise ClientGone
            remaining -= len(piece)

    def _write(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for key, value in reply.headers:
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
