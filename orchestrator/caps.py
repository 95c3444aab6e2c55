"""Daily-cap arithmetic: how many more posts an account may start, and when.

Pure: the caller passes the times TikTok accepted this account's inits and ``now``, and gets
back a number, a time or a new ``CapState``; storing them and sleeping is the caller's job.

TikTok caps Direct Post per creator over a rolling 24 h window, "typically around 15 posts
per day", varying by creator and shared with every other app posting to the account; going
over is answered with ``spam_risk_too_many_posts`` (TIKTOK_API.md §3). The number is not
published, so the configured ``daily_cap`` is a guess that TikTok may correct downwards:
``learn_from_rejection`` records the lower cap and blocks the account until the window frees
a slot.

The window is ``(now - WINDOW, now]``: an init exactly ``WINDOW`` seconds old no longer
counts. Inits later than ``now`` have not happened yet as far as ``now`` is concerned and
are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

WINDOW = 86400.0


@dataclass(frozen=True, kw_only=True, slots=True)
class CapState:
    limit: int  # the configured cap (accounts file daily_cap)
    # A lower cap learned from TikTok (spam_risk_too_many_posts while under our limit).
    # Invariant: None or >= 1; it only ever goes down here, a config reload may reset it.
    learned_limit: int | None = None
    # TikTok said the cap is spent: no dispatch before this time.
    blocked_until: float | None = None

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.learned_limit is not None and self.learned_limit < 1:
            raise ValueError(f"learned_limit must be None or >= 1, got {self.learned_limit}")


def effective_limit(state: CapState) -> int:
    """The cap in force: the configured one, or the lower one TikTok taught us."""
    if state.learned_limit is None:
        return state.limit
    return min(state.limit, state.learned_limit)


def _in_window(t: float, now: float) -> bool:
    # Written as ``now < t + WINDOW`` rather than ``now - WINDOW < t`` so that it rounds the
    # same way as the ``t + WINDOW`` that ``next_slot`` returns: at that instant t is out.
    return t <= now < t + WINDOW


def _counted(accepted_inits: Sequence[float], now: float) -> list[float]:
    """The inits inside the window at ``now``, oldest first."""
    return sorted(t for t in accepted_inits if _in_window(t, now))


def used(accepted_inits: Sequence[float], now: float) -> int:
    """Inits accepted in ``(now - WINDOW, now]``."""
    return sum(1 for t in accepted_inits if _in_window(t, now))


def _blocked(state: CapState, now: float) -> bool:
    return state.blocked_until is not None and now < state.blocked_until


def headroom(state: CapState, accepted_inits: Sequence[float], now: float) -> int:
    """How many more inits may start now; never negative, 0 while blocked."""
    if _blocked(state, now):
        return 0
    return max(0, effective_limit(state) - used(accepted_inits, now))


def next_slot(state: CapState, accepted_inits: Sequence[float], now: float) -> float:
    """The earliest time >= ``now`` at which ``headroom`` is positive.

    ``now`` if there is headroom already; otherwise the later of ``blocked_until`` and the
    moment enough counted inits have left the window (the oldest one, unless the account is
    over its cap, e.g. after the cap was lowered). ``math.inf`` when the cap is 0.
    """
    limit = effective_limit(state)
    if limit <= 0:
        return math.inf
    counted = _counted(accepted_inits, now)
    at = now
    if len(counted) >= limit:
        # The slot opens when the count drops to limit - 1, i.e. when the
        # (len - limit + 1)-th oldest init leaves the window.
        at = counted[len(counted) - limit] + WINDOW
    if state.blocked_until is not None:
        at = max(at, state.blocked_until)
    return at


def learn_from_rejection(state: CapState, accepted_inits: Sequence[float], now: float) -> CapState:
    """The state after TikTok refused an init with ``spam_risk_too_many_posts``.

    What we used in the window is then the real cap (at least 1: other apps may have posted
    to the account), if it is below the cap we believed in. The account is blocked until the
    oldest counted init leaves the window, or for a whole window if we counted none. A block
    already in force is never shortened.
    """
    counted = _counted(accepted_inits, now)
    learned = state.learned_limit
    if len(counted) < effective_limit(state):
        learned = max(1, len(counted))
    until = counted[0] + WINDOW if counted else now + WINDOW
    if state.blocked_until is not None:
        until = max(until, state.blocked_until)
    return replace(state, learned_limit=learned, blocked_until=until)
