"""One account's worker: takes its next due job and carries it to TikTok, one job at a time.

    creator_info ─► (intent: init_sent_at) ─► init ─► (publish_id) ─► chunked upload ─► poller

Every call to TikTok is preceded by a durable write of what is about to happen and followed
by a durable write of what came back, so a crash at any instant leaves the store saying
exactly how far the job got. The one window that cannot be closed is between TikTok acting
on an init and our hearing the answer; a job caught in it becomes ``uncertain`` and is never
re-posted automatically (see ``Store.recover``).

Once the upload is complete (or a pull has started) the post belongs to the poller and the
shard moves on to the account's next job.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from .caps import WINDOW, CapState, effective_limit, headroom, learn_from_rejection, next_slot, used
from .catalog import Classification, classify_error
from .clock import ClockLike
from .config import AccountSettings
from .errors import (
    NeedsReauth,
    TikTokApiError,
    TikTokError,
    TikTokTransportError,
    TokenError,
)
from .health import AccountBreaker
from .jobs import (
    SCOPE_FOR_MODE,
    ChunkPlan,
    Job,
    JobState,
    Mode,
    Source,
    chunk_index_at,
    entering_processing,
    plan_chunks,
)
from .limits import AccountBudgets, AppGuard
from .logs import fields
from .retries import JobFailed, local, settle
from .store import AttemptEnd, StaleTransition, Store
from .tiktok import CreatorInfo, TikTokClient
from .tokens import TokenRegistry

log = logging.getLogger(__name__)

UPLOAD_URL_LIFETIME = 3600.0  # shared/TIKTOK_API.md §1.5
CHUNK_TRIES = 5
TOKEN_WAIT = 300.0  # how long a job waits before trying again when its account has no token
CONTENT_TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm"}


def content_type_for(path: str) -> str:
    return CONTENT_TYPES.get(Path(path).suffix.lower(), "video/mp4")


def read_chunk(path: str, first: int, last: int) -> bytes:
    """Bytes ``first``..``last`` of the video: open, seek, read and close in one worker-thread
    hop (``anyio.open_file`` takes one hop for each of the four)."""
    with open(path, "rb") as video:
        video.seek(first)
        return video.read(last - first + 1)


def post_url(username: str | None, post_ids: tuple[str, ...]) -> str | None:
    if username and post_ids:
        return f"https://www.tiktok.com/@{username}/video/{post_ids[0]}"
    return None


# Backoff jitter only: one generator for every shard (a Random is 2.5 KB of state, 25 MB
# over 10,000 accounts), which is safe as every shard runs on the one event loop thread.
_SHARED_RNG = random.Random()

# The job ended without saying anything about the account (no token, moved by an operator).
_NO_VERDICT = object()


class Shard:
    def __init__(
        self,
        account: AccountSettings,
        *,
        store: Store,
        client: TikTokClient,
        tokens: TokenRegistry,
        budgets: AccountBudgets,
        clock: ClockLike,
        chunk_size: int,
        on_processing: Callable[[], None],
        breaker: AccountBreaker,
        guard: AppGuard | None = None,
        on_verdict: Callable[[str, bool], None] = lambda account, failed: None,
        rng: random.Random | None = None,
    ) -> None:
        self.account = account
        self._store = store
        self._client = client
        self._tokens = tokens
        self._budgets = budgets
        self._clock = clock
        self._chunk_size = chunk_size
        self._on_processing = on_processing
        self.breaker = breaker
        self._guard = guard or AppGuard()
        self._on_verdict = on_verdict
        self._saved_breaker = breaker.snapshot()
        self._rng = rng or _SHARED_RNG
        self._wakeup = anyio.Event()
        # The account's state and recent inits, as last read from the store. The shard is
        # their only writer while it runs, so it keeps them up to date itself and reads them
        # again only after a wake (an operator's pause or resume, a reload, a submission),
        # not before every job: two queries a job were a tenth of the daemon's CPU per post.
        self._stale = True
        self.current_job: str | None = None
        self.paused = False
        # Set by stop(): finish the job in hand, take no other (a drain, a removed account).
        self.stopping = False
        self.stopped = anyio.Event()
        self._cap = CapState(limit=account.daily_cap)
        # Times of the direct-post inits TikTok accepted in the last 24 h (the daily cap).
        self._inits: list[float] = []

    def wake(self) -> None:
        self._stale = True
        self._wakeup.set()

    def _halted(self) -> bool:
        return self.stopping

    def stop(self) -> None:
        """Take no new job; ``run`` returns once the job in hand has gone as far as it goes."""
        self.stopping = True
        self.wake()

    def headroom(self, now: float) -> int:
        return headroom(self._cap, self._inits, now)

    def statistics(self) -> dict[str, object]:
        now = self._clock.now()
        return {
            "paused": self.paused,
            "breaker": self.breaker.state.value,
            "breaker_retry_at": self.breaker.retry_at(),
            "current_job": self.current_job,
            "cap": {
                "used": used(self._inits, now),
                "limit": effective_limit(self._cap),
                "configured": self._cap.limit,
                "learned": self._cap.learned_limit,
                "blocked_until": self._cap.blocked_until,
                "next_slot": next_slot(self._cap, self._inits, now),
            },
        }

    async def _load_state(self) -> None:
        self._stale = False
        now = self._clock.now()
        state, self._inits = await self._store.account_outlook(self.account.id, now - WINDOW)
        self.paused = state.paused
        self._cap = CapState(
            limit=self.account.daily_cap,
            learned_limit=state.learned_cap,
            blocked_until=state.blocked_until,
        )

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.stopped.set()

    async def _run(self) -> None:
        while not self.stopping:
            self._wakeup = anyio.Event()
            # An operator's pause or resume is a write to the store, then a wake.
            if self._stale:
                await self._load_state()
            if self.paused:
                await self._wakeup.wait()
                continue
            now = self._clock.now()
            job = await self._store.next_job(self.account.id, now)
            if self._halted():  # stop() came while we looked: take no new job
                break
            if job is None:
                await self._idle()
                continue
            if self._needs_direct_init(job) and (until := self._direct_held_until(now)):
                # The cap and the app pause hold Direct Post inits only: an inbox upload or a
                # resumed publish queued behind this job goes now, not when the cap frees.
                job = await self._store.next_job(self.account.id, now, direct_inits=False)
                if job is None:
                    other = await self._store.next_due_time(self.account.id, direct_inits=False)
                    await self._idle(until=until if other is None else min(until, other))
                    continue
            if not self.breaker.admit():
                # Open: the account rests until its probe is due (exactly one job then).
                await self._idle(until=self.breaker.retry_at())
                continue
            self.current_job = job.id
            verdict: Classification | object | None = _NO_VERDICT
            try:
                verdict = await self._work(job)
            finally:
                self.current_job = None
                if verdict is _NO_VERDICT:
                    self.breaker.released()
                else:
                    self.breaker.record(verdict)  # type: ignore[arg-type]
                    failed = isinstance(verdict, Classification) and (
                        verdict.entry.counts_against_account
                    )
                    self._on_verdict(self.account.id, failed)
                with anyio.CancelScope(shield=True):
                    await self._save_breaker()

    def _direct_held_until(self, now: float) -> float | None:
        """Until when no Direct Post init may start (None: one may start now)."""
        until = self._guard.blocked_until(now)  # the whole app is paused by TikTok
        if until is None and headroom(self._cap, self._inits, now) == 0:
            # Checked before dispatch: the daily cap is never discovered by exceeding it.
            until = next_slot(self._cap, self._inits, now)
        return until

    @staticmethod
    def _needs_direct_init(job: Job) -> bool:
        fresh = job.state is JobState.QUEUED or (
            job.state is JobState.RETRY_WAIT and job.publish_id is None
        )
        return fresh and job.mode is Mode.DIRECT

    async def _idle(self, until: float | None = None) -> None:
        due = until if until is not None else await self._store.next_due_time(self.account.id)
        wait = math.inf if due is None else max(0.0, due - self._clock.now())
        with anyio.move_on_after(self._clock.real_seconds(wait) if wait != math.inf else None):
            await self._wakeup.wait()

    async def _save_breaker(self) -> None:
        snapshot = self.breaker.snapshot()
        if snapshot == self._saved_breaker:
            return
        await self._store.update_account_state(
            self.account.id,
            self._clock.now(),
            breaker_state=snapshot.state.value,
            breaker_failures=snapshot.fail_count,
            breaker_opened_at=snapshot.opened_at,
        )
        self._saved_breaker = snapshot

    async def _work(self, job: Job) -> Classification | object | None:
        """Carries one job as far as it goes; returns the verdict for the account's breaker:
        None (TikTok took it), the failure's classification, or _NO_VERDICT."""
        try:
            if job.state is JobState.RETRY_WAIT and job.publish_id:
                job = await self._resume(job)
            if job.state is JobState.UPLOADING:
                await self._upload(job)
            elif job.state is not JobState.PROCESSING:
                await self._dispatch(job)
            return None
        except JobFailed as failure:
            if failure.classification.code == "spam_risk_too_many_posts":
                failure.hint = await self._cap_spent()
            elif failure.classification.code == "rate_limit_exceeded":
                now = self._clock.now()
                until = self._guard.rate_limited(self.account.id, now, failure.hint)
                if until is not None:
                    log.error(
                        "429s on several accounts at once: every account pauses until %s",
                        until,
                        extra=fields("app.paused", account=self.account.id, until=until),
                    )
            elif failure.classification.code == "reached_active_user_cap":
                now = self._clock.now()
                until = self._guard.trip(now, reason="reached_active_user_cap", hint=failure.hint)
                failure.hint = until - now
                log.error(
                    "TikTok says the app reached its daily cap of active creators; every "
                    "account pauses until %s",
                    until,
                    extra=fields("app.paused", account=self.account.id, until=until),
                )
            current = await self._store.get_job(job.id)
            if current is not None:
                await settle(self._store, self._clock, self._rng, current, failure)
            return failure.classification
        except NeedsReauth:
            await self._wait_for_token(job.id, "the account needs to be authorized again")
        except TokenError as exc:
            await self._wait_for_token(job.id, exc.message)
        except StaleTransition as exc:
            # Someone else (an operator's cancel) moved the job first; theirs is the last word.
            log.info(
                "job %s moved under the shard: %s",
                job.id,
                exc.message,
                extra=fields("job.moved_elsewhere", job=job.id, account=job.account_id),
            )
        return _NO_VERDICT

    async def _cap_spent(self) -> float:
        """TikTok says the creator's daily cap is spent: learn it; returns the wait."""
        now = self._clock.now()
        self._cap = learn_from_rejection(self._cap, self._inits, now)
        await self._store.update_account_state(
            self.account.id,
            now,
            learned_cap=self._cap.learned_limit,
            blocked_until=self._cap.blocked_until,
        )
        log.warning(
            "%s: TikTok says the daily cap is spent (%d posts counted); waiting until %s",
            self.account.id,
            used(self._inits, now),
            self._cap.blocked_until,
            extra=fields(
                "account.cap_spent",
                account=self.account.id,
                learned_cap=self._cap.learned_limit,
            ),
        )
        return max(0.0, next_slot(self._cap, self._inits, now) - now)

    async def _resume(self, job: Job) -> Job:
        """A retry of a job TikTok already has: go on from the checkpoint, never re-init."""
        uploaded = job.uploaded_bytes >= (job.video_size or 0) or job.upload_url is None
        to = JobState.PROCESSING if uploaded else JobState.UPLOADING
        job = await self._store.transition(
            job.id,
            expect=[JobState.RETRY_WAIT],
            to=to,
            now=self._clock.now(),
            action="job.resumed",
            detail={"publish_id": job.publish_id},
            attempt_count=job.attempt_count + 1,
            **(entering_processing(self._clock.now()) if to is JobState.PROCESSING else {}),
        )
        if to is JobState.PROCESSING:
            self._on_processing()
        return job

    # -- dispatch: creator_info, init -------------------------------------------------------

    async def _dispatch(self, job: Job) -> None:
        needed = SCOPE_FOR_MODE[job.mode]
        scopes = await self._tokens.scopes(job.account_id)
        missing = bool(scopes) and needed not in scopes
        direct = job.mode is Mode.DIRECT and not missing
        token = ""
        if direct:
            # Waits that can be long happen while the job is still queued, where an operator
            # may cancel it or the router move it, not while it is marked as being sent.
            await self._budgets.acquire("creator_info")
            token = await self._tokens.access_token(job.account_id)
        job, attempt = await self._store.transition_begin(
            job.id,
            expect=[JobState.QUEUED, JobState.RETRY_WAIT],
            to=JobState.DISPATCHING,
            now=self._clock.now(),
            action="job.dispatching",
            attempt_count=job.attempt_count + 1,
            begin="creator_info" if direct else None,
        )
        # DEBUG: the timeline has every step; at INFO a post is submitted, init_accepted (with
        # its publish_id) and published, three lines instead of five (bench.overhead).
        log.debug(
            "dispatching %s",
            job.id,
            extra=fields("job.dispatching", job=job.id, account=job.account_id),
        )
        if missing:
            raise JobFailed(
                local("scope_not_granted"),
                f"the creator has not granted {needed}; ask them to authorize it",
            )
        privacy = job.privacy_level or self.account.privacy_level
        post_info: dict[str, Any] = {"title": job.caption, "privacy_level": privacy}
        for key in ("disable_comment", "disable_duet", "disable_stitch", "is_aigc"):
            if key in job.options:
                post_info[key] = bool(job.options[key])
        post_info.setdefault("brand_content_toggle", False)
        username = None
        done = None
        if direct:
            assert attempt is not None
            info, done = await self._creator_info(job, token, attempt)
            username = info.username
            if privacy not in info.privacy_level_options:
                await self._store.end_attempt(done.id, now=done.at)
                raise JobFailed(
                    local("privacy_level_option_mismatch"),
                    f"privacy level {privacy} is not offered by this creator "
                    f"(offered: {', '.join(info.privacy_level_options) or 'none'})",
                )
        plan = plan_chunks(job.video_size, self._chunk_size) if job.video_size else None
        await self._budgets.acquire("init")
        await self._init(job, post_info, plan, username, done)

    async def _creator_info(
        self, job: Job, token: str, attempt: int
    ) -> tuple[CreatorInfo, AttemptEnd]:
        """creator_info (no side effect at TikTok) under the attempt the dispatch opened,
        tried once more after a 401. A success's end is returned, not written: it goes into
        the init's intent, one transaction for both."""
        for retry_after_refresh in (False, True):
            try:
                info = await self._client.creator_info(token)
            except TikTokError as exc:
                await self._end_failed(attempt, exc)
                if exc.code == "access_token_invalid" and not retry_after_refresh:
                    await self._tokens.refresh(job.account_id, stale=token)
                    token = await self._tokens.access_token(job.account_id)
                    attempt = await self._store.begin_attempt(
                        job_id=job.id,
                        account_id=job.account_id,
                        step="creator_info",
                        now=self._clock.now(),
                    )
                    continue
                raise JobFailed(classify_error(exc), exc.message, hint=exc.retry_after) from exc
            return info, AttemptEnd(id=attempt, at=self._clock.now())
        raise AssertionError("unreachable")

    async def _init(
        self,
        job: Job,
        post_info: dict[str, Any],
        plan: ChunkPlan | None,
        username: str | None,
        done: AttemptEnd | None,
    ) -> None:
        """``done``: the creator_info attempt that ended, still to be written."""
        for retry_after_refresh in (False, True):
            try:
                token = await self._tokens.access_token(job.account_id)
            except TokenError:
                if done is not None:
                    await self._store.end_attempt(done.id, now=done.at)
                raise
            # The app-wide limiter first: the intent below must be the last thing before the
            # request leaves, not something a crash can catch while the init waits its turn.
            await self._client.pace()
            now = self._clock.now()
            # Intent, durably, before the request leaves: from here on a post may exist. The
            # init's attempt opens in the same transaction.
            job, opened = await self._store.transition_begin(
                job.id,
                expect=[JobState.DISPATCHING],
                to=JobState.DISPATCHING,
                now=now,
                action="job.init_sent",
                begin="init",
                end=done,
                init_sent_at=now,
            )
            done = None
            assert opened is not None
            attempt = opened
            try:
                result = await self._client.init_video(
                    token,
                    mode=job.mode,
                    source=job.source,
                    post_info=post_info,
                    video_size=plan.video_size if plan else None,
                    chunk_size=plan.chunk_size if plan else None,
                    chunk_count=plan.chunk_count if plan else None,
                    video_url=job.video_url,
                    paced=True,
                )
            except TikTokTransportError as exc:
                await self._end_failed(attempt, exc, outcome="unknown")
                if exc.maybe_acted:
                    if job.mode is Mode.DIRECT:
                        # TikTok counts an init it took whether or not we heard the answer.
                        self._inits.append(now)
                    raise JobFailed(
                        local("init_outcome_unknown"),
                        f"the init was sent but no answer came ({exc.message}); the video "
                        "may have been posted. Check the account, then run "
                        f"`orchestrator job resolve {job.id} --posted` or `--not-posted`.",
                        force=JobState.UNCERTAIN,
                    ) from exc
                # Nothing left this machine: the init can be sent again safely.
                await self._store.checkpoint(job.id, self._clock.now(), init_sent_at=None)
                raise JobFailed(classify_error(exc), exc.message, hint=exc.retry_after) from exc
            except TikTokApiError as exc:
                await self._end_failed(attempt, exc)
                # Any error answer means TikTok did not take the init: no post exists.
                await self._store.checkpoint(job.id, self._clock.now(), init_sent_at=None)
                if exc.code == "access_token_invalid" and not retry_after_refresh:
                    await self._tokens.refresh(job.account_id, stale=token)
                    continue
                raise JobFailed(classify_error(exc), exc.message, hint=exc.retry_after) from exc
            break
        now = self._clock.now()
        to = JobState.UPLOADING if job.source is Source.FILE_UPLOAD else JobState.PROCESSING
        # The publish_id, the init's attempt, its count against the daily cap and the
        # upload's attempt: one transaction, right after the answer.
        job, upload_attempt = await self._store.transition_begin(
            job.id,
            expect=[JobState.DISPATCHING],
            to=to,
            now=now,
            action="job.init_accepted",
            detail={"publish_id": result.publish_id},
            begin="upload" if to is JobState.UPLOADING else None,
            end=AttemptEnd(id=attempt, at=now),
            init_accepted=job.mode is Mode.DIRECT,
            publish_id=result.publish_id,
            upload_url=result.upload_url,
            upload_expires_at=now + UPLOAD_URL_LIFETIME,
            chunk_size=plan.chunk_size if plan else None,
            chunk_count=plan.chunk_count if plan else None,
            uploaded_bytes=0,
            **(entering_processing(now) if to is JobState.PROCESSING else {}),
            options={**job.options, "creator_username": username} if username else job.options,
        )
        if job.mode is Mode.DIRECT:
            self._inits.append(now)
        log.info(
            "TikTok accepted the init of %s",
            job.id,
            extra=fields(
                "job.init_accepted",
                job=job.id,
                account=job.account_id,
                publish_id=result.publish_id,
            ),
        )
        if to is JobState.UPLOADING:
            await self._upload(job, upload_attempt)
        else:
            self._on_processing()

    async def _end_failed(self, attempt: int, exc: TikTokError, outcome: str = "") -> None:
        c = classify_error(exc)
        await self._store.end_attempt(
            attempt,
            now=self._clock.now(),
            error=exc,
            outcome=outcome,
            error_class=c.entry.error_class.value,
            known=c.known,
        )

    # -- upload -----------------------------------------------------------------------------

    async def _upload(self, job: Job, attempt: int | None = None) -> None:
        """``attempt``: the upload's attempt, when the init's transaction opened it."""
        assert job.video_path and job.video_size and job.upload_url
        assert job.chunk_size and job.chunk_count
        plan = ChunkPlan(
            chunk_size=job.chunk_size, chunk_count=job.chunk_count, video_size=job.video_size
        )
        if attempt is None:
            attempt = await self._store.begin_attempt(
                job_id=job.id, account_id=job.account_id, step="upload", now=self._clock.now()
            )
        offset, failures = job.uploaded_bytes, 0
        last_error: TikTokError | None = None
        content_type = content_type_for(job.video_path)
        while True:
            if (
                offset >= plan.video_size
                or failures >= CHUNK_TRIES
                or self._clock.now() >= (job.upload_expires_at or 0)
            ):
                # Bytes all sent but no 201 heard, the chunk keeps failing, or the URL
                # expired: TikTok's status says whether the upload completed.
                await self._settle_upload(job, attempt, offset, last_error)
                return
            first, last = plan.chunk_range(chunk_index_at(plan, offset))
            chunk = await anyio.to_thread.run_sync(read_chunk, job.video_path, first, last)
            try:
                progress = await self._client.upload_chunk(
                    job.upload_url,
                    chunk,
                    first=first,
                    total=plan.video_size,
                    content_type=content_type,
                )
            except TikTokApiError as exc:
                last_error = exc
                if exc.http_status in (403, 404):
                    await self._end_failed(attempt, exc)
                    await self._settle_upload(job, None, offset, exc)
                    return
                failures += 1
                await self._chunk_backoff(job, exc, failures)
                continue
            except TikTokTransportError as exc:
                last_error = exc
                failures += 1
                await self._chunk_backoff(job, exc, failures)
                continue
            if progress.complete:
                await self._uploaded(job, attempt)
                return
            if progress.out_of_order and progress.received is None:
                failures += 1
                continue
            offset = progress.received if progress.received is not None else last + 1
            failures = 0 if not progress.out_of_order else failures + 1
            await self._store.checkpoint(job.id, self._clock.now(), uploaded_bytes=offset)

    async def _chunk_backoff(self, job: Job, exc: TikTokError, failures: int) -> None:
        log.warning(
            "chunk upload of %s failed (%s), try %d of %d",
            job.id,
            exc.code or exc.message,
            failures,
            CHUNK_TRIES,
            extra=fields("job.chunk_failed", job=job.id, account=job.account_id, code=exc.code),
        )
        await self._clock.sleep(exc.retry_after or float(2 ** (failures - 1)))

    async def _uploaded(self, job: Job, attempt: int | None) -> None:
        now = self._clock.now()
        await self._store.transition_begin(
            job.id,
            expect=[JobState.UPLOADING],
            to=JobState.PROCESSING,
            now=now,
            action="job.uploaded",
            end=AttemptEnd(id=attempt, at=now) if attempt is not None else None,
            uploaded_bytes=job.video_size,
            **entering_processing(now),
        )
        log.debug(
            "uploaded %s",
            job.id,
            extra=fields(
                "job.uploaded", job=job.id, account=job.account_id, publish_id=job.publish_id
            ),
        )
        self._on_processing()

    async def _settle_upload(
        self, job: Job, attempt: int | None, offset: int, last_error: TikTokError | None
    ) -> None:
        """The upload cannot go on (URL expired, chunks keep failing, or the last answer was
        lost): ask TikTok whether it has the whole video before deciding anything.

        Only when TikTok says the upload is incomplete *and* the upload URL is dead may the
        next try start with a new init; in every other case it resumes this publish.
        """
        assert job.publish_id
        try:
            token = await self._tokens.access_token(job.account_id)
            await self._budgets.acquire("status")
            status = await self._client.fetch_status(token, job.publish_id)
        except TikTokError as exc:
            raise JobFailed(
                classify_error(exc),
                f"the upload stopped at byte {offset} and TikTok's status could not be read "
                f"({exc.message}); the next try resumes this upload",
                hint=exc.retry_after,
            ) from exc
        except TokenError as exc:
            raise JobFailed(local("upload_incomplete"), exc.message) from exc
        if (status.uploaded_bytes or 0) >= (job.video_size or 0) or status.status not in (
            "PROCESSING_UPLOAD",
            "",
        ):
            await self._uploaded(job, attempt)
            return
        if attempt is not None:
            await self._store.end_attempt(attempt, now=self._clock.now(), outcome="error")
        expired = self._clock.now() >= (job.upload_expires_at or 0) or (
            last_error is not None and last_error.http_status in (403, 404)
        )
        if expired or last_error is None:
            raise JobFailed(
                local("upload_incomplete"),
                f"the upload stopped at byte {offset} of {job.video_size} and its URL is no "
                "longer valid; the next try starts with a new init",
                fresh_start=True,
            )
        raise JobFailed(
            classify_error(last_error),
            f"chunk uploads kept failing at byte {offset} ({last_error.message}); "
            "the next try resumes this upload",
            hint=last_error.retry_after,
        )

    # -- endings ----------------------------------------------------------------------------

    async def _wait_for_token(self, job_id: str, reason: str) -> None:
        """No usable token: the job waits in the queue (it is pinned to this account)."""
        now = self._clock.now()
        await self._store.transition(
            job_id,
            # Queued or waiting to retry: the token is asked for before the job is dispatched.
            expect=[JobState.DISPATCHING, JobState.QUEUED, JobState.RETRY_WAIT],
            to=JobState.QUEUED,
            now=now,
            action="job.waiting_for_token",
            detail={"reason": reason},
            not_before=now + TOKEN_WAIT,
            init_sent_at=None,
        )
        log.warning(
            "job %s waits: %s",
            job_id,
            reason,
            extra=fields("job.waiting_for_token", job=job_id, account=self.account.id),
        )
