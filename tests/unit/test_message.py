"""The message model: Headers, typed access, serialization and round trips, builders."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.sip import (
    URI,
    CSeq,
    Headers,
    NameAddr,
    ParseError,
    Request,
    Response,
    SipError,
    Via,
    make_ack_for_failure,
    make_cancel,
    make_request,
    make_response,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
)
from telephony.sip.headers import quote
from telephony.sip.message import reason_phrase
from tests.vectors import load_vector, vector_names

VALID = [n for n in vector_names("sip", "*.sip") if not n.startswith("sip/bad-")]
# vectors written the way we write messages ("Name: value", one line each): serialization must
# give back the very same bytes
VERBATIM = [
    "sip/180-ringing.sip",
    "sip/401-digest.sip",
    "sip/487-terminated.sip",
    "sip/911-invite-tel-ruri.sip",
    "sip/ack-2xx.sip",
    "sip/bye.sip",
    "sip/cancel.sip",
    "sip/notify-sipfrag-terminated.sip",
    "sip/notify-sipfrag.sip",
    "sip/options.sip",
    "sip/refer-compact.sip",
    "sip/refer-replaces.sip",
    "sip/register-star.sip",
    "sip/torture-bcast.sip",
    "sip/torture-intmeth.sip",
    "sip/torture-ipv6.sip",
    "sip/torture-longreq.sip",
    "sip/torture-mpart01.sip",
    "sip/torture-noreason.sip",
    "sip/torture-transports.sip",
    "sip/torture-unreason.sip",
]


def _without_length(headers: Headers) -> list[tuple[str, str]]:
    return [(n, v) for n, v in headers if n.lower() not in ("content-length", "l")]


def reparsed(msg: Request | Response) -> Request | Response:
    """``msg`` serialized and parsed again; checked equal to ``msg`` but for the Content-Length
    line that serialization adds to a message built without one."""
    again = parse_message(msg.to_bytes())
    assert type(again) is type(msg)
    assert again.start_line() == msg.start_line()
    assert _without_length(again.headers) == _without_length(msg.headers)
    assert again.body == msg.body
    assert again.content_length == len(msg.body)
    return again


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", VALID)
def test_round_trip_of_every_valid_vector(name: str) -> None:
    first = parse_message(load_vector(name))
    wire = first.to_bytes()
    second = parse_message(wire)
    if first.content_length is not None:
        assert second == first  # parse(serialize(parse(v))) == parse(v)
    else:  # serialization adds the Content-Length a UDP sender may leave out
        assert _without_length(second.headers) == _without_length(first.headers)
        assert second.content_length == len(first.body)
        assert second.body == first.body
    assert second.to_bytes() == wire  # and from then on it is a fixed point
    assert bytes(second) == wire


@pytest.mark.parametrize("name", VERBATIM)
def test_serialization_is_byte_exact_for_plainly_written_vectors(name: str) -> None:
    data = load_vector(name)
    assert parse_message(data).to_bytes() == data


def test_serialization_normalizes_what_we_read_liberally() -> None:
    m = parse_message(load_vector("sip/torture-wsinv.sip"))
    out = m.to_bytes()
    assert out.startswith(b"INVITE sip:dispatch@psap.example.net;oddparam SIP/2.0\r\nTO: ")
    assert b"\r\nOddHeaderName: one value folded onto two lines\r\n" in out
    assert b"\r\ns: \r\n" in out
    assert f"\r\nContent-Length: {len(m.body)}\r\n".encode() in out
    assert b"\r\ncseq: 0009 INVITE\r\n" in out
    assert parse_message(out).via == m.via


# ---------------------------------------------------------------------------- Content-Length


def _request(*extra: tuple[str, str], body: bytes = b"") -> Request:
    return Request(
        "MESSAGE",
        parse_uri("sip:988@crisis.example.org"),
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKm1"),
            ("From", "<sip:psap@psap.example.net>;tag=1"),
            ("To", "<sip:988@crisis.example.org>"),
            ("Call-ID", "m1@192.0.2.1"),
            ("CSeq", "1 MESSAGE"),
            *extra,
        ],
        body,
    )


def test_content_length_is_always_written_and_matches_the_body() -> None:
    m = _request(body=b"hello")
    assert m.to_bytes().endswith(b"CSeq: 1 MESSAGE\r\nContent-Length: 5\r\n\r\nhello")
    wrong = _request(("l", "99"), ("Subject", "x"), body=b"hi")
    assert b"\r\nl: 2\r\nSubject: x\r\n\r\nhi" in wrong.to_bytes()
    twice = _request(("Content-Length", "1"), ("Content-Length", "2"), body=b"abc")
    assert twice.to_bytes().count(b"Content-Length") == 1
    assert parse_message(twice.to_bytes()).body == b"abc"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Subject", "a\r\nX-Forged: 1"),
        ("Subject", "a\nb"),
        ("Subject", "a\rb"),
        ("X\r\nY", "1"),
        ("X-Forged: 1\r\nSubject", "1"),
        ("Subject:", "x"),
        ("", "x"),
    ],
)
def test_header_injection_is_refused(name: str, value: str) -> None:
    with pytest.raises(SipError) as exc:
        _request((name, value))
    assert exc.value.side == "local"
    assert exc.value.status == 500
    assert not isinstance(exc.value, ParseError)
    m = _request()
    with pytest.raises(SipError):
        m.headers.add(name, value)
    with pytest.raises(SipError):
        m.headers.set(name or "Subject", value if name else "a\nb")
    assert parse_message(m.to_bytes()) is not None


def test_start_line_injection_is_refused() -> None:
    bad_reason = Response(200, "OK\r\nX: 1", [("Via", "SIP/2.0/UDP h")])
    with pytest.raises(SipError):
        bad_reason.to_bytes()
    bad_method = _request()
    bad_method.method = "MESSAGE\n"
    with pytest.raises(SipError):
        bad_method.to_bytes()


# ----------------------------------------------------------------------------------- Headers


def test_headers_lookup_ignores_case_and_compact_forms() -> None:
    h = Headers([("v", "SIP/2.0/UDP a"), ("Via", "SIP/2.0/UDP b, SIP/2.0/UDP c"), ("f", "x")])
    assert "VIA" in h and "from" in h and "F" in h
    assert "to" not in h
    assert 3 not in h
    assert h.get("via") == "SIP/2.0/UDP a"
    assert h.get("to") is None
    assert h.get("to", "dflt") == "dflt"
    assert h.get_all("V") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b, SIP/2.0/UDP c"]
    assert h.values("via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert h.values("from") == ["x"]  # not a list header
    assert len(h) == 3
    assert next(iter(h)) == ("v", "SIP/2.0/UDP a")
    assert "Headers(" in repr(h)


def test_headers_mutation() -> None:
    h = Headers([("Via", "a"), ("To", "t"), ("Via", "b, c")])
    h.add("Via", "top", first=True)
    assert h.get_all("via") == ["top", "a", "b, c"]
    h.add("Subject", "s")
    assert list(h)[-1] == ("Subject", "s")
    assert h.pop_first("via") == "top"
    assert h.pop_first("via") == "a"
    assert h.pop_first("via") == "b"
    assert h.get_all("via") == ["c"]
    assert h.pop_first("route") is None
    h.set("to", "t2")
    assert next(iter(h)) == ("To", "t2")
    h.add("to", "t3")
    h.set("TO", "t4")
    assert h.get_all("to") == ["t4"]
    h.set("call-id", "new")
    assert list(h)[-1] == ("Call-ID", "new")
    assert h.remove("via") == 1
    assert h.remove("via") == 0
    assert "via" not in h
    copy = h.copy()
    copy.add("X", "1")
    assert "x" not in h
    assert copy != h
    assert Headers(list(h)) == h
    with pytest.raises(TypeError):
        hash(h)


def test_typed_cache_follows_header_changes() -> None:
    m = parse_message(load_vector("sip/options.sip"))
    assert m.max_forwards == 70
    assert m.cseq.seq == 1
    m.headers.set("Max-Forwards", "69")
    m.headers.set("CSeq", "2 OPTIONS")
    assert m.max_forwards == 69
    assert m.cseq == CSeq(2, "OPTIONS")
    top = m.top_via
    m.headers.add("Via", "SIP/2.0/TCP 198.51.100.20;branch=z9hG4bKnew", first=True)
    assert m.top_via.branch == "z9hG4bKnew"
    assert m.via[1] == top
    m.headers.pop_first("via")
    assert m.top_via == top
    m.headers.remove("max-forwards")
    assert getattr(m, "max_forwards") is None  # noqa: B009 - no narrowing across mutations
    m.headers.set("Max-Forwards", "lots")
    with pytest.raises(ParseError):
        _ = m.max_forwards


def test_missing_required_headers_raise_parse_error() -> None:
    m = Request("OPTIONS", parse_uri("sip:a@b"))
    for name in ("top_via", "call_id", "cseq", "from_", "to"):
        with pytest.raises(ParseError) as exc:
            getattr(m, name)
        assert exc.value.status == 400
    assert m.via == []
    assert m.contact == []
    assert m.max_forwards is None
    assert m.content_length is None
    assert m.content_type is None
    r = Response(200)
    with pytest.raises(ParseError):
        _ = r.method
    m.headers.set("Call-ID", "   ")
    with pytest.raises(ParseError):
        _ = m.call_id


def test_content_type_is_lower_cased_with_params_kept() -> None:
    m = _request(("Content-Type", "Application/SDP ; charset=UTF-8"))
    ct = m.content_type
    assert ct is not None
    assert ct.value == "application/sdp"
    assert ct.param("charset") == "UTF-8"
    for bad in ("sdp", "/sdp", "application/", ""):
        with pytest.raises(ParseError):
            _ = _request(("Content-Type", bad)).content_type


def test_empty_list_headers() -> None:
    m = _request(("Supported", ""), ("Allow", " "), ("Require", "100rel"), ("Require", "timer"))
    assert m.supported == []
    assert m.allow == []
    assert m.require == ["100rel", "timer"]


# ------------------------------------------------------------------------- equality and misc


def test_equality_and_repr() -> None:
    a = parse_message(load_vector("sip/options.sip"))
    b = parse_message(load_vector("sip/options.sip"))
    assert a == b
    assert a != parse_message(load_vector("sip/bye.sip"))
    assert a != "OPTIONS"
    assert repr(a) == "<Request OPTIONS sip:988@crisis.example.org>"
    r = parse_message(load_vector("sip/180-ringing.sip"))
    assert repr(r) == "<Response 180 Ringing>"
    assert r == parse_message(load_vector("sip/180-ringing.sip"))
    assert r != a
    b.body = b"x"
    assert a != b
    with pytest.raises(TypeError):
        hash(a)


def test_reason_phrases() -> None:
    assert reason_phrase(200) == "OK"
    assert reason_phrase(487) == "Request Terminated"
    assert reason_phrase(299) == "OK"  # unknown codes read as x00 (RFC 3261 §21)
    assert Response(503).reason == "Service Unavailable"
    assert Response(503, "").reason == ""
    assert Response(183, "Session Progress").start_line() == "SIP/2.0 183 Session Progress"


# ----------------------------------------------------------------------------------- builders

INVITE = parse_message(load_vector("sip/911-invite-multipart.sip"))
assert isinstance(INVITE, Request)


def test_make_response() -> None:
    inv = INVITE
    assert isinstance(inv, Request)
    ringing = make_response(inv, 180, to_tag="a6c85cf", headers=[("Contact", "<sip:c@h>")])
    assert (ringing.status, ringing.reason) == (180, "Ringing")
    assert ringing.to.tag == "a6c85cf"
    assert ringing.via == inv.via
    assert ringing.headers.get_all("via") == inv.headers.get_all("via")
    assert (ringing.from_, ringing.call_id, ringing.cseq) == (inv.from_, inv.call_id, inv.cseq)
    assert ringing.method == "INVITE"
    assert ringing.contact[0].uri.user == "c"
    reparsed(ringing)
    trying = make_response(inv, 100, to_tag="x")
    assert trying.to.tag is None  # no tag on 100 Trying
    tagged = parse_message(load_vector("sip/bye.sip"))
    assert isinstance(tagged, Request)
    assert make_response(tagged, 200, to_tag="other").to.tag == "1928301774"  # keeps its tag
    custom = make_response(tagged, 480, "Counselors Busy", body=b"x")
    assert custom.reason == "Counselors Busy"
    assert reparsed(custom).body == b"x"


def test_make_response_echoes_timestamp_on_100() -> None:
    opts = parse_message(load_vector("sip/options.sip"))
    assert isinstance(opts, Request)
    opts.headers.add("Timestamp", "54.1 0.3")
    assert make_response(opts, 100).headers.get("timestamp") == "54.1 0.3"
    assert make_response(opts, 200).headers.get("timestamp") is None


def test_make_request_cancel_and_ack() -> None:
    via = Via("UDP", "198.51.100.20", 5060, (("branch", "z9hG4bKnew1"), ("rport", None)))
    frm = NameAddr(parse_uri("sip:handoff@198.51.100.20"), "PSAP Transfer", (("tag", "f1"),))
    to = NameAddr(parse_uri("tel:+18002738255"))
    route = [parse_name_addr("<sip:p1.crisis.example.org;lr>")]
    m = make_request(
        "INVITE",
        parse_uri("sip:988@crisis.example.org"),
        via=via,
        from_=frm,
        to=to,
        call_id="new-1@198.51.100.20",
        cseq=7,
        contact=NameAddr(parse_uri("sip:handoff@198.51.100.20:5060")),
        route=route,
        headers=[("Supported", "replaces")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    parsed = reparsed(m)
    assert isinstance(parsed, Request)
    assert [n for n, _ in parsed.headers][:6] == [
        "Via",
        "Route",
        "Max-Forwards",
        "From",
        "To",
        "Call-ID",
    ]
    assert parsed.top_via == via
    assert parsed.from_ == frm
    assert parsed.to == to
    assert parsed.cseq == CSeq(7, "INVITE")
    assert parsed.max_forwards == 70
    assert parsed.route == route
    assert parsed.content_type is not None and parsed.content_type.value == "application/sdp"

    cancel = make_cancel(parsed)
    assert cancel.method == "CANCEL"
    assert str(cancel.uri) == str(parsed.uri)
    assert cancel.top_via.branch == "z9hG4bKnew1"
    assert cancel.cseq == CSeq(7, "CANCEL")
    assert cancel.route == route
    reparsed(cancel)

    busy = make_response(parsed, 486, to_tag="t9")
    ack = make_ack_for_failure(parsed, busy)
    assert ack.cseq == CSeq(7, "ACK")
    assert ack.to.tag == "t9"
    assert ack.top_via.branch == "z9hG4bKnew1"
    assert ack.from_ == frm
    reparsed(ack)


# --------------------------------------------------------------- generated valid messages

_token = st.text("abcdefXYZ0123456789-.!%*_+`'~", min_size=1, max_size=10)
_method = st.one_of(
    st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REFER", "NOTIFY", "REGISTER"]),
    _token,
)
_host = st.sampled_from(
    ["crisis.example.org", "127.0.0.1", "[::1]", "[2001:db8::10]", "psap.example.net"]
)
_user = st.text("abc0123456789+-_.!~*'()&=$,%", min_size=1, max_size=12)
_uri_token = st.text("abcdefXYZ0123456789-_.!~*'()", min_size=1, max_size=10)
_uri = st.builds(
    lambda scheme, user, host, port, params: URI(scheme, user, None, host, port, params),
    st.sampled_from(["sip", "sips"]),
    st.one_of(st.none(), _user),
    _host,
    st.one_of(st.none(), st.integers(1, 65535)),
    st.lists(
        st.tuples(_uri_token.map(str.lower), st.one_of(st.none(), _uri_token)), max_size=3
    ).map(tuple),
)
_display = st.one_of(
    st.none(),
    st.text(
        st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\u2028\u2029"),
        min_size=1,
        max_size=15,
    ),
)
_gen_value = st.one_of(st.none(), _token, st.text("ab ;,<>=@", max_size=8).map(quote))
_params = st.lists(st.tuples(_token.map(str.lower), _gen_value), max_size=3).map(tuple)
_name_addr = st.builds(NameAddr, _uri, _display, _params)
_via = st.builds(
    Via,
    st.sampled_from(["UDP", "TCP", "TLS", "WS"]),
    _host,
    st.one_of(st.none(), st.integers(1, 65535)),
    st.tuples(_token, _params).map(lambda t: (("branch", "z9hG4bK" + t[0]), *t[1])),
)
_extra_value = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\u2028\u2029\x85"),
    max_size=30,
).map(str.strip)


@st.composite
def messages(draw: st.DrawFn) -> Request | Response:
    method = draw(_method)
    vias = draw(st.lists(_via, min_size=1, max_size=3))
    headers: list[tuple[str, str]] = []
    if draw(st.booleans()):
        headers.append(("Via", ", ".join(str(v) for v in vias)))
    else:
        headers += [(draw(st.sampled_from(["Via", "v"])), str(v)) for v in vias]
    headers += [
        (draw(st.sampled_from(["From", "f"])), str(draw(_name_addr))),
        (draw(st.sampled_from(["To", "t"])), str(draw(_name_addr))),
        (draw(st.sampled_from(["Call-ID", "i"])), draw(_token) + "@" + draw(_token)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ]
    for _ in range(draw(st.integers(0, 4))):
        headers.append(("X-" + draw(_token), draw(_extra_value)))
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["Contact", "Route", "Record-Route", "P-Asserted-Identity"]))
        headers.append(
            (kind, ", ".join(str(a) for a in draw(st.lists(_name_addr, min_size=1, max_size=3))))
        )
    body = draw(st.binary(max_size=40))
    headers.insert(draw(st.integers(5, len(headers))), ("Content-Length", str(len(body))))
    if draw(st.booleans()):
        return Request(method, draw(_uri), headers, body)
    status = draw(st.integers(100, 699))
    return Response(status, draw(st.one_of(st.none(), _extra_value)), headers, body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages_round_trip(msg: Request | Response) -> None:
    wire = msg.to_bytes()
    parsed = parse_message(wire)
    assert parsed == msg
    assert parse_message(parsed.to_bytes()) == parsed
    # typed values equal what was built
    assert [str(v) for v in parsed.via] == [str(parse_via(v)) for v in msg.headers.values("via")]
    assert parsed.from_ == parse_name_addr(msg.headers.get("from") or "")
    assert parsed.content_length == len(msg.body)
    for name in ("contact", "route", "record_route", "p_asserted_identity"):
        getattr(parsed, name)
