"""Validating destinations and metadata policies (part of the loader).

A destination is checked once where it is written (shared under ``destinations:`` or inline in a
chain) into a :class:`DestSpec`; each rule that uses it then turns it into a
:class:`~telephony.routing.model.Destination` with the effective metadata policy: the defaults, the
keys the rule's ``metadata`` block sets, and the keys the destination's own block sets. A key set
in both places to different values is an error rather than a precedence rule to remember.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import yaml

from telephony.routing.model import (
    DEFAULT_RING_TIMEOUT,
    TRANSPORTS,
    Destination,
    MetadataPolicy,
    Transport,
)
from telephony.routing.yamlnodes import FileProblems
from telephony.sip.errors import ParseError
from telephony.sip.uri import parse_uri

DESTINATION_KEYS = ("uri", "ring_timeout", "transport", "metadata")
INLINE_DESTINATION_KEYS = ("name", *DESTINATION_KEYS)
METADATA_KEYS = ("share_location", "forward_uui", "x_header_allowlist", "accept_multipart")
MIN_RING_TIMEOUT = 1.0
MAX_RING_TIMEOUT = 120.0
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
NAME_HINT = "use letters, digits, '-', '_', '.' (starting with a letter or digit)"
_X_HEADER = re.compile(r"[Xx]-[A-Za-z0-9!#$%&'*+.^_`|~\-]+\Z")

PolicyValue = bool | frozenset[str]


@dataclass(frozen=True, slots=True)
class PartialPolicy:
    """The metadata keys one place (a rule or a destination) sets."""

    values: dict[str, PolicyValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DestSpec:
    """A validated destination as written; ``where`` is its ``file:line``."""

    name: str | None
    where: str
    uri_text: str
    ring_timeout: float
    transport: Transport
    policy: PartialPolicy


def resolve_policy(parts: Iterable[PartialPolicy]) -> MetadataPolicy:
    merged: dict[str, PolicyValue] = {}
    for part in parts:
        merged.update(part.values)
    allow = merged.get("x_header_allowlist", frozenset())
    return MetadataPolicy(
        share_location=bool(merged.get("share_location", False)),
        forward_uui=bool(merged.get("forward_uui", True)),
        x_header_allowlist=cast(frozenset[str], allow),
        accept_multipart=bool(merged.get("accept_multipart", False)),
    )


def _show(value: PolicyValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "[" + ", ".join(sorted(value)) + "]"


def parse_destination(
    p: FileProblems, node: yaml.Node, what: str, name: str | None, *, at: yaml.Node
) -> DestSpec | None:
    """Check a destination mapping; ``None`` after reporting when anything is wrong.

    A shared destination (``name`` given, ``at`` its key) cannot carry a ``name`` key; an inline
    one (``name`` None, ``at`` the chain entry) may.
    """
    inline = name is None
    before = p.count()
    keys = INLINE_DESTINATION_KEYS if inline else DESTINATION_KEYS
    m = p.mapping(node, what, keys, required=("uri",))
    if m is None or "uri" not in m:
        return None
    if "name" in m:
        name = p.text(m["name"][1], f"{what}.name")
        if name is not None and not NAME.match(name):
            p.add(m["name"][1], f"{what}.name {name!r}: {NAME_HINT}")
    ring = DEFAULT_RING_TIMEOUT
    if "ring_timeout" in m:
        ring_node = m["ring_timeout"][1]
        value = p.number(ring_node, f"{what}.ring_timeout")
        if value is not None and not MIN_RING_TIMEOUT <= value <= MAX_RING_TIMEOUT:
            p.add(
                ring_node,
                f"{what}.ring_timeout: {value:g} s is outside "
                f"{MIN_RING_TIMEOUT:g} to {MAX_RING_TIMEOUT:g} s",
            )
        ring = DEFAULT_RING_TIMEOUT if value is None else value
    transport: Transport | None = None
    transport_node = m["transport"][1] if "transport" in m else None
    if transport_node is not None:
        t = p.text(transport_node, f"{what}.transport")
        if t is not None and t.lower() in TRANSPORTS:
            transport = cast(Transport, t.lower())
        elif t is not None:
            p.add(transport_node, f"{what}.transport: {t!r} is not udp, tcp or tls")
    policy = PartialPolicy()
    if "metadata" in m:
        policy = parse_policy(p, m["metadata"][1], f"{what}.metadata") or policy
    uri_node = m["uri"][1]
    uri_text = p.text(uri_node, f"{what}.uri")
    if uri_text is None:
        return None
    effective = _check_uri(
        p, what, uri_node, uri_text.strip(), transport=transport, transport_node=transport_node
    )
    if effective is None or p.count() > before:
        return None
    return DestSpec(name, p.where(at), uri_text.strip(), ring, effective, policy)


def _check_uri(
    p: FileProblems,
    what: str,
    node: yaml.Node,
    text: str,
    *,
    transport: Transport | None,
    transport_node: yaml.Node | None,
) -> Transport | None:
    """Validate the URI; return the effective transport (the key's, the URI's, or udp)."""
    try:
        uri = parse_uri(text)
    except ParseError as exc:
        p.add(node, f"{what}.uri: {text!r} is not a valid SIP URI ({exc.reason})")
        return None
    if not uri.is_sip or not uri.host:
        p.add(node, f"{what}.uri: {text!r} must be a sip: or sips: URI with a host")
        return None
    if uri.password is not None or uri.headers:
        p.add(node, f"{what}.uri: {text!r}: no password or URI headers (?...) allowed here")
        return None
    from_uri = uri.transport
    if transport is None:
        if from_uri not in TRANSPORTS:
            p.add(node, f"{what}.uri: transport={from_uri} is not udp, tcp or tls")
            return None
        return from_uri
    tnode = transport_node or node
    if uri.has_param("transport") and from_uri != transport:
        p.add(tnode, f"{what}.transport: {transport} contradicts the URI's transport={from_uri}")
        return None
    if uri.scheme == "sips" and transport != "tls":
        p.add(tnode, f"{what}.transport: a sips: URI needs tls, not {transport}")
        return None
    return transport


def parse_policy(p: FileProblems, node: yaml.Node, what: str) -> PartialPolicy | None:
    """The keys a ``metadata`` block sets (``None`` when it is not a mapping)."""
    m = p.mapping(node, what, METADATA_KEYS)
    if m is None:
        return None
    values: dict[str, PolicyValue] = {}
    for key, (_, value_node) in m.items():
        value: PolicyValue | None
        if key == "x_header_allowlist":
            value = _x_headers(p, value_node, f"{what}.{key}")
        else:
            value = p.boolean(value_node, f"{what}.{key}")
        if value is not None:
            values[key] = value
    return PartialPolicy(values)


def _x_headers(p: FileProblems, node: yaml.Node, what: str) -> frozenset[str] | None:
    if isinstance(node, yaml.SequenceNode) and not node.value:
        return frozenset()  # an explicit empty allowlist: forward no X- header
    items = p.items(node, what, allow_single=False)
    if items is None:
        return None
    names: set[str] = set()
    for item in items:
        text = p.text(item, what)
        if text is None:
            continue
        if not _X_HEADER.match(text):
            p.add(item, f"{what}: {text!r} is not an X- header name (e.g. X-Incident-Priority)")
            continue
        names.add(text.lower())
    return frozenset(names)


def merge_policy(
    p: FileProblems, item: yaml.Node, what: str, rule_policy: PartialPolicy, spec: DestSpec
) -> MetadataPolicy | None:
    """The effective policy of ``spec`` used by a rule; reports a key the two set differently."""
    for key, value in spec.policy.values.items():
        if key in rule_policy.values and rule_policy.values[key] != value:
            label = spec.name or spec.uri_text
            p.add(
                item,
                f"{what}: metadata.{key} is {_show(rule_policy.values[key])} in the rule but "
                f"{_show(value)} for destination {label!r} ({spec.where}); set it in one place",
            )
            return None
    return resolve_policy([rule_policy, spec.policy])


def build_destination(spec: DestSpec, policy: MetadataPolicy) -> Destination:
    return Destination(
        uri=parse_uri(spec.uri_text),
        ring_timeout=spec.ring_timeout,
        transport=spec.transport,
        name=spec.name,
        metadata=policy,
    )
