"""The conference mixer for warm handoffs: sans-IO, G.711 in, G.711 out, 20 ms frames.

Model
-----
A :class:`Mixer` holds the parties of one conference (typically caller, dispatcher and 988
counselor). :meth:`Mixer.join` returns a :class:`~telephony.media.party.Party` handle; the I/O layer
feeds each party's RTP packets in with :meth:`Mixer.receive` (raw datagram) or :meth:`Mixer.push`
(fields) and the arrival time, and calls :meth:`Mixer.tick` every 20 ms (:meth:`get_timer` /
:meth:`handle_timer` do the scheduling arithmetic, house rule 2). No sockets, no clock, no asyncio
here; :mod:`telephony.media.conference` is the glue to the relay's endpoints.

Each tick produces, for every party, one RTP packet with 160 samples (20 ms at 8 kHz) encoded in
that party's codec (PCMU or PCMA): the sum of the *other* parties' current frames, saturated to
the int16 range (clipping, never wrap-around), never the party's own audio (mix-minus). The sum
is taken in int32 once (``total``) and each party's own frame subtracted, so the cost does not
grow with the square of the party count. Decoding uses each party's law, encoding the receiving
party's negotiated codec, so PCMU and PCMA legs in one conference are transcoded as a side
effect (a packet in the other law than the party negotiated is re-coded on arrival).

The hot path costs a fixed number of numpy calls per tick (about five), whatever the party
count, and :func:`tick_all` makes them once for every conference due on the shared clock: each
party's G.711 bytes are read in place as uint16 (code + 256 x table row: its law, or "quiet"),
one gather decodes, one reduction sums, one subtraction makes the mix-minus and one gather
through a *saturating* encode table (indexed by the int32 sum itself: clipping costs nothing)
encodes every frame. Jitter buffers hold G.711 bytes: nothing is decoded on arrival. Why it is
shaped so: docs/media.md, "How it is fast enough".

Outgoing streams
----------------
Each party's outgoing stream is the mixer's own RTP source (RFC 3550 §7.3 mixer): its own SSRC,
sequence number and timestamp (random initial values), marker bit on the first packet and after
a gap (ticks :meth:`handle_timer` skipped). The RTP headers of the inputs are never copied.
CSRC lists are not written (the parties do not need them and they would cost 4 bytes per
contributor per packet).

Jitter allowance
----------------
Per party a :class:`~telephony.media.jitter.JitterBuffer` (its own module) places the G.711 bytes
by RTP timestamp: reordering, any packetisation cut into 20 ms frames, a bounded delay (2 frames
to start, 3 at most), late and duplicate packets dropped, silence when there is nothing to play.
A new SSRC restarts the party's buffer (the peer restarted its stream).

Hold tone
---------
A party in hold-tone mode (:meth:`Mixer.set_mode` ``hold_tone=True``: the caller during a
consult) is not heard by the others and receives, instead of the mix, the comfort tone of
:mod:`telephony.media.tones` (by default 425 Hz, 0.25 s every 4 s, -20 dBm0), precomputed in its
own law, from the start of the pattern each time the hold begins. Its outgoing stream carries on
as always (same SSRC, consecutive sequence numbers and timestamps), so leaving hold-tone mode
switches the stream back to the mix at the next tick, seamlessly. Hold-tone mode overrides
``speak`` and ``listen``; they apply again when it ends.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

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
from telephony.media.jitter import JitterBuffer
from telephony.media.party import Party, PartyStats
from telephony.media.rtp import (
    COMFORT_NOISE,
    FRAME,
    PERIOD,
    RTP_HEADER,
    parse_rtp,
)
from telephony.media.rtp import HEADER as _HDR
from telephony.media.tones import COMFORT_TONE, HoldTone, pattern

__all__ = ["Mixer", "MixerStats", "Outgoing", "Party", "PartyStats", "tick_all"]


#: (party, RTP packet): a packet the I/O layer must send to ``party``'s peer, out of that party's
#: endpoint. A plain tuple: one is made per party per tick.
Outgoing = tuple[Party, bytes]
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
#: most mixers :func:`tick_all` mixes in one block: 64 3-party mixers are ~120 KiB of int32
#: sums; 400 mixers in one block measured 20 % slower than in blocks of 48-96 (bench/RESULTS.md)
_CHUNK: Final = 64


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
    ``comfort_tone``: what a party in hold-tone mode hears (by default
    :data:`~telephony.media.tones.COMFORT_TONE`).
    """

    def __init__(
        self,
        *,
        depth_frames: int = 2,
        capacity_frames: int = 3,
        rng: random.Random | None = None,
        max_catchup: int = 3,
        comfort_tone: HoldTone = COMFORT_TONE,
    ) -> None:
        if not 0 < depth_frames <= capacity_frames:
            raise ValueError("need 0 < depth_frames <= capacity_frames")
        self._tones = {law: pattern(comfort_tone, law) for law in (PCMU, PCMA)}
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
        hold_tone: bool = False,
    ) -> Party:
        """Add a party whose outgoing stream is ``codec`` (PCMU 0 or PCMA 8); the modes are
        those of :meth:`set_mode`."""
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
            hold_tone=hold_tone,
            tone=self._tones[codec],
            rows=(_ROW[codec], _QUIET_ROW[codec]),
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
        # the index range of each row's int16 window of the saturating table (clipping to it is
        # what the table does by itself up to _SAT_TALKERS others; beyond, sums must be clipped)
        self._low = np.array([[_SAT_BIAS + _SAT_ROW[p.codec] - 32768] for p in parties], np.int32)
        self._must_clip = n - 1 > _SAT_TALKERS

    def set_mode(
        self,
        party: Party,
        *,
        speak: bool | None = None,
        listen: bool | None = None,
        hold_tone: bool | None = None,
    ) -> None:
        """Change whether ``party`` is heard (``speak``), hears the others (``listen``), or is
        held with the comfort tone (``hold_tone``: neither heard nor hearing, it receives the
        hold tone, from its start each time the hold begins; ``speak`` and ``listen`` apply
        again when it ends). None leaves a mode as it is. Consult hold: ``hold_tone=True`` (or
        ``speak=False, listen=False`` for silence); the switch takes effect at the next tick
        and the party's outgoing stream carries on without a break."""
        if speak is not None:
            party.speak = speak
        if listen is not None:
            party.listen = listen
        if hold_tone is not None:
            if hold_tone and not party.hold_tone:
                party._tone_at = 0
            party.hold_tone = hold_tone

    # ------------------------------------------------------------------ input

    def receive(self, party: Party, data: bytes, now: float) -> Sequence[Outgoing]:
        """A datagram from ``party``'s peer, arrived at ``now``; returns packets to send at
        once (forwarded telephone events), usually none."""
        if len(data) > RTP_HEADER and data[0] == 0x80:  # no CSRC, extension or padding
            _b0, b1, seq, ts, ssrc = _HDR.unpack_from(data)
            if b1 == party.codec and ssrc == party._in_ssrc:
                # the common case, short: audio in the party's own law from its known source
                party.packets_in += 1
                party._count(seq, ts, data[12:], now)
                return _EMPTY
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
            if not party.speak or party.hold_tone or len(payload) < 4:
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
            party._max_seq = party._base_seq = seq
        party._count(seq, ts, payload, now)
        return _EMPTY

    def _forward_event(
        self, src: Party, marker: bool, seq: int, ts: int, payload: bytes
    ) -> list[Outgoing]:
        out: list[Outgoing] = []
        m = 0x80 if marker else 0
        for q in self._parties:
            if q is src or q.event_pt is None or not q.listen or q.hold_tone:
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
        time (recorded only: the mixer's output clock is the tick count). :func:`tick_all`
        does the same for many mixers at once."""
        self.ticks += 1
        if not self._parties:
            return []
        self._fill()
        # y = sample - offset(law); total = sum(y) + bias; idx = total - y_i
        #   = (sum of the others) + _SAT_BIAS + offset(law_i): the saturating table's index
        y = _DECODE.take(self._codes)
        idx = np.add.reduce(y, axis=0, initial=self._bias) - y
        if self._must_clip:
            np.clip(idx, self._low, self._low + 65535, out=idx)
        # encode + saturate, every party at once
        return self._emit(_ENCODE.take(idx).tobytes(), 0)

    def _fill(self) -> None:
        """Each party's next frame into ``_inbuf``, or its row switched to quiet (it has
        nothing to play, or is not heard)."""
        inbuf, rows = self._inbuf, self._rows
        step = 2 * FRAME
        at = 0
        for i, p in enumerate(self._parties):
            f = p.jitter_buffer.pop()
            if f is None or not p.speak or p.hold_tone:
                row = p._quiet_row
            else:
                row = p._row
                inbuf[at : at + step : 2] = f
            if row != rows[i]:  # the party fell quiet or spoke again: switch its table row
                rows[i] = row
                inbuf[at + 1 : at + step : 2] = _ROW_BYTES[row]
            at += step

    def _emit(self, mixed: bytes, at: int) -> list[Outgoing]:
        """The parties' packets, their mixes read from ``mixed`` at ``at`` (one frame each)."""
        out: list[Outgoing] = []
        pack = _HDR.pack
        n = FRAME
        for p in self._parties:
            if p.hold_tone:
                i = p._tone_at
                payload = p._tone[i : i + n]
                p._tone_at = i + n if i + n < len(p._tone) else 0
            elif p.listen:
                payload = mixed[at : at + n]
            else:
                payload = p._silence
            at += n
            b1 = p.codec
            if p._first:
                b1 |= 0x80
                p._first = False
            seq, ts = p._seq, p._ts
            out.append((p, pack(0x80, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, p.ssrc) + payload))
            p._seq, p._ts = seq + 1, ts + n
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
        due = self.take_due(now)
        return [] if due is None else self.tick(due)

    def take_due(self, now: float) -> float | None:
        """The first half of :meth:`handle_timer`: if a tick is due by ``now``, move the clock
        past it (skipping as described there) and return its time; the caller then runs it with
        :meth:`tick` or :func:`tick_all`. None: nothing is due."""
        due = self._next
        if due is None or now < due:
            return None
        behind = int((now - due) / PERIOD)  # whole periods due after this one
        if behind > self._max_catchup:
            skipped = behind - self._max_catchup
            due += skipped * PERIOD
            self.ticks_skipped += skipped
            for p in self._parties:
                p._ts += skipped * FRAME
                p._first = True
        self._next = due + PERIOD
        return due

    def stats(self) -> MixerStats:
        return MixerStats(self.ticks, self.ticks_skipped, len(self._parties))


