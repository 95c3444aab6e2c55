"""The durable state: one SQLite file, and the only module that speaks SQL.

Two connections: one writer, used under a lock for every write transaction (tasks sharing a
connection share its transaction, so concurrent writers on one connection would undo each
other), and one reader, which in WAL mode sees only committed data. Each write transaction is
short and shielded from cancellation: a cancelled ``await`` does not stop a statement that is
already running, so an unshielded COMMIT could land while the caller believes it did not.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import aiosqlite
import anyio

from .errors import StoreError, TikTokError
from .jobs import Job, JobState, Mode, Source
from .schema import MIGRATIONS

T = TypeVar("T")

# Raw responses are kept for people to read; a megabyte of HTML from a proxy is not useful.
RAW_LIMIT = 4000

# A waiting job whose next step is a Direct Post init (shard.Shard._needs_direct_init).
_STARTS_DIRECT_INIT = "(mode = 'direct' AND (state = 'queued' OR publish_id IS NULL))"


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    job_id: str
    at: float
    from_state: str | None
    to_state: str | None
    action: str
    detail: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Attempt:
    id: int
    job_id: str | None
    account_id: str
    step: str
    started_at: float
    finished_at: float | None
    outcome: str | None
    http_status: int | None
    error_code: str | None
    error_message: str | None
    log_id: str | None
    raw: str | None
    error_class: str | None = None
    known: bool | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptEnd:
    """How a call ended, for ``end_attempt`` or to be written by the transition it leads to
    (one transaction instead of two: bench/results/overhead.json)."""

    id: int
    at: float
    error: TikTokError | None = None
    outcome: str = ""
    error_class: str | None = None
    known: bool | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class UnknownCode:
    code: str
    count: int
    first_seen: float
    last_seen: float
    last_job: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class LastError:
    """An account's most recent failed attempt, for the operator's dashboard."""

    code: str
    message: str | None
    job_id: str | None
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenRecord:
    account_id: str
    open_id: str | None
    access_token: str | None
    access_expires_at: float | None
    refresh_token: str | None
    refresh_expires_at: float | None
    scopes: frozenset[str]
    state: str
    imported_sha256: str | None
    last_error: str | None
    updated_at: float
    access_issued_at: float | None = None
    refresh_failures: int = 0
    # Earliest time the next refresh may be tried (a cooldown after failures).
    next_refresh_at: float | None = None
    # Set, durably, right before a refresh request leaves; cleared with its outcome. Found set
    # at start-up, it means the answer of a refresh was lost.
    refresh_started_at: float | None = None

    def __repr__(self) -> str:  # never let a token reach a log line through repr()
        return (
            f"TokenRecord(account_id={self.account_id!r}, state={self.state!r}, "
            f"access_expires_at={self.access_expires_at!r})"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountState:
    """What the daemon learns and decides about an account at run time (not in the config)."""

    account_id: str
    paused: bool = False
    learned_cap: int | None = None
    blocked_until: float | None = None
    breaker_state: str = "closed"
    breaker_failures: int = 0
    breaker_opened_at: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenOutcome:
    """One line of an account's refresh history."""

    at: float
    outcome: str  # ok | failed | lost | needs_reauth | imported | authorized
    code: str | None = None
    error_class: str | None = None


class SubmitOutcome:
    CREATED = "created"
    EXISTING = "existing"
    CONFLICT = "conflict"


_JOB_FIELDS = frozenset(Job.__dataclass_fields__) - {"id"}
_ACCOUNT_STATE_COLUMNS = frozenset(AccountState.__dataclass_fields__) - {"account_id"}


def _job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        idempotency_key=row["idempotency_key"],
        account_id=row["account_id"],
        mode=Mode(row["mode"]),
        source=Source(row["source"]),
        video_path=row["video_path"],
        video_url=row["video_url"],
        video_size=row["video_size"],
        content_sha256=row["content_sha256"],
        caption=row["caption"],
        privacy_level=row["privacy_level"],
        options=json.loads(row["options"]),
        lane=row["lane"],
        pool=row["pool"],
        state=JobState(row["state"]),
        not_before=row["not_before"],
        attempt_count=row["attempt_count"],
        publish_id=row["publish_id"],
        upload_url=row["upload_url"],
        upload_expires_at=row["upload_expires_at"],
        chunk_size=row["chunk_size"],
        chunk_count=row["chunk_count"],
        uploaded_bytes=row["uploaded_bytes"],
        init_sent_at=row["init_sent_at"],
        next_poll_at=row["next_poll_at"],
        processing_since=row["processing_since"],
        polls=row["polls"],
        stuck_at=row["stuck_at"],
        post_ids=tuple(json.loads(row["post_ids"])),
        post_url=row["post_url"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )


_ACCOUNT_STATE = "SELECT * FROM account_state WHERE account_id = ?"
# Parameters: account, since, account, since, account.
_RECENT_INITS = (
    "SELECT at FROM inits WHERE account_id = ? AND at > ? "
    "UNION ALL SELECT init_sent_at FROM jobs WHERE account_id = ? AND mode = 'direct' "
    "AND init_sent_at > ? AND (publish_id IS NULL OR publish_id NOT IN "
    "(SELECT publish_id FROM inits WHERE account_id = ? AND publish_id IS NOT NULL)) "
    "ORDER BY 1"
)


def _account_state_from_row(account_id: str, row: sqlite3.Row | None) -> AccountState:
    if row is None:
        return AccountState(account_id=account_id)
    return AccountState(
        account_id=account_id,
        paused=bool(row["paused"]),
        learned_cap=row["learned_cap"],
        blocked_until=row["blocked_until"],
        breaker_state=row["breaker_state"],
        breaker_failures=row["breaker_failures"],
        breaker_opened_at=row["breaker_opened_at"],
    )


