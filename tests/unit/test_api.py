"""The HTTP API (telephony/api) through aiohttp's test client, over an in-memory CallControl.

The real CallControl (the daemon) is exercised end to end in tests/e2e; here the fake keeps to
the documented views so every endpoint, auth rule, validation error and error shape is checked
on its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Collection
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from telephony.api import ControlError, TransferRequest, create_app, openapi_document
from telephony.api.app import bearer_ok

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
JSON_UTF8_AUTH = {**AUTH, "Content-Type": "application/json; charset=utf-8"}
CALLER = "+15551234567"  # a caller number: must never reach the logs

Client = TestClient[web.Request, web.Application]


# -- the fake call layer ----------------------------------------------------------------------


def call_view(call_id: str, *, state: str = "connected") -> dict[str, Any]:
    return {
        "id": call_id,
        "state": state,
        "trunk": "psap-a",
        "psap_id": "PSAP-1",
        "position": "disp-1",
        "emergency_call_id": "urn:emergency:uid:callid:abc:psap.example",
        "incident_id": None,
        "created_at": 1_700_000_000.25,
        "transfer_id": None,
        "legs": [
            {
                "role": "caller",
                "sip_call_id": f"{call_id}-a@127.0.0.1",
                "state": "confirmed",
                "peer": "udp:127.0.0.1:5070",
            },
            {
                "role": "dispatcher",
                "sip_call_id": f"{call_id}-b@127.0.0.1",
                "state": "confirmed",
                "peer": "udp:127.0.0.1:5071",
            },
        ],
    }


class FakeControl:
    """An in-memory :class:`~telephony.api.control.CallControl` returning the documented views.

    ``auto_create``: any call id names a connected call and any transfer id a ringing transfer
    (so generated ids reach the success paths in the schemathesis test)."""

    ACTIVE = ("trying", "ringing")

    def __init__(self, *, auto_create: bool = False) -> None:
        self.auto_create = auto_create
        self.is_ready = True
        self.calls: dict[str, dict[str, Any]] = {"c1": call_view("c1"), "c2": call_view("c2")}
        self.transfers: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, TransferRequest]] = []
        self.rule_problems: str | None = None
        self.explode: Exception | None = None
        self._next = 0

    def _check(self) -> None:
        if self.explode is not None:
            raise self.explode

    def ready(self) -> bool:
        return self.is_ready

    def list_calls(self) -> list[dict[str, Any]]:
        self._check()
        return list(self.calls.values())

    def _call(self, call_id: str) -> dict[str, Any]:
        if call_id not in self.calls and self.auto_create:
            self.calls[call_id] = call_view(call_id)
        if call_id not in self.calls:
            raise ControlError(404, f"no call {call_id!r}", code="unknown_call")
        return self.calls[call_id]

    def get_call(self, call_id: str) -> dict[str, Any]:
        self._check()
        return self._call(call_id)

    def _new_transfer(self, call_id: str, request: TransferRequest) -> dict[str, Any]:
        self._next += 1
        transfer_id = f"t{self._next}"
        view = {
            "id": transfer_id,
            "call_id": call_id,
            "mode": request.mode,
            "state": "trying",
            "trigger": "api",
            "destination": request.destination or "988-primary",
            "triage_level": request.triage_level,
            "reason": request.reason,
            "rule": "level-1-cold",
            "dispatcher_stays": False,
            "outcome": None,
            "sip_status": None,
            "timeline": [
                {
                    "event": "requested",
                    "at": 1_700_000_001.0,
                    "destination": None,
                    "sip_status": None,
                },
                {
                    "event": "trying",
                    "at": 1_700_000_001.5,
                    "destination": request.destination or "988-primary",
                    "sip_status": None,
                },
            ],
        }
        self.transfers[transfer_id] = view
        return view

    def start_transfer(self, call_id: str, request: TransferRequest) -> dict[str, Any]:
        self._check()
        call = self._call(call_id)
        self.requests.append((call_id, request))
        if request.destination == "forbidden":
            raise ControlError(422, "destination not allowed for this call", field="destination")
        current = self.transfers.get(call["transfer_id"] or "")
        if current is not None and current["state"] in self.ACTIVE and not self.auto_create:
            raise ControlError(409, "a transfer is already in progress")
        view = self._new_transfer(call_id, request)
        call["transfer_id"] = view["id"]
        call["state"] = "transferring"
        return view

    def _transfer(self, transfer_id: str) -> dict[str, Any]:
        if transfer_id not in self.transfers and self.auto_create:
            self._new_transfer("c1", TransferRequest())
            self.transfers[transfer_id] = {
                **self.transfers.pop(f"t{self._next}"),
                "id": transfer_id,
                "state": "ringing",
            }
        if transfer_id not in self.transfers:
            raise ControlError(404, f"no transfer {transfer_id!r}", code="unknown_transfer")
        return self.transfers[transfer_id]

    def get_transfer(self, transfer_id: str) -> dict[str, Any]:
        self._check()
        return self._transfer(transfer_id)

    def cancel_transfer(self, transfer_id: str) -> dict[str, Any]:
        self._check()
        view = self._transfer(transfer_id)
        if view["state"] not in self.ACTIVE:
            raise ControlError(409, f"transfer is {view['state']}, too late to cancel")
        view["state"] = "cancelled"
        view["outcome"] = "cancelled"
        view["timeline"].append(
            {"event": "cancelled", "at": 1_700_000_002.0, "destination": None, "sip_status": 487}
        )
        return view

    def complete_transfer(self, transfer_id: str) -> dict[str, Any]:
        self._check()
        view = self._transfer(transfer_id)
        if view["state"] not in ("conference", "consulting"):
            raise ControlError(409, f"transfer is {view['state']}: it cannot be completed now")
        view["state"] = view["outcome"] = "completed"
        return view

    def conference_transfer(self, transfer_id: str) -> dict[str, Any]:
        self._check()
        view = self._transfer(transfer_id)
        if view["state"] != "consulting":
            raise ControlError(
                409, f"transfer is {view['state']}: only a consult can be conferenced"
            )
        view["state"] = "conference"
        return view

    def answer(self, transfer_id: str) -> None:
        self.transfers[transfer_id]["state"] = "answered"

    def reload_rules(self) -> dict[str, Any]:
        self._check()
        if self.rule_problems is not None:
            raise ControlError(422, self.rule_problems, code="bad_rules")
        return {"rules": 3, "sources": ["routing_rules/10-triage.yaml"]}


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def tokens() -> list[str]:
    return [TOKEN]


async def _client(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest_asyncio.fixture
async def client(control: FakeControl, tokens: list[str]) -> AsyncIterator[Client]:
    client = await _client(create_app(control, tokens=lambda: tokens))
    yield client
    await client.close()


async def _error(resp: Any, status: int) -> dict[str, Any]:
    """Assert the JSON error shape and return its ``error`` object."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"status", "code", "message", "field"}
    assert err["status"] == status
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


