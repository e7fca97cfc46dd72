"""OPTIONS probing of the 988 destinations (RFC 3261 §11), so failover skips the dead ones.

Every ``interval`` seconds each destination named in the rules gets an OPTIONS. Any final
response other than 408/503 (and no transport failure) means it is up (a 404 or 405 still proves
a live SIP peer); ``down_after`` failures in a row mark it down, ``up_after`` successes bring it
back. The set of down labels is the controller's ``down``; a transfer passes over a down
destination unless every destination left in its chain is down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from telephony.call.legs import endpoint_for
from telephony.call.ports import Timer
from telephony.sip.headers import NameAddr, new_tag
from telephony.sip.message import Response, make_request

if TYPE_CHECKING:
    from telephony.call.b2bua import B2bua
    from telephony.config import ProbeConfig
    from telephony.routing import RuleSet
    from telephony.routing.model import Destination

DOWN_STATUSES = frozenset({408, 503})


class Prober:
    """Probes the destinations of the current rules through the controller's SIP port."""

    def __init__(self, core: B2bua, config: ProbeConfig) -> None:
        self.core = core
        self.config = config
        self.failures: dict[str, int] = {}
        self.successes: dict[str, int] = {}
        self._targets: dict[str, Destination] = {}
        self._timer: Timer | None = None
        self._pending: dict[str, object] = {}
        self.on_change: list[tuple[str, bool]] = []  # (label, up) history, newest last

    def start(self, rules: RuleSet, now: float) -> None:
        """(Re)start with the destinations of ``rules``; the first round goes out at once."""
        self._targets = {d.label: d for d in rules.destinations.values()}
        for label in list(self.core.down):
            if label not in self._targets:
                self.core.down.discard(label)
        if self._timer is not None:
            self._timer.cancel()
        if self.config.interval > 0 and self._targets:
            self._timer = self.core.timers.at(now, self._round)

    def _round(self, now: float) -> None:
        for label, dest in self._targets.items():
            self._probe(label, dest)
        self._timer = self.core.timers.at(now + self.config.interval, self._round)

    def _probe(self, label: str, dest: Destination) -> None:
        core = self.core
        ep = endpoint_for(dest.uri, dest.transport)
        me = core._contact(ep.transport)
        request = make_request(
            "OPTIONS",
            dest.uri,
            via=core._via(ep.transport),
            from_=NameAddr(me.uri, None, (("tag", new_tag()),)),
            to=NameAddr(dest.uri),
            call_id=f"probe-{new_tag()}{new_tag()}@handoffd",
            cseq=1,
            headers=(("Accept", "application/sdp"),),
        )
        token = object()
        self._pending[label] = token

        def answered(resp: Response) -> None:
            if self._pending.get(label) is token:
                del self._pending[label]
                self._result(label, resp.status)

        def timed_out(_now: float) -> None:
            if self._pending.get(label) is token:
                del self._pending[label]
                self._result(label, 408)

        core._send(request, ep, answered)
        core.timers.at(core.now + self.config.timeout, timed_out)

    def _result(self, label: str, status: int) -> None:
        """Count one probe's outcome (``status`` 408 for no answer in ``timeout``)."""
        if label not in self._targets:
            return
        down = self.core.down
        if status in DOWN_STATUSES:
            self.successes[label] = 0
            self.failures[label] = self.failures.get(label, 0) + 1
            if self.failures[label] >= self.config.down_after and label not in down:
                down.add(label)
                self.on_change.append((label, False))
        else:
            self.failures[label] = 0
            self.successes[label] = self.successes.get(label, 0) + 1
            if self.successes[label] >= self.config.up_after and label in down:
                down.discard(label)
                self.on_change.append((label, True))
