"""The status at many accounts: above 100 configured accounts it lists only those that need
an operator, counts the rest, and still shows everyone with ``accounts=all``.

One real daemon with 105 accounts against the sandbox, five of them in trouble each in its
own way, checked through the API and through the CLI; then the rules as pure functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.api import FULL_LIST_UP_TO, RECENT_ERROR, attention_reasons, token_trouble
from orchestrator.render import status_view
from orchestrator.sandbox import Sandbox, SandboxConfig
from orchestrator.store import LastError, TokenStatus

from .harness import (
    KEY,
    SECRET,
    banned,
    faults,
    make_video,
    running,
    submit,
    until_ended,
    wait_for,
    write_config,
)
from .test_cli import Output, cell, cli_main

# Slower than the suite's usual 60x: an error stays "recent" (RECENT_ERROR) for three real
# minutes, far longer than the test runs however loaded the machine is.
SCALE = 20.0
HEALTHY = tuple(f"ok-{n}" for n in range(1, 101))
TROUBLED = ("paused-1", "broken-1", "erring-1", "parked-1", "bare-1")


@pytest.fixture
def slow_sandbox(epoch: float) -> Iterator[Sandbox]:
    config = SandboxConfig(
        time_scale=SCALE, epoch=epoch, processing_seconds=20.0, client_key=KEY, client_secret=SECRET
    )
    with Sandbox(config) as sb:
        yield sb


@pytest.fixture
def many_accounts(tmp_path: Path, slow_sandbox: Sandbox, epoch: float) -> Path:
    """106 enabled accounts and a disabled one: more than FULL_LIST_UP_TO configured."""
    # capped-1 may post once a day: after one post its cap is spent.
    capped = tmp_path / "capped-1.json"
    capped.write_text(json.dumps(slow_sandbox.create_user(open_id="open-capped-1")))
    config = write_config(
        tmp_path,
        slow_sandbox,
        epoch=epoch,
        client_key=KEY,
        client_secret=SECRET,
        accounts=(*TROUBLED, *HEALTHY),
        scale=SCALE,
        extra_daemon={"breaker_failures": 2, "breaker_reset": 1e6},
        extra_toml='[[accounts]]\nid = "off-1"\nenabled = false\n'
        '[[accounts]]\nid = "capped-1"\ndaily_cap = 1\nscopes = ["video.publish"]\n'
        f"token_file = {json.dumps(str(capped))}\n",
        without_token_file=("bare-1",),  # never authorized: no tokens at all
    )
    # parked-1's access token is due at once, and TikTok refuses its refresh token.
    token_file = tmp_path / "tokens" / "parked-1.json"
    token_file.write_text(json.dumps(json.loads(token_file.read_text()) | {"expires_in": 0}))
    assert 1 + len(TROUBLED) + len(HEALTHY) > FULL_LIST_UP_TO
    return config


async def status(client: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    response = await client.get("/v1/status", params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def stable(entry: dict[str, Any]) -> dict[str, Any]:
    """An account's entry without what moves between two requests (ages, expiries)."""
    moving = {"token", "cap", "last_error"}
    return {k: v for k, v in entry.items() if k not in moving} | {
        "token": entry["token"]["state"],
        "cap": entry["cap"] and entry["cap"]["used"],
        "last_error": entry["last_error"] and entry["last_error"]["code"],
    }


def table_rows(text: str) -> set[str]:
    """The account ids in the accounts table of a rendered status."""
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("ACCOUNT "))
    rows = []
    for line in lines[start + 1 :]:
        if "  " not in line:  # the blank line or the "more accounts" line under the table
            break
        rows.append(line.split("  ", 1)[0])
    return set(rows)