async def _transfer(client: Client, body: Any = None, call_id: str = "c1", **kw: Any) -> Any:
    kwargs: dict[str, Any] = {"headers": AUTH, **kw}
    if body is not None:
        kwargs["json"] = body
    return await client.post(f"/v1/calls/{call_id}/transfers", **kwargs)


# -- health, openapi, metrics ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_healthz_needs_no_token_and_follows_ready(
    client: Client, control: FakeControl
) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    control.is_ready = False
    resp = await client.get("/healthz")
    assert resp.status == 503 and await resp.json() == {"status": "unavailable"}


@pytest.mark.asyncio
async def test_openapi_document_is_served_and_lists_every_route(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(method, path) for path, item in doc["paths"].items() for method in item} - {
        ("parameters", path) for path in doc["paths"]
    }
    assert served == documented
    assert "/metrics" not in doc["paths"]
    # public routes opt out of the global bearer requirement, /v1 routes keep it
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert ("security" in op) == (not path.startswith("/v1/")), (method, path)
            assert "401" in op["responses"] or not path.startswith("/v1/")


def test_openapi_refs_all_resolve() -> None:
    doc = openapi_document(metrics=True)
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/')[1:]}:
        node: Any = doc
        for key in ref.split("/"):
            node = node[key]
        assert isinstance(node, dict), ref


@pytest.mark.asyncio
async def test_metrics_absent_unless_given(client: Client) -> None:
    await _error(await client.get("/metrics"), 404)


