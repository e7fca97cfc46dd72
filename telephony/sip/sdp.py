"""SDP (RFC 4566) parsing and serialization, plus the offer/answer helpers a B2BUA needs (RFC 3264).

Sans-IO: bytes in, typed values out, bytes back. Malformed input raises :class:`ParseError`
(status 400; a layer above may answer 488 instead) and nothing else.

Model: every type is a **frozen** dataclass holding tuples, so descriptions compare by value, can
be hashed and can be shared between legs without copying. Edits never mutate: the helpers
(:func:`rewrite_connection`, :func:`set_media_port`, :func:`set_direction`,
:func:`increment_version`, :func:`replace_media`) and :func:`dataclasses.replace` return new
objects.

Parsing is liberal: CRLF or bare LF, trailing blanks and empty lines are ignored, a missing
``s=`` becomes ``s=-`` and a missing ``t=`` becomes ``t=0 0``. Serialization is strict: CRLF,
RFC 4566 line order. Lines and attributes the model has no field for are kept, in order, so
``parse_sdp(sd.to_bytes()) == sd`` for every parsed ``sd``. Within a section, lines that RFC 4566
puts before ``c=`` (``i u e p`` at session level, ``i`` in media) are grouped ahead of it and all
other lines (``b t r z k``, unknown letters) after it, keeping their relative order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, TypeVar

from telephony.sip.errors import ParseError, SipError

CONTENT_TYPE = "application/sdp"  # Content-Type of an SDP body

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
_DIRECTION_OF: dict[str, Direction] = {
    "sendrecv": "sendrecv",
    "sendonly": "sendonly",
    "recvonly": "recvonly",
    "inactive": "inactive",
}
_ANSWER: dict[Direction, Direction] = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}

# RFC 3551 §6 static payload types: pt/encoding/clock rate/channels.
_STATIC_PT_TABLE = """
    0/PCMU/8000/1 3/GSM/8000/1 4/G723/8000/1 5/DVI4/8000/1 6/DVI4/16000/1 7/LPC/8000/1
    8/PCMA/8000/1 9/G722/8000/1 10/L16/44100/2 11/L16/44100/1 12/QCELP/8000/1 13/CN/8000/1
    14/MPA/90000/1 15/G728/8000/1 16/DVI4/11025/1 17/DVI4/22050/1 18/G729/8000/1
    25/CelB/90000/1 26/JPEG/90000/1 28/nv/90000/1 31/H261/90000/1 32/MPV/90000/1
    33/MP2T/90000/1 34/H263/90000/1
"""
_STATIC_PT: dict[int, tuple[str, int, int]] = {
    int(pt): (name, int(rate), int(ch))
    for pt, name, rate, ch in (entry.split("/") for entry in _STATIC_PT_TABLE.split())
}

_SESSION_BEFORE_C = frozenset("iuep")  # RFC 4566 §5 order: v o s i u e p c b t r z k a m
_MEDIA_BEFORE_C = frozenset("i")  # media order: m i c b k a
_MAX_DIGITS = 40  # bounds int() work on hostile input; 64-bit values need 20


@dataclass(frozen=True, slots=True)
class Connection:
    """A ``c=`` line. ``address`` is kept verbatim (multicast ``/ttl/count`` suffixes included)."""

    net_type: str
    addr_type: str
    address: str

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """``IN IP6`` when ``address`` contains ``:``, else ``IN IP4``."""
        _check_token(address, "address")
        return cls("IN", "IP6" if ":" in address else "IP4", address)

    def __str__(self) -> str:
        return f"{self.net_type} {self.addr_type} {self.address}"


@dataclass(frozen=True, slots=True)
class Origin:
    """The ``o=`` line. ``session_version`` is what a re-offer must bump (RFC 3264 §8)."""

    username: str
    session_id: str
    session_version: int
    net_type: str
    addr_type: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.net_type} {self.addr_type} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Attribute:
    """An ``a=`` line: ``a=name`` (``value is None``) or ``a=name:value`` (value may be empty)."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True, slots=True)
