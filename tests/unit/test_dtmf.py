"""RFC 4733 key detection and feature-code matching (pure functions, no sockets)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from telephony.call.dtmf import FeatureCodes
from telephony.config.model import DtmfConfig
from telephony.media.dtmf import DigitDetector, parse_event

SIPP_PCAPS = Path("/usr/share/sip-tester")


def rtp(event: int, end: bool, ts: int, pt: int = 101, seq: int = 1) -> bytes:
    header = struct.pack(">BBHII", 0x80, pt, seq, ts, 0x1234)
    return header + bytes([event, 0x0A | (0x80 if end else 0)]) + struct.pack(">H", 800)


def test_a_press_is_reported_once_on_its_first_end_packet() -> None:
    d = DigitDetector(101)
    packets = [rtp(8, False, 160), rtp(8, False, 160), rtp(8, True, 160)] + [rtp(8, True, 160)] * 2
    assert [d.feed(p) for p in packets] == [None, None, "8", None, None]
    assert d.feed(rtp(8, True, 320)) == "8"  # the next press of the same key: a new timestamp
    assert d.feed(rtp(10, True, 480)) == "*" and d.feed(rtp(11, True, 640)) == "#"
    assert d.feed(rtp(10, True, 480)) == "*"  # a replayed press after another one counts


def test_other_packets_are_ignored() -> None:
    d = DigitDetector(101)
    assert d.feed(rtp(8, True, 160, pt=0)) is None  # audio
    assert d.feed(rtp(16, True, 160)) is None  # flash: not a key
    assert d.feed(b"\x80\x65\x00") is None  # too short
    assert d.feed(b"\x00" + rtp(8, True, 160)[1:]) is None  # not RTP version 2
    csrc = b"\x81" + rtp(5, True, 160)[1:12] + b"\0\0\0\1" + rtp(5, True, 160)[12:]
    assert parse_event(csrc, 101) == (5, True, 160)  # the CSRC is skipped


def _pcap_packets(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, off = [], 24
    while off < len(data):
        incl = struct.unpack("<I", data[off + 8 : off + 12])[0]
        out.append(data[off + 16 + 42 : off + 16 + incl])  # Ethernet + IPv4 + UDP headers
        off += 16 + incl
    return out


@pytest.mark.skipif(not SIPP_PCAPS.exists(), reason="Debian sip-tester's pcaps not installed")
def test_sipp_dtmf_pcaps_give_one_key_each() -> None:
    d = DigitDetector(101)
    for name, key in (("star", "*"), ("8", "8"), ("pound", "#")):
        keys = [k for p in _pcap_packets(SIPP_PCAPS / f"dtmf_2833_{name}.pcap") if (k := d.feed(p))]
        assert keys == [key]


def test_feature_codes_match_without_waiting_and_skip_stray_keys() -> None:
    f = FeatureCodes(DtmfConfig().codes(), digit_timeout=3.0)
    assert [f.feed(k, t) for k, t in (("*", 0.0), ("8", 0.5))] == [None, "warm"]
    assert f.feed("#", 1.0) == "cancel"
    assert [f.feed(k, 2.0) for k in "5*9"] == [None, None, "cold"]
    assert [f.feed(k, 3.0) for k in "**7"] == [None, None, "consult"]
    assert f.feed("*", 10.0) is None and f.feed("8", 14.0) is None  # too slow: starts over
    assert f.feed("*", 14.2) is None and f.feed("8", 14.4) == "warm"
    off = FeatureCodes(DtmfConfig(cancel="").codes(), 3.0)
    assert off.feed("#", 0.0) is None
