"""Chaos soak: 50 accounts, every fault the sandbox has, and a daemon killed with SIGKILL.

    .venv/bin/python -m bench.soak [--long] [--seed N] [--keep DIR]

A real daemon process posts to a real sandbox (HTTP on loopback) whose fault plan mixes every
fault class it offers: API error codes of each catalog class, HTML 5xx pages, delays (short
ones, and ones past the daemon's request timeout), connections dropped before and after the
sandbox acted, processing failures, stuck posts, injected 429s and token failures (OAuth
errors, refreshes whose answer is lost). Meanwhile a submitter thread feeds jobs (pinned and
pool, direct and inbox, file and URL, scheduled and cancelled) and the main thread SIGKILLs
the daemon at seeded random moments and starts it again.

Then the faults are cleared and the daemon is left to settle for as long as jobs keep moving
(``settle``: no wall-clock budget a loaded machine could exhaust). The sandbox's clock is not
advanced: processing takes 20 simulated seconds (a third of a real one) and the daemon's
timers run on its own clock, so a jump would only make the sandbox see tokens the daemon
rightly believes valid as expired. Then the sandbox, not the daemon, is the judge: every job
must be terminal or waiting for a human (review, uncertain, or an account that needs
re-authorization), or waiting for a window the daemon knows (a spent daily cap, a full
creator inbox; ``where_is``); anything else is stuck. Further: no job posted twice,
no post the daemon does not know of, no rate or cap violation, no request with an expired
token, no refresh-token reuse the daemon did not knowingly risk, and SQLite's
``integrity_check`` ok after every kill and at the end. ``tests/test_soak.py`` runs the short
form; ``--long`` runs longer with more kills. Results go to ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.client import DaemonClient, DaemonUnreachable, RequestRefused

from .common import (
    CLIENT_SECRET,
    RESULTS,
    DaemonProcess,
    SandboxProcess,
    machine,
    write_config,
)

T = TypeVar("T")
TERMINAL = frozenset({"published", "dead", "cancelled"})
HUMAN = frozenset({"uncertain", "review"})
# On an account whose creator must authorize the app again, these wait for that human: no
# job is sent and no status can be read without a token (README, Tokens).
WAITING_FOR_AUTH = frozenset({"queued", "retry_wait", "processing"})
PARKED = frozenset({"needs_reauth", "exhausted"})
# TikTok's "the account cannot take it now" answers (catalog class reroute): the job waits
# for the account's window and the daemon tries again by itself.
WINDOW_CODES = frozenset({"spam_risk_too_many_posts", "spam_risk_too_many_pending_share"})
REQUEST_TIMEOUT = 2.0  # real seconds; the "long delay" fault outlasts it


@dataclass(frozen=True, kw_only=True, slots=True)
class SoakPlan:
    seed: int
    accounts: int = 50
    jobs: int = 150
    chaos_seconds: float = 35.0  # real seconds of faults, submissions and kills
    kill_gap: tuple[float, float] = (2.0, 6.0)  # real seconds between two kills
    down_for: tuple[float, float] = (0.0, 1.5)  # real seconds the daemon stays dead
    min_kills: int = 6  # the chaos lasts until there were this many, however slow restarts are
    # The settle phase ends when no job is still on its way; it gives up when no job has
    # changed state for ``settle_quiet`` real seconds (longer than any wait the daemon
    # schedules by itself at this scale: a deferral of 3600 s is 60 s), or at the backstop.
    settle_quiet: float = 120.0
    settle_timeout: float = 600.0
    scale: float = 60.0


SHORT = {"accounts": 50, "jobs": 200, "chaos_seconds": 50.0, "kill_gap": (2.0, 6.0)}
LONG = {
    "accounts": 50,
    "jobs": 900,
    "chaos_seconds": 480.0,
    "kill_gap": (3.0, 15.0),
    "min_kills": 30,
}


@dataclass(kw_only=True, slots=True)
class JobSpec:
    key: str
    caption: str
    account: str | None  # None: a pool job
    mode: str
    video: Path | None
    url: str | None
    not_before: float | None = None
    cancel: bool = False
    job_id: str | None = None
    content_sha256: str | None = None
    submit_tries: int = 0

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "caption": self.caption,
            "mode": self.mode,
            "idempotency_key": self.key,
        }
        if self.account is None:
            body["pool"] = "pool:soak"
        else:
            body["account"] = self.account
        if self.video is not None:
            body["video_path"] = str(self.video)
        else:
            body["video_url"] = self.url
        if self.not_before is not None:
            body["not_before"] = self.not_before
        return body


@dataclass(kw_only=True, slots=True)
class Chaos:
    """What happened during the run, for the summary."""

    kills: int = 0
    restarts: int = 0
    integrity_after_kill: list[str] = field(default_factory=list)
    submit_retries: int = 0
    cancels: int = 0
    refused: list[str] = field(default_factory=list)


# -- the fault plan -------------------------------------------------------------------------

# (endpoint, fault, probability, extra): rules are tried in order and the first that fires
# wins, so each probability is roughly the share of that endpoint's requests it hits.
LATE = REQUEST_TIMEOUT + 1.0
RANDOM_FAULTS: tuple[tuple[str, str, float, dict[str, Any]], ...] = (
    # Tokens: transient OAuth failures (TikTok's 200 and the norm's 400 flavours), HTML, and
    # refreshes whose answer is lost before or after TikTok rotated the token.
    ("token", "oauth_error", 0.05, {"code": "temporarily_unavailable"}),
    ("token", "oauth_error", 0.03, {"code": "server_error", "http_status": 200}),
    ("token", "drop_before", 0.03, {}),
    ("token", "drop_after", 0.03, {}),
    ("token", "html_5xx", 0.02, {"http_status": 503}),
    # creator_info: a stale token, a 429, an HTML 502, a slow answer.
    ("creator_info", "error", 0.03, {"code": "access_token_invalid"}),
    ("creator_info", "error", 0.02, {"code": "rate_limit_exceeded"}),
    ("creator_info", "html_5xx", 0.03, {"http_status": 502}),
    ("creator_info", "delay", 0.03, {"seconds": 0.3}),
    # Inits: every class of the catalog, and every way of losing the answer.
    ("video_init", "error", 0.04, {"code": "internal_error"}),
    ("video_init", "error", 0.02, {"code": ""}),
    ("video_init", "error", 0.02, {"code": "rate_limit_exceeded"}),
    ("video_init", "error", 0.01, {"code": "access_token_invalid"}),
    ("video_init", "html_5xx", 0.02, {"http_status": 503}),
    ("video_init", "delay", 0.01, {"seconds": LATE}),
    ("video_init", "drop_before", 0.01, {}),
    ("video_init", "drop_after", 0.01, {}),
    ("inbox_init", "error", 0.1, {"code": "internal_error"}),
    ("inbox_init", "drop_after", 0.05, {}),
    # What TikTok does with a post after accepting it.
    ("video_init", "processing_failure", 0.04, {"fail_reason": "internal"}),
    ("video_init", "processing_failure", 0.01, {"fail_reason": "file_format_check_failed"}),
    ("video_init", "processing_failure", 0.01, {"fail_reason": "spam_risk_text"}),
    ("video_init", "stuck", 0.01, {}),
    ("inbox_init", "processing_failure", 0.05, {"fail_reason": "internal"}),
    # Uploads: chunks lost before and after they were taken, HTML pages, slow chunks.
    ("upload", "html_5xx", 0.05, {"http_status": 502}),
    ("upload", "drop_before", 0.05, {}),
    ("upload", "drop_after", 0.05, {}),
    ("upload", "delay", 0.05, {"seconds": 0.4}),
    # Status polls.
    ("status", "error", 0.05, {"code": "internal_error"}),
    ("status", "error", 0.02, {"code": "rate_limit_exceeded"}),
    ("status", "html_5xx", 0.03, {"http_status": 504}),
    ("status", "drop_after", 0.03, {}),
    ("status", "delay", 0.03, {"seconds": 0.3}),
    # And a little of everything everywhere.
    ("*", "html_5xx", 0.01, {"http_status": 500}),
)


def fault_plan(open_ids: Sequence[str], seed: int) -> dict[str, Any]:
    """Every fault class of the sandbox, at rates that let most jobs through eventually.

    Besides the random faults, two accounts get their own: one is banned from posting (its
    breaker must open and its jobs go to review or move away), one has its refresh token
    refused (it parks in needs_reauth and its pinned jobs wait for a human); and the first
    three direct inits are refused as invalid, which dead-letters their jobs.
    """
    targeted = [
        {
            "endpoint": "token",
            "fault": "oauth_error",
            "code": "invalid_grant",
            "open_id": open_ids[1],
        },
        {
            "endpoint": "creator_info",
            "fault": "error",
            "code": "spam_risk_user_banned_from_posting",
            "open_id": open_ids[0],
        },
        {"endpoint": "video_init", "fault": "error", "code": "invalid_params", "times": 3},
    ]
    randoms = [
        {"endpoint": e, "fault": f, "probability": p, **extra} for e, f, p, extra in RANDOM_FAULTS
    ]
    return {"seed": seed, "rules": targeted + randoms}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of the daemon's database, read while no daemon runs."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)


# -- set-up --------------------------------------------------------------------------------


def start_sandbox(work: Path, plan: SoakPlan, epoch: float) -> SandboxProcess:
    return SandboxProcess(
        work,
        users=plan.accounts,
        epoch=epoch,
        time_scale=plan.scale,
        # Access tokens live 30 simulated minutes: a refresh every ~20 s of wall time.
        extra=["--seed", str(plan.seed), "--access-ttl", "1800", "--processing-seconds", "20"],
    )


def soak_config(work: Path, sandbox: SandboxProcess, plan: SoakPlan, epoch: float) -> Path:
    daemon = {
        "state_dir": work / "state",
        "socket_path": work / "orchestrator.sock",
        "log_level": "info",
        "poll_interval": 30.0,
        "time_scale": plan.scale,
        "clock_epoch": epoch,
        "request_timeout": REQUEST_TIMEOUT,
        "stuck_after": 600.0,
        "review_stuck_after": 1800.0,
        "breaker_failures": 3,
        "breaker_reset": 300.0,
        "reconcile_interval": 600.0,
    }
    accounts = [(f"soak-{n:02d}", sandbox.token_file(n)) for n in range(1, plan.accounts + 1)]
    return write_config(
        work / "accounts.toml",
        base_url=sandbox.base_url,
        accounts=accounts,
        daemon=daemon,
        tiktok={"app_rate": 50.0, "app_burst": 50},
        account={"tags": ["soak"], "privacy_level": "SELF_ONLY"},
    )


def make_jobs(plan: SoakPlan, work: Path, now: float) -> list[JobSpec]:
    rng = random.Random(plan.seed)
    videos = work / "videos"
    videos.mkdir(exist_ok=True)
    jobs = []
    for k in range(plan.jobs):
        pooled = rng.random() < 0.3
        inbox = rng.random() < 0.15
        by_url = rng.random() < 0.2
        big = not by_url and rng.random() < 0.02
        video = None
        if not by_url:
            size = 11_000_000 if big else rng.randrange(20_000, 120_000)
            video = videos / f"{k}.mp4"
            # Unique bytes per job: a post's content hash names its job on the ledger.
            video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.randbytes(size - 12))
        spec = JobSpec(
            key=f"soak-{plan.seed}-{k}",
            caption=f"soak {plan.seed} #{k}",
            account=None if pooled else f"soak-{k % plan.accounts + 1:02d}",
            mode="inbox" if inbox else "direct",
            video=video,
            url=None if video else f"https://cdn.soak.example/{plan.seed}/{k}.mp4",
        )
        roll = rng.random()
        if roll < 0.05:
            spec.not_before, spec.cancel = now + 86_400 * 7, True  # cancelled before it is due
        elif roll < 0.15:
            spec.not_before = now + rng.uniform(60, 1200)  # due during the run
        jobs.append(spec)
    return jobs


# -- the run -------------------------------------------------------------------------------


class Submitter(threading.Thread):
    """Feeds jobs at a steady pace, retrying through the daemon's deaths; then cancels."""

    def __init__(self, socket_path: Path, jobs: list[JobSpec], span: float, chaos: Chaos):
        super().__init__(name="soak-submitter", daemon=True)
        self.socket_path, self.jobs, self.span, self.chaos = socket_path, jobs, span, chaos
        self.error: BaseException | None = None
        self.refused: list[str] = []

    def run(self) -> None:
        try:
            with DaemonClient(self.socket_path, timeout=10) as client:
                gap = self.span / max(1, len(self.jobs))
                for spec in self.jobs:
                    try:
                        _, job = self._retrying(client.submit, spec.payload())
                    except RequestRefused as exc:
                        # An account already parked for re-authorization takes no new jobs.
                        self.refused.append(f"{spec.key}: {exc.code}")
                        continue
                    spec.job_id = job["id"]
                    # What the sandbox hashes: the bytes uploaded, or the URL it pulls.
                    spec.content_sha256 = job["content_sha256"] or sha256_text(spec.url or "")
                    time.sleep(gap)  # pacing the load, not waiting for a condition
                for spec in self.jobs:
                    if spec.cancel and spec.job_id:
                        self._retrying(client.cancel, spec.job_id)
                        self.chaos.cancels += 1
        except BaseException as exc:
            self.error = exc

    def _retrying(self, call: Callable[..., T], *args: Any) -> T:
        deadline = time.monotonic() + 60
        while True:
            try:
                return call(*args)
            except DaemonUnreachable:
                # Dead, restarting, or killed mid-request: the idempotency key makes a retry
                # of a submission that did land return the same job.
                if time.monotonic() > deadline:
                    raise
                self.chaos.submit_retries += 1
                time.sleep(0.1)


