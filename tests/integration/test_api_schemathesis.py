"""The HTTP API against its own OpenAPI document, over a real loopback socket.

The app (with the in-memory FakeControl from the unit tests, in auto-create mode so generated
ids reach the success paths) runs on 127.0.0.1 in a background thread; schemathesis loads
``/openapi.json`` from it and sends generated requests, positive and negative, with the bearer
token. Its checks: every status code is documented, responses and headers conform to the
schemas, no 5xx, invalid input rejected and valid input accepted, 401 without auth, 405 for
undocumented methods.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from schemathesis import GenerationMode

from telephony.api import create_app, openapi_document
from tests.unit.test_api import FakeControl

TOKEN = "schemathesis-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 25


class _Server:
    """The API on 127.0.0.1 (port 0) served by an event loop in a daemon thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def __enter__(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    control = FakeControl(auto_create=True)
    with _Server(create_app(control, tokens=lambda: [TOKEN])) as url:
        yield url


# Loaded from the same data the server serves (checked below) rather than through
# ``schemathesis.pytest.from_fixture``: its lazy loader sets ``Function._nodeid``, which pytest 9
# no longer has.
schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,
)


def test_served_document_is_the_one_tested(base_url: str) -> None:
    with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=5) as resp:
        assert json.loads(resp.read()) == openapi_document()


@schema.parametrize()
def test_api_conforms_to_openapi(case: schemathesis.Case[Any], base_url: str) -> None:
    response = case.call_and_validate(base_url=base_url, headers=AUTH, timeout=5)
    assert response.status_code < 500, response.text
