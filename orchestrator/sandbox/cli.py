"""``python -m orchestrator.sandbox``: the fake TikTok in the foreground, until a signal.

Prints one line, ``sandbox listening on http://HOST:PORT``, once it accepts connections, so a
script can read the URL from stdout. Exit status: 0 after SIGINT/SIGTERM, 2 for bad arguments
or a bad fault plan (a message on stderr, never a traceback), 1 when it cannot listen.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from .app import Sandbox
from .config import SandboxConfig
from .faults import parse_plan

EX_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orchestrator sandbox",
        description="A fake TikTok Content Posting API with fault injection, on loopback.",
    )
    d = SandboxConfig()
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=8800, help="0 for an ephemeral port (default 8800)")
    p.add_argument("--time-scale", type=float, default=d.time_scale, help="simulated s per real s")
    p.add_argument("--epoch", type=float, default=None, help="clock epoch (default: now)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for ids and random faults")
    p.add_argument("--faults", type=Path, help="a fault plan (JSON file)")
    p.add_argument("--users", type=int, default=0, help="create N users user-1..user-N")
    p.add_argument("--write-tokens", type=Path, metavar="DIR", help="write DIR/<open_id>.json")
    p.add_argument("--client-key", default=d.client_key)
    p.add_argument("--client-secret", default=d.client_secret)
    p.add_argument("--access-ttl", type=int, default=d.access_ttl, help="seconds")
    p.add_argument("--refresh-ttl", type=int, default=d.refresh_ttl, help="seconds")
    p.add_argument("--processing-seconds", type=float, default=d.processing_seconds)
    p.add_argument("--daily-cap", type=int, default=d.daily_cap, help="direct posts per 24 h")
    p.add_argument("--no-rate-limits", action="store_true", help="do not enforce rate limits")
    p.add_argument("--oauth-error-status", type=int, choices=(200, 400), default=400)
    return p


def _fail(message: str) -> int:
    print(f"orchestrator sandbox: {message}", file=sys.stderr)
    return EX_USAGE


def _load_plan(path: Path) -> dict[str, Any]:
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    try:
        parse_plan(plan)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return plan  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or help
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    if args.users < 0:
        return _fail("--users must not be negative")
    if bool(args.users) != bool(args.write_tokens):
        return _fail("--users N and --write-tokens DIR go together")
    try:
        config = SandboxConfig(
            host=args.host,
            port=args.port,
            time_scale=args.time_scale,
            epoch=args.epoch,
            client_key=args.client_key,
            client_secret=args.client_secret,
            access_ttl=args.access_ttl,
            refresh_ttl=args.refresh_ttl,
            processing_seconds=args.processing_seconds,
            daily_cap=args.daily_cap,
            rate_limits=not args.no_rate_limits,
            seed=args.seed,
            oauth_error_status=args.oauth_error_status,
        )
        plan = _load_plan(args.faults) if args.faults else None
    except ValueError as exc:
        return _fail(str(exc))
    sandbox = Sandbox(config)
    if plan is not None:
        sandbox.set_faults(plan)
    try:
        sandbox.start()
    except OSError as exc:
        print(
            f"orchestrator sandbox: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    try:
        if args.users:
            _write_tokens(sandbox, args.users, args.write_tokens)
        return _serve(sandbox)
    except OSError as exc:
        return _fail(f"cannot write tokens to {args.write_tokens}: {exc.strerror}")
    finally:
        sandbox.stop()


def _write_tokens(sandbox: Sandbox, users: int, directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for n in range(1, users + 1):
        grant = sandbox.create_user(open_id=f"user-{n}")
        path = directory / f"{grant['open_id']}.json"
        # Sandbox tokens, but token files are secrets by habit: owner-only from the start.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(grant, f, indent=2)
            f.write("\n")


def _serve(sandbox: Sandbox) -> int:
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()  # only this: the main loop below does the stopping

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        config = sandbox.config
        print(f"sandbox listening on {sandbox.base_url}", flush=True)
        print(
            f"time x{config.time_scale:g} from epoch {sandbox.clock.epoch:.3f}; "
            f"client_key {config.client_key}; admin API under {sandbox.base_url}/_sandbox/",
            file=sys.stderr,
            flush=True,
        )
        while not stopping.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
