"""What TikTok accepts, as constants and pure functions (shared/TIKTOK_API.md §1-§3).

Everything here is a plain function of its arguments: request bodies go in, a parsed
``InitRequest`` or an ``ApiError`` comes out. Where the doc is ambiguous the sandbox takes the
strictest reading, so a client that passes here passes every reading of the real rules.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

# §2.2, error.code -> HTTP status. "" is the blank code some 5xx answers carry.
CODE_STATUS: dict[str, int] = {
    "invalid_param": 400,
    "invalid_params": 400,
    "invalid_file_upload": 400,
    "scope_permission_missed": 400,
    "app_version_check_failed": 400,
    "invalid_publish_id": 400,
    "token_not_authorized_for_specified_publish_id": 400,
    "publish_not_cancellable": 400,
    "access_token_invalid": 401,
    "access_token_expired": 401,  # field-seen only (UNVERIFIED), kept for fault injection
    "scope_not_authorized": 401,
    "spam_risk_too_many_posts": 403,
    "spam_risk_user_banned_from_posting": 403,
    "spam_risk_too_many_pending_share": 403,
    "reached_active_user_cap": 403,
    "unaudited_client_can_only_post_to_private_accounts": 403,
    "url_ownership_unverified": 403,
    "privacy_level_option_mismatch": 403,
    "rate_limit_exceeded": 429,
    "internal_error": 500,
    "": 500,
}
# creator_info reports these with HTTP 200 ("intentional", §1.4).
CREATOR_INFO_200 = frozenset(
    {"spam_risk_too_many_posts", "spam_risk_user_banned_from_posting", "reached_active_user_cap"}
)
FAIL_REASONS = frozenset(  # §2.3
    {
        "file_format_check_failed",
        "duration_check_failed",
        "frame_rate_check_failed",
        "picture_size_check_failed",
        "internal",
        "video_pull_failed",
        "photo_pull_failed",
        "publish_cancelled",
        "auth_removed",
        "spam_risk_too_many_posts",
        "spam_risk_user_banned_from_posting",
        "spam_risk_text",
        "spam_risk",
    }
)
OAUTH_ERRORS = frozenset(  # §2.4
    {
        "access_denied",
        "invalid_client",
        "invalid_grant",
        "invalid_request",
        "invalid_scope",
        "unauthorized_client",
        "unsupported_grant_type",
        "unsupported_response_type",
        "server_error",
        "temporarily_unavailable",
    }
)
SCOPES = frozenset(
    {
        "user.info.basic",
        "user.info.profile",
        "user.info.stats",
        "video.list",
        "video.publish",
        "video.upload",
    }
)
PUBLIC_OPTIONS = ("PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "SELF_ONLY")
PRIVATE_OPTIONS = ("FOLLOWER_OF_CREATOR", "MUTUAL_FOLLOW_FRIENDS", "SELF_ONLY")
VIDEO_CONTENT_TYPES = frozenset({"video/mp4", "video/quicktime", "video/webm"})

# Chunk rules (§1.8 and pitfall 8): the strictest of the 10^6 and 2^20 readings of "MB".
MIN_CHUNK = 5 * 1024 * 1024
MAX_CHUNK = 64_000_000
MAX_SINGLE_CHUNK = 64_000_000
MAX_LAST_CHUNK = 128_000_000
MAX_VIDEO_SIZE = 4_000_000_000
MAX_CHUNKS = 1000
TITLE_MAX = 2200
PHOTO_TITLE_MAX = 90
PHOTO_DESCRIPTION_MAX = 4000
MAX_PHOTOS = 35

DAY = 86_400.0
RATE_WINDOW = 60.0
RATE_LIMITS = {"init": 6, "creator_info": 20, "status": 30}  # per access token per minute
INBOX_PENDING_CAP = 5  # inbox inits per rolling 24 h
UPLOAD_URL_TTL = 3600.0
PULL_TIMEOUT = 3600.0
CODE_TTL = 600.0  # authorization codes; the doc gives no lifetime, ten minutes is customary

Mode = Literal["direct", "inbox"]


class ApiError(Exception):
    """A Content Posting error answer: ``error.code`` plus the HTTP status it travels with."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = CODE_STATUS.get(code, 400) if status is None else status


def status_for(code: str, endpoint: str) -> int:
    """The HTTP status TikTok uses for ``code`` on ``endpoint`` (§2.2)."""
    if endpoint == "creator_info" and code in CREATOR_INFO_200:
        return 200
    return CODE_STATUS.get(code, 400)


