"""Tones the media layer plays itself: the comfort tone a held caller hears during a consult.

While the dispatcher consults the 988 counselor, the caller is held (issue 5). Silence would
sound like a dropped call to someone in crisis, so the mixer can instead send the held party a
short, quiet tone that repeats: "still connected, please hold". Every constant of that tone is
here, in :data:`COMFORT_TONE`:

=========  ==========  ==================================================================
field      default     why
=========  ==========  ==================================================================
freq       425 Hz      ITU-T E.180 puts the audible tones of the telephone service in the
                       400-450 Hz band; 425 Hz is the value most administrations use, so it
                       reads as "the network", not as a ring, a busy signal or music
on         0.25 s      one short beep ...
period     4 s         ... every 4 s: often enough to reassure, rare enough not to nag
level      -20 dBm0    quiet: 23 dB below a full-scale sine, so it never startles
ramp       5 ms        raised-cosine rise and fall, so the beep starts and ends without a
                       click (0.25 s is not a whole number of 425 Hz cycles)
=========  ==========  ==================================================================

Level: dBm0 as G.711 defines it, relative to the digital milliwatt. A sine of peak amplitude
32768 (the 16-bit full scale of the G.191 convention the codec tables follow) is
:data:`FULL_SCALE_DBM0` = +3.14 dBm0 (G.711's A-law overload point; μ-law's is +3.17, 0.03 dB
apart), so a tone of ``level`` dBm0 has the peak ``32768 * 10 ** ((level - 3.14) / 20)``:
-20 dBm0 is a peak of 2,283.

The pattern starts with the tone (the held party hears it at once) and is precomputed per law,
one period of G.711 bytes (:func:`pattern`, cached): playing it costs a slice per 20 ms frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Final

import numpy as np
from numpy.typing import NDArray

from telephony.media import g711
from telephony.media.rtp import FRAME, RATE

#: the level of a full-scale sine (peak 32768) in dBm0 (ITU-T G.711, A-law)
FULL_SCALE_DBM0: Final = 3.14


@dataclass(frozen=True, slots=True)
class HoldTone:
    """A repeating single-frequency tone: ``on`` seconds of ``freq`` Hz at ``level`` dBm0 at
    the start of every ``period`` seconds, rising and falling over ``ramp`` seconds. ``period``
    must be a whole number of 20 ms frames."""

    freq: float = 425.0
    on: float = 0.25
    period: float = 4.0
    level: float = -20.0
    ramp: float = 0.005

    def __post_init__(self) -> None:
        frames = self.period * RATE / FRAME
        if frames < 1 or abs(frames - round(frames)) > 1e-9:
            raise ValueError(f"the period must be a whole number of 20 ms, not {self.period} s")
        if not 0 < self.on <= self.period:
            raise ValueError(f"need 0 < on <= period, not {self.on}, {self.period}")
        if not 0 < self.freq < RATE / 2:
            raise ValueError(f"the frequency must be below {RATE // 2} Hz, not {self.freq}")
        if self.level > FULL_SCALE_DBM0:
            raise ValueError(f"{self.level} dBm0 is beyond G.711's full scale")
        if not 0 <= 2 * self.ramp <= self.on:
            raise ValueError(f"need 0 <= 2 * ramp <= on, not ramp {self.ramp}")


#: the tone a held caller hears (see the module docstring)
COMFORT_TONE: Final = HoldTone()


def amplitude(level: float) -> float:
    """Peak amplitude (16-bit linear) of a sine at ``level`` dBm0."""
    return 32768 * 10 ** ((level - FULL_SCALE_DBM0) / 20)


def samples(tone: HoldTone) -> NDArray[np.int16]:
    """One period of ``tone`` as 16-bit linear samples at 8 kHz."""
    n = round(tone.period * RATE)
    on = round(tone.on * RATE)
    ramp = round(tone.ramp * RATE)
    t = np.arange(on, dtype=np.float64)
    wave = amplitude(tone.level) * np.sin(2 * math.pi * tone.freq * t / RATE)
    if ramp:
        rise = 0.5 - 0.5 * np.cos(math.pi * np.arange(ramp, dtype=np.float64) / ramp)
        wave[:ramp] *= rise
        wave[on - ramp :] *= rise[::-1]
    out = np.zeros(n, dtype=np.int16)
    out[:on] = np.round(wave).astype(np.int16)
    return out


@cache
def pattern(tone: HoldTone, codec: int) -> bytes:
    """One period of ``tone`` encoded in ``codec`` (PCMU 0 / PCMA 8): ``period * 8000`` bytes,
    a whole number of 160-byte frames."""
    return g711.encode(samples(tone), codec)
