"""Fault plans: strict validation of the JSON plan, and deciding which rule fires.

A plan is a list of rules checked in order; the first rule that fires wins. Most faults act
on the request as it arrives (an error answer, an HTML 5xx, a delay, a dropped connection).
Two act on what an init creates instead (``processing_failure``, ``stuck``); those are
matched when the publish is created, so a rejected init does not use them up.

The engine holds no lock of its own: the sandbox calls it under its one state lock.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .rules import CODE_STATUS, FAIL_REASONS, OAUTH_ERRORS

ENDPOINTS = frozenset(
    {
        "token",
        "revoke",
        "creator_info",
        "video_init",
        "inbox_init",
        "content_init",
        "upload",
        "status",
        "cancel",
    }
)
INIT_ENDPOINTS = frozenset({"video_init", "inbox_init", "content_init"})
OAUTH_ENDPOINTS = frozenset({"token", "revoke"})  # flat OAuth error bodies, no v2 envelope
PROCESSING_FAULTS = frozenset({"processing_failure", "stuck"})
_COMMON = frozenset({"endpoint", "open_id", "fault", "times", "after", "probability"})
_EXTRA: dict[str, frozenset[str]] = {
    "error": frozenset({"code", "message", "http_status"}),
    "oauth_error": frozenset({"code", "message", "http_status"}),
    "html_5xx": frozenset({"http_status"}),
    "delay": frozenset({"seconds"}),
    "drop_before": frozenset(),
    "drop_after": frozenset(),
    "processing_failure": frozenset({"fail_reason"}),
    "stuck": frozenset(),
}
Phase = Literal["request", "processing"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    endpoint: str
    fault: str
    open_id: str | None = None
    times: int | None = None
    after: int = 0
    probability: float = 1.0
    code: str | None = None
    message: str | None = None
    http_status: int | None = None
    seconds: float | None = None
    fail_reason: str | None = None

    def applies_to(self, endpoint: str) -> bool:
        if self.endpoint == endpoint:
            return True
        # "*" never turns the OAuth endpoints' flat error bodies into v2 envelopes.
        return self.endpoint == "*" and not (self.fault == "error" and endpoint in OAUTH_ENDPOINTS)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "open_id"}


@dataclass(frozen=True, kw_only=True, slots=True)
class FaultPlan:
    seed: int | None
    rules: tuple[Rule, ...]

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "rules": [r.to_json() for r in self.rules]}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def parse_plan(plan: Any) -> FaultPlan:
    """Validate a plan; ``ValueError`` names the rule index and the field at fault."""
    if not isinstance(plan, dict):
        raise ValueError("a fault plan must be a JSON object with a 'rules' list")
    # "stats" is what faults() reports back; accepting it lets a plan be read and re-sent.
    unknown = sorted(set(plan) - {"seed", "rules", "stats"})
    if unknown:
        raise ValueError(f"fault plan: unknown key {unknown[0]!r} (expected 'seed', 'rules')")
    seed = plan.get("seed")
    if seed is not None and not _is_int(seed):
        raise ValueError("fault plan: 'seed' must be an integer")
    rules = plan.get("rules", [])
    if not isinstance(rules, list):
        raise ValueError("fault plan: 'rules' must be a list")
    return FaultPlan(seed=seed, rules=tuple(_parse_rule(i, r) for i, r in enumerate(rules)))


def _parse_rule(index: int, raw: Any) -> Rule:
    def fail(field: str, why: str) -> ValueError:
        return ValueError(f"fault plan: rules[{index}].{field}: {why}")

    if not isinstance(raw, dict):
        raise ValueError(f"fault plan: rules[{index}] must be an object")
    fault = raw.get("fault")
    if fault not in _EXTRA:
        raise fail("fault", f"must be one of {', '.join(sorted(_EXTRA))}, not {fault!r}")
    unknown = sorted(set(raw) - _COMMON - _EXTRA[fault])
    if unknown:
        raise fail(unknown[0], f"unknown key for fault {fault!r}")
    endpoint = raw.get("endpoint")
    if endpoint != "*" and endpoint not in ENDPOINTS:
        raise fail("endpoint", f"must be '*' or one of {', '.join(sorted(ENDPOINTS))}")
    open_id = raw.get("open_id")
    if open_id is not None and not isinstance(open_id, str):
        raise fail("open_id", "must be a string or null")
    times = raw.get("times")
    if times is not None and not (_is_int(times) and times >= 0):
        raise fail("times", "must be a non-negative integer")
    after = raw.get("after", 0)
    if not (_is_int(after) and after >= 0):
        raise fail("after", "must be a non-negative integer")
    probability = raw.get("probability", 1.0)
    if not (_is_number(probability) and 0.0 <= probability <= 1.0):
        raise fail("probability", "must be a number between 0 and 1")
    rule = Rule(
        endpoint=endpoint,
        fault=fault,
        open_id=open_id,
        times=times,
        after=after,
        probability=float(probability),
    )
    return _parse_extra(rule, raw, fail)


def _parse_extra(rule: Rule, raw: dict[str, Any], fail: Any) -> Rule:
    fault, endpoint = rule.fault, rule.endpoint
    message = raw.get("message")
    if message is not None and not isinstance(message, str):
        raise fail("message", "must be a string")
    status = raw.get("http_status")
    if fault == "error":
        code = raw.get("code")
        if code not in CODE_STATUS:
            raise fail("code", f"{code!r} is not an error code of TIKTOK_API.md §2.2")
        if endpoint in OAUTH_ENDPOINTS:
            raise fail("fault", f"the {endpoint} endpoint answers OAuth errors: use 'oauth_error'")
        if status is not None and not (_is_int(status) and 200 <= status <= 599):
            raise fail("http_status", "must be an HTTP status between 200 and 599")
        return _replace(rule, code=code, message=message, http_status=status)
    if fault == "oauth_error":
        code = raw.get("code")
        if code not in OAUTH_ERRORS:
            raise fail("code", f"{code!r} is not an OAuth error of TIKTOK_API.md §2.4")
        if endpoint not in OAUTH_ENDPOINTS:
            raise fail("endpoint", "oauth_error applies to the token or revoke endpoint only")
        if status not in (None, 200, 400):
            raise fail("http_status", "must be 200 or 400")
        return _replace(rule, code=code, message=message, http_status=status or 400)
    if fault == "html_5xx":
        if status not in (500, 502, 503, 504):
            raise fail("http_status", "must be 500, 502, 503 or 504")
        return _replace(rule, http_status=status)
    if fault == "delay":
        seconds: Any = raw.get("seconds")
        if not (_is_number(seconds) and seconds >= 0):
            raise fail("seconds", "must be a non-negative number of real seconds")
        return _replace(rule, seconds=float(seconds))
    if fault in PROCESSING_FAULTS:
        if endpoint not in INIT_ENDPOINTS:
            raise fail("endpoint", f"{fault} applies to {', '.join(sorted(INIT_ENDPOINTS))}")
        if fault == "processing_failure":
            reason = raw.get("fail_reason")
            if reason not in FAIL_REASONS:
                raise fail("fail_reason", f"{reason!r} is not a fail_reason of §2.3")
            return _replace(rule, fail_reason=reason)
    return rule


def _replace(rule: Rule, **changes: Any) -> Rule:
    return Rule(**{**rule.to_json(), **changes})


class FaultEngine:
    """The current plan, its per-rule counters and its seeded RNG."""

    def __init__(self, default_seed: int) -> None:
        self._default_seed = default_seed
        self._plan = FaultPlan(seed=None, rules=())
        self._matched: list[int] = []
        self._fired: list[int] = []
        self._rng = random.Random(default_seed)
        # Set (and replaced) on every new plan, so a handler held by a delay wakes at once.
        self.wake = threading.Event()

    def load(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._matched = [0] * len(plan.rules)
        self._fired = [0] * len(plan.rules)
        self._rng = random.Random(self._default_seed if plan.seed is None else plan.seed)
        old, self.wake = self.wake, threading.Event()
        old.set()

    def pick(self, endpoint: str, open_id: str | None, *, phase: Phase) -> Rule | None:
        """The first rule that fires for this request (or this new publish), if any."""
        for i, rule in enumerate(self._plan.rules):
            if (rule.fault in PROCESSING_FAULTS) != (phase == "processing"):
                continue
            if not rule.applies_to(endpoint):
                continue
            if rule.open_id is not None and rule.open_id != open_id:
                continue
            self._matched[i] += 1
            if self._matched[i] <= rule.after:
                continue
            if rule.times is not None and self._fired[i] >= rule.times:
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            self._fired[i] += 1
            return rule
        return None

    def snapshot(self) -> dict[str, Any]:
        stats = [
            {"matched": m, "fired": f} for m, f in zip(self._matched, self._fired, strict=True)
        ]
        return {**self._plan.to_json(), "stats": stats}
