"""Bytes to messages: datagrams (parse_message), streams (StreamParser), typed accessors.

Vectors live in tests/vectors/sip/: ``bad-*.sip`` must be rejected with the status listed in
``BAD``; every other file must parse. Most are RFC 4475 ("SIP Torture Test Messages") cases
rewritten for this project (``torture-*``), the rest realistic 911/988 traffic.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.sip import (
    URI,
    KeepAlive,
    Message,
    ParseError,
    Request,
    Response,
    StreamParser,
    parse_message,
    parse_uri,
)
from telephony.sip import parser as parser_module
from telephony.sip.headers import split_list
from telephony.sip.uri import unescape
from tests.vectors import load_vector, vector_names

ALL = vector_names("sip", "*.sip")
BAD_FILES = vector_names("sip", "bad-*.sip")
VALID = [n for n in ALL if n not in BAD_FILES]

# expected (status, words in the reason) for every invalid vector
BAD: dict[str, tuple[int, str]] = {
    "sip/bad-baddn.sip": (400, "display name"),
    "sip/bad-badinv01.sip": (400, "Via"),
    "sip/bad-badvers-response.sip": (505, "version"),
    "sip/bad-badvers.sip": (505, "version"),
    "sip/bad-bigcode.sip": (400, "status line"),
    "sip/bad-callid-empty.sip": (400, "Call-ID"),
    "sip/bad-clerr.sip": (400, "Content-Length"),
    "sip/bad-content-length-word.sip": (400, "Content-Length"),
    "sip/bad-cseq-negative.sip": (400, "CSeq"),
    "sip/bad-cseq-no-method.sip": (400, "CSeq"),
    "sip/bad-cseq-nonnumeric.sip": (400, "CSeq"),
    "sip/bad-escruri.sip": (400, "Request-URI"),
    "sip/bad-fold-first.sip": (400, "continuation"),
    "sip/bad-from-no-gt.sip": (400, "'>'"),
    "sip/bad-header-no-colon.sip": (400, "':'"),
    "sip/bad-insuf.sip": (400, "missing"),
    "sip/bad-ipv6-unbracketed.sip": (400, "host"),
    "sip/bad-ltgtruri.sip": (400, "Request-URI"),
    "sip/bad-lwsruri.sip": (400, "request line"),
    "sip/bad-lwsstart.sip": (400, "request line"),
    "sip/bad-max-forwards-word.sip": (400, "Max-Forwards"),
    "sip/bad-mcl01.sip": (400, "Content-Length"),
    "sip/bad-mismatch01.sip": (400, "CSeq method"),
    "sip/bad-mismatch02.sip": (400, "CSeq method"),
    "sip/bad-multi01.sip": (400, "more than one"),
    "sip/bad-ncl.sip": (400, "Content-Length"),
    "sip/bad-no-cseq.sip": (400, "missing CSeq"),
    "sip/bad-no-via.sip": (400, "missing Via"),
    "sip/bad-not-sip.sip": (400, "request line"),
    "sip/bad-novelsc.sip": (416, "scheme"),
    "sip/bad-quotbal.sip": (400, "unterminated"),
    "sip/bad-ruri-too-long.sip": (414, "too long"),
    "sip/bad-scalar02.sip": (400, "CSeq"),
    "sip/bad-scalarlg.sip": (400, "CSeq"),
    "sip/bad-trws.sip": (400, "request line"),
    "sip/bad-unkscm.sip": (416, "scheme"),
    "sip/bad-via-garbage.sip": (400, "Via"),
}

ACCESSORS = (
    "via",
    "top_via",
    "call_id",
    "cseq",
    "from_",
    "to",
    "contact",
    "contact_is_star",
    "route",
    "record_route",
    "max_forwards",
    "content_type",
    "content_length",
    "refer_to",
    "referred_by",
    "replaces",
    "call_info",
    "geolocation",
    "p_asserted_identity",
    "history_info",
    "user_to_user",
    "event",
    "subscription_state",
    "require",
    "supported",
    "allow",
)


def v(name: str) -> bytes:
    return load_vector(f"sip/{name}")


def req(name: str) -> Request:
    msg = parse_message(v(name))
    assert isinstance(msg, Request)
    return msg


def resp(name: str) -> Response:
    msg = parse_message(v(name))
    assert isinstance(msg, Response)
    return msg


def touch(value: object) -> None:
    """Exercise the derived properties and str() of a typed value (they must not raise)."""
    if isinstance(value, list):
        for item in value:
            touch(item)
        return
    str(value)
    for attr in ("tag", "uri", "branch", "rport", "received", "sent_by", "is_rfc3261", "value"):
        if hasattr(value, attr):
            touch(getattr(value, attr))
    if isinstance(value, URI):
        _ = (value.transport, value.hostport, value.is_sip)


def access_all(msg: Message) -> dict[str, Any]:
    """Every typed accessor: its value, or the ParseError it raised (nothing else may escape)."""
    out: dict[str, Any] = {}
    names = ACCESSORS + (("method",) if isinstance(msg, Response) else ())
    for name in names:
        try:
            out[name] = value = getattr(msg, name)
        except ParseError as exc:
            assert exc.status == 400
            out[name] = exc
            continue
        touch(value)
    return out


def strip_length(msg: Message) -> list[tuple[str, str]]:
    return [(n, val) for n, val in msg.headers if n.lower() not in ("content-length", "l")]


def assert_same_message(a: Message, b: Message) -> None:
    """Equal up to the Content-Length line (which serialization always writes afresh)."""
    assert type(a) is type(b)
    assert a.start_line() == b.start_line()
    assert strip_length(a) == strip_length(b)
    assert a.body == b.body


# ------------------------------------------------------------------------------ vector files


def test_vector_tables_are_complete() -> None:
    assert len(VALID) >= 35
    assert sorted(BAD) == BAD_FILES
    for name in ALL:
        data = load_vector(name)
        head = data.split(b"\r\n\r\n", 1)[0]
        assert b"\r\n" in head, name
        assert b"\n" not in head.replace(b"\r\n", b""), f"{name}: bare LF in the head"


@pytest.mark.parametrize("name", VALID)
def test_valid_vector_parses(name: str) -> None:
    msg = parse_message(load_vector(name))
    values = access_all(msg)
    for required in ("via", "top_via", "call_id", "cseq", "from_", "to"):
        assert not isinstance(values[required], ParseError), required
    if isinstance(msg, Request):
        assert msg.cseq.method == msg.method


@pytest.mark.parametrize("name", sorted(BAD))
def test_invalid_vector_is_rejected(name: str) -> None:
    status, words = BAD[name]
    with pytest.raises(ParseError) as exc:
        parse_message(load_vector(name))
    assert exc.value.status == status
    assert words in exc.value.reason
    assert exc.value.side == "peer"


# ---------------------------------------------------------------------- torture (RFC 4475)


def test_wsinv_lws_everywhere() -> None:
    m = req("torture-wsinv.sip")
    assert m.method == "INVITE"
    assert m.uri == parse_uri("sip:dispatch@psap.example.net;oddparam")
    assert m.to.uri == parse_uri("sip:dispatch@psap.example.net")
    assert m.to.tag == "8321234356"
    assert m.from_.display_name == 'Line \\"'
    assert m.from_.tag == "09asjd8"
    assert m.max_forwards == 68
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert [(x.transport, x.host, x.branch) for x in m.via] == [
        ("UDP", "192.0.2.2", "z9hG4bKwsinv1"),
        ("TCP", "relay.example.com", "z9hG4bK9abc"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.top_via.has_rport
    assert m.headers.get("subject") == ""
    assert m.headers.get("oddheadername") == "one value folded onto two lines"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert [str(r.uri) for r in m.route] == ["sip:edge.example.com;lr;odd=value;flagonly"]
    (contact,) = m.contact
    assert contact.display_name == 'Quoted ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert m.content_type is not None and m.content_type.value == "application/sdp"
    assert m.content_length == len(m.body)
    assert m.body.startswith(b"v=0\r\n")


def test_intmeth_wide_range_of_valid_characters() -> None:
    m = req("torture-intmeth.sip")
    method = "!odd-Method0123456789_*+`.%~"
    assert m.method == method
    assert m.cseq.method == method
    assert m.uri.user == "1_odd.URI~(really!)&isn't+it$/odd?,/;;*"
    assert m.uri.password == "&pass+has=1,odd!*pa$$wo~d_(too)"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f <in quotes>"
    assert m.to.uri.user == "1_odd.URI~(really!)&isn't+it$/odd?,/;;*"
    assert m.from_.display_name == "word1~` word2'+_ word3*%!.-"
    assert m.from_.param("fromparam''~+*_!.-%") == '"\u0440\u0430\u0431\u043e\u0442\u0430"'
    assert m.from_.tag == "_tok~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.max_forwards == 255
    assert m.headers.get("oddHeader-!.%*+_`'~") == "\u5927\u505c\u96fb"


def test_esc01_escapes_kept_and_decodable() -> None:
    m = req("torture-esc01.sip")
    assert unescape(m.uri.user or "") == "sips:caller@example.com"
    assert unescape(m.to.uri.user or "") == "dispatch"
    assert unescape(m.from_.uri.user or "") == "I have spaces"
    assert m.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    (contact,) = m.contact
    assert contact.uri.params == (("%6c%72", None), ("n%61me", "v%61lue%25%34%31"))
    assert m.content_type is not None and m.content_type.value == "application/sdp"


def test_escnull_and_esc02() -> None:
    m = req("torture-escnull.sip")
    assert [c.uri.user for c in m.contact] == ["%00", "%00%00"]
    assert m.to.uri.user == "null-%00-null"
    assert m.content_length == 0
    e = req("torture-esc02.sip")
    assert e.method == "RE%47IST%45R"
    assert e.to.display_name == "%Z%45"
    # 'C%6Fntact' is an unknown header, not Contact
    assert [c.uri.host for c in e.contact] == ["host1.example.com", "host3.example.com"]
    assert e.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_semiuri_transports_zeromf() -> None:
    assert req("torture-lwsdisp.sip").from_.display_name == "caller"
    semi = req("torture-semiuri.sip")
    assert semi.uri.user == "user;par=u%40example.net"
    assert semi.uri.params == ()
    assert semi.headers.values("accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]
    t = req("torture-transports.sip")
    assert [x.transport for x in t.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert req("torture-zeromf.sip").max_forwards == 0


def test_longreq_long_values() -> None:
    m = req("torture-longreq.sip")
    assert m.uri.user == "x" * 1000
    assert m.to.display_name is not None and len(m.to.display_name) > 420
    assert m.from_.tag == "12982982" * 40
    assert len(m.via) == 33
    assert m.top_via.branch == "z9hG4bK" + "a" * 400
    assert len(split_list(m.headers.get("x-long-list") or "")) == 300
    assert m.content_length == len(m.body)


def test_dblreq_trailing_octets_are_ignored() -> None:
    data = v("torture-dblreq.sip")
    m = req("torture-dblreq.sip")
    assert m.method == "REGISTER"
    assert m.body == b""
    assert b"INVITE sip:joe@example.com" in data  # the ignored second request
    assert m.contact[0].uri == parse_uri("sip:j.user@host.example.com")


def test_mpart01_binary_body_is_exact() -> None:
    m = req("torture-mpart01.sip")
    ct = m.content_type
    assert ct is not None
    assert (ct.value, ct.param("boundary")) == ("multipart/mixed", "boundary42")
    assert bytes(range(256)) in m.body
    assert m.body.endswith(b"--boundary42--\r\n")
    assert len(m.body) == m.content_length


def test_reason_phrases() -> None:
    assert resp("torture-unreason.sip").reason == (
        "= 2**3 * 5**2 \u0432\u0441\u0451 \u0445\u043e\u0440\u043e\u0448\u043e \u2014 \u597d"
    )
    r = resp("torture-noreason.sip")
    assert (r.status, r.reason) == (100, "")
    assert r.method == "INVITE"


def test_unknown_schemes_in_headers_parse() -> None:
    m = req("torture-unksm2.sip")
    assert (m.to.uri.scheme, m.to.uri.opaque) == ("isbn", "2983792873")
    assert m.from_.uri.scheme == "http"
    assert m.from_.tag == "3234233"
    assert m.contact[0].uri.scheme == "name"


def test_regescrt_and_regbadct_contacts() -> None:
    ok = req("torture-regescrt.sip")
    assert ok.contact[0].uri.header("Route") == "%3Csip:sip.example.com%3E"
    bad = req("torture-regbadct.sip")  # the message parses; its Contact does not
    with pytest.raises(ParseError) as exc:
        _ = bad.contact
    assert exc.value.status == 400


def test_liberal_reading_of_badaspec_and_baddate() -> None:
    m = req("torture-badaspec.sip")
    assert m.to.display_name == "Watson, Thomas"
    assert m.to.uri == parse_uri("sip:t.watson@example.org")
    assert m.from_.display_name == "Bell, Alexander"
    d = req("torture-baddate.sip")
    assert d.headers.get("date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert d.content_type is not None and d.content_type.value == "application/unknownformat"


def test_inv2543_and_bcast() -> None:
    m = req("torture-inv2543.sip")
    assert m.top_via.branch is None
    assert not m.top_via.is_rfc3261
    assert m.from_.tag is None
    assert m.max_forwards is None
    b = resp("torture-bcast.sip")
    assert b.top_via.received == "255.255.255.255"
    assert len(b.via) == 2


def test_ipv6_references() -> None:
    m = req("torture-ipv6.sip")
    assert (m.uri.host, m.uri.port, m.uri.transport) == ("[2001:db8::10]", 5070, "udp")
    top, second = m.via
    assert (top.host, top.port, top.rport, top.received) == (
        "[2001:db8::9:1]",
        5060,
        5060,
        "2001:db8::9:255",
    )
    assert (second.host, second.port, second.received) == ("[::1]", None, "[::ffff:192.0.2.1]")
    assert m.to.uri.host == "[2001:db8::10]"  # lower-cased
    assert m.contact[0].uri.param("maddr") == "[2001:db8::9:1]"
    assert [(r.uri.host, r.uri.port) for r in m.record_route] == [
        ("[2001:db8::1]", 5060),
        ("[::1]", 5062),
    ]


# --------------------------------------------------------------------------- 911 / 988 traffic


def test_911_invite_metadata() -> None:
    m = req("911-invite-multipart.sip")
    assert m.uri == parse_uri("sip:988@127.0.0.1:5080;user=phone")
    assert m.from_.display_name == "911 Caller"
    pai = m.p_asserted_identity
    assert [str(p.uri) for p in pai] == ["sip:+18055550123@psap.example.net", "tel:+18055550123"]
    assert pai[0].display_name == "911 Caller"
    purposes = [(c.param("purpose"), c.uri.scheme) for c in m.call_info]
    assert purposes == [
        ("emergency-CallId", "urn"),
        ("emergency-IncidentId", "urn"),
        ("EmergencyCallData.SubscriberInfo", "https"),
    ]
    assert m.call_info[0].uri.opaque == "emergency:uid:callid:20261122a1b2c3:psap.example.net"
    hist = m.history_info
    assert [h.param("index") for h in hist] == ["1", "1.1", "1.1.1"]
    assert unescape(hist[1].uri.header("Reason") or "") == 'SIP;cause=302;text="Moved"'
    assert hist[2].uri.param("cause") == "302"
    assert hist[2].param("mp") == "1.1"
    (geo,) = m.geolocation
    assert (geo.uri.scheme, geo.uri.opaque) == ("cid", "target123@psap.example.net")
    assert m.headers.get("geolocation-routing") == "yes"
    (uui,) = m.user_to_user
    assert uui.value == "56a390f3d2b7310023a2"
    assert (uui.param("encoding"), uui.param("purpose"), uui.param("content")) == (
        "hex",
        "isdn-uui",
        "isdn-uui",
    )
    assert m.supported == ["replaces", "timer", "geolocation"]
    assert m.allow == ["INVITE", "ACK", "CANCEL", "BYE", "REFER", "NOTIFY", "OPTIONS"]
    assert m.require == []
    ct = m.content_type
    assert ct is not None
    assert (ct.value, ct.param("boundary")) == ("multipart/mixed", "unique-boundary-1")
    assert m.content_length == len(m.body)
    assert b"Content-ID: <target123@psap.example.net>" in m.body
    assert b"<gml:pos>34.4208 -119.6982</gml:pos>" in m.body
    assert m.body.endswith(b"--unique-boundary-1--\r\n")
    # absent optional headers
    assert (m.refer_to, m.referred_by, m.replaces, m.event, m.subscription_state) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert m.route == []
    assert m.record_route == []


def test_tel_request_uri() -> None:
    m = req("911-invite-tel-ruri.sip")
    assert (m.uri.scheme, m.uri.user, m.uri.param("phone-context")) == (
        "tel",
        "+18002738255",
        "+1",
    )
    assert m.to.uri == m.uri
    assert m.p_asserted_identity[0].uri.param("ext") == "12"
    assert m.referred_by is not None and m.referred_by.uri.user == "psap"
    assert m.top_via.transport == "TCP"


def test_refer_with_embedded_replaces() -> None:
    m = req("refer-replaces.sip")
    refer_to = m.refer_to
    assert refer_to is not None
    assert refer_to.uri.host == "crisis.example.org"
    assert refer_to.uri.headers[1] == ("X-Transfer", "warm")
    embedded = unescape(refer_to.uri.header("replaces") or "")
    assert embedded == "consult-77@198.51.100.20;to-tag=c9;from-tag=b2b-3"
    by = m.referred_by
    assert by is not None
    assert (by.display_name, by.uri.user, by.param("cid")) == (
        "PSAP",
        "dispatch7",
        '"<4@psap.example.net>"',
    )
    assert m.supported == ["replaces", "norefersub"]


def test_replaces_header() -> None:
    data = v("options.sip").replace(
        b"Content-Length",
        b"Replaces: consult-77@198.51.100.20;to-tag=c9;from-tag=b2b-3;early-only\r\nContent-Length",
    )
    rep = parse_message(data).replaces
    assert rep is not None
    assert rep.value == "consult-77@198.51.100.20"
    assert (rep.param("to-tag"), rep.param("from-tag"), rep.has_param("early-only")) == (
        "c9",
        "b2b-3",
        True,
    )


def test_refer_compact_forms() -> None:
    m = req("refer-compact.sip")
    assert m.refer_to is not None and str(m.refer_to.uri) == "sip:988@crisis.example.org"
    assert m.referred_by is not None and m.referred_by.uri.user == "dispatch7"
    assert m.call_id == "leg-a-5522@192.0.2.44"
    assert m.contact[0].uri.transport == "tcp"
    assert m.supported == ["replaces"]
    assert m.headers.values("allow-events") == ["refer", "dialog"]
    assert m.event is not None and m.event.value == "refer"
    assert m.headers.get("subject") == "blind transfer to 988"
    assert m.headers.get("session-expires") == "1800;refresher=uac"
    assert m.content_type is not None and m.content_type.value == "text/plain"
    assert m.content_length == len(m.body) == 17
    assert m.headers.get("content-encoding") == "identity"


def test_notify_sipfrag() -> None:
    m = req("notify-sipfrag.sip")
    assert m.event is not None
    assert (m.event.value, m.event.param("id")) == ("refer", "102")
    state = m.subscription_state
    assert state is not None and (state.value, state.param("expires")) == ("active", "60")
    ct = m.content_type
    assert ct is not None and (ct.value, ct.param("version")) == ("message/sipfrag", "2.0")
    assert m.body == b"SIP/2.0 180 Ringing\r\n"
    done = req("notify-sipfrag-terminated.sip")
    assert done.event is not None and done.event.param("id") == "102"
    assert done.subscription_state is not None
    assert done.subscription_state.param("reason") == "noresource"
    assert done.body == b"SIP/2.0 200 OK\r\n"


def test_responses() -> None:
    ringing = resp("180-ringing.sip")
    assert (ringing.status, ringing.reason, ringing.method) == (180, "Ringing", "INVITE")
    assert ringing.to.tag == "a6c85cf"
    assert ringing.top_via.rport == 5060
    assert ringing.top_via.received == "127.0.0.1"
    ok = resp("200-ok-record-route.sip")
    assert [str(r.uri) for r in ok.record_route] == [
        "sip:p3.crisis.example.org;lr",
        "sip:p2.crisis.example.org;lr",
        "sip:p1.crisis.example.org:5070;lr;transport=tcp",
        "sips:edge.crisis.example.org;lr",
    ]
    assert ok.require == ["timer"]
    assert ok.supported == ["100rel", "timer", "replaces"]
    assert "UPDATE" in ok.allow
    assert ok.to.tag == "314159"
    assert len(ok.via) == 2
    unauth = resp("401-digest.sip")
    # WWW-Authenticate is not a list header: its commas do not split it
    assert len(unauth.headers.values("www-authenticate")) == 2
    assert resp("487-terminated.sip").headers.values("reason") == [
        'SIP;cause=487;text="Call completed elsewhere"',
        "Q.850;cause=16",
    ]


def test_register_contacts() -> None:
    m = req("register.sip")
    contacts = m.contact
    assert [c.param("expires") for c in contacts] == ["3600", "60", "0"]
    assert contacts[0].param("+sip.instance") == '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    assert contacts[0].param("q") == "0.8"
    assert contacts[1].uri.host == "[2001:db8::44]"
    assert contacts[2].uri.params == ()  # addr-spec: ;expires is a header param
    assert not m.contact_is_star
    star = req("register-star.sip")
    assert star.contact_is_star
    assert star.contact == []
    assert star.headers.get("expires") == "0"


def test_cancel_ack_bye_options() -> None:
    cancel = req("cancel.sip")
    assert cancel.cseq.method == "CANCEL"
    assert cancel.top_via.branch == "z9hG4bK776asdhds"
    ack = req("ack-2xx.sip")
    assert [str(r.uri) for r in ack.route] == [
        "sips:edge.crisis.example.org;lr",
        "sip:p1.crisis.example.org:5070;lr;transport=tcp",
        "sip:p2.crisis.example.org;lr",
    ]
    assert req("bye.sip").headers.get("reason") == 'Q.850;cause=16;text="Normal call clearing"'
    opts = req("options.sip")
    assert opts.headers.values("accept") == ["application/sdp"]
    assert opts.content_length == 0
    assert opts.body == b""


# -------------------------------------------------------------------------- datagram framing

HEAD = (
    "OPTIONS sip:988@crisis.example.org SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKframe\r\n"
    "From: <sip:a@psap.example.net>;tag=1\r\n"
    "To: <sip:988@crisis.example.org>\r\n"
    "Call-ID: frame@192.0.2.1\r\n"
    "CSeq: 1 OPTIONS\r\n"
)


def build(
    extra: str = "", *, body: bytes = b"", length: int | None = -1, start: str | None = None
) -> bytes:
    head = HEAD if start is None else start + "\r\n" + HEAD.split("\r\n", 1)[1]
    if length == -1:
        length = len(body)
    if length is not None:
        extra += f"Content-Length: {length}\r\n"
    return (head + extra + "\r\n").encode() + body


def test_trailing_octets_after_content_length_are_ignored() -> None:
    m = parse_message(build(body=b"hello", length=3) + b"garbage\x00\xff")
    assert m.body == b"hel"


def test_body_shorter_than_content_length_is_400() -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(build(body=b"hi", length=3))
    assert exc.value.status == 400


def test_without_content_length_the_body_is_the_rest_of_the_datagram() -> None:
    m = req("udp-no-content-length.sip")
    assert m.body == b"caller requests a counselor\r\n"
    assert m.content_length is None
    # no blank line at all: headers only
    headers_only = build(length=None).rstrip(b"\r\n")
    assert parse_message(headers_only).body == b""
    assert parse_message(build(length=0).rstrip(b"\r\n")).content_length == 0
    with pytest.raises(ParseError):
        parse_message(build(length=4).rstrip(b"\r\n"))


def test_leading_crlfs_are_skipped() -> None:
    assert parse_message(b"\r\n\r\n\r\n" + build()) == parse_message(build())
    assert parse_message(b"\n\r\n" + build()) == parse_message(build())


def test_bare_lf_is_tolerated_and_the_head_ends_at_the_first_empty_line() -> None:
    crlf = build(body=b"a\r\n\r\nb")
    lf = crlf.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n") + b"\n\na\r\n\r\nb"
    assert parse_message(lf) == parse_message(crlf)
    assert parse_message(lf).body == b"a\r\n\r\nb"


def test_stray_cr_in_the_head_is_400() -> None:
    data = build("Subject: a\rb\n").replace(b"\r\n", b"\n")
    with pytest.raises(ParseError) as exc:
        parse_message(data)
    assert exc.value.status == 400
    with pytest.raises(ParseError):
        parse_message(build("Subject: a\r\r\n"))


def test_too_large_datagram_is_513() -> None:
    data = build(body=b"x" * 70000)
    with pytest.raises(ParseError) as exc:
        parse_message(data)
    assert exc.value.status == 513
    assert parse_message(data, max_size=80000).body == b"x" * 70000
    with pytest.raises(ParseError) as small:
        parse_message(build(), max_size=100)
    assert small.value.status == 513


@pytest.mark.parametrize(
    ("start", "status"),
    [
        ("OPTIONS sip:988@crisis.example.org SIP/3.0", 505),
        ("OPTIONS sip:988@crisis.example.org SIP/2.1", 505),
        ("OPTIONS sip:988@crisis.example.org HTTP/1.1", 400),
        ("OPTIONS mailto:988@crisis.example.org SIP/2.0", 416),
        ("OPTIONS urn:service:counseling SIP/2.0", 416),
        ("OPTIONS h323:988@crisis.example.org SIP/2.0", 416),
        ("OPTIONS !!:x SIP/2.0", 400),
        ("OPTIONS :x SIP/2.0", 400),
        ("OPTIONS 988 SIP/2.0", 400),
        ("OPTIONS sip:" + "9" * 4093 + " SIP/2.0", 414),
        ("OPTIONS sip:a@b SIP/2.0 extra", 400),
        ("OPT,IONS sip:a@b SIP/2.0", 400),
        ("", 400),
        ("SIP/2.0 099 Low", 400),
        ("SIP/2.0 700 High", 400),
        ("SIP/2.0 20 OK", 400),
        ("SIP/2.0 200OK", 400),
        ("SIP/\u0662.0 200 OK", 400),
        ("SIP/1.0 200 OK", 505),
    ],
)
def test_start_line_errors(start: str, status: int) -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(build(start=start))
    assert exc.value.status == status
    assert exc.value.reason


def test_request_uri_at_the_length_limit_parses() -> None:
    uri = "sip:" + "9" * 4088 + "@a.b"
    assert len(uri) == parser_module.MAX_URI_LENGTH
    m = parse_message(build(start=f"OPTIONS {uri} SIP/2.0"))
    assert isinstance(m, Request) and str(m.uri) == uri


def test_version_and_scheme_errors_win_over_broken_headers() -> None:
    broken = "Max-Forwards: many\r\nno colon here\r\n"
    with pytest.raises(ParseError) as exc:
        parse_message(build(broken, start="OPTIONS sip:a@b SIP/3.0"))
    assert exc.value.status == 505
    with pytest.raises(ParseError) as exc2:
        parse_message(build(broken, start="OPTIONS soap.beep://x SIP/2.0"))
    assert exc2.value.status == 416


def test_lower_case_version_and_status_line_forms() -> None:
    m = parse_message(build(start="OPTIONS sip:988@crisis.example.org sip/2.0"))
    assert m.version == "SIP/2.0"
    r = parse_message(build(start="SIP/2.0 200"))
    assert isinstance(r, Response) and (r.status, r.reason) == (200, "")
    r2 = parse_message(build(start="SIP/2.0 699 Some  words  "))
    assert isinstance(r2, Response) and (r2.status, r2.reason) == (699, "Some  words  ")


def test_header_unfolding_is_normalized() -> None:
    m = parse_message(
        build("Subject:\r\n   first\r\n\t second  \r\n \r\nX-Empty:\r\nX-Pad:   a b   \r\n")
    )
    assert m.headers.get("subject") == "first second"
    assert m.headers.get("x-empty") == ""
    assert m.headers.get("x-pad") == "a b"


def test_header_names() -> None:
    m = parse_message(build("X-Odd  : 1\r\nx-odd: 2\r\n"))
    assert m.headers.get_all("X-ODD") == ["1", "2"]
    assert [n for n, _ in m.headers][-3:-1] == ["X-Odd", "x-odd"]
    for bad in ("X Odd: 1\r\n", ": 1\r\n", "X\u00e9: 1\r\n", "X-Odd\x00: 1\r\n"):
        with pytest.raises(ParseError):
            parse_message(build(bad))


def test_non_utf8_header_bytes_survive() -> None:
    data = build().replace(b"CSeq", b"X-Latin1: caf\xe9 \xff\r\nCSeq")
    m = parse_message(data)
    assert m.to_bytes() == data


@pytest.mark.parametrize(
    "extra",
    [
        "Call-ID: second@x\r\n",
        "i: second@x\r\n",
        "CSeq: 2 OPTIONS\r\n",
        "From: <sip:b@c>;tag=2\r\n",
        "t: <sip:d@e>\r\n",
        "Max-Forwards: 70\r\nMax-Forwards: 70\r\n",
        "l: 0\r\n",
    ],
)
def test_singleton_headers_may_not_repeat(extra: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(build(extra))
    assert "more than one" in exc.value.reason


@pytest.mark.parametrize("call_id", ["a b", "a,b", "caf\u00e9", "a\x00b", "a\x7fb"])
def test_bad_call_ids(call_id: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(build().replace(b"frame@192.0.2.1", call_id.encode()))
    assert "Call-ID" in exc.value.reason


@pytest.mark.parametrize("call_id", ["a@b@c", "@b", "abc==", "x#y|z", "intmeth.word%ZK-!.*_+'@w"])
def test_call_ids_are_read_liberally(call_id: str) -> None:
    assert parse_message(build().replace(b"frame@192.0.2.1", call_id.encode())).call_id == call_id


def test_buffers_other_than_bytes() -> None:
    data = build()
    assert parse_message(bytearray(data)) == parse_message(memoryview(data)) == parse_message(data)


@pytest.mark.parametrize(
    "value", ["\u00b2", "\u0667\u0660", "256", "-1", "1" * 11, "7 0", "0x10", ""]
)
def test_bad_max_forwards(value: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(build(f"Max-Forwards: {value}\r\n"))
    assert exc.value.status == 400


def test_max_forwards_with_leading_zeros() -> None:
    assert parse_message(build("Max-Forwards: 0000000070\r\n")).max_forwards == 70


@pytest.mark.parametrize("value", ["\u0661", "+1", "1 2", "0x1", "12345678901", ""])
def test_bad_content_length(value: str) -> None:
    with pytest.raises(ParseError):
        parse_message(build(f"Content-Length: {value}\r\n", length=None))


def test_rport_with_odd_digits_is_not_an_exception() -> None:
    data = build().replace(b"branch=z9hG4bKframe", "branch=z9hG4bKx;rport=\u00b2".encode())
    assert parse_message(data).top_via.rport is None
    huge = build().replace(b"branch=z9hG4bKframe", b"branch=z9hG4bKx;rport=" + b"9" * 5000)
    assert parse_message(huge).top_via.rport is None


def test_lazy_headers_raise_parse_error_only_when_read() -> None:
    m = parse_message(
        build(
            "Contact: <sip:a@b\r\nRoute: nonsense\r\nRefer-To: <\r\nEvent: ;x\r\n"
            "Content-Type: nonsense\r\nAllow: IN VITE\r\nSupported: a b\r\n"
            'Call-Info: "unbalanced <x>\r\nSubscription-State:\r\n'
        )
    )
    values = access_all(m)
    for name in (
        "contact",
        "route",
        "refer_to",
        "event",
        "content_type",
        "allow",
        "supported",
        "call_info",
        "subscription_state",
    ):
        assert isinstance(values[name], ParseError), name
    assert values["cseq"].seq == 1


def test_missing_required_headers_in_responses() -> None:
    data = (
        b"SIP/2.0 200 OK\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n"
        b"Call-ID: x@y\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    with pytest.raises(ParseError) as exc:
        parse_message(data)
    assert "Via" in exc.value.reason
    ok = parse_message(data.replace(b"From", b"Via: SIP/2.0/UDP h;branch=z9hG4bKq\r\nFrom"))
    assert isinstance(ok, Response) and ok.method == "INVITE"


def test_empty_and_garbage_datagrams() -> None:
    for data in (b"", b"\r\n", b"\r\n\r\n", b"\x00" * 10, b"\xff\xfe", b"INVITE", b"SIP/2.0"):
        with pytest.raises(ParseError):
            parse_message(data)


# ---------------------------------------------------------------------------------- streams


def _streamable(name: str) -> bool:
    data = load_vector(name)
    msg = parse_message(data)
    end = data.find(b"\r\n\r\n")
    return (
        msg.content_length is not None
        and not data.startswith(b"\r\n")
        and end + 4 + len(msg.body) == len(data)
    )


STREAMABLE = [n for n in VALID if _streamable(n)]


def test_streamable_vectors() -> None:
    assert len(STREAMABLE) >= len(VALID) - 2
    assert "sip/udp-no-content-length.sip" not in STREAMABLE
    assert "sip/torture-dblreq.sip" not in STREAMABLE


def test_stream_byte_by_byte() -> None:
    data = v("911-invite-multipart.sip")
    sp = StreamParser()
    events = []
    for i in range(len(data)):
        events += sp.feed(data[i : i + 1])
    assert events == [parse_message(data)]
    assert sp.buffered == 0


def test_stream_several_messages_and_keepalives_in_one_chunk() -> None:
    a, b = v("options.sip"), v("180-ringing.sip")
    events = StreamParser().feed(b"\r\n\r\n" + a + b"\r\n\r\n" + b + a + b"\r\n")
    assert events == [
        KeepAlive(),
        parse_message(a),
        KeepAlive(),
        parse_message(b),
        parse_message(a),
    ]


def test_stream_pong_and_lone_lf_are_skipped() -> None:
    a = v("options.sip")
    sp = StreamParser()
    assert sp.feed(b"\r\n") == []  # could be the start of a ping
    assert sp.feed(a) == [parse_message(a)]
    assert sp.feed(b"\n" + a) == [parse_message(a)]
    assert sp.feed(b"\r\n\r") == []
    assert sp.feed(b"\n") == [KeepAlive()]
    assert sp.buffered == 0


def test_stream_dblreq_yields_both_messages() -> None:
    events = StreamParser().feed(v("torture-dblreq.sip"))
    assert [type(e) for e in events] == [Request, Request]
    assert [e.method for e in events if isinstance(e, Request)] == ["REGISTER", "INVITE"]


def test_stream_missing_content_length_is_an_error() -> None:
    sp = StreamParser()
    with pytest.raises(ParseError) as exc:
        sp.feed(v("udp-no-content-length.sip"))
    assert "Content-Length" in exc.value.reason
    with pytest.raises(ParseError):
        sp.feed(v("options.sip"))  # framing is lost for good


@pytest.mark.parametrize("junk", [b"\rX", b"\r\n\rX", b"\r\r\n\r\n", b"\r\nX\r\n\r\n"])
def test_stream_stray_cr_is_an_error_not_a_stall(junk: bytes) -> None:
    sp = StreamParser()
    with pytest.raises(ParseError):
        sp.feed(junk + v("options.sip"))


def test_stream_delivers_complete_messages_before_failing() -> None:
    a = v("options.sip")
    sp = StreamParser()
    assert sp.feed(a + b"GARBAGE\r\n\r\n") == [parse_message(a)]
    with pytest.raises(ParseError):
        sp.feed(b"")


def test_stream_size_limits() -> None:
    with pytest.raises(ParseError) as head:
        StreamParser(max_message=1000).feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 1000)
    assert head.value.status == 513
    big = build(body=b"x" * 2000)
    with pytest.raises(ParseError) as body:
        StreamParser(max_message=1000).feed(big)
    assert body.value.status == 413
    assert StreamParser(max_message=3000).feed(big) == [parse_message(big)]


def test_stream_parses_a_head_once_however_slowly_the_body_arrives() -> None:
    # the message parsed from the head is the one kept (not parsed again) until the body is in
    data = v("torture-mpart01.sip")
    sp = StreamParser()
    events = []
    pending = set()
    for i in range(0, len(data), 7):
        events += sp.feed(data[i : i + 7])
        if sp._pending is not None:
            pending.add(id(sp._pending[0]))
    assert events == [parse_message(data)]
    assert len(pending) == 1
    assert id(events[0]) in pending


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(
        st.one_of(st.sampled_from(STREAMABLE), st.just("ping")),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(1, 700), min_size=1, max_size=40),
)
def test_stream_random_chunks_give_the_same_messages(items: list[str], sizes: list[int]) -> None:
    stream = b"".join(b"\r\n\r\n" if n == "ping" else load_vector(n) for n in items)
    expected = [KeepAlive() if n == "ping" else parse_message(load_vector(n)) for n in items]
    sp = StreamParser()
    events: list[object] = []
    pos = 0
    i = 0
    while pos < len(stream):
        size = sizes[i % len(sizes)]
        events += sp.feed(stream[pos : pos + size])
        pos += size
        i += 1
    assert events == expected
    assert sp.buffered == 0


# ---------------------------------------------------------------------- fuzz / properties

_VALID_DATA = [load_vector(n) for n in VALID]
_FUZZ_ALPHABET = (
    b"\r\n \t:;,=<>\"'\\@?&%[]/.-+*0123456789abcSIPsip/2.0ViaFromToCSeqINVITEz9hG4bK\x00\xff"
)


def check_any(data: bytes) -> None:
    """parse_message gives a message or a ParseError; a message's accessors give values or
    ParseErrors; a message serializes, and its serialization parses back to the same message."""
    try:
        msg = parse_message(data)
    except ParseError as exc:
        assert exc.status in (400, 413, 414, 416, 505, 513)
        assert exc.reason
        return
    access_all(msg)
    again = parse_message(msg.to_bytes())
    assert_same_message(again, msg)
    assert parse_message(again.to_bytes()) == again


def check_stream(data: bytes, cut: int) -> None:
    sp = StreamParser()
    try:
        events = sp.feed(data[:cut]) + sp.feed(data[cut:])
    except ParseError:
        return
    for ev in events:
        if not isinstance(ev, KeepAlive):
            access_all(ev)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    check_any(data)
    check_stream(data, len(data) // 2)


_header_names = st.sampled_from(
    [
        "Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m", "Route",
        "Record-Route", "Max-Forwards", "Content-Type", "c", "Content-Length", "l", "Refer-To",
        "r", "Referred-By", "b", "Replaces", "Call-Info", "Geolocation", "P-Asserted-Identity",
        "History-Info", "User-to-User", "Event", "o", "Subscription-State", "Require",
        "Supported", "k", "Allow", "X-Other",
    ]
)  # fmt: skip
_header_values = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.lists(st.sampled_from(list(_FUZZ_ALPHABET)), max_size=60).map(bytes),
    st.sampled_from(
        [
            b"<sip:a@b>;tag=1",
            b'"x, y" <sip:a@[::1]:5060;lr>, sip:c@d;p=q',
            b"SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKa;rport=5",
            b"1 OPTIONS",
            b"70",
            b"refer;id=3",
            b"application/sdp",
            b"\xc2\xb2",
            b"*",
        ]
    ),
)


@st.composite
def sipish_messages(draw: st.DrawFn) -> bytes:
    """Mostly well-framed messages whose header values are random: reaches the lazy accessors."""
    base = draw(st.sampled_from(_VALID_DATA))
    head, sep, body = base.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for _ in range(draw(st.integers(0, 6))):
        line = draw(_header_names).encode() + b": " + draw(_header_values)
        lines.insert(draw(st.integers(1, len(lines))), line)
    if draw(st.booleans()) and len(lines) > 2:
        del lines[draw(st.integers(1, len(lines) - 1))]
    return b"\r\n".join(lines) + sep + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sipish_messages())
def test_random_header_values(data: bytes) -> None:
    check_any(data)


@st.composite
def mutated_vectors(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_VALID_DATA)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "replace"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[pos:pos] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=8), st.sampled_from(list(_FUZZ_ALPHABET))
                ).map(lambda x: x if isinstance(x, bytes) else bytes([x]))
            )
        elif kind == "truncate":
            del data[pos:]
        else:
            data[pos] = draw(st.sampled_from(list(_FUZZ_ALPHABET)))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_vectors(), st.integers(0, 2000))
def test_mutated_vectors(data: bytes, cut: int) -> None:
    check_any(data)
    check_stream(data, cut)


@pytest.mark.parametrize("name", [n for n in VALID if len(load_vector(n)) <= 700])
def test_every_truncation_of_a_small_vector(name: str) -> None:
    data = load_vector(name)
    for end in range(len(data)):
        check_any(data[:end])
