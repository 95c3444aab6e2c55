"""The error catalog: coverage of every code we were given, and classification of real
exceptions built the way orchestrator/tiktok.py builds them."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.catalog import (
    ENTRIES,
    UNKNOWN,
    ErrorClass,
    Kind,
    classify_error,
    classify_fail_reason,
    explain,
    lookup,
)
from orchestrator.errors import NeedsReauth, TikTokApiError, TikTokTransportError

R, F, RA, RR, RV, FA = (
    ErrorClass.RETRY,
    ErrorClass.REFRESH,
    ErrorClass.REAUTH,
    ErrorClass.REROUTE,
    ErrorClass.REVIEW,
    ErrorClass.FATAL,
)
DOC, FR, OA = "§2.2", "§2.3", "§2.4"

# (code, kind, a piece of the origin, class): the lead's list, written out by hand.
EXPECTED = [
    # §2.2 error.code
    ("invalid_param", Kind.API, DOC, FA),
    ("invalid_params", Kind.API, DOC, FA),
    ("invalid_file_upload", Kind.API, DOC, FA),
    ("scope_permission_missed", Kind.API, DOC, RA),
    ("app_version_check_failed", Kind.API, DOC, FA),
    ("invalid_publish_id", Kind.API, DOC, FA),
    ("token_not_authorized_for_specified_publish_id", Kind.API, DOC, FA),
    ("publish_not_cancellable", Kind.API, DOC, FA),
    ("access_token_invalid", Kind.API, DOC, F),
    ("access_token_expired", Kind.API, "UNVERIFIED", F),
    ("scope_not_authorized", Kind.API, DOC, RA),
    ("spam_risk_too_many_posts", Kind.API, DOC, RR),
    ("spam_risk_user_banned_from_posting", Kind.API, DOC, RV),
    ("spam_risk_too_many_pending_share", Kind.API, DOC, RR),
    ("reached_active_user_cap", Kind.API, DOC, RR),
    ("unaudited_client_can_only_post_to_private_accounts", Kind.API, DOC, FA),
    ("url_ownership_unverified", Kind.API, DOC, FA),
    ("privacy_level_option_mismatch", Kind.API, DOC, FA),
    ("rate_limit_exceeded", Kind.API, DOC, R),
    ("internal_error", Kind.API, DOC, R),
    # §2.3 fail_reason
    ("file_format_check_failed", Kind.FAIL_REASON, FR, FA),
    ("duration_check_failed", Kind.FAIL_REASON, FR, FA),
    ("frame_rate_check_failed", Kind.FAIL_REASON, FR, FA),
    ("picture_size_check_failed", Kind.FAIL_REASON, FR, FA),
    ("internal", Kind.FAIL_REASON, FR, R),
    ("video_pull_failed", Kind.FAIL_REASON, FR, R),
    ("photo_pull_failed", Kind.FAIL_REASON, FR, R),
    ("publish_cancelled", Kind.FAIL_REASON, FR, FA),
    ("auth_removed", Kind.FAIL_REASON, FR, RA),
    ("spam_risk_too_many_posts", Kind.FAIL_REASON, FR, RR),
    ("spam_risk_user_banned_from_posting", Kind.FAIL_REASON, FR, RV),
    ("spam_risk_text", Kind.FAIL_REASON, FR, RV),
    ("spam_risk", Kind.FAIL_REASON, FR, RV),
    # §2.4 OAuth
    ("access_denied", Kind.OAUTH, OA, RA),
    ("invalid_client", Kind.OAUTH, OA, FA),
    ("invalid_grant", Kind.OAUTH, OA, RA),
    ("invalid_request", Kind.OAUTH, OA, FA),
    ("invalid_scope", Kind.OAUTH, OA, RA),
    ("unauthorized_client", Kind.OAUTH, OA, RA),
    ("unsupported_grant_type", Kind.OAUTH, OA, FA),
    ("unsupported_response_type", Kind.OAUTH, OA, FA),
    ("server_error", Kind.OAUTH, OA, R),
    ("temporarily_unavailable", Kind.OAUTH, OA, R),
    # seed 000
    ("10000", Kind.FIELD, "seed 000", R),
    ("10201", Kind.FIELD, "seed 000", FA),
    ("10202", Kind.FIELD, "seed 000", FA),
    ("10215", Kind.FIELD, "seed 000", FA),
    ("10216", Kind.FIELD, "seed 000", FA),
    ("10217", Kind.FIELD, "seed 000", FA),
    ("10221", Kind.FIELD, "seed 000", FA),
    # seed 001
    ("2200002", Kind.FIELD, "seed 001", RA),
    ("2200006", Kind.FIELD, "seed 001", R),
    ("2200009", Kind.FIELD, "seed 001", RV),
    ("2200010", Kind.FIELD, "seed 001", F),
    ("2200067", Kind.FIELD, "seed 001", RR),
    ("40002", Kind.FIELD, "seed 001", R),
    # seed 003
    ("MISSING_API_TOKEN", Kind.FIELD, "seed 003", RA),
    ("INVALID_API_TOKEN", Kind.FIELD, "seed 003", F),
    ("ACCOUNT_INACTIVE", Kind.FIELD, "seed 003", FA),
    ("INSUFFICIENT_BALANCE", Kind.FIELD, "seed 003", FA),
    ("INVALID_PLATFORM", Kind.FIELD, "seed 003", FA),
    ("INVALID_PARAMETERS", Kind.FIELD, "seed 003", FA),
    ("NOT_FOUND", Kind.FIELD, "seed 003", FA),
    ("RATE_LIMIT_EXCEEDED", Kind.FIELD, "seed 003", R),
    ("INTERNAL_ERROR", Kind.FIELD, "seed 003", R),
    ("SERVICE_UNAVAILABLE", Kind.FIELD, "seed 003", R),
    # seed 004 (network codes only)
    ("10401", Kind.FIELD, "seed 004", R),
    ("21100", Kind.FIELD, "seed 004", FA),
    ("21101", Kind.FIELD, "seed 004", FA),
    ("21102", Kind.FIELD, "seed 004", R),
    ("21103", Kind.FIELD, "seed 004", R),
    ("21201", Kind.FIELD, "seed 004", R),
    ("100000", Kind.FIELD, "seed 004", FA),
    ("600003", Kind.FIELD, "seed 004", R),
    ("600005", Kind.FIELD, "seed 004", FA),
    ("600009", Kind.FIELD, "seed 004", FA),
    ("600011", Kind.FIELD, "seed 004", FA),
    ("603301", Kind.FIELD, "seed 004", FA),
    # HTTP bodies we cannot parse, transport, and the daemon's own codes
    ("http_500", Kind.HTTP, "not JSON", R),
    ("http_502", Kind.HTTP, "not JSON", R),
    ("http_503", Kind.HTTP, "not JSON", R),
    ("http_504", Kind.HTTP, "not JSON", R),
    ("http_5xx", Kind.HTTP, "not JSON", R),
    ("transport.connect_error", Kind.TRANSPORT, "no answer", R),
    ("transport.timeout", Kind.TRANSPORT, "no answer", R),
    ("transport.connection_dropped", Kind.TRANSPORT, "no answer", R),
    ("scope_not_granted", Kind.LOCAL, "orchestrator", RA),
    ("upload_incomplete", Kind.LOCAL, "orchestrator", R),
    ("init_outcome_unknown", Kind.LOCAL, "orchestrator", RV),
    ("connect_failed", Kind.LOCAL, "orchestrator", R),
    ("unknown", Kind.LOCAL, "orchestrator", R),
]


@pytest.mark.parametrize(("code", "kind", "origin", "error_class"), EXPECTED)
def test_every_listed_code_is_catalogued(
    code: str, kind: Kind, origin: str, error_class: ErrorClass
) -> None:
    [entry] = lookup(code, kind)
    assert entry.code == code
    assert origin in entry.origin
    assert entry.error_class is error_class


def test_seed_and_field_codes_say_they_are_unverified_or_where_they_come_from() -> None:
    for entry in ENTRIES:
        if entry.kind is Kind.FIELD:
            assert "seed 00" in entry.origin


def test_kind_and_code_are_a_key_even_ignoring_case() -> None:
    keys = [(e.kind, e.code.casefold()) for e in ENTRIES]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.kind}:{e.code}")
def test_every_entry_explains_itself(entry: object) -> None:
    from orchestrator.catalog import Entry

    assert isinstance(entry, Entry)
    assert entry.message.strip()
    assert entry.possible_causes and all(c.strip() for c in entry.possible_causes)
    assert entry.suggestions and all(s.strip() for s in entry.suggestions)
    assert entry.origin.strip()
    if entry.max_attempts is not None:
        assert entry.error_class in (ErrorClass.RETRY, ErrorClass.REFRESH)
        assert entry.max_attempts >= 1


def test_specific_decisions_of_the_lead() -> None:
    def one(code: str, kind: Kind) -> object:
        return lookup(code, kind)[0]

    assert lookup("rate_limit_exceeded", Kind.API)[0].counts_against_account is False
    assert lookup("reached_active_user_cap", Kind.API)[0].counts_against_account is False
    internal = lookup("internal", Kind.FAIL_REASON)[0]
    assert internal.max_attempts == 3
    for code in ("video_pull_failed", "photo_pull_failed"):
        entry = lookup(code, Kind.FAIL_REASON)[0]
        assert (entry.max_attempts, entry.counts_against_account) == (3, False)
    assert lookup("2200006", Kind.FIELD)[0].max_attempts == 3
    assert lookup("10000", Kind.FIELD)[0].max_attempts == 2
    assert lookup("upload_incomplete", Kind.LOCAL)[0].max_attempts == 2
    for code in ("spam_risk_text", "spam_risk"):
        assert lookup(code, Kind.FAIL_REASON)[0].content_rejection
    assert lookup("2200009", Kind.FIELD)[0].content_rejection
    for kind in (Kind.API, Kind.FAIL_REASON):
        banned = lookup("spam_risk_user_banned_from_posting", kind)[0]
        assert banned.counts_against_account and not banned.content_rejection
    for code in (
        "file_format_check_failed",
        "duration_check_failed",
        "frame_rate_check_failed",
        "picture_size_check_failed",
    ):
        entry = lookup(code, Kind.FAIL_REASON)[0]
        assert entry.content_rejection and not entry.counts_against_account
    assert "orchestrator job resolve" in lookup("init_outcome_unknown", Kind.LOCAL)[0].message
    assert UNKNOWN.error_class is ErrorClass.RETRY
    assert UNKNOWN.max_attempts == 3
    assert UNKNOWN.counts_against_account
    assert UNKNOWN.code == "unknown"
    assert one("access_token_invalid", Kind.API) is lookup("ACCESS_TOKEN_INVALID")[0]


def test_lookup_ignores_case_and_filters_by_kind() -> None:
    assert lookup("Access_Token_Invalid") == lookup("access_token_invalid")
    both = lookup("internal_error")
    assert {e.kind for e in both} == {Kind.API, Kind.FIELD}
    assert [e.code for e in lookup("internal_error", Kind.FIELD)] == ["INTERNAL_ERROR"]
    assert lookup("spam_risk_too_many_posts", Kind.OAUTH) == []
    assert lookup("no_such_code") == []


# -- classify_error on exceptions shaped like the client's ---------------------------------


def api_error(code: str | None, *, endpoint: str = "video_init", status: int = 400) -> Exception:
    return TikTokApiError("TikTok said no", endpoint=endpoint, http_status=status, code=code)


def transport_error(cause: BaseException, *, message: str, maybe_acted: bool) -> Exception:
    try:
        raise TikTokTransportError(
            message, endpoint="video_init", maybe_acted=maybe_acted
        ) from cause
    except TikTokTransportError as exc:
        return exc


@pytest.mark.parametrize(
    ("code", "endpoint", "status", "expected_kind", "expected_class"),
    [
        ("access_token_invalid", "creator_info", 401, Kind.API, F),
        ("spam_risk_too_many_posts", "creator_info", 200, Kind.API, RR),
        ("rate_limit_exceeded", "status", 429, Kind.API, R),
        ("internal_error", "status", 500, Kind.API, R),
        ("invalid_params", "video_init", 400, Kind.API, FA),
        ("INVALID_PARAMS", "video_init", 400, Kind.API, FA),
        ("2200067", "video_init", 403, Kind.FIELD, RR),
        ("invalid_grant", "token", 400, Kind.OAUTH, RA),
        ("invalid_grant", "token", 200, Kind.OAUTH, RA),
        ("server_error", "token", 200, Kind.OAUTH, R),
        ("http_502", "upload", 502, Kind.HTTP, R),
        ("http_503", "video_init", 503, Kind.HTTP, R),
        ("http_599", "status", 599, Kind.HTTP, R),
    ],
)
def test_classify_api_errors(
    code: str, endpoint: str, status: int, expected_kind: Kind, expected_class: ErrorClass
) -> None:
    result = classify_error(api_error(code, endpoint=endpoint, status=status))
    assert result.known
    assert result.code == code
    assert result.entry.kind is expected_kind
    assert result.entry.error_class is expected_class


def test_token_endpoint_prefers_oauth_meanings() -> None:
    # invalid_request exists only as OAuth; on the token endpoint OAuth wins over v2 codes.
    on_token = classify_error(api_error("invalid_request", endpoint="token"))
    assert on_token.entry.kind is Kind.OAUTH
    # A v2 code that reaches the token endpoint (an unexpected envelope) is still found.
    assert classify_error(api_error("internal_error", endpoint="token", status=500)).known
    # OAuth codes are not looked up for Content Posting endpoints.
    assert not classify_error(api_error("invalid_request", endpoint="video_init")).known


def test_http_502_retries_and_unknown_4xx_is_unknown() -> None:
    assert classify_error(api_error("http_502", status=502)).entry.error_class is R
    odd = classify_error(api_error("http_418", endpoint="upload", status=418))
    assert (odd.entry, odd.known, odd.code) == (UNKNOWN, False, "http_418")


def test_unknown_code_is_unknown_and_keeps_the_raw_code() -> None:
    result = classify_error(api_error("brand_new_code_2027"))
    assert result.entry is UNKNOWN
    assert result.known is False
    assert result.code == "brand_new_code_2027"


def test_blank_code_is_internal_error() -> None:
    result = classify_error(api_error(None, status=200))
    assert result.known
    assert result.entry.code == "internal_error"


@pytest.mark.parametrize(
    ("cause", "message", "maybe_acted", "expected"),
    [
        (httpx.ConnectError("refused"), "cannot connect: ConnectError", False, "connect_error"),
        (httpx.ConnectTimeout("slow"), "cannot connect: ConnectTimeout", False, "connect_error"),
        (httpx.PoolTimeout("full"), "cannot connect: PoolTimeout", False, "connect_error"),
        (httpx.ReadTimeout("x"), "connection failed mid-request: ReadTimeout", True, "timeout"),
        (TimeoutError(), "no answer within 30 s", True, "timeout"),
        (httpx.RemoteProtocolError("x"), "connection failed mid-request", True, "dropped"),
        (httpx.ReadError("reset"), "connection failed mid-request: ReadError", True, "dropped"),
        (ConnectionResetError(), "connection failed mid-request", True, "dropped"),
    ],
)
def test_classify_transport_errors_by_their_cause(
    cause: BaseException, message: str, maybe_acted: bool, expected: str
) -> None:
    code = {"dropped": "connection_dropped"}.get(expected, expected)
    result = classify_error(transport_error(cause, message=message, maybe_acted=maybe_acted))
    assert result.known
    assert result.code == f"transport.{code}"
    assert result.entry.kind is Kind.TRANSPORT
    assert result.entry.error_class is R
    assert not result.entry.counts_against_account


def test_other_exceptions_use_their_tiktok_cause_or_are_unknown() -> None:
    refused = NeedsReauth(account="a1")
    refused.__cause__ = api_error("invalid_grant", endpoint="token")
    assert classify_error(refused).entry.error_class is RA
    plain = classify_error(ValueError("boom"))
    assert (plain.entry, plain.known, plain.code) == (UNKNOWN, False, "ValueError")


def test_classify_fail_reason() -> None:
    assert classify_fail_reason("internal").entry.error_class is R
    assert classify_fail_reason("auth_removed").entry.error_class is RA
    assert classify_fail_reason("spam_risk_text").entry.content_rejection
    # internal_error is a v2 code, not a fail_reason.
    assert not classify_fail_reason("internal_error").known
    odd = classify_fail_reason("brand_new_reason")
    assert (odd.entry, odd.known, odd.code) == (UNKNOWN, False, "brand_new_reason")


# -- explain --------------------------------------------------------------------------------


def test_explain_prints_class_origin_and_suggestions() -> None:
    text = explain("internal")
    assert text is not None
    entry = lookup("internal", Kind.FAIL_REASON)[0]
    assert "retry" in text
    assert entry.origin in text
    assert "3 in all" in text
    for line in (*entry.suggestions, *entry.possible_causes):
        assert line in text


def test_explain_shows_every_namespace_a_code_lives_in() -> None:
    text = explain("spam_risk_too_many_posts")
    assert text is not None
    assert "(api code)" in text and "(fail_reason code)" in text
    assert "reroute" in text
    assert "403" in text


def test_explain_is_case_insensitive_and_none_for_nonsense() -> None:
    assert explain("RATE_LIMIT_EXCEEDED") == explain("rate_limit_exceeded")
    assert explain("certainly-not-a-code") is None
    assert explain("") is None


def test_explain_of_a_non_retrying_class_says_so() -> None:
    text = explain("invalid_file_upload")
    assert text is not None
    assert "fatal" in text and "does not retry" in text
