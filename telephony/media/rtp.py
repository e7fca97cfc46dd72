"""RTP as the conference mixer sees it: the G.711 clock, the 20 ms frame, header parsing.

RFC 3550 §5.1: a 12-byte fixed header (version 2, padding, extension, CSRC count, marker,
payload type, sequence number, timestamp, SSRC), then CSRCs, an optional header extension, the
payload and optional padding. The relay (:mod:`telephony.media.relay`) relays bytes and looks
at no more than the first two; the mixer terminates the streams and needs the fields.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

RATE: Final = 8000  # G.711 sample rate and RTP clock
FRAME: Final = 160  # samples per mixer tick (20 ms)
PERIOD: Final = FRAME / RATE  # seconds per tick
COMFORT_NOISE: Final = 13  # RFC 3389 payload type
RTP_HEADER: Final = 12  # bytes of the fixed header

#: the fixed header: first byte, second byte (marker, payload type), seq, timestamp, SSRC
HEADER: Final = struct.Struct("!BBHII")


class RtpHeader(NamedTuple):
    """The fields of an RTP packet the mixer uses; the payload is ``data[start:end]``."""

    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    start: int
    end: int


def parse_rtp(data: bytes) -> RtpHeader | None:
    """Parse an RTP header (RFC 3550 §5.1: CSRCs, header extension and padding skipped); None
    when ``data`` is not a well-formed version-2 RTP packet."""
    n = len(data)
    if n < RTP_HEADER:
        return None
    b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
    if b0 & 0xC0 != 0x80:
        return None
    start = RTP_HEADER + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if n < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = n
    if b0 & 0x20:  # padding: the last byte counts the padding bytes, itself included
        pad = data[-1]
        if pad == 0:
            return None
        end -= pad
    if end < start:
        return None
    return RtpHeader(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, start, end)
