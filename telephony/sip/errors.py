"""Typed SIP errors: each carries the status to answer with and says which side broke the rules.

Layer boundaries convert these to responses (a 400 for a malformed request, 481 for an unknown
transaction, ...); nothing above the parser ever sees a bare ``ValueError`` from SIP input.
"""

from __future__ import annotations

from typing import Literal

Side = Literal["peer", "local"]


class SipError(Exception):
    """Base of every error the SIP layer raises.

    ``status`` is the SIP status code to answer the offending request with (when an answer is
    possible) and ``reason`` a short human-readable phrase safe to put in a reason-phrase or
    Warning header (no caller data). ``side`` is ``"peer"`` when the remote party broke the rules
    and ``"local"`` when our own code asked for something invalid.
    """

    status: int
    reason: str
    side: Side

    def __init__(self, reason: str, status: int = 500, side: Side = "local") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.side = side

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, status={self.status}, side={self.side!r})"


class ParseError(SipError):
    """Malformed input from the network: answer with ``status`` (400 unless said otherwise).

    Raised by the message, header, URI, SDP and auth parsers, and by typed header accessors on a
    parsed message when that header's value is malformed.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason, status=status, side="peer")


class ProtocolError(SipError):
    """A well-formed message that is not allowed here (wrong state, unknown dialog, ...)."""
