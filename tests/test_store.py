"""The store against a real SQLite file: idempotent submit, compare-and-set, crash recovery."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.jobs import Job, JobState, Mode, Source
from orchestrator.store import StaleTransition, Store, SubmitOutcome

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000.0


def make_job(job_id: str = "j_1", key: str = "k1", account: str = "acme-us") -> Job:
    return Job(
        id=job_id,
        idempotency_key=key,
        account_id=account,
        mode=Mode.DIRECT,
        source=Source.FILE_UPLOAD,
        video_path="/spool/x.mp4",
        video_url=None,
        video_size=1000,
        content_sha256="ab" * 32,
        caption="hello",
        privacy_level="SELF_ONLY",
        state=JobState.QUEUED,
        not_before=NOW,
        created_at=NOW,
        updated_at=NOW,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "state" / "orchestrator.db")
    yield s
    await s.close()


async def test_database_file_is_private(store: Store) -> None:
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


async def test_same_key_same_payload_returns_the_existing_job(store: Store) -> None:
    outcome, _ = await store.submit(make_job(), "payload-1")
    assert outcome == SubmitOutcome.CREATED
    outcome, again = await store.submit(make_job(job_id="j_2"), "payload-1")
    assert outcome == SubmitOutcome.EXISTING and again.id == "j_1"
    outcome, other = await store.submit(make_job(job_id="j_3"), "payload-2")
    assert outcome == SubmitOutcome.CONFLICT and other.id == "j_1"
    assert [j.id for j in await store.list_jobs()] == ["j_1"]


async def test_transition_is_compare_and_set_and_writes_the_timeline(store: Store) -> None:
    await store.submit(make_job(), "p")
    job = await store.transition(
        "j_1", expect=[JobState.QUEUED], to=JobState.DISPATCHING, now=NOW + 1, action="x"
    )
    assert job.state is JobState.DISPATCHING
    with pytest.raises(StaleTransition):
        await store.transition(
            "j_1", expect=[JobState.QUEUED], to=JobState.DISPATCHING, now=NOW + 2, action="y"
        )
    events, _ = await store.timeline("j_1")
    assert [(e.action, e.from_state, e.to_state) for e in events] == [
        ("job.submitted", None, "queued"),
        ("x", "queued", "dispatching"),
    ]


async def test_recover_requeues_unsent_and_flags_sent_inits(store: Store) -> None:
    for n in (1, 2, 3):
        await store.submit(make_job(job_id=f"j_{n}", key=f"k{n}"), f"p{n}")
        await store.transition(
            f"j_{n}", expect=[JobState.QUEUED], to=JobState.DISPATCHING, now=NOW, action="d"
        )
    # j_2: the init left and its answer was never recorded; j_3: the answer was recorded.
    await store.checkpoint("j_2", NOW, init_sent_at=NOW)
    await store.transition(
        "j_3",
        expect=[JobState.DISPATCHING],
        to=JobState.UPLOADING,
        now=NOW,
        action="a",
        publish_id="v_pub_file~1",
        init_sent_at=NOW,
    )
    moved = await store.recover(NOW + 5)
    assert moved == {"queued": 1, "uncertain": 1}
    states = {j.id: j.state for j in await store.list_jobs()}
    assert states == {"j_1": "queued", "j_2": "uncertain", "j_3": "uploading"}
    # An interrupted upload is the account's next piece of work, before the queue.
    nxt = await store.next_job("acme-us", NOW + 5)
    assert nxt is not None and nxt.id == "j_3"


async def test_new_lane_goes_before_retries(store: Store) -> None:
    await store.submit(replace(make_job("j_r", "kr"), lane="retry", not_before=NOW - 10), "r")
    await store.submit(make_job("j_n", "kn"), "n")
    nxt = await store.next_job("acme-us", NOW)
    assert nxt is not None and nxt.id == "j_n"


async def test_reopening_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    s = await Store.open(path)
    await s.submit(make_job(), "p")
    await s.close()
    s = await Store.open(path)
    try:
        job = await s.get_job("j_1")
        assert job is not None and job.caption == "hello"
        assert await s.integrity_check() == "ok"
    finally:
        await s.close()
