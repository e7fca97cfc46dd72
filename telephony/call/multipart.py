"""multipart/* message bodies (RFC 2046 §5.1), as SIP uses them (RFC 5621): SDP + PIDF-LO.

- :func:`parse_multipart` splits a body into :class:`BodyPart` s. Delimiter lines are found after
  CRLF or a bare LF (some CPE writes bare LF); transport padding (spaces, tabs) after a delimiter
  is allowed; the preamble and the epilogue are ignored; a quoted ``boundary`` parameter is
  unquoted. Part headers keep their order and spelling; folded header lines are unfolded; each
  part's body is kept byte for byte (the line break before the next delimiter belongs to the
  delimiter, not to the body).
- :func:`build_multipart` writes parts back with CRLF and a fresh random boundary that occurs in
  none of them.

A broken body raises :class:`ParseError` (400): no ``boundary`` parameter, no delimiter, no close
delimiter (``--boundary--``: a SIP body is framed by Content-Length, so a missing close delimiter
means the sender built it wrong), a part header line without a colon, or a continuation line with
no header before it. Reasons never include body text.

``strict=False`` reads what it can instead (for a 911 call, where a broken location part must not
cost the caller the call): a part whose headers cannot be read is skipped, and without a close
delimiter the last part runs to the end of the body (less one final line break). A body with no
usable boundary, or where the boundary never occurs, still raises.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from telephony.sip.errors import ParseError, SipError
from telephony.sip.headers import is_token, parse_param_value, unquote

# RFC 2045 §5.2: a part without a (valid) Content-Type is text/plain
DEFAULT_CONTENT_TYPE = "text/plain"
_ENC = "utf-8"
_ERRORS = "surrogateescape"  # non-UTF-8 header bytes survive a round trip, as in SIP headers


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One part of a multipart body: ``headers`` as ``(name as written, value)`` in order, and
    ``body`` exactly as received."""

    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """Value of the first header named ``name`` (case-insensitive)."""
        key = name.lower()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return None

    @property
    def content_type(self) -> str:
        """Media type, lower-cased, without parameters (``application/pidf+xml``);
        ``text/plain`` when the part has no Content-Type or an unreadable one (RFC 2045 §5.2)."""
        raw = self.header("content-type")
        if raw is None:
            return DEFAULT_CONTENT_TYPE
        mtype = media_type(raw)
        return mtype if mtype is not None else DEFAULT_CONTENT_TYPE

    @property
    def content_id(self) -> str | None:
        """Content-ID without its angle brackets (``target123@psap.example.net``), the id a
        ``cid:`` URI names (RFC 2392)."""
        raw = self.header("content-id")
        if raw is None:
            return None
        cid = raw.strip().removeprefix("<").removesuffix(">").strip()
        return cid or None


