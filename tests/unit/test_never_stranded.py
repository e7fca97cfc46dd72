"""House rule under random play: a 911 caller is never left on a dead leg.

A hypothesis state machine drives one call through the call layer (in-memory network, fake
clock, real transaction layers on every node) with any sequence of what the people and the
systems around it can do: transfers by the API in every mode, by the dispatcher's REFER and by
feature codes on the dispatcher's keypad, an attended transfer from the phone itself (its own
call to 988, then REFER with Replaces on either dialog, or hanging that call up), cancel /
complete / conference, in-dialog requests from any party (re-INVITEs to hold or resume, with
any body), anyone hanging up, the 988 destinations answering, ringing forever or refusing, and
time passing. Whenever everything has settled (every timer that the last step started has run
out), the caller is either gone (and the call over, every media port closed) or hears a party
that is still there: bridged to a confirmed leg, mixed with one, or on consult hold while the
dispatcher or the counselor is still on the line; and a re-INVITE from the caller (a session
refresh) is answered 200, so no dialog of the call is wedged. The caller's INVITE carries an
SDP offer or none (delayed offer: its answer comes in the ACK). (A mutant that skips putting
the caller back with the dispatcher after a cancelled warm transfer is caught in seconds.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import quote

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from telephony.call.b2bua import Call
from telephony.call.legs import Leg, LegState
from telephony.sip.dialog import Dialog
from telephony.sip.errors import SipError
from tests.unit.callnet import MediaHandle, Peer, sdp
from tests.unit.test_b2bua import HANDOFFD, World

#: a 988 destination's behaviour; answering weighs half, so consults and conferences come up
DESTINATION = st.sampled_from(("answer", "answer", "answer", "ring", 486, 503))
#: long enough for every ring timeout, the recall of a position and the 32 s transaction waits
SETTLE_S = 40.0


class OneCall(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self.w: World | None = None
        self.call_id = ""
        self.consult: Dialog | None = None  # the dispatcher phone's own call to 988

    @initialize(primary=DESTINATION, backup=DESTINATION, delayed_offer=st.booleans())
    def connect(self, primary: str | int, backup: str | int, delayed_offer: bool) -> None:
        """The 911 call, its INVITE with an SDP offer or without one (delayed offer)."""
        self.w = World(Path(self._tmp.name), primary=primary, backup=backup)
        self.call_id = self.w.connect(b"" if delayed_offer else None)

    def teardown(self) -> None:
        self._tmp.cleanup()

    # -- helpers ----------------------------------------------------------------------------

    @property
    def world(self) -> World:
        assert self.w is not None
        return self.w

    def _call(self) -> Call | None:
        return self.world.core.calls.get(self.call_id)

    def _transfer_id(self) -> str | None:
        call = self._call()
        return call.transfer.id if call is not None and call.transfer is not None else None

    def _api(self, fn: object, *args: object, **kw: object) -> None:
        try:
            fn(*args, now=self.world.net.now, **kw)  # type: ignore[operator]
        except SipError as err:  # refused (404/409/403): a JSON error, nothing changes
            assert 400 <= err.status < 500, err
        self.world.net.advance(0.01)

    # -- what can happen --------------------------------------------------------------------

    @rule(mode=st.sampled_from(("cold", "warm", "consult")))
    def api_transfer(self, mode: str) -> None:
        self._api(self.world.core.cold.start_transfer, self.call_id, mode=mode)

    @rule()
    def api_cancel(self) -> None:
        tid = self._transfer_id()
        if tid is not None:
            self._api(self.world.core.cold.cancel_transfer, tid)

    @rule()
    def api_complete(self) -> None:
        tid = self._transfer_id()
        if tid is not None:
            self._api(self.world.core.warm.complete, tid)

    @rule()
    def api_conference(self) -> None:
        tid = self._transfer_id()
        if tid is not None:
            self._api(self.world.core.warm.conference, tid)

    @rule(keys=st.sampled_from(("*8", "*7", "*9", "*0", "#", "*", "8")))
    def dispatcher_presses(self, keys: str) -> None:
        """Feature codes on the dispatcher's keypad (RFC 4733 events: ``on_key`` per key)."""
        for i, key in enumerate(keys):
            self.world.core.on_key(self.call_id, key, self.world.net.now + 0.1 * i)
        self.world.net.advance(0.01 + 0.1 * len(keys))

    @rule()
    def dispatcher_refers(self) -> None:
        self._in_dialog(self.world.disp1, "REFER", (("Refer-To", "<sip:988@127.0.0.1>"),))

    @rule()
    def phone_calls_988_to_consult(self) -> None:
        """The dispatcher's phone holds nothing back: it simply places its own call to 988
        through us while on the 911 call (the start of an attended transfer)."""
        w = self.world
        if self.consult is not None or w.disp1.dialog is None:
            return
        call_dialog = w.disp1.dialog
        w.disp1.dialog = None
        invite = w.disp1.call(HANDOFFD, "988")
        for _ in range(80):  # until answered or refused (the test phone holds one dialog)
            w.net.advance(0.5)
            if _dialog(w.disp1) is not None or any(
                r.cseq == invite.cseq and r.call_id == invite.call_id and r.status >= 300
                for r in w.disp1.responses
            ):
                break
        self.consult = _dialog(w.disp1)
        w.disp1.dialog = call_dialog
        if self.consult is not None:
            event("the phone's consult call is up")

    @rule(on_consult=st.booleans())
    def phone_transfers_with_replaces(self, on_consult: bool) -> None:
        """The phone's transfer button: REFER with Replaces naming the other of its dialogs."""
        w = self.world
        a, b = w.disp1.dialog, self.consult
        if a is None or b is None:
            return
        via, named = (b, a) if on_consult else (a, b)
        replaces = quote(
            f"{named.call_id};to-tag={named.remote_tag};from-tag={named.local_tag}", safe=""
        )
        event("the phone sent REFER with Replaces")
        w.disp1.dialog = via
        self._in_dialog(
            w.disp1, "REFER", (("Refer-To", f"<sip:988@127.0.0.1?Replaces={replaces}>"),)
        )
        w.disp1.dialog = a

    @rule(on_consult=st.booleans())
    def phone_does_a_whole_attended_transfer(self, on_consult: bool) -> None:
        """The two steps above back to back (a dispatcher who does not linger), so that the
        REFER with Replaces comes up often enough."""
        self.phone_calls_988_to_consult()
        self.phone_transfers_with_replaces(on_consult)

    @rule()
    def phone_hangs_up_the_consult_call(self) -> None:
        w = self.world
        if self.consult is None:
            return
        a, w.disp1.dialog = w.disp1.dialog, self.consult
        self._in_dialog(w.disp1, "BYE")
        w.disp1.dialog, self.consult = a, None

    @rule(who=st.sampled_from(("caller", "disp1", "primary", "backup")))
    def hangs_up(self, who: str) -> None:
        self._in_dialog(getattr(self.world, who), "BYE")

    @rule(
        who=st.sampled_from(("caller", "disp1", "primary")),
        method=st.sampled_from(("INVITE", "INFO", "UPDATE", "NOTIFY", "OPTIONS", "MESSAGE")),
        body=st.one_of(
            st.just(b""),
            st.binary(max_size=120),
            st.sampled_from((sdp(7000), sdp(7000).replace(b"a=sendrecv", b"a=sendonly"))),
        ),
    )
    def someone_sends(self, who: str, method: str, body: bytes) -> None:
        """An in-dialog request from any party (a re-INVITE to hold or resume, with any body,
        or anything else a phone sends mid-call)."""
        ctype = "application/sdp" if body else None
        peer: Peer = getattr(self.world, who)
        if peer.dialog is None:
            return
        try:
            peer.in_dialog(method, HANDOFFD, body=body, content_type=ctype)
        except SipError:
            return
        self.world.net.advance(0.01)

    @rule(seconds=st.sampled_from((0.2, 1.0, 4.0, 16.0)))
    def time_passes(self, seconds: float) -> None:
        self.world.net.advance(seconds)

    def _in_dialog(
        self, peer: Peer, method: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        if peer.dialog is None:
            return
        try:
            peer.in_dialog(method, HANDOFFD, headers=headers)
        except SipError:  # that peer's dialog is over already
            return
        self.world.net.advance(0.01)

    # -- what must hold -----------------------------------------------------------------------

    @invariant()
    def settled_the_caller_hears_someone_or_the_call_is_over(self) -> None:
        if self.w is None:
            return
        w = self.world
        saved = w.net.now
        w.net.advance(SETTLE_S)  # let every timer of the last step run out (time only grows)
        call = self._call()
        if call is None:
            ended = w.core.ended[self.call_id]
            handles: list[MediaHandle] = [leg.media for leg in ended.legs]  # type: ignore[misc]
            assert all(h.closed for h in handles), "call over, media ports still open"
            return
        caller = call.caller
        assert caller.alive, "the call outlived its caller"
        assert caller.state is LegState.CONFIRMED
        assert caller.peer_sdp is not None, "the caller's SDP (or its answer in an ACK) was lost"
        assert self._heard(call, caller), _describe(call, w)
        assert w.net.now >= saved
        # and no dialog of the call is wedged: a session refresh from the caller (a re-INVITE,
        # relayed to whoever it talks to) is answered 200 once everything has settled
        assert w.caller.dialog is not None
        req = w.caller.in_dialog(
            "INVITE", HANDOFFD, body=sdp(w.caller.ep.port + 1000), content_type="application/sdp"
        )
        w.net.advance(2.0)
        finals = [r for r in w.caller.responses if r.call_id == req.call_id and r.cseq == req.cseq]
        finals = [r for r in finals if r.status >= 200]
        assert [r.status for r in finals] == [200], (_describe(call, w), finals)

    def _heard(self, call: Call, caller: Leg) -> bool:
        media = self.world.media
        others = [leg for leg in call.legs if leg is not caller and leg.state is LegState.CONFIRMED]
        handles = {id(leg.media) for leg in others}
        partner = media.partner(caller.media)  # type: ignore[arg-type]
        if partner is not None and id(partner) in handles:
            return True
        mixed = {id(h) for h in media.mixed(call.id)}
        if id(caller.media) in mixed:
            if media.held.get(call.id) is caller.media:
                return bool(others)  # on consult hold: someone is still working the call
            return bool(mixed & handles)
        return False


def _dialog(peer: Peer) -> Dialog | None:
    """The test phone's current dialog (a function: the rules swap it around)."""
    return peer.dialog


def _describe(call: Call, w: World) -> str:
    legs = ", ".join(f"{leg.role}:{leg.state.value}" for leg in call.legs)
    t = call.transfer
    return (
        f"caller stranded: call {call.state}, transfer "
        f"{t.mode + ' ' + t.state.value if t is not None else 'none'}, legs [{legs}]"
    )


OneCall.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_a_caller_is_never_left_alone = OneCall.TestCase
