"""The relay's kept socket pairs (``Relay(..., keep_open=N)``) on real UDP sockets.

A closed endpoint's sockets stay open and go back to the allocator's FIFO queue; the endpoint
that gets that port later reuses them. What must hold: the port order is exactly the one
without keeping, a reused pair relays like a new one, whatever reaches a parked pair is dropped
(counted, never latched by the next call), and shutdown closes everything.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections.abc import Iterator

import pytest
import uvloop

from telephony.media import LegEndpoint, PortAllocator, Relay

HOST = "127.0.0.1"


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + bytes(160)


def free_base(pairs: int) -> int:
    return random.randrange(20000, 32000 - 2 * pairs, 2)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Peer:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((HOST, 0))
        self.port: int = self.sock.getsockname()[1]

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, (HOST, port))

    async def recv(self, timeout: float = 1.0) -> bytes:
        loop = asyncio.get_running_loop()  # sock_recv: uvloop has no sock_recvfrom
        return await asyncio.wait_for(loop.sock_recv(self.sock, 70000), timeout)


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.sock.close()


def new_peer(peers: list[Peer]) -> Peer:
    p = Peer()
    peers.append(p)
    return p


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def port_sequence(relay: Relay, steps: list[int]) -> list[int]:
    """Open/close endpoints by ``steps`` (n > 0: open n; n < 0: close the -n oldest open);
    the RTP ports handed out, relative to the range start."""
    base = relay.ports.first
    open_eps: list[LegEndpoint] = []
    got: list[int] = []
    for n in steps:
        if n > 0:
            for _ in range(n):
                ep = relay.open_endpoint_nowait()
                got.append(ep.rtp_port - base)
                open_eps.append(ep)
            await settle()
        else:
            for ep in open_eps[:-n]:
                ep.close()
            del open_eps[:-n]
            await settle()
    return got


@pytest.mark.asyncio
async def test_ports_come_in_the_same_fifo_order_with_or_without_keeping() -> None:
    steps = [3, -2, 4, -3, 2, -4, 5, -5, 6, -1, 3]
    plain = Relay(PortAllocator(HOST, b := free_base(16), b + 31))
    kept = Relay(PortAllocator(HOST, k := free_base(16), k + 31), keep_open=16)
    try:
        assert await kept.prewarm() == 16  # before the first endpoint: nothing moves after
        assert await port_sequence(plain, steps) == await port_sequence(kept, steps)
        assert kept.ports.kept > 0  # and they were reused, not reopened
    finally:
        await plain.wait_closed()
        await kept.wait_closed()


@pytest.mark.asyncio
async def test_a_closed_endpoint_keeps_its_sockets_and_the_port_goes_back_to_the_queue() -> None:
    base = free_base(4)
    relay = Relay(PortAllocator(HOST, base, base + 7), keep_open=4)
    fds = open_fds()
    try:
        ep = await relay.open_endpoint("first")
        await asyncio.sleep(0.05)  # the first endpoint started prewarming the other three
        assert (relay.ports.in_use, relay.ports.kept, open_fds()) == (1, 3, fds + 8)
        ep.close()
        await ep.wait_closed()  # returns: nothing of its own is left to close
        assert (relay.ports.in_use, relay.ports.kept, open_fds()) == (0, 4, fds + 8)
    finally:
        await relay.wait_closed()
    assert (relay.ports.in_use, relay.ports.kept, open_fds()) == (0, 0, fds)


@pytest.mark.asyncio
async def test_a_reused_pair_relays_both_ways(peers: list[Peer]) -> None:
    base = free_base(2)
    relay = Relay(PortAllocator(HOST, base, base + 3), keep_open=2)  # 2 pairs: both reused
    try:
        for _call in range(3):
            a = relay.open_endpoint_nowait("a")
            b = relay.open_endpoint_nowait("b")
            await settle()
            pa, pb = new_peer(peers), new_peer(peers)
            a.set_remote(HOST, pa.port, pa.port)
            b.set_remote(HOST, pb.port, pb.port)
            relay.bridge(a, b)
            pa.send(rtp(1), a.rtp_port)
            assert await pb.recv() == rtp(1)
            pb.send(rtp(2), b.rtp_port)
            assert await pa.recv() == rtp(2)
            a.close()
            b.close()
            await settle()
        assert relay.ports.kept == 2
        assert relay.stats().counters.rtp_packets_out == 6
    finally:
        await relay.wait_closed()


@pytest.mark.asyncio
async def test_what_reaches_a_parked_pair_is_dropped_and_never_latches_the_next_call(
    peers: list[Peer],
) -> None:
    base = free_base(2)
    relay = Relay(PortAllocator(HOST, base, base + 3), keep_open=2)
    try:
        ep = await relay.open_endpoint("old call")
        port = ep.rtp_port
        ep.close()
        await settle()
        stray = new_peer(peers)
        for seq in range(3):  # the old call's peer has not seen our BYE yet
            stray.send(rtp(seq), port)
        await asyncio.sleep(0.05)
        assert relay.stats().counters.dropped_source == 3
        buddy = relay.open_endpoint_nowait("buddy")
        nxt = relay.open_endpoint_nowait("next call")
        assert nxt.rtp_port == port  # its FIFO turn: the old call's pair, reused
        real, other = new_peer(peers), new_peer(peers)
        nxt.set_remote(HOST, real.port, real.port)
        await asyncio.sleep(0.05)
        assert nxt.latched_rtp is None  # nothing of the old call was left to latch on
        buddy.set_remote(HOST, other.port, other.port)
        relay.bridge(nxt, buddy)
        real.send(rtp(9), port)
        assert await other.recv() == rtp(9)
        assert nxt.latched_rtp == (HOST, real.port)
    finally:
        await relay.wait_closed()


@pytest.mark.asyncio
async def test_prewarm_opens_pairs_at_the_head_of_the_queue_in_order() -> None:
    base = free_base(8)
    relay = Relay(PortAllocator(HOST, base, base + 15), keep_open=8)
    try:
        assert await relay.prewarm(3) == 3
        assert relay.ports.kept == 3
        assert await relay.prewarm(3) == 0  # already there
        eps = [relay.open_endpoint_nowait() for _ in range(4)]
        assert [ep.rtp_port - base for ep in eps] == [0, 2, 4, 6]
        assert relay.ports.kept == 0
        eps[3].close()  # closed before its sockets were attached: closed, not kept
        await settle()
        assert relay.ports.kept == 0
        for ep in eps[:3]:
            ep.close()
        assert relay.ports.kept == 3
    finally:
        await relay.wait_closed()
    assert relay.ports.in_use == 0


@pytest.mark.asyncio
async def test_the_first_endpoint_prewarms_a_few_pairs_not_the_whole_range() -> None:
    base = free_base(64)
    fds = open_fds()
    relay = Relay(PortAllocator(HOST, base, base + 127), keep_open=64, prewarm=8)
    ep = relay.open_endpoint_nowait()
    for _ in range(50):
        await asyncio.sleep(0.01)
        if relay.ports.kept == 8:
            break
    assert relay.ports.kept == 8  # 8 pairs open ahead of ep's
    assert ep.rtp_port == base
    assert open_fds() == fds + 18  # the other 55 pairs are bound only when calls need them
    await relay.wait_closed()
    assert (relay.ports.in_use, relay.ports.kept, open_fds()) == (0, 0, fds)
    assert Relay(PortAllocator(HOST, base, base + 127), keep_open=8).prewarm_pairs == 8
    assert Relay(PortAllocator(HOST, base, base + 127), keep_open=64).prewarm_pairs == 32


@pytest.mark.asyncio
async def test_shutdown_during_prewarm_leaves_nothing_open() -> None:
    base = free_base(200)
    fds = open_fds()
    relay = Relay(PortAllocator(HOST, base, base + 399), keep_open=200)
    relay.open_endpoint_nowait()
    await asyncio.sleep(0)  # prewarm has started, far from done
    await relay.wait_closed()
    assert (relay.ports.in_use, relay.ports.kept, open_fds()) == (0, 0, fds)


def test_keep_open_is_capped_by_the_range_and_the_file_limit() -> None:
    relay = Relay(PortAllocator(HOST, 20000, 20019), keep_open=10**6)
    assert relay.keep_open == 10
    assert Relay(PortAllocator(HOST, 20000, 20019)).keep_open == 0


def test_reuse_under_uvloop(peers: list[Peer]) -> None:
    """The daemon's loop: transports change protocol with set_protocol there too."""

    async def scenario() -> None:
        base = free_base(2)
        relay = Relay(PortAllocator(HOST, base, base + 3), keep_open=2)
        try:
            for _call in range(3):
                a = relay.open_endpoint_nowait("a")
                b = relay.open_endpoint_nowait("b")
                await settle()
                pa, pb = new_peer(peers), new_peer(peers)
                a.set_remote(HOST, pa.port, pa.port)
                b.set_remote(HOST, pb.port, pb.port)
                relay.bridge(a, b)
                pa.send(rtp(1), a.rtp_port)
                assert await pb.recv() == rtp(1)
                a.close()
                b.close()
                await settle()
            assert relay.ports.kept == 2
        finally:
            await relay.wait_closed()
        assert relay.ports.in_use == 0

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
