"""The configuration's typed model: constants, :class:`Config` and its parts, address helpers."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from telephony import __version__
from telephony.sip.uri import URI

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Latch = Literal["any", "sdp-host", "off"]
SipTransport = Literal["udp", "tcp"]

TRANSPORTS: tuple[SipTransport, ...] = ("udp", "tcp")
LATCHES: tuple[Latch, ...] = ("any", "sdp-host", "off")
HoldAudio = Literal["tone", "silence"]
HOLD_AUDIO: tuple[HoldAudio, ...] = ("tone", "silence")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
REDIS_SCHEMES = ("redis", "rediss", "unix")

_SECTIONS = "sip http media trunks positions registrar rules probe drain redis records logging dtmf"
TOP_KEYS: tuple[str, ...] = tuple(_SECTIONS.split(" "))
SIP_KEYS = ("listen", "advertise", "user_agent", "t1", "t2", "t4", "max_forwards", "ring_timeout")
HTTP_KEYS = ("host", "port", "tokens", "tokens_env")
MEDIA_KEYS = ("host", "port_min", "port_max", "latch", "hold_audio", "keep_open")
TRUNK_KEYS = ("allow", "psap_id", "transfer_numbers", "triage_header")
POSITION_KEYS = ("uri", "numbers", "transport", "accept_multipart", "share_location", "auth")
AUTH_KEYS = ("username", "password", "password_env")
REGISTRAR_KEYS = (
    "realm",
    "min_expires",
    "max_expires",
    "default_expires",
    "max_contacts",
    "qualify_interval",
    "qualify_timeout",
    "nonce_ttl",
    "algorithms",
    "require_qop",
    "store",
)
PROBE_KEYS = ("interval", "timeout", "down_after", "up_after")
RECORDS_KEYS = (
    "key_prefix",
    "store_caller_number",
    "store_location",
    "hash_key_env",
    "retention_days",
    "stream_maxlen",
    "queue_size",
    "spool",
    "answer_interval",
)
SPOOL_KEYS = ("dir", "fsync", "max_bytes")
DTMF_KEYS = ("warm", "consult", "cold", "complete", "cancel", "digit_timeout")
#: the feature-code actions, in DTMF_KEYS order
DTMF_ACTIONS = ("warm", "consult", "cold", "complete", "cancel")
FSYNC_POLICIES = ("always", "batch", "never")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEY_PREFIX = re.compile(r"[!-~]{1,64}\Z")

#: trunk, position and PSAP names: they end up as the user part of SIP URIs
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
NAME_HINT = "use letters, digits, '-', '_', '.' (starting with a letter or digit)"
#: a dialled number: digits, optionally a leading '+', and '*' / '#' (quote those in YAML)
NUMBER = re.compile(r"\+?[0-9*#]+\Z")
_TOKEN_CHARS = re.compile(r"[!-~]+\Z")  # visible ASCII, no spaces
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]+\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?\Z")
_HOSTPORT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]+)\Z")
_MEDIA_PAIRS_MIN = 3  # caller, dispatcher and 988 legs of one call with a transfer
_NULL = "tag:yaml.org,2002:null"
DEFAULT_TRANSFER_NUMBERS = ("988",)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ConfigError(Exception):
    """The configuration is not valid; ``problems`` lists every ``file:line: message`` found."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


# ------------------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Listen:
    """One SIP socket: ``transport`` on ``host`` (an IP literal, IPv6 without brackets):``port``."""

    transport: SipTransport
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{_join_hostport(self.host, self.port)}"


_DEFAULT_LISTEN = (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))


@dataclass(frozen=True, slots=True)
class SipConfig:
    listen: tuple[Listen, ...] = _DEFAULT_LISTEN
    #: host written in Via / Contact / SDP o= and c= (None: the listen socket's own host)
    advertise: str | None = None
    user_agent: str = f"handoffd/{__version__}"
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    max_forwards: int = 70
    #: how long a dispatcher position may ring before the caller gets 480
    ring_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: the union of the file's ``tokens`` and the tokens in the ``tokens_env`` variable
    tokens: frozenset[str] = frozenset()
    tokens_env: str = "HANDOFF_API_TOKENS"


@dataclass(frozen=True, slots=True)
class MediaConfig:
    host: str = "127.0.0.1"
    port_min: int = 20000  # even
    port_max: int = 29999  # inclusive
    latch: Latch = "any"
    #: what a caller on consult hold hears: a comfort tone (so a caller in crisis knows the
    #: line is alive) or silence
    hold_audio: HoldAudio = "tone"
    #: socket pairs of ended calls kept bound for the next calls (0: close them; the default:
    #: all), capped at the range and a quarter of the open-file limit (telephony/media/kept.py)
    keep_open: int = 65535


@dataclass(frozen=True, slots=True)
class Trunk:
    """A PSAP-side trunk: calls are accepted from the source addresses in ``allow``."""

    name: str
    allow: tuple[Network, ...]
    psap_id: str
    transfer_numbers: tuple[str, ...] = DEFAULT_TRANSFER_NUMBERS
    triage_header: str = "X-Triage-Level"

    def allows(self, host: str) -> bool:
        """Whether the source address ``host`` (an IP literal; ``[v6]`` and IPv4-mapped IPv6
        accepted) is in the allow list. Anything that is not an IP address is not allowed."""
        addr = _ip(host)
        return addr is not None and any(addr in net for net in self.allow)


