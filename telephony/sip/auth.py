"""SIP digest authentication: RFC 3261 §22 with the algorithms of RFC 8760.

Works on header *values* (what follows ``WWW-Authenticate:``, ``Proxy-Authenticate:``,
``Authorization:`` or ``Proxy-Authorization:``) and plain arguments, so it does not depend on the
message model. The caller picks the header name: a 401 carries ``WWW-Authenticate`` and is answered
with ``Authorization``, a 407 carries ``Proxy-Authenticate`` and is answered with
``Proxy-Authorization``; the values are identical. These headers are never comma-combined
(RFC 3261 §7.3.1), so one value holds exactly one challenge or one set of credentials.

Algorithms: ``MD5``, ``MD5-sess``, ``SHA-256`` and ``SHA-256-sess``. With ``qop=auth`` (or
``auth-int``) the response is the RFC 7616 one; when a challenge offers no ``qop`` the client falls
back to the RFC 2617 / RFC 2069 form (no ``cnonce``, no ``nc``).

Nothing here reads a clock or draws randomness behind the caller's back: ``now`` is an argument, the
client's ``cnonce`` is an argument (:func:`new_cnonce` makes one), and the only hidden randomness is
the salt :meth:`DigestServer.new_nonce` draws when the caller does not supply one.

Malformed header values raise :class:`ParseError` (status 400) and nothing else. Invalid arguments
from our own side (a username containing CR LF, an ``nc`` out of range) raise :class:`SipError`
with ``side="local"``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from telephony.sip.errors import ParseError, SipError

# Canonical spelling of every supported algorithm, keyed by its upper-cased name.
_CANONICAL = {a.upper(): a for a in ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")}
_HASHES = {"MD5": "md5", "MD5-sess": "md5", "SHA-256": "sha256", "SHA-256-sess": "sha256"}
# Higher is stronger. Used by choose_challenge; ties go to the challenge listed first.
_STRENGTH = {"MD5": 0, "MD5-sess": 0, "SHA-256": 1, "SHA-256-sess": 1}
SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(_HASHES)

_TOKEN = frozenset(string.ascii_letters + string.digits + "-.!%*_+`'~")
_HEX = frozenset("0123456789abcdefABCDEF")
_LHEX = frozenset("0123456789abcdef")
_WS = " \t"


# ---------------------------------------------------------------------------------------------
# Parsing and formatting of the auth-param list
# ---------------------------------------------------------------------------------------------


def _bare_ok(c: str) -> bool:
    """Characters accepted in an unquoted value: visible ASCII except ``,`` and ``"``.

    The grammar says token; this is a little wider so that peers sending unquoted URIs or
    base64 nonces still parse. Output always quotes anything that is not a plain token.
    """
    return "!" <= c <= "~" and c not in ',"'


def _is_ctl(c: str) -> bool:
    return (c < " " and c != "\t") or c == "\x7f"


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _read_token(s: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(s) and s[i] in _TOKEN:
        i += 1
    return s[start:i], i


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    """Read the quoted-string starting at ``s[i] == '"'``; return its unescaped text."""
    out: list[str] = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= len(s):
                break
            c = s[i + 1]
            i += 1
        if _is_ctl(c):
            raise ParseError("control character in quoted-string")
        out.append(c)
        i += 1
    raise ParseError("unterminated quoted-string")


def _parse_params(value: str, what: str) -> tuple[str, dict[str, str]]:
    """Split ``Digest name=value, name="value"`` into the scheme and lower-cased params.

    Whitespace around names, ``=`` and commas is tolerated, as are empty list elements.
    A repeated parameter is an error (RFC 7235 §2.1). Only the Digest scheme is accepted:
    RFC 3261 §22.1 forbids Basic, and nothing else is defined for SIP here.
    """
    scheme, i = _read_token(value, _skip_ws(value, 0))
    if scheme.lower() != "digest":
        raise ParseError(f"{what}: scheme is not Digest")
    if i < len(value) and value[i] not in _WS:
        raise ParseError(f"{what}: malformed scheme")
    params: dict[str, str] = {}
    need_comma = False
    while True:
        i = _skip_ws(value, i)
        if i >= len(value):
            break
        if value[i] == ",":
            need_comma = False
            i += 1
            continue
        if need_comma:
            raise ParseError(f"{what}: expected ',' between parameters")
        name, i = _read_token(value, i)
        i = _skip_ws(value, i)
        if not name or i >= len(value) or value[i] != "=":
            raise ParseError(f"{what}: malformed parameter")
        i = _skip_ws(value, i + 1)
        if i < len(value) and value[i] == '"':
            text, i = _read_quoted(value, i)
        else:
            start = i
            while i < len(value) and _bare_ok(value[i]):
                i += 1
            text = value[start:i]
            if not text:
                raise ParseError(f"{what}: parameter without a value")
        key = name.lower()
        if key in params:
            raise ParseError(f"{what}: repeated parameter")
        params[key] = text
        need_comma = True
    if not params:
        raise ParseError(f"{what}: no parameters")
    return scheme, params


def _quote(text: str) -> str:
    if any(_is_ctl(c) for c in text):
        raise SipError("cannot put a control character in a quoted-string")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _param(name: str, text: str, *, quoted: bool) -> str:
    if quoted or not text or not all(c in _TOKEN for c in text):
        return f"{name}={_quote(text)}"
    return f"{name}={text}"


def _canonical(algorithm: str) -> str:
    return _CANONICAL.get(algorithm.upper(), algorithm)


# ---------------------------------------------------------------------------------------------
# Challenges and credentials
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """One Digest challenge (a ``WWW-Authenticate`` or ``Proxy-Authenticate`` value).

    ``algorithm`` is canonical (``"SHA-256"``, ``"MD5-sess"``, ...) when supported and as sent
    otherwise; it defaults to ``"MD5"`` when absent. ``qop`` lists the offered options lower-cased
    (empty: the server speaks RFC 2617 without qop). ``params`` keeps unknown parameters
    (lower-cased name, unescaped value) in the order received.
    """

    scheme: str
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: tuple[str, ...] = ()
    params: tuple[tuple[str, str], ...] = ()

    @property
    def supported(self) -> bool:
        """True when this module can answer the challenge (algorithm and qop)."""
        return self.algorithm in _HASHES and (
            not self.qop or "auth" in self.qop or "auth-int" in self.qop
        )


@dataclass(frozen=True, slots=True)
class Credentials:
    """One Digest response (an ``Authorization`` or ``Proxy-Authorization`` value).

    ``nc`` is the nonce count exactly as sent (8 hex digits, it is hashed verbatim);
    :attr:`nonce_count` is its value. ``qop`` is as sent; ``cnonce``, ``nc`` and ``qop`` are
    ``None`` in the RFC 2617 form without qop.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    scheme: str = "Digest"

    @property
    def nonce_count(self) -> int | None:
        return None if self.nc is None else int(self.nc, 16)


