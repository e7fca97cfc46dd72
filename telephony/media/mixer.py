"""The conference mixer for warm handoffs: sans-IO, G.711 in, G.711 out, 20 ms frames.

Model
-----
A :class:`Mixer` holds the parties of one conference (typically caller, dispatcher and 988
counselor). :meth:`Mixer.join` returns a :class:`Party` handle; the I/O layer feeds each
party's RTP packets in with :meth:`Mixer.receive` (raw datagram) or :meth:`Mixer.push` (fields)
and the arrival time, and calls :meth:`Mixer.tick` every 20 ms (:meth:`get_timer` /
:meth:`handle_timer` do the scheduling arithmetic, house rule 2). No sockets, no clock, no
asyncio here; :mod:`telephony.media.conference` is the glue to the relay's endpoints.

Each tick produces, for every party, one RTP packet with 160 samples (20 ms at 8 kHz) encoded in
that party's codec (PCMU or PCMA): the sum of the *other* parties' current frames, saturated to
the int16 range (clipping, never wrap-around), never the party's own audio (mix-minus). The sum
is taken in int32 once (``total``) and each party's own frame subtracted, so the cost does not
grow with the square of the party count. Decoding uses each party's law, encoding the receiving
party's negotiated codec, so PCMU and PCMA legs in one conference are transcoded as a side
effect (a packet in the other law than the party negotiated is re-coded on arrival).

The hot path, per tick, costs the same number of numpy calls whatever the party count (about
five): every party's G.711 bytes go into one buffer that a numpy view reads in place (each
sample a uint16: the code, and a row selecting the party's law, or "quiet"); one gather through
a small int32 table decodes them all; one reduction makes the total; one subtraction the
mix-minus; one gather through a *saturating* encode table (indexed by the int32 sum itself,
offset per law: it covers up to four other talkers at full scale, so clipping costs nothing;
beyond five parties the sums are clipped first) encodes every party's frame at once. The law
offsets are folded into the decode table so that the subtraction leaves each row at its own
law's part of the encode table. Jitter buffers hold G.711 bytes; nothing is decoded on arrival.

Outgoing streams
----------------
Each party's outgoing stream is the mixer's own RTP source (RFC 3550 §7.3 mixer): its own SSRC,
sequence number and timestamp (random initial values), marker bit on the first packet and after
a gap (ticks :meth:`handle_timer` skipped). The RTP headers of the inputs are never copied.
CSRC lists are not written (the parties do not need them and they would cost 4 bytes per
contributor per packet).

Jitter allowance
----------------
Per party a :class:`JitterBuffer` places the G.711 bytes by RTP timestamp (so packets are
reordered, and any packetisation -- 10, 20, 30 ms -- is cut into 20 ms frames; a gap inside a
frame is filled with the law's silence code). It starts playing once
``depth`` samples (default 2 frames) are buffered and never holds more than ``capacity`` samples
(default 3 frames, plus one packet if packets are longer) ahead of the playout point: older audio
is skipped to bound the delay. A packet entirely before the playout point is late and dropped; a
second packet for a position already buffered is a duplicate and dropped. A hole in the middle
plays as silence; an empty buffer (the party stopped sending, or its clock is slow) plays
silence and re-buffers from where it stopped. A jump back by more than a second, or a new SSRC,
restarts the buffer (the peer restarted its stream).

Telephone events (RFC 4733)
---------------------------
Packets with the party's configured telephone-event payload type are not mixed. They are
forwarded at once (from :meth:`push`, not at the next tick) into each other party's outgoing
stream that has an event payload type: same payload bytes, that party's SSRC and next sequence
number, its event payload type, the source's marker bit, and a timestamp that maps each source
event (the source's event timestamp) to the receiving stream's current timestamp, so all the
packets of one event keep one timestamp. A repeated packet (same source sequence number, as
the three copies of an event's end packet often are) is repeated with the same sequence number.

Not implemented: RTCP (the glue absorbs the parties' RTCP; the mixer sends no sender reports),
comfort noise (PT 13 packets are counted and treated as silence), packet-loss concealment (a
missing frame is silence), wideband codecs.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np
from numpy.typing import NDArray

from telephony.media.g711 import (
    ALAW_DECODE,
    ALAW_ENCODE,
    ALAW_TO_ULAW,
    PCMA,
    PCMU,
    SILENCE_BYTE,
    ULAW_DECODE,
    ULAW_ENCODE,
    ULAW_TO_ALAW,
)

RATE: Final = 8000  # G.711 sample rate and RTP clock
FRAME: Final = 160  # samples per tick (20 ms)
PERIOD: Final = FRAME / RATE  # seconds per tick
COMFORT_NOISE: Final = 13  # RFC 3389
RTP_HEADER: Final = 12

_HDR = struct.Struct("!BBHII")

#: (party, RTP packet): a packet the I/O layer must send to ``party``'s peer, out of that party's
#: endpoint. A plain tuple: one is made per party per tick.
Outgoing = tuple["Party", bytes]
_EMPTY: tuple[Outgoing, ...] = ()

#: encoding with saturation: ``_ENCODE[sum + _SAT_BIAS + _SAT_ROW[law]]`` for any sum of up to
#: ``_SAT_TALKERS`` int16 frames (clipped to int16 first when more parties could add up)
_SAT_TALKERS: Final = 4
_SAT_BIAS: Final = _SAT_TALKERS * 32768
_SAT_ROW: Final = {PCMU: 0, PCMA: 2 * _SAT_BIAS}


def _saturating(table: NDArray[np.uint8]) -> NDArray[np.uint8]:
    sums = np.arange(-_SAT_BIAS, _SAT_BIAS, dtype=np.int32)
    return table[np.clip(sums, -32768, 32767).astype(np.int16).view(np.uint16)]


_ENCODE: Final[NDArray[np.uint8]] = np.concatenate(
    [_saturating(ULAW_ENCODE), _saturating(ALAW_ENCODE)]
)
#: decoding: ``_DECODE[code + 256 * row]``, row 0 μ-law, 1 A-law, 2 and 3 a quiet μ-law /
#: A-law party (the code is ignored: 0). Each value is the sample minus the party's
#: ``_SAT_ROW`` offset: the offsets cancel in the party's own mix-minus row and come back as a
#: constant in the sum (see ``Mixer.tick``), so one gather decodes and places every party.
_ROW: Final = {PCMU: 0, PCMA: 1}
_QUIET_ROW: Final = {PCMU: 2, PCMA: 3}
_DECODE: Final[NDArray[np.int32]] = np.concatenate(
    [
        ULAW_DECODE.astype(np.int32) - _SAT_ROW[PCMU],
        ALAW_DECODE.astype(np.int32) - _SAT_ROW[PCMA],
        np.full(256, -_SAT_ROW[PCMU], dtype=np.int32),
        np.full(256, -_SAT_ROW[PCMA], dtype=np.int32),
    ]
)
for _t in (_DECODE, _ENCODE):
    _t.setflags(write=False)
_ROW_BYTES: Final = [bytes([r]) * FRAME for r in range(4)]
#: payload re-coding when a packet's law is not the party's: (party law, packet law) -> table
_RECODE: Final = {(PCMU, PCMA): ALAW_TO_ULAW, (PCMA, PCMU): ULAW_TO_ALAW}


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
    b0, b1, seq, ts, ssrc = _HDR.unpack_from(data)
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


class JitterBuffer:
    """One party's G.711 audio (one byte per sample), placed by RTP timestamp; see the module
    docstring.

    ``depth``: samples buffered before playout starts (or restarts after running dry).
    ``capacity``: most samples kept ahead of the playout point (raised to ``depth`` + the packet
    length for long packets). ``jump``: a timestamp this far behind the newest audio means the
    stream restarted. ``silence``: the code byte that fills a gap inside a frame. Counters are
    plain ints.
    """

    __slots__ = (
        "_chunks",
        "_high",
        "_play",
        "_playing",
        "_ref",
        "capacity",
        "depth",
        "duplicates",
        "holes",
        "jump",
        "late",
        "overflows",
        "restarts",
        "silence",
        "underruns",
    )

    def __init__(
        self,
        depth: int = 2 * FRAME,
        capacity: int = 3 * FRAME,
        jump: int = RATE,
        silence: int = SILENCE_BYTE[PCMU],
    ) -> None:
        if not 0 < depth <= capacity:
            raise ValueError(f"need 0 < depth <= capacity, not {depth}, {capacity}")
        self.depth = depth
        self.capacity = capacity
        self.jump = jump
        self.silence = silence
        self._chunks: dict[int, bytes] = {}  # start position -> G.711 bytes
        self._ref: int | None = None  # position of the last accepted packet (for unwrapping)
        self._high: int | None = None  # end of the newest audio accepted
        self._play: int | None = None  # next position to play (a floor while re-buffering)
        self._playing = False
        self.late = 0  # packets dropped: entirely before the playout point
        self.duplicates = 0  # packets dropped: their position was already buffered
        self.overflows = 0  # times audio was skipped to keep within capacity
        self.underruns = 0  # times it ran dry while playing (then it re-buffers)
        self.holes = 0  # ticks with buffered audio after, but none at, the playout point
        self.restarts = 0  # the stream jumped back (or the caller reset it)

    @property
    def buffered(self) -> int:
        """Samples buffered from the playout point (or the oldest audio) to the newest audio."""
        if not self._chunks or self._high is None:
            return 0
        base = self._play if self._playing and self._play is not None else min(self._chunks)
        return self._high - base

    @property
    def playing(self) -> bool:
        return self._playing

    def reset(self) -> None:
        """Forget everything buffered and the stream's position (a new source)."""
        self._chunks.clear()
        self._ref = self._high = self._play = None
        self._playing = False

    def push(self, timestamp: int, samples: bytes) -> bool:
        """Buffer G.711 ``samples`` starting at RTP ``timestamp`` (32-bit, wraps); False if
        dropped."""
        n = len(samples)
        if n == 0:
            return False
        ref = self._ref
        if ref is None:
            pos = timestamp
        else:
            d = (timestamp - ref) & 0xFFFFFFFF
            pos = ref + (d - 0x100000000 if d >= 0x80000000 else d)
        high = self._high
        if high is not None and high - pos > self.jump:
            self.restarts += 1
            self.reset()
            pos, high = timestamp, None
        play = self._play
        if play is not None and pos < play:
            if pos + n <= play:
                self.late += 1
                return False
            samples = samples[play - pos :]  # the tail is still in time
            n -= play - pos
            pos = play
        chunks = self._chunks
        if pos in chunks:
            self.duplicates += 1
            return False
        chunks[pos] = samples
        self._ref = pos
        end = pos + n
        if high is None or end > high:
            self._high = high = end
        base = play if self._playing and play is not None else min(chunks)
        limit = max(self.capacity, self.depth + n)
        if high - base > limit:
            self.overflows += 1
            self._skip_to(high - limit)
        return True

    def pop(self) -> bytes | None:
        """The next 160 samples, or None for silence (nothing to play)."""
        chunks = self._chunks
        if not self._playing:
            if not chunks or self._high is None:
                return None
            first = min(chunks)
            if self._high - first < self.depth:
                return None  # still filling
            self._playing = True
            self._play = first
        play = self._play
        assert play is not None
        c = chunks.pop(play, None)
        if c is not None:
            if len(c) == FRAME:  # the common case: one packet, one frame
                self._play = play + FRAME
                return c
            chunks[play] = c
        end = play + FRAME
        out: bytearray | None = None
        for start in sorted(chunks):
            if start >= end:
                break
            c = chunks.pop(start)
            stop = start + len(c)
            if stop <= play:
                continue
            if out is None:
                out = bytearray([self.silence]) * FRAME
            lo, hi = max(start, play), min(stop, end)
            out[lo - play : hi - play] = c[lo - start : hi - start]
            if stop > end:
                chunks[end] = c[end - start :]
        if out is None and not chunks:
            self.underruns += 1
            self._playing = False  # re-buffer; ``play`` stays as the floor for late packets
            return None
        self._play = end
        if out is None:
            self.holes += 1
            return None
        return bytes(out)

    def _skip_to(self, pos: int) -> None:
        chunks = self._chunks
        for start in sorted(chunks):
            if start >= pos:
                break
            c = chunks.pop(start)
            if start + len(c) > pos:
                chunks[pos] = c[pos - start :]
        if self._playing or (self._play is not None and self._play < pos):
            self._play = pos