@pytest.mark.anyio
async def test_above_100_accounts_status_lists_exactly_those_that_need_attention(
    tmp_path: Path,
    slow_sandbox: Sandbox,
    many_accounts: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    slow_sandbox.set_faults(
        faults(
            banned(times=2, open_id="open-broken-1"),  # two of its own failures: breaker opens
            banned(times=1, open_id="open-erring-1"),  # one failure: an error, breaker closed
            {
                "endpoint": "token",
                "open_id": "open-parked-1",
                "fault": "oauth_error",
                "code": "invalid_grant",
            },
        )
    )
    videos = [make_video(tmp_path / f"{n}.mp4", 20_000 + n, seed=n) for n in range(6)]
    async with running(many_accounts) as (daemon, client):
        paused = await client.post("/v1/accounts/paused-1/pause")
        assert paused.status_code == 200
        for video in videos[:2]:
            job = await submit(client, account="broken-1", video_path=str(video))
            assert await until_ended(client, job["id"]) == "review"
        job = await submit(client, account="erring-1", video_path=str(videos[2]))
        assert await until_ended(client, job["id"]) == "review"
        # A healthy account that posted: a job and a cap used, but nothing wrong.
        ok = await submit(client, account="ok-1", video_path=str(videos[3]))
        assert await until_ended(client, ok["id"]) == "published"
        capped = await submit(client, account="capped-1", video_path=str(videos[4]))
        assert await until_ended(client, capped["id"]) == "published"

        async def parked() -> dict[str, Any] | None:
            document = await status(client)
            return document if document["account_states"].get("parked") else None

        default = await wait_for(parked, what="parked-1 to need re-authorization")
        everyone = await status(client, accounts="all")
        nobody = await status(client, accounts="none")
        one = await status(client, account="erring-1")
        unknown = await client.get("/v1/status", params={"account": "nobody"})
        bogus = await client.get("/v1/status", params={"accounts": "some"})

        socket = str(daemon.config.daemon.socket_path)
        output = Output(capsys)
        assert await cli_main("status", "--socket", socket) == 0
        text = output.read().out
        assert await cli_main("status", "--socket", socket, "--all") == 0
        text_all = output.read().out[len(text) :]
        assert await cli_main("status", "--socket", socket, "--account", "broken-1") == 0
        text_one = output.read().out[len(text) + len(text_all) :]

    needing = {"paused-1", "broken-1", "erring-1", "parked-1", "bare-1", "off-1", "capped-1"}
    reasons = {a["id"]: a["attention"] for a in default["accounts"]}
    assert default["accounts_view"] == "attention"
    assert set(reasons) == needing, "exactly the accounts with a problem, no healthy one"
    assert reasons["paused-1"] == ["paused"]
    assert reasons["broken-1"] == ["breaker open", "error in the last hour"]
    assert reasons["erring-1"] == ["error in the last hour"]
    assert reasons["parked-1"][:2] == ["parked", "token needs_reauth"]
    assert reasons["bare-1"] == ["no token"]
    assert reasons["off-1"] == ["disabled"]
    assert reasons["capped-1"] == ["daily cap spent"]
    assert default["account_count"] == 107 and default["attention_count"] == 7
    assert default["account_states"] == {"active": 104, "paused": 1, "parked": 1, "disabled": 1}
    assert default["totals"] == {"review": 3, "published": 2}
    assert [a["id"] for a in default["accounts"]][:1] == ["paused-1"], "the file's order"

    # The full list says the same about every account, and nothing else needs attention.
    assert everyone["accounts_view"] == "all" and len(everyone["accounts"]) == 107
    assert {a["id"] for a in everyone["accounts"] if a["attention"]} == needing
    full = {a["id"]: a for a in everyone["accounts"]}
    for entry in default["accounts"]:  # the same entry, but for what time moves
        assert stable(entry) == stable(full[entry["id"]])
    assert full["ok-1"]["jobs"] == {"published": 1} and full["ok-1"]["cap"]["used"] == 1
    for key in ("account_count", "account_states", "attention_count", "totals"):
        assert everyone[key] == default[key], key

    assert nobody["accounts_view"] == "none" and nobody["accounts"] == []
    assert nobody["account_states"] == default["account_states"]
    assert nobody["attention_count"] == 7
    assert one["accounts_view"] == "account"
    assert [a["id"] for a in one["accounts"]] == ["erring-1"]
    assert one["accounts"][0]["last_error"]["code"] == "spam_risk_user_banned_from_posting"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_account"
    assert bogus.status_code == 400 and "accounts" in bogus.json()["error"]["message"]

    assert table_rows(text) == needing
    assert "100 more accounts are healthy; --all lists them" in text
    assert "accounts: 107 (104 active, 1 paused, 1 parked, 1 disabled); 7 need attention" in text
    assert cell(text, "broken-1", "ATTENTION") == "breaker open, error in the last hour"
    assert table_rows(text_all) == needing | set(HEALTHY)
    assert "more accounts are healthy" not in text_all
    assert table_rows(text_one) == {"broken-1"}


@pytest.mark.anyio
async def test_a_retired_account_needs_attention_and_leaves_it_when_added_back(
    tmp_path: Path, slow_sandbox: Sandbox, many_accounts: Path
) -> None:
    text = many_accounts.read_text()
    head, *blocks = text.split("[[accounts]]")
    without = head + "".join(f"[[accounts]]{b}" for b in blocks if '"ok-100"' not in b)
    video = make_video(tmp_path / "later.mp4", 20_000)
    async with running(many_accounts) as (_, client):
        # A job for tomorrow keeps ok-100 in the store after the file drops it.
        job = await submit(client, account="ok-100", video_path=str(video), not_before=2e9)
        many_accounts.write_text(without)
        assert (await client.post("/v1/reload")).status_code == 200
        removed = await status(client)
        one = await status(client, account="ok-100")
        many_accounts.write_text(text)
        assert (await client.post("/v1/reload")).status_code == 200
        back = await status(client, accounts="all")

    entries = {a["id"]: a for a in removed["accounts"]}
    assert entries["ok-100"]["state"] == "retired"
    assert entries["ok-100"]["attention"] == ["retired"]
    assert entries["ok-100"]["jobs"] == {"queued": 1}
    assert removed["account_states"]["retired"] == 1
    assert removed["account_count"] == 107  # 106 in the file and one retired
    assert removed["unconfigured_accounts_with_jobs"] == ["ok-100"]
    assert [a["id"] for a in one["accounts"]] == ["ok-100"]
    assert one["accounts"][0]["jobs"] == {"queued": 1}
    ok100 = next(a for a in back["accounts"] if a["id"] == "ok-100")
    assert ok100["state"] == "active" and ok100["jobs"] == {"queued": 1}
    assert "retired" not in back["account_states"]
    assert job["id"]


# -- the rules, as plain functions ----------------------------------------------------------

NOW = 1_000_000.0


def token(**changes: Any) -> TokenStatus:
    values: dict[str, Any] = {
        "account_id": "a",
        "open_id": "o",
        "scopes": frozenset({"video.publish"}),
        "state": "valid",
        "access_expires_at": NOW + 5000,
        "access_issued_at": NOW - 2200,  # a 2 h token: refreshed 600 s before it expires
        "refresh_expires_at": NOW + 100 * 86400,
        "last_error": None,
        "refresh_failures": 0,
        "updated_at": NOW - 2200,
    }
    return TokenStatus(**(values | changes))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({}, None),
        ({"access_expires_at": NOW + 301}, None),  # inside the margin: the refresh is due
        ({"access_expires_at": NOW + 299}, "token expiring"),  # half the margin left: late
        ({"access_expires_at": NOW - 1}, "token expired"),
        ({"state": "needs_reauth", "last_error": "invalid_grant"}, "token needs_reauth"),
        ({"state": "exhausted"}, "token exhausted"),
        ({"last_error": "refresh_lost"}, "token refresh failed (refresh_lost)"),
        ({"refresh_expires_at": NOW + 6 * 86400}, "refresh token expiring"),
        # A short-lived token is refreshed a quarter of its life early, not 600 s.
        ({"access_issued_at": NOW - 680, "access_expires_at": NOW + 120}, None),
        ({"access_issued_at": NOW - 720, "access_expires_at": NOW + 80}, "token expiring"),
    ],
)
def test_token_trouble(changes: dict[str, Any], why: str | None) -> None:
    assert token_trouble(token(**changes), NOW, margin=600.0) == why


