"""The sandbox against shared/TIKTOK_API.md, over real HTTP on loopback.

Time moves by ``Sandbox.advance`` (simulated seconds), never by sleeping; the only waits
poll for a request to be in flight, with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.sandbox import Sandbox, SandboxConfig, main
from orchestrator.sandbox.rules import check_chunk_plan

MIB = 1024 * 1024
KEY, SECRET = "sbx-client-key", "sbx-client-secret"
INIT = "/v2/post/publish/video/init/"
INBOX_INIT = "/v2/post/publish/inbox/video/init/"
CREATOR_INFO = "/v2/post/publish/creator_info/query/"
STATUS = "/v2/post/publish/status/fetch/"
TOKEN = "/v2/oauth/token/"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(seed=7, processing_seconds=20.0)) as sb:
        yield sb


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.base_url, timeout=10) as c:
        yield c


@pytest.fixture
def grant(sandbox: Sandbox) -> dict[str, Any]:
    return sandbox.create_user(open_id="alice")


def auth(grant: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {grant['access_token']}"}


def file_body(
    size: int, chunk: int, count: int, privacy: str = "SELF_ONLY", title: str = "t"
) -> dict[str, Any]:
    return {
        "post_info": {"privacy_level": privacy, "title": title, "brand_content_toggle": False},
        "source_info": {
            "source": "FILE_UPLOAD",
            "video_size": size,
            "chunk_size": chunk,
            "total_chunk_count": count,
        },
    }


def init(client: httpx.Client, grant: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
    return client.post(INIT, headers=auth(grant), json=body)


def put(client: httpx.Client, url: str, data: bytes, first: int, total: int) -> httpx.Response:
    headers = {
        "Content-Type": "video/mp4",
        "Content-Range": f"bytes {first}-{first + len(data) - 1}/{total}",
    }
    return client.put(url, content=data, headers=headers)


def post_small(
    client: httpx.Client, grant: dict[str, Any], data: bytes, **kw: Any
) -> tuple[str, httpx.Response]:
    """Direct-posts ``data`` as one chunk; returns the publish_id and the PUT's answer."""
    r = init(client, grant, file_body(len(data), len(data), 1, **kw))
    assert r.status_code == 200, r.text
    publish_id, url = r.json()["data"]["publish_id"], r.json()["data"]["upload_url"]
    return publish_id, put(client, url, data, 0, len(data))


def status(client: httpx.Client, grant: dict[str, Any], publish_id: str) -> dict[str, Any]:
    r = client.post(STATUS, headers=auth(grant), json={"publish_id": publish_id})
    assert r.status_code == 200, r.text
    return r.json()["data"]  # type: ignore[no-any-return]


def refresh(client: httpx.Client, token: str, secret: str = SECRET) -> httpx.Response:
    form = {
        "client_key": KEY,
        "client_secret": secret,
        "grant_type": "refresh_token",
        "refresh_token": token,
    }
    return client.post(TOKEN, data=form)


def in_flight(sandbox: Sandbox, endpoint: str) -> None:
    deadline = time.monotonic() + 10
    while not any(r["endpoint"] == endpoint and r["status"] is None for r in sandbox.requests()):
        assert time.monotonic() < deadline, f"no {endpoint} request in flight"
        time.sleep(0.005)


# -- OAuth -----------------------------------------------------------------------------------


