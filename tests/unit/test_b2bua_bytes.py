"""Any bytes a peer may put in a header value or a reason phrase: the call is connected, its
transfer runs to its end, and a failed transfer returns the caller to the dispatcher (house
rule: a 911 caller is never left on a dead leg). Header text keeps bytes that are not UTF-8 as
surrogate escapes, so every place that writes such text anew must cope with them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.sip.errors import SipError
from telephony.sip.parser import parse_message
from tests.unit.callnet import sdp
from tests.unit.test_b2bua import HANDOFFD, World

#: a header value's bytes: anything but the line breaks and NUL that end or break the line
value = (
    st.binary(min_size=1, max_size=40)
    .filter(lambda b: not any(c in b for c in b"\r\n\x00") and b.strip() == b)
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
)
NAMES = ("P-Asserted-Identity", "Call-Info", "User-to-User", "Subject", "X-Incident-Priority")
_syntaxish = st.text(
    alphabet=st.sampled_from('ab9:;=,<>"@. \t*%sip/+-_~\\'), min_size=1, max_size=40
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=st.lists(st.tuples(st.sampled_from(NAMES), value), max_size=5), reason=value)
def test_odd_bytes_in_headers_and_reasons_never_strand_the_caller(
    headers: list[tuple[str, str]], reason: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp), primary=503, backup=486)
        w.backup.reject_reason = reason
        w.caller.call(HANDOFFD, "disp-1", tuple(headers))
        w.net.advance(1.0)
        assert w.caller.statuses()[-1] == 200  # a 911 call is connected whatever it carries
        w.disp1.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", "<sip:988@127.0.0.1>"),))
        w.net.advance(3.0)
        assert w.primary.invites and w.backup.invites
        notifies = [r for r in w.disp1.requests if r.method == "NOTIFY"]
        assert notifies and notifies[-1].body.startswith(b"SIP/2.0 486 ")
        assert "terminated" in (notifies[-1].headers.get("subscription-state") or "")
        assert w.bridged_to(w.disp1)
        w.caller.in_dialog("BYE", HANDOFFD)
        w.net.advance(1.0)
        assert not w.core.calls and w.media.open_count == 0


def _escaped(text: str) -> str:
    """``text``'s bytes %-escaped, as a URI header value carries them."""
    return quote(text.encode("utf-8", "surrogateescape"), safe="")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.one_of(
        value,
        value.map(lambda v: f"<sip:{v}@127.0.0.1>"),
        value.map(lambda v: f"<sip:988@127.0.0.1?{v}>"),
        _syntaxish.map(lambda v: f"<sip:988@127.0.0.1?Replaces={v}>"),
        value.map(lambda v: f"<sip:988@127.0.0.1?Replaces={_escaped(v)}>"),
    )
)
def test_any_refer_to_is_answered_and_leaves_the_caller_with_the_dispatcher(target: str) -> None:
    """Refer-To is the dispatcher phone's text: a target no rule allows, one that does not
    parse, or odd bytes in its embedded headers get an answer (202 and a final NOTIFY, or a
    4xx); the caller stays with the dispatcher whenever no transfer started."""
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp), primary=486, backup=486)
        w.caller.call(HANDOFFD, "disp-1")
        w.net.advance(1.0)
        w.disp1.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", target),))
        w.net.advance(3.0)
        status = w.disp1.statuses("REFER")
        assert len(status) == 1 and (status[0] == 202 or 400 <= status[0] < 500), status
        if status[0] == 202:
            notifies = [r for r in w.disp1.requests if r.method == "NOTIFY"]
            assert notifies and "terminated" in (
                notifies[-1].headers.get("subscription-state") or ""
            )
            assert not notifies[-1].body.startswith(b"SIP/2.0 200 ")  # both 988s are busy
        assert w.bridged_to(w.disp1)
        call = next(iter(w.core.calls.values()))
        assert call.state == "connected"


METHODS = ("INVITE", "INFO", "UPDATE", "MESSAGE", "NOTIFY", "OPTIONS", "PRACK", "SUBSCRIBE")
body_bytes = st.binary(max_size=200)
content_types = st.sampled_from(
    ("application/sdp", "application/dtmf-relay", "text/plain", "multipart/mixed;boundary=x")
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    side=st.sampled_from(("caller", "disp1")),
    method=st.sampled_from(METHODS),
    headers=st.lists(st.tuples(st.sampled_from(NAMES), value), max_size=3),
    body=body_bytes,
    content_type=content_types,
)
def test_every_in_dialog_request_is_answered_and_the_call_goes_on(
    side: str, method: str, headers: list[tuple[str, str]], body: bytes, content_type: str
) -> None:
    """Whatever in-dialog request either party sends, with whatever body: it gets a final
    answer at once (not silence until the sender's Timer F), the call stays up, and both
    hang-ups still end it cleanly."""
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        w.caller.call(HANDOFFD, "disp-1")
        w.net.advance(1.0)
        peer = w.caller if side == "caller" else w.disp1
        req = peer.in_dialog(
            method,
            HANDOFFD,
            headers=tuple(headers),
            body=body,
            content_type=content_type if body else None,
        )
        w.net.advance(1.0)
        answers = [r.status for r in peer.responses if r.cseq == req.cseq]
        assert len([s for s in answers if s >= 200]) == 1, answers
        assert len(w.core.calls) == 1 and w.bridged_to(w.disp1)
        w.caller.in_dialog("BYE", HANDOFFD)
        w.net.advance(1.0)
        assert not w.core.calls and w.media.open_count == 0