def test_no_token_is_trouble() -> None:
    assert token_trouble(None, NOW, margin=600.0) == "no token"


def test_attention_reasons_for_a_healthy_account_are_none() -> None:
    old_error = LastError(code="x", message=None, job_id=None, at=NOW - RECENT_ERROR - 1)
    shard = {"breaker": "closed", "cap": {"used": 14, "limit": 15, "blocked_until": NOW - 1}}
    assert attention_reasons(state="active", error=old_error, now=NOW, shard=shard) == []


def test_attention_reasons_name_every_problem() -> None:
    error = LastError(code="x", message=None, job_id=None, at=NOW - 5)
    shard = {"breaker": "half_open", "cap": {"used": 0, "limit": 15, "blocked_until": NOW + 9}}
    reasons = attention_reasons(
        state="parked", paused=True, shard=shard, token="token needs_reauth", error=error, now=NOW
    )
    assert reasons == [
        "parked",
        "paused",
        "breaker half_open",
        "daily cap spent",
        "token needs_reauth",
        "error in the last hour",
    ]
    spent = {"cap": {"used": 15, "limit": 15, "blocked_until": None}}
    assert attention_reasons(state="active", error=None, now=NOW, shard=spent) == [
        "daily cap spent"
    ]


def test_the_attention_view_renders_a_summary_not_ten_thousand_rows() -> None:
    document = {
        "accounts_view": "attention",
        "account_count": 10_000,
        "account_states": {"active": 9_996, "paused": 3, "disabled": 1},
        "attention_count": 0,
        "accounts": [],
    }
    text = status_view(document)
    assert "accounts: 10,000 (9,996 active, 3 paused, 1 disabled); none needs attention" in text
    assert "no account needs attention" in text
    assert "10,000 more accounts are healthy; --all lists them" in text
    none = status_view(document | {"accounts_view": "none", "attention_count": 4})
    assert "accounts not listed (--all lists them)" in none
    assert "; 4 need attention" in none
    assert not re.search(r"more accounts are healthy", none)
