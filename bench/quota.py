"""Quota use: how much of what TikTok's limits allow does the daemon actually post?

    .venv/bin/python -m bench.quota [--scale 360] [--seed 0] [--no-plot]

100 accounts, each with TikTok's daily cap (15 direct posts per rolling 24 h) and per-token
budgets (6 inits, 20 creator_info, 30 status requests a minute) enforced by the sandbox, and
the app's own pace (5 requests a second) in the daemon. Over one simulated day more work
arrives than the caps allow: pinned jobs in two bursts per account (hours 0 and 8), and pool
jobs spread over the day plus a burst at hour 12. Jobs are submitted through the control API
up front, each with ``not_before`` at its arrival time.

The sandbox is the judge, not the daemon: posts come from its ledger (published at), 429s
from its per-endpoint answer counters, cap rejections and cap overruns from its audit. What
the limits allow is computed from the arrivals alone: by any moment, each account can have
posted at most ``min(cap, its pinned jobs so far + pool jobs it could take)``. The figure is
posts made / posts allowed over the day (target >= 0.99), with 429s and cap rejections
(target 0). Writes ``bench/results/quota.json`` and, with matplotlib (``pip install
.[bench]``), ``bench/results/quota.png``: posts per simulated hour against the allowed rate.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.client import DaemonClient

from .common import (
    RESULTS,
    DaemonProcess,
    Row,
    SandboxProcess,
    make_video,
    print_table,
    wait_until,
    write_config,
    write_results,
)

DAY, HOUR = 86_400.0, 3_600.0
ACCOUNTS, CAP = 100, 15
PINNED_BURSTS = ((0.0, 6), (8.0, 6))  # (hour, jobs per account)
POOL_SPREAD, POOL_SPREAD_UNTIL = 600, 20.0  # jobs arriving evenly over hours 0..20
POOL_BURST = (12.0, 200)  # (hour, jobs)
LEAD = 3 * HOUR  # simulated time reserved for submitting every job before the day starts


@dataclass(frozen=True, kw_only=True, slots=True)
class Arrival:
    at: float  # simulated seconds after the day starts
    account: str | None  # None: a pool job


def arrivals(seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    jobs = [
        Arrival(at=hour * HOUR, account=account_id(n))
        for hour, count in PINNED_BURSTS
        for n in range(1, ACCOUNTS + 1)
        for _ in range(count)
    ]
    jobs += [
        Arrival(at=rng.uniform(0, POOL_SPREAD_UNTIL * HOUR), account=None)
        for _ in range(POOL_SPREAD)
    ]
    jobs += [Arrival(at=POOL_BURST[0] * HOUR, account=None) for _ in range(POOL_BURST[1])]
    return sorted(jobs, key=lambda a: (a.at, a.account or ""))


def account_id(n: int) -> str:
    return f"q-{n:03d}"


def allowed_by(jobs: Sequence[Arrival], t: float) -> int:
    """The most posts the caps let the jobs arrived before ``t`` make (in one day, windows
    empty at its start): each account up to its cap with its own jobs, pool jobs filling the
    rest. Rate budgets do not bind at this resolution: an account's 15 posts need 3 minutes
    of its 6 inits a minute, and the app's 5 requests a second carry ~3,600 posts an hour."""
    pinned = Counter(a.account for a in jobs if a.account is not None and a.at < t)
    pool = sum(1 for a in jobs if a.account is None and a.at < t)
    own = sum(min(CAP, pinned[account_id(n)]) for n in range(1, ACCOUNTS + 1))
    return own + min(pool, ACCOUNTS * CAP - own)


