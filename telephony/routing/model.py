"""The typed, immutable shapes of routing: the call being routed, destinations, policies, rules.

Everything here is a frozen dataclass built once by the loader (``telephony.routing.loader``) and
shared read-only by every call; nothing is mutated after loading, so a reload simply swaps one
:class:`RuleSet` for another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from telephony.routing.timewindow import TimeWindow
from telephony.sip.uri import URI

Mode = Literal["cold", "warm", "consult"]
Transport = Literal["udp", "tcp", "tls"]
FallbackAction = Literal["return_to_dispatcher", "chain"]

MODES: tuple[Mode, ...] = ("cold", "warm", "consult")
TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls")
TRIAGE_LEVELS = (1, 2, 3)
DEFAULT_RING_TIMEOUT = 15.0

# Characters a dial string may carry besides digits; removed before comparing numbers.
_VISUAL_SEPARATORS = str.maketrans("", "", " -.()\t")
_DIALABLE = frozenset("0123456789+*#")


def normalize_number(text: str) -> str:
    """``text`` without visual separators (space, ``-``, ``.``, parentheses).

    Only ASCII digits, ``+``, ``*`` and ``#`` are dialable; a string holding anything else is
    returned separator-free but otherwise unchanged, so it simply matches no number rule.
    """
    return text.translate(_VISUAL_SEPARATORS)


def is_dialable(text: str) -> bool:
    return bool(text) and all(c in _DIALABLE for c in text)


def nanp_area_code(number: str) -> str | None:
    """The NANP area code of a caller number (``+1NPA...``, ``1NPA...`` or ``NPA...``), if any.

    Returns ``None`` for numbers outside the North American Numbering Plan or of the wrong length.
    """
    n = normalize_number(number)
    if not is_dialable(n):
        return None
    if n.startswith("+"):
        digits = n[1:]
        if len(digits) != 11 or not digits.startswith("1"):
            return None
        npa = digits[1:4]
    elif len(n) == 11 and n.startswith("1"):
        npa = n[1:4]
    elif len(n) == 10:
        npa = n[:3]
    else:
        return None
    return npa if npa.isascii() and npa.isdigit() and npa[0] in "23456789" else None


_LANG_RANGE = re.compile(
    r"\s*([A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*"
)


def language_from_accept_language(value: str) -> str | None:
    """The caller's preferred language from an Accept-Language header value (RFC 9110 §12.5.4).

    The tag with the highest q-value wins (the first one on a tie); ``*``, ``q=0`` and malformed
    entries are ignored. Returns the tag lower-cased, or ``None`` when nothing usable is there.
    """
    best: tuple[float, str] | None = None
    for item in value.split(","):
        m = _LANG_RANGE.fullmatch(item)
        if m is None or m.group(1) == "*":
            continue
        try:
            q = float(m.group(2)) if m.group(2) is not None else 1.0
        except ValueError:
            continue
        if not 0.0 < q <= 1.0:
            continue
        if best is None or q > best[0]:
            best = (q, m.group(1).lower())
    return best[1] if best else None


@dataclass(frozen=True, slots=True)
class CallDescription:
    """What the matcher knows about a call: everything is optional.

    - ``trunk``: the PSAP-side trunk (name from config) the call came in on; it names the PSAP.
    - ``called``: the number the transfer is for (Request-URI user part, Refer-To user, or the
      API's destination), e.g. ``"988"``.
    - ``caller``: the 911 caller's number (P-Asserted-Identity or From), e.g. ``"+18055550123"``.
    - ``triage``: the dispatcher's triage level (1, 2 or 3, from the API field or the configured
      SIP header); ``None`` when not given.
    - ``language``: the caller's preferred language tag (e.g. ``"es"`` or ``"es-MX"``; see
      :func:`language_from_accept_language`).

    No value is validated: an odd value simply matches no rule that tests it.
    """

    trunk: str | None = None
    called: str | None = None
    caller: str | None = None
    triage: int | None = None
    language: str | None = None

    def describe(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("trunk", self.trunk),
                ("called", self.called),
                ("caller", self.caller),
                ("triage", self.triage),
                ("language", self.language),
            )
            if value is not None
        ]
        return " ".join(parts) if parts else "(nothing known)"


@dataclass(frozen=True, slots=True)
class MetadataPolicy:
    """What the outgoing leg to a destination may carry besides the always-preserved identity.

    ``share_location``: forward Geolocation and the PIDF-LO body (default off: 988 routing works
    without precise caller location). ``forward_uui``: forward User-to-User (RFC 7433).
    ``x_header_allowlist``: the X- headers forwarded, lower-cased. ``accept_multipart``: the target
    can take a multipart/mixed body (else it gets SDP only).
    """

    share_location: bool = False
    forward_uui: bool = True
    x_header_allowlist: frozenset[str] = frozenset()
    accept_multipart: bool = False

    def allows_x_header(self, name: str) -> bool:
        return name.lower() in self.x_header_allowlist

    def describe(self) -> str:
        allow = ", ".join(sorted(self.x_header_allowlist)) or "none"
        return (
            f"share_location={_yn(self.share_location)} forward_uui={_yn(self.forward_uui)} "
            f"accept_multipart={_yn(self.accept_multipart)} x_headers={allow}"
        )


def _yn(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True, slots=True)
class Destination:
    """One step of a destination chain: where to send the call and how long to let it ring.

    ``metadata`` is the effective policy for this destination (defaults, then the rule's
    ``metadata`` block, then the destination's own).
    """

    uri: URI
    ring_timeout: float = DEFAULT_RING_TIMEOUT
    transport: Transport = "udp"
    name: str | None = None
    metadata: MetadataPolicy = field(default_factory=MetadataPolicy)

    @property
    def label(self) -> str:
        return self.name if self.name is not None else str(self.uri)

    def describe(self) -> str:
        named = f"{self.name} " if self.name is not None else ""
        return f"{named}{self.uri} ({self.transport}, ring {self.ring_timeout:g} s)"


@dataclass(frozen=True, slots=True)
class Fallback:
    """What happens when every destination of the chain failed.

    ``return_to_dispatcher`` (the default) reconnects the caller to the dispatcher. ``chain`` tries
    ``chain`` next; when that fails too the caller is returned to the dispatcher anyway: a 911
    caller is never left on a dead leg, so there is no fallback that ends the call.
    """

    action: FallbackAction = "return_to_dispatcher"
    chain: tuple[Destination, ...] = ()

    def describe(self) -> str:
        if self.action == "return_to_dispatcher":
            return "return to dispatcher"
        steps = " -> ".join(d.describe() for d in self.chain)
        return f"try {steps}, then return to dispatcher"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a call: the outcome of a rule match.

    ``mode`` is the default transfer mode (a trigger may ask for another). ``dispatcher_stays``
    (warm only) keeps the dispatcher in the conference after the counselor answers (triage level 3
    co-response). ``chain`` is tried in order; ``fallback`` applies when all of it failed.
    ``metadata`` is the rule-level policy; each destination carries its effective one.
    """

    rule: str
    source: str
    mode: Mode
    chain: tuple[Destination, ...]
    dispatcher_stays: bool = False
    metadata: MetadataPolicy = field(default_factory=MetadataPolicy)
    fallback: Fallback = field(default_factory=Fallback)


@dataclass(frozen=True, slots=True)
class Conditions:
    """A rule's ``match`` block. ``None`` means "not tested"; within one condition any listed value
    may match (OR), and every tested condition must match (AND). No condition: a catch-all."""

    trunks: tuple[str, ...] | None = None
    called: tuple[str, ...] | None = None
    called_patterns: tuple[re.Pattern[str], ...] | None = None
    caller_prefixes: tuple[str, ...] | None = None
    area_codes: tuple[str, ...] | None = None
    triage: tuple[int, ...] | None = None
    languages: tuple[str, ...] | None = None
    time: tuple[TimeWindow, ...] | None = None

    @property
    def names_called(self) -> bool:
        """The rule tests the called number (so it allows transfers to the numbers it names)."""
        return self.called is not None or self.called_patterns is not None

    @property
    def is_catch_all(self) -> bool:
        return all(
            v is None
            for v in (
                self.trunks,
                self.called,
                self.called_patterns,
                self.caller_prefixes,
                self.area_codes,
                self.triage,
                self.languages,
                self.time,
            )
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """One routing rule: conditions and the decision they lead to. ``source`` is ``file:line``."""

    name: str
    source: str
    conditions: Conditions
    decision: Decision
    description: str = ""