def parse_challenge(value: str) -> Challenge:
    """Parse a ``WWW-Authenticate`` / ``Proxy-Authenticate`` value; raise ParseError if bad."""
    scheme, p = _parse_params(value, "challenge")
    realm, nonce = p.pop("realm", None), p.pop("nonce", None)
    if realm is None or nonce is None:
        raise ParseError("challenge: realm and nonce are required")
    return Challenge(
        scheme=scheme,
        realm=realm,
        nonce=nonce,
        algorithm=_canonical(p.pop("algorithm", "MD5")),
        qop=tuple(q.strip().lower() for q in p.pop("qop", "").split(",") if q.strip()),
        opaque=p.pop("opaque", None),
        stale=p.pop("stale", "false").lower() == "true",
        domain=tuple(p.pop("domain", "").split()),
        params=tuple(p.items()),
    )


def format_challenge(challenge: Challenge) -> str:
    """Render a challenge as a header value (parse_challenge's inverse)."""
    parts = [_param("realm", challenge.realm, quoted=True)]
    if challenge.domain:
        parts.append(_param("domain", " ".join(challenge.domain), quoted=True))
    parts.append(_param("nonce", challenge.nonce, quoted=True))
    if challenge.opaque is not None:
        parts.append(_param("opaque", challenge.opaque, quoted=True))
    if challenge.stale:
        parts.append("stale=true")
    parts.append(_param("algorithm", challenge.algorithm, quoted=False))
    if challenge.qop:
        parts.append(_param("qop", ",".join(challenge.qop), quoted=True))
    parts.extend(_param(k, v, quoted=True) for k, v in challenge.params)
    return f"{challenge.scheme} " + ", ".join(parts)


