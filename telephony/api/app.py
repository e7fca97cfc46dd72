"""The aiohttp application: routes, bearer auth, JSON errors and the access log.

Three middlewares wrap every handler, outermost first:

1. access log: one line per request with method, route template, status and duration. Never the
   raw path, query, headers or body: those can carry caller numbers.
2. errors: every failure becomes ``{"error": {"status", "code", "message", "field"}}``, including
   aiohttp's own 404/405/413; a :class:`ControlError` keeps its status; anything unexpected is
   logged (type and stack, not its message) and answered 500 without details.
3. auth: ``Authorization: Bearer <token>`` on every ``/v1`` path, compared in constant time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import time
import traceback
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from telephony.api.control import CallControl, ControlError
from telephony.api.openapi import BODY_LIMIT, openapi_document
from telephony.api.validation import ApiError, parse_json, transfer_request

log = logging.getLogger("telephony.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "not_allowed",
    500: "internal_error",
    503: "unavailable",
}
_QUIET_ROUTES = frozenset({"/healthz", "/metrics", "/openapi.json"})


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The one JSON error shape every failure is answered with."""
    body = {"error": {"status": status, "code": code, "message": message, "field": field}}
    return web.json_response(body, status=status, headers=headers)


# -- middlewares ----------------------------------------------------------------------------


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


@web.middleware
async def _access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 0  # stays 0 if the client went away mid-request
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        template = _route_template(request)
        level = logging.DEBUG if template in _QUIET_ROUTES and status < 500 else logging.INFO
        log.log(
            level,
            "%s %s %d %.1fms",
            request.method,
            template,
            status,
            (time.perf_counter() - start) * 1000,
        )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err.status, err.code, err.message, field=err.field)
    except ControlError as err:
        status = err.status if 400 <= err.status <= 599 else 500
        code = err.code or _CODES.get(status, "error")
        return error_response(status, code, err.message, field=err.field)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        if exc.status == 413:
            message = f"the request body is larger than {BODY_LIMIT} bytes"
        else:
            message = exc.reason
        return error_response(
            exc.status, _CODES.get(exc.status, "http_error"), message, headers=headers
        )
    except Exception as exc:
        # the message may quote call data (numbers): log the type and where, not the text
        stack = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "unhandled %s in %s %s\n%s",
            type(exc).__name__,
            request.method,
            _route_template(request),
            stack,
        )
        return error_response(500, "internal_error", "internal error")


def _digest(token: str) -> bytes:
    # hashing first makes the comparison independent of the tokens' lengths too
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def bearer_ok(header: str | None, tokens: Collection[str]) -> bool:
    """True when ``header`` is ``Bearer <t>`` for one of ``tokens`` (empty tokens never match).
    Every configured token is compared, in constant time, whatever the outcome."""
    if header is None:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return False
    given = _digest(credentials)
    matched = False
    for token in tokens:
        if token and hmac.compare_digest(given, _token_digest(token)):
            matched = True
    return matched


#: the configured tokens' digests, computed once each (never the digest of what a client sent)
_token_digest = functools.lru_cache(maxsize=64)(_digest)


def _protected(request: web.Request) -> bool:
    """Every /v1 path, judged both by the path asked for and by the route it matched."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    return any(p == "/v1" or p.startswith("/v1/") for p in (request.path, canonical))


def _auth(tokens: Callable[[], Collection[str]]) -> Middleware:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _protected(request):
            header = request.headers.get("Authorization")
            if not bearer_ok(header, tokens()):
                if header is None:
                    challenge, message = 'Bearer realm="handoffd"', "missing bearer token"
                else:
                    challenge = 'Bearer realm="handoffd", error="invalid_token"'
                    message = "invalid bearer token"
                return error_response(
                    401, "unauthorized", message, headers={"WWW-Authenticate": challenge}
                )
        return await handler(request)

    return auth


# -- handlers -------------------------------------------------------------------------------


async def _read_json(request: web.Request) -> Any:
    """The decoded body; no body at all counts as ``{}``."""
    if not request.body_exists:
        return {}
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "the request body must be application/json")
    raw = await request.read()  # raises 413 past client_max_size
    if not raw:
        return {}
    return parse_json(raw)


class _Api:
    def __init__(self, control: CallControl, openapi: dict[str, Any]) -> None:
        self.control = control
        self.openapi = json.dumps(openapi, separators=(",", ":")).encode()

    async def healthz(self, request: web.Request) -> web.Response:
        if self.control.ready():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unavailable"}, status=503)

    async def openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")

    async def list_calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": self.control.list_calls()})

    async def get_call(self, request: web.Request) -> web.Response:
        return web.json_response(self.control.get_call(request.match_info["call_id"]))

    async def start_transfer(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        transfer = transfer_request(await _read_json(request))
        view = self.control.start_transfer(call_id, transfer)
        transfer_id = str(view["id"])
        return web.json_response(
            {**view, "transfer_id": transfer_id},
            status=202,
            headers={"Location": "/v1/transfers/" + quote(transfer_id, safe="")},
        )

    async def get_transfer(self, request: web.Request) -> web.Response:
        return web.json_response(self.control.get_transfer(request.match_info["transfer_id"]))

    async def cancel_transfer(self, request: web.Request) -> web.Response:
        transfer_id = request.match_info["transfer_id"]
        return web.json_response(self.control.cancel_transfer(transfer_id))

    async def complete_transfer(self, request: web.Request) -> web.Response:
        transfer_id = request.match_info["transfer_id"]
        return web.json_response(self.control.complete_transfer(transfer_id))

    async def conference_transfer(self, request: web.Request) -> web.Response:
        transfer_id = request.match_info["transfer_id"]
        return web.json_response(self.control.conference_transfer(transfer_id))

    async def reload(self, request: web.Request) -> web.Response:
        return web.json_response(self.control.reload_rules())


def create_app(
    control: CallControl,
    *,
    tokens: Callable[[], Collection[str]],
    metrics: Handler | None = None,
) -> web.Application:
    """The HTTP API over ``control``.

    Args:
        control: The call layer (see :class:`~telephony.api.control.CallControl`).
        tokens: Returns the accepted bearer tokens; asked on every request so a reload can
            change them. No tokens: every ``/v1`` request is refused.
        metrics: Serves ``GET /metrics`` (no auth) when given.
    """
    api = _Api(control, openapi_document(metrics=metrics is not None))
    app = web.Application(
        client_max_size=BODY_LIMIT,
        middlewares=[_access_log, _errors, _auth(tokens)],
    )
    r = app.router
    r.add_get("/healthz", api.healthz)
    r.add_get("/openapi.json", api.openapi_json)
    if metrics is not None:
        r.add_get("/metrics", metrics)
    r.add_get("/v1/calls", api.list_calls)
    r.add_get("/v1/calls/{call_id}", api.get_call)
    r.add_post("/v1/calls/{call_id}/transfers", api.start_transfer)
    r.add_get("/v1/transfers/{transfer_id}", api.get_transfer)
    r.add_post("/v1/transfers/{transfer_id}/cancel", api.cancel_transfer)
    r.add_post("/v1/transfers/{transfer_id}/complete", api.complete_transfer)
    r.add_post("/v1/transfers/{transfer_id}/conference", api.conference_transfer)
    r.add_post("/v1/admin/reload", api.reload)
    return app
