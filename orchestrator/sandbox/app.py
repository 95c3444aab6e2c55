"""``Sandbox``: the fake TikTok as an object a test starts, drives and stops."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from .clock import SimClock
from .config import SandboxConfig
from .server import SandboxServer
from .state import SandboxState


class Sandbox:
    """A fake ``open.tiktokapis.com`` on loopback, with fault injection and a ledger.

    Use as a context manager, or ``start()`` / ``stop()``. The server runs in a background
    thread; every method here is safe to call from any thread while it runs.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.clock = SimClock(time_scale=self.config.time_scale, epoch=self.config.epoch)
        self._state = SandboxState(self.config, self.clock)
        self._server: SandboxServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Binds and serves in a background thread; returns self."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already started")
        server = SandboxServer((self.config.host, self.config.port), self._state)
        port = server.server_address[1]
        self._state.base_url = f"http://{self.config.host}:{port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving, ends open connections and wakes handlers held by a delay fault."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._state.wake_delays()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        if not self._state.base_url:
            raise RuntimeError("the sandbox has not been started")
        return self._state.base_url

    # -- time --------------------------------------------------------------------------------

    def now(self) -> float:
        """Simulated time (see ``clock.py``)."""
        return self.clock.now()

    def advance(self, seconds: float) -> float:
        """Moves simulated time forward by ``seconds``; returns the new ``now()``."""
        return self.clock.advance(seconds)

    # -- users -------------------------------------------------------------------------------

    def create_user(
        self,
        *,
        open_id: str | None = None,
        scopes: Sequence[str] = ("user.info.basic", "video.publish", "video.upload"),
        private: bool = False,
        daily_cap: int | None = None,
        max_video_post_duration_sec: int = 600,
        nickname: str | None = None,
    ) -> dict[str, Any]:
        """A creator who has just authorized the app; returns the token response
        (``access_token``, ``expires_in``, ``open_id``, ``refresh_token``,
        ``refresh_expires_in``, ``scope``, ``token_type``) that the code exchange would."""
        return self._state.create_user(
            open_id=open_id,
            scopes=scopes,
            private=private,
            daily_cap=daily_cap,
            max_video_post_duration_sec=max_video_post_duration_sec,
            nickname=nickname,
        )

    def authorize(
        self,
        *,
        open_id: str,
        scopes: Sequence[str],
        redirect_uri: str,
        code_challenge: str | None = None,
    ) -> str:
        """The user consents in a browser: returns the ``code`` for the code exchange.

        ``code_challenge`` is TikTok's PKCE challenge, the hex SHA-256 of the verifier.
        """
        return self._state.authorize(
            open_id=open_id, scopes=scopes, redirect_uri=redirect_uri, code_challenge=code_challenge
        )

    # -- faults and reports ------------------------------------------------------------------

    def set_faults(self, plan: dict[str, Any]) -> None:
        """Replaces the fault plan; ``ValueError`` names the bad rule and field."""
        self._state.set_faults(plan)

    def faults(self) -> dict[str, Any]:
        """The plan in force, with per-rule ``stats`` (matched, fired)."""
        return self._state.faults()

    def ledger(self) -> dict[str, Any]:
        """What was published, what failed, duplicates, violations and answer counters."""
        return self._state.ledger()

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """The request log (the last 20,000), oldest first; ``since`` skips ``seq <= since``."""
        return self._state.requests(since)
