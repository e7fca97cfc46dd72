"""The per-party jitter buffer of the conference mixer: G.711 bytes placed by RTP timestamp.

Sans-IO (no clock: the mixer pops one 20 ms frame per tick). Per party a :class:`JitterBuffer`
places the G.711 bytes by RTP timestamp (so packets are reordered, and any packetisation --
10, 20, 30 ms -- is cut into 20 ms frames; a gap inside a frame is filled with the law's silence
code). It starts playing once ``depth`` samples (default 2 frames) are buffered and never holds
more than ``capacity`` samples (default 3 frames, plus one packet if packets are longer) ahead
of the playout point: older audio is skipped to bound the delay. A packet entirely before the
playout point is late and dropped; a second packet for a position already buffered is a
duplicate and dropped. A hole in the middle plays as silence; an empty buffer (the party
stopped sending, or its clock is slow) plays silence and re-buffers from where it stopped. A
jump back by more than a second restarts the buffer (the peer restarted its stream; the mixer
also restarts it on a new SSRC).

Nothing is decoded here: the buffer holds bytes, one per sample, so a packet's arrival costs no
numpy call (:mod:`telephony.media.mixer` decodes every party's frame at once per tick).
"""

from __future__ import annotations

from telephony.media.g711 import PCMU, SILENCE_BYTE
from telephony.media.rtp import FRAME, RATE


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
        ahead = high - (play if self._playing and play is not None else min(chunks))
        if ahead > self.capacity and ahead > self.depth + n:  # too much: skip the oldest
            self.overflows += 1
            self._skip_to(high - max(self.capacity, self.depth + n))
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
