"""RTP/RTCP port pairs from a configured range, and the media layer's typed error.

A pair is an even RTP port and RTCP on the next (odd) port (RFC 3550 §11). The allocator binds
both sockets itself: binding *is* the availability check, so a port some other process holds is
skipped instead of being handed out and failing later.

Reuse order is FIFO: a released pair goes to the back of the free queue, so the port a call just
gave up is the last one handed out again. Stray packets still in flight to a finished call (a
peer that has not processed our BYE yet) therefore do not land in the next call, and latching
(see :mod:`telephony.media.relay`) is not captured by them.

A pair may be released with its sockets still open (``release(port, keep=pair)``): the owner
keeps reading them (the relay drops what arrives) and :meth:`PortAllocator.allocate` hands the
same :class:`PortPair` back, sockets and all, when that port's turn in the FIFO comes. Nothing
about the order changes; a kept pair just costs no socket, bind or close when it is reused.

Errors carry the SIP status the call layer should answer with (house rule 5): an exhausted range
is :class:`PortsExhaustedError` with status 503, which the call layer turns into ``503 Service
Unavailable`` on the INVITE that needed media.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections import deque
from dataclasses import dataclass

from telephony.sip.errors import SipError

#: bind() failures that mean "this port is not available", so the allocator tries the next one.
#: Anything else (EMFILE, ENOBUFS, EADDRNOTAVAIL for the host ...) is not about the port.
_PORT_UNAVAILABLE = frozenset({errno.EADDRINUSE, errno.EACCES})


class MediaError(SipError):
    """Base of every error the media layer raises; like every :class:`SipError` it carries the
    SIP ``status`` to answer the request that needed media with, a ``reason`` safe for a
    reason-phrase (no caller data) and the ``side`` that broke the rules (``"peer"`` for unusable
    remote SDP, ``"local"`` for our own resources or misuse of the API)."""


class PortsExhaustedError(MediaError):
    """No RTP/RTCP pair could be bound (range in use, or out of file descriptors): answer 503."""

    def __init__(self, reason: str = "no media ports available") -> None:
        super().__init__(reason, status=503, side="local")


@dataclass(slots=True)
class PortPair:
    """Two bound, non-blocking UDP sockets: ``rtp_port`` (even) and ``rtcp_port`` = RTP + 1.

    Ownership of the sockets passes to whoever wraps them in transports (the relay); the pair
    must be given back with :meth:`PortAllocator.release` once both sockets are closed.
    """

    host: str
    rtp_port: int
    rtcp_port: int
    rtp_sock: socket.socket
    rtcp_sock: socket.socket
    #: what the owner kept of a pair released with its sockets open (the relay: its transports);
    #: set when :meth:`PortAllocator.allocate` hands a kept pair out again, else None
    kept: object | None = None

    def close(self) -> None:
        """Close both sockets (for callers that never handed them to a transport)."""
        self.rtp_sock.close()
        self.rtcp_sock.close()


class PortAllocator:
    """Even/odd port pairs over the inclusive range ``first``..``last`` on one local address.

    ``first`` must be even; ``last`` may be odd or even (a trailing even port without its RTCP
    partner is not used). ``host`` is the address the sockets bind to and the one the call layer
    writes into our SDP (``c=``); IPv4 or IPv6 literal.
    """

    def __init__(self, host: str = "127.0.0.1", first: int = 20000, last: int = 29999) -> None:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"media host must be an IP address literal, not {host!r}") from None
        if first % 2:
            raise ValueError(f"RTP port range must start on an even port, not {first}")
        if not 1024 <= first < last <= 65535:
            raise ValueError(f"bad RTP port range {first}-{last} (need 1024 <= first < last)")
        self.host = str(addr)
        self.family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        self.first = first
        self.last = last
        self._free: deque[int] = deque(range(first, last, 2))
        self._in_use: set[int] = set()
        self._kept: dict[int, PortPair] = {}  # free pairs whose sockets are still open
        #: bind attempts that failed because another socket holds the port (skipped)
        self.bind_conflicts = 0

    @property
    def capacity(self) -> int:
        """Pairs in the range (whether or not something else holds some of them)."""
        return (self.last - self.first + 1) // 2

    @property
    def in_use(self) -> int:
        """Pairs handed out and not yet released."""
        return len(self._in_use)

    @property
    def kept(self) -> int:
        """Free pairs whose sockets were kept open (see :meth:`release`)."""
        return len(self._kept)

    def allocate(self) -> PortPair:
        """The next free pair in FIFO order: a kept pair as it was released (its ``kept`` set),
        else a newly bound one, skipping ports that fail to bind.

        Raises :class:`PortsExhaustedError` when every free pair was tried once, or when the process
        is out of file descriptors / socket buffers.
        """
        for _ in range(len(self._free)):
            port = self._free.popleft()
            kept = self._kept.pop(port, None)
            if kept is not None:
                self._in_use.add(port)
                return kept
            try:
                rtp = self._bind(port)
            except OSError as err:
                self._free.append(port)
                self._check_port_error(err)
                continue
            try:
                rtcp = self._bind(port + 1)
            except OSError as err:
                rtp.close()
                self._free.append(port)
                self._check_port_error(err)
                continue
            self._in_use.add(port)
            return PortPair(self.host, port, port + 1, rtp, rtcp)
        raise PortsExhaustedError(f"media port range {self.first}-{self.last} exhausted")

    def release(self, rtp_port: int, *, keep: PortPair | None = None, front: bool = False) -> None:
        """Give a pair back: its sockets closed, or still open with ``keep`` (the pair, with
        ``kept`` set to what the owner needs to use it again; ``allocate`` returns it as is).
        ``front`` puts it at the head of the queue instead of the back (for pairs opened ahead
        of need, never used). Releasing twice is a no-op."""
        if rtp_port in self._in_use:
            self._in_use.remove(rtp_port)
            if keep is not None:
                self._kept[rtp_port] = keep
            if front:
                self._free.appendleft(rtp_port)
            else:
                self._free.append(rtp_port)

    def take_kept(self) -> list[PortPair]:
        """Every kept pair, no longer kept (its port stays free): the owner closes them."""
        out = list(self._kept.values())
        self._kept.clear()
        return out

    def _check_port_error(self, err: OSError) -> None:
        if err.errno in _PORT_UNAVAILABLE:
            self.bind_conflicts += 1
            return
        raise PortsExhaustedError(f"cannot open media sockets: {err.strerror or err}") from err

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            # no SO_REUSEADDR: on UDP it would let two sockets share a port and split a stream
            sock.setblocking(False)
            sock.bind((self.host, port))
        except BaseException:
            sock.close()
            raise
        return sock
