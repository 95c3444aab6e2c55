"""The accounts TOML file, read into one typed, frozen ``Config``.

Everything the file says is checked here, once, so the rest of the daemon can trust its
settings. Unknown keys are errors, not warnings: a misspelt ``daly_cap`` that is silently
ignored (hypercorn's old behaviour) posts 15 videos a day to an account meant to get 3.
All problems in a file are reported together, one per line, each naming the file, the
account and the field, so that one edit-and-check round fixes them all.

Secrets never live in this file: the TikTok client secret is read from its own file or from
a systemd credential when it is needed, and no error message quotes it.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import math
import os
import pwd
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")
PRIVACY_LEVELS = ("PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "FOLLOWER_OF_CREATOR", "SELF_ONLY")
SCOPES = (
    "video.publish",
    "video.upload",
    "user.info.basic",
    "user.info.profile",
    "user.info.stats",
    "video.list",
)
DEFAULT_CHUNK = 10_485_760  # 10 MiB
# TikTok: each chunk but the last is 5 MB to 64 MB, "MB" undefined; these bounds are safe
# under both readings (5 MiB >= 5 MB, and 64,000,000 B <= 64 MiB).
MIN_CHUNK = 5_242_880
MAX_CHUNK = 64_000_000
# Linux's sun_path holds 108 bytes; keep one for the NUL that most tools expect.
MAX_SOCKET_PATH_BYTES = 107

_ACCOUNT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_TAG = re.compile(r"[a-z0-9][a-z0-9_-]*")
_REGION = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonSettings:
    state_dir: Path
    socket_path: Path
    log_level: str = "info"
    poll_interval: float = 120.0
    stuck_after: float = 600.0
    review_stuck_after: float = 86400.0
    reconcile_interval: float = 900.0
    # An account's circuit breaker opens after this many failures in a row that are its own,
    # and lets one probe job through after breaker_reset seconds.
    breaker_failures: int = 5
    breaker_reset: float = 300.0
    # For demos and tests against the sandbox only: simulated seconds per wall second.
    time_scale: float = 1.0
    clock_epoch: float | None = None
    upload_chunk_size: int = DEFAULT_CHUNK
    request_timeout: float = 30.0
    # After SIGTERM, in-flight uploads get this long to finish before they are checkpointed.
    drain_timeout: float = 20.0
    # Who may use the control socket. The file system gate (mode and group of the socket) is
    # the first check; every connection's SO_PEERCRED is checked as well, so a socket handed
    # over by systemd, or a directory with looser permissions, does not widen access. Root
    # and the daemon's own user are always allowed. Names are resolved when the file is read.
    socket_mode: int = 0o660
    socket_group: int | None = None
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class TikTokSettings:
    client_key: str
    base_url: str = "https://open.tiktokapis.com"
    # Invariant: exactly one of the two secret sources is set.
    client_secret_file: Path | None = None
    client_secret_credential: str | None = None
    redirect_uri: str | None = None
    # The key that encrypts tokens at rest: at most one of the two (none: stored in clear, in
    # a 0600 database file).
    token_key_file: Path | None = None
    token_key_credential: str | None = None
    # Refresh an access token this many seconds before it expires (at most a quarter of the
    # token's actual lifetime, whatever is written here).
    refresh_margin: float = 600.0
    # Requests per second to TikTok for the whole app, all accounts together (a token bucket).
    app_rate: float = 5.0
    app_burst: int = 10

    def client_secret(self) -> str:
        """Read at call time, so a rotated secret is picked up and none is kept in this value."""
        path, key = self.client_secret_file, "tiktok.client_secret_file"
        if self.client_secret_credential is not None:
            name, key = self.client_secret_credential, "tiktok.client_secret_credential"
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    f"systemd credential {name!r} needs $CREDENTIALS_DIRECTORY, which is unset; "
                    f"run under systemd with LoadCredential={name}:/path/to/secret, "
                    "or use client_secret_file",
                    field=key,
                )
            path = Path(directory) / name
        assert path is not None, "TikTokSettings needs a client secret source"
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            # Not chained: a UnicodeDecodeError carries the secret's bytes.
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            message = f"cannot read the client secret: {reason or type(exc).__name__}"
            raise ConfigError(message, file=str(path), field=key) from None
        if not secret:
            raise ConfigError("the client secret file is empty", file=str(path), field=key)
        return secret


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountSettings:
    id: str
    display_name: str
    region: str | None = None
    timezone: str = "UTC"
    tags: tuple[str, ...] = ()
    # TikTok: "typically around 15 posts per day" per creator, shared by every app posting there.
    daily_cap: int = 15
    privacy_level: str = "SELF_ONLY"
    scopes: tuple[str, ...] = ("video.publish",)
    # Imported into the store once (and again when its content changes); the store is the
    # source of truth afterwards because refresh tokens rotate.
    token_file: Path | None = None
    enabled: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookSettings:
    """TikTok's webhooks, when a public callback URL forwards to this listener."""

    host: str
    port: int
    path: str = "/tiktok/webhook"
    # How old a signature's timestamp may be before the delivery is refused as a replay.
    tolerance: float = 300.0


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricsSettings:
    """The Prometheus listener: plain HTTP on a loopback address, never facing the network."""

    host: str
    port: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AlertSettings:
    """Where alerts go besides the log and `orchestrator status`."""

    webhook_url: str | None = None
    # The HMAC-SHA256 key for X-Orchestrator-Signature; a file holding only the key.
    webhook_secret_file: Path | None = None

    def webhook_secret(self) -> str:
        if self.webhook_secret_file is None:
            return ""
        try:
            return self.webhook_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the alert webhook secret: {exc.strerror}",
                file=str(self.webhook_secret_file),
                field="alerts.webhook_secret_file",
            ) from None


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    path: Path
    daemon: DaemonSettings
    tiktok: TikTokSettings
    accounts: tuple[AccountSettings, ...] = ()
    webhooks: WebhookSettings | None = None
    alerts: AlertSettings = field(default_factory=AlertSettings)
    metrics: MetricsSettings | None = None
    _by_id: dict[str, AccountSettings] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Lookups happen per submitted job, with up to thousands of accounts.
        object.__setattr__(self, "_by_id", {a.id: a for a in self.accounts})

    def account(self, account_id: str) -> AccountSettings | None:
        return self._by_id.get(account_id)


