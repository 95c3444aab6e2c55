"""Scale: 10,000 accounts and 100,000 queued jobs in one daemon process.

    .venv/bin/python -m bench.scale            # 10,000 accounts, 100,000 jobs
    .venv/bin/python -m bench.scale --quick    # 1,000 accounts, 10,000 jobs

What is measured, in one run, on a real daemon process against the sandbox in another:

1. start to READY on the first start, which imports every account's token file;
2. idle CPU: every account configured, every token valid (the next refresh is about 110
   minutes away at time scale 1), all queued jobs scheduled for tomorrow, so nothing is due.
   The daemon's CPU over ``--idle-seconds`` (60), from ``--settle`` seconds after READY;
3. latency of the control API while posting: ``--post`` fresh jobs (one per account, due
   now) are submitted through ``POST /v1/jobs`` and carried to PUBLISH_COMPLETE while one
   client samples ``GET /v1/jobs/{id}`` back to back and another, every 0.2 s, the default
   ``GET /v1/status`` (what a dashboard asks for: above 100 accounts, the accounts that need
   attention and counts of the rest) and, every tenth time, right after it, ``GET
   /v1/status?accounts=all`` (the whole table of 10,000 accounts), on one connection, each
   timed on its own. The first status of a daemon reads what later ones keep (the refresh
   history, the accounts with jobs): it is timed apart, as ``status_first_ms``;
4. peak RSS (VmHWM) of the daemon over all of that;
5. start to READY again after a clean stop: the steady-state restart.

The 100,000 jobs are seeded before the first start through ``bench.common.seed_jobs``: the
control API's own parsing, spooling and job building, and ``Store.submit_many`` (the same
rows and idempotency rules as ``Store.submit``, one transaction per 5,000 jobs).
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import (
    DaemonProcess,
    Row,
    SandboxProcess,
    cpu_seconds,
    make_video,
    percentile,
    print_table,
    seed_jobs,
    wait_until,
    write_config,
    write_results,
)

DAY = 86400.0


class World:
    """A sandbox with N users, a config for N accounts and a state directory with M jobs."""

    def __init__(
        self,
        work: Path,
        *,
        accounts: int,
        jobs: int,
        due_now: bool,
        time_scale: float = 1.0,
        app_rate: float = 200.0,
        processing: float = 5.0,
    ) -> None:
        self.work = work
        self.accounts = accounts
        self.epoch = time.time()
        started = time.monotonic()
        self.sandbox = SandboxProcess(
            work,
            users=accounts,
            epoch=self.epoch,
            time_scale=time_scale,
            extra=["--processing-seconds", repr(processing)],
        )
        self.sandbox_seconds = time.monotonic() - started
        self.config = write_config(
            work / "accounts.toml",
            base_url=self.sandbox.base_url,
            accounts=[(f"user-{n}", self.sandbox.token_file(n)) for n in range(1, accounts + 1)],
            daemon={
                "state_dir": work / "state",
                "socket_path": work / "orchestrator.sock",
                "log_level": "info",
                "time_scale": time_scale,
                "clock_epoch": self.epoch,
                "request_timeout": 30.0,
            },
            tiktok={"app_rate": app_rate, "app_burst": int(app_rate)},
        )
        self.video = make_video(work / "clip.mp4", 64_000, seed=1)
        now = self.epoch + (time.time() - self.epoch) * time_scale
        not_before = now if due_now else now + DAY
        self.seeding = seed_jobs(
            self.config,
            (
                {
                    "account": f"user-{i % accounts + 1}",
                    "video_path": str(self.video),
                    "caption": f"queued {i}",
                    "not_before": not_before,
                }
                for i in range(jobs)
            ),
            now=now,
        )
        self.daemon = DaemonProcess(self.config, work)

    def close(self) -> None:
        self.daemon.close()
        self.sandbox.stop()


def sample_latency(
    daemon: DaemonProcess, path_of: Any, stop: threading.Event, out: list[float], pause: float
) -> None:
    """Time requests on one keep-alive connection until ``stop`` (milliseconds, client side)."""
    with daemon.client() as client:
        while not stop.is_set():
            path = path_of()
            if path is None:
                time.sleep(0.01)
                continue
            t0 = time.perf_counter()
            response = client.get(path)
            elapsed = (time.perf_counter() - t0) * 1000
            if response.status_code == 200:
                out.append(elapsed)
            if pause:
                stop.wait(pause)


def sample_status(
    daemon: DaemonProcess, stop: threading.Event, out: dict[str, list[float]], sizes: dict[str, int]
) -> None:
    """Every 0.2 s the default status, and every tenth time the full one after it, timed
    apart (milliseconds, client side). Never both at once: a default request queued behind
    a full one would time the full one. The first request is timed as ``first``."""
    views = (("default", {}), ("all", {"accounts": "all"}))
    with daemon.client() as client:
        t0 = time.perf_counter()
        client.get("/v1/status").raise_for_status()
        out["first"].append((time.perf_counter() - t0) * 1000)
        tick = 0
        while not stop.is_set():
            tick += 1
            for name, params in views if tick % 10 == 1 else views[:1]:
                t0 = time.perf_counter()
                response = client.get("/v1/status", params=params)
                elapsed = (time.perf_counter() - t0) * 1000
                if response.status_code == 200:
                    out[name].append(elapsed)
                    sizes[name] = len(response.content)
                    sizes[f"{name}_accounts"] = len(response.json()["accounts"])
            stop.wait(0.2)


def post_while_sampling(world: World, count: int, timeout: float) -> dict[str, Any]:
    """Submit ``count`` jobs through the API (one per account, due now) and sample the
    control API's latency until every one of them is published."""
    daemon = world.daemon
    ids: list[str] = []
    stop = threading.Event()
    job_ms: list[float] = []
    status_ms: dict[str, list[float]] = {"first": [], "default": [], "all": []}
    sizes: dict[str, int] = {}
    rng = random.Random(7)

    def a_job() -> str | None:
        return f"/v1/jobs/{rng.choice(ids)}" if ids else None

    samplers = [
        threading.Thread(target=sample_latency, args=(daemon, a_job, stop, job_ms, 0.0)),
        threading.Thread(target=sample_status, args=(daemon, stop, status_ms, sizes)),
    ]
    videos = world.work / "posted"
    videos.mkdir(exist_ok=True)
    cpu0, t0 = daemon.cpu(), time.monotonic()
    for sampler in samplers:
        sampler.start()
    try:
        with daemon.client() as client:
            for n in range(count):
                account = f"user-{n % world.accounts + 1}"
                response = client.post(
                    "/v1/jobs",
                    json={
                        "account": account,
                        "video_path": str(world.video),
                        "caption": f"posted now {n}",
                    },
                )
                response.raise_for_status()
                ids.append(response.json()["job"]["id"])
            submitted = time.monotonic() - t0

            def all_published() -> bool:
                body = client.get("/v1/jobs", params={"state": "published", "limit": 10000})
                return len(body.json()["jobs"]) >= count

            wait_until(all_published, timeout=timeout, what=f"{count} posts", every=1.0)
    finally:
        stop.set()
        for sampler in samplers:
            sampler.join()
    return {
        "posted": count,
        "submit_seconds": round(submitted, 2),
        "seconds": round(time.monotonic() - t0, 2),
        "daemon_cpu_seconds": round(daemon.cpu() - cpu0, 2),
        "job_ms": summary(job_ms),
        "status_first_ms": round(status_ms["first"][0], 1) if status_ms["first"] else None,
        "status_ms": summary(status_ms["default"]),
        "status_all_ms": summary(status_ms["all"]),
        "status_bytes": sizes.get("default"),
        "status_accounts_listed": sizes.get("default_accounts"),
        "status_all_bytes": sizes.get("all"),
    }


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "samples": len(ms),
        "p50": round(percentile(ms, 50), 2),
        "p99": round(percentile(ms, 99), 2),
        "max": round(max(ms), 2) if ms else float("nan"),
    }