def tick_all(
    mixers: Sequence[Mixer],
    now: float,
    *,
    on_error: Callable[[int, Exception], None] | None = None,
) -> list[list[Outgoing]]:
    """:meth:`Mixer.tick` of every mixer in ``mixers`` (distinct), the same packets, in a few
    numpy calls for them all: the conferences of one clock share a tick, and numpy's per-call
    cost, not the 160-sample arithmetic, is most of a mixer's tick. The mixers are grouped by
    party count (typically all 3, or 1 for a held caller alone): a group's frames are one
    (mixers, parties, 160) block, decoded by one gather, summed per mixer by ``parties - 1``
    additions, made mix-minus by one broadcast subtraction and encoded by one gather; in
    chunks of at most ``_CHUNK`` mixers, so a block stays in a core's L2 cache.

    ``on_error``: called (inside the ``except``) with the index of a mixer whose own part of the
    tick raised (a bug); that mixer's entry is then ``[]`` and the others are ticked as usual.
    Without it the exception propagates."""
    groups: dict[int, list[int]] = {}  # party count -> indexes of the mixers in the mix
    for i, m in enumerate(mixers):
        m.ticks += 1
        n = len(m._parties)
        if not n:
            continue
        try:
            m._fill()
        except Exception as exc:
            if on_error is None:
                raise
            on_error(i, exc)
            continue
        groups.setdefault(n, []).append(i)
    out: list[list[Outgoing]] = [[] for _ in mixers]
    chunks = [
        (n, members[c : c + _CHUNK])
        for n, members in groups.items()
        for c in range(0, len(members), _CHUNK)
    ]
    for n, chunk in chunks:
        ms = [mixers[i] for i in chunk]
        y = _DECODE.take(np.concatenate([m._codes for m in ms])).reshape(len(ms), n, FRAME)
        # total = sum(y) + bias per mixer; idx = total - y_i (see Mixer.tick)
        total = y[:, 0] + np.array([[m._bias] for m in ms], dtype=np.int32)
        for j in range(1, n):
            total += y[:, j]
        idx = total[:, None, :] - y
        if n - 1 > _SAT_TALKERS:  # sums may leave the saturating table
            low = np.concatenate([m._low for m in ms]).reshape(len(ms), n, 1)
            np.clip(idx, low, low + 65535, out=idx)
        mixed = _ENCODE.take(idx).tobytes()
        for k, i in enumerate(chunk):
            try:
                out[i] = mixers[i]._emit(mixed, k * n * FRAME)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(i, exc)
    return out
