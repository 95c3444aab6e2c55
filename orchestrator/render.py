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
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m"


def status_view(status: dict[str, Any]) -> str:
    d = status["daemon"]
    head = (
        f"orchestrator {d['version']}  pid {d['pid']}  up since {d['started_at']}  "
        f"{'accepting jobs' if d['accepting'] else 'NOT accepting jobs'}\nconfig {d['config']}"
    )
    rows = []
    for a in status["accounts"]:
        jobs = a["jobs"]
        token = a["token"]
        token_text = token["state"]
        if token["state"] == "valid":
            token_text += f" {duration(token['expires_in'])}"
        rows.append(
            (
                a["id"],
                a["region"],
                token_text,
                a.get("breaker") or "-",
                jobs.get("queued", 0) + jobs.get("retry_wait", 0),
                sum(jobs.get(s, 0) for s in ACTIVE),
                jobs.get("processing", 0),
                jobs.get("published", 0),
                jobs.get("dead", 0),
                sum(jobs.get(s, 0) for s in WAITING),
                f"{a['cap']['used']}/{a['cap']['limit']}" if a.get("cap") else "-",
                "PAUSED" if a.get("paused") else (a["current_job"] or ""),
            )
        )
    body = table(
        (
            "ACCOUNT",
            "REGION",
            "TOKEN",
            "BREAKER",
            "QUEUED",
            "SENDING",
            "PROCESSING",
            "PUBLISHED",
            "DEAD",
            "NEEDS HUMAN",
            "CAP 24H",
            "CURRENT",
        ),
        rows,
    )
    totals = status["totals"]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(totals.items())) or "no jobs yet"
    lines = [head, "", body, "", f"jobs: {summary}; {status['open']} open"]
    if d.get("app_paused_until"):
        lines.append(
            f"APP PAUSED until {d['app_paused_until']}: TikTok said {d['app_paused_reason']}"
        )
    for alert in status.get("alerts", []):
        lines.append(f"ALERT ({alert['severity']}) since {alert['since']}: {alert['message']}")
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
    if status.get("unconfigured_accounts_with_jobs"):
        lines.append(
            "accounts with jobs but no longer configured: "
            + ", ".join(status["unconfigured_accounts_with_jobs"])
        )
    return "\n".join(lines)


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
