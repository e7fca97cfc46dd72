"""Dialogs built from real messages: UAC and UAS views of one call, routing, CSeq, forking."""

from __future__ import annotations

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
    parse_message,
    parse_uri,
)
from telephony.sip.dialog import (
    DIALOG_TABLE,
    AckTimedOut,
    Dialog,
    DialogState,
    DialogTable,
    Retransmit2xx,
    Uas2xxRetransmitter,
)

UAC_VIA = Via("UDP", "127.0.0.1", 5070, (("branch", "z9hG4bKx"),))
UAS_VIA = Via("UDP", "127.0.0.1", 5080, (("branch", "z9hG4bKy"),))
RR = [
    "<sip:proxy2.127.0.0.1:5092;lr>",  # nearest the UAS
    "<sip:127.0.0.1:5091;lr>",  # nearest the UAC
]


def invite(call_id: str = "dlg-1@127.0.0.1") -> Request:
    uri = parse_uri("sip:988@127.0.0.1:5080")
    req = make_request(
        "INVITE",
        uri,
        via=UAC_VIA.with_param("branch", new_branch()),
        from_=NameAddr(parse_uri("sip:psap@127.0.0.1"), "PSAP", (("tag", "uac-tag"),)),
        to=NameAddr(uri),
        call_id=call_id,
        cseq=10,
        contact=NameAddr(parse_uri("sip:psap@127.0.0.1:5070")),
    )
    # as the UAS receives it: the proxies have added Record-Route
    req.headers.add("Record-Route", ", ".join(RR))
    return parse_message(req.to_bytes())  # type: ignore[return-value]


def answer(inv: Request, status: int, tag: str = "uas-tag", port: int = 5080) -> Response:
    resp = make_response(
        inv,
        status,
        to_tag=tag,
        headers=(
            ("Contact", f"<sip:counselor@127.0.0.1:{port}>"),
            ("Record-Route", ", ".join(RR)),
        ),
    )
    return parse_message(resp.to_bytes())  # type: ignore[return-value]


def test_uac_and_uas_see_the_same_dialog_from_each_side() -> None:
    inv = invite()
    ok = answer(inv, 200)
    uac = Dialog.from_uac(inv, ok)
    uas = Dialog.from_uas(
        inv, "uas-tag", NameAddr(parse_uri("sip:counselor@127.0.0.1:5080")), confirmed=True
    )
    assert uac.state is uas.state is DialogState.CONFIRMED
    assert uac.key == ("dlg-1@127.0.0.1", "uac-tag", "uas-tag")
    assert uas.key == ("dlg-1@127.0.0.1", "uas-tag", "uac-tag")
    assert str(uac.remote_target) == "sip:counselor@127.0.0.1:5080"
    assert str(uas.remote_target) == "sip:psap@127.0.0.1:5070"
    # the UAC reverses Record-Route, the UAS keeps its order (§12.1.1, §12.1.2)
    assert [str(r.uri) for r in uac.route_set] == [
        "sip:127.0.0.1:5091;lr",
        "sip:proxy2.127.0.0.1:5092;lr",
    ]
    assert [str(r.uri) for r in uas.route_set] == [
        "sip:proxy2.127.0.0.1:5092;lr",
        "sip:127.0.0.1:5091;lr",
    ]


def test_in_dialog_requests_carry_tags_routes_and_rising_cseq() -> None:
    inv = invite()
    uac = Dialog.from_uac(inv, answer(inv, 200))
    bye = uac.create_request("BYE", UAC_VIA)
    assert str(bye.uri) == "sip:counselor@127.0.0.1:5080"  # loose routing: remote target
    assert [str(r.uri) for r in bye.route] == [str(r.uri) for r in uac.route_set]
    assert bye.from_.tag == "uac-tag" and bye.to.tag == "uas-tag"
    assert bye.cseq.seq == 11 and bye.cseq.method == "BYE"
    assert bye.top_via.branch != UAC_VIA.branch and bye.top_via.is_rfc3261
    assert not bye.contact  # BYE is not a target refresh
    refer = uac.create_request("REFER", UAC_VIA, headers=(("Refer-To", "<sip:988@x>"),))
    assert refer.cseq.seq == 12
    assert [str(c.uri) for c in refer.contact] == ["sip:psap@127.0.0.1:5070"]
    assert uac.next_hop() == uac.route_set[0].uri
    ack = uac.create_ack(10, UAC_VIA)
    assert ack.cseq.seq == 10 and ack.method == "ACK" and ack.cseq.method == "ACK"
    parse_message(bye.to_bytes())  # what we build is valid on the wire


def test_strict_router_takes_the_request_uri() -> None:
    inv = invite()
    resp = answer(inv, 200)
    resp.headers.set("Record-Route", "<sip:127.0.0.1:5099>")  # no lr
    uac = Dialog.from_uac(inv, resp)
    bye = uac.create_request("BYE", UAC_VIA)
    assert str(bye.uri) == "sip:127.0.0.1:5099"
    assert [str(r.uri) for r in bye.route] == ["sip:counselor@127.0.0.1:5080"]


