"""SIP, SIPS, tel and opaque URIs (RFC 3261 §19.1, §25.1; RFC 3966; RFC 5118 IPv6 cases)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.sip import URI, ParseError, parse_uri
from telephony.sip.uri import tel_digits, unescape

# ------------------------------------------------------------------------------- SIP and SIPS


def test_full_sip_uri() -> None:
    u = parse_uri("sip:alice:secret@Atlanta.Example.COM:5061;Transport=TCP;lr;maddr=239.255.255.1")
    assert u == URI(
        scheme="sip",
        user="alice",
        password="secret",
        host="atlanta.example.com",
        port=5061,
        params=(("transport", "TCP"), ("lr", None), ("maddr", "239.255.255.1")),
    )
    assert u.is_sip
    assert u.hostport == "atlanta.example.com:5061"
    assert u.transport == "tcp"
    assert u.param("TRANSPORT") == "TCP"
    assert u.param("lr") is None  # valueless param: default
    assert u.param("lr", "flag") == "flag"
    assert u.has_param("LR")
    assert not u.has_param("ttl")
    assert (
        str(u) == "sip:alice:secret@atlanta.example.com:5061;transport=TCP;lr;maddr=239.255.255.1"
    )


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:example.com", "example.com", None),
        ("sip:192.0.2.1:5060", "192.0.2.1", 5060),
        ("sip:[::1]", "[::1]", None),
        ("sip:[::1]:5060", "[::1]", 5060),
        ("sip:user@[2001:DB8::10]:5070", "[2001:db8::10]", 5070),
        ("sips:[::ffff:192.0.2.1]", "[::ffff:192.0.2.1]", None),
        ("sip:host-with-dash.example.com.", "host-with-dash.example.com.", None),
        ("sip:h:0", "h", 0),
        ("sip:h:65535", "h", 65535),
    ],
)
def test_hosts_and_ports(text: str, host: str, port: int | None) -> None:
    u = parse_uri(text)
    assert (u.host, u.port) == (host, port)
    assert parse_uri(str(u)) == u


def test_ipv6_port_inside_brackets_is_part_of_the_address() -> None:
    # RFC 5118 §4.4: the two are different URIs
    inside = parse_uri("sip:user@[2001:db8::10:5070]")
    outside = parse_uri("sip:user@[2001:db8::10]:5070")
    assert (inside.host, inside.port) == ("[2001:db8::10:5070]", None)
    assert (outside.host, outside.port) == ("[2001:db8::10]", 5070)


def test_ipv6_in_uri_params() -> None:
    u = parse_uri("sip:caller@[2001:db8::9:1]:5060;maddr=[2001:db8::9:1];transport=udp")
    assert u.param("maddr") == "[2001:db8::9:1]"


def test_sips_defaults_to_tls_and_sip_to_udp() -> None:
    assert parse_uri("sips:bob@example.com").transport == "tls"
    assert parse_uri("SIP:bob@example.com").transport == "udp"
    assert parse_uri("SIP:bob@example.com").scheme == "sip"


def test_user_part_keeps_escapes_and_unescape_decodes() -> None:
    u = parse_uri("sip:sips%3Acaller%40example.com@example.net")
    assert u.user == "sips%3Acaller%40example.com"
    assert u.host == "example.net"
    assert unescape(u.user or "") == "sips:caller@example.com"
    assert unescape("I%20have%20spaces") == "I have spaces"
    assert unescape("plain") == "plain"
    assert parse_uri("sip:null-%00-null@example.com").user == "null-%00-null"


def test_escaped_param_names_and_values_are_kept_as_written() -> None:
    u = parse_uri("sip:cal%6Cer@192.168.0.2:5060;%6C%72;n%61me=v%61lue%25%34%31")
    assert u.params == (("%6c%72", None), ("n%61me", "v%61lue%25%34%31"))


def test_semicolon_parameters_in_user_part() -> None:
    # RFC 4475 semiuri: the ';' belongs to the user part, not to URI parameters
    u = parse_uri("sip:user;par=u%40example.net@example.com")
    assert u.user == "user;par=u%40example.net"
    assert u.host == "example.com"
    assert u.params == ()
    assert str(u) == "sip:user;par=u%40example.net@example.com"


def test_wide_range_of_valid_characters_in_user_and_password() -> None:
    # RFC 4475 intmeth: '?', ',', '/', ';' and '*' are user-unreserved; the password has '&=+$,'
    text = "sip:1_odd.URI~(really!)&isn't+it$/odd?,/;;*:&pass+has=1,odd!*pa$$wo~d_(too)@example.com"
    u = parse_uri(text)
    assert u.user == "1_odd.URI~(really!)&isn't+it$/odd?,/;;*"
    assert u.password == "&pass+has=1,odd!*pa$$wo~d_(too)"
    assert u.host == "example.com"
    assert u.headers == ()
    assert str(u) == text


def test_uri_headers_embedded_replaces() -> None:
    u = parse_uri(
        "sip:988@crisis.example.org?Replaces=consult-77%40198.51.100.20%3Bto-tag%3Dc9"
        "%3Bfrom-tag%3Db2b-3&X-Transfer=warm"
    )
    assert u.host == "crisis.example.org"
    assert u.header("replaces") == "consult-77%40198.51.100.20%3Bto-tag%3Dc9%3Bfrom-tag%3Db2b-3"
    assert (
        unescape(u.header("Replaces") or "") == "consult-77@198.51.100.20;to-tag=c9;from-tag=b2b-3"
    )
    assert u.header("x-transfer") == "warm"
    assert u.header("absent") is None
    assert parse_uri(str(u)) == u


def test_uri_headers_after_params_and_with_empty_value() -> None:
    u = parse_uri("sip:bob@example.com;transport=tcp?Subject=&Priority=urgent")
    assert u.params == (("transport", "tcp"),)
    assert u.headers == (("Subject", ""), ("Priority", "urgent"))


def test_unescaped_at_in_uri_header_value_is_tolerated() -> None:
    u = parse_uri("sip:bob@example.com?Replaces=abc@host;to-tag=1;from-tag=2")
    assert (u.user, u.host) == ("bob", "example.com")
    assert u.header("replaces") == "abc@host;to-tag=1;from-tag=2"


def test_empty_param_value_and_stray_semicolons() -> None:
    assert parse_uri("sip:a@b;x=").params == (("x", ""),)
    assert parse_uri("sip:a@b;;x;").params == (("x", None),)


def test_param_helpers() -> None:
    u = parse_uri("sip:a@b;transport=udp;lr")
    v = u.with_params(transport="tcp", ob=None)
    assert v.params == (("lr", None), ("transport", "tcp"), ("ob", None))
    assert v.without_params("LR", "ob").params == (("transport", "tcp"),)
    assert u.params == (("transport", "udp"), ("lr", None))  # immutable


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "sip:@example.com",
        "sip:user@",
        "sip:user@host:99999",
        "sip:user@host:port",
        "sip:user@2001:db8::10",  # IPv6 must be bracketed (RFC 5118 §4.10)
        "sip:user@[2001:db8::10",
        "sip:user@host;bad param",
        "sip:user@host;x=a b",
        "sip:user@host;x=<y>",
        "sip:us er@host",
        "sip:a:b c@host",
        "sip:a@b?x=y z",
        "sip:a@b?novalue",
        "sip:a@b?",
        "sip:a@b?x=<sip:c>",
        "sip:a@b@c",
        "sip:a@-bad.example.com",
        "sip:a@ho_st",
        "nocolon",
        "1sip:user@host",
        "<sip:user@host>",
        "tel:",
        "tel:+1 555",
        "tel:xyz;x",
        "http:has space",
        'urn:has"quote',
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_uri(text)
    assert exc.value.status == 400
    assert exc.value.side == "peer"


# ----------------------------------------------------------------------------------------- tel


def test_tel_uris() -> None:
    g = parse_uri("tel:+1-805-555-0123;ext=12")
    assert (g.scheme, g.user, g.host) == ("tel", "+1-805-555-0123", "")
    assert g.param("ext") == "12"
    assert not g.is_sip
    assert str(g) == "tel:+1-805-555-0123;ext=12"
    assert tel_digits(g) == "+18055550123"
    local = parse_uri("TEL:7042;Phone-Context=example.com")
    assert local.scheme == "tel"
    assert local.params == (("phone-context", "example.com"),)
    assert parse_uri(str(local)) == local
    assert tel_digits(parse_uri("tel:*67#")) == "*67#"


def test_tel_digits_of_sip_user_part() -> None:
    assert tel_digits(parse_uri("sip:+1%28805%29555-0123@psap.example.net;user=phone")) == (
        "+18055550123"
    )
    assert tel_digits(parse_uri("sip:example.com")) == ""


# -------------------------------------------------------------------------------------- opaque


@pytest.mark.parametrize(
    ("text", "scheme", "opaque"),
    [
        ("urn:emergency:uid:callid:20261122a1b2c3:psap.example.net", "urn", None),
        ("cid:target123@psap.example.net", "cid", None),
        ("https://adr.example.net/ecd/subscriber/1234", "https", None),
        ("isbn:2983792873", "isbn", "2983792873"),
        ("name:John_Smith", "name", "John_Smith"),
    ],
)
def test_opaque_uris(text: str, scheme: str, opaque: str | None) -> None:
    u = parse_uri(text)
    assert u.scheme == scheme
    assert u.opaque == (opaque if opaque is not None else text.partition(":")[2])
    assert not u.is_sip
    assert str(u) == text


# ------------------------------------------------------------------------------------ property

_UNRESERVED = "abcXYZ019-_.!~*'()"
_user = st.text(_UNRESERVED + "&=+$,;?/%", min_size=1, max_size=12)
_password = st.text(_UNRESERVED + "&=+$,%", max_size=8)
_host = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_pname = st.text(_UNRESERVED + "[]/:&+$%", min_size=1, max_size=8).map(str.lower)
_pvalue = st.one_of(st.none(), st.text(_UNRESERVED + "[]/:&+$%", max_size=8))
_hname = st.text(_UNRESERVED + "[]/?:+$%", min_size=1, max_size=8)
_hvalue = st.text(_UNRESERVED + "[]/?:+$%", max_size=10)


@st.composite
def sip_uris(draw: st.DrawFn) -> URI:
    user = draw(st.one_of(st.none(), _user))
    return URI(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=user,
        password=None if user is None else draw(st.one_of(st.none(), _password)),
        host=draw(_host),
        port=draw(st.one_of(st.none(), st.integers(0, 65535))),
        params=tuple(draw(st.lists(st.tuples(_pname, _pvalue), max_size=4))),
        headers=tuple(draw(st.lists(st.tuples(_hname, _hvalue), max_size=3))),
    )


@settings(max_examples=200, deadline=None)
@given(sip_uris())
def test_generated_sip_uris_round_trip(uri: URI) -> None:
    parsed = parse_uri(str(uri))
    assert parsed == uri
    assert str(parsed) == str(uri)


_URI_ALPHABET = 'sipte:l+1@[]:;=?&%<>" \t,./-_aZ09\x00\u00e9\udcff'


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(_URI_ALPHABET, max_size=40), st.text(max_size=40)))
def test_arbitrary_text_gives_a_uri_or_parse_error(text: str) -> None:
    try:
        u = parse_uri(text)
    except ParseError:
        return
    # whatever parsed must print and re-parse to the same thing
    again = parse_uri(str(u))
    assert again == u
    assert isinstance(u.transport, str)
    assert isinstance(u.hostport, str)
