"""The exception tree. Every error this package raises on purpose descends from one root.

    OrchestratorError
    ├── ConfigError             the accounts file is wrong; names file, account and field
    ├── StoreError              the database cannot be opened or migrated
    ├── DaemonAlreadyRunning    another live daemon answers on the socket path
    ├── TokenError              an account has no usable credential
    │   └── NeedsReauth         the refresh token was refused: a human must authorize again
    ├── TikTokError             any failed call to TikTok; carries what TikTok said
    │   ├── TikTokApiError      TikTok answered, and the answer is an error (definite)
    │   └── TikTokTransportError  no answer came back (connect, timeout, dropped connection)
    └── ApiError                a request to the control API is refused; has a code and status

Foreign exceptions (httpx, sqlite3, tomllib) are translated into these once, at the module
that talks to the foreign library, with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    """Something went wrong in orchestrator."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(OrchestratorError):
    """The configuration is invalid; fix the file and run `orchestrator check-config FILE`."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        account: str | None = None,
        field: str | None = None,
    ) -> None:
        self.file = file
        self.account = account
        self.field = field
        where = ", ".join(
            part
            for part in (
                file,
                f"account {account!r}" if account else None,
                f"field {field!r}" if field else None,
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class StoreError(OrchestratorError):
    """The state database cannot be used; check the state directory and its permissions."""


class DaemonAlreadyRunning(OrchestratorError):
    """Another daemon is already listening on this socket; stop it or use another socket path."""


class TokenError(OrchestratorError):
    """The account has no usable access token; import one with a token file."""

    def __init__(self, message: str | None = None, *, account: str | None = None) -> None:
        self.account = account
        super().__init__(message)


class NeedsReauth(TokenError):
    """TikTok refused the refresh token; the creator must authorize the app again."""


class TikTokError(OrchestratorError):
    """A call to TikTok failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        endpoint: str,
        http_status: int | None = None,
        code: str | None = None,
        log_id: str | None = None,
        raw: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.http_status = http_status
        self.code = code
        self.log_id = log_id
        self.raw = raw
        self.retry_after = retry_after
        super().__init__(message)

    def as_record(self) -> dict[str, Any]:
        """What the store keeps of this failure, beside the raw response."""
        return {
            "endpoint": self.endpoint,
            "http_status": self.http_status,
            "code": self.code,
            "message": self.message,
            "log_id": self.log_id,
            "retry_after": self.retry_after,
        }


class TikTokApiError(TikTokError):
    """TikTok answered with an error."""


class TikTokTransportError(TikTokError):
    """No answer came back from TikTok.

    ``maybe_acted`` is True when the request may have reached TikTok and been acted on (the
    connection dropped or timed out after the request was written): for an init, this means
    the post may exist, and the job must not be re-posted blindly.
    """

    def __init__(self, message: str | None = None, *, maybe_acted: bool, **kw: Any) -> None:
        self.maybe_acted = maybe_acted
        super().__init__(message, **kw)


class ApiError(OrchestratorError):
    """The control API refused a request."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        self.code = code
        self.status = status
        super().__init__(message)