def test_remote_cseq_must_rise_and_bye_terminates() -> None:
    inv = invite()
    uas = Dialog.from_uas(inv, "uas-tag", NameAddr(parse_uri("sip:c@127.0.0.1")), confirmed=True)
    uac = Dialog.from_uac(inv, answer(inv, 200))
    info = uac.create_request("INFO", UAC_VIA)
    uas.on_request(info)
    assert uas.remote_seq == 11
    with pytest.raises(ProtocolError) as exc:
        uas.on_request(info)  # same CSeq again: out of order
    assert exc.value.status == 500
    uas.on_request(uac.create_ack(10, UAC_VIA))  # ACK keeps the INVITE's CSeq: fine
    reinvite = uac.create_request("INVITE", UAC_VIA)
    reinvite.headers.set("Contact", "<sip:psap@127.0.0.1:6000>")
    uas.on_request(reinvite)
    assert str(uas.remote_target) == "sip:psap@127.0.0.1:6000"  # target refresh
    uas.on_request(uac.create_request("BYE", UAC_VIA))
    assert uas.state is DialogState.TERMINATED
    with pytest.raises(ProtocolError):
        uas.on_request(uac.create_request("INFO", UAC_VIA))


def test_early_dialog_confirmed_by_2xx_and_forking_keeps_two_early_dialogs() -> None:
    inv = invite()
    table = DialogTable()
    for tag, port in (("fork-a", 5081), ("fork-b", 5082)):
        table.add(Dialog.from_uac(inv, answer(inv, 180, tag=tag, port=port)))
    early = table.early(inv.call_id, "uac-tag")
    assert sorted(d.remote_tag for d in early) == ["fork-a", "fork-b"]
    ok = answer(inv, 200, tag="fork-b", port=5090)
    d = table.for_response(ok)
    assert d is not None and d.remote_tag == "fork-b"
    d.on_response(inv, ok)
    assert d.state is DialogState.CONFIRMED
    assert str(d.remote_target) == "sip:counselor@127.0.0.1:5090"
    other = table.for_response(answer(inv, 180, tag="fork-a", port=5081))
    assert other is not None and other.state is DialogState.EARLY
    other.on_response(inv, answer(inv, 487, tag="fork-a"))
    assert other.state is DialogState.TERMINATED


def test_lookup_of_incoming_requests_and_unknown_dialogs() -> None:
    inv = invite()
    table = DialogTable()
    uas = Dialog.from_uas(inv, "uas-tag", NameAddr(parse_uri("sip:c@127.0.0.1")), confirmed=True)
    table.add(uas)
    uac = Dialog.from_uac(inv, answer(inv, 200))
    assert table.for_request(uac.create_request("BYE", UAC_VIA)) is uas
    stranger = uac.create_request("BYE", UAC_VIA)
    stranger.headers.set("To", "<sip:988@127.0.0.1>;tag=nobody")
    assert table.for_request(stranger) is None
    assert table.for_request(inv) is None  # no To tag: not in a dialog
    table.remove(uas)
    assert len(table) == 0


def test_dialog_creation_needs_a_tag_and_a_contact() -> None:
    inv = invite()
    with pytest.raises(ProtocolError):
        Dialog.from_uac(inv, answer(inv, 100))
    resp = answer(inv, 200)
    resp.headers.remove("Contact")
    with pytest.raises(ProtocolError) as exc:
        Dialog.from_uac(inv, resp)
    assert exc.value.status == 400


def test_2xx_retransmission_schedule_until_ack() -> None:
    r = Uas2xxRetransmitter(("c", "l", "r"), b"SIP/2.0 200 OK\r\n", now=0.0, t1=0.5, t2=4.0)
    sends = []
    while (t := r.get_timer()) is not None and t < 10:
        out = r.handle_timer(t)
        sends += [round(t, 2) for o in out if isinstance(o, Retransmit2xx)]
    assert sends == [0.5, 1.5, 3.5, 7.5]  # T1 doubling, capped at T2 = 4
    r.ack_received()
    assert r.get_timer() is None and r.handle_timer(100.0) == []


def test_2xx_never_acked_times_out_at_64_t1() -> None:
    r = Uas2xxRetransmitter(("c", "l", "r"), b"x", now=0.0, t1=0.5)
    events: list[object] = []
    while (t := r.get_timer()) is not None:
        events += r.handle_timer(t)
    assert events[-1] == AckTimedOut(("c", "l", "r"))
    assert r.get_timer() is None
    reliable = Uas2xxRetransmitter(("c", "l", "r"), b"x", now=0.0, reliable=True)
    assert reliable.get_timer() == 32.0
    assert reliable.handle_timer(32.0) == [AckTimedOut(("c", "l", "r"))]


INPUTS = sorted({e for (_, e) in DIALOG_TABLE} | {"bogus"})


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(DialogState)), st.lists(st.sampled_from(INPUTS), max_size=12))
def test_random_inputs_follow_the_table_or_raise_protocol_error(
    start: DialogState, inputs: list[str]
) -> None:
    inv = invite()
    d = Dialog.from_uac(inv, answer(inv, 200))
    d.state = start
    for event in inputs:
        before = d.state
        expected = DIALOG_TABLE.get((before, event))
        if expected is None:
            with pytest.raises(ProtocolError):
                d._step(event)
            assert d.state is before
        else:
            d._step(event)
            assert d.state is expected
