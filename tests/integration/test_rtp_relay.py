"""The RTP relay on real UDP sockets (127.0.0.1 only).

Fake SIP peers are plain non-blocking UDP sockets; the relay runs on the test's event loop
(asyncio's default loop; one test repeats the core scenario on uvloop, which the daemon uses).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from telephony.media import (
    Bridge,
    LegEndpoint,
    MediaError,
    PortAllocator,
    PortsExhaustedError,
    Relay,
)

HOST = "127.0.0.1"
QUIET = 0.15  # how long "nothing arrives" is watched

# ---------------------------------------------------------------------------- helpers


def rtp(seq: int, pt: int = 0, *, marker: bool = False, payload: bytes | None = None) -> bytes:
    """An RTP packet: V=2, payload type ``pt``; 160 bytes of payload (20 ms of G.711)."""
    body = payload if payload is not None else bytes((seq * 7 + i) & 0xFF for i in range(160))
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, seq * 160, 0x1234) + body


def rtcp_rr(ssrc: int = 0x1234) -> bytes:
    """An RTCP receiver report with no report blocks (8 bytes) plus an SDES CNAME chunk."""
    rr = struct.pack("!BBHI", 0x80, 201, 1, ssrc)
    sdes = struct.pack("!BBHIBB", 0x81, 202, 2, ssrc, 1, 2) + b"ab"
    return rr + sdes


class Peer:
    """A SIP peer's media socket: a plain UDP socket on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((HOST, 0))
        self.port: int = self.sock.getsockname()[1]

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, (HOST, port))

    async def recv(self, timeout: float = 1.0) -> tuple[bytes, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), timeout)
        return data, (str(addr[0]), int(addr[1]))

    async def recv_data(self, timeout: float = 1.0) -> bytes:
        return (await self.recv(timeout))[0]

    async def nothing(self, timeout: float = QUIET) -> None:
        with pytest.raises(TimeoutError):
            got = await self.recv(timeout)
            pytest.fail(f"unexpected packet {got!r}")

    def close(self) -> None:
        self.sock.close()


def latched(ep: LegEndpoint) -> tuple[Any, ...] | None:
    """``ep.latched_rtp`` (a call, so mypy does not narrow the property across mutations)."""
    return ep.latched_rtp


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def free_base(pairs: int) -> int:
    """An even base port below the ephemeral range (32768+) for ``pairs`` pairs; the allocator
    skips ports another process happens to hold, so collisions only cost capacity."""
    return random.randrange(20000, 32000 - 2 * pairs, 2)


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def peer(peers: list[Peer]) -> Peer:
    p = Peer()
    peers.append(p)
    return p


