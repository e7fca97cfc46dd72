"""Cold transfer control: routing the chain, failover, NOTIFY progress, recall on failure.

:class:`ColdTransfers` belongs to one :class:`~telephony.call.b2bua.B2bua` and drives the
:class:`~telephony.call.transfer.Transfer` machine for its calls; it places and ends legs only
through the controller's methods. See docs/call-control.md for the behaviour of each trigger.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote

from telephony.call.legs import Leg, LegState, needs_reoffer
from telephony.call.transfer import TInput, Transfer, Trigger, TState
from telephony.routing.model import (
    CallDescription,
    Decision,
    Destination,
    Mode,
    language_from_accept_language,
)
from telephony.sip.errors import SipError
from telephony.sip.headers import new_tag, valid_text
from telephony.sip.message import Request, reason_phrase

if TYPE_CHECKING:
    from telephony.call.b2bua import B2bua, Call

KEEP_TRANSFERS = 1000  # finished transfers kept for the API
REFER_BYE_GRACE = 2.0  # after a REFER transfer, how long the dispatcher's phone has to send BYE


class ColdTransfers:
    """The cold transfers of one controller."""

    def __init__(self, core: B2bua) -> None:
        self.core = core

    def start_transfer(
        self,
        call_id: str,
        *,
        destination: str | None = None,
        triage: int | None = None,
        reason: str | None = None,
        mode: Mode = "cold",
        now: float | None = None,
    ) -> Transfer:
        """The HTTP hook: transfer ``call_id`` in ``mode`` (cold, warm, consult). Raises
        :class:`SipError` with the HTTP-ish status: 404 unknown call, 409 not connected /
        transfer in progress, 403 no rule."""
        if now is not None:
            self.core.now = now
        call = self.core.calls.get(call_id)
        if call is None:
            raise SipError("no such call", 404, "peer")
        if call.state != "connected" or call.dispatcher is None:
            raise SipError(f"call is {call.state}: only a connected call can be transferred", 409)
        called = destination if destination is not None else self._default_number(call)
        return self.start(call, "api", called=called, triage=triage, reason=reason, mode=mode)

    def _default_number(self, call: Call) -> str:
        numbers = call.trunk.transfer_numbers
        return numbers[0] if numbers else "988"

    def start(
        self,
        call: Call,
        trigger: Trigger,
        *,
        called: str,
        triage: int | None = None,
        reason: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
        mode: Mode = "cold",
    ) -> Transfer:
        if call.transfer is not None and not call.transfer.done:
            raise SipError("a transfer is already in progress", 409, "peer")
        if triage is None:
            triage = triage_level(call.meta.triage_header)
        decision, chain = self._route(call, called, triage)
        t = Transfer(
            f"t{next(self.core._ids)}-{new_tag()[:8]}",
            call.id,
            trigger,
            decision,
            chain,
            triage_level=triage,
            reason=reason,
            mode=mode,
        )
        t.note("requested", self.core.wall)
        call.transfer = t
        self.core.transfers[t.id] = t
        transfers = self.core.transfers
        while len(transfers) > KEEP_TRANSFERS and next(iter(transfers.values())).done:
            transfers.popitem(last=False)
        call.state = "transferring"
        self.core._record("transfer requested", call)
        self._try_next(call, extra)
        return t

    def _route(
        self, call: Call, called: str, triage: int | None
    ) -> tuple[Decision, tuple[Destination, ...]]:
        named = self.core.rules.destinations.get(called)
        desc = CallDescription(
            trunk=call.trunk.name,
            called=None if named is not None else called,
            caller=call.meta.caller_number,
            triage=triage,
            language=_language(call.meta.language),
        )
        rules = self.core.rules
        decision = rules.match(desc, datetime.fromtimestamp(self.core.wall, UTC))
        if decision is None or not (
            named is not None
            or called in call.trunk.transfer_numbers
            or any(r.decision is decision and r.conditions.names_called for r in rules.rules)
        ):
            # a catch-all rule picks the 988 chain for the trunk's transfer numbers; any
            # other number needs a rule that names it (a dispatcher's transfer to, say, a
            # police line must not end up at 988)
            raise SipError(f"no routing rule allows a transfer to {called!r}", 403, "peer")
        if named is not None:
            return decision, (named,)
        chain = decision.chain
        if decision.fallback.action == "chain":
            chain = chain + decision.fallback.chain
        return decision, chain

    def _try_next(self, call: Call, extra: tuple[tuple[str, str], ...] = ()) -> None:
        t = call.transfer
        assert t is not None
        # pass over destinations the prober has down, unless every one left is down
        while (
            t.destination is not None
            and t.destination.label in self.core.down
            and any(d.label not in self.core.down for d in t.chain[t.index + 1 :])
        ):
            t.skip("skipped: down", self.core.wall)
        dest = t.destination
        if dest is None:
            self._attempt_failed(call, 480, "no destination")
            return
        referred = self._referred_by(call)
        try:
            leg = self.core._dial(
                call,
                "destination",
                dest.uri,
                dest.transport,
                policy=dest.metadata,
                ring_timeout=dest.ring_timeout,
                referred_by=referred,
                cause=302,
                extra=extra,
            )
        except SipError as err:
            self._attempt_failed(call, err.status, err.reason)
            return
        call.destination = leg
        t.note("trying", self.core.wall)
        self.core._record("destination trying", call)
        leg.on_ringing = lambda _l, r: self._transfer_ringing(call, r.status)
        leg.on_answer = lambda lg, _r: self._transfer_answered(call, lg)
        leg.on_failure = lambda _l, s, r: self._attempt_failed(call, s, r)

    def _referred_by(self, call: Call) -> str:
        host = self.core._contact("udp").uri.hostport
        who = call.position.name if call.position is not None else call.trunk.psap_id
        return f"sip:{who}@{host}"

    def _transfer_ringing(self, call: Call, status: int) -> None:
        t = call.transfer
        if t is None or not t.can(TInput.RINGING):
            return
        first = t.state is TState.TRYING
        t.step(TInput.RINGING, self.core.wall, status=status)
        if first:
            self.core._record("destination ringing", call)
            self._notify(call, 180, "Ringing", final=False)
            if t.trigger == "invite":
                self.core._caller_ringing(call)
            elif t.trigger == "attended":
                self.core.attended.ringing(call)

    def _transfer_answered(self, call: Call, leg: Leg) -> None:
        t = call.transfer
        if t is None or not t.can(TInput.ANSWERED) or not call.caller.alive:
            self.core._hangup(leg)
            return
        t.step(TInput.ANSWERED, self.core.wall, status=200)
        call.destination = leg
        self.core._record("destination answered", call)
        if t.mode != "cold":
            self.core.warm.answered(call, leg)
            return
        if t.trigger == "invite":
            self.core._answer_caller(call, leg)
        elif needs_reoffer(call.caller, leg):
            self.core.offers.reinvite(call.caller, leg.peer_sdp, hold=False)
        self.core._bridge(call, call.caller, leg)
        self._notify(call, 200, "OK", final=True)
        disp = call.dispatcher
        if disp is not None and disp.alive:
            if t.trigger == "refer":  # the phone normally hangs up itself after the NOTIFY
                disp.ring_timer = self.core.timers.at(
                    self.core.now + REFER_BYE_GRACE, lambda _n: self.core._hangup(disp)
                )
            else:
                self.core._hangup(disp)
        t.step(TInput.COMPLETE, self.core.wall)
        call.state = "transferred"
        self.core._record("completed", call)

    def _attempt_failed(self, call: Call, status: int, reason: str) -> None:
        t = call.transfer
        if t is None or t.done:
            return
        call.destination = None
        if t.index + 1 < len(t.chain):
            failed = t.destination
            t.step(TInput.ATTEMPT_FAILED, self.core.wall, status=status)
            label = failed.label if failed is not None else None
            self.core._record("failover", call, sip_status=status, destination=label)
            self._try_next(call)
            return
        t.step(TInput.EXHAUSTED, self.core.wall, status=status)
        self.core._record("failed", call, sip_status=status, reason=reason)
        self._transfer_over(call, status, reason)

    def _transfer_over(self, call: Call, status: int, reason: str) -> None:
        """The transfer failed or was cancelled: the caller goes back to the PSAP."""
        t = call.transfer
        assert t is not None
        if t.mode != "cold":
            self.core.media.unmix(call.id)
        if t.trigger == "attended":
            self.core.attended.over(call, status, reason)
        if t.trigger == "invite":
            self.core._fail_caller(call, status, reason)
            return
        self._notify(call, status, reason, final=True)
        if not call.caller.alive:
            return
        call.state = "connected"
        disp = call.dispatcher
        if disp is not None and disp.alive and disp.state is LegState.CONFIRMED:
            self.core._bridge(call, call.caller, disp)
            t.note("returned to dispatcher", self.core.wall)
            self.core._record("returned to dispatcher", call)
        else:  # recorded as returned when a position answers (B2bua._dispatcher_answered)
            t.note("recall", self.core.wall)
            call.state = "ringing"
            self.core._recall_next(call)

    def cancel_transfer(self, transfer_id: str, now: float | None = None) -> Transfer:
        """Call a transfer off before the destination answers (409 after)."""
        if now is not None:
            self.core.now = now
        t = self.core.transfers.get(transfer_id)
        if t is None:
            raise SipError("no such transfer", 404, "peer")
        if not t.can(TInput.CANCEL):
            raise SipError(f"transfer is {t.state.value}: it can no longer be cancelled", 409)
        call = self.core.calls[t.call_id]
        answered = t.state in (TState.CONFERENCE, TState.CONSULTING)
        t.step(TInput.CANCEL, self.core.wall, status=487)
        if call.destination is not None:
            self.core._hangup(call.destination)
            call.destination = None
        if answered:
            self.core._record("party left", call, party="counselor")
        self.core._record("cancelled", call)
        self._transfer_over(call, 487, "Request Terminated")
        return t

    def on_refer(self, call: Call, leg: Leg, req: Request) -> None:
        target = req.refer_to
        if target is not None and target.uri.header("Replaces") is not None:
            self.core.attended.on_refer(
                call, leg, req, unquote(target.uri.header("Replaces") or "")
            )
            return
        if leg is not call.dispatcher or call.state != "connected":
            self.core._respond(req, 403 if leg is not call.dispatcher else 491)
            return
        if target is None:
            self.core._respond(req, 400, headers=(("Warning", '399 handoffd "Refer-To missing"'),))
            return
        embedded = tuple(
            (name, unquote(value))
            for name, value in target.uri.headers
            if name.lower() not in _NOT_EMBEDDABLE
        )
        triage_value = target.uri.header(call.trunk.triage_header)
        accepted = (("Contact", str(self.core._contact(leg.dest.transport))),)
        # the 988 INVITE first (it is what the caller waits for), then the 202, then the
        # NOTIFYs: none may go before the 202, so none is sent from inside start()
        call.notify_leg = None
        try:
            t = self.start(
                call,
                "refer",
                called=target.uri.user or "",
                triage=triage_level(unquote(triage_value) if triage_value else None),
                extra=embedded,
            )
        except SipError as err:
            self.core._respond(req, 202, headers=accepted)
            call.notify_leg = leg
            self._notify(call, err.status, err.reason, final=True)
            return
        self.core._respond(req, 202, headers=accepted)
        call.notify_leg = leg
        if t.done:  # every destination refused at once (e.g. no media port): say how it ended
            status = t.sip_status or 500
            self._notify(call, status, reason_phrase(status), final=True)
        else:
            self._notify(call, 100, "Trying", final=False)

    def _notify(self, call: Call, status: int, reason: str, *, final: bool) -> None:
        leg = call.notify_leg
        if leg is None or leg.dialog is None or not leg.alive:
            return
        state = "terminated;reason=noresource" if final else "active;expires=60"
        try:
            notify = leg.dialog.create_request(
                "NOTIFY",
                self.core._via(leg.dest.transport),
                headers=(("Event", "refer"), ("Subscription-State", state)),
                # the reason phrase may be a destination's, with bytes that are not UTF-8
                body=f"SIP/2.0 {status} {valid_text(reason)}\r\n".encode(),
                content_type="message/sipfrag;version=2.0",
            )
        except SipError:
            return
        self.core._send(notify, leg.request_dest(), None)
        if final:
            call.notify_leg = None


_NOT_EMBEDDABLE = frozenset(
    {
        "via",
        "call-id",
        "cseq",
        "from",
        "to",
        "contact",
        "route",
        "record-route",
        "max-forwards",
        "content-length",
        "content-type",
        "replaces",
    }
)


def triage_level(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    return int(text) if text in ("1", "2", "3") else None


def _language(accept_language: str | None) -> str | None:
    return None if accept_language is None else language_from_accept_language(accept_language)


def phase_of(t: Transfer) -> str:
    return {
        TState.TRYING: "before destination ringing",
        TState.RINGING: "while ringing",
        TState.CONFERENCE: "in conference",
        TState.CONSULTING: "on consult hold",
    }.get(t.state, "after answer")