@pytest.mark.asyncio
async def test_metrics_served_without_auth_when_given(control: FakeControl) -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="handoff_calls_total 0\n", content_type="text/plain")

    client = await _client(create_app(control, tokens=lambda: [TOKEN], metrics=metrics))
    try:
        resp = await client.get("/metrics")
        assert resp.status == 200 and "handoff_calls_total" in await resp.text()
        doc = await (await client.get("/openapi.json")).json()
        assert "/metrics" in doc["paths"]
    finally:
        await client.close()


# -- auth ----------------------------------------------------------------------------------------

V1_ROUTES = [
    ("GET", "/v1/calls"),
    ("GET", "/v1/calls/c1"),
    ("POST", "/v1/calls/c1/transfers"),
    ("GET", "/v1/transfers/t1"),
    ("POST", "/v1/transfers/t1/cancel"),
    ("POST", "/v1/admin/reload"),
    ("GET", "/v1/no-such-thing"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, None),
        (f"Bearer {TOKEN}x", "invalid_token"),
        (f"Basic {TOKEN}", "invalid_token"),
        ("Bearer", "invalid_token"),
        (TOKEN, "invalid_token"),
    ],
)
async def test_v1_refuses_missing_or_wrong_token(
    client: Client, control: FakeControl, method: str, path: str, header: str | None, error: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    resp = await client.request(method, path, headers=headers, json={"mode": "cold"})
    err = await _error(resp, 401)
    assert err["code"] == "unauthorized"
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert ("invalid_token" in challenge) == (error is not None)
    assert control.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/v1%2Fcalls", "/%761/calls", "/v1/../v1/calls", "/v1/calls/"])
async def test_odd_spellings_of_v1_paths_do_not_skip_auth(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status in (401, 404), resp.status
    await _error(resp, resp.status)
    resp = await client.get(path, headers=AUTH)
    assert resp.status in (200, 404), resp.status


@pytest.mark.asyncio
async def test_tokens_are_read_on_every_request(client: Client, tokens: list[str]) -> None:
    assert (await client.get("/v1/calls", headers=AUTH)).status == 200
    tokens[:] = ["rotated"]
    await _error(await client.get("/v1/calls", headers=AUTH), 401)
    resp = await client.get("/v1/calls", headers={"Authorization": "bearer  rotated "})
    assert resp.status == 200


@pytest.mark.asyncio
async def test_no_tokens_configured_refuses_everyone(client: Client, tokens: list[str]) -> None:
    tokens[:] = [""]
    await _error(await client.get("/v1/calls", headers={"Authorization": "Bearer "}), 401)
    await _error(await client.get("/v1/calls", headers=AUTH), 401)


@pytest.mark.parametrize(
    ("header", "tokens", "ok"),
    [
        ("Bearer a", ["a"], True),
        ("Bearer b", ["a", "b"], True),
        ("Bearer ab", ["a", "b"], False),
        ("Bearer ", ["", "a"], False),
        ("Bearer a b", ["a"], False),
        ("BEARER a", ["a"], True),
        ("Bearer \u00e9", ["\u00e9"], True),
        (None, ["a"], False),
        ("Bearer a", [], False),
    ],
)
def test_bearer_ok(header: str | None, tokens: Collection[str], ok: bool) -> None:
    assert bearer_ok(header, tokens) is ok


# -- calls ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_list_calls(client: Client, control: FakeControl) -> None:
    resp = await client.get("/v1/calls", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert [c["id"] for c in body["calls"]] == ["c1", "c2"]
    assert body["calls"][0] == control.calls["c1"]
    control.calls.clear()
    assert await (await client.get("/v1/calls", headers=AUTH)).json() == {"calls": []}


@pytest.mark.asyncio
async def test_get_call_and_unknown_call(client: Client) -> None:
    resp = await client.get("/v1/calls/c2", headers=AUTH)
    assert resp.status == 200
    view = await resp.json()
    assert view["id"] == "c2" and [leg["role"] for leg in view["legs"]] == ["caller", "dispatcher"]
    err = await _error(await client.get("/v1/calls/nope", headers=AUTH), 404)
    assert err["code"] == "unknown_call" and err["field"] is None


# -- transfers ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_start_transfer_accepted_with_location(client: Client, control: FakeControl) -> None:
    body = {"mode": "cold", "destination": "988-backup", "triage_level": 1, "reason": "caller ok"}
    resp = await _transfer(client, body)
    assert resp.status == 202
    view = await resp.json()
    assert view["transfer_id"] == view["id"] == "t1"
    assert view["state"] == "trying" and view["call_id"] == "c1"
    assert resp.headers["Location"] == "/v1/transfers/t1"
    assert control.requests == [("c1", TransferRequest("cold", "988-backup", 1, "caller ok"))]
    follow = await client.get(resp.headers["Location"], headers=AUTH)
    assert follow.status == 200
    assert (await follow.json())["timeline"][0]["event"] == "requested"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"data": b"", "headers": JSON_AUTH},
        {"data": b"{}", "headers": JSON_UTF8_AUTH},
    ],
    ids=["no-body", "empty-body", "empty-object"],
)
async def test_start_transfer_defaults(
    client: Client, control: FakeControl, kwargs: dict[str, Any]
) -> None:
    resp = await _transfer(client, **kwargs)
    assert resp.status == 202, await resp.text()
    assert control.requests == [("c1", TransferRequest())]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"triage_level": 2.0}, TransferRequest(triage_level=2)),
        ({"reason": ""}, TransferRequest(reason="")),
        ({"reason": "r" * 256}, TransferRequest(reason="r" * 256)),
        ({"destination": "d" * 128}, TransferRequest(destination="d" * 128)),
        ({"destination": "988"}, TransferRequest(destination="988")),
        ({"mode": "cold", "triage_level": 3}, TransferRequest(triage_level=3)),
    ],
)
async def test_start_transfer_boundaries_accepted(
    client: Client, control: FakeControl, body: dict[str, Any], expected: TransferRequest
) -> None:
    resp = await _transfer(client, body)
    assert resp.status == 202, await resp.text()
    assert control.requests == [("c1", expected)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"mode": "blind"}, "mode", "invalid_field"),
        ({"mode": None}, "mode", "invalid_field"),
        ({"mode": ["cold"]}, "mode", "invalid_field"),
        ({"destination": ""}, "destination", "invalid_field"),
        ({"destination": "d" * 129}, "destination", "invalid_field"),
        ({"destination": 988}, "destination", "invalid_field"),
        ({"destination": None}, "destination", "invalid_field"),
        ({"triage_level": 0}, "triage_level", "invalid_field"),
        ({"triage_level": 4}, "triage_level", "invalid_field"),
        ({"triage_level": "1"}, "triage_level", "invalid_field"),
        ({"triage_level": True}, "triage_level", "invalid_field"),
        ({"triage_level": 1.5}, "triage_level", "invalid_field"),
        ({"triage_level": None}, "triage_level", "invalid_field"),
        ({"reason": "r" * 257}, "reason", "invalid_field"),
        ({"reason": 7}, "reason", "invalid_field"),
        ({"reason": {"text": "x"}}, "reason", "invalid_field"),
        ({"callback": CALLER}, "callback", "unknown_field"),
        ({"mode": "cold", "Mode": "cold"}, "Mode", "unknown_field"),
        ({"x" * 100: 1}, "x" * 64 + "...", "unknown_field"),
        ([], None, "invalid_body"),
        ("cold", None, "invalid_body"),
        (None, None, "invalid_body"),
        (3, None, "invalid_body"),
    ],
)
async def test_start_transfer_validation_names_the_field(
    client: Client, control: FakeControl, body: Any, field: str | None, code: str
) -> None:
    resp = await _transfer(client, data=json.dumps(body), headers=JSON_AUTH)
    err = await _error(resp, 422)
    assert err["field"] == field
    assert err["code"] == code
    if field is not None:
        assert field[:10] in err["message"]
    assert CALLER not in err["message"]
    assert control.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "data",
    [b"{", b'{"mode": "cold",}', b"\xff\xfe{}", b'{"triage_level": NaN}', b"[" * 30_000, b" "],
    ids=["truncated", "trailing-comma", "not-utf8", "nan", "deep", "blank"],
)
async def test_bad_json_is_400(client: Client, control: FakeControl, data: bytes) -> None:
    resp = await _transfer(client, data=data, headers=JSON_AUTH)
    err = await _error(resp, 400)
    assert err["code"] == "bad_json" and err["field"] is None
    assert control.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", None]
)
async def test_wrong_content_type_is_415(client: Client, content_type: str | None) -> None:
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type
    resp = await _transfer(client, data=b'{"mode": "cold"}', headers=headers)
    err = await _error(resp, 415)
    assert err["code"] == "unsupported_media_type"


