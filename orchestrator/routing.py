"""Puts pool jobs on accounts, and moves them when their account can no longer take them.

The decision is ``router.choose``, a pure function over snapshots of the accounts; this
module builds the snapshots (configuration, breaker, token, cap, queue) and applies the
choice, recording why in the job's timeline. Only jobs that have not reached TikTok move (no
publish_id): a job TikTok knows stays with its account. Pinned jobs never move.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anyio

from .clock import ClockLike
from .config import Config
from .health import health_score
from .jobs import SCOPE_FOR_MODE, Job, Mode
from .logs import fields
from .router import AccountView, Choice, choose, eligible, parse_target
from .shard import Shard
from .store import Store

log = logging.getLogger(__name__)

REBALANCE_EVERY = 60.0


class Routing:
    def __init__(
        self,
        *,
        store: Store,
        config: Config,
        shards: Mapping[str, Shard],
        clock: ClockLike,
        wake: Callable[[str], None],
    ) -> None:
        self._store = store
        self._config = config
        self._shards = shards
        self._clock = clock
        self._wake = wake
        self._wakeup = anyio.Event()

    def nudge(self) -> None:
        self._wakeup.set()

    def reconfigure(self, config: Config) -> None:
        """A reload changed the accounts: route by the new ones from the next round on."""
        self._config = config
        self.nudge()

    async def views(self) -> dict[str, AccountView]:
        tokens = {t.account_id: t for t in await self._store.all_tokens()}
        waiting = await self._store.waiting_counts()
        now = self._clock.now()
        out = {}
        for account in self._config.accounts:
            shard = self._shards.get(account.id)
            token = tokens.get(account.id)
            snapshot = shard.breaker.snapshot() if shard else None
            out[account.id] = AccountView(
                id=account.id,
                tags=frozenset(account.tags),
                region=account.region,
                enabled=account.enabled and shard is not None,
                paused=shard.paused if shard else True,
                breaker_open=bool(
                    shard
                    and shard.breaker.retry_at() is not None
                    and not shard.breaker.probe_in_flight
                    and shard.breaker.state.value == "open"
                ),
                token_ok=token is not None and token.state == "valid",
                scopes=token.scopes if token else frozenset(),
                headroom=shard.headroom(now) if shard else 0,
                health=health_score(snapshot, recent_failures=0, recent_calls=0)
                if snapshot
                else 0.0,
                queued=waiting.get(account.id, 0),
            )
        return out

    async def pick(self, pool: str, job_scope: str) -> Choice:
        # The scope names the mode (SCOPE_FOR_MODE is one to one), and only a Direct Post
        # counts against the daily cap.
        capped = job_scope == SCOPE_FOR_MODE[Mode.DIRECT]
        views = list((await self.views()).values())
        return choose(parse_target(pool), views, scope=job_scope, capped=capped)

    async def run(self) -> None:
        while True:
            self._wakeup = anyio.Event()
            await self.rebalance()
            with anyio.move_on_after(self._clock.real_seconds(REBALANCE_EVERY)):
                await self._wakeup.wait()

    async def rebalance(self) -> int:
        """Give unassigned pool jobs an account; move those whose account cannot take them."""
        jobs = await self._store.routable_jobs()
        if not jobs:
            return 0
        views = await self.views()
        moved = 0
        for job in jobs:
            if await self._route(job, views):
                moved += 1
        return moved

    async def _route(self, job: Job, views: dict[str, AccountView]) -> bool:
        assert job.pool is not None
        target, scope = parse_target(job.pool), SCOPE_FOR_MODE[job.mode]
        capped = job.mode is Mode.DIRECT
        current = views.get(job.account_id)
        if current is not None and eligible(target, current, scope=scope, capped=capped):
            return False
        choice = choose(target, list(views.values()), scope=scope, capped=capped)
        if choice.account is None or choice.account == job.account_id:
            return False
        detail = {
            "from": job.account_id or None,
            "to": choice.account,
            "reason": choice.reason,
            "considered": [f"{a}: {why}" for a, why in choice.considered[:10]],
        }
        now = self._clock.now()
        if not await self._store.reassign(
            job.id, from_account=job.account_id, to_account=choice.account, now=now, detail=detail
        ):
            return False
        chosen = views[choice.account]
        views[choice.account] = AccountView(
            **{
                **{f: getattr(chosen, f) for f in chosen.__dataclass_fields__},
                "queued": chosen.queued + 1,
            }
        )
        log.info(
            "routed %s to %s: %s",
            job.id,
            choice.account,
            choice.reason,
            extra=fields("job.routed", job=job.id, account=choice.account, pool=job.pool),
        )
        self._wake(choice.account)
        return True
