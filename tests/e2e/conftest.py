"""Fixtures for end-to-end tests: a real handoffd daemon in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from telephony.config import load_config
from telephony.daemon import Daemon
from tests.e2e.harness import Ports, write_setup
from tests.peers.redis import RedisServer


@pytest.fixture
def ports() -> Ports:
    return Ports()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def daemon(tmp_path: Path, ports: Ports, redis_server: RedisServer) -> AsyncIterator[Daemon]:
    config = load_config(write_setup(tmp_path / "etc", ports, redis_url=redis_server.url))
    d = Daemon(config)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()
