"""The token registry: every TikTok call gets its access token here, never from anywhere else.

Refresh tokens rotate: each refresh returns a new one and the old one stops working
(shared/TIKTOK_API.md §1.2). A lost refresh answer, or two refreshes racing, can destroy an
account's only credential. So:

- one refresh at a time per account (the scheduler, a 401 during posting and the hourly
  sweep all come through ``refresh``, which holds a per-account lock);
- before a refresh request leaves, ``refresh_started_at`` is written; the new access and
  refresh tokens are written together, in one transaction, before the new access token is
  handed to anybody; the old pair stays in place until then;
- a refresh whose answer never came (a timeout, a dropped connection, a crash) is recorded
  as ``lost`` and surfaced; after a cooldown the old refresh token is tried once more, which
  either works (TikTok never saw the first request) or proves the account needs re-authorizing;
- ``invalid_grant`` and friends park exactly that account in ``needs_reauth``; transient
  failures back off (30 s doubling to 15 min), so one broken account cannot hammer TikTok.

Token values are encrypted at rest when a key is configured (``crypto.TokenCipher``), and a
``TokenRecord``'s repr never shows them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anyio

from .catalog import ErrorClass, classify_error
from .clock import ClockLike
from .crypto import PREFIX, TokenCipher
from .errors import NeedsReauth, TikTokError, TikTokTransportError, TokenError
from .logs import fields
from .store import Store, TokenOutcome, TokenRecord
from .tiktok import TikTokClient, TokenGrant

log = logging.getLogger(__name__)

# Never hand out a token this close to its expiry: the request itself takes time.
SAFETY = 30.0
# The refresh margin may not exceed this share of the token's real lifetime, so a long
# configured margin cannot make a short-lived token refresh continuously.
MAX_MARGIN_SHARE = 0.25
COOLDOWN_BASE, COOLDOWN_CAP = 30.0, 900.0
REFRESH_EXPIRY_WARNING = 7 * 86400.0

VALID, REFRESHING, NEEDS_REAUTH, EXHAUSTED = "valid", "refreshing", "needs_reauth", "exhausted"
PARKED = frozenset({NEEDS_REAUTH, EXHAUSTED})


def effective_margin(lifetime: float, configured: float) -> float:
    return max(0.0, min(configured, lifetime * MAX_MARGIN_SHARE))


def refresh_due(record: TokenRecord, configured_margin: float) -> float | None:
    """When this account's access token should be refreshed (None: nothing to schedule)."""
    if record.state in PARKED or not record.refresh_token:
        return None
    if not record.access_token or record.access_expires_at is None:
        due = record.updated_at
    else:
        issued = record.access_issued_at or record.updated_at
        lifetime = max(0.0, record.access_expires_at - issued)
        due = record.access_expires_at - effective_margin(lifetime, configured_margin)
    if record.refresh_failures and record.next_refresh_at is not None:
        due = max(due, record.next_refresh_at)
    return due


@dataclass(frozen=True, kw_only=True, slots=True)
class Timing:
    """When an account's token wants attention: its next refresh, and when the refresh token
    itself runs out. Read for every account at once, so timers never cost a query each."""

    due: float | None
    refresh_expires_at: float | None


def cooldown(failures: int) -> float:
    return min(COOLDOWN_CAP, COOLDOWN_BASE * float(2 ** max(0, failures - 1)))


