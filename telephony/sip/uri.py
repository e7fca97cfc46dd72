"""SIP, SIPS and tel URIs (RFC 3261 §19.1 and §25, RFC 3966), plus opaque absolute URIs.

``parse_uri`` turns text into an immutable :class:`URI`; ``str(uri)`` writes it back. Parameter
names are case-insensitive and kept lower-cased; values keep their spelling. The user part is
kept escaped as written (``%23`` stays ``%23``): :func:`unescape` decodes it when needed.
Other schemes (``urn:``, ``cid:``, ``http:`` in Call-Info or Geolocation) keep everything after the
colon in ``opaque``.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote

from telephony.sip.errors import ParseError

Params = tuple[tuple[str, str | None], ...]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
# host = hostname / IPv4address / IPv6reference; the port is 1*DIGIT.
_HOSTPORT = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)"
    r"(?::(?P<port>[0-9]{1,5}))?\Z"
)
# Characters allowed (unescaped) in the user part and in params/headers, per RFC 3261 §25.1.
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%#]+\Z")
_PARAM_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+\Z")
_PASSWORD = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]+\Z")
# URI headers (``?name=value&...``): hname/hvalue chars, plus '@', ';', '=' and ',' in values,
# which some UAs leave unescaped in an embedded Replaces (never white space, quotes or brackets).
_HNAME = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%]+\Z")
_HVALUE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%@;=,]+\Z")
# The common shape of a SIP URI in one pass: scheme, user[:password]@, host[:port], ;params.
# Anything else (URI headers, odd characters) takes the step-by-step path below.
_FAST_SIP = re.compile(
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()&=+$,/%#]+)(?::([A-Za-z0-9\-_.!~*'()&=+$,%]*))?@)?"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]*)?)*)\Z",
    re.IGNORECASE,
)
_TEL_NUMBER = re.compile(r"[+]?[0-9A-Fa-f*#\-.()]+\Z")


class URI(NamedTuple):
    """A parsed URI. For sip/sips the host is set; for tel ``user`` holds the number.

    ``params`` are ``;name[=value]`` pairs in order (names lower-cased); ``headers`` are the
    ``?name=value&...`` pairs of a SIP URI (RFC 3261 §19.1.1), values still escaped.
    Immutable; a NamedTuple rather than a frozen dataclass because it is built for every
    address of every message and tuple construction is several times cheaper.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    def param(self, name: str, default: str | None = None) -> str | None:
        """Value of parameter ``name`` (case-insensitive); ``default`` when absent or valueless."""
        key = name.lower()
        for k, v in self.params:
            if k == key:
                return default if v is None else v
        return default

    def has_param(self, name: str) -> bool:
        key = name.lower()
        return any(k == key for k, _ in self.params)

    def with_params(self, **changes: str | None) -> URI:
        """A copy with the given params set (``None`` value = flag param); order kept."""
        params = [(k, v) for k, v in self.params if k not in changes]
        params.extend((k.lower(), v) for k, v in changes.items())
        return self._replace(params=tuple(params))

    def without_params(self, *names: str) -> URI:
        drop = {n.lower() for n in names}
        return self._replace(params=tuple((k, v) for k, v in self.params if k not in drop))

    def header(self, name: str) -> str | None:
        key = name.lower()
        for k, v in self.headers:
            if k.lower() == key:
                return v
        return None

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def transport(self) -> str:
        """Transport named by the URI (``udp`` unless said, ``tls`` for sips)."""
        t = self.param("transport")
        if t:
            return t.lower()
        return "tls" if self.scheme == "sips" else "udp"

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            if self.scheme != "tel":
                out.append("@")
        if self.scheme != "tel":
            out.append(self.hostport)
        for k, v in self.params:
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)


_new_uri = tuple.__new__  # positional construction without NamedTuple's keyword handling


def unescape(text: str) -> str:
    """Decode %HH escapes (user parts, URI header values)."""
    return unquote(text) if "%" in text else text


def _split_params(text: str, where: str) -> Params:
    if not text:
        return ()
    params: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        if not part:
            continue  # tolerate ";;" and a trailing ";"
        name, eq, value = part.partition("=")
        if not _PARAM_CHARS.match(name) or (eq and value and not _PARAM_CHARS.match(value)):
            raise ParseError(f"bad {where} parameter")
        params.append((name.lower(), value if eq else None))
    return tuple(params)


def parse_uri(text: str) -> URI:
    """Parse a URI; raise :class:`ParseError` (400) when it is malformed."""
    m = _FAST_SIP.match(text)
    if m is not None:
        sch, user, password, host, port_s, ptext = m.groups()
        port = int(port_s) if port_s else None
        if port is None or port <= 65535:
            if ptext:  # the regex already checked every character of the params
                params: Params = tuple(
                    (n.lower(), v if eq else None)
                    for n, eq, v in (p.partition("=") for p in ptext[1:].split(";"))
                )
            else:
                params = ()
            fields = (sch.lower(), user, password, host.lower(), port, params, (), None)
            return _new_uri(URI, fields)
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.match(scheme) or not rest:
        raise ParseError("bad URI")
    scheme = scheme.lower()
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        return _parse_tel(rest)
    if any(c in rest for c in ' \t\r\n<>"'):
        raise ParseError("bad URI")
    return URI(scheme=scheme, opaque=rest)


def _parse_sip(scheme: str, rest: str) -> URI:
    user: str | None = None
    password: str | None = None
    # The user part may hold ';', '?', '/' and ',' (RFC 3261 §25.1 user-unreserved) but never an
    # unescaped '@', so the first '@' ends the userinfo; URI headers ('?...') follow the host.
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, pc, pw = userinfo.partition(":")
        if not user or not _USER.match(user):
            raise ParseError("bad URI user part")
        if pc:
            if pw and not _PASSWORD.match(pw):
                raise ParseError("bad URI password")
            password = pw
    rest, q, hdrs = rest.partition("?")
    headers: tuple[tuple[str, str], ...] = ()
    if q:
        pairs = []
        for item in hdrs.split("&"):
            name, eq, value = item.partition("=")
            if not eq or not _HNAME.match(name) or (value and not _HVALUE.match(value)):
                raise ParseError("bad URI header")
            pairs.append((name, value))
        headers = tuple(pairs)
    hostport, _, ptext = rest.partition(";")
    m = _HOSTPORT.match(hostport)
    if m is None:
        raise ParseError("bad URI host")
    port_s = m.group("port")
    port = int(port_s) if port_s else None
    if port is not None and port > 65535:
        raise ParseError("bad URI port")
    return URI(
        scheme=scheme,
        user=user,
        password=password,
        host=m.group("host").lower(),
        port=port,
        params=_split_params(ptext, "URI"),
        headers=headers,
    )


def _parse_tel(rest: str) -> URI:
    number, _, ptext = rest.partition(";")
    if not _TEL_NUMBER.match(number):
        raise ParseError("bad tel URI")
    return URI(scheme="tel", user=number, params=_split_params(ptext, "tel URI"))


def tel_digits(uri: URI) -> str:
    """The dialable digits of a tel URI or of a SIP URI's user part (visual separators removed)."""
    user = unescape(uri.user or "")
    return "".join(c for c in user if c.isdigit() or c in "+*#")
