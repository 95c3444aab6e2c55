"""Jobs as values: the life cycle, the pure decisions about one job, and its identity.

    queued ──► dispatching ──► uploading ──► processing ──► published
       ▲            │  │            │             │
       │            │  └────────────┴─────────────┴──► dead        (dead-letter queue)
       └────────────┘ (crash before the init was sent: nothing reached TikTok)
                    └──► uncertain   (the init was sent and no answer came: a human decides)

Side states: ``review`` (a human must decide), ``cancelled``, ``retry_wait``. The terminal
states are ``published``, ``dead`` and ``cancelled``; ``uncertain`` and ``review`` wait for
a human and are never left automatically.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RETRY_WAIT = "retry_wait"
    DISPATCHING = "dispatching"
    UPLOADING = "uploading"
    PROCESSING = "processing"
    PUBLISHED = "published"
    DEAD = "dead"
    REVIEW = "review"
    UNCERTAIN = "uncertain"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.PUBLISHED, JobState.DEAD, JobState.CANCELLED})
WAITING_FOR_HUMAN = frozenset({JobState.UNCERTAIN, JobState.REVIEW})
# States in which the shard owns the job and may be talking to TikTok about it.
IN_FLIGHT = frozenset({JobState.DISPATCHING, JobState.UPLOADING})


class Mode(StrEnum):
    DIRECT = "direct"  # Direct Post: published by the API (scope video.publish)
    INBOX = "inbox"  # upload to the creator's inbox as a draft (scope video.upload)


class Source(StrEnum):
    FILE_UPLOAD = "FILE_UPLOAD"
    PULL_FROM_URL = "PULL_FROM_URL"


PRIVACY_LEVELS = ("PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "FOLLOWER_OF_CREATOR", "SELF_ONLY")
SCOPE_FOR_MODE = {Mode.DIRECT: "video.publish", Mode.INBOX: "video.upload"}
MAX_CAPTION_UTF16 = 2200


# When to ask TikTok about a post it is processing: soon after the upload, when short videos
# are usually done, then at a steady interval (seconds after processing began).
EARLY_POLLS = (10.0, 30.0, 60.0, 120.0)
MIN_POLL_GAP = 5.0


def entering_processing(now: float) -> dict[str, Any]:
    """The fields a job gets when TikTok has every byte (or has started a pull)."""
    return {
        "processing_since": now,
        "polls": 0,
        "stuck_at": None,
        "next_poll_at": now + EARLY_POLLS[0],
    }


def next_poll_at(*, since: float, polls: int, now: float, steady: float) -> float:
    """The time of poll number ``polls + 1`` (``polls`` have been made so far)."""
    if polls < len(EARLY_POLLS):
        planned = since + EARLY_POLLS[polls]
    else:
        planned = since + EARLY_POLLS[-1] + steady * (polls - len(EARLY_POLLS) + 1)
    # A late poll (budget, restart) must not be followed by a burst of catch-up polls.
    return max(planned, now + MIN_POLL_GAP)


def new_job_id() -> str:
    return "j_" + secrets.token_hex(6)


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """One post, as stored. Built from a row at the storage boundary."""

    id: str
    idempotency_key: str
    account_id: str
    mode: Mode
    source: Source
    video_path: str | None
    video_url: str | None
    video_size: int | None
    content_sha256: str
    caption: str
    privacy_level: str | None
    options: dict[str, Any] = field(default_factory=dict)
    lane: str = "new"
    # A pool spec ("pool:tag@US") when the router picks the account; None when pinned.
    # Invariant: account_id is "" only for a pool job no account could take yet.
    pool: str | None = None
    state: JobState
    not_before: float
    attempt_count: int = 0
    # Invariant: a job in `uploading` or `processing` always has a publish_id.
    publish_id: str | None = None
    upload_url: str | None = None
    upload_expires_at: float | None = None
    chunk_size: int | None = None
    chunk_count: int | None = None
    uploaded_bytes: int = 0
    # Set, durably, right before the init request leaves: from then on a post may exist.
    init_sent_at: float | None = None
    next_poll_at: float | None = None
    # Invariant: a job in `processing` has processing_since (when TikTok got every byte).
    processing_since: float | None = None
    polls: int = 0
    stuck_at: float | None = None
    post_ids: tuple[str, ...] = ()
    post_url: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkPlan:
    chunk_size: int
    chunk_count: int
    video_size: int

    def chunk_range(self, index: int) -> tuple[int, int]:
        """First and last byte (inclusive) of chunk ``index``; the last chunk takes the rest."""
        first = index * self.chunk_size
        last = self.video_size - 1 if index == self.chunk_count - 1 else first + self.chunk_size - 1
        return first, last


# TikTok's chunk rules say "MB" without saying which; this keeps both readings satisfied
# (shared/TIKTOK_API.md §5.3, pitfall 8): single chunk up to 64,000,000 bytes, otherwise
# chunks between 5 MiB and 64,000,000 bytes, count = floor(size / chunk), at most 1000.
SINGLE_CHUNK_MAX = 64_000_000
MIN_CHUNK = 5 * 1024 * 1024
MAX_CHUNK = 64_000_000
MAX_CHUNKS = 1000


def plan_chunks(video_size: int, preferred_chunk: int) -> ChunkPlan:
    if video_size <= 0:
        raise ValueError("video is empty")
    if video_size <= SINGLE_CHUNK_MAX:
        return ChunkPlan(chunk_size=video_size, chunk_count=1, video_size=video_size)
    chunk = min(max(preferred_chunk, MIN_CHUNK), MAX_CHUNK)
    chunk = max(chunk, -(-video_size // MAX_CHUNKS))
    # At least two chunks: a one-chunk plan must have chunk_size == video_size, and a file
    # this large cannot be one chunk.
    chunk = min(chunk, video_size // 2)
    count = video_size // chunk
    return ChunkPlan(chunk_size=chunk, chunk_count=count, video_size=video_size)


def chunk_index_at(plan: ChunkPlan, offset: int) -> int:
    """The chunk that starts at byte ``offset`` (offsets come from TikTok's progress header)."""
    index = offset // plan.chunk_size
    if index >= plan.chunk_count:
        raise ValueError(f"offset {offset} is not the start of a chunk")
    return index


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def derive_idempotency_key(
    *, target: str, content_sha256: str, caption: str, not_before: float | None
) -> str:
    """The key of a job that was given none: same target, asset, caption and time = same post."""
    material = json.dumps(
        [target, content_sha256, caption, None if not_before is None else round(not_before, 3)],
        ensure_ascii=False,
    )
    return "auto:" + hashlib.sha256(material.encode()).hexdigest()


def payload_fingerprint(payload: dict[str, Any]) -> str:
    """A stable hash of what a submission asks for, to tell a replay from a conflict."""
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
