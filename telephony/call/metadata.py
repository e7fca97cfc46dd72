"""Call metadata: what we keep from the 911 caller's INVITE, and what each new leg may carry.

Pure functions the B2BUA calls (see docs/metadata.md for the table of what goes where):

- :func:`capture` reads the caller's INVITE once into a :class:`CallMetadata` (kept with the call
  for every later leg and for the records). It never raises: a malformed optional header value
  is skipped, and the rest is kept.
- :func:`outbound_headers` and :func:`outbound_body` build the metadata part of the INVITE to a
  dispatcher position or a 988 destination under that destination's :class:`MetadataPolicy`.
- :func:`sdp_of` finds the SDP of a plain or ``multipart/*`` body.

Never forwarded, whatever the policy: Resource-Priority values of the ``esnet`` namespace (they
claim emergency-network priority, which the 988 network does not grant), and internal headers
(``X-Handoff-*``). ``cid:`` references (Geolocation, Call-Info) are forwarded only when the part
they name travels in the same body; by-reference URIs (``https:``, ``sip:``) need no body.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from telephony.call.multipart import BodyPart, build_multipart, media_type, parse_multipart
from telephony.routing.model import MetadataPolicy
from telephony.sip.errors import ParseError
from telephony.sip.headers import NameAddr, is_token, parse_name_addr, parse_param_value, split_list
from telephony.sip.message import Request
from telephony.sip.uri import URI, unescape

SDP = "application/sdp"
INTERNAL_PREFIX = "x-handoff-"
STRIPPED_RP_NAMESPACES = frozenset({"esnet"})
# Call-Info purposes kept (RFC 7852 / NENA i3): compared case-insensitively
_KEPT_PURPOSES = frozenset({"emergency-callid", "emergency-incidentid"})
_ECD_PREFIX = "emergencycalldata."
_INDEX = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,31}\Z")
_MAX_NESTING = 4


@dataclass(frozen=True, slots=True)
class CallMetadata:
    """Everything we keep from the 911 caller's INVITE, for later legs and for the records.

    - ``identity``: the first readable P-Asserted-Identity, else the From address without its tag,
      written as a name-addr (``"911 Caller" <sip:+18055550123@psap.example.net>``).
    - ``caller_number``: the user part of that identity's URI (the tel number or the SIP user,
      %-escapes decoded, user parameters after ``;`` dropped), for routing and records.
    - ``emergency_call_id`` / ``incident_id``: the URI inside ``<>`` of the first Call-Info with
      purpose ``emergency-CallId`` / ``emergency-IncidentId`` (``urn:emergency:uid:callid:...``).
    - ``call_info``: raw Call-Info values whose purpose is emergency-CallId, emergency-IncidentId
      or ``EmergencyCallData.*`` (RFC 7852), one element each, in order.
    - ``user_to_user``: raw User-to-User values (RFC 7433), one element each.
    - ``x_headers``: every ``X-`` header as ``(name as sent, value)``, in order (internal ones
      included: they are kept for the records, never forwarded).
    - ``geolocation``: the Geolocation values (RFC 6442, each ``<uri>...``), then the
      Geolocation-Routing value(s) (a token such as ``yes``). The two are told apart by the
      leading ``<``: see :func:`geolocation_values` and :func:`geolocation_routing`.
    - ``location_parts``: the non-SDP parts of a multipart body (PIDF-LO and any other by-value
      data such as EmergencyCallData blocks), unchanged, nested multiparts flattened.
    - ``history_info``: raw History-Info entries received (RFC 7044), in order.
    - ``resource_priority``: raw Resource-Priority values (RFC 4412), every namespace.
    - ``language``: the Accept-Language value as sent (lines joined with ``, ``).
    - ``triage_header``: the value of the trunk's configured triage header (set by the caller of
      :func:`capture`).
    """

    identity: str | None
    caller_number: str | None
    emergency_call_id: str | None
    incident_id: str | None
    call_info: tuple[str, ...]
    user_to_user: tuple[str, ...]
    x_headers: tuple[tuple[str, str], ...]
    geolocation: tuple[str, ...]
    location_parts: tuple[BodyPart, ...]
    history_info: tuple[str, ...]
    resource_priority: tuple[str, ...]
    language: str | None
    triage_header: str | None = None


# -- capture ----------------------------------------------------------------------------------


def capture(invite: Request, *, triage_header: str | None = None) -> CallMetadata:
    """Read the metadata of the caller's INVITE. Never raises for a malformed optional header or
    body: what cannot be read is skipped, what can is returned."""
    identity, number = _identity(invite)
    call_info, call_id, incident_id = _call_info(invite)
    lang = (v.strip() for v in invite.headers.get_all("accept-language"))
    return CallMetadata(
        identity=identity,
        caller_number=number,
        emergency_call_id=call_id,
        incident_id=incident_id,
        call_info=call_info,
        user_to_user=_elements(invite, "user-to-user", _check_param_value),
        x_headers=tuple(
            (name, value) for name, value in invite.headers if name.lower().startswith("x-")
        ),
        geolocation=(
            _elements(invite, "geolocation", _check_geolocation)
            + _elements(invite, "geolocation-routing", _check_token)
        ),
        location_parts=_location_parts(invite),
        history_info=_elements(invite, "history-info", parse_name_addr),
        resource_priority=_elements(invite, "resource-priority", _check_token),
        language=", ".join(filter(None, lang)) or None,
        triage_header=triage_header,
    )


def _elements(invite: Request, name: str, check: Callable[[str], object]) -> tuple[str, ...]:
    """Raw elements of header ``name`` (comma lists split), each accepted by ``check``; a line
    that cannot be split, or an element ``check`` refuses, is skipped."""
    out: list[str] = []
    for line in invite.headers.get_all(name):
        try:
            items = split_list(line)
        except ParseError:
            continue
        for item in items:
            try:
                check(item)
            except ParseError:
                continue
            out.append(item)
    return tuple(out)


def _check_param_value(value: str) -> None:
    parse_param_value(value)


def _check_geolocation(value: str) -> None:
    # locationValue = LAQUOT locationURI RAQUOT *(SEMI geoloc-param) (RFC 6442 §4.1); the "<"
    # also tells these apart from Geolocation-Routing tokens in CallMetadata.geolocation
    if not value.startswith("<"):
        raise ParseError("Geolocation value without <uri>")
    parse_name_addr(value)


def _check_token(value: str) -> None:
    # Resource-Priority (namespace.priority) and Geolocation-Routing values are tokens
    if not is_token(value):
        raise ParseError("not a token")


def _identity(invite: Request) -> tuple[str | None, str | None]:
    candidates = list(_elements(invite, "p-asserted-identity", parse_name_addr))
    candidates += invite.headers.get_all("from")[:1]
    for text in candidates:
        try:
            na = parse_name_addr(text)
        except ParseError:
            continue
        na = na._replace(params=tuple((k, v) for k, v in na.params if k != "tag"))
        return str(na), _user_of(na.uri)
    return None, None


def _user_of(uri: URI) -> str | None:
    if uri.scheme not in ("sip", "sips", "tel") or not uri.user:
        return None
    return unescape(uri.user.partition(";")[0]) or None


def _purpose(na: NameAddr) -> str:
    return (na.param("purpose") or "").lower()


def _call_info(invite: Request) -> tuple[tuple[str, ...], str | None, str | None]:
    kept: list[str] = []
    call_id: str | None = None
    incident_id: str | None = None
    for text in _elements(invite, "call-info", parse_name_addr):
        na = parse_name_addr(text)  # cannot fail: _elements checked it
        purpose = _purpose(na)
        if purpose == "emergency-callid" and call_id is None:
            call_id = str(na.uri)
        elif purpose == "emergency-incidentid" and incident_id is None:
            incident_id = str(na.uri)
        if purpose in _KEPT_PURPOSES or purpose.startswith(_ECD_PREFIX):
            kept.append(text)
    return tuple(kept), call_id, incident_id


def _location_parts(invite: Request) -> tuple[BodyPart, ...]:
    ctype = invite.headers.get("content-type")
    if not invite.body or ctype is None or not (media_type(ctype) or "").startswith("multipart/"):
        return ()
    try:
        return tuple(p for p in _leaves(invite.body, ctype, 0) if p.content_type != SDP)
    except ParseError:
        return ()


def _leaves(body: bytes, content_type: str, depth: int) -> list[BodyPart]:
    """The non-multipart parts of a multipart body, nested multiparts flattened (depth-limited),
    read liberally (``strict=False``): an unreadable part is skipped, not fatal to the call."""
    out: list[BodyPart] = []
    for part in parse_multipart(body, content_type, strict=False):
        inner = part.header("content-type")
        if part.content_type.startswith("multipart/") and inner and depth < _MAX_NESTING:
            try:
                out.extend(_leaves(part.body, inner, depth + 1))
            except ParseError:
                continue  # an unreadable nested multipart is skipped like any unreadable part
        else:
            out.append(part)
    return out


def sdp_of(body: bytes, content_type: str | None) -> bytes | None:
    """The SDP of a body: the body itself when it is ``application/sdp`` (or untyped), the first
    ``application/sdp`` part of a ``multipart/*`` body (nested multiparts searched too), else
    ``None``. Raises :class:`ParseError` (400) for an unreadable Content-Type or a multipart body
    whose boundary is missing or never occurs; other damage is read around (an unreadable part is
    skipped, a missing close delimiter tolerated), so a broken location part cannot cost a 911
    caller the call."""
    if not body:
        return None
    if content_type is None:
        return body
    mtype = media_type(content_type)
    if mtype is None:
        raise ParseError("bad Content-Type")
    if mtype == SDP:
        return body
    if not mtype.startswith("multipart/"):
        return None
    for part in _leaves(body, content_type, 0):
        if part.content_type == SDP:
            return part.body
    return None


# -- what a new leg carries -------------------------------------------------------------------


def geolocation_values(meta: CallMetadata) -> tuple[str, ...]:
    """The Geolocation values of ``meta.geolocation`` (those written ``<uri>...``)."""
    return tuple(v for v in meta.geolocation if v.startswith("<"))


def geolocation_routing(meta: CallMetadata) -> tuple[str, ...]:
    """The Geolocation-Routing values of ``meta.geolocation`` (tokens such as ``yes``)."""
    return tuple(v for v in meta.geolocation if not v.startswith("<"))


def carries_location_body(meta: CallMetadata, policy: MetadataPolicy) -> bool:
    """True when the new leg's body is multipart: SDP plus ``meta.location_parts``."""
    return policy.share_location and policy.accept_multipart and bool(meta.location_parts)


def _carried_cids(meta: CallMetadata, policy: MetadataPolicy) -> frozenset[str]:
    if not carries_location_body(meta, policy):
        return frozenset()
    return frozenset(cid for p in meta.location_parts if (cid := p.content_id) is not None)


def _reference_ok(text: str, cids: frozenset[str]) -> bool:
    """A Geolocation or Call-Info value may go out unless it is a ``cid:`` reference to a part
    the new leg's body does not carry (RFC 6442 §4.1: the cid must name a body part)."""
    try:
        uri = parse_name_addr(text).uri
    except ParseError:
        return False
    if uri.scheme != "cid":
        return True
    return unescape(uri.opaque or "") in cids


def history_entry(meta: CallMetadata, target: URI, cause: int | None = None) -> str:
    """The History-Info entry (RFC 7044) for retargeting the call to ``target``.

    The new entry is the first child of the last received entry with a readable index (``1`` ->
    ``1.1``, ``1.1.1`` -> ``1.1.1.1``), tagged ``mp=<that index>``: handing a 911 caller to 988 is
    a mapping of the target to another user (RFC 7044 §4.2), not a contact (``rc``). With no
    (readable) History-Info received, this INVITE starts a history as a new request would:
    ``<target>;index=1`` (RFC 7044 §10.1: the UAC adds the first entry). ``cause`` (RFC 4458)
    goes into the URI: ``<sip:988@...;cause=302>``."""
    parent: str | None = None
    for text in reversed(meta.history_info):
        try:
            index = parse_name_addr(text).param("index")
        except ParseError:
            continue
        if index is not None and _INDEX.match(index):
            parent = index
            break
    uri = target if cause is None else target.with_params(cause=str(cause))
    if parent is None:
        return f"<{uri}>;index=1"
    return f"<{uri}>;index={parent}.1;mp={parent}"


def _assertable(identity: str) -> bool:
    """P-Asserted-Identity takes sip, sips and tel URIs only (RFC 3325 §9.1): a From such as
    ``<urn:service:sos>`` stays in the records but is not asserted."""
    try:
        return parse_name_addr(identity).uri.scheme in ("sip", "sips", "tel")
    except ParseError:
        return False


def _resource_priority(meta: CallMetadata) -> list[str]:
    return [
        v
        for v in meta.resource_priority
        if v.partition(".")[0].lower() not in STRIPPED_RP_NAMESPACES
    ]


def outbound_headers(
    meta: CallMetadata,
    policy: MetadataPolicy,
    *,
    target: URI,
    referred_by: str | None,
    retarget_cause: int | None = None,
) -> list[tuple[str, str]]:
    """The metadata headers of the INVITE to ``target`` (a dispatcher position or a 988
    destination), in this order, one line per value:

    1. ``P-Asserted-Identity``: ``meta.identity`` (when it is a sip, sips or tel URI).
    2. ``Call-Info``: ``meta.call_info`` (a ``cid:`` one only when its part is in the body).
    3. ``History-Info``: the received entries, then :func:`history_entry` for ``target``.
    4. ``Referred-By``: ``<referred_by>`` when given (kept as is when already a name-addr).
    5. ``User-to-User`` when ``policy.forward_uui``.
    6. ``Geolocation`` and ``Geolocation-Routing`` when ``policy.share_location``. A ``cid:``
       value only when :func:`outbound_body` carries its part (the target takes multipart);
       otherwise only by-reference values go. Geolocation-Routing goes only with a Geolocation.
    7. ``Resource-Priority``: the received values except the ``esnet`` namespace, one line.
    8. ``X-`` headers named in ``policy.x_header_allowlist`` (case-insensitive), as sent.

    Never an internal header (``X-Handoff-*``), whatever the allowlist. Content-Type is not here:
    it comes with :func:`outbound_body`."""
    cids = _carried_cids(meta, policy)
    out: list[tuple[str, str]] = []
    if meta.identity is not None and _assertable(meta.identity):
        out.append(("P-Asserted-Identity", meta.identity))
    out += [("Call-Info", v) for v in meta.call_info if _reference_ok(v, cids)]
    out += [("History-Info", v) for v in meta.history_info]
    out.append(("History-Info", history_entry(meta, target, retarget_cause)))
    if referred_by is not None:
        shown = referred_by.strip()
        out.append(("Referred-By", shown if "<" in shown else f"<{shown}>"))
    if policy.forward_uui:
        out += [("User-to-User", v) for v in meta.user_to_user]
    if policy.share_location:
        geo = [v for v in geolocation_values(meta) if _reference_ok(v, cids)]
        out += [("Geolocation", v) for v in geo]
        if geo:
            out += [("Geolocation-Routing", v) for v in geolocation_routing(meta)[:1]]
    if rp := _resource_priority(meta):
        out.append(("Resource-Priority", ", ".join(rp)))
    allow = {n.lower() for n in policy.x_header_allowlist}
    out += [(n, v) for n, v in meta.x_headers if n.lower() in allow]
    return [(n, v) for n, v in out if not n.lower().startswith(INTERNAL_PREFIX)]


def outbound_body(meta: CallMetadata, sdp: bytes, policy: MetadataPolicy) -> tuple[str, bytes]:
    """``(Content-Type, body)`` of the INVITE to a new leg: plain ``application/sdp``, unless the
    policy shares location with a target that takes multipart and there are location parts; then
    ``multipart/mixed`` with a fresh boundary: the SDP part first, then ``meta.location_parts``
    unchanged (their Content-Type, Content-ID and Content-Disposition kept, since a
    ``Geolocation: <cid:...>`` names the Content-ID)."""
    if not carries_location_body(meta, policy):
        return SDP, sdp
    sdp_part = BodyPart((("Content-Type", SDP),), sdp)
    return build_multipart((sdp_part, *meta.location_parts))