def parse_credentials(value: str) -> Credentials:
    """Parse an ``Authorization`` / ``Proxy-Authorization`` value; raise ParseError if bad."""
    scheme, p = _parse_params(value, "credentials")
    required = [p.pop(k, None) for k in ("username", "realm", "nonce", "uri", "response")]
    username, realm, nonce, uri, response = required
    if username is None or realm is None or nonce is None or uri is None or response is None:
        raise ParseError("credentials: username, realm, nonce, uri and response are required")
    qop, cnonce, nc = p.pop("qop", None), p.pop("cnonce", None), p.pop("nc", None)
    if qop is not None and (cnonce is None or nc is None):
        raise ParseError("credentials: qop requires cnonce and nc")
    if nc is not None and (len(nc) != 8 or not all(c in _HEX for c in nc)):
        raise ParseError("credentials: nc must be 8 hex digits")
    return Credentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=_canonical(p.pop("algorithm", "MD5")),
        cnonce=cnonce,
        nc=nc,
        qop=qop,
        opaque=p.pop("opaque", None),
        params=tuple(p.items()),
        scheme=scheme,
    )


def format_credentials(credentials: Credentials) -> str:
    """Render credentials as a header value (parse_credentials's inverse)."""
    c = credentials
    parts = [
        _param("username", c.username, quoted=True),
        _param("realm", c.realm, quoted=True),
        _param("nonce", c.nonce, quoted=True),
        _param("uri", c.uri, quoted=True),
        _param("response", c.response, quoted=True),
        _param("algorithm", c.algorithm, quoted=False),
    ]
    if c.cnonce is not None:
        parts.append(_param("cnonce", c.cnonce, quoted=True))
    if c.opaque is not None:
        parts.append(_param("opaque", c.opaque, quoted=True))
    if c.qop is not None:
        parts.append(_param("qop", c.qop, quoted=False))
    if c.nc is not None:
        parts.append(_param("nc", c.nc, quoted=False))
    parts.extend(_param(k, v, quoted=True) for k, v in c.params)
    return f"{c.scheme} " + ", ".join(parts)


def choose_challenge(values: Iterable[str], *, realm: str | None = None) -> Challenge:
    """Pick the challenge to answer among a response's challenge header values.

    Malformed and unsupported challenges are skipped. Without ``realm`` the realm of the first
    usable challenge is answered (call again with ``realm=`` for each further realm when several
    proxies challenge at once). Within a realm the *strongest* algorithm wins and ties go to the
    challenge listed first.

    This is the "local policy" RFC 8760 §2.4 allows in place of "use the topmost supported":
    challenges carry no integrity protection, so an on-path attacker could reorder them to put
    MD5 on top (the downgrade RFC 8760 §3 warns about); ranking by strength removes that lever
    while still honouring the server's order among equally strong choices.
    """
    usable: list[Challenge] = []
    for value in values:
        try:
            challenge = parse_challenge(value)
        except ParseError:
            continue
        if challenge.supported and (realm is None or challenge.realm == realm):
            usable.append(challenge)
    if not usable:
        raise ParseError("no usable Digest challenge")
    first = usable[0].realm
    return max((c for c in usable if c.realm == first), key=lambda c: _STRENGTH[c.algorithm])


