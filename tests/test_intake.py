"""Spooling a submitted video: content-addressed, durable, and never written twice."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import intake
from orchestrator.errors import ApiError
from orchestrator.intake import spool_video


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(params=["whole", "blocks"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a video is spooled: read whole (small), or block by block (large)."""
    if request.param == "blocks":
        monkeypatch.setattr(intake, "WHOLE_READ_MAX", 1000)
        monkeypatch.setattr(intake, "BLOCK", 4096)
    return str(request.param)


def test_spooled_under_its_hash_with_its_bytes(tmp_path: Path, way: str) -> None:
    data = os.urandom(50_000)
    path, digest, size = spool_video(write(tmp_path / "Clip.MP4", data), tmp_path / "spool")
    assert digest == hashlib.sha256(data).hexdigest()
    assert (path, size) == (tmp_path / "spool" / f"{digest}.mp4", 50_000)
    assert path.read_bytes() == data
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [path.name]  # no leftovers


def test_the_same_video_again_is_not_written_again(tmp_path: Path, way: str) -> None:
    data = os.urandom(30_000)
    first, digest, _ = spool_video(write(tmp_path / "a.mp4", data), tmp_path / "spool")
    before = first.stat()
    again, digest2, _ = spool_video(write(tmp_path / "b.mp4", data), tmp_path / "spool")
    assert (again, digest2) == (first, digest)
    after = again.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(list((tmp_path / "spool").iterdir())) == 1


def test_a_spool_file_of_the_wrong_size_is_replaced(tmp_path: Path, way: str) -> None:
    data = os.urandom(20_000)
    spool = tmp_path / "spool"
    spool.mkdir()
    digest = hashlib.sha256(data).hexdigest()
    write(spool / f"{digest}.mp4", data[:100])  # e.g. left by hand, or a foreign tool
    path, _, _ = spool_video(write(tmp_path / "a.mp4", data), spool)
    assert path.read_bytes() == data


def test_an_edited_source_is_a_new_video(tmp_path: Path, way: str) -> None:
    source = write(tmp_path / "a.mp4", b"x" * 5000)
    first, _, _ = spool_video(source, tmp_path / "spool")
    write(source, b"y" * 5000)
    second, _, _ = spool_video(source, tmp_path / "spool")
    assert first != second
    assert (first.read_bytes(), second.read_bytes()) == (b"x" * 5000, b"y" * 5000)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda d: d / "missing.mp4", "video_not_found"),
        (lambda d: write(d / "empty.mp4", b""), "video_empty"),
        (lambda d: d, "video_not_found"),
    ],
)
def test_what_the_submitter_can_fix_is_a_clear_error(
    tmp_path: Path, make: Callable[[Path], Path], code: str
) -> None:
    with pytest.raises(ApiError) as caught:
        spool_video(make(tmp_path), tmp_path / "spool")
    assert caught.value.code == code