def load_config(path: str | Path) -> Config:
    path = Path(os.path.abspath(Path(path).expanduser()))
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read the accounts file: {reason}", file=str(path)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=str(path)) from exc
    return parse_config(text, path=path)


def parse_config(text: str, *, path: Path) -> Config:
    path = Path(os.path.abspath(path))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_describe_syntax_error(str(exc)), file=str(path)) from exc
    problems: _Problems = []
    top = _Table(data, problems, base=path.parent)
    daemon = _read_daemon(top.table("daemon"))
    tiktok = _read_tiktok(top.table("tiktok"))
    hooks = top.table("webhooks")
    webhooks = _read_webhooks(hooks) if "webhooks" in data else None
    alerts = _read_alerts(top.table("alerts"))
    metrics_table = top.table("metrics")
    metrics = _read_metrics(metrics_table) if "metrics" in data else None
    accounts = _read_accounts(top)
    top.finish()
    _raise_if_any(problems, str(path))
    return Config(
        path=path,
        daemon=daemon,
        tiktok=tiktok,
        accounts=accounts,
        webhooks=webhooks,
        alerts=alerts,
        metrics=metrics,
    )


def _describe_syntax_error(message: str) -> str:
    # tomllib (3.11) puts the position only in the text: "Invalid value (at line 3, column 9)".
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL)
    if match is None:
        return f"invalid TOML: {message}"
    what, line, column = match.groups()
    return f"invalid TOML at line {line}, column {column}: {what}"


def _read_daemon(t: _Table) -> DaemonSettings:
    state_dir = t.required("state_dir", t.path, Path())
    socket_path = t.get("socket_path", t.path, state_dir / "orchestrator.sock")
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
        t.add(
            f"{socket_path} is longer than {MAX_SOCKET_PATH_BYTES} bytes, too long for a "
            "Unix socket; set a shorter socket_path",
            "socket_path",
        )
    settings = DaemonSettings(
        state_dir=state_dir,
        socket_path=socket_path,
        log_level=t.get("log_level", _choice(LOG_LEVELS), "info"),
        poll_interval=t.get("poll_interval", _positive, 120.0),
        stuck_after=t.get("stuck_after", _positive, 600.0),
        review_stuck_after=t.get("review_stuck_after", _positive, 86400.0),
        reconcile_interval=t.get("reconcile_interval", _positive, 900.0),
        breaker_failures=t.get("breaker_failures", _int_between(1, 1000), 5),
        breaker_reset=t.get("breaker_reset", _positive, 300.0),
        time_scale=t.get("time_scale", _positive, 1.0),
        clock_epoch=t.get("clock_epoch", _number, None),
        upload_chunk_size=t.get(
            "upload_chunk_size", _int_between(MIN_CHUNK, MAX_CHUNK), DEFAULT_CHUNK
        ),
        request_timeout=t.get("request_timeout", _positive, 30.0),
        drain_timeout=t.get("drain_timeout", _positive, 20.0),
        socket_mode=t.get("socket_mode", _socket_mode, 0o660),
        socket_group=t.get("socket_group", _group_id, None),
        allowed_uids=t.get("allowed_users", _ids(_user_id), ()),
        allowed_gids=t.get("allowed_groups", _ids(_group_id), ()),
    )
    t.finish()
    return settings


