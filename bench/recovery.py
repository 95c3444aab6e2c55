"""Recovery: SIGKILL the daemon mid-posting with 100,000 queued jobs, restart, and check that
every job is intact and nothing was posted twice.

    .venv/bin/python -m bench.recovery            # 10,000 accounts, 100,000 jobs
    .venv/bin/python -m bench.recovery --quick    # 1,000 accounts, 10,000 jobs

1. The jobs are seeded due now (``bench.common.seed_jobs``), the daemon starts and posts;
   once the sandbox has accepted ``--inits`` inits (its own counter, read from the sandbox's
   process), the daemon gets SIGKILL.
2. Every job's state is read from the database file the dead daemon left.
3. The daemon starts again: the time from spawn to READY is the figure. Every job's state
   is read again at once: no job may be missing or new, and the only moves allowed are
   ``Store.recover``'s (``dispatching`` -> ``queued`` or ``uncertain``) plus progress the
   new process made meanwhile.
4. It posts on until ``--inits`` more inits, then stops cleanly. The sandbox's ledger must
   show no duplicate post; every post on it must belong to a job the store says reached
   TikTok (none back in the queue), and ``PRAGMA integrity_check`` must say ok.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import Row, print_table, wait_until, write_results
from .scale import World

REACHED_TIKTOK = {"uploading", "processing", "published", "uncertain", "dead", "review"}


def job_states(db: Path) -> dict[str, tuple[str, str, str | None]]:
    """id -> (state, caption, publish_id), read straight from the file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, state, caption, publish_id FROM jobs").fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def inits(world: World) -> int:
    counters = world.sandbox.ledger()["counters"].get("video_init", {})
    return int(counters.get("200", 0))


def moves(
    before: dict[str, tuple[str, str, str | None]], after: dict[str, tuple[str, str, str | None]]
) -> Counter[str]:
    return Counter(
        f"{before[j][0]} -> {after[j][0]}" for j in before if j in after and before[j] != after[j]
    )


# Progress the restarted daemon may make between READY and the reading, besides recovery.
ALLOWED = {
    ("dispatching", "queued"),
    ("dispatching", "uncertain"),
    ("queued", "dispatching"),
    ("queued", "uploading"),
    ("queued", "processing"),
    ("dispatching", "uploading"),
    ("dispatching", "processing"),
    ("uploading", "processing"),
    ("processing", "published"),
    ("queued", "retry_wait"),
    ("dispatching", "retry_wait"),
    ("uploading", "retry_wait"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1,000 accounts and 10,000 jobs")
    p.add_argument("--accounts", type=int)
    p.add_argument("--jobs", type=int)
    p.add_argument("--inits", type=int, default=300, help="inits before the kill, and after")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    accounts = args.accounts or (1000 if args.quick else 10_000)
    jobs = args.jobs or (10_000 if args.quick else 100_000)
    work = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    r: dict[str, Any] = {"accounts": accounts, "queued_jobs": jobs}
    world = None
    try:
        world = World(work, accounts=accounts, jobs=jobs, due_now=True, app_rate=100.0)
        db = work / "state" / "orchestrator.db"
        r["seeding"] = world.seeding
        daemon = world.daemon
        daemon.start()
        r["first_start"] = asdict(daemon.wait_ready())
        wait_until(lambda: inits(world) >= args.inits, timeout=600, what="inits", every=0.2)
        daemon.kill9()
        r["inits_before_kill"] = inits(world)
        before = job_states(db)
        r["before"] = dict(Counter(s for s, _, _ in before.values()))

        daemon.start()
        ready = daemon.wait_ready()
        after = job_states(db)
        r["restart"] = asdict(ready) | {"rss_kib_at_ready": daemon.memory("VmRSS")}
        r["after"] = dict(Counter(s for s, _, _ in after.values()))
        r["missing"] = len(before.keys() - after.keys())
        r["new"] = len(after.keys() - before.keys())
        changed = moves(before, after)
        r["moves_at_restart"] = dict(changed)
        r["unexpected_moves"] = {
            m: n for m, n in changed.items() if tuple(m.split(" -> ")) not in ALLOWED
        }

        target = inits(world) + args.inits
        wait_until(lambda: inits(world) >= target, timeout=600, what="more inits", every=0.2)
        r["stop_exit"] = daemon.stop()
        final = job_states(db)
        ledger = world.sandbox.ledger()
        by_caption = {caption: (state, pid) for state, caption, pid in final.values()}
        posts = ledger["posts"]
        r["ledger_posts"] = len(posts)
        r["ledger_duplicates"] = len(ledger["duplicates"])
        r["violations"] = {k: v for k, v in ledger["violations"].items() if v}
        r["posts_of_jobs_not_at_tiktok"] = sum(
            1
            for post in posts
            if by_caption.get(post["title"], ("?", None))[0] not in REACHED_TIKTOK
        )
        r["final"] = dict(Counter(s for s, _, _ in final.values()))
        r["final_total"] = len(final)
        r["integrity_check"] = integrity(db)
    finally:
        if world is not None:
            world.close()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(r)
    path = write_results("recovery" if not args.quick else "recovery-quick", r)
    print(f"\nwritten to {path}")
    return 0


def report(r: dict[str, Any]) -> None:
    intact = (
        r["missing"] == 0
        and r["new"] == 0
        and not r["unexpected_moves"]
        and r["final_total"] == r["queued_jobs"]
    )
    rows = [
        Row(metric="accounts / queued jobs", value=f"{r['accounts']:,} / {r['queued_jobs']:,}"),
        Row(metric="inits accepted before SIGKILL", value=str(r["inits_before_kill"])),
        Row(metric="states at the kill", value=_states(r["before"])),
        Row(metric="states at READY again", value=_states(r["after"])),
        Row(
            metric="restart to READY (s)",
            value=f"{r['restart']['seconds']:.2f}",
            target="<= 5",
            met=r["restart"]["seconds"] <= 5,
        ),
        Row(metric="readiness signal", value=r["restart"]["method"]),
        Row(
            metric="jobs missing / new / moved unexpectedly",
            value=f"{r['missing']} / {r['new']} / {sum(r['unexpected_moves'].values())}",
            target="0 / 0 / 0",
            met=intact,
        ),
        Row(
            metric="ledger posts / duplicates",
            value=f"{r['ledger_posts']} / {r['ledger_duplicates']}",
            target="0 duplicates",
            met=r["ledger_duplicates"] == 0,
        ),
        Row(
            metric="posts whose job is back in the queue",
            value=str(r["posts_of_jobs_not_at_tiktok"]),
            target="0",
            met=r["posts_of_jobs_not_at_tiktok"] == 0,
        ),
        Row(
            metric="integrity_check",
            value=r["integrity_check"],
            target="ok",
            met=r["integrity_check"] == "ok",
        ),
    ]
    print_table("recovery: SIGKILL mid-posting, restart", rows)


def _states(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))


if __name__ == "__main__":
    raise SystemExit(main())