def privacy_options(private: bool) -> tuple[str, ...]:
    return PRIVATE_OPTIONS if private else PUBLIC_OPTIONS


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def is_unverified_host(host: str) -> bool:
    """Hosts the sandbox treats as not verified in the developer portal (§1.9)."""
    return host == "unverified.example" or host.endswith(".unverified.example")


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkPlan:
    """An accepted FILE_UPLOAD plan; the last chunk absorbs the remainder."""

    video_size: int
    chunk_size: int
    total_chunk_count: int

    def chunk_length(self, index: int) -> int:
        if index == self.total_chunk_count - 1:
            return self.video_size - self.chunk_size * index
        return self.chunk_size


@dataclass(frozen=True, kw_only=True, slots=True)
class InitRequest:
    """A validated init body; ``privacy_level`` is checked against the creator later."""

    mode: Mode
    media: Literal["video", "photo"]
    source: Literal["FILE_UPLOAD", "PULL_FROM_URL"]
    privacy_level: str | None
    title: str
    plan: ChunkPlan | None = None
    video_url: str | None = None
    photo_images: tuple[str, ...] = ()


def _bad(message: str) -> ApiError:
    return ApiError("invalid_params", message)


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{name} must be a JSON object")
    return value


def _no_unknown(obj: dict[str, Any], name: str, known: frozenset[str]) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise _bad(f"unknown field {name}.{unknown[0]}")


