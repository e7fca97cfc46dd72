"""Transaction machines in memory: two layers wired together, a fake clock, deterministic loss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.sip import (
    NameAddr,
    ProtocolError,
    Request,
    Response,
    Via,
    make_request,
    make_response,
    new_branch,
    new_tag,
    parse_message,
    parse_uri,
)
from telephony.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    TABLES,
    CancelReceived,
    Endpoint,
    RequestReceived,
    ResponseReceived,
    State,
    TimerConfig,
    Transaction,
    TransactionLayer,
    TransactionTimedOut,
    Transmit,
    TransportFailed,
    diagrams_markdown,
)

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
    assert w.uac.cancel(key, w.now) == (key[0], "CANCEL")  # 100 Trying arrived: sent now
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
    assert rr.key is not None and rr.key[0] == "2543"
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
    assert exc.value.status == 481
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
    assert len(layer) == 0 and key[1] == "OPTIONS"


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


def test_docs_diagram_is_generated_from_the_tables() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "transactions.md"
    assert doc.read_text() == diagrams_markdown()


# -- every (state, input) pair of every table --------------------------------------------------

INPUTS = sorted({event for table in TABLES.values() for (_, event) in table})
PAIRS = [(name, state, event) for name in TABLES for state in State for event in INPUTS]


@pytest.mark.parametrize("name,state,event", PAIRS)
def test_every_state_input_pair_follows_the_table(name: str, state: State, event: str) -> None:
    tx = Transaction(name, ("k",), request("INVITE"), state, UAS)
    table = TABLES[name]
    if (state, event) in table:
        assert tx.step(event) == table[(state, event)]
    else:
        with pytest.raises(ProtocolError):
            tx.step(event)


def test_tables_have_no_transitions_out_of_terminated() -> None:
    for table in (INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER):
        assert not [k for k in table if k[0] is State.TERMINATED]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["deliver", "drop", "tick", "answer1xx", "answer200", "answer486"]),
            st.floats(0, 5),
        ),
        max_size=40,
    ),
    st.sampled_from(["INVITE", "OPTIONS"]),
)
def test_random_loss_and_time_never_break_and_always_terminate(
    script: list[tuple[str, float]], method: str
) -> None:
    w = Wire()
    losing = {"on": False}
    w.drop = lambda side, t: losing["on"]
    w.uac.send_request(request(method), w.uas_ep, 0.0)
    w.pump()
    answered = False
    for action, dt in script:
        if action == "drop":
            losing["on"] = True
        elif action == "deliver":
            losing["on"] = False
        elif action == "tick":
            w.advance(w.now + dt)
        else:
            reqs = [e for e in w.uas_events if isinstance(e, RequestReceived) and e.key]
            if reqs and not answered:
                status = {"answer1xx": 180, "answer200": 200, "answer486": 486}[action]
                if method != "INVITE" and status == 180:
                    status = 100
                w.uas.send_response(make_response(reqs[0].request, status, to_tag="z"), w.now)
                answered = status >= 200
                w.pump()
        w.pump()
    losing["on"] = False
    w.advance(w.now + 200.0)
    # A server transaction without a final answer, and the client INVITE facing it in
    # Proceeding, wait for their TUs (no RFC timer ends them): the UAS TU answers (and
    # retransmits its 2xx, RFC 6026), the UAC TU's ring timeout CANCELs, and everything ends.
    for tx in list(w.uas._server.values()):
        if tx.state in (State.TRYING, State.PROCEEDING):
            w.uas.send_response(make_response(tx.request, 487, to_tag="z"), w.now)
        elif tx.state is State.ACCEPTED and tx.last_response is not None:
            w.uas.send_response(tx.last_response, w.now)
        w.pump()
    w.advance(w.now + 1.0)
    for key in list(w.uac._client):
        assert key[1] == "INVITE"
        w.uac.cancel(key, w.now)
        w.pump()
    w.advance(w.now + 200.0)
    assert len(w.uac) == 0
    assert len(w.uas) == 0


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
