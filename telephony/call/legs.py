"""One SIP leg of a call, and the anchored-media SDP each leg is given.

A :class:`Leg` is either the caller's (we are its UAS: the 911 INVITE came in on it) or one we
placed (we are its UAC: a dispatcher position, a 988 destination). It holds the dialog, the
media endpoint whose address we advertise on that leg, and the peer's last SDP. Legs never
talk to each other: the controller (``telephony.call.b2bua``) relays between them.

Media is anchored: the SDP a leg receives from us is the other leg's SDP with every address
replaced by this leg's own relay endpoint (first RTP audio stream; other streams are refused
with port 0, since only audio is relayed), and our own ``o=`` line whose version goes up by
one with every SDP we send on this leg (RFC 3264 §8).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from telephony.call.metadata import sdp_of as raw_sdp
from telephony.call.ports import MediaLeg, Timer
from telephony.sip.dialog import Dialog, Uas2xxRetransmitter
from telephony.sip.errors import SipError
from telephony.sip.message import Request, Response
from telephony.sip.sdp import (
    Connection,
    MediaDescription,
    Origin,
    SessionDescription,
    codecs,
    direction,
    is_hold,
    parse_sdp,
    rtcp_port,
    set_direction,
)
from telephony.sip.transaction import Endpoint, TransactionKey
from telephony.sip.uri import URI

Role = Literal["caller", "dispatcher", "destination", "consult"]
#: attributes that describe the other leg's transport: never passed across the anchor
_NOT_ANCHORED = frozenset({"rtcp", "candidate", "crypto"})
_session_ids = itertools.count(1)
#: orders the SDPs learned from peers, across legs (which phone changed what last)
_learned = itertools.count(1)
#: What a caller whose INVITE had no SDP (delayed offer) is taken to offer: G.711 in both laws
#: and telephone-event, the media the relay carries and the mixer mixes. The party dialled for
#: the call is offered this (anchored); the caller's own answer, from its ACK, then replaces it
#: as ``Call.offer``.
DELAYED_OFFER = parse_sdp(
    b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    b"m=audio 9 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)


class LegState(Enum):
    CALLING = "calling"  # INVITE out (or in), no dialog yet
    EARLY = "early"  # 1xx with a To tag
    CONFIRMED = "confirmed"  # 2xx sent/received
    ENDING = "ending"  # CANCEL or BYE sent, waiting for the answer
    ENDED = "ended"


def endpoint_for(uri: URI, transport: str = "udp") -> Endpoint:
    """Where to send a request for ``uri``: its ``;transport=`` (else ``transport``), its host
    (IP literal or name, brackets of IPv6 removed) and port (5060, or 5061 for sips:)."""
    tp = (uri.param("transport") or ("tls" if uri.scheme == "sips" else transport)).lower()
    port = uri.port or (5061 if tp == "tls" else 5060)
    return Endpoint(tp, uri.host.strip("[]"), port)


def sdp_of(message: Request | Response) -> SessionDescription | None:
    """The SDP of a message (plain ``application/sdp`` or inside ``multipart/mixed``), parsed;
    ``None`` when there is none. Raises :class:`SipError` 488 when it cannot be parsed."""
    body = message.body
    if not body:
        return None
    ctype = message.headers.get("content-type") or "application/sdp"
    if ctype.split(";")[0].strip().lower() == "application/sdp":
        raw: bytes | None = body
    else:
        try:
            raw = raw_sdp(body, ctype)
        except SipError as err:
            raise SipError(f"unusable body: {err.reason}", 400, "peer") from err
    if raw is None:
        return None
    try:
        return parse_sdp(raw)
    except SipError as err:
        raise SipError(f"unusable SDP: {err.reason}", 488, "peer") from err


def audio_index(sd: SessionDescription) -> int | None:
    """Index of the first RTP audio stream that is not rejected."""
    for i, m in enumerate(sd.media):
        if m.media_type == "audio" and m.is_rtp and m.port:
            return i
    return None


def peer_media_address(sd: SessionDescription) -> tuple[str, int, int] | None:
    """(host, rtp port, rtcp port) of the first audio stream, for ``MediaLeg.set_remote``."""
    i = audio_index(sd)
    if i is None:
        return None
    m = sd.media[i]
    conn = m.connection or sd.connection
    if conn is None:
        return None
    return conn.address.split("/")[0], m.port, rtcp_port(m)


@dataclass(slots=True)
class Leg:
    """One SIP leg. ``invite`` is the INVITE that created it (received or sent); ``dest`` is
    where its requests go until the dialog gives a remote target. ``flow``: set on the legs of
    a registered phone, the address its REGISTER came from; every request of the leg goes
    there, whatever the dialog's remote target says (a phone behind NAT puts its private
    address in Contact; only the address it registered from reaches it)."""

    role: Role
    call_tag: str
    invite: Request
    dest: Endpoint
    media: MediaLeg
    uac: bool
    label: str = ""
    state: LegState = LegState.CALLING
    dialog: Dialog | None = None
    invite_key: TransactionKey | None = None
    local_tag: str = ""
    peer_sdp: SessionDescription | None = None
    sent_sdp: SessionDescription | None = None
    ack: Request | None = None  # our ACK for the 2xx (UAC), sent again for a retransmitted 2xx
    retrans: Uas2xxRetransmitter | None = None  # our 2xx until the ACK comes (UAS)
    retrans_timer: Timer | None = None
    ring_timer: Timer | None = None
    session_id: str = field(default_factory=lambda: str(next(_session_ids) + 1_000_000))
    sdp_version: int = 0
    on_ringing: Callable[[Leg, Response], None] | None = None
    on_answer: Callable[[Leg, Response], None] | None = None
    on_failure: Callable[[Leg, int, str], None] | None = None
    cancelled: bool = False
    answered: bool = False  # a 2xx confirmed it (stays true once it ends)
    ended_by: str | None = None
    flow: Endpoint | None = None
    learned: int = 0  # when its peer's last SDP came, in the order of all legs' (0: none yet)
    offer_in_2xx: bool = False  # our last 2xx to its INVITE was an offer: its ACK has the answer

    @property
    def alive(self) -> bool:
        return self.state not in (LegState.ENDING, LegState.ENDED)

    @property
    def sip_call_id(self) -> str:
        return self.invite.call_id

    def request_dest(self, dialog: Dialog | None = None) -> Endpoint:
        """Where an in-dialog request goes: the phone's flow, else the next hop of ``dialog``
        (default: the leg's), else ``dest``."""
        dialog = dialog or self.dialog
        if self.flow is not None:
            return self.flow
        if dialog is None:
            return self.dest
        return endpoint_for(dialog.next_hop(), self.dest.transport)

    def stop_timers(self) -> None:
        for t in (self.retrans_timer, self.ring_timer):
            if t is not None:
                t.cancel()
        self.retrans_timer = self.ring_timer = None

    def learn_sdp(self, sd: SessionDescription) -> None:
        """The peer's SDP: remember it and point our relay endpoint at its address."""
        self.peer_sdp = sd
        self.learned = next(_learned)
        addr = peer_media_address(sd)
        if addr is None:
            self.media.set_remote("0.0.0.0" if ":" not in self.media.host else "::", 0)
        else:
            self.media.set_remote(*addr)

    def sdp_for(self, source: SessionDescription, *, hold: bool | None = None) -> bytes:
        """The SDP this leg gets: ``source`` (the other leg's SDP) anchored on our endpoint.
        ``hold=False`` forces the audio stream to sendrecv (taking a caller off hold after a
        transfer); ``True`` to sendonly.

        Anchoring: every ``c=`` becomes our host; the first RTP audio stream gets our port and
        the others port 0; ``a=rtcp``, ``a=candidate`` and ``a=crypto`` are dropped (they
        describe the other leg's transport); ``o=`` is our own, its version one up per SDP sent
        on this leg. Built in one pass (one new object per section, no intermediate copies)."""
        host = self.media.host
        conn = Connection.for_address(host)
        first = audio_index(source)
        media: list[MediaDescription] = []
        for i, m in enumerate(source.media):
            attrs = tuple(a for a in m.attributes if a.name not in _NOT_ANCHORED)
            out_m = MediaDescription(
                m.media_type,
                self.media.rtp_port if i == first else 0,
                m.proto,
                m.formats,
                m.port_count,
                None if m.connection is None else conn,
                m.lines,
                attrs,
            )
            if i == first and hold is not None:
                out_m = set_direction(out_m, "sendonly" if hold else "sendrecv")
            media.append(out_m)
        self.sdp_version += 1
        origin = Origin("handoffd", self.session_id, self.sdp_version, "IN", conn.addr_type, host)
        out = SessionDescription(
            origin,
            source.session_name,
            None if source.connection is None else conn,
            source.lines,
            source.attributes,
            tuple(media),
        )
        self.sent_sdp = out
        return out.to_bytes()

    @property
    def held_by_us(self) -> bool:
        """The last SDP we sent on this leg put its audio on hold (sendonly/inactive)."""
        sd = self.sent_sdp
        i = None if sd is None else audio_index(sd)
        return sd is not None and i is not None and is_hold(sd.media[i], sd)

    def direction(self) -> str:
        sd = self.peer_sdp
        i = None if sd is None else audio_index(sd)
        return "none" if sd is None or i is None else direction(sd.media[i], sd)


def reason_header(status: int, text: str) -> tuple[str, str]:
    """RFC 3326 Reason carrying the SIP status that ended the other leg."""
    safe = text.replace('"', "'").replace("\\", "/")
    return ("Reason", f'SIP;cause={status};text="{safe}"')


def map_failure(status: int) -> int:
    """The status a failed outbound leg becomes toward the caller: 4xx-6xx pass through,
    except an authentication challenge (we do not hold the caller's credentials: 403) and a
    redirect or anything below 400 (we do not follow redirects: 480)."""
    if status in (401, 407):
        return 403
    if status < 400:
        return 480
    return status


def needs_reoffer(caller: Leg, new_peer: Leg) -> bool:
    """After a transfer: must the caller get a new offer? Yes when it is on hold through us, or
    when the new party's answer starts with another payload type than the caller was given."""
    if caller.held_by_us:
        return True
    sent, new = caller.sent_sdp, new_peer.peer_sdp
    if sent is None or new is None:
        return new is not None
    i, j = audio_index(sent), audio_index(new)
    if i is None or j is None:
        return True
    return sent.media[i].formats[:1] != new.media[j].formats[:1]


PCMU, PCMA = 0, 8  # the G.711 static payload types


def mix_formats(leg: Leg) -> tuple[int, int | None]:
    """(the G.711 payload type ``leg``'s peer takes, its telephone-event payload type): the
    first of PCMU/PCMA in the peer's SDP, PCMU when it says nothing usable."""
    sd = leg.peer_sdp
    i = audio_index(sd) if sd is not None else None
    if sd is None or i is None:
        return PCMU, None
    found = codecs(sd.media[i])
    audio = next((c.payload_type for c in found if c.payload_type in (PCMU, PCMA)), PCMU)
    event = next((c.payload_type for c in found if c.encoding_name == "telephone-event"), None)
    return audio, event
