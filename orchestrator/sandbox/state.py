"""Everything the fake knows, behind one lock, and what each TikTok endpoint does with it.

The HTTP layer (``server.py``) parses bytes and writes bytes; this module decides. Each
public method takes the lock itself and returns a ``Reply`` value, so the order of checks
(auth, scope, rate limit, body, creator rules, caps) reads top to bottom in one place.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from .accounts import AccessToken, Accounts, OAuthError
from .clock import SimClock
from .config import SandboxConfig
from .faults import FaultEngine, Rule, parse_plan
from .publishing import ChunkTicket, Publish, Publishing
from .rules import (
    RATE_LIMITS,
    RATE_WINDOW,
    VIDEO_CONTENT_TYPES,
    ApiError,
    is_unverified_host,
    parse_content_init,
    parse_video_init,
    privacy_options,
    status_for,
)
from .wire import Reply, api_error, html_error, json_reply, make_log_id, oauth_error, ok

REQUEST_LOG_SIZE = 20_000
VIOLATIONS = ("rate_limited", "expired_token_requests", "refresh_token_reuse")
_ANY_POSTING = frozenset({"video.publish", "video.upload"})
_SCOPES = {
    "creator_info": frozenset({"video.publish"}),
    "video_init": frozenset({"video.publish"}),
    "inbox_init": frozenset({"video.upload"}),
    "content_init": _ANY_POSTING,  # narrowed by post_mode once the body is read
    "status": _ANY_POSTING,
    "cancel": _ANY_POSTING,
}
_RATE_GROUP = {
    "creator_info": "creator_info",
    "video_init": "init",
    "inbox_init": "init",
    "content_init": "init",
    "status": "status",
}
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class SandboxState:
    def __init__(self, config: SandboxConfig, clock: SimClock) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.Lock()
        self.base_url = ""  # known once the server is bound
        self._rng = random.Random(config.seed)
        self._violations: Counter[str] = Counter(dict.fromkeys(VIOLATIONS, 0))
        self._accounts = Accounts(config, self._rng, self._violations)
        self._publishing = Publishing(config, self._rng)
        self._faults = FaultEngine(config.seed)
        self._windows: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._counters: dict[str, Counter[str]] = defaultdict(Counter)
        self._log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._seq = 0

    # -- the facade: users, faults, reports -------------------------------------------------

    def create_user(self, **options: Any) -> dict[str, Any]:
        with self.lock:
            return self._accounts.create_user(now=self.clock.now(), **options)

    def authorize(
        self,
        *,
        open_id: str,
        scopes: Sequence[str],
        redirect_uri: str,
        code_challenge: str | None = None,
    ) -> str:
        with self.lock:
            return self._accounts.authorize(
                now=self.clock.now(),
                open_id=open_id,
                scopes=scopes,
                redirect_uri=redirect_uri,
                code_challenge=code_challenge,
            )

    def set_faults(self, plan: Any) -> None:
        parsed = parse_plan(plan)
        with self.lock:
            self._faults.load(parsed)

    def wake_delays(self) -> None:
        with self.lock:
            self._faults.wake.set()

    def faults(self) -> dict[str, Any]:
        with self.lock:
            return self._faults.snapshot()

    def ledger(self) -> dict[str, Any]:
        with self.lock:
            self._publishing.settle(self.clock.now())
            caps = {u.open_id: self._cap(u.open_id) for u in self._accounts.users.values()}
            view = self._publishing.ledger(caps)
            return {
                "posts": view["posts"],
                "failed": view["failed"],
                "duplicates": view["duplicates"],
                "violations": {**self._violations, "cap_exceeded": view["cap_exceeded"]},
                "counters": {ep: dict(c) for ep, c in sorted(self._counters.items())},
                "cap_rejections": self._publishing.cap_rejections,
            }

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self._log if r["seq"] > since]

    # -- request bookkeeping ----------------------------------------------------------------

    def arrive(
        self, endpoint: str, method: str, path: str, *, open_id_hint: dict[str, Any]
    ) -> tuple[dict[str, Any], Rule | None, threading.Event]:
        """Logs a request on arrival and picks the request-phase fault for it, if any."""
        with self.lock:
            open_id = self._identify(endpoint, open_id_hint)
            self._seq += 1
            record: dict[str, Any] = {
                "seq": self._seq,
                "endpoint": endpoint,
                "method": method,
                "path": path,
                "open_id": open_id,
                "status": None,  # None while in flight; 0 when no answer was sent
                "fault": None,
                "at": self.clock.now(),
            }
            self._log.append(record)
            rule = self._faults.pick(endpoint, open_id, phase="request")
            if rule is not None:
                record["fault"] = rule.fault
            return record, rule, self._faults.wake

    def _identify(self, endpoint: str, hint: dict[str, Any]) -> str | None:
        if endpoint in ("token", "revoke"):
            return self._accounts.open_id_of_form(hint.get("form") or {})
        if endpoint == "upload":
            query = hint.get("query") or {}
            publish = self._publishing.find_upload(
                query.get("upload_id"), query.get("upload_token")
            )
            return publish.open_id if publish else None
        return self._accounts.open_id_of_bearer(hint.get("authorization"))

    def complete(self, record: dict[str, Any], status: int) -> None:
        with self.lock:
            record["status"] = status
            self._counters[record["endpoint"]][str(status)] += 1

    def fault_reply(self, rule: Rule, endpoint: str) -> Reply:
        with self.lock:
            log_id = make_log_id(self.clock.now(), self._rng)
        if rule.fault == "html_5xx":
            return html_error(rule.http_status or 502)
        code = rule.code or ""
        if rule.fault == "oauth_error":
            return oauth_error(
                code, rule.message or f"{code} (injected)", rule.http_status or 400, log_id
            )
        status = rule.http_status or status_for(code, endpoint)
        return api_error(code, rule.message or f"{code or 'error'} (injected)", status, log_id)

    # -- OAuth: /v2/oauth/token/ and /v2/oauth/revoke/ ---------------------------------------

    def oauth(self, endpoint: str, form: dict[str, str] | None) -> Reply:
        with self.lock:
            now = self.clock.now()
            log_id = make_log_id(now, self._rng)
            try:
                if form is None:
                    raise OAuthError("invalid_request", "The request parameters are malformed.")
                if endpoint == "token":
                    return json_reply(200, self._accounts.token(form, now))
                grant = self._accounts.revoke(form)
                if grant is not None:
                    self._publishing.fail_grant(grant.id, now)
                return json_reply(200, {})
            except OAuthError as exc:
                status = self.config.oauth_error_status
                return oauth_error(exc.code, exc.description, status, log_id)

    # -- Content Posting JSON endpoints ------------------------------------------------------

    def api(
        self, endpoint: str, authorization: str | None, body: bytes, record: dict[str, Any]
    ) -> Reply:
        with self.lock:
            now = self.clock.now()
            log_id = make_log_id(now, self._rng)
            try:
                token, access = self._accounts.authenticate(authorization, now, _SCOPES[endpoint])
                if self.config.rate_limits and endpoint in _RATE_GROUP:
                    self._rate_limit(token, _RATE_GROUP[endpoint], now)
                payload = _json_body(body, allow_empty=endpoint == "creator_info")
                if endpoint == "creator_info":
                    data = self._creator_info(access, now)
                elif endpoint in ("status", "cancel"):
                    data = self._status_or_cancel(endpoint, payload, access, now)
                else:
                    data = self._init(endpoint, payload, access, now, record)
            except ApiError as exc:
                return api_error(exc.code, exc.message, exc.status, log_id)
            return ok(data, log_id)

    def _rate_limit(self, token: str, group: str, now: float) -> None:
        window = self._windows[(token, group)]
        while window and window[0] <= now - RATE_WINDOW:
            window.popleft()
        if len(window) >= RATE_LIMITS[group]:
            self._violations["rate_limited"] += 1
            raise ApiError("rate_limit_exceeded", "Rate limit exceeded, please retry later")
        window.append(now)

    def _cap(self, open_id: str) -> int:
        cap = self._accounts.users[open_id].daily_cap
        return self.config.daily_cap if cap is None else cap

    def _creator_info(self, access: AccessToken, now: float) -> dict[str, Any]:
        user = self._accounts.users[access.open_id]
        if self._publishing.at_daily_cap(user.open_id, self._cap(user.open_id), now):
            # The "intentional" 200 of §1.4: the code, not the status, says no.
            raise ApiError(
                "spam_risk_too_many_posts",
                "The daily post cap for this creator has been reached.",
                200,
            )
        return {
            "creator_avatar_url": f"https://p16-sign.tiktokcdn.example/avatar/{user.username}.jpeg",
            "creator_username": user.username,
            "creator_nickname": user.nickname,
            "privacy_level_options": list(privacy_options(user.private)),
            "comment_disabled": False,
            "duet_disabled": user.private,
            "stitch_disabled": user.private,
            "max_video_post_duration_sec": user.max_video_post_duration_sec,
        }

    def _init(
        self,
        endpoint: str,
        payload: Any,
        access: AccessToken,
        now: float,
        record: dict[str, Any],
    ) -> dict[str, Any]:
        if endpoint == "content_init":
            request = parse_content_init(payload)
            needed = "video.publish" if request.mode == "direct" else "video.upload"
            if not self._accounts.has_scope(access, needed):
                raise ApiError("scope_not_authorized", f"The user did not authorize {needed}")
        else:
            request = parse_video_init(
                payload, mode="direct" if endpoint == "video_init" else "inbox"
            )
        user = self._accounts.users[access.open_id]
        if request.mode == "direct" and request.privacy_level not in privacy_options(user.private):
            raise ApiError(
                "privacy_level_option_mismatch",
                "privacy_level is missing or not one of the creator's privacy_level_options",
            )
        for url in (request.video_url, *request.photo_images):
            if url and is_unverified_host(urlsplit(url).hostname or ""):
                raise ApiError("url_ownership_unverified", "The URL's domain is not verified")
        self._publishing.check_caps(request, user.open_id, self._cap(user.open_id), now)
        publish = self._publishing.create(
            request, open_id=user.open_id, grant_id=access.grant_id, now=now
        )
        rule = self._faults.pick(endpoint, user.open_id, phase="processing")
        if rule is not None:
            record["fault"] = rule.fault
            publish.stuck = rule.fault == "stuck"
            publish.fail_reason_planned = rule.fail_reason
        data = {"publish_id": publish.publish_id}
        if publish.upload_id is not None:
            data["upload_url"] = self._publishing.upload_url(publish, self.base_url)
        return data

    def _status_or_cancel(
        self, endpoint: str, payload: Any, access: AccessToken, now: float
    ) -> dict[str, Any]:
        publish_id = payload.get("publish_id") if isinstance(payload, dict) else None
        if not isinstance(publish_id, str) or not publish_id:
            raise ApiError("invalid_params", "publish_id is required")
        publish = self._publishing.publishes.get(publish_id)
        if publish is None:
            raise ApiError("invalid_publish_id", "The publish_id does not exist")
        if publish.open_id != access.open_id:
            raise ApiError(
                "token_not_authorized_for_specified_publish_id",
                "The access token is not authorized for this publish_id",
            )
        self._publishing.settle(now)
        if endpoint == "status":
            return self._publishing.status_data(publish)
        if publish.final is not None or publish.request.source != "PULL_FROM_URL":
            # §1.9: cancelling is for pulls still in progress.
            raise ApiError("publish_not_cancellable", "This publish can no longer be cancelled")
        self._publishing.finish(publish, "FAILED", now, "publish_cancelled")
        return {}

    # -- the upload PUT ----------------------------------------------------------------------

    def upload_begin(
        self, query: dict[str, str], headers: dict[str, str | None]
    ) -> Reply | tuple[ChunkTicket, Any]:
        """Either an answer now, or an admitted chunk and a hash to feed its bytes into."""
        with self.lock:
            now = self.clock.now()
            log_id = make_log_id(now, self._rng)
            publish = self._publishing.find_upload(
                query.get("upload_id"), query.get("upload_token")
            )
            if publish is None:
                return api_error("upload_not_found", "No such upload task", 404, log_id)
            progress = (("Content-Range", _progress(publish)),)
            try:
                _check_upload_headers(publish, headers, now)
                first, last, total = _parse_range(headers.get("content-range"))
                length = headers.get("content-length")
                if length is None or not length.isdigit() or int(length) != last - first + 1:
                    raise ApiError("invalid_params", "Content-Length must equal the range", 400)
                ticket = self._publishing.admit_chunk(publish, first, last, total)
            except ApiError as exc:
                return api_error(exc.code, exc.message, exc.status, log_id, headers=progress)
            return ticket, publish.sha.copy()

    def upload_commit(self, ticket: ChunkTicket, sha: Any) -> Reply:
        with self.lock:
            publish = self._publishing.commit_chunk(ticket, sha, self.clock.now())
            complete = publish.ready_at is not None
            return Reply(
                status=201 if complete else 206,
                headers=(("Content-Range", _progress(publish)),),
            )

    def upload_abort(self, ticket: ChunkTicket) -> None:
        with self.lock:
            self._publishing.abort_chunk(ticket)


def _json_body(body: bytes, *, allow_empty: bool) -> Any:
    if allow_empty and not body.strip():
        return {}
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ApiError("invalid_params", "The request body is not valid JSON") from exc


def _progress(publish: Publish) -> str:
    total = publish.request.plan.video_size if publish.request.plan else 0
    return f"bytes 0-{publish.received - 1}/{total}" if publish.received else f"bytes */{total}"


def _check_upload_headers(publish: Publish, headers: dict[str, str | None], now: float) -> None:
    if now > publish.upload_expires_at:
        raise ApiError("upload_url_expired", "The upload_url has expired", 403)
    if publish.ready_at is not None:
        raise ApiError("range_not_satisfiable", "The upload is already complete", 416)
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type not in VIDEO_CONTENT_TYPES:
        raise ApiError(
            "invalid_params", "Content-Type must be video/mp4, video/quicktime or video/webm", 400
        )


def _parse_range(value: str | None) -> tuple[int, int, int]:
    match = _RANGE.fullmatch((value or "").strip())
    if match is None:
        raise ApiError("invalid_params", "Content-Range must be 'bytes first-last/total'", 400)
    first, last, total = (int(g) for g in match.groups())
    if first > last or last >= total:
        raise ApiError("invalid_params", "Content-Range is not a range within the file", 400)
    return first, last, total
