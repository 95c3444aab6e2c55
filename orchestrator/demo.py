"""``orchestrator demo``: the whole product in one command, on a throwaway state directory.

Starts the sandbox (a fake TikTok on 127.0.0.1), writes a config from accounts.example.toml
pointed at it, starts the daemon as a separate process, submits a handful of posts across
the accounts, follows them until each one is published, prints the status table, checks the
sandbox's ledger (each video posted exactly once), stops everything and cleans up.

Time runs ten times faster than the wall clock in both the sandbox and the daemon, so
TikTok's processing delay and polling schedule play out in seconds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .client import DaemonClient, DaemonUnreachable
from .config import AccountSettings, load_config
from .render import status_view

TIME_SCALE = 10.0
DEADLINE = 120.0  # wall seconds for the posts to finish before the demo gives up
EXAMPLE = Path(__file__).resolve().parent.parent / "accounts.example.toml"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def write_config(
    path: Path,
    *,
    work: Path,
    base_url: str,
    client_key: str,
    epoch: float,
    accounts: tuple[AccountSettings, ...],
) -> None:
    lines = [
        "# Written by `orchestrator demo` from accounts.example.toml, pointed at the sandbox.",
        "[daemon]",
        f"state_dir = {toml_value(work / 'state')}",
        f"socket_path = {toml_value(work / 'orchestrator.sock')}",
        'log_level = "info"',
        "poll_interval = 5.0",
        f"time_scale = {TIME_SCALE!r}",
        f"clock_epoch = {epoch!r}",
        "",
        "[tiktok]",
        f"base_url = {toml_value(base_url)}",
        f"client_key = {toml_value(client_key)}",
        f"client_secret_file = {toml_value(work / 'secrets' / 'client_secret')}",
    ]
    for acct in accounts:
        lines += [
            "",
            "[[accounts]]",
            f"id = {toml_value(acct.id)}",
            f"display_name = {toml_value(acct.display_name)}",
            f"timezone = {toml_value(acct.timezone)}",
            f"tags = {toml_value(list(acct.tags))}",
            f"daily_cap = {acct.daily_cap}",
            f"privacy_level = {toml_value(acct.privacy_level)}",
            f"scopes = {toml_value(list(acct.scopes))}",
            f"token_file = {toml_value(work / 'tokens' / (acct.id + '.json'))}",
        ]
        if acct.region:
            lines.append(f"region = {toml_value(acct.region)}")
    path.write_text("\n".join(lines) + "\n")


def make_video(path: Path, seed: int, size: int) -> None:
    """Bytes that start like an MP4; the sandbox checks the upload protocol, not the codec."""
    header = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    path.write_bytes(header + random.Random(seed).randbytes(size - len(header)))


def plan_posts(accounts: tuple[AccountSettings, ...], videos: Path) -> list[dict[str, Any]]:
    posts: list[dict[str, Any]] = []
    for i, acct in enumerate(accounts):
        for n in range(2):
            video = videos / f"{acct.id}-{n + 1}.mp4"
            make_video(video, seed=i * 10 + n, size=200_000 + 150_000 * (i + n))
            posts.append(
                {
                    "account": acct.id,
                    "video_path": str(video),
                    "caption": f"Demo clip {n + 1} for {acct.display_name} #orchestrator",
                }
            )
    if accounts:
        posts.append(
            {
                "account": accounts[-1].id,
                "video_url": "https://media.example.com/demo/pulled-clip.mp4",
                "caption": "Pulled from a verified domain #orchestrator",
            }
        )
    return posts


def run_demo(*, keep: bool = False) -> int:
    from .sandbox import Sandbox, SandboxConfig

    if not EXAMPLE.is_file():
        print(f"demo: {EXAMPLE} not found (run the demo from a source checkout)", file=sys.stderr)
        return 1
    example = load_config(EXAMPLE)
    accounts = tuple(a for a in example.accounts if a.enabled)
    work = Path(tempfile.mkdtemp(prefix="orchestrator-demo-"))
    epoch = time.time()  # shared by the sandbox and the daemon: both run the same fast clock
    sandbox_config = SandboxConfig(time_scale=TIME_SCALE, epoch=epoch, processing_seconds=20.0)
    sandbox = Sandbox(sandbox_config).start()
    daemon: subprocess.Popen[bytes] | None = None
    log_path = work / "daemon.log"
    ok = False
    try:
        print(f"sandbox (fake TikTok) on {sandbox.base_url}, time x{TIME_SCALE:g}")
        for sub in ("tokens", "secrets", "videos"):
            (work / sub).mkdir(mode=0o700)
        secret = work / "secrets" / "client_secret"
        secret.write_text(sandbox_config.client_secret + "\n")
        secret.chmod(0o600)
        for acct in accounts:
            grant = sandbox.create_user(
                open_id=f"open-{acct.id}",
                scopes=sorted({*acct.scopes, "user.info.basic"}),
                private=acct.privacy_level == "FOLLOWER_OF_CREATOR",
                nickname=acct.display_name,
            )
            token_file = work / "tokens" / f"{acct.id}.json"
            token_file.write_text(json.dumps(grant))
            token_file.chmod(0o600)
        config_path = work / "accounts.toml"
        write_config(
            config_path,
            work=work,
            base_url=sandbox.base_url,
            client_key=sandbox_config.client_key,
            epoch=epoch,
            accounts=accounts,
        )
        config = load_config(config_path)
        print(f"config {config_path} ({len(accounts)} accounts from {EXAMPLE.name})")
        with open(log_path, "wb") as log_file:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "run", "--config", str(config_path)],
                stdout=log_file,
                stderr=log_file,
            )
        client = DaemonClient(config.daemon.socket_path, timeout=30)
        _wait_until_up(client, daemon)
        print(f"daemon pid {daemon.pid} is up; log in {log_path}\n")
        posts = plan_posts(accounts, work / "videos")
        job_ids = []
        for post in posts:
            _, job = client.submit(post)
            job_ids.append(job["id"])
            what = Path(post.get("video_path") or post["video_url"]).name
            print(f"submitted {job['id']}  {job['account']:10} {what}")
        print()
        ok = _follow(client, job_ids)
        print()
        print(status_view(client.status()))
        print()
        ok = _check_ledger(sandbox.ledger(), len(posts)) and ok
        client.close()
    except DaemonUnreachable as exc:
        print(f"demo: {exc.message}\n--- daemon log ---\n{_tail(log_path)}", file=sys.stderr)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=15)
                print(f"daemon stopped (exit {code})")
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
                print("daemon did not stop in 15 s and was killed")
                ok = False
        sandbox.stop()
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if not ok:
        print("demo: FAILED — not every post was published exactly once", file=sys.stderr)
    return 0 if ok else 1


def _wait_until_up(client: DaemonClient, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            client.request("GET", "/v1/health")
            return
        except DaemonUnreachable:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _follow(client: DaemonClient, job_ids: list[str]) -> bool:
    """Print each state change as it happens until every job has ended."""
    start = time.monotonic()
    seen: dict[str, str] = {}
    while time.monotonic() - start < DEADLINE:
        jobs = {j["id"]: j for j in client.jobs(limit=1000)}
        for job_id in job_ids:
            job = jobs[job_id]
            if seen.get(job_id) != job["state"]:
                seen[job_id] = job["state"]
                note = job["post_url"] or (job["error"] or {}).get("message") or ""
                print(
                    f"[{time.monotonic() - start:5.1f}s] {job_id}  {job['account']:10} "
                    f"{job['state']:11} {note}".rstrip(),
                    flush=True,
                )
        if all(
            s in {"published", "dead", "cancelled", "uncertain", "review"} for s in seen.values()
        ):
            return all(s == "published" for s in seen.values())
        time.sleep(0.25)
    print(f"demo: not every job ended within {DEADLINE:g} s", file=sys.stderr)
    return False


def _check_ledger(ledger: dict[str, Any], expected: int) -> bool:
    posts, dupes = ledger["posts"], ledger["duplicates"]
    violations = {k: v for k, v in ledger["violations"].items() if v}
    print(
        f"sandbox ledger: {len(posts)} posts published, {len(dupes)} duplicates, "
        f"violations: {violations or 'none'}"
    )
    return len(posts) == expected and not dupes and not violations


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(keep=bool(os.environ.get("KEEP"))))
