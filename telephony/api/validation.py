"""Request-body validation for the HTTP API, by hand (stdlib only).

Bodies are small and have few fields, so a hand-written check gives precise errors that name
the field without a schema library. The limits come from :mod:`telephony.api.openapi` so the
document and the checks cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from telephony.api.control import Mode, TransferRequest
from telephony.api.openapi import DESTINATION_MAX, MODES, REASON_MAX, TRIAGE_LEVELS


class ApiError(Exception):
    """An error the API answers itself (bad input, auth), before the call layer is asked.

    Attributes:
        status: The HTTP status to answer with (always 4xx).
        code: Machine-readable code (``invalid_field``, ``unknown_field``, ``bad_json``, ...).
        message: Human-readable text; never includes the offending value.
        field: The body field at fault, or ``None``.
    """

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


#: one decoder for every body (``json.loads`` with a hook builds a new one per call)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body strictly (UTF-8, no NaN/Infinity); raises ``ApiError(400)``."""
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError and ints beyond the digit limit
        raise ApiError(400, "bad_json", "the request body is not valid JSON") from None


def _invalid(field: str, message: str) -> NoReturn:
    raise ApiError(422, "invalid_field", f"{field}: {message}", field=field)


def _optional_string(body: dict[str, Any], field: str, *, min_len: int, max_len: int) -> str | None:
    if field not in body:
        return None
    value = body[field]
    if not isinstance(value, str):
        _invalid(field, "must be a string")
    if not min_len <= len(value) <= max_len:
        _invalid(field, f"must be {min_len} to {max_len} characters long")
    return value


def _triage_level(body: dict[str, Any]) -> int | None:
    if "triage_level" not in body:
        return None
    value = body["triage_level"]
    # JSON Schema counts 2.0 as the integer 2; a boolean is never a number
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in TRIAGE_LEVELS:
        _invalid("triage_level", "must be one of 1, 2, 3")
    return value


def _mode(body: dict[str, Any]) -> Mode:
    value = body.get("mode", "cold")
    if value == "cold":
        return "cold"
    if value == "warm":
        return "warm"
    if value == "consult":
        return "consult"
    _invalid("mode", "must be one of " + ", ".join(MODES))


def transfer_request(body: Any) -> TransferRequest:
    """Check a decoded ``POST /v1/calls/{id}/transfers`` body; raises ``ApiError(422)`` naming
    the first bad field (unknown fields first, then the known ones in document order)."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_body", "the request body must be a JSON object")
    known = ("mode", "destination", "triage_level", "reason")
    for key in body:
        if key not in known:
            # the name is client input: cap what we echo back
            name = key if len(key) <= 64 else key[:64] + "..."
            raise ApiError(422, "unknown_field", f"unknown field {name!r}", field=name)
    return TransferRequest(
        mode=_mode(body),
        destination=_optional_string(body, "destination", min_len=1, max_len=DESTINATION_MAX),
        triage_level=_triage_level(body),
        reason=_optional_string(body, "reason", min_len=0, max_len=REASON_MAX),
    )