@dataclass(frozen=True, slots=True)
class PartyStats:
    """A snapshot of one party's counters.

    ``packets_in``: RTP packets received from the party (any type). ``audio_in``: G.711 packets
    accepted into its jitter buffer. ``late``, ``duplicates``: audio packets dropped (see
    :class:`JitterBuffer`). ``overflows``: times its audio was skipped to bound the delay.
    ``underruns``: times its buffer ran dry. ``holes``: ticks with a gap at the playout point.
    ``restarts``: its stream restarted (new SSRC or timestamp jump). ``lost``: sequence numbers
    never seen (RFC 3550 A.3 "cumulative number of packets lost", floored at 0). ``jitter``:
    RFC 3550 interarrival jitter of its audio, seconds. ``comfort_noise``, ``unsupported``,
    ``malformed``: packets ignored (PT 13, another payload type, bad header or empty payload).
    ``events_in``: telephone-event packets from it; ``events_out``: forwarded to it.
    ``frames_out``: mixed audio packets sent to it.
    """

    label: str
    packets_in: int
    audio_in: int
    late: int
    duplicates: int
    overflows: int
    underruns: int
    holes: int
    restarts: int
    lost: int
    jitter: float
    comfort_noise: int
    unsupported: int
    malformed: int
    events_in: int
    events_out: int
    frames_out: int


