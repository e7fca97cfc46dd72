"""How handoffd runs CPython's cyclic garbage collector (measurements: bench/RESULTS.md, run L).

Handling a call makes no reference cycles: every object of a call, its legs and its
transactions is freed by reference counting when the call is over (0 unreachable objects per
call, basic or transferred: ``tests/unit/test_collector.py``). So in steady state the collector
finds nothing and only walks live objects, and the live state is large and long-lived: every
transaction waits up to 32 s after its call (RFC 3261 timers J, L, M). Its middle passes over
that state were the daemon's latency tail: pauses of 70-145 ms every ~7.5 s at 150 calls/s.

The policy: automatic collection is off. :meth:`Collector.drive` has the event loop call
:meth:`Collector.young` every :data:`YOUNG_EVERY` seconds, between callbacks, never in the
middle of handling a message: when :data:`YOUNG` net new objects have been made since the last
pass, a young pass runs (collecting any cycle made and dropped among the new objects, e.g. an
exception and its traceback) and whatever survives it is frozen at once (``gc.freeze``: moved to
the permanent generation, which no pass walks). Frozen objects are still freed by reference
counting, exactly as before; only a reference cycle that closes among frozen objects would not
be found by a young pass. That is what the full pass is for: it unfreezes everything and
collects all generations, when the daemon has no call (at most every :data:`FULL_IDLE_S`), and
after :data:`FULL_MAX_S` even under load. A full pass that finds cycles logs a warning (from the
second on: the first also finds what startup left): in steady state that is a bug to find.

A young pass still walks every object that survives to it once, which was 5.8 % of the daemon's
busy time at 250 calls/s (bench/RESULTS.md, run O), and in steady state it finds nothing. So
after :data:`QUIET_AFTER` young passes in a row that found nothing, a due tick only freezes
(O(1)), and one due tick in :data:`SAMPLE_EVERY` still collects, as a sample: a sample that
finds a cycle brings back a pass at every due tick. A cycle made during the freeze-only ticks
waits for the next full pass; the samples bound how long a steady source of cycles goes unseen
(about ``SAMPLE_EVERY * YOUNG_EVERY`` seconds).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("telephony.collector")

#: net new tracked objects that make a young pass due: each pass walks about this many
YOUNG = 2_000
#: how often the event loop looks whether a young pass is due (s)
YOUNG_EVERY = 0.05
#: young passes in a row that found nothing, after which due ticks only freeze ...
QUIET_AFTER = 20
#: ... except one in this many, which collects as a sample
SAMPLE_EVERY = 20
#: how often the loop looks whether a full pass is due (s)
MAINTAIN_EVERY = 60.0
#: a full pass when idle, at most this often (s)
FULL_IDLE_S = 600.0
#: and at the latest after this long, even with calls up (s)
FULL_MAX_S = 3600.0


class Collector:
    """Installed once per process (``telephony.daemon.main``), then driven by its event loop."""

    def __init__(self) -> None:
        self.last_full = 0.0  # loop time of the last full pass (drive() starts the clock)
        self.full_passes = 0
        self.freed_by_full = 0  # unreachable objects the full passes found (should stay 0)
        self.young_passes = 0
        self.freezes = 0  # due ticks that only froze (quiet)
        self._empty = 0  # young passes in a row that found nothing
        self._since_sample = 0  # freeze-only ticks since the last young pass
        self._handles: list[asyncio.TimerHandle] = []

    def install(self) -> None:
        """Freeze everything alive now (modules, config); automatic collection off."""
        gc.disable()
        gc.freeze()

    def uninstall(self) -> None:
        """Back to CPython's automatic collection (tests, benchmarks; a daemon never needs it)."""
        self.stop()
        gc.unfreeze()
        gc.enable()

    def drive(self, loop: asyncio.AbstractEventLoop, idle: Callable[[], bool]) -> None:
        """From now on ``loop`` runs the young pass when due and the full pass when due
        (``idle()``: nothing would mind its pause, e.g. no call up), until :meth:`stop`."""
        self.stop()
        self.last_full = loop.time()

        def young() -> None:
            self.young()
            self._handles[0] = loop.call_later(YOUNG_EVERY, young)

        def full() -> None:
            self.maintain(loop.time(), idle=idle())
            self._handles[1] = loop.call_later(MAINTAIN_EVERY, full)

        self._handles = [loop.call_later(YOUNG_EVERY, young), loop.call_later(MAINTAIN_EVERY, full)]

    def stop(self) -> None:
        """The loop drives no more passes."""
        for handle in self._handles:
            handle.cancel()
        self._handles = []

    def young(self) -> bool:
        """When due: a young pass, its survivors frozen (or, quiet, only the freeze); True
        when a pass or a freeze ran."""
        if gc.get_count()[0] < YOUNG:
            return False
        if self._empty >= QUIET_AFTER and self._since_sample < SAMPLE_EVERY - 1:
            gc.freeze()
            self._since_sample += 1
            self.freezes += 1
            return True
        self._since_sample = 0
        found = gc.collect(0)
        gc.freeze()
        self._empty = self._empty + 1 if found == 0 else 0
        self.young_passes += 1
        return True

    def maintain(self, now: float, *, idle: bool) -> int | None:
        """Run the full pass when it is due (``idle``: no call up); returns how many
        unreachable objects it found, or None when it did not run."""
        since = now - self.last_full
        if since < FULL_MAX_S and not (idle and since >= FULL_IDLE_S):
            return None
        self.last_full = now
        t0 = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        ms = (time.perf_counter() - t0) * 1000
        self.full_passes += 1
        self.freed_by_full += found
        # the first pass also finds what startup left (imports, config): not a leak
        level = logging.WARNING if found and self.full_passes > 1 else logging.INFO
        log.log(level, "collector: full pass in %.0f ms, %d objects in reference cycles", ms, found)
        return found