def parse_token_file(path: Path) -> tuple[dict[str, object], str]:
    """A token file is TikTok's /v2/oauth/token/ answer saved as JSON; returns it and its hash."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TokenError(f"cannot read token file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except ValueError:
        raise TokenError(f"token file {path} is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("refresh_token"), str):
        raise TokenError(f"token file {path} has no refresh_token")
    return data, hashlib.sha256(raw).hexdigest()


class TokenRegistry:
    def __init__(
        self,
        store: Store,
        client: TikTokClient,
        clock: ClockLike,
        *,
        cipher: TokenCipher | None = None,
        margin: float = 600.0,
        on_change: Callable[[str], None] = lambda account_id: None,
    ) -> None:
        self._store = store
        self._client = client
        self._clock = clock
        self._cipher = cipher
        self.margin = margin
        self.on_change = on_change
        self._locks: dict[str, anyio.Lock] = {}
        # The imported_sha256 of every stored account, read once on the first import: at a
        # start with thousands of accounts each unchanged token file then costs no query.
        # Kept in step by ``save``, the only way tokens are written.
        self._imported: dict[str, str | None] | None = None
        # Each account's row as stored (sealed), so the tokens a post needs cost no query.
        # Every write of a token goes through this registry, which keeps the copy in step; a
        # read that raced a write is not cached (``_writes`` counts writes per account).
        self._rows: dict[str, TokenRecord] = {}
        self._writes: dict[str, int] = {}

    def _lock(self, account_id: str) -> anyio.Lock:
        return self._locks.setdefault(account_id, anyio.Lock())

    # -- the store boundary: tokens are encrypted at rest ------------------------------------

    @staticmethod
    def _map_tokens(record: TokenRecord, fn: Callable[[str, str], str]) -> TokenRecord:
        """Apply ``fn(value, context)`` to both token columns; the context binds a ciphertext
        to its account and column, so a value copied elsewhere does not decrypt."""
        acct = record.account_id
        return replace(
            record,
            access_token=fn(record.access_token, f"{acct}/access") if record.access_token else None,
            refresh_token=fn(record.refresh_token, f"{acct}/refresh")
            if record.refresh_token
            else None,
        )

    def _seal(self, record: TokenRecord) -> TokenRecord:
        if self._cipher is None:
            return record
        cipher = self._cipher
        return self._map_tokens(record, lambda v, ctx: cipher.encrypt(v, context=ctx))

    async def _stored(self, account_id: str) -> TokenRecord | None:
        record = self._rows.get(account_id)
        if record is not None:
            return record
        writes = self._writes.get(account_id, 0)
        record = await self._store.get_token(account_id)
        if record is not None and self._writes.get(account_id, 0) == writes:
            self._rows[account_id] = record
        return record

    def _stored_as(self, sealed: TokenRecord) -> None:
        """After a successful write: the copy is now what the row holds."""
        account_id = sealed.account_id
        self._writes[account_id] = self._writes.get(account_id, 0) + 1
        self._rows[account_id] = sealed

    async def load(self, account_id: str) -> TokenRecord | None:
        record = await self._stored(account_id)
        if record is None:
            return None
        if self._cipher is None:
            if any(v and v.startswith(PREFIX) for v in (record.access_token, record.refresh_token)):
                raise TokenError(
                    f"the tokens of {account_id} are encrypted but no token key is configured",
                    account=account_id,
                )
            return record
        cipher = self._cipher
        return self._map_tokens(record, lambda v, ctx: cipher.decrypt(v, context=ctx))

    async def save(self, record: TokenRecord, history: TokenOutcome | None = None) -> None:
        sealed = self._seal(record)
        try:
            await self._store.save_token(sealed, history=history)
        except BaseException:
            self._forget(record.account_id)  # the write may or may not have landed
            raise
        self._stored_as(sealed)
        if self._imported is not None:
            self._imported[record.account_id] = record.imported_sha256
        self.on_change(record.account_id)

    async def timings(self) -> dict[str, Timing]:
        """Every stored account's refresh timing, in one read; no token is decrypted."""
        return {
            r.account_id: Timing(
                due=refresh_due(r, self.margin), refresh_expires_at=r.refresh_expires_at
            )
            for r in await self._store.all_tokens()
        }

    async def seal_plaintext(self) -> int:
        """Encrypt rows written before a key was configured; returns how many."""
        if self._cipher is None:
            return 0
        sealed = 0
        for stored in await self._store.all_tokens():
            values = (stored.access_token, stored.refresh_token)
            if any(v and not self._cipher.is_encrypted(v) for v in values):
                record = await self.load(stored.account_id)
                assert record is not None
                await self.save(record)
                sealed += 1
        return sealed

    # -- getting tokens in ------------------------------------------------------------------

    async def import_file(self, account_id: str, path: Path) -> bool:
        """Take an account's first tokens from its token file; returns whether it imported.

        The store is the source of truth once a token is in it (refresh tokens rotate, so the
        file goes stale); the file is read again only when its content changes, which is how
        an operator hands over a fresh authorization.
        """
        data, digest = parse_token_file(path)
        if self._imported is None:
            self._imported = {
                t.account_id: t.imported_sha256 for t in await self._store.all_tokens()
            }
        if account_id in self._imported and self._imported[account_id] == digest:
            return False
        await self._take_grant(account_id, _grant_from_json(data), imported_sha256=digest)
        return True

    async def import_files(self, files: Sequence[tuple[str, Path]]) -> dict[str, TokenError]:
        """``import_file`` for many accounts at start-up, the changed files written in one
        transaction: a first start with 10,000 token files otherwise commits (and fsyncs)
        10,000 times, several seconds before READY (bench/results/scale-before.json).
        Returns the accounts whose file could not be used, with why; the rest are in."""
        if self._imported is None:
            self._imported = {
                t.account_id: t.imported_sha256 for t in await self._store.all_tokens()
            }
        failed: dict[str, TokenError] = {}
        fresh: list[TokenRecord] = []
        now = self._clock.now()
        for account_id, path in files:
            try:
                data, digest = parse_token_file(path)
            except TokenError as exc:
                failed[account_id] = exc
                continue
            if account_id in self._imported and self._imported[account_id] == digest:
                continue
            blank = TokenRecord(
                account_id=account_id,
                open_id=None,
                access_token=None,
                access_expires_at=None,
                refresh_token=None,
                refresh_expires_at=None,
                scopes=frozenset(),
                state=VALID,
                imported_sha256=digest,
                last_error=None,
                updated_at=now,
            )
            fresh.append(_apply_grant(blank, _grant_from_json(data), now))
        outcome = TokenOutcome(at=now, outcome="imported")
        rows = [self._seal(r) for r in fresh]
        try:
            await self._store.save_tokens([(row, outcome) for row in rows])
        except BaseException:
            for row in rows:
                self._forget(row.account_id)
            raise
        for row in rows:
            self._stored_as(row)
        for record in fresh:
            self._imported[record.account_id] = record.imported_sha256
            self.on_change(record.account_id)
            log.info(
                "new tokens for %s (imported)",
                record.account_id,
                extra=fields("token.imported", account=record.account_id),
            )
        return failed

    async def import_refresh_token(self, account_id: str, refresh_token: str) -> TokenRecord:
        """Onboarding with a refresh token alone: store it, then refresh to get the rest."""
        now = self._clock.now()
        async with self._lock(account_id):
            await self.save(
                TokenRecord(
                    account_id=account_id,
                    open_id=None,
                    access_token=None,
                    access_expires_at=None,
                    refresh_token=refresh_token,
                    refresh_expires_at=None,
                    scopes=frozenset(),
                    state=VALID,
                    imported_sha256=None,
                    last_error=None,
                    updated_at=now,
                ),
                TokenOutcome(at=now, outcome="imported"),
            )
        return await self.refresh(account_id, stale=None, force=True)

    async def exchange_code(
        self, account_id: str, code: str, *, redirect_uri: str, code_verifier: str | None
    ) -> TokenRecord:
        grant = await self._client.exchange_code(
            code, redirect_uri=redirect_uri, code_verifier=code_verifier
        )
        return await self._take_grant(account_id, grant, outcome="authorized")

    async def _take_grant(
        self,
        account_id: str,
        grant: TokenGrant,
        *,
        imported_sha256: str | None = None,
        outcome: str = "imported",
    ) -> TokenRecord:
        now = self._clock.now()
        async with self._lock(account_id):
            current = await self._store.get_token(account_id)
            record = _apply_grant(
                TokenRecord(
                    account_id=account_id,
                    open_id=None,
                    access_token=None,
                    access_expires_at=None,
                    refresh_token=None,
                    refresh_expires_at=None,
                    scopes=frozenset(),
                    state=VALID,
                    imported_sha256=current.imported_sha256 if current else None,
                    last_error=None,
                    updated_at=now,
                ),
                grant,
                now,
            )
            if imported_sha256 is not None:
                record = replace(record, imported_sha256=imported_sha256)
            await self.save(record, TokenOutcome(at=now, outcome=outcome))
        log.info(
            "new tokens for %s (%s)",
            account_id,
            outcome,
            extra=fields(f"token.{outcome}", account=account_id),
        )
        return record

    # -- using tokens -----------------------------------------------------------------------

    async def access_token(self, account_id: str) -> str:
        """A token that is valid now and for a little while; refreshes first when it is due."""
        record = await self.load(account_id)
        if record is None:
            raise TokenError(f"account {account_id} has no tokens", account=account_id)
        self._check_parked(record)
        now = self._clock.now()
        due = refresh_due(record, self.margin)
        if due is not None and due <= now:
            try:
                record = await self.refresh(account_id, stale=record.access_token)
            except NeedsReauth:
                raise
            except (TikTokError, TokenError):
                record = await self.load(account_id) or record
        expires = record.access_expires_at or 0.0
        if not record.access_token or expires - SAFETY <= now:
            # Invariant: no request ever leaves with an expired token.
            raise TokenError(
                f"the access token of {account_id} has expired and could not be refreshed "
                f"yet ({record.last_error or 'no refresh possible'})",
                account=account_id,
            )
        return record.access_token

    async def scopes(self, account_id: str) -> frozenset[str]:
        record = await self._stored(account_id)
        return record.scopes if record else frozenset()

    def _forget(self, account_id: str) -> None:
        self._writes[account_id] = self._writes.get(account_id, 0) + 1
        self._rows.pop(account_id, None)

    def _check_parked(self, record: TokenRecord) -> None:
        if record.state in PARKED:
            raise NeedsReauth(
                f"account {record.account_id} needs to be authorized again ({record.state}: "
                f"{record.last_error or 'refused'})",
                account=record.account_id,
            )

    # -- refreshing -------------------------------------------------------------------------

    async def refresh(
        self, account_id: str, *, stale: str | None, force: bool = False
    ) -> TokenRecord:
        """Refresh once per account at a time. ``stale`` is the access token the caller found
        wanting: if another task has replaced it meanwhile, that result is used instead."""
        async with self._lock(account_id):
            record = await self.load(account_id)
            if record is None:
                raise TokenError(f"account {account_id} has no tokens", account=account_id)
            self._check_parked(record)
            now = self._clock.now()
            due = refresh_due(record, self.margin)
            if not force and record.access_token != stale and (due is None or due > now):
                return record  # someone else refreshed while we waited for the lock
            if not force and record.refresh_failures and (record.next_refresh_at or 0) > now:
                raise TokenError(
                    f"refresh of {account_id} is cooling down after {record.refresh_failures} "
                    "failure(s)",
                    account=account_id,
                )
            if record.refresh_expires_at is not None and record.refresh_expires_at <= now:
                await self._park(record, EXHAUSTED, "refresh_token_expired", None, now)
            assert record.refresh_token
            # Intent, durably: a crash from here on leaves a trace that the answer was lost.
            await self.save(replace(record, state=REFRESHING, refresh_started_at=now))
            try:
                grant = await self._client.refresh_token(record.refresh_token)
            except TikTokError as exc:
                await self._refresh_failed(record, exc)
                raise
            fresh = _apply_grant(record, grant, self._clock.now())
            # Invariant: the rotated refresh token is durable before the new access token is
            # used; a crash before this write keeps the old pair (and the lost-answer trace).
            await self.save(fresh, TokenOutcome(at=fresh.updated_at, outcome="ok"))
        log.info(
            "refreshed the access token of %s",
            account_id,
            extra=fields("token.refreshed", account=account_id, expires_in=grant.expires_in),
        )
        return fresh

    async def _refresh_failed(self, record: TokenRecord, exc: TikTokError) -> None:
        now = self._clock.now()
        c = classify_error(exc)
        if c.entry.error_class is ErrorClass.REAUTH:
            await self._park(record, NEEDS_REAUTH, c.code, c.entry.error_class.value, now)
        lost = isinstance(exc, TikTokTransportError) and exc.maybe_acted
        failures = record.refresh_failures + 1
        outcome = "lost" if lost else "failed"
        await self.save(
            replace(
                record,
                state=VALID,
                refresh_started_at=None,
                refresh_failures=failures,
                next_refresh_at=now + cooldown(failures),
                last_error="refresh_lost" if lost else c.code,
                updated_at=record.updated_at,
            ),
            TokenOutcome(
                at=now, outcome=outcome, code=c.code, error_class=c.entry.error_class.value
            ),
        )
        log.log(
            logging.ERROR if lost else logging.WARNING,
            "refresh of %s %s (%s); next try in %.0f s",
            record.account_id,
            "lost its answer: TikTok may have rotated the token" if lost else "failed",
            c.code,
            cooldown(failures),
            extra=fields(
                f"token.refresh_{outcome}",
                account=record.account_id,
                code=c.code,
                failures=failures,
            ),
        )

    async def _park(
        self, record: TokenRecord, state: str, code: str, error_class: str | None, now: float
    ) -> None:
        await self.save(
            replace(record, state=state, refresh_started_at=None, last_error=code),
            TokenOutcome(at=now, outcome=state, code=code, error_class=error_class),
        )
        log.error(
            "account %s needs to be authorized again: %s",
            record.account_id,
            code,
            extra=fields("token.needs_reauth", account=record.account_id, code=code, state=state),
        )
        raise NeedsReauth(
            f"account {record.account_id} needs to be authorized again ({code})",
            account=record.account_id,
        )

    async def recover_lost(self) -> list[str]:
        """At start-up: a refresh that was in flight when the daemon died lost its answer."""
        lost = []
        now = self._clock.now()
        for stored in await self._store.all_tokens():
            if stored.refresh_started_at is None:
                continue
            record = await self.load(stored.account_id)
            assert record is not None
            failures = record.refresh_failures + 1
            await self.save(
                replace(
                    record,
                    state=VALID,
                    refresh_started_at=None,
                    refresh_failures=failures,
                    # Probe soon: the old refresh token either still works or proves it died.
                    next_refresh_at=now,
                    last_error="refresh_lost",
                ),
                TokenOutcome(at=now, outcome="lost", code="refresh_lost"),
            )
            log.error(
                "a refresh of %s was in flight when the daemon stopped; its answer is lost",
                record.account_id,
                extra=fields("token.refresh_lost", account=record.account_id),
            )
            lost.append(record.account_id)
        return lost