def _column_value(name: str, value: Any) -> Any:
    if name == "options":
        return json.dumps(value, sort_keys=True)
    if name == "post_ids":
        return json.dumps(list(value))
    return value


def _token_from_row(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        account_id=row["account_id"],
        open_id=row["open_id"],
        access_token=row["access_token"],
        access_expires_at=row["access_expires_at"],
        refresh_token=row["refresh_token"],
        refresh_expires_at=row["refresh_expires_at"],
        scopes=frozenset(s for s in row["scopes"].split(",") if s),
        state=row["state"],
        imported_sha256=row["imported_sha256"],
        last_error=row["last_error"],
        updated_at=row["updated_at"],
        access_issued_at=row["access_issued_at"],
        refresh_failures=row["refresh_failures"],
        next_refresh_at=row["next_refresh_at"],
        refresh_started_at=row["refresh_started_at"],
    )


class _Done(Generic[T]):
    """An awaitable that is already complete."""

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        yield from ()  # a generator that returns at once
        return self.value


class _ThreadCursor:
    """aiosqlite's cursor API over a sqlite3 cursor, for code already on the database thread:
    awaitable and an async context manager, like the ``execute`` result it stands for."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Generator[Any, None, _ThreadCursor]:
        yield from ()
        return self

    def __aenter__(self) -> _Done[_ThreadCursor]:
        return _Done(self)

    def __aexit__(self, *exc: object) -> _Done[None]:
        self._cursor.close()
        return _Done(None)

    def fetchone(self) -> _Done[sqlite3.Row | None]:
        return _Done(self._cursor.fetchone())

    def fetchall(self) -> _Done[list[sqlite3.Row]]:
        return _Done(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid


class _ThreadConnection:
    """The part of aiosqlite's connection API that write transactions use, run directly."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _ThreadCursor:
        return _ThreadCursor(self._conn.execute(sql, parameters))

    def execute_fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> _Done[list[Any]]:
        return _Done(self._conn.execute(sql, parameters).fetchall())


def _complete_now(awaitable: Awaitable[T]) -> T:
    """Run a coroutine whose every await is already complete; it must end in one step."""
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    steps.close()
    raise RuntimeError("a write transaction awaited something other than the database")


class StaleTransition(StoreError):
    """The job was not in the state the caller expected; someone else moved it."""


