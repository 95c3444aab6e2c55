"""Retry decisions: whether a failed call is tried again, and after how long.

Pure (procrastinate's ``get_retry_decision`` is the model): the caller passes the catalog
entry of the failure, how many attempts were made and the server's wait hint, and gets back
a ``Decision``; it does the sleeping and the I/O. Randomness comes in as a ``random.Random``
so tests can pin it.

Delays are exponential with full jitter (uniform between 0 and ``base * 2**(attempt-1)``,
capped at 64 s): many accounts failing together must not come back together. A server's
hint (Retry-After, X-RateLimit-Reset, a ``retry_after`` field) is a floor, never shortened;
it is capped at a day so that a nonsense header cannot park a job for a year.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .catalog import Entry, ErrorClass

BASE, CAP = 1.0, 64.0
HINT_CAP = 24 * 3600.0
# Attempts in all (the first one included) when the entry gives no budget of its own.
CLASS_BUDGET: dict[ErrorClass, int] = {ErrorClass.RETRY: 5, ErrorClass.REFRESH: 2}


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    retry: bool
    delay: float  # seconds to wait before the next attempt; 0 when not retrying
    reason: str  # a short sentence for logs and the job timeline


def attempt_budget(entry: Entry) -> int | None:
    """Attempts in all this failure deserves; None for classes that never retry."""
    if entry.error_class not in CLASS_BUDGET:
        return None
    return entry.max_attempts if entry.max_attempts is not None else CLASS_BUDGET[entry.error_class]


def full_jitter(attempt: int, rng: random.Random, *, base: float = BASE, cap: float = CAP) -> float:
    """A delay drawn uniformly from [0, min(cap, base * 2**(attempt - 1))]."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    # The exponent is clamped so a huge attempt number cannot overflow; the cap wins anyway.
    upper = min(cap, base * 2.0 ** min(attempt - 1, 1000))
    return rng.uniform(0.0, upper)


def decide(*, entry: Entry, attempt: int, hint: float | None, rng: random.Random) -> Decision:
    """What to do after ``attempt`` attempts (1 after the first failure) ended in ``entry``."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    budget = attempt_budget(entry)
    if budget is None:
        return Decision(retry=False, delay=0.0, reason=f"class {entry.error_class} does not retry")
    if attempt >= budget:
        return Decision(retry=False, delay=0.0, reason=f"attempt budget of {budget} spent")
    floor = _hint_floor(hint)
    if entry.error_class is ErrorClass.REFRESH:
        # The failure was the token, not TikTok's load: refresh and go again straight away.
        delay = floor
        what = f"refresh the token, then retry {attempt + 1} of {budget}"
    else:
        delay = max(full_jitter(attempt, rng), floor)
        what = f"retry {attempt + 1} of {budget}"
    when = "at once" if delay == 0 else f"in {delay:.1f} s"
    asked = f" (server asked for {floor:g} s)" if floor > 0 else ""
    return Decision(retry=True, delay=delay, reason=f"{what} {when}{asked}")


def _hint_floor(hint: float | None) -> float:
    if hint is None or math.isnan(hint) or hint <= 0:
        return 0.0
    return min(hint, HINT_CAP)
