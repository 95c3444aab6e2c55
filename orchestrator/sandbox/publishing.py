"""Publishes: from init through upload and processing to a post, and the ledger of posts.

A publish's state is a function of the clock: processing ends ``processing_seconds`` after
the upload completed (or the pull started), so posts appear even if nobody polls. ``settle``
applies that function to every unfinished publish; status reads and the ledger call it first.

Callers hold the sandbox lock; nothing here does I/O. Upload bytes are never kept: a running
SHA-256 of them is, which is what the ledger needs to spot a video posted twice.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from .config import SandboxConfig
from .rules import (
    DAY,
    INBOX_PENDING_CAP,
    PULL_TIMEOUT,
    UPLOAD_URL_TTL,
    ApiError,
    InitRequest,
)

COMPLETE, INBOX, FAILED = "PUBLISH_COMPLETE", "SEND_TO_USER_INBOX", "FAILED"


@dataclass(kw_only=True, slots=True)
class Publish:
    publish_id: str
    open_id: str
    grant_id: int
    request: InitRequest
    created_at: float
    fail_reason_planned: str | None = None  # a processing_failure fault
    stuck: bool = False  # a stuck fault: processing never ends
    upload_id: str | None = None
    upload_token: str | None = None
    received: int = 0
    sha: Any = None  # hashlib object over the bytes received so far
    busy: bool = False  # Invariant: at most one chunk of an upload is being received
    ready_at: float | None = None  # upload complete / pull start: processing begins
    content_sha256: str | None = None
    final: str | None = None  # COMPLETE, INBOX or FAILED once processing has ended
    fail_reason: str | None = None
    finished_at: float | None = None
    post_id: int | None = None

    @property
    def upload_expires_at(self) -> float:
        return self.created_at + UPLOAD_URL_TTL


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkTicket:
    """A chunk admitted for receiving: where it starts and how long it must be."""

    publish_id: str
    first: int
    length: int


class Publishing:
    def __init__(self, config: SandboxConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self.publishes: dict[str, Publish] = {}
        self.by_upload: dict[str, str] = {}
        self._pending: set[str] = set()
        self._direct_inits: dict[str, deque[float]] = defaultdict(deque)
        self._inbox_inits: dict[str, deque[float]] = defaultdict(deque)
        # Append-only, unlike the windows above, so the ledger can audit the cap afterwards.
        self._direct_history: dict[str, list[float]] = defaultdict(list)
        self.cap_rejections = 0

    # -- init --------------------------------------------------------------------------------

    def check_caps(self, request: InitRequest, open_id: str, cap: int, now: float) -> None:
        """403 when this creator's rolling 24 h allowance is used up (§3)."""
        if request.mode == "direct":
            inits = _window(self._direct_inits[open_id], now, DAY)
            if len(inits) >= cap:
                self.cap_rejections += 1
                raise ApiError(
                    "spam_risk_too_many_posts",
                    "The daily post cap for this creator has been reached.",
                )
        elif len(_window(self._inbox_inits[open_id], now, DAY)) >= INBOX_PENDING_CAP:
            raise ApiError(
                "spam_risk_too_many_pending_share",
                f"The creator has {INBOX_PENDING_CAP} pending shares in the last 24 hours.",
            )

    def at_daily_cap(self, open_id: str, cap: int, now: float) -> bool:
        return len(_window(self._direct_inits[open_id], now, DAY)) >= cap

    def create(self, request: InitRequest, *, open_id: str, grant_id: int, now: float) -> Publish:
        """An accepted init: the publish exists from here on, whatever happens to the answer."""
        prefix = {"video": "v", "photo": "p"}[request.media]
        mode = "pub" if request.mode == "direct" else "inbox"
        kind = "file" if request.source == "FILE_UPLOAD" else "url"
        version = "v2-1" if (mode, kind) == ("pub", "file") else "v2"
        while True:
            publish_id = f"{prefix}_{mode}_{kind}~{version}.{self._rng.randrange(10**18, 10**19)}"
            if publish_id not in self.publishes:
                break
        publish = Publish(
            publish_id=publish_id,
            open_id=open_id,
            grant_id=grant_id,
            request=request,
            created_at=now,
        )
        if request.plan is not None:
            publish.upload_id = str(self._rng.randrange(10**18, 10**19))
            publish.upload_token = f"{self._rng.getrandbits(128):032x}"
            publish.sha = hashlib.sha256()
            self.by_upload[publish.upload_id] = publish_id
        else:
            publish.ready_at = now  # the pull starts at once
            source = request.video_url or "\n".join(request.photo_images)
            publish.content_sha256 = hashlib.sha256(source.encode()).hexdigest()
        if request.mode == "direct":
            self._direct_inits[open_id].append(now)
            self._direct_history[open_id].append(now)
        else:
            self._inbox_inits[open_id].append(now)
        self.publishes[publish_id] = publish
        self._pending.add(publish_id)
        return publish

    def upload_url(self, publish: Publish, base_url: str) -> str:
        return (
            f"{base_url}/upload/?upload_id={publish.upload_id}&upload_token={publish.upload_token}"
        )

    # -- the upload PUT (§1.8) ---------------------------------------------------------------

    def find_upload(self, upload_id: str | None, upload_token: str | None) -> Publish | None:
        publish = self.publishes.get(self.by_upload.get(upload_id or "", ""))
        if publish is None or publish.upload_token != upload_token:
            return None
        return publish

    def admit_chunk(self, publish: Publish, first: int, last: int, total: int) -> ChunkTicket:
        """Checks a chunk's range against the plan and the progress; marks the upload busy.

        ``ApiError.status`` is 416 when the range is not where the upload stands, 400 when
        it cannot be right for this plan at any position.
        """
        plan = publish.request.plan
        assert plan is not None
        if total != plan.video_size:
            raise ApiError(
                "invalid_params", f"total {total} is not video_size {plan.video_size}", 400
            )
        if publish.busy or first != publish.received:
            raise ApiError(
                "range_not_satisfiable",
                f"expected a chunk starting at byte {publish.received}",
                416,
            )
        index = first // plan.chunk_size
        length = last - first + 1
        if length != plan.chunk_length(index):
            raise ApiError(
                "invalid_params",
                f"chunk {index} must be {plan.chunk_length(index)} bytes, not {length}",
                400,
            )
        publish.busy = True
        return ChunkTicket(publish_id=publish.publish_id, first=first, length=length)

    def commit_chunk(self, ticket: ChunkTicket, sha: Any, now: float) -> Publish:
        publish = self.publishes[ticket.publish_id]
        publish.busy = False
        publish.received += ticket.length
        publish.sha = sha
        plan = publish.request.plan
        assert plan is not None
        if publish.received == plan.video_size:
            publish.content_sha256 = sha.hexdigest()
            publish.ready_at = now
        return publish

    def abort_chunk(self, ticket: ChunkTicket) -> None:
        self.publishes[ticket.publish_id].busy = False

    # -- processing --------------------------------------------------------------------------

    def settle(self, now: float) -> None:
        """Ends every publish whose processing is over by ``now``, in order of ending."""
        due: list[tuple[float, Publish, str, str | None]] = []
        for publish_id in self._pending:
            publish = self.publishes[publish_id]
            if publish.ready_at is None:
                continue  # still uploading; TikTok waits, so does the sandbox
            if publish.stuck:
                if publish.request.source == "PULL_FROM_URL":
                    at = publish.ready_at + PULL_TIMEOUT  # the doc's 1 h download timeout
                    media = publish.request.media
                    if now >= at:
                        due.append((at, publish, FAILED, f"{media}_pull_failed"))
                continue
            at = publish.ready_at + self._config.processing_seconds
            if now < at:
                continue
            if publish.fail_reason_planned is not None:
                due.append((at, publish, FAILED, publish.fail_reason_planned))
            else:
                due.append(
                    (at, publish, COMPLETE if publish.request.mode == "direct" else INBOX, None)
                )
        for at, publish, final, reason in sorted(due, key=lambda d: (d[0], d[1].publish_id)):
            self.finish(publish, final, at, reason)

    def finish(self, publish: Publish, final: str, at: float, reason: str | None = None) -> None:
        publish.final, publish.finished_at, publish.fail_reason = final, at, reason
        if final == COMPLETE:
            publish.post_id = self._rng.randrange(7 * 10**18, 76 * 10**17)
        self._pending.discard(publish.publish_id)

    def fail_grant(self, grant_id: int, now: float) -> None:
        """The user revoked access: whatever was still in flight ends ``auth_removed``."""
        self.settle(now)
        for publish_id in sorted(self._pending):
            publish = self.publishes[publish_id]
            if publish.grant_id == grant_id:
                self.finish(publish, FAILED, now, "auth_removed")

    def status_data(self, publish: Publish) -> dict[str, Any]:
        """The ``data`` of a status fetch (§1.10); call ``settle`` first."""
        request = publish.request
        if publish.final is None:
            status = (
                "PROCESSING_UPLOAD" if request.source == "FILE_UPLOAD" else "PROCESSING_DOWNLOAD"
            )
        else:
            status = publish.final
        data: dict[str, Any] = {"status": status}
        if status == FAILED:
            data["fail_reason"] = publish.fail_reason
        public = request.privacy_level == "PUBLIC_TO_EVERYONE"
        data["publicaly_available_post_id"] = (
            [publish.post_id] if status == COMPLETE and public and publish.post_id else []
        )
        if request.source == "FILE_UPLOAD":
            data["uploaded_bytes"] = publish.received
        else:
            done = publish.final in (COMPLETE, INBOX)
            data["downloaded_bytes"] = _pulled_size(publish.content_sha256) if done else 0
        return data

    # -- the ledger --------------------------------------------------------------------------

    def ledger(self, caps: dict[str, int]) -> dict[str, Any]:
        """Posts, failures and duplicates; call ``settle`` first. ``caps`` per open_id."""
        ended = sorted(
            (p for p in self.publishes.values() if p.final is not None),
            key=lambda p: (p.finished_at or 0.0, p.publish_id),
        )
        posts = [_post_row(p) for p in ended if p.final != FAILED]
        failed = [
            {"publish_id": p.publish_id, "open_id": p.open_id, "fail_reason": p.fail_reason}
            for p in ended
            if p.final == FAILED
        ]
        groups: dict[tuple[str, str | None, str], list[dict[str, Any]]] = defaultdict(list)
        for post in posts:
            groups[(post["open_id"], post["content_sha256"], post["title"])].append(post)
        return {
            "posts": posts,
            "failed": failed,
            "duplicates": [group for group in groups.values() if len(group) > 1],
            "cap_exceeded": self._cap_exceeded(caps),
        }

    def _cap_exceeded(self, caps: dict[str, int]) -> int:
        """Direct inits accepted beyond the cap in any 24 h window; 0 by construction."""
        excess = 0
        for open_id, times in self._direct_history.items():
            window: deque[float] = deque()
            for at in times:
                window.append(at)
                _window(window, at, DAY)
                if len(window) > caps.get(open_id, self._config.daily_cap):
                    excess += 1
        return excess


def _window(times: deque[float], now: float, span: float) -> deque[float]:
    while times and times[0] <= now - span:
        times.popleft()
    return times


def _pulled_size(content_sha256: str | None) -> int:
    """A stable, plausible size for a pulled video (the sandbox never downloads it)."""
    return 1_000_000 + int((content_sha256 or "0")[:8], 16) % 50_000_000


def _post_row(p: Publish) -> dict[str, Any]:
    return {
        "publish_id": p.publish_id,
        "open_id": p.open_id,
        "mode": p.request.mode,
        "source": p.request.source,
        "content_sha256": p.content_sha256,
        "video_url": p.request.video_url,
        "title": p.request.title,
        "privacy_level": p.request.privacy_level,
        "post_id": p.post_id,
        "published_at": p.finished_at,
    }
