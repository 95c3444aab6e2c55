"""``/_sandbox/...``: the sandbox's own JSON API, so another process can drive it.

These endpoints are the Python API over HTTP. They are never logged as requests, never
faulted and never rate limited: they are the test's hands, not TikTok.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from .state import SandboxState
from .wire import Reply, json_reply

USER_OPTIONS = frozenset(
    {"open_id", "scopes", "private", "daily_cap", "max_video_post_duration_sec", "nickname"}
)
AUTHORIZE_OPTIONS = frozenset({"open_id", "scopes", "redirect_uri", "code_challenge"})


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def handle_admin(state: SandboxState, method: str, path: str, query: str, body: bytes) -> Reply:
    try:
        return json_reply(200, _route(state, method, path.rstrip("/"), query, body))
    except AdminError as exc:
        return json_reply(exc.status, {"error": str(exc)})
    except (ValueError, TypeError) as exc:  # bad options, a bad fault plan, a bad clock jump
        return json_reply(400, {"error": str(exc)})


def _route(state: SandboxState, method: str, path: str, query: str, body: bytes) -> Any:
    route = (method, path.removeprefix("/_sandbox"))
    if route == ("POST", "/users"):
        return state.create_user(**_options(_json(body), USER_OPTIONS))
    if route == ("POST", "/authorize"):
        return {"code": state.authorize(**_options(_json(body), AUTHORIZE_OPTIONS))}
    if route == ("GET", "/faults"):
        return state.faults()
    if route == ("PUT", "/faults"):
        state.set_faults(_json(body))
        return state.faults()
    if route == ("GET", "/ledger"):
        return state.ledger()
    if route == ("GET", "/requests"):
        since = parse_qs(query).get("since", ["0"])[0]
        if not since.isdigit():
            raise AdminError(400, "since must be a non-negative integer")
        return state.requests(int(since))
    if route == ("GET", "/clock"):
        return _clock(state)
    if route == ("POST", "/clock/advance"):
        seconds = _json(body).get("seconds") if isinstance(_json(body), dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise AdminError(400, 'body must be {"seconds": <number>}')
        state.clock.advance(seconds)
        return _clock(state)
    known = {"/users", "/authorize", "/faults", "/ledger", "/requests", "/clock", "/clock/advance"}
    if route[1] in known:
        raise AdminError(405, f"{method} is not allowed on {path}")
    raise AdminError(404, f"no admin endpoint {path}")


def _clock(state: SandboxState) -> dict[str, float]:
    snapshot = state.clock.snapshot()
    return {key: snapshot[key] for key in ("now", "time_scale", "epoch", "offset")}


def _json(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except ValueError as exc:
        raise AdminError(400, f"body is not JSON: {exc}") from exc


def _options(payload: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise AdminError(400, "body must be a JSON object")
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise AdminError(
            400, f"unknown option {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
    return payload
