"""Transaction machines in memory: two layers wired together, a fake clock, deterministic loss."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.sip import (
    NameAddr,
    ProtocolError,
    Request,
    Response,
    Via,
    make_ack_for_failure,
    make_cancel,
    make_request,
    make_response,
    new_branch,
    new_tag,
    parse_message,
    parse_uri,
)
from telephony.sip.transaction import (
    CancelReceived,
    Endpoint,
    RequestReceived,
    ResponseReceived,
    TimerConfig,
    TransactionKey,
    TransactionLayer,
    TransactionTimedOut,
    Transmit,
    TransportFailed,
    response_destination,
)
from telephony.sip.txmachines import SHRINK_AFTER, State

UAC = Endpoint("udp", "127.0.0.1", 5070)
UAS = Endpoint("udp", "127.0.0.1", 5080)
T1 = 0.5


def request(
    method: str, *, branch: str | None = None, to_tag: str | None = None, call_id: str = ""
) -> Request:
    uri = parse_uri("sip:988@127.0.0.1:5080")
    to = NameAddr(uri)
    if to_tag:
        to = to.with_tag(to_tag)
    return make_request(
        method,
        uri,
        via=Via("UDP", "127.0.0.1", 5070, (("branch", branch or new_branch()), ("rport", None))),
        from_=NameAddr(parse_uri("sip:psap@127.0.0.1:5070"), params=(("tag", "f1"),)),
        to=to,
        call_id=call_id or f"tx-{new_tag()}@127.0.0.1",
        cseq=1,
    )


class Wire:
    """Delivers transmits between the two layers through real bytes; ``drop`` decides loss."""

    def __init__(self, reliable: bool = False) -> None:
        kind = "tcp" if reliable else "udp"
        self.uac_ep = Endpoint(kind, UAC.host, UAC.port)
        self.uas_ep = Endpoint(kind, UAS.host, UAS.port)
        self.uac = TransactionLayer(TimerConfig(t1=T1))
        self.uas = TransactionLayer(TimerConfig(t1=T1))
        self.now = 0.0
        self.sent: list[tuple[str, Transmit]] = []
        self.drop: Callable[[str, Transmit], bool] = lambda side, t: False
        self.uac_events: list[object] = []
        self.uas_events: list[object] = []

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for side, layer, peer, src in (
                ("uac", self.uac, self.uas, self.uac_ep),
                ("uas", self.uas, self.uac, self.uas_ep),
            ):
                for t in layer.transmits():
                    moved = True
                    self.sent.append((side, t))
                    if not self.drop(side, t):
                        peer.receive(parse_message(t.data), src, self.now)
            self.uac_events += self.uac.events()
            self.uas_events += self.uas.events()

    def advance(self, until: float) -> None:
        """Run both layers' timers up to ``until``."""
        while True:
            deadlines = [d for d in (self.uac.get_timer(), self.uas.get_timer()) if d is not None]
            if not deadlines or min(deadlines) > until:
                break
            self.now = min(deadlines)
            self.uac.handle_timer(self.now)
            self.uas.handle_timer(self.now)
            self.pump()
        self.now = until

    def sent_times(self, side: str, method_or_status: str | int) -> int:
        n = 0
        for s, t in self.sent:
            m = t.message
            if s != side:
                continue
            if isinstance(m, Request) and m.method == method_or_status:
                n += 1
            if isinstance(m, Response) and m.status == method_or_status:
                n += 1
        return n


def server_request(w: Wire) -> RequestReceived:
    ev = [e for e in w.uas_events if isinstance(e, RequestReceived) and e.key is not None]
    assert ev, w.uas_events
    return ev[-1]


def finals(w: Wire) -> list[Response]:
    return [
        e.response
        for e in w.uac_events
        if isinstance(e, ResponseReceived) and e.response.status >= 200
    ]


def test_invite_answered_200_then_both_sides_clean_up() -> None:
    w = Wire()
    inv = request("INVITE")
    key = w.uac.send_request(inv, w.uas_ep, w.now)
    w.pump()
    rr = server_request(w)
    assert rr.request.method == "INVITE"
    assert w.sent_times("uas", 100) == 1  # the layer sends 100 Trying itself
    w.uas.send_response(make_response(rr.request, 180, to_tag="t1"), w.now)
    w.uas.send_response(make_response(rr.request, 200, to_tag="t1"), w.now)
    w.pump()
    assert [r.status for r in finals(w)] == [200]
    assert all(e.key == key for e in w.uac_events if isinstance(e, ResponseReceived))
    w.advance(64 * T1 + 0.01)  # Timer M and L
    assert len(w.uac) == 0
    assert len(w.uas) == 0
    assert w.sent_times("uac", "INVITE") == 1  # no retransmission once 100 arrived