@dataclass(frozen=True, slots=True)
class PositionAuth:
    """Digest credentials a position's softphone registers with (docs/registrar.md)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Position:
    """A dispatcher position, selected by a Request-URI user equal to its name or a number.

    Calls go to the contact its softphone registered (when ``auth`` is set and a live
    registration exists), else to ``uri``; a position with neither is unavailable."""

    name: str
    uri: URI | None
    numbers: tuple[str, ...] = ()
    transport: SipTransport = "udp"
    accept_multipart: bool = False
    share_location: bool = True
    auth: PositionAuth | None = None


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    """The registrar positions' softphones REGISTER with (docs/registrar.md). Expiry values are
    whole seconds; ``qualify_interval`` 0 turns OPTIONS qualify off."""

    realm: str = "handoffd"
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 600
    max_contacts: int = 4
    qualify_interval: float = 30.0
    qualify_timeout: float = 5.0
    nonce_ttl: float = 300.0
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    #: refuse the RFC 2069 digest without qop (replayable until the nonce expires)
    require_qop: bool = True
    #: keep the bindings in Redis so a restart does not lose them (telephony/registrations.py)
    store: bool = True


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """OPTIONS probing of the 988 destinations; ``interval`` 0 turns probing off."""

    interval: float = 10.0
    timeout: float = 2.0
    down_after: int = 2
    up_after: int = 1


@dataclass(frozen=True, slots=True)
class RecordsConfig:
    """Transfer records in Redis and the local spool (docs/records.md)."""

    #: keys and the stream all start with this (several daemons may share one Redis)
    key_prefix: str = "handoff:"
    #: PHI: store the caller's number / location in clear; otherwise a keyed hash (or nothing)
    store_caller_number: bool = False
    store_location: bool = False
    #: environment variable holding the key for the caller-number hash (HMAC-SHA256)
    hash_key_env: str = "HANDOFF_RECORDS_HASH_KEY"
    #: how long call, transfer and event-id keys live in Redis
    retention_days: float = 400.0
    #: approximate length cap of the event stream (XADD MAXLEN ~)
    stream_maxlen: int = 1_000_000
    #: events waiting in memory for Redis before they go to the spool
    queue_size: int = 10_000
    #: the durable spool used while Redis is down or slow
    spool_dir: Path = Path("var/spool")
    spool_fsync: Literal["always", "batch", "never"] = "batch"
    spool_max_bytes: int = 256 * 1024 * 1024
    #: the KPI interval: a transfer "within interval" reached destination answer this fast
    answer_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class DtmfConfig:
    """Feature codes the dispatcher keys on the phone (RFC 4733 telephone-events on the
    dispatcher's leg). An empty code turns that feature off; codes are prefix-free."""

    warm: str = "*8"
    consult: str = "*7"
    cold: str = "*9"
    complete: str = "*0"
    cancel: str = "#"
    #: seconds between two digits of one code before the digits so far are dropped
    digit_timeout: float = 3.0

    def codes(self) -> dict[str, str]:
        """code -> action, the features that are on."""
        return {code: action for action in DTMF_ACTIONS if (code := getattr(self, action))}


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    sip: SipConfig = field(default_factory=SipConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    trunks: Mapping[str, Trunk] = field(default_factory=lambda: MappingProxyType({}))
    positions: Mapping[str, Position] = field(default_factory=lambda: MappingProxyType({}))
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    rules: Path = Path("routing_rules")
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    drain_timeout: float = 30.0
    retry_after: int = 30
    redis_url: str = DEFAULT_REDIS_URL
    records: RecordsConfig = field(default_factory=RecordsConfig)
    log_level: str = "info"
    log_phi: bool = False
    dtmf: DtmfConfig = field(default_factory=DtmfConfig)

    def trunk_for(self, host: str) -> Trunk | None:
        """The first trunk (in file order) whose allow list holds the source address ``host``."""
        for trunk in self.trunks.values():
            if trunk.allows(host):
                return trunk
        return None

    def position_for(self, user: str) -> Position | None:
        """The position a Request-URI user selects: its name or one of its numbers."""
        found = self.positions.get(user)
        if found is not None:
            return found
        for position in self.positions.values():
            if user in position.numbers:
                return position
        return None


# ------------------------------------------------------------------------------------- addresses


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP literal (``[v6]`` accepted, IPv4-mapped IPv6 unmapped), or None."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def _overlap(a: str, b: str) -> bool:
    return a == b or _wildcard(a) or _wildcard(b)


def split_hostport(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"[V6]:PORT"`` to ``(host, port)``: the host an IP literal (IPv6 given
    back without brackets), the port 0..65535. :class:`ValueError` says what is wrong (without
    repeating ``text``)."""
    m = _HOSTPORT.match(text.strip())
    if m is None:
        raise ValueError("not HOST:PORT (e.g. 127.0.0.1:5060 or [::1]:5060)")
    v6, host = m.group("v6"), m.group("host")
    try:
        addr = ipaddress.IPv6Address(v6) if v6 is not None else ipaddress.IPv4Address(host)
    except ValueError:
        shown = f"[{v6}]" if v6 is not None else host
        raise ValueError(f"{shown!r} is not an IP address") from None
    port = int(m.group("port"))
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0 to 65535)")
    return str(addr), port


def check_redis_url(text: str) -> str:
    """``text`` (stripped) when it is a ``redis://``, ``rediss://`` or ``unix://`` URL."""
    parts = urlsplit(text.strip())
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"{text!r} is not a redis://, rediss:// or unix:// URL")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{text!r} names no host (e.g. redis://127.0.0.1:6379/0)")
    try:
        _ = parts.port  # ValueError when the port is not a number or out of range
    except ValueError:
        raise ValueError(f"{text!r} has a bad port") from None
    return text.strip()