def _read_tiktok(t: _Table) -> TikTokSettings:
    inline = t.take("client_secret") is not None
    if inline:
        t.add(
            "do not write the secret in this file; use client_secret_file (a file holding "
            "only the secret) or client_secret_credential (a systemd credential)",
            "client_secret",
        )
    sources = [k for k in ("client_secret_file", "client_secret_credential") if k in t.data]
    if len(sources) != 1 and not inline:
        both = ", not both" if sources else ""
        t.add(
            f"give one of client_secret_file and client_secret_credential{both}",
            sources[0] if sources else "client_secret_file",
        )
    settings = TikTokSettings(
        base_url=t.get("base_url", _url, "https://open.tiktokapis.com"),
        client_key=t.required("client_key", _nonempty, ""),
        client_secret_file=t.get("client_secret_file", t.path, None),
        client_secret_credential=t.get("client_secret_credential", _credential_name, None),
        redirect_uri=t.get("redirect_uri", _url, None),
        token_key_file=t.get("token_key_file", t.path, None),
        token_key_credential=t.get("token_key_credential", _credential_name, None),
        refresh_margin=t.get("refresh_margin", _positive, 600.0),
        app_rate=t.get("app_rate", _positive, 5.0),
        app_burst=t.get("app_burst", _int_between(1, 10_000), 10),
    )
    if "token_key_file" in t.data and "token_key_credential" in t.data:
        t.add("give token_key_file or token_key_credential, not both", "token_key_credential")
    t.finish()
    return settings


def _read_alerts(t: _Table) -> AlertSettings:
    settings = AlertSettings(
        webhook_url=t.get("webhook_url", _url, None),
        webhook_secret_file=t.get("webhook_secret_file", t.path, None),
    )
    t.finish()
    return settings


def _read_metrics(t: _Table) -> MetricsSettings:
    host, port = t.required("listen", _loopback_address, ("127.0.0.1", 9464))
    t.finish()
    return MetricsSettings(host=host, port=port)


def _read_webhooks(t: _Table) -> WebhookSettings:
    listen = t.required("listen", _nonempty, "127.0.0.1:0")
    host, _, port_text = listen.rpartition(":")
    port = int(port_text) if port_text.isdigit() else -1
    if not host or not 0 <= port <= 65535:  # 0: any free port (tests)
        t.add(f'{listen!r} is not HOST:PORT (for example "127.0.0.1:8700")', "listen")
    path = t.get("path", _nonempty, "/tiktok/webhook")
    if not path.startswith("/"):
        t.add("must start with /", "path")
    settings = WebhookSettings(
        host=host.strip("[]") or "127.0.0.1",
        port=max(port, 0),
        path=path,
        tolerance=t.get("tolerance", _positive, 300.0),
    )
    t.finish()
    return settings


def _read_accounts(top: _Table) -> tuple[AccountSettings, ...]:
    raw = top.take("accounts")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        top.add("must be an array of tables: write [[accounts]]", "accounts")
        return ()
    accounts: list[AccountSettings] = []
    first_seen: dict[str, int] = {}
    for number, entry in enumerate(raw, start=1):
        if not isinstance(entry, dict):
            top.problems.append((f"#{number}", None, f"must be a table, not {_kind(entry)}"))
            continue
        # Problems are filed under the account's id when it has a usable one.
        account_id = entry.get("id")
        valid = isinstance(account_id, str) and _ACCOUNT_ID.fullmatch(account_id)
        label = str(account_id) if valid else f"#{number}"
        t = _Table(entry, top.problems, base=top.base, account=label)
        account_id = t.required("id", _matching(_ACCOUNT_ID, "a-z 0-9 _ -, 1-63 long"), label)
        if account_id in first_seen:
            t.add(f"duplicate account id: accounts #{first_seen[account_id]} and #{number}", "id")
        first_seen.setdefault(account_id, number)
        accounts.append(
            AccountSettings(
                id=account_id,
                display_name=t.get("display_name", _nonempty, account_id),
                region=t.get("region", _matching(_REGION, "ISO 3166-1 alpha-2, e.g. US"), None),
                timezone=t.get("timezone", _timezone, "UTC"),
                tags=t.get("tags", _strings(_matching(_TAG, "a-z 0-9 _ -"), empty=True), ()),
                daily_cap=t.get("daily_cap", _int_between(1, 1000), 15),
                privacy_level=t.get("privacy_level", _choice(PRIVACY_LEVELS), "SELF_ONLY"),
                scopes=t.get("scopes", _strings(_choice(SCOPES), empty=False), ("video.publish",)),
                token_file=t.get("token_file", t.path, None),
                enabled=t.get("enabled", _bool, True),
            )
        )
        t.finish()
    return tuple(accounts)


