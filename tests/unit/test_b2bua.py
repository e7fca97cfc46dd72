"""The call controller in memory: real transaction layers, scripted peers, a fake clock.

Each test builds a PSAP caller, two dispatcher positions and two 988 destinations on an in-memory
network (tests/unit/callnet.py) around one B2bua, and checks what every party received and what
media the controller joined. Timings (failover, return to the dispatcher) are on the fake clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from telephony.call.b2bua import B2bua
from telephony.call.probe import Prober
from telephony.call.transfer import TState
from telephony.config import ProbeConfig, load_config
from telephony.routing import load_rules
from telephony.sip.errors import SipError
from telephony.sip.headers import NameAddr
from telephony.sip.message import make_request
from telephony.sip.transaction import Endpoint
from telephony.sip.uri import parse_uri
from tests.e2e.harness import Ports, write_setup
from tests.unit.callnet import FakeMedia, LayerPort, Net, Node, Peer, sdp

PORTS = Ports(sip=5060, http=8080, disp1=5070, disp2=5072, primary=5090, backup=5092, media=20000)
HANDOFFD = Endpoint("udp", "127.0.0.1", 5060)
CALLER_HEADERS = (
    ("P-Asserted-Identity", "<tel:+18055550123>"),
    ("Call-Info", "<urn:emergency:uid:callid:abc:psap.example>;purpose=emergency-CallId"),
    ("Call-Info", "<urn:emergency:uid:incidentid:inc-1:psap.example>;purpose=emergency-IncidentId"),
)


class World:
    def __init__(
        self, tmp: Path, *, primary: str | int = "answer", backup: str | int = "answer"
    ) -> None:
        cfg = load_config(write_setup(tmp, PORTS, ring_timeout=3.0, position_ring_timeout=5.0))
        self.net = Net()
        self.node = Node(self.net, "handoffd", 5060)
        self.media = FakeMedia()
        self.core = B2bua(
            LayerPort(self.node),
            self.media,
            cfg,
            load_rules(cfg.rules),
            local={"udp": HANDOFFD},
            wall_offset=1_700_000_000.0,
        )
        self.node.handler = lambda ev: self.core.handle(ev, self.net.now)
        self.net.clocks.append(self.core.get_timer)
        self.net.tickers.append(self.core.handle_timer)
        self.caller = Peer(self.net, "caller", 5050)
        self.disp1 = Peer(self.net, "disp1", 5070)
        self.disp2 = Peer(self.net, "disp2", 5072)
        self.primary = Peer(self.net, "primary", 5090, primary)
        self.backup = Peer(self.net, "backup", 5092, backup)

    def connect(self, body: bytes | None = None) -> str:
        """A caller connected to disp-1; returns the call id. ``body``: the INVITE's (default
        an SDP offer; ``b""`` for a delayed offer)."""
        self.caller.call(HANDOFFD, "disp-1", CALLER_HEADERS, body=body)
        self.net.advance(1.0)
        assert self.caller.statuses()[-1] == 200
        assert len(self.core.calls) == 1
        return next(iter(self.core.calls))

    def bridged_to(self, peer: Peer) -> bool:
        call = next(iter(self.core.calls.values()))
        caller_media = call.caller.media
        other = self.media.partner(caller_media)  # type: ignore[arg-type]
        leg = next((lg for lg in call.legs if lg.media is other), None)
        return leg is not None and leg.dest.port == peer.ep.port


def test_call_to_position_is_bridged_and_hangup_propagates(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.connect()
    assert w.caller.statuses() == [100, 180, 200]
    invite = w.disp1.invites[0]
    assert invite.headers.get("p-asserted-identity") == "<tel:+18055550123>"
    assert b"c=IN IP4 127.0.0.1" in invite.body and b"m=audio 40002 " in invite.body
    assert w.bridged_to(w.disp1)
    w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    assert any(r.method == "BYE" for r in w.disp1.requests)
    assert not w.core.calls and w.media.open_count == 0


def test_a_100_trying_to_a_forwarded_reinvite_is_not_its_answer(tmp_path: Path) -> None:
    """The phone's stack sends 100 Trying to the re-INVITE before its 200 (as most do): the
    caller must get the 200 with the phone's new SDP, not a 488 made from the 100."""
    w = World(tmp_path)
    w.connect()
    w.caller.in_dialog("INVITE", HANDOFFD, body=sdp(7050), content_type="application/sdp")
    w.net.advance(1.0)
    reinvite = w.disp1.requests[-2]
    assert reinvite.method == "INVITE" and reinvite.to.tag  # forwarded in the dialog
    assert w.caller.statuses() == [100, 180, 200, 100, 200]
    answer = w.caller.responses[-1]
    assert b"m=audio 40000 " in answer.body  # anchored on the caller's relay endpoint


