"""Onboarding a creator: the authorize URL we send them to, and the redirect they come back with.

Pure helpers, no I/O: the CLI prints the URL and reads the redirect; the TikTok client swaps the
code for tokens. Kept apart so that the parts that guard the flow (``state`` against CSRF, PKCE
for desktop redirects) are small enough to test exhaustively.

TikTok departs from RFC 7636 in one place, and we follow TikTok: its desktop Login Kit doc says
the ``code_challenge`` is the *hex* SHA-256 of the verifier, not base64url
(shared/TIKTOK_API.md §1.1). Scopes are comma-separated, not space-separated.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

AUTHORIZE_URL = "https://www.tiktok.com/v2/auth/authorize/"
# RFC 7636 "unreserved" characters, which TikTok's desktop doc also names.
VERIFIER_ALPHABET = string.ascii_letters + string.digits + "-._~"
VERIFIER_LENGTH = 64
VERIFIER_MIN, VERIFIER_MAX = 43, 128
# TikTok accepts only these hosts for desktop redirects.
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1"})


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthRequest:
    """One authorization attempt: the URL to open, and what is needed to finish it."""

    url: str
    state: str  # must come back unchanged on the redirect
    code_verifier: str | None  # PKCE secret, sent only with the token exchange; None for web apps

    def __repr__(self) -> str:
        verifier = None if self.code_verifier is None else "<hidden>"
        return f"AuthRequest(url={self.url!r}, state={self.state!r}, code_verifier={verifier})"


def new_state() -> str:
    """An unguessable ``state`` value (43 urlsafe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def new_code_verifier() -> str:
    """A PKCE verifier: 64 characters of ``[A-Za-z0-9-._~]``."""
    return "".join(secrets.choice(VERIFIER_ALPHABET) for _ in range(VERIFIER_LENGTH))


def code_challenge(verifier: str) -> str:
    """The S256 challenge as TikTok wants it: lower-case hex SHA-256 of the verifier."""
    if not VERIFIER_MIN <= len(verifier) <= VERIFIER_MAX or not set(verifier) <= set(
        VERIFIER_ALPHABET
    ):
        raise ValueError(
            f"a PKCE code verifier is {VERIFIER_MIN}-{VERIFIER_MAX} characters of [A-Za-z0-9-._~]"
        )
    return hashlib.sha256(verifier.encode("ascii")).hexdigest()


def authorize_url(
    *,
    client_key: str,
    scopes: Sequence[str],
    redirect_uri: str,
    state: str,
    code_verifier: str | None = None,
    authorize_base: str = AUTHORIZE_URL,
) -> str:
    """The URL of TikTok's consent page for these scopes, with PKCE when a verifier is given."""
    if isinstance(scopes, str):
        raise TypeError("scopes is a sequence of scope names, not a string")
    wanted = list(dict.fromkeys(scopes))
    if not wanted:
        raise ValueError("at least one scope is required")
    for scope in wanted:
        if not scope or "," in scope or scope != scope.strip():
            raise ValueError(f"invalid scope name {scope!r}")
    params = {
        "client_key": client_key,
        "response_type": "code",
        "scope": ",".join(wanted),
        "redirect_uri": redirect_uri,
        "state": state,
    }
    if code_verifier is not None:
        params["code_challenge"] = code_challenge(code_verifier)
        params["code_challenge_method"] = "S256"
    separator = "&" if "?" in authorize_base else "?"
    return f"{authorize_base}{separator}{urlencode(params)}"


def build_auth_request(
    *,
    client_key: str,
    scopes: Sequence[str],
    redirect_uri: str,
    pkce: bool,
    authorize_base: str = AUTHORIZE_URL,
) -> AuthRequest:
    """A fresh authorization attempt with a new state and, if ``pkce``, a new verifier."""
    state = new_state()
    verifier = new_code_verifier() if pkce else None
    url = authorize_url(
        client_key=client_key,
        scopes=scopes,
        redirect_uri=redirect_uri,
        state=state,
        code_verifier=verifier,
        authorize_base=authorize_base,
    )
    return AuthRequest(url=url, state=state, code_verifier=verifier)


def parse_redirect(url_or_query: str, *, expected_state: str) -> str:
    """The authorization ``code`` from the redirect (a full URL or just its query string).

    Raises ValueError when TikTok reports an error, when ``state`` does not match (possible
    CSRF, or a redirect left over from an earlier attempt) or when there is no code.
    """
    text = url_or_query.strip()
    if "://" in text or text.startswith("/"):
        query = urlsplit(text).query
    else:
        query = text.removeprefix("?").partition("#")[0]
    params = parse_qs(query, keep_blank_values=True)

    def one(name: str) -> str | None:
        values = params.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise ValueError(f"the redirect carries {name!r} more than once")
        return values[0]

    # The error is reported before the state is checked: a refusal means nothing is exchanged
    # either way, and "access_denied" is more use to the operator than a state complaint.
    error = one("error")
    if error is not None:
        description = one("error_description") or "no description"
        raise ValueError(f"TikTok refused the authorization: {error}: {description}")
    state = one("state")
    if state is None:
        raise ValueError("the redirect has no state; possible CSRF, start the authorization again")
    if not hmac.compare_digest(state.encode("utf-8"), expected_state.encode("utf-8")):
        raise ValueError(
            "the state in the redirect does not match the one sent (possible CSRF, or a redirect "
            "from an earlier attempt); start the authorization again"
        )
    code = one("code")
    if not code:
        raise ValueError("the redirect has no authorization code")
    return code


def needs_pkce(redirect_uri: str) -> bool:
    """Whether TikTok treats this redirect as a desktop app's, which requires PKCE.

    Desktop redirects are ``http://localhost:PORT`` or ``http://127.0.0.1:PORT`` (the port is
    required; ``*`` is TikTok's wildcard). Anything else is a web redirect, where TikTok's doc
    says PKCE is not used.
    """
    parts = urlsplit(redirect_uri.strip())
    if parts.scheme.lower() not in {"http", "https"} or parts.hostname not in _LOOPBACK_HOSTS:
        return False
    _, colon, port = parts.netloc.rpartition(":")
    return bool(colon) and (port == "*" or (port.isascii() and port.isdigit()))
