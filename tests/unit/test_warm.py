"""Warm and consult transfers in the sans-IO call layer (the in-memory network of test_b2bua).

The media here is the FakeMedia that records bridges and mixes; that the mixer really mixes is
tests/unit/test_mixer.py and the audio tests; this file checks who is joined to whom when.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest

from telephony.call.b2bua import Call
from telephony.call.transfer import TState
from telephony.sip.errors import SipError
from tests.unit.callnet import Peer, sdp
from tests.unit.test_b2bua import CALLER_HEADERS, HANDOFFD, World
from tests.unit.test_record_events import recording


def _call(w: World) -> Call:
    return next(iter(w.core.calls.values()))


def _warm(tmp: Path, mode: str = "warm", **peers: str | int) -> tuple[World, Call, str]:
    w = World(tmp, **peers)  # type: ignore[arg-type]
    call_id = w.connect()
    t = w.core.cold.start_transfer(call_id, mode=mode, now=w.net.now)  # type: ignore[arg-type]
    return w, _call(w), t.id


def test_warm_mixes_all_three_then_the_dispatcher_hanging_up_hands_over(tmp_path: Path) -> None:
    w, call, tid = _warm(tmp_path)
    events = recording(w)
    assert w.bridged_to(w.disp1)  # while 988 rings, caller and dispatcher still talk
    w.net.advance(2.0)
    t = w.core.transfers[tid]
    assert t.state is TState.CONFERENCE and t.mode == "warm"
    assert call.destination is not None and call.dispatcher is not None
    mixed = w.media.mixed(call.id)
    assert mixed == [call.caller.media, call.dispatcher.media, call.destination.media]
    assert all(codec == 0 for _, codec, _ in w.media.mixes[call.id])  # the peers offer PCMU
    assert not any(r.method == "BYE" for r in w.disp1.requests)  # the dispatcher stays
    w.disp1.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    assert t.state is TState.COMPLETED
    assert w.media.mixed(call.id) == [] and w.bridged_to(w.primary)
    kinds = [e.kind for e in events]
    assert kinds[-3:] == ["dispatcher_left", "party_left", "completed"]
    joined = next(e for e in events if e.kind == "party_joined")
    assert joined.party == "counselor" and kinds.index("destination_answered") < kinds.index(
        "party_joined"
    )
    assert events[-2].party == "dispatcher"
    assert all(e.mode == "warm" for e in events if e.transfer_id)


def test_warm_complete_by_api_releases_the_dispatcher(tmp_path: Path) -> None:
    w, call, tid = _warm(tmp_path)
    w.net.advance(2.0)
    w.core.warm.complete(tid, now=w.net.now)
    w.net.advance(1.0)
    assert w.core.transfers[tid].state is TState.COMPLETED
    assert any(r.method == "BYE" for r in w.disp1.requests)
    assert w.bridged_to(w.primary) and w.media.mixed(call.id) == []
    with pytest.raises(SipError) as err:
        w.core.warm.complete(tid, now=w.net.now)
    assert err.value.status == 409 and "completed" in err.value.reason


def test_cancel_in_conference_leaves_caller_with_dispatcher(tmp_path: Path) -> None:
    w, call, tid = _warm(tmp_path)
    w.net.advance(2.0)
    events = recording(w)
    w.core.cold.cancel_transfer(tid, now=w.net.now)
    w.net.advance(1.0)
    t = w.core.transfers[tid]
    assert t.state is TState.CANCELLED
    assert [(e.kind, e.party) for e in events][:2] == [
        ("party_left", "counselor"),
        ("cancelled", None),
    ]
    assert any(r.method == "BYE" for r in w.primary.requests)  # the 988 leg is released
    assert w.media.mixed(call.id) == [] and w.bridged_to(w.disp1)
    assert not any(r.method == "BYE" for r in w.disp1.requests)


def test_counselor_hanging_up_in_conference_returns_the_caller(tmp_path: Path) -> None:
    w, call, tid = _warm(tmp_path)
    events = recording(w)
    w.net.advance(2.0)
    w.primary.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    t = w.core.transfers[tid]
    assert t.state is TState.FAILED and call.caller.alive
    assert w.bridged_to(w.disp1) and w.media.mixed(call.id) == []
    failed = next(e for e in events if e.kind == "failed")
    assert failed.reason == "destination left"
    assert events[-1].kind == "returned_to_dispatcher"


def test_caller_hanging_up_in_conference_is_abandoned_in_conference(tmp_path: Path) -> None:
    w, _, tid = _warm(tmp_path)
    events = recording(w)
    w.net.advance(2.0)
    w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    assert w.core.transfers[tid].state is TState.ABANDONED
    abandoned = next(e for e in events if e.kind == "abandoned")
    assert abandoned.phase == "in conference"
    assert not w.core.calls and w.media.open_count == 0 and not w.media.mixes


def test_warm_chain_failing_keeps_caller_and_dispatcher(tmp_path: Path) -> None:
    w, call, tid = _warm(tmp_path, primary=486, backup=503)
    w.net.advance(2.0)
    t = w.core.transfers[tid]
    assert t.state is TState.FAILED and t.sip_status == 503
    assert w.bridged_to(w.disp1) and not any(r.method == "BYE" for r in w.disp1.requests)
    assert w.media.mixes.get(call.id, []) == []


def test_consult_holds_the_caller_then_conference_then_complete(tmp_path: Path) -> None:
    w, call, tid = _warm(tmp_path, mode="consult")
    events = recording(w)
    w.net.advance(2.0)
    t = w.core.transfers[tid]
    assert t.state is TState.CONSULTING
    assert call.dispatcher is not None and call.destination is not None
    # dispatcher and counselor talk; the caller is in no bridge, alone with the comfort tone
    assert w.media.partner(call.dispatcher.media) is call.destination.media  # type: ignore[arg-type]
    assert w.media.partner(call.caller.media) is None  # type: ignore[arg-type]
    assert w.media.held == {call.id: call.caller.media}
    assert w.media.mixed(call.id) == [call.caller.media]
    w.core.warm.conference(tid, now=w.net.now)
    assert t.state is TState.CONFERENCE and len(w.media.mixed(call.id)) == 3
    assert w.media.held == {}  # off hold, into the mix
    with pytest.raises(SipError) as err:
        w.core.warm.conference(tid, now=w.net.now)
    assert err.value.status == 409 and "conference" in err.value.reason
    w.core.warm.complete(tid, now=w.net.now)
    w.net.advance(1.0)
    assert t.state is TState.COMPLETED and w.bridged_to(w.primary)
    parties = [(e.kind, e.party) for e in events if e.kind.startswith("party_")]
    assert parties == [
        ("party_left", "caller"),  # on consult hold
        ("party_joined", "counselor"),
        ("party_joined", "caller"),  # conference
        ("party_left", "dispatcher"),  # complete
    ]


def test_consult_hold_audio_silence_plays_no_tone(tmp_path: Path) -> None:
    w = World(tmp_path)
    cfg = w.core.config
    w.core.config = replace(cfg, media=replace(cfg.media, hold_audio="silence"))
    call_id = w.connect()
    t = w.core.cold.start_transfer(call_id, mode="consult", now=w.net.now)
    w.net.advance(2.0)
    call = _call(w)
    assert t.state is TState.CONSULTING
    assert w.media.held == {} and w.media.mixed(call.id) == []
    assert w.media.partner(call.caller.media) is None  # type: ignore[arg-type]


def test_consult_cancel_ends_the_hold_and_returns_the_caller(tmp_path: Path) -> None:
    w, call, tid = _warm(tmp_path, mode="consult")
    w.net.advance(2.0)
    assert w.media.held == {call.id: call.caller.media}
    w.core.cold.cancel_transfer(tid, now=w.net.now)
    w.net.advance(1.0)
    assert w.media.held == {} and w.media.mixed(call.id) == [] and w.bridged_to(w.disp1)


def test_consult_caller_gone_is_abandoned_on_consult_hold(tmp_path: Path) -> None:
    w, _, _ = _warm(tmp_path, mode="consult")
    events = recording(w)
    w.net.advance(2.0)
    w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    assert next(e for e in events if e.kind == "abandoned").phase == "on consult hold"


def test_complete_before_answer_is_409_and_unknown_is_404(tmp_path: Path) -> None:
    w, _, tid = _warm(tmp_path, primary="ring")
    w.net.advance(0.5)
    with pytest.raises(SipError) as err:
        w.core.warm.complete(tid, now=w.net.now)
    assert err.value.status == 409 and "ringing" in err.value.reason
    with pytest.raises(SipError) as err:
        w.core.warm.complete("t-none", now=w.net.now)
    assert err.value.status == 404


def test_dispatcher_feature_codes_start_and_cancel_a_warm_transfer(tmp_path: Path) -> None:
    w = World(tmp_path, primary="ring")
    call_id = w.connect()
    call = _call(w)
    assert call.dispatcher is not None
    assert w.media.watched == [(call.dispatcher.media, 101, call_id)]  # the answer had 101
    w.core.on_key(call_id, "#", w.net.now)  # cancel with nothing to cancel: ignored
    assert call.transfer is None
    w.core.on_key(call_id, "*", w.net.now)
    w.core.on_key(call_id, "8", w.net.now + 0.3)
    t = call.transfer
    assert t is not None and t.trigger == "dtmf" and t.mode == "warm"
    w.net.advance(0.5)
    assert t.state is TState.RINGING and w.bridged_to(w.disp1)
    w.core.on_key(call_id, "#", w.net.now)
    w.net.advance(0.5)
    assert t.state is TState.CANCELLED and w.bridged_to(w.disp1)


def test_feature_code_complete_hands_a_conference_over(tmp_path: Path) -> None:
    w = World(tmp_path)
    call_id = w.connect()
    for k in "*7":  # consult
        w.core.on_key(call_id, k, w.net.now)
    w.net.advance(2.0)
    t = _call(w).transfer
    assert t is not None and t.state is TState.CONSULTING
    for k in "*0":
        w.core.on_key(call_id, k, w.net.now)
    w.net.advance(1.0)
    assert t.state is TState.COMPLETED and w.bridged_to(w.primary)


def _consult_call(w: World) -> tuple[object, object]:
    """disp1 (on a call with the caller through us) calls 988 through us: (dialog A, dialog B)."""
    dialog_a = w.disp1.dialog
    w.disp1.dialog = None
    w.disp1.call(HANDOFFD, "988")
    w.net.advance(2.0)
    dialog_b = w.disp1.dialog
    assert dialog_b is not None and dialog_b is not dialog_a
    w.disp1.dialog = dialog_a
    return dialog_a, dialog_b


def _refer_replaces(w: World, dialog: object, call_id: str, to_tag: str, from_tag: str) -> None:
    replaces = quote(f"{call_id};to-tag={to_tag};from-tag={from_tag}", safe="")
    w.disp1.dialog = dialog  # type: ignore[assignment]
    w.disp1.in_dialog(
        "REFER", HANDOFFD, headers=(("Refer-To", f"<sip:988@127.0.0.1?Replaces={replaces}>"),)
    )


def test_attended_transfer_consult_call_then_refer_with_replaces(tmp_path: Path) -> None:
    w = World(tmp_path)
    call_id = w.connect()
    call = _call(w)
    events = recording(w)
    dialog_a, dialog_b = _consult_call(w)
    t = call.transfer
    assert t is not None and t.trigger == "attended" and t.mode == "consult"
    assert t.state is TState.CONSULTING and len(w.core.calls) == 1  # no second 911 call
    assert call.consult is not None and call.destination is not None
    assert w.media.partner(call.consult.media) is call.destination.media  # type: ignore[arg-type]
    inv = w.primary.invites[0]
    assert inv.headers.get("p-asserted-identity") == "<tel:+18055550123>"  # the caller's, kept
    assert w.disp1.statuses()[-1] == 200  # the phone's consult call was answered
    b = dialog_b
    _refer_replaces(w, dialog_a, b.call_id, b.remote_tag, b.local_tag)  # type: ignore[attr-defined]
    w.net.advance(0.5)
    assert [r.status for r in w.disp1.responses if r.cseq.method == "REFER"] == [202]
    notify = [r for r in w.disp1.requests if r.method == "NOTIFY"]
    assert notify and notify[-1].body.startswith(b"SIP/2.0 200")
    assert t.state is TState.COMPLETED and w.bridged_to(w.primary)
    assert any(r.method == "BYE" for r in w.disp1.requests)  # the consult leg was ended
    assert any(r.method == "INVITE" and r.to.tag for r in w.caller.requests)  # caller re-offered
    w.net.advance(3.0)  # the phone did not hang up its leg to the caller: we do
    assert call.dispatcher is None or not call.dispatcher.alive
    assert call_id in w.core.calls and call.caller.alive
    kinds = [e.kind for e in events]
    assert kinds[0] == "transfer_requested" and "destination_answered" in kinds
    assert kinds.index("completed") < kinds.index("dispatcher_left")
    assert all(e.trigger == "attended" and e.mode == "consult" for e in events if e.transfer_id)


def test_attended_transfer_refer_on_the_consult_dialog_works_too(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.connect()
    call = _call(w)
    dialog_a, dialog_b = _consult_call(w)
    a = dialog_a
    _refer_replaces(w, dialog_b, a.call_id, a.remote_tag, a.local_tag)  # type: ignore[attr-defined]
    w.net.advance(0.5)
    assert [r.status for r in w.disp1.responses if r.cseq.method == "REFER"] == [202]
    assert [r for r in w.disp1.requests if r.method == "NOTIFY"][-1].body.startswith(b"SIP/2.0 200")
    t = call.transfer
    assert t is not None and t.state is TState.COMPLETED and w.bridged_to(w.primary)
    byes = [r.call_id for r in w.disp1.requests if r.method == "BYE"]
    assert byes == [a.call_id]  # type: ignore[attr-defined]  # the replaced dialog, at once
    w.disp1.in_dialog("BYE", HANDOFFD)  # the phone ends the REFER's dialog itself
    w.net.advance(3.0)
    assert call.caller.alive and w.bridged_to(w.primary)


def test_refer_with_an_unknown_replaces_dialog_is_481(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.connect()
    _refer_replaces(w, w.disp1.dialog, "nope@x", "a", "b")
    w.net.advance(0.5)
    assert [r.status for r in w.disp1.responses if r.cseq.method == "REFER"] == [481]
    assert _call(w).transfer is None and w.bridged_to(w.disp1)


def test_hanging_up_the_consult_call_cancels_and_keeps_the_caller(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.connect()
    call = _call(w)
    _dialog_a, dialog_b = _consult_call(w)
    w.disp1.dialog = dialog_b  # type: ignore[assignment]
    w.disp1.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    t = call.transfer
    assert t is not None and t.state is TState.CANCELLED
    assert any(r.method == "BYE" for r in w.primary.requests)  # the counselor's leg released
    assert call.caller.alive and w.bridged_to(w.disp1)


def test_a_consult_call_to_a_busy_988_gets_the_failure(tmp_path: Path) -> None:
    w = World(tmp_path, primary=486, backup=486)
    w.connect()
    call = _call(w)
    dialog_a = w.disp1.dialog
    w.disp1.dialog = None
    w.disp1.call(HANDOFFD, "988")
    w.net.advance(2.0)
    assert w.disp1.statuses()[-1] == 486 and w.disp1.dialog is None
    w.disp1.dialog = dialog_a
    t = call.transfer
    assert t is not None and t.state is TState.FAILED
    assert call.caller.alive and w.bridged_to(w.disp1)


def test_an_invite_from_another_address_is_no_consult_call(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.connect()
    w.disp2.call(HANDOFFD, "988")  # an allowed trunk address, but not the phone on the call
    w.net.advance(2.0)
    assert len(w.core.calls) == 2 and _call(w).transfer is None


def test_dispatcher_stays_rule_refuses_complete_but_the_dispatcher_may_hang_up(
    tmp_path: Path,
) -> None:
    """Triage level 3 (co-response): the rule keeps the dispatcher in the conference, so
    ``complete`` (API or feature code) is 409 naming the rule; the dispatcher's own BYE still
    hands caller and counselor over."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-acute.yaml").write_text(
        "rules:\n"
        "  - name: l3-co-response\n"
        "    match: {triage: 3}\n"
        "    mode: warm\n"
        "    dispatcher_stays: true\n"
        "    chain: [988-primary]\n"
    )
    w = World(tmp_path)
    call_id = w.connect()
    t = w.core.cold.start_transfer(call_id, mode="warm", triage=3, now=w.net.now)
    w.net.advance(2.0)
    assert t.state is TState.CONFERENCE and t.decision.dispatcher_stays
    with pytest.raises(SipError) as err:
        w.core.warm.complete(t.id, now=w.net.now)
    assert err.value.status == 409 and "l3-co-response" in err.value.reason
    assert t.state is TState.CONFERENCE and not any(r.method == "BYE" for r in w.disp1.requests)
    w.disp1.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    assert t.state is TState.COMPLETED and w.bridged_to(w.primary)
    # a level 2 call on the same rules completes as before
    w2 = World(tmp_path)
    t2 = w2.core.cold.start_transfer(w2.connect(), mode="warm", triage=2, now=w2.net.now)
    w2.net.advance(2.0)
    w2.core.warm.complete(t2.id, now=w2.net.now)
    assert t2.state is TState.COMPLETED and t2.decision.rule == "default-cold"