@pytest_asyncio.fixture
async def relay() -> AsyncIterator[Relay]:
    """A relay over 64 pairs; at the end every port must be back and the loop saw no error."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    base = free_base(64)
    r = Relay(PortAllocator(HOST, base, base + 127))
    yield r
    await r.wait_closed()
    assert r.ports.in_use == 0
    loop.set_exception_handler(None)
    assert errors == []


async def bridged(relay: Relay, pa: Peer, pb: Peer) -> Bridge:
    """A bridge whose SDP points A at ``pa`` and B at ``pb`` (RTCP on the same peer socket)."""
    br = await relay.open_bridge("call")
    br.set_remote("a", HOST, pa.port, pa.port)
    br.set_remote("b", HOST, pb.port, pb.port)
    return br


# ---------------------------------------------------------------------------- relaying


@pytest.mark.asyncio
async def test_rtp_both_ways_bytes_identical(relay: Relay, peers: list[Peer]) -> None:
    pa, pb = peer(peers), peer(peers)
    br = await bridged(relay, pa, pb)
    a, b = br.a, br.b
    assert (a.host, a.rtcp_port, b.rtcp_port) == (HOST, a.rtp_port + 1, b.rtp_port + 1)
    assert a.rtp_port % 2 == 0 and b.rtp_port % 2 == 0

    packets = [
        rtp(1, pt=0),  # PCMU
        rtp(2, pt=8),  # PCMA
        rtp(3, pt=101, marker=True, payload=bytes([5, 0x0A, 0x00, 0xA0])),  # telephone-event
        rtp(4, pt=0, payload=b"\xff" * 1400),
    ]
    for pkt in packets:
        pa.send(pkt, a.rtp_port)
        data, src = await pb.recv()
        assert data == pkt
        assert src == (HOST, b.rtp_port)  # B's peer sees our B socket, nothing of A
    for pkt in packets:
        pb.send(pkt, b.rtp_port)
        data, src = await pa.recv()
        assert data == pkt
        assert src == (HOST, a.rtp_port)

    sent = sum(len(p) for p in packets)
    st = br.stats()
    assert (st.a.rtp_packets_in, st.a.rtp_bytes_in) == (4, sent)
    assert (st.b.rtp_packets_out, st.b.rtp_bytes_out) == (4, sent)
    assert (st.b.rtp_packets_in, st.a.rtp_packets_out) == (4, 4)
    assert st.a.dropped == st.b.dropped == 0
    total = relay.stats()
    assert (total.counters.rtp_packets_in, total.counters.rtp_packets_out) == (8, 8)
    assert (total.endpoints, total.bridges) == (2, 1)


@pytest.mark.asyncio
async def test_rtcp_relayed_on_plus_one_ports(relay: Relay, peers: list[Peer]) -> None:
    pa, pb, ca, cb = peer(peers), peer(peers), peer(peers), peer(peers)
    br = await relay.open_bridge("call")
    br.set_remote("a", HOST, pa.port, ca.port)
    br.set_remote("b", HOST, pb.port, cb.port)
    report = rtcp_rr()

    ca.send(report, br.a.rtcp_port)
    data, src = await cb.recv()
    assert (data, src) == (report, (HOST, br.b.rtcp_port))
    cb.send(report, br.b.rtcp_port)
    data, src = await ca.recv()
    assert (data, src) == (report, (HOST, br.a.rtcp_port))
    await pa.nothing(0.05)  # RTCP never shows up on the RTP sockets
    await pb.nothing(0.05)

    # RTCP keeps flowing on hold (RFC 3264 §5.1); RTP does not
    br.hold()
    ca.send(report, br.a.rtcp_port)
    assert await cb.recv_data() == report
    pa.send(rtp(1), br.a.rtp_port)
    await pb.nothing()
    st = br.stats()
    assert (st.a.rtcp_packets_in, st.b.rtcp_packets_out, st.b.rtcp_bytes_out) == (2, 2, 2 * 20)
    assert st.a.dropped_no_target == 1


@pytest.mark.asyncio
async def test_default_rtcp_port_is_rtp_plus_one(relay: Relay) -> None:
    ep = await relay.open_endpoint("x")
    ep.set_remote(HOST, 40000)
    assert ep.remote_rtp == (HOST, 40000)
    assert ep.remote_rtcp == (HOST, 40001)


# ---------------------------------------------------------------------------- latching


@pytest.mark.asyncio
async def test_latches_to_actual_source_port(relay: Relay, peers: list[Peer]) -> None:
    """The SDP names one port (the NAT's inside view); packets come from another."""
    sdp_port, actual, pb, stranger = peer(peers), peer(peers), peer(peers), peer(peers)
    br = await relay.open_bridge("nat")
    br.set_remote("a", HOST, sdp_port.port)
    br.set_remote("b", HOST, pb.port)

    # before A's first packet, B->A goes where the SDP said
    pb.send(rtp(1), br.b.rtp_port)
    assert await sdp_port.recv_data() == rtp(1)
    assert latched(br.a) is None

    actual.send(rtp(2), br.a.rtp_port)
    assert await pb.recv_data() == rtp(2)
    assert br.a.latched_rtp == (HOST, actual.port)
    assert br.a.remote_rtp == (HOST, actual.port)

    pb.send(rtp(3), br.b.rtp_port)
    assert await actual.recv_data() == rtp(3)
    await sdp_port.nothing()

    # latched: a third party cannot take the stream over
    stranger.send(rtp(4), br.a.rtp_port)
    await pb.nothing()
    pb.send(rtp(5), br.b.rtp_port)
    assert await actual.recv_data() == rtp(5)
    await stranger.nothing(0.05)
    assert br.a.dropped_source == 1
    assert br.a.latches == 1
    assert br.a.latched_rtcp is None  # RTCP latches on its own socket (test_rtcp_latch)


@pytest.mark.asyncio
async def test_rtcp_latch(relay: Relay, peers: list[Peer]) -> None:
    pa, pb, rtcp_actual, rtcp_b = peer(peers), peer(peers), peer(peers), peer(peers)
    br = await relay.open_bridge("nat")
    br.set_remote("a", HOST, pa.port)  # RTCP expected on pa.port + 1 (nobody there)
    br.set_remote("b", HOST, pb.port, rtcp_b.port)
    rtcp_actual.send(rtcp_rr(), br.a.rtcp_port)
    assert await rtcp_b.recv_data() == rtcp_rr()
    assert br.a.latched_rtcp == (HOST, rtcp_actual.port)
    assert latched(br.a) is None
    rtcp_b.send(rtcp_rr(7), br.b.rtcp_port)
    assert await rtcp_actual.recv_data() == rtcp_rr(7)


@pytest.mark.asyncio
async def test_latch_before_bridging_and_unlatch_on_new_sdp(
    relay: Relay, peers: list[Peer]
) -> None:
    early, moved, pb = peer(peers), peer(peers), peer(peers)
    a = await relay.open_endpoint("caller")
    a.set_remote(HOST, early.port)
    early.send(rtp(1), a.rtp_port)  # early media before the other leg exists: latched, dropped
    for _ in range(50):
        if a.latched_rtp:
            break
        await asyncio.sleep(0.01)
    assert a.latched_rtp == (HOST, early.port)
    assert a.dropped_no_target == 1

    a.set_remote(HOST, early.port)  # same SDP again (refresh, resume): latch kept
    assert a.latched_rtp == (HOST, early.port)
    a.set_remote(HOST, moved.port)  # re-INVITE moved the media: latch forgotten
    assert latched(a) is None
    assert a.remote_rtp == (HOST, moved.port)

    b = await relay.open_endpoint("dispatcher")
    b.set_remote(HOST, pb.port)
    relay.bridge(a, b)
    moved.send(rtp(2), a.rtp_port)
    assert await pb.recv_data() == rtp(2)
    early.send(rtp(3), a.rtp_port)  # the old address is now a stranger
    await pb.nothing()
    assert a.latched_rtp == (HOST, moved.port)

    a.unlatch()
    assert a.remote_rtp == (HOST, moved.port)
    early.send(rtp(4), a.rtp_port)
    assert await pb.recv_data() == rtp(4)
    assert a.latched_rtp == (HOST, early.port)


@pytest.mark.asyncio
async def test_sdp_host_latch_mode(relay: Relay, peers: list[Peer]) -> None:
    pa, other_port, pb = peer(peers), peer(peers), peer(peers)
    a = await relay.open_endpoint("trunk", latch="sdp-host")
    b = await relay.open_endpoint("dispatcher")
    b.set_remote(HOST, pb.port)
    br = relay.bridge(a, b)

    # no SDP yet: with sdp-host nothing is accepted
    pa.send(rtp(1), a.rtp_port)
    await pb.nothing()
    assert a.dropped_source == 1

    a.set_remote(HOST, pa.port)
    # a packet from another host is refused (injected: tests only use 127.0.0.1 on the wire)
    proto = a._rtp_transport.get_protocol()
    assert isinstance(proto, asyncio.DatagramProtocol)
    proto.datagram_received(rtp(2), ("192.0.2.7", pa.port))
    assert a.dropped_source == 2
    assert latched(a) is None

    # the SDP host from another port latches (port-rewriting NAT)
    other_port.send(rtp(3), a.rtp_port)
    assert await pb.recv_data() == rtp(3)
    assert a.latched_rtp == (HOST, other_port.port)
    assert br.stats().a.latches == 1


@pytest.mark.asyncio
async def test_latch_off_sends_to_sdp_address(relay: Relay, peers: list[Peer]) -> None:
    sdp_peer, sender, pb = peer(peers), peer(peers), peer(peers)
    a = await relay.open_endpoint("asymmetric", latch="off")
    a.set_remote(HOST, sdp_peer.port)
    b = await relay.open_endpoint("b")
    b.set_remote(HOST, pb.port)
    relay.bridge(a, b)
    sender.send(rtp(1), a.rtp_port)
    assert await pb.recv_data() == rtp(1)
    pb.send(rtp(2), b.rtp_port)
    assert await sdp_peer.recv_data() == rtp(2)
    await sender.nothing()
    assert latched(a) is None


# ---------------------------------------------------------------------------- re-pointing


@pytest.mark.asyncio
async def test_transfer_replaces_one_side_mid_call(relay: Relay, peers: list[Peer]) -> None:
    """Caller stays on A; the dispatcher (B) is swapped for a 988 leg (C), then recalled."""
    caller, dispatcher, counselor = peer(peers), peer(peers), peer(peers)
    br = await bridged(relay, caller, dispatcher)
    caller_ep = br.a
    caller_port = caller_ep.rtp_port
    caller.send(rtp(1), caller_port)
    assert await dispatcher.recv_data() == rtp(1)

    # the 988 leg's endpoint exists before it answers (its port went into the INVITE's SDP);
    # its early media latches it but goes nowhere
    c = await relay.open_endpoint("988")
    c.set_remote(HOST, counselor.port)
    counselor.send(rtp(100), c.rtp_port)
    await caller.nothing()

    old = br.replace("b", c)
    assert old.bridge is None and not old.closed
    assert br.b is c and br.a is caller_ep
    assert caller_ep.latched_rtp == (HOST, caller.port)  # caller's side untouched

    caller.send(rtp(2), caller_port)
    data, src = await counselor.recv()
    assert (data, src) == (rtp(2), (HOST, c.rtp_port))
    counselor.send(rtp(101), c.rtp_port)
    data, src = await caller.recv()
    assert (data, src) == (rtp(101), (HOST, caller_port))  # same socket the caller always saw
    await dispatcher.nothing()
    dispatcher.send(rtp(200), old.rtp_port)  # the detached leg reaches nobody
    await caller.nothing()
    assert old.dropped_no_target == 1

    # 988 failed after all: recall the dispatcher
    c_again = br.replace("b", old)
    assert c_again is c
    c.close()
    caller.send(rtp(3), caller_port)
    assert await dispatcher.recv_data() == rtp(3)
    await counselor.nothing(0.05)
    await c.wait_closed()


@pytest.mark.asyncio
async def test_forwarding_state_survives_replace(relay: Relay, peers: list[Peer]) -> None:
    pa, pb, pc = peer(peers), peer(peers), peer(peers)
    br = await bridged(relay, pa, pb)
    br.set_forwarding("b", False)
    c = await relay.open_endpoint("c")
    c.set_remote(HOST, pc.port)
    br.replace("b", c).close()
    assert br.forwarding("a") and not br.forwarding("b")
    pc.send(rtp(1), c.rtp_port)
    await pa.nothing()
    pa.send(rtp(2), br.a.rtp_port)
    assert await pc.recv_data() == rtp(2)


# ---------------------------------------------------------------------------- hold


@pytest.mark.asyncio
async def test_hold_one_direction_and_both(relay: Relay, peers: list[Peer]) -> None:
    pa, pb = peer(peers), peer(peers)
    br = await bridged(relay, pa, pb)

    br.set_forwarding("a", False)  # A is held by B's recvonly/sendonly: B->A only
    assert not br.forwarding("a") and br.forwarding("b")
    pa.send(rtp(1), br.a.rtp_port)
    await pb.nothing()
    pb.send(rtp(2), br.b.rtp_port)
    assert await pa.recv_data() == rtp(2)

    br.hold()  # inactive
    pa.send(rtp(3), br.a.rtp_port)
    pb.send(rtp(4), br.b.rtp_port)
    await pa.nothing()
    await pb.nothing(0.01)

    br.resume()
    pa.send(rtp(5), br.a.rtp_port)
    assert await pb.recv_data() == rtp(5)
    pb.send(rtp(6), br.b.rtp_port)
    assert await pa.recv_data() == rtp(6)
    st = br.stats()
    assert (st.a.dropped_no_target, st.b.dropped_no_target) == (2, 1)
    assert (st.a.rtp_packets_in, st.b.rtp_packets_out) == (3, 1)


@pytest.mark.asyncio
async def test_port_zero_and_unspecified_host_mean_no_target(
    relay: Relay, peers: list[Peer]
) -> None:
    pa, pb = peer(peers), peer(peers)
    br = await bridged(relay, pa, pb)
    pb.send(rtp(0), br.b.rtp_port)  # B latches...
    assert await pa.recv_data() == rtp(0)
    br.set_remote("b", "0.0.0.0", pb.port)  # ...then holds, RFC 2543 style
    assert br.b.remote_rtp is None
    pa.send(rtp(1), br.a.rtp_port)
    await pb.nothing()
    pb.send(rtp(10), br.b.rtp_port)  # B may keep sending (sendonly): relayed, and latches,
    assert await pa.recv_data() == rtp(10)
    assert br.b.latched_rtp == (HOST, pb.port)
    pa.send(rtp(11), br.a.rtp_port)  # but nothing goes to B while its SDP says no
    await pb.nothing()
    br.set_remote("b", HOST, 0)  # stream rejected
    assert br.b.remote_rtp is None and br.b.remote_rtcp is None
    pa.send(rtp(2), br.a.rtp_port)
    await pb.nothing()
    br.set_remote("b", HOST, pb.port)
    pa.send(rtp(3), br.a.rtp_port)
    assert await pb.recv_data() == rtp(3)
    assert br.a.dropped_no_target == 3


@pytest.mark.asyncio
async def test_bad_sdp_address_is_a_488(relay: Relay) -> None:
    ep = await relay.open_endpoint("x")
    for host, port in (("pbx.example.com", 4000), ("::1", 4000), (HOST, 70000)):
        with pytest.raises(MediaError) as info:
            ep.set_remote(host, port)
        assert (info.value.status, info.value.side) == (488, "peer")
    assert ep.remote_rtp is None


# ---------------------------------------------------------------------------- lifecycle


@pytest.mark.asyncio
async def test_bridge_misuse_is_a_local_error(relay: Relay) -> None:
    br = await relay.open_bridge("one")
    lone = await relay.open_endpoint("lone")
    for a, b in ((br.a, lone), (lone, lone)):
        with pytest.raises(MediaError) as info:
            relay.bridge(a, b)
        assert info.value.side == "local"
    with pytest.raises(MediaError):
        br.replace("a", br.b)
    lone.close()
    with pytest.raises(MediaError):
        br.replace("b", lone)
    with pytest.raises(ValueError):
        br.set_forwarding("c", True)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_one_leg_closing_dissolves_the_bridge(relay: Relay, peers: list[Peer]) -> None:
    pa, pb = peer(peers), peer(peers)
    br = await bridged(relay, pa, pb)
    b = br.b
    b.close()
    assert br.closed and br.a.bridge is None and not br.a.closed
    pa.send(rtp(1), br.a.rtp_port)
    await pb.nothing()
    await b.wait_closed()
    assert relay.stats().bridges == 0
    assert relay.ports.in_use == 1
    # the survivor can be bridged to a new leg
    c = await relay.open_endpoint("c")
    c.set_remote(HOST, pb.port)
    relay.bridge(br.a, c)
    pa.send(rtp(2), br.a.rtp_port)
    assert await pb.recv_data() == rtp(2)


@pytest.mark.asyncio
async def test_global_counters_include_closed_sessions(relay: Relay, peers: list[Peer]) -> None:
    pa, pb = peer(peers), peer(peers)
    for _ in range(3):
        br = await bridged(relay, pa, pb)
        pa.send(rtp(1), br.a.rtp_port)
        assert await pb.recv_data() == rtp(1)
        br.close()
        await br.wait_closed()
    st = relay.stats()
    assert (st.counters.rtp_packets_in, st.counters.rtp_packets_out) == (3, 3)
    assert st.counters.rtp_bytes_out == 3 * 172
    assert (st.endpoints, st.bridges) == (0, 0)


# ---------------------------------------------------------------------------- ports


def test_allocator_pairs_and_validation() -> None:
    base = free_base(4)
    alloc = PortAllocator(HOST, base, base + 8)  # last even port has no RTCP partner
    assert alloc.capacity == 4
    for bad in ((base + 1, base + 9), (base, base), (80, 90)):
        with pytest.raises(ValueError):
            PortAllocator(HOST, *bad)
    with pytest.raises(ValueError):
        PortAllocator("localhost", base, base + 9)


def test_allocator_skips_ports_that_fail_to_bind() -> None:
    base = free_base(4)
    squatters = []
    for port in (base + 2, base + 5):  # RTP of pair 2, RTCP of pair 3
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((HOST, port))
        except OSError:
            s.close()
            pytest.skip("port range busy")
        squatters.append(s)
    alloc = PortAllocator(HOST, base, base + 7)
    got = []
    try:
        with pytest.raises(PortsExhaustedError):
            while True:
                got.append(alloc.allocate())
        assert {p.rtp_port for p in got} <= {base, base + 6}  # pairs 2 and 3 skipped
        assert all(p.rtcp_port == p.rtp_port + 1 for p in got)
        assert alloc.bind_conflicts >= 2
    finally:
        for p in got:
            p.close()
        for s in squatters:
            s.close()


def test_allocator_reuses_released_ports_last() -> None:
    base = free_base(3)
    alloc = PortAllocator(HOST, base, base + 5)
    first = alloc.allocate()
    first.close()
    alloc.release(first.rtp_port)
    alloc.release(first.rtp_port)  # twice is harmless
    second = alloc.allocate()
    assert second.rtp_port != first.rtp_port
    second.close()


@pytest.mark.asyncio
async def test_exhausted_range_is_a_503(peers: list[Peer]) -> None:
    base = free_base(3)
    relay = Relay(PortAllocator(HOST, base, base + 5))
    eps: list[LegEndpoint] = []
    with pytest.raises(PortsExhaustedError) as info:
        for _ in range(4):
            eps.append(await relay.open_endpoint())
    err = info.value
    assert isinstance(err, MediaError)
    assert (err.status, err.side) == (503, "local")
    assert 1 <= len(eps) <= 3  # fewer if another process holds a port of the range
    with pytest.raises(PortsExhaustedError):
        await relay.open_bridge()
    assert relay.ports.in_use == len(eps)
    eps[0].close()
    await eps[0].wait_closed()
    again = await relay.open_endpoint()  # freed pair is usable again
    assert again.rtp_port == eps[0].rtp_port
    await relay.wait_closed()
    assert relay.ports.in_use == 0


@pytest.mark.asyncio
async def test_many_sessions_leak_no_fd_or_port(peers: list[Peer]) -> None:
    pa, pb = peer(peers), peer(peers)
    base = free_base(40)
    relay = Relay(PortAllocator(HOST, base, base + 79))
    fds = open_fds()
    for round_ in range(10):  # 10 x 20 calls = 200 sessions, 800 sockets, over 40 pairs
        bridges = [await bridged(relay, pa, pb) for _ in range(20)]
        for br in bridges:
            pa.send(rtp(round_), br.a.rtp_port)
        for _ in bridges:
            assert await pb.recv_data() == rtp(round_)
        for br in bridges:
            br.close()
        for br in bridges:
            await br.wait_closed()
        assert relay.ports.in_use == 0
        assert open_fds() == fds
    st = relay.stats()
    assert (st.endpoints, st.counters.rtp_packets_out) == (0, 200)
    # every port of the range can be bound again
    for port in range(base, base + 80):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, port))


