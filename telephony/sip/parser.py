"""Bytes to messages: :func:`parse_message` for one datagram, :class:`StreamParser` for TCP/TLS.

Both validate what every later layer relies on (start line, version, the headers a transaction and
a dialog need: Via, From, To, Call-ID, CSeq matching the method, Max-Forwards, Content-Length) and
raise :class:`ParseError` carrying the status to answer with. No other exception type escapes, for
any input. Headers a caller may never look at are parsed lazily, on first typed access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from telephony.sip.errors import ParseError
from telephony.sip.headers import (
    Via,
    canonical,
    is_token,
    parse_cseq,
    parse_name_addr,
    parse_via,
    pretty,
    split_list,
)
from telephony.sip.message import Headers, Request, Response
from telephony.sip.uri import parse_uri

Message = Request | Response

MAX_DATAGRAM = 65535
MAX_URI_LENGTH = 4096

_STATUS_LINE = re.compile(r"SIP/([0-9]+\.[0-9]+) ([1-6][0-9][0-9])(?: (.*))?\Z", re.IGNORECASE)
_HEADER_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
# Headers that may appear once only (RFC 4475 torture tests mult01 and mcl01: answer 400).
_SINGLE = frozenset({"call-id", "cseq", "from", "to", "max-forwards", "content-length"})
# callid = word [ "@" word ] (RFC 3261 §25.1). Read liberally (a 911 call must not fail over a
# stray '=' or '#' from a sloppy generator): any visible ASCII but the comma, which would make it
# a list (RFC 4475 mult01). White space, control characters and non-ASCII are refused.
_CALL_ID = re.compile(r"[!-+\--~]+\Z")


def parse_message(data: bytes | bytearray | memoryview, *, max_size: int = MAX_DATAGRAM) -> Message:
    """Parse one datagram. Octets after Content-Length are ignored (RFC 3261 §18.3); a body shorter
    than Content-Length is an error (400); without Content-Length the body is the rest."""
    if type(data) is not bytes:
        data = bytes(memoryview(data))  # bytearray, memoryview: read-only copy
    if len(data) > max_size:
        raise ParseError("message too large", status=513)
    head, body, length_known = _split_head(data)
    msg = _parse_head(head)
    clen = msg.content_length
    if clen is not None:
        if clen > len(body):
            raise ParseError("Content-Length larger than the datagram")
        body = body[:clen]
    elif not length_known:
        body = b""
    msg.body = body
    return msg


def _split_head(data: bytes) -> tuple[bytes, bytes, bool]:
    # Tolerate leading CRLFs (keep-alives before a message, RFC 3261 §7.5).
    start = 0
    while data.startswith(_EOL, start):
        start += 1 if data[start] == 0x0A else 2
    nl = data.find(b"\n", start)
    if nl > start and data[nl - 1] == 0x0D:  # CRLF line ends: the normal case
        end = data.find(b"\r\n\r\n", start)
        if end >= 0:
            return data[start:end], data[end + 4 :], True
    else:
        # bare-LF sender: be liberal in what we accept. The head ends at the first empty line
        # even when the body holds a CRLF CRLF.
        end = data.find(b"\n\n", start)
        if end >= 0:
            return data[start:end], data[end + 2 :], True
    # no blank line: headers only (the blank line may be lost by a sloppy sender)
    return data[start:].rstrip(b"\r\n"), b"", False


_EOL = (b"\r\n", b"\n")

# header-name spelling -> canonical name, for names already seen to be valid (bounded)
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 4096


def _parse_head(head: bytes) -> Message:
    text = head.decode("utf-8", "surrogateescape")  # any bytes decode; serialization restores them
    lines = text.split("\r\n")
    # a CR or LF left once the CRLFs are gone is a bare LF (tolerated) or a stray CR (not);
    # join + two memchr scans are cheaper than counting every line end three times
    rest = "".join(lines)
    if "\n" in rest or "\r" in rest:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            raise ParseError("stray CR in header")
        lines = text.split("\n")
    items: list[tuple[str, str]] = []
    index: dict[str, list[int]] = {}
    headers = Headers._parsed(items, index)  # filled in place below
    # the start line first: an unknown version (505) or Request-URI scheme (416) is what to
    # answer even when the headers are broken too
    msg = _parse_start_line(lines[0], headers)
    cache = _NAME_CACHE
    for line in lines[1:]:
        if not line:
            raise ParseError("empty line inside header")
        if line[0] in " \t":
            if not items:
                raise ParseError("continuation line before any header")
            more = line.strip(" \t")
            if more:  # unfold (RFC 3261 §7.3.1): the line break and its LWS become one SP
                name, value = items[-1]
                items[-1] = (name, f"{value} {more}" if value else more)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError("header line without ':'")
        key = cache.get(name)
        if key is None:
            stripped = name.rstrip(" \t")
            if not _HEADER_NAME.match(stripped):
                raise ParseError("bad header name")
            key = canonical(stripped)
            if stripped == name and len(cache) < _NAME_CACHE_MAX:
                cache[name] = key
            name = stripped
        pos = index.get(key)
        if pos is None:
            index[key] = [len(items)]
        else:
            if key in _SINGLE:  # RFC 4475 mult01, mcl01
                raise ParseError(f"more than one {pretty(key)} header")
            pos.append(len(items))
        items.append((name, value.strip(" \t")))
    _validate(msg)
    return msg


def _parse_start_line(line: str, headers: Headers) -> Message:
    if line[:4].upper() == "SIP/":
        m = _STATUS_LINE.match(line)
        if m is None:
            raise ParseError("bad status line")
        if m.group(1) != "2.0":
            raise ParseError("unsupported SIP version", status=505)
        return Response(int(m.group(2)), m.group(3) or "", headers)
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError("bad request line")
    method, uri_text, version = parts
    if not is_token(method):
        raise ParseError("bad method")
    if version.upper() != "SIP/2.0":
        if version[:4].upper() == "SIP/":
            raise ParseError("unsupported SIP version", status=505)
        raise ParseError("bad request line")
    if len(uri_text) > MAX_URI_LENGTH:
        raise ParseError("Request-URI too long", status=414)
    scheme, colon, _ = uri_text.partition(":")
    if scheme.lower() not in _SUPPORTED_SCHEMES:
        if colon and _SCHEME.match(scheme):
            raise ParseError("unsupported URI scheme", status=416)
        raise ParseError("bad Request-URI")
    uri = parse_uri(uri_text)
    if uri.headers:
        # RFC 3261 §19.1.1 table 1: headers are not allowed in a Request-URI (RFC 4475 escruri)
        raise ParseError("headers in the Request-URI")
    return Request(method, uri, headers)


def _validate(msg: Message) -> None:
    """Parse the headers every later layer relies on, filling the message's typed-value cache
    exactly as the accessors would (same keys, same types)."""
    headers = msg.headers
    index = headers._idx()
    items = headers._items
    cache = headers._cache
    for key in _REQUIRED:
        if key not in index:
            raise ParseError(f"missing {pretty(key)} header")
    vias: list[Via] = []
    for i in index["via"]:
        value = items[i][1]
        if "," in value:
            vias.extend(parse_via(v) for v in split_list(value))
        else:
            vias.append(parse_via(value))
    if not vias:
        raise ParseError("missing Via header")
    cache["via"] = vias
    if _CALL_ID.match(items[index["call-id"][0]][1]) is None:
        raise ParseError("bad Call-ID")
    cseq = cache["cseq"] = parse_cseq(items[index["cseq"][0]][1])
    cache["from"] = parse_name_addr(items[index["from"][0]][1])
    cache["to"] = parse_name_addr(items[index["to"][0]][1])
    if "max-forwards" in index:
        msg.max_forwards  # noqa: B018 - validates
    if "content-length" in index:
        msg.content_length  # noqa: B018 - validates
    if isinstance(msg, Request) and cseq.method != msg.method:
        raise ParseError("CSeq method does not match the request method")


# -- streams (TCP, TLS) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A CRLF CRLF ping (RFC 5626 §3.5.1) arrived on the stream: answer with one CRLF (pong)."""