@pytest.mark.asyncio
async def test_body_over_64k_is_413(client: Client, control: FakeControl) -> None:
    body = json.dumps({"reason": "r" * (64 * 1024)}).encode()
    resp = await _transfer(client, data=body, headers=JSON_AUTH)
    err = await _error(resp, 413)
    assert err["code"] == "body_too_large" and "65536" in err["message"]
    assert control.requests == []
    # just under the limit the body is read and validated
    body = json.dumps({"reason": "r" * (60 * 1024)}).encode()
    resp = await _transfer(client, data=body, headers=JSON_AUTH)
    assert (await _error(resp, 422))["field"] == "reason"


@pytest.mark.asyncio
async def test_start_transfer_control_errors(client: Client, control: FakeControl) -> None:
    err = await _error(await _transfer(client, {"destination": "forbidden"}), 422)
    assert err["field"] == "destination" and err["code"] == "not_allowed"
    err = await _error(await _transfer(client, {}, call_id="nope"), 404)
    assert err["code"] == "unknown_call"
    assert (await _transfer(client, {})).status == 202
    err = await _error(await _transfer(client, {}), 409)
    assert err["code"] == "conflict" and err["field"] is None


@pytest.mark.asyncio
async def test_location_quotes_the_transfer_id(client: Client, control: FakeControl) -> None:
    control._next = 0
    original = control._new_transfer

    def odd_id(call_id: str, request: TransferRequest) -> dict[str, Any]:
        view = original(call_id, request)
        view["id"] = "a/b c"
        control.transfers["a/b c"] = view
        return view

    control._new_transfer = odd_id  # type: ignore[method-assign]
    resp = await _transfer(client, {})
    assert resp.headers["Location"] == "/v1/transfers/a%2Fb%20c"
    assert (await client.get(resp.headers["Location"], headers=AUTH)).status == 200


