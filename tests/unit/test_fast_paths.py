"""The shortcuts taken on the per-call path give exactly what the long way gives.

- Parsed header values are remembered by their exact text (``headers._Memo``): a repeat returns
  an equal value, malformed text is refused every time, long text is never kept.
- ``make_response`` hands the response the request's parsed Via, From, To, CSeq and Call-ID:
  they must equal what parsing the response's own bytes gives, for every request vector.
- ``Message.call_id`` is cached like the other typed values and forgotten when headers change.
- ``Leg.sdp_for`` builds the anchored SDP in one pass: same bytes and same description as the
  step-by-step rewrite it replaced (``rewrite_connection``, ``dataclasses.replace``), for every
  SDP vector, both address families and every hold setting.
- Tags and branches still come from the OS CSPRNG, 64 and 96 bits, never twice the same.
"""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from telephony.call.legs import Leg, audio_index
from telephony.sip import headers
from telephony.sip.errors import ParseError, SipError
from telephony.sip.headers import new_branch, new_tag, parse_name_addr, parse_via
from telephony.sip.message import Request, make_response
from telephony.sip.parser import parse_message
from telephony.sip.sdp import (
    MediaDescription,
    Origin,
    SessionDescription,
    parse_sdp,
    rewrite_connection,
    set_direction,
)
from telephony.sip.transaction import Endpoint
from telephony.sip.uri import parse_uri
from tests.vectors import load_vector, vector_names

REQUESTS = [
    n for n in vector_names("sip", "*.sip") if not n.startswith("sip/bad-") and "invite" in n
]
SDPS = vector_names("sdp", "*.sdp")

# -- remembered parses ----------------------------------------------------------------------


def test_a_repeated_value_gives_an_equal_parse_and_bad_text_is_refused_every_time() -> None:
    text = '"Caller" <sip:caller@192.0.2.1:5061>;tag=abc123'
    first, again = parse_name_addr(text), parse_name_addr(text)
    assert first == again == headers._parse_name_addr(text)
    via = "SIP/2.0/UDP 192.0.2.1:5061;branch=z9hG4bK-77;rport"
    assert parse_via(via) == parse_via(via)
    for _ in range(3):
        with pytest.raises(ParseError):
            parse_name_addr("<sip:caller@192.0.2.1")
        with pytest.raises(ParseError):
            parse_via("SIP/2.0/UDP host:99999")
    assert "<sip:caller@192.0.2.1" not in headers._ADDRESSES.new


def test_the_memo_is_bounded_and_keeps_no_long_text() -> None:
    memo = headers._Memo(size=4)
    for i in range(10):
        memo.put(f"v{i}", i)
    assert len(memo.new) + len(memo.old) <= 8
    assert memo.get("v9") is None  # still in the newest generation: not in the old one
    assert memo.new.get("v9") == 9 and memo.get("v0") is None
    memo.put("x" * (headers.MEMO_MAX_TEXT + 1), 1)
    assert "x" * (headers.MEMO_MAX_TEXT + 1) not in memo.new


# -- make_response takes the request's parsed values ----------------------------------------


@pytest.mark.parametrize("name", REQUESTS)
@pytest.mark.parametrize("status", [100, 180, 200, 486])
def test_a_response_reads_like_its_own_bytes(name: str, status: int) -> None:
    req = parse_message(load_vector(name))
    assert isinstance(req, Request)
    resp = make_response(req, status, to_tag="t4g", headers=(("Contact", "<sip:h@192.0.2.9>"),))
    again = parse_message(resp.to_bytes())
    assert resp.via == again.via
    assert resp.from_ == again.from_
    assert resp.to == again.to
    assert resp.cseq == again.cseq
    assert resp.call_id == again.call_id


def test_response_header_lines_from_code_are_still_checked() -> None:
    req = parse_message(load_vector(REQUESTS[0]))
    assert isinstance(req, Request)
    with pytest.raises(SipError):
        make_response(req, 200, headers=(("Contact", "<sip:a@b>\r\nX-Evil: 1"),))
    with pytest.raises(SipError):
        make_response(req, 200, to_tag="a\r\nX-Evil: 1")


def test_the_cached_call_id_follows_header_changes() -> None:
    req = parse_message(load_vector(REQUESTS[0]))
    first = req.call_id
    req.headers.set("Call-ID", "changed@192.0.2.1")
    assert req.call_id == "changed@192.0.2.1" != first


# -- sdp_for in one pass ----------------------------------------------------------------------


class _Media:
    def __init__(self, host: str) -> None:
        self.host = host
        self.rtp_port = 30000

    def set_remote(self, host: str, rtp_port: int, rtcp_port: int | None = None) -> None:
        return None

    def close(self) -> None:
        return None


def _leg(host: str) -> Leg:
    invite = Request("INVITE", parse_uri("sip:a@192.0.2.1"))
    return Leg("caller", "c1", invite, Endpoint("udp", "192.0.2.1", 5060), _Media(host), False)


def _step_by_step(leg: Leg, source: SessionDescription, hold: bool | None) -> SessionDescription:
    """The anchored SDP as it used to be built: rewrite every address, then each stream."""
    host = leg.media.host
    sd = rewrite_connection(source, host, preserve_hold=False)
    first = audio_index(sd)
    media: list[MediaDescription] = []
    for i, m in enumerate(sd.media):
        attrs = tuple(a for a in m.attributes if a.name not in ("rtcp", "candidate", "crypto"))
        if i == first:
            m = dataclasses.replace(m, port=leg.media.rtp_port, attributes=attrs)
            if hold is not None:
                m = set_direction(m, "sendonly" if hold else "sendrecv")
        else:
            m = dataclasses.replace(m, port=0, attributes=attrs)
        media.append(m)
    conn = sd.connection
    origin = Origin(
        "handoffd",
        leg.session_id,
        leg.sdp_version,
        conn.net_type if conn else "IN",
        "IP6" if ":" in host else "IP4",
        host,
    )
    return dataclasses.replace(sd, origin=origin, media=tuple(media))


@pytest.mark.parametrize("name", SDPS)
@pytest.mark.parametrize("host", ["198.51.100.7", "2001:db8::7"])
@pytest.mark.parametrize("hold", [None, True, False])
def test_sdp_for_matches_the_step_by_step_rewrite(name: str, host: str, hold: bool | None) -> None:
    source = parse_sdp(load_vector(name))
    leg = _leg(host)
    for _ in range(2):  # the version goes up by one each time
        body = leg.sdp_for(source, hold=hold)
        expected = _step_by_step(leg, source, hold)
        assert leg.sent_sdp == expected
        assert body == expected.to_bytes()


# -- tags and branches ------------------------------------------------------------------------


def test_tags_and_branches_are_random_hex_of_the_right_size() -> None:
    tags = {new_tag() for _ in range(5000)}
    branches = {new_branch() for _ in range(5000)}
    assert len(tags) == 5000 and len(branches) == 5000
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in tags)
    assert all(re.fullmatch(r"z9hG4bK[0-9a-f]{24}", b) for b in branches)


def test_a_forked_child_does_not_repeat_the_parents_tags() -> None:
    new_tag()  # the parent has a block of random bytes in hand
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next tag and leave at once
        os.write(write, new_tag().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{16}", child)
    assert child != new_tag()
