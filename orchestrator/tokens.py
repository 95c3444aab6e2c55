"""The token registry: every TikTok call gets its access token here, never from anywhere else.

Refresh tokens rotate: each refresh returns a new one and the old one stops working
(shared/TIKTOK_API.md §1.2). So a refresh runs at most once at a time per account, and its
result (new access and refresh token together) is written in one transaction before the new
access token is handed to anybody. A refresh that TikTok refuses with ``invalid_grant`` parks
the account in ``needs_reauth``: only a human can bring it back.

This first version refreshes on demand (when a token is close to expiry or TikTok said 401);
the scheduled refresh and its sweep belong to the scheduler built on top of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import anyio

from .clock import ClockLike
from .errors import NeedsReauth, TikTokApiError, TikTokError, TokenError
from .logs import fields
from .store import Store, TokenRecord
from .tiktok import TikTokClient, TokenGrant

log = logging.getLogger(__name__)

# OAuth errors after which retrying with the same refresh token cannot help.
REAUTH_CODES = frozenset({"invalid_grant", "access_denied", "invalid_scope", "unauthorized_client"})


def refresh_margin(lifetime: float) -> float:
    """How long before expiry to refresh: a tenth of the lifetime, between 1 and 10 minutes."""
    return min(600.0, max(60.0, lifetime / 10))


def needs_refresh(record: TokenRecord, now: float) -> bool:
    if not record.access_token or record.access_expires_at is None:
        return True
    lifetime = max(0.0, record.access_expires_at - record.updated_at)
    return record.access_expires_at - refresh_margin(lifetime) <= now


def parse_token_file(path: Path) -> tuple[dict[str, object], str]:
    """A token file is TikTok's /v2/oauth/token/ answer saved as JSON; returns it and its hash."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TokenError(f"cannot read token file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise TokenError(f"token file {path} is not JSON (line {exc.args})") from None
    if not isinstance(data, dict) or not isinstance(data.get("refresh_token"), str):
        raise TokenError(f"token file {path} has no refresh_token")
    return data, hashlib.sha256(raw).hexdigest()


class TokenRegistry:
    def __init__(self, store: Store, client: TikTokClient, clock: ClockLike) -> None:
        self._store = store
        self._client = client
        self._clock = clock
        self._locks: dict[str, anyio.Lock] = {}

    def _lock(self, account_id: str) -> anyio.Lock:
        return self._locks.setdefault(account_id, anyio.Lock())

    async def import_file(self, account_id: str, path: Path) -> bool:
        """Take an account's first tokens from its token file; returns whether it imported.

        The store is the source of truth once a token is in it (refresh tokens rotate, so the
        file goes stale); the file is read again only when its content changes, which is how
        an operator hands over a fresh authorization.
        """
        data, digest = parse_token_file(path)
        current = await self._store.get_token(account_id)
        if current is not None and current.imported_sha256 == digest:
            return False
        now = self._clock.now()
        access = data.get("access_token")
        expires_in = data.get("expires_in")
        refresh_expires_in = data.get("refresh_expires_in")
        record = TokenRecord(
            account_id=account_id,
            open_id=str(data["open_id"]) if data.get("open_id") else None,
            access_token=access if isinstance(access, str) else None,
            access_expires_at=now + expires_in if isinstance(expires_in, int) else None,
            refresh_token=str(data["refresh_token"]),
            refresh_expires_at=(
                now + refresh_expires_in if isinstance(refresh_expires_in, int) else None
            ),
            scopes=frozenset(s for s in str(data.get("scope") or "").split(",") if s),
            state="valid",
            imported_sha256=digest,
            last_error=None,
            updated_at=now,
        )
        await self._store.save_token(record)
        log.info(
            "imported tokens for %s from its token file",
            account_id,
            extra=fields("token.imported", account=account_id),
        )
        return True

    async def access_token(self, account_id: str) -> str:
        """A token that is valid now, refreshing first if it is close to expiry."""
        record = await self._store.get_token(account_id)
        if record is None:
            raise TokenError(f"account {account_id} has no tokens", account=account_id)
        if record.state == "needs_reauth":
            raise NeedsReauth(account=account_id)
        if needs_refresh(record, self._clock.now()):
            record = await self.refresh(account_id, stale=record.access_token)
        assert record.access_token is not None
        return record.access_token

    async def scopes(self, account_id: str) -> frozenset[str]:
        record = await self._store.get_token(account_id)
        return record.scopes if record else frozenset()

    async def refresh(self, account_id: str, *, stale: str | None) -> TokenRecord:
        """Refresh once per account at a time. ``stale`` is the token the caller found wanting:
        if another task already replaced it, that result is used instead of refreshing again."""
        async with self._lock(account_id):
            record = await self._store.get_token(account_id)
            if record is None:
                raise TokenError(f"account {account_id} has no tokens", account=account_id)
            if record.state == "needs_reauth":
                raise NeedsReauth(account=account_id)
            now = self._clock.now()
            if record.access_token != stale and not needs_refresh(record, now):
                return record
            if not record.refresh_token:
                raise TokenError(f"account {account_id} has no refresh token", account=account_id)
            try:
                grant = await self._client.refresh_token(record.refresh_token)
            except TikTokApiError as exc:
                if exc.code in REAUTH_CODES:
                    await self._store.save_token(
                        replace(record, state="needs_reauth", last_error=exc.code, updated_at=now)
                    )
                    log.error(
                        "TikTok refused the refresh token of %s: %s",
                        account_id,
                        exc.code,
                        extra=fields("token.needs_reauth", account=account_id, code=exc.code),
                    )
                    raise NeedsReauth(account=account_id) from exc
                raise
            except TikTokError:
                raise
            fresh = self._record_from_grant(record, grant, self._clock.now())
            # Invariant: the rotated refresh token is durable before the new access token is
            # used; a crash after this line loses nothing, a crash before it keeps the old pair.
            await self._store.save_token(fresh)
            log.info(
                "refreshed the access token of %s",
                account_id,
                extra=fields("token.refreshed", account=account_id, expires_in=grant.expires_in),
            )
            return fresh

    @staticmethod
    def _record_from_grant(record: TokenRecord, grant: TokenGrant, now: float) -> TokenRecord:
        return replace(
            record,
            open_id=grant.open_id or record.open_id,
            access_token=grant.access_token,
            access_expires_at=now + grant.expires_in,
            refresh_token=grant.refresh_token,
            refresh_expires_at=(
                now + grant.refresh_expires_in
                if grant.refresh_expires_in is not None
                else record.refresh_expires_at
            ),
            scopes=grant.scopes or record.scopes,
            state="valid",
            last_error=None,
            updated_at=now,
        )
