"""Header names and typed header values (RFC 3261 §7.3, §20, §25).

Header values are stored as text on the message; these types are what the typed accessors return.
All parsers raise :class:`ParseError` (400) on malformed input and nothing else.

- :func:`canonical` maps any spelling (``v``, ``VIA``, ``Via``) to one lower-case long name.
- :func:`split_list` splits a comma-list value, respecting quotes and angle brackets.
- :class:`NameAddr` covers From/To/Contact/Route/Record-Route/Refer-To/Referred-By/Call-Info/
  Geolocation/P-Asserted-Identity/History-Info: ``[display] <uri> *(;param)`` or ``addr-spec``.
- :class:`Via`, :class:`CSeq`, and :class:`ParamValue` (``value *(;param)``: Event,
  Subscription-State, Content-Type, Replaces, User-to-User, Reason, ...).
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

from telephony.sip.errors import ParseError
from telephony.sip.uri import URI, Params, parse_uri

COMPACT = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Headers whose grammar is a comma-separated list (several values may share one line).
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "service-route",
        "call-info",
        "geolocation",
        "p-asserted-identity",
        "p-preferred-identity",
        "history-info",
        "user-to-user",
        "require",
        "proxy-require",
        "supported",
        "unsupported",
        "allow",
        "allow-events",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "reason",
        "warning",
        "accept-contact",
        "reject-contact",
        "resource-priority",
        "in-reply-to",
    }
)

# Spelling used when we add a header ourselves.
_PRETTY = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "p-asserted-identity": "P-Asserted-Identity",
    "p-preferred-identity": "P-Preferred-Identity",
    "user-to-user": "User-to-User",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VIA = re.compile(
    r"SIP\s*/\s*2\.0\s*/\s*(?P<transport>[A-Za-z0-9\-.!%*_+`'~]+)\s+"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:\s*:\s*(?P<port>[0-9]{1,5}))?\s*(?P<rest>.*)\Z",
    re.IGNORECASE | re.DOTALL,
)
_TOKEN_RE = r"[A-Za-z0-9\-.!%*_+`'~]+"
_FAST_PARAMS = re.compile(
    r"(?:;" + _TOKEN_RE + r"(?:=(?:" + _TOKEN_RE + r"|\[[0-9A-Fa-f:.]+\]))?)+\Z"
)
# ``"display" <uri>;params`` or ``token words <uri>;params`` in one pass
_FAST_NAME_ADDR = re.compile(
    r'[ \t]*(?:"((?:[^"\\\r\n]|\\[^\r\n])*)"[ \t]*|((?:' + _TOKEN_RE + r"[ \t]+)*))"
    r"<([^<>\s\"]+)>[ \t]*((?:;[^\s;\"]+)*)[ \t]*\Z"
)
_QUOTED = re.compile(r'"(?:[^"\\\r\n]|\\[^\r\n])*"\Z')
_new = tuple.__new__  # positional NamedTuple construction, skipping keyword handling
_CSEQ = re.compile(r"\s*([0-9]{1,10})\s+([A-Za-z0-9\-.!%*_+`'~]+)\s*\Z")
BRANCH_COOKIE = "z9hG4bK"


_SURROGATES = re.compile(f"[{chr(0xD800)}-{chr(0xDFFF)}]")  # mypyc refuses surrogate literals


def valid_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD. Text from the wire can hold them:
    the parser keeps a byte that is not UTF-8 as a surrogate escape (so a relayed message goes
    out byte for byte), and a JSON body may carry an escaped one. Use this where the text is
    written anew as UTF-8 (a NOTIFY's sipfrag, the records): strict encoding would raise."""
    return _SURROGATES.sub("\ufffd", text)


def canonical(name: str) -> str:
    """Lower-case long form of a header name (compact forms expanded)."""
    low = name.lower()
    return COMPACT.get(low, low) if len(low) == 1 else low


