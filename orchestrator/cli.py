"""The ``orchestrator`` command. ``main(argv) -> int`` is testable without a subprocess.

Exit codes: 0 success; 1 the daemon refused or failed; 2 usage; 69 the daemon is not
reachable (EX_UNAVAILABLE); 78 the configuration is invalid (EX_CONFIG).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from .client import DaemonClient, DaemonUnreachable, RequestRefused, find_socket
from .config import load_config
from .errors import ConfigError, OrchestratorError
from .render import job_view, jobs_view, progress_line, reload_summary, status_view

EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 2, 69, 78
TERMINAL = {"published", "dead", "cancelled", "uncertain", "review"}
# ANSI: cursor home + clear screen (a watch frame); carriage return + clear line (progress).
CLEAR_SCREEN, CLEAR_LINE = "\x1b[H\x1b[2J", "\r\x1b[K"
FRAME_RULE = "-" * 72

log = logging.getLogger(__name__)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _client(args: argparse.Namespace) -> DaemonClient:
    return DaemonClient(find_socket(args.socket, args.config))


# -- commands -------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from .daemon import Daemon
    from .logs import configure

    config = load_config(args.config)
    configure(config.daemon.log_level)
    os.umask(0o077)
    try:
        anyio.run(Daemon(config, owns_process=True).run, backend="asyncio")
    except BaseExceptionGroup as group:
        # Task groups wrap everything; an error of ours (a socket already in use, say) is
        # reported like any other, without a traceback.
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], OrchestratorError):
            raise leaves[0] from None
        raise
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def cmd_check_config(args: argparse.Namespace) -> int:
    from .crypto import TokenCipher

    config = load_config(args.file)
    config.tiktok.client_secret()
    if config.tiktok.token_key_file is not None:
        TokenCipher.from_file(config.tiktok.token_key_file)
    elif config.tiktok.token_key_credential is not None:
        TokenCipher.from_credential(config.tiktok.token_key_credential)
    print(f"{config.path}: ok ({len(config.accounts)} accounts)")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox import main as sandbox_main

    return sandbox_main(args.rest)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(keep=args.keep)


def cmd_submit(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"caption": args.caption}
    if args.account:
        payload["account"] = args.account
    else:
        payload["pool"] = args.pool
    if args.video:
        path = Path(args.video).expanduser().resolve()
        # Refuse early and clearly; the daemon checks again, since it is the one that reads it.
        if not path.is_file():
            print(f"orchestrator: {args.video}: no such file", file=sys.stderr)
            return 1
        if not os.access(path, os.R_OK):
            print(f"orchestrator: {args.video}: not readable", file=sys.stderr)
            return 1
        payload["video_path"] = str(path)
    else:
        payload["video_url"] = args.url
    for key in ("privacy_level", "mode", "idempotency_key", "not_before"):
        if getattr(args, key) is not None:
            payload[key] = getattr(args, key)
    for flag in ("disable_comment", "disable_duet", "disable_stitch", "is_aigc"):
        if getattr(args, flag):
            payload[flag] = True
    with _client(args) as client:
        created, job = client.submit(payload)
        if args.json:
            _print_json({"created": created, "job": job})
        else:
            verb = "submitted" if created else "already submitted as"
            print(f"{verb} {job['id']} ({job['state']})")
        if args.wait:
            return _wait(client, job["id"], quiet=args.json)
    return 0


def _wait(
    client: DaemonClient,
    job_id: str,
    *,
    quiet: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
    poll: float = 0.5,
) -> int:
    """Follow a job to its end: one line per state change on stdout, with the upload's bytes;
    on a terminal, a live progress line on stderr redrawn in place while it uploads."""
    out = out or sys.stdout
    err = err or sys.stderr
    live = not quiet and err.isatty()
    last_state, drawn = None, ""
    try:
        while True:
            job = client.job(job_id)["job"]
            line = progress_line(job)
            if job["state"] != last_state and not quiet:
                if drawn:
                    err.write(CLEAR_LINE)
                    err.flush()
                    drawn = ""
                print(line, file=out, flush=True)
            elif live and job["state"] == "uploading" and line.strip() != drawn:
                drawn = line.strip()
                err.write(CLEAR_LINE + drawn)
                err.flush()
            last_state = job["state"]
            if job["state"] in TERMINAL:
                return 0 if job["state"] == "published" else 1
            time.sleep(poll)
    finally:
        if drawn:
            err.write("\n")
            err.flush()


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.jobs(state=args.state, account=args.account, limit=args.limit)
    _print_json(jobs) if args.json else print(jobs_view(jobs))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    if args.id == "resolve":
        if not args.target or args.posted is None:
            print(
                "orchestrator: usage: orchestrator job resolve ID --posted|--not-posted",
                file=sys.stderr,
            )
            return EX_USAGE
        with _client(args) as client:
            job = client.resolve(args.target, posted=args.posted)
        print(f"{job['id']} is now {job['state']}")
        return 0
    if args.target or args.posted is not None:
        print("orchestrator: --posted/--not-posted go with: job resolve ID", file=sys.stderr)
        return EX_USAGE
    with _client(args) as client:
        detail = client.job(args.id)
    _print_json(detail) if args.json else print(job_view(detail))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "list":
            jobs = client.dlq(account=args.account, limit=args.limit)
            _print_json(jobs) if args.json else print(jobs_view(jobs))
        elif args.action == "show":
            detail = client.job(_one(args.ids))
            _print_json(detail) if args.json else print(job_view(detail))
        elif args.action == "requeue":
            for job_id in args.ids or [""]:
                job = client.requeue(job_id, fresh=args.fresh)
                print(f"requeued {job['id']} ({job['state']})")
        else:
            if not args.yes:
                print("orchestrator: purge deletes jobs for good; add --yes", file=sys.stderr)
                return EX_USAGE
            if not args.all and not args.ids:
                print("orchestrator: name the jobs to purge, or --all", file=sys.stderr)
                return EX_USAGE
            gone = client.purge(ids=args.ids, everything=args.all)
            print(f"purged {gone} dead job(s)")
    return 0


def _one(ids: list[str]) -> str:
    if len(ids) != 1:
        raise RequestRefused(400, "usage", "give exactly one job id")
    return ids[0]


def cmd_auth(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {}
    if args.step == "url":
        if args.redirect_uri:
            payload["redirect_uri"] = args.redirect_uri
    elif args.step == "exchange":
        if bool(args.code) == bool(args.redirect):
            print("orchestrator: give --code CODE or --redirect URL", file=sys.stderr)
            return EX_USAGE
        payload = {"code": args.code} if args.code else {"redirect": args.redirect}
    else:
        if not args.refresh_token_file:
            print("orchestrator: give --refresh-token-file FILE", file=sys.stderr)
            return EX_USAGE
        try:
            payload["refresh_token"] = Path(args.refresh_token_file).read_text().strip()
        except OSError as exc:
            print(f"orchestrator: {args.refresh_token_file}: {exc.strerror}", file=sys.stderr)
            return 1
    with _client(args) as client:
        answer = client.auth(args.account, args.step, payload)
    if args.step == "url":
        print("Open this URL as the creator and approve the app:\n")
        print(answer["url"])
        print(f"\nThen: orchestrator auth exchange {args.account} --redirect 'URL YOU LANDED ON'")
    else:
        token = answer["token"]
        print(
            f"{args.account}: token {token['state']}, expires in "
            f"{token['expires_in']} s, scopes {', '.join(token['scopes']) or 'none'}"
        )
    return 0


def cmd_accounts(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for account_id in args.ids:
            answer = client.pause(account_id, paused=args.action == "pause")
            print(f"{answer['account']}: {'paused' if answer['paused'] else 'taking jobs'}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from .crypto import generate_key

    path = Path(args.file)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"orchestrator: {path} exists; refusing to overwrite a key", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"orchestrator: {path}: {exc.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as out:
        out.write(generate_key() + "\n")
    print(f"wrote a new token key to {path} (mode 0600); point tiktok.token_key_file at it")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .catalog import explain

    text = explain(args.code)
    if text is None:
        print(
            f"orchestrator: {args.code!r} is not in the error catalog; the daemon treats "
            "unknown codes conservatively (a few retries, then the dead-letter queue) and "
            "counts them in `orchestrator status`",
            file=sys.stderr,
        )
        return 1
    print(text)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.id)
    print(f"cancelled {job['id']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:

        def fetch() -> dict[str, Any]:
            return client.status(accounts="all" if args.all else None, account=args.account)

        if args.watch is None:
            status = fetch()
            _print_json(status) if args.json else print(status_view(status))
            return 0
        if args.json:  # JSON Lines: one document a frame, nothing else, for scripts
            return watch(fetch, _json_line, interval=args.watch, count=args.count, lines=True)
        return watch(fetch, status_view, interval=args.watch, count=args.count)


def _json_line(status: dict[str, Any]) -> str:
    return json.dumps(status, ensure_ascii=False)


def watch(
    fetch: Callable[[], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    *,
    interval: float,
    count: int | None = None,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    lines: bool = False,
) -> int:
    """Redraw ``render(fetch())`` every ``interval`` seconds until Ctrl-C (exit 0), ``count``
    frames, or the daemon going away (exit 69). On a terminal each frame replaces the last;
    otherwise (a pipe, a log) frames follow each other, separated by a rule. ``lines``: each
    frame is one line (JSON), written as it is."""
    out = out or sys.stdout
    tty = out.isatty() and not lines
    frames = 0
    try:
        while count is None or frames < count:
            try:
                status = fetch()
            except DaemonUnreachable as exc:
                gone = "the daemon went away: " if frames else ""
                print(f"orchestrator: {gone}{exc.message}", file=sys.stderr)
                return EX_UNAVAILABLE
            if tty:
                out.write(CLEAR_SCREEN)
            elif frames and not lines:
                out.write(FRAME_RULE + "\n")
            out.write(render(status) + "\n")
            out.flush()
            frames += 1
            if count is None or frames < count:
                sleep(interval)
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            result = client.reload()
        except RequestRefused as exc:
            if exc.code != "invalid_config":
                raise
            print(
                f"orchestrator: reload refused; the running configuration stays: {exc.message}",
                file=sys.stderr,
            )
            return EX_CONFIG
    if args.json:
        _print_json(result)
        return 0
    line = f"reloaded: {reload_summary(result)}"
    if result.get("restart_required"):
        line += "; needs a restart to apply: " + ", ".join(result["restart_required"])
    print(line)
    return 0


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Post videos to many TikTok accounts, durably.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, fn: Callable[[argparse.Namespace], int], help: str, *, client: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        if client:
            p.add_argument("--socket", help="the daemon's control socket")
            p.add_argument("--config", help="find the socket through this accounts file")
        return p

    p = command("run", cmd_run, "run the daemon in the foreground", client=False)
    p.add_argument("--config", required=True, help="the accounts TOML file")
    p = command("check-config", cmd_check_config, "validate an accounts file", client=False)
    p.add_argument("file")
    p = command("sandbox", cmd_sandbox, "run the fake TikTok API (see --help)", client=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="sandbox options (try: -- --help)")
    p = command("demo", cmd_demo, "sandbox + daemon + a few posts + the status table", client=False)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")

    p = command("submit", cmd_submit, "submit a post")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--account", help="the account to post to")
    target.add_argument("--pool", help="let the router pick: pool:TAG[,TAG]@REGION")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="a video file (copied into the daemon's spool)")
    src.add_argument("--url", help="an https URL on a verified domain (PULL_FROM_URL)")
    p.add_argument("--caption", default="")
    p.add_argument(
        "--privacy",
        dest="privacy_level",
        choices=("PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "FOLLOWER_OF_CREATOR", "SELF_ONLY"),
    )
    p.add_argument("--mode", choices=("direct", "inbox"))
    p.add_argument("--key", dest="idempotency_key", help="idempotency key")
    p.add_argument("--not-before", help="ISO 8601 time (with zone) or Unix time")
    for flag in ("disable-comment", "disable-duet", "disable-stitch", "is-aigc"):
        p.add_argument(f"--{flag}", action="store_true")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.add_argument("--json", action="store_true")

    p = command("jobs", cmd_jobs, "list jobs")
    p.add_argument("--state")
    p.add_argument("--account")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p = command(
        "job",
        cmd_job,
        "show one job with its timeline; `job resolve ID --posted|--not-posted` settles an "
        "uncertain one",
    )
    p.add_argument("id", help="a job id, or 'resolve'")
    p.add_argument("target", nargs="?", help="with resolve: the job id")
    verdict = p.add_mutually_exclusive_group()
    verdict.add_argument("--posted", dest="posted", action="store_const", const=True)
    verdict.add_argument("--not-posted", dest="posted", action="store_const", const=False)
    p.add_argument("--json", action="store_true")
    p = command("dlq", cmd_dlq, "the dead-letter queue: list, show, requeue, purge")
    p.add_argument("action", choices=("list", "show", "requeue", "purge"))
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--account")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--fresh", action="store_true", help="requeue: start with a new init")
    p.add_argument("--all", action="store_true", help="purge: every dead job")
    p.add_argument("--yes", action="store_true", help="purge: yes, delete them for good")
    p.add_argument("--json", action="store_true")
    p = command("auth", cmd_auth, "authorize an account: url, exchange, import")
    p.add_argument("step", choices=("url", "exchange", "import"))
    p.add_argument("account")
    p.add_argument("--redirect-uri", help="url: the redirect URI (default tiktok.redirect_uri)")
    p.add_argument("--code", help="exchange: the authorization code")
    p.add_argument("--redirect", help="exchange: the whole URL TikTok redirected to")
    p.add_argument("--refresh-token-file", help="import: a file holding a refresh token")
    p = command("accounts", cmd_accounts, "pause or resume accounts")
    p.add_argument("action", choices=("pause", "resume"))
    p.add_argument("ids", nargs="+", metavar="ID")
    p = command("keygen", cmd_keygen, "write a new key for tokens at rest", client=False)
    p.add_argument("file")
    p = command("explain", cmd_explain, "what an error code means and what to do", client=False)
    p.add_argument("code")
    p = command("cancel", cmd_cancel, "cancel a job that has not reached TikTok")
    p.add_argument("id")
    p = command(
        "status",
        cmd_status,
        "the dashboard: accounts, queues, alerts, totals (above 100 accounts, only the "
        "accounts that need attention; --all lists every one)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="list every account")
    which.add_argument("--account", metavar="ID", help="show this one account")
    p.add_argument(
        "--json", action="store_true", help="the whole document (with --watch: one a line)"
    )
    p.add_argument(
        "--watch",
        nargs="?",
        type=_positive_seconds,
        const=2.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    p.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N frames")
    p = command("reload", cmd_reload, "make the daemon read its accounts file again")
    p.add_argument("--json", action="store_true")
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 86400 seconds")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"orchestrator: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    except DaemonUnreachable as exc:
        print(f"orchestrator: {exc.message}", file=sys.stderr)
        return EX_UNAVAILABLE
    except RequestRefused as exc:
        print(f"orchestrator: {exc.message} [{exc.code}]", file=sys.stderr)
        return 1
    except OrchestratorError as exc:
        print(f"orchestrator: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())
