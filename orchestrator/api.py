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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from . import __version__, oauth
from .catalog import UNKNOWN, lookup
from .clock import ClockLike
from .config import Config
from .errors import ApiError, ConfigError, TikTokError, TokenError
from .httpd import Request, Response
from .intake import build_job, parse_submission, spool_video
from .jobs import SCOPE_FOR_MODE, TERMINAL, Job, JobState, entering_processing
from .logs import fields
from .routing import Routing
from .store import Attempt, Event, StaleTransition, Store, SubmitOutcome, TokenRecord
from .tokens import TokenRegistry

log = logging.getLogger(__name__)

_ACCOUNT_PATH = re.compile(r"^/v1/accounts/([a-z0-9][a-z0-9_-]{0,62})/(pause|resume)$")
_AUTH_PATH = re.compile(r"^/v1/accounts/([a-z0-9][a-z0-9_-]{0,62})/auth/(url|exchange|import)$")
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


def _token_json(token: TokenRecord | None, now: float) -> dict[str, Any]:
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


class ControlApi:
    def __init__(
        self,
        *,
        store: Store,
        config: Config,
        clock: ClockLike,
        spool_dir: Path,
        on_submitted: Callable[[str], None],
        live: Callable[[], Mapping[str, Any]],
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

    def reconfigure(self, config: Config) -> None:
        """A reload changed the accounts: submissions are checked against the new ones."""
        self._config = config

    async def handle(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except ApiError as exc:
            return Response.error(exc.status, exc.code, exc.message)

    async def _route(self, req: Request) -> Response:
        if req.path == "/v1/health" and req.method == "GET":
            return Response.json(200, {"ok": True, "version": __version__})
        if req.path == "/v1/status" and req.method == "GET":
            return Response.json(200, await self.status())
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
        log.warning("purged %d dead jobs", gone, extra=fields("dlq.purged", count=gone))
        return Response.json(200, {"purged": gone})

    async def _pause(self, account_id: str, *, paused: bool) -> Response:
        if self._config.account(account_id) is None:
            raise ApiError("unknown_account", f"no account {account_id!r}", status=404)
        state = await self._store.account_state(account_id)
        await self._store.save_account_state(replace(state, paused=paused), self._clock.now())
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

    async def _lanes_and_errors(
        self, now: float
    ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]]]:
        """Waiting jobs per account and lane, and each account's most recent failed attempt.

        Both are one grouped query for every account (Store.queue_depths, Store.last_errors).
        """
        store = self._store
        lanes = await store.queue_depths()
        errors = {
            account_id: {
                "code": e.code,
                "message": e.message,
                "job": e.job_id,
                "at": iso(e.at),
                "age": round(now - e.at),
            }
            for account_id, e in (await store.last_errors()).items()
        }
        return lanes, errors

    async def status(self) -> dict[str, Any]:
        counts = await self._store.counts()
        tokens = {t.account_id: t for t in await self._store.all_tokens()}
        refreshes = await self._store.refresh_counts()
        now = self._clock.now()
        live = self._live()
        lanes, errors = await self._lanes_and_errors(now)
        accounts = []
        totals: dict[str, int] = {}
        for acct in self._config.accounts:
            shard_stats = live.get("shards", {}).get(acct.id, {})
            token = tokens.get(acct.id)
            paused = shard_stats.get("paused", False)
            accounts.append(
                {
                    "id": acct.id,
                    "state": account_state(
                        enabled=acct.enabled,
                        paused=paused,
                        token_state=token.state if token else None,
                    ),
                    "display_name": acct.display_name,
                    "enabled": acct.enabled,
                    "region": acct.region,
                    "tags": list(acct.tags),
                    "token": _token_json(token, now) | {"refreshes": refreshes.get(acct.id, {})},
                    "current_job": shard_stats.get("current_job"),
                    "paused": paused,
                    "breaker": shard_stats.get("breaker"),
                    "breaker_retry_at": iso(shard_stats.get("breaker_retry_at")),
                    "cap": shard_stats.get("cap"),
                    "queues": lanes.get(acct.id, {}),
                    "jobs": counts.get(acct.id, {}),
                    "last_error": errors.get(acct.id),
                }
            )
        for acct_counts in counts.values():
            for state, n in acct_counts.items():
                totals[state] = totals.get(state, 0) + n
        unknown = sorted(set(counts) - {a.id for a in self._config.accounts} - {""})
        retired: dict[str, int] = dict(live.get("retired") or {})
        for account_id in sorted(set(retired) | set(unknown)):
            if self._config.account(account_id) is not None:
                continue  # disabled, not removed: listed above
            token = tokens.get(account_id)
            # Removed from the file by a reload: its jobs stay in the store, and are shown.
            accounts.append(
                {
                    "id": account_id,
                    "state": "retired",
                    "token": _token_json(token, now),
                    "breaker": None,
                    "cap": None,
                    "queues": lanes.get(account_id, {}),
                    "jobs": counts.get(account_id, {}),
                    "last_error": errors.get(account_id),
                }
            )
        attention = (
            [
                {
                    "job": j.id,
                    "account": j.account_id,
                    "state": j.state.value,
                    "code": j.error_code,
                    "since": iso(j.updated_at),
                }
                for state in (JobState.UNCERTAIN, JobState.REVIEW)
                for j in await self._store.list_jobs(state=state.value, limit=20)
            ]
            + [
                {
                    "job": j.id,
                    "account": j.account_id,
                    "state": "stuck",
                    "code": f"processing since {iso(j.processing_since)}",
                    "since": iso(j.stuck_at),
                }
                for j in await self._store.stuck_posts()
            ]
            + [
                {
                    "account": t.account_id,
                    "state": t.state,
                    "code": t.last_error,
                    "since": iso(t.updated_at),
                }
                for t in tokens.values()
                if t.state in ("needs_reauth", "exhausted") or t.last_error == "refresh_lost"
            ]
        )
        unknown_codes = [
            {"code": u.code, "count": u.count, "last_seen": iso(u.last_seen), "job": u.last_job}
            for u in await self._store.unknown_codes()
        ]
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
            "accounts": accounts,
            "unconfigured_accounts_with_jobs": unknown,
            "retired": retired,
            "needs_attention": attention,
            "alerts": [
                {**a, "at": iso(a.get("at")), "since": iso(a.get("since"))}
                for a in live.get("alerts", [])
            ],
            "unknown_codes": unknown_codes,
            "totals": totals,
            "unassigned_pool_jobs": sum(counts.get("", {}).values()),
            "open": sum(n for s, n in totals.items() if JobState(s) not in TERMINAL),
        }