def pretty(name: str) -> str:
    """Conventional spelling for a header we add (``call-id`` -> ``Call-ID``)."""
    low = canonical(name)
    return _PRETTY.get(low) or "-".join(p.capitalize() for p in low.split("-"))


def is_token(text: str) -> bool:
    return _TOKEN.match(text) is not None


# a comma list is well formed when quotes and angle brackets balance
_LIST_WELL_FORMED = re.compile(r'(?:[^,"<>]|"(?:[^"\\]|\\.)*"|<[^<>"]*>|,)*\Z', re.DOTALL)
_LIST_ITEM = re.compile(r'(?:[^,"<>]|"(?:[^"\\]|\\.)*"|<[^<>"]*>)+', re.DOTALL)


def split_list(value: str) -> list[str]:
    """Split a comma-list header value; commas inside quotes or ``<...>`` do not split."""
    if '"' not in value and "<" not in value and ">" not in value:
        items = [p.strip() for p in value.split(",")]
        return [p for p in items if p]
    if _LIST_WELL_FORMED.match(value) is None:
        raise ParseError("unbalanced quote or angle bracket")
    items = [p.strip() for p in _LIST_ITEM.findall(value)]
    return [p for p in items if p]


def _split_semicolons(text: str) -> list[str]:
    if '"' not in text:
        return text.split(";")
    parts: list[str] = []
    start = 0
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ";":
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise ParseError("unterminated quoted string")
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> Params:
    """Parse ``;name[=value]`` header parameters (text may start with ``;``). Names lower-cased;
    quoted values keep their quotes so that serialization is exact."""
    if not text:
        return ()
    if _FAST_PARAMS.match(text) is not None:
        # common case: no quotes, no stray ';', no white space
        out: list[tuple[str, str | None]] = []
        for part in text[1:].split(";"):
            name, eq, value = part.partition("=")
            out.append((name.lower(), value if eq else None))
        return tuple(out)
    text = text.strip()
    if not text:
        return ()
    if text[0] != ";":
        raise ParseError("expected ';' before parameters")
    params: list[tuple[str, str | None]] = []
    for part in _split_semicolons(text[1:]):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name and not eq:
            continue  # tolerate a stray ';'
        if not _TOKEN.match(name):
            raise ParseError("bad header parameter name")
        if eq:
            value = value.strip()
            if not value:
                raise ParseError("bad header parameter value")
            if value[0] == '"':
                if _QUOTED.match(value) is None:
                    raise ParseError("bad quoted header parameter value")
            elif any(c in value for c in ' \t\r\n"'):
                raise ParseError("bad header parameter value")
            params.append((name.lower(), value))
        else:
            params.append((name.lower(), None))
    return tuple(params)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _get(params: Params, name: str) -> str | None:
    for k, v in params:
        if k == name:
            return v
    return None


