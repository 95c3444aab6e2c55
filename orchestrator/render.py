"""Plain-text views of API answers for people: the status table, job lists, one job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ACTIVE = ("dispatching", "uploading")
WAITING = ("uncertain", "review")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0:
        return "expired"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{secs}s"


def status_view(status: dict[str, Any]) -> str:
    """The operator's dashboard: one screen, worst news first after the table.

    Reads keys with ``.get()`` so that it renders what an older daemon returns, too.
    """
    lines = _daemon_lines(status)
    accounts = status.get("accounts", [])
    view = status.get("accounts_view", "all")
    if "account_states" in status:
        lines.append(accounts_line(status))
    if not accounts and view == "attention":
        table_text = "no account needs attention"
    elif view == "none":
        table_text = "accounts not listed (--all lists them)"
    else:
        table_text = accounts_table(accounts)
    lines += ["", table_text]
    hidden = status.get("account_count", len(accounts)) - len(accounts)
    if view == "attention" and hidden > 0:
        lines.append(f"{hidden:,} more accounts are healthy; --all lists them")
    lines.append("")
    alerts = status.get("alerts", [])
    for alert in alerts:
        lines.append(f"ALERT ({alert['severity']}) since {alert['since']}: {alert['message']}")
    totals = status.get("totals", {})
    summary = ", ".join(f"{n} {s}" for s, n in sorted(totals.items())) or "no jobs yet"
    lines.append(
        f"jobs: {summary}; {status.get('open', 0)} open; "
        + (f"{len(alerts)} open alert(s)" if alerts else "no open alerts")
    )
    if status.get("unassigned_pool_jobs"):
        lines.append(f"pool jobs waiting for an account: {status['unassigned_pool_jobs']}")
    for item in status.get("needs_attention", []):
        what = f"{item['job']} ({item['account']})" if item.get("job") else item["account"]
        lines.append(
            f"NEEDS A HUMAN: {what} is {item['state']} since {item['since']}: {item['code']}"
        )
    for u in status.get("unknown_codes", []):
        lines.append(
            f"unknown error code {u['code']!r} seen {u['count']} time(s), last {u['last_seen']}"
            f" (job {u['job']}); see `orchestrator explain`"
        )
    retired = status.get("retired") or {}
    if retired:
        lines.append(
            "retired accounts (removed from the file; their jobs stay in the store): "
            + ", ".join(f"{a} ({n} not finished)" for a, n in sorted(retired.items()))
        )
    elif status.get("unconfigured_accounts_with_jobs"):
        lines.append(
            "accounts with jobs but no longer configured: "
            + ", ".join(status["unconfigured_accounts_with_jobs"])
        )
    return "\n".join(lines)


def _daemon_lines(status: dict[str, Any]) -> list[str]:
    d = status.get("daemon", {})
    if d.get("draining"):
        intake = "DRAINING: finishing uploads in flight, taking no jobs"
    else:
        intake = "accepting jobs" if d.get("accepting", True) else "NOT accepting jobs"
    lines = [
        f"orchestrator {d.get('version')}  pid {d.get('pid')}  up since {d.get('started_at')}  "
        f"now {d.get('now')}  {intake}",
        f"config {d.get('config')}",
    ]
    reload = d.get("reload")
    if reload:
        lines.append(reload_line(reload))
    if d.get("app_paused_until"):
        lines.append(
            f"APP PAUSED until {d['app_paused_until']}: TikTok said {d.get('app_paused_reason')}"
        )
    return lines


def reload_line(reload: dict[str, Any]) -> str:
    """The last reload, for status: a failed one must stand out (the old config still runs)."""
    if not reload.get("ok"):
        return (
            f"LAST RELOAD FAILED at {reload.get('at')}: {reload.get('error')} "
            "(the running configuration is unchanged)"
        )
    line = f"last reload at {reload.get('at')}: {reload_summary(reload)}"
    if reload.get("restart_required"):
        line += "; needs a restart to apply: " + ", ".join(reload["restart_required"])
    return line


def reload_summary(result: dict[str, Any]) -> str:
    """One line: which accounts a reload added, removed and changed."""
    parts = [
        f"{len(result.get(key) or [])} {key}"
        + (f" ({', '.join(result[key])})" if result.get(key) else "")
        for key in ("added", "removed", "changed")
    ]
    return ", ".join(parts)


def accounts_line(status: dict[str, Any]) -> str:
    """How many accounts there are, by state, and how many need attention: the summary that
    stands in for the table when there are too many accounts to list."""
    states = status.get("account_states") or {}
    order = ("active", "paused", "parked", "disabled", "retired")
    ranked = sorted(states.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9)
    parts = ", ".join(f"{n:,} {state}" for state, n in ranked if n)
    need = status.get("attention_count", 0)
    line = f"accounts: {status.get('account_count', 0):,}" + (f" ({parts})" if parts else "")
    if not need:
        return line + "; none needs attention"
    return line + f"; {need:,} {'needs' if need == 1 else 'need'} attention"


ACCOUNT_COLUMNS = (
    "ACCOUNT",
    "STATE",
    "BREAKER",
    "TOKEN",
    "CAP 24H",
    "NEW",
    "RETRY",
    "SENDING",
    "PROCESSING",
    "NEEDS HUMAN",
    "DEAD",
    "PUBLISHED",
    "LAST ERROR",
    "ATTENTION",
)


def accounts_table(accounts: Sequence[dict[str, Any]]) -> str:
    """One row per account: why it posts or not, and how much it has to do."""
    if not accounts:
        return "no accounts"
    return table(ACCOUNT_COLUMNS, [_account_row(a) for a in accounts])


def _account_row(a: dict[str, Any]) -> tuple[Any, ...]:
    jobs = a.get("jobs", {})
    queues = a.get("queues") or {}
    if not queues:  # an older daemon: no lanes, so show the waiting states instead
        queues = {"new": jobs.get("queued", 0), "retry": jobs.get("retry_wait", 0)}
    cap = a.get("cap")
    state = a.get("state") or ("paused" if a.get("paused") else "active")
    if a.get("current_job") and state == "active":
        state = "posting"
    return (
        a["id"],
        state,
        breaker_text(a.get("breaker"), a.get("breaker_retry_at")),
        token_text(a.get("token") or {}),
        f"{cap['used']}/{cap['limit']}" if cap else "-",
        queues.get("new", 0),
        queues.get("retry", 0),
        sum(jobs.get(s, 0) for s in ACTIVE),
        jobs.get("processing", 0),
        sum(jobs.get(s, 0) for s in WAITING),
        jobs.get("dead", 0),
        jobs.get("published", 0),
        last_error_text(a.get("last_error")),
        ", ".join(a.get("attention") or []) or "-",
    )


def breaker_text(state: str | None, retry_at: str | None) -> str:
    if not state:
        return "-"
    if state == "open" and retry_at:
        return f"open, probe {_clock_time(retry_at)}"
    return state


def token_text(token: dict[str, Any]) -> str:
    state = token.get("state") or "missing"
    if state == "valid":
        expires_in = token.get("expires_in")
        return f"valid {duration(expires_in)}" if expires_in is not None else "valid"
    return state


def last_error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "-"
    age = error.get("age")
    return f"{error['code']} {duration(age)} ago" if age is not None else str(error["code"])


def _clock_time(stamp: str) -> str:
    """ "2025-01-02T03:04:05Z" -> "03:04:05Z": the day is nearly always today's."""
    return stamp.split("T", 1)[1] if "T" in stamp else stamp