def media_type(content_type: str) -> str | None:
    """``type/subtype`` of a Content-Type value, lower-cased; ``None`` when it is unreadable."""
    mtype, slash, sub = content_type.partition(";")[0].partition("/")
    mtype, sub = mtype.strip().lower(), sub.strip().lower()
    if not slash or not is_token(mtype) or not is_token(sub):
        return None
    return f"{mtype}/{sub}"


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a multipart Content-Type value, unquoted.

    Raises :class:`ParseError`: 415 when the type is not ``multipart/*``, 400 when the value is
    unreadable or has no usable boundary."""
    mtype = media_type(content_type)
    if mtype is None:
        raise ParseError("bad Content-Type")
    if not mtype.startswith("multipart/"):
        raise ParseError("not a multipart body", status=415)
    params = parse_param_value(content_type).params
    raw = next((v for k, v in params if k == "boundary"), None)
    boundary = unquote(raw) if raw is not None else ""
    # RFC 2046 allows 1 to 70 characters; read longer ones anyway (liberal), never empty
    if not boundary or "\r" in boundary or "\n" in boundary:
        raise ParseError("multipart body without a boundary")
    return boundary


def parse_multipart(body: bytes, content_type: str, *, strict: bool = True) -> tuple[BodyPart, ...]:
    """The parts of a ``multipart/*`` body; ``content_type`` is the whole Content-Type value
    (``multipart/mixed;boundary=...``). Raises :class:`ParseError` (see the module doc, also for
    ``strict=False``)."""
    dash = b"--" + boundary_of(content_type).encode(_ENC, _ERRORS)
    # a delimiter line: at the start of the body or after a line break, "--boundary", "--" for
    # the close delimiter, transport padding, then the end of the line (or of the body)
    delimiter = re.compile(rb"(?:\A|\r?\n)" + re.escape(dash) + rb"(--)?[ \t]*(?=\r?\n|\Z)")
    parts: list[BodyPart] = []
    start: int | None = None  # where the current part's content starts
    for m in delimiter.finditer(body):
        if start is not None:
            _add_part(parts, body[start : max(start, m.start())], strict)
        if m.group(1) is not None:
            return tuple(parts)  # close delimiter: what follows is the epilogue
        end = m.end()
        start = end + (2 if body.startswith(b"\r\n", end) else 1 if body[end : end + 1] else 0)
    if start is None:
        raise ParseError("multipart boundary not found in the body")
    if strict:
        raise ParseError("multipart body without its close delimiter")
    last = body[start:]
    last = last.removesuffix(b"\n").removesuffix(b"\r") if last.endswith(b"\n") else last
    _add_part(parts, last, strict)
    return tuple(parts)


def _add_part(parts: list[BodyPart], raw: bytes, strict: bool) -> None:
    try:
        parts.append(_parse_part(raw))
    except ParseError:
        if strict:
            raise


def _parse_part(raw: bytes) -> BodyPart:
    headers: list[tuple[str, str]] = []
    pos = 0
    body = b""
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        line_end = len(raw) if nl < 0 else nl
        line = raw[pos:line_end].removesuffix(b"\r")
        pos = len(raw) if nl < 0 else nl + 1
        if not line:
            body = raw[pos:]  # the blank line ends the headers
            break
        text = line.decode(_ENC, _ERRORS)
        if text[0] in " \t":
            if not headers:
                raise ParseError("multipart part starts with a continuation line")
            name, value = headers[-1]
            folded = text.strip(" \t")
            headers[-1] = (name, f"{value} {folded}" if value and folded else value or folded)
            continue
        name, colon, value = text.partition(":")
        name = name.rstrip(" \t")
        if not colon or not is_token(name):
            raise ParseError("bad header line in a multipart part")
        headers.append((name, value.strip(" \t")))
    # a part that ends without a blank line has headers only (RFC 2046: the body is optional)
    return BodyPart(tuple(headers), body)


def new_boundary() -> str:
    return "handoff-" + secrets.token_hex(12)


def build_multipart(parts: Iterable[BodyPart], subtype: str = "mixed") -> tuple[str, bytes]:
    """``(Content-Type value, body)`` of a ``multipart/<subtype>`` body holding ``parts``, CRLF
    line breaks, with a fresh boundary that occurs in no part.

    Raises :class:`SipError` (local, 500) for a part header that would break the framing (CR or LF
    anywhere, a name that is not a token)."""
    heads: list[bytes] = []
    bodies: list[bytes] = []
    for part in parts:
        lines = []
        for name, value in part.headers:
            if not is_token(name) or "\r" in value or "\n" in value:
                raise SipError("bad header in a multipart part", status=500, side="local")
            lines.append(f"{name}: {value}\r\n")
        heads.append("".join(lines).encode(_ENC, _ERRORS))
        bodies.append(part.body)
    while True:
        boundary = new_boundary()
        dash = b"--" + boundary.encode(_ENC)
        if not any(dash in chunk for chunk in (*heads, *bodies)):
            break
    out = bytearray()
    for head, body in zip(heads, bodies, strict=True):
        out += dash + b"\r\n" + head + b"\r\n" + body + b"\r\n"
    out += dash + b"--\r\n"
    return f"multipart/{subtype};boundary={boundary}", bytes(out)
