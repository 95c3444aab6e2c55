"""Routing: which account takes a job addressed to a pool rather than to one account.

Pure: the caller builds an ``AccountView`` snapshot of each account (from the shard's
breaker, the token registry and ``caps.headroom``) and gets back a ``Choice`` naming the
account, or none, and why. ``considered`` records the verdict on every account so that
``orchestrator job ID`` can show why a job went where it did, or is still waiting.

A pool is written ``pool:TAG[,TAG...][@REGION]``: the accounts having all the tags and, if
given, the region. Tags and regions follow the accounts file (``a-z 0-9 _ -`` tags,
ISO 3166-1 alpha-2 regions).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "pool:"
_TAG = re.compile(r"[a-z0-9][a-z0-9_-]*")
_REGION = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """A pool: the accounts having ALL the tags (and the region, if given)."""

    tags: frozenset[str] = frozenset()
    region: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountView:
    """A snapshot of one account, built by the caller."""

    id: str
    tags: frozenset[str]
    region: str | None
    enabled: bool
    paused: bool
    breaker_open: bool
    token_ok: bool
    scopes: frozenset[str]
    headroom: int  # posts it may still start under its daily cap (caps.headroom)
    health: float  # 0..1, higher is better
    queued: int  # jobs already waiting on it

    def __post_init__(self) -> None:
        # A NaN health would make the ranking depend on input order.
        if not 0.0 <= self.health <= 1.0:
            raise ValueError(f"account {self.id}: health must be within 0..1, got {self.health}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Choice:
    account: str | None  # None: no account can take the job now
    reason: str  # a sentence for people
    # (account id, why it was or was not eligible): the eligible ones first, best first,
    # then the others by id.
    considered: tuple[tuple[str, str], ...]


# Blockers, most lasting first: an account with several is counted under the first.
NOT_IN_POOL = "not in the pool"
DISABLED = "disabled"
PAUSED = "paused"
TOKEN = "token invalid"
SCOPE = "missing scope"
BREAKER = "breaker open"
CAP = "at daily cap"

# How "all N pool accounts ..." / "N ..." ends for each blocker.
_SUMMARY = {
    DISABLED: "disabled",
    PAUSED: "paused",
    TOKEN: "without a valid token",
    SCOPE: "missing the {scope} scope",
    BREAKER: "behind an open circuit breaker",
    CAP: "at their daily cap",
}


def parse_target(spec: str) -> Target:
    """``"pool:tag1,tag2@US"``, ``"pool:@GB"`` or ``"pool:tag"`` as a ``Target``."""
    text = spec.strip()
    if not text.startswith(PREFIX):
        raise ValueError(f"pool target {spec!r} must start with {PREFIX!r}, e.g. 'pool:fitness@US'")
    body = text[len(PREFIX) :]
    tag_part, at, region_part = body.partition("@")
    if "@" in region_part:
        raise ValueError(f"pool target {spec!r} has more than one '@'; use 'pool:TAGS@REGION'")
    region: str | None = None
    if at:
        region = region_part.strip().upper()
        if not _REGION.fullmatch(region):
            raise ValueError(
                f"pool target {spec!r}: region {region_part.strip()!r} is not an "
                "ISO 3166-1 alpha-2 code, e.g. US"
            )
    tags: set[str] = set()
    if tag_part.strip():
        for raw in tag_part.split(","):
            tag = raw.strip().lower()
            if not tag:
                raise ValueError(f"pool target {spec!r} has an empty tag; separate tags with ','")
            if not _TAG.fullmatch(tag):
                raise ValueError(
                    f"pool target {spec!r}: tag {raw.strip()!r} may use only a-z 0-9 _ - "
                    "and must start with a letter or digit"
                )
            tags.add(tag)
    if not tags and region is None:
        raise ValueError(
            f"pool target {spec!r} names no tag and no region; e.g. 'pool:fitness' or 'pool:@US'"
        )
    return Target(tags=frozenset(tags), region=region)


def describe(target: Target) -> str:
    """The target in the form ``parse_target`` reads (tags sorted)."""
    if not target.tags and target.region is None:
        return "any account"
    region = f"@{target.region}" if target.region is not None else ""
    return PREFIX + ",".join(sorted(target.tags)) + region


def _health_bucket(health: float) -> int:
    # Rounded to 0.1 so that 0.91 against 0.93 does not outweigh load.
    return round(health * 10)


def _rank(a: AccountView, capped: bool) -> tuple[int, int, str]:
    room = a.headroom if capped else 0
    return (-_health_bucket(a.health), -(room - a.queued), a.id)


def _pool_miss(target: Target, a: AccountView) -> str | None:
    missing = sorted(target.tags - a.tags)
    if missing:
        return f"{NOT_IN_POOL}: lacks tag {', '.join(missing)}"
    if target.region is not None and a.region != target.region:
        return f"{NOT_IN_POOL}: region {a.region or 'unset'}, pool wants {target.region}"
    return None


def _blockers(a: AccountView, scope: str, capped: bool) -> list[tuple[str, str]]:
    """(blocker, detail) for each reason the pool account cannot take the job, lasting first."""
    found: list[tuple[str, str]] = []
    if not a.enabled:
        found.append((DISABLED, DISABLED))
    if a.paused:
        found.append((PAUSED, PAUSED))
    if not a.token_ok:
        found.append((TOKEN, TOKEN))
    if scope not in a.scopes:
        found.append((SCOPE, f"{SCOPE} {scope}"))
    if a.breaker_open:
        found.append((BREAKER, BREAKER))
    if capped and a.headroom <= 0:
        found.append((CAP, CAP))
    return found


def _stats(a: AccountView) -> str:
    return f"health {a.health:.2f}, headroom {a.headroom}, queued {a.queued}"


def eligible(target: Target, account: AccountView, *, scope: str, capped: bool = True) -> bool:
    """Whether ``account`` may take a job of ``target`` now (the test ``choose`` applies)."""
    return _pool_miss(target, account) is None and not _blockers(account, scope, capped)


def choose(
    target: Target, accounts: Sequence[AccountView], *, scope: str, capped: bool = True
) -> Choice:
    """The account in ``target`` that should take a job needing ``scope``, and why.

    Eligible: in the pool, enabled, not paused, breaker closed, token valid, ``scope``
    granted, and, if the job is ``capped`` (a Direct Post, which TikTok's daily cap counts),
    headroom left. An inbox upload is not counted against the cap, so an account at its cap
    can still take one (the soak found inbox pool jobs waiting hours for a cap that did not
    apply to them). Best: highest health (to 0.1), then most headroom left after the jobs
    already queued (for an uncapped job, fewest queued), then id, so that equal accounts
    always give the same answer.
    """
    eligible: list[AccountView] = []
    rejected: list[tuple[str, str]] = []
    primary: Counter[str] = Counter()
    for a in accounts:
        miss = _pool_miss(target, a)
        if miss is not None:
            rejected.append((a.id, miss))
            continue
        found = _blockers(a, scope, capped)
        if found:
            primary[found[0][0]] += 1
            rejected.append((a.id, "; ".join(detail for _, detail in found)))
        else:
            eligible.append(a)
    eligible.sort(key=lambda a: _rank(a, capped))
    rejected.sort()
    considered = tuple(
        (a.id, ("chosen: " if i == 0 else "eligible: ") + _stats(a)) for i, a in enumerate(eligible)
    ) + tuple(rejected)
    if eligible:
        best = eligible[0]
        return Choice(
            account=best.id,
            reason=f"{best.id} is the healthiest, least loaded account{_where(target)} "
            f"({_stats(best)}; {len(eligible)} eligible)",
            considered=considered,
        )
    return Choice(account=None, reason=_no_account(target, primary, scope), considered=considered)


def _where(target: Target) -> str:
    if not target.tags and target.region is None:
        return ""
    return f" in {describe(target)}"


def _no_account(target: Target, primary: Counter[str], scope: str) -> str:
    where = _where(target)
    total = primary.total()
    if total == 0:
        if not where:
            return "no accounts are configured"
        return f"no account is{where}; check the tags and regions in the accounts file"
    ranked = sorted(primary.items(), key=lambda kv: (-kv[1], list(_SUMMARY).index(kv[0])))
    if len(ranked) == 1:
        lead = "the only account" if total == 1 else f"all {total} accounts"
        verb = "is" if total == 1 else "are"
        return f"{lead}{where} {verb} {_SUMMARY[ranked[0][0]].format(scope=scope)}"
    parts = ", ".join(f"{n} {_SUMMARY[b].format(scope=scope)}" for b, n in ranked)
    return f"none of the {total} accounts{where} can take it: {parts}"