class Party:
    """One participant of a :class:`Mixer` (made by :meth:`Mixer.join`).

    ``codec``: the payload type its outgoing stream uses (PCMU 0 or PCMA 8). ``event_pt``: its
    telephone-event payload type (None: not negotiated; its events are then treated as unknown
    payload and none are forwarded to it). ``speak``: its audio and events reach the others.
    ``listen``: it receives the mix (else encoded silence, which keeps the stream and any NAT
    binding alive) and forwarded events. ``ssrc``: the SSRC of its outgoing stream.
    """

    __slots__ = (
        "_base_seq",
        "_event_map",
        "_first",
        "_in_ssrc",
        "_max_seq",
        "_seq",
        "_silence",
        "_transit",
        "_ts",
        "audio_in",
        "codec",
        "comfort_noise",
        "event_pt",
        "events_in",
        "events_out",
        "frames_out",
        "jitter",
        "jitter_buffer",
        "label",
        "listen",
        "malformed",
        "packets_in",
        "speak",
        "ssrc",
        "unsupported",
    )

    def __init__(
        self,
        *,
        label: str,
        codec: int,
        event_pt: int | None,
        speak: bool,
        listen: bool,
        ssrc: int,
        seq: int,
        ts: int,
        jitter_buffer: JitterBuffer,
    ) -> None:
        self.label = label
        self.codec = codec
        self.event_pt = event_pt
        self.speak = speak
        self.listen = listen
        self.ssrc = ssrc
        self.jitter_buffer = jitter_buffer
        self._silence = bytes([SILENCE_BYTE[codec]]) * FRAME
        self._seq = seq  # next outgoing sequence number (unwrapped)
        self._ts = ts  # timestamp of the next outgoing frame (unwrapped)
        self._first = True  # marker bit on the next audio packet
        # source -> (its event ts, our ts, its last seq, our seq for it)
        self._event_map: dict[Party, tuple[int, int, int, int]] = {}
        self._in_ssrc: int | None = None
        self._max_seq: int | None = None  # extended highest sequence number received
        self._base_seq = 0
        self._transit: float | None = None
        self.jitter = 0.0  # RFC 3550 A.8, in timestamp units
        self.packets_in = 0
        self.audio_in = 0
        self.comfort_noise = 0
        self.unsupported = 0
        self.malformed = 0
        self.events_in = 0
        self.events_out = 0
        self.frames_out = 0

    def stats(self) -> PartyStats:
        jb = self.jitter_buffer
        expected = 0 if self._max_seq is None else self._max_seq - self._base_seq + 1
        return PartyStats(
            label=self.label,
            packets_in=self.packets_in,
            audio_in=self.audio_in,
            late=jb.late,
            duplicates=jb.duplicates,
            overflows=jb.overflows,
            underruns=jb.underruns,
            holes=jb.holes,
            restarts=jb.restarts,
            lost=max(0, expected - self.audio_in - jb.late - jb.duplicates),
            jitter=self.jitter / RATE,
            comfort_noise=self.comfort_noise,
            unsupported=self.unsupported,
            malformed=self.malformed,
            events_in=self.events_in,
            events_out=self.events_out,
            frames_out=self.frames_out,
        )

    def __repr__(self) -> str:
        return f"<Party {self.label!r} pt={self.codec} ssrc={self.ssrc:#010x}>"


