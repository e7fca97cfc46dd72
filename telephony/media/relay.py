"""The RTP/RTCP relay: leg endpoints, bridges between two of them, counters.

Model
-----
A :class:`LegEndpoint` is our media address for one SIP leg: an RTP socket (even port) and an
RTCP socket (RTP + 1) from the :class:`~telephony.media.ports.PortAllocator`, plus where that
leg's peer wants media (its SDP, then latching). It lives as long as the leg, not the bridge.

A :class:`Bridge` joins two endpoints, side ``"a"`` and side ``"b"``: what endpoint A receives
from its peer goes out of endpoint B's sockets to B's peer, and the reverse. RTCP goes the same
way on the +1 sockets. Payloads (PCMU, PCMA, telephone-event, anything) are passed through with
their bytes untouched; the relay never parses beyond the first byte.

Transfer is a :meth:`Bridge.replace`: the caller's endpoint (and so the ports in the caller's
SDP and its latched address) stays; the dispatcher's endpoint is swapped for the 988 leg's
endpoint, which was opened earlier for the 988 INVITE's offer. The old endpoint comes back
detached and still open, so a failed transfer can bridge it back (recall to the dispatcher).

A warm handoff mixes three legs instead: :class:`telephony.media.conference.Conference` takes
unbridged endpoints, and :meth:`LegEndpoint.set_tap` hands their accepted RTP to the mixer (RTCP
absorbed) while :meth:`LegEndpoint.send_rtp` sends the mixed frames to the peer. Latching,
validity checks and counters are the same. Outside a conference nothing is parsed or changed.

Symmetric RTP latching (NAT traversal)
--------------------------------------
Each endpoint sends to its peer's SDP address (``c=`` host, ``m=`` port; RTCP on ``a=rtcp`` or
RTP + 1) until it *latches*. RTP and RTCP latch independently, on their own sockets:

* ``latch="any"`` (default): until latched, a valid packet from any source is accepted and the
  first one re-targets that socket's sending to the packet's source address (host and port).
* ``latch="sdp-host"``: the same, but before latching only packets whose source host is the SDP
  ``c=`` host are accepted (the port may differ: port-rewriting NAT, asymmetric ports). Use it
  on trunks whose SDP is known to carry the public address; it stops a stranger spraying our
  port range from capturing a call before the real peer's first packet.
* ``latch="off"``: no latching; packets are accepted from any source and always sent to the
  SDP address.

Once latched, only packets from the latched address are accepted (anything else is counted in
``dropped_source`` and dropped), so a call cannot be hijacked mid-stream. Latching happens
whether or not the endpoint is bridged yet (early media latches the caller before the
dispatcher answers). :meth:`LegEndpoint.set_remote` with a *different* address (re-INVITE
moved the media) forgets the latch; the same address again (session refresh, hold and resume)
keeps it. There is no time-based re-latch: a NAT that rebinds mid-call stays dropped until the
call layer calls :meth:`LegEndpoint.unlatch` or :meth:`LegEndpoint.set_remote` again.

Validity (hostile input)
------------------------
The relay is content-agnostic but not a UDP reflector: on the RTP socket a datagram shorter than
the 12-byte RTP header or whose version bits are not 2 is dropped (``dropped_malformed``); on
the RTCP socket the minimum is the 8-byte RTCP header + SSRC, version 2. Nothing else is looked
at (payload type, SSRC, sequence numbers pass as they are). Invalid packets never latch. STUN
(version bits 0) is dropped: we do not do ICE. RTCP multiplexed on the RTP port (RFC 5761) is
forwarded like RTP to the peer's RTP address, which is right only if both legs negotiated
``a=rtcp-mux`` (the call layer does not offer it).

Hold
----
:meth:`Bridge.set_forwarding` stops RTP in one direction, :meth:`Bridge.hold` in both. RTCP
keeps flowing on hold (RFC 3264 §5.1: RTCP is still sent for sendonly/recvonly/inactive
streams). An SDP with port 0 or ``c=0.0.0.0`` (RFC 2543 hold) leaves that side with no target,
even if its peer keeps sending (and latches): packets for it count in ``dropped_no_target``.

Counters
--------
Plain ints on every endpoint (``rtp_packets_in`` ...: see :class:`MediaCounters`), snapshots per
endpoint, per bridge and for the whole relay (:meth:`Relay.stats`: live endpoints plus every
closed one). ``*_in`` counts packets accepted from this endpoint's peer, ``*_out`` packets sent
to it. For Prometheus: ``handoff_rtp_packets_total{direction="in"|"out"}`` is
``rtp_packets_in`` / ``rtp_packets_out``, and ``handoff_rtp_dropped_total{reason}`` the
``dropped_*`` fields. Nothing is counted per call in metrics (house rule 12).

Kept sockets (``keep_open``)
---------------------------
``Relay(..., keep_open=N)`` keeps a closed endpoint's sockets open for the next endpoint that
gets its port (same FIFO order as without keeping); what arrives meanwhile is dropped and
counted in ``dropped_source``. Details: :mod:`telephony.media.kept`. ``keep_open=0`` (the
default) closes sockets as before.

Hot path
--------
``datagram_received`` does one length check, one byte test, one tuple compare against the
latched source, one ``sendto`` and four integer adds; no logging, no allocation of our own. The
relay never installs an event loop policy: the daemon installs uvloop when present. On asyncio's
own loop the transports read with a 64 KiB buffer instead of 256 KiB (:func:`_small_reads`:
3x the throughput there). Measured ceilings and jitter: bench/rtp_relay.py, bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import operator
import socket
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

from telephony.media.kept import KeptPairs
from telephony.media.ports import MediaError, PortAllocator, PortPair

log = logging.getLogger("telephony.media")

LatchMode = Literal["any", "sdp-host", "off"]
SideName = Literal["a", "b"]
Address = tuple[Any, ...]

RTP_HEADER = 12
MAX_DATAGRAM = 65536
RTCP_HEADER = 8


@dataclass(frozen=True, slots=True)
class MediaCounters:
    """A snapshot of counters (plain ints); add snapshots with ``+``.

    ``rtp_*_in`` / ``rtcp_*_in``: accepted from this endpoint's peer (valid, allowed source).
    ``rtp_*_out`` / ``rtcp_*_out``: sent to this endpoint's peer (handed to the kernel).
    ``dropped_malformed``: too short or not version 2. ``dropped_source``: from an address other
    than the latched one (or, with ``sdp-host``, not the SDP host). ``dropped_no_target``:
    accepted but not forwarded: not bridged, held, or the other side has no address yet or its
    socket is flow-controlled. ``send_errors``: errors the kernel reported on our sockets.
    ``latches``: times a socket (re-)targeted to a packet's source.
    """

    rtp_packets_in: int = 0
    rtp_bytes_in: int = 0
    rtp_packets_out: int = 0
    rtp_bytes_out: int = 0
    rtcp_packets_in: int = 0
    rtcp_bytes_in: int = 0
    rtcp_packets_out: int = 0
    rtcp_bytes_out: int = 0
    dropped_malformed: int = 0
    dropped_source: int = 0
    dropped_no_target: int = 0
    send_errors: int = 0
    latches: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_malformed + self.dropped_source + self.dropped_no_target

    def __add__(self, other: MediaCounters) -> MediaCounters:
        return MediaCounters(*(getattr(self, n) + getattr(other, n) for n in _COUNTER_NAMES))


_COUNTER_NAMES = tuple(f.name for f in fields(MediaCounters))
_counters_of = operator.attrgetter(*_COUNTER_NAMES)  # an endpoint's counters, as a tuple


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """Counters of both sides of a bridge. Direction A→B: ``a.rtp_packets_in`` arrived,
    ``b.rtp_packets_out`` were delivered; B→A the other way round. An endpoint's counters cover
    its whole life, including time before it was bridged or in another bridge."""

    a: MediaCounters
    b: MediaCounters


@dataclass(frozen=True, slots=True)
class RelayStats:
    """Totals over every endpoint the relay opened (live and closed) plus live counts."""

    counters: MediaCounters
    endpoints: int
    bridges: int


class _RtpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("ep",)

    def __init__(self, ep: LegEndpoint) -> None:
        self.ep = ep

    def datagram_received(self, data: bytes, addr: Address) -> None:
        ep = self.ep
        n = len(data)
        if n < RTP_HEADER or data[0] & 0xC0 != 0x80:
            ep.dropped_malformed += 1
            return
        if addr != ep._rtp_src and not ep._new_source(addr, rtcp=False):
            return
        ep.rtp_packets_in += 1
        ep.rtp_bytes_in += n
        if ep._watch is not None and data[1] & 0x7F == ep._watch_pt:  # a telephone-event
            ep._watch(data)
        if ep._tap is not None:  # in a conference: the mixer takes it
            ep._tap(data)
            return
        out = ep._sink
        if out is None or out._rtp_dst is None:
            ep.dropped_no_target += 1
            return
        out._rtp_transport.sendto(data, out._rtp_dst)
        out.rtp_packets_out += 1
        out.rtp_bytes_out += n

    def error_received(self, exc: Exception) -> None:
        self.ep.send_errors += 1

    def pause_writing(self) -> None:
        self.ep._set_paused(rtcp=False, paused=True)

    def resume_writing(self) -> None:
        self.ep._set_paused(rtcp=False, paused=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ep._transport_lost()


class _RtcpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("ep",)

    def __init__(self, ep: LegEndpoint) -> None:
        self.ep = ep

    def datagram_received(self, data: bytes, addr: Address) -> None:
        ep = self.ep
        n = len(data)
        if n < RTCP_HEADER or data[0] & 0xC0 != 0x80:
            ep.dropped_malformed += 1
            return
        if addr != ep._rtcp_src and not ep._new_source(addr, rtcp=True):
            return
        ep.rtcp_packets_in += 1
        ep.rtcp_bytes_in += n
        if ep._tap is not None:  # the mixer terminates the RTP session: absorbed, not a drop
            return
        out = ep._rtcp_sink
        if out is None or out._rtcp_dst is None:
            ep.dropped_no_target += 1
            return
        out._rtcp_transport.sendto(data, out._rtcp_dst)
        out.rtcp_packets_out += 1
        out.rtcp_bytes_out += n

    def error_received(self, exc: Exception) -> None:
        self.ep.send_errors += 1

    def pause_writing(self) -> None:
        self.ep._set_paused(rtcp=True, paused=True)

    def resume_writing(self) -> None:
        self.ep._set_paused(rtcp=True, paused=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ep._transport_lost()


class LegEndpoint:
    """Our RTP + RTCP sockets for one leg, and where that leg's peer wants its media.

    Open with :meth:`Relay.open_endpoint`; put ``host``, ``rtp_port`` (and ``a=rtcp`` if you
    like, it is always ``rtp_port + 1``) in the SDP sent on that leg; call :meth:`set_remote`
    with the leg's SDP; bridge with :meth:`Relay.bridge`; :meth:`close` when the leg ends.
    """

    __slots__ = (  # the counters (plain ints, see MediaCounters), then our state
        *_COUNTER_NAMES,
        "_bridge",
        "_closed",
        "_lost",
        "_paused_rtcp",
        "_paused_rtp",
        "_ports",
        "_relay",
        "_rtcp_dst",
        "_rtcp_latched",
        "_rtcp_sink",
        "_rtcp_src",
        "_rtcp_transport",
        "_rtp_dst",
        "_rtp_latched",
        "_rtp_src",
        "_rtp_transport",
        "_sdp_host",
        "_sdp_off",
        "_sdp_rtcp",
        "_sdp_rtp",
        "_sink",
        "_tap",
        "_watch",
        "_watch_pt",
        "_wait_closed",
        "label",
        "latch",
    )

    _rtp_transport: asyncio.DatagramTransport
    _rtcp_transport: asyncio.DatagramTransport

    def __init__(self, relay: Relay, ports: PortPair, label: str, latch: LatchMode) -> None:
        if latch not in ("any", "sdp-host", "off"):
            raise ValueError(f"unknown latch mode {latch!r}")
        self._relay = relay
        self._ports = ports
        self.label = label
        self.latch: LatchMode = latch
        self._bridge: Bridge | None = None
        self._sink: LegEndpoint | None = None  # where accepted RTP goes (None: drop)
        self._rtcp_sink: LegEndpoint | None = None
        self._tap: Callable[[bytes], None] | None = None  # set_tap (conference)
        self._watch: Callable[[bytes], None] | None = None  # set_watch (DTMF feature codes)
        self._watch_pt = -1
        self._sdp_host: str | None = None
        self._sdp_off = False  # SDP said port 0 / c=0.0.0.0: send nothing, latch or not
        self._sdp_rtp: Address | None = None
        self._sdp_rtcp: Address | None = None
        self._rtp_src: Address | None = None  # accepted source once latched
        self._rtcp_src: Address | None = None
        self._rtp_latched: Address | None = None
        self._rtcp_latched: Address | None = None
        self._rtp_dst: Address | None = None  # where we send (None: nowhere)
        self._rtcp_dst: Address | None = None
        self._paused_rtp = False
        self._paused_rtcp = False
        self._closed = False
        self._lost = 0
        self._wait_closed: asyncio.Future[None] | None = None
        # counters (see MediaCounters); plain ints, read them directly or via stats()
        self.rtp_packets_in = 0
        self.rtp_bytes_in = 0
        self.rtp_packets_out = 0
        self.rtp_bytes_out = 0
        self.rtcp_packets_in = 0
        self.rtcp_bytes_in = 0
        self.rtcp_packets_out = 0
        self.rtcp_bytes_out = 0
        self.dropped_malformed = 0
        self.dropped_source = 0
        self.dropped_no_target = 0
        self.send_errors = 0
        self.latches = 0

    # ------------------------------------------------------------------ addresses

    @property
    def host(self) -> str:
        """Our media address (for ``c=``)."""
        return self._ports.host

    @property
    def rtp_port(self) -> int:
        """Our RTP port (for ``m=``)."""
        return self._ports.rtp_port

    @property
    def rtcp_port(self) -> int:
        """Our RTCP port, always ``rtp_port + 1``."""
        return self._ports.rtcp_port

    @property
    def remote_rtp(self) -> Address | None:
        """Where RTP for this leg goes: the latched source, else the SDP address; None when
        the SDP says not to send (port 0, ``c=0.0.0.0``) or there is no address yet."""
        return None if self._sdp_off else self._rtp_latched or self._sdp_rtp

    @property
    def remote_rtcp(self) -> Address | None:
        """Where RTCP for this leg goes (see :attr:`remote_rtp`)."""
        return None if self._sdp_off else self._rtcp_latched or self._sdp_rtcp

    @property
    def latched_rtp(self) -> Address | None:
        """The source RTP latched to, or None."""
        return self._rtp_latched

    @property
    def latched_rtcp(self) -> Address | None:
        """The source RTCP latched to, or None."""
        return self._rtcp_latched

    @property
    def bridge(self) -> Bridge | None:
        return self._bridge

    @property
    def closed(self) -> bool:
        return self._closed

    def set_remote(self, host: str, rtp_port: int, rtcp_port: int | None = None) -> None:
        """Take the peer's address from its SDP: ``c=`` host, ``m=`` port, RTCP port from
        ``a=rtcp`` (default ``rtp_port + 1``).

        Port 0 (stream rejected) or an unspecified host (``0.0.0.0`` / ``::``, RFC 2543 hold)
        leaves no target, latched or not, until an SDP with an address comes. A changed
        address forgets the latch for that socket; the same address keeps it. Raises
        :class:`MediaError` 488 (side ``peer``) for a host that is not an IP literal of our
        family or a port out of range.
        """
        if rtcp_port is None:
            rtcp_port = rtp_port + 1 if rtp_port else 0
        family, normal, unspecified = _ip_literal(host)
        if family != self._relay._ports.family:  # (a socket's .family builds an enum)
            raise MediaError("SDP address family not supported here", 488, "peer")
        if not (0 <= rtp_port <= 65535 and 0 <= rtcp_port <= 65535):
            raise MediaError("SDP media port out of range", 488, "peer")
        rtp: Address | None = (normal, rtp_port)
        rtcp: Address | None = (normal, rtcp_port)
        if unspecified or rtp_port == 0:
            rtp = rtcp = None
        elif rtcp_port == 0:
            rtcp = None
        if rtp != self._sdp_rtp:
            self._rtp_src = self._rtp_latched = None
        if rtcp != self._sdp_rtcp:
            self._rtcp_src = self._rtcp_latched = None
        self._sdp_host = None if rtp is None else normal
        self._sdp_off = rtp is None
        self._sdp_rtp = rtp
        self._sdp_rtcp = rtcp
        self._retarget()

    def unlatch(self) -> None:
        """Forget both latches: send to the SDP address until a new packet latches again."""
        self._rtp_src = self._rtp_latched = None
        self._rtcp_src = self._rtcp_latched = None
        self._retarget()

    def set_watch(self, payload_type: int, watch: Callable[[bytes], None] | None) -> None:
        """Also hand every accepted RTP packet of ``payload_type`` (a telephone-event type) to
        ``watch``; the packet is relayed (or mixed) as before. None stops watching."""
        self._watch, self._watch_pt = watch, payload_type if watch is not None else -1

    def set_tap(self, tap: Callable[[bytes], None] | None) -> None:
        """Hand every RTP packet accepted from the peer (after latching and counting) to
        ``tap`` instead of a bridge, and absorb its RTCP; None restores normal relaying. For
        :mod:`telephony.media.conference`: the endpoint must be open and not bridged, and
        cannot be bridged while tapped."""
        if tap is not None:
            if self._closed:
                raise MediaError("endpoint is closed")
            if self._bridge is not None:
                raise MediaError("endpoint is bridged")
        self._tap = tap

    def send_rtp(self, data: bytes) -> bool:
        """Send one RTP packet to the peer (its latched or SDP address) from our RTP socket;
        counted like relayed packets. False (``dropped_no_target``) when there is no target."""
        dst = self._rtp_dst
        if dst is None:
            self.dropped_no_target += 1
            return False
        self._rtp_transport.sendto(data, dst)
        self.rtp_packets_out += 1
        self.rtp_bytes_out += len(data)
        return True

    # ------------------------------------------------------------------ counters

    def stats(self) -> MediaCounters:
        """A snapshot of this endpoint's counters."""
        return MediaCounters(*_counters_of(self))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Leave any bridge, close both sockets; the ports go back to the allocator once the
        transports report they are closed (see :meth:`wait_closed`). Idempotent."""
        if self._closed:
            return
        if self._bridge is not None:
            self._bridge._endpoint_closing(self)
        self._closed = True
        self._sink = self._rtcp_sink = self._tap = None
        self._rtp_dst = self._rtcp_dst = None
        self._relay._endpoint_closed(self)
        if not hasattr(self, "_rtp_transport"):  # still attaching: _attach closes them
            return
        if self._relay._keep(self):  # the sockets stay open for a later endpoint
            return
        self._rtp_transport.close()
        self._rtcp_transport.close()

    async def wait_closed(self) -> None:
        """Wait until both sockets are closed and the ports released."""
        if self._lost >= 2:
            return
        if self._wait_closed is None:
            self._wait_closed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._wait_closed)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("bridged" if self._bridge else "open")
        return (
            f"<LegEndpoint {self.label!r} {self.host}:{self.rtp_port} {state} "
            f"remote={self.remote_rtp}>"
        )

    # ------------------------------------------------------------------ internals

    def _retarget(self) -> None:
        self._rtp_dst = None if self._closed or self._paused_rtp else self.remote_rtp
        self._rtcp_dst = None if self._closed or self._paused_rtcp else self.remote_rtcp

    def _set_paused(self, *, rtcp: bool, paused: bool) -> None:
        # the kernel buffer is full and asyncio would queue: drop instead (stale audio is worse
        # than lost audio) until the transport drains
        if rtcp:
            self._paused_rtcp = paused
        else:
            self._paused_rtp = paused
        self._retarget()

    def _new_source(self, addr: Address, *, rtcp: bool) -> bool:
        """A valid packet from a source other than the latched one: accept (and maybe latch)?"""
        mode = self.latch
        if mode == "off":
            return True
        if (self._rtcp_latched if rtcp else self._rtp_latched) is not None or (
            mode == "sdp-host" and addr[0] != self._sdp_host
        ):
            self.dropped_source += 1
            return False
        if rtcp:
            self._rtcp_src = self._rtcp_latched = addr
        else:
            self._rtp_src = self._rtp_latched = addr
        self.latches += 1
        self._retarget()
        log.debug("%s %s latched to %s:%s", self.label, "rtcp" if rtcp else "rtp", *addr[:2])
        return True

    def _transport_lost(self) -> None:
        self._lost += 1
        if self._lost == 2:
            self._relay._ports.release(self._ports.rtp_port)
            if self._wait_closed is not None and not self._wait_closed.done():
                self._wait_closed.set_result(None)


class Bridge:
    """Two endpoints relaying to each other: side ``"a"`` and side ``"b"``.

    Made by :meth:`Relay.bridge`. Forwarding per direction survives :meth:`replace` (it belongs
    to the bridge, not to the endpoint); set it from the negotiated SDP directions.
    """

    __slots__ = ("_a", "_b", "_closed", "_fwd", "_relay", "label")

    def __init__(self, relay: Relay, a: LegEndpoint, b: LegEndpoint, label: str) -> None:
        self._relay = relay
        self._a = a
        self._b = b
        self.label = label
        self._fwd: dict[SideName, bool] = {"a": True, "b": True}
        self._closed = False
        a._bridge = b._bridge = self
        self._wire()

    @property
    def a(self) -> LegEndpoint:
        return self._a

    @property
    def b(self) -> LegEndpoint:
        return self._b

    @property
    def closed(self) -> bool:
        return self._closed

    def endpoint(self, side: SideName) -> LegEndpoint:
        return self._a if _side(side) == "a" else self._b

    def set_remote(
        self, side: SideName, host: str, rtp_port: int, rtcp_port: int | None = None
    ) -> None:
        """Shorthand for ``bridge.endpoint(side).set_remote(...)``."""
        self.endpoint(side).set_remote(host, rtp_port, rtcp_port)

    def set_forwarding(self, from_side: SideName, enabled: bool) -> None:
        """Start or stop relaying RTP received on ``from_side`` to the other side. RTCP flows
        regardless (RFC 3264 §5.1)."""
        self._fwd[_side(from_side)] = enabled
        self._wire()

    def forwarding(self, from_side: SideName) -> bool:
        return self._fwd[_side(from_side)]

    def hold(self) -> None:
        """Stop RTP in both directions (inactive)."""
        self._fwd["a"] = self._fwd["b"] = False
        self._wire()

    def resume(self) -> None:
        """Relay RTP in both directions again (sendrecv)."""
        self._fwd["a"] = self._fwd["b"] = True
        self._wire()

    def replace(self, side: SideName, new: LegEndpoint) -> LegEndpoint:
        """Bridge ``new`` in place of ``side``'s endpoint and return the old one, detached but
        open (close it, or bridge it again to recall). The other side keeps its sockets, its
        latch and its counters: from its peer's point of view nothing changed."""
        self._check_open()
        self._relay._check_free(new)
        old = self.endpoint(side)
        _detach(old)
        if _side(side) == "a":
            self._a = new
        else:
            self._b = new
        new._bridge = self
        self._wire()
        return old

    def unbridge(self) -> tuple[LegEndpoint, LegEndpoint]:
        """Dissolve the bridge; both endpoints stay open and can be bridged elsewhere."""
        if not self._closed:
            self._closed = True
            _detach(self._a)
            _detach(self._b)
            self._relay._bridges.discard(self)
        return self._a, self._b

    def close(self) -> None:
        """Dissolve the bridge and close both endpoints (the call ended)."""
        a, b = self.unbridge()
        a.close()
        b.close()

    async def wait_closed(self) -> None:
        await self._a.wait_closed()
        await self._b.wait_closed()

    def stats(self) -> BridgeStats:
        return BridgeStats(self._a.stats(), self._b.stats())

    def __repr__(self) -> str:
        return f"<Bridge {self.label!r} a={self._a!r} b={self._b!r}>"

    def _wire(self) -> None:
        a, b = self._a, self._b
        a._sink = b if self._fwd["a"] else None
        b._sink = a if self._fwd["b"] else None
        a._rtcp_sink = b
        b._rtcp_sink = a

    def _endpoint_closing(self, ep: LegEndpoint) -> None:
        # one leg hung up while bridged: the bridge is over, the other endpoint stays open
        self.unbridge()

    def _check_open(self) -> None:
        if self._closed:
            raise MediaError("bridge is closed")