@pytest.mark.asyncio
async def test_get_transfer_and_unknown(client: Client) -> None:
    await _transfer(client, {"triage_level": 2})
    resp = await client.get("/v1/transfers/t1", headers=AUTH)
    assert resp.status == 200
    view = await resp.json()
    assert view["triage_level"] == 2 and "transfer_id" not in view
    err = await _error(await client.get("/v1/transfers/t9", headers=AUTH), 404)
    assert err["code"] == "unknown_transfer"


@pytest.mark.asyncio
async def test_cancel_before_answer_then_conflict(client: Client, control: FakeControl) -> None:
    await _transfer(client, {})
    resp = await client.post("/v1/transfers/t1/cancel", headers=AUTH)
    assert resp.status == 200
    view = await resp.json()
    assert view["state"] == "cancelled" and view["timeline"][-1]["event"] == "cancelled"
    err = await _error(await client.post("/v1/transfers/t1/cancel", headers=AUTH), 409)
    assert err["code"] == "conflict"
    await _error(await client.post("/v1/transfers/t9/cancel", headers=AUTH), 404)


@pytest.mark.asyncio
async def test_complete_and_conference_in_the_wrong_state_are_409_naming_it(
    client: Client, control: FakeControl
) -> None:
    assert (await _transfer(client, {"mode": "consult"})).status == 202
    err = await _error(await client.post("/v1/transfers/t1/complete", headers=AUTH), 409)
    assert "trying" in err["message"]
    err = await _error(await client.post("/v1/transfers/t1/conference", headers=AUTH), 409)
    assert "trying" in err["message"]
    control.transfers["t1"]["state"] = "consulting"
    resp = await client.post("/v1/transfers/t1/conference", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["state"] == "conference"
    resp = await client.post("/v1/transfers/t1/complete", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["state"] == "completed"
    await _error(await client.post("/v1/transfers/t9/complete", headers=AUTH), 404)
    await _error(await client.post("/v1/transfers/t1/complete"), 401)


@pytest.mark.asyncio
async def test_cancel_after_answer_is_409(client: Client, control: FakeControl) -> None:
    await _transfer(client, {})
    control.answer("t1")
    await _error(await client.post("/v1/transfers/t1/cancel", headers=AUTH), 409)
    assert control.transfers["t1"]["state"] == "answered"


# -- admin ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_reload_ok_and_bad_rules(client: Client, control: FakeControl) -> None:
    resp = await client.post("/v1/admin/reload", headers=AUTH, json={})
    assert resp.status == 200
    assert await resp.json() == {"rules": 3, "sources": ["routing_rules/10-triage.yaml"]}
    control.rule_problems = "routing_rules/50-bad.yaml:3: unknown destination 'nowhere'"
    err = await _error(await client.post("/v1/admin/reload", headers=AUTH), 422)
    assert err["code"] == "bad_rules"
    assert "50-bad.yaml:3:" in err["message"]


# -- generic errors -------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/nowhere", {}),
        ("GET", "/v1/nowhere", AUTH),
        ("GET", "/v1/calls/c1/legs", AUTH),
        ("GET", "/v2/calls", {}),
    ],
)
async def test_unknown_path_is_json_404(
    client: Client, method: str, path: str, headers: dict[str, str]
) -> None:
    err = await _error(await client.request(method, path, headers=headers), 404)
    assert err["code"] == "not_found"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/calls/c1", {"GET", "HEAD"}),
        ("GET", "/v1/admin/reload", {"POST"}),
        ("PUT", "/v1/calls/c1/transfers", {"POST"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
    ],
)
async def test_wrong_method_is_json_405_with_allow(
    client: Client, method: str, path: str, allow: set[str]
) -> None:
    resp = await client.request(method, path, headers=AUTH)
    err = await _error(resp, 405)
    assert err["code"] == "method_not_allowed"
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == allow


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/calls"),
        ("GET", "/v1/calls/c1"),
        ("POST", "/v1/calls/c1/transfers"),
        ("GET", "/v1/transfers/t1"),
        ("POST", "/v1/transfers/t1/cancel"),
        ("POST", "/v1/admin/reload"),
    ],
)
async def test_unexpected_exception_is_opaque_500(
    client: Client,
    control: FakeControl,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
) -> None:
    control.explode = RuntimeError(f"boom while dialling {CALLER}")
    with caplog.at_level(logging.DEBUG, logger="telephony.api"):
        resp = await client.request(method, path, headers=AUTH)
    err = await _error(resp, 500)
    assert err == {
        "status": 500,
        "code": "internal_error",
        "message": "internal error",
        "field": None,
    }
    text = await resp.text()
    assert "Traceback" not in text and "boom" not in text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "RuntimeError" in logged and "_check" in logged  # type and stack are logged
    assert CALLER not in logged and "boom" not in logged