@dataclass(frozen=True, slots=True)
class MixerStats:
    """``ticks`` run, ``ticks_skipped`` (the I/O layer was too late to catch up), live
    ``parties``."""

    ticks: int
    ticks_skipped: int
    parties: int


class Mixer:
    """One conference. See the module docstring.

    ``depth_frames`` / ``capacity_frames``: each party's jitter allowance (20 ms frames).
    ``rng``: source of SSRCs and initial sequence numbers / timestamps (pass a seeded
    ``random.Random`` for reproducible tests). ``max_catchup``: how many ticks behind
    :meth:`handle_timer` lets the I/O layer catch up; beyond that it skips (see there).
    """

    def __init__(
        self,
        *,
        depth_frames: int = 2,
        capacity_frames: int = 3,
        rng: random.Random | None = None,
        max_catchup: int = 3,
    ) -> None:
        if not 0 < depth_frames <= capacity_frames:
            raise ValueError("need 0 < depth_frames <= capacity_frames")
        self._depth = depth_frames * FRAME
        self._capacity = capacity_frames * FRAME
        self._rng = rng or random.Random()
        self._max_catchup = max(1, max_catchup)
        self._parties: list[Party] = []
        self._resize()
        self._next: float | None = None
        self.ticks = 0
        self.ticks_skipped = 0

    # ------------------------------------------------------------------ membership

    @property
    def parties(self) -> tuple[Party, ...]:
        return tuple(self._parties)

    def join(
        self,
        *,
        codec: int = PCMU,
        event_pt: int | None = None,
        label: str = "",
        speak: bool = True,
        listen: bool = True,
    ) -> Party:
        """Add a party whose outgoing stream is ``codec`` (PCMU 0 or PCMA 8)."""
        if codec not in (PCMU, PCMA):
            raise ValueError(f"the mixer speaks PCMU (0) and PCMA (8), not payload type {codec}")
        if event_pt is not None and (
            not 0 <= event_pt <= 127 or event_pt in (PCMU, PCMA, COMFORT_NOISE)
        ):
            raise ValueError(f"bad telephone-event payload type {event_pt}")
        rng = self._rng
        taken = {p.ssrc for p in self._parties}
        ssrc = rng.getrandbits(32)
        while ssrc in taken:
            ssrc = rng.getrandbits(32)
        party = Party(
            label=label,
            codec=codec,
            event_pt=event_pt,
            speak=speak,
            listen=listen,
            ssrc=ssrc,
            seq=rng.getrandbits(16),
            ts=rng.getrandbits(32),
            jitter_buffer=JitterBuffer(self._depth, self._capacity, silence=SILENCE_BYTE[codec]),
        )
        self._parties.append(party)
        self._resize()
        return party

    def leave(self, party: Party) -> None:
        """Remove ``party`` (its buffered audio is dropped). Idempotent."""
        if party in self._parties:
            self._parties.remove(party)
            self._resize()
            for p in self._parties:
                p._event_map.pop(party, None)

    def _resize(self) -> None:
        """(Re)allocate the per-tick buffers for the current parties (join/leave only).

        ``_inbuf`` holds, per party, 160 little-endian uint16: low byte the G.711 code, high
        byte the ``_DECODE`` row (the party's law, or its quiet row); ``_codes`` reads it
        in place."""
        parties = self._parties
        n = len(parties)
        self._inbuf = bytearray(n * 2 * FRAME)
        self._rows = [_ROW[p.codec] for p in parties]  # the high byte each row holds now
        for i, row in enumerate(self._rows):
            self._inbuf[2 * FRAME * i + 1 : 2 * FRAME * (i + 1) : 2] = _ROW_BYTES[row]
        self._codes: NDArray[np.uint16] = np.frombuffer(self._inbuf, dtype="<u2").reshape(n, FRAME)
        # sum of every row's offset, put back into the total: see _DECODE
        self._bias = _SAT_BIAS + sum(_SAT_ROW[p.codec] for p in parties)
        self._clip: tuple[NDArray[np.int32], NDArray[np.int32]] | None = None
        if n - 1 > _SAT_TALKERS:  # sums may leave the saturating table: clip them per row
            low = np.array([[_SAT_BIAS + _SAT_ROW[p.codec] - 32768] for p in parties], np.int32)
            self._clip = (low, low + 65535)

    def set_mode(
        self, party: Party, *, speak: bool | None = None, listen: bool | None = None
    ) -> None:
        """Change whether ``party`` is heard (``speak``) and hears the others (``listen``):
        consult hold is ``speak=False, listen=False`` for the caller."""
        if speak is not None:
            party.speak = speak
        if listen is not None:
            party.listen = listen

    # ------------------------------------------------------------------ input

    def receive(self, party: Party, data: bytes, now: float) -> Sequence[Outgoing]:
        """A datagram from ``party``'s peer, arrived at ``now``; returns packets to send at
        once (forwarded telephone events), usually none."""
        if len(data) > RTP_HEADER and data[0] == 0x80:  # no CSRC, extension or padding
            _b0, b1, seq, ts, ssrc = _HDR.unpack_from(data)
            return self._accept(party, b1 & 0x7F, b1 > 0x7F, seq, ts, ssrc, data[12:], now)
        h = parse_rtp(data)
        if h is None:
            party.packets_in += 1
            party.malformed += 1
            return _EMPTY
        pt, marker, seq, ts, ssrc, start, end = h
        return self._accept(party, pt, marker, seq, ts, ssrc, data[start:end], now)

    def push(
        self,
        party: Party,
        payload_type: int,
        payload: bytes,
        *,
        seq: int,
        timestamp: int,
        now: float,
        marker: bool = False,
        ssrc: int = 0,
    ) -> Sequence[Outgoing]:
        """Like :meth:`receive` with the header fields already parsed."""
        return self._accept(party, payload_type, marker, seq, timestamp, ssrc, payload, now)

    def _accept(  # noqa: PLR0917 (the per-packet path: positional on purpose)
        self,
        party: Party,
        pt: int,
        marker: bool,
        seq: int,
        ts: int,
        ssrc: int,
        payload: bytes,
        now: float,
    ) -> Sequence[Outgoing]:
        party.packets_in += 1
        if pt == party.event_pt:
            party.events_in += 1
            if not party.speak or len(payload) < 4:
                return _EMPTY
            return self._forward_event(party, marker, seq, ts, payload)
        if pt != party.codec:
            recode = _RECODE.get((party.codec, pt))
            if recode is None:
                if pt == COMFORT_NOISE:
                    party.comfort_noise += 1
                else:
                    party.unsupported += 1
                return _EMPTY
            payload = payload.translate(recode)
        if not payload:
            party.malformed += 1
            return _EMPTY
        jb = party.jitter_buffer
        if ssrc != party._in_ssrc:
            if party._in_ssrc is not None:
                jb.restarts += 1
                jb.reset()
                party._transit = None
            party._in_ssrc = ssrc
            party._max_seq = None
        # sequence numbers: extended highest seen, for the loss count (RFC 3550 A.1)
        top = party._max_seq
        if top is None:
            party._max_seq = party._base_seq = seq
        else:
            d = (seq - top) & 0xFFFF
            if d < 0x8000:
                party._max_seq = top + d
        if jb.push(ts, payload):
            party.audio_in += 1
            # interarrival jitter (RFC 3550 A.8), in timestamp units
            transit = now * RATE - ts
            prev = party._transit
            if prev is not None:
                d2 = abs(transit - prev)
                if d2 < 0x80000000:  # not across a timestamp wrap / restart
                    party.jitter += (d2 - party.jitter) / 16.0
            party._transit = transit
        return _EMPTY

    def _forward_event(
        self, src: Party, marker: bool, seq: int, ts: int, payload: bytes
    ) -> list[Outgoing]:
        out: list[Outgoing] = []
        m = 0x80 if marker else 0
        for q in self._parties:
            if q is src or q.event_pt is None or not q.listen:
                continue
            seen = q._event_map.get(src)
            if seen is not None and seen[2] == seq:  # a repeat (RFC 4733 end packets): same seq
                out_ts, out_seq = seen[1], seen[3]
            else:
                out_ts = seen[1] if seen is not None and seen[0] == ts else q._ts
                out_seq = q._seq
                q._seq += 1
                q._event_map[src] = (ts, out_ts, seq, out_seq)
            header = _HDR.pack(0x80, m | q.event_pt, out_seq & 0xFFFF, out_ts & 0xFFFFFFFF, q.ssrc)
            q.events_out += 1
            out.append((q, header + payload))
        return out

    # ------------------------------------------------------------------ output

    def tick(self, now: float) -> list[Outgoing]:
        """Mix one 20 ms frame: one packet per party, in join order. ``now`` is the tick's
        time (recorded only: the mixer's output clock is the tick count)."""
        self.ticks += 1
        parties = self._parties
        if not parties:
            return []
        inbuf, rows = self._inbuf, self._rows
        at = 0
        for i, p in enumerate(parties):
            f = p.jitter_buffer.pop()
            if f is None or not p.speak:
                row = _QUIET_ROW[p.codec]
            else:
                row = _ROW[p.codec]
                inbuf[at : at + 2 * FRAME : 2] = f
            if row != rows[i]:  # the party fell quiet or spoke again: switch its table row
                rows[i] = row
                inbuf[at + 1 : at + 2 * FRAME : 2] = _ROW_BYTES[row]
            at += 2 * FRAME
        # y = sample - offset(law); total = sum(y) + bias; idx = total - y_i
        #   = (sum of the others) + _SAT_BIAS + offset(law_i): the saturating table's index
        y = _DECODE.take(self._codes)
        idx = np.add.reduce(y, axis=0, initial=self._bias) - y
        if self._clip is not None:
            np.clip(idx, self._clip[0], self._clip[1], out=idx)
        mixed = _ENCODE.take(idx).tobytes()  # encode + saturate, every party at once
        out: list[Outgoing] = []
        pack = _HDR.pack
        at = 0
        for p in parties:
            payload = mixed[at : at + FRAME] if p.listen else p._silence
            at += FRAME
            b1 = p.codec
            if p._first:
                b1 |= 0x80
                p._first = False
            out.append((p, pack(0x80, b1, p._seq & 0xFFFF, p._ts & 0xFFFFFFFF, p.ssrc) + payload))
            p._seq += 1
            p._ts += FRAME
            p.frames_out += 1
        return out

    def start(self, now: float) -> None:
        """Start the tick clock: the first tick is due at ``now`` + 20 ms."""
        self._next = now + PERIOD

    def get_timer(self) -> float | None:
        """When the next tick is due (None until :meth:`start`)."""
        return self._next

    def handle_timer(self, now: float) -> list[Outgoing]:
        """Run the tick that is due by ``now`` (one at most: if several are due, call again
        while ``get_timer() <= now``, and let the I/O layer read its sockets in between, so a
        catch-up tick finds the packets that arrived during the stall). More than
        ``max_catchup`` ticks behind, the excess is skipped: each outgoing timestamp jumps by
        the skipped frames (the gap is real time the receivers play as silence) and the next
        packet carries the marker bit."""
        due = self._next
        if due is None or now < due:
            return []
        behind = int((now - due) / PERIOD)  # whole periods due after this one
        if behind > self._max_catchup:
            skipped = behind - self._max_catchup
            due += skipped * PERIOD
            self.ticks_skipped += skipped
            for p in self._parties:
                p._ts += skipped * FRAME
                p._first = True
        self._next = due + PERIOD
        return self.tick(due)

    def stats(self) -> MixerStats:
        return MixerStats(self.ticks, self.ticks_skipped, len(self._parties))