_HOSTS: dict[str, tuple[int, str, bool]] = {}  # IP literals seen in SDP, parsed (bounded)


def _ip_literal(host: str) -> tuple[int, str, bool]:
    """(address family, normal text form, unspecified?) of an SDP ``c=`` address; MediaError
    488 when it is not an IP literal. Remembered: a peer's address comes in every call."""
    found = _HOSTS.get(host)
    if found is not None:
        return found
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise MediaError("SDP connection address is not an IP literal", 488, "peer") from None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    found = (int(family), str(ip), ip.is_unspecified)
    if len(_HOSTS) >= 4096:
        _HOSTS.clear()
    _HOSTS[host] = found
    return found


def _small_reads(transport: asyncio.BaseTransport) -> None:
    """asyncio's selector loop reads each datagram with ``recvfrom(max_size)``, 256 KiB by
    default: glibc serves that with mmap or a heap grow + trim per packet, ~15 µs each (over
    half the cost of relaying a packet). No UDP datagram exceeds 65,535 bytes, so ask for that.
    uvloop reads into one loop-wide buffer and has no such attribute: left alone."""
    if isinstance(getattr(type(transport), "max_size", None), int):
        setattr(transport, "max_size", MAX_DATAGRAM)  # noqa: B010 (not in the type stubs)