class Line:
    """Any other line (``i= b= t= r= z= k=`` or an unknown letter), kept verbatim."""

    letter: str
    value: str


@dataclass(frozen=True, slots=True)
class Codec:
    """One RTP payload format of a media description, resolved from rtpmap/fmtp or RFC 3551."""

    payload_type: int
    encoding_name: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None


class _Attributed:
    """Attribute look-ups shared by session and media descriptions."""

    __slots__ = ()
    attributes: tuple[Attribute, ...]

    def attribute_values(self, name: str) -> list[str | None]:
        """Values of every ``a=name`` in order (``None`` for a flag attribute)."""
        return [a.value for a in self.attributes if a.name == name]

    def has_attribute(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)


def _ordered(lines: tuple[Line, ...], before_c: frozenset[str]) -> tuple[Line, ...]:
    if len(lines) < 2:  # the usual case (a session's t=, a media section's nothing)
        return lines
    head = tuple(ln for ln in lines if ln.letter in before_c)
    return head + tuple(ln for ln in lines if ln.letter not in before_c)


@dataclass(frozen=True, slots=True)
class MediaDescription(_Attributed):
    """An ``m=`` section. ``formats`` are payload type numbers as strings for RTP profiles."""

    media_type: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int = 1
    connection: Connection | None = None
    lines: tuple[Line, ...] = ()
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", _ordered(self.lines, _MEDIA_BEFORE_C))

    @property
    def is_rejected(self) -> bool:
        """Port 0: the stream is rejected or disabled (RFC 3264 §6, §8.2)."""
        return self.port == 0

    @property
    def is_rtp(self) -> bool:
        return "RTP" in self.proto.split("/")

    def _emit(self, out: list[str]) -> None:
        port = str(self.port) if self.port_count == 1 else f"{self.port}/{self.port_count}"
        _emit(out, "m", " ".join((self.media_type, port, self.proto, *self.formats)))
        _emit_section(out, self.lines, _MEDIA_BEFORE_C, self.connection, self.attributes)


@dataclass(frozen=True, slots=True)
class SessionDescription(_Attributed):
    """A whole SDP body. ``v=0`` is implied; ``lines`` holds ``t=`` and friends."""

    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    lines: tuple[Line, ...] = (Line("t", "0 0"),)
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", _ordered(self.lines, _SESSION_BEFORE_C))

    def to_bytes(self) -> bytes:
        """Serialize with CRLF line endings (UTF-8). Raises :class:`SipError` on injected CR/LF."""
        out = ["v=0"]
        _emit(out, "o", str(self.origin))
        _emit(out, "s", self.session_name or " ")  # RFC 4566 §5.3: one space if no name
        _emit_section(out, self.lines, _SESSION_BEFORE_C, self.connection, self.attributes)
        for m in self.media:
            m._emit(out)
        out.append("")
        return "\r\n".join(out).encode("utf-8")

    def __bytes__(self) -> bytes:
        return self.to_bytes()