_Problems = list[tuple[str | None, str | None, str]]  # (account, field, message)


def _raise_if_any(problems: _Problems, file: str) -> None:
    if not problems:
        return
    (account, key, message), *rest = problems
    # Every line has the same "file, account, field: message" shape, so each one can be read
    # (and grepped) on its own; the exception's attributes describe the first.
    lines = [message] + [ConfigError(m, file=file, account=a, field=f).message for a, f, m in rest]
    raise ConfigError("\n".join(lines), file=file, account=account, field=key)


class _Invalid(Exception):
    """A value is wrong; the message says how, without quoting anything secret."""


class _Table:
    """One TOML table being read; remembers which keys were read so the rest are reported."""

    def __init__(
        self,
        data: Mapping[str, object],
        problems: _Problems,
        *,
        base: Path,
        prefix: str = "",
        account: str | None = None,
    ) -> None:
        self.data, self.problems, self.base = data, problems, base
        self.prefix, self.account = prefix, account
        self.known: dict[str, None] = {}

    def add(self, message: str, key: str | None) -> None:
        self.problems.append((self.account, key and self.prefix + key, message))

    def take(self, key: str) -> object:
        self.known[key] = None
        return self.data.get(key)

    def table(self, key: str) -> _Table:
        raw = self.take(key)
        if raw is not None and not isinstance(raw, dict):
            self.add(f"must be a table, not {_kind(raw)}", key)
        data = raw if isinstance(raw, dict) else {}
        return _Table(data, self.problems, base=self.base, prefix=f"{key}.")

    def get(self, key: str, convert: Callable[[object], T], default: T) -> T:
        raw = self.take(key)
        if raw is None:
            return default
        try:
            return convert(raw)
        except _Invalid as exc:
            self.add(str(exc), key)
            return default

    def required(self, key: str, convert: Callable[[object], T], placeholder: T) -> T:
        if key not in self.data:
            self.add("is required", key)
        return self.get(key, convert, placeholder)

    def path(self, raw: object) -> Path:
        """Relative paths mean "next to the accounts file", wherever the daemon was started."""
        return Path(os.path.normpath(self.base / Path(_nonempty(raw)).expanduser()))

    def finish(self) -> None:
        known = sorted(self.known)
        for key in [k for k in self.data if k not in self.known]:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.add(f"unknown key {key!r} (known: {', '.join(known)}){hint}", key)


# Converters: each takes a raw TOML value and returns the typed value or raises _Invalid.


def _kind(raw: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(raw), f"a TOML {type(raw).__name__}")


def _string(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"must be a string, not {_kind(raw)}")
    return raw


def _nonempty(raw: object) -> str:
    if not _string(raw).strip():
        raise _Invalid("must not be empty")
    return _string(raw)


