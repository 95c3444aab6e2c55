"""Overhead: CPU per posted job, the daemon against a bare httpx script, in the same run.

    .venv/bin/python -m bench.overhead [--jobs 200] [--accounts 20] [--rounds 2]

Both sides post the same videos the same way to the sandbox (its own process): creator_info,
init (FILE_UPLOAD, one chunk), the upload, then status until PUBLISH_COMPLETE, first asked
10 simulated seconds after the upload as the daemon's poll schedule does. The sandbox runs
with rate limits and daily caps out of the way and the daemon with ``app_rate`` high; time
runs ``--time-scale`` (60) times faster so processing and polling take fractions of a second.

- the script (``python -m bench.overhead --bare``, a separate process) runs one asyncio
  worker per account over one ``httpx.AsyncClient`` and reads its own CPU from
  /proc/self/stat around the posting loop (imports and set-up excluded);
- the daemon is a real ``orchestrator run`` process, ready before the round starts; its CPU
  is read from /proc/PID/stat from just before the first ``POST /v1/jobs`` to the moment
  ``GET /v1/status`` shows every job published, so it includes taking the submission
  (validation, spooling the file under its SHA-256, the durable job row) and the
  bookkeeping a crash-safe pipeline does, plus whatever its timers do meanwhile
  (``idle_cpu_percent`` says how much that is). The harness watches the sandbox's counters
  until every post has had its status call and only then asks the daemon's status, so the
  daemon answers one or two of the harness's requests per round, not one every 0.2 s.

Like with like: both sides make exactly one status call per post here (processing takes 1
simulated second, both first ask 10 s after the upload); the counters of each round show it.
Every submission in a round is the same 1 MiB file, so after the first the daemon finds it
in its spool and only hashes it (``intake.spool_video``); ``intake_ms_per_job`` is measured
with the same file, and BENCHMARKS.md gives the cost of a new video too.

The sandbox's counters, read before and after each side, show both made the same calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .common import (
    PYTHON,
    DaemonProcess,
    Row,
    SandboxProcess,
    cpu_seconds,
    make_video,
    print_table,
    split_cpu,
    thread_cpu_seconds,
    wait_until,
    write_config,
    write_results,
)

FIRST_POLL = 10.0  # simulated seconds after the upload: orchestrator.jobs.EARLY_POLLS[0]


# -- the bare script --------------------------------------------------------------------------


async def bare_post(
    client: httpx.AsyncClient,
    base: str,
    token: str,
    video: Path,
    caption: str,
    scale: float,
) -> int:
    """One post, the plain way; returns how many status calls it took."""
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=UTF-8"}
    r = await client.post(f"{base}/v2/post/publish/creator_info/query/", json={}, headers=auth)
    assert r.json()["error"]["code"] == "ok", r.text
    data = video.read_bytes()
    size = len(data)
    r = await client.post(
        f"{base}/v2/post/publish/video/init/",
        json={
            "post_info": {
                "title": caption,
                "privacy_level": "SELF_ONLY",
                "brand_content_toggle": False,
            },
            "source_info": {
                "source": "FILE_UPLOAD",
                "video_size": size,
                "chunk_size": size,
                "total_chunk_count": 1,
            },
        },
        headers=auth,
    )
    body = r.json()
    assert body["error"]["code"] == "ok", r.text
    publish_id, upload_url = body["data"]["publish_id"], body["data"]["upload_url"]
    r = await client.put(
        upload_url,
        content=data,
        headers={"Content-Type": "video/mp4", "Content-Range": f"bytes 0-{size - 1}/{size}"},
    )
    assert r.status_code in (200, 201), r.text
    await asyncio.sleep(FIRST_POLL / scale)
    polls = 0
    while True:
        polls += 1
        r = await client.post(
            f"{base}/v2/post/publish/status/fetch/", json={"publish_id": publish_id}, headers=auth
        )
        status = r.json()["data"]["status"]
        if status == "PUBLISH_COMPLETE":
            return polls
        assert status != "FAILED", r.text
        await asyncio.sleep(FIRST_POLL / scale)


async def bare_run(spec: dict[str, Any]) -> dict[str, Any]:
    base, scale = spec["base_url"], spec["time_scale"]
    video = Path(spec["video"])
    tokens = [json.loads(Path(f).read_text())["access_token"] for f in spec["token_files"]]
    queues: list[list[str]] = [[] for _ in tokens]
    for n in range(spec["jobs"]):
        queues[n % len(tokens)].append(f"{spec['prefix']} {n}")
    async with httpx.AsyncClient(timeout=30) as client:
        cpu0, t0 = cpu_seconds(), time.monotonic()

        async def worker(n: int, token: str, captions: list[str]) -> int:
            # Staggered: the sandbox's listen backlog is 5 (socketserver's default), and a
            # burst of new connections beyond it is reset.
            await asyncio.sleep(0.01 * n)
            return sum([await bare_post(client, base, token, video, c, scale) for c in captions])

        polls = await asyncio.gather(
            *(worker(n, t, q) for n, (t, q) in enumerate(zip(tokens, queues, strict=True)))
        )
        cpu1, t1 = cpu_seconds(), time.monotonic()
    return {"cpu_seconds": cpu1 - cpu0, "seconds": t1 - t0, "status_calls": sum(polls)}


# -- the benchmark ----------------------------------------------------------------------------


def calls(sandbox: SandboxProcess) -> dict[str, int]:
    counters = sandbox.ledger()["counters"]
    return {ep: sum(by_status.values()) for ep, by_status in counters.items()}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def run_script(sandbox: SandboxProcess, spec: dict[str, Any]) -> dict[str, Any]:
    before = calls(sandbox)
    out = subprocess.run(
        [PYTHON, "-m", "bench.overhead", "--bare", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the bare script failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    result["calls"] = diff(calls(sandbox), before)
    return result


def run_daemon(
    sandbox: SandboxProcess,
    daemon: DaemonProcess,
    video: Path,
    jobs: int,
    accounts: int,
    prefix: str,
) -> dict[str, Any]:
    before = calls(sandbox)
    with daemon.client() as client:
        total_before = client.get("/v1/status").json()["totals"].get("published", 0)
        cpu0, t0 = daemon.cpu(), time.monotonic()
        threads0 = thread_cpu_seconds(daemon.pid)
        for n in range(jobs):
            r = client.post(
                "/v1/jobs",
                json={
                    "account": f"user-{n % accounts + 1}",
                    "video_path": str(video),
                    "caption": f"{prefix} {n}",
                },
            )
            r.raise_for_status()
        submit_cpu = daemon.cpu() - cpu0

        def polled() -> bool:
            return calls(sandbox).get("status", 0) - before.get("status", 0) >= jobs

        def done() -> bool:
            totals = client.get("/v1/status").json()["totals"]
            return totals.get("published", 0) - total_before >= jobs

        # The sandbox's counters first (another process: free for the daemon), the daemon's
        # status only once every post has had its status call. Asking the daemon every 0.2 s
        # throughout charged it for the harness's own dashboard requests, which the script
        # does not have to answer.
        wait_until(polled, timeout=600, what=f"{jobs} status calls", every=0.05)
        wait_until(done, timeout=600, what=f"{jobs} posts", every=0.05)
        cpu1, t1 = daemon.cpu(), time.monotonic()
        threads = split_cpu(daemon.pid, threads0, thread_cpu_seconds(daemon.pid))
    return {
        "cpu_seconds": cpu1 - cpu0,
        "cpu_by_thread": threads,
        "cpu_seconds_while_submitting": submit_cpu,
        "seconds": t1 - t0,
        "calls": diff(calls(sandbox), before),
    }


def run_intake(
    daemon: DaemonProcess, video: Path, jobs: int, accounts: int, not_before: float
) -> float:
    """CPU seconds the daemon spends only taking ``jobs`` submissions (validation, spooling
    the file under its SHA-256 with an fsync, the job row and its event): the jobs are
    scheduled far ahead, so none of them is posted."""
    with daemon.client() as client:
        cpu0 = daemon.cpu()
        for n in range(jobs):
            client.post(
                "/v1/jobs",
                json={
                    "account": f"user-{n % accounts + 1}",
                    "video_path": str(video),
                    "caption": f"intake only {n}",
                    "not_before": not_before,
                },
            ).raise_for_status()
        return daemon.cpu() - cpu0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2, help="script then daemon, this many times")
    p.add_argument("--video-kb", type=int, default=1024, help="video size (one chunk)")
    p.add_argument("--time-scale", type=float, default=60.0)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--profile", type=Path, help="run the daemon under cProfile, into FILE")
    p.add_argument("--bare", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare:
        print(json.dumps(asyncio.run(bare_run(json.loads(args.bare)))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    epoch, scale = time.time(), args.time_scale
    sandbox = SandboxProcess(
        work,
        users=args.accounts,
        epoch=epoch,
        time_scale=scale,
        extra=[
            "--no-rate-limits",
            "--daily-cap",
            "1000000",
            "--processing-seconds",
            "1",
            "--access-ttl",
            str(10**8),
            "--refresh-ttl",
            str(10**9),
        ],
    )
    video = make_video(work / "clip.mp4", args.video_kb * 1024, seed=5)
    token_files = [str(sandbox.token_file(n)) for n in range(1, args.accounts + 1)]
    config = write_config(
        work / "accounts.toml",
        base_url=sandbox.base_url,
        accounts=[(f"user-{n}", Path(f)) for n, f in enumerate(token_files, start=1)],
        daemon={
            "state_dir": work / "state",
            "socket_path": work / "orchestrator.sock",
            "log_level": "info",
            "time_scale": scale,
            "clock_epoch": epoch,
        },
        tiktok={"app_rate": 100000.0, "app_burst": 10000},
        account={"daily_cap": 1000},
    )
    daemon = DaemonProcess(config, work, profile=args.profile)
    rounds: list[dict[str, Any]] = []
    results: dict[str, Any] = {
        "jobs": args.jobs,
        "accounts": args.accounts,
        "video_bytes": video.stat().st_size,
        "time_scale": scale,
    }
    try:
        daemon.start()
        results["readiness"] = daemon.wait_ready().method
        cpu0, t0 = daemon.cpu(), time.monotonic()
        time.sleep(args.idle_seconds)  # a fixed measurement window, not a wait for a state
        results["idle_cpu_percent"] = round(
            100 * (daemon.cpu() - cpu0) / (time.monotonic() - t0), 2
        )
        for n in range(args.rounds):
            spec = {
                "base_url": sandbox.base_url,
                "time_scale": scale,
                "video": str(video),
                "token_files": token_files,
                "jobs": args.jobs,
                "prefix": f"script round {n}",
            }
            script = run_script(sandbox, spec)
            posted = run_daemon(
                sandbox, daemon, video, args.jobs, args.accounts, prefix=f"daemon round {n}"
            )
            rounds.append(
                {
                    "script": script,
                    "daemon": posted,
                    "script_ms_per_job": 1000 * script["cpu_seconds"] / args.jobs,
                    "daemon_ms_per_job": 1000 * posted["cpu_seconds"] / args.jobs,
                }
            )
        later = epoch + (time.time() - epoch) * scale + 30 * 86400.0
        intake = run_intake(daemon, video, args.jobs, args.accounts, later)
        results["intake_ms_per_job"] = round(1000 * intake / args.jobs, 2)
        ledger = sandbox.ledger()
        results["duplicates"] = len(ledger["duplicates"])
        results["posts"] = len(ledger["posts"])
        results["rounds"] = rounds
    finally:
        daemon.close()
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    script_ms = statistics.median(r["script_ms_per_job"] for r in rounds)
    daemon_ms = statistics.median(r["daemon_ms_per_job"] for r in rounds)
    results["script_ms_per_job"] = round(script_ms, 2)
    results["daemon_ms_per_job"] = round(daemon_ms, 2)
    results["ratio"] = round(daemon_ms / script_ms, 2)
    # What is left once taking the submission is set aside: the calls and their bookkeeping.
    results["ratio_without_intake"] = round(
        (daemon_ms - results["intake_ms_per_job"]) / script_ms, 2
    )
    report(results)
    path = write_results("overhead", results)
    print(f"\nwritten to {path}")
    return 0


def report(r: dict[str, Any]) -> None:
    rows = [
        Row(
            metric="jobs x rounds / accounts / video",
            value=f"{r['jobs']} x {len(r['rounds'])} / {r['accounts']} / {r['video_bytes']:,} B",
        ),
        Row(metric="daemon idle CPU before rounds (%)", value=f"{r['idle_cpu_percent']:.2f}"),
    ]
    for n, rnd in enumerate(r["rounds"]):
        rows.append(
            Row(
                metric=f"round {n}: script / daemon CPU ms per job",
                value=f"{rnd['script_ms_per_job']:.2f} / {rnd['daemon_ms_per_job']:.2f}",
            )
        )
        split = rnd["daemon"]["cpu_by_thread"]
        rows.append(
            Row(
                metric=f"round {n}: daemon CPU s, event loop / other threads",
                value=f"{split['event_loop_thread']:.2f} / {split['other_threads']:.2f}",
            )
        )
        rows.append(
            Row(
                metric=f"round {n}: calls script / daemon",
                value=f"{sum(rnd['script']['calls'].values())} / "
                f"{sum(rnd['daemon']['calls'].values())}",
            )
        )
    rows += [
        Row(metric="script CPU ms per job (median)", value=f"{r['script_ms_per_job']:.2f}"),
        Row(metric="daemon CPU ms per job (median)", value=f"{r['daemon_ms_per_job']:.2f}"),
        Row(
            metric="daemon / script",
            value=f"{r['ratio']:.2f}x",
            target="<= 2x",
            met=r["ratio"] <= 2,
        ),
        Row(
            metric="daemon CPU ms per submission alone (intake)",
            value=f"{r['intake_ms_per_job']:.2f}",
        ),
        Row(
            metric="daemon without intake / script",
            value=f"{r['ratio_without_intake']:.2f}x",
        ),
        Row(metric="duplicate posts on the ledger", value=str(r["duplicates"])),
    ]
    print_table("overhead: CPU per posted job", rows)


if __name__ == "__main__":
    sys.exit(main())