def _grant_from_json(data: dict[str, object]) -> TokenGrant:
    expires_in = data.get("expires_in")
    refresh_expires_in = data.get("refresh_expires_in")
    access = data.get("access_token")
    return TokenGrant(
        access_token=access if isinstance(access, str) else "",
        expires_in=expires_in if isinstance(expires_in, int) else 0,
        refresh_token=str(data["refresh_token"]),
        refresh_expires_in=refresh_expires_in if isinstance(refresh_expires_in, int) else None,
        open_id=str(data["open_id"]) if data.get("open_id") else None,
        scopes=frozenset(s for s in str(data.get("scope") or "").split(",") if s),
    )


def _apply_grant(record: TokenRecord, grant: TokenGrant, now: float) -> TokenRecord:
    return replace(
        record,
        open_id=grant.open_id or record.open_id,
        access_token=grant.access_token or None,
        access_expires_at=now + grant.expires_in if grant.access_token else None,
        access_issued_at=now,
        refresh_token=grant.refresh_token,
        refresh_expires_at=(
            now + grant.refresh_expires_in
            if grant.refresh_expires_in is not None
            else record.refresh_expires_at
        ),
        scopes=grant.scopes or record.scopes,
        state=VALID,
        last_error=None,
        refresh_failures=0,
        next_refresh_at=None,
        refresh_started_at=None,
        updated_at=now,
    )
