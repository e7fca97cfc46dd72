"""SIP message model: :class:`Request`, :class:`Response` and their ordered :class:`Headers`.

Headers are kept as written (order, name spelling, value text), so a parsed message serializes back
to the same header lines. Typed access (``msg.via``, ``msg.cseq``, ``msg.from_`` ...) parses a value
on first use and caches it until the headers change; a malformed value raises :class:`ParseError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from telephony.sip.errors import ParseError, SipError
from telephony.sip.headers import (
    LIST_HEADERS,
    CSeq,
    NameAddr,
    ParamValue,
    Via,
    canonical,
    is_token,
    parse_cseq,
    parse_name_addr,
    parse_param_value,
    parse_via,
    pretty,
    split_list,
)
from telephony.sip.uri import URI

T = TypeVar("T")

SIP_VERSION = "SIP/2.0"

REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def reason_phrase(status: int) -> str:
    return REASONS.get(status) or REASONS.get(status // 100 * 100, "Unknown")


def _check_line(name: str, value: str) -> None:
    """Refuse header text that would change the framing when written (header injection): a CR or
    LF anywhere, or a ':' in the name. Parsed messages never hold such text; code building one
    from outside data (an HTTP hook, a config file) might."""
    if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name or not name:
        raise SipError("CR, LF or ':' in a header line", status=500, side="local")


class Headers:
    """Ordered header lines ``(name as written, value)``; lookups ignore case and compact forms.

    Lines added by our code (the constructor, :meth:`add`, :meth:`set`) are checked with
    :func:`_check_line`: :class:`SipError` (local, 500) for text that would forge other lines.
    """

    __slots__ = ("_cache", "_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)
        for name, value in self._items:
            _check_line(name, value)
        self._index: dict[str, list[int]] | None = None
        # typed values parsed from these headers; cleared on every change
        self._cache: dict[str, Any] = {}

    @classmethod
    def _parsed(cls, items: list[tuple[str, str]], index: dict[str, list[int]] | None) -> Headers:
        """Headers from the parser, which has already built the index and checked the lines (no
        copies, no checks)."""
        self = cls()
        self._items = items
        self._index = index
        return self

    def _idx(self) -> dict[str, list[int]]:
        index = self._index
        if index is None:
            index = {}
            for i, (name, _) in enumerate(self._items):
                index.setdefault(canonical(name), []).append(i)
            self._index = index
        return index

    def _changed(self) -> None:
        self._index = None
        self._cache.clear()

    def shrink(self) -> None:
        """Drop the name index and the parsed values; the lines stay and are parsed again if
        asked. For messages kept for a long time but rarely read (a finished transaction waits
        up to 32 s): the parsed form is dozens of objects the garbage collector would walk."""
        self._index = None
        self._cache = {}

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical(name) in self._idx()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of the first line named ``name``."""
        pos = self._idx().get(canonical(name))
        return self._items[pos[0]][1] if pos else default

    def get_all(self, name: str) -> list[str]:
        """Values of every line named ``name``, in order (not split on commas)."""
        items = self._items
        return [items[i][1] for i in self._idx().get(canonical(name), ())]

    def values(self, name: str) -> list[str]:
        """Every element of ``name``: lines in order, comma lists split for list headers."""
        key = canonical(name)
        raw = [self._items[i][1] for i in self._idx().get(key, ())]
        if key not in LIST_HEADERS:
            return raw
        out: list[str] = []
        for v in raw:
            out.extend(split_list(v))
        return out

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Append a line (or insert it before all others with ``first=True``, e.g. Via)."""
        _check_line(name, value)
        if first:
            self._items.insert(0, (name, value))
        else:
            self._items.append((name, value))
        self._changed()

    def set(self, name: str, value: str) -> None:
        """Replace every line named ``name`` by one line at the position of the first."""
        _check_line(name, value)
        key = canonical(name)
        pos = self._idx().get(key)
        if not pos:
            self._items.append((pretty(name), value))
        else:
            keep_name = self._items[pos[0]][0]
            self._items[pos[0]] = (keep_name, value)
            for i in reversed(pos[1:]):
                del self._items[i]
        self._changed()

    def remove(self, name: str) -> int:
        """Remove every line named ``name``; return how many were removed."""
        key = canonical(name)
        before = len(self._items)
        self._items = [(n, v) for n, v in self._items if canonical(n) != key]
        self._changed()
        return before - len(self._items)

    def pop_first(self, name: str) -> str | None:
        """Remove the first element of a list header (e.g. the top Via) and return it."""
        pos = self._idx().get(canonical(name))
        if not pos:
            return None
        i = pos[0]
        hname, value = self._items[i]
        parts = split_list(value)
        if len(parts) <= 1:
            del self._items[i]
        else:
            self._items[i] = (hname, ", ".join(parts[1:]))
        self._changed()
        return parts[0] if parts else None

    def copy(self) -> Headers:
        return Headers._parsed(list(self._items), None)


class Message:
    """Common part of requests and responses."""

    __slots__ = ("body", "headers", "version")

    def __init__(
        self,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body
        self.version = version

    # -- typed access -----------------------------------------------------------------------

    def _one(self, key: str, parse: Callable[[str], T]) -> T | None:
        headers = self.headers
        cache = headers._cache
        if key in cache:
            return cache[key]  # type: ignore[no-any-return]
        pos = headers._idx().get(key)
        val = None if not pos else parse(headers._items[pos[0]][1])
        cache[key] = val
        return val

    def _many(self, key: str, parse: Callable[[str], T]) -> list[T]:
        """Typed elements of list header ``key`` (``key`` is already canonical)."""
        headers = self.headers
        cache = headers._cache
        if key in cache:
            return cache[key]  # type: ignore[no-any-return]
        items = headers._items
        val: list[T] = []
        for i in headers._idx().get(key, ()):
            raw = items[i][1]
            if "," in raw:
                val.extend(parse(v) for v in split_list(raw))
            elif raw.strip():
                val.append(parse(raw))
        cache[key] = val
        return val

    def _required(self, key: str, parse: Callable[[str], T]) -> T:
        val = self._one(key, parse)
        if val is None:
            raise ParseError(f"missing {pretty(key)} header")
        return val

    @property
    def via(self) -> list[Via]:
        return self._many("via", parse_via)

    @property
    def top_via(self) -> Via:
        vias = self.via
        if not vias:
            raise ParseError("missing Via header")
        return vias[0]

    @property
    def call_id(self) -> str:
        cache = self.headers._cache
        found = cache.get("call-id")
        if found is not None:
            return found  # type: ignore[no-any-return]
        val = self.headers.get("call-id")
        if val is None or not val.strip():
            raise ParseError("missing Call-ID header")
        found = cache["call-id"] = val.strip()
        return found

    @property
    def cseq(self) -> CSeq:
        return self._required("cseq", parse_cseq)

    @property
    def from_(self) -> NameAddr:
        return self._required("from", parse_name_addr)

    @property
    def to(self) -> NameAddr:
        return self._required("to", parse_name_addr)

    @property
    def contact(self) -> list[NameAddr]:
        """Contact addresses; empty for ``Contact: *`` (see :attr:`contact_is_star`)."""
        if self.contact_is_star:
            return []
        return self._many("contact", parse_name_addr)

    @property
    def contact_is_star(self) -> bool:
        vals = self.headers.get_all("contact")
        return len(vals) == 1 and vals[0].strip() == "*"

    @property
    def route(self) -> list[NameAddr]:
        return self._many("route", parse_name_addr)

    @property
    def record_route(self) -> list[NameAddr]:
        return self._many("record-route", parse_name_addr)

    @property
    def max_forwards(self) -> int | None:
        return self._one("max-forwards", _parse_max_forwards)

    @property
    def content_type(self) -> ParamValue | None:
        return self._one("content-type", _parse_content_type)

    @property
    def content_length(self) -> int | None:
        return self._one("content-length", parse_content_length)

    @property
    def refer_to(self) -> NameAddr | None:
        return self._one("refer-to", parse_name_addr)

    @property
    def referred_by(self) -> NameAddr | None:
        return self._one("referred-by", parse_name_addr)

    @property
    def replaces(self) -> ParamValue | None:
        """Replaces (RFC 3891): ``value`` is the Call-ID; ``to-tag``/``from-tag`` params."""
        return self._one("replaces", parse_param_value)

    @property
    def call_info(self) -> list[NameAddr]:
        return self._many("call-info", parse_name_addr)

    @property
    def geolocation(self) -> list[NameAddr]:
        return self._many("geolocation", parse_name_addr)

    @property
    def p_asserted_identity(self) -> list[NameAddr]:
        return self._many("p-asserted-identity", parse_name_addr)

    @property
    def history_info(self) -> list[NameAddr]:
        return self._many("history-info", parse_name_addr)

    @property
    def user_to_user(self) -> list[ParamValue]:
        return self._many("user-to-user", parse_param_value)

    @property
    def event(self) -> ParamValue | None:
        return self._one("event", parse_param_value)

    @property
    def subscription_state(self) -> ParamValue | None:
        return self._one("subscription-state", parse_param_value)

    @property
    def require(self) -> list[str]:
        return self._many("require", _parse_option_tag)

    @property
    def supported(self) -> list[str]:
        return self._many("supported", _parse_option_tag)

    @property
    def allow(self) -> list[str]:
        return self._many("allow", _parse_method)

    # -- serialization ----------------------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialize; Content-Length is always written and always matches the body.

        Raises :class:`SipError` (local, 500) when the start line holds a CR or LF (header lines
        are checked when they are added: see :class:`Headers`)."""
        body = self.body
        start = self.start_line()
        if "\n" in start or "\r" in start:
            raise SipError("CR or LF in the start line", status=500, side="local")
        lines = [start]
        wrote_length = False
        for name, value in self.headers:
            # only "Content-Length" (any case) and compact "l" canonicalize to content-length
            if (len(name) == 14 or len(name) == 1) and canonical(name) == "content-length":
                if wrote_length:
                    continue
                value = str(len(body))
                wrote_length = True
            lines.append(f"{name}: {value}")
        if not wrote_length:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: URI,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body, version)
        self.method = method
        self.uri = uri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Request)
            and self.method == other.method
            and str(self.uri) == str(other.uri)
            and self.version == other.version
            and self.headers == other.headers
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body, version)
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason

    @property
    def method(self) -> str:
        """The method this response answers (from CSeq)."""
        return self.cseq.method

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Response)
            and self.status == other.status
            and self.reason == other.reason
            and self.version == other.version
            and self.headers == other.headers
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def _parse_max_forwards(value: str) -> int:
    v = value.strip()
    # leading zeros are legal (RFC 4475 wsinv sends "0068")
    if not v.isascii() or not v.isdigit() or len(v) > 10 or int(v) > 255:
        raise ParseError("bad Max-Forwards")
    return int(v)


