"""SDP parsing, serialization and offer/answer helpers (telephony.sip.sdp)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.sip.errors import ParseError, SipError
from telephony.sip.sdp import (
    Attribute,
    Codec,
    Connection,
    Direction,
    Line,
    MediaDescription,
    Origin,
    SessionDescription,
    answer_direction,
    codecs,
    direction,
    increment_version,
    is_hold,
    parse_sdp,
    replace_media,
    rewrite_connection,
    rtcp_port,
    set_direction,
    set_media_port,
)
from tests.vectors import load_vector, vector_names

VECTOR_NAMES = [n.removeprefix("sdp/") for n in vector_names("sdp", "*.sdp")]


def vector(name: str) -> bytes:
    """Raw bytes of a test vector under tests/vectors/sdp/ (CRLF kept)."""
    return load_vector(f"sdp/{name}")


def parsed(name: str) -> SessionDescription:
    return parse_sdp(vector(name))


def assert_round_trips(sd: SessionDescription) -> None:
    data = sd.to_bytes()
    assert parse_sdp(data) == sd
    assert parse_sdp(data).to_bytes() == data


# ----------------------------------------------------------------------- vectors and round trips


def test_vector_set_is_present() -> None:
    assert len(VECTOR_NAMES) >= 8


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vectors_are_stored_with_crlf(name: str) -> None:
    data = vector(name)
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == data.count(b"\r\n")


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_serializes_back_to_identical_bytes(name: str) -> None:
    sd = parsed(name)
    assert sd.to_bytes() == vector(name)
    assert bytes(sd) == vector(name)
    assert_round_trips(sd)


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_bare_lf_and_str_input_parse_the_same(name: str) -> None:
    data = vector(name)
    assert parse_sdp(data.replace(b"\r\n", b"\n")) == parse_sdp(data)
    assert parse_sdp(data.decode()) == parse_sdp(data)


def test_asterisk_offer_fields() -> None:
    sd = parsed("asterisk_pcmu_pcma_te.sdp")
    assert sd.origin == Origin("-", "1711554321", 1711554321, "IN", "IP4", "192.0.2.10")
    assert sd.session_name == "Asterisk"
    assert sd.connection == Connection("IN", "IP4", "192.0.2.10")
    assert sd.lines == (Line("t", "0 0"),)
    assert sd.attributes == ()
    (audio,) = sd.media
    assert (audio.media_type, audio.port, audio.port_count, audio.proto) == (
        "audio",
        17430,
        1,
        "RTP/AVP",
    )
    assert audio.formats == ("0", "8", "101")
    assert audio.connection is None
    assert [a.name for a in audio.attributes] == [
        "rtpmap",
        "rtpmap",
        "rtpmap",
        "fmtp",
        "ptime",
        "maxptime",
        "sendrecv",
    ]
    assert audio.attribute_values("ptime") == ["20"]
    assert audio.attribute_values("sendrecv") == [None]
    assert audio.has_attribute("maxptime")
    assert not audio.has_attribute("rtcp")
    assert audio.is_rtp and not audio.is_rejected


def test_asterisk_offer_codecs_direction_rtcp() -> None:
    sd = parsed("asterisk_pcmu_pcma_te.sdp")
    audio = sd.media[0]
    assert codecs(audio) == [
        Codec(0, "PCMU", 8000),
        Codec(8, "PCMA", 8000),
        Codec(101, "telephone-event", 8000, 1, "0-16"),
    ]
    assert direction(audio, sd) == "sendrecv"
    assert not is_hold(audio, sd)
    assert rtcp_port(audio) == 17431


def test_static_payload_types_resolve_without_rtpmap() -> None:
    sd = parsed("sipp_static_pt.sdp")
    assert codecs(sd.media[0]) == [Codec(0, "PCMU", 8000, 1), Codec(8, "PCMA", 8000, 1)]
    assert sd.media[0].attributes == ()


def test_ipv6_offer() -> None:
    sd = parsed("baresip_ipv6.sdp")
    assert sd.connection == Connection("IN", "IP6", "2001:db8::25")
    assert (sd.origin.addr_type, sd.origin.address) == ("IP6", "2001:db8::25")
    audio = sd.media[0]
    assert audio.lines == (Line("b", "AS:64"),)
    assert audio.attribute_values("ssrc") == [
        "2913449238 cname:a8f3b2c1-8d2e-4b35-9d87-4e0a7c6fa1e2"
    ]
    assert audio.attribute_values("rtcp-rsize") == [None]


def test_sendonly_reinvite_is_hold_and_answered_recvonly() -> None:
    offer = parsed("asterisk_pcmu_pcma_te.sdp")
    hold = parsed("asterisk_hold_sendonly.sdp")
    assert hold.origin.session_version == offer.origin.session_version + 1
    assert hold.origin.session_id == offer.origin.session_id
    audio = hold.media[0]
    assert direction(audio, hold) == "sendonly"
    assert is_hold(audio, hold)
    assert answer_direction(direction(audio, hold)) == "recvonly"
    resumed = set_direction(audio, "sendrecv")
    assert not is_hold(resumed, hold)
    assert resumed.attributes[-1] == Attribute("sendrecv")
    assert not resumed.has_attribute("sendonly")


def test_old_style_hold_with_null_connection() -> None:
    sd = parsed("gateway_hold_old_style.sdp")
    audio = sd.media[0]
    assert sd.connection == Connection("IN", "IP4", "0.0.0.0")
    assert audio.connection == Connection("IN", "IP4", "0.0.0.0")
    assert sd.session_name == "SIP Call"
    assert direction(audio, sd) == "sendrecv"
    assert is_hold(audio, sd)
    assert is_hold(dataclasses.replace(audio, connection=None), sd)
    assert not is_hold(dataclasses.replace(audio, connection=None))


def test_rewrite_connection_keeps_old_style_hold_unless_asked() -> None:
    sd = parsed("gateway_hold_old_style.sdp")
    kept = rewrite_connection(sd, "192.0.2.1")
    assert kept.connection == sd.connection
    assert kept.media[0].connection == sd.media[0].connection
    assert kept.origin.address == "192.0.2.1"
    assert is_hold(kept.media[0], kept)
    replaced = rewrite_connection(sd, "192.0.2.1", preserve_hold=False)
    assert replaced.connection == Connection("IN", "IP4", "192.0.2.1")
    assert replaced.media[0].connection == Connection("IN", "IP4", "192.0.2.1")
    assert not is_hold(replaced.media[0], replaced)


def test_two_media_with_rejected_video() -> None:
    sd = parsed("answer_video_rejected.sdp")
    audio, video = sd.media
    assert (video.media_type, video.port, video.formats) == ("video", 0, ("96",))
    assert video.is_rejected and not audio.is_rejected
    assert codecs(audio) == [Codec(8, "PCMA", 8000), Codec(101, "telephone-event", 8000, 1, "0-16")]
    assert codecs(video) == [Codec(96, "H264", 90000)]
    moved = set_media_port(sd, 0, 30000)
    assert (moved.media[0].port, moved.media[1].port) == (30000, 0)
    assert_round_trips(moved)


def test_rtcp_attribute_with_address() -> None:
    sd = parsed("pjsip_rtcp_attribute.sdp")
    assert sd.connection is None
    assert sd.lines == (Line("b", "AS:84"), Line("t", "0 0"))
    assert sd.attributes == (Attribute("X-nat", "0"),)
    audio = sd.media[0]
    assert audio.connection == Connection("IN", "IP4", "203.0.113.55")
    assert audio.lines == (Line("b", "TIAS:64000"),)
    assert rtcp_port(audio) == 4321


def test_rewrite_connection_rewrites_c_o_and_rtcp_address() -> None:
    sd = parsed("pjsip_rtcp_attribute.sdp")
    out = rewrite_connection(sd, "2001:db8::1")
    assert out.connection is None  # none at session level: none added
    assert out.media[0].connection == Connection("IN", "IP6", "2001:db8::1")
    assert out.origin == Origin("-", "3917846201", 3917846201, "IN", "IP6", "2001:db8::1")
    assert out.media[0].attribute_values("rtcp") == ["4321 IN IP6 2001:db8::1"]
    assert rtcp_port(out.media[0]) == 4321
    assert_round_trips(out)
    back = rewrite_connection(out, "198.51.100.9")
    assert back.media[0].connection == Connection("IN", "IP4", "198.51.100.9")


def test_rewrite_connection_ipv6_offer_to_ipv4() -> None:
    sd = parsed("baresip_ipv6.sdp")
    out = rewrite_connection(sd, "192.0.2.200")
    assert out.connection == Connection("IN", "IP4", "192.0.2.200")
    assert (out.origin.addr_type, out.origin.address) == ("IP4", "192.0.2.200")
    assert out.media == sd.media  # no media-level c=, nothing else touched
    assert b"c=IN IP4 192.0.2.200\r\n" in out.to_bytes()


@pytest.mark.parametrize("address", ["", "192.0.2.1 IN", "192.0.2.1\r\na=x"])
def test_rewrite_connection_rejects_bad_address(address: str) -> None:
    with pytest.raises(SipError) as info:
        rewrite_connection(parsed("sipp_static_pt.sdp"), address)
    assert info.value.side == "local"


def test_set_media_port_replaces_or_drops_rtcp_attribute() -> None:
    sd = parsed("pjsip_rtcp_attribute.sdp")
    dropped = set_media_port(sd, 0, 20000)
    assert dropped.media[0].port == 20000
    assert not dropped.media[0].has_attribute("rtcp")
    assert rtcp_port(dropped.media[0]) == 20001
    kept = set_media_port(sd, 0, 20000, rtcp=20011)
    assert kept.media[0].attribute_values("rtcp") == ["20011"]
    assert rtcp_port(kept.media[0]) == 20011
    assert sd.media[0].port == 4000  # original untouched


@pytest.mark.parametrize(("port", "rtcp"), [(-1, None), (65536, None), (1000, 70000)])
def test_set_media_port_range(port: int, rtcp: int | None) -> None:
    with pytest.raises(SipError):
        set_media_port(parsed("sipp_static_pt.sdp"), 0, port, rtcp)


@pytest.mark.parametrize(
    "m_line", [b"m=video 0 RTP/AVP\r\n", b"m=video 0 RTP/AVP 31\r\n"], ids=["no formats", "no c="]
)
def test_set_media_port_refuses_to_enable_incomplete_stream(m_line: bytes) -> None:
    sd = parse_sdp(b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n" + m_line)
    with pytest.raises(SipError) as info:
        set_media_port(sd, 0, 5000)
    assert info.value.side == "local"
    assert set_media_port(sd, 0, 0) == sd  # keeping it rejected is fine


def test_set_media_port_bad_index() -> None:
    with pytest.raises(IndexError):
        set_media_port(parsed("sipp_static_pt.sdp"), 1, 4000)


def test_linphone_offer_with_many_attributes() -> None:
    sd = parsed("linphone_many_attributes.sdp")
    assert [a.name for a in sd.attributes] == ["ice-pwd", "ice-ufrag", "rtcp-xr", "record"]
    assert sd.attribute_values("record") == ["off"]
    audio, video = sd.media
    assert codecs(audio) == [
        Codec(96, "opus", 48000, 2, "useinbandfec=1"),
        Codec(97, "speex", 16000, 1, "vbr=on"),
        Codec(98, "speex", 8000, 1, "vbr=on"),
        Codec(0, "PCMU", 8000),
        Codec(8, "PCMA", 8000),
        Codec(18, "G729", 8000, 1, "annexb=yes"),
        Codec(101, "telephone-event", 48000),
        Codec(99, "telephone-event", 16000),
        Codec(100, "telephone-event", 8000),
    ]
    assert rtcp_port(audio) == 7079
    assert len(audio.attribute_values("candidate")) == 2
    assert audio.attribute_values("rtcp-fb") == ["* trr-int 1000", "* ccm tmmbr"]
    assert [c.encoding_name for c in codecs(video)] == ["VP8", "H264"]
    assert codecs(video)[1].fmtp == "profile-level-id=42801F"
    assert rtcp_port(video) == 9079


def test_rfc4566_example_session_level_lines_and_direction() -> None:
    sd = parsed("rfc4566_example.sdp")
    assert [ln.letter for ln in sd.lines] == ["i", "u", "e", "t"]
    assert sd.lines[2] == Line("e", "j.doe@example.com (Jane Doe)")
    assert sd.connection == Connection("IN", "IP4", "224.2.17.12/127")
    audio, video = sd.media
    assert direction(sd) == "recvonly"
    assert direction(audio, sd) == "recvonly"  # inherited from session level
    assert direction(audio) == "sendrecv"  # default without the session
    assert codecs(audio) == [Codec(0, "PCMU", 8000)]
    assert codecs(video) == [Codec(99, "h263-1998", 90000)]
    assert direction(set_direction(video, "inactive"), sd) == "inactive"  # media overrides


# ---------------------------------------------------------------------------- lenient parsing


def test_missing_s_and_t_are_filled_in() -> None:
    sd = parse_sdp("v=0\no=- 1 2 IN IP4 192.0.2.1\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\n")
    assert sd.session_name == "-"
    assert sd.lines == (Line("t", "0 0"),)
    assert sd.to_bytes().startswith(b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=")
    assert_round_trips(sd)


def test_blank_lines_and_trailing_whitespace_are_ignored() -> None:
    data = vector("sipp_static_pt.sdp").replace(b"\r\n", b" \t\r\n") + b"\r\n\r\n"
    assert parse_sdp(data) == parsed("sipp_static_pt.sdp")


def test_empty_session_name_is_emitted_as_one_space() -> None:
    sd = parse_sdp("v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns= \r\nt=0 0\r\n")
    assert sd.session_name == ""
    assert b"\r\ns= \r\n" in sd.to_bytes()
    assert_round_trips(sd)


def test_unknown_lines_and_odd_order_are_kept() -> None:
    data = (
        "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=x\r\nt=0 0\r\ni=late info\r\nc=IN IP4 192.0.2.1\r\n"
        "y=unknown\r\na=tool:test\r\nm=audio 4000 RTP/AVP 0\r\nb=AS:64\r\ni=media info\r\n"
        "x=also unknown\r\na=ptime:20\r\n"
    )
    sd = parse_sdp(data)
    assert sd.lines == (Line("i", "late info"), Line("t", "0 0"), Line("y", "unknown"))
    audio = sd.media[0]
    assert audio.lines == (Line("i", "media info"), Line("b", "AS:64"), Line("x", "also unknown"))
    assert sd.to_bytes().decode().splitlines()[3:7] == [
        "i=late info",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "y=unknown",
    ]
    assert_round_trips(sd)


def test_port_count_and_non_rtp_media() -> None:
    sd = parse_sdp(
        "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=audio 49170/2 RTP/AVP 0\r\nm=image 4000 udptl t38\r\nm=video 0 RTP/AVP\r\n"
    )
    audio, image, video = sd.media
    assert (audio.port, audio.port_count) == (49170, 2)
    assert image.formats == ("t38",) and not image.is_rtp
    assert codecs(image) == []
    assert video.formats == () and video.is_rejected
    assert b"m=audio 49170/2 RTP/AVP 0\r\n" in sd.to_bytes()
    assert_round_trips(sd)


def test_attribute_with_empty_value_differs_from_flag() -> None:
    sd = parse_sdp("v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\na=foo:\r\na=foo\r\n")
    assert sd.attributes == (Attribute("foo", ""), Attribute("foo"))
    assert_round_trips(sd)


def test_media_without_connection_is_allowed_when_rejected() -> None:
    sd = parse_sdp("v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP 31\r\n")
    assert sd.media[0].connection is None


# ---------------------------------------------------------------------------------- malformed

ASTERISK = vector("asterisk_pcmu_pcma_te.sdp")


def mutate(old: bytes, new: bytes) -> bytes:
    assert old in ASTERISK
    return ASTERISK.replace(old, new, 1)


MALFORMED: dict[str, bytes | str] = {
    "empty": b"",
    "only blank lines": b"\r\n\r\n",
    "missing v=": mutate(b"v=0\r\n", b""),
    "v=1": mutate(b"v=0", b"v=1"),
    "v= not first": mutate(b"v=0\r\no=- 1711554321 1711554321 IN IP4 192.0.2.10\r\n", b"")
    + b"v=0\r\n",
    "duplicate v=": mutate(b"s=Asterisk", b"v=0"),
    "missing o=": mutate(b"o=- 1711554321 1711554321 IN IP4 192.0.2.10\r\n", b""),
    "o= with 5 fields": mutate(b"o=- 1711554321 ", b"o="),
    "o= version not numeric": mutate(b"1711554321 IN", b"v2 IN"),
    "duplicate o=": mutate(b"s=Asterisk", b"o=- 1 1 IN IP4 192.0.2.10"),
    "duplicate s=": mutate(b"t=0 0", b"s=again"),
    "o= in media": ASTERISK + b"o=- 1 1 IN IP4 192.0.2.10\r\n",
    "s= in media": ASTERISK + b"s=late\r\n",
    "c= with 2 fields": mutate(b"c=IN IP4 192.0.2.10", b"c=IN 192.0.2.10"),
    "two session c=": mutate(b"t=0 0", b"c=IN IP4 192.0.2.11\r\nt=0 0"),
    "two media c=": ASTERISK + b"c=IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.2\r\n",
    "no c= anywhere": mutate(b"c=IN IP4 192.0.2.10\r\n", b""),
    "m= port too big": mutate(b"audio 17430", b"audio 70000"),
    "m= port negative": mutate(b"audio 17430", b"audio -1"),
    "m= port not numeric": mutate(b"audio 17430", b"audio rtp"),
    "m= port unicode digits": mutate(b"audio 17430", "audio ١٧٤٣٠".encode()),
    "m= port count zero": mutate(b"audio 17430", b"audio 17430/0"),
    "m= port count empty": mutate(b"audio 17430", b"audio 17430/"),
    "m= payload not numeric": mutate(b"RTP/AVP 0 8 101", b"RTP/AVP PCMU 8 101"),
    "m= payload above 127": mutate(b"RTP/AVP 0 8 101", b"RTP/AVP 0 8 128"),
    "m= SAVP payload not numeric": mutate(b"RTP/AVP 0 8 101", b"RTP/SAVP 0 x"),
    "m= no formats": mutate(b"RTP/AVP 0 8 101", b"RTP/AVP"),
    "m= two fields": mutate(b"m=audio 17430 RTP/AVP 0 8 101", b"m=audio 17430"),
    "line without =": mutate(b"a=ptime:20", b"a ptime:20"),
    "bare word line": mutate(b"a=ptime:20", b"ptime"),
    "one character line": mutate(b"a=ptime:20", b"a"),
    "uppercase type": mutate(b"a=ptime:20", b"A=ptime:20"),
    "digit type": mutate(b"a=ptime:20", b"1=ptime:20"),
    "empty attribute name": mutate(b"a=ptime:20", b"a=:20"),
    "stray CR inside line": mutate(b"a=ptime:20", b"a=ptime\r:20"),
    "NUL inside line": mutate(b"a=ptime:20", b"a=ptime\x00:20"),
    "invalid UTF-8": mutate(b"s=Asterisk", b"s=\xff\xfe"),
    "lone surrogate in str": "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=\ud800\nt=0 0\n",
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_sdp_raises_parse_error_400(data: bytes | str) -> None:
    with pytest.raises(ParseError) as info:
        parse_sdp(data)
    assert info.value.status == 400
    assert info.value.side == "peer"


def test_malformed_str_input_too() -> None:
    with pytest.raises(ParseError):
        parse_sdp(MALFORMED["m= port too big"].decode())  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "rtpmap",
    [b"a=rtpmap:101 telephone-event", b"a=rtpmap:101 /8000", b"a=rtpmap:101 te/fast"],
)
def test_codecs_reject_malformed_rtpmap_in_use(rtpmap: bytes) -> None:
    sd = parse_sdp(mutate(b"a=rtpmap:101 telephone-event/8000", rtpmap))
    with pytest.raises(ParseError):
        codecs(sd.media[0])


def test_codecs_skip_unmapped_dynamic_and_ignore_junk_attributes() -> None:
    sd = parse_sdp(mutate(b"a=rtpmap:101 telephone-event/8000", b"a=rtpmap:x y/1\r\na=fmtp:999 z"))
    assert codecs(sd.media[0]) == [Codec(0, "PCMU", 8000), Codec(8, "PCMA", 8000)]


@pytest.mark.parametrize("value", [b"a=rtcp", b"a=rtcp:", b"a=rtcp:abc", b"a=rtcp:99999"])
def test_malformed_rtcp_attribute(value: bytes) -> None:
    sd = parse_sdp(ASTERISK + value + b"\r\n")
    with pytest.raises(ParseError):
        rtcp_port(sd.media[0])


@pytest.mark.parametrize(
    "sd",
    [
        SessionDescription(Origin("-", "1", 1, "IN", "IP4", "192.0.2.1"), "x\r\na=injected"),
        SessionDescription(
            Origin("-", "1", 1, "IN", "IP4", "192.0.2.1"), attributes=(Attribute("a", "b\nc"),)
        ),
        SessionDescription(Origin("-", "1", 1, "IN", "IP4", "192.0.2.1"), lines=(Line("t", "\0"),)),
    ],
)
def test_serializer_refuses_line_injection(sd: SessionDescription) -> None:
    with pytest.raises(SipError) as info:
        sd.to_bytes()
    assert info.value.side == "local"


# -------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("sendrecv", "sendrecv"),
        ("sendonly", "recvonly"),
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
    ],
)
def test_answer_direction(offer: Direction, answer: Direction) -> None:
    assert answer_direction(offer) == answer


@pytest.mark.parametrize(
    ("attr", "held"),
    [("sendrecv", False), ("recvonly", False), ("sendonly", True), ("inactive", True)],
)
def test_is_hold_by_direction(attr: Direction, held: bool) -> None:
    media = set_direction(parsed("sipp_static_pt.sdp").media[0], attr)
    assert is_hold(media) is held


def test_set_direction_replaces_all_direction_attributes_in_place() -> None:
    media = MediaDescription(
        "audio",
        4000,
        "RTP/AVP",
        ("0",),
        attributes=(
            Attribute("ptime", "20"),
            Attribute("sendonly"),
            Attribute("recvonly"),
            Attribute("rtcp-mux"),
        ),
    )
    out = set_direction(media, "inactive")
    assert out.attributes == (
        Attribute("ptime", "20"),
        Attribute("inactive"),
        Attribute("rtcp-mux"),
    )
    assert media.attributes[1] == Attribute("sendonly")  # frozen: original unchanged


def test_set_direction_on_session() -> None:
    sd = parsed("asterisk_pcmu_pcma_te.sdp")
    held = set_direction(sd, "sendonly")
    assert held.attributes == (Attribute("sendonly"),)
    assert direction(held) == "sendonly"
    assert direction(held.media[0], held) == "sendrecv"  # media-level a=sendrecv wins
    assert_round_trips(held)


def test_direction_ignores_valued_attribute() -> None:
    media = MediaDescription(
        "audio", 4000, "RTP/AVP", ("0",), attributes=(Attribute("sendonly", "x"),)
    )
    assert direction(media) == "sendrecv"


def test_increment_version_for_reoffer() -> None:
    sd = parsed("asterisk_pcmu_pcma_te.sdp")
    again = increment_version(increment_version(sd))
    assert again.origin.session_version == 1711554323
    assert again.origin.session_id == sd.origin.session_id
    assert b"o=- 1711554321 1711554323 IN IP4" in again.to_bytes()
    assert sd.origin.session_version == 1711554321


def test_replace_media() -> None:
    sd = parsed("answer_video_rejected.sdp")
    video = dataclasses.replace(sd.media[1], port=5000)
    out = replace_media(sd, 1, video)
    assert out.media == (sd.media[0], video)


def test_constructed_description_serializes_in_rfc_order() -> None:
    sd = SessionDescription(
        Origin("handoff", "42", 1, "IN", "IP4", "192.0.2.1"),
        lines=(Line("t", "0 0"), Line("i", "info")),
        connection=Connection.for_address("192.0.2.1"),
        media=(MediaDescription("audio", 4000, "RTP/AVP", ("0", "101")),),
    )
    assert sd.lines == (Line("i", "info"), Line("t", "0 0"))
    assert sd.to_bytes() == (
        b"v=0\r\no=handoff 42 1 IN IP4 192.0.2.1\r\ns=-\r\ni=info\r\nc=IN IP4 192.0.2.1\r\n"
        b"t=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\n"
    )
    assert_round_trips(sd)
    assert Connection.for_address("::1") == Connection("IN", "IP6", "::1")
    assert hash(sd) == hash(parse_sdp(sd.to_bytes()))


# ------------------------------------------------------------------------------- properties


def check_any_input(data: bytes | str) -> None:
    """Parse either fails with ParseError or yields a description that round-trips and whose
    accessors fail, if at all, with ParseError."""
    try:
        sd = parse_sdp(data)
    except ParseError as exc:
        assert exc.status == 400
        return
    assert_round_trips(sd)
    for media in sd.media:
        direction(media, sd)
        is_hold(media, sd)
        try:
            codecs(media)
            rtcp_port(media)
        except ParseError:
            pass


@given(st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_parse_error(data: bytes) -> None:
    check_any_input(data)


@given(st.text(max_size=400))
def test_arbitrary_text_parse_or_parse_error(data: str) -> None:
    check_any_input(data)


PLAUSIBLE = [
    "v=0",
    "o=- 1 1 IN IP4 192.0.2.1",
    "o=a b 1 2 IN IP6 ::1",
    "s=-",
    "c=IN IP4 192.0.2.1",
    "c=IN IP6 ::1",
    "t=0 0",
    "b=AS:64",
    "i=info",
    "m=audio 4000 RTP/AVP 0 8 101",
    "m=video 0 RTP/AVP 96",
    "m=audio 4000/2 RTP/SAVP 0",
    "m=image 4002 udptl t38",
    "a=rtpmap:96 H264/90000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=rtcp:4001",
    "a=rtcp:4001 IN IP4 192.0.2.2",
    "a=sendonly",
    "a=inactive",
    "a=sendrecv",
]
LINE_SOUP = st.lists(
    st.one_of(
        st.sampled_from(PLAUSIBLE),
        st.builds(
            "{}={}".format,
            st.sampled_from(list("vosctmabiuxzA ")),
            st.text(alphabet=" 0123456789/:.abcIPNTRAV\t\r", max_size=25),
        ),
        st.text(max_size=15),
    ),
    max_size=16,
)


@given(st.booleans(), LINE_SOUP, st.sampled_from(["\r\n", "\n"]))
def test_sdp_like_line_soup_parses_or_raises_parse_error(
    header: bool, lines: list[str], eol: str
) -> None:
    prefix = ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-"] if header else []
    text = eol.join(prefix + lines) + eol
    check_any_input(text)
    check_any_input(text.encode("utf-8", "surrogatepass"))


# Strategies for descriptions the serializer can express: values without CR/LF/NUL and without
# the trailing blanks a liberal parser strips, tokens without the blanks that separate fields.
TEXT_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00")
TOKEN = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=" \t\r\n\x00"),
    min_size=1,
    max_size=12,
)
VALUE = st.text(TEXT_CHARS, max_size=30).map(lambda s: s.rstrip(" \t"))
CONNECTION = st.builds(Connection, TOKEN, TOKEN, TOKEN)
ATTRIBUTE = st.one_of(
    st.builds(Attribute, VALUE.filter(lambda s: s != "" and ":" not in s)),
    st.builds(Attribute, st.text(TEXT_CHARS, min_size=1).filter(lambda s: ":" not in s), VALUE),
)
RTP_PROTOS = ["RTP/AVP", "RTP/SAVP", "RTP/AVPF", "UDP/TLS/RTP/SAVPF"]


def other_lines(letters: str) -> st.SearchStrategy[tuple[Line, ...]]:
    line = st.builds(Line, st.sampled_from(list(letters)), VALUE)
    return st.lists(line, max_size=4).map(tuple)


@st.composite
def media_descriptions(draw: st.DrawFn, need_connection: bool) -> MediaDescription:
    port = draw(st.integers(0, 65535))
    proto = draw(st.sampled_from([*RTP_PROTOS, "udptl", "TCP/MSRP"]))
    fmt = st.integers(0, 127).map(str) if proto in RTP_PROTOS else TOKEN
    formats = draw(st.lists(fmt, min_size=0 if port == 0 else 1, max_size=5))
    conn = draw(CONNECTION if need_connection and port else st.none() | CONNECTION)
    return MediaDescription(
        draw(TOKEN),
        port,
        proto,
        tuple(formats),
        draw(st.integers(1, 65535)),
        conn,
        draw(other_lines("ibkxy")),
        tuple(draw(st.lists(ATTRIBUTE, max_size=5))),
    )


@st.composite
def session_descriptions(draw: st.DrawFn) -> SessionDescription:
    origin = Origin(
        " ".join(draw(st.lists(TOKEN, min_size=1, max_size=2))),
        draw(TOKEN),
        draw(st.integers(0, 2**64)),
        draw(TOKEN),
        draw(TOKEN),
        draw(TOKEN),
    )
    conn = draw(st.none() | CONNECTION)
    lines = draw(other_lines("iuepbtrzkxy"))
    if not any(ln.letter == "t" for ln in lines):
        lines += (Line("t", "0 0"),)
    media = draw(st.lists(media_descriptions(need_connection=conn is None), max_size=3))
    return SessionDescription(
        origin,
        draw(VALUE),
        conn,
        lines,
        tuple(draw(st.lists(ATTRIBUTE, max_size=4))),
        tuple(media),
    )


@given(session_descriptions())
def test_generated_descriptions_round_trip(sd: SessionDescription) -> None:
    assert_round_trips(sd)
    assert parse_sdp(sd.to_bytes().replace(b"\r\n", b"\n")) == sd


@given(
    session_descriptions(),
    st.ip_addresses().map(str),
    st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive"]),
    st.integers(0, 65535),
)
def test_helpers_keep_descriptions_serializable(
    sd: SessionDescription, address: str, new_direction: Direction, port: int
) -> None:
    out = increment_version(set_direction(rewrite_connection(sd, address), new_direction))
    if out.media:
        first = out.media[0]
        if port and (not first.formats or (first.connection or out.connection) is None):
            with pytest.raises(SipError):  # would not be valid SDP
                set_media_port(out, 0, port)
        else:
            out = set_media_port(out, 0, port, rtcp=port + 1 if port < 65535 else None)
            assert out.media[0].port == port
    assert_round_trips(out)
    assert out.origin.session_version == sd.origin.session_version + 1
    assert (out.origin.address, out.origin.addr_type) == (
        address,
        "IP6" if ":" in address else "IP4",
    )
    assert direction(out) == new_direction
