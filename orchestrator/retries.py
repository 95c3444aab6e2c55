"""What happens to a job after a failure: retry later, wait for a human, or the dead letters.

``verdict`` is the policy, a pure function of the failure's classification (from the
catalog), the attempts made so far, TikTok's retry hint and the asset's rejection history.
``settle`` applies it: one transition, with the reason in the timeline. Whatever the
verdict, the job ends somewhere a person can see it; nothing is dropped.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from .backoff import decide
from .catalog import UNKNOWN, Classification, ErrorClass, Kind, lookup
from .clock import ClockLike
from .jobs import Job, JobState
from .logs import fields
from .store import Store

log = logging.getLogger(__name__)

# How long a job waits when the account cannot take it now (its daily cap is spent, or its
# inbox is full) and TikTok gave no hint; and how often that may happen before a human looks.
DEFER_SECONDS = 3600.0
MAX_DEFERRALS = 48


def local(code: str) -> Classification:
    """The classification of a failure the daemon itself detected (no TikTok answer)."""
    entries = lookup(code, Kind.LOCAL) or lookup(code)
    return Classification(entry=entries[0] if entries else UNKNOWN, known=bool(entries), code=code)


class JobFailed(Exception):
    """Internal to the workers: this job's current attempt failed; ``settle`` decides the rest.

    ``fresh_start`` says the next try must begin with a new init (the old publish can never
    become a post, e.g. TikTok reported it FAILED); otherwise a retry resumes from the job's
    checkpoint. ``force`` overrides the policy for states only the worker can know, such as
    ``uncertain``.
    """

    def __init__(
        self,
        classification: Classification,
        message: str,
        *,
        hint: float | None = None,
        fresh_start: bool = False,
        force: JobState | None = None,
    ) -> None:
        super().__init__(message)
        self.classification = classification
        self.message = message
        self.hint = hint
        self.fresh_start = fresh_start
        self.force = force


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    to: JobState
    delay: float | None
    reason: str


def verdict(
    classification: Classification,
    *,
    attempt: int,
    hint: float | None,
    rng: random.Random,
    rejections: int = 0,
    force: JobState | None = None,
) -> Verdict:
    entry = classification.entry
    if force is not None:
        return Verdict(to=force, delay=None, reason=entry.message)
    if entry.content_rejection and rejections >= 2:
        return Verdict(
            to=JobState.REVIEW,
            delay=None,
            reason=f"TikTok rejected this video on this account {rejections} times",
        )
    match entry.error_class:
        case ErrorClass.RETRY | ErrorClass.REFRESH:
            decision = decide(entry=entry, attempt=attempt, hint=hint, rng=rng)
            if decision.retry:
                return Verdict(to=JobState.RETRY_WAIT, delay=decision.delay, reason=decision.reason)
            return Verdict(to=JobState.DEAD, delay=None, reason=decision.reason)
        case ErrorClass.REROUTE:
            if attempt >= MAX_DEFERRALS:
                return Verdict(
                    to=JobState.REVIEW,
                    delay=None,
                    reason=f"deferred {attempt} times; the account keeps refusing",
                )
            # The caller knows when the account frees up (its cap window); else wait a while.
            delay = hint if hint is not None else DEFER_SECONDS
            return Verdict(
                to=JobState.RETRY_WAIT,
                delay=delay,
                reason=f"the account cannot take it now; trying again in {delay:.0f} s",
            )
        case ErrorClass.REAUTH | ErrorClass.REVIEW:
            return Verdict(to=JobState.REVIEW, delay=None, reason=entry.message)
        case _:
            return Verdict(to=JobState.DEAD, delay=None, reason=entry.message)


_CLEARED_PUBLISH = {
    "publish_id": None,
    "upload_url": None,
    "upload_expires_at": None,
    "uploaded_bytes": 0,
    "init_sent_at": None,
    "next_poll_at": None,
}


async def settle(
    store: Store, clock: ClockLike, rng: random.Random, job: Job, failure: JobFailed
) -> Job:
    """Apply the policy to a failed job and write the outcome, with its reason, atomically."""
    now = clock.now()
    c = failure.classification
    if not c.known:
        await store.count_unknown_code(c.code, job_id=job.id, now=now)
    rejections = 0
    if c.entry.content_rejection:
        rejections = await store.record_rejection(
            account_id=job.account_id,
            content_sha256=job.content_sha256,
            code=c.code,
            job_id=job.id,
            now=now,
        )
    v = verdict(
        c,
        attempt=job.attempt_count,
        hint=failure.hint,
        rng=rng,
        rejections=rejections,
        force=failure.force,
    )
    changes: dict[str, object] = {
        "error_code": c.code,
        "error_message": failure.message,
    }
    if failure.fresh_start:
        # The publish can never become a post (TikTok failed it, or its upload died): forget
        # it, so a retry or a requeue starts with a new init. The timeline keeps its id.
        changes |= _CLEARED_PUBLISH
    if v.to is JobState.RETRY_WAIT:
        changes |= {"not_before": now + (v.delay or 0.0), "lane": "retry"}
    elif v.to is JobState.DEAD:
        changes["finished_at"] = now
    if v.to is not JobState.RETRY_WAIT:
        changes["next_poll_at"] = None
    job = await store.transition(
        job.id,
        expect=[JobState.DISPATCHING, JobState.UPLOADING, JobState.PROCESSING],
        to=v.to,
        now=now,
        action=f"job.{v.to.value}",
        detail={
            "code": c.code,
            "class": c.entry.error_class.value,
            "known": c.known,
            "reason": v.reason,
            **({"publish_id": job.publish_id} if job.publish_id else {}),
            **({"retry_in": round(v.delay, 3)} if v.delay is not None else {}),
        },
        **changes,
    )
    level = logging.WARNING if v.to is JobState.RETRY_WAIT else logging.ERROR
    log.log(
        level,
        "job %s: %s (%s, %s): %s",
        job.id,
        c.code,
        c.entry.error_class.value,
        v.to.value,
        v.reason,
        extra=fields(
            f"job.{v.to.value}",
            job=job.id,
            account=job.account_id,
            publish_id=job.publish_id,
            code=c.code,
            error_class=c.entry.error_class.value,
        ),
    )
    return job