def test_api_transfer_fails_over_and_releases_dispatcher(tmp_path: Path) -> None:
    w = World(tmp_path, primary=486)
    call_id = w.connect()
    t = w.core.cold.start_transfer(call_id, now=w.net.now)
    w.net.advance(2.0)
    assert t.state is TState.COMPLETED
    assert [e.event for e in t.timeline][:3] == ["requested", "trying", "attempt failed"]
    assert w.bridged_to(w.backup)
    assert any(r.method == "BYE" for r in w.disp1.requests)  # the dispatcher was released
    inv = w.backup.invites[0]
    assert inv.headers.get("referred-by") == "<sip:disp-1@127.0.0.1:5060>"
    assert "cause=302" in (inv.headers.get("history-info") or "")
    assert "emergency-CallId" in ",".join(inv.headers.get_all("call-info"))
    assert inv.headers.get("geolocation") is None


def test_ring_timeout_moves_on_and_cancels(tmp_path: Path) -> None:
    w = World(tmp_path, primary="ring")
    call_id = w.connect()
    start = w.net.now
    t = w.core.cold.start_transfer(call_id, now=start)
    w.net.advance(2.9)
    assert not w.backup.invites
    w.net.advance(0.15)
    assert w.backup.invites, "backup not tried right after the primary's ring timeout"
    assert any(r.method == "CANCEL" for r in w.primary.requests)
    w.net.advance(1.0)
    assert t.state is TState.COMPLETED and w.bridged_to(w.backup)


def test_whole_chain_failing_returns_caller_to_dispatcher(tmp_path: Path) -> None:
    w = World(tmp_path, primary=503, backup=486)
    call_id = w.connect()
    t = w.core.cold.start_transfer(call_id, now=w.net.now)
    w.net.run()  # no clock movement: the return to the dispatcher is immediate
    assert t.state is TState.FAILED and t.sip_status == 486
    assert w.bridged_to(w.disp1)
    assert w.core.calls[call_id].state == "connected"
    assert not any(r.method == "BYE" for r in w.disp1.requests)


def test_api_cancel_keeps_caller_with_dispatcher(tmp_path: Path) -> None:
    w = World(tmp_path, primary="ring")
    call_id = w.connect()
    t = w.core.cold.start_transfer(call_id, now=w.net.now)
    w.net.advance(0.5)
    w.core.cold.cancel_transfer(t.id, now=w.net.now)
    w.net.advance(0.5)
    assert t.state is TState.CANCELLED
    assert w.bridged_to(w.disp1)
    with pytest.raises(SipError) as exc:
        w.core.cold.cancel_transfer(t.id, now=w.net.now)
    assert exc.value.status == 409