def _bool(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise _Invalid(f"must be true or false, not {_kind(raw)}")
    return raw


def _number(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Invalid(f"must be a number, not {_kind(raw)}")
    if not math.isfinite(raw):
        raise _Invalid("must be a finite number")
    return float(raw)


def _positive(raw: object) -> float:
    value = _number(raw)
    if value <= 0:
        raise _Invalid(f"must be greater than 0, not {value:g}")
    return value


def _int_between(low: int, high: int) -> Callable[[object], int]:
    def convert(raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Invalid(f"must be an integer, not {_kind(raw)}")
        if not low <= raw <= high:
            raise _Invalid(f"must be between {low:_} and {high:_}, not {raw:_}")
        return raw

    return convert


def _choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def convert(raw: object) -> str:
        value = _string(raw)
        if value not in options:
            message = f"{value!r} is not one of {', '.join(options)}"
            close = difflib.get_close_matches(value, options, n=1)
            raise _Invalid(message + (f"; did you mean {close[0]!r}?" if close else ""))
        return value

    return convert


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[object], str]:
    def convert(raw: object) -> str:
        value = _string(raw)
        if not pattern.fullmatch(value):
            raise _Invalid(f"{value!r} is not valid ({what})")
        return value

    return convert


def _strings(item: Callable[[object], str], *, empty: bool) -> Callable[[object], tuple[str, ...]]:
    def convert(raw: object) -> tuple[str, ...]:
        if not isinstance(raw, list):
            raise _Invalid(f"must be an array of strings, not {_kind(raw)}")
        if not raw and not empty:
            raise _Invalid("must not be empty")
        try:
            return tuple(dict.fromkeys(item(x) for x in raw))
        except _Invalid as exc:
            raise _Invalid(f"an entry {exc}") from None

    return convert


def _url(raw: object) -> str:
    value = _string(raw)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- parsing the port is what validates it
    except ValueError as exc:
        raise _Invalid(f"is not a valid URL ({exc})") from None
    # The value is not quoted back: a URL can carry a password.
    if parts.scheme not in ("http", "https") or not parts.hostname or value != value.strip():
        raise _Invalid("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise _Invalid("must not have a query or fragment")
    return value.rstrip("/")


def _timezone(raw: object) -> str:
    name = _string(raw)
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        known = zoneinfo.available_timezones()
        if not known:
            raise _Invalid(f"{name!r}: no time zone database found (install tzdata)") from None
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _Invalid(f"{name!r} is not an IANA time zone name{hint}") from None
    return name


def _credential_name(raw: object) -> str:
    name = _string(raw)
    if not name or "/" in name or name in (".", "..") or len(name) > 255:
        raise _Invalid(f"{name!r} is not a systemd credential name (a plain file name)")
    return name


def _socket_mode(raw: object) -> int:
    # A string, because a bare TOML 660 is the decimal number 660 (0o1224), not rw-rw----.
    if not isinstance(raw, str):
        raise _Invalid(f'must be a string of octal digits such as "0660", not {_kind(raw)}')
    if not re.fullmatch(r"0?[0-7]{3}", raw):
        raise _Invalid(f'{raw!r} is not a file mode (3 octal digits, e.g. "0660")')
    mode = int(raw, 8)
    if mode & 0o002:
        raise _Invalid(
            f"{raw!r} lets every local user write to the socket, and writing is what "
            'connecting takes; use "0660" with socket_group'
        )
    if mode & 0o600 != 0o600:
        raise _Invalid(f"{raw!r} takes reading or writing away from the daemon's own user")
    return mode


def _account_id(raw: object, kind: str, lookup: Callable[[str], int]) -> int:
    """A name (looked up now, so a typo fails here) or a numeric id (taken as it is)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        number = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit():
        number = int(raw)
    elif isinstance(raw, str):
        try:
            return lookup(_nonempty(raw))
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            raise _Invalid(f"no {kind} named {raw!r} on this system") from None
    else:
        raise _Invalid(f"must be a {kind} name or a numeric id, not {_kind(raw)}")
    if not 0 <= number < 2**32 - 1:  # (uid_t) -1 means "no change" to chown, never an id
        raise _Invalid(f"{number} is not a valid numeric {kind} id")
    return number


def _user_id(raw: object) -> int:
    return _account_id(raw, "user", lambda name: pwd.getpwnam(name).pw_uid)


def _group_id(raw: object) -> int:
    return _account_id(raw, "group", lambda name: grp.getgrnam(name).gr_gid)


def _ids(item: Callable[[object], int]) -> Callable[[object], tuple[int, ...]]:
    def convert(raw: object) -> tuple[int, ...]:
        if not isinstance(raw, list):
            raise _Invalid(f"must be an array of names or numeric ids, not {_kind(raw)}")
        try:
            return tuple(dict.fromkeys(item(x) for x in raw))
        except _Invalid as exc:
            raise _Invalid(f"an entry: {exc}") from None

    return convert


def _loopback_address(raw: object) -> tuple[str, int]:
    listen = _nonempty(raw)
    host, _, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise _Invalid(f'{listen!r} is not HOST:PORT (for example "127.0.0.1:9464")')
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise _Invalid(
                f"{host!r} is not a loopback address: metrics are served without "
                "authentication, so only 127.0.0.0/8, ::1 or localhost are accepted; "
                "let a local Prometheus or a proxy with TLS and auth reach it"
            )
    return host, int(port_text)  # port 0: any free port (tests)
