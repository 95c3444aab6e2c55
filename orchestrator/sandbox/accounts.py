"""Creators, their grants and tokens: Login Kit's side of the fake (§1.1-§1.3).

A *grant* is one user's consent to this app: a set of scopes and one live refresh token.
Refreshing rotates the refresh token (Nov-2026 docs: the previous one stops working at once)
and mints a new access token; older access tokens stay valid until their own expiry, since
the doc says nothing to the contrary. Revoking ends the grant and every token of it.

Callers hold the sandbox lock; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import SandboxConfig
from .rules import CODE_TTL, SCOPES, ApiError

_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_MALFORMED = "The request parameters are malformed."


@dataclass(kw_only=True, slots=True)
class User:
    open_id: str
    username: str
    nickname: str
    private: bool
    daily_cap: int | None
    max_video_post_duration_sec: int


@dataclass(kw_only=True, slots=True)
class Grant:
    id: int
    open_id: str
    scopes: tuple[str, ...]
    refresh_token: str  # Invariant: the only refresh token of this grant that works.
    refresh_expires_at: float  # fixed at the first issuance ("after the initial issuance")
    revoked: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessToken:
    grant_id: int
    open_id: str
    expires_at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthCode:
    open_id: str
    scopes: tuple[str, ...]
    redirect_uri: str
    code_challenge: str | None
    expires_at: float


class OAuthError(Exception):
    """A flat OAuth failure (§2.4)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class Accounts:
    def __init__(self, config: SandboxConfig, rng: random.Random, violations: Counter[str]):
        self._config = config
        self._rng = rng
        self._violations = violations
        self.users: dict[str, User] = {}
        self._grants: dict[int, Grant] = {}
        self._access: dict[str, AccessToken] = {}
        # Every refresh token ever issued -> its grant; rotated ones stay to detect reuse.
        self._refresh: dict[str, int] = {}
        self._codes: dict[str, AuthCode] = {}

    # -- the browser side: a user consents ---------------------------------------------------

    def create_user(
        self,
        *,
        now: float,
        open_id: str | None = None,
        scopes: Sequence[str] = ("user.info.basic", "video.publish", "video.upload"),
        private: bool = False,
        daily_cap: int | None = None,
        max_video_post_duration_sec: int = 600,
        nickname: str | None = None,
    ) -> dict[str, Any]:
        """A new creator who has just authorized the app; returns the token response."""
        if open_id is None:
            n = len(self.users) + 1
            while f"user-{n}" in self.users:
                n += 1
            open_id = f"user-{n}"
        if not isinstance(open_id, str) or not open_id:
            raise ValueError("open_id must be a non-empty string")
        if open_id in self.users:
            raise ValueError(f"a user with open_id {open_id!r} already exists")
        if daily_cap is not None and (not isinstance(daily_cap, int) or daily_cap < 0):
            raise ValueError("daily_cap must be a non-negative integer or null")
        limit = max_video_post_duration_sec
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ValueError("max_video_post_duration_sec must be a positive integer")
        if not isinstance(private, bool):
            raise ValueError("private must be a boolean")
        if nickname is not None and not isinstance(nickname, str):
            raise ValueError("nickname must be a string")
        granted = _check_scopes(scopes)
        self.users[open_id] = User(
            open_id=open_id,
            username=re.sub(r"[^a-z0-9_.]", "_", open_id.lower()),
            nickname=nickname or open_id,
            private=private,
            daily_cap=daily_cap,
            max_video_post_duration_sec=limit,
        )
        return self._new_grant(open_id, granted, now)

    def authorize(
        self,
        *,
        now: float,
        open_id: str,
        scopes: Sequence[str],
        redirect_uri: str,
        code_challenge: str | None = None,
    ) -> str:
        """The user consents in a browser; returns the ``code`` of the redirect."""
        if open_id not in self.users:
            raise ValueError(f"no user with open_id {open_id!r}: create_user first")
        if not isinstance(redirect_uri, str) or not redirect_uri:
            raise ValueError("redirect_uri must be a non-empty string")
        if code_challenge is not None and not isinstance(code_challenge, str):
            raise ValueError("code_challenge must be a string")
        code = f"sbx_code.{self._rng.getrandbits(128):032x}"
        self._codes[code] = AuthCode(
            open_id=open_id,
            scopes=_check_scopes(scopes),
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
            expires_at=now + CODE_TTL,
        )
        return code

    # -- /v2/oauth/token/ and /v2/oauth/revoke/ ----------------------------------------------

    def token(self, form: dict[str, str], now: float) -> dict[str, Any]:
        self._check_client(form)
        grant_type = form.get("grant_type")
        if grant_type == "refresh_token":
            return self._refresh_grant(form, now)
        if grant_type == "authorization_code":
            return self._code_grant(form, now)
        if grant_type == "client_credentials":
            # A client token is for research/commercial APIs; posting endpoints reject it.
            token = f"clt.{self._rng.getrandbits(160):040x}"
            return {"access_token": token, "expires_in": 7200, "token_type": "Bearer"}
        if not grant_type:
            raise OAuthError("invalid_request", _MALFORMED)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported.")

    def revoke(self, form: dict[str, str]) -> Grant | None:
        """Ends the grant of an access token; an unknown token is not an error (RFC 7009)."""
        self._check_client(form)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", _MALFORMED)
        access = self._access.get(token)
        if access is None:
            return None
        grant = self._grants[access.grant_id]
        grant.revoked = True
        return grant

    def _check_client(self, form: dict[str, str]) -> None:
        if not form.get("client_key"):
            raise OAuthError("invalid_request", "Client key is missed in request.")
        if not form.get("client_secret"):
            raise OAuthError("invalid_request", "Client secret is missed in request.")
        if (form["client_key"], form["client_secret"]) != (
            self._config.client_key,
            self._config.client_secret,
        ):
            raise OAuthError("invalid_client", "Client key or secret is invalid.")

    def _refresh_grant(self, form: dict[str, str], now: float) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError("invalid_request", _MALFORMED)
        grant_id = self._refresh.get(token)
        if grant_id is None:
            raise OAuthError("invalid_grant", "Refresh token is invalid.")
        grant = self._grants[grant_id]
        if grant.refresh_token != token:
            # A rotated token: under mandatory rotation a client that sends one has lost
            # track of its latest token. That is the bug the ledger exists to show.
            self._violations["refresh_token_reuse"] += 1
            raise OAuthError(
                "invalid_grant", "Refresh token has been rotated and is no longer valid."
            )
        if grant.revoked:
            raise OAuthError("invalid_grant", "Refresh token has been revoked.")
        if now >= grant.refresh_expires_at:
            raise OAuthError("invalid_grant", "Refresh token is expired.")
        grant.refresh_token = self._new_refresh_token(grant.id)
        return self._issue(grant, now)

    def _code_grant(self, form: dict[str, str], now: float) -> dict[str, Any]:
        code_value, redirect_uri = form.get("code"), form.get("redirect_uri")
        if not code_value or not redirect_uri:
            raise OAuthError("invalid_request", _MALFORMED)
        code = self._codes.get(code_value)
        if code is None or now >= code.expires_at:
            raise OAuthError("invalid_grant", "Authorization code is invalid or expired.")
        if redirect_uri != code.redirect_uri:
            raise OAuthError(
                "invalid_request", "Redirect_uri is not matched with the uri when requesting code."
            )
        if code.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if not _VERIFIER.fullmatch(verifier):
                raise OAuthError("invalid_request", "code_verifier is missing or malformed.")
            # TikTok's PKCE: the challenge is the *hex* SHA-256 of the verifier (§1.1).
            if hashlib.sha256(verifier.encode()).hexdigest() != code.code_challenge:
                raise OAuthError(
                    "invalid_grant", "code_verifier does not match the code_challenge."
                )
        del self._codes[code_value]  # single use
        return self._new_grant(code.open_id, code.scopes, now)

    def _new_grant(self, open_id: str, scopes: tuple[str, ...], now: float) -> dict[str, Any]:
        grant_id = len(self._grants) + 1
        grant = Grant(
            id=grant_id,
            open_id=open_id,
            scopes=scopes,
            refresh_token=self._new_refresh_token(grant_id),
            refresh_expires_at=now + self._config.refresh_ttl,
        )
        self._grants[grant_id] = grant
        return self._issue(grant, now)

    def _new_refresh_token(self, grant_id: int) -> str:
        token = f"rft.{self._rng.getrandbits(160):040x}"
        self._refresh[token] = grant_id
        return token

    def _issue(self, grant: Grant, now: float) -> dict[str, Any]:
        token = f"act.{self._rng.getrandbits(160):040x}"
        ttl = self._config.access_ttl
        self._access[token] = AccessToken(
            grant_id=grant.id, open_id=grant.open_id, expires_at=now + ttl
        )
        return {
            "access_token": token,
            "expires_in": ttl,
            "open_id": grant.open_id,
            "refresh_token": grant.refresh_token,
            "refresh_expires_in": max(0, int(grant.refresh_expires_at - now)),
            "scope": ",".join(grant.scopes),
            "token_type": "Bearer",
        }

    # -- bearer authentication on Content Posting calls -------------------------------------

    def authenticate(
        self, authorization: str | None, now: float, any_of: frozenset[str]
    ) -> tuple[str, AccessToken]:
        """The token string and its record, or ``ApiError`` 401 (§2.2)."""
        token = bearer(authorization)
        access = self._access.get(token or "")
        if token is None or access is None or self._grants[access.grant_id].revoked:
            raise ApiError(
                "access_token_invalid", "Access token is invalid, please refresh token and retry"
            )
        if now >= access.expires_at:
            self._violations["expired_token_requests"] += 1
            raise ApiError(
                "access_token_invalid", "Access token is expired, please refresh token and retry"
            )
        if any_of and not any_of & set(self._grants[access.grant_id].scopes):
            raise ApiError(
                "scope_not_authorized",
                f"The user did not authorize the scope required: {' or '.join(sorted(any_of))}",
            )
        return token, access

    def has_scope(self, access: AccessToken, scope: str) -> bool:
        return scope in self._grants[access.grant_id].scopes

    def open_id_of_bearer(self, authorization: str | None) -> str | None:
        access = self._access.get(bearer(authorization) or "")
        return access.open_id if access else None

    def open_id_of_form(self, form: dict[str, str]) -> str | None:
        """Whose request a token/revoke call is, for fault matching and the request log."""
        if (grant_id := self._refresh.get(form.get("refresh_token", ""))) is not None:
            return self._grants[grant_id].open_id
        if (code := self._codes.get(form.get("code", ""))) is not None:
            return code.open_id
        if (access := self._access.get(form.get("token", ""))) is not None:
            return access.open_id
        return None


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(scopes, str) or not all(isinstance(s, str) for s in scopes):
        raise ValueError("scopes must be a list of strings")
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} (known: {', '.join(sorted(SCOPES))})")
    return tuple(dict.fromkeys(scopes))
