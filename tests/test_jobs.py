"""Pure decisions about one job: chunk plans and idempotency keys."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.jobs import (
    MAX_CHUNK,
    MAX_CHUNKS,
    MIN_CHUNK,
    SINGLE_CHUNK_MAX,
    chunk_index_at,
    derive_idempotency_key,
    plan_chunks,
    utf16_length,
)


@given(
    size=st.integers(min_value=1, max_value=4 * 1024**3),
    preferred=st.integers(min_value=1, max_value=200_000_000),
)
def test_chunk_plan_satisfies_both_readings_of_tiktoks_rules(size: int, preferred: int) -> None:
    plan = plan_chunks(size, preferred)
    assert 1 <= plan.chunk_count <= MAX_CHUNKS
    assert plan.chunk_count == size // plan.chunk_size  # TikTok wants floor, not ceil
    if plan.chunk_count == 1:
        assert plan.chunk_size == size  # single chunk: chunk_size must equal the file
        assert size <= SINGLE_CHUNK_MAX
    else:
        assert MIN_CHUNK <= plan.chunk_size <= MAX_CHUNK
    ranges = [plan.chunk_range(i) for i in range(plan.chunk_count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == size - 1
    for (_, last), (first, _) in itertools.pairwise(ranges):
        assert first == last + 1  # contiguous, in order
    last_first, last_last = ranges[-1]
    assert last_last - last_first + 1 <= 128_000_000
    for i, (first, _) in enumerate(ranges):
        assert chunk_index_at(plan, first) == i


def test_documented_example_plan() -> None:
    # shared/TIKTOK_API.md §1.8: 50,000,123 bytes in 10,000,000-byte chunks is 5 chunks,
    # the last one 10,000,123 bytes. Our plan keeps files up to 64,000,000 in one chunk.
    plan = plan_chunks(150_000_123, 10_000_000)
    assert plan.chunk_count == 15
    assert plan.chunk_range(14) == (140_000_000, 150_000_122)
    assert plan_chunks(50_000_123, 10_000_000).chunk_count == 1


def test_empty_video_has_no_plan() -> None:
    with pytest.raises(ValueError, match="empty"):
        plan_chunks(0, MIN_CHUNK)


def test_idempotency_key_depends_on_every_part() -> None:
    base = {"target": "acme-us", "content_sha256": "ab" * 32, "caption": "hi", "not_before": None}
    key = derive_idempotency_key(**base)  # type: ignore[arg-type]
    assert key == derive_idempotency_key(**base)  # type: ignore[arg-type]
    for field, other in (
        ("target", "acme-uk"),
        ("content_sha256", "cd" * 32),
        ("caption", "hi!"),
        ("not_before", 1_800_000_000.0),
    ):
        assert derive_idempotency_key(**{**base, field: other}) != key  # type: ignore[arg-type]


def test_caption_length_counts_utf16_units() -> None:
    assert utf16_length("abc") == 3
    assert utf16_length("😀") == 2  # outside the BMP: a surrogate pair