# ---------------------------------------------------------------------------- hostile input


@pytest.mark.asyncio
async def test_hostile_input_dropped_without_exceptions(relay: Relay, peers: list[Peer]) -> None:
    attacker, pa, pb = peer(peers), peer(peers), peer(peers)
    br = await bridged(relay, pa, pb)
    junk_rtp = [
        b"",
        b"\x80",
        b"\x80" * 11,  # one byte short of a header
        bytes([0x00]) + b"\x00" * 19,  # version 0 (also what STUN looks like)
        bytes([0x40]) + b"\x00" * 19,  # version 1
        bytes([0xC0]) + b"\x00" * 19,  # version 3
        b"GET / HTTP/1.0\r\n\r\n",
        b"\x01\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12,  # STUN binding success
    ]
    rng = random.Random(7)
    junk_rtp += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(50)]
    expected_drops = sum(1 for j in junk_rtp if len(j) < 12 or j[0] >> 6 != 2)
    for j in junk_rtp:
        attacker.send(j, br.a.rtp_port)
    junk_rtcp = [b"", b"\x80\xc9\x00", b"\x80" * 7, b"\x00" * 8]
    for j in junk_rtcp:
        attacker.send(j, br.a.rtcp_port)

    # the first *valid* random packet (if any) latched the attacker; the rest of the valid
    # ones were relayed; nothing invalid latched or got through
    relayed = [j for j in junk_rtp if len(j) >= 12 and j[0] >> 6 == 2]
    for j in relayed:
        assert await pb.recv_data() == j
    await pb.nothing()
    for _ in range(50):
        if br.a.dropped_malformed == expected_drops + len(junk_rtcp):
            break
        await asyncio.sleep(0.01)
    assert br.a.dropped_malformed == expected_drops + len(junk_rtcp)
    if not relayed:
        assert br.a.latched_rtp is None

    # a maximum-size valid datagram is content the relay does not judge: relayed as is
    big = rtp(9, payload=b"\x55" * (65507 - 12))
    br.a.unlatch()
    pa.send(big, br.a.rtp_port)
    assert await pb.recv_data() == big