def _side(side: str) -> SideName:
    if side not in ("a", "b"):
        raise ValueError(f"side must be 'a' or 'b', not {side!r}")
    return cast(SideName, side)


def _detach(ep: LegEndpoint) -> None:
    ep._bridge = None
    ep._sink = ep._rtcp_sink = None


class Relay:
    """Opens leg endpoints on ports from ``ports`` and bridges them.

    ``latch`` is the default latching rule for new endpoints (see the module docstring). One
    relay per process; it uses whatever event loop is running (uvloop if the daemon installed
    it). ``keep_open``: how many closed endpoints' socket pairs to keep open for reuse (see
    "Kept sockets" in the module docstring); capped so that kept sockets never take more than
    half of the process's file descriptor limit. ``prewarm``: how many of them the first
    endpoint opens ahead (default ``PREWARM``; :meth:`prewarm` opens more on request).
    """

    def __init__(
        self,
        ports: PortAllocator,
        *,
        latch: LatchMode = "any",
        keep_open: int = 0,
        prewarm: int | None = None,
    ) -> None:
        self._ports = ports
        self.latch: LatchMode = latch
        self._endpoints: set[LegEndpoint] = set()
        self._bridges: set[Bridge] = set()
        self._retired = [0] * len(_COUNTER_NAMES)  # counters of closed endpoints, summed
        self._attaching: dict[LegEndpoint, asyncio.Task[None]] = {}
        self._kept = KeptPairs(ports, keep_open, prewarm)

    @property
    def ports(self) -> PortAllocator:
        return self._ports

    async def open_endpoint(
        self, label: str = "", *, latch: LatchMode | None = None
    ) -> LegEndpoint:
        """Allocate a port pair and start receiving on it. Raises
        :class:`~telephony.media.ports.PortsExhaustedError` (503) when no pair is free."""
        ep = self.open_endpoint_nowait(label, latch=latch)
        await self._attaching[ep]
        return ep

    def open_endpoint_nowait(
        self, label: str = "", *, latch: LatchMode | None = None
    ) -> LegEndpoint:
        """Like :meth:`open_endpoint` but synchronous, for the call layer, which must write our
        port into an SDP without awaiting: the ports are bound now (so ``host``/``rtp_port``
        are final) and the transports attach on the next loop iteration. Until then the
        endpoint sends nothing (a packet that arrives early waits in the kernel's buffer).
        Raises :class:`~telephony.media.ports.PortsExhaustedError` (503)."""
        loop = asyncio.get_running_loop()
        self._kept.first_endpoint(loop)
        pair = self._ports.allocate()
        ep = LegEndpoint(self, pair, label, self.latch if latch is None else latch)
        kept = self._kept.take(pair)
        if kept is not None:  # a kept pair: its transports are open, parked
            rtp, rtcp = kept
            ep._rtp_transport = rtp
            ep._rtcp_transport = rtcp
            rtp.set_protocol(_RtpProtocol(ep))
            rtcp.set_protocol(_RtcpProtocol(ep))
            ep._retarget()
            self._endpoints.add(ep)
            return ep
        ep._paused_rtp = ep._paused_rtcp = True
        ep._retarget()
        self._endpoints.add(ep)
        task = loop.create_task(self._attach(ep, pair))
        self._attaching[ep] = task
        task.add_done_callback(lambda t: self._attached(ep, t))
        return ep

    def _attached(self, ep: LegEndpoint, task: asyncio.Task[None]) -> None:
        self._attaching.pop(ep, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: media sockets could not be attached: %s", ep.label, task.exception())

    async def _attach(self, ep: LegEndpoint, pair: PortPair) -> None:
        loop = asyncio.get_running_loop()
        if ep._closed:  # closed before the loop got here: nothing to attach
            pair.close()
            self._ports.release(pair.rtp_port)
            ep._lost = 2
            return
        rtp: asyncio.DatagramTransport | None = None
        try:
            rtp, _ = await loop.create_datagram_endpoint(
                lambda: _RtpProtocol(ep), sock=pair.rtp_sock
            )
            rtcp, _ = await loop.create_datagram_endpoint(
                lambda: _RtcpProtocol(ep), sock=pair.rtcp_sock
            )
        except BaseException:
            if rtp is not None:
                rtp.close()
            pair.close()
            self._ports.release(pair.rtp_port)
            ep._closed = True
            ep._lost = 2
            self._endpoint_closed(ep)
            raise
        ep._rtp_transport = rtp
        ep._rtcp_transport = rtcp
        _small_reads(rtp)
        _small_reads(rtcp)
        if ep.closed:  # closed while attaching
            rtp.close()
            rtcp.close()
            return
        ep._paused_rtp = ep._paused_rtcp = False
        ep._retarget()

    @property
    def keep_open(self) -> int:
        """How many closed endpoints' socket pairs are kept open at most (0: none)."""
        return self._kept.limit

    @property
    def prewarm_pairs(self) -> int:
        """How many pairs the first endpoint opens ahead."""
        return self._kept.prewarm_pairs

    async def prewarm(self, pairs: int | None = None) -> int:
        """Open up to ``pairs`` (default: ``keep_open``) socket pairs ahead of need, kept at the
        head of the allocator's queue; returns how many (see :meth:`KeptPairs.prewarm`)."""
        return await self._kept.prewarm(pairs)

    def bridge(self, a: LegEndpoint, b: LegEndpoint, label: str = "") -> Bridge:
        """Relay between two open, unbridged endpoints."""
        if a is b:
            raise MediaError("cannot bridge an endpoint to itself")
        self._check_free(a)
        self._check_free(b)
        bridge = Bridge(self, a, b, label)
        self._bridges.add(bridge)
        return bridge

    async def open_bridge(self, label: str = "") -> Bridge:
        """Two new endpoints, bridged (``label`` + ``/a`` and ``/b``)."""
        a = await self.open_endpoint(f"{label}/a")
        try:
            b = await self.open_endpoint(f"{label}/b")
        except BaseException:
            a.close()
            raise
        return self.bridge(a, b, label)

    def stats(self) -> RelayStats:
        """Totals since the relay started, over live and closed endpoints (and what arrived
        on kept sockets between two endpoints, as ``dropped_source``)."""
        total = MediaCounters(*self._retired)
        if self._kept.drops:
            total = total + MediaCounters(dropped_source=self._kept.drops)
        for ep in self._endpoints:
            total = total + ep.stats()
        return RelayStats(total, len(self._endpoints), len(self._bridges))

    def close(self) -> None:
        """Close every endpoint and every kept socket pair (shutdown)."""
        self._kept.limit = 0
        for ep in list(self._endpoints):
            ep.close()
        self._kept.close()

    async def wait_closed(self) -> None:
        """Close every endpoint and wait until all ports are released."""
        eps = list(self._endpoints)
        self.close()
        for ep in eps:
            await ep.wait_closed()
        await self._kept.wait_closed()

    def _keep(self, ep: LegEndpoint) -> bool:
        """``ep`` is closing: keep its sockets open for a later endpoint? (Not when a transport
        is paused or lost, or see :meth:`KeptPairs.keep`.)"""
        if ep._paused_rtp or ep._paused_rtcp or ep._lost:
            return False
        if not self._kept.keep(ep._ports, ep._rtp_transport, ep._rtcp_transport):
            return False
        ep._lost = 2  # nothing of its own left to close
        if ep._wait_closed is not None and not ep._wait_closed.done():
            ep._wait_closed.set_result(None)
        return True

    def _check_free(self, ep: LegEndpoint) -> None:
        if ep._relay is not self:
            raise MediaError("endpoint belongs to another relay")
        if ep._closed:
            raise MediaError("endpoint is closed")
        if ep._bridge is not None:
            raise MediaError("endpoint is already bridged")
        if ep._tap is not None:
            raise MediaError("endpoint is in a conference")

    def _endpoint_closed(self, ep: LegEndpoint) -> None:
        if ep in self._endpoints:
            self._endpoints.discard(ep)
            self._retired = list(map(operator.add, self._retired, _counters_of(ep)))