class Store:
    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._w = writer
        self._r = reader
        self._lock = anyio.Lock()

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> Store:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The file holds tokens: create it private before SQLite opens it.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(path, 0o600)
            writer = await aiosqlite.connect(path, isolation_level=None)
            reader = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state database {path}: {exc}") from exc
        for conn in (writer, reader):
            conn.row_factory = sqlite3.Row
            await conn.execute_fetchall("PRAGMA busy_timeout = 5000")
        store = cls(path, writer, reader)
        try:
            await writer.execute_fetchall("PRAGMA journal_mode = WAL")
            await writer.execute_fetchall("PRAGMA synchronous = FULL")
            await store._migrate()
        except sqlite3.Error as exc:
            await store.close()
            raise StoreError(f"cannot prepare the state database {path}: {exc}") from exc
        return store

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._r.close()
            await self._w.close()

    async def _migrate(self) -> None:
        async with self._w.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} was written by a newer orchestrator (schema {version}); "
                "upgrade orchestrator or restore a backup"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):

            async def step(
                conn: aiosqlite.Connection, script: str = script, n: int = number
            ) -> None:
                for statement in script.split(";"):
                    if statement.strip():
                        await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {n}")

            await self._write(step)

    async def _write(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run one write transaction whole on the writer's thread, in one hop.

        Awaiting each statement costs a round trip to the database thread (about 0.1 ms of
        CPU for the event loop and the thread together); a job's trip through the pipeline
        made about 80 of them, most of the daemon's CPU per post (bench/results/overhead-
        before.json). ``fn`` is written against aiosqlite's API, and is run on the thread
        against ``_ThreadConnection``, whose awaitables are already complete: the coroutine
        finishes in one step, between BEGIN IMMEDIATE and COMMIT, with nothing interleaved.
        """

        def run() -> T:
            conn = self._w._conn  # aiosqlite (pinned <0.23): the sqlite3 connection, on its thread
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = _complete_now(fn(cast(aiosqlite.Connection, _ThreadConnection(conn))))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        async with self._lock:
            with anyio.CancelScope(shield=True):
                result = await self._w._execute(run)  # type: ignore[no-untyped-call]
        return cast(T, result)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        # Trap: a statement left open across an await holds the connection's read snapshot,
        # and every other task reading on this connection meanwhile sees that old snapshot
        # (a refresh then read a rotated refresh token). execute_fetchall runs, drains and
        # closes the statement in one hop to the database thread.
        return list(await self._r.execute_fetchall(sql, params))

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def integrity_check(self) -> str:
        row = await self._fetchone("PRAGMA integrity_check")
        return str(row[0]) if row else "no answer"

    # -- jobs -------------------------------------------------------------------------------

    async def submit(self, job: Job, payload_sha256: str) -> tuple[str, Job]:
        """Insert a job unless its idempotency key exists: (outcome, the job that holds it)."""

        async def tx(conn: aiosqlite.Connection) -> tuple[str, Job]:
            return await _submit_in(conn, job, payload_sha256)

        return await self._write(tx)

    async def submit_many(self, jobs: Sequence[tuple[Job, str]]) -> list[str]:
        """``submit`` for many (job, payload fingerprint) pairs in one transaction (a bulk
        import): the same idempotency rules, one commit instead of one per job. Returns each
        job's outcome, in order."""

        async def tx(conn: aiosqlite.Connection) -> list[str]:
            return [(await _submit_in(conn, job, fp))[0] for job, fp in jobs]

        return await self._write(tx)

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job_from_row(row) if row else None

    async def list_jobs(
        self, *, state: str | None = None, account: str | None = None, limit: int = 100
    ) -> list[Job]:
        clauses, params = [], []
        if state:
            clauses.append("state = ?")
            params.append(state)
        if account:
            clauses.append("account_id = ?")
            params.append(account)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetchall(
            f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ?", (*params, limit)
        )
        return [_job_from_row(r) for r in rows]

    async def timeline(self, job_id: str) -> tuple[list[Event], list[Attempt]]:
        events = [
            Event(
                job_id=r["job_id"],
                at=r["at"],
                from_state=r["from_state"],
                to_state=r["to_state"],
                action=r["action"],
                detail=json.loads(r["detail"]),
            )
            for r in await self._fetchall(
                "SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,)
            )
        ]
        attempts = [
            Attempt(
                **{k: r[k] for k in r.keys() if k != "known"},  # noqa: SIM118 - a Row, not a dict
                known=None if r["known"] is None else bool(r["known"]),
            )
            for r in await self._fetchall(
                "SELECT * FROM attempts WHERE job_id = ? ORDER BY id", (job_id,)
            )
        ]
        return events, attempts

    async def next_job(
        self, account_id: str, now: float, *, direct_inits: bool = True
    ) -> Job | None:
        """The account's next piece of work: an interrupted upload first, then the due queue.

        New submissions go before retries (two lanes), so a flood of retries never starves them.
        One statement (one hop to the database thread): the account's few open jobs are read
        through ``jobs_by_account`` either way. ``direct_inits=False`` skips the jobs that
        would start with a Direct Post init (what the daily cap and an app pause hold back).
        """
        row = await self._fetchone(
            "SELECT * FROM jobs WHERE account_id = ? AND (state = 'uploading' "
            "OR (state IN ('queued', 'retry_wait') AND not_before <= ?"
            + ("" if direct_inits else f" AND NOT {_STARTS_DIRECT_INIT}")
            + ")) ORDER BY state <> 'uploading', CASE state WHEN 'uploading' THEN updated_at END, "
            "lane = 'retry', not_before, created_at LIMIT 1",
            (account_id, now),
        )
        return _job_from_row(row) if row else None

    async def next_due_time(self, account_id: str, *, direct_inits: bool = True) -> float | None:
        row = await self._fetchone(
            "SELECT MIN(not_before) FROM jobs WHERE account_id = ? "
            "AND state IN ('queued', 'retry_wait')"
            + ("" if direct_inits else f" AND NOT {_STARTS_DIRECT_INIT}"),
            (account_id,),
        )
        return row[0] if row else None

    async def delete_jobs(self, job_ids: Sequence[str], *, only_state: JobState) -> int:
        """Remove jobs for good (an operator's purge); only those in ``only_state``."""

        async def tx(conn: aiosqlite.Connection) -> int:
            gone = 0
            for job_id in job_ids:
                cur = await conn.execute(
                    "DELETE FROM jobs WHERE id = ? AND state = ?", (job_id, only_state.value)
                )
                if cur.rowcount:
                    gone += 1
                    await conn.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                    await conn.execute("DELETE FROM attempts WHERE job_id = ?", (job_id,))
            return gone

        return await self._write(tx)

    # -- what failures teach ----------------------------------------------------------------

    async def record_rejection(
        self, *, account_id: str, content_sha256: str, code: str, job_id: str, now: float
    ) -> int:
        """Remember a content rejection; returns how many this asset has had on this account."""

        async def tx(conn: aiosqlite.Connection) -> int:
            await conn.execute(
                "INSERT INTO rejections (account_id, content_sha256, code, job_id, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (account_id, content_sha256, code, job_id, now),
            )
            async with conn.execute(
                "SELECT COUNT(*) FROM rejections WHERE account_id = ? AND content_sha256 = ?",
                (account_id, content_sha256),
            ) as cur:
                row = await cur.fetchone()
            return int(row[0]) if row else 1

        return await self._write(tx)

    async def count_unknown_code(self, code: str, *, job_id: str | None, now: float) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO unknown_codes (code, count, first_seen, last_seen, last_job) "
                "VALUES (?, 1, ?, ?, ?) ON CONFLICT (code) DO UPDATE SET count = count + 1, "
                "last_seen = excluded.last_seen, last_job = excluded.last_job",
                (code, now, now, job_id),
            )

        await self._write(tx)

    async def unknown_codes(self) -> list[UnknownCode]:
        rows = await self._fetchall("SELECT * FROM unknown_codes ORDER BY last_seen DESC")
        return [UnknownCode(**{k: r[k] for k in r.keys()}) for r in rows]  # noqa: SIM118

    async def transition(
        self,
        job_id: str,
        *,
        expect: Iterable[JobState],
        to: JobState,
        now: float,
        action: str,
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Job:
        """Move a job between states (compare-and-set) and write the event, atomically."""
        job, _ = await self.transition_begin(
            job_id, expect=expect, to=to, now=now, action=action, detail=detail, **fields
        )
        return job

    async def transition_begin(
        self,
        job_id: str,
        *,
        expect: Iterable[JobState],
        to: JobState,
        now: float,
        action: str,
        detail: dict[str, Any] | None = None,
        begin: str | None = None,
        end: AttemptEnd | None = None,
        init_accepted: bool = False,
        **fields: Any,
    ) -> tuple[Job, int | None]:
        """``transition``, with the attempts it accompanies in the same transaction (one
        commit instead of two or three; bench/results/overhead.json), so a crash cannot
        separate them: ``end``, the attempt this transition concludes; ``begin``, a step
        whose attempt opens at ``now`` (its id is returned); ``init_accepted``, count the
        job's init (its ``publish_id``) against the daily cap."""
        expected = tuple(expect)
        unknown = set(fields) - _JOB_FIELDS
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        values = {name: _column_value(name, v) for name, v in fields.items()}
        values["state"] = to.value
        values["updated_at"] = now
        assignments = ", ".join(f"{name} = ?" for name in values)
        marks = ", ".join("?" for _ in expected)

        async def tx(conn: aiosqlite.Connection) -> tuple[Job, int | None]:
            async with conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)) as cur:
                before = await cur.fetchone()
            async with conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND state IN ({marks}) RETURNING *",
                (*values.values(), job_id, *(s.value for s in expected)),
            ) as cur:
                row = await cur.fetchone()
            if before is None or row is None:
                raise StaleTransition(
                    f"job {job_id} is not in {', '.join(s.value for s in expected)}"
                )
            await _insert_event(conn, job_id, now, before[0], to, action, detail or {})
            job = _job_from_row(row)
            if end is not None:
                await _end_attempt_in(conn, end)
            if init_accepted:
                await conn.execute(
                    "INSERT INTO inits (account_id, at, publish_id) VALUES (?, ?, ?)",
                    (job.account_id, now, job.publish_id),
                )
            attempt = None
            if begin is not None:
                attempt = await _begin_attempt_in(conn, job.id, job.account_id, begin, now)
            return job, attempt

        return await self._write(tx)

    async def checkpoint(self, job_id: str, now: float, **fields: Any) -> None:
        """Record progress inside a state (upload offset, next poll time) without an event."""
        values = {name: _column_value(name, v) for name, v in fields.items()}
        values["updated_at"] = now
        assignments = ", ".join(f"{name} = ?" for name in values)

        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id)
            )

        await self._write(tx)

    async def add_event(
        self, job_id: str, now: float, action: str, detail: dict[str, Any] | None = None
    ) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await _insert_event(conn, job_id, now, None, None, action, detail or {})

        await self._write(tx)

    async def begin_attempt(
        self, *, job_id: str | None, account_id: str, step: str, now: float
    ) -> int:
        async def tx(conn: aiosqlite.Connection) -> int:
            return await _begin_attempt_in(conn, job_id, account_id, step, now)

        return await self._write(tx)

    async def end_attempt(
        self,
        attempt_id: int,
        *,
        now: float,
        error: TikTokError | None = None,
        outcome: str = "",
        error_class: str | None = None,
        known: bool | None = None,
    ) -> None:
        """Record how a call ended: TikTok's raw answer beside what we made of it."""
        end = AttemptEnd(
            id=attempt_id,
            at=now,
            error=error,
            outcome=outcome,
            error_class=error_class,
            known=known,
        )

        async def tx(conn: aiosqlite.Connection) -> None:
            await _end_attempt_in(conn, end)

        await self._write(tx)

    async def due_polls(self, now: float, limit: int) -> list[Job]:
        rows = await self._fetchall(
            "SELECT * FROM jobs WHERE state = 'processing' AND next_poll_at <= ? "
            "ORDER BY next_poll_at LIMIT ?",
            (now, limit),
        )
        return [_job_from_row(r) for r in rows]

    async def unsettled_posts(self, since: float) -> list[Job]:
        """Posts TikTok accepted since ``since`` that have no final state yet (the sweep's)."""
        rows = await self._fetchall(
            "SELECT * FROM jobs WHERE state = 'processing' AND processing_since >= ? "
            "ORDER BY processing_since",
            (since,),
        )
        return [_job_from_row(r) for r in rows]

    async def job_by_publish_id(self, publish_id: str) -> Job | None:
        row = await self._fetchone("SELECT * FROM jobs WHERE publish_id = ?", (publish_id,))
        return _job_from_row(row) if row else None

    async def first_delivery(self, key: str, event: str, now: float) -> bool:
        """Record a webhook delivery; False if it was seen before (a redelivery)."""

        async def tx(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (key, event, at) VALUES (?, ?, ?)",
                (key, event, now),
            )
            return bool(cur.rowcount)

        return await self._write(tx)

    async def stuck_posts(self, limit: int = 20) -> list[Job]:
        rows = await self._fetchall(
            "SELECT * FROM jobs WHERE state = 'processing' AND stuck_at IS NOT NULL "
            "ORDER BY stuck_at LIMIT ?",
            (limit,),
        )
        return [_job_from_row(r) for r in rows]

    async def next_poll_time(self) -> float | None:
        row = await self._fetchone("SELECT MIN(next_poll_at) FROM jobs WHERE state = 'processing'")
        return row[0] if row else None

    async def recover(self, now: float) -> dict[str, int]:
        """Settle what a crash left half-done; returns how many jobs moved, by kind.

        A job in ``dispatching`` whose init never left goes back to the queue: nothing reached
        TikTok. One whose init left but whose answer was never recorded may have posted, so
        it becomes ``uncertain``: re-posting it could publish the video twice.
        """

        async def tx(conn: aiosqlite.Connection) -> dict[str, int]:
            moved: dict[str, int] = {}
            for where, to, action in (
                ("init_sent_at IS NULL", JobState.QUEUED, "job.requeued_after_crash"),
                ("init_sent_at IS NOT NULL", JobState.UNCERTAIN, "job.uncertain_after_crash"),
            ):
                async with conn.execute(
                    f"UPDATE jobs SET state = ?, updated_at = ? "
                    f"WHERE state = 'dispatching' AND publish_id IS NULL AND {where} RETURNING id",
                    (to.value, now),
                ) as cur:
                    ids = [r[0] for r in await cur.fetchall()]
                for job_id in ids:
                    await _insert_event(conn, job_id, now, "dispatching", to, action, {})
                moved[to.value] = len(ids)
            return moved

        return await self._write(tx)

    async def counts(self) -> dict[str, dict[str, int]]:
        """Jobs per account and state."""
        out: dict[str, dict[str, int]] = {}
        for row in await self._fetchall(
            "SELECT account_id, state, COUNT(*) FROM jobs GROUP BY account_id, state"
        ):
            out.setdefault(row[0], {})[row[1]] = row[2]
        return out

    async def routable_jobs(self, limit: int = 1000) -> list[Job]:
        """Pool jobs that have not reached TikTok yet, so they may still change account."""
        rows = await self._fetchall(
            "SELECT * FROM jobs WHERE pool IS NOT NULL AND state IN ('queued', 'retry_wait') "
            "AND publish_id IS NULL ORDER BY created_at LIMIT ?",
            (limit,),
        )
        return [_job_from_row(r) for r in rows]

    async def waiting_counts(self) -> dict[str, int]:
        rows = await self._fetchall(
            "SELECT account_id, COUNT(*) FROM jobs WHERE state IN ('queued', 'retry_wait') "
            "GROUP BY account_id"
        )
        return {r[0]: r[1] for r in rows}

    async def reassign(
        self, job_id: str, *, from_account: str, to_account: str, now: float, detail: dict[str, Any]
    ) -> bool:
        """Move a pool job to another account, only if nothing has reached TikTok for it."""

        async def tx(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "UPDATE jobs SET account_id = ?, updated_at = ? WHERE id = ? AND account_id = ? "
                "AND state IN ('queued', 'retry_wait') AND publish_id IS NULL",
                (to_account, now, job_id, from_account),
            )
            if not cur.rowcount:
                return False
            await _insert_event(conn, job_id, now, None, None, "job.routed", detail)
            return True

        return await self._write(tx)

    # -- accounts: caps and pauses --------------------------------------------------------

    async def recent_inits(self, account_id: str, since: float) -> list[float]:
        """Direct-post inits TikTok may count against the daily cap: the accepted ones, and
        the ones whose answer never came (an uncertain job, or an accepted init a crash kept
        out of ``inits``). TikTok counts an init it took whether or not we heard the answer."""
        rows = await self._fetchall(_RECENT_INITS, (account_id, since) * 2 + (account_id,))
        return [r[0] for r in rows]

    async def account_state(self, account_id: str) -> AccountState:
        row = await self._fetchone(_ACCOUNT_STATE, (account_id,))
        return _account_state_from_row(account_id, row)

    async def account_outlook(
        self, account_id: str, since: float
    ) -> tuple[AccountState, list[float]]:
        """``account_state`` and ``recent_inits`` in one hop to the database thread (a shard
        reads both after every wake)."""

        def run() -> tuple[sqlite3.Row | None, list[sqlite3.Row]]:
            conn = self._r._conn  # aiosqlite (pinned <0.23): the sqlite3 connection, on its thread
            # Each statement drained (so closed) at once: see ``_fetchall``.
            rows = conn.execute(_ACCOUNT_STATE, (account_id,)).fetchall()
            inits = conn.execute(_RECENT_INITS, (account_id, since) * 2 + (account_id,))
            return (rows[0] if rows else None), inits.fetchall()

        row, inits = await self._r._execute(run)  # type: ignore[no-untyped-call]
        return _account_state_from_row(account_id, row), [r[0] for r in inits]

    async def update_account_state(self, account_id: str, now: float, **columns: Any) -> None:
        """Write some of an account's run-time state, leaving the other columns as they are.

        The shard owns the breaker and cap columns and the operator owns ``paused``; each
        writes only its own, so neither needs to read the row first, and neither can put
        back a value the other changed meanwhile (as a whole-row replace could).
        """
        unknown = set(columns) - _ACCOUNT_STATE_COLUMNS
        if unknown:
            raise ValueError(f"not account state columns: {sorted(unknown)}")
        values = {k: int(v) if isinstance(v, bool) else v for k, v in columns.items()}
        values["updated_at"] = now
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{name} = excluded.{name}" for name in values)

        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                f"INSERT INTO account_state (account_id, {names}) VALUES (?, {marks}) "
                f"ON CONFLICT (account_id) DO UPDATE SET {updates}",
                (account_id, *values.values()),
            )

        await self._write(tx)

    async def save_account_state(self, state: AccountState, now: float) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT OR REPLACE INTO account_state (account_id, paused, learned_cap, "
                "blocked_until, updated_at, breaker_state, breaker_failures, breaker_opened_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    state.account_id,
                    int(state.paused),
                    state.learned_cap,
                    state.blocked_until,
                    now,
                    state.breaker_state,
                    state.breaker_failures,
                    state.breaker_opened_at,
                ),
            )

        await self._write(tx)

    # -- tokens -----------------------------------------------------------------------------

    async def get_token(self, account_id: str) -> TokenRecord | None:
        row = await self._fetchone("SELECT * FROM tokens WHERE account_id = ?", (account_id,))
        return _token_from_row(row) if row else None

    async def all_tokens(self) -> list[TokenRecord]:
        return [_token_from_row(r) for r in await self._fetchall("SELECT * FROM tokens")]

    async def save_token(self, record: TokenRecord, *, history: TokenOutcome | None = None) -> None:
        """Write an account's tokens (and, with ``history``, a refresh outcome) atomically."""

        async def tx(conn: aiosqlite.Connection) -> None:
            await _save_token_in(conn, record, history)

        await self._write(tx)

    async def save_tokens(self, records: Sequence[tuple[TokenRecord, TokenOutcome | None]]) -> None:
        """``save_token`` for many accounts in one transaction (a first start importing
        thousands of token files would otherwise commit, and fsync, once per account)."""

        async def tx(conn: aiosqlite.Connection) -> None:
            for record, history in records:
                await _save_token_in(conn, record, history)

        await self._write(tx)

    async def token_history(self, account_id: str, limit: int = 20) -> list[TokenOutcome]:
        rows = await self._fetchall(
            "SELECT at, outcome, code, error_class FROM token_history WHERE account_id = ? "
            "ORDER BY id DESC LIMIT ?",
            (account_id, limit),
        )
        return [TokenOutcome(**{k: r[k] for k in r.keys()}) for r in rows]  # noqa: SIM118

    async def refresh_counts(self) -> dict[str, dict[str, int]]:
        """Refresh outcomes per account (for status and metrics)."""
        out: dict[str, dict[str, int]] = {}
        for row in await self._fetchall(
            "SELECT account_id, outcome, COUNT(*) FROM token_history GROUP BY account_id, outcome"
        ):
            out.setdefault(row[0], {})[row[1]] = row[2]
        return out

    async def save_auth_request(
        self,
        *,
        account_id: str,
        state: str,
        code_verifier: str | None,
        redirect_uri: str,
        now: float,
    ) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT OR REPLACE INTO auth_requests VALUES (?, ?, ?, ?, ?)",
                (account_id, state, code_verifier, redirect_uri, now),
            )

        await self._write(tx)

    async def take_auth_request(self, account_id: str) -> tuple[str, str | None, str] | None:
        """The pending authorization of an account (state, verifier, redirect), used once."""

        async def tx(conn: aiosqlite.Connection) -> tuple[str, str | None, str] | None:
            async with conn.execute(
                "DELETE FROM auth_requests WHERE account_id = ? "
                "RETURNING state, code_verifier, redirect_uri",
                (account_id,),
            ) as cur:
                row = await cur.fetchone()
            return (row[0], row[1], row[2]) if row else None

        return await self._write(tx)

    # -- metrics: read-only, one grouped query per family, never one query per account -----
    # A scrape of 10,000 accounts and 100,000 jobs must stay cheap; none of these reads a
    # token column.

    async def open_job_counts(self) -> list[tuple[str, str, str, int]]:
        """(account, lane, state, jobs) for every job not in a terminal state."""
        rows = await self._fetchall(
            "SELECT account_id, lane, state, COUNT(*) FROM jobs "
            "WHERE state NOT IN ('published', 'dead', 'cancelled') "
            "GROUP BY account_id, lane, state"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def job_state_totals(self) -> dict[str, int]:
        """Jobs per state, all accounts together."""
        rows = await self._fetchall("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {r[0]: r[1] for r in rows}

    async def init_counts(self, since: float, until: float) -> dict[str, int]:
        """Accepted inits per account in ``(since, until]`` (the daily cap's window)."""
        rows = await self._fetchall(
            "SELECT account_id, COUNT(*) FROM inits WHERE at > ? AND at <= ? GROUP BY account_id",
            (since, until),
        )
        return {r[0]: r[1] for r in rows}

    async def account_states(self) -> list[AccountState]:
        """Every account's run-time state that has ever been saved."""
        rows = await self._fetchall("SELECT * FROM account_state")
        return [
            AccountState(
                account_id=r["account_id"],
                paused=bool(r["paused"]),
                learned_cap=r["learned_cap"],
                blocked_until=r["blocked_until"],
                breaker_state=r["breaker_state"],
                breaker_failures=r["breaker_failures"],
                breaker_opened_at=r["breaker_opened_at"],
            )
            for r in rows
        ]

    async def token_expiries(self) -> list[tuple[str, str, float | None, float | None]]:
        """(account, token state, access expires at, refresh expires at): the times only."""
        rows = await self._fetchall(
            "SELECT account_id, state, access_expires_at, refresh_expires_at FROM tokens"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def attempt_error_counts(self) -> list[tuple[str | None, str | None, int]]:
        """(error code, error class, attempts) over every finished attempt that failed."""
        rows = await self._fetchall(
            "SELECT error_code, error_class, COUNT(*) FROM attempts WHERE outcome <> 'ok' "
            "GROUP BY error_code, error_class"
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def token_outcomes_after(self, after_id: int) -> tuple[list[tuple[str, str, int]], int]:
        """Refresh-history lines newer than row ``after_id``: (account, outcome, count) and
        the last row counted. History rows are never changed, so a caller that keeps the
        last row adds up deltas instead of counting the whole history at every scrape."""
        rows = await self._fetchall(
            # NOT INDEXED: the rowid range is the cheap path; the account index is not.
            "SELECT account_id, outcome, COUNT(*), MAX(id) FROM token_history NOT INDEXED "
            "WHERE id > ? GROUP BY account_id, outcome",
            (after_id,),
        )
        last = max((r[3] for r in rows), default=after_id)
        return [(r[0], r[1], r[2]) for r in rows], last

    # -- the operator's dashboard: one grouped query for every account ----------------------

    async def queue_depths(self) -> dict[str, dict[str, int]]:
        """Jobs waiting to be sent (queued or retry_wait) per account and lane."""
        out: dict[str, dict[str, int]] = {}
        for row in await self._fetchall(
            "SELECT account_id, lane, COUNT(*) FROM jobs "
            "WHERE state IN ('queued', 'retry_wait') GROUP BY account_id, lane"
        ):
            out.setdefault(row[0], {})[row[1]] = row[2]
        return out

    async def last_errors(self) -> dict[str, LastError]:
        """Each account's most recent failed attempt. SQLite takes the bare columns of a
        MAX() aggregate from the row that holds the maximum, so this is one pass."""
        rows = await self._fetchall(
            "SELECT account_id, error_code, error_message, job_id, "
            "MAX(COALESCE(finished_at, started_at)) AS at "
            "FROM attempts WHERE error_code IS NOT NULL GROUP BY account_id"
        )
        return {
            r["account_id"]: LastError(
                code=r["error_code"], message=r["error_message"], job_id=r["job_id"], at=r["at"]
            )
            for r in rows
        }

    # -- the dashboard at 10,000 accounts: few hops, and reads bounded by the accounts shown -

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn``'s reads in one hop to the reader's thread, in one snapshot.

        Each awaited statement is a trip through the event loop: while 500 shards posted, a
        status made of a dozen awaited reads waited behind the loop a dozen times and took
        50-280 ms (bench.scale), for about 15 ms of work. The reader's thread runs one
        function at a time, so nothing else reads inside this transaction.
        """

        def run() -> T:
            conn: sqlite3.Connection = self._r._conn  # aiosqlite (pinned <0.23), as _write
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return cast(T, await self._r._execute(run))  # type: ignore[no-untyped-call]

    async def dashboard_summary(
        self,
        *,
        accounts: Sequence[str],
        access_before: float,
        refresh_before: float,
        errors_since: float,
        history_after: int,
        listed: int = 20,
    ) -> DashboardSummary:
        """Everything the status needs that does not grow with the number of accounts, read
        in one hop: see ``DashboardSummary`` for what each part is. ``accounts``: the
        configured ones, to find those without tokens."""
        configured = json.dumps(list(accounts))

        def read(conn: sqlite3.Connection) -> DashboardSummary:
            waiting = [
                _job_from_row(r)
                for state in (JobState.UNCERTAIN.value, JobState.REVIEW.value)
                for r in conn.execute(
                    "SELECT * FROM jobs WHERE state = ? ORDER BY created_at DESC, id LIMIT ?",
                    (state, listed),
                )
            ]
            stuck = conn.execute(
                "SELECT * FROM jobs WHERE state = 'processing' AND stuck_at IS NOT NULL "
                "ORDER BY stuck_at LIMIT ?",
                (listed,),
            )
            codes = conn.execute("SELECT * FROM unknown_codes ORDER BY last_seen DESC")
            history = conn.execute(
                # NOT INDEXED: the rowid range is the cheap path (token_outcomes_after).
                "SELECT account_id, outcome, COUNT(*), MAX(id) FROM token_history NOT INDEXED "
                "WHERE id > ? GROUP BY account_id, outcome",
                (history_after,),
            ).fetchall()
            return DashboardSummary(
                token_troubles=[
                    _token_status_from_row(r)
                    for r in conn.execute(
                        f"SELECT {_TOKEN_STATUS_COLUMNS} FROM tokens WHERE state <> 'valid' "
                        "OR last_error IS NOT NULL OR access_expires_at < ? "
                        "OR refresh_expires_at < ?",
                        (access_before, refresh_before),
                    )
                ],
                without_token={
                    r[0]
                    for r in conn.execute(
                        "SELECT value FROM json_each(?) "
                        "WHERE value NOT IN (SELECT account_id FROM tokens)",
                        (configured,),
                    )
                },
                recent_errors={
                    r["account_id"]: _last_error_from_row(r)
                    for r in conn.execute(
                        # A range of attempts_errors_by_time. end_attempt writes error_code
                        # together with finished_at: a failed attempt always has both.
                        "SELECT account_id, error_code, error_message, job_id, "
                        "MAX(finished_at) AS at FROM attempts "
                        "WHERE error_code IS NOT NULL AND finished_at > ? GROUP BY account_id",
                        (errors_since,),
                    )
                },
                job_totals=dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")),
                unplaced_jobs=conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE account_id = ''"
                ).fetchone()[0],
                waiting_for_human=waiting,
                stuck=[_job_from_row(r) for r in stuck],
                unknown_codes=[UnknownCode(**{k: r[k] for k in r.keys()}) for r in codes],  # noqa: SIM118
                refreshes=[(r[0], r[1], r[2]) for r in history],
                history_seen=max((r[3] for r in history), default=history_after),
            )

        return await self._read(read)

    async def dashboard_accounts(self, accounts: Sequence[str] | None = None) -> DashboardAccounts:
        """The rows of ``accounts`` (None: every account) in one hop. A list of accounts is
        passed as one JSON array read with json_each: one statement, an index seek per
        account, never a query each."""
        where, params = "", cast(tuple[str, ...], ())
        if accounts is not None:
            where = "WHERE account_id IN (SELECT value FROM json_each(?))"
            params = (json.dumps(list(accounts)),)

        def read(conn: sqlite3.Connection) -> DashboardAccounts:
            jobs = conn.execute(
                # One pass over jobs_by_account: the counts and the waiting lanes together.
                f"SELECT account_id, state, lane, COUNT(*) FROM jobs {where} "
                "GROUP BY account_id, state, lane",
                params,
            )
            tokens = conn.execute(f"SELECT {_TOKEN_STATUS_COLUMNS} FROM tokens {where}", params)
            if accounts is None:
                errors = conn.execute(
                    # Bare columns of a MAX() come from the row holding the maximum: one pass
                    # over attempts_errors_by_account.
                    "SELECT account_id, error_code, error_message, job_id, "
                    "MAX(finished_at) AS at FROM attempts WHERE error_code IS NOT NULL "
                    "GROUP BY account_id"
                )
            else:
                errors = conn.execute(
                    "SELECT a.account_id, a.error_code, a.error_message, a.job_id, "
                    "a.finished_at AS at FROM json_each(?) AS j JOIN attempts AS a ON a.id = ("
                    "  SELECT id FROM attempts WHERE account_id = j.value "
                    "  AND error_code IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT 1)",
                    params,
                )
            return DashboardAccounts(
                jobs=[(r[0], r[1], r[2], r[3]) for r in jobs],
                tokens=[_token_status_from_row(r) for r in tokens],
                last_errors={r["account_id"]: _last_error_from_row(r) for r in errors},
            )

        return await self._read(read)

    async def job_account_ids(self) -> set[str]:
        """Every account that has a job, in any state (pool jobs not yet placed: "")."""
        return {r[0] for r in await self._fetchall("SELECT DISTINCT account_id FROM jobs")}


async def _submit_in(conn: aiosqlite.Connection, job: Job, payload_sha256: str) -> tuple[str, Job]:
    async with conn.execute(
        "SELECT * FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
    ) as cur:
        row = await cur.fetchone()
    if row is not None:
        same = row["payload_sha256"] == payload_sha256
        outcome = SubmitOutcome.EXISTING if same else SubmitOutcome.CONFLICT
        return outcome, _job_from_row(row)
    values = {name: _column_value(name, getattr(job, name)) for name in _JOB_FIELDS}
    values["id"] = job.id
    values["payload_sha256"] = payload_sha256
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    await conn.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(values.values()))
    await _insert_event(conn, job.id, job.created_at, None, job.state, "job.submitted", {})
    return SubmitOutcome.CREATED, job


async def _save_token_in(
    conn: aiosqlite.Connection, record: TokenRecord, history: TokenOutcome | None
) -> None:
    await conn.execute(
        "INSERT OR REPLACE INTO tokens (account_id, open_id, access_token, "
        "access_expires_at, refresh_token, refresh_expires_at, scopes, state, "
        "imported_sha256, last_error, updated_at, access_issued_at, refresh_failures, "
        "next_refresh_at, refresh_started_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            record.account_id,
            record.open_id,
            record.access_token,
            record.access_expires_at,
            record.refresh_token,
            record.refresh_expires_at,
            ",".join(sorted(record.scopes)),
            record.state,
            record.imported_sha256,
            record.last_error,
            record.updated_at,
            record.access_issued_at,
            record.refresh_failures,
            record.next_refresh_at,
            record.refresh_started_at,
        ),
    )
    if history is not None:
        await conn.execute(
            "INSERT INTO token_history (account_id, at, outcome, code, error_class) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                record.account_id,
                history.at,
                history.outcome,
                history.code,
                history.error_class,
            ),
        )


async def _begin_attempt_in(
    conn: aiosqlite.Connection, job_id: str | None, account_id: str, step: str, now: float
) -> int:
    cur = await conn.execute(
        "INSERT INTO attempts (job_id, account_id, step, started_at) VALUES (?, ?, ?, ?)",
        (job_id, account_id, step, now),
    )
    return int(cur.lastrowid or 0)


async def _end_attempt_in(conn: aiosqlite.Connection, end: AttemptEnd) -> None:
    error = end.error
    outcome = end.outcome or ("error" if error else "ok")
    raw = (error.raw or "")[:RAW_LIMIT] if error else None
    await conn.execute(
        "UPDATE attempts SET finished_at = ?, outcome = ?, http_status = ?, "
        "error_code = ?, error_message = ?, log_id = ?, raw = ?, error_class = ?, "
        "known = ? WHERE id = ?",
        (
            end.at,
            outcome,
            error.http_status if error else None,
            error.code if error else None,
            error.message if error else None,
            error.log_id if error else None,
            raw,
            end.error_class,
            None if end.known is None else int(end.known),
            end.id,
        ),
    )


async def _insert_event(
    conn: aiosqlite.Connection,
    job_id: str,
    at: float,
    from_state: str | None,
    to_state: str | None,
    action: str,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO events (job_id, at, from_state, to_state, action, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, at, from_state, to_state, action, json.dumps(detail, sort_keys=True)),
    )


# -- the dashboard's light rows ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenStatus:
    """An account's tokens as the dashboard shows them: states and times, no token. Reading
    only these columns keeps a 10,000-account status from loading every secret."""

    account_id: str
    open_id: str | None
    scopes: frozenset[str]
    state: str
    access_expires_at: float | None
    access_issued_at: float | None
    refresh_expires_at: float | None
    last_error: str | None
    refresh_failures: int
    updated_at: float


_TOKEN_STATUS_COLUMNS = (
    "account_id, open_id, scopes, state, access_expires_at, access_issued_at, "
    "refresh_expires_at, last_error, refresh_failures, updated_at"
)


def _token_status_from_row(row: sqlite3.Row) -> TokenStatus:
    return TokenStatus(
        account_id=row[0],
        open_id=row[1],
        scopes=frozenset(s for s in row[2].split(",") if s),
        state=row[3],
        access_expires_at=row[4],
        access_issued_at=row[5],
        refresh_expires_at=row[6],
        last_error=row[7],
        refresh_failures=row[8],
        updated_at=row[9],
    )


def _last_error_from_row(row: sqlite3.Row) -> LastError:
    return LastError(
        code=row["error_code"], message=row["error_message"], job_id=row["job_id"], at=row["at"]
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class DashboardSummary:
    """What a status needs beyond the accounts it lists, from one snapshot."""

    # Tokens that may need an operator (the caller judges with the refresh margin).
    token_troubles: list[TokenStatus]
    without_token: set[str]  # of the accounts asked about, those with no tokens at all
    recent_errors: dict[str, LastError]  # each account's latest failure since ``errors_since``
    job_totals: dict[str, int]  # every job by state
    unplaced_jobs: int  # pool jobs no account could take yet (account "")
    waiting_for_human: list[Job]  # the newest uncertain and review jobs, ``listed`` of each
    stuck: list[Job]
    unknown_codes: list[UnknownCode]
    refreshes: list[tuple[str, str, int]]  # (account, outcome, n) after ``history_after``
    history_seen: int  # the last history row counted


@dataclass(frozen=True, kw_only=True, slots=True)
class DashboardAccounts:
    """The rows of the accounts a status lists."""

    jobs: list[tuple[str, str, str, int]]  # (account, state, lane, jobs)
    tokens: list[TokenStatus]
    last_errors: dict[str, LastError]  # however old
