from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aiosqlite and APScheduler's AsyncIOScheduler need asyncio (shared/LIBRARIES.md).
    return "asyncio"