@pytest.mark.asyncio
async def test_control_error_with_odd_status_becomes_500(
    client: Client, control: FakeControl
) -> None:
    control.explode = ControlError(200, "not an error status")
    err = await _error(await client.get("/v1/calls", headers=AUTH), 500)
    assert err["code"] == "internal_error"
    control.explode = ControlError(503, "draining")
    err = await _error(await client.get("/v1/calls", headers=AUTH), 503)
    assert err["code"] == "unavailable" and err["message"] == "draining"


@pytest.mark.asyncio
async def test_access_log_has_template_not_values(
    client: Client, control: FakeControl, caplog: pytest.LogCaptureFixture
) -> None:
    control.calls[CALLER] = call_view(CALLER)
    with caplog.at_level(logging.DEBUG, logger="telephony.api"):
        await _transfer(client, {"destination": CALLER, "reason": CALLER}, call_id=CALLER)
        await client.get(f"/v1/calls/{CALLER}", headers=AUTH)
        await client.get(f"/v1/calls/{CALLER}/nowhere?n={CALLER}", headers=AUTH)
        await client.get("/healthz")
    lines = [r.getMessage() for r in caplog.records if r.name == "telephony.api"]
    assert len(lines) == 4
    assert lines[0].startswith("POST /v1/calls/{call_id}/transfers 202 ")
    assert lines[1].startswith("GET /v1/calls/{call_id} 200 ")
    assert lines[2].startswith("GET <unmatched> 404 ")
    assert lines[3].startswith("GET /healthz 200 ")
    assert all(line.endswith("ms") for line in lines)
    assert CALLER not in "\n".join(lines)
    assert TOKEN not in caplog.text
