"""SipStack on real loopback sockets against a peer that loses packets, and against garbage.

The peer is a raw UDP socket driven by a second, in-memory TransactionLayer: the packet loss is
ours to choose (a loopback never loses), which is the one thing a real peer cannot give us.
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast

import pytest

from telephony.io.stack import WAKE_GRID, SipStack
from telephony.sip import NameAddr, Request, Via, make_request, make_response, new_branch, parse_uri
from telephony.sip.parser import parse_message
from telephony.sip.transaction import (
    Endpoint,
    Event,
    RequestReceived,
    ResponseReceived,
    TimerConfig,
    TransactionLayer,
)

FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.5)


def options(local: Endpoint, dest: Endpoint, call_id: str) -> Request:
    uri = parse_uri(f"sip:988@{dest.host}:{dest.port}")
    return make_request(
        "OPTIONS",
        uri,
        via=Via("UDP", local.host, local.port, (("branch", new_branch()), ("rport", None))),
        from_=NameAddr(parse_uri(f"sip:probe@{local.host}"), params=(("tag", "p1"),)),
        to=NameAddr(uri),
        call_id=call_id,
        cseq=1,
    )


class LossyPeer(asyncio.DatagramProtocol):
    """Answers OPTIONS 200 after dropping the first ``drop_in`` requests it receives."""

    def __init__(self, drop_in: int) -> None:
        self.layer = TransactionLayer(FAST)
        self.drop_in = drop_in
        self.seen = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.seen += 1
        if self.seen <= self.drop_in:
            return
        src = Endpoint("udp", str(addr[0]), int(addr[1]))
        now = asyncio.get_running_loop().time()
        self.layer.receive(parse_message(data), src, now)
        for ev in self.layer.events():
            if isinstance(ev, RequestReceived) and ev.key is not None:
                self.layer.send_response(make_response(ev.request, 200), now)
        assert self.transport is not None
        for t in self.layer.transmits():
            self.transport.sendto(t.data, (t.dest.host, t.dest.port))


@pytest.mark.asyncio
async def test_request_survives_lost_datagrams_by_retransmission() -> None:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(
        lambda: LossyPeer(drop_in=3), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    got: asyncio.Future[ResponseReceived] = loop.create_future()

    def handler(ev: Event) -> None:
        if isinstance(ev, ResponseReceived) and not got.done():
            got.set_result(ev)

    stack = SipStack(handler, FAST)
    try:
        local = await stack.listen("udp", "127.0.0.1", 0)
        dest = Endpoint("udp", "127.0.0.1", port)
        started = loop.time()
        stack.send_request(options(local, dest, "lossy-1@127.0.0.1"), dest)
        ev = await asyncio.wait_for(got, 5)
        elapsed = loop.time() - started
    finally:
        await stack.close()
        transport.close()
    assert ev.response.status == 200
    assert peer.seen == 4  # three lost, the fourth (Timer E retransmission) answered
    # E fires at T1, 3*T1, 7*T1: the answer cannot come before the third retransmission
    assert elapsed >= 7 * FAST.t1 * 0.9


@pytest.mark.asyncio
async def test_stopped_timers_leave_the_wakeup_early_never_late() -> None:
    """Every answered OPTIONS stops its Timer E: the loop's wake-up is not moved for that (it
    comes early, finds nothing due and sets the next one), it is never later than the layer's
    earliest deadline on the 10 ms grid, and Timer K still ends every transaction."""
    loop = asyncio.get_running_loop()
    transport, _peer = await loop.create_datagram_endpoint(
        lambda: LossyPeer(drop_in=0), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    answered = 0

    def handler(ev: Event) -> None:
        nonlocal answered
        answered += isinstance(ev, ResponseReceived)

    stack = SipStack(handler, TimerConfig(t1=0.5, t2=4.0, t4=0.5))  # E first at 0.5 s, K 0.5 s

    def never_late() -> None:
        deadline = stack.layer.get_timer()
        at = stack._wake.at
        assert deadline is None or (at is not None and at <= deadline + WAKE_GRID)

    try:
        local = await stack.listen("udp", "127.0.0.1", 0)
        dest = Endpoint("udp", "127.0.0.1", port)
        stack.send_request(options(local, dest, "wake-0@127.0.0.1"), dest)
        first_wakeup = stack._wake.at
        for i in range(1, 20):
            stack.send_request(options(local, dest, f"wake-{i}@127.0.0.1"), dest)
            never_late()
            await asyncio.sleep(0.001)
            never_late()
        while answered < 20:
            await asyncio.sleep(0.001)
            assert first_wakeup is not None and loop.time() < first_wakeup, "no answers in T1"
        # every Timer E was stopped by its 200 before it fired; the wake-up set for the first
        # one stayed where it was
        assert stack._wake.at == first_wakeup
        while len(stack.layer):
            never_late()
            await asyncio.sleep(0.01)
            assert loop.time() < first_wakeup + 5, "transactions never ended"
    finally:
        await stack.close()
        transport.close()


@pytest.mark.asyncio
async def test_garbage_gets_400_or_silence_and_the_stack_keeps_serving() -> None:
    received: list[RequestReceived] = []
    stack = SipStack(lambda ev: None, FAST)

    def handler(ev: Event) -> None:
        if isinstance(ev, RequestReceived) and ev.key is not None:
            received.append(ev)
            stack.send_response(make_response(ev.request, 200))

    stack.handler = handler
    local = await stack.listen("udp", "127.0.0.1", 0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    me = sock.getsockname()
    dest = Endpoint("udp", local.host, local.port)
    try:
        bad = options(Endpoint("udp", me[0], me[1]), dest, "bad-1@127.0.0.1")
        raw = bad.to_bytes().replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS")
        for junk in (b"\x00\xff\xfe garbage", b"NOT SIP AT ALL\r\n\r\n", raw):
            sock.sendto(junk, (local.host, local.port))
        answer = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2)
        assert answer.startswith(b"SIP/2.0 400 ")
        assert b"bad-1@127.0.0.1" in answer
        good = options(Endpoint("udp", me[0], me[1]), dest, "good-1@127.0.0.1")
        sock.sendto(good.to_bytes(), (local.host, local.port))
        answer = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2)
        assert answer.startswith(b"SIP/2.0 200 ")
        assert [ev.request.call_id for ev in received] == ["good-1@127.0.0.1"]
        assert stack.transports.malformed == 3
    finally:
        sock.close()
        await stack.close()


@pytest.mark.asyncio
async def test_tcp_keepalive_ping_gets_pong_and_framing_errors_close() -> None:
    stack = SipStack(lambda ev: None, FAST)
    local = await stack.listen("tcp", "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(local.host, local.port)
        writer.write(b"\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
        writer.write(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: nonsense\r\n\r\n")
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 2)  # closed by the stack
        assert rest == b""  # no Via/From/To/Call-ID/CSeq to address an answer
        writer.close()
    finally:
        await stack.close()


def test_the_stack_runs_on_uvloop() -> None:
    """handoffd installs uvloop when present: the same exchange must work on its loop."""
    import uvloop  # noqa: PLC0415 - the point of this test

    async def exchange() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[ResponseReceived] = loop.create_future()

        def client_events(ev: Event) -> None:
            if isinstance(ev, ResponseReceived) and not got.done():
                got.set_result(ev)

        server = SipStack(lambda ev: None, FAST)

        def server_events(ev: Event) -> None:
            if isinstance(ev, RequestReceived) and ev.key is not None:
                server.send_response(make_response(ev.request, 200))

        server.handler = server_events
        client = SipStack(client_events, FAST)
        try:
            there = await server.listen("udp", "127.0.0.1", 0)
            here = await client.listen("udp", "127.0.0.1", 0)
            client.send_request(options(here, there, "uvloop-1@127.0.0.1"), there)
            ev = await asyncio.wait_for(got, 5)
            return ev.response.status, type(loop).__module__
        finally:
            await client.close()
            await server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        status, loop_module = runner.run(exchange())
    assert status == 200
    assert loop_module.startswith("uvloop")
