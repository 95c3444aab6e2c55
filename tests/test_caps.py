"""Daily-cap arithmetic: the rolling window, headroom, next slot and learned caps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.caps import (
    WINDOW,
    CapState,
    effective_limit,
    headroom,
    learn_from_rejection,
    next_slot,
    used,
)

NOW = 1_000_000.0


def test_window_is_half_open_an_init_exactly_window_old_no_longer_counts() -> None:
    assert used([NOW - WINDOW], NOW) == 0
    assert used([NOW - WINDOW + 0.001], NOW) == 1
    assert used([NOW], NOW) == 1


def test_inits_after_now_are_not_counted() -> None:
    assert used([NOW + 1.0], NOW) == 0


def test_headroom_counts_down_and_never_goes_negative() -> None:
    state = CapState(limit=3, learned_limit=None, blocked_until=None)
    assert headroom(state, [], NOW) == 3
    assert headroom(state, [NOW - 10.0, NOW - 5.0], NOW) == 1
    assert headroom(state, [NOW - 3.0, NOW - 2.0, NOW - 1.0, NOW], NOW) == 0


def test_headroom_returns_when_the_oldest_init_leaves_the_window() -> None:
    state = CapState(limit=2, learned_limit=None, blocked_until=None)
    inits = [NOW - 100.0, NOW - 50.0]
    assert headroom(state, inits, NOW) == 0
    assert headroom(state, inits, NOW - 100.0 + WINDOW - 0.001) == 0
    assert headroom(state, inits, NOW - 100.0 + WINDOW) == 1


def test_effective_limit_is_the_lower_of_configured_and_learned() -> None:
    assert effective_limit(CapState(limit=15, learned_limit=None, blocked_until=None)) == 15
    assert effective_limit(CapState(limit=15, learned_limit=9, blocked_until=None)) == 9
    assert effective_limit(CapState(limit=5, learned_limit=9, blocked_until=None)) == 5


def test_blocked_until_means_no_headroom_until_then() -> None:
    state = CapState(limit=15, learned_limit=None, blocked_until=NOW + 60.0)
    assert headroom(state, [], NOW) == 0
    assert headroom(state, [], NOW + 59.999) == 0
    assert headroom(state, [], NOW + 60.0) == 15
    assert next_slot(state, [], NOW) == NOW + 60.0


def test_next_slot_is_now_while_there_is_headroom() -> None:
    state = CapState(limit=2, learned_limit=None, blocked_until=None)
    assert next_slot(state, [NOW - 1.0], NOW) == NOW


def test_next_slot_is_when_the_oldest_counted_init_leaves() -> None:
    state = CapState(limit=2, learned_limit=None, blocked_until=None)
    # The first init is already out of the window; the oldest counted one is NOW - 300.
    inits = [NOW - WINDOW - 5.0, NOW - 300.0, NOW - 200.0]
    assert next_slot(state, inits, NOW) == NOW - 300.0 + WINDOW


def test_next_slot_waits_for_enough_inits_to_leave_when_over_the_cap() -> None:
    # The cap was lowered to 2 after 4 posts: two must leave before a third may start.
    state = CapState(limit=2, learned_limit=None, blocked_until=None)
    inits = [NOW - 400.0, NOW - 300.0, NOW - 200.0, NOW - 100.0]
    slot = next_slot(state, inits, NOW)
    assert slot == NOW - 200.0 + WINDOW
    assert headroom(state, inits, slot) == 1


def test_next_slot_takes_the_later_of_block_and_window() -> None:
    inits = [NOW - 100.0]
    late_block = CapState(limit=1, learned_limit=None, blocked_until=NOW + WINDOW)
    assert next_slot(late_block, inits, NOW) == NOW + WINDOW
    early_block = CapState(limit=1, learned_limit=None, blocked_until=NOW + 10.0)
    assert next_slot(early_block, inits, NOW) == NOW - 100.0 + WINDOW


def test_next_slot_with_a_zero_cap_is_never() -> None:
    assert next_slot(CapState(limit=0, learned_limit=None, blocked_until=None), [], NOW) == math.inf


def test_rejection_under_our_limit_learns_the_lower_cap_and_blocks() -> None:
    state = CapState(limit=15, learned_limit=None, blocked_until=None)
    inits = [NOW - 1000.0, NOW - 500.0, NOW - 10.0]
    learned = learn_from_rejection(state, inits, NOW)
    assert learned.learned_limit == 3
    assert learned.limit == 15
    assert learned.blocked_until == NOW - 1000.0 + WINDOW
    assert headroom(learned, inits, NOW) == 0
    assert headroom(learned, inits, NOW - 1000.0 + WINDOW) == 1


def test_rejection_with_no_inits_learns_a_cap_of_one_and_blocks_a_whole_window() -> None:
    # Another app posting to the account spent its cap.
    state = CapState(limit=15, learned_limit=None, blocked_until=None)
    learned = learn_from_rejection(state, [NOW - WINDOW], NOW)
    assert learned.learned_limit == 1
    assert learned.blocked_until == NOW + WINDOW


def test_rejection_at_our_limit_keeps_the_cap_but_blocks() -> None:
    state = CapState(limit=2, learned_limit=None, blocked_until=None)
    learned = learn_from_rejection(state, [NOW - 50.0, NOW - 20.0], NOW)
    assert learned.learned_limit is None
    assert learned.blocked_until == NOW - 50.0 + WINDOW


def test_a_learned_cap_only_goes_down() -> None:
    state = CapState(limit=15, learned_limit=3, blocked_until=None)
    inits = [NOW - 30.0, NOW - 20.0, NOW - 10.0, NOW]
    assert learn_from_rejection(state, inits, NOW).learned_limit == 3
    assert learn_from_rejection(state, inits[:2], NOW).learned_limit == 2


def test_rejection_never_shortens_an_existing_block() -> None:
    state = CapState(limit=15, learned_limit=None, blocked_until=NOW + 2 * WINDOW)
    assert learn_from_rejection(state, [NOW], NOW).blocked_until == NOW + 2 * WINDOW


@pytest.mark.parametrize(
    ("limit", "learned"),
    [(-1, None), (5, 0), (5, -2)],
)
def test_nonsense_states_are_refused(limit: int, learned: int | None) -> None:
    with pytest.raises(ValueError, match="must be"):
        CapState(limit=limit, learned_limit=learned, blocked_until=None)


times = st.floats(min_value=NOW - 3 * WINDOW, max_value=NOW, allow_nan=False)
inits_lists = st.lists(times, max_size=40)
states = st.builds(
    CapState,
    limit=st.integers(min_value=0, max_value=30),
    learned_limit=st.none() | st.integers(min_value=1, max_value=30),
    blocked_until=st.none() | st.floats(min_value=NOW - WINDOW, max_value=NOW + 2 * WINDOW),
)


@given(state=states, inits=inits_lists)
def test_headroom_plus_used_is_the_cap_when_not_blocked(
    state: CapState, inits: list[float]
) -> None:
    unblocked = CapState(limit=state.limit, learned_limit=state.learned_limit, blocked_until=None)
    n = used(inits, NOW)
    if n <= effective_limit(unblocked):
        assert headroom(unblocked, inits, NOW) + n == effective_limit(unblocked)
    assert headroom(state, inits, NOW) >= 0


@given(state=states, inits=inits_lists)
def test_next_slot_is_the_first_moment_with_headroom(state: CapState, inits: list[float]) -> None:
    slot = next_slot(state, inits, NOW)
    if effective_limit(state) == 0:
        assert slot == math.inf
        return
    assert slot >= NOW
    assert headroom(state, inits, slot) > 0
    if slot > NOW:
        assert headroom(state, inits, math.nextafter(slot, -math.inf)) == 0


@given(state=states, inits=inits_lists)
def test_after_a_rejection_nothing_is_dispatched_before_the_block_ends(
    state: CapState, inits: list[float]
) -> None:
    learned = learn_from_rejection(state, inits, NOW)
    assert learned.blocked_until is not None
    assert learned.blocked_until > NOW
    assert headroom(learned, inits, NOW) == 0
    assert next_slot(learned, inits, NOW) >= learned.blocked_until
    assert effective_limit(learned) <= max(1, effective_limit(state))
