"""A test-owned RTP phone: sends a G.711 tone in 20 ms packets, records what arrives, and
measures tones in it with a Goertzel filter.

The G.711 code here is the test's own, written from the standard expansion (ITU-T G.711, the
segment/mantissa formula as in the classic Sun reference ``ulaw2linear`` / ``alaw2linear``), not
``telephony.media.g711``: a test decoding with the product's tables would check the product
against itself. Encoding picks, for each sample, the code whose expansion is nearest, so it needs
nothing but the decoder.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

RATE = 8000
FRAME = 160  # samples per 20 ms packet
PERIOD = FRAME / RATE
PCMU, PCMA = 0, 8


def _ulaw_expand(code: int) -> int:
    u = ~code & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if u & 0x80 else magnitude


def _alaw_expand(code: int) -> int:
    a = code ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    # segment 0 is linear; segment e >= 1 adds the implied leading bit (0x100) and shifts
    step = (mantissa << 4) + 8
    magnitude = step if exponent == 0 else (step + 0x100) << (exponent - 1)
    return magnitude if a & 0x80 else -magnitude  # A-law: sign bit set means positive


EXPAND: dict[int, NDArray[np.int16]] = {
    PCMU: np.array([_ulaw_expand(c) for c in range(256)], dtype=np.int16),
    PCMA: np.array([_alaw_expand(c) for c in range(256)], dtype=np.int16),
}


def decode(payload: bytes, payload_type: int) -> NDArray[np.int16]:
    return EXPAND[payload_type][np.frombuffer(payload, dtype=np.uint8)]


def encode(samples: NDArray[np.int16], payload_type: int) -> bytes:
    """Each sample as the code whose expansion is nearest to it."""
    table = EXPAND[payload_type].astype(np.int32)
    order = np.argsort(table, kind="stable")
    ordered = table[order]
    x = samples.astype(np.int32)
    hi = np.clip(np.searchsorted(ordered, x), 1, 255)
    lo = hi - 1
    nearer_lo = (x - ordered[lo]) <= (ordered[hi] - x)
    return order[np.where(nearer_lo, lo, hi)].astype(np.uint8).tobytes()


def tone(freq: float, start: int, amp: float, n: int = FRAME) -> NDArray[np.int16]:
    """``n`` samples of a sine from sample index ``start`` (phase-continuous across frames)."""
    t = np.arange(start, start + n, dtype=np.float64)
    return np.round(amp * np.sin(2 * np.pi * freq * t / RATE)).astype(np.int16)


def goertzel(samples: NDArray[np.int16], freq: float) -> float:
    """Amplitude (in sample units) of the ``freq`` component of ``samples``, by the Goertzel
    recurrence s[n] = x[n] + 2 cos(w) s[n-1] - s[n-2]; power = s1^2 + s2^2 - 2 cos(w) s1 s2.
    Exact for a window holding whole cycles of ``freq``."""
    n = len(samples)
    coeff = 2.0 * math.cos(2.0 * math.pi * freq / RATE)
    s1 = s2 = 0.0
    for x in samples.tolist():
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    return 2.0 * math.sqrt(max(power, 0.0)) / n


def rtp_payload(data: bytes) -> tuple[int, bytes] | None:
    """(payload type, payload) of an RTP v2 packet (CSRCs, extension and padding skipped)."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    start = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:  # header extension
        if len(data) < start + 4:
            return None
        start += 4 + 4 * struct.unpack_from("!H", data, start + 2)[0]
    end = len(data)
    if data[0] & 0x20 and end > start:  # padding
        end -= data[-1]
    if end < start:
        return None
    return data[1] & 0x7F, data[start:end]


@dataclass
class TonePhone(asyncio.DatagramProtocol):
    """One party's media socket on 127.0.0.1. While ``target`` is set and ``sending``, each
    :meth:`send_frame` sends the next 20 ms of ``freq`` at ``amp`` in ``codec``. Every datagram
    that arrives is kept with its arrival time (loop clock)."""

    name: str
    freq: float
    codec: int
    amp: float = 6000.0
    target: tuple[str, int] | None = None
    sending: bool = True
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    seq: int = field(default_factory=lambda: random.getrandbits(16))
    received: list[tuple[float, bytes]] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    k: int = 0  # frames sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append((asyncio.get_running_loop().time(), data))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)  # e.g. ICMP port unreachable once a relay port is closed

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send_frame(self) -> None:
        if self.transport is None or self.target is None or not self.sending:
            return
        payload = encode(tone(self.freq, self.k * FRAME, self.amp), self.codec)
        marker = 0x80 if self.k == 0 else 0
        header = struct.pack(
            "!BBHII",
            0x80,
            marker | self.codec,
            (self.seq + self.k) & 0xFFFF,
            (self.k * FRAME) & 0xFFFFFFFF,
            self.ssrc,
        )
        self.transport.sendto(header + payload, self.target)
        self.k += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def audio_between(self, t0: float, t1: float) -> tuple[NDArray[np.int16], int, set[int]]:
        """(decoded G.711 of the packets that arrived in [t0, t1), in arrival order; the number
        of packets; the payload types seen)."""
        chunks: list[NDArray[np.int16]] = []
        count, types = 0, set()
        for t, data in self.received:
            if not t0 <= t < t1:
                continue
            count += 1
            parsed = rtp_payload(data)
            if parsed is None:
                continue
            pt, payload = parsed
            types.add(pt)
            if pt in EXPAND:
                chunks.append(decode(payload, pt))
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return samples, count, types


async def open_phone(name: str, freq: float, codec: int, amp: float = 6000.0) -> TonePhone:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: TonePhone(name, freq, codec, amp), local_addr=("127.0.0.1", 0)
    )
    return proto


async def pace(phones: list[TonePhone], stop: asyncio.Event) -> None:
    """Send every phone's next frame every 20 ms on an absolute schedule, until ``stop``."""
    loop = asyncio.get_running_loop()
    t0, i = loop.time(), 0
    while not stop.is_set():
        for phone in phones:
            phone.send_frame()
        i += 1
        await asyncio.sleep(max(0.0, t0 + i * PERIOD - loop.time()))