def idle_cpu(daemon: DaemonProcess, settle: float, seconds: float) -> dict[str, Any]:
    cpu_ready = daemon.cpu()
    time.sleep(settle)  # the measurement window itself: a fixed span, not a wait for a state
    cpu0, t0 = daemon.cpu(), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = daemon.cpu(), time.monotonic()
    return {
        "settle_seconds": settle,
        "settle_cpu_seconds": round(cpu0 - cpu_ready, 2),
        "seconds": round(t1 - t0, 2),
        "cpu_seconds": round(cpu1 - cpu0, 3),
        "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1,000 accounts and 10,000 jobs")
    p.add_argument("--accounts", type=int)
    p.add_argument("--jobs", type=int)
    p.add_argument("--post", type=int, default=500, help="jobs posted while sampling latency")
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=15.0, help="seconds after READY before idle")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    accounts = args.accounts or (1000 if args.quick else 10_000)
    jobs = args.jobs or (10_000 if args.quick else 100_000)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict[str, Any] = {"accounts": accounts, "queued_jobs": jobs}
    world = None
    try:
        world = World(work, accounts=accounts, jobs=jobs, due_now=False)
        results["sandbox_start_seconds"] = round(world.sandbox_seconds, 2)
        results["seeding"] = world.seeding
        daemon = world.daemon

        daemon.start()
        first = daemon.wait_ready()
        results["first_start"] = asdict(first) | {"rss_kib_at_ready": daemon.memory("VmRSS")}
        results["idle"] = idle_cpu(daemon, args.settle, args.idle_seconds)
        results["posting"] = post_while_sampling(world, min(args.post, accounts), timeout=600)
        results["peak_rss_kib"] = daemon.memory("VmHWM")
        results["sandbox_cpu_seconds"] = round(cpu_seconds(world.sandbox.pid), 2)
        results["stop_exit"] = daemon.stop()

        daemon.start()
        again = daemon.wait_ready()
        results["restart"] = asdict(again) | {"rss_kib_at_ready": daemon.memory("VmRSS")}
        results["restart_peak_rss_kib"] = daemon.memory("VmHWM")
        daemon.stop()
    finally:
        if world is not None:
            world.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    report(results)
    path = write_results("scale" if not args.quick else "scale-quick", results)
    print(f"\nwritten to {path}")
    return 0


