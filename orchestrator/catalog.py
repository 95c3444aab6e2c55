"""The error catalog: every failure the daemon can meet, as data, and how to classify one.

DESIGN.md, "Errors are data": the shard, the poller and the health tracker never pattern-match
on error strings. They ask this module what a failure *is* (an ``Entry``: a class that says
what to do next, whether it reflects on the account, how many attempts it deserves, and a
human explanation) and act on that. `orchestrator explain CODE` prints the same entries, so
the operator reads exactly the text the daemon decided by.

Codes live in several namespaces that overlap (``internal_error`` is a v2 error.code,
``internal`` a fail_reason, ``INTERNAL_ERROR`` a third party's code), so every entry has a
``Kind`` and the pair (kind, code) is the key. Classification looks in the namespace the
failure came from first. Anything not found is ``UNKNOWN``: retried a bounded number of
times, counted against the account, and reported with ``known=False`` so the raw code can be
counted and shown on the dashboard.

Pure: no I/O, no clock. The rows are in ``catalog_data.py``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

import httpx

from . import catalog_data
from .errors import TikTokError, TikTokTransportError


class ErrorClass(StrEnum):
    RETRY = "retry"  # back off and try the same call again
    REFRESH = "refresh"  # refresh the access token, then try again at once
    REAUTH = "reauth"  # the creator must authorize again; the account takes no jobs until then
    REROUTE = "reroute"  # this account cannot take it now; another account (or later) can
    REVIEW = "review"  # a human decides
    FATAL = "fatal"  # fix the asset or the request first; trying again changes nothing


class Kind(StrEnum):
    API = "api"  # error.code of a Content Posting v2 response
    FAIL_REASON = "fail_reason"  # fail_reason of a FAILED status or webhook
    OAUTH = "oauth"  # error of the OAuth token endpoint
    HTTP = "http"  # an HTTP status whose body is not JSON: code http_<status>
    TRANSPORT = "transport"  # no answer at all
    FIELD = "field"  # codes from field reports and other TikTok surfaces (the seeds)
    LOCAL = "local"  # codes the daemon itself produces


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    code: str
    kind: Kind
    origin: str  # where it is documented, and how far to trust it
    error_class: ErrorClass
    counts_against_account: bool  # does it say something about the account's health?
    max_attempts: int | None  # attempt budget for retry/refresh; None = the class default
    http_status: int | None  # the usual HTTP status, if any
    message: str
    possible_causes: tuple[str, ...]
    suggestions: tuple[str, ...]
    # A judgement on the content (spam, policy, media checks): recorded per account and asset,
    # so that a second rejection of the same asset goes to review instead of round again.
    content_rejection: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Classification:
    entry: Entry
    known: bool  # False when ``entry`` is UNKNOWN because the code is in no entry
    code: str  # the raw code as seen, so that unknown codes can be counted


def _build(row: catalog_data.Row) -> Entry:
    return Entry(
        code=row.code,
        kind=Kind(row.kind),
        origin=row.origin,
        error_class=ErrorClass(row.error_class),
        counts_against_account=row.counts_against_account,
        max_attempts=row.max_attempts,
        http_status=row.http_status,
        message=row.message,
        possible_causes=row.possible_causes,
        suggestions=row.suggestions,
        content_rejection=row.content_rejection,
    )


ENTRIES: tuple[Entry, ...] = tuple(_build(row) for row in catalog_data.ROWS)

_INDEX: dict[str, list[Entry]] = defaultdict(list)
for _entry in ENTRIES:
    _INDEX[_entry.code.casefold()].append(_entry)
del _entry

UNKNOWN: Entry = _INDEX["unknown"][0]
_HTTP_5XX: Entry = _INDEX["http_5xx"][0]

# Invariant: (kind, code) is a key even ignoring case, so a lookup by kind finds at most one.
assert len({(e.kind, e.code.casefold()) for e in ENTRIES}) == len(ENTRIES)


def lookup(code: str, kind: Kind | None = None) -> list[Entry]:
    """Every entry with this code (any case), optionally only those of one kind."""
    found = _INDEX.get(code.strip().casefold(), [])
    return [e for e in found if kind is None or e.kind is kind]


def _first(code: str, kinds: tuple[Kind, ...]) -> Entry | None:
    for kind in kinds:
        found = lookup(code, kind)
        if found:
            return found[0]
    return None


def _unknown(code: str) -> Classification:
    return Classification(entry=UNKNOWN, known=False, code=code)


def classify_error(exc: BaseException) -> Classification:
    """Classify a failure raised by the TikTok client (``orchestrator/tiktok.py``).

    Transport errors are told apart by the httpx exception behind them. API errors are
    looked up by code in the namespace of the endpoint that answered: the token endpoint
    speaks OAuth, the rest speak v2 error.codes. Another exception is classified by its cause
    when that is a TikTok error, and is otherwise UNKNOWN.
    """
    if isinstance(exc, TikTokTransportError):
        code = _transport_code(exc)
        return Classification(entry=lookup(code, Kind.TRANSPORT)[0], known=True, code=code)
    if not isinstance(exc, TikTokError):
        if isinstance(exc.__cause__, TikTokError):
            return classify_error(exc.__cause__)
        return _unknown(type(exc).__name__)
    code = (exc.code or "").strip()
    if not code:
        # The client already turns a blank code on a JSON 5xx into internal_error; what is
        # left (an answer with no code at all) is TikTok misbehaving, treated the same way.
        return Classification(entry=lookup("internal_error", Kind.API)[0], known=True, code="")
    if code.casefold().startswith("http_"):
        entry = _first(code, (Kind.HTTP,))
        if entry is not None:
            return Classification(entry=entry, known=True, code=code)
        if (exc.http_status or 0) >= 500 or code[5:6] == "5":
            return Classification(entry=_HTTP_5XX, known=True, code=code)
        return _unknown(code)
    kinds: tuple[Kind, ...] = (Kind.API, Kind.FIELD)
    if exc.endpoint == "token":
        kinds = (Kind.OAUTH, *kinds)
    entry = _first(code, kinds)
    return _unknown(code) if entry is None else Classification(entry=entry, known=True, code=code)


def _transport_code(exc: TikTokTransportError) -> str:
    cause = exc.__cause__
    # Connect failures first: httpx.ConnectTimeout is also a TimeoutException.
    if isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return "transport.connect_error"
    if isinstance(cause, TimeoutError | httpx.TimeoutException) or "no answer within" in str(
        exc.message
    ):
        return "transport.timeout"
    if cause is None and not exc.maybe_acted:
        return "transport.connect_error"
    return "transport.connection_dropped"


def classify_fail_reason(reason: str) -> Classification:
    """Classify the fail_reason of a FAILED status (or a post.publish.failed webhook)."""
    code = reason.strip()
    entry = _first(code, (Kind.FAIL_REASON,))
    return _unknown(code) if entry is None else Classification(entry=entry, known=True, code=code)


_CLASS_MEANING = {
    ErrorClass.RETRY: "try again with backoff",
    ErrorClass.REFRESH: "refresh the access token, then try again at once",
    ErrorClass.REAUTH: "the creator must authorize again; the account takes no jobs until then",
    ErrorClass.REROUTE: "this account cannot take it now; another account, or a later time, can",
    ErrorClass.REVIEW: "a human decides; the job waits in review",
    ErrorClass.FATAL: "fix the asset or the request first; trying again changes nothing",
}


def explain(code: str) -> str | None:
    """The text of `orchestrator explain CODE`: every entry with that code, or None."""
    entries = lookup(code)
    if not entries:
        return None
    return "\n\n".join(_explain_entry(entry) for entry in entries)


def _explain_entry(entry: Entry) -> str:
    # Imported here because backoff imports this module; the class budgets live there.
    from .backoff import attempt_budget

    if entry.error_class in (ErrorClass.RETRY, ErrorClass.REFRESH):
        budget = attempt_budget(entry)
        source = "this code" if entry.max_attempts is not None else "class default"
        attempts = f"{budget} in all ({source})"
    elif entry.error_class is ErrorClass.REROUTE:
        attempts = "not counted: the job waits until the account can take it (up to 48 times)"
    else:
        attempts = "none: this class does not retry"
    account = (
        "yes: counts against the account's health"
        if entry.counts_against_account
        else "no: says nothing about the account's health"
    )
    lines = [
        f"{entry.code}  ({entry.kind} code)",
        f"  {entry.message}",
        "",
        f"  class:        {entry.error_class} ({_CLASS_MEANING[entry.error_class]})",
        f"  origin:       {entry.origin}",
        f"  account:      {account}",
        f"  attempts:     {attempts}",
        f"  HTTP status:  {entry.http_status if entry.http_status is not None else 'not fixed'}",
    ]
    if entry.content_rejection:
        lines.append("  content:      a judgement on the content, kept per account and asset")
    lines += ["", "  Possible causes:", *(f"    - {c}" for c in entry.possible_causes)]
    lines += ["", "  Suggestions:", *(f"    - {s}" for s in entry.suggestions)]
    return "\n".join(lines)
