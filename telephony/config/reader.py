"""Reading ``handoffd.yaml`` as marked YAML nodes into a :class:`Config`, every problem kept."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import yaml

from telephony.config.model import (
    _ENV_NAME,
    _HEADER_NAME,
    _HOSTNAME,
    _KEY_PREFIX,
    _MEDIA_PAIRS_MIN,
    _NULL,
    _TOKEN_CHARS,
    AUTH_KEYS,
    DEFAULT_REDIS_URL,
    DEFAULT_TRANSFER_NUMBERS,
    DTMF_ACTIONS,
    DTMF_KEYS,
    FSYNC_POLICIES,
    HOLD_AUDIO,
    HTTP_KEYS,
    LATCHES,
    LOG_LEVELS,
    MEDIA_KEYS,
    NAME,
    NAME_HINT,
    NUMBER,
    POSITION_KEYS,
    PROBE_KEYS,
    RECORDS_KEYS,
    REGISTRAR_KEYS,
    SIP_KEYS,
    SPOOL_KEYS,
    TOP_KEYS,
    TRANSPORTS,
    TRUNK_KEYS,
    Config,
    DtmfConfig,
    HoldAudio,
    HttpConfig,
    Latch,
    Listen,
    MediaConfig,
    Network,
    Position,
    PositionAuth,
    ProbeConfig,
    RecordsConfig,
    RegistrarConfig,
    SipConfig,
    SipTransport,
    Trunk,
    _ip,
    _overlap,
    _wildcard,
    check_redis_url,
    split_hostport,
)
from telephony.routing.yamlnodes import FileProblems, kind, line_of
from telephony.sip.auth import SUPPORTED_ALGORITHMS
from telephony.sip.errors import ParseError
from telephony.sip.uri import URI, parse_uri

# ------------------------------------------------------------------------------------- reader

Node = yaml.Node
Entries = dict[str, Node]
#: digest usernames and realms: visible ASCII without quotes or backslashes (they are quoted)
_AUTH_TEXT = re.compile(r"[!#-\[\]-~]+\Z")


def _is_null(node: Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


#: a DTMF feature code: up to 8 keys; empty turns the feature off
_DTMF_CODE = re.compile(r"\A[0-9*#A-Da-d]{0,8}\Z")


class _Reader:
    """Reads one config file's node tree into a Config, reporting every problem as it goes.

    Helpers take ``what``, the dotted path of the value (``sip.t1``, ``trunks.psap-a.allow``);
    its last part is the key looked up in the section's entries.
    """

    def __init__(self, name: str, base: Path, env: Mapping[str, str]) -> None:
        self.sink: list[Any] = []  # RuleProblem-s: str() is "file:line: message"
        self.p = FileProblems(name, self.sink)
        self.base = base  # relative paths (rules) are resolved against the file's directory
        self.env = env
        self.trunk_names: list[str] = []
        self.rules: Path | None = None
        self.transfer_numbers: dict[str, tuple[str, int]] = {}  # number -> (trunk, line)
        self.usernames: dict[str, tuple[str, int]] = {}  # digest username -> (position, line)

    def problems(self) -> list[str]:
        """Every problem, in line order (file-wide ones first)."""
        return [str(p) for p in sorted(self.sink, key=lambda p: p.line or 0)]

    # -- helpers -------------------------------------------------------------------------------

    def _map(
        self, node: Node | None, what: str, keys: Sequence[str], required: Sequence[str] = ()
    ) -> Entries:
        """The value nodes of a mapping; an absent or empty optional section has none."""
        if node is None or (_is_null(node) and not required):
            return {}
        found = self.p.mapping(node, what, keys, required)
        return {} if found is None else {k: v for k, (_, v) in found.items()}

    def _num(self, m: Entries, what: str, default: float, low: float, high: float) -> float | None:
        """A number in ``low..high``; a whole number when ``default`` is an int."""
        key = what.rsplit(".", 1)[-1]
        if key not in m:
            return default
        read = self.p.integer if isinstance(default, int) else self.p.number
        value = read(m[key], what)
        if value is not None and not low <= value <= high:
            self.p.add(m[key], f"{what}: {value:g} is out of range ({low:g} to {high:g})")
            return None
        return value

    def _int(self, m: Entries, what: str, default: int, low: int, high: int) -> int | None:
        value = self._num(m, what, default, low, high)
        return None if value is None else int(value)

    def _text(
        self,
        m: Entries,
        what: str,
        default: str,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
    ) -> str | None:
        key = what.rsplit(".", 1)[-1]
        if key not in m:
            return default
        value = self.p.text(m[key], what)
        if value is not None and pattern is not None and not pattern.match(value):
            self.p.add(m[key], f"{what}: {value!r}: {hint}")
            return None
        return value

    def _choice(self, m: Entries, what: str, default: str, choices: Sequence[str]) -> str | None:
        key = what.rsplit(".", 1)[-1]
        value = self.p.text(m[key], what) if key in m else default
        if value is not None and value not in choices:
            self.p.add(m[key], f"{what}: {value!r} is not one of {', '.join(choices)}")
            return None
        return value

    def _bool(self, m: Entries, what: str, default: bool) -> bool:
        key = what.rsplit(".", 1)[-1]
        value = self.p.boolean(m[key], what) if key in m else None
        return default if value is None else value

    def _bind_host(self, m: Entries, what: str, default: str) -> str | None:
        text = self._text(m, what, default)
        addr = None if text is None else _ip(text)
        if text is not None and addr is None:
            self.p.add(m["host"], f"{what}: {text!r} is not an IP address (the address to bind)")
        return None if addr is None else str(addr)

    def _list(self, node: Node, what: str, empty: str | None = None) -> list[Node]:
        """The items of a list (one value counts as a one-item list); ``empty`` is the complaint
        about an empty list (None: an empty list is fine)."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value and empty is not None:
                self.p.add(node, f"{what}: {empty}")
            return list(node.value)
        if isinstance(node, yaml.ScalarNode) and not _is_null(node):
            return [node]
        self.p.add(node, f"{what} must be a list, not {kind(node)}")
        return []

    def _numbers(self, m: Entries, what: str) -> list[tuple[str, Node]] | None:
        """Dialled numbers, read from the source text (``988`` and ``"988"`` are the same);
        None when the key is absent."""
        key = what.rsplit(".", 1)[-1]
        if key not in m:
            return None
        out: list[tuple[str, Node]] = []
        for i, item in enumerate(self._list(m[key], what)):
            text = self.p.text(item, f"{what}[{i}]")
            if text is not None and not NUMBER.match(text):
                self.p.add(item, f"{what}[{i}]: {text!r} is not a number (digits, '+', '*', '#')")
            elif text is not None:
                out.append((text, item))
        return out

    def _named(self, node: Node, what: str) -> Iterable[tuple[str, Node, Node]]:
        """The ``name: settings`` entries of the trunks / positions mapping, names checked."""
        if _is_null(node):
            return
        if not isinstance(node, yaml.MappingNode):
            self.p.add(node, f"{what} must be a mapping of name: settings, not {kind(node)}")
            return
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = self.p.text(key_node, f"{what}: a name")
            if name is not None and not NAME.match(name):
                self.p.add(key_node, f"{what}: name {name!r}: {NAME_HINT}")
            elif name is not None and name in seen:
                self.p.add(
                    key_node, f"{what}: duplicate name {name!r} (first on line {seen[name]})"
                )
            elif name is not None:
                seen[name] = line_of(key_node)
                yield name, key_node, value_node

    # -- the file ------------------------------------------------------------------------------

    def read(self, text: str, source: Path) -> Config | None:
        root = self.p.compose(text)
        if root is None:
            if not self.sink:
                self.p.at_line(None, "empty file: 'trunks' and 'rules' are required")
            return None
        top = self._map(root, "config", TOP_KEYS, required=("trunks", "rules"))
        sip = self._sip(top.get("sip"))
        http = self._http(top.get("http"), root)
        media = self._media(top.get("media"))
        trunks = self._trunks(top["trunks"]) if "trunks" in top else {}
        positions = self._positions(top["positions"]) if "positions" in top else {}
        registrar = self._registrar(top.get("registrar"))
        rules = self._rules(top["rules"]) if "rules" in top else None
        probe = self._probe(top.get("probe"))
        drain = self._map(top.get("drain"), "drain", ("timeout", "retry_after"))
        drain_timeout = self._num(drain, "drain.timeout", 30.0, 0.0, 3600.0)
        retry_after = self._int(drain, "drain.retry_after", 30, 0, 86400)
        redis = self._redis(top.get("redis"))
        records = self._records(top.get("records"))
        log = self._map(top.get("logging"), "logging", ("level", "phi"))
        level = self._choice(log, "logging.level", "info", LOG_LEVELS)
        phi = self._bool(log, "logging.phi", False)
        dtmf = self._dtmf(top.get("dtmf"))
        if sip is not None and http is not None:
            self._clash(sip, http, top)
        if self.sink:
            return None
        assert sip and http and media and rules and probe and redis and records and level
        assert registrar is not None and dtmf is not None
        assert drain_timeout is not None and retry_after is not None
        return Config(
            source=source,
            sip=sip,
            http=http,
            media=media,
            trunks=MappingProxyType(trunks),
            positions=MappingProxyType(positions),
            registrar=registrar,
            rules=rules,
            probe=probe,
            drain_timeout=drain_timeout,
            retry_after=retry_after,
            redis_url=redis,
            records=records,
            log_level=level,
            log_phi=phi,
            dtmf=dtmf,
        )

    def _sip(self, node: Node | None) -> SipConfig | None:
        m = self._map(node, "sip", SIP_KEYS)
        before = len(self.sink)
        d = SipConfig()
        lines = self._listen(m["listen"]) if "listen" in m else dict.fromkeys(d.listen, 0)
        advertise = None
        if "advertise" in m and not _is_null(m["advertise"]):
            advertise = self._advertise(m["advertise"])
        else:
            for ls in (ls for ls, line in lines.items() if _wildcard(ls.host)):
                why = "set sip.advertise to the address peers should use"
                self.p.at_line(lines[ls], f"sip.listen: {ls} is a wildcard address: {why}")
                break
        user_agent = self._text(m, "sip.user_agent", d.user_agent)
        if user_agent is not None and not user_agent.isprintable():
            self.p.add(m["user_agent"], "sip.user_agent must be one line of printable text")
        t1 = self._num(m, "sip.t1", d.t1, 0.01, 60.0)
        t2 = self._num(m, "sip.t2", d.t2, 0.01, 600.0)
        t4 = self._num(m, "sip.t4", d.t4, 0.01, 600.0)
        if t1 is not None and t2 is not None and t2 < t1:
            where = m.get("t2", m.get("t1"))
            self.p.add(where, f"sip.t2 ({t2:g}) must not be shorter than sip.t1 ({t1:g})")
        max_forwards = self._int(m, "sip.max_forwards", d.max_forwards, 1, 255)
        ring = self._num(m, "sip.ring_timeout", d.ring_timeout, 1.0, 600.0)
        if len(self.sink) > before:
            return None
        assert user_agent and t1 and t2 and t4 and max_forwards and ring
        return SipConfig(tuple(lines), advertise, user_agent, t1, t2, t4, max_forwards, ring)

    def _listen(self, node: Node) -> dict[Listen, int]:
        """The listen sockets, each with its line."""
        out: dict[Listen, int] = {}
        for i, item in enumerate(self._list(node, "sip.listen", "list at least one socket")):
            what = f"sip.listen[{i}]"
            text = self.p.text(item, what)
            if text is None:
                continue
            transport, colon, rest = text.partition(":")
            if not colon or transport.lower() not in TRANSPORTS:
                self.p.add(item, f"{what}: {text!r} is not TRANSPORT:HOST:PORT (udp or tcp)")
                continue
            try:
                host, port = split_hostport(rest)
            except ValueError as exc:
                self.p.add(item, f"{what}: {text!r}: {exc}")
                continue
            ls = Listen(cast(SipTransport, transport.lower()), host, port)
            if ls in out:
                self.p.add(item, f"{what}: {text!r} is listed twice (first on line {out[ls]})")
            out.setdefault(ls, line_of(item))
        return out

    def _advertise(self, node: Node) -> str | None:
        text = self.p.text(node, "sip.advertise")
        addr = None if text is None else _ip(text)
        if text is None:
            return None
        if addr is not None and addr.is_unspecified:
            self.p.add(node, f"sip.advertise: {text!r} is not an address peers can reach")
        elif addr is None and not _HOSTNAME.match(text):
            self.p.add(node, f"sip.advertise: {text!r} is not a host name or IP address")
        else:
            return text if addr is None else str(addr)
        return None

    def _http(self, node: Node | None, root: Node) -> HttpConfig | None:
        m = self._map(node, "http", HTTP_KEYS)
        before = len(self.sink)
        d = HttpConfig()
        host = self._bind_host(m, "http.host", d.host)
        port = self._int(m, "http.port", d.port, 0, 65535)
        tokens: set[str] = set()
        for i, item in enumerate(self._list(m["tokens"], "http.tokens") if "tokens" in m else ()):
            token = self.p.text(item, f"http.tokens[{i}]")
            if token is not None and not _TOKEN_CHARS.match(token):
                self.p.add(item, f"http.tokens[{i}]: a token is visible ASCII without spaces")
            elif token is not None:
                tokens.add(token)
        env_name = self._text(m, "http.tokens_env", d.tokens_env)
        for token in (t.strip() for t in self.env.get(env_name or "", "").split(",")):
            if token and not _TOKEN_CHARS.match(token):
                where = m.get("tokens_env", node if node is not None else root)
                message = "tokens are comma-separated visible ASCII without spaces"
                self.p.add(where, f"environment variable {env_name}: {message}")
            elif token:
                tokens.add(token)
        if len(self.sink) > before or host is None or port is None or env_name is None:
            return None
        return HttpConfig(host, port, frozenset(tokens), env_name)

    def _media(self, node: Node | None) -> MediaConfig | None:
        m = self._map(node, "media", MEDIA_KEYS)
        before = len(self.sink)
        d = MediaConfig()
        host = self._bind_host(m, "media.host", d.host)
        if host is not None and _wildcard(host):
            why = "it is written into SDP c= lines: give an address peers can reach"
            self.p.add(m["host"], f"media.host: {host!r}: {why}")
        low = self._int(m, "media.port_min", d.port_min, 1024, 65535)
        high = self._int(m, "media.port_max", d.port_max, 1024, 65535)
        where = m.get("port_max", m.get("port_min"))
        if low is not None and low % 2:
            self.p.add(m["port_min"], f"media.port_min: {low} is odd (RTP takes the even port)")
        elif low is not None and high is not None and high <= low:
            self.p.add(where, f"media.port_max ({high}) must be above media.port_min ({low})")
        elif low is not None and high is not None and (high - low + 1) // 2 < _MEDIA_PAIRS_MIN:
            pairs = (high - low + 1) // 2
            self.p.add(
                where,
                f"media: the port range {low}-{high} holds {pairs} RTP/RTCP pair(s); one call "
                f"with a transfer needs {_MEDIA_PAIRS_MIN}",
            )
        latch = self._choice(m, "media.latch", d.latch, LATCHES)
        hold = self._choice(m, "media.hold_audio", d.hold_audio, HOLD_AUDIO)
        keep = self._int(m, "media.keep_open", d.keep_open, 0, 65535)
        if len(self.sink) > before or host is None or low is None or high is None:
            return None
        if keep is None:
            return None
        return MediaConfig(host, low, high, cast(Latch, latch), cast(HoldAudio, hold), keep)

    def _clash(self, sip: SipConfig, http: HttpConfig, top: Entries) -> None:
        """The HTTP API and a SIP TCP socket on one address would fail to bind. (A SIP UDP port
        inside the RTP range is harmless: the relay skips ports it cannot bind.)"""
        for ls in sip.listen:
            same = ls.port == http.port and _overlap(ls.host, http.host)
            if ls.transport == "tcp" and ls.port and same:
                where = top.get("http", top.get("sip"))
                self.p.add(where, f"http: port {http.port} is also the SIP listen socket {ls}")

    # -- trunks and positions ------------------------------------------------------------------

    def _trunks(self, node: Node) -> dict[str, Trunk]:
        out: dict[str, Trunk] = {}
        for name, key_node, value in self._named(node, "trunks"):
            self.trunk_names.append(name)
            trunk = self._trunk(name, key_node, value)
            if trunk is not None:
                out[name] = trunk
        if _is_null(node) or (isinstance(node, yaml.MappingNode) and not node.value):
            self.p.add(node, "trunks: none defined, so no call would ever be accepted")
        return out

    def _trunk(self, name: str, key_node: Node, node: Node) -> Trunk | None:
        what = f"trunks.{name}"
        m = self._map(node, what, TRUNK_KEYS, required=("allow", "psap_id"))
        if not m:
            return None
        before = len(self.sink)
        allow: list[Network] = []
        empty = "list at least one source network (e.g. 10.1.2.0/24)"
        for i, item in enumerate(
            self._list(m["allow"], f"{what}.allow", empty) if "allow" in m else ()
        ):
            net = self._network(item, f"{what}.allow[{i}]")
            if net is not None:
                allow.append(net)
        psap_id = self._text(m, f"{what}.psap_id", "", NAME, NAME_HINT)
        numbers = self._numbers(m, f"{what}.transfer_numbers")
        if numbers is None:
            numbers = [(n, key_node) for n in DEFAULT_TRANSFER_NUMBERS]
        for number, where in numbers:
            self.transfer_numbers.setdefault(number, (name, line_of(where)))
        header = self._text(
            m, f"{what}.triage_header", "X-Triage-Level", _HEADER_NAME, "not a header name"
        )
        if len(self.sink) > before or not psap_id or not allow or header is None:
            return None
        unique = tuple(dict.fromkeys(n for n, _ in numbers))
        return Trunk(name, tuple(allow), psap_id, unique, header)

    def _network(self, node: Node, what: str) -> Network | None:
        text = self.p.text(node, what)
        if text is None:
            return None
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError:
            pass
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            example = "e.g. 10.1.2.0/24 or 10.1.2.3"
            self.p.add(node, f"{what}: {text!r} is not an IP network ({example})")
        else:
            self.p.add(node, f"{what}: {text!r} has host bits set (did you mean {str(loose)!r}?)")
        return None

    def _positions(self, node: Node) -> dict[str, Position]:
        out: dict[str, Position] = {}
        selects: dict[str, tuple[str, int]] = {}  # name or number -> (position, line)
        for name, key_node, value in self._named(node, "positions"):
            self._select(name, key_node, f"positions.{name}", name, selects)
            position = self._position(name, value, selects)
            if position is not None:
                out[name] = position
        return out

    def _select(
        self, user: str, node: Node, what: str, owner: str, selects: dict[str, tuple[str, int]]
    ) -> bool:
        """Claim the Request-URI user ``user`` for position ``owner``; False on a collision."""
        if user in selects:
            other, line = selects[user]
            self.p.add(node, f"{what}: {user!r} already selects position {other!r} (line {line})")
            return False
        if user in self.transfer_numbers:
            trunk, line = self.transfer_numbers[user]
            self.p.add(
                node,
                f"{what}: {user!r} is a transfer number of trunk {trunk!r} (line {line}): calls "
                "to it go to 988, never to this position",
            )
            return False
        selects[user] = (owner, line_of(node))
        return True

    def _position(
        self, name: str, node: Node, selects: dict[str, tuple[str, int]]
    ) -> Position | None:
        what = f"positions.{name}"
        m = self._map(node, what, POSITION_KEYS)
        if "uri" not in m and "auth" not in m:
            why = "give uri (where calls go), auth (so its softphone can register), or both"
            self.p.add(node, f"{what}: {why}")
            return None
        before = len(self.sink)
        uri = self._uri(m["uri"], f"{what}.uri") if "uri" in m else None
        numbers = [
            number
            for number, item in self._numbers(m, f"{what}.numbers") or ()
            if self._select(number, item, f"{what}.numbers", name, selects)
        ]
        transport = uri.transport if uri is not None else "udp"
        if "transport" in m:
            chosen = self._choice(m, f"{what}.transport", transport, TRANSPORTS)
            if (
                chosen is not None
                and uri is not None
                and uri.has_param("transport")
                and chosen != transport
            ):
                said = f"the URI says ;transport={transport}"
                self.p.add(m["transport"], f"{what}.transport: {chosen!r}, but {said}")
            transport = chosen or transport
        elif transport not in TRANSPORTS:
            self.p.add(m["uri"], f"{what}.uri: transport {transport!r} is not supported (udp, tcp)")
        multipart = self._bool(m, f"{what}.accept_multipart", False)
        location = self._bool(m, f"{what}.share_location", True)
        auth = self._auth(name, m["auth"]) if "auth" in m else None
        if len(self.sink) > before or (uri is None and auth is None):
            return None
        return Position(
            name, uri, tuple(numbers), cast(SipTransport, transport), multipart, location, auth
        )

    def _auth(self, name: str, node: Node) -> PositionAuth | None:
        """``positions.NAME.auth``: a username (default: the position's name) and exactly one of
        ``password`` and ``password_env`` (the variable must be set when the file is read)."""
        what = f"positions.{name}.auth"
        m = self._map(node, what, AUTH_KEYS)
        if not m and not _is_null(node) and not isinstance(node, yaml.MappingNode):
            return None  # reported: not a mapping
        hint = "visible ASCII without spaces, quotes or backslashes"
        user = self._text(m, f"{what}.username", name, _AUTH_TEXT, hint)
        if user is not None and user in self.usernames:
            other, line = self.usernames[user]
            where = m.get("username", node)
            self.p.add(
                where,
                f"{what}.username: {user!r} is position {other!r}'s username too (line {line})",
            )
        elif user is not None:
            self.usernames[user] = (name, line_of(m.get("username", node)))
        if ("password" in m) == ("password_env" in m):
            self.p.add(node, f"{what}: give exactly one of password_env and password")
            return None
        if "password" in m:
            password = self.p.text(m["password"], f"{what}.password")
        else:
            env = self._text(
                m, f"{what}.password_env", "", _ENV_NAME, "an environment variable name"
            )
            password = self.env.get(env or "") or None
            if env and password is None:
                self.p.add(m["password_env"], f"{what}.password_env: {env} is not set (or empty)")
        return None if user is None or password is None else PositionAuth(user, password)

    def _uri(self, node: Node, what: str) -> URI | None:
        text = self.p.text(node, what)
        if text is None:
            return None
        try:
            uri = parse_uri(text.strip())
        except ParseError as exc:
            self.p.add(node, f"{what}: {text!r} is not a valid URI ({exc.reason})")
            return None
        if uri.scheme == "sips":
            self.p.add(
                node, f"{what}: {text!r}: sips: needs TLS, which handoffd does not speak yet"
            )
        elif uri.scheme != "sip":
            self.p.add(node, f"{what}: {text!r} is not a sip: URI")
        elif uri.password is not None or uri.headers:
            self.p.add(node, f"{what}: {text!r}: no password or '?' headers in a position URI")
        else:
            return uri
        return None

    def _registrar(self, node: Node | None) -> RegistrarConfig | None:
        m = self._map(node, "registrar", REGISTRAR_KEYS)
        d = RegistrarConfig()
        before = len(self.sink)
        hint = "visible ASCII without quotes or backslashes"
        realm = self._text(m, "registrar.realm", d.realm, _AUTH_TEXT, hint)
        low = self._int(m, "registrar.min_expires", d.min_expires, 1, 86400)
        high = self._int(m, "registrar.max_expires", d.max_expires, 1, 604800)
        default = self._int(m, "registrar.default_expires", d.default_expires, 1, 604800)
        contacts = self._int(m, "registrar.max_contacts", d.max_contacts, 1, 100)
        interval = self._num(m, "registrar.qualify_interval", d.qualify_interval, 0.0, 3600.0)
        timeout = self._num(m, "registrar.qualify_timeout", d.qualify_timeout, 0.05, 60.0)
        ttl = self._num(m, "registrar.nonce_ttl", d.nonce_ttl, 1.0, 86400.0)
        algorithms: list[str] = []
        node_alg = m.get("algorithms")
        for i, item in enumerate(
            self._list(node_alg, "registrar.algorithms", "list one") if node_alg else ()
        ):
            text = self.p.text(item, f"registrar.algorithms[{i}]")
            if text is not None and text not in SUPPORTED_ALGORITHMS:
                choices = ", ".join(SUPPORTED_ALGORITHMS)
                self.p.add(item, f"registrar.algorithms[{i}]: {text!r} is not one of {choices}")
            elif text is not None and text not in algorithms:
                algorithms.append(text)
        if len(self.sink) > before:
            return None
        assert realm and low and high and default and contacts and ttl
        assert interval is not None and timeout is not None
        where = m.get("default_expires", m.get("max_expires", m.get("min_expires")))
        if not low <= default <= high:
            msg = "registrar: min_expires <= default_expires <= max_expires does not hold"
            self.p.add(where, f"{msg} ({low}, {default}, {high})")
            return None
        if interval and timeout >= interval:
            self.p.add(
                m.get("qualify_timeout", m.get("qualify_interval")),
                f"registrar.qualify_timeout ({timeout:g}) must be shorter than "
                f"registrar.qualify_interval ({interval:g}); an interval of 0 turns qualify off",
            )
            return None
        alg = tuple(algorithms) or d.algorithms
        qop = self._bool(m, "registrar.require_qop", d.require_qop)
        store = self._bool(m, "registrar.store", d.store)
        return RegistrarConfig(
            realm, low, high, default, contacts, interval, timeout, ttl, alg, qop, store
        )

    # -- the rest ------------------------------------------------------------------------------

    def _rules(self, node: Node) -> Path | None:
        text = self.p.text(node, "rules")
        if text is None:
            return None
        path = (self.base / Path(text).expanduser()).resolve()
        if not path.is_dir():
            state = "is not a directory" if path.exists() else "does not exist"
            self.p.add(node, f"rules: the rule directory {text!r} {state} ({path})")
            return None
        self.rules = path
        return path

    def _dtmf(self, node: Node | None) -> DtmfConfig | None:
        m = self._map(node, "dtmf", DTMF_KEYS)
        d = DtmfConfig()
        codes: dict[str, str] = {}
        for action in DTMF_ACTIONS:
            code = self._text(
                m, f"dtmf.{action}", getattr(d, action), _DTMF_CODE, "use up to 8 of 0-9 * # A-D"
            )
            if code is not None:
                codes[action] = code.upper()
        timeout = self._num(m, "dtmf.digit_timeout", d.digit_timeout, 0.5, 30.0)
        if timeout is None or len(codes) < len(DTMF_ACTIONS):
            return None
        on = {a: c for a, c in codes.items() if c}
        for a, code in on.items():
            for b, other in on.items():
                if a != b and other.startswith(code):
                    self.p.add(
                        m.get(b, m.get(a, node)),
                        f"dtmf.{b}: {other!r} starts with dtmf.{a} {code!r}: "
                        "feature codes must not be prefixes of each other",
                    )
                    return None
        return DtmfConfig(**codes, digit_timeout=timeout)

    def _probe(self, node: Node | None) -> ProbeConfig | None:
        m = self._map(node, "probe", PROBE_KEYS)
        d = ProbeConfig()
        interval = self._num(m, "probe.interval", d.interval, 0.0, 3600.0)
        timeout = self._num(m, "probe.timeout", d.timeout, 0.05, 60.0)
        down = self._int(m, "probe.down_after", d.down_after, 1, 100)
        up = self._int(m, "probe.up_after", d.up_after, 1, 100)
        if interval is None or timeout is None or down is None or up is None:
            return None
        if interval and timeout >= interval:
            self.p.add(
                m.get("timeout", m.get("interval")),
                f"probe.timeout ({timeout:g}) must be shorter than probe.interval ({interval:g}); "
                "an interval of 0 turns probing off",
            )
            return None
        return ProbeConfig(interval, timeout, down, up)

    def _records(self, node: Node | None) -> RecordsConfig | None:
        m = self._map(node, "records", RECORDS_KEYS)
        spool = self._map(m.get("spool"), "records.spool", SPOOL_KEYS)
        d = RecordsConfig()
        before = len(self.sink)
        prefix = self._text(
            m, "records.key_prefix", d.key_prefix, _KEY_PREFIX, "1 to 64 visible characters"
        )
        env = self._text(
            m, "records.hash_key_env", d.hash_key_env, _ENV_NAME, "an environment variable name"
        )
        retention = self._num(m, "records.retention_days", d.retention_days, 1.0, 36500.0)
        maxlen = self._int(m, "records.stream_maxlen", d.stream_maxlen, 1000, 10**9)
        queue = self._int(m, "records.queue_size", d.queue_size, 10, 10**7)
        interval = self._num(m, "records.answer_interval", d.answer_interval, 1.0, 3600.0)
        spool_dir = self._text(spool, "records.spool.dir", str(d.spool_dir))
        fsync = self._choice(spool, "records.spool.fsync", d.spool_fsync, FSYNC_POLICIES)
        cap = self._int(spool, "records.spool.max_bytes", d.spool_max_bytes, 4096, 10**12)
        store_number = self._bool(m, "records.store_caller_number", d.store_caller_number)
        store_location = self._bool(m, "records.store_location", d.store_location)
        if len(self.sink) > before:
            return None
        assert prefix and env and retention and maxlen and queue and interval and cap
        assert spool_dir is not None and fsync is not None
        return RecordsConfig(
            key_prefix=prefix,
            store_caller_number=store_number,
            store_location=store_location,
            hash_key_env=env,
            retention_days=retention,
            stream_maxlen=maxlen,
            queue_size=queue,
            spool_dir=(self.base / Path(spool_dir).expanduser()).resolve(),
            spool_fsync=cast(Any, fsync),
            spool_max_bytes=cap,
            answer_interval=interval,
        )

    def _redis(self, node: Node | None) -> str | None:
        m = self._map(node, "redis", ("url",))
        text = self._text(m, "redis.url", DEFAULT_REDIS_URL)
        try:
            return None if text is None else check_redis_url(text)
        except ValueError as exc:
            self.p.add(m["url"], f"redis.url: {exc}")
            return None