def parse_content_length(value: str) -> int:
    v = value.strip()
    if not v.isascii() or not v.isdigit() or len(v) > 10:
        raise ParseError("bad Content-Length")
    return int(v)


def _parse_content_type(value: str) -> ParamValue:
    pv = parse_param_value(value)
    mtype, slash, sub = pv.value.partition("/")
    if not slash or not mtype.strip() or not sub.strip():
        raise ParseError("bad Content-Type")
    return ParamValue(f"{mtype.strip().lower()}/{sub.strip().lower()}", pv.params)


def _parse_option_tag(value: str) -> str:
    v = value.strip()
    if not is_token(v):
        raise ParseError("bad option tag")
    return v.lower()


def _parse_method(value: str) -> str:
    v = value.strip()
    if not is_token(v):
        raise ParseError("bad method in Allow")
    return v.upper()


# -- building messages ----------------------------------------------------------------------


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6: Via lines, From, To (with ``to_tag`` added
    when it has none), Call-ID and CSeq copied as written; Timestamp echoed on 100."""
    src = request.headers
    index = src._idx()
    items = src._items
    out: list[tuple[str, str]] = [("Via", items[i][1]) for i in index.get("via", ())]
    out.append(("From", src.get("from") or ""))
    to = src.get("to") or ""
    tagged = to_tag is not None and status != 100 and request.to.tag is None
    if tagged:
        to = f"{to};tag={to_tag}"
        _check_line("To", to)
    out.append(("To", to))
    out.append(("Call-ID", src.get("call-id") or ""))
    out.append(("CSeq", src.get("cseq") or ""))
    if status == 100 and (ts := src.get("timestamp")) is not None:
        out.append(("Timestamp", ts))
    for name, value in headers:
        _check_line(name, value)
        out.append((name, value))
    # the copied lines were checked when the request was parsed or built: no second check;
    # their typed values are the request's (same text, same parse), so they are not parsed
    # again when the transaction layer reads the response's Via and CSeq
    resp = Response(status, reason, Headers._parsed(out, None), body)
    cache = src._cache
    primed = resp.headers._cache
    for key in ("from", "cseq", "call-id") if tagged else ("from", "to", "cseq", "call-id"):
        known = cache.get(key)
        if known is not None:
            primed[key] = known
    vias = cache.get("via")
    if vias is not None:
        primed["via"] = list(vias)
    return resp


def make_request(
    method: str,
    uri: URI,
    *,
    via: Via,
    from_: NameAddr,
    to: NameAddr,
    call_id: str,
    cseq: int,
    max_forwards: int = 70,
    contact: NameAddr | None = None,
    route: Iterable[NameAddr] = (),
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """A new request with the mandatory headers of RFC 3261 §8.1.1 in conventional order."""
    out: list[tuple[str, str]] = [("Via", str(via))]
    out.extend(("Route", str(r)) for r in route)
    out += [
        ("Max-Forwards", str(max_forwards)),
        ("From", str(from_)),
        ("To", str(to)),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact is not None:
        out.append(("Contact", str(contact)))
    fixed = len(out)
    out.extend(headers)
    if body and content_type:
        out.append(("Content-Type", content_type))
    request = Request(method, uri, Headers(out), body)
    # the transaction layer reads the top Via (branch) of every request it sends: hand it the
    # Via it was built from instead of parsing the text back, when parsing would give the same
    # value (names already in the case the parser produces) and no other Via line was added
    params = via.params
    if (
        via.transport.isupper()
        and via.host == via.host.lower()
        and all(k == k.lower() for k, _ in params)
        and all(name.lower() != "via" for name, _ in out[fixed:])
    ):
        request.headers._cache["via"] = [via]
    return request


def make_cancel(invite: Request) -> Request:
    """CANCEL for a pending INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, From, To, CSeq
    number and top Via (same branch), and the INVITE's Route set."""
    src = invite.headers
    out: list[tuple[str, str]] = [("Via", str(invite.top_via))]
    out.extend(("Route", r) for r in src.get_all("route"))
    out += [
        ("Max-Forwards", "70"),
        ("From", src.get("from") or ""),
        ("To", src.get("to") or ""),
        ("Call-ID", src.get("call-id") or ""),
        ("CSeq", f"{invite.cseq.seq} CANCEL"),
    ]
    return Request("CANCEL", invite.uri, Headers(out))


def make_ack_for_failure(invite: Request, response: Response) -> Request:
    """ACK for a non-2xx final response, built by the client transaction (RFC 3261 §17.1.1.3):
    the INVITE's Request-URI, Call-ID, From, top Via and Route; To from the response."""
    src = invite.headers
    out: list[tuple[str, str]] = [("Via", str(invite.top_via))]
    out.extend(("Route", r) for r in src.get_all("route"))
    out += [
        ("Max-Forwards", "70"),
        ("From", src.get("from") or ""),
        ("To", response.headers.get("to") or ""),
        ("Call-ID", src.get("call-id") or ""),
        ("CSeq", f"{invite.cseq.seq} ACK"),
    ]
    return Request("ACK", invite.uri, Headers(out))
