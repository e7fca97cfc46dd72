"""Header names and typed header values (RFC 3261 §7.3, §20, §25.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.sip import NameAddr, ParseError, Via, new_branch, new_tag, parse_name_addr, parse_via
from telephony.sip.headers import (
    BRANCH_COOKIE,
    CSeq,
    ParamValue,
    canonical,
    format_params,
    is_token,
    parse_cseq,
    parse_param_value,
    parse_params,
    pretty,
    quote,
    split_list,
    unquote,
)
from telephony.sip.uri import parse_uri

# ------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("v", "via"),
        ("V", "via"),
        ("VIA", "via"),
        ("f", "from"),
        ("t", "to"),
        ("i", "call-id"),
        ("m", "contact"),
        ("l", "content-length"),
        ("c", "content-type"),
        ("e", "content-encoding"),
        ("k", "supported"),
        ("s", "subject"),
        ("o", "event"),
        ("r", "refer-to"),
        ("b", "referred-by"),
        ("u", "allow-events"),
        ("x", "session-expires"),
        ("Call-ID", "call-id"),
        ("X-Unknown", "x-unknown"),
        ("q", "q"),  # not a compact form
    ],
)
def test_canonical(name: str, key: str) -> None:
    assert canonical(name) == key


def test_pretty() -> None:
    assert pretty("i") == "Call-ID"
    assert pretty("cseq") == "CSeq"
    assert pretty("WWW-AUTHENTICATE") == "WWW-Authenticate"
    assert pretty("user-to-user") == "User-to-User"
    assert pretty("p-asserted-identity") == "P-Asserted-Identity"
    assert pretty("record-route") == "Record-Route"
    assert pretty("x-incident-priority") == "X-Incident-Priority"


def test_is_token() -> None:
    assert is_token("!odd-Method0123456789_*+`.%~'")
    assert not is_token("")
    assert not is_token("a b")
    assert not is_token("a,b")
    assert not is_token("\u00e9")


# ------------------------------------------------------------------------------------- lists


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("INVITE, ACK,CANCEL ,BYE", ["INVITE", "ACK", "CANCEL", "BYE"]),
        ("a,,b, ,", ["a", "b"]),
        ("", []),
        (
            '"Doe, John" <sip:j@x>;tag=1, <sip:k@y>',
            ['"Doe, John" <sip:j@x>;tag=1', "<sip:k@y>"],
        ),
        ("<sip:a@b;x=1,2>;p=q, <sip:c@d>", ["<sip:a@b;x=1,2>;p=q", "<sip:c@d>"]),
        ('"a \\" , b" <sip:x@y>, <sip:z@w>', ['"a \\" , b" <sip:x@y>', "<sip:z@w>"]),
        ('"<, >" <sip:x@y>', ['"<, >" <sip:x@y>']),
        (
            '<sip:a@b>;+sip.instance="<urn:uuid:1>";expires=60, <sip:c@d>',
            ['<sip:a@b>;+sip.instance="<urn:uuid:1>";expires=60', "<sip:c@d>"],
        ),
    ],
)
def test_split_list(value: str, items: list[str]) -> None:
    assert split_list(value) == items


@pytest.mark.parametrize("value", ['"open, <sip:a@b>', "<sip:a@b, c", "a>, b", '<sip:"x>'])
def test_split_list_unbalanced(value: str) -> None:
    with pytest.raises(ParseError):
        split_list(value)


# -------------------------------------------------------------------------------- parameters


def test_parse_params() -> None:
    assert parse_params("") == ()
    assert parse_params(";tag=abc;LR;Expires=60") == (
        ("tag", "abc"),
        ("lr", None),
        ("expires", "60"),
    )
    # LWS around ';' and '=' (RFC 4475 wsinv)
    assert parse_params(" ;   tag    = 1918181833n ; flag ") == (
        ("tag", "1918181833n"),
        ("flag", None),
    )
    # quoted values keep their quotes and may hold ';' and escaped quotes
    assert parse_params(';text="a;b \\" c";x=1') == (("text", '"a;b \\" c"'), ("x", "1"))
    assert parse_params(";received=[2001:db8::1];rport") == (
        ("received", "[2001:db8::1]"),
        ("rport", None),
    )
    assert parse_params(";;a") == (("a", None),)


@pytest.mark.parametrize(
    "text",
    [
        "tag=1",  # no leading ';'
        ";bad name=1",
        ";=1",
        ";x=",
        ';x="unterminated',
        ';x="quoted"trailer',
        ';x=a"b;c"',
        ";x=a b",
        ";\u00e9=1",
    ],
)
def test_parse_params_malformed(text: str) -> None:
    with pytest.raises(ParseError):
        parse_params(text)


def test_format_params_round_trip() -> None:
    params = parse_params(';a=1;b;c="x y"')
    assert format_params(params) == ';a=1;b;c="x y"'
    assert parse_params(format_params(params)) == params


def test_quote_unquote() -> None:
    assert unquote('"a \\"b\\" \\\\ c"') == 'a "b" \\ c'
    assert unquote("plain") == "plain"
    assert unquote(quote('He said "hi" \\o/')) == 'He said "hi" \\o/'


# -------------------------------------------------------------------------------- name-addr


def test_name_addr_with_quoted_display_and_tag() -> None:
    na = parse_name_addr('"911 Caller" <sip:+18055550123@psap.example.net>;tag=1928301774')
    assert na.display_name == "911 Caller"
    assert na.uri == parse_uri("sip:+18055550123@psap.example.net")
    assert na.tag == "1928301774"
    assert na.param("TAG") == "1928301774"
    assert str(na) == '"911 Caller" <sip:+18055550123@psap.example.net>;tag=1928301774'


def test_addr_spec_params_belong_to_the_header() -> None:
    # RFC 3261 §20.10: in an addr-spec the parameters are header parameters
    na = parse_name_addr("sip:j.user@example.com;tag=43251j3j324")
    assert na.uri == parse_uri("sip:j.user@example.com")
    assert na.uri.params == ()
    assert na.tag == "43251j3j324"
    inside = parse_name_addr("<sip:j.user@example.com;transport=tcp>;tag=1")
    assert inside.uri.params == (("transport", "tcp"),)
    assert inside.params == (("tag", "1"),)


def test_addr_spec_with_lws_before_params() -> None:
    # RFC 4475 wsinv: "To :\r\n sip:vivekg@... ;   tag    = 1918181833n"
    na = parse_name_addr(" sip:dispatch@psap.example.net ;   tag    = 8321234356")
    assert na.uri.host == "psap.example.net"
    assert na.tag == "8321234356"


def test_display_name_forms() -> None:
    assert parse_name_addr("caller<sip:caller@example.com>;tag=323").display_name == "caller"
    assert parse_name_addr("Bob  Smith <sip:b@x>").display_name == "Bob Smith"
    assert parse_name_addr('"Line \\\\\\"" <sip:l@x>').display_name == 'Line \\"'
    assert parse_name_addr('"" <sip:a@b>').display_name is None
    assert parse_name_addr("<sip:a@b>").display_name is None
    na = parse_name_addr("word1~` word2'+_ word3*%!.- <sip:plain@example.com>")
    assert na.display_name == "word1~` word2'+_ word3*%!.-"
    # control characters and brackets are allowed inside a quoted display name
    weird = parse_name_addr('"BEL:\\\x07 NUL:\\\x00 <x>" <sip:a@b>')
    assert weird.display_name == "BEL:\x07 NUL:\x00 <x>"


def test_name_addr_slow_path_with_lws_and_quoted_params() -> None:
    na = parse_name_addr(
        '"Quoted \\"\\"" <sip:line@pbx.example.com> ; newparam = newvalue ; secondparam ; q = 0.33'
    )
    assert na.display_name == 'Quoted ""'
    assert na.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    ref = parse_name_addr('"PSAP" <sip:dispatch7@psap.example.net>;cid="<4@psap.example.net>"')
    assert ref.param("cid") == '"<4@psap.example.net>"'


def test_name_addr_with_uri_headers_and_opaque_uris() -> None:
    na = parse_name_addr("<sip:988@crisis.example.org?Replaces=a%40b%3Bto-tag%3D1>")
    assert na.uri.header("Replaces") == "a%40b%3Bto-tag%3D1"
    info = parse_name_addr(
        "<urn:emergency:uid:callid:abc:psap.example.net>;purpose=emergency-CallId"
    )
    assert info.uri.scheme == "urn"
    assert info.param("purpose") == "emergency-CallId"
    assert parse_name_addr("isbn:2983792873").uri.opaque == "2983792873"
    assert parse_name_addr("<tel:+18055550123>").uri.user == "+18055550123"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        '"Mr. J. User <sip:j.user@example.com>',  # RFC 4475 quotbal
        "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",  # RFC 4475 baddn
        '"Joe" sip:joe@example.org',
        "<sip:a@b",
        "<sip:a@b>>",
        "<<sip:a@b>",
        "<sip:a@b> junk",
        "<sip:a@b>;tag=",
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # RFC 4475 regbadct
        "sip:a@b, sip:c@d",
        "<not a uri>",
        '"a" "b" <sip:c@d>',
        "trailing\\",
        '"ends in backslash\\',
    ],
)
def test_name_addr_malformed(value: str) -> None:
    with pytest.raises(ParseError):
        parse_name_addr(value)


def test_name_addr_builders() -> None:
    na = parse_name_addr("<sip:a@b>;tag=1;x")
    assert na.with_tag("2").params == (("x", None), ("tag", "2"))
    assert na.with_param("Expires", "60").param("expires") == "60"
    assert na.params == (("tag", "1"), ("x", None))
    assert str(NameAddr(parse_uri("sip:a@b"), 'He said "hi"')) == '"He said \\"hi\\"" <sip:a@b>'


# --------------------------------------------------------------------------------------- Via


def test_via() -> None:
    v = parse_via("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9a3e1c;rport;received=192.0.2.99")
    assert v == Via(
        "UDP",
        "192.0.2.10",
        5060,
        (("branch", "z9hG4bK74bf9a3e1c"), ("rport", None), ("received", "192.0.2.99")),
    )
    assert v.branch == "z9hG4bK74bf9a3e1c"
    assert v.is_rfc3261
    assert v.has_rport
    assert v.rport is None
    assert v.received == "192.0.2.99"
    assert v.sent_by == "192.0.2.10:5060"
    assert (
        str(v) == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9a3e1c;rport;received=192.0.2.99"
    )
    assert parse_via(str(v)) == v
    filled = v.with_param("rport", "40000")
    assert filled.rport == 40000
    assert filled.param("RPORT") == "40000"


def test_via_with_lws_everywhere() -> None:
    v = parse_via("SIP  /   2.0 /UDP    192.0.2.2 : 5070 ;rport;branch=390skdjuw")
    assert (v.transport, v.host, v.port) == ("UDP", "192.0.2.2", 5070)
    assert v.params == (("rport", None), ("branch", "390skdjuw"))
    w = parse_via("SIP  /    2.0   / udp  192.168.255.111   ; branch= z9hG4bK30239")
    assert (w.transport, w.branch) == ("UDP", "z9hG4bK30239")


def test_via_ipv6_and_old_style() -> None:
    v = parse_via("SIP/2.0/TCP [2001:DB8::9:1]:5060;branch=z9hG4bKx;received=2001:db8::9:255")
    assert (v.host, v.port) == ("[2001:db8::9:1]", 5060)
    assert v.received == "2001:db8::9:255"
    assert parse_via("SIP/2.0/UDP [::1]").sent_by == "[::1]"
    old = parse_via("SIP/2.0/UDP 192.0.2.15")
    assert old.branch is None
    assert not old.is_rfc3261
    assert not parse_via("SIP/2.0/UDP h;branch=1234").is_rfc3261
    assert parse_via("SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKa").transport == "UNKNOWN"


@pytest.mark.parametrize("rport", ["\u00b2", "\u0667\u0660", "1" * 5000, "-1", "abc", ""])
def test_via_rport_garbage_is_none(rport: str) -> None:
    v = Via("UDP", "h", None, (("rport", rport),))
    assert v.rport is None
    assert v.has_rport


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "SIP/2.0 UDP host",
        "SIP/3.0/UDP host",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host:abc",
        "SIP/2.0/UDP host junk",
        "SIP/2.0/UDP host;branch=",
        "SIP/2.0/UDP host;bad param=1",
        "SIP/2.0/U DP host",
    ],
)
def test_via_malformed(value: str) -> None:
    with pytest.raises(ParseError):
        parse_via(value)


def test_via_stray_semicolons_are_tolerated() -> None:
    assert parse_via("SIP/2.0/UDP 192.0.2.15;;branch=z9hG4bKa;").branch == "z9hG4bKa"


def test_new_branch_and_tag() -> None:
    b = new_branch()
    assert b.startswith(BRANCH_COOKIE)
    assert is_token(b)
    assert len({new_branch() for _ in range(50)}) == 50
    t = new_tag()
    assert is_token(t)
    assert len(t) >= 8


# -------------------------------------------------------------------------------------- CSeq


@pytest.mark.parametrize(
    ("value", "cseq"),
    [
        ("1 INVITE", CSeq(1, "INVITE")),
        ("  0009   INVITE ", CSeq(9, "INVITE")),
        ("0 ACK", CSeq(0, "ACK")),
        (f"{2**31 - 1} BYE", CSeq(2**31 - 1, "BYE")),
        ("139122385 !odd-Method0123456789_*+`.%~", CSeq(139122385, "!odd-Method0123456789_*+`.%~")),
    ],
)
def test_cseq(value: str, cseq: CSeq) -> None:
    assert parse_cseq(value) == cseq
    assert parse_cseq(str(cseq)) == cseq


@pytest.mark.parametrize(
    "value",
    [
        "",
        "INVITE",
        "1",
        "-1 INVITE",
        "one INVITE",
        f"{2**31} INVITE",
        "36893488147419103232 INVITE",
        "1 INVITE extra",
        "1 IN,VITE",
        "\u0661 INVITE",
        "1INVITE",
    ],
)
def test_cseq_malformed(value: str) -> None:
    with pytest.raises(ParseError):
        parse_cseq(value)


# ------------------------------------------------------------------------------ value;params


def test_param_value() -> None:
    ev = parse_param_value("refer;id=93809824")
    assert ev == ParamValue("refer", (("id", "93809824"),))
    assert ev.param("ID") == "93809824"
    assert ev.has_param("id")
    assert str(ev) == "refer;id=93809824"
    st_ = parse_param_value("terminated;reason=noresource")
    assert (st_.value, st_.param("reason")) == ("terminated", "noresource")
    rep = parse_param_value("a84b4c76e66710@127.0.0.1;to-tag=314159;from-tag=1928301774;early-only")
    assert rep.value == "a84b4c76e66710@127.0.0.1"
    assert rep.param("to-tag") == "314159"
    assert rep.has_param("early-only")
    uui = parse_param_value('"quoted;uui" ;encoding=hex')
    assert uui.value == '"quoted;uui"'
    assert uui.param("encoding") == "hex"


@pytest.mark.parametrize("value", ["", "  ", ";id=1", '"unterminated;x=1', "refer;=1"])
def test_param_value_malformed(value: str) -> None:
    with pytest.raises(ParseError):
        parse_param_value(value)


# ------------------------------------------------------------------------------------ property

_HEADER_ALPHABET = 'sip:ab@[]<>";,=?&%\\ \t/.-SIP2UDP0159z9hG4bK\u00e9\x00\udcff'
_texts = st.one_of(st.text(_HEADER_ALPHABET, max_size=50), st.text(max_size=30))


@settings(max_examples=300, deadline=None)
@given(_texts)
def test_header_parsers_raise_only_parse_error(text: str) -> None:
    for parse in (
        parse_name_addr,
        parse_via,
        parse_cseq,
        parse_param_value,
        parse_params,
        split_list,
    ):
        try:
            value = parse(text)
        except ParseError:
            continue
        str(value)
    try:
        v = parse_via(text)
    except ParseError:
        pass
    else:
        assert parse_via(str(v)) == v
        _ = (v.branch, v.rport, v.received, v.is_rfc3261, v.sent_by)
    try:
        na = parse_name_addr(text)
    except ParseError:
        pass
    else:
        _ = (na.tag, str(na.uri), na.uri.transport)


_token = st.text("abcXYZ019-.!%*_+`'~", min_size=1, max_size=8)
_display = st.one_of(
    st.none(),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=12),
)
_gen_value = st.one_of(st.none(), _token, st.text('ab ;,<>\\"', max_size=6).map(quote))


@st.composite
def name_addrs(draw: st.DrawFn) -> NameAddr:
    user = draw(st.text("abc019-_.+", min_size=1, max_size=8))
    host = draw(st.sampled_from(["example.com", "192.0.2.1", "[2001:db8::1]"]))
    uri = parse_uri(f"sip:{user}@{host}")
    display = draw(_display)
    params = tuple(draw(st.lists(st.tuples(_token.map(str.lower), _gen_value), max_size=3)))
    return NameAddr(uri, display or None, params)


@settings(max_examples=200, deadline=None)
@given(name_addrs())
def test_generated_name_addrs_round_trip(na: NameAddr) -> None:
    parsed = parse_name_addr(str(na))
    assert parsed == na


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]),
    st.sampled_from(["192.0.2.1", "relay.example.com", "[2001:db8::1]", "[::1]"]),
    st.one_of(st.none(), st.integers(0, 65535)),
    st.lists(st.tuples(_token.map(str.lower), _gen_value), max_size=4),
)
def test_generated_vias_round_trip(
    transport: str, host: str, port: int | None, params: list[tuple[str, str | None]]
) -> None:
    via = Via(transport, host, port, tuple(params))
    assert parse_via(str(via)) == via
