"""TikTok webhooks: an optional shortcut to news about a post, never the only source of it.

TikTok signs each delivery with ``TikTok-Signature: t=<unix time>,s=<hex>``, the HMAC-SHA256
of ``"<t>.<raw body>"`` keyed with the app's client secret (shared/TIKTOK_API.md §1.10).
Deliveries come at least once and may come late, twice or never, so a valid delivery only
makes the poller ask TikTok about that post now: the status answer, not the event, moves the
job. Polling and the reconciliation sweep stay the fallback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .clock import ClockLike
from .httpd import Request, Response
from .jobs import JobState
from .logs import fields
from .store import Store

log = logging.getLogger(__name__)

PUBLISH_EVENTS = frozenset(
    {
        "post.publish.failed",
        "post.publish.complete",
        "post.publish.inbox_delivered",
        "post.publish.publicly_available",
        "post.publish.no_longer_publicaly_available",
    }
)


class WebhookRejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookEvent:
    event: str
    publish_id: str | None
    detail: dict[str, Any]


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The header value TikTok would send for ``body`` (used by tests and the sandbox's peers)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},s={digest.hexdigest()}"


def verify(header: str | None, body: bytes, secret: str, *, now: float, tolerance: float) -> None:
    if not header:
        raise WebhookRejected(401, "unsigned", "no TikTok-Signature header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    timestamp, signature = parts.get("t", ""), parts.get("s", "")
    if not timestamp.isdigit() or not signature:
        raise WebhookRejected(401, "bad_signature", "malformed TikTok-Signature header")
    expected = sign(body, secret, int(timestamp)).split("s=", 1)[1]
    if not hmac.compare_digest(expected, signature.lower()):
        raise WebhookRejected(401, "bad_signature", "the signature does not match")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookRejected(401, "stale_signature", "the signature's timestamp is too old")


def parse(body: bytes) -> WebhookEvent:
    try:
        payload = json.loads(body)
    except ValueError:
        raise WebhookRejected(400, "invalid_json", "the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
        raise WebhookRejected(400, "invalid_event", "no event name")
    content = payload.get("content")
    if isinstance(content, str):  # TikTok sends the content as a JSON string
        try:
            content = json.loads(content)
        except ValueError:
            content = {}
    content = content if isinstance(content, dict) else {}
    publish_id = content.get("publish_id")
    return WebhookEvent(
        event=payload["event"],
        publish_id=publish_id if isinstance(publish_id, str) else None,
        detail={k: v for k, v in content.items() if k in ("reason", "publish_type", "post_id")},
    )


class WebhookReceiver:
    def __init__(
        self,
        *,
        store: Store,
        clock: ClockLike,
        secret: Callable[[], str],
        path: str,
        tolerance: float,
        poll_now: Callable[[], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._secret = secret
        self._path = path
        self._tolerance = tolerance
        self._poll_now = poll_now

    async def handle(self, request: Request) -> Response:
        if request.path != self._path or request.method != "POST":
            return Response.error(404, "not_found", "no such endpoint")
        try:
            verify(
                request.headers.get("tiktok-signature"),
                request.body,
                self._secret(),
                now=self._clock.now(),
                tolerance=self._tolerance,
            )
            event = parse(request.body)
        except WebhookRejected as exc:
            log.warning(
                "refused a webhook delivery: %s",
                exc,
                extra=fields("webhook.refused", code=exc.code),
            )
            return Response.error(exc.status, exc.code, str(exc))
        await self._accept(event, hashlib.sha256(request.body).hexdigest())
        # Any valid delivery is acknowledged, even one about a post we do not know, so that
        # TikTok stops redelivering it.
        return Response.json(200, {"ok": True})

    async def _accept(self, event: WebhookEvent, key: str) -> None:
        now = self._clock.now()
        if not await self._store.first_delivery(key, event.event, now):
            log.info(
                "duplicate webhook delivery",
                extra=fields("webhook.duplicate", event=event.event, publish_id=event.publish_id),
            )
            return
        if event.event not in PUBLISH_EVENTS or event.publish_id is None:
            log.info(
                "webhook %s ignored",
                event.event,
                extra=fields("webhook.ignored", event=event.event),
            )
            return
        job = await self._store.job_by_publish_id(event.publish_id)
        if job is None:
            log.warning(
                "webhook about an unknown publish_id",
                extra=fields("webhook.unknown_publish", publish_id=event.publish_id),
            )
            return
        await self._store.add_event(job.id, now, "webhook.received", {"event": event.event})
        if job.state is JobState.PROCESSING:
            await self._store.checkpoint(job.id, now, next_poll_at=now)
            self._poll_now()
        log.info(
            "webhook %s for %s",
            event.event,
            job.id,
            extra=fields(
                "webhook.received",
                job=job.id,
                account=job.account_id,
                publish_id=event.publish_id,
                event=event.event,
            ),
        )