def test_failure_response_is_acked_by_the_transaction_and_absorbed() -> None:
    w = Wire()
    w.uac.send_request(request("INVITE"), w.uas_ep, w.now)
    w.pump()
    rr = server_request(w)
    w.uas.send_response(make_response(rr.request, 486, to_tag="busy"), w.now)
    w.pump()
    assert [r.status for r in finals(w)] == [486]
    acks = [t.message for s, t in w.sent if s == "uac" and isinstance(t.message, Request)]
    ack = acks[-1]
    assert ack.method == "ACK"
    assert ack.to.tag == "busy"
    assert ack.top_via.branch == rr.request.top_via.branch  # same branch as the INVITE
    assert ack.cseq.seq == 1
    # the ACK reached the server transaction: no 486 retransmissions (Timer G stopped)
    w.advance(10.0)
    assert w.sent_times("uas", 486) == 1
    assert not [e for e in w.uas_events if isinstance(e, TransactionTimedOut)]
    w.advance(40.0)
    assert len(w.uac) == 0 and len(w.uas) == 0


def test_invite_retransmitted_on_timer_a_schedule_then_timer_b() -> None:
    w = Wire()
    w.drop = lambda side, t: True  # black hole
    key = w.uac.send_request(request("INVITE"), w.uas_ep, 0.0)
    times = []
    while (d := w.uac.get_timer()) is not None and d <= 64 * T1:
        times.append(round(d, 3))
        w.now = d
        w.uac.handle_timer(d)
        w.pump()
    # A fires at T1, 3T1, 7T1, ... (intervals double); B at 64*T1
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert times[-1] == 32.0
    assert any(isinstance(e, TransactionTimedOut) and e.key == key for e in w.uac_events)
    assert len(w.uac) == 0


