"""Fixtures for end-to-end tests: a real handoffd daemon in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from telephony.config import load_config
from telephony.daemon import Daemon
from tests.e2e.harness import Ports, write_setup


@pytest.fixture
def ports() -> Ports:
    return Ports()


@pytest_asyncio.fixture
async def daemon(tmp_path: Path, ports: Ports) -> AsyncIterator[Daemon]:
    config = load_config(write_setup(tmp_path / "etc", ports))
    d = Daemon(config)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()
