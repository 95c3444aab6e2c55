"""Onboarding helpers: PKCE as TikTok wants it, the authorize URL, and the redirect back."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.oauth import (
    AUTHORIZE_URL,
    VERIFIER_ALPHABET,
    AuthRequest,
    authorize_url,
    build_auth_request,
    code_challenge,
    needs_pkce,
    new_code_verifier,
    new_state,
    parse_redirect,
)

KEY = "aw123client"
REDIRECT = "https://example.com/tiktok/callback?x=1&y=a b"
STATE = "s-123_abc"
VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")

verifiers = st.text(alphabet=VERIFIER_ALPHABET, min_size=43, max_size=128)


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True, strict_parsing=True)


def test_new_code_verifier_charset_and_length() -> None:
    seen = {new_code_verifier() for _ in range(50)}
    assert len(seen) == 50
    for verifier in seen:
        assert len(verifier) == 64
        assert VERIFIER_RE.fullmatch(verifier)


def test_new_state() -> None:
    states = {new_state() for _ in range(50)}
    assert len(states) == 50
    for state in states:
        assert len(state) >= 32
        assert re.fullmatch(r"[A-Za-z0-9_-]+", state)


@given(verifiers)
def test_challenge_is_hex_sha256(verifier: str) -> None:
    challenge = code_challenge(verifier)
    assert challenge == hashlib.sha256(verifier.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", challenge)


def test_challenge_known_value() -> None:
    # RFC 7636 appendix B's verifier; TikTok wants hex, not the RFC's base64url.
    verifier = "dBjftJeZ4CVP-mJ92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == (
        "9e01791ac5dc6f0963c7abb5df7145af75e1b7dc68a00fc3b9a5ffdd0c0e0ed7"
    )
    assert code_challenge(verifier) != "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize("verifier", ["short", "a" * 42, "a" * 129, "a" * 42 + " ", "é" * 43])
def test_challenge_rejects_bad_verifier(verifier: str) -> None:
    with pytest.raises(ValueError, match="43-128"):
        code_challenge(verifier)


def test_authorize_url_without_pkce() -> None:
    url = authorize_url(
        client_key=KEY,
        scopes=["user.info.basic", "video.publish", "user.info.basic", "video.upload"],
        redirect_uri=REDIRECT,
        state=STATE,
    )
    assert url.startswith(AUTHORIZE_URL + "?")
    assert query_of(url) == {
        "client_key": [KEY],
        "response_type": ["code"],
        "scope": ["user.info.basic,video.publish,video.upload"],
        "redirect_uri": [REDIRECT],
        "state": [STATE],
    }


@given(verifiers)
def test_authorize_url_with_pkce(verifier: str) -> None:
    url = authorize_url(
        client_key=KEY,
        scopes=["video.publish"],
        redirect_uri="http://localhost:8765/callback",
        state=STATE,
        code_verifier=verifier,
    )
    query = query_of(url)
    assert query == {
        "client_key": [KEY],
        "response_type": ["code"],
        "scope": ["video.publish"],
        "redirect_uri": ["http://localhost:8765/callback"],
        "state": [STATE],
        "code_challenge": [hashlib.sha256(verifier.encode()).hexdigest()],
        "code_challenge_method": ["S256"],
    }
    assert verifier not in url


def test_authorize_url_encodes_and_uses_base() -> None:
    url = authorize_url(
        client_key="k&x=1",
        scopes=["a b"],
        redirect_uri=REDIRECT,
        state="s#t",
        authorize_base="http://127.0.0.1:9000/v2/auth/authorize/",
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == (
        "http",
        "127.0.0.1:9000",
        "/v2/auth/authorize/",
        "",
    )
    query = query_of(url)
    assert query["client_key"] == ["k&x=1"]
    assert query["scope"] == ["a b"]
    assert query["state"] == ["s#t"]
    assert query["redirect_uri"] == [REDIRECT]


@pytest.mark.parametrize("scopes", [[], [""], ["a,b"], [" video.publish"]])
def test_authorize_url_rejects_bad_scopes(scopes: list[str]) -> None:
    with pytest.raises(ValueError, match="scope"):
        authorize_url(client_key=KEY, scopes=scopes, redirect_uri=REDIRECT, state=STATE)


def test_authorize_url_rejects_a_string_of_scopes() -> None:
    with pytest.raises(TypeError):
        authorize_url(client_key=KEY, scopes="video.publish", redirect_uri=REDIRECT, state=STATE)


@pytest.mark.parametrize("pkce", [True, False])
def test_build_auth_request(pkce: bool) -> None:
    request = build_auth_request(
        client_key=KEY, scopes=["video.publish"], redirect_uri=REDIRECT, pkce=pkce
    )
    query = query_of(request.url)
    assert query["state"] == [request.state]
    if pkce:
        assert request.code_verifier is not None
        assert VERIFIER_RE.fullmatch(request.code_verifier)
        assert query["code_challenge"] == [code_challenge(request.code_verifier)]
        assert query["code_challenge_method"] == ["S256"]
    else:
        assert request.code_verifier is None
        assert "code_challenge" not in query
    other = build_auth_request(
        client_key=KEY, scopes=["video.publish"], redirect_uri=REDIRECT, pkce=pkce
    )
    assert other.state != request.state


def test_auth_request_repr_hides_the_verifier() -> None:
    request = build_auth_request(
        client_key=KEY, scopes=["video.publish"], redirect_uri=REDIRECT, pkce=True
    )
    assert request.code_verifier is not None
    assert request.code_verifier not in repr(request)
    assert "<hidden>" in repr(request)
    assert "code_verifier=None" in repr(AuthRequest(url="u", state="s", code_verifier=None))


def redirect(**params: str) -> str:
    return "http://localhost:8765/callback?" + urlencode(params)


def test_parse_redirect_full_url() -> None:
    url = redirect(code="abc*!def/+=", scopes="user.info.basic,video.publish", state=STATE)
    assert parse_redirect(url, expected_state=STATE) == "abc*!def/+="


def test_parse_redirect_bare_query() -> None:
    query = urlencode({"code": "c%2Fd", "state": STATE})
    assert parse_redirect(query, expected_state=STATE) == "c%2Fd"
    assert parse_redirect("?" + query, expected_state=STATE) == "c%2Fd"
    assert parse_redirect(f"  code=xy%2Az&state={STATE}#frag\n", expected_state=STATE) == "xy*z"


@pytest.mark.parametrize(
    "url",
    [
        redirect(code="abc", state="other"),
        redirect(code="abc", state=STATE + "x"),
        redirect(code="abc"),
        redirect(code="abc", state=""),
        "http://localhost:1/cb",
        "",
    ],
)
def test_parse_redirect_state_mismatch(url: str) -> None:
    with pytest.raises(ValueError, match="CSRF"):
        parse_redirect(url, expected_state=STATE)


def test_parse_redirect_error() -> None:
    url = redirect(error="access_denied", error_description="The user denied", state=STATE)
    with pytest.raises(ValueError, match="access_denied: The user denied"):
        parse_redirect(url, expected_state=STATE)
    with pytest.raises(ValueError, match="invalid_scope"):
        parse_redirect(redirect(error="invalid_scope"), expected_state=STATE)


@pytest.mark.parametrize(
    "url", [redirect(state=STATE), redirect(code="", state=STATE), f"state={STATE}&scopes=a"]
)
def test_parse_redirect_missing_code(url: str) -> None:
    with pytest.raises(ValueError, match="no authorization code"):
        parse_redirect(url, expected_state=STATE)


def test_parse_redirect_refuses_repeated_params() -> None:
    with pytest.raises(ValueError, match="more than once"):
        parse_redirect(f"code=a&code=b&state={STATE}", expected_state=STATE)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://localhost:8765/callback", True),
        ("http://127.0.0.1:8765/", True),
        ("http://127.0.0.1:*/callback", True),
        ("HTTP://LOCALHOST:80", True),
        ("http://localhost/callback", False),  # desktop redirects need a port
        ("http://127.0.0.1/", False),
        ("https://example.com/callback", False),
        ("https://example.com:8443/callback", False),
        ("http://localhost.example.com:8765/", False),
        ("http://[::1]:8765/", False),
        ("", False),
    ],
)
def test_needs_pkce(uri: str, expected: bool) -> None:
    assert needs_pkce(uri) is expected