def test_refresh_rotates_and_reuse_is_a_violation(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    r = refresh(client, grant["refresh_token"])
    assert r.status_code == 200
    new = r.json()
    assert set(new) == {
        "access_token", "expires_in", "open_id", "refresh_token", "refresh_expires_in",
        "scope", "token_type",
    }  # fmt: skip
    assert new["refresh_token"] != grant["refresh_token"] and new["expires_in"] == 7200
    assert new["scope"] == "user.info.basic,video.publish,video.upload"
    reused = refresh(client, grant["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert set(reused.json()) == {"error", "error_description", "log_id"}
    assert sandbox.ledger()["violations"]["refresh_token_reuse"] == 1
    # The old access token lives until its own expiry; the new refresh token works once.
    assert client.post(CREATOR_INFO, headers=auth(grant)).status_code == 200
    assert refresh(client, new["refresh_token"]).status_code == 200
    bad = refresh(client, new["refresh_token"], secret="nope")
    assert bad.json()["error"] == "invalid_client"


def test_code_exchange_checks_redirect_uri_and_hex_pkce(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.create_user(open_id="bob", scopes=["user.info.basic"])
    verifier = "v" * 43
    challenge = hashlib.sha256(verifier.encode()).hexdigest()
    code = sandbox.authorize(
        open_id="bob",
        scopes=["user.info.basic", "video.upload"],
        redirect_uri="http://127.0.0.1:9999/cb",
        code_challenge=challenge,
    )
    form = {"client_key": KEY, "client_secret": SECRET, "grant_type": "authorization_code"}
    form |= {"code": code, "redirect_uri": "http://127.0.0.1:9999/cb"}
    wrong_uri = client.post(
        TOKEN, data=form | {"redirect_uri": "http://x/", "code_verifier": verifier}
    )
    assert wrong_uri.json()["error"] == "invalid_request"
    wrong_verifier = client.post(TOKEN, data=form | {"code_verifier": "w" * 43})
    assert wrong_verifier.json()["error"] == "invalid_grant"
    ok = client.post(TOKEN, data=form | {"code_verifier": verifier})
    assert ok.status_code == 200, ok.text
    assert ok.json()["open_id"] == "bob" and ok.json()["scope"] == "user.info.basic,video.upload"
    again = client.post(TOKEN, data=form | {"code_verifier": verifier})
    assert again.json()["error"] == "invalid_grant", "a code is single-use"


# -- creator info and init validation --------------------------------------------------------


def test_creator_info_shapes(sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]) -> None:
    body = client.post(CREATOR_INFO, headers=auth(grant)).json()
    assert body["error"]["code"] == "ok" and body["error"]["message"] == ""
    data = body["data"]
    assert data["privacy_level_options"] == [
        "PUBLIC_TO_EVERYONE",
        "MUTUAL_FOLLOW_FRIENDS",
        "SELF_ONLY",
    ]
    assert data["duet_disabled"] is False and data["max_video_post_duration_sec"] == 600
    private = sandbox.create_user(open_id="p", private=True, max_video_post_duration_sec=300)
    data = client.post(CREATOR_INFO, headers=auth(private), json={}).json()["data"]
    assert data["privacy_level_options"] == [
        "FOLLOWER_OF_CREATOR",
        "MUTUAL_FOLLOW_FRIENDS",
        "SELF_ONLY",
    ]
    assert data["duet_disabled"] is data["stitch_disabled"] is True
    assert data["max_video_post_duration_sec"] == 300
    # Private creator, public post: rejected at init.
    r = init(client, private, file_body(1000, 1000, 1, privacy="PUBLIC_TO_EVERYONE"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "privacy_level_option_mismatch"


@pytest.mark.parametrize(
    ("size", "chunk", "count"),
    [
        (12 * MIB, 5 * MIB, 3),  # ceil, not floor
        (10 * MIB, 8 * MIB, 1),  # one chunk must be the whole file
        (9_000_000, 4_500_000, 2),  # multi-chunk below 5 MiB
        (70_000_000, 70_000_000, 1),  # over 64,000,000 must be chunked
        (130_000_000, 65_000_000, 2),  # chunk over 64,000,000
        (4_100_000_000, 60_000_000, 68),  # over 4 GB
    ],
)
def test_chunk_rule_violations_are_invalid_params(
    client: httpx.Client, grant: dict[str, Any], size: int, chunk: int, count: int
) -> None:
    r = init(client, grant, file_body(size, chunk, count))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_params"
    assert "The chunk size is invalid" in r.json()["error"]["message"]


def test_chunk_plans_every_reading_accepts() -> None:
    assert check_chunk_plan(50_000_123, 10_000_000, 5).chunk_length(4) == 10_000_123
    assert check_chunk_plan(64_000_000, 64_000_000, 1).total_chunk_count == 1
    assert check_chunk_plan(4_194_304, 4_194_304, 1).chunk_length(0) == 4_194_304


def test_init_body_validation(client: httpx.Client, grant: dict[str, Any]) -> None:
    long_title = "😀" * 1101  # 2202 UTF-16 code units, 1101 code points
    r = init(client, grant, file_body(1000, 1000, 1, title=long_title))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_params"
    body = file_body(1000, 1000, 1)
    body["post_info"]["privacy_level"] = "PUBLIC"
    assert init(client, grant, body).json()["error"]["code"] == "privacy_level_option_mismatch"

    def pull(url: str) -> httpx.Response:
        info = {"privacy_level": "SELF_ONLY", "brand_content_toggle": False}
        src = {"source": "PULL_FROM_URL", "video_url": url}
        return init(client, grant, {"post_info": info, "source_info": src})

    assert pull("http://media.example.com/a.mp4").status_code == 400
    assert pull("https://10.0.0.1/a.mp4").status_code == 400
    assert pull("https://cdn.unverified.example/a.mp4").json()["error"]["code"] == (
        "url_ownership_unverified"
    )
    assert pull("https://media.example.com/a.mp4").status_code == 200


# -- upload and processing -------------------------------------------------------------------


def test_multi_chunk_upload_then_publish(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    size = 11 * MIB + 12_345
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    r = init(client, grant, file_body(size, 5 * MIB, 2, privacy="PUBLIC_TO_EVERYONE"))
    publish_id, url = r.json()["data"]["publish_id"], r.json()["data"]["upload_url"]
    assert publish_id.startswith("v_pub_file~v2-1.") and url.startswith(
        sandbox.base_url + "/upload/?"
    )

    early = put(client, url, data[5 * MIB :], 5 * MIB, size)
    assert early.status_code == 416 and early.headers["content-range"] == f"bytes */{size}"
    first = put(client, url, data[: 5 * MIB], 0, size)
    assert (
        first.status_code == 206
        and first.headers["content-range"] == f"bytes 0-{5 * MIB - 1}/{size}"
    )
    again = put(client, url, data[: 5 * MIB], 0, size)
    assert (
        again.status_code == 416
        and again.headers["content-range"] == f"bytes 0-{5 * MIB - 1}/{size}"
    )
    assert status(client, grant, publish_id) == {
        "status": "PROCESSING_UPLOAD", "publicaly_available_post_id": [], "uploaded_bytes": 5 * MIB,
    }  # fmt: skip
    last = put(client, url, data[5 * MIB :], 5 * MIB, size)
    assert last.status_code == 201 and last.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
    done = put(client, url, data[:10], 0, size)
    assert done.status_code == 416 and done.headers["content-range"] == f"bytes 0-{size - 1}/{size}"

    sandbox.advance(19)
    assert status(client, grant, publish_id)["status"] == "PROCESSING_UPLOAD"
    sandbox.advance(1)
    final = status(client, grant, publish_id)
    assert final["status"] == "PUBLISH_COMPLETE" and final["uploaded_bytes"] == size
    [post_id] = final["publicaly_available_post_id"]
    assert isinstance(post_id, int) and len(str(post_id)) == 19
    [post] = sandbox.ledger()["posts"]
    assert post["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert post["post_id"] == post_id and post["mode"] == "direct"


def test_upload_rejects_bad_headers_and_expired_url(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    r = init(client, grant, file_body(1000, 1000, 1))
    url = r.json()["data"]["upload_url"]
    bad_type = client.put(
        url,
        content=b"x" * 1000,
        headers={"Content-Type": "image/png", "Content-Range": "bytes 0-999/1000"},
    )
    assert bad_type.status_code == 400
    assert put(client, url, b"x" * 999, 0, 1000).status_code == 400  # shorter than the plan
    assert (
        client.put(url.replace("upload_token=", "upload_token=0"), content=b"").status_code == 404
    )
    sandbox.advance(3601)
    expired = put(client, url, b"x" * 1000, 0, 1000)
    assert expired.status_code == 403 and expired.headers["content-range"] == "bytes */1000"


def test_self_only_has_no_post_id_and_processing_failure_fails(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    private_post, _ = post_small(client, grant, b"a" * 500, privacy="SELF_ONLY")
    sandbox.set_faults(
        {
            "rules": [
                {"endpoint": "video_init", "fault": "processing_failure", "fail_reason": "internal"}
            ]
        }
    )
    failing, _ = post_small(client, grant, b"b" * 500)
    sandbox.advance(20)
    assert status(client, grant, private_post)["publicaly_available_post_id"] == []
    assert status(client, grant, private_post)["status"] == "PUBLISH_COMPLETE"
    failed = status(client, grant, failing)
    assert failed["status"] == "FAILED" and failed["fail_reason"] == "internal"
    ledger = sandbox.ledger()
    assert [p["publish_id"] for p in ledger["posts"]] == [private_post]
    assert ledger["failed"] == [
        {"publish_id": failing, "open_id": "alice", "fail_reason": "internal"}
    ]


def test_status_checks_ownership(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    publish_id, _ = post_small(client, grant, b"a" * 100)
    other = sandbox.create_user(open_id="mallory")
    r = client.post(STATUS, headers=auth(other), json={"publish_id": publish_id})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "token_not_authorized_for_specified_publish_id"
    r = client.post(STATUS, headers=auth(grant), json={"publish_id": "v_pub_file~v2-1.1"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_publish_id"


def test_inbox_pull_and_cancel(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    src = {"source": "PULL_FROM_URL", "video_url": "https://media.example.com/v.mp4"}
    r = client.post(INBOX_INIT, headers=auth(grant), json={"source_info": src})
    publish_id = r.json()["data"]["publish_id"]
    assert publish_id.startswith("v_inbox_url~v2.") and "upload_url" not in r.json()["data"]
    assert status(client, grant, publish_id)["status"] == "PROCESSING_DOWNLOAD"
    sandbox.advance(20)
    assert status(client, grant, publish_id)["status"] == "SEND_TO_USER_INBOX"
    [post] = sandbox.ledger()["posts"]
    assert (
        post["mode"] == "inbox"
        and post["content_sha256"] == hashlib.sha256(src["video_url"].encode()).hexdigest()
    )
    r = client.post(INBOX_INIT, headers=auth(grant), json={"source_info": src})
    cancel = {"publish_id": r.json()["data"]["publish_id"]}
    assert (
        client.post("/v2/post/publish/cancel/", headers=auth(grant), json=cancel).status_code == 200
    )
    again = client.post("/v2/post/publish/cancel/", headers=auth(grant), json=cancel)
    assert again.json()["error"]["code"] == "publish_not_cancellable"
    assert sandbox.ledger()["failed"][0]["fail_reason"] == "publish_cancelled"


def test_stuck_publishes_and_photo_posts(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    sandbox.set_faults({"rules": [{"endpoint": "video_init", "fault": "stuck"}]})
    stuck_file, _ = post_small(client, grant, b"s" * 100)
    info = {"privacy_level": "SELF_ONLY", "brand_content_toggle": False}
    src = {"source": "PULL_FROM_URL", "video_url": "https://media.example.com/s.mp4"}
    r = init(client, grant, {"post_info": info, "source_info": src})
    stuck_pull = r.json()["data"]["publish_id"]
    photo = {
        "media_type": "PHOTO",
        "post_mode": "DIRECT_POST",
        "post_info": {"title": "pics", "privacy_level": "PUBLIC_TO_EVERYONE"},
        "source_info": {
            "source": "PULL_FROM_URL",
            "photo_images": ["https://media.example.com/1.jpg", "https://media.example.com/2.jpg"],
            "photo_cover_index": 1,
        },
    }
    r = client.post("/v2/post/publish/content/init/", headers=auth(grant), json=photo)
    photo_id = r.json()["data"]["publish_id"]
    assert photo_id.startswith("p_pub_url~v2.")
    sandbox.advance(3600)
    assert status(client, grant, stuck_file)["status"] == "PROCESSING_UPLOAD"
    pulled = status(client, grant, stuck_pull)
    assert pulled["status"] == "FAILED" and pulled["fail_reason"] == "video_pull_failed"
    assert len(status(client, grant, photo_id)["publicaly_available_post_id"]) == 1
    assert sandbox.requests()[0]["fault"] == "stuck"


def test_revoke_fails_publishes_in_flight(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    publish_id, _ = post_small(client, grant, b"r" * 100)
    form = {"client_key": KEY, "client_secret": SECRET, "token": grant["access_token"]}
    assert client.post("/v2/oauth/revoke/", data=form).status_code == 200
    assert sandbox.ledger()["failed"] == [
        {"publish_id": publish_id, "open_id": "alice", "fail_reason": "auth_removed"}
    ]


def test_probabilistic_faults_follow_the_seed(sandbox: Sandbox, client: httpx.Client) -> None:
    def run() -> list[int]:
        sandbox.set_faults(
            {
                "seed": 42,
                "rules": [
                    {"endpoint": "creator_info", "fault": "error", "code": "internal_error",
                     "probability": 0.5, "after": 1, "times": 3},
                ],
            }
        )  # fmt: skip
        user = sandbox.create_user()
        return [client.post(CREATOR_INFO, headers=auth(user)).status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second and first[0] == 200 and first.count(500) == 3


# -- limits, caps and tokens -----------------------------------------------------------------


def test_seventh_init_in_a_minute_is_rate_limited(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    for _ in range(6):
        assert init(client, grant, file_body(100, 100, 1)).status_code == 200
    seventh = init(client, grant, file_body(100, 100, 1))
    assert seventh.status_code == 429 and seventh.json()["error"]["code"] == "rate_limit_exceeded"
    assert sandbox.ledger()["violations"]["rate_limited"] == 1
    sandbox.advance(60)
    assert init(client, grant, file_body(100, 100, 1)).status_code == 200


def test_daily_cap(sandbox: Sandbox, client: httpx.Client) -> None:
    capped = sandbox.create_user(open_id="capped", daily_cap=2)
    for _ in range(2):
        assert init(client, capped, file_body(100, 100, 1)).status_code == 200
    over = init(client, capped, file_body(100, 100, 1))
    assert over.status_code == 403 and over.json()["error"]["code"] == "spam_risk_too_many_posts"
    info = client.post(CREATOR_INFO, headers=auth(capped))
    assert info.status_code == 200 and info.json()["error"]["code"] == "spam_risk_too_many_posts"
    ledger = sandbox.ledger()
    assert ledger["cap_rejections"] == 1 and ledger["violations"]["cap_exceeded"] == 0
    sandbox.advance(86_400)
    renewed = refresh(client, capped["refresh_token"]).json()
    assert init(client, renewed, file_body(100, 100, 1)).status_code == 200


def test_inbox_pending_share_cap(
    client: httpx.Client, grant: dict[str, Any], sandbox: Sandbox
) -> None:
    src = {"source": "PULL_FROM_URL", "video_url": "https://media.example.com/v.mp4"}
    for n in range(6):
        if n == 3:
            sandbox.advance(61)  # stay inside the 6/min init rate limit
        r = client.post(INBOX_INIT, headers=auth(grant), json={"source_info": src})
        assert r.status_code == (200 if n < 5 else 403)
    assert r.json()["error"]["code"] == "spam_risk_too_many_pending_share"


def test_expired_revoked_and_unscoped_tokens(sandbox: Sandbox, client: httpx.Client) -> None:
    uploader = sandbox.create_user(open_id="u", scopes=["video.upload"])
    r = client.post(CREATOR_INFO, headers=auth(uploader))
    assert r.status_code == 401 and r.json()["error"]["code"] == "scope_not_authorized"
    assert client.post(CREATOR_INFO).json()["error"]["code"] == "access_token_invalid"
    sandbox.advance(7200)
    r = client.post(STATUS, headers=auth(uploader), json={"publish_id": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "access_token_invalid"
    assert sandbox.ledger()["violations"]["expired_token_requests"] == 1
    fresh = sandbox.create_user(open_id="f")
    form = {"client_key": KEY, "client_secret": SECRET, "token": fresh["access_token"]}
    assert client.post("/v2/oauth/revoke/", data=form).status_code == 200
    assert client.post(CREATOR_INFO, headers=auth(fresh)).status_code == 401
    assert refresh(client, fresh["refresh_token"]).json()["error"] == "invalid_grant"


# -- faults ----------------------------------------------------------------------------------


def test_error_and_html_faults(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    sandbox.set_faults(
        {
            "rules": [
                {
                    "endpoint": "creator_info",
                    "fault": "error",
                    "code": "internal_error",
                    "times": 1,
                },
                {"endpoint": "creator_info", "fault": "html_5xx", "http_status": 502, "times": 1},
                {
                    "endpoint": "token",
                    "fault": "oauth_error",
                    "code": "server_error",
                    "http_status": 200,
                },
            ]
        }
    )
    first = client.post(CREATOR_INFO, headers=auth(grant))
    assert first.status_code == 500 and first.json()["error"]["code"] == "internal_error"
    second = client.post(CREATOR_INFO, headers=auth(grant))
    assert second.status_code == 502 and second.headers["content-type"].startswith("text/html")
    assert "<html>" in second.text
    assert client.post(CREATOR_INFO, headers=auth(grant)).status_code == 200
    token = refresh(client, grant["refresh_token"])
    assert token.status_code == 200 and token.json()["error"] == "server_error"
    assert [r["fault"] for r in sandbox.requests()] == ["error", "html_5xx", None, "oauth_error"]
    assert sandbox.faults()["stats"][0] == {"matched": 3, "fired": 1}


def test_delay_is_interrupted_by_new_plan(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    sandbox.set_faults({"rules": [{"endpoint": "*", "fault": "delay", "seconds": 60}]})
    answers: list[int] = []
    thread = threading.Thread(
        target=lambda: answers.append(client.post(CREATOR_INFO, headers=auth(grant)).status_code)
    )
    started = time.monotonic()
    thread.start()
    in_flight(sandbox, "creator_info")
    sandbox.set_faults({"rules": []})
    thread.join(timeout=10)
    assert answers == [200] and time.monotonic() - started < 10
    assert sandbox.requests()[-1]["fault"] == "delay"


def test_drop_before_acts_not_and_drop_after_acts(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    sandbox.set_faults({"rules": [{"endpoint": "video_init", "fault": "drop_before", "times": 1}]})
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        init(client, grant, file_body(100, 100, 1))
    assert sandbox.ledger()["counters"]["video_init"] == {"0": 1}
    sandbox.set_faults({"rules": [{"endpoint": "upload", "fault": "drop_after", "times": 1}]})
    r = init(client, grant, file_body(100, 100, 1))
    publish_id, url = r.json()["data"]["publish_id"], r.json()["data"]["upload_url"]
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        put(client, url, b"z" * 100, 0, 100)
    assert status(client, grant, publish_id)["uploaded_bytes"] == 100, "the chunk was stored"
    sandbox.advance(20)
    assert [p["publish_id"] for p in sandbox.ledger()["posts"]] == [publish_id]


def test_drop_after_init_creates_the_publish(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    sandbox.set_faults({"rules": [{"endpoint": "video_init", "fault": "drop_after"}]})
    src = {"source": "PULL_FROM_URL", "video_url": "https://media.example.com/a.mp4"}
    body = {
        "post_info": {"privacy_level": "SELF_ONLY", "brand_content_toggle": True},
        "source_info": src,
    }
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        init(client, grant, body)
    sandbox.advance(20)
    assert len(sandbox.ledger()["posts"]) == 1


def test_ledger_reports_duplicates(
    sandbox: Sandbox, client: httpx.Client, grant: dict[str, Any]
) -> None:
    post_small(client, grant, b"same" * 100, title="again")
    post_small(client, grant, b"same" * 100, title="again")
    post_small(client, grant, b"same" * 100, title="other title")
    sandbox.advance(20)
    [group] = sandbox.ledger()["duplicates"]
    assert len(group) == 2 and {p["title"] for p in group} == {"again"}


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        (
            {"rules": [{"endpoint": "nope", "fault": "error", "code": "internal_error"}]},
            "rules[0].endpoint",
        ),
        ({"rules": [{"endpoint": "status", "fault": "error", "code": "bogus"}]}, "rules[0].code"),
        (
            {"rules": [{"endpoint": "*", "fault": "delay", "seconds": 1, "color": 1}]},
            "rules[0].color",
        ),
        ({"rules": [{"endpoint": "status", "fault": "stuck"}]}, "rules[0].endpoint"),
        ({"rules": [{"endpoint": "token", "fault": "oauth_error", "code": "x"}]}, "rules[0].code"),
        ({"rules": [], "extra": 1}, "'extra'"),
    ],
)
def test_bad_fault_plans_are_rejected(
    sandbox: Sandbox, client: httpx.Client, plan: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        sandbox.set_faults(plan)
    r = client.put("/_sandbox/faults", json=plan)
    assert r.status_code == 400 and words in r.json()["error"]


# -- admin API and CLI -----------------------------------------------------------------------


def test_admin_endpoints(client: httpx.Client) -> None:
    grant = client.post("/_sandbox/users", json={"open_id": "z", "private": True}).json()
    assert grant["open_id"] == "z" and grant["token_type"] == "Bearer"
    assert client.post("/_sandbox/users", json={"color": "red"}).status_code == 400
    code = client.post(
        "/_sandbox/authorize",
        json={"open_id": "z", "scopes": ["video.upload"], "redirect_uri": "x"},
    ).json()["code"]
    assert isinstance(code, str)
    before = client.get("/_sandbox/clock").json()
    after = client.post("/_sandbox/clock/advance", json={"seconds": 3600}).json()
    assert after["now"] - before["now"] >= 3600 and set(before) >= {"now", "time_scale", "epoch"}
    plan: dict[str, Any] = {"rules": [{"endpoint": "status", "fault": "stuck"}]}
    assert client.put("/_sandbox/faults", json=plan).status_code == 400
    plan = {
        "seed": 3,
        "rules": [{"endpoint": "status", "fault": "drop_before", "probability": 0.5}],
    }
    assert client.put("/_sandbox/faults", json=plan).status_code == 200
    assert client.get("/_sandbox/faults").json()["rules"][0]["probability"] == 0.5
    assert client.get("/_sandbox/ledger").json()["posts"] == []
    assert client.get("/_sandbox/requests").json() == [], "admin calls are not logged"


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"rules": [{"endpoint": "x", "fault": "error"}]}))
    assert main(["--faults", str(bad), "--port", "0"]) == 2
    assert "rules[0]" in capsys.readouterr().err
    assert main(["--time-scale", "0", "--port", "0"]) == 2
    assert main(["--users", "2", "--port", "0"]) == 2
    assert main(["--bogus"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_serves_until_sigterm_and_writes_tokens(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "orchestrator.sandbox", "--port", "0", "--time-scale", "10"]
    command += ["--users", "2", "--write-tokens", str(tmp_path / "tokens")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("sandbox listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        grant = json.loads((tmp_path / "tokens" / "user-2.json").read_text())
        r = httpx.post(base_url + CREATOR_INFO, headers=auth(grant))
        assert r.json()["data"]["creator_username"] == "user_2"
        assert httpx.get(base_url + "/_sandbox/clock").json()["time_scale"] == 10
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
