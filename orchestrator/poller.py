"""Follows every accepted post to the end: PUBLISH_COMPLETE, FAILED, or still processing.

Separate from the shards so an account's next job does not wait for TikTok's processing of
the previous one. Each post is asked about 10, 30, 60 and 120 s after TikTok got it, then
every ``poll_interval`` (``jobs.next_poll_at``). The schedule lives in the store, so a restart
resumes polling exactly where it was. Status calls share the account's per-token budget with
its shard (30/min, shared/TIKTOK_API.md §3), and polls of one account never run concurrently.

A post still processing after ``stuck_after`` is flagged (an event, a log line, and a line in
status); after ``review_stuck_after`` it goes to a human. Independently of the schedule, the
reconciliation ``sweep`` asks again about every unsettled post of the last 24 h.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import anyio

from .catalog import classify_error, classify_fail_reason
from .clock import ClockLike
from .errors import NeedsReauth, TikTokApiError, TikTokError, TokenError
from .jobs import Job, JobState, Mode, next_poll_at
from .limits import AccountBudgets
from .logs import fields
from .retries import JobFailed, local, settle
from .shard import post_url
from .store import StaleTransition, Store
from .tiktok import PublishStatus, TikTokClient
from .tokens import TokenRegistry

log = logging.getLogger(__name__)

BATCH = 256
SWEEP_WINDOW = 86400.0
CONCURRENCY = 32
# How often (simulated seconds) a post on an account waiting for re-authorization is asked about.
PARKED_POLL = 3600.0
DONE = {Mode.DIRECT: "PUBLISH_COMPLETE", Mode.INBOX: "SEND_TO_USER_INBOX"}


def outcome_of(job: Job, status: PublishStatus) -> JobState | None:
    """The state a status answer moves the job to (DEAD standing for "failed: ask the
    retry policy"), or None while TikTok is still working.

    For an inbox upload, reaching the creator's inbox is the end of our part; the creator
    finishes the post in the app.
    """
    if status.status == "FAILED":
        return JobState.DEAD
    if status.status == "PUBLISH_COMPLETE" or status.status == DONE[job.mode]:
        return JobState.PUBLISHED
    return None


class Poller:
    def __init__(
        self,
        *,
        store: Store,
        client: TikTokClient,
        tokens: TokenRegistry,
        budgets: Callable[[str], AccountBudgets],
        clock: ClockLike,
        interval: float,
        on_requeue: Callable[[str], None],
        stuck_after: float = 600.0,
        review_stuck_after: float = 86400.0,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._tokens = tokens
        self._budgets = budgets
        self._clock = clock
        self.interval = interval
        self.stuck_after = stuck_after
        self.review_stuck_after = review_stuck_after
        self._on_requeue = on_requeue
        self._rng = rng or random.Random()
        self._wakeup = anyio.Event()
        self._limiter = anyio.CapacityLimiter(CONCURRENCY)
        self._account_locks: dict[str, anyio.Lock] = {}

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            self._wakeup = anyio.Event()
            jobs = await self._store.due_polls(self._clock.now(), BATCH)
            if jobs:
                async with anyio.create_task_group() as tg:
                    for job in jobs:
                        tg.start_soon(self._poll_guarded, job)
                continue
            nxt = await self._store.next_poll_time()
            wait = math.inf if nxt is None else max(0.0, nxt - self._clock.now())
            with anyio.move_on_after(None if wait == math.inf else self._clock.real_seconds(wait)):
                await self._wakeup.wait()

    async def _poll_guarded(self, job: Job) -> None:
        lock = self._account_locks.setdefault(job.account_id, anyio.Lock())
        async with self._limiter, lock:
            try:
                await self.poll(job)
            except StaleTransition:
                pass  # moved by someone else (a cancel, or a second poll of the same job)

    async def sweep(self) -> dict[str, int]:
        """Ask TikTok again about every unsettled post of the last 24 h, whatever the schedule
        says: a lost wake-up, a mistaken belief or a bug in the schedule is caught here."""
        now = self._clock.now()
        jobs = await self._store.unsettled_posts(now - SWEEP_WINDOW)
        corrected = 0
        for job in jobs:
            lock = self._account_locks.setdefault(job.account_id, anyio.Lock())
            async with lock:
                current = await self._store.get_job(job.id)
                if current is None or current.state is not JobState.PROCESSING:
                    continue
                try:
                    outcome = await self.poll(current, via="sweep")
                except StaleTransition:
                    continue
            if outcome is not None:
                corrected += 1
        log.info(
            "reconciliation sweep: %d unsettled posts checked, %d settled by the sweep",
            len(jobs),
            corrected,
            extra=fields("sweep.done", checked=len(jobs), settled=corrected),
        )
        return {"checked": len(jobs), "settled": corrected}

    async def poll(self, job: Job, *, via: str = "schedule") -> JobState | None:
        assert job.publish_id
        await self._budgets(job.account_id).acquire("status")
        try:
            token = await self._tokens.access_token(job.account_id)
            try:
                status = await self._client.fetch_status(token, job.publish_id)
            except TikTokApiError as exc:
                if exc.code != "access_token_invalid":
                    raise
                await self._tokens.refresh(job.account_id, stale=token)
                token = await self._tokens.access_token(job.account_id)
                status = await self._client.fetch_status(token, job.publish_id)
        except (TikTokError, TokenError) as exc:
            await self._poll_failed(job, exc)
            return None
        now = self._clock.now()
        to = outcome_of(job, status)
        if to is None:
            return await self._still_processing(job, now)
        if to is JobState.PUBLISHED:
            await self._store.transition(
                job.id,
                expect=[JobState.PROCESSING],
                to=to,
                now=now,
                action="job.published",
                detail={"status": status.status, "post_ids": list(status.post_ids), "via": via},
                post_ids=status.post_ids,
                post_url=post_url(job.options.get("creator_username"), status.post_ids),
                finished_at=now,
                next_poll_at=None,
            )
            log.info(
                "published %s",
                job.id,
                extra=fields(
                    "job.published", job=job.id, account=job.account_id, publish_id=job.publish_id
                ),
            )
        else:
            reason = status.fail_reason or "unknown"
            # A FAILED publish can never become a post, so a retry starts with a new init.
            failure = JobFailed(
                classify_fail_reason(reason),
                f"TikTok could not publish the video: {reason}",
                fresh_start=True,
            )
            job = await settle(self._store, self._clock, self._rng, job, failure)
            if job.state is JobState.RETRY_WAIT:
                self._on_requeue(job.account_id)
            return job.state
        return to

    async def _still_processing(self, job: Job, now: float) -> JobState | None:
        since = job.processing_since if job.processing_since is not None else job.updated_at
        age = now - since
        if age >= self.review_stuck_after:
            failure = JobFailed(
                local("processing_stuck"),
                f"TikTok has been processing this post for {age / 3600:.1f} h",
            )
            return (await settle(self._store, self._clock, self._rng, job, failure)).state
        changes: dict[str, object] = {
            "polls": job.polls + 1,
            "next_poll_at": next_poll_at(
                since=since, polls=job.polls + 1, now=now, steady=self.interval
            ),
        }
        if age >= self.stuck_after and job.stuck_at is None:
            changes["stuck_at"] = now
            await self._store.add_event(
                job.id, now, "job.stuck", {"processing_for": round(age), "polls": job.polls + 1}
            )
            log.warning(
                "%s has been processing for %d s",
                job.id,
                age,
                extra=fields(
                    "job.stuck", job=job.id, account=job.account_id, publish_id=job.publish_id
                ),
            )
        await self._store.checkpoint(job.id, now, **changes)
        return None

    async def _poll_failed(self, job: Job, exc: TikTokError | TokenError) -> None:
        """A failed status call says nothing about the post: record it and ask again later."""
        now = self._clock.now()
        if isinstance(exc, TikTokError):
            c = classify_error(exc)
            attempt = await self._store.begin_attempt(
                job_id=job.id, account_id=job.account_id, step="status", now=now
            )
            await self._store.end_attempt(
                attempt, now=now, error=exc, error_class=c.entry.error_class.value, known=c.known
            )
        delay = max(self.interval, getattr(exc, "retry_after", None) or 0.0)
        parked = isinstance(exc, NeedsReauth)
        if parked:
            # No token until a person re-authorizes the account (an alert says so already):
            # ask now and then, not every poll interval with a warning each time.
            delay = max(delay, PARKED_POLL)
        await self._store.checkpoint(job.id, now, next_poll_at=now + delay)
        log.log(
            logging.INFO if parked else logging.WARNING,
            "status of %s could not be read: %s",
            job.id,
            exc.message,
            extra=fields(
                "job.poll_parked" if parked else "job.poll_failed",
                job=job.id,
                account=job.account_id,
                publish_id=job.publish_id,
                code=getattr(exc, "code", None),
            ),
        )
