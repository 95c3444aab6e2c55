"""The control API: HTTP/JSON on the daemon's Unix socket (``curl --unix-socket`` works).

    GET  /v1/health              liveness
    GET  /v1/status              the operator's dashboard: accounts, queues, alerts, totals
    POST /v1/jobs                submit a post (201 created, 200 same job again, 409 conflict)
    GET  /v1/jobs                list (?state=&account=&limit=)
    GET  /v1/jobs/{id}           one job with its timeline and attempts
    POST /v1/jobs/{id}/cancel    cancel a job that has not reached TikTok yet
    POST /v1/jobs/{id}/resolve   an operator's verdict on an uncertain job: {"posted": bool}
    GET  /v1/dlq                 the dead-letter queue (?account=&limit=)
    POST /v1/dlq/{id}/requeue    try a dead (or review) job again: {"fresh": bool}
    POST /v1/dlq/purge           delete dead jobs for good: {"ids": [...]} or {"all": true}
    POST /v1/accounts/{id}/pause          stop taking this account's jobs (resume: /resume)
    POST /v1/accounts/{id}/auth/url       start an authorization: {"redirect_uri"?} -> {url, state}
    POST /v1/accounts/{id}/auth/exchange  finish it: {"code"} or {"redirect": URL or query}
    POST /v1/accounts/{id}/auth/import    onboard with a refresh token: {"refresh_token"}
    POST /v1/reload              read the accounts file again (422 invalid_config: nothing changed)

Every error is ``{"error": {"code", "message"}}`` with a fitting HTTP status. Responses are
built from snapshots and rows only; secrets (tokens, upload URLs) are never serialised.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio

from . import __version__, oauth
from .catalog import UNKNOWN, lookup
from .clock import ClockLike
from .config import AccountSettings, Config
from .errors import ApiError, ConfigError, TikTokError, TokenError
from .httpd import Request, Response
from .intake import build_job, parse_submission, spool_video
from .jobs import SCOPE_FOR_MODE, TERMINAL, Job, JobState, entering_processing
from .logs import fields
from .routing import Routing
from .store import (
    Attempt,
    DashboardSummary,
    Event,
    LastError,
    StaleTransition,
    Store,
    SubmitOutcome,
    TokenRecord,
    TokenStatus,
)
from .tokens import PARKED, REFRESH_EXPIRY_WARNING, TokenRegistry, effective_margin

log = logging.getLogger(__name__)

_ACCOUNT_PATH = re.compile(r"^/v1/accounts/([a-z0-9][a-z0-9_-]{0,62})/(pause|resume)$")
_AUTH_PATH = re.compile(r"^/v1/accounts/([a-z0-9][a-z0-9_-]{0,62})/auth/(url|exchange|import)$")
# The status lists every account up to this many configured ones; above, by default, only
# those that need attention (the rest are counted): a 10,000-row table is neither cheap nor
# readable, and a dashboard asks for it every few seconds.
FULL_LIST_UP_TO = 100
VIEWS = ("all", "attention", "none")
# A failed attempt this recent (seconds) puts its account on the attention list.
RECENT_ERROR = 3600.0
WAITING = frozenset({JobState.QUEUED.value, JobState.RETRY_WAIT.value})
_JOB_PATH = re.compile(r"^/v1/(jobs|dlq)/([A-Za-z0-9_-]{1,64})(?:/(cancel|resolve|requeue))?$")
# What a fresh start forgets: the old publish, which can never become a post.
_FRESH = {
    "publish_id": None,
    "upload_url": None,
    "upload_expires_at": None,
    "uploaded_bytes": 0,
    "init_sent_at": None,
    "next_poll_at": None,
}


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "account": job.account_id or None,
        "pool": job.pool,
        "state": job.state.value,
        "mode": job.mode.value,
        "source": job.source.value,
        "caption": job.caption,
        "privacy_level": job.privacy_level,
        "video_path": job.video_path,
        "video_url": job.video_url,
        "video_size": job.video_size,
        "content_sha256": job.content_sha256,
        "idempotency_key": job.idempotency_key,
        "options": {k: v for k, v in job.options.items() if k != "creator_username"},
        "lane": job.lane,
        "attempts": job.attempt_count,
        "not_before": iso(job.not_before),
        "publish_id": job.publish_id,
        "uploaded_bytes": job.uploaded_bytes,
        "post_ids": list(job.post_ids),
        "post_url": job.post_url,
        "error": (
            {"code": job.error_code, "message": job.error_message} if job.error_code else None
        ),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "finished_at": iso(job.finished_at),
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "action": event.action,
        "from": event.from_state,
        "to": event.to_state,
        "detail": event.detail,
    }


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    raw: Any = attempt.raw
    if raw:
        try:
            raw = json.loads(raw)
        except ValueError:
            pass
    classification = None
    if attempt.error_class:
        entries = lookup(attempt.error_code or "")
        classification = {
            "class": attempt.error_class,
            "known": attempt.known,
            "message": entries[0].message if entries else UNKNOWN.message,
        }
    return {
        "step": attempt.step,
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
        "outcome": attempt.outcome,
        "http_status": attempt.http_status,
        "error_code": attempt.error_code,
        "error_message": attempt.error_message,
        "log_id": attempt.log_id,
        "classification": classification,
        "raw_response": raw,
    }


def _token_json(token: TokenRecord | TokenStatus | None, now: float) -> dict[str, Any]:
    """What may be shown of an account's tokens: states and times, never the tokens."""
    if token is None:
        return {"state": "missing", "expires_in": None}
    return {
        "state": token.state,
        "open_id": token.open_id,
        "scopes": sorted(token.scopes),
        "expires_in": round(token.access_expires_at - now) if token.access_expires_at else None,
        "refresh_expires_in": (
            round(token.refresh_expires_at - now) if token.refresh_expires_at else None
        ),
        "last_error": token.last_error,
        "refresh_failures": token.refresh_failures,
    }