# ---------------------------------------------------------------------------------------------
# Digest arithmetic (RFC 7616 §3.4.1-3.4.3, RFC 2617 §3.2.2)
# ---------------------------------------------------------------------------------------------


def _bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # undoes a surrogateescape decode
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _h(algorithm: str, data: str | bytes) -> str:
    raw = data if isinstance(data, bytes) else _bytes(data)
    return hashlib.new(_HASHES[algorithm], raw).hexdigest()


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), what a registrar may store instead of the password.

    For the ``-sess`` algorithms this is the stored value, before the per-session step.
    """
    return _h(_canonical(algorithm), f"{username}:{realm}:{password}")


def compute_response(
    algorithm: str,
    ha1: str,
    *,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    cnonce: str | None = None,
    nc: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest for ``ha1`` (see :func:`compute_ha1`); ``algorithm`` must be supported."""
    alg = _canonical(algorithm)
    if alg.endswith("-sess"):
        ha1 = _h(alg, f"{ha1}:{nonce}:{cnonce or ''}")
    a2 = f"{method}:{uri}"
    if qop is not None and qop.lower() == "auth-int":
        a2 += ":" + _h(alg, body)
    ha2 = _h(alg, a2)
    if qop is None:
        return _h(alg, f"{ha1}:{nonce}:{ha2}")
    return _h(alg, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------


def new_cnonce() -> str:
    """A fresh client nonce (128 random bits, hex)."""
    return secrets.token_hex(16)


def authorization(
    challenge: Challenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int = 1,
    body: bytes = b"",
) -> str:
    """The ``Authorization`` / ``Proxy-Authorization`` value answering ``challenge``.

    ``uri`` is the Request-URI of the request being authorised, ``method`` its method (for a
    CANCEL or a non-2xx ACK, RFC 3261 §22.1 wants the INVITE's credentials reused instead).
    ``qop=auth`` is chosen when offered, else ``auth-int`` (hashing ``body``), else the RFC 2617
    form without qop. Raises ParseError when the challenge cannot be answered.
    """
    if challenge.algorithm not in _HASHES:
        raise ParseError("challenge: unsupported digest algorithm")
    qop: str | None = None
    if challenge.qop:
        if "auth" in challenge.qop:
            qop = "auth"
        elif "auth-int" in challenge.qop:
            qop = "auth-int"
        else:
            raise ParseError("challenge: no supported qop")
    if not 0 < nc <= 0xFFFFFFFF:
        raise SipError("nonce count out of range")
    sess = challenge.algorithm.endswith("-sess")
    if (qop is not None or sess) and not cnonce:
        raise SipError("a cnonce is required")
    nc_text = f"{nc:08x}" if qop is not None else None
    used_cnonce = cnonce if qop is not None or sess else None
    ha1 = compute_ha1(challenge.algorithm, username, challenge.realm, password)
    response = compute_response(
        challenge.algorithm,
        ha1,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        cnonce=used_cnonce,
        nc=nc_text,
        body=body,
    )
    return format_credentials(
        Credentials(
            username=username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            uri=uri,
            response=response,
            algorithm=challenge.algorithm,
            cnonce=used_cnonce,
            nc=nc_text,
            qop=qop,
            opaque=challenge.opaque,
        )
    )


class DigestClient:
    """Answers challenges for one account, counting ``nc`` per (realm, nonce).

    Remembers the last ``max_nonces`` nonces only. On a 401/407 with ``stale=true`` the caller
    should answer the new challenge without treating the credentials as rejected.
    """

    def __init__(self, username: str, password: str, *, max_nonces: int = 32) -> None:
        self.username = username
        self._password = password
        self._max = max(1, max_nonces)
        self._counts: dict[tuple[str, str], int] = {}

    def authorization(
        self, challenge: Challenge, *, method: str, uri: str, cnonce: str, body: bytes = b""
    ) -> str:
        key = (challenge.realm, challenge.nonce)
        nc = self._counts.pop(key, 0) + 1
        value = authorization(
            challenge,
            method=method,
            uri=uri,
            username=self.username,
            password=self._password,
            cnonce=cnonce,
            nc=nc,
            body=body,
        )
        self._counts[key] = nc
        while len(self._counts) > self._max:
            del self._counts[next(iter(self._counts))]
        return value


# ---------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of :meth:`DigestServer.verify`.

    ``ok``: the request is authenticated as ``username``. When not ok, answer 401/407 with a
    fresh challenge, passing ``stale`` on: ``stale=True`` means the password was right but the
    nonce is no longer accepted, so the client retries silently. ``reason`` is for logs only
    (never send it: it tells unknown users from wrong passwords).
    """

    ok: bool
    username: str | None
    stale: bool = False
    reason: str = ""


PasswordLookup = Callable[[str, str], str | None]
"""(username, realm) -> password, or None for an unknown user."""
Ha1Lookup = Callable[[str, str, str], str | None]
"""(username, realm, base algorithm "MD5" or "SHA-256") -> hex HA1, or None."""

_NONCE_LEN = 12 + 16 + 32  # hex: issue time in ms, 8-byte salt, 16-byte HMAC


class DigestServer:
    """Registrar / trunk side: issues challenges and verifies credentials.

    Nonces are stateless: ``hex(issued_ms) || hex(salt) || HMAC-SHA256(secret, realm, ...)``,
    so any instance holding the same ``secret`` verifies another's nonce. ``now`` is seconds on
    a clock those instances share (wall-clock time), passed in by the caller.

    Replay protection needs ``qop``: the highest ``nc`` seen per nonce is kept until the nonce
    expires, at most ``max_tracked`` nonces. When that table overflows, the oldest entry is
    dropped and every untracked nonce issued no later than it is answered ``stale`` from then
    on, so eviction never re-opens a replay window. With ``require_qop=False`` the RFC 2617 form
    is accepted too, and its responses can be replayed until the nonce expires.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        require_qop: bool = True,
        max_tracked: int = 65536,
        clock_skew: float = 5.0,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes")
        self.algorithms = tuple(_canonical(a) for a in algorithms)
        if not self.algorithms or any(a not in _HASHES for a in self.algorithms):
            raise ValueError(f"algorithms must be among {SUPPORTED_ALGORITHMS}")
        _quote(realm)
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.require_qop = require_qop
        self._secret = secret
        self._max = max(1, max_tracked)
        self._skew_ms = int(clock_skew * 1000)
        self._seen: dict[str, tuple[int, int]] = {}  # nonce -> (issued_ms, highest nc)
        self._floor_ms = -1  # untracked nonces issued at or before this are stale
        self._next_prune_ms = 0

    def _mac(self, payload: str) -> str:
        message = _bytes(self.realm) + b"\x00" + payload.encode("ascii")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def new_nonce(self, now: float, salt: bytes | None = None) -> str:
        """A nonce issued at ``now``; ``salt`` (8 bytes) defaults to fresh random bytes."""
        salt = secrets.token_bytes(8) if salt is None else salt
        issued = int(now * 1000)
        if len(salt) != 8 or not 0 <= issued < 1 << 48:
            raise ValueError("salt must be 8 bytes and now must be a non-negative time")
        payload = f"{issued:012x}{salt.hex()}"
        return payload + self._mac(payload)

    def challenge(self, now: float, *, stale: bool = False, salt: bytes | None = None) -> list[str]:
        """One challenge value per algorithm, preferred first (RFC 8760 §2.3), sharing a nonce."""
        nonce = self.new_nonce(now, salt)
        return [
            format_challenge(
                Challenge("Digest", self.realm, nonce, algorithm=a, qop=("auth",), stale=stale)
            )
            for a in self.algorithms
        ]

    def _issued_ms(self, nonce: str) -> int | None:
        if len(nonce) != _NONCE_LEN or not all(c in _LHEX for c in nonce):
            return None
        payload, mac = nonce[:28], nonce[28:]
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        return int(payload[:12], 16)

    def verify(
        self,
        value: str,
        *,
        method: str,
        now: float,
        lookup_password: PasswordLookup | None = None,
        lookup_ha1: Ha1Lookup | None = None,
    ) -> AuthResult:
        """Check one ``Authorization`` / ``Proxy-Authorization`` value for a ``method`` request.

        Give exactly one of ``lookup_password`` and ``lookup_ha1``. A malformed value raises
        ParseError (answer 400); everything else gives an :class:`AuthResult`. Credentials for
        another realm give ``ok=False`` (pick the value whose realm is ours when there are
        several). Comparing ``uri`` with the Request-URI is left to the caller.
        """
        if (lookup_password is None) == (lookup_ha1 is None):
            raise TypeError("give exactly one of lookup_password and lookup_ha1")
        creds = parse_credentials(value)
        user = creds.username

        def fail(reason: str, *, stale: bool = False) -> AuthResult:
            return AuthResult(ok=False, username=user, stale=stale, reason=reason)

        if creds.realm != self.realm:
            return fail("realm mismatch")
        if creds.algorithm not in self.algorithms:
            return fail("algorithm not offered")
        if creds.qop is None and self.require_qop:
            return fail("qop required")
        if creds.qop is not None and creds.qop.lower() != "auth":
            return fail("qop not offered")
        base = creds.algorithm.removesuffix("-sess")
        if lookup_password is not None:
            password = lookup_password(user, creds.realm)
            ha1 = None if password is None else compute_ha1(base, user, creds.realm, password)
        else:
            assert lookup_ha1 is not None
            ha1 = lookup_ha1(user, creds.realm, base)
        if ha1 is None:
            return fail("unknown user")
        expected = compute_response(
            creds.algorithm,
            ha1.lower(),
            nonce=creds.nonce,
            method=method,
            uri=creds.uri,
            qop=creds.qop,
            cnonce=creds.cnonce,
            nc=creds.nc,
        )
        if not hmac.compare_digest(expected.encode(), _bytes(creds.response.lower())):
            return fail("bad response")
        # The digest is right, so whatever is wrong with the nonce is answered stale: the client
        # knows the password and only needs a fresh nonce. Stale never grants access.
        issued = self._issued_ms(creds.nonce)
        if issued is None:
            return fail("nonce not issued here", stale=True)
        now_ms = int(now * 1000)
        if now_ms - issued > self.nonce_ttl * 1000:
            return fail("nonce expired", stale=True)
        if issued - now_ms > self._skew_ms:
            return fail("nonce issued in the future", stale=True)
        if creds.nc is not None:
            return self._count(creds.nonce, issued, int(creds.nc, 16), now_ms, user)
        return AuthResult(ok=True, username=user)

    def _count(self, nonce: str, issued: int, nc: int, now_ms: int, user: str) -> AuthResult:
        self._prune(now_ms)
        entry = self._seen.get(nonce)
        if entry is None and issued <= self._floor_ms:
            return AuthResult(ok=False, username=user, stale=True, reason="nonce forgotten")
        if entry is not None and nc <= entry[1]:
            return AuthResult(ok=False, username=user, reason="nonce count replayed")
        self._seen[nonce] = (issued, nc)
        while len(self._seen) > self._max:
            oldest = next(iter(self._seen))
            self._floor_ms = max(self._floor_ms, self._seen.pop(oldest)[0])
        return AuthResult(ok=True, username=user)

    def _prune(self, now_ms: int) -> None:
        """Forget expired nonces, at most every quarter TTL (their expiry protects them)."""
        if now_ms < self._next_prune_ms:
            return
        ttl_ms = self.nonce_ttl * 1000
        self._seen = {n: e for n, e in self._seen.items() if now_ms - e[0] <= ttl_ms}
        self._next_prune_ms = now_ms + int(ttl_ms / 4)

    @property
    def tracked(self) -> int:
        """How many nonces the replay table holds (bounded by ``max_tracked``)."""
        return len(self._seen)