def _int(obj: dict[str, Any], key: str, name: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{name}.{key} must be an integer")
    return value


def _optional(obj: dict[str, Any], name: str, types: dict[str, type]) -> None:
    for key, kind in types.items():
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _bad(f"{name}.{key} must be {'a boolean' if kind is bool else kind.__name__}")


def check_chunk_plan(video_size: int, chunk_size: int, total_chunk_count: int) -> ChunkPlan:
    """Accept a plan only if every reading of §1.8 accepts it."""

    def invalid(why: str) -> ApiError:
        return _bad(f"The chunk size is invalid ({why})")

    if video_size <= 0 or chunk_size <= 0:
        raise invalid("video_size and chunk_size must be positive")
    if video_size > MAX_VIDEO_SIZE:
        raise invalid(f"video_size is over {MAX_VIDEO_SIZE} bytes")
    expected = video_size // chunk_size
    if total_chunk_count != expected:
        raise invalid(f"total_chunk_count must be floor(video_size / chunk_size) = {expected}")
    if not 1 <= total_chunk_count <= MAX_CHUNKS:
        raise invalid(f"total_chunk_count must be between 1 and {MAX_CHUNKS}")
    plan = ChunkPlan(
        video_size=video_size, chunk_size=chunk_size, total_chunk_count=total_chunk_count
    )
    if total_chunk_count == 1:
        if chunk_size != video_size:
            raise invalid("a single-chunk upload must have chunk_size == video_size")
        if video_size > MAX_SINGLE_CHUNK:
            raise invalid(f"a video over {MAX_SINGLE_CHUNK} bytes must be sent in chunks")
        return plan
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise invalid(f"chunk_size must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
    if plan.chunk_length(total_chunk_count - 1) > MAX_LAST_CHUNK:
        raise invalid(f"the last chunk must be at most {MAX_LAST_CHUNK} bytes")
    return plan


def check_pull_url(url: Any, name: str) -> str:
    """https, a domain name (not an IP address), no credentials."""
    if not isinstance(url, str) or not url:
        raise _bad(f"{name} must be a URL string")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError as exc:
        raise _bad(f"{name} is not a valid URL") from exc
    if parts.scheme != "https":
        raise _bad(f"{name} must use https")
    if parts.username is not None or "." not in host:
        raise _bad(f"{name} must name a domain")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return url
    raise _bad(f"{name} must name a domain, not an IP address")


def _title(post_info: dict[str, Any], limit: int) -> str:
    title = post_info.get("title", "")
    if not isinstance(title, str):
        raise _bad("post_info.title must be a string")
    if utf16_len(title) > limit:
        raise _bad(f"post_info.title is longer than {limit} UTF-16 code units")
    return title


_DIRECT_POST_INFO = {
    "privacy_level": str,
    "title": str,
    "disable_duet": bool,
    "disable_stitch": bool,
    "disable_comment": bool,
    "video_cover_timestamp_ms": int,
    "brand_content_toggle": bool,
    "brand_organic_toggle": bool,
    "is_aigc": bool,
}
_FILE_FIELDS = frozenset({"source", "video_size", "chunk_size", "total_chunk_count"})
_URL_FIELDS = frozenset({"source", "video_url"})


def parse_video_init(body: Any, *, mode: Mode) -> InitRequest:
    """Validate a video/init (direct) or inbox/video/init body (§1.5, §1.6)."""
    body = _object(body, "the request body")
    _no_unknown(body, "body", frozenset({"post_info", "source_info"}))
    privacy: str | None = None
    if mode == "direct":
        post_info = _object(body.get("post_info"), "post_info")
        _no_unknown(post_info, "post_info", frozenset(_DIRECT_POST_INFO))
        _optional(post_info, "post_info", _DIRECT_POST_INFO)
        if "brand_content_toggle" not in post_info:
            raise _bad("post_info.brand_content_toggle is required")
        privacy = post_info.get("privacy_level")
    else:
        # Only source_info is documented; integrations also send a title, which TikTok keeps
        # while dropping every other setting (§1.6), so the sandbox accepts and drops them too.
        post_info = _object(body.get("post_info", {}), "post_info")
        _no_unknown(post_info, "post_info", frozenset(_DIRECT_POST_INFO))
    title = _title(post_info, TITLE_MAX)
    source_info = _object(body.get("source_info"), "source_info")
    source = source_info.get("source")
    if source == "FILE_UPLOAD":
        _no_unknown(source_info, "source_info", _FILE_FIELDS)
        plan = check_chunk_plan(
            _int(source_info, "video_size", "source_info"),
            _int(source_info, "chunk_size", "source_info"),
            _int(source_info, "total_chunk_count", "source_info"),
        )
        return InitRequest(
            mode=mode, media="video", source=source, privacy_level=privacy, title=title, plan=plan
        )
    if source == "PULL_FROM_URL":
        _no_unknown(source_info, "source_info", _URL_FIELDS)
        url = check_pull_url(source_info.get("video_url"), "source_info.video_url")
        return InitRequest(
            mode=mode,
            media="video",
            source=source,
            privacy_level=privacy,
            title=title,
            video_url=url,
        )
    raise _bad("source_info.source must be FILE_UPLOAD or PULL_FROM_URL")


_PHOTO_POST_INFO = {
    "title": str,
    "description": str,
    "privacy_level": str,
    "disable_comment": bool,
    "auto_add_music": bool,
    "brand_content_toggle": bool,
    "brand_organic_toggle": bool,
}


def parse_content_init(body: Any) -> InitRequest:
    """Validate a content/init (photo) body (§1.7)."""
    body = _object(body, "the request body")
    _no_unknown(body, "body", frozenset({"media_type", "post_mode", "post_info", "source_info"}))
    if body.get("media_type") != "PHOTO":
        raise _bad("media_type must be PHOTO")
    post_mode = body.get("post_mode")
    if post_mode not in ("DIRECT_POST", "MEDIA_UPLOAD"):
        raise _bad("post_mode must be DIRECT_POST or MEDIA_UPLOAD")
    post_info = _object(body.get("post_info", {}), "post_info")
    _no_unknown(post_info, "post_info", frozenset(_PHOTO_POST_INFO))
    _optional(post_info, "post_info", _PHOTO_POST_INFO)
    title = _title(post_info, PHOTO_TITLE_MAX)
    if utf16_len(post_info.get("description", "")) > PHOTO_DESCRIPTION_MAX:
        raise _bad(f"post_info.description is longer than {PHOTO_DESCRIPTION_MAX} UTF-16 units")
    source_info = _object(body.get("source_info"), "source_info")
    _no_unknown(
        source_info, "source_info", frozenset({"source", "photo_images", "photo_cover_index"})
    )
    if source_info.get("source") != "PULL_FROM_URL":
        raise _bad("source_info.source must be PULL_FROM_URL")
    images = source_info.get("photo_images")
    if not isinstance(images, list) or not 1 <= len(images) <= MAX_PHOTOS:
        raise _bad(f"source_info.photo_images must list 1 to {MAX_PHOTOS} URLs")
    urls = tuple(check_pull_url(u, "source_info.photo_images[]") for u in images)
    cover = source_info.get("photo_cover_index", 0)
    if not isinstance(cover, int) or isinstance(cover, bool) or not 0 <= cover < len(urls):
        raise _bad("source_info.photo_cover_index must index photo_images")
    direct = post_mode == "DIRECT_POST"
    return InitRequest(
        mode="direct" if direct else "inbox",
        media="photo",
        source="PULL_FROM_URL",
        privacy_level=post_info.get("privacy_level") if direct else None,
        title=title,
        photo_images=urls,
    )
