"""asyncio SIP transports: UDP and TCP listeners and connections.

Each transport turns bytes from the network into parsed messages (``on_message(msg, source)``)
and sends bytes to an :class:`Endpoint`. Malformed requests are answered with a stateless 400 (or
the status their :class:`ParseError` carries) when an answer can be addressed, and dropped
otherwise; the transport keeps serving either way. A stream that loses its framing is closed.

TLS will be one more stream listener here (``loop.create_server(..., ssl=ctx)``): the stream code
does not care what carries the bytes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import cast

from telephony.sip.errors import ParseError
from telephony.sip.message import Request, Response
from telephony.sip.parser import KeepAlive, StreamParser, parse_message
from telephony.sip.reject import reject_malformed
from telephony.sip.transaction import Endpoint

log = logging.getLogger("telephony.io")

UDP_RECEIVE_BUFFER = 4 * 1024 * 1024  # bytes: ~4,000 SIP datagrams

MessageHandler = Callable[[Request | Response, Endpoint], None]
FailureHandler = Callable[[Endpoint, Exception], None]

CRLF = b"\r\n"


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: Transports) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None
        self.v6 = False  # bound to an IPv6 address (read once: sockname is a syscall)
        self.closed = asyncio.get_running_loop().create_future()  # its socket is closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        local = transport.get_extra_info("sockname")
        self.v6 = local is not None and ":" in str(local[0])

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source = Endpoint("udp", str(addr[0]), int(addr[1]))
        owner = self.owner
        owner.received_datagrams += 1
        if data in (CRLF, CRLF + CRLF):
            return  # keep-alive on UDP
        try:
            msg = parse_message(data)
        except ParseError as err:
            owner.malformed += 1
            log.info("malformed datagram from %s: %s (%d)", source.host, err.reason, err.status)
            answer = reject_malformed(data, err)
            if answer is not None and self.transport is not None:
                self.transport.sendto(answer, addr[:2])
            return
        owner.on_message(msg, source)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like; the transaction layer's timers cover the loss
        log.debug("udp error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _StreamProtocol(asyncio.Protocol):
    """One TCP connection, accepted or opened by us."""

    def __init__(self, owner: Transports, key: Endpoint | None = None) -> None:
        self.owner = owner
        self.parser = StreamParser()
        self.transport: asyncio.Transport | None = None
        self.key = key
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.key is None:
            peer = self.transport.get_extra_info("peername")
            self.key = Endpoint("tcp", str(peer[0]), int(peer[1]))
        self.owner._streams[self.key] = self
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        assert self.key is not None and self.transport is not None
        try:
            events = self.parser.feed(data)
        except ParseError as err:
            self.owner.malformed += 1
            log.info("malformed stream from %s: %s (%d)", self.key.host, err.reason, err.status)
            answer = reject_malformed(bytes(data), err)
            if answer is not None:
                self.transport.write(answer)
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, KeepAlive):
                self.transport.write(CRLF)  # pong (RFC 5626 §3.5.1)
            else:
                self.owner.on_message(ev, self.key)
        if self.parser._error is not None:  # framing lost after complete messages
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is not None and self.owner._streams.get(self.key) is self:
            del self.owner._streams[self.key]

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)


class Transports:
    """The SIP transports of one stack: any number of UDP sockets and TCP listeners."""

    def __init__(self, on_message: MessageHandler, on_failure: FailureHandler) -> None:
        self.on_message = on_message
        self.on_failure = on_failure
        self._udp: list[_UdpProtocol] = []
        self._servers: list[asyncio.Server] = []
        self._streams: dict[Endpoint, _StreamProtocol] = {}
        self._connecting: set[asyncio.Task[None]] = set()
        self.received_datagrams = 0
        self.malformed = 0

    async def listen_udp(self, host: str, port: int) -> Endpoint:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # a burst arriving while the loop is busy (a GC pass, a large reload) must wait in
            # the kernel, not be dropped: ask for UDP_RECEIVE_BUFFER (the kernel caps it at
            # net.core.rmem_max)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        self._udp.append(proto)
        sock = transport.get_extra_info("sockname")
        return Endpoint("udp", str(sock[0]), int(sock[1]))

    async def listen_tcp(self, host: str, port: int) -> Endpoint:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _StreamProtocol(self), host, port)
        self._servers.append(server)
        sock = server.sockets[0].getsockname()
        return Endpoint("tcp", str(sock[0]), int(sock[1]))

    def send(self, data: bytes, dest: Endpoint) -> None:
        """Send ``data``; failures are reported through ``on_failure``, never raised."""
        if dest.transport == "udp":
            if not self._udp or self._udp[0].transport is None:
                self.on_failure(dest, OSError("no UDP socket"))
                return
            udp = self._pick_udp(dest)
            assert udp.transport is not None
            udp.transport.sendto(data, (dest.host, dest.port))
            return
        stream = self._streams.get(dest)
        if stream is None:
            stream = _StreamProtocol(self, key=dest)
            self._streams[dest] = stream
            task = asyncio.get_running_loop().create_task(self._connect(stream, dest))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
        stream.send(data)

    def _pick_udp(self, dest: Endpoint) -> _UdpProtocol:
        udp = self._udp
        if len(udp) == 1:
            return udp[0]
        family_v6 = ":" in dest.host
        for proto in udp:
            if proto.v6 == family_v6:
                return proto
        return udp[0]

    async def _connect(self, stream: _StreamProtocol, dest: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: stream, dest.host, dest.port)
        except OSError as exc:
            if self._streams.get(dest) is stream:
                del self._streams[dest]
            self.on_failure(dest, exc)

    async def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        for proto in self._udp:
            if proto.transport is not None:
                proto.transport.close()
        if self._udp:  # the loop closes the sockets on its next turn: the ports are free after
            await asyncio.wait([proto.closed for proto in self._udp], timeout=5)
        for stream in list(self._streams.values()):
            if stream.transport is not None:
                stream.transport.close()
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._udp.clear()
        self._servers.clear()
        self._streams.clear()
