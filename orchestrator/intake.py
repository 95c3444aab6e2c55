"""What a submission must be before it is accepted, and how its video is kept safe.

Validation is a pure function from the request body to a ``Submission`` (or an ``ApiError``
naming the field). Accepting a file copies it into the spool under its content hash, so the
job does not depend on the submitter's file staying where it was: an accepted job must not be
lost because somebody moved or edited a file later.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ApiError
from .jobs import (
    MAX_CAPTION_UTF16,
    PRIVACY_LEVELS,
    Job,
    JobState,
    Mode,
    Source,
    derive_idempotency_key,
    new_job_id,
    payload_fingerprint,
    utf16_length,
)
from .router import describe, parse_target

MAX_VIDEO_BYTES = 4 * 1024**3  # shared/TIKTOK_API.md §1.8
OPTION_FLAGS = ("disable_comment", "disable_duet", "disable_stitch", "is_aigc")
FIELDS = frozenset(
    {
        "account",
        "pool",
        "video_path",
        "video_url",
        "caption",
        "privacy_level",
        "mode",
        "idempotency_key",
        "not_before",
        *OPTION_FLAGS,
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Submission:
    account: str  # "" for a pool job: the router picks
    pool: str | None
    video_path: Path | None
    video_url: str | None
    caption: str
    privacy_level: str | None
    mode: Mode
    idempotency_key: str | None
    not_before: float | None
    options: dict[str, bool]


def _invalid(field: str, message: str) -> ApiError:
    return ApiError("invalid_request", f"{field}: {message}", status=400)


def parse_time(value: Any, field: str) -> float:
    if isinstance(value, bool):
        raise _invalid(field, "expected a Unix time or an ISO 8601 date-time")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(field, f"{value!r} is not an ISO 8601 date-time") from None
        if parsed.tzinfo is None:
            raise _invalid(field, "give a time zone (e.g. 2026-12-01T09:00:00+01:00 or Z)")
        return parsed.timestamp()
    raise _invalid(field, "expected a Unix time or an ISO 8601 date-time")


def parse_submission(body: Any) -> Submission:
    if not isinstance(body, Mapping):
        raise ApiError("invalid_request", "the body must be a JSON object", status=400)
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError(
            "unknown_field",
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}",
            status=400,
        )

    def text(field: str, *, required: bool = False) -> str | None:
        value = body.get(field)
        if value is None:
            if required:
                raise _invalid(field, "is required")
            return None
        if not isinstance(value, str):
            raise _invalid(field, "must be a string")
        return value

    account, pool = text("account") or "", text("pool")
    if bool(account) == bool(pool):
        raise _invalid("account", "give exactly one of account or pool (e.g. pool:fitness@US)")
    if pool is not None:
        try:
            pool = describe(parse_target(pool))
        except ValueError as exc:
            raise _invalid("pool", str(exc)) from None
    caption = text("caption") or ""
    if utf16_length(caption) > MAX_CAPTION_UTF16:
        raise _invalid("caption", f"is longer than {MAX_CAPTION_UTF16} UTF-16 code units")
    video_path, video_url = text("video_path"), text("video_url")
    if (video_path is None) == (video_url is None):
        raise _invalid("video_path", "give exactly one of video_path or video_url")
    if video_path is not None and not os.path.isabs(video_path):
        raise _invalid("video_path", "must be an absolute path")
    if video_url is not None:
        parts = urlsplit(video_url)
        if parts.scheme != "https" or not parts.hostname:
            raise _invalid("video_url", "must be an https URL on a verified domain")
    privacy = text("privacy_level")
    if privacy is not None and privacy not in PRIVACY_LEVELS:
        raise _invalid("privacy_level", f"must be one of {', '.join(PRIVACY_LEVELS)}")
    mode_name = text("mode") or Mode.DIRECT.value
    if mode_name not in {m.value for m in Mode}:
        raise _invalid("mode", "must be 'direct' or 'inbox'")
    key = text("idempotency_key")
    if key is not None and not 1 <= len(key) <= 200:
        raise _invalid("idempotency_key", "must be 1 to 200 characters")
    options: dict[str, bool] = {}
    for flag in OPTION_FLAGS:
        if flag in body:
            if not isinstance(body[flag], bool):
                raise _invalid(flag, "must be true or false")
            options[flag] = body[flag]
    not_before = body.get("not_before")
    return Submission(
        account=account,
        pool=pool,
        video_path=Path(video_path) if video_path else None,
        video_url=video_url,
        caption=caption,
        privacy_level=privacy,
        mode=Mode(mode_name),
        idempotency_key=key,
        not_before=None if not_before is None else parse_time(not_before, "not_before"),
        options=options,
    )


# A video up to this size is read whole: one read, hashed, and written only if the spool does
# not hold it yet. Larger ones are copied and hashed block by block, in one pass.
WHOLE_READ_MAX = 16 * 1024 * 1024
BLOCK = 1 << 20


def spool_video(source: Path, spool_dir: Path) -> tuple[Path, str, int]:
    """Copy a video into the spool under its SHA-256; returns (spooled path, hash, size).

    The spool is content-addressed and its files are only ever created whole (written,
    fsynced, renamed into place, the directory fsynced), so a file already there under the
    same hash and size is this video: the same clip submitted again (to another account,
    say) is hashed but not written and fsynced a second time.

    Blocking: run it in a worker thread. Raises ApiError for anything the submitter can fix.
    """
    try:
        if not source.is_file():
            raise ApiError(
                "video_not_found", f"{source} does not exist or is not a file", status=400
            )
        size = source.stat().st_size
        if size == 0:
            raise ApiError("video_empty", f"{source} is empty", status=400)
        if size > MAX_VIDEO_BYTES:
            raise ApiError("video_too_large", f"{source} is over 4 GB", status=400)
        spool_dir.mkdir(parents=True, exist_ok=True)
        if size <= WHOLE_READ_MAX:
            target, digest, size = _spool_whole(source, spool_dir)
        else:
            target, digest, size = _spool_blocks(source, spool_dir)
    except PermissionError:
        raise ApiError(
            "video_unreadable", f"the daemon cannot read {source} (permission denied)", status=400
        ) from None
    except OSError as exc:
        raise ApiError(
            "video_unreadable", f"cannot read {source}: {exc.strerror}", status=400
        ) from exc
    return target, digest, size


def _spool_whole(source: Path, spool_dir: Path) -> tuple[Path, str, int]:
    with open(source, "rb") as src:
        data = src.read()
    if not data:  # emptied since it was checked
        raise ApiError("video_empty", f"{source} is empty", status=400)
    digest = hashlib.sha256(data).hexdigest()
    target = spool_dir / (digest + source.suffix.lower())
    if not _spooled(target, len(data)):
        fd, tmp_name = tempfile.mkstemp(dir=spool_dir, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as dst:
                dst.write(data)
                dst.flush()
                os.fsync(dst.fileno())
            _publish(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return target, digest, len(data)


def _spool_blocks(source: Path, spool_dir: Path) -> tuple[Path, str, int]:
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=spool_dir, prefix=".incoming-")
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            while block := src.read(BLOCK):
                digest.update(block)
                dst.write(block)
                size += len(block)
            target = spool_dir / (digest.hexdigest() + source.suffix.lower())
            if _spooled(target, size):
                Path(tmp_name).unlink()
                return target, digest.hexdigest(), size
            dst.flush()
            os.fsync(dst.fileno())
        _publish(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target, digest.hexdigest(), size


def _spooled(target: Path, size: int) -> bool:
    try:
        return target.stat().st_size == size
    except FileNotFoundError:
        return False


def _publish(tmp_name: str, target: Path) -> None:
    """Rename a written, fsynced file into place, durably: the job row that names it is
    committed next, and must not outlive the file in a crash."""
    os.replace(tmp_name, target)
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_job(
    sub: Submission,
    *,
    now: float,
    spooled: tuple[Path, str, int] | None,
) -> tuple[Job, str]:
    """The job a submission becomes, and the fingerprint that tells a replay from a conflict."""
    if spooled is not None:
        path, content_sha256, size = spooled
        source = Source.FILE_UPLOAD
    else:
        assert sub.video_url is not None
        path, size = None, None
        content_sha256 = hashlib.sha256(sub.video_url.encode()).hexdigest()
        source = Source.PULL_FROM_URL
    key = sub.idempotency_key or derive_idempotency_key(
        target=sub.pool or sub.account,
        content_sha256=content_sha256,
        caption=sub.caption,
        not_before=sub.not_before,
    )
    fingerprint = payload_fingerprint(
        {
            "account": sub.account,
            "pool": sub.pool,
            "content_sha256": content_sha256,
            "video_url": sub.video_url,
            "caption": sub.caption,
            "privacy_level": sub.privacy_level,
            "mode": sub.mode.value,
            "not_before": sub.not_before,
            "options": sub.options,
        }
    )
    job = Job(
        id=new_job_id(),
        idempotency_key=key,
        account_id=sub.account,
        mode=sub.mode,
        source=source,
        video_path=str(path) if path else None,
        video_url=sub.video_url,
        video_size=size,
        content_sha256=content_sha256,
        caption=sub.caption,
        privacy_level=sub.privacy_level,
        options=dict(sub.options),
        pool=sub.pool,
        state=JobState.QUEUED,
        not_before=sub.not_before if sub.not_before is not None else now,
        created_at=now,
        updated_at=now,
    )
    return job, fingerprint
