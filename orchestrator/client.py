"""The CLI's side of the control API: HTTP over the daemon's Unix socket, nothing else.

The CLI never opens the database; like any other client it only asks the running daemon.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from .config import load_config
from .errors import OrchestratorError

DEFAULT_SOCKET = Path("/run/orchestrator/orchestrator.sock")


class DaemonUnreachable(OrchestratorError):
    """The daemon does not answer on its socket; is it running (orchestrator run --config)?"""


class RequestRefused(OrchestratorError):
    """The daemon refused the request; ``code`` and ``status`` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


def find_socket(socket: str | None, config: str | None) -> Path:
    """--socket, then --config's daemon.socket_path, then the environment, then the default."""
    if socket:
        return Path(socket)
    config = config or os.environ.get("ORCHESTRATOR_CONFIG")
    if config:
        return load_config(config).daemon.socket_path
    if os.environ.get("ORCHESTRATOR_SOCKET"):
        return Path(os.environ["ORCHESTRATOR_SOCKET"])
    return DEFAULT_SOCKET


class DaemonClient:
    def __init__(self, socket_path: Path, *, timeout: float = 600.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)),
            base_url="http://orchestrator",
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            if _caused_by(exc, PermissionError):
                raise DaemonUnreachable(
                    f"not allowed to connect to {self.socket_path} (permission denied): ask "
                    "to be added to the daemon's socket_group or allowed_groups"
                ) from exc
            raise DaemonUnreachable(
                f"cannot reach the daemon at {self.socket_path} ({type(exc).__name__}); "
                "is it running? Start it with: orchestrator run --config FILE"
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                raise RequestRefused(
                    response.status_code, str(error.get("code")), str(error.get("message"))
                )
            raise RequestRefused(response.status_code, "http_error", response.text[:200])
        return response.status_code, body

    def status(self, *, accounts: str | None = None, account: str | None = None) -> dict[str, Any]:
        """The dashboard. ``accounts``: all, attention or none (the daemon's default: all up
        to 100 accounts, attention above); ``account``: that one account only."""
        params = {k: v for k, v in (("accounts", accounts), ("account", account)) if v}
        return self.request("GET", "/v1/status", params=params)[1]  # type: ignore[no-any-return]

    def reload(self) -> dict[str, Any]:
        """Ask the daemon to read its accounts file again (RequestRefused invalid_config if
        the new file is wrong; the running configuration then stays)."""
        return self.request("POST", "/v1/reload")[1]  # type: ignore[no-any-return]

    def submit(self, payload: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        status, body = self.request("POST", "/v1/jobs", json=payload)
        return status == 201, body["job"]

    def jobs(self, **query: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in query.items() if v is not None}
        return self.request("GET", "/v1/jobs", params=params)[1]["jobs"]  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}")[1]  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")[1]["job"]  # type: ignore[no-any-return]

    def resolve(self, job_id: str, *, posted: bool) -> dict[str, Any]:
        body = self.request("POST", f"/v1/jobs/{job_id}/resolve", json={"posted": posted})[1]
        return body["job"]  # type: ignore[no-any-return]

    def dlq(self, **query: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in query.items() if v is not None}
        return self.request("GET", "/v1/dlq", params=params)[1]["jobs"]  # type: ignore[no-any-return]

    def requeue(self, job_id: str, *, fresh: bool) -> dict[str, Any]:
        body = self.request("POST", f"/v1/dlq/{job_id}/requeue", json={"fresh": fresh})[1]
        return body["job"]  # type: ignore[no-any-return]

    def purge(self, *, ids: list[str] | None = None, everything: bool = False) -> int:
        payload: dict[str, Any] = {"all": True} if everything else {"ids": ids or []}
        return int(self.request("POST", "/v1/dlq/purge", json=payload)[1]["purged"])

    def auth(self, account_id: str, step: str, payload: dict[str, Any]) -> dict[str, Any]:
        path = f"/v1/accounts/{account_id}/auth/{step}"
        return self.request("POST", path, json=payload)[1]  # type: ignore[no-any-return]

    def pause(self, account_id: str, *, paused: bool) -> dict[str, Any]:
        verb = "pause" if paused else "resume"
        return self.request("POST", f"/v1/accounts/{account_id}/{verb}")[1]  # type: ignore[no-any-return]


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, kind):
        cause = cause.__cause__ or cause.__context__
    return cause is not None
