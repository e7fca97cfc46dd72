"""RFC 4733 telephone-events from one RTP stream, as keys pressed (sans-IO, no sockets).

A key press is sent as several packets with the same RTP timestamp: updates while the key is
held, then (usually three copies of) the final packet with the E bit set. :class:`DigitDetector`
reports each press once, on its first end packet, so the copies and lost start packets do not
double or lose a key. A press is told from the last one by its (timestamp, event); only the last
press is remembered, so a phone (or a test tool replaying a recording) may send the same key
with the same timestamp again later and it still counts. Only events 0-15 (``0-9 * # A-D``)
are keys.
"""

from __future__ import annotations

#: RFC 4733 §3.2 event codes 0-15
KEYS = "0123456789*#ABCD"
_RTP_HEADER = 12


def parse_event(packet: bytes, payload_type: int) -> tuple[int, bool, int] | None:
    """``(event, end, rtp timestamp)`` of a telephone-event RTP packet with ``payload_type``,
    or None for any other packet (another payload type, too short, not RTP version 2)."""
    if len(packet) < _RTP_HEADER + 4 or packet[0] >> 6 != 2 or packet[1] & 0x7F != payload_type:
        return None
    start = _RTP_HEADER + 4 * (packet[0] & 0x0F)  # skip CSRCs
    if packet[0] & 0x10:  # header extension: 4-byte header + length words
        if len(packet) < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
    if len(packet) < start + 4:
        return None
    timestamp = int.from_bytes(packet[4:8], "big")
    return packet[start], bool(packet[start + 1] & 0x80), timestamp


class DigitDetector:
    """Keys pressed on one stream: :meth:`feed` returns the key once per press, else None."""

    def __init__(self, payload_type: int) -> None:
        self.payload_type = payload_type
        self._last: tuple[int, int] | None = None  # (timestamp, event) of the last press

    def feed(self, packet: bytes) -> str | None:
        ev = parse_event(packet, self.payload_type)
        if ev is None:
            return None
        event, end, timestamp = ev
        if not end or event >= len(KEYS) or (timestamp, event) == self._last:
            return None
        self._last = (timestamp, event)
        return KEYS[event]
