"""Socket pairs kept open between two endpoints: the relay's ``keep_open`` (see relay.py).

Opening an endpoint binds two sockets and attaches two transports; closing undoes it. With
``Relay(..., keep_open=N)`` a closed endpoint's sockets stay open instead: the pair goes back to
the allocator's FIFO queue as usual (``PortAllocator.release(port, keep=pair)``: same reuse
order, same delay before a port is handed out again), and when its turn comes the next endpoint
gets the open transports as they are. Until then :class:`_Parked` reads and drops whatever
arrives (counted: nobody is on that port, and nothing of an old call can latch the next one).

At most ``N`` pairs are kept, never more than a quarter of the process's file descriptor limit
(two sockets each: kept sockets take at most half of it). The first endpoint opens a few pairs
ahead (``prewarm``) so that the first calls after a start find them open too; the rest of the
range is bound only as calls use it, as without keeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import Any, cast

from telephony.media.ports import MediaError, PortAllocator, PortPair

log = logging.getLogger("telephony.media")

PREWARM = 32  # default: socket pairs opened ahead when keep_open is set
CLOSE_WAIT = 5.0  # seconds shutdown waits for the kept sockets to close
Transports = tuple[asyncio.DatagramTransport, asyncio.DatagramTransport]


class _Parked(asyncio.DatagramProtocol):
    """Reads one kept socket between two endpoints: drops everything. One per transport, so
    that shutdown waits for exactly the transports it closed (see :meth:`KeptPairs.close`)."""

    __slots__ = ("pool",)

    def __init__(self, pool: KeptPairs) -> None:
        self.pool = pool

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.pool.drops += 1

    def error_received(self, exc: Exception) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._lost(self)


class KeptPairs:
    """The kept pairs of one relay's allocator: what to keep, prewarming, closing them all."""

    def __init__(self, ports: PortAllocator, keep_open: int, prewarm: int | None) -> None:
        self.ports = ports
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fd_room = ports.capacity if soft == resource.RLIM_INFINITY else soft // 4
        self.limit = max(0, min(keep_open, ports.capacity, fd_room))
        #: pairs the first endpoint opens ahead: few, so a fresh daemon does not bind its range
        self.prewarm_pairs = min(PREWARM if prewarm is None else prewarm, self.limit)
        self.drops = 0  # datagrams that arrived on kept sockets between endpoints
        #: the protocols of kept transports closed at shutdown whose loss is still to come
        self._closing: set[_Parked] = set()
        self._closed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[int] | None = None
        self._started = False  # prewarm() ran or runs

    def first_endpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        """An endpoint is being opened: start prewarming, the first time."""
        if self.prewarm_pairs and not self._started:
            self._task = loop.create_task(self.prewarm(self.prewarm_pairs))

    @staticmethod
    def take(pair: PortPair) -> Transports | None:
        """The open transports of a pair ``PortAllocator.allocate`` handed out kept (its
        protocols still :class:`_Parked`: the caller sets its own), else None."""
        kept = pair.kept
        if kept is None:
            return None
        pair.kept = None
        return cast(Transports, kept)

    def keep(
        self, pair: PortPair, rtp: asyncio.DatagramTransport, rtcp: asyncio.DatagramTransport
    ) -> bool:
        """An endpoint on ``pair`` is closing with these transports: keep them open (parked)
        and give the pair back to the allocator as kept? Not when the pool is full or a
        transport is already closing; the caller then closes them."""
        if self.ports.kept >= self.limit or rtp.is_closing() or rtcp.is_closing():
            return False
        rtp.set_protocol(_Parked(self))
        rtcp.set_protocol(_Parked(self))
        pair.kept = (rtp, rtcp)
        self.ports.release(pair.rtp_port, keep=pair)
        return True

    async def prewarm(self, pairs: int | None = None) -> int:
        """Open up to ``pairs`` (default: the limit) socket pairs ahead of need, as kept pairs
        at the head of the allocator's queue (in their order): the next endpoints find them
        open. Stops at the first pair that is already kept. Returns how many it opened.
        Endpoints opened meanwhile take the pairs after the ones it holds."""
        self._started = True
        loop = asyncio.get_running_loop()
        ports = self.ports
        want = self.limit if pairs is None else min(pairs, self.limit)
        taken: list[PortPair] = []
        opened = 0
        try:
            while ports.kept + len(taken) < want and ports.in_use < ports.capacity:
                pair = ports.allocate()
                taken.append(pair)
                if pair.kept is not None:
                    break  # warm from here on
                rtp: asyncio.DatagramTransport | None = None
                try:
                    rtp, _ = await loop.create_datagram_endpoint(
                        lambda: _Parked(self), sock=pair.rtp_sock
                    )
                    rtcp, _ = await loop.create_datagram_endpoint(
                        lambda: _Parked(self), sock=pair.rtcp_sock
                    )
                except BaseException:
                    taken.pop()
                    if rtp is not None:
                        rtp.close()
                    pair.close()
                    ports.release(pair.rtp_port)
                    raise
                pair.kept = (rtp, rtcp)
                opened += 1
        except (MediaError, OSError) as err:  # out of ports or descriptors: open on demand
            log.warning("media: opened %d socket pairs ahead, then: %s", opened, err)
        finally:
            for pair in reversed(taken):  # back to the head, in their order
                ports.release(pair.rtp_port, keep=pair, front=True)
        return opened

    def close(self) -> None:
        """Keep nothing more, stop prewarming, close every kept pair (shutdown)."""
        self.limit = 0
        if self._task is not None:
            self._task.cancel()
        for pair in self.ports.take_kept():
            for transport in cast(Transports, pair.kept):
                protocol = transport.get_protocol()
                if not transport.is_closing() and isinstance(protocol, _Parked):
                    self._closing.add(protocol)  # its connection_lost is still to come
                transport.close()
            pair.kept = None

    async def wait_closed(self) -> None:
        """After :meth:`close`: wait for the prewarming to stop and every kept socket to close
        (at most CLOSE_WAIT seconds: a shutdown never hangs on a socket)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self.close()  # what it had opened before it was cancelled
        if not self._closing:
            return
        self._closed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_WAIT)
        except TimeoutError:
            log.warning(
                "media: %d kept sockets not closed after %.0f s", len(self._closing), CLOSE_WAIT
            )

    def _lost(self, protocol: _Parked) -> None:
        self._closing.discard(protocol)
        done = self._closed
        if not self._closing and done is not None and not done.done():
            done.set_result(None)