def progress_line(job: dict[str, Any]) -> str:
    """A job as it travels, with its upload's byte counts (``submit --wait``)."""
    line = f"  {job['id']}: {job['state']}"
    size = job.get("video_size")
    if size and job["state"] in ("uploading", "processing"):
        # Processing means TikTok has every byte; the checkpoint may lag by the last chunk.
        done = min(job.get("uploaded_bytes") or 0, size) if job["state"] == "uploading" else size
        line += f" {done:,}/{size:,} bytes ({100 * done // size}%)"
    if job.get("error") and job["state"] != "published":
        line += f" [{job['error']['code']}]"
    return line


def jobs_view(jobs: Sequence[dict[str, Any]]) -> str:
    if not jobs:
        return "no jobs"
    rows = [
        (
            j["id"],
            j["account"],
            j["state"],
            j["publish_id"],
            (j["error"] or {}).get("code") or j["post_url"],
            (j["caption"][:40] + "…") if len(j["caption"]) > 40 else j["caption"],
        )
        for j in jobs
    ]
    return table(("JOB", "ACCOUNT", "STATE", "PUBLISH ID", "RESULT", "CAPTION"), rows)


def job_view(detail: dict[str, Any]) -> str:
    j = detail["job"]
    lines = [f"{j['id']}  {j['state'].upper()}  account {j['account']}"]
    for key in (
        "caption",
        "mode",
        "source",
        "privacy_level",
        "video_path",
        "video_url",
        "video_size",
        "content_sha256",
        "idempotency_key",
        "not_before",
        "publish_id",
        "uploaded_bytes",
        "post_url",
        "created_at",
        "finished_at",
    ):
        if j.get(key) not in (None, "", 0):
            lines.append(f"  {key:16} {j[key]}")
    if j.get("error"):
        lines.append(f"  {'error':16} {j['error']['code']}: {j['error']['message']}")
    lines.append("timeline:")
    for e in detail["timeline"]:
        move = f"{e['from'] or ''} -> {e['to']}" if e["to"] else ""
        extra = " ".join(f"{k}={v}" for k, v in e["detail"].items())
        lines.append(f"  {e['at']}  {e['action']:28} {move} {extra}".rstrip())
    if detail["attempts"]:
        lines.append("attempts:")
        for a in detail["attempts"]:
            verdict = a["outcome"] or "in flight"
            if a["error_code"]:
                verdict += f" {a['http_status']} {a['error_code']}: {a['error_message']}"
            lines.append(f"  {a['started_at']}  {a['step']:13} {verdict}")
            if a.get("classification"):
                c = a["classification"]
                known = "" if c["known"] else " (unknown code)"
                lines.append(f"  {'':22}class: {c['class']}{known}: {c['message']}")
            if a["raw_response"] is not None:
                lines.append(f"  {'':22}raw: {a['raw_response']}")
    return "\n".join(lines)
