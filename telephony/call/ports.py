"""What the call layer needs from the outside, as small protocols, plus its timer wheel.

The call layer is sans-IO: it never touches a socket or reads a clock. It talks to the SIP
transaction layer through :class:`SipPort` (the daemon passes its ``SipStack``; the in-memory
tests pass a real ``TransactionLayer`` wired to peers), opens media through :class:`MediaPort`
(the daemon adapts ``telephony.media.Relay``), and keeps its own deadlines in :class:`Timers`,
which the I/O layer drives with ``get_timer()`` / ``handle_timer(now)`` like every other machine.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Protocol

from telephony.sip.message import Request, Response
from telephony.sip.transaction import Endpoint, TransactionKey


class SipPort(Protocol):
    """The transaction layer, as the call layer uses it (``telephony.io.stack.SipStack``)."""

    def send_request(self, request: Request, dest: Endpoint) -> TransactionKey: ...

    def send_response(self, response: Response) -> None: ...

    def send_stateless(self, message: Request | Response, dest: Endpoint) -> None: ...

    def send_bytes(self, data: bytes, dest: Endpoint) -> None: ...

    def cancel(self, key: TransactionKey) -> TransactionKey | None: ...


class MediaLeg(Protocol):
    """Our RTP/RTCP address for one SIP leg (``telephony.media.relay.LegEndpoint``)."""

    @property
    def host(self) -> str: ...

    @property
    def rtp_port(self) -> int: ...

    def set_remote(self, host: str, rtp_port: int, rtcp_port: int | None = None) -> None: ...

    def close(self) -> None: ...


class MediaPort(Protocol):
    """Opens leg endpoints and joins them. ``bridge(a, b)`` first takes each of the two out of
    any bridge it is in (the other endpoint of that bridge stays open, unbridged)."""

    def open(self, label: str) -> MediaLeg: ...

    def bridge(self, a: MediaLeg, b: MediaLeg) -> None: ...

    def unbridge(self, leg: MediaLeg) -> None: ...

    def mix(self, key: str, legs: Sequence[tuple[MediaLeg, int, int | None]]) -> None:
        """Make conference ``key`` mix exactly ``legs``: (endpoint, the payload type its peer
        receives -- 0 PCMU or 8 PCMA --, its telephone-event payload type or None). Each leg
        leaves any bridge first; legs no longer listed leave the mix, open and unbridged."""
        ...

    def unmix(self, key: str) -> None:
        """End conference ``key`` (if any); its legs stay open and unbridged."""
        ...

    def hold(self, key: str, leg: MediaLeg, codec: int, event_pt: int | None) -> None:
        """Consult hold with a comfort tone: ``leg`` leaves any bridge and is alone in
        conference ``key``, hearing the tone (in ``codec``), heard by nobody. A later
        ``mix(key, ...)`` listing it takes it off hold into the mix; ``unmix(key)`` ends it."""
        ...

    def watch_keys(self, leg: MediaLeg, payload_type: int, key: str) -> None:
        """Report the RFC 4733 keys (telephone-events of ``payload_type``) that ``leg``'s peer
        presses, each once, to ``B2bua.on_key(key, pressed, now)``; relaying is unchanged."""
        ...


def _nothing(_now: float) -> None:
    """What a cancelled timer holds instead of its callback."""


class Timer:
    """A scheduled callback; :meth:`cancel` makes it a no-op and lets go of the callback at
    once (its closure usually holds a leg, its media sockets and dialog: those must not live
    on until the cancelled deadline would have passed)."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[float], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = _nothing


#: every this many new timers, a heap mostly of cancelled entries is rebuilt without them
COMPACT_EVERY = 4096


class Timers:
    """A heap of deadlines. ``handle_timer(now)`` runs every due callback with ``now``.

    Cancelled entries stay in the heap until popped; every ``COMPACT_EVERY`` new timers the heap
    is rebuilt without them when they are the majority (ring timers are cancelled far more often
    than they fire)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    def at(self, when: float, callback: Callable[[float], None]) -> Timer:
        timer = Timer(when, callback)
        seq = next(self._seq)
        heap = self._heap
        heapq.heappush(heap, (when, seq, timer))
        if seq % COMPACT_EVERY == 0 and len(heap) > COMPACT_EVERY:
            live = [e for e in heap if not e[2].cancelled]
            if len(live) * 2 < len(heap):
                heapq.heapify(live)
                self._heap = live
        return timer

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback(now)
