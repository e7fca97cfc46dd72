"""Stateless answers to malformed requests."""

from __future__ import annotations

from telephony.sip import ParseError, parse_message
from telephony.sip.message import Response
from telephony.sip.reject import reject_malformed

HEAD = (
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKbad1;rport\r\n"
    "From: <sip:a@127.0.0.1>;tag=f1\r\n"
    "To: <sip:988@127.0.0.1>\r\n"
    "Call-ID: bad-1@127.0.0.1\r\n"
    "CSeq: 7 INVITE\r\n"
)


def _bad(first_line: str, extra: str = "") -> bytes:
    return f"{first_line}\r\n{HEAD}{extra}Content-Length: 0\r\n\r\n".encode()


def _error_for(data: bytes) -> ParseError:
    try:
        parse_message(data)
    except ParseError as err:
        return err
    raise AssertionError("expected a ParseError")


def test_malformed_request_gets_addressable_400() -> None:
    data = _bad("INVITE sip:988@127.0.0.1 SIP/2.0", "Max-Forwards: lots\r\n")
    err = _error_for(data)
    answer = reject_malformed(data, err)
    assert answer is not None
    resp = parse_message(answer)
    assert isinstance(resp, Response)
    assert resp.status == 400
    assert resp.call_id == "bad-1@127.0.0.1"
    assert resp.top_via.branch == "z9hG4bKbad1"
    assert resp.cseq.seq == 7
    assert resp.to.tag  # a final response carries a To tag
    assert "Max-Forwards" in (resp.headers.get("warning") or "")


def test_unknown_version_gets_505() -> None:
    data = _bad("INVITE sip:988@127.0.0.1 SIP/3.0")
    err = _error_for(data)
    assert err.status == 505
    answer = reject_malformed(data, err)
    assert answer is not None
    assert answer.startswith(b"SIP/2.0 505 ")


def test_no_answer_without_via_or_for_responses_or_acks() -> None:
    no_via = b"INVITE sip:988@127.0.0.1 SIP/2.0\r\nCSeq: x\r\n\r\n"
    assert reject_malformed(no_via, _error_for(no_via)) is None
    resp = b"SIP/2.0 200 OK\r\n" + HEAD.encode() + b"CSeq: bogus\r\n\r\n"
    assert reject_malformed(resp, ParseError("bad")) is None
    ack = _bad("ACK sip:988@127.0.0.1 SIP/2.0", "Max-Forwards: x\r\n")
    assert reject_malformed(ack, _error_for(ack)) is None
    assert reject_malformed(b"\x00\xff garbage", ParseError("bad")) is None
