"""Drives the sans-IO transaction layer from real sockets and the event loop's clock.

:class:`SipStack` is the only place where SIP meets asyncio: messages from :class:`Transports` go
into :meth:`TransactionLayer.receive` with ``loop.time()`` as ``now``; after every call into the
layer its transmits are written to the network, its events handed to the transaction user (the
``handler``), and one :class:`WakeUp` wakes the layer at its earliest deadline (on a
``WAKE_GRID`` grid: see there).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Callable

from telephony.io.transport import Transports
from telephony.sip.message import Request, Response
from telephony.sip.transaction import (
    Endpoint,
    Event,
    TimerConfig,
    TransactionKey,
    TransactionLayer,
)

log = logging.getLogger("telephony.io")

EventHandler = Callable[[Event], None]

#: Transaction timers fire on a 10 ms grid (up to 10 ms after their deadline): RFC 3261's
#: timers are lower bounds (retransmission at T1 = 500 ms, timeouts at 32 s), and at hundreds
#: of calls per second their expiries otherwise each cost the loop a wake-up of their own.
WAKE_GRID = 0.01


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when uvloop is installed; True when it is."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _kind(msg: Request | Response) -> str:
    """The metrics label of a message: its method (``"other"`` for methods we do not know: a
    label must not take values from the network), or its status class (``"2xx"``)."""
    if isinstance(msg, Request):
        return msg.method if msg.method in COUNTED_METHODS else "other"
    return STATUS_CLASSES.get(msg.status // 100, "other")


STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 7)}
COUNTED_METHODS = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REFER", "NOTIFY",
        "UPDATE", "INFO", "REGISTER", "SUBSCRIBE", "MESSAGE", "PRACK", "PUBLISH",
    }
)  # fmt: skip


class WakeUp:
    """The one loop timer that wakes a sans-IO machine at its earliest deadline (house rule:
    the machine says when, the I/O layer keeps the timer). :meth:`want` is told the machine's
    ``get_timer()`` after every call into it; the timer moves only when it must come sooner.
    When it comes early (the timer it was set for was stopped meanwhile), the machine finds
    nothing due and the next :meth:`want` sets the next one: moving it on every stopped timer
    cost a loop timer handle per message. With ``grid``, deadlines are rounded up to it, so the
    expiries of one window share a wake-up."""

    def __init__(
        self,
        callback: Callable[[], None],
        loop: Callable[[], asyncio.AbstractEventLoop],
        grid: float = 0.0,
    ) -> None:
        self._callback = callback
        self._loop = loop
        self._grid = grid
        self._handle: asyncio.TimerHandle | None = None
        #: when the loop timer is set to fire, or None
        self.at: float | None = None

    def want(self, deadline: float | None) -> None:
        """The machine's earliest deadline is now ``deadline`` (None: nothing pending)."""
        if deadline is not None and self._grid:
            deadline = math.ceil(deadline / self._grid) * self._grid
        at = self.at
        if at is not None and (deadline is None or deadline >= at):
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.at = deadline
        if deadline is not None:
            self._handle = self._loop().call_at(deadline, self.fire)

    def fire(self) -> None:
        """The loop timer came: run the callback (which calls :meth:`want` again)."""
        self._handle = None
        self.at = None
        self._callback()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.at = None


class SipStack:
    """One SIP endpoint: transports + transaction layer + timer, feeding events to ``handler``."""

    def __init__(self, handler: EventHandler, config: TimerConfig | None = None) -> None:
        self.handler = handler
        self.layer = TransactionLayer(config or TimerConfig())
        self.transports = Transports(self._on_message, self._on_failure)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = WakeUp(self._on_timer, lambda: self.loop, WAKE_GRID)
        self.local: list[Endpoint] = []
        #: (direction "in"|"out", method or status class "2xx") -> messages, for metrics;
        #: cached bytes sent again (a UAS core's 2xx, a re-ACK) count as kind "resent"
        self.messages: defaultdict[tuple[str, str], int] = defaultdict(int)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    async def listen(self, transport: str, host: str, port: int) -> Endpoint:
        """Open a listener (``udp`` or ``tcp``); returns the bound endpoint (port 0 = any free)."""
        self._loop = asyncio.get_running_loop()
        if transport == "udp":
            ep = await self.transports.listen_udp(host, port)
        elif transport == "tcp":
            ep = await self.transports.listen_tcp(host, port)
        else:
            raise ValueError(f"unsupported transport {transport!r}")
        self.local.append(ep)
        return ep

    # -- calls from the transaction user ---------------------------------------------------

    def send_request(self, request: Request, dest: Endpoint) -> TransactionKey:
        key = self.layer.send_request(request, dest, self.now())
        self._pump()
        return key

    def send_response(self, response: Response) -> None:
        self.layer.send_response(response, self.now())
        self._pump()

    def send_stateless(self, message: Request | Response, dest: Endpoint) -> None:
        self.layer.send_stateless(message, dest)
        self._pump()

    def send_bytes(self, data: bytes, dest: Endpoint) -> None:
        """Send already-serialized bytes (a UAS core's cached 2xx retransmission)."""
        self.messages["out", "resent"] += 1
        self.transports.send(data, dest)

    def cancel(self, key: TransactionKey) -> TransactionKey | None:
        cancel_key = self.layer.cancel(key, self.now())
        self._pump()
        return cancel_key

    async def close(self) -> None:
        self._wake.cancel()
        await self.transports.close()

    # -- calls from the network and the clock ----------------------------------------------

    def _on_message(self, msg: Request | Response, source: Endpoint) -> None:
        self.messages["in", _kind(msg)] += 1
        self.layer.receive(msg, source, self.now())
        self._pump()

    def _on_failure(self, dest: Endpoint, exc: Exception) -> None:
        log.info("transport failure to %s:%d/%s: %s", dest.host, dest.port, dest.transport, exc)
        self.layer.transport_error(dest, self.now())
        self._pump()

    def _on_timer(self) -> None:
        self.layer.handle_timer(self.now())
        self._pump()

    def _pump(self) -> None:
        layer = self.layer
        send = self.transports.send
        counts = self.messages
        for tx in layer.transmits():
            counts["out", _kind(tx.message)] += 1
            send(tx.data, tx.dest)
        events = layer.events()
        for ev in events:
            try:
                self.handler(ev)
            except Exception:  # a TU bug must not stop the stack
                log.exception("event handler failed on %s", type(ev).__name__)
        if events:
            # the handler may have sent messages through us; flush those too
            for tx in layer.transmits():
                counts["out", _kind(tx.message)] += 1
                send(tx.data, tx.dest)
        self._reschedule()

    def _reschedule(self) -> None:
        self._wake.want(self.layer.get_timer())