def _emit(out: list[str], letter: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise SipError(f"refusing to emit {letter}= line with CR, LF or NUL", 500, "local")
    out.append(f"{letter}={value}")


def _emit_section(
    out: list[str],
    lines: tuple[Line, ...],
    before_c: frozenset[str],
    connection: Connection | None,
    attributes: tuple[Attribute, ...],
) -> None:
    split = sum(1 for ln in lines if ln.letter in before_c)  # lines are already grouped
    for ln in lines[:split]:
        _emit(out, ln.letter, ln.value)
    if connection is not None:
        _emit(out, "c", str(connection))
    for ln in lines[split:]:
        _emit(out, ln.letter, ln.value)
    for a in attributes:
        _emit(out, "a", str(a))


# --------------------------------------------------------------------------------------- parsing


def _fields(value: str) -> list[str]:
    return [f for f in value.replace("\t", " ").split(" ") if f]


def _uint(text: str, what: str, maximum: int | None = None) -> int:
    if not text or len(text) > _MAX_DIGITS or not (text.isascii() and text.isdigit()):
        raise ParseError(f"SDP: bad {what}")
    n = int(text)
    if maximum is not None and n > maximum:
        raise ParseError(f"SDP: {what} out of range")
    return n


def _check_token(text: str, what: str) -> None:
    if not text or any(c.isspace() or c == "\x00" for c in text):
        raise SipError(f"SDP: invalid {what}", 500, "local")


def _parse_origin(value: str) -> Origin:
    f = _fields(value)
    if len(f) < 6:
        raise ParseError("SDP: o= needs 6 fields")
    version = _uint(f[-4], "o= session version")
    return Origin(" ".join(f[:-5]), f[-5], version, f[-3], f[-2], f[-1])


def _parse_connection(value: str) -> Connection:
    f = _fields(value)
    if len(f) != 3:
        raise ParseError("SDP: c= needs 3 fields")
    return Connection(f[0], f[1], f[2])


def _parse_attribute(value: str) -> Attribute:
    name, sep, rest = value.partition(":")
    if not name:
        raise ParseError("SDP: empty attribute name")
    return Attribute(name, rest if sep else None)


def _parse_media(value: str) -> tuple[str, int, str, tuple[str, ...], int]:
    """The fields of an ``m=`` line: media, port, proto, formats, port count."""
    f = value.split(" ")
    if "\t" in value or not all(f):
        f = _fields(value)
    if len(f) < 3:
        raise ParseError("SDP: m= needs media, port and proto")
    media_type, port_spec, proto, formats = f[0], f[1], f[2], tuple(f[3:])
    port_text, sep, count_text = port_spec.partition("/")
    port = _uint(port_text, "m= port", 65535)
    count = _uint(count_text, "m= port count", 65535) if sep else 1
    if count < 1:
        raise ParseError("SDP: m= port count must be at least 1")
    if not formats and port != 0:
        raise ParseError("SDP: m= without formats")
    if "RTP" in proto.split("/"):
        for fmt in formats:
            if not (fmt.isdigit() and fmt.isascii() and len(fmt) <= 3 and int(fmt) <= 127):
                _uint(fmt, "RTP payload type in m=", 127)  # raises with the precise reason
    return media_type, port, proto, formats, count


def _split_lines(text: str) -> list[tuple[str, str]]:
    # a CR inside a line needs a CR that is not followed by LF: check lines only then
    check = "\x00" in text or text.count("\r") != text.count("\r\n")
    entries: list[tuple[str, str]] = []
    append = entries.append
    for raw in text.split("\n"):
        line = raw.rstrip("\r \t")
        if not line:
            continue
        if check and ("\r" in line or "\x00" in line):
            raise ParseError("SDP: stray CR or NUL in line")
        letter = line[0]
        if line[1:2] != "=":
            raise ParseError("SDP: line is not <type>=<value>")
        if not ("a" <= letter <= "z"):
            raise ParseError("SDP: line type must be a lowercase letter")
        append((letter, line[2:]))
    return entries


def _decode(data: bytes | bytearray | memoryview | str) -> str:
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            raise ParseError("SDP: text is not encodable as UTF-8") from None
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("SDP: body is not UTF-8") from None


class _Section:
    """Mutable accumulator for one section while parsing."""

    __slots__ = ("attributes", "connection", "lines")

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.lines: list[Line] = []
        self.attributes: list[Attribute] = []

    def add(self, letter: str, value: str) -> None:
        if letter == "a":
            self.attributes.append(_parse_attribute(value))
        elif letter == "c":
            if self.connection is not None:
                raise ParseError("SDP: more than one c= in a section")
            self.connection = _parse_connection(value)
        else:
            self.lines.append(Line(letter, value))


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body. Raises :class:`ParseError` (status 400) on anything malformed."""
    entries = _split_lines(_decode(data))
    if not entries or entries[0] != ("v", "0"):
        raise ParseError("SDP: must start with v=0")
    origin: Origin | None = None
    session_name: str | None = None
    section = session = _Section()
    media: list[tuple[tuple[str, int, str, tuple[str, ...], int], _Section]] = []
    for letter, value in entries[1:]:
        if letter == "a":  # most lines: straight to the current section
            section.attributes.append(_parse_attribute(value))
        elif letter == "m":
            section = _Section()
            media.append((_parse_media(value), section))
        elif letter in "vos" and media:
            raise ParseError(f"SDP: {letter}= inside a media section")
        elif letter == "v":
            raise ParseError("SDP: duplicate v=")
        elif letter == "o":
            if origin is not None:
                raise ParseError("SDP: duplicate o=")
            origin = _parse_origin(value)
        elif letter == "s":
            if session_name is not None:
                raise ParseError("SDP: duplicate s=")
            session_name = value
        else:
            section.add(letter, value)
    if origin is None:
        raise ParseError("SDP: missing o=")
    lines = session.lines
    if not any(ln.letter == "t" for ln in lines):  # lenient: RFC 4566 requires t=
        at = next((i for i, ln in enumerate(lines) if ln.letter not in "iuepb"), len(lines))
        lines.insert(at, Line("t", "0 0"))
    built = tuple(
        MediaDescription(
            mtype, port, proto, formats, count, s.connection, tuple(s.lines), tuple(s.attributes)
        )
        for (mtype, port, proto, formats, count), s in media
    )
    if session.connection is None and any(m.connection is None and m.port for m in built):
        raise ParseError("SDP: no c= at session level or in an active m= section")
    return SessionDescription(
        origin,
        "-" if session_name is None else session_name,
        session.connection,
        tuple(lines),
        tuple(session.attributes),
        built,
    )


# --------------------------------------------------------------------------- offer/answer helpers

_D = TypeVar("_D", MediaDescription, SessionDescription)


def _own_direction(target: MediaDescription | SessionDescription) -> Direction | None:
    for a in target.attributes:
        if a.value is None and a.name in _DIRECTION_OF:
            return _DIRECTION_OF[a.name]
    return None


def direction(
    target: MediaDescription | SessionDescription, session: SessionDescription | None = None
) -> Direction:
    """Effective direction: media-level attribute, else ``session``'s, else ``sendrecv``."""
    own = _own_direction(target)
    if own is None and session is not None:
        own = _own_direction(session)
    return own or "sendrecv"


def set_direction(target: _D, new: Direction) -> _D:
    """Replace the direction attribute (in place of the first one, else appended)."""
    attrs: list[Attribute] = []
    placed = False
    for a in target.attributes:
        if a.value is None and a.name in _DIRECTION_OF:
            if not placed:
                attrs.append(Attribute(new))
                placed = True
        else:
            attrs.append(a)
    if not placed:
        attrs.append(Attribute(new))
    return dataclasses.replace(target, attributes=tuple(attrs))


def answer_direction(offer: Direction) -> Direction:
    """RFC 3264 §6.1: the answer's direction for an offered one (sendrecv answered sendrecv)."""
    return _ANSWER[offer]


def is_hold(media: MediaDescription, session: SessionDescription | None = None) -> bool:
    """On hold: direction sendonly/inactive, or RFC 2543-style ``c=IN IP4 0.0.0.0``."""
    if direction(media, session) in ("sendonly", "inactive"):
        return True
    conn = media.connection or (session.connection if session is not None else None)
    return conn is not None and conn.address == "0.0.0.0"


def rtcp_port(media: MediaDescription) -> int:
    """RTCP port from ``a=rtcp`` (RFC 3605), else the RTP port + 1 (RFC 3550 §11).

    ``a=rtcp-mux`` is not considered: whether it applies depends on the answer.
    """
    for value in media.attribute_values("rtcp"):
        f = _fields(value or "")
        return _uint(f[0] if f else "", "a=rtcp port", 65535)
    return media.port + 1


def codecs(media: MediaDescription) -> list[Codec]:
    """Payload formats in ``m=`` order. Static types resolve without rtpmap (RFC 3551);
    a dynamic type without rtpmap is skipped. Non-RTP media has no codecs."""
    if not media.is_rtp:
        return []
    rtpmap: dict[int, str] = {}
    fmtp: dict[int, str] = {}
    for a in media.attributes:
        if a.name in ("rtpmap", "fmtp") and a.value is not None:
            pt_text, _, rest = a.value.strip().partition(" ")
            if pt_text.isascii() and pt_text.isdigit() and len(pt_text) <= 3:
                table = rtpmap if a.name == "rtpmap" else fmtp
                table.setdefault(int(pt_text), rest.strip())  # unusable entries are ignored
    result: list[Codec] = []
    for fmt in media.formats:
        pt = _uint(fmt, "RTP payload type", 127)
        if pt in rtpmap:
            parts = rtpmap[pt].split("/")
            if len(parts) not in (2, 3) or not parts[0]:
                raise ParseError("SDP: bad a=rtpmap")
            rate = _uint(parts[1], "a=rtpmap clock rate")
            channels = _uint(parts[2], "a=rtpmap channels") if len(parts) == 3 else 1
            result.append(Codec(pt, parts[0], rate, channels, fmtp.get(pt)))
        elif pt in _STATIC_PT:
            name, rate, channels = _STATIC_PT[pt]
            result.append(Codec(pt, name, rate, channels, fmtp.get(pt)))
    return result


def increment_version(sd: SessionDescription) -> SessionDescription:
    """Bump ``o=`` sess-version by one, as every changed re-offer must (RFC 3264 §8)."""
    origin = dataclasses.replace(sd.origin, session_version=sd.origin.session_version + 1)
    return dataclasses.replace(sd, origin=origin)


def replace_media(
    sd: SessionDescription, index: int, media: MediaDescription
) -> SessionDescription:
    """Return ``sd`` with ``sd.media[index]`` replaced. Raises ``IndexError`` if out of range."""
    items = list(sd.media)
    items[index] = media
    return dataclasses.replace(sd, media=tuple(items))


def set_media_port(
    sd: SessionDescription, index: int, port: int, rtcp: int | None = None
) -> SessionDescription:
    """Set the ``m=`` port of one stream. Any ``a=rtcp`` described the old endpoint, so it is
    dropped, or replaced by ``a=rtcp:<rtcp>`` when ``rtcp`` is given. Re-enabling a rejected
    stream that has no formats or no ``c=`` raises :class:`SipError` (it would not be valid SDP)."""
    for value in (port, rtcp):
        if value is not None and not 0 <= value <= 65535:
            raise SipError("SDP: port out of range", 500, "local")
    media = sd.media[index]
    if port and (not media.formats or (media.connection or sd.connection) is None):
        raise SipError("SDP: cannot enable a stream without formats or c=", 500, "local")
    attrs = [a for a in media.attributes if a.name != "rtcp"]
    if rtcp is not None:
        attrs.append(Attribute("rtcp", str(rtcp)))
    return replace_media(sd, index, dataclasses.replace(media, port=port, attributes=tuple(attrs)))


def rewrite_connection(
    sd: SessionDescription, address: str, *, preserve_hold: bool = True
) -> SessionDescription:
    """Point every ``c=``, the ``o=`` address and any ``a=rtcp`` address at ``address`` (IP4 or
    IP6 chosen from it). With ``preserve_hold``, ``c=... 0.0.0.0`` (old-style hold) is kept."""
    new = Connection.for_address(address)

    def conn(old: Connection | None) -> Connection | None:
        if old is None or (preserve_hold and old.address == "0.0.0.0"):
            return old
        return new

    def attr(a: Attribute) -> Attribute:
        f = _fields(a.value or "")
        if a.name != "rtcp" or len(f) < 4:
            return a
        return Attribute("rtcp", " ".join((f[0], new.net_type, new.addr_type, address, *f[4:])))

    media = tuple(
        dataclasses.replace(
            m, connection=conn(m.connection), attributes=tuple(attr(a) for a in m.attributes)
        )
        for m in sd.media
    )
    origin = dataclasses.replace(
        sd.origin, net_type=new.net_type, addr_type=new.addr_type, address=address
    )
    return dataclasses.replace(sd, origin=origin, connection=conn(sd.connection), media=media)
