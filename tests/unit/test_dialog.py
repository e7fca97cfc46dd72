"""Dialogs (RFC 3261 §12-15, RFC 6026) built from real messages: both sides of one call through
two record-routing proxies (vectors under tests/vectors/dialog/), in-dialog requests, routing,
CSeq rules, target refresh, forking, 2xx retransmission and the ACK cache, with a fake clock."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.sip import (
    NameAddr,
    ProtocolError,
    Request,
    Response,
    Via,
    make_response,
    parse_message,
    parse_uri,
)
from telephony.sip.dialog import (
    DIALOG_TABLE,
    AckCache,
    AckTimedOut,
    Dialog,
    DialogInput,
    DialogState,
    DialogTable,
    Retransmit2xx,
    Uas2xxRetransmitter,
    dialog_response_headers,
    mermaid,
)
from tests.vectors import load_vector

UAC_VIA = Via("UDP", "198.51.100.20", 5060, (("rport", None),))
UAS_VIA = Via("TCP", "203.0.113.5", 5060)
UAS_TAG = "8321234356"
UAS_CONTACT = NameAddr(parse_uri("sip:counselor12@203.0.113.5:5060;transport=udp"))
EARLY, CONFIRMED, TERMINATED = DialogState


def vec_req(name: str) -> Request:
    msg = parse_message(load_vector(f"dialog/{name}.sip"))
    assert isinstance(msg, Request)
    return msg


def vec_resp(name: str) -> Response:
    msg = parse_message(load_vector(f"dialog/{name}.sip"))
    assert isinstance(msg, Response)
    return msg


def wire(msg: Request) -> Request:
    """What the peer parses: our bytes, not our object."""
    out = parse_message(msg.to_bytes())
    assert isinstance(out, Request)
    return out


def pair() -> tuple[Dialog, Dialog]:
    uac = Dialog.from_uac(vec_req("invite-sent"), vec_resp("200-received"), local_via=UAC_VIA)
    uas = Dialog.from_uas(
        vec_req("invite-received"), UAS_TAG, UAS_CONTACT, confirmed=True, local_via=UAS_VIA
    )
    return uac, uas


def answer(
    req: Request, status: int, *, tag: str = UAS_TAG, contact: str | None = None
) -> Response:
    headers = () if contact is None else (("Contact", contact),)
    resp = make_response(req, status, to_tag=tag, headers=headers)
    out = parse_message(resp.to_bytes())
    assert isinstance(out, Response)
    return out


def uris(routes: Iterable[NameAddr]) -> list[str]:
    return [str(r.uri) for r in routes]


# -- creation ---------------------------------------------------------------------------------


def test_uac_and_uas_see_one_dialog_from_each_side() -> None:
    uac, uas = pair()
    assert uac.state is uas.state is CONFIRMED
    call_id = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6@198.51.100.20"
    assert uac.key == (call_id, "a73kszlfl", UAS_TAG)
    assert uas.key == (call_id, UAS_TAG, "a73kszlfl")
    assert (uac.local_seq, uac.remote_seq) == (314, None)
    assert (uas.local_seq, uas.remote_seq) == (None, 314)
    assert str(uac.local_uri) == str(uas.remote_uri) == '"PSAP 911" <sip:psap@psap.example.net>'
    assert str(uac.remote_uri) == str(uas.local_uri) == "<sip:988@crisis.example.org>"
    assert str(uac.remote_target) == "sip:counselor12@203.0.113.5:5060;transport=udp"
    assert str(uas.remote_target) == "sip:handoff@198.51.100.20:5060"
    # Record-Route: reversed by the UAC (§12.1.2), as received by the UAS (§12.1.1)
    p1, p2 = "sip:p1.crisis.example.org:5070;lr;transport=tcp", "sip:p2.crisis.example.org;lr"
    assert uris(uac.route_set) == [p1, p2]
    assert uris(uas.route_set) == [p2, p1]
    assert not uac.secure and not uas.secure
    assert uac.matches(vec_resp("200-received")) and not uas.matches(vec_resp("200-received"))


def test_dialog_response_headers_copy_record_route_and_add_contact() -> None:
    inv = vec_req("invite-received")
    lines = dialog_response_headers(inv, UAS_CONTACT)
    ok = make_response(inv, 200, to_tag=UAS_TAG, headers=lines)
    assert uris(ok.record_route) == uris(inv.record_route)
    assert [str(c) for c in ok.contact] == [str(UAS_CONTACT)]


def test_sips_request_uri_makes_a_secure_dialog() -> None:
    inv = vec_req("invite-received")
    inv.uri = parse_uri("sips:counselor12@203.0.113.5")
    assert Dialog.from_uas(inv, "t", UAS_CONTACT).secure
    assert not Dialog.from_uas(inv, "t", UAS_CONTACT, secure=False).secure  # not over TLS


def test_creation_errors_carry_a_status() -> None:
    inv = vec_req("invite-sent")
    with pytest.raises(ProtocolError):
        Dialog.from_uac(inv, answer(inv, 100))  # no tag: no dialog
    ok = vec_resp("200-received")
    ok.headers.remove("Contact")
    with pytest.raises(ProtocolError) as exc:
        Dialog.from_uac(inv, ok)
    assert (exc.value.status, exc.value.side) == (400, "peer")
    other = vec_resp("200-received")
    other.headers.set("Call-ID", "someone-else")
    with pytest.raises(ProtocolError):
        Dialog.from_uac(inv, other)
    # a 180 without Contact is tolerated: the Request-URI is the target until one arrives
    ringing = vec_resp("180-received")
    ringing.headers.remove("Contact")
    assert Dialog.from_uac(inv, ringing).remote_target == inv.uri
    bare = vec_req("invite-received")
    bare.headers.remove("Contact")
    with pytest.raises(ProtocolError) as exc:
        Dialog.from_uas(bare, "t", UAS_CONTACT)
    assert exc.value.status == 400


# -- in-dialog requests -------------------------------------------------------------------------


def test_uac_requests_carry_tags_routes_contact_and_rising_cseq() -> None:
    uac, uas = pair()
    info = uac.create_request("INFO", body=b"Signal=5\r\n", content_type="application/dtmf-relay")
    assert str(info.uri) == "sip:counselor12@203.0.113.5:5060;transport=udp"  # loose: target
    assert uris(info.route) == uris(uac.route_set)
    assert (info.from_.tag, info.to.tag, info.call_id) == ("a73kszlfl", UAS_TAG, uac.call_id)
    assert info.cseq == (315, "INFO") and not info.contact  # INFO is no target refresh
    assert info.top_via.sent_by == "198.51.100.20:5060" and info.top_via.has_rport
    assert info.top_via.is_rfc3261 and info.content_type is not None
    refer = uac.create_request("REFER", headers=(("Refer-To", "<sip:988@crisis.example.org>"),))
    notify = uac.create_request("NOTIFY", headers=(("Event", "refer"),))
    reinvite = uac.create_request("INVITE")
    assert [r.cseq.seq for r in (refer, notify, reinvite)] == [316, 317, 318]
    assert all(str(r.contact[0].uri) == "sip:handoff@198.51.100.20:5060" for r in (refer, notify))
    assert info.top_via.branch != refer.top_via.branch
    assert uac.next_hop() == uac.route_set[0].uri
    for req in (info, refer, notify, reinvite):
        uas.on_request(wire(req))  # the peer accepts each, in order
    assert uas.remote_seq == 318


def test_uas_requests_start_a_fresh_cseq_and_route_as_received() -> None:
    uac, uas = pair()
    bye = uas.create_request("BYE")
    assert bye.cseq == (1, "BYE")  # the callee's local sequence was empty
    assert str(bye.uri) == "sip:handoff@198.51.100.20:5060"
    assert uris(bye.route) == uris(uas.route_set)
    assert bye.from_.tag == UAS_TAG and bye.to.tag == "a73kszlfl"
    assert bye.top_via.transport == "TCP"
    assert uas.state is TERMINATED  # §15: the session ends once BYE is sent
    uac.on_request(wire(bye))
    assert uac.state is TERMINATED and uac.remote_seq == 1
    uas.on_response(bye, answer(bye, 200, tag="a73kszlfl"))  # the 200 to BYE still fits


def test_strict_router_takes_the_request_uri() -> None:
    uac = Dialog.from_uac(vec_req("invite-sent"), vec_resp("200-strict-router"))
    bye = uac.create_request("BYE", UAC_VIA)
    # the first hop has no lr: it becomes the Request-URI without its method parameter
    assert str(bye.uri) == "sip:legacy.crisis.example.org;maddr=203.0.113.9"
    assert uris(bye.route) == [
        "sip:p2.crisis.example.org;lr",
        "sip:counselor12@203.0.113.5:5060",  # the remote target goes last
    ]
    assert str(uac.next_hop()) == "sip:legacy.crisis.example.org;maddr=203.0.113.9;method=INVITE"


def test_ack_for_2xx_keeps_the_invite_cseq() -> None:
    uac, uas = pair()
    ack = uac.create_ack(314)
    assert ack.method == "ACK" and ack.cseq == (314, "ACK")
    assert str(ack.uri) == str(uac.remote_target) and uris(ack.route) == uris(uac.route_set)
    assert ack.to.tag == UAS_TAG and not ack.contact
    assert uac.local_seq == 314  # an ACK is not counted
    uas.on_request(wire(ack))  # ACK does not move the remote sequence
    assert uas.remote_seq == 314
    with pytest.raises(ProtocolError):
        uac.create_ack(999)  # we never sent that INVITE
    with pytest.raises(ProtocolError):
        uac.create_request("ACK")


def test_local_mistakes_are_500_local() -> None:
    uac, uas = pair()
    cases: list[Callable[[], object]] = [
        lambda: uac.create_request("CANCEL"),
        lambda: uac.create_request("INFO", headers=(("CSeq", "1 INFO"),)),
        lambda: Dialog.from_uac(vec_req("invite-sent"), vec_resp("200-received")).create_request(
            "BYE"
        ),  # no Via anywhere
    ]
    uac.local_contact = None
    cases.append(lambda: uac.create_request("UPDATE"))  # a target refresh needs our Contact
    uas.local_seq = 2**31 - 1
    cases.append(lambda: uas.create_request("INFO"))  # CSeq must stay below 2**31
    for case in cases:
        with pytest.raises(ProtocolError) as exc:
            case()
        assert (exc.value.status, exc.value.side) == (500, "local")
    assert uac.create_request("UPDATE", headers=(("Contact", "<sip:x@192.0.2.1>"),)).contact


# -- requests from the peer ---------------------------------------------------------------------


def test_remote_cseq_must_rise() -> None:
    uac, uas = pair()
    first, second = uac.create_request("INFO"), uac.create_request("INFO")
    uas.on_request(wire(second))
    for stale in (first, second):  # lower, then equal (a new request reusing the number)
        with pytest.raises(ProtocolError) as exc:
            uas.on_request(wire(stale))
        assert (exc.value.status, exc.value.side) == (500, "peer")
    assert uas.remote_seq == 316 and uas.state is CONFIRMED


def test_request_for_another_dialog_is_481() -> None:
    uac, uas = pair()
    stranger = uac.create_request("BYE")
    stranger.headers.set("To", "<sip:988@crisis.example.org>;tag=nobody")
    with pytest.raises(ProtocolError) as exc:
        uas.on_request(wire(stranger))
    assert exc.value.status == 481 and uas.state is CONFIRMED


def test_terminated_dialog_answers_481_and_sends_nothing() -> None:
    uac, uas = pair()
    bye = uac.create_request("BYE")
    late = uac.create_ack(314)  # ACKs stay possible: every 2xx is ACKed
    uas.on_request(wire(bye))
    assert uac.state is uas.state is TERMINATED
    uas.on_request(wire(late))
    crossing = uas.state  # a request the peer sends after its BYE: 481
    info = Dialog.from_uac(vec_req("invite-sent"), vec_resp("200-received"), local_via=UAC_VIA)
    info.local_seq = 400
    with pytest.raises(ProtocolError) as exc:
        uas.on_request(wire(info.create_request("INFO")))
    assert (exc.value.status, crossing) == (481, TERMINATED)
    for d in (uac, uas):
        with pytest.raises(ProtocolError) as exc:
            d.create_request("BYE")
        assert (exc.value.status, exc.value.side) == (500, "local")


def test_incoming_reinvite_refreshes_the_target_only_when_accepted() -> None:
    uac, uas = pair()
    old = uas.remote_target
    reinvite = uac.create_request("INVITE", headers=(("Contact", "<sip:handoff@192.0.2.77>"),))
    uas.on_request(wire(reinvite))
    assert uas.remote_target == old  # not before we accept (RFC 6141)
    uas.on_response_sent(reinvite, answer(reinvite, 488))
    assert uas.remote_target == old  # rejected: no refresh
    uac.on_response(reinvite, answer(reinvite, 488))
    again = uac.create_request("INVITE", headers=(("Contact", "<sip:handoff@192.0.2.77>"),))
    uas.on_request(wire(again))
    uas.on_response_sent(again, answer(again, 200))
    assert str(uas.remote_target) == "sip:handoff@192.0.2.77"
    info = uac.create_request("INFO", headers=(("Contact", "<sip:elsewhere@192.0.2.9>"),))
    uas.on_request(wire(info))
    uas.on_response_sent(info, answer(info, 200))
    assert str(uas.remote_target) == "sip:handoff@192.0.2.77"  # INFO refreshes nothing


def test_2xx_to_our_target_refresh_updates_the_remote_target() -> None:
    uac, _ = pair()
    update = uac.create_request("UPDATE")
    uac.on_response(update, answer(update, 200, contact="<sip:counselor12@203.0.113.50>"))
    assert str(uac.remote_target) == "sip:counselor12@203.0.113.50"
    info = uac.create_request("INFO")
    uac.on_response(info, answer(info, 200, contact="<sip:ignored@203.0.113.99>"))
    assert str(uac.remote_target) == "sip:counselor12@203.0.113.50"
    assert uris(uac.route_set)[0].startswith("sip:p1")  # the route set never changes


@pytest.mark.parametrize("status", [408, 481])
def test_408_or_481_to_an_in_dialog_request_ends_the_dialog(status: int) -> None:
    uac, _ = pair()
    info = uac.create_request("INFO")
    uac.on_response(info, answer(info, status))
    assert uac.state is TERMINATED


def test_invite_glare_and_overlap() -> None:
    uac, uas = pair()
    ours = uas.create_request("INVITE")
    theirs = uac.create_request("INVITE")
    with pytest.raises(ProtocolError) as exc:
        uas.on_request(wire(theirs))  # both sides sent re-INVITEs: 491 (§14.2)
    assert exc.value.status == 491
    with pytest.raises(ProtocolError) as exc:
        uas.create_request("INVITE")  # one INVITE at a time (§14.1)
    assert exc.value.status == 500
    uas.on_response(ours, answer(ours, 200, tag="a73kszlfl"))
    # the peer's next re-INVITE, while we have not answered it, then another one: 500
    uac.on_response(theirs, answer(theirs, 491))
    nxt = uac.create_request("INVITE")
    uas.on_request(wire(nxt))
    uac.invite_out = None  # a misbehaving peer that does not wait for our answer
    with pytest.raises(ProtocolError) as exc:
        uas.on_request(wire(uac.create_request("INVITE")))
    assert (exc.value.status, exc.value.side) == (500, "peer")  # + Retry-After (§14.2)
    uas.on_response_sent(nxt, answer(nxt, 200))
    assert uas.invite_in is None and uas.create_request("INVITE").cseq.seq == 2


# -- early dialogs and forking ------------------------------------------------------------------


def test_early_dialog_confirmed_by_2xx_recomputes_route_set() -> None:
    inv = vec_req("invite-sent")
    uac = Dialog.from_uac(inv, vec_resp("180-received"), local_via=UAC_VIA)
    assert (uac.state, uac.invite_out) == (EARLY, 314)
    with pytest.raises(ProtocolError):
        uac.create_request("INVITE")  # no re-INVITE in an early dialog
    uac.on_response(inv, answer(inv, 100))  # 100 Trying has no tag: nothing to do
    moved = answer(inv, 183, contact="<sip:counselor12@203.0.113.55>")
    uac.on_response(inv, moved)  # an early dialog follows the latest 1xx Contact
    assert str(uac.remote_target) == "sip:counselor12@203.0.113.55"
    assert uris(uac.route_set)[0].startswith("sip:p1")  # routes stay those of the first 1xx
    ok = vec_resp("200-strict-router")
    uac.on_response(inv, ok)
    assert (uac.state, uac.invite_out) == (CONFIRMED, None)
    assert uris(uac.route_set)[0].startswith("sip:legacy")  # from the 2xx, not the 180
    assert str(uac.remote_target) == "sip:counselor12@203.0.113.5:5060"
    uac.on_response(inv, vec_resp("200-received"))  # a retransmitted 2xx changes no routes
    assert uris(uac.route_set)[0].startswith("sip:legacy")
    uac.on_response(inv, vec_resp("180-received"))  # a late 180: no effect
    assert uac.state is CONFIRMED


def test_uas_early_dialog_follows_the_responses_it_sends() -> None:
    inv = vec_req("invite-received")
    uas = Dialog.from_uas(inv, UAS_TAG, UAS_CONTACT, local_via=UAS_VIA)
    assert (uas.state, uas.invite_in) == (EARLY, 314)
    uas.on_response_sent(inv, answer(inv, 100))
    uas.on_response_sent(inv, answer(inv, 183))
    with pytest.raises(ProtocolError):
        uas.create_request("BYE")  # the callee may not BYE an early dialog (§15)
    update = uas.create_request("UPDATE")  # but may UPDATE it
    assert update.cseq.seq == 1 and update.contact
    uas.on_response_sent(inv, answer(inv, 200))
    assert (uas.state, uas.invite_in) == (CONFIRMED, None)
    with pytest.raises(ProtocolError):
        uas.on_response_sent(inv, answer(inv, 200, tag="other"))  # wrong To tag: our bug


def test_caller_bye_on_early_dialog_then_487() -> None:
    uac = Dialog.from_uac(vec_req("invite-sent"), vec_resp("180-received"), local_via=UAC_VIA)
    inv = vec_req("invite-received")
    uas = Dialog.from_uas(inv, UAS_TAG, UAS_CONTACT, local_via=UAS_VIA)
    bye = uac.create_request("BYE")  # the caller may BYE an early dialog
    uas.on_request(wire(bye))
    assert uac.state is uas.state is TERMINATED
    uas.on_response_sent(bye, answer(bye, 200))
    uas.on_response_sent(inv, answer(inv, 487))  # §15.1.2: then the INVITE gets 487
    uac.on_response(vec_req("invite-sent"), vec_resp("180-received"))  # a late 180
    assert uac.state is TERMINATED
    ok = vec_resp("200-received")  # the callee answered before it saw our BYE
    with pytest.raises(ProtocolError) as exc:
        uac.on_response(vec_req("invite-sent"), ok)
    assert exc.value.status == 481
    fresh = Dialog.from_uac(vec_req("invite-sent"), ok, local_via=UAC_VIA)
    ack, bye = fresh.create_ack(314), fresh.create_request("BYE")  # ACK it, then end it
    assert (ack.cseq, bye.cseq, bye.to.tag) == ((314, "ACK"), (315, "BYE"), UAS_TAG)


def test_forked_invite_keeps_one_early_dialog_per_tag() -> None:
    inv = vec_req("invite-sent")
    table = DialogTable()
    assert table.on_uac_response(inv, answer(inv, 100)) is None
    a = table.on_uac_response(inv, answer(inv, 180, tag="fork-a", contact="<sip:a@203.0.113.6>"))
    b = table.on_uac_response(inv, answer(inv, 183, tag="fork-b", contact="<sip:b@203.0.113.7>"))
    assert a is not None and b is not None and a is not b
    assert sorted(d.remote_tag for d in table.early(inv.call_id, "a73kszlfl")) == [
        "fork-a",
        "fork-b",
    ]
    ok = answer(inv, 200, tag="fork-b", contact="<sip:b@203.0.113.70>")
    assert table.for_response(ok) is b and table.on_uac_response(inv, ok) is b
    assert b.state is CONFIRMED and str(b.remote_target) == "sip:b@203.0.113.70"
    assert a.state is EARLY  # until the INVITE transaction ends (§13.2.2.4)
    late = answer(inv, 200, tag="fork-c", contact="<sip:c@203.0.113.8>")
    c = table.on_uac_response(inv, late)
    assert c is not None and c.state is CONFIRMED  # a second answer: ACK it, then BYE it
    assert table.terminate_early(inv.call_id, "a73kszlfl") == [a]
    assert a.state is TERMINATED and table.get(a.key) is None and len(table) == 2
    with pytest.raises(ProtocolError):
        table.on_uac_response(inv, answer(inv, 486, tag="fork-b"))  # a final after the 2xx
    assert b.state is CONFIRMED


def test_final_failure_ends_every_early_dialog_of_the_invite() -> None:
    inv = vec_req("invite-sent")
    table = DialogTable()
    for tag in ("fork-a", "fork-b"):
        table.on_uac_response(inv, answer(inv, 180, tag=tag, contact="<sip:x@203.0.113.6>"))
    early = table.early(inv.call_id, "a73kszlfl")
    # a 486 from a third branch, or a tagless 408 for a timed-out INVITE, ends all of them
    assert table.on_uac_response(inv, answer(inv, 486, tag="fork-c")) is None
    assert all(d.state is TERMINATED for d in early) and len(table) == 0
    solo = Dialog.from_uac(inv, answer(inv, 180, tag="t", contact="<sip:x@203.0.113.6>"))
    timeout = make_response(inv, 408)
    solo.on_response(inv, timeout)
    assert solo.state is TERMINATED


def test_lookup_by_key_for_requests_and_responses() -> None:
    uac, uas = pair()
    table = DialogTable()
    table.add(uas)
    table.add(uac)
    assert table.for_request(wire(uac.create_request("INFO"))) is uas
    assert table.for_request(wire(uas.create_request("INFO"))) is uac
    assert table.for_response(vec_resp("200-received")) is uac
    assert table.for_request(vec_req("invite-received")) is None  # no To tag: no dialog
    assert table.for_response(answer(vec_req("invite-sent"), 100)) is None
    table.remove(uas)
    table.remove(uas)  # removing twice is harmless
    assert len(table) == 1


# -- 2xx retransmission and the ACK -------------------------------------------------------------


def run(r: Uas2xxRetransmitter, until: float) -> list[tuple[float, object]]:
    out: list[tuple[float, object]] = []
    while (t := r.get_timer()) is not None and t <= until:
        out += [(round(t, 3), ev) for ev in r.handle_timer(t)]
    return out


def test_2xx_retransmits_until_acked() -> None:
    uac, uas = pair()
    ok = answer(vec_req("invite-received"), 200, contact=str(UAS_CONTACT))
    r = Uas2xxRetransmitter.start(uas, ok, now=100.0)
    assert r.handle_timer(100.2) == []  # too early
    sent = run(r, 112.0)
    assert [t for t, _ in sent] == [100.5, 101.5, 103.5, 107.5, 111.5]  # T1, doubling, T2 cap
    assert all(ev == Retransmit2xx(ok.to_bytes()) for _, ev in sent)
    wrong = uac.create_ack(314)
    wrong.headers.set("CSeq", "313 ACK")
    assert not r.ack_received(wire(wrong))  # not the ACK of this 2xx
    assert not r.ack_received(wire(uac.create_request("INFO")))
    assert r.get_timer() == 115.5
    assert r.ack_received(wire(uac.create_ack(314)))
    assert r.get_timer() is None and r.handle_timer(200.0) == []


def test_unacked_2xx_times_out_at_64_t1_and_the_dialog_ends_with_bye() -> None:
    _, uas = pair()
    ok = answer(vec_req("invite-received"), 200)
    r = Uas2xxRetransmitter.start(uas, ok, now=0.0)
    events = run(r, 1000.0)
    sends = [t for t, ev in events if isinstance(ev, Retransmit2xx)]
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert events[-1] == (32.0, AckTimedOut(uas.key)) and r.get_timer() is None
    bye = uas.ack_timed_out()
    assert bye.method == "BYE" and uas.state is TERMINATED
    # over TCP too: a reliable first hop says nothing about the hops behind a proxy
    tcp = Uas2xxRetransmitter(uas.key, b"x", now=0.0, reliable=True)
    assert tcp.get_timer() == 0.5
    with pytest.raises(ProtocolError):
        Uas2xxRetransmitter.start(uas, answer(vec_req("invite-received"), 180), now=0.0)


def test_ack_cache_resends_the_same_ack_for_a_retransmitted_2xx() -> None:
    uac, _ = pair()
    cache = AckCache()
    ok = vec_resp("200-received")
    assert cache.ack_for(ok, 0.0) is None
    sent = cache.remember(uac.create_ack(314), now=10.0)
    assert cache.ack_for(ok, 12.0) == sent  # byte for byte, same branch
    assert cache.ack_for(vec_resp("180-received"), 12.0) is None
    assert cache.get_timer() == 42.0 and cache.ack_for(ok, 42.0) is None
    cache.handle_timer(42.0)
    assert len(cache) == 0 and cache.get_timer() is None


# -- the table --------------------------------------------------------------------------------


def test_diagram_is_generated_from_the_table() -> None:
    diagram = mermaid()
    for (state, inp), nxt in DIALOG_TABLE.items():
        assert f"{state.value} --> {nxt.value} : {inp.value}" in diagram
    assert all(DIALOG_TABLE.get((TERMINATED, i), TERMINATED) is TERMINATED for i in DialogInput)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(DialogState)),
    st.lists(st.sampled_from(list(DialogInput)), max_size=15),
    st.sampled_from(["uac", "uas"]),
)
def test_table_is_followed_or_protocol_error_leaves_state(
    start: DialogState, inputs: list[DialogInput], role: str
) -> None:
    uac, uas = pair()
    d = uac if role == "uac" else uas
    d.state = start
    for inp in inputs:
        before = d.state
        expected = DIALOG_TABLE.get((before, inp))
        if expected is None:
            with pytest.raises(ProtocolError):
                d._step(inp)
            assert d.state is before
        else:
            d._step(inp)
            assert d.state is expected


METHODS = ["BYE", "INFO", "INVITE", "UPDATE", "REFER", "NOTIFY", "OPTIONS", "PRACK", "ACK"]
STATUSES = [100, 180, 200, 202, 408, 481, 486, 488, 491, 500]
OPS = st.tuples(
    st.sampled_from(["uac", "uas"]),  # who sends
    st.sampled_from(METHODS),
    st.sampled_from(STATUSES),  # the answer, when the request is accepted
    st.integers(0, 4),  # 0: in order, 1: lost, 2: duplicated, 3: foreign To tag, 4: delayed
)


def _exchange(snd: Dialog, rcv: Dialog, req: Request, status: int, bad_tag: bool) -> None:
    """Deliver ``req`` to ``rcv``; answer it with ``status`` or the error's status."""
    msg = wire(req)
    if bad_tag:
        msg.headers.set("To", "<sip:x@192.0.2.1>;tag=bogus")
    try:
        rcv.on_request(msg)
        code = status
    except ProtocolError as exc:
        code = exc.status
    if msg.method == "ACK":
        return
    resp = make_response(msg, code, to_tag=rcv.local_tag)
    with contextlib.suppress(ProtocolError):
        rcv.on_response_sent(msg, resp)
    with contextlib.suppress(ProtocolError):
        snd.on_response(req, resp)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(OPS, max_size=25))
