from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from orchestrator.sandbox import Sandbox, SandboxConfig

from .harness import KEY, SCALE, SECRET


@pytest.fixture
def anyio_backend() -> str:
    # aiosqlite and APScheduler's AsyncIOScheduler need asyncio (shared/LIBRARIES.md).
    return "asyncio"


@pytest.fixture
def epoch() -> float:
    """The moment the sandbox's and the daemon's compressed clocks both count from."""
    return time.time()


@pytest.fixture
def sandbox(epoch: float) -> Iterator[Sandbox]:
    config = SandboxConfig(
        time_scale=SCALE,
        epoch=epoch,
        processing_seconds=20.0,
        client_key=KEY,
        client_secret=SECRET,
    )
    with Sandbox(config) as sb:
        yield sb