def report(r: dict[str, Any]) -> None:
    first, again, idle, posting = r["first_start"], r["restart"], r["idle"], r["posting"]
    peak_mb = max(r["peak_rss_kib"], r["restart_peak_rss_kib"]) / 1024
    all_kib = (posting.get("status_all_bytes") or 0) / 1024
    rows = [
        Row(metric="accounts / queued jobs", value=f"{r['accounts']:,} / {r['queued_jobs']:,}"),
        Row(metric="seeding (s)", value=f"{r['seeding']['seconds']:.1f}"),
        Row(
            metric="first start to READY (s)",
            value=f"{first['seconds']:.2f}",
            target="<= 5",
            met=first["seconds"] <= 5,
        ),
        Row(
            metric="restart to READY (s)",
            value=f"{again['seconds']:.2f}",
            target="<= 5",
            met=again["seconds"] <= 5,
        ),
        Row(metric="readiness signal", value=again["method"]),
        Row(metric="peak RSS (MB)", value=f"{peak_mb:.0f}", target="<= 300", met=peak_mb <= 300),
        Row(
            metric=f"idle CPU over {idle['seconds']:.0f} s (%)",
            value=f"{idle['cpu_percent']:.2f}",
            target="<= 2",
            met=idle["cpu_percent"] <= 2,
        ),
        Row(
            metric=f"GET /v1/jobs/ID p50 / p99 (ms), {posting['job_ms']['samples']} samples",
            value=f"{posting['job_ms']['p50']:.1f} / {posting['job_ms']['p99']:.1f}",
            target="p99 <= 50",
            met=posting["job_ms"]["p99"] <= 50,
        ),
        Row(
            metric=f"GET /v1/status (default: {posting.get('status_accounts_listed')} accounts "
            f"listed, {(posting.get('status_bytes') or 0) / 1024:.0f} KiB; the first "
            f"{posting.get('status_first_ms')} ms) p50 / p99 (ms), "
            f"{posting['status_ms']['samples']} samples",
            value=f"{posting['status_ms']['p50']:.1f} / {posting['status_ms']['p99']:.1f}",
            target="p99 <= 50",
            met=posting["status_ms"]["p99"] <= 50,
        ),
        Row(
            metric=f"GET /v1/status?accounts=all ({all_kib:.0f} KiB) p50 / p99 (ms), "
            f"{posting['status_all_ms']['samples']} samples",
            value=f"{posting['status_all_ms']['p50']:.1f} / {posting['status_all_ms']['p99']:.1f}",
        ),
        Row(
            metric=f"posted while sampling ({posting['posted']} jobs, s)",
            value=f"{posting['seconds']:.1f}",
        ),
    ]
    print_table(f"scale: {r['accounts']:,} accounts, {r['queued_jobs']:,} queued jobs", rows)


if __name__ == "__main__":
    raise SystemExit(main())