def run_soak(plan: SoakPlan, work: Path, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the whole soak in ``work``; returns the summary (``problems`` gives the verdict)."""
    say(f"soak: seed {plan.seed}, {plan.accounts} accounts, {plan.jobs} jobs, in {work}")
    epoch = time.time()
    rng = random.Random(plan.seed ^ 0x5EED)
    chaos = Chaos()
    started = time.monotonic()
    sandbox = start_sandbox(work, plan, epoch)
    try:
        daemon = DaemonProcess(soak_config(work, sandbox, plan, epoch), work)
        jobs = make_jobs(plan, work, now=epoch + (time.time() - epoch) * plan.scale)
        sandbox.set_faults(fault_plan([open_id(n) for n in (1, 2)], plan.seed))
        try:
            daemon.start()
            daemon.wait_ready(timeout=60, grace=0.2)
            submitter = Submitter(daemon.socket_path, jobs, plan.chaos_seconds * 0.8, chaos)
            submitter.start()
            chaos_end = time.monotonic() + plan.chaos_seconds
            # However slow a loaded machine makes the restarts, the daemon dies min_kills times.
            while (now := time.monotonic()) < chaos_end or chaos.kills < plan.min_kills:
                time.sleep(max(0.0, min(rng.uniform(*plan.kill_gap), chaos_end - now)))
                daemon.kill9()
                chaos.kills += 1
                check = integrity(work / "state" / "orchestrator.db")
                if check != "ok":
                    chaos.integrity_after_kill.append(check)
                time.sleep(rng.uniform(*plan.down_for))
                daemon.start()
                daemon.wait_ready(timeout=60, grace=0.2)
                chaos.restarts += 1
            faults = sandbox.http.get("/_sandbox/faults").json()
            sandbox.set_faults({"rules": []})
            # Its own retries are bounded (60 s per call): this only catches a hang.
            submitter.join(timeout=600)
            if submitter.is_alive() or submitter.error is not None:
                raise RuntimeError(f"the submitter failed: {submitter.error!r}")
            chaos.refused = submitter.refused
            say(f"soak: chaos over after {time.monotonic() - started:.0f} s; settling")
            final = settle(daemon.socket_path, jobs, plan, epoch)
            say(
                f"soak: settle ended after {final['settle_seconds']:.0f} s "
                f"({'every job settled' if final['settled'] else final['gave_up']})"
            )
        finally:
            code = daemon.stop()
            daemon.notify.close()
        summary = judge(plan, work, sandbox.ledger(), jobs, final, chaos)
    finally:
        sandbox.stop()
    fired = [
        (" ".join([rule["endpoint"], rule["fault"], *map(repr, _details(rule))]), n)
        for rule, n in zip(faults["rules"], (s["fired"] for s in faults["stats"]), strict=True)
    ]
    summary["faults_fired"] = sum(n for _, n in fired)
    summary["fault_rules_fired"] = sum(1 for _, n in fired if n)
    summary["fault_rules"] = len(fired)
    summary["fired_per_rule"] = dict(fired)
    summary["daemon_exit"] = code
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    return summary


def _details(rule: dict[str, Any]) -> list[Any]:
    return [rule[k] for k in ("code", "fail_reason", "seconds", "http_status") if k in rule]


def open_id(n: int) -> str:
    """The sandbox's user n, whose tokens the account ``soak-<n>`` holds."""
    return f"user-{n}"


def account_open_id(account: str | None) -> str:
    return open_id(int((account or "soak-0").removeprefix("soak-")))


def parse_iso(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def where_is(job: dict[str, Any], accounts: dict[str, dict[str, Any]], now: float) -> str:
    """Where a job stands at the end, in the soak's own words.

    ``terminal`` and ``human`` (uncertain, review) are the issue's settled states;
    ``reauth``: waiting on an account whose creator must authorize the app again, which is
    waiting for a human too; ``window``: waiting, by the daemon's own decision, for an
    account's window to free (its daily cap, or a creator inbox TikTok says is full), at a
    time the daemon knows; ``no_account``: a pool job that no account of the pool can take
    now (each is parked, at its cap or behind an open breaker; ``orchestrator status``
    counts these); ``moving``: none of these, so the daemon must still move it by itself.
    A job still ``moving`` when the settle phase gives up is stuck.
    """
    state = job["state"]
    if state in TERMINAL:
        return "terminal"
    if state in HUMAN:
        return "human"
    account = accounts.get(job["account"] or "")
    fresh_direct = job["mode"] == "direct" and job["publish_id"] is None
    movable = job["pool"] is not None and job["publish_id"] is None
    if movable and state in ("queued", "retry_wait"):
        # The router moves it whenever some account of the pool can take it (all soak
        # accounts are in the pool), so it may wait only when none can.
        takers = [a for a in accounts.values() if can_take(a, fresh_direct, now)]
        if account is None or not can_take(account, fresh_direct, now):
            return "moving" if takers else "no_account"
    if account is not None and account["token"]["state"] in PARKED:
        return "reauth" if state in WAITING_FOR_AUTH else "moving"
    if state not in ("queued", "retry_wait"):
        return "moving"
    error = (job.get("error") or {}).get("code")
    not_before = parse_iso(job["not_before"]) or 0.0
    if error in WINDOW_CODES and not_before > now:
        return "window"
    if account is not None and fresh_direct and cap_full(account, now):
        return "window"
    return "moving"


def can_take(account: dict[str, Any], direct: bool, now: float) -> bool:
    """What the router asks of an account (router.eligible), from the status snapshot."""
    return (
        account["token"]["state"] == "valid"
        and account["breaker"] != "open"
        and not account["paused"]
        and not (direct and cap_full(account, now))
    )


def cap_full(account: dict[str, Any], now: float) -> bool:
    """The daemon's own view of an account's daily cap: spent, and a later slot known."""
    cap = account.get("cap") or {}
    if not cap:
        return False
    spent = cap["used"] >= cap["limit"] or (cap.get("blocked_until") or 0.0) > now
    return spent and (cap.get("next_slot") or 0.0) > now


def settle(
    socket_path: Path, jobs: Sequence[JobSpec], plan: SoakPlan, epoch: float
) -> dict[str, Any]:
    """Waits until no job is still on its way (every one terminal, waiting for a human, or
    waiting for its account's window); returns the last look.

    Driven by the jobs, not by a wall-clock budget a loaded machine can exhaust: it gives up
    only when no job has changed state for ``plan.settle_quiet`` seconds (or at the
    ``plan.settle_timeout`` backstop), and the verdict then lists what is stuck.
    """
    ids = {s.job_id for s in jobs if s.job_id}
    last: dict[str, Any] = {}
    began = time.monotonic()
    seen: dict[str, str] = {}
    changed_at = began
    with DaemonClient(socket_path, timeout=30) as client:
        while True:
            status = client.status()
            listed = [j for j in client.jobs(limit=10_000) if j["id"] in ids]
            now = epoch + (time.time() - epoch) * plan.scale
            accounts = {a["id"]: a for a in status["accounts"]}
            places = {j["id"]: where_is(j, accounts, now) for j in listed}
            last.update(status=status, accounts=accounts, jobs=listed, places=places, now=now)
            states = {j["id"]: j["state"] for j in listed}
            if states != seen:
                seen, changed_at = states, time.monotonic()
            moving = [i for i, place in places.items() if place == "moving"]
            waited = time.monotonic() - began
            if len(listed) == len(ids) and not moving:
                last.update(settled=True, gave_up=None)
                break
            if time.monotonic() - changed_at > plan.settle_quiet:
                gave_up = f"no job changed state for {plan.settle_quiet:g} s"
                last.update(settled=False, gave_up=gave_up)
                break
            if waited > plan.settle_timeout:
                last.update(settled=False, gave_up=f"backstop of {plan.settle_timeout:g} s")
                break
            time.sleep(0.5)  # polling the daemon's answer, not waiting for it
    last["settle_seconds"] = round(time.monotonic() - began, 1)
    return last


# -- the verdict ---------------------------------------------------------------------------


def judge(
    plan: SoakPlan,
    work: Path,
    ledger: dict[str, Any],
    jobs: Sequence[JobSpec],
    final: dict[str, Any],
    chaos: Chaos,
) -> dict[str, Any]:
    listed = {j["id"]: j for j in final.get("jobs", [])}
    accounts: dict[str, dict[str, Any]] = final.get("accounts", {})
    places: dict[str, str] = final.get("places", {})
    states = Counter(j["state"] for j in listed.values())
    stuck = sorted(
        describe_stuck(j, accounts, final["now"])
        for j in listed.values()
        if places.get(j["id"]) == "moving"
    )
    # A job's content names it on the ledger: every job has its own bytes (or URL).
    by_content: dict[str, list[dict[str, Any]]] = {}
    for post in ledger["posts"]:
        by_content.setdefault(post["content_sha256"], []).append(post)
    job_of = {s.content_sha256: listed.get(s.job_id) for s in jobs if s.job_id}
    posted_twice = sorted(c for c, posts in by_content.items() if len(posts) > 1)
    unknown_posts, published_unseen, unread_until_reauth = [], [], []
    for content, posts in by_content.items():
        job = job_of.get(content)
        if job is not None and job["state"] in ("published", "uncertain"):
            continue
        if (
            job is not None
            and places.get(job["id"]) == "reauth"
            and [p["publish_id"] for p in posts] == [job["publish_id"]]
        ):
            # The daemon holds this publish_id and polls it, but cannot read its status
            # until the creator authorizes the app again: known, not yet confirmed.
            unread_until_reauth.append(job["id"])
            continue
        unknown_posts.append(f"{posts[0]['publish_id']} ({job and job['state']})")
    for job in listed.values():
        if job["state"] == "published" and job["content_sha256"] not in by_content:
            published_unseen.append(job["id"])
    wrong_account = [
        job["id"]
        for job in listed.values()
        if job["state"] == "published"
        and any(
            p["open_id"] != account_open_id(job["account"])
            for p in by_content.get(job["content_sha256"], [])
        )
    ]
    lost_refreshes = count_actions(work / "daemon.log", ("token.refresh_lost",))
    violations = ledger["violations"]
    db = work / "state" / "orchestrator.db"
    return {
        "plan": {**asdict(plan), "kill_gap": list(plan.kill_gap), "down_for": list(plan.down_for)},
        "kills": chaos.kills,
        "restarts": chaos.restarts,
        "submit_retries": chaos.submit_retries,
        "cancel_requests": chaos.cancels,
        "jobs": len(jobs),
        "submissions_refused": chaos.refused,
        "jobs_accepted": sum(1 for s in jobs if s.job_id),
        "jobs_listed": len(listed),
        "settled": final.get("settled", False),
        "settle_seconds": final.get("settle_seconds"),
        "settle_gave_up": final.get("gave_up"),
        "final_states": dict(sorted(states.items())),
        "end_places": dict(sorted(Counter(places.values()).items())),
        "waiting_for_reauth": dict(
            sorted(Counter(listed[i]["state"] for i, p in places.items() if p == "reauth").items())
        ),
        "waiting_for_window": dict(
            sorted(
                Counter(
                    window_reason(listed[i]) for i, p in places.items() if p == "window"
                ).items()
            )
        ),
        "pool_jobs_without_account": sum(1 for p in places.values() if p == "no_account"),
        "accounts_needing_reauth": sorted(
            a for a, acct in accounts.items() if acct["token"]["state"] in PARKED
        ),
        "stuck": stuck[:20],
        "stuck_count": len(stuck),
        "posts_unread_until_reauth": unread_until_reauth,
        "ledger_posts": len(ledger["posts"]),
        "ledger_failed_publishes": len(ledger["failed"]),
        "duplicate_posts": len(ledger["duplicates"]) + len(posted_twice),
        "posts_of_unknown_or_unposted_jobs": unknown_posts[:20],
        "published_but_not_on_ledger": published_unseen[:20],
        "published_on_wrong_account": wrong_account[:20],
        "rate_limited": violations["rate_limited"],
        "cap_exceeded": violations["cap_exceeded"],
        "cap_rejections": ledger["cap_rejections"],
        "expired_token_requests": violations["expired_token_requests"],
        "refresh_token_reuse": violations["refresh_token_reuse"],
        "refreshes_lost": lost_refreshes,
        "integrity_after_kills": chaos.integrity_after_kill or "ok",
        "integrity_at_end": integrity(db),
        "secrets_in_log": secrets_in_log(work),
    }


def window_reason(job: dict[str, Any]) -> str:
    code = (job.get("error") or {}).get("code")
    if code == "spam_risk_too_many_pending_share":
        return "creator inbox full"
    return "daily cap"


def describe_stuck(job: dict[str, Any], accounts: dict[str, dict[str, Any]], now: float) -> str:
    """One line with what the verdict needs to tell a bug from a slow machine."""
    account = accounts.get(job["account"] or "") or {}
    cap = account.get("cap") or {}
    due = (parse_iso(job["not_before"]) or now) - now
    return (
        f"{job['id']} {job['state']} {job['mode']} on {job['account'] or '(no account)'}"
        f"{' pool' if job['pool'] else ''}: due {due:+.0f} s, attempts {job['attempts']}, "
        f"error {(job.get('error') or {}).get('code')}, "
        f"token {account.get('token', {}).get('state')}, breaker {account.get('breaker')}, "
        f"cap {cap.get('used')}/{cap.get('limit')}"
    )


def count_actions(log: Path, actions: Sequence[str]) -> int:
    n = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            if json.loads(line).get("action") in actions:
                n += 1
        except ValueError:
            continue
    return n


def secrets_in_log(work: Path) -> int:
    text = (work / "daemon.log").read_text(errors="replace")
    found = [CLIENT_SECRET] if CLIENT_SECRET in text else []
    for token_file in (work / "tokens").glob("*.json"):
        grant = json.loads(token_file.read_text())
        found += [t for t in (grant["access_token"], grant["refresh_token"]) if t in text]
    return len(found)


def problems(summary: dict[str, Any]) -> list[str]:
    """What the soak found wrong; empty means every invariant held."""
    found = []
    if summary["jobs_listed"] != summary["jobs_accepted"]:
        found.append(f"jobs lost: {summary['jobs_accepted']} accepted, {summary['jobs_listed']}")
    if not summary["settled"]:
        found.append(
            f"jobs stuck ({summary['stuck_count']}; {summary['settle_gave_up']}): "
            f"{summary['stuck']}"
        )
    for key in ("duplicate_posts", "rate_limited", "cap_exceeded", "cap_rejections"):
        if summary[key]:
            found.append(f"{key}: {summary[key]}")
    for key in ("expired_token_requests", "secrets_in_log"):
        if summary[key]:
            found.append(f"{key}: {summary[key]}")
    for key in (
        "posts_of_unknown_or_unposted_jobs",
        "published_but_not_on_ledger",
        "published_on_wrong_account",
    ):
        if summary[key]:
            found.append(f"{key}: {summary[key]}")
    # A refresh whose answer was lost is probed once with the old token (README, Tokens):
    # the only reuse the daemon may cause is that probe, at most once per lost answer.
    if summary["refresh_token_reuse"] > summary["refreshes_lost"]:
        found.append(
            f"refresh_token_reuse {summary['refresh_token_reuse']} > "
            f"lost refreshes {summary['refreshes_lost']}"
        )
    if summary["integrity_after_kills"] != "ok" or summary["integrity_at_end"] != "ok":
        found.append(
            f"integrity_check: {summary['integrity_after_kills']} / {summary['integrity_at_end']}"
        )
    if summary["kills"] < 1:
        found.append("the daemon was never killed")
    return found


def table(summary: dict[str, Any]) -> str:
    rows = [
        ("seed", summary["plan"]["seed"]),
        ("wall seconds", summary["wall_seconds"]),
        ("kills / restarts", f"{summary['kills']} / {summary['restarts']}"),
        (
            "faults fired",
            f"{summary['faults_fired']} ({summary['fault_rules_fired']}"
            f" of {summary['fault_rules']} rules)",
        ),
        ("jobs", summary["jobs"]),
        *((f"  {state}", n) for state, n in summary["final_states"].items()),
        ("settle seconds", f"{summary['settle_seconds']} ({summary['settle_gave_up'] or 'ok'})"),
        *((f"at the end: {place}", n) for place, n in summary["end_places"].items()),
        ("  re-auth, by state", summary["waiting_for_reauth"] or "-"),
        ("  window, by reason", summary["waiting_for_window"] or "-"),
        ("posts unread until re-auth", len(summary["posts_unread_until_reauth"])),
        ("accounts needing re-auth", len(summary["accounts_needing_reauth"])),
        ("ledger posts", summary["ledger_posts"]),
        ("duplicate posts", summary["duplicate_posts"]),
        ("posts unknown to the daemon", len(summary["posts_of_unknown_or_unposted_jobs"])),
        ("rate violations (429 earned)", summary["rate_limited"]),
        (
            "cap exceeded / cap rejections",
            f"{summary['cap_exceeded']} / {summary['cap_rejections']}",
        ),
        ("expired-token requests", summary["expired_token_requests"]),
        (
            "refresh-token reuse / lost refreshes",
            f"{summary['refresh_token_reuse']} / {summary['refreshes_lost']}",
        ),
        (
            "integrity_check (kills / end)",
            f"{summary['integrity_after_kills']} / {summary['integrity_at_end']}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--long", action="store_true", help="longer, with more kills")
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    plan = SoakPlan(seed=seed, **(LONG if args.long else SHORT))  # type: ignore[arg-type]
    print(f"soak: seed {seed} (rerun with --seed {seed})")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        summary = run_soak(plan, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            summary = run_soak(plan, Path(tmp))
    found = problems(summary)
    summary["problems"] = found
    summary["form"] = "long" if args.long else "short"
    print(table(summary))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("soak-long.json" if args.long else "soak.json")
    command = " ".join([".venv/bin/python -m bench.soak", *(argv or sys.argv[1:])])
    if args.seed is None:
        command += f" --seed {seed}"
    document = {"benchmark": "soak", "command": command, "machine": machine(), **summary}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("final_states", "problems")}))
    print(f"wrote {out}")
    for problem in found:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
