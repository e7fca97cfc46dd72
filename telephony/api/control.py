"""The contract between the HTTP API and the call layer.

The API never touches calls itself: it validates input, asks a :class:`CallControl` and turns the
answer (a plain JSON-ready ``dict``, the *view*) or a :class:`ControlError` into an HTTP response.
The daemon provides the real implementation; tests provide an in-memory one.

The view shapes (``call``, ``transfer``) are described as JSON Schemas in
:mod:`telephony.api.openapi`; an implementation must return exactly those keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

Mode = Literal["cold", "warm", "consult"]
"""How a transfer hands the caller over: ``cold`` (blind, the dispatcher leaves at once),
``warm`` (three-way conference until the counselor has voice contact), ``consult`` (caller held
while the dispatcher talks to the counselor first)."""


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A validated request to transfer a call (the body of ``POST /v1/calls/{id}/transfers``).

    Attributes:
        mode: The transfer mode; ``cold`` when the client did not say.
        destination: A destination name or number (1-128 characters), or ``None`` to let the
            routing rules choose.
        triage_level: The dispatcher's triage level 1, 2 or 3, or ``None``; the routing rules
            may match on it.
        reason: Free text kept with the transfer record (at most 256 characters), or ``None``.
    """

    mode: Mode = "cold"
    destination: str | None = None
    triage_level: int | None = None
    reason: str | None = None


class ControlError(Exception):
    """The call layer refused a request; carries the HTTP status to answer with.

    Args:
        status: The HTTP status: 404 unknown call or transfer, 409 wrong state (e.g. cancelling
            a completed transfer), 422 not allowed (by rules or policy), 503 draining or not
            started.
        message: Human-readable text for the client. It is sent in the response body but never
            logged by the API, so it may name the call; it must not hold anything secret.
        field: The request field the problem is about (``"destination"``), if any.
        code: A short machine-readable code (``"unknown_call"``); when ``None`` the API
            derives one from the status.
    """

    def __init__(
        self, status: int, message: str, *, field: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code

    def __repr__(self) -> str:
        return f"ControlError({self.status}, {self.message!r}, field={self.field!r})"


class CallControl(Protocol):
    """What the HTTP API needs from the daemon. Every method is synchronous and quick: it runs
    on the event loop inside the request handler."""

    def ready(self) -> bool:
        """True while SIP and HTTP are serving and the daemon is not draining."""
        ...

    def list_calls(self) -> list[dict[str, Any]]:
        """Views of all active calls (``Call`` schema)."""
        ...

    def get_call(self, call_id: str) -> dict[str, Any]:
        """The view of one call by its internal id; raises ``ControlError(404)`` if unknown."""
        ...

    def start_transfer(self, call_id: str, request: TransferRequest) -> dict[str, Any]:
        """Start a transfer of the call and return its view (``Transfer`` schema).

        Raises ``ControlError``: 404 unknown call, 409 call in the wrong state (already
        transferring, not yet answered), 422 destination not allowed, 503 draining.
        """
        ...

    def get_transfer(self, transfer_id: str) -> dict[str, Any]:
        """The view of one transfer with its timeline so far; ``ControlError(404)`` if unknown."""
        ...

    def cancel_transfer(self, transfer_id: str) -> dict[str, Any]:
        """Cancel a transfer before it completes (the caller stays with the dispatcher) and
        return its view: a cold one until the destination answers, a warm or consult one until
        ``complete``. ``ControlError(409)`` after that, 404 if unknown."""
        ...

    def complete_transfer(self, transfer_id: str) -> dict[str, Any]:
        """Hand a warm (in conference) or consult transfer over: the dispatcher leaves, caller
        and counselor stay; returns its view. ``ControlError(409)`` naming the state in any
        other state, 404 if unknown."""
        ...

    def conference_transfer(self, transfer_id: str) -> dict[str, Any]:
        """Turn a consult into a three-way conference; 409 unless consulting, 404 if unknown."""
        ...

    def reload_rules(self) -> dict[str, Any]:
        """Reload the routing rules: returns ``{"rules": int, "sources": [str, ...]}``.

        Raises ``ControlError(422, message)`` with the ``file:line`` problems in the message
        when a file is bad; the running rules then stay in force.
        """
        ...