def test_random_message_exchanges_raise_only_protocol_errors(
    early: bool, ops: list[tuple[str, str, int, int]]
) -> None:
    """Two dialogs wired through a lossy, reordering, tampering network: whatever happens, only
    ProtocolError escapes, CSeqs never go back and terminated stays terminated."""
    sent_invite, got_invite = vec_req("invite-sent"), vec_req("invite-received")
    first = vec_resp("180-received" if early else "200-received")
    uac = Dialog.from_uac(sent_invite, first, local_via=UAC_VIA)
    uas = Dialog.from_uas(got_invite, UAS_TAG, UAS_CONTACT, confirmed=not early)
    uas.local_via = UAS_VIA
    delayed: list[tuple[Dialog, Dialog, Request]] = []
    for who, method, status, net in ops:
        snd, rcv = (uac, uas) if who == "uac" else (uas, uac)
        before = [(d.state, d.local_seq or 0, d.remote_seq or 0) for d in (uac, uas)]
        req = None
        try:
            if method == "ACK":
                req = snd.create_ack(snd.local_seq or 0)
            else:
                req = snd.create_request(method)
        except ProtocolError as exc:
            assert exc.side == "local"
        if req is not None and net == 4:
            delayed.append((snd, rcv, req))
        elif req is not None and net != 1:
            for _ in range(2 if net == 2 else 1):
                _exchange(snd, rcv, req, status, bad_tag=net == 3)
            if delayed:  # an old request overtaken by newer ones
                _exchange(*delayed.pop(0), status, bad_tag=False)
        if early and status >= 200 and net == 0 and uas.invite_in is not None:
            # the creating INVITE gets its final answer now
            with contextlib.suppress(ProtocolError):
                uas.on_response_sent(got_invite, answer(got_invite, status))
            with contextlib.suppress(ProtocolError):
                uac.on_response(sent_invite, answer(sent_invite, status))
        for (state, lseq, rseq), d in zip(before, (uac, uas), strict=True):
            assert d.state in DialogState
            assert (d.local_seq or 0) >= lseq and (d.remote_seq or 0) >= rseq
            if state is TERMINATED:
                assert d.state is TERMINATED


def test_docs_dialog_diagram_is_generated_from_the_table() -> None:
    from pathlib import Path  # noqa: PLC0415

    from telephony.sip.dialog import mermaid  # noqa: PLC0415

    doc = (Path(__file__).resolve().parents[2] / "docs" / "dialogs.md").read_text()
    assert "```mermaid\n" + mermaid() + "\n```" in doc
