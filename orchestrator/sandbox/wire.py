"""Answers as values: the envelopes TikTok uses (§2.1), built before any byte is written.

Handlers return a ``Reply``; only the HTTP layer writes it. That keeps the model testable
without sockets and lets a ``drop_after`` fault throw a finished answer away.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

JSON = "application/json; charset=UTF-8"


@dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def make_log_id(now: float, rng: random.Random) -> str:
    """Shaped like TikTok's: a UTC timestamp followed by hex digits."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + f"{rng.getrandbits(80):020X}"


def json_reply(status: int, payload: Any, *, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Reply(status=status, body=body, headers=headers)


def ok(data: dict[str, Any], log_id: str) -> Reply:
    return json_reply(
        200,
        {"data": data, "error": {"code": "ok", "message": "", "log_id": log_id}},
        headers=(("X-Tt-Logid", log_id),),
    )


def api_error(
    code: str,
    message: str,
    status: int,
    log_id: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    return json_reply(
        status,
        {"data": {}, "error": {"code": code, "message": message, "log_id": log_id}},
        headers=(("X-Tt-Logid", log_id), *headers),
    )


def oauth_error(code: str, description: str, status: int, log_id: str) -> Reply:
    """OAuth endpoints answer flat, without the v2 envelope (§1.2, §2.1)."""
    return json_reply(status, {"error": code, "error_description": description, "log_id": log_id})


_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def html_error(status: int) -> Reply:
    """What a proxy in front of TikTok sends: HTML, no envelope, no error code."""
    reason = _REASONS.get(status, "Error")
    page = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return Reply(status=status, body=page.encode(), content_type="text/html")


def parse_form(content_type: str | None, body: bytes) -> dict[str, str] | None:
    """The OAuth form (§1.2), or None when the body is not form-encoded."""
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return None
    return {k: v[0] for k, v in fields.items()}
