"""asyncio glue between the relay's leg endpoints and a :class:`~telephony.media.mixer.Mixer`.

A :class:`Conference` owns one mixer. :meth:`Conference.add` takes a leg endpoint out of any
bridge (the other endpoint of that bridge stays open, unbridged, as with ``MediaPort.bridge``),
taps it (:meth:`LegEndpoint.set_tap`: its accepted RTP goes to the mixer, its RTCP is absorbed)
and joins it to the mixer with the leg's negotiated codec and telephone-event payload type.
Every 20 ms the mixer runs (:meth:`Mixer.handle_timer`) and each party's mixed frame leaves by
:meth:`LegEndpoint.send_rtp`: out of the same socket, to the same latched or SDP address,
counted in the same counters as relayed packets. Forwarded telephone events leave as soon as
they arrive.

:meth:`Conference.remove` / :meth:`Conference.close` untap endpoints and leave them open: the
call layer then bridges the two that remain (plain relaying, bytes untouched again) or closes
them. An endpoint closed while in the conference (its leg hung up) is dropped from the mix at
the next tick. A failure inside the mixer while handling a packet or a tick is logged and
counted in ``errors``; it never reaches the endpoint's transport (which asyncio would close) nor
the other conferences.

Consult hold: ``Conference.add(ep, ..., hold_tone=True)`` or :meth:`Conference.set_mode` with
``hold_tone=True`` plays the comfort tone (:mod:`telephony.media.tones`) to that endpoint's peer
instead of the mix, and its audio reaches nobody. A conference of the caller alone, held, is how
the caller waits while dispatcher and counselor talk over a plain bridge; ``hold_tone=False``
later (the consult became a 3-way conference) switches its stream to the mix without a break.

Clock: every conference of an event loop is ticked by one loop timer on a 20 ms grid
(``start + k * 20 ms``, no drift): one wake-up per period however many conferences there are
(a timer per conference costs ~6 µs a tick on uvloop, bench/RESULTS.md), and one set of numpy
calls mixes all the conferences due (:func:`~telephony.media.mixer.tick_all`). A conference
joins the grid at the next grid point. When the loop ran late, the clock catches up one tick
at a time with a poll for I/O in between (so the packets that arrived during the stall are in
the jitter buffers before their frames are due); more than 3 ticks behind, the mixers skip
(:meth:`Mixer.handle_timer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from telephony.media.g711 import PCMU
from telephony.media.mixer import Mixer, MixerStats, Outgoing, tick_all
from telephony.media.party import Party, PartyStats
from telephony.media.ports import MediaError
from telephony.media.relay import LegEndpoint
from telephony.media.rtp import PERIOD

log = logging.getLogger("telephony.media")

#: how soon a late clock fires again to catch up (after the loop's next poll for I/O)
CATCH_UP_DELAY = 0.001


class _Clock:
    """The 20 ms grid of one event loop: one timer ticks every running conference."""

    _clocks: dict[asyncio.AbstractEventLoop, _Clock] = {}  # noqa: RUF012 (the registry)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.members: dict[Conference, None] = {}  # insertion-ordered set
        self.due = 0.0
        self.handle: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Clock:
        clock = cls._clocks.get(loop)
        if clock is None:
            clock = cls._clocks[loop] = cls(loop)
        return clock

    def add(self, conf: Conference) -> float:
        """Tick ``conf`` from now on; returns the grid time of its first tick."""
        if not self.members:
            self.due = self.loop.time() + PERIOD
            self.handle = self.loop.call_at(self.due, self._fire)
        self.members[conf] = None
        return self.due

    def remove(self, conf: Conference) -> None:
        self.members.pop(conf, None)
        if not self.members:
            if self.handle is not None:
                self.handle.cancel()
                self.handle = None
            self._clocks.pop(self.loop, None)

    def _fire(self) -> None:
        self.handle = None
        # uvloop's clock is cached per loop iteration and in ms: the timer may fire with
        # time() a hair before the deadline; it fired, so the deadline has come
        now = max(self.loop.time(), self.due)
        due: list[Conference] = []
        nxt: float | None = None  # the earliest deadline after this tick
        for conf in list(self.members):
            try:
                if conf._take_due(now):  # one tick per conference at most
                    due.append(conf)
            except Exception:  # never let one conference stop the others' clock
                conf._error("tick")
                conf.mixer.start(now)  # next tick a period from now, not a busy loop
            d = conf.mixer.get_timer()
            if d is not None and conf._clock is self and (nxt is None or d < nxt):
                nxt = d
        if due:
            try:
                outs = tick_all(
                    [c.mixer for c in due], now, on_error=lambda i, _exc: due[i]._error("tick")
                )
            except Exception:  # the shared part failed: this tick is lost for all of them
                for conf in due:
                    conf._error("tick")
            else:
                for conf, out in zip(due, outs, strict=True):
                    try:
                        conf._send(out)
                    except Exception:
                        conf._error("tick")
        if nxt is None:
            return
        self.due = nxt
        if nxt <= self.loop.time():
            # behind (the loop stalled): the next catch-up tick after the loop has read the
            # sockets, so it finds the packets that arrived meanwhile (a timer already due
            # would run before the I/O on uvloop)
            self.handle = self.loop.call_later(CATCH_UP_DELAY, self._fire)
        else:
            self.handle = self.loop.call_at(nxt, self._fire)


class Conference:
    """A mixed conference of leg endpoints. Make it inside a running loop."""

    def __init__(self, label: str = "", *, mixer: Mixer | None = None) -> None:
        self.label = label
        self.mixer = mixer if mixer is not None else Mixer()
        self._loop = asyncio.get_running_loop()
        self._eps: dict[Party, LegEndpoint] = {}
        self._parties: dict[LegEndpoint, Party] = {}
        self._clock: _Clock | None = None
        self._closed = False
        self.errors = 0

    @property
    def endpoints(self) -> tuple[LegEndpoint, ...]:
        return tuple(self._parties)

    @property
    def closed(self) -> bool:
        return self._closed

    def party(self, ep: LegEndpoint) -> Party:
        """The mixer's handle for ``ep`` (``KeyError`` if it is not in the conference)."""
        return self._parties[ep]

    def add(
        self,
        ep: LegEndpoint,
        *,
        codec: int = PCMU,
        event_pt: int | None = None,
        speak: bool = True,
        listen: bool = True,
        hold_tone: bool = False,
    ) -> Party:
        """Mix ``ep`` in: ``codec`` is the payload type its peer receives (PCMU 0 / PCMA 8),
        ``event_pt`` its telephone-event payload type (None: not negotiated); the modes are
        those of :meth:`Mixer.set_mode` (``hold_tone=True``: the caller held on consult)."""
        if self._closed:
            raise MediaError("conference is closed")
        if ep in self._parties:
            raise MediaError("endpoint is already in this conference")
        if ep.closed:
            raise MediaError("endpoint is closed")
        if ep.bridge is not None:
            ep.bridge.unbridge()
        party = self.mixer.join(
            codec=codec,
            event_pt=event_pt,
            label=ep.label,
            speak=speak,
            listen=listen,
            hold_tone=hold_tone,
        )
        try:
            ep.set_tap(self._tap_for(party))
        except BaseException:
            self.mixer.leave(party)
            raise
        self._eps[party] = ep
        self._parties[ep] = party
        if self._clock is None:
            self._clock = _Clock.of(self._loop)
            first = self._clock.add(self)
            self.mixer.start(first - PERIOD)  # the mixer's deadlines on the grid
        return party

    def remove(self, ep: LegEndpoint) -> None:
        """Take ``ep`` out (left open and unbridged). Idempotent."""
        party = self._parties.pop(ep, None)
        if party is None:
            return
        del self._eps[party]
        self.mixer.leave(party)
        if not ep.closed:
            ep.set_tap(None)
        if not self._parties and self._clock is not None:
            self._clock.remove(self)
            self._clock = None

    def set_mode(
        self,
        ep: LegEndpoint,
        *,
        speak: bool | None = None,
        listen: bool | None = None,
        hold_tone: bool | None = None,
    ) -> None:
        """See :meth:`Mixer.set_mode` (consult hold: ``hold_tone=True``, or ``speak=False,
        listen=False`` for silence; ``KeyError`` if ``ep`` is not in the conference)."""
        self.mixer.set_mode(self._parties[ep], speak=speak, listen=listen, hold_tone=hold_tone)

    def close(self) -> tuple[LegEndpoint, ...]:
        """Remove every endpoint (all left open) and stop ticking; returns them."""
        eps = tuple(self._parties)
        for ep in eps:
            self.remove(ep)
        self._closed = True
        return eps

    def stats(self) -> tuple[MixerStats, dict[str, PartyStats]]:
        """The mixer's counters and each party's, by endpoint label."""
        return self.mixer.stats(), {p.label: p.stats() for p in self._eps}

    # ------------------------------------------------------------------ internals

    def _tap_for(self, party: Party) -> Callable[[bytes], None]:
        mixer, loop = self.mixer, self._loop

        def tap(data: bytes) -> None:
            try:
                out = mixer.receive(party, data, loop.time())
            except Exception:
                self._error("packet")
                return
            if out:
                self._send(out)

        return tap

    def _send(self, out: Sequence[Outgoing]) -> None:
        eps = self._eps
        for party, packet in out:
            ep = eps.get(party)
            if ep is not None:
                ep.send_rtp(packet)

    def _take_due(self, now: float) -> bool:
        """The clock's call, every 20 ms: drop the endpoints that closed; True if the mixer
        has a tick due (its clock is then past it: the clock runs it with the others)."""
        for ep in self._parties:
            if ep.closed:
                for gone in [ep for ep in self._parties if ep.closed]:
                    self.remove(gone)
                break
        return bool(self._parties) and self.mixer.take_due(now) is not None

    def _error(self, what: str) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.exception(
                "conference %s: mixer failed on a %s (%d so far)", self.label, what, self.errors
            )
