"""One participant of a conference mixer: its modes, its outgoing stream's state, its counters.

A :class:`Party` is made by :meth:`telephony.media.mixer.Mixer.join` and is the handle the I/O
layer passes back with each packet. The mixer reads and advances its private fields (outgoing
sequence number and timestamp, marker, table rows, hold tone position) on every tick; the
receive statistics of RFC 3550 (extended highest sequence number, loss, interarrival jitter) are
kept here, next to the jitter buffer they describe.
"""

from __future__ import annotations

from dataclasses import dataclass

from telephony.media.g711 import SILENCE_BYTE
from telephony.media.jitter import JitterBuffer
from telephony.media.rtp import FRAME, RATE


@dataclass(frozen=True, slots=True)
class PartyStats:
    """A snapshot of one party's counters.

    ``packets_in``: RTP packets received from the party (any type). ``audio_in``: G.711 packets
    accepted into its jitter buffer. ``late``, ``duplicates``: audio packets dropped (see
    :class:`~telephony.media.jitter.JitterBuffer`). ``overflows``: times its audio was skipped to
    bound the delay. ``underruns``: times its buffer ran dry. ``holes``: ticks with a gap at the
    playout point. ``restarts``: its stream restarted (new SSRC or timestamp jump). ``lost``:
    sequence numbers never seen (RFC 3550 A.3 "cumulative number of packets lost", floored at 0).
    ``jitter``: RFC 3550 interarrival jitter of its audio, seconds. ``comfort_noise``,
    ``unsupported``, ``malformed``: packets ignored (PT 13, another payload type, bad header or
    empty payload). ``events_in``: telephone-event packets from it; ``events_out``: forwarded to it.
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
    """One participant of a :class:`~telephony.media.mixer.Mixer` (made by ``Mixer.join``).

    ``codec``: the payload type its outgoing stream uses (PCMU 0 or PCMA 8). ``event_pt``: its
    telephone-event payload type (None: not negotiated; its events are then treated as unknown
    payload and none are forwarded to it). ``speak``: its audio and events reach the others.
    ``listen``: it receives the mix (else encoded silence, which keeps the stream and any NAT
    binding alive) and forwarded events. ``hold_tone``: held with the comfort tone: neither
    heard nor hearing, it receives the mixer's hold tone instead of the mix (overrides ``speak``
    and ``listen``, which apply again once it is off). ``ssrc``: the SSRC of its outgoing
    stream. Change the modes with ``Mixer.set_mode``.
    """

    __slots__ = (
        "_base_seq",
        "_event_map",
        "_first",
        "_in_ssrc",
        "_max_seq",
        "_quiet_row",
        "_row",
        "_seq",
        "_silence",
        "_tone",
        "_tone_at",
        "_transit",
        "_ts",
        "audio_in",
        "codec",
        "comfort_noise",
        "event_pt",
        "events_in",
        "events_out",
        "frames_out",
        "hold_tone",
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
        hold_tone: bool,
        tone: bytes,
        rows: tuple[int, int],
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
        self.hold_tone = hold_tone
        self._tone = tone  # one period of the hold tone in this party's law
        self._tone_at = 0  # where the next frame of it starts
        self.ssrc = ssrc
        self.jitter_buffer = jitter_buffer
        self._silence = bytes([SILENCE_BYTE[codec]]) * FRAME
        self._row, self._quiet_row = rows  # its rows of the mixer's decode table: law, quiet
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

    def _count(self, seq: int, ts: int, payload: bytes, now: float) -> None:
        """An audio packet of the current source (``_max_seq`` set): buffer and count it."""
        # sequence numbers: extended highest seen, for the loss count (RFC 3550 A.1)
        top = self._max_seq
        assert top is not None
        d = (seq - top) & 0xFFFF
        if d < 0x8000:
            self._max_seq = top + d
        if self.jitter_buffer.push(ts, payload):
            self.audio_in += 1
            # interarrival jitter (RFC 3550 A.8), in timestamp units
            transit = now * RATE - ts
            prev = self._transit
            if prev is not None:
                d2 = abs(transit - prev)
                if d2 < 0x80000000:  # not across a timestamp wrap / restart
                    self.jitter += (d2 - self.jitter) / 16.0
            self._transit = transit

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