def test_non_invite_timer_e_caps_at_t2_and_f_times_out() -> None:
    w = Wire()
    w.drop = lambda side, t: True
    w.uac.send_request(request("OPTIONS"), w.uas_ep, 0.0)
    times = []
    while (d := w.uac.get_timer()) is not None:
        times.append(round(d, 3))
        w.now = d
        w.uac.handle_timer(d)
        w.pump()
    gaps = [round(b - a, 3) for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(gaps) == 4.0  # capped at T2
    assert times[-1] == 32.0
    assert [type(e) for e in w.uac_events] == [TransactionTimedOut]


def test_lost_packets_are_recovered_by_retransmission() -> None:
    w = Wire()
    lost = {"INVITE": 2, 200: 0, "OPTIONS": 3}

    def drop(side: str, t: Transmit) -> bool:
        m = t.message
        label: str | int = m.method if isinstance(m, Request) else m.status
        if lost.get(label, 0) > 0:
            lost[label] -= 1
            return True
        return False

    w.drop = drop
    w.uac.send_request(request("INVITE"), w.uas_ep, 0.0)
    w.pump()
    w.advance(2.0)  # two INVITEs lost, the third (at 1.5 s) arrives
    rr = server_request(w)
    assert w.sent_times("uac", "INVITE") == 3
    w.uas.send_response(make_response(rr.request, 200, to_tag="x"), w.now)
    w.pump()
    assert [r.status for r in finals(w)] == [200]

    w.uac.send_request(request("OPTIONS"), w.uas_ep, w.now)
    w.pump()
    w.advance(w.now + 8.0)
    opt = server_request(w)
    assert opt.request.method == "OPTIONS"
    w.uas.send_response(make_response(opt.request, 200), w.now)
    w.pump()
    assert [r.status for r in finals(w)][-1] == 200


def test_request_retransmission_gets_the_last_response_again() -> None:
    w = Wire()
    req = request("OPTIONS")
    w.uac.send_request(req, w.uas_ep, 0.0)
    w.pump()
    w.uas.send_response(make_response(server_request(w).request, 404), w.now)
    w.pump()
    before = w.sent_times("uas", 404)
    w.uas.receive(parse_message(req.to_bytes()), w.uac_ep, w.now + 1)  # a late duplicate
    w.pump()
    assert w.sent_times("uas", 404) == before + 1
    assert len([e for e in w.uas_events if isinstance(e, RequestReceived)]) == 1


def test_reliable_transport_has_no_retransmissions_and_zero_wait_timers() -> None:
    w = Wire(reliable=True)
    w.drop = lambda side, t: side == "uas"  # responses never come back
    w.uac.send_request(request("OPTIONS"), w.uas_ep, 0.0)
    w.pump()
    w.advance(100.0)
    assert w.sent_times("uac", "OPTIONS") == 1
    assert [type(e) for e in w.uac_events] == [TransactionTimedOut]
    w2 = Wire(reliable=True)
    w2.uac.send_request(request("OPTIONS"), w2.uas_ep, 0.0)
    w2.pump()
    w2.uas.send_response(make_response(server_request(w2).request, 200), 0.0)
    w2.pump()
    w2.advance(0.0)  # Timer J and K are zero on reliable transports
    assert len(w2.uac) == 0 and len(w2.uas) == 0


def test_cancel_after_provisional_and_cancel_before_it() -> None:
    w = Wire()
    key = w.uac.send_request(request("INVITE"), w.uas_ep, 0.0)
    w.pump()
    rr = server_request(w)
    assert w.uac.cancel(key, w.now) == key._replace(method="CANCEL")  # 100 Trying arrived: sent now
    w.pump()
    cancels = [e for e in w.uas_events if isinstance(e, CancelReceived)]
    assert len(cancels) == 1 and cancels[0].invite_key == rr.key
    assert w.sent_times("uas", 200) == 1  # the CANCEL's own 200
    w.uas.send_response(make_response(rr.request, 487, to_tag="c"), w.now)
    w.pump()
    assert sorted(r.status for r in finals(w)) == [200, 487]

    # before any provisional: held until the first 1xx
    w2 = Wire()
    w2.drop = lambda side, t: side == "uas" and isinstance(t.message, Response)
    key2 = w2.uac.send_request(request("INVITE"), w2.uas_ep, 0.0)
    w2.pump()
    w2.uac.cancel(key2, 0.0)
    w2.pump()
    assert w2.sent_times("uac", "CANCEL") == 0
    w2.drop = lambda side, t: False
    rr2 = server_request(w2)
    w2.uas.send_response(make_response(rr2.request, 180, to_tag="r"), w2.now)
    w2.pump()
    assert w2.sent_times("uac", "CANCEL") == 1


def test_unmatched_cancel_gets_481_and_merged_request_482() -> None:
    w = Wire()
    w.uas.receive(request("CANCEL"), w.uac_ep, 0.0)
    w.pump()
    assert w.sent_times("uas", 481) == 1
    first = request("INVITE", call_id="merge@127.0.0.1")
    w.uas.receive(first, w.uac_ep, 0.0)
    merged = request("INVITE", call_id="merge@127.0.0.1")  # same From tag/CSeq, other branch
    w.uas.receive(merged, Endpoint("udp", "127.0.0.1", 5071), 0.0)
    w.pump()
    assert w.sent_times("uas", 482) == 1
    assert len([e for e in w.uas_events if isinstance(e, RequestReceived)]) == 1


def test_rfc2543_peer_without_magic_cookie_is_matched() -> None:
    w = Wire()
    old = request("OPTIONS", branch="oldstyle1")
    w.uas.receive(old, w.uac_ep, 0.0)
    w.pump()
    rr = server_request(w)
    assert rr.key is not None and rr.key.branch.startswith("2543|")
    w.uas.receive(parse_message(old.to_bytes()), w.uac_ep, 0.1)  # retransmission: absorbed
    w.pump()
    assert len([e for e in w.uas_events if isinstance(e, RequestReceived)]) == 1
    w.uas.send_response(make_response(rr.request, 200), 0.2)
    assert w.uas.transmits()[-1].message.status == 200  # type: ignore[union-attr]


def test_responses_go_to_rport_or_via_port() -> None:
    layer = TransactionLayer()
    with_rport = request("OPTIONS")
    layer.receive(with_rport, Endpoint("udp", "127.0.0.1", 40000), 0.0)
    layer.send_response(make_response(with_rport, 200), 0.0)
    assert layer.transmits()[-1].dest == Endpoint("udp", "127.0.0.1", 40000)
    plain = request("OPTIONS")
    plain.headers.set("Via", f"SIP/2.0/UDP 127.0.0.1:5999;branch={new_branch()}")
    layer.receive(plain, Endpoint("udp", "127.0.0.1", 40001), 0.0)
    layer.send_response(make_response(plain, 200), 0.0)
    assert layer.transmits()[-1].dest == Endpoint("udp", "127.0.0.1", 5999)


def test_stray_2xx_goes_up_for_re_ack_and_other_strays_are_dropped() -> None:
    layer = TransactionLayer()
    inv = request("INVITE")
    layer.receive(make_response(inv, 200, to_tag=new_tag()), UAS, 0.0)
    layer.receive(make_response(inv, 486, to_tag=new_tag()), UAS, 0.0)
    evs = layer.events()
    assert [type(e) for e in evs] == [ResponseReceived]
    assert isinstance(evs[0], ResponseReceived) and evs[0].key is None
    assert layer.dropped == 1


def test_tu_misuse_raises_protocol_error_with_status() -> None:
    layer = TransactionLayer()
    with pytest.raises(ProtocolError) as exc:
        layer.send_response(make_response(request("OPTIONS"), 200), 0.0)
    assert exc.value.status == 500 and exc.value.side == "local"
    with pytest.raises(ProtocolError):
        layer.send_request(request("ACK"), UAS, 0.0)
    req = request("OPTIONS")
    layer.receive(req, UAC, 0.0)
    layer.send_response(make_response(req, 200), 0.0)
    with pytest.raises(ProtocolError):  # a second final response is not allowed
        layer.send_response(make_response(req, 500), 0.0)


def test_transport_failure_is_reported() -> None:
    layer = TransactionLayer()
    key = layer.send_request(request("OPTIONS"), UAS, 0.0)
    layer.transport_error(UAS, 0.1)
    assert [type(e) for e in layer.events()] == [TransportFailed]
    assert len(layer) == 0 and key.method == "OPTIONS"


def test_thousand_transactions_leave_nothing_behind() -> None:
    w = Wire()
    for _ in range(1000):
        w.uac.send_request(request("OPTIONS"), w.uas_ep, w.now)
        w.pump()
        w.uas.send_response(make_response(server_request(w).request, 200), w.now)
        w.pump()
    assert len(finals(w)) == 1000
    w.advance(w.now + 64 * T1 + 1)
    assert len(w.uac) == 0 and len(w.uas) == 0
    assert w.uac.get_timer() is None and w.uas.get_timer() is None


def test_cancelled_invite_without_final_response_is_given_up_after_64_t1() -> None:
    w = Wire()
    key = w.uac.send_request(request("INVITE"), w.uas_ep, 0.0)
    w.pump()  # 100 Trying arrives: Proceeding
    w.drop = lambda side, t: side == "uas"  # the far end goes silent
    w.uac.cancel(key, 1.0)
    w.pump()
    w.advance(1.0 + 64 * T1 - 0.01)
    assert not [e for e in w.uac_events if isinstance(e, TransactionTimedOut) and e.key == key]
    w.advance(1.0 + 64 * T1 + 0.01)
    assert [e for e in w.uac_events if isinstance(e, TransactionTimedOut) and e.key == key]
    assert key not in w.uac._client


def test_cancel_is_idempotent_refused_after_final_and_only_for_client_invites() -> None:
    w = Wire()
    key = w.uac.send_request(request("INVITE"), w.uas_ep, 0.0)
    w.pump()
    first = w.uac.cancel(key, 0.0)
    assert w.uac.cancel(key, 0.0) == first
    w.pump()
    assert w.sent_times("uac", "CANCEL") == 1
    w.uas.send_response(make_response(server_request(w).request, 487, to_tag="c"), w.now)
    w.pump()
    assert w.uac.cancel(key, w.now) is None  # a final response arrived
    assert w.uac.cancel(key._replace(branch="z9hG4bKgone"), w.now) is None
    with pytest.raises(ProtocolError):
        w.uac.cancel(key._replace(method="OPTIONS"), w.now)
    with pytest.raises(ProtocolError):
        w.uac.cancel(key._replace(client=False), w.now)


def test_deferred_cancel_is_dropped_when_the_invite_is_answered_first() -> None:
    w = Wire()
    w.drop = lambda side, t: isinstance(t.message, Response) and t.message.status == 100
    key = w.uac.send_request(request("INVITE"), w.uas_ep, 0.0)
    w.pump()
    assert w.uac.cancel(key, 0.0) == key._replace(method="CANCEL")
    w.uas.send_response(make_response(server_request(w).request, 200, to_tag="a"), 0.1)
    w.pump()
    assert w.sent_times("uac", "CANCEL") == 0
    assert [r.status for r in finals(w)] == [200]  # the TU must ACK and BYE it


def test_cancel_after_final_response_gets_200_but_is_not_reported() -> None:
    w = Wire()
    inv = request("INVITE")
    w.uac.send_request(inv, w.uas_ep, 0.0)
    w.pump()
    rr = server_request(w)
    w.uas.send_response(make_response(rr.request, 200, to_tag="a"), 0.0)
    w.pump()
    w.uas.receive(make_cancel(inv), w.uac_ep, 0.1)
    w.pump()
    assert w.sent_times("uas", 200) == 2
    assert not [e for e in w.uas_events if isinstance(e, CancelReceived)]
    # the CANCEL's 200 carries the To tag the INVITE's response used
    cancel_200 = [t.message for s, t in w.sent if s == "uas"][-1]
    assert isinstance(cancel_200, Response) and cancel_200.cseq.method == "CANCEL"
    assert cancel_200.to.tag == "a"


def test_cancel_retransmission_gets_the_same_200_again() -> None:
    w = Wire()
    inv = request("INVITE")
    w.uac.send_request(inv, w.uas_ep, 0.0)
    w.pump()
    cancel = make_cancel(inv)
    w.uas.receive(parse_message(cancel.to_bytes()), w.uac_ep, 0.1)
    w.uas.receive(parse_message(cancel.to_bytes()), w.uac_ep, 0.2)
    w.pump()
    assert len([e for e in w.uas_events if isinstance(e, CancelReceived)]) == 1
    oks = [t.data for s, t in w.sent if s == "uas" and getattr(t.message, "status", 0) == 200]
    assert len(oks) == 2 and oks[0] == oks[1]


def test_2xx_retransmissions_reach_the_tu_in_accepted_and_ack_goes_up() -> None:
    w = Wire()
    key = w.uac.send_request(request("INVITE"), w.uas_ep, 0.0)
    w.pump()
    rr = server_request(w)
    ok = make_response(rr.request, 200, to_tag="a")
    w.uas.send_response(ok, 0.0)
    w.pump()
    w.uas.send_response(ok, 0.5)  # the UAS core retransmits its 2xx through the transaction
    w.pump()
    oks = [e for e in w.uac_events if isinstance(e, ResponseReceived) and e.response.status == 200]
    assert len(oks) == 2 and all(e.key == key for e in oks)  # RFC 6026: the TU re-ACKs each
    # the ACK for a 2xx is sent stateless with a new branch and reaches the UAS TU with no key
    ack = make_request(
        "ACK",
        rr.request.uri,
        via=Via("UDP", "127.0.0.1", 5070, (("branch", new_branch()),)),
        from_=rr.request.from_,
        to=rr.request.to.with_tag("a"),
        call_id=rr.request.call_id,
        cseq=1,
    )
    w.uac.send_stateless(ack, w.uas_ep)
    w.pump()
    acks = [e for e in w.uas_events if isinstance(e, RequestReceived) and e.key is None]
    assert len(acks) == 1 and acks[0].request.method == "ACK"
    # after Timer M the client transaction is gone: a late 2xx still reaches the TU, key None
    w.advance(64 * T1 + 1)
    w.uac.receive(parse_message(ok.to_bytes()), w.uas_ep, w.now)
    evs = w.uac.events()
    assert len(evs) == 1 and isinstance(evs[0], ResponseReceived) and evs[0].key is None


def test_invite_retransmission_is_answered_with_the_last_provisional() -> None:
    w = Wire()
    w.drop = lambda side, t: side == "uas"  # the UAC never hears back: Timer A keeps going
    w.uac.send_request(request("INVITE"), w.uas_ep, 0.0)
    w.pump()
    rr = server_request(w)
    w.uas.send_response(make_response(rr.request, 180, to_tag="r"), 0.1)
    w.pump()
    w.advance(1.6)  # retransmissions at 0.5 and 1.5
    assert w.sent_times("uac", "INVITE") == 3
    assert w.sent_times("uas", 100) == 1
    assert w.sent_times("uas", 180) == 3  # sent once, then once per retransmitted INVITE
    assert len([e for e in w.uas_events if isinstance(e, RequestReceived)]) == 1


def test_server_timer_g_schedule_and_timer_h_when_the_ack_never_comes() -> None:
    w = Wire()
    w.drop = lambda side, t: side == "uac" and t.message.method == "ACK"
    w.uac.send_request(request("INVITE"), w.uas_ep, 0.0)
    w.pump()
    rr = server_request(w)
    key = rr.key
    w.uas.send_response(make_response(rr.request, 486, to_tag="b"), 0.0)
    w.pump()
    times = []
    while (d := w.uas.get_timer()) is not None and d <= 64 * T1:
        times.append(round(d, 3))
        w.advance(d)
    gaps = [round(b - a, 3) for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]  # G doubles up to T2
    assert times[-1] == 32.0  # Timer H
    assert [e for e in w.uas_events if isinstance(e, TransactionTimedOut) and e.key == key]
    assert key not in w.uas._server
    # a late ACK for that non-2xx is dropped, not handed to the TU as if for a 2xx
    dropped = w.uas.dropped
    ack = make_request(
        "ACK",
        rr.request.uri,
        via=rr.request.top_via,
        from_=rr.request.from_,
        to=rr.request.to.with_tag("b"),
        call_id=rr.request.call_id,
        cseq=1,
    )
    w.uas.receive(ack, w.uac_ep, w.now + 1)
    assert w.uas.dropped == dropped + 1
    assert not [e for e in w.uas.events() if isinstance(e, RequestReceived)]


def test_stray_ack_with_no_transaction_goes_to_the_tu_without_a_key() -> None:
    layer = TransactionLayer()
    layer.receive(request("ACK", to_tag="x"), UAC, 0.0)
    evs = layer.events()
    assert len(evs) == 1 and isinstance(evs[0], RequestReceived) and evs[0].key is None
    assert len(layer) == 0


def test_rfc2543_invite_ack_and_cancel_matching() -> None:
    layer = TransactionLayer()
    inv = request("INVITE", branch="old1")
    inv.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5070")  # no branch at all
    layer.receive(inv, UAC, 0.0)
    rr = layer.events()[0]
    assert isinstance(rr, RequestReceived) and rr.key is not None
    assert rr.key.branch.startswith("2543|")
    # CANCEL: same Request-URI, Call-ID, From tag, CSeq number, top Via, To
    cancel = make_cancel(inv)
    cancel.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5070")
    layer.receive(cancel, UAC, 0.1)
    evs = layer.events()
    assert len(evs) == 1 and isinstance(evs[0], CancelReceived) and evs[0].invite_key == rr.key
    layer.send_response(make_response(rr.request, 487, to_tag="t487"), 0.2)
    layer.transmits()
    # ACK for the 487: matched by the To tag of the response the transaction sent
    wrong = make_ack_for_failure(inv, make_response(inv, 487, to_tag="other"))
    layer.receive(wrong, UAC, 0.3)
    assert [type(e) for e in layer.events()] == [RequestReceived]  # not ours: goes up
    ack = make_ack_for_failure(inv, make_response(inv, 487, to_tag="t487"))
    layer.receive(ack, UAC, 0.3)
    assert layer.events() == []
    layer.handle_timer(10.0)
    assert layer.transmits() == []  # confirmed: no more 487 retransmissions
    layer.handle_timer(60.0)
    assert len(layer) == 0


def test_via_gets_received_and_rport_so_responses_carry_them() -> None:
    layer = TransactionLayer()
    req = request("OPTIONS")  # Via 127.0.0.1:5070;rport
    req.headers.set("Via", f"SIP/2.0/UDP phone.invalid:5070;branch={new_branch()};rport")
    layer.receive(req, Endpoint("udp", "192.0.2.7", 40000), 0.0)
    via = req.top_via
    assert via.received == "192.0.2.7" and via.rport == 40000
    layer.send_response(make_response(req, 200), 0.0)
    out = layer.transmits()[-1]
    assert out.dest == Endpoint("udp", "192.0.2.7", 40000)
    assert isinstance(out.message, Response) and out.message.top_via.rport == 40000


def test_response_destination_rules() -> None:
    tcp = Endpoint("tcp", "192.0.2.1", 33333)
    assert response_destination(Via("TCP", "h", 5070), tcp) == tcp
    udp = Endpoint("udp", "192.0.2.1", 33333)
    assert response_destination(Via("UDP", "h", 5070), udp) == Endpoint("udp", "192.0.2.1", 5070)
    assert response_destination(Via("UDP", "h"), udp) == Endpoint("udp", "192.0.2.1", 5060)
    rport = Via("UDP", "h", 5070, (("rport", None),))
    assert response_destination(rport, udp) == udp


def test_transport_error_by_key_by_endpoint_and_unknown() -> None:
    layer = TransactionLayer()
    k1 = layer.send_request(request("OPTIONS"), UAS, 0.0)
    k2 = layer.send_request(request("INVITE"), UAS, 0.0)
    k3 = layer.send_request(request("OPTIONS"), Endpoint("udp", "127.0.0.1", 9), 0.0)
    layer.transport_error(k1, 0.1)
    layer.transport_error(k1, 0.1)  # already gone: ignored
    layer.transport_error(TransactionKey(False, "nope", "", "INVITE"), 0.1)
    assert [(type(e), e.key) for e in layer.events()] == [(TransportFailed, k1)]  # type: ignore[union-attr]
    layer.transport_error(UAS, 0.2)
    assert [(type(e), e.key) for e in layer.events()] == [(TransportFailed, k2)]  # type: ignore[union-attr]
    assert len(layer) == 1 and k3 in layer._client


def test_send_request_refuses_bad_input() -> None:
    layer = TransactionLayer()
    req = request("OPTIONS", branch="nocookie")
    with pytest.raises(ProtocolError):
        layer.send_request(req, UAS, 0.0)
    ok = request("OPTIONS")
    layer.send_request(ok, UAS, 0.0)
    with pytest.raises(ProtocolError):
        layer.send_request(ok, UAS, 0.0)  # same branch twice


def test_malformed_input_is_dropped_not_raised() -> None:
    layer = TransactionLayer()
    req = request("OPTIONS")
    req.headers.remove("Via")
    layer.receive(req, UAC, 0.0)
    resp = make_response(request("OPTIONS"), 200)
    resp.headers.remove("CSeq")
    layer.receive(resp, UAS, 0.0)
    assert layer.dropped == 2 and layer.events() == [] and len(layer) == 0


def test_mixed_workload_of_1000_transactions_does_not_leak() -> None:
    w = Wire()
    statuses = [200, 486, 404, 200]
    for i in range(1000):
        method = "INVITE" if i % 2 else "OPTIONS"
        key = w.uac.send_request(request(method), w.uas_ep, w.now)
        w.pump()
        rr = server_request(w)
        if i % 7 == 0 and method == "INVITE":
            w.uac.cancel(key, w.now)
            w.pump()
        status = statuses[i % 4]
        try:
            w.uas.send_response(make_response(rr.request, status, to_tag="t"), w.now)
        except ProtocolError:
            pytest.fail("server transaction vanished")
        w.pump()
        w.now += 0.01
    w.advance(w.now + 64 * T1 + 40)
    for layer in (w.uac, w.uas):
        assert len(layer) == 0
        assert layer.get_timer() is None
        assert layer._heap == [] and layer._merge == {}


def test_stale_timer_entries_are_compacted() -> None:
    layer = TransactionLayer()
    peer = TransactionLayer()
    for _ in range(6000):
        layer.send_request(request("OPTIONS"), UAS, 0.0)
        for t in layer.transmits():
            peer.receive(parse_message(t.data), UAC, 0.0)
        for e in peer.events():
            assert isinstance(e, RequestReceived)
            peer.send_response(make_response(e.request, 200), 0.0)
        for t in peer.transmits():
            layer.receive(parse_message(t.data), UAS, 0.0)
    # each transaction left E and F behind when it completed; only K is live now
    assert len(layer._heap) < 6000 * 2


def test_two_thousand_transactions_all_reaped() -> None:
    """2,000 transactions through both layers: every one ends and is reaped once the wait
    timers pass (speed lives in bench/transactions.py, not in a timed test)."""
    layer = TransactionLayer()
    peer = TransactionLayer()
    reqs = [request("OPTIONS") for _ in range(2000)]
    for req in reqs:
        layer.send_request(req, UAS, 0.0)
        for t in layer.transmits():
            peer.receive(t.message, UAC, 0.0)
        for e in peer.events():
            assert isinstance(e, RequestReceived)
            peer.send_response(make_response(e.request, 200), 0.0)
        for t in peer.transmits():
            layer.receive(t.message, UAS, 0.0)
    layer.handle_timer(100.0)
    peer.handle_timer(100.0)
    assert len(layer) == 0 and len(peer) == 0


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["deliver", "drop", "tick", "answer1xx", "answer200", "answer486", "cancel"]
            ),
            st.floats(0, 5),
        ),
        max_size=40,
    ),
    st.sampled_from(["INVITE", "OPTIONS"]),
    st.booleans(),
)
def test_random_loss_and_time_never_break_and_always_terminate(
    script: list[tuple[str, float]], method: str, reliable: bool
) -> None:
    w = Wire(reliable=reliable)
    losing = {"on": False}
    w.drop = lambda side, t: losing["on"]
    key = w.uac.send_request(request(method), w.uas_ep, 0.0)
    w.pump()
    answered = False
    for action, dt in script:
        if action == "drop":
            losing["on"] = not reliable  # streams do not lose messages
        elif action == "deliver":
            losing["on"] = False
        elif action == "tick":
            w.advance(w.now + dt)
        elif action == "cancel":
            if method == "INVITE":
                w.uac.cancel(key, w.now)
        else:
            reqs = [e for e in w.uas_events if isinstance(e, RequestReceived) and e.key]
            if reqs and not answered and reqs[0].key in w.uas._server:
                status = {"answer1xx": 180, "answer200": 200, "answer486": 486}[action]
                if method != "INVITE" and status == 180:
                    status = 100
                w.uas.send_response(make_response(reqs[0].request, status, to_tag="z"), w.now)
                answered = status >= 200
        w.pump()
    losing["on"] = False
    w.advance(w.now + 200.0)
    # A server transaction without a final answer, and the client INVITE facing it in
    # Proceeding, wait for their TUs (no RFC timer ends them): the UAS TU answers, the UAC
    # TU's ring timeout CANCELs, and everything ends.
    for tx in list(w.uas._server.values()):
        if tx.state in (State.TRYING, State.PROCEEDING):
            w.uas.send_response(make_response(tx.request, 487, to_tag="z"), w.now)
        w.pump()
    for k in list(w.uac._client):
        assert k.method == "INVITE"
        w.uac.cancel(k, w.now)
        w.pump()
    w.advance(w.now + 200.0)
    assert len(w.uac) == 0
    assert len(w.uas) == 0
    assert w.uac.get_timer() is None and w.uas.get_timer() is None