#: headers the call layer reads or relays, with values drawn to stress their parsers
READ = (
    "Max-Forwards",
    "Contact",
    "Record-Route",
    "Supported",
    "Require",
    "Accept-Language",
    "Priority",
    "Geolocation",
    "Geolocation-Routing",
    "Call-Info",
    "History-Info",
    "Resource-Priority",
    "Privacy",
    "P-Asserted-Identity",
    "Referred-By",
    "Reason",
    "Session-Expires",
    "User-to-User",
    "X-Incident-Priority",
)
header_value = st.one_of(value, _syntaxish.map(str.strip).filter(bool))
offer = st.one_of(
    st.just(sdp(6000)),
    st.binary(min_size=1, max_size=200),
    st.sampled_from(
        (
            sdp(6000).replace(b"RTP/AVP 0 8 101", b"RTP/AVP 96"),
            sdp(6000).replace(b"c=IN IP4 127.0.0.1", b"c=IN IP6 ::1"),
            sdp(6000).replace(b"m=audio 6000", b"m=audio 0"),
            sdp(6000).replace(b"m=audio", b"m=video"),
            sdp(6000) + b"m=audio 6002 RTP/AVP 0\r\n",
        )
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=st.lists(st.tuples(st.sampled_from(READ), header_value), max_size=4), body=offer)
def test_any_911_invite_that_parses_gets_a_final_answer_and_ends_cleanly(
    headers: list[tuple[str, str]], body: bytes
) -> None:
    """An INVITE from the trunk with odd values in the headers the call layer reads, and any
    offer: if it parses at all (else the transport answers 400), the caller gets a final
    answer; a connected call ends cleanly on the caller's BYE; nothing raises."""
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        w.caller.call(HANDOFFD, "disp-1", tuple(headers), body)
        (sent,) = w.caller.layer.transmits()  # delivered here, so that bytes that do not
        try:  # parse can be told from a message of ours that a peer could not parse
            invite = parse_message(sent.data)
        except SipError:
            return  # the transport answers such bytes 400 (tests/e2e/test_calls.py)
        w.node.layer.receive(invite, w.caller.ep, w.net.now)
        w.net.advance(10.0)
        w.caller.hang_up_if_answered(HANDOFFD)
        assert not w.core.calls and w.media.open_count == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(st.tuples(st.sampled_from(READ), header_value), max_size=3),
    body=offer,
    contact=st.booleans(),
    mode=st.sampled_from(("cold", "warm")),
)
def test_a_988_answer_with_odd_headers_or_body_never_strands_the_caller(
    headers: list[tuple[str, str]], body: bytes, contact: bool, mode: str
) -> None:
    """The first 988 destination answers with odd headers, any SDP answer, or no Contact;
    the backup is sane. The transfer ends one way or the other and the caller hears a live
    party: the counselor of either destination, or the dispatcher."""
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        w.primary.answer_headers = tuple(headers)
        w.primary.answer_body = body
        w.primary.answer_contact = contact
        call_id = w.connect()
        t = w.core.cold.start_transfer(call_id, mode=mode, now=w.net.now)  # type: ignore[arg-type]
        w.net.advance(40.0)
        call = w.core.calls[call_id]
        assert call.caller.alive
        if mode == "warm" and t.state.value == "conference":
            w.core.warm.complete(t.id, now=w.net.now)
            w.net.advance(40.0)
        assert t.done, t.state
        assert w.bridged_to(w.primary) or w.bridged_to(w.backup) or w.bridged_to(w.disp1)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(st.tuples(st.sampled_from(READ), header_value), max_size=3),
    body=offer,
    contact=st.booleans(),
)
def test_a_dispatcher_answer_with_odd_headers_or_body_gets_the_caller_a_final_answer(
    headers: list[tuple[str, str]], body: bytes, contact: bool
) -> None:
    """The position's phone answers with odd headers, any SDP answer, or no Contact: the 911
    caller gets a final answer (connected, or refused with a status), never endless ringing,
    and the call ends cleanly."""
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        w.disp1.answer_headers = tuple(headers)
        w.disp1.answer_body = body
        w.disp1.answer_contact = contact
        w.caller.call(HANDOFFD, "disp-1")
        w.net.advance(10.0)
        if 200 <= w.caller.statuses()[-1] < 300:
            assert w.bridged_to(w.disp1)
        w.caller.hang_up_if_answered(HANDOFFD)
        w.net.advance(40.0)
        assert not w.core.calls and w.media.open_count == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    destination=st.one_of(st.none(), value, st.sampled_from(("988", "988-backup", "2002", ""))),
    triage=st.one_of(st.none(), st.integers(-3, 7)),
    reason=st.one_of(st.none(), value),
    mode=st.sampled_from(("cold", "warm", "consult")),
)
def test_any_api_transfer_request_is_refused_or_run_and_the_caller_is_kept(
    destination: str | None, triage: int | None, reason: str | None, mode: str
) -> None:
    """What the HTTP hook passes on after its own validation, with any destination text,
    triage level and reason: a 4xx refusal (nothing changes) or a transfer that ends with
    the caller hearing someone."""
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp), primary=486)
        call_id = w.connect()
        try:
            w.core.cold.start_transfer(
                call_id,
                destination=destination,
                triage=triage,
                reason=reason,
                mode=mode,  # type: ignore[arg-type]
                now=w.net.now,
            )
        except SipError as err:
            assert 400 <= err.status < 500, err
            assert w.bridged_to(w.disp1)
            return
        w.net.advance(40.0)
        call = w.core.calls[call_id]
        assert call.caller.alive
        assert w.bridged_to(w.disp1) or w.bridged_to(w.backup) or call.id in w.media.mixes