@pytest.mark.asyncio
async def test_flow_control_drops_instead_of_queueing(relay: Relay, peers: list[Peer]) -> None:
    pa, pb = peer(peers), peer(peers)
    br = await bridged(relay, pa, pb)
    proto = br.b._rtp_transport.get_protocol()
    assert isinstance(proto, asyncio.DatagramProtocol)
    proto.pause_writing()  # what asyncio does when B's socket buffer is full
    pa.send(rtp(1), br.a.rtp_port)
    await pb.nothing()
    proto.resume_writing()
    pa.send(rtp(2), br.a.rtp_port)
    assert await pb.recv_data() == rtp(2)
    assert br.a.dropped_no_target == 1


@pytest.mark.asyncio
async def test_selector_loop_reads_with_a_64k_buffer(relay: Relay) -> None:
    """asyncio's default 256 KiB recvfrom costs ~15 µs per datagram in malloc (bench/): the
    relay lowers it to the largest possible UDP datagram."""
    ep = await relay.open_endpoint("x")
    for tr in (ep._rtp_transport, ep._rtcp_transport):
        assert getattr(tr, "max_size", 65536) == 65536


# ---------------------------------------------------------------------------- uvloop


def test_relay_under_uvloop() -> None:
    """The daemon installs uvloop: same relaying and no leak there (uvloop owns the sockets
    differently from asyncio's selector loop)."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        pa, pb = Peer(), Peer()
        base = free_base(8)
        relay = Relay(PortAllocator(HOST, base, base + 15))
        loop = asyncio.get_running_loop()
        try:
            fds = open_fds()
            for _ in range(5):
                br = await bridged(relay, pa, pb)
                pa.send(rtp(1), br.a.rtp_port)
                data = await asyncio.wait_for(loop.sock_recv(pb.sock, 2048), 1)
                assert data == rtp(1)
                pb.send(rtcp_rr(), br.b.rtcp_port)
                data = await asyncio.wait_for(loop.sock_recv(pa.sock, 2048), 1)
                assert data == rtcp_rr()
                br.close()
                await br.wait_closed()
            assert relay.ports.in_use == 0
            assert open_fds() == fds
        finally:
            await relay.wait_closed()
            pa.close()
            pb.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