def account_state(*, enabled: bool, paused: bool, token_state: str | None) -> str:
    """One word for an operator: why this configured account does or does not post.

    Parked (its creator must authorize the app again) outranks an operator's pause, because
    resuming it would not help.
    """
    if not enabled:
        return "disabled"
    if token_state in ("needs_reauth", "exhausted"):
        return "parked"
    return "paused" if paused else "active"


def _reload_json(reload: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not reload:
        return None
    return {**reload, "at": iso(reload.get("at"))}


def _body(req: Request) -> dict[str, Any]:
    try:
        body = req.json()
    except ValueError as exc:
        raise ApiError("invalid_json", f"the body is not JSON: {exc}", status=400) from None
    if not isinstance(body, dict):
        raise ApiError("invalid_request", "the body must be a JSON object", status=400)
    return body


class LiveStatistics(Protocol):
    """``Daemon.statistics``: the shards' in-memory state, alerts, reload, drain."""

    def __call__(
        self, accounts: list[str] | None = None, *, troubled: bool = False
    ) -> Mapping[str, Any]: ...


class ControlApi:
    def __init__(
        self,
        *,
        store: Store,
        config: Config,
        clock: ClockLike,
        spool_dir: Path,
        on_submitted: Callable[[str], None],
        live: LiveStatistics,
        tokens: TokenRegistry | None = None,
        routing: Routing | None = None,
        reload: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._spool = spool_dir
        self._on_submitted = on_submitted
        self._live = live
        self._tokens = tokens
        self._routing = routing
        self._reload = reload
        self.accepting = True
        # Refresh outcomes per account, and the last history row counted (_refresh_counts).
        self._refreshes: dict[str, dict[str, int]] = {}
        self._history_seen = 0
        self._refresh_lock = anyio.Lock()
        # Accounts with jobs but not in the file; None: read it again (_unconfigured_accounts).
        self._unconfigured: set[str] | None = None
        self._generation = 0
        self._index_accounts()

    def reconfigure(self, config: Config) -> None:
        """A reload changed the accounts: submissions are checked against the new ones."""
        self._config = config
        self._index_accounts()

    def _index_accounts(self) -> None:
        """What the status needs of the file, worked out once per configuration."""
        accounts = self._config.accounts
        self._configured = {a.id for a in accounts}
        self._config_ids = [a.id for a in accounts]
        self._disabled = {a.id for a in accounts if not a.enabled}
        self._order = {a.id: n for n, a in enumerate(accounts)}
        self._unconfigured = None
        self._generation = getattr(self, "_generation", 0) + 1

    async def handle(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except ApiError as exc:
            return Response.error(exc.status, exc.code, exc.message)

    async def _route(self, req: Request) -> Response:
        if req.path == "/v1/health" and req.method == "GET":
            return Response.json(200, {"ok": True, "version": __version__})
        if req.path == "/v1/status" and req.method == "GET":
            view, account = req.query.get("accounts"), req.query.get("account")
            if view is not None and view not in VIEWS:
                raise ApiError(
                    "invalid_request", "accounts: must be all, attention or none", status=400
                )
            if view is not None and account is not None:
                raise ApiError(
                    "invalid_request", "give accounts= or account=, not both", status=400
                )
            return Response.json(200, await self.status(view, account))
        if req.path == "/v1/reload" and req.method == "POST":
            return await self._reload_config()
        if req.path == "/v1/jobs":
            if req.method == "POST":
                return await self._submit(req)
            if req.method == "GET":
                return await self._list(req)
            raise ApiError("method_not_allowed", f"{req.method} /v1/jobs", status=405)
        toggle = _ACCOUNT_PATH.match(req.path)
        if toggle and req.method == "POST":
            return await self._pause(toggle.group(1), paused=toggle.group(2) == "pause")
        auth = _AUTH_PATH.match(req.path)
        if auth and req.method == "POST":
            return await self._auth(auth.group(1), auth.group(2), _body(req))
        if req.path == "/v1/dlq" and req.method == "GET":
            return await self._list(req, state=JobState.DEAD.value)
        if req.path == "/v1/dlq/purge" and req.method == "POST":
            return await self._purge(req)
        match = _JOB_PATH.match(req.path)
        if match:
            collection, job_id, verb = match.groups()
            handler = {
                ("jobs", None, "GET"): self._show,
                ("dlq", None, "GET"): self._show,
                ("jobs", "cancel", "POST"): self._cancel,
            }.get((collection, verb, req.method))
            if handler is not None:
                return await handler(job_id)
            if (collection, verb, req.method) == ("jobs", "resolve", "POST"):
                return await self._resolve(job_id, _body(req))
            if (collection, verb, req.method) == ("dlq", "requeue", "POST"):
                return await self._requeue(job_id, _body(req))
            raise ApiError("method_not_allowed", f"{req.method} {req.path}", status=405)
        raise ApiError("not_found", f"no such endpoint: {req.method} {req.path}", status=404)

    async def _submit(self, req: Request) -> Response:
        if not self.accepting:
            raise ApiError(
                "shutting_down", "the daemon is stopping; submit again later", status=503
            )
        try:
            body = req.json()
        except ValueError as exc:
            raise ApiError("invalid_json", f"the body is not JSON: {exc}", status=400) from None
        sub = parse_submission(body)
        if sub.pool is None:
            await self._check_account(sub.account)
        spooled = None
        if sub.video_path is not None:
            spooled = await anyio.to_thread.run_sync(spool_video, sub.video_path, self._spool)
        job, fingerprint = build_job(sub, now=self._clock.now(), spooled=spooled)
        routed = None
        if sub.pool is not None and self._routing is not None:
            routed = await self._routing.pick(sub.pool, SCOPE_FOR_MODE[sub.mode])
            job = replace(job, account_id=routed.account or "")
        outcome, stored = await self._store.submit(job, fingerprint)
        if outcome == SubmitOutcome.CREATED and routed is not None:
            await self._store.add_event(
                stored.id,
                self._clock.now(),
                "job.routed",
                {
                    "to": routed.account,
                    "reason": routed.reason,
                    "considered": [f"{a}: {why}" for a, why in routed.considered[:10]],
                },
            )
        return self._submitted_response(outcome, stored)

    async def _check_account(self, account_id: str) -> None:
        account = self._config.account(account_id)
        if account is None or not account.enabled:
            raise ApiError(
                "unknown_account",
                f"no enabled account {account_id!r} in {self._config.path}",
                status=404,
            )
        token = await self._store.get_token(account_id)
        if token is not None and token.state in ("needs_reauth", "exhausted"):
            # A parked account takes no new jobs; the ones it has wait for re-authorization.
            raise ApiError(
                "account_needs_reauth",
                f"account {account_id} must be authorized again ({token.last_error}); run "
                f"`orchestrator auth url {account_id}` and have the creator approve the app",
                status=409,
            )

    def _submitted_response(self, outcome: str, stored: Job) -> Response:
        if outcome == SubmitOutcome.CONFLICT:
            raise ApiError(
                "idempotency_conflict",
                f"idempotency key already used by job {stored.id} for a different post",
                status=409,
            )
        if outcome == SubmitOutcome.CREATED:
            log.info(
                "accepted %s for %s",
                stored.id,
                stored.account_id,
                extra=fields("job.submitted", job=stored.id, account=stored.account_id),
            )
            if stored.account_id:
                self._on_submitted(stored.account_id)
        status = 201 if outcome == SubmitOutcome.CREATED else 200
        return Response.json(status, {"job": job_json(stored), "created": status == 201})

    async def _list(self, req: Request, *, state: str | None = None) -> Response:
        state = state or req.query.get("state")
        if state and state not in {s.value for s in JobState}:
            raise ApiError("invalid_request", f"state: unknown state {state!r}", status=400)
        try:
            limit = int(req.query.get("limit", "100"))
        except ValueError:
            raise ApiError("invalid_request", "limit: must be a whole number", status=400) from None
        if not 1 <= limit <= 10_000:
            raise ApiError("invalid_request", "limit: must be between 1 and 10000", status=400)
        jobs = await self._store.list_jobs(
            state=state, account=req.query.get("account"), limit=limit
        )
        return Response.json(200, {"jobs": [job_json(j) for j in jobs]})

    async def _show(self, job_id: str) -> Response:
        job = await self._existing(job_id)
        events, attempts = await self._store.timeline(job_id)
        return Response.json(
            200,
            {
                "job": job_json(job),
                "timeline": [event_json(e) for e in events],
                "attempts": [attempt_json(a) for a in attempts],
            },
        )

    async def _cancel(self, job_id: str) -> Response:
        job = await self._existing(job_id)
        now = self._clock.now()
        try:
            # Only before anything reached TikTok: afterwards a cancel cannot unpost a video.
            job = await self._store.transition(
                job_id,
                expect=[JobState.QUEUED, JobState.RETRY_WAIT],
                to=JobState.CANCELLED,
                now=now,
                action="job.cancelled",
                finished_at=now,
            )
        except StaleTransition:
            raise ApiError(
                "not_cancellable",
                f"job {job_id} is {job.state.value}; only queued jobs can be cancelled",
                status=409,
            ) from None
        return Response.json(200, {"job": job_json(job)})

    async def _resolve(self, job_id: str, body: dict[str, Any]) -> Response:
        posted = body.get("posted")
        if not isinstance(posted, bool):
            raise ApiError("invalid_request", "posted: must be true or false", status=400)
        job = await self._existing(job_id)
        now = self._clock.now()
        try:
            if posted:
                job = await self._store.transition(
                    job_id,
                    expect=[JobState.UNCERTAIN],
                    to=JobState.PUBLISHED,
                    now=now,
                    action="job.resolved_posted",
                    detail={"by": "operator"},
                    finished_at=now,
                )
            else:
                # The operator saw no post: the init never took effect, so start again.
                job = await self._store.transition(
                    job_id,
                    expect=[JobState.UNCERTAIN],
                    to=JobState.QUEUED,
                    now=now,
                    action="job.resolved_not_posted",
                    detail={"by": "operator"},
                    not_before=now,
                    error_code=None,
                    error_message=None,
                    **_FRESH,
                )
                self._on_submitted(job.account_id)
        except StaleTransition:
            raise ApiError(
                "not_uncertain", f"job {job_id} is {job.state.value}, not uncertain", status=409
            ) from None
        log.warning(
            "operator resolved %s as %s",
            job_id,
            "posted" if posted else "not posted",
            extra=fields("job.resolved", job=job_id, account=job.account_id, posted=posted),
        )
        return Response.json(200, {"job": job_json(job)})

    async def _requeue(self, job_id: str, body: dict[str, Any]) -> Response:
        fresh = body.get("fresh", False)
        if not isinstance(fresh, bool):
            raise ApiError("invalid_request", "fresh: must be true or false", status=400)
        job = await self._existing(job_id)
        if job.state not in (JobState.DEAD, JobState.REVIEW):
            raise ApiError(
                "not_requeueable",
                f"job {job_id} is {job.state.value}; only dead or review jobs can be requeued",
                status=409,
            )
        now = self._clock.now()
        changes: dict[str, Any] = {
            "not_before": now,
            "attempt_count": 0,
            "finished_at": None,
            "lane": "new",
        }
        if fresh or job.publish_id is None:
            to = JobState.QUEUED
            changes |= _FRESH
        else:
            # TikTok already has this publish: follow it, never post it again.
            uploaded = job.uploaded_bytes >= (job.video_size or 0) or job.upload_url is None
            to = JobState.PROCESSING if uploaded else JobState.RETRY_WAIT
            if uploaded:
                changes |= entering_processing(now)
        job = await self._store.transition(
            job_id,
            expect=[job.state],
            to=to,
            now=now,
            action="job.requeued",
            detail={"fresh": fresh, "by": "operator"},
            **changes,
        )
        self._on_submitted(job.account_id)
        return Response.json(200, {"job": job_json(job)})

    async def _purge(self, req: Request) -> Response:
        body = _body(req)
        if body.get("all") is True:
            ids = [j.id for j in await self._store.list_jobs(state="dead", limit=1_000_000)]
        elif isinstance(body.get("ids"), list) and all(isinstance(i, str) for i in body["ids"]):
            ids = body["ids"]
        else:
            raise ApiError("invalid_request", 'give {"ids": [...]} or {"all": true}', status=400)
        gone = await self._store.delete_jobs(ids, only_state=JobState.DEAD)
        self._unconfigured, self._generation = None, self._generation + 1  # may have emptied one
        log.warning("purged %d dead jobs", gone, extra=fields("dlq.purged", count=gone))
        return Response.json(200, {"purged": gone})

    async def _pause(self, account_id: str, *, paused: bool) -> Response:
        if self._config.account(account_id) is None:
            raise ApiError("unknown_account", f"no account {account_id!r}", status=404)
        # Only the pause column: the shard owns the breaker and cap columns of the same row.
        await self._store.update_account_state(account_id, self._clock.now(), paused=paused)
        self._on_submitted(account_id)  # wakes the shard, which reads its state again
        if self._routing is not None:
            self._routing.nudge()  # its queued pool jobs may move
        log.warning(
            "account %s %s by an operator",
            account_id,
            "paused" if paused else "resumed",
            extra=fields("account.paused" if paused else "account.resumed", account=account_id),
        )
        return Response.json(200, {"account": account_id, "paused": paused})

    async def _auth(self, account_id: str, step: str, body: dict[str, Any]) -> Response:
        account = self._config.account(account_id)
        if account is None:
            raise ApiError("unknown_account", f"no account {account_id!r}", status=404)
        if self._tokens is None:
            raise ApiError("unavailable", "the token registry is not running", status=503)
        now = self._clock.now()
        if step == "url":
            redirect = body.get("redirect_uri") or self._config.tiktok.redirect_uri
            if not isinstance(redirect, str) or not redirect:
                raise ApiError(
                    "no_redirect_uri",
                    "set tiktok.redirect_uri in the accounts file or pass redirect_uri",
                    status=400,
                )
            request = oauth.build_auth_request(
                client_key=self._config.tiktok.client_key,
                scopes=sorted({*account.scopes, "user.info.basic"}),
                redirect_uri=redirect,
                pkce=oauth.needs_pkce(redirect),
            )
            await self._store.save_auth_request(
                account_id=account_id,
                state=request.state,
                code_verifier=request.code_verifier,
                redirect_uri=redirect,
                now=now,
            )
            return Response.json(
                200,
                {"url": request.url, "state": request.state, "pkce": bool(request.code_verifier)},
            )
        try:
            if step == "exchange":
                pending = await self._store.take_auth_request(account_id)
                if pending is None:
                    raise ApiError(
                        "no_pending_authorization",
                        f"start with `orchestrator auth url {account_id}`",
                        status=409,
                    )
                state, verifier, redirect = pending
                code = body.get("code")
                if isinstance(body.get("redirect"), str):
                    try:
                        code = oauth.parse_redirect(body["redirect"], expected_state=state)
                    except ValueError as exc:
                        raise ApiError("authorization_refused", str(exc), status=400) from None
                if not isinstance(code, str) or not code:
                    raise ApiError("invalid_request", "give code or redirect", status=400)
                await self._tokens.exchange_code(
                    account_id, code, redirect_uri=redirect, code_verifier=verifier
                )
            else:
                refresh_token = body.get("refresh_token")
                if not isinstance(refresh_token, str) or not refresh_token.strip():
                    raise ApiError("invalid_request", "refresh_token: required", status=400)
                await self._tokens.import_refresh_token(account_id, refresh_token.strip())
        except TikTokError as exc:
            raise ApiError(
                "tiktok_refused", f"TikTok refused: {exc.code}: {exc.message}", status=502
            ) from None
        except TokenError as exc:
            raise ApiError("token_error", exc.message, status=502) from None
        self._on_submitted(account_id)
        token = await self._store.get_token(account_id)
        return Response.json(200, {"account": account_id, "token": _token_json(token, now)})

    async def _reload_config(self) -> Response:
        if self._reload is None:
            raise ApiError("unavailable", "this daemon cannot reload its configuration", status=503)
        try:
            result = await self._reload()
        except ConfigError as exc:
            # The message names the file, the account and the field; the old config still runs.
            raise ApiError("invalid_config", exc.message, status=422) from None
        return Response.json(200, result)

    async def _existing(self, job_id: str) -> Job:
        job = await self._store.get_job(job_id)
        if job is None:
            raise ApiError("job_not_found", f"no job {job_id}", status=404)
        return job

    # -- the dashboard ------------------------------------------------------------------------

    async def status(self, view: str | None = None, account: str | None = None) -> dict[str, Any]:
        """The dashboard. ``view``: ``all``, ``attention`` or ``none`` (default: ``all`` up to
        FULL_LIST_UP_TO configured accounts, ``attention`` above); ``account``: that one only.

        Whatever the view, ``account_states`` counts every account and ``attention_count``
        says how many need an operator. Only ``all`` reads every account's rows and describes
        every shard; the other views find the accounts that need attention from the shards'
        in-memory state and from reads whose answers grow with the trouble, not with the
        accounts (tokens in trouble, errors of the last hour), then describe just those.
        The reads take two hops to the database thread, each one snapshot.
        """
        if account is not None:
            view = "account"
        elif view is None:
            view = "all" if len(self._config.accounts) <= FULL_LIST_UP_TO else "attention"
        now = self._clock.now()
        margin = self._config.tiktok.refresh_margin
        async with self._refresh_lock:  # two statuses at once must not count history twice
            summary = await self._store.dashboard_summary(
                accounts=self._config_ids,
                access_before=now + margin,
                refresh_before=now + REFRESH_EXPIRY_WARNING,
                errors_since=now - RECENT_ERROR,
                history_after=self._history_seen,
            )
            self._count_refreshes(summary)
        if view == "all":
            board = await self._board_all(now)
        else:
            board = await self._board_some(now, summary, view=view, account=account)
        return self._document(now, view, board, summary)

    async def _board_all(self, now: float) -> _Board:
        config, generation = self._config, self._generation
        rows = await self._store.dashboard_accounts()
        counts, lanes = _group_counts(rows.jobs)
        tokens = {t.account_id: t for t in rows.tokens}
        live = self._live()
        shards: Mapping[str, Mapping[str, Any]] = live.get("shards", {})
        unknown = set(counts) - self._configured - {""}
        if generation == self._generation:
            self._unconfigured = unknown  # as good as the cache's own read
        retired = sorted((set(live.get("retired") or {}) | unknown) - self._configured)
        entries = [
            self._entry(
                account_id,
                config.account(account_id),
                shard=shards.get(account_id, {}),
                token=tokens.get(account_id),
                queues=lanes.get(account_id, {}),
                jobs=counts.get(account_id, {}),
                error=rows.last_errors.get(account_id),
                now=now,
            )
            for account_id in [*(a.id for a in config.accounts), *retired]
        ]
        return _Board(
            live=live,
            accounts=entries,
            account_count=len(entries),
            account_states=dict(Counter(e["state"] for e in entries)),
            attention_count=sum(1 for e in entries if e["attention"]),
            unknown=sorted(unknown),
        )

    async def _board_some(
        self, now: float, summary: DashboardSummary, *, view: str, account: str | None
    ) -> _Board:
        config = self._config
        margin = config.tiktok.refresh_margin
        troubles = {t.account_id: t for t in summary.token_troubles}
        unconfigured = await self._unconfigured_accounts()
        if account is not None and config.account(account) is None and account not in unconfigured:
            raise ApiError(
                "unknown_account",
                f"no account {account!r} in {config.path}, and no jobs for it",
                status=404,
            )
        # Every account that needs attention, found from small sets only: the file's disabled
        # accounts, tokens in trouble or missing, errors of the last hour, the shards' own
        # state (troubled), retired accounts. Each configured account outside it is active
        # (not disabled, parked or paused) by construction.
        configured = self._configured
        found = {
            a for a, t in troubles.items() if a in configured and token_trouble(t, now, margin)
        }
        found |= summary.without_token & configured
        found |= summary.recent_errors.keys() & configured
        describe = sorted(found if view == "attention" else {account} if account else ())
        live = self._live(describe, troubled=True)  # describes the troubled shards too
        troubled: Mapping[str, list[str]] = live.get("troubled", {})
        retired = (set(live.get("retired") or {}) | unconfigured) - configured
        selected = found | self._disabled | set(troubled) | retired
        states = Counter(
            "retired"
            if a in retired
            else account_state(
                enabled=a not in self._disabled,
                paused="paused" in troubled.get(a, ()),
                token_state=troubles[a].state if a in troubles else None,
            )
            for a in selected
        )
        states["active"] = len(config.accounts) - sum(
            n for state, n in states.items() if state not in ("active", "retired")
        )
        if view == "attention":
            shown = sorted(selected, key=self._position)
        else:
            shown = [account] if account else []
        return _Board(
            live=live,
            accounts=await self._entries(shown, now, live, troubles, retired),
            account_count=len(config.accounts) + len(retired),
            account_states={s: n for s, n in states.items() if n},
            attention_count=len(selected),
            unknown=sorted(unconfigured),
        )

    async def _entries(
        self,
        shown: list[str],
        now: float,
        live: Mapping[str, Any],
        troubles: Mapping[str, TokenStatus],
        retired: set[str],
    ) -> list[dict[str, Any]]:
        """The full entries of ``shown``, read in one hop bounded by them."""
        if not shown:
            return []
        rows = await self._store.dashboard_accounts(shown)
        counts, lanes = _group_counts(rows.jobs)
        tokens = {t.account_id: t for t in rows.tokens}
        # The token rows that chose these accounts are the ones shown, so the reasons agree.
        tokens |= {a: troubles[a] for a in shown if a in troubles}
        shards: Mapping[str, Mapping[str, Any]] = live.get("shards", {})
        return [
            self._entry(
                account_id,
                None if account_id in retired else self._config.account(account_id),
                shard=shards.get(account_id, {}),
                token=tokens.get(account_id),
                queues=lanes.get(account_id, {}),
                jobs=counts.get(account_id, {}),
                error=rows.last_errors.get(account_id),
                now=now,
            )
            for account_id in shown
        ]

    def _entry(
        self,
        account_id: str,
        acct: AccountSettings | None,
        *,
        shard: Mapping[str, Any],
        token: TokenStatus | None,
        queues: dict[str, int],
        jobs: dict[str, int],
        error: LastError | None,
        now: float,
    ) -> dict[str, Any]:
        """One account's row of the dashboard; ``acct`` None: retired (removed from the file
        by a reload, its jobs kept in the store and shown)."""
        error_json = (
            {
                "code": error.code,
                "message": error.message,
                "job": error.job_id,
                "at": iso(error.at),
                "age": round(now - error.at),
            }
            if error
            else None
        )
        if acct is None:
            return {
                "id": account_id,
                "state": "retired",
                "token": _token_json(token, now),
                "breaker": None,
                "cap": None,
                "queues": queues,
                "jobs": jobs,
                "last_error": error_json,
                "attention": attention_reasons(state="retired", error=error, now=now),
            }
        paused = shard.get("paused", False)
        state = account_state(
            enabled=acct.enabled, paused=paused, token_state=token.state if token else None
        )
        refreshes = dict(self._refreshes.get(account_id, {}))
        return {
            "id": account_id,
            "state": state,
            "display_name": acct.display_name,
            "enabled": acct.enabled,
            "region": acct.region,
            "tags": list(acct.tags),
            "token": _token_json(token, now) | {"refreshes": refreshes},
            "current_job": shard.get("current_job"),
            "paused": paused,
            "breaker": shard.get("breaker"),
            "breaker_retry_at": iso(shard.get("breaker_retry_at")),
            "cap": shard.get("cap"),
            "queues": queues,
            "jobs": jobs,
            "last_error": error_json,
            "attention": attention_reasons(
                state=state,
                paused=paused,
                shard=shard,
                token=token_trouble(token, now, self._config.tiktok.refresh_margin)
                if acct.enabled
                else None,
                error=error,
                now=now,
            ),
        }

    def _document(
        self, now: float, view: str, board: _Board, summary: DashboardSummary
    ) -> dict[str, Any]:
        live = board.live
        attention = (
            [
                {
                    "job": j.id,
                    "account": j.account_id,
                    "state": j.state.value,
                    "code": j.error_code,
                    "since": iso(j.updated_at),
                }
                for j in summary.waiting_for_human
            ]
            + [
                {
                    "job": j.id,
                    "account": j.account_id,
                    "state": "stuck",
                    "code": f"processing since {iso(j.processing_since)}",
                    "since": iso(j.stuck_at),
                }
                for j in summary.stuck
            ]
            + [
                {
                    "account": t.account_id,
                    "state": t.state,
                    "code": t.last_error,
                    "since": iso(t.updated_at),
                }
                for t in summary.token_troubles
                if t.state in PARKED or t.last_error == "refresh_lost"
            ]
        )
        totals = summary.job_totals
        return {
            "daemon": {
                "version": __version__,
                "pid": live.get("pid"),
                "started_at": iso(live.get("started_at")),
                "now": iso(now),
                "accepting": self.accepting,
                "app_paused_until": iso(live.get("app_paused_until")),
                "app_paused_reason": live.get("app_paused_reason"),
                "config": str(self._config.path),
                "draining": bool(live.get("draining", False)),
                "reload": _reload_json(live.get("reload")),
            },
            "accounts_view": view,
            "account_count": board.account_count,
            "account_states": board.account_states,
            "attention_count": board.attention_count,
            "accounts": board.accounts,
            "unconfigured_accounts_with_jobs": board.unknown,
            "retired": dict(live.get("retired") or {}),
            "needs_attention": attention,
            "alerts": [
                {**a, "at": iso(a.get("at")), "since": iso(a.get("since"))}
                for a in live.get("alerts", [])
            ],
            "unknown_codes": [
                {"code": u.code, "count": u.count, "last_seen": iso(u.last_seen), "job": u.last_job}
                for u in summary.unknown_codes
            ],
            "totals": totals,
            "unassigned_pool_jobs": summary.unplaced_jobs,
            "open": sum(n for s, n in totals.items() if JobState(s) not in TERMINAL),
        }

    def _count_refreshes(self, summary: DashboardSummary) -> None:
        """Refresh outcomes per account, kept current from the history rows added since the
        last status (they never change) rather than counted again at every request: an
        account refreshes about twelve times a day, so a month of 10,000 accounts is 3.6
        million rows."""
        for account_id, outcome, n in summary.refreshes:
            counts = self._refreshes.setdefault(account_id, {})
            counts[outcome] = counts.get(outcome, 0) + n
        self._history_seen = summary.history_seen

    async def _unconfigured_accounts(self) -> set[str]:
        """Accounts with jobs that the accounts file does not list. Jobs only ever go to
        configured accounts (a submission is checked, the router picks among them), so this
        changes only when a reload changes the file or a purge deletes jobs; it is read once
        and kept until then, not found by reading every job at every status."""
        if self._unconfigured is None:
            generation = self._generation
            found = await self._store.job_account_ids() - {""}
            if generation != self._generation:  # a reload or purge meanwhile: read again
                return await self._unconfigured_accounts()
            self._unconfigured = found - self._configured
        return self._unconfigured

    def _position(self, account_id: str) -> tuple[int, str]:
        """Where an account comes in the table: the file's order, then retired ones by id."""
        return self._order.get(account_id, len(self._order)), account_id


@dataclass(frozen=True, kw_only=True, slots=True)
class _Board:
    """The accounts part of a status, as a view found it."""

    live: Mapping[str, Any]
    accounts: list[dict[str, Any]]
    account_count: int
    account_states: dict[str, int]
    attention_count: int
    unknown: list[str]


def _group_counts(
    rows: list[tuple[str, str, str, int]],
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(account, state, lane, n) rows -> jobs per account and state, and waiting jobs
    (queued or retry_wait) per account and lane."""
    counts: dict[str, dict[str, int]] = {}
    lanes: dict[str, dict[str, int]] = {}
    for account_id, state, lane, n in rows:
        by_state = counts.setdefault(account_id, {})
        by_state[state] = by_state.get(state, 0) + n
        if state in WAITING:
            by_lane = lanes.setdefault(account_id, {})
            by_lane[lane] = by_lane.get(lane, 0) + n
    return counts, lanes


def token_trouble(token: TokenStatus | None, now: float, margin: float) -> str | None:
    """Why an account's tokens need an operator, or None.

    An access token is late when less than half of the margin its refresh was due at is
    left (the refresher's own rule: the configured margin, at most a quarter of the
    token's lifetime): a healthy account never gets there.
    """
    if token is None:
        return "no token"
    if token.state in PARKED:
        return f"token {token.state}"
    if token.last_error:
        return f"token refresh failed ({token.last_error})"
    if token.access_expires_at is not None:
        issued = token.access_issued_at or token.updated_at
        lead = effective_margin(max(0.0, token.access_expires_at - issued), margin)
        if token.access_expires_at - now < lead / 2:
            return "token expired" if token.access_expires_at <= now else "token expiring"
    if (
        token.refresh_expires_at is not None
        and token.refresh_expires_at - now < REFRESH_EXPIRY_WARNING
    ):
        return "refresh token expiring"
    return None


def attention_reasons(
    *,
    state: str,
    error: LastError | None,
    now: float,
    paused: bool = False,
    shard: Mapping[str, Any] | None = None,
    token: str | None = None,
) -> list[str]:
    """Why an operator should look at an account: empty for a healthy one. The attention
    view lists exactly the accounts for which this is not empty."""
    reasons = [] if state == "active" else [state]
    if paused and state != "paused":
        reasons.append("paused")
    shard = shard or {}
    breaker = shard.get("breaker")
    if breaker and breaker != "closed":
        reasons.append(f"breaker {breaker}")
    cap = shard.get("cap")
    if cap and (cap["used"] >= cap["limit"] or (cap.get("blocked_until") or 0) > now):
        reasons.append("daily cap spent")
    if token:
        reasons.append(token)
    if error is not None and error.at > now - RECENT_ERROR:
        reasons.append("error in the last hour")
    return reasons
