"""Offers that come late: an INVITE without SDP (delayed offer, RFC 3261 §13.2.1 and §14.1;
the default of many PBX trunks), an offerless re-INVITE and an UPDATE without a body (the usual
session refresh, RFC 4028 / RFC 3311). A 911 call must not be refused or dropped over them.

When the caller's INVITE has no offer, handoffd offers G.711 (PCMU, PCMA) and telephone-event
to whoever it dials, puts that party's answer, anchored, as the offer in its 200 to the caller,
and takes the caller's answer from the ACK (RFC 3264: the answer to an offer in a 2xx is in the
ACK). An offerless re-INVITE gets the session as it stands (the SDP last sent on that leg, same
``o=`` version: nothing changed) and its ACK's answer is learned; an UPDATE without a body is a
refresh of the dialog and gets 200 without one.
"""

from __future__ import annotations

from pathlib import Path

from telephony.call.legs import audio_index
from telephony.sip.message import Request
from telephony.sip.sdp import codecs, parse_sdp
from tests.unit.callnet import sdp
from tests.unit.test_b2bua import CALLER_HEADERS, HANDOFFD, World


def _audio(body: bytes) -> tuple[int, list[str]]:
    """(port, encoding names) of the first audio stream of an SDP body."""
    sd = parse_sdp(body)
    i = audio_index(sd)
    assert i is not None, body
    m = sd.media[i]
    return m.port, [c.encoding_name.lower() for c in codecs(m)]


def _origin_version(body: bytes) -> int:
    return parse_sdp(body).origin.session_version


def _delayed_offer_call(w: World, user: str = "disp-1") -> Request:
    w.caller.call(HANDOFFD, user, CALLER_HEADERS, body=b"")
    w.net.advance(1.0)
    return w.caller.invites[-1]


def test_an_invite_without_sdp_is_answered_with_an_offer_and_the_ack_answer_is_used(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    _delayed_offer_call(w)
    assert w.caller.statuses() == [100, 180, 200], "a delayed-offer 911 call must be answered"
    # the position was offered G.711 and telephone-event on one of our ports
    offered = w.disp1.invites[0]
    port, names = _audio(offered.body)
    assert names[:2] == ["pcmu", "pcma"] and "telephone-event" in names, names
    assert port in [h.rtp_port for h in w.media.handles]
    # the caller's 200 carries an offer: the position's answer anchored on the caller's port
    ok = [r for r in w.caller.responses if r.status == 200][-1]
    call = next(iter(w.core.calls.values()))
    assert _audio(ok.body)[0] == call.caller.media.rtp_port
    # the caller answered in its ACK: its media address is the one handoffd now sends to
    assert w.caller.acks and w.caller.acks[-1].body
    assert call.caller.media.remote == ("127.0.0.1", w.caller.ep.port + 1000)  # type: ignore[attr-defined]
    assert w.bridged_to(w.disp1)
    # later dials offer what the caller accepted
    assert call.offer.media[0].port == w.caller.ep.port + 1000
    w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    assert not w.core.calls and w.media.open_count == 0


def test_a_delayed_offer_to_the_transfer_number_reaches_988_with_an_offer(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    _delayed_offer_call(w, "988")
    assert w.caller.statuses()[-1] == 200
    port, names = _audio(w.primary.invites[0].body)
    assert port > 0 and "pcmu" in names
    assert w.caller.acks[-1].body  # the caller's answer came in the ACK
    assert w.bridged_to(w.primary)


def test_an_ack_without_the_answer_keeps_the_911_call(tmp_path: Path) -> None:
    """RFC 3264 wants the answer in that ACK; a caller that leaves it out still has a 911
    call: handoffd keeps it up and media latches on the caller's first packet."""
    w = World(tmp_path)
    w.caller.ack_answer = b""
    _delayed_offer_call(w)
    assert w.caller.statuses()[-1] == 200 and not w.caller.acks[-1].body
    w.net.advance(40.0)  # past Timer H: the ACK was taken, no BYE, no 2xx retransmission
    assert len(w.core.calls) == 1 and w.bridged_to(w.disp1)
    assert not [r for r in w.caller.requests if r.method == "BYE"]


def test_an_offerless_reinvite_gets_the_session_as_it_stands(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.connect()
    call = next(iter(w.core.calls.values()))
    before = [r for r in w.caller.responses if r.status == 200][-1].body
    invites_to_disp = len([r for r in w.disp1.requests if r.method == "INVITE"])
    w.caller.ack_answer = sdp(7070)  # the refresh's answer moves the caller's media
    req = w.caller.in_dialog("INVITE", HANDOFFD)
    w.net.advance(1.0)
    final = [r for r in w.caller.responses if r.cseq == req.cseq and r.status >= 200]
    assert [r.status for r in final] == [200], [r.status for r in final]
    # the unchanged session, re-offered: same version (RFC 3264 §8), same port
    assert final[0].body and _origin_version(final[0].body) == _origin_version(before)
    assert _audio(final[0].body)[0] == call.caller.media.rtp_port
    assert w.caller.acks[-1].body  # answered in the ACK ...
    assert call.caller.media.remote == ("127.0.0.1", 7070)  # type: ignore[attr-defined]
    # ... and nothing went to the position: a refresh is not the other side's business
    assert len([r for r in w.disp1.requests if r.method == "INVITE"]) == invites_to_disp
    w.net.advance(40.0)
    assert len(w.core.calls) == 1 and w.bridged_to(w.disp1)


def test_an_update_without_a_body_is_a_refresh_answered_200(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.connect()
    for peer in (w.caller, w.disp1):  # either side may refresh
        req = peer.in_dialog("UPDATE", HANDOFFD)
        w.net.advance(0.5)
        final = [r for r in peer.responses if r.cseq == req.cseq and r.status >= 200]
        assert [r.status for r in final] == [200], (peer.name, [r.status for r in final])
        assert not final[0].body and final[0].headers.get("contact")
    assert not [r for r in w.disp1.requests if r.method == "UPDATE"]
    assert not [r for r in w.caller.requests if r.method == "UPDATE"]
    assert len(w.core.calls) == 1 and w.bridged_to(w.disp1)


def test_a_consult_call_without_sdp_reaches_988_and_gets_the_offer_in_the_200(
    tmp_path: Path,
) -> None:
    """The dispatcher's phone starts its attended transfer with a delayed-offer INVITE to 988
    through us: 988 is dialled with the caller's offer as for any consult call, the phone's 200
    carries the 988 answer as our offer, and its ACK's answer is taken."""
    w = World(tmp_path)
    w.connect()
    call = next(iter(w.core.calls.values()))
    dialog_a = w.disp1.dialog
    w.disp1.dialog = None
    w.disp1.call(HANDOFFD, "988", body=b"")
    w.net.advance(2.0)
    assert w.disp1.statuses()[-1] == 200, w.disp1.statuses()
    consult = call.consult
    assert consult is not None and call.destination is not None
    ok = [r for r in w.disp1.responses if r.status == 200 and r.cseq.method == "INVITE"][-1]
    assert _audio(ok.body)[0] == consult.media.rtp_port
    assert w.disp1.acks[-1].body
    assert consult.media.remote == ("127.0.0.1", w.disp1.ep.port + 1000)  # type: ignore[attr-defined]
    assert w.media.partner(consult.media) is call.destination.media  # type: ignore[arg-type]
    w.disp1.dialog = dialog_a
