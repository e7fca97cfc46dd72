"""Call metadata (telephony/call/metadata.py) and multipart bodies (telephony/call/multipart.py).

Vectors: tests/vectors/metadata/ (raw 911 INVITEs, CRLF kept) and the SIP core's
911-invite-multipart.sip and torture-mpart01.sip.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.call.metadata import (
    CallMetadata,
    capture,
    geolocation_routing,
    geolocation_values,
    history_entry,
    outbound_body,
    outbound_headers,
    sdp_of,
)
from telephony.call.multipart import BodyPart, build_multipart, parse_multipart
from telephony.routing.model import MetadataPolicy
from telephony.sip.errors import ParseError, SipError
from telephony.sip.headers import NameAddr, Via
from telephony.sip.message import Request, make_request
from telephony.sip.parser import parse_message
from telephony.sip.uri import URI, parse_uri
from tests.vectors import load_vector, vector_names

FULL = "metadata/911-invite-full.sip"
NO_HISTORY = "metadata/911-invite-no-history.sip"
LF = "metadata/911-invite-lf-multipart.sip"
MALFORMED = "metadata/911-invite-malformed-optional.sip"
CORE = "sip/911-invite-multipart.sip"

TARGET = parse_uri("sip:988@127.0.0.1:5090")
POSITION = "sip:dispatch-1@psap.sb.example.gov"
# the example rules' 988 policy (routing_rules/): no location, no multipart, one X- header
POLICY_988 = MetadataPolicy(x_header_allowlist=frozenset({"x-incident-priority"}))
# a dispatcher position configured to take location and multipart
POLICY_POSITION = MetadataPolicy(
    share_location=True,
    accept_multipart=True,
    x_header_allowlist=frozenset({"x-incident-priority"}),
)
NEW_SDP = b"v=0\r\no=handoff 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


def invite(name: str) -> Request:
    msg = parse_message(load_vector(name))
    assert isinstance(msg, Request)
    return msg


def meta_of(name: str) -> CallMetadata:
    return capture(invite(name))


def part_bodies(raw: bytes, boundary: bytes) -> list[bytes]:
    """Bodies of a CRLF multipart written by hand, for expected values (not the code under test)."""
    chunks = (b"\r\n" + raw).split(b"\r\n--" + boundary)
    return [c.split(b"\r\n\r\n", 1)[1] for c in chunks[1:-1]]


# -- multipart ----------------------------------------------------------------------------------


def test_parse_the_core_911_vector() -> None:
    req = invite(CORE)
    parts = parse_multipart(req.body, req.headers.get("content-type") or "")
    assert [p.content_type for p in parts] == ["application/sdp", "application/pidf+xml"]
    assert parts[0].headers == (("Content-Type", "application/sdp"),)
    assert parts[0].body.startswith(b"v=0\r\no=caller ") and parts[0].body.endswith(b"a=sendrecv")
    assert parts[1].content_id == "target123@psap.example.net"
    assert parts[1].body.startswith(b'<?xml version="1.0"')
    assert parts[1].body.endswith(b"</presence>")


def test_parse_keeps_part_headers_in_order_and_bodies_byte_for_byte() -> None:
    req = invite(FULL)
    parts = parse_multipart(req.body, req.headers.get("content-type") or "")
    assert [p.headers for p in parts[1:]] == [
        (
            ("Content-Type", "application/pidf+xml"),
            ("Content-ID", "<loc-7f3b2a@carrier.example.com>"),
            ("Content-Disposition", "by-reference;handling=optional"),
        ),
        (
            ("Content-Type", "application/EmergencyCallData.DeviceInfo+xml"),
            ("Content-ID", "<devinfo-5510@carrier.example.com>"),
            ("Content-Disposition", "by-reference;handling=optional"),
        ),
    ]
    assert [p.body for p in parts] == part_bodies(req.body, b"boundary-ecrit-8d2f")
    assert parts[2].content_type == "application/emergencycalldata.deviceinfo+xml"


def test_parse_bare_lf_quoted_boundary_preamble_epilogue_padding_folding() -> None:
    req = invite(LF)
    ctype = req.headers.get("content-type") or ""
    assert 'boundary="=_cpe boundary 7"' in ctype
    parts = parse_multipart(req.body, ctype)
    assert [p.content_type for p in parts] == ["application/sdp", "application/pidf+xml"]
    assert parts[0].body.startswith(b"v=0\no=cpe") and parts[0].body.endswith(b"a=sendrecv\n")
    assert b"This is a multi-part" not in parts[0].body  # the preamble
    assert parts[1].header("content-type") == "application/pidf+xml; charset=UTF-8"  # unfolded
    assert parts[1].body.endswith(b"</presence>")  # the epilogue is not part of it


def test_delimiter_text_inside_a_binary_part_is_content() -> None:
    """RFC 4475 mpart01: "--boundary42" not at the start of a line does not end the image."""
    req = invite("sip/torture-mpart01.sip")
    parts = parse_multipart(req.body, req.headers.get("content-type") or "")
    assert [p.content_type for p in parts] == ["text/plain", "image/png"]
    assert parts[0].body == b"Caller says: help"
    assert parts[1].body[:4] == b"\x00\x01\x02\x03"
    assert parts[1].body.endswith(b"\x00\xff--boundary42")


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"--b\r\n\r\nx\r\n--b--\r\n", "multipart/mixed", 400),  # no boundary parameter
        (b"--b\r\n\r\nx\r\n--b--\r\n", 'multipart/mixed;boundary=""', 400),
        (b"--b\r\n\r\nx\r\n--b--\r\n", "multipart/mixed;boundary=c", 400),  # never occurs
        (b"--b\r\n\r\nx\r\n", "multipart/mixed;boundary=b", 400),  # no close delimiter
        (b"--b\r\nno colon\r\n\r\nx\r\n--b--\r\n", "multipart/mixed;boundary=b", 400),
        (b"--b\r\n folded first\r\n\r\nx\r\n--b--\r\n", "multipart/mixed;boundary=b", 400),
        (b"--b\r\n\r\nx\r\n--b--\r\n", "mixed", 400),  # unreadable Content-Type
        (b"v=0\r\n", "application/sdp", 415),
    ],
)
def test_broken_multipart_bodies_raise_parse_error(body: bytes, ctype: str, status: int) -> None:
    with pytest.raises(ParseError) as err:
        parse_multipart(body, ctype)
    assert err.value.status == status
    assert err.value.side == "peer"


def test_a_line_that_only_starts_with_the_delimiter_does_not_end_a_part() -> None:
    body = b"--b\r\n\r\nx\r\n--bx\r\n--b --\r\ny\r\n--b--\r\n"
    parts = parse_multipart(body, "multipart/mixed;boundary=b")
    assert [p.body for p in parts] == [b"x\r\n--bx\r\n--b --\r\ny"]


def test_the_vector_without_close_delimiter_is_broken_but_readable_when_lenient() -> None:
    req = invite("metadata/bad-multipart-no-close.sip")
    ctype = req.headers.get("content-type") or ""
    with pytest.raises(ParseError, match="close delimiter"):
        parse_multipart(req.body, ctype)
    parts = parse_multipart(req.body, ctype, strict=False)
    assert [p.content_type for p in parts] == ["application/sdp", "application/pidf+xml"]
    assert parts[1].body.endswith(b"</presence>")


def test_lenient_parse_skips_an_unreadable_part() -> None:
    req = invite(MALFORMED)
    ctype = req.headers.get("content-type") or ""
    with pytest.raises(ParseError, match="header line"):
        parse_multipart(req.body, ctype)
    parts = parse_multipart(req.body, ctype, strict=False)
    assert [p.content_id for p in parts] == [None, "loc@example.com"]


def test_build_writes_crlf_with_a_fresh_boundary() -> None:
    parts = (BodyPart((("Content-Type", "application/sdp"),), b"v=0\r\n"),)
    ctype, body = build_multipart(parts)
    boundary = ctype.removeprefix("multipart/mixed;boundary=")
    assert boundary != ctype and boundary.startswith("handoff-")
    assert (
        body
        == (
            f"--{boundary}\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n--{boundary}--\r\n"
        ).encode()
    )
    assert build_multipart(parts)[0] != ctype  # fresh every time


def test_build_refuses_a_part_header_that_would_break_the_framing() -> None:
    for headers in ((("Content-Type", "a/b\r\nX: y"),), (("Bad Name", "x"),)):
        with pytest.raises(SipError) as err:
            build_multipart([BodyPart(headers, b"")])
        assert err.value.status == 500 and err.value.side == "local"


def test_empty_parts_round_trip() -> None:
    parts = (BodyPart((), b""), BodyPart((("A", ""),), b""), BodyPart((), b"\r\n"))
    ctype, body = build_multipart(parts)
    assert parse_multipart(body, ctype) == parts


_NAMES = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1
)
_VALUES = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=40
).map(lambda v: v.strip(" \t"))
_PARTS = st.lists(
    st.builds(
        BodyPart,
        st.lists(st.tuples(_NAMES, _VALUES), max_size=4).map(tuple),
        st.binary(max_size=120) | st.sampled_from([b"\r\n", b"--", b"\n--x\r\n", b"a\r"]),
    ),
    max_size=5,
).map(tuple)


@settings(max_examples=300, deadline=None)
@given(_PARTS)
def test_parse_of_build_gives_the_parts_back(parts: tuple[BodyPart, ...]) -> None:
    ctype, body = build_multipart(parts)
    assert parse_multipart(body, ctype) == parts


# -- capture ------------------------------------------------------------------------------------


def test_capture_the_full_911_invite() -> None:
    req = invite(FULL)
    meta = capture(req, triage_header="2")
    parts = parse_multipart(req.body, req.headers.get("content-type") or "")
    assert (
        meta
        == CallMetadata(
            identity="<tel:+18055550123>",
            caller_number="+18055550123",
            emergency_call_id="urn:emergency:uid:callid:a1b2c3d4e5f6:bcf.carrier.example.com",
            incident_id="urn:emergency:uid:incidentid:9f8e7d6c:psap.sb.example.gov",
            call_info=(
                "<urn:emergency:uid:callid:a1b2c3d4e5f6:bcf.carrier.example.com>;"
                "purpose=emergency-CallId",
                "<urn:emergency:uid:incidentid:9f8e7d6c:psap.sb.example.gov>;"
                "purpose=emergency-IncidentId",
                "<https://adr.carrier.example.com/ecd/provider/0451>;"
                "purpose=EmergencyCallData.ProviderInfo",
                "<cid:devinfo-5510@carrier.example.com>;purpose=EmergencyCallData.DeviceInfo",
            ),  # not the icon
            user_to_user=("3a0c9b8f17e2;encoding=hex;purpose=isdn-uui;content=isdn-uui",),
            x_headers=(
                ("X-Incident-Priority", "1"),
                ("X-Handoff-Internal", "leg=forged"),
                ("X-Carrier-Trace", "55aa01"),
            ),
            geolocation=("<cid:loc-7f3b2a@carrier.example.com>", "yes"),
            location_parts=parts[1:],
            history_info=(
                "<sip:911@esrp.sb.example.gov>;index=1",
                "<sip:dispatch-1@127.0.0.1:5080>;index=1.1;mp=1",
            ),
            resource_priority=("esnet.1",),
            language="es-MX, es;q=0.9, en;q=0.5",
            triage_header="2",
        )
    )
    assert geolocation_values(meta) == ("<cid:loc-7f3b2a@carrier.example.com>",)
    assert geolocation_routing(meta) == ("yes",)


def test_capture_without_pai_takes_from_without_its_tag() -> None:
    meta = meta_of(NO_HISTORY)
    assert meta.identity == '"Pay Phone 12" <sip:8055550199@psap.sb.example.gov>'
    assert meta.caller_number == "8055550199"
    # purpose compared case-insensitively ("Emergency-CallId")
    assert meta.emergency_call_id == "urn:emergency:uid:callid:77aa01bb:bcf.sb.example.gov"
    assert meta.incident_id is None
    assert meta.history_info == ()
    assert meta.resource_priority == ("esnet.0", "wps.2", "dsn.flash")
    assert meta.x_headers == (("x-incident-priority", "2"), ("X-Triage-Level", "1"))
    assert meta.user_to_user == ('"c0ffee";encoding=hex',)
    assert meta.geolocation == ("<https://lis.sb.example.gov/loc/7b3e91?ref=a1>", "no")
    assert meta.location_parts == ()
    assert meta.language == "en"


def test_capture_the_core_vector_takes_the_first_pai() -> None:
    meta = meta_of(CORE)
    assert meta.identity == '"911 Caller" <sip:+18055550123@psap.example.net>'
    assert meta.caller_number == "+18055550123"
    assert len(meta.history_info) == 3
    assert meta.call_info[2].endswith("purpose=EmergencyCallData.SubscriberInfo")
    assert [p.content_id for p in meta.location_parts] == ["target123@psap.example.net"]


def test_capture_decodes_an_escaped_user_part() -> None:
    meta = meta_of(LF)
    assert meta.identity == "<sip:%2B18055550177@legacy-cpe.example.net;user=phone>"
    assert meta.caller_number == "+18055550177"
    assert [p.content_id for p in meta.location_parts] == ["pidf1@legacy-cpe.example.net"]


def test_capture_skips_malformed_optional_values_and_keeps_the_rest() -> None:
    meta = meta_of(MALFORMED)
    assert meta.identity == '"Caller" <tel:+18055550188>'  # the PAI is broken: From
    assert meta.caller_number == "+18055550188"
    assert meta.emergency_call_id == "urn:emergency:uid:callid:ok1:bcf.example.com"
    assert meta.incident_id is None  # its line is unbalanced: skipped whole
    assert meta.call_info == (
        "<urn:emergency:uid:callid:ok1:bcf.example.com>;purpose=emergency-CallId",
        "<https://adr.example.com/ecd/2>;purpose=EmergencyCallData.ServiceInfo",
    )
    assert meta.history_info == (
        "<sip:911@esrp.example.gov>;index=1",
        "<sip:dispatch-1@127.0.0.1:5080>;index=1.one",
    )
    assert meta.geolocation == ("<cid:loc@example.com>",)  # "maybe yes" is not a token
    assert meta.user_to_user == ("00ff;encoding=hex",)
    assert meta.resource_priority == ("wps.3",)
    assert meta.language is None
    assert [p.content_id for p in meta.location_parts] == ["loc@example.com"]


def test_capture_of_a_bare_invite() -> None:
    req = Request(
        "INVITE",
        parse_uri("sip:911@127.0.0.1"),
        [
            ("From", "<urn:service:sos>;tag=1"),
            ("Geolocation", "cid:bare@example.com"),  # RFC 6442 wants <uri>
            ("Geolocation-Routing", "yes"),
            ("Content-Type", "multipart/mixed"),
        ],
        b"garbage",
    )
    meta = capture(req)
    assert meta.identity == "<urn:service:sos>" and meta.caller_number is None
    assert meta.location_parts == () and meta.call_info == () and meta.x_headers == ()
    assert meta.geolocation == ("yes",) and geolocation_values(meta) == ()


# -- sdp_of -------------------------------------------------------------------------------------


def test_sdp_of_plain_multipart_and_other_bodies() -> None:
    for name in (CORE, FULL, NO_HISTORY, LF, MALFORMED, "metadata/bad-multipart-no-close.sip"):
        req = invite(name)
        sdp = sdp_of(req.body, req.headers.get("content-type"))
        assert sdp is not None and sdp.startswith(b"v=0") and b"m=audio" in sdp
    assert sdp_of(b"v=0\r\n", None) == b"v=0\r\n"
    assert sdp_of(b"v=0\r\n", "Application/SDP") == b"v=0\r\n"
    assert sdp_of(b"", "application/sdp") is None
    assert sdp_of(b"hello", "text/plain") is None
    nested_ct, nested = build_multipart([BodyPart((("Content-Type", "application/sdp"),), b"v=0")])
    outer_ct, outer = build_multipart([BodyPart((("Content-Type", nested_ct),), nested)])
    assert sdp_of(outer, outer_ct) == b"v=0"
    # a broken nested multipart is skipped like any unreadable part
    broken = BodyPart((("Content-Type", "multipart/alternative;boundary=zz"),), b"no delimiter")
    sdp_part = BodyPart((("Content-Type", "application/sdp"),), b"v=0")
    ctype, body = build_multipart([broken, sdp_part])
    assert sdp_of(body, ctype) == b"v=0"


@pytest.mark.parametrize(
    "name", ["metadata/bad-multipart-no-boundary.sip", "metadata/bad-multipart-wrong-boundary.sip"]
)
def test_sdp_of_an_unreadable_multipart_is_a_400(name: str) -> None:
    req = invite(name)
    with pytest.raises(ParseError) as err:
        sdp_of(req.body, req.headers.get("content-type"))
    assert err.value.status == 400
    assert capture(req).location_parts == ()  # capture still does not raise


# -- outbound headers and body ------------------------------------------------------------------

FULL_988_HEADERS = [
    ("P-Asserted-Identity", "<tel:+18055550123>"),
    (
        "Call-Info",
        "<urn:emergency:uid:callid:a1b2c3d4e5f6:bcf.carrier.example.com>;purpose=emergency-CallId",
    ),
    (
        "Call-Info",
        "<urn:emergency:uid:incidentid:9f8e7d6c:psap.sb.example.gov>;purpose=emergency-IncidentId",
    ),
    (
        "Call-Info",
        "<https://adr.carrier.example.com/ecd/provider/0451>;purpose=EmergencyCallData.ProviderInfo",
    ),
    ("History-Info", "<sip:911@esrp.sb.example.gov>;index=1"),
    ("History-Info", "<sip:dispatch-1@127.0.0.1:5080>;index=1.1;mp=1"),
    ("History-Info", "<sip:988@127.0.0.1:5090>;index=1.1.1;mp=1.1"),
    ("Referred-By", "<sip:dispatch-1@psap.sb.example.gov>"),
    ("User-to-User", "3a0c9b8f17e2;encoding=hex;purpose=isdn-uui;content=isdn-uui"),
    ("X-Incident-Priority", "1"),
]


def test_default_988_policy_exact_headers_and_body() -> None:
    meta = meta_of(FULL)
    headers = outbound_headers(meta, POLICY_988, target=TARGET, referred_by=POSITION)
    # no Geolocation, no cid: Call-Info (its part does not travel), no esnet Resource-Priority,
    # no X-Handoff-Internal, no X-Carrier-Trace (not allowlisted)
    assert headers == FULL_988_HEADERS
    assert outbound_body(meta, NEW_SDP, POLICY_988) == ("application/sdp", NEW_SDP)


def test_the_built_in_default_policy_forwards_no_x_header() -> None:
    headers = outbound_headers(meta_of(FULL), MetadataPolicy(), target=TARGET, referred_by=None)
    assert headers == [
        h for h in FULL_988_HEADERS if h[0] not in ("X-Incident-Priority", "Referred-By")
    ]


def test_position_policy_with_multipart_carries_location_and_round_trips() -> None:
    req = invite(FULL)
    meta = capture(req)
    headers = outbound_headers(meta, POLICY_POSITION, target=TARGET, referred_by=POSITION)
    assert headers == [
        *FULL_988_HEADERS[:4],
        (
            "Call-Info",
            "<cid:devinfo-5510@carrier.example.com>;purpose=EmergencyCallData.DeviceInfo",
        ),
        *FULL_988_HEADERS[4:9],
        ("Geolocation", "<cid:loc-7f3b2a@carrier.example.com>"),
        ("Geolocation-Routing", "yes"),
        ("X-Incident-Priority", "1"),
    ]
    ctype, body = outbound_body(meta, NEW_SDP, POLICY_POSITION)
    assert ctype.startswith("multipart/mixed;boundary=handoff-")
    parts = parse_multipart(body, ctype)
    assert parts == (
        BodyPart((("Content-Type", "application/sdp"),), NEW_SDP),
        *meta.location_parts,
    )
    original = parse_multipart(req.body, req.headers.get("content-type") or "")
    assert parts[1:] == original[1:]  # PIDF-LO and DeviceInfo unchanged, Content-IDs kept

    # the whole INVITE, as the B2BUA builds it, parses back to the same metadata
    out = make_request(
        "INVITE",
        TARGET,
        via=Via("UDP", "127.0.0.1", 5070, (("branch", "z9hG4bKtest1"),)),
        from_=NameAddr(parse_uri("sip:+18055550123@127.0.0.1"), None, (("tag", "t1"),)),
        to=NameAddr(TARGET),
        call_id="out-1@handoffd",
        cseq=1,
        headers=headers,
        body=body,
        content_type=ctype,
    )
    again = parse_message(out.to_bytes())
    assert isinstance(again, Request)
    meta2 = capture(again)
    assert meta2.location_parts == meta.location_parts
    assert meta2.geolocation == meta.geolocation
    assert meta2.call_info == meta.call_info
    assert meta2.identity == meta.identity
    assert sdp_of(again.body, again.headers.get("content-type")) == NEW_SDP


def test_share_location_without_multipart_forwards_only_by_reference_values() -> None:
    policy = MetadataPolicy(share_location=True, accept_multipart=False)
    # cid-only location: nothing can go (the PIDF-LO cannot travel), nor Geolocation-Routing
    full = meta_of(FULL)
    names = [n for n, _ in outbound_headers(full, policy, target=TARGET, referred_by=None)]
    assert "Geolocation" not in names and "Geolocation-Routing" not in names
    assert outbound_body(full, NEW_SDP, policy) == ("application/sdp", NEW_SDP)
    # by-reference location goes as is
    plain = meta_of(NO_HISTORY)
    headers = outbound_headers(plain, policy, target=TARGET, referred_by=None)
    assert [h for h in headers if h[0].startswith("Geolocation")] == [
        ("Geolocation", "<https://lis.sb.example.gov/loc/7b3e91?ref=a1>"),
        ("Geolocation-Routing", "no"),
    ]


def test_an_escaped_cid_matches_its_content_id() -> None:
    meta = meta_of(LF)
    policy = MetadataPolicy(share_location=True, accept_multipart=True)
    headers = outbound_headers(meta, policy, target=TARGET, referred_by=None)
    assert ("Geolocation", "<cid:pidf1%40legacy-cpe.example.net>") in headers
    ctype, body = outbound_body(meta, NEW_SDP, policy)
    assert parse_multipart(body, ctype)[1].content_id == "pidf1@legacy-cpe.example.net"


def test_multipart_target_without_share_location_gets_sdp_only() -> None:
    policy = MetadataPolicy(share_location=False, accept_multipart=True)
    meta = meta_of(FULL)
    assert outbound_body(meta, NEW_SDP, policy) == ("application/sdp", NEW_SDP)
    names = [n for n, _ in outbound_headers(meta, policy, target=TARGET, referred_by=None)]
    assert "Geolocation" not in names


def test_resource_priority_drops_esnet_only_and_uui_follows_the_policy() -> None:
    meta = meta_of(NO_HISTORY)
    headers = outbound_headers(meta, POLICY_988, target=TARGET, referred_by=None)
    assert ("Resource-Priority", "wps.2, dsn.flash") in headers
    assert ("User-to-User", '"c0ffee";encoding=hex') in headers
    assert ("x-incident-priority", "2") in headers  # allowlist is case-insensitive, spelling kept
    no_uui = MetadataPolicy(forward_uui=False)
    names = [n for n, _ in outbound_headers(meta, no_uui, target=TARGET, referred_by=None)]
    assert "User-to-User" not in names


def test_internal_headers_never_leave_even_when_allowlisted() -> None:
    policy = MetadataPolicy(x_header_allowlist=frozenset({"x-handoff-internal", "X-Carrier-Trace"}))
    headers = outbound_headers(meta_of(FULL), policy, target=TARGET, referred_by=None)
    assert [h for h in headers if h[0].lower().startswith("x-")] == [("X-Carrier-Trace", "55aa01")]


def test_history_info_numbering() -> None:
    plain = meta_of(NO_HISTORY)
    assert history_entry(plain, TARGET) == "<sip:988@127.0.0.1:5090>;index=1"
    assert history_entry(plain, TARGET, 486) == "<sip:988@127.0.0.1:5090;cause=486>;index=1"
    core = meta_of(CORE)  # received 1, 1.1, 1.1.1
    assert history_entry(core, TARGET, 302) == (
        "<sip:988@127.0.0.1:5090;cause=302>;index=1.1.1.1;mp=1.1.1"
    )
    tel = parse_uri("tel:+18002738255")
    assert (
        history_entry(meta_of(FULL), tel, 480) == "<tel:+18002738255;cause=480>;index=1.1.1;mp=1.1"
    )
    # the last entry's index "1.one" is unreadable: the one before it is the parent
    assert history_entry(meta_of(MALFORMED), TARGET) == "<sip:988@127.0.0.1:5090>;index=1.1;mp=1"
    headers = outbound_headers(
        plain, POLICY_988, target=TARGET, referred_by=None, retarget_cause=408
    )
    assert [v for n, v in headers if n == "History-Info"] == [
        "<sip:988@127.0.0.1:5090;cause=408>;index=1"
    ]


def test_referred_by_is_wrapped_unless_already_a_name_addr() -> None:
    meta = meta_of(NO_HISTORY)
    for given_, written in [
        ("sip:pos-2@psap.example.gov", "<sip:pos-2@psap.example.gov>"),
        ('"Position 2" <sip:pos-2@psap.example.gov>', '"Position 2" <sip:pos-2@psap.example.gov>'),
    ]:
        headers = outbound_headers(meta, POLICY_988, target=TARGET, referred_by=given_)
        assert ("Referred-By", written) in headers


# -- never raises, never leaks ------------------------------------------------------------------

_HEADER_NAMES = st.sampled_from(
    [
        "P-Asserted-Identity",
        "From",
        "Call-Info",
        "History-Info",
        "Geolocation",
        "Geolocation-Routing",
        "User-to-User",
        "Resource-Priority",
        "Accept-Language",
        "Content-Type",
        "X-Handoff-Leg",
        "X-Incident-Priority",
    ]
)
_FRAGMENT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=8
) | st.sampled_from(
    [*'<>";,=:@% ', "<cid:", "sip:a@b", "esnet.", ";index=1.", ";purpose=", ";boundary="]
)
_TEXT = st.lists(_FRAGMENT, max_size=10).map("".join)
_MUTATION = st.tuples(st.sampled_from(["add", "set", "remove"]), _HEADER_NAMES, _TEXT)
_VECTORS = [CORE, *vector_names("metadata", "*.sip")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_VECTORS),
    st.lists(_MUTATION, max_size=6),
    st.none() | st.binary(max_size=200) | st.integers(0, 4000),
    st.booleans(),
    st.booleans(),
)
def test_capture_never_raises_on_a_mutated_vector(
    name: str,
    mutations: list[tuple[str, str, str]],
    body: bytes | int | None,
    share: bool,
    multipart: bool,
) -> None:
    req = invite(name)
    for op, hname, value in mutations:
        if op == "add":
            req.headers.add(hname, value)
        elif op == "set":
            req.headers.set(hname, value)
        else:
            req.headers.remove(hname)
    if isinstance(body, int):
        req.body = req.body[:body]  # truncated
    elif body is not None:
        req.body = body
    meta = capture(req, triage_header="1")
    policy = MetadataPolicy(
        share_location=share,
        accept_multipart=multipart,
        x_header_allowlist=frozenset({"x-handoff-leg", "x-incident-priority"}),
    )
    headers = outbound_headers(meta, policy, target=TARGET, referred_by=POSITION)
    ctype, out_body = outbound_body(meta, NEW_SDP, policy)
    assert not any(n.lower().startswith("x-handoff-") for n, _ in headers)
    # no r-value of the esnet namespace (RFC 4412: namespace "." priority; "0ESNET.x" is
    # another namespace and may pass)
    forwarded_rp = [v for n, v in headers if n == "Resource-Priority"]
    namespaces = {
        rv.strip().partition(".")[0].strip().lower() for v in forwarded_rp for rv in v.split(",")
    }
    assert "esnet" not in namespaces, forwarded_rp
    # every line is acceptable to the message layer, and the body is readable again
    make_request(
        "INVITE",
        TARGET,
        via=Via("UDP", "127.0.0.1", 5070, (("branch", "z9hG4bKx"),)),
        from_=NameAddr(URI("sip", "a", None, "127.0.0.1"), None, (("tag", "t"),)),
        to=NameAddr(TARGET),
        call_id="x@h",
        cseq=1,
        headers=headers,
        body=out_body,
        content_type=ctype,
    )
    assert sdp_of(out_body, ctype) == NEW_SDP


def test_an_identity_that_is_not_sip_or_tel_is_kept_but_not_asserted() -> None:
    req = Request(
        "INVITE",
        parse_uri("sip:911@127.0.0.1"),
        [("From", "<urn:service:sos>;tag=1"), ("Accept-Language", ""), ("Accept-Language", "fr")],
    )
    meta = capture(req)
    assert meta.identity == "<urn:service:sos>" and meta.language == "fr"
    headers = outbound_headers(meta, POLICY_988, target=TARGET, referred_by=None)
    assert headers == [("History-Info", "<sip:988@127.0.0.1:5090>;index=1")]