def test_a_consult_call_belongs_to_the_call_the_phone_put_on_hold_last(tmp_path: Path) -> None:
    """disp1 has two 911 calls: A, then B. It holds B, takes A back, then (to transfer A) holds
    A and calls 988. The consult is about A (held last), not B (answered last): B's caller
    must not be put on consult hold nor have its data sent to 988."""
    w = World(tmp_path)
    a_id = w.connect()
    dialog_a = w.disp1.dialog
    caller2 = Peer(w.net, "caller2", 5052)
    caller2.call(HANDOFFD, "disp-1", (("P-Asserted-Identity", "<tel:+18055550999>"),))
    w.net.advance(1.0)
    b_id = next(i for i in w.core.calls if i != a_id)
    dialog_b = w.disp1.dialog
    assert dialog_a is not None and dialog_b is not None and dialog_b is not dialog_a

    def reinvite(dialog: object, direction: bytes) -> None:
        w.disp1.dialog = dialog  # type: ignore[assignment]
        body = sdp(6070).replace(b"a=sendrecv", b"a=" + direction)
        req = w.disp1.in_dialog("INVITE", HANDOFFD, body=body, content_type="application/sdp")
        w.net.advance(0.5)
        assert any(
            r.call_id == req.call_id and r.cseq == req.cseq and r.status == 200
            for r in w.disp1.responses
        )

    reinvite(dialog_b, b"sendonly")  # B on hold
    reinvite(dialog_a, b"sendrecv")  # back to A
    reinvite(dialog_a, b"sendonly")  # transfer A: hold it first
    w.disp1.dialog = None
    w.disp1.call(HANDOFFD, "988")
    w.net.advance(2.0)
    a, b = w.core.calls[a_id], w.core.calls[b_id]
    assert a.transfer is not None and a.transfer.trigger == "attended"
    assert b.transfer is None and b.consult is None
    assert w.primary.invites[0].headers.get("p-asserted-identity") == "<tel:+18055550123>"


def test_the_phone_index_follows_many_calls_on_one_address(tmp_path: Path) -> None:
    """Every answered call of one phone address is indexed (for its consult INVITE) and
    dropped again when it ends, however many there are at once (a PBX in front of positions)."""
    w = World(tmp_path)
    callers = [Peer(w.net, f"caller{i}", 5100 + i) for i in range(6)]
    for c in callers:
        c.call(HANDOFFD, "disp-1", CALLER_HEADERS)
        w.net.advance(1.0)
    assert len(w.core.calls) == 6
    index = w.core.attended._phones
    at = ("127.0.0.1", w.disp1.ep.port)
    assert list(index[at]) == list(w.core.calls)  # in the order answered
    for c in callers:
        c.in_dialog("BYE", HANDOFFD)
        w.net.advance(1.0)
        assert len(index.get(at, ())) == len(w.core.calls)
    assert not w.core.calls and at not in index