def unquote(value: str) -> str:
    """Remove surrounding quotes and backslash escapes from a quoted-string."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        return re.sub(r"\\(.)", r"\1", inner) if "\\" in inner else inner
    return value


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _set_param(params: Params, name: str, value: str | None) -> Params:
    out = [(k, v) for k, v in params if k != name]
    out.append((name, value))
    return tuple(out)


class NameAddr(NamedTuple):
    """``[display-name] <uri> *(;param)``. ``display_name`` is unquoted; ``params`` are header
    params (``tag``, ``purpose``, ``expires``, ...), not URI params."""

    uri: URI
    display_name: str | None = None
    params: Params = ()

    @property
    def tag(self) -> str | None:
        return _get(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _get(self.params, name.lower())

    def with_tag(self, tag: str) -> NameAddr:
        return _new(NameAddr, (self.uri, self.display_name, _set_param(self.params, "tag", tag)))

    def with_param(self, name: str, value: str | None) -> NameAddr:
        params = _set_param(self.params, name.lower(), value)
        return _new(NameAddr, (self.uri, self.display_name, params))

    def __str__(self) -> str:
        disp = f"{quote(self.display_name)} " if self.display_name else ""
        return f"{disp}<{self.uri}>{format_params(self.params)}"


MEMO_MAX_TEXT = 256


class _Memo:
    """The last parses of header values, by exact text. The same From, To, Via and Contact text
    comes back several times in a call (our INVITE's Via and From in every response to it, the
    caller's From in its ACK and BYE), and the values are immutable tuples, so a repeat costs a
    dict look-up instead of a parse. Only successful parses are kept, so malformed text is
    parsed (and refused) every time. Two generations of ``size`` entries: the older one is
    dropped when the newer fills up. Only values up to ``MEMO_MAX_TEXT`` characters are kept (a
    peer must not be able to park megabytes of header text here)."""

    __slots__ = ("new", "old", "size")

    def __init__(self, size: int = 2048) -> None:
        self.new: dict[str, Any] = {}
        self.old: dict[str, Any] = {}
        self.size = size

    def get(self, text: str) -> Any:
        found = self.old.get(text)
        if found is not None:
            self.put(text, found)
        return found

    def put(self, text: str, value: Any) -> None:
        if len(text) > MEMO_MAX_TEXT:
            return
        if len(self.new) >= self.size:
            self.old, self.new = self.new, {}
        self.new[text] = value


_ADDRESSES = _Memo()
_VIAS = _Memo()


def parse_name_addr(value: str) -> NameAddr:
    """Parse name-addr or addr-spec with header params. Raises ParseError."""
    found = _ADDRESSES.new.get(value) or _ADDRESSES.get(value)
    if found is not None:
        return found  # type: ignore[no-any-return]
    parsed = _parse_name_addr(value)
    _ADDRESSES.put(value, parsed)
    return parsed


def _parse_name_addr(value: str) -> NameAddr:
    m = _FAST_NAME_ADDR.match(value)
    if m is not None:
        quoted, words, uri_text, ptext = m.groups()
        if quoted is not None:
            shown = unquote(f'"{quoted}"') if "\\" in quoted else quoted
        else:
            shown = " ".join(words.split()) if words else ""
        return _new(NameAddr, (parse_uri(uri_text), shown or None, parse_params(ptext)))
    v = value.strip()
    if not v:
        raise ParseError("empty address")
    display: str | None = None
    if v[0] == '"':
        i = 1
        n = len(v)
        while i < n:
            c = v[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                break
            i += 1
        else:
            raise ParseError("unterminated display name")
        display = unquote(v[: i + 1])
        v = v[i + 1 :].lstrip()
        if not v.startswith("<"):
            raise ParseError("display name without <uri>")
    lt = v.find("<")
    if lt >= 0:
        gt = v.find(">", lt)
        if gt < 0:
            raise ParseError("missing '>' in address")
        if lt > 0:
            words = v[:lt].split()
            if display is not None or not all(_TOKEN.match(w) for w in words):
                raise ParseError("bad display name")
            display = " ".join(words) or None
        uri = parse_uri(v[lt + 1 : gt])
        params = parse_params(v[gt + 1 :])
    else:
        # addr-spec: parameters after the URI are header parameters (RFC 3261 §20.10).
        uri_text, semi, ptext = v.partition(";")
        uri_text = uri_text.rstrip(" \t")  # LWS may precede the ';' of a header param
        if any(c in uri_text for c in " \t,?"):
            raise ParseError("bad address")
        uri = parse_uri(uri_text)
        params = parse_params(semi + ptext)
    return NameAddr(uri=uri, display_name=display or None, params=params)


class Via(NamedTuple):
    """One Via entry: ``SIP/2.0/<transport> host[:port] *(;param)``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    @property
    def branch(self) -> str | None:
        return _get(self.params, "branch")

    @property
    def received(self) -> str | None:
        return _get(self.params, "received")

    @property
    def rport(self) -> int | None:
        """The rport value filled in by a server (RFC 3581); None when absent or empty."""
        v = _get(self.params, "rport")
        return int(v) if v and len(v) <= 5 and v.isascii() and v.isdigit() else None

    @property
    def has_rport(self) -> bool:
        return ("rport", None) in self.params or any(k == "rport" for k, _ in self.params)

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def is_rfc3261(self) -> bool:
        """True when the branch carries the RFC 3261 magic cookie (else RFC 2543 matching)."""
        b = self.branch
        return b is not None and b.startswith(BRANCH_COOKIE)

    def param(self, name: str) -> str | None:
        return _get(self.params, name.lower())

    def with_param(self, name: str, value: str | None) -> Via:
        params = _set_param(self.params, name.lower(), value)
        return _new(Via, (self.transport, self.host, self.port, params))

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    found = _VIAS.new.get(value) or _VIAS.get(value)
    if found is not None:
        return found  # type: ignore[no-any-return]
    m = _VIA.match(value.strip())
    if m is None:
        raise ParseError("bad Via")
    port_s = m.group("port")
    port = int(port_s) if port_s else None
    if port is not None and port > 65535:
        raise ParseError("bad Via port")
    via: Via = _new(
        Via,
        (
            m.group("transport").upper(),
            m.group("host").lower(),
            port,
            parse_params(m.group("rest")),
        ),
    )
    _VIAS.put(value, via)
    return via


class _Random:
    """Random bytes from the OS's CSPRNG (``os.urandom``, what :mod:`secrets` uses), read 4 KiB
    at a time: a call takes a dozen tags and branches, and one ``getrandom`` system call each
    was measurable. The block is dropped in a forked child (it must not repeat the parent's)."""

    BLOCK = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def hex(self, n: int) -> str:
        pos = self._pos
        if pos + n > len(self._buf):
            self._buf, pos = os.urandom(self.BLOCK), 0
        self._pos = pos + n
        return self._buf[pos : pos + n].hex()

    def reset(self) -> None:
        self._buf, self._pos = b"", 0


_random = _Random()
os.register_at_fork(after_in_child=_random.reset)


def new_branch() -> str:
    """A fresh RFC 3261 branch (magic cookie + 96 random bits)."""
    return BRANCH_COOKIE + _random.hex(12)


def new_tag() -> str:
    """A fresh tag: 64 random bits from the OS's CSPRNG (RFC 3261 §19.3: globally unique,
    cryptographically random, at least 32 bits)."""
    return _random.hex(8)


class CSeq(NamedTuple):
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ.match(value)
    if m is None:
        raise ParseError("bad CSeq")
    seq = int(m.group(1))
    if seq >= 2**31:
        raise ParseError("CSeq number out of range")
    return _new(CSeq, (seq, m.group(2)))


class ParamValue(NamedTuple):
    """``value *(;param)`` headers. ``value`` is the text before the first ``;`` (stripped)."""

    value: str
    params: Params = ()

    def param(self, name: str) -> str | None:
        return _get(self.params, name.lower())

    def has_param(self, name: str) -> bool:
        key = name.lower()
        return any(k == key for k, _ in self.params)

    def __str__(self) -> str:
        return f"{self.value}{format_params(self.params)}"


def parse_param_value(value: str) -> ParamValue:
    v = value.strip()
    if v.startswith('"'):
        # quoted value (e.g. some User-to-User); find its end before the params
        end = 1
        while end < len(v) and v[end] != '"':
            end += 2 if v[end] == "\\" else 1
        if end >= len(v):
            raise ParseError("unterminated quoted string")
        head, rest = v[: end + 1], v[end + 1 :]
    else:
        head, semi, tail = v.partition(";")
        rest = semi + tail
        head = head.strip()
    if not head:
        raise ParseError("empty header value")
    return ParamValue(head, parse_params(rest))
