"""Async client for TikTok's Content Posting API and OAuth token endpoint (shared/TIKTOK_API.md).

The only module that speaks HTTP to TikTok. Every call has a whole-request deadline (httpx
timeouts are per read, not per request), returns a typed value, or raises exactly one of:

- ``TikTokApiError``: TikTok answered and the answer is an error. This includes HTTP 200s
  whose ``error.code`` is not ``ok`` (creator_info reports caps that way) and bodies that are
  not JSON at all (an HTML 502 from a proxy).
- ``TikTokTransportError``: no answer. ``maybe_acted`` says whether the request may have
  reached TikTok; for an init, that means a post may exist.

Tokens and upload URLs (which carry an upload token) never go into an exception message.

An optional ``on_response(endpoint, seconds, outcome)`` hook hears about every request that
left, once: a short stable endpoint name (``LABELS``), the wall-clock seconds it took without
the wait for the app's rate limiter, and ``ok``, TikTok's error code, or how the transport
failed. Never a URL, a body or a token: it feeds the metrics.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from .errors import TikTokApiError, TikTokTransportError
from .jobs import Mode, Source
from .limits import TokenBucket
from .logs import fields

PATHS = {
    "token": "/v2/oauth/token/",
    "creator_info": "/v2/post/publish/creator_info/query/",
    "video_init": "/v2/post/publish/video/init/",
    "inbox_init": "/v2/post/publish/inbox/video/init/",
    "status": "/v2/post/publish/status/fetch/",
}
# What the ``on_response`` hook calls each endpoint (the token endpoint is named per grant).
LABELS = {
    "creator_info": "creator_info",
    "video_init": "init",
    "inbox_init": "inbox_init",
    "upload": "upload_chunk",
    "status": "status",
}
RAW_KEEP = 4000
_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+)")

log = logging.getLogger(__name__)

ResponseHook = Callable[[str, float, str], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class CreatorInfo:
    username: str | None
    nickname: str | None
    privacy_level_options: tuple[str, ...]
    comment_disabled: bool
    duet_disabled: bool
    stitch_disabled: bool
    max_video_post_duration_sec: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class InitResult:
    publish_id: str
    upload_url: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadProgress:
    complete: bool  # 201: every byte is in, processing starts
    received: int | None  # bytes TikTok reports holding (from Content-Range), when it says
    # 416: the range we sent is not where TikTok's progress is; ``received`` says where it is.
    out_of_order: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishStatus:
    status: str
    fail_reason: str | None
    post_ids: tuple[str, ...]
    uploaded_bytes: int | None
    downloaded_bytes: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenGrant:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int | None
    open_id: str | None
    scopes: frozenset[str]

    def __repr__(self) -> str:
        return f"TokenGrant(open_id={self.open_id!r}, expires_in={self.expires_in})"


def parse_content_range(value: str | None) -> int | None:
    """Bytes TikTok holds, from ``bytes 0-{last}/{total}`` (``bytes */{total}``: none yet)."""
    if not value:
        return None
    match = _RANGE.search(value)
    if not match:
        return None
    return 0 if match.group(2) is None else int(match.group(2)) + 1


def retry_hint(response: httpx.Response, body: Any, now: float) -> float | None:
    """Seconds to wait, from Retry-After, X-RateLimit-Reset or a ``retry_after`` body field."""
    header = response.headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(header)
            if parsed is not None:
                return max(0.0, parsed.timestamp() - now)
    reset = response.headers.get("x-ratelimit-reset")
    if reset:
        try:
            value = float(reset)
        except ValueError:
            value = -1.0
        if value > 1e9:  # an epoch timestamp rather than a number of seconds
            return max(0.0, value - now)
        if value >= 0:
            return value
    if isinstance(body, dict):
        for holder in (body, body.get("error")):
            if isinstance(holder, dict) and isinstance(holder.get("retry_after"), int | float):
                return max(0.0, float(holder["retry_after"]))
    return None


class TikTokClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        client_key: str,
        client_secret: Callable[[], str],
        timeout: float = 30.0,
        upload_timeout: float = 600.0,
        limiter: TokenBucket | None = None,
        on_response: ResponseHook | None = None,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._client_key = client_key
        self._client_secret = client_secret
        self._timeout = timeout
        self._upload_timeout = upload_timeout
        self._limiter = limiter
        self._on_response = on_response

    # -- Content Posting --------------------------------------------------------------------

    async def creator_info(self, token: str) -> CreatorInfo:
        data = await self._post_json("creator_info", token, {})
        return CreatorInfo(
            username=data.get("creator_username"),
            nickname=data.get("creator_nickname"),
            privacy_level_options=tuple(data.get("privacy_level_options") or ()),
            comment_disabled=bool(data.get("comment_disabled")),
            duet_disabled=bool(data.get("duet_disabled")),
            stitch_disabled=bool(data.get("stitch_disabled")),
            max_video_post_duration_sec=data.get("max_video_post_duration_sec"),
        )

    async def init_video(
        self,
        token: str,
        *,
        mode: Mode,
        source: Source,
        post_info: dict[str, Any],
        video_size: int | None = None,
        chunk_size: int | None = None,
        chunk_count: int | None = None,
        video_url: str | None = None,
        paced: bool = False,
    ) -> InitResult:
        """``paced``: the caller has already waited for the app-wide limiter (``pace``)."""
        source_info: dict[str, Any] = {"source": source.value}
        if source is Source.FILE_UPLOAD:
            source_info |= {
                "video_size": video_size,
                "chunk_size": chunk_size,
                "total_chunk_count": chunk_count,
            }
        else:
            source_info["video_url"] = video_url
        body: dict[str, Any] = {"source_info": source_info}
        if mode is Mode.DIRECT:
            body["post_info"] = post_info
        elif post_info.get("title"):
            # Inbox init documents only source_info; integrations send the title and TikTok
            # keeps it (shared/TIKTOK_API.md §1.6), so we send the title alone.
            body["post_info"] = {"title": post_info["title"]}
        endpoint = "video_init" if mode is Mode.DIRECT else "inbox_init"
        data = await self._post_json(endpoint, token, body, paced=paced)
        publish_id = data.get("publish_id")
        if not isinstance(publish_id, str) or not publish_id:
            raise TikTokApiError(
                "init succeeded without a publish_id", endpoint=endpoint, http_status=200
            )
        return InitResult(publish_id=publish_id, upload_url=data.get("upload_url"))

    async def upload_chunk(
        self, upload_url: str, chunk: bytes, *, first: int, total: int, content_type: str
    ) -> UploadProgress:
        last = first + len(chunk) - 1
        headers = {
            "Content-Type": content_type,
            "Content-Range": f"bytes {first}-{last}/{total}",
        }
        response = await self._send(
            "upload",
            lambda: self._http.put(upload_url, content=chunk, headers=headers),
            self._upload_timeout,
        )
        received = parse_content_range(response.headers.get("content-range"))
        if response.status_code in (200, 201, 206, 416):
            self._answered("upload", response, "ok")
        if response.status_code in (200, 201):
            return UploadProgress(complete=True, received=received)
        if response.status_code == 206:
            return UploadProgress(complete=False, received=received)
        if response.status_code == 416:
            return UploadProgress(complete=False, received=received, out_of_order=True)
        self._answered("upload", response, f"http_{response.status_code}")
        raise TikTokApiError(
            f"upload answered HTTP {response.status_code}",
            endpoint="upload",
            http_status=response.status_code,
            code=f"http_{response.status_code}",
            raw=_raw(response),
            retry_after=retry_hint(response, None, time.time()),
        )

    async def fetch_status(self, token: str, publish_id: str) -> PublishStatus:
        data = await self._post_json("status", token, {"publish_id": publish_id})
        post_ids = data.get("publicaly_available_post_id") or []
        return PublishStatus(
            status=str(data.get("status") or ""),
            fail_reason=data.get("fail_reason") or None,
            # ~19-digit integers: keep them as strings so no consumer rounds them.
            post_ids=tuple(str(p) for p in post_ids),
            uploaded_bytes=data.get("uploaded_bytes"),
            downloaded_bytes=data.get("downloaded_bytes"),
        )

    # -- OAuth ------------------------------------------------------------------------------

    async def refresh_token(self, refresh_token: str) -> TokenGrant:
        return await self._token_call(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, label="refresh"
        )

    async def exchange_code(
        self, code: str, *, redirect_uri: str, code_verifier: str | None = None
    ) -> TokenGrant:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier:
            form["code_verifier"] = code_verifier
        return await self._token_call(form, label="exchange")

    async def _token_call(self, form: dict[str, str], *, label: str) -> TokenGrant:
        form = {"client_key": self._client_key, "client_secret": self._client_secret(), **form}
        response = await self._send(
            "token",
            lambda: self._http.post(
                self._base + PATHS["token"],
                data=form,
                headers={"Cache-Control": "no-cache"},
            ),
            self._timeout,
            label=label,
        )
        body = _json_or_none(response)
        # Success has the fields at the top level; failure is a flat OAuth error, sometimes
        # with HTTP 200 (field reports), so the body decides, not the status.
        if (
            response.status_code == 200
            and isinstance(body, dict)
            and isinstance(body.get("access_token"), str)
            and isinstance(body.get("refresh_token"), str)
        ):
            self._answered(label, response, "ok")
            return TokenGrant(
                access_token=body["access_token"],
                expires_in=int(body.get("expires_in") or 0),
                refresh_token=body["refresh_token"],
                refresh_expires_in=body.get("refresh_expires_in"),
                open_id=body.get("open_id"),
                scopes=frozenset(s for s in str(body.get("scope") or "").split(",") if s),
            )
        code = body.get("error") if isinstance(body, dict) else None
        if isinstance(code, dict):  # a v2 envelope where an OAuth one was expected
            code = code.get("code")
        description = body.get("error_description") if isinstance(body, dict) else None
        error = TikTokApiError(
            str(description or code or f"token endpoint answered HTTP {response.status_code}"),
            endpoint="token",
            http_status=response.status_code,
            code=str(code) if code else _status_code(response, body),
            log_id=body.get("log_id") if isinstance(body, dict) else None,
            # The raw body of a failure holds no token; a success's would, and never gets here.
            raw=_raw(response),
            retry_after=retry_hint(response, body, time.time()),
        )
        self._answered(label, response, error.code or "error")
        raise error

    # -- plumbing ---------------------------------------------------------------------------

    async def pace(self) -> None:
        """Wait for the app-wide limiter now. For an init: its intent must be written after
        this wait, right before the request leaves, or a crash during the wait leaves a job
        marked as sent that never left (and ``uncertain`` after the restart)."""
        if self._limiter is not None:
            await self._limiter.acquire()

    async def _post_json(
        self, endpoint: str, token: str, body: dict[str, Any], *, paced: bool = False
    ) -> dict[str, Any]:
        response = await self._send(
            endpoint,
            lambda: self._http.post(
                self._base + PATHS[endpoint],
                json=body,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json; charset=UTF-8",
                },
            ),
            self._timeout,
            paced=paced,
        )
        payload = _json_or_none(response)
        error = payload.get("error") if isinstance(payload, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if response.status_code == 200 and code == "ok":
            self._answered(endpoint, response, "ok")
            data = payload.get("data") if isinstance(payload, dict) else None
            return data if isinstance(data, dict) else {}
        message = error.get("message") if isinstance(error, dict) else None
        failure = TikTokApiError(
            str(message or f"{endpoint} answered HTTP {response.status_code}"),
            endpoint=endpoint,
            http_status=response.status_code,
            # A blank code on a 5xx is TikTok's internal_error (shared/TIKTOK_API.md §2.2).
            code=str(code) if code and code != "ok" else _status_code(response, payload),
            log_id=error.get("log_id") if isinstance(error, dict) else None,
            raw=_raw(response),
            retry_after=retry_hint(response, payload, time.time()),
        )
        self._answered(endpoint, response, failure.code or "error")
        raise failure

    async def _send(
        self,
        endpoint: str,
        request: Callable[[], Awaitable[httpx.Response]],
        timeout: float,
        *,
        label: str = "",
        paced: bool = False,
    ) -> httpx.Response:
        """Send one request; an answer is reported to the hook by whoever reads it (the
        outcome is TikTok's code, known only then), a failure to get one is reported here."""
        if self._limiter is not None and not paced:
            await self._limiter.acquire()
        label = label or LABELS[endpoint]
        started = time.monotonic()
        try:
            with anyio.fail_after(timeout):
                return await request()
        except TimeoutError as exc:
            self._report(label, time.monotonic() - started, "timeout")
            raise TikTokTransportError(
                f"no answer within {timeout:g} s", endpoint=endpoint, maybe_acted=True
            ) from exc
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self._report(label, time.monotonic() - started, "connect_error")
            # The request never left: TikTok cannot have acted on it.
            raise TikTokTransportError(
                f"cannot connect: {type(exc).__name__}", endpoint=endpoint, maybe_acted=False
            ) from exc
        except httpx.TransportError as exc:
            self._report(label, time.monotonic() - started, "connection_lost")
            raise TikTokTransportError(
                f"connection failed mid-request: {type(exc).__name__}",
                endpoint=endpoint,
                maybe_acted=True,
            ) from exc

    def _answered(self, endpoint: str, response: httpx.Response, outcome: str) -> None:
        # httpx measured the exchange, from sending the request to the end of the body.
        self._report(LABELS.get(endpoint, endpoint), response.elapsed.total_seconds(), outcome)

    def _report(self, label: str, seconds: float, outcome: str) -> None:
        if self._on_response is None:
            return
        try:
            self._on_response(label, seconds, outcome)
        except Exception:
            # Observing a request must never change what happened to it.
            log.exception(
                "the response hook failed", extra=fields("tiktok.hook_failed", endpoint=label)
            )


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _raw(response: httpx.Response) -> str:
    return response.content[:RAW_KEEP].decode("utf-8", "replace")


def _status_code(response: httpx.Response, payload: Any) -> str:
    """A code for an answer that carried none: ``internal_error`` for a JSON 5xx with a blank
    code (shared/TIKTOK_API.md §2.2), ``http_<status>`` for a body we cannot parse at all."""
    if payload is not None and response.status_code >= 500:
        return "internal_error"
    return f"http_{response.status_code}"