def hourly(values: Sequence[float], start: float, hours: int) -> list[int]:
    counts = [0] * hours
    for at in values:
        h = int((at - start) // HOUR)
        if 0 <= h < hours:
            counts[h] += 1
    return counts


def run(scale: float, seed: int, work: Path) -> dict[str, Any]:
    epoch = time.time()
    sandbox = SandboxProcess(
        work,
        users=ACCOUNTS,
        epoch=epoch,
        time_scale=scale,
        extra=["--seed", str(seed), "--daily-cap", str(CAP), "--processing-seconds", "20"],
    )

    def sim_now() -> float:
        return epoch + (time.time() - epoch) * scale

    try:
        config = write_config(
            work / "accounts.toml",
            base_url=sandbox.base_url,
            accounts=[(account_id(n), sandbox.token_file(n)) for n in range(1, ACCOUNTS + 1)],
            daemon={
                "state_dir": work / "state",
                "socket_path": work / "orchestrator.sock",
                "log_level": "warning",
                "poll_interval": 60.0,
                "time_scale": scale,
                "clock_epoch": epoch,
                "request_timeout": 30.0,
            },
            account={"tags": ["quota"], "daily_cap": CAP, "privacy_level": "SELF_ONLY"},
        )
        jobs = arrivals(seed)
        videos = [make_video(work / f"v{n}.mp4", 10_000 + n, seed=n) for n in range(50)]
        daemon = DaemonProcess(config, work)
        try:
            daemon.start()
            daemon.wait_ready(timeout=120, grace=0.2)
            start = sim_now() + LEAD
            wall_start = time.monotonic()
            with DaemonClient(daemon.socket_path, timeout=60) as client:
                for k, job in enumerate(jobs):
                    body: dict[str, Any] = {
                        "video_path": str(videos[k % len(videos)]),
                        "caption": f"quota #{k}",
                        "not_before": start + job.at,
                    }
                    body |= {"account": job.account} if job.account else {"pool": "pool:quota"}
                    client.submit(body)
            submitted = sim_now()
            if submitted >= start:
                raise RuntimeError(
                    f"submitting took {(submitted - start + LEAD) / scale:.0f} s of wall time, "
                    "past the lead; run with a lower --scale"
                )
            print(
                f"quota: {len(jobs)} jobs submitted in {time.monotonic() - wall_start:.0f} s;"
                f" the day runs {DAY / scale:.0f} s of wall time"
            )
            end = start + DAY - 60.0  # stop before the first caps' windows reopen
            wait_until(
                lambda: sim_now() >= end,
                timeout=(end - sim_now()) / scale + 60,
                what="the simulated day to pass",
                every=1.0,
            )
            with DaemonClient(daemon.socket_path, timeout=60) as client:
                totals = client.status()["totals"]
        finally:
            exit_code = daemon.stop()
            daemon.notify.close()
        settled_at = sim_now() + 60.0  # processing (20 s) of the last uploads, then some
        wait_until(
            lambda: sim_now() >= settled_at, timeout=60, what="the last processing", every=0.05
        )
        ledger = sandbox.ledger()
    finally:
        sandbox.stop()
    return measure(jobs, ledger, start, totals, exit_code, scale, seed)


def measure(
    jobs: Sequence[Arrival],
    ledger: dict[str, Any],
    start: float,
    totals: dict[str, int],
    exit_code: int,
    scale: float,
    seed: int,
) -> dict[str, Any]:
    posts = [p for p in ledger["posts"] if start <= p["published_at"] < start + DAY]
    allowed = allowed_by(jobs, DAY)
    cumulative_allowed = [allowed_by(jobs, (h + 1) * HOUR) for h in range(24)]
    per_hour_allowed = [
        b - a for a, b in zip([0, *cumulative_allowed[:-1]], cumulative_allowed, strict=True)
    ]
    per_account = Counter(p["open_id"] for p in posts)
    too_many = {
        endpoint: counts.get("429", 0)
        for endpoint, counts in ledger["counters"].items()
        if counts.get("429", 0)
    }
    return {
        "scale": scale,
        "seed": seed,
        "accounts": ACCOUNTS,
        "daily_cap": CAP,
        "jobs": len(jobs),
        "jobs_pinned": sum(1 for a in jobs if a.account),
        "jobs_pool": sum(1 for a in jobs if not a.account),
        "posts_allowed": allowed,
        "posts_made": len(posts),
        "quota_use": round(len(posts) / allowed, 4),
        "http_429_received": sum(too_many.values()),
        "http_429_by_endpoint": too_many,
        "rate_limit_violations": ledger["violations"]["rate_limited"],
        "cap_rejections": ledger["cap_rejections"],
        "cap_exceeded": ledger["violations"]["cap_exceeded"],
        "expired_token_requests": ledger["violations"]["expired_token_requests"],
        "refresh_token_reuse": ledger["violations"]["refresh_token_reuse"],
        "duplicate_posts": len(ledger["duplicates"]),
        "accounts_at_cap": sum(1 for n in per_account.values() if n == CAP),
        "most_posts_on_one_account": max(per_account.values(), default=0),
        "posts_per_hour": hourly([p["published_at"] for p in posts], start, 24),
        "allowed_per_hour": per_hour_allowed,
        "allowed_cumulative": cumulative_allowed,
        "daemon_totals_at_day_end": totals,
        "daemon_exit": exit_code,
        "answers_by_endpoint": ledger["counters"],
    }


def plot(result: dict[str, Any], path: Path) -> str:
    """The PNG, or why there is none (matplotlib is an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install '.[bench]')"
    hours = list(range(24))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.bar(hours, result["posts_per_hour"], color="#4c72b0", label="posts made (ledger)")
    top.step(
        hours,
        result["allowed_per_hour"],
        where="mid",
        color="#c44e52",
        label="allowed by caps and arrivals",
    )
    top.set_ylabel("posts per simulated hour")
    top.legend()
    made = [sum(result["posts_per_hour"][: h + 1]) for h in hours]
    bottom.plot(hours, made, marker="o", color="#4c72b0", label="posts made, cumulative")
    bottom.plot(
        hours,
        result["allowed_cumulative"],
        color="#c44e52",
        linestyle="--",
        label="allowed, cumulative",
    )
    bottom.set_xlabel("simulated hour of the day")
    bottom.set_ylabel("posts")
    bottom.legend()
    fig.suptitle(
        f"Quota use: {result['posts_made']} of {result['posts_allowed']} allowed posts "
        f"({result['quota_use']:.1%}), {result['http_429_received']} 429s; "
        f"{result['accounts']} accounts, cap {result['daily_cap']}/day"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quota", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--scale", type=float, default=360.0, help="simulated s per real s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="quota-") as tmp:
        started = time.monotonic()
        result = run(args.scale, args.seed, Path(tmp))
        result["wall_seconds"] = round(time.monotonic() - started, 1)
    print_table(
        f"Quota use: {ACCOUNTS} accounts, one simulated day at x{args.scale:g}",
        [
            Row(
                metric="jobs (pinned + pool)",
                value=f"{result['jobs_pinned']} + {result['jobs_pool']}",
            ),
            Row(metric="posts allowed", value=str(result["posts_allowed"])),
            Row(metric="posts made (ledger)", value=str(result["posts_made"])),
            Row(
                metric="quota use",
                value=f"{result['quota_use']:.4f}",
                target=">= 0.99",
                met=result["quota_use"] >= 0.99,
            ),
            Row(
                metric="429s received",
                value=str(result["http_429_received"]),
                target="0",
                met=result["http_429_received"] == 0,
            ),
            Row(
                metric="cap rejections",
                value=str(result["cap_rejections"]),
                target="0",
                met=result["cap_rejections"] == 0,
            ),
            Row(
                metric="cap exceeded",
                value=str(result["cap_exceeded"]),
                target="0",
                met=result["cap_exceeded"] == 0,
            ),
            Row(
                metric="duplicate posts",
                value=str(result["duplicate_posts"]),
                target="0",
                met=result["duplicate_posts"] == 0,
            ),
            Row(metric="wall seconds", value=str(result["wall_seconds"])),
        ],
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    note = "no plot: --no-plot" if args.no_plot else plot(result, RESULTS / "quota.png")
    result["plot"] = note
    print(note)
    print(f"wrote {write_results('quota', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
