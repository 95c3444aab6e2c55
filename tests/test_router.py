"""Routing: pool membership, exclusions, ranking, reasons, and the pool syntax."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.router import (
    AccountView,
    Target,
    choose,
    describe,
    parse_target,
)

SCOPE = "video.publish"
POOL = Target(tags=frozenset({"fitness"}), region="US")


def acct(id: str, **changes: Any) -> AccountView:
    fields: dict[str, Any] = {
        "id": id,
        "tags": frozenset({"fitness"}),
        "region": "US",
        "enabled": True,
        "paused": False,
        "breaker_open": False,
        "token_ok": True,
        "scopes": frozenset({SCOPE, "user.info.basic"}),
        "headroom": 10,
        "health": 0.9,
        "queued": 0,
    }
    fields.update(changes)
    return AccountView(**fields)


def verdicts(accounts: list[AccountView], target: Target = POOL) -> dict[str, str]:
    return dict(choose(target, accounts, scope=SCOPE).considered)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"tags": frozenset({"food"})}, "lacks tag fitness"),
        ({"region": "GB"}, "region GB, pool wants US"),
        ({"region": None}, "region unset, pool wants US"),
        ({"enabled": False}, "disabled"),
        ({"paused": True}, "paused"),
        ({"breaker_open": True}, "breaker open"),
        ({"token_ok": False}, "token invalid"),
        ({"scopes": frozenset({"video.upload"})}, "missing scope video.publish"),
        ({"headroom": 0}, "at daily cap"),
    ],
)
def test_each_exclusion_is_recorded_in_considered(changes: dict[str, Any], expected: str) -> None:
    choice = choose(POOL, [acct("bad", **changes), acct("good")], scope=SCOPE)
    assert choice.account == "good"
    why = dict(choice.considered)
    assert expected in why["bad"]
    assert why["good"].startswith("chosen")


def test_every_blocker_of_an_account_is_listed() -> None:
    why = verdicts([acct("a", paused=True, headroom=0, breaker_open=True)])
    assert why["a"] == "paused; breaker open; at daily cap"


def test_health_beats_load() -> None:
    healthy_busy = acct("busy", health=0.9, headroom=1, queued=0)
    sick_idle = acct("idle", health=0.5, headroom=15, queued=0)
    assert choose(POOL, [sick_idle, healthy_busy], scope=SCOPE).account == "busy"


def test_tiny_health_differences_do_not_outweigh_load() -> None:
    loaded = acct("loaded", health=0.93, headroom=10, queued=8)
    free = acct("free", health=0.91, headroom=10, queued=1)
    assert choose(POOL, [loaded, free], scope=SCOPE).account == "free"


def test_least_loaded_among_equally_healthy() -> None:
    accounts = [
        acct("a", headroom=5, queued=4),
        acct("b", headroom=12, queued=2),
        acct("c", headroom=9, queued=0),
    ]
    assert choose(POOL, accounts, scope=SCOPE).account == "b"


def test_ties_are_broken_by_id_whatever_the_input_order() -> None:
    accounts = [acct("m"), acct("c"), acct("x")]
    for order in (accounts, accounts[::-1], accounts[1:] + accounts[:1]):
        choice = choose(POOL, order, scope=SCOPE)
        assert choice.account == "c"
        assert [i for i, _ in choice.considered] == ["c", "m", "x"]


def test_considered_lists_eligible_best_first_then_the_rest_by_id() -> None:
    accounts = [acct("z", paused=True), acct("b", health=0.5), acct("a", headroom=0), acct("y")]
    choice = choose(POOL, accounts, scope=SCOPE)
    assert [i for i, _ in choice.considered] == ["y", "b", "a", "z"]
    assert choice.considered[1][1].startswith("eligible")


def test_tags_must_all_match_and_extra_tags_do_not_matter() -> None:
    target = Target(tags=frozenset({"fitness", "en"}))
    accounts = [
        acct("only-fitness"),
        acct("both", tags=frozenset({"fitness", "en", "extra"}), region="GB"),
    ]
    choice = choose(target, accounts, scope=SCOPE)
    assert choice.account == "both"
    assert "lacks tag en" in dict(choice.considered)["only-fitness"]


def test_region_only_pool() -> None:
    target = parse_target("pool:@GB")
    accounts = [acct("us"), acct("gb", region="GB", tags=frozenset())]
    assert choose(target, accounts, scope=SCOPE).account == "gb"


def test_the_scope_asked_for_is_the_one_checked() -> None:
    uploader = acct("up", scopes=frozenset({"video.upload"}))
    assert choose(POOL, [uploader], scope="video.upload").account == "up"
    assert choose(POOL, [uploader], scope="video.publish").account is None


def test_no_eligible_account_names_the_common_blocker() -> None:
    accounts = [acct(f"a{i}", headroom=0) for i in range(3)] + [acct("other", region="GB")]
    choice = choose(POOL, accounts, scope=SCOPE)
    assert choice.account is None
    assert choice.reason == "all 3 accounts in pool:fitness@US are at their daily cap"
    assert len(choice.considered) == 4


def test_no_eligible_account_with_mixed_blockers_lists_the_commonest_first() -> None:
    accounts = [
        acct("a", breaker_open=True),
        acct("b", token_ok=False),
        acct("c", token_ok=False, headroom=0),
        acct("d", scopes=frozenset()),
    ]
    reason = choose(POOL, accounts, scope=SCOPE).reason
    assert reason.startswith("none of the 4 accounts in pool:fitness@US can take it: ")
    assert reason.endswith(
        "2 without a valid token, 1 missing the video.publish scope, "
        "1 behind an open circuit breaker"
    )


def test_a_single_blocked_account() -> None:
    reason = choose(POOL, [acct("a", paused=True)], scope=SCOPE).reason
    assert reason == "the only account in pool:fitness@US is paused"


def test_an_empty_pool_says_so() -> None:
    choice = choose(POOL, [acct("gb", region="GB")], scope=SCOPE)
    assert choice.account is None
    assert "no account is in pool:fitness@US" in choice.reason
    assert choose(POOL, [], scope=SCOPE).account is None


def test_the_reason_for_a_choice_names_the_account() -> None:
    reason = choose(POOL, [acct("a", health=0.75, headroom=4, queued=1)], scope=SCOPE).reason
    assert reason.startswith("a is ")
    assert "health 0.75, headroom 4, queued 1" in reason


def test_health_outside_0_to_1_is_refused() -> None:
    with pytest.raises(ValueError, match="health"):
        acct("a", health=float("nan"))
    with pytest.raises(ValueError, match="health"):
        acct("a", health=1.5)


@pytest.mark.parametrize(
    ("spec", "target"),
    [
        ("pool:fitness", Target(tags=frozenset({"fitness"}))),
        ("pool:fitness,en@US", Target(tags=frozenset({"fitness", "en"}), region="US")),
        ("pool:@GB", Target(region="GB")),
        ("  pool: Fitness , en @gb ", Target(tags=frozenset({"fitness", "en"}), region="GB")),
        ("pool:a,a", Target(tags=frozenset({"a"}))),
    ],
)
def test_parse_target(spec: str, target: Target) -> None:
    assert parse_target(spec) == target
    assert parse_target(describe(target)) == target


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fitness", "must start with 'pool:'"),
        ("account:alice", "must start with 'pool:'"),
        ("pool:", "no tag and no region"),
        ("pool:   ", "no tag and no region"),
        ("pool:a,,b", "empty tag"),
        ("pool:a,", "empty tag"),
        ("pool:fit ness", "may use only"),
        ("pool:-x", "may use only"),
        ("pool:a@", "ISO 3166-1 alpha-2"),
        ("pool:a@USA", "ISO 3166-1 alpha-2"),
        ("pool:a@U1", "ISO 3166-1 alpha-2"),
        ("pool:a@US@GB", "more than one '@'"),
    ],
)
def test_parse_target_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_target(spec)


def test_describe() -> None:
    assert describe(Target(tags=frozenset({"b", "a"}), region="US")) == "pool:a,b@US"
    assert describe(Target(region="GB")) == "pool:@GB"
    assert describe(Target()) == "any account"


views = st.builds(
    AccountView,
    id=st.text(alphabet="abcdef", min_size=1, max_size=3),
    tags=st.frozensets(st.sampled_from(["fitness", "food", "en"]), max_size=3),
    region=st.sampled_from([None, "US", "GB"]),
    enabled=st.booleans(),
    paused=st.booleans(),
    breaker_open=st.booleans(),
    token_ok=st.booleans(),
    scopes=st.frozensets(st.sampled_from(["video.publish", "video.upload"])),
    headroom=st.integers(min_value=0, max_value=20),
    health=st.floats(min_value=0.0, max_value=1.0),
    queued=st.integers(min_value=0, max_value=30),
)
targets = st.builds(
    Target,
    tags=st.frozensets(st.sampled_from(["fitness", "food", "en"]), max_size=2),
    region=st.sampled_from([None, "US", "GB"]),
)


def eligible(target: Target, a: AccountView, scope: str) -> bool:
    return (
        target.tags <= a.tags
        and (target.region is None or a.region == target.region)
        and a.enabled
        and not a.paused
        and not a.breaker_open
        and a.token_ok
        and scope in a.scopes
        and a.headroom > 0
    )


@given(
    target=targets,
    accounts=st.lists(views, max_size=12, unique_by=lambda a: a.id),
    scope=st.sampled_from(["video.publish", "video.upload"]),
)
def test_the_choice_is_always_eligible_and_none_only_when_nothing_is(
    target: Target, accounts: list[AccountView], scope: str
) -> None:
    choice = choose(target, accounts, scope=scope)
    by_id = {a.id: a for a in accounts}
    if choice.account is None:
        assert not any(eligible(target, a, scope) for a in accounts)
    else:
        assert eligible(target, by_id[choice.account], scope)
    assert sorted(i for i, _ in choice.considered) == sorted(by_id)
    assert choose(target, accounts[::-1], scope=scope) == choice
