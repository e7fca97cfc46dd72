"""What watches the calls: the records (Redis + spool), the Prometheus metrics, the event log.

:class:`Observer` is plugged into the call layer's ``on_record`` hook. Each report becomes one
frozen :class:`~telephony.recording.events.RecordEvent` at once; the events then go, in order and
in batches, to the Redis writer (:class:`~telephony.recording.store.Recorder`), to the metrics
and to the log: at most ``FLUSH_AFTER`` seconds later (sooner when ``FLUSH_EVERY`` are waiting),
and never inside the SIP handler that reported them. One batch wakes the writer once and goes
to Redis in one round trip, where an event at a time cost a wake-up and a round trip each.
It also answers the metrics' scrape-time questions (:class:`~telephony.metrics.MetricSources`)
from the daemon's live objects, so the SIP and RTP paths pay nothing for metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from telephony import __version__, logs
from telephony.io.stack import COUNTED_METHODS, STATUS_CLASSES
from telephony.metrics import Metrics
from telephony.recording.events import EventIds, RecordEvent, from_call
from telephony.recording.store import Recorder

if TYPE_CHECKING:
    from telephony.call.b2bua import B2bua, Call
    from telephony.config import Config
    from telephony.io.stack import SipStack
    from telephony.media.relay import Relay
    from telephony.routing.engine import RuleSet

#: record kinds logged at info (the rest at debug: one line per call setup is too many at load)
_INFO_KINDS = frozenset(
    {
        "transfer_requested",
        "destination_answered",
        "failover",
        "completed",
        "failed",
        "cancelled",
        "abandoned",
        "returned_to_dispatcher",
    }
)
#: every SIP message label pair, reported at 0 until counted: a series first scraped at 1 would
#: hide its first message (the one REFER of a quiet hour) from rate()
_SIP_ZERO = dict.fromkeys(
    [
        (d, k)
        for d in ("in", "out")
        for k in (*sorted(COUNTED_METHODS), *STATUS_CLASSES.values(), "other")
    ]
    + [("out", "resent")],
    0,
)
#: how long a reported event may wait for the rest of its batch (seconds), and the batch size
#: that is handed on without waiting
FLUSH_AFTER = 0.02
FLUSH_EVERY = 64
#: event fields that are safe to log (ids, labels, statuses; never the caller or location)
_LOGGED = (
    "transfer_id",
    "psap",
    "position",
    "trigger",
    "mode",
    "triage_level",
    "destination",
    "sip_status",
    "reason",
    "phase",
)


class Observer:
    def __init__(self, config: Config, *, redis_url: str) -> None:
        self.config = config
        key = os.environ.get(config.records.hash_key_env)
        self.recorder = Recorder(
            config, redis_url=redis_url, hash_key=key.encode() if key else None
        )
        self.metrics = Metrics(
            self, version=__version__, answer_interval=config.records.answer_interval
        )
        self.ids = EventIds()
        self.log = logs.get("telephony.records")
        self._level = logging.getLogger("telephony.records")  # for the cheap level check
        self.errors = 0
        self._core: B2bua | None = None
        self._stack: SipStack | None = None
        self._relay: Relay | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prepared: RuleSet | None = None  # the rules whose destinations have zero series
        self._pending: list[RecordEvent] = []  # snapshots not yet handed on, in order
        self._flush_at: asyncio.Handle | None = None  # the scheduled _flush
        self._flush_soon = False  # ... is a call_soon (a full batch), not the timer

    def attach(self, core: B2bua, stack: SipStack, relay: Relay) -> None:
        self._core, self._stack, self._relay = core, stack, relay
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test driving the core by hand): emit at once
            self._loop = None
        core.on_record = self.on_record
        self.metrics.prepare(psaps={t.psap_id for t in self.config.trunks.values()})
        self._prepare(core.rules)

    def _prepare(self, rules: RuleSet) -> None:
        """Zero series for every destination of ``rules`` (again after a reload adds one)."""
        if rules is self._prepared:
            return
        self._prepared = rules
        labels = set(rules.destinations)
        for rule in rules.rules:
            decision = rule.decision
            labels.update(d.label for d in (*decision.chain, *decision.fallback.chain))
        self.metrics.prepare(destinations=sorted(labels))

    async def start(self) -> None:
        await self.recorder.start()

    async def stop(self, timeout: float = 5.0) -> None:
        self._flush()  # what is still waiting for its batch goes to the writer first
        await self.recorder.stop(timeout)

    # -- the call layer's hook --------------------------------------------------------------

    def on_record(self, name: str, call: Call, fields: dict[str, Any]) -> None:
        core = self._core
        assert core is not None
        try:  # the snapshot now (the call keeps changing), the rest after the SIP work
            ev = from_call(name, call, fields, event_id=self.ids(), wall=core.wall)
        except Exception:  # a records bug must not break the call it describes
            self.errors += 1
            self.log.exception("record failed", call_id=call.id, record=name)
            return
        pending = self._pending
        pending.append(ev)
        loop = self._loop
        if loop is None:
            self._flush()
        elif len(pending) >= FLUSH_EVERY:
            if not self._flush_soon:
                if self._flush_at is not None:
                    self._flush_at.cancel()
                self._flush_at = loop.call_soon(self._flush)  # after the SIP handler
                self._flush_soon = True
        elif self._flush_at is None:
            self._flush_at = loop.call_later(FLUSH_AFTER, self._flush)

    def _flush(self) -> None:
        """Hand every waiting event on, in order: queue it for Redis, count it, log it. Runs
        after the handler that reported it, so the 988 INVITE (or the response) is on the wire
        before this work, and once per batch rather than once per event."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        self._flush_soon = False
        events, self._pending = self._pending, []
        for ev in events:
            try:
                self.recorder.submit(ev)
                self.metrics.observe(ev)
                self._log(ev)
            except Exception:
                self.errors += 1
                self.log.exception("record failed", call_id=ev.call_id, record=ev.kind)

    def _log(self, ev: RecordEvent) -> None:
        info = ev.kind in _INFO_KINDS
        if not info and not self._level.isEnabledFor(logging.DEBUG):
            return
        safe = {k: v for k in _LOGGED if (v := getattr(ev, k)) is not None}
        emit = self.log.info if info else self.log.debug
        emit(ev.kind.replace("_", " "), call_id=ev.call_id, event_id=ev.id, **safe)

    # -- MetricSources (read when Prometheus scrapes) ---------------------------------------

    def active_calls(self) -> int:
        return 0 if self._core is None else len(self._core.calls)

    def active_transfers(self) -> int:
        core = self._core
        return 0 if core is None else sum(1 for t in core.transfers.values() if not t.done)

    def trunk_up(self) -> Mapping[str, bool]:
        core = self._core
        if core is None:
            return {}
        self._prepare(core.rules)  # a reload's new destinations: zero series from next scrape
        return {label: label not in core.down for label in core.rules.destinations}

    def redis_up(self) -> bool:
        return self.recorder.up

    def spool_events(self) -> int:
        return self.recorder.spooled

    def spool_dropped(self) -> int:
        return self.recorder.dropped

    def sip_messages(self) -> Mapping[tuple[str, str], int]:
        return {} if self._stack is None else {**_SIP_ZERO, **self._stack.messages}

    def registered_contacts(self) -> Mapping[tuple[str, str], int]:
        """Per position with credentials: its contacts reachable and unreachable (0 and 0
        when none is registered, so that a phone going away shows as a drop to 0)."""
        if self._core is None:
            return {}
        machine = self._core.registrar.machine
        out = {(p, s): 0 for p in machine.positions for s in ("reachable", "unreachable")}
        for p in machine.positions:
            for b in machine.bindings(p):
                out[p, b.state.value] += 1
        return out

    def rtp_packets(self) -> Mapping[str, int]:
        if self._relay is None:
            return {}
        counters = self._relay.stats().counters
        return {"in": counters.rtp_packets_in, "out": counters.rtp_packets_out}