def test_refer_sends_notify_progress_and_completes(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.connect()
    w.disp1.in_dialog(
        "REFER",
        HANDOFFD,
        headers=(
            ("Refer-To", "<sip:988@127.0.0.1:5060>"),
            ("Referred-By", "<sip:disp1@127.0.0.1>"),
        ),
    )
    w.net.advance(3.0)
    assert 202 in w.disp1.statuses("REFER")
    frags = [r.body.decode().strip() for r in w.disp1.requests if r.method == "NOTIFY"]
    assert frags[0] == "SIP/2.0 100 Trying"
    assert frags[-1] == "SIP/2.0 200 OK"
    assert "SIP/2.0 180 Ringing" in frags
    assert w.bridged_to(w.primary)
    assert any(r.method == "BYE" for r in w.disp1.requests)  # released after the grace time


def test_refer_to_a_number_no_rule_names_gets_notify_403_and_caller_stays(tmp_path: Path) -> None:
    """The catch-all rule routes the trunk's transfer numbers (988); a blind transfer to any
    other number (here a police line) must not end up at 988: 202, then NOTIFY 403, no INVITE
    to any destination, caller still with the dispatcher."""
    w = World(tmp_path)
    w.connect()
    w.disp1.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", "<sip:5551234@127.0.0.1>"),))
    w.net.advance(1.0)
    assert w.disp1.statuses("REFER") == [202]
    notifies = [r for r in w.disp1.requests if r.method == "NOTIFY"]
    frags = [r.body.decode().strip() for r in notifies]
    assert len(frags) == 1 and frags[0].startswith("SIP/2.0 403 "), frags
    assert "terminated" in (notifies[0].headers.get("Subscription-State") or "")
    assert not w.primary.invites and not w.backup.invites
    assert w.bridged_to(w.disp1)
    call = next(iter(w.core.calls.values()))
    assert call.state == "connected" and call.transfer is None


def test_a_988_reason_phrase_that_is_not_utf8_still_returns_the_caller(tmp_path: Path) -> None:
    """The last destination rejects with a reason phrase holding a byte that is not UTF-8: the
    dispatcher still gets the final NOTIFY (the byte shown as U+FFFD) and the caller goes back
    to the dispatcher."""
    w = World(tmp_path, primary=503, backup=486)
    w.backup.reject_reason = b"Busy \xff Here".decode("utf-8", "surrogateescape")
    w.connect()
    w.disp1.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", "<sip:988@127.0.0.1:5060>"),))
    w.net.advance(3.0)
    assert w.backup.invites  # the chain was tried to its end
    frags = [r.body.decode("utf-8").strip() for r in w.disp1.requests if r.method == "NOTIFY"]
    assert frags[-1] == "SIP/2.0 486 Busy \ufffd Here", frags
    assert w.bridged_to(w.disp1)
    call = next(iter(w.core.calls.values()))
    assert call.state == "connected"


def test_a_refer_to_that_does_not_parse_gets_400_at_once(tmp_path: Path) -> None:
    """Not silence until the phone's Timer F: the REFER is answered 400 with a Warning, nothing
    is dialled and the caller stays with the dispatcher."""
    w = World(tmp_path)
    w.connect()
    w.disp1.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", "<sip:988@127.0.0.1"),))
    w.net.advance(0.1)
    assert w.disp1.statuses("REFER") == [400]
    refusal = w.disp1.responses[-1]
    assert (refusal.headers.get("warning") or "").startswith('399 handoffd "')
    assert not w.primary.invites and w.bridged_to(w.disp1)


@pytest.mark.parametrize(
    "extra",
    [(("Contact", "9"),), (("Record-Route", "<sip:proxy@127.0.0.1;lr"),)],
    ids=["contact-that-does-not-parse", "record-route-that-does-not-parse"],
)
def test_a_911_invite_its_dialog_could_not_be_built_from_is_400_before_any_dialling(
    tmp_path: Path, extra: tuple[tuple[str, str], ...]
) -> None:
    """Before: the position was dialled and answered, then building the caller's dialog
    failed and the caller heard ringing with no final answer ever."""
    w = World(tmp_path)
    w.caller.call(HANDOFFD, "disp-1", extra)
    w.net.advance(2.0)
    assert [s for s in w.caller.statuses() if s >= 200] == [400]
    assert (w.caller.responses[-1].headers.get("warning") or "").startswith('399 handoffd "')
    assert not w.disp1.invites and not w.core.calls and w.media.open_count == 0


def test_a_911_invite_without_contact_is_400_before_any_dialling(tmp_path: Path) -> None:
    w = World(tmp_path)
    invite = make_request(
        "INVITE",
        parse_uri("sip:disp-1@127.0.0.1:5060"),
        via=w.caller.via(),
        from_=NameAddr(parse_uri("sip:+18055550123@127.0.0.1"), None, (("tag", "f1"),)),
        to=NameAddr(parse_uri("sip:disp-1@127.0.0.1:5060")),
        call_id="no-contact@caller",
        cseq=1,
        body=sdp(6050),
        content_type="application/sdp",
    )
    w.caller.invites.append(invite)
    w.caller.send(invite, HANDOFFD)
    w.net.advance(2.0)
    assert [s for s in w.caller.statuses() if s >= 200] == [400]
    assert not w.disp1.invites and not w.core.calls


def test_a_988_answer_without_contact_is_acked_ended_and_the_next_destination_tried(
    tmp_path: Path,
) -> None:
    """A 2xx without Contact cannot make a dialog. Before, it was not even ACKed (resent for
    32 s to a counselor hearing silence) and the leg hung on until the ring timeout."""
    w = World(tmp_path)
    w.primary.answer_contact = False
    call_id = w.connect()
    t = w.core.cold.start_transfer(call_id, now=w.net.now)
    w.net.advance(1.0)  # primary answers at +0.5 s; the ring timeout would be +3 s
    assert [r.method for r in w.primary.requests] == ["INVITE", "ACK", "BYE"]
    assert w.backup.invites  # at once, not after the ring timeout
    w.net.advance(2.0)
    assert t.state is TState.COMPLETED and w.bridged_to(w.backup)
    assert [e.event for e in t.timeline][:4] == ["requested", "trying", "ringing", "attempt failed"]


@pytest.mark.parametrize(
    "sides",
    [("caller",) * 3, ("disp1",) * 3, ("caller", "disp1", "caller", "disp1")],
    ids=["caller-hold-resume-hold", "dispatcher-hold-resume-hold", "both-sides-in-turn"],
)
def test_every_reinvite_in_a_dialog_is_relayed_not_only_the_first(
    tmp_path: Path, sides: tuple[str, ...]
) -> None:
    """Hold, resume, hold again (and session-timer refreshes) are re-INVITEs in the same
    dialog. Before, only the first was relayed: the dialogs never learned that a re-INVITE
    was answered, so the second got 500 ("previous INVITE not answered yet") or 491."""
    w = World(tmp_path)
    w.connect()
    for n, side in enumerate(sides):
        peer, other = (w.caller, w.disp1) if side == "caller" else (w.disp1, w.caller)
        direction = b"sendonly" if n % 2 == 0 else b"sendrecv"
        before = sum(1 for r in other.requests if r.method == "INVITE")
        req = peer.in_dialog(
            "INVITE",
            HANDOFFD,
            body=sdp(7050).replace(b"a=sendrecv", b"a=" + direction),
            content_type="application/sdp",
        )
        w.net.advance(1.0)
        final = [r for r in peer.responses if r.cseq == req.cseq and r.status >= 200]
        assert [r.status for r in final] == [200], (n, side, [r.status for r in final])
        relayed = [r for r in other.requests if r.method == "INVITE"]
        assert len(relayed) == before + 1  # the partner got this one too
        assert b"a=" + direction in relayed[-1].body


def test_api_transfer_to_a_number_no_rule_names_is_403(tmp_path: Path) -> None:
    w = World(tmp_path)
    call_id = w.connect()
    with pytest.raises(SipError) as err:
        w.core.cold.start_transfer(call_id, destination="5551234", now=w.net.now)
    assert err.value.status == 403 and "5551234" in str(err.value)
    assert not w.primary.invites
    # the trunk's transfer number and a named destination still go
    t = w.core.cold.start_transfer(call_id, destination="988-backup", now=w.net.now)
    w.net.advance(0.5)
    assert t.chain[0].label == "988-backup" and w.backup.invites and not w.primary.invites


def test_failed_refer_after_dispatcher_left_recalls_position(tmp_path: Path) -> None:
    w = World(tmp_path, primary=486, backup=503)
    w.primary.mode = "ring"
    records: list[tuple[str, float]] = []
    w.core.on_record = lambda event, call, fields: records.append((event, w.net.now))
    w.connect()
    w.disp1.answer_after = 2.0  # the recall rings two seconds before the phone answers
    w.disp1.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", "<sip:988@127.0.0.1>"),))
    w.net.advance(0.2)
    w.disp1.in_dialog("BYE", HANDOFFD)  # the phone hangs up at once (blind transfer)
    w.net.advance(0.2)
    assert w.core.calls, "the caller must stay while the transfer goes on"
    w.net.advance(3.5)  # primary rings out, backup answers 503: chain exhausted
    assert len(w.disp1.invites) == 2, "the position is called again (recall)"
    # a ringing position is not a return: the caller has no dispatcher yet (KPI returned_ms)
    assert "returned to dispatcher" not in [e for e, _ in records], records
    failed_at = next(at for e, at in records if e == "failed")
    w.net.advance(3.0)
    assert w.bridged_to(w.disp1)
    returned = [at for e, at in records if e == "returned to dispatcher"]
    assert len(returned) == 1 and returned[0] >= failed_at + 2.0, records


def test_caller_hanging_up_during_transfer_is_abandonment(tmp_path: Path) -> None:
    w = World(tmp_path, primary="ring")
    records: list[tuple[str, dict[str, object]]] = []
    w.core.on_record = lambda event, call, fields: records.append((event, fields))
    call_id = w.connect()
    t = w.core.cold.start_transfer(call_id, now=w.net.now)
    w.net.advance(0.5)
    w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    assert t.state is TState.ABANDONED
    assert ("abandoned", {"phase": "while ringing"}) in records
    assert any(r.method == "CANCEL" for r in w.primary.requests)
    assert not w.core.calls and w.media.open_count == 0


def test_invite_to_transfer_number_answers_cpe_with_last_failure(tmp_path: Path) -> None:
    w = World(tmp_path, primary=503, backup=486)
    w.caller.call(HANDOFFD, "988", CALLER_HEADERS)
    w.net.advance(1.0)
    final = [r for r in w.caller.responses if r.status >= 200][-1]
    assert final.status == 486
    assert "cause=486" in (final.headers.get("reason") or "")


def test_a_last_failure_with_a_reason_that_is_not_utf8_still_answers_the_cpe(
    tmp_path: Path,
) -> None:
    w = World(tmp_path, primary=503, backup=486)
    w.backup.reject_reason = b"Busy \xff Here".decode("utf-8", "surrogateescape")
    w.caller.call(HANDOFFD, "988", CALLER_HEADERS)
    w.net.advance(1.0)
    final = [r for r in w.caller.responses if r.status >= 200][-1]
    assert final.status == 486 and not w.core.calls
    assert "cause=486" in (final.headers.get("reason") or "")


def test_invite_to_transfer_number_connects_cpe(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.caller.call(HANDOFFD, "988", CALLER_HEADERS)
    w.net.advance(1.0)
    assert w.caller.statuses()[-1] == 200
    assert w.bridged_to(w.primary)


def test_draining_refuses_new_calls_with_retry_after(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.core.draining = True
    w.caller.call(HANDOFFD, "disp-1")
    w.net.run()
    final = w.caller.responses[-1]
    assert final.status == 503 and final.headers.get("retry-after") == "7"


def test_unknown_number_is_404(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.caller.call(HANDOFFD, "5555")
    w.net.run()
    assert w.caller.responses[-1].status == 404
    assert w.media.open_count == 0


def test_prober_marks_dead_destination_down_and_transfer_skips_it(tmp_path: Path) -> None:
    w = World(tmp_path)
    del w.net.nodes[("127.0.0.1", 5090)]  # the primary is gone: OPTIONS go unanswered
    prober = Prober(w.core, ProbeConfig(interval=5.0, timeout=1.0, down_after=2, up_after=1))
    prober.start(w.core.rules, w.net.now)
    w.net.advance(6.5)  # two rounds, two timeouts
    assert w.core.down == {"988-primary"}
    assert prober.on_change == [("988-primary", False)]
    call_id = w.connect()
    t = w.core.cold.start_transfer(call_id, now=w.net.now)
    w.net.advance(1.0)
    assert "skipped: down" in [e.event for e in t.timeline]
    assert t.state is TState.COMPLETED and w.bridged_to(w.backup)
    w.net.add(w.primary)  # back: the next answered probe brings it up
    w.net.advance(5.0)
    assert w.core.down == set()
    assert prober.on_change[-1] == ("988-primary", True)


def test_a_refer_puts_the_988_invite_on_the_wire_before_its_202_and_the_202_before_notify(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    w.primary.mode = "ring"
    w.connect()
    w.net.log.clear()
    w.disp1.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", "<sip:988@127.0.0.1>"),))
    w.net.advance(0.5)
    order = [
        line.split()[0] + (" " + line.split()[1] if line.startswith("SIP/") else "")
        for _, hop, line in w.net.log
        if hop.startswith("handoffd->")
    ]
    invite = order.index("INVITE")  # to 988: the first thing handoffd sends
    accepted = order.index("SIP/2.0 202")
    assert invite < accepted < order.index("NOTIFY"), order
    notifies = [r for r in w.disp1.requests if r.method == "NOTIFY"]
    assert [n.body.split(b"\r\n")[0] for n in notifies] == [
        b"SIP/2.0 100 Trying",
        b"SIP/2.0 180 Ringing",
    ]


def test_a_refer_whose_every_destination_fails_at_once_gets_202_then_the_final_notify(
    tmp_path: Path,
) -> None:
    """No media port for any 988 leg (the transfer ends inside the REFER's handling): the
    phone still gets 202 first, then one final NOTIFY with the failure, and keeps the caller."""
    w = World(tmp_path)
    w.connect()
    real_open = w.media.open

    def no_ports(label: str) -> object:
        if label.startswith("destination/"):
            raise SipError("no media port", 503)
        return real_open(label)

    w.media.open = no_ports  # type: ignore[method-assign,assignment]
    w.disp1.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", "<sip:988@127.0.0.1>"),))
    w.net.advance(0.5)
    assert [r.status for r in w.disp1.responses if r.cseq.method == "REFER"] == [202]
    notifies = [r for r in w.disp1.requests if r.method == "NOTIFY"]
    assert len(notifies) == 1 and notifies[0].body.startswith(b"SIP/2.0 503 ")
    assert "terminated" in (notifies[0].headers.get("subscription-state") or "")
    assert w.bridged_to(w.disp1)