def test_transmits_name_their_transaction() -> None:
    layer = TransactionLayer()
    key = layer.send_request(request("INVITE"), UAS, 0.0)
    layer.handle_timer(0.5)  # one retransmission: the very same Transmit again
    first, again = layer.transmits()
    assert first is again and first.key == key
    inv = request("INVITE")
    layer.receive(inv, UAC, 0.0)
    (trying,) = layer.transmits()
    assert trying.key is not None and not trying.key.client
    layer.send_stateless(make_response(inv, 200, to_tag="a"), UAC)
    assert layer.transmits()[0].key is None
    layer.transport_error(first.key, 0.6)
    assert [type(e) for e in layer.events()] == [RequestReceived, TransportFailed]


def test_a_finished_transaction_keeps_only_text_and_still_answers_duplicates() -> None:
    # A server transaction waits 64*T1 after its final response; after SHRINK_AFTER its messages
    # drop their parsed form (the GC would walk it for 32 s) but duplicates get the same bytes.
    w = Wire()
    req = request("BYE")
    w.uac.send_request(req, w.uas_ep, 0.0)
    w.pump()
    got = server_request(w).request
    w.uas.send_response(make_response(got, 200), w.now)
    w.pump()
    assert got.headers._index is not None and got.headers._cache  # parsed while in use
    w.uas.handle_timer(SHRINK_AFTER - 0.1)
    assert got.headers._cache  # not yet
    w.uas.handle_timer(SHRINK_AFTER + 0.1)
    assert got.headers._index is None and not got.headers._cache
    w.now = SHRINK_AFTER + 1
    w.uas.receive(parse_message(req.to_bytes()), w.uac_ep, w.now)  # a late duplicate
    w.pump()
    answers = [t.data for side, t in w.sent if side == "uas"]
    assert len(answers) == 2 and answers[0] == answers[1]
    # the text is all still there: parsed again on demand
    assert got.cseq.seq == 1 and got.top_via.branch == req.top_via.branch
    w.advance(64 * T1 + 1)
    assert w.uas._server == {}