StreamEvent = Request | Response | KeepAlive


class StreamParser:
    """Incremental parser for a SIP byte stream. Feed chunks of any size; get whole messages.

    Content-Length is mandatory on streams (RFC 3261 §18.3), and the header section must end with
    CRLF CRLF (no bare-LF tolerance here: framing must be exact). A header section longer than
    ``max_message`` is refused with 513, a message whose body would make it longer with 413.
    After a :class:`ParseError` the stream has lost its framing: the caller should answer (when it
    can) and close the connection.
    """

    def __init__(self, max_message: int = MAX_DATAGRAM) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._error: ParseError | None = None
        # how much of _buf was already searched for CRLF CRLF (a slow sender must not make every
        # feed rescan the whole header section)
        self._scanned = 0
        # a parsed head waiting for its body: (message, body start, message end)
        self._pending: tuple[Request | Response, int, int] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[StreamEvent]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        out: list[StreamEvent] = []
        try:
            while buf:
                pending = self._pending
                if pending is None:
                    first = buf[0]
                    if first in b"\r\n":
                        # keep-alives and stray CRLFs between messages
                        if buf.startswith(b"\r\n\r\n"):
                            del buf[:4]
                            out.append(KeepAlive())
                            continue
                        if len(buf) < 4 and b"\r\n\r\n".startswith(buf):
                            break  # maybe the start of a ping: wait for more
                        if buf.startswith(b"\r\n"):
                            del buf[:2]  # a pong, or a CRLF after a message
                            continue
                        if first == 0x0A:  # lone LF
                            del buf[:1]
                            continue
                        raise ParseError("stray CR between messages")
                    end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
                    if end < 0:
                        self._scanned = len(buf)
                        if len(buf) > self._max:
                            raise ParseError("header too large", status=513)
                        break
                    self._scanned = 0
                    if end > self._max:
                        raise ParseError("header too large", status=513)
                    msg = _parse_head(bytes(buf[:end]))
                    clen = msg.content_length
                    if clen is None:
                        raise ParseError("missing Content-Length on a stream transport")
                    total = end + 4 + clen
                    if total > self._max:
                        raise ParseError("message too large", status=413)
                    pending = self._pending = (msg, end + 4, total)
                msg, start, total = pending
                if len(buf) < total:
                    break  # the head is parsed once; wait for the rest of the body
                msg.body = bytes(buf[start:total])
                del buf[:total]
                self._pending = None
                out.append(msg)
        except ParseError as exc:
            # framing is lost: hand out what was complete, fail from the next call on
            self._error = exc
            if not out:
                raise
        return out
