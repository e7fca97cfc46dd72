"""Consult hold with a comfort tone, in memory (fake clock), measured as audio.

The held party's output is decoded and measured with a single-bin DFT (a Goertzel filter's
output, :func:`tests.unit.test_mixer.level`) over 1600-sample windows (200 ms: 5 Hz bins, so
the 425 Hz hold tone and the parties' 440, 1000 and 1800 Hz tones each sit on a bin of their
own and do not leak into each other's). The tone's level is checked against G.711's own
reference, the digital milliwatt (0 dBm0).
"""

from __future__ import annotations

import itertools
import math
import struct

import numpy as np
import pytest
from numpy.typing import NDArray

from telephony.media import g711
from telephony.media.g711 import PCMA, PCMU
from telephony.media.mixer import Mixer
from telephony.media.rtp import FRAME, RATE
from telephony.media.tones import COMFORT_TONE, FULL_SCALE_DBM0, HoldTone, amplitude, pattern
from tests.unit.test_mixer import (
    ABSENT,
    CALLER_HZ,
    COUNSELOR_HZ,
    DISPATCHER_HZ,
    Call,
    assert_hears,
    level,
    sipp_capture,
    three_way,
)

TONE_HZ = COMFORT_TONE.freq
SPAN = 1600  # 200 ms: 85 cycles of 425 Hz, 88 of 440 Hz: whole cycles of every tone
PERIOD_SAMPLES = round(COMFORT_TONE.period * RATE)  # 32,000: 4 s
ON_SAMPLES = round(COMFORT_TONE.on * RATE)  # 2,000: 0.25 s
PERIOD_FRAMES = PERIOD_SAMPLES // FRAME  # 200 ticks
OTHERS = (CALLER_HZ, DISPATCHER_HZ, COUNSELOR_HZ)


def db(ratio: float) -> float:
    return 20 * math.log10(ratio)


def on_window(samples: NDArray[np.int16], period: int) -> NDArray[np.int16]:
    """The steady middle of the ``period``-th beep (past the 5 ms ramps)."""
    start = period * PERIOD_SAMPLES + (ON_SAMPLES - SPAN) // 2
    return samples[start : start + SPAN]


def off_windows(samples: NDArray[np.int16], period: int) -> list[NDArray[np.int16]]:
    """Every whole 200 ms window between the ``period``-th beep and the next."""
    first = period * PERIOD_SAMPLES + ON_SAMPLES
    last = min((period + 1) * PERIOD_SAMPLES, len(samples))
    return [samples[i : i + SPAN] for i in range(first, last - SPAN + 1, SPAN)]


def assert_comfort_tone(samples: NDArray[np.int16], periods: int, silence: int) -> None:
    """``periods`` whole periods of the comfort tone: 425 Hz at -20 dBm0 for 0.25 s, then
    nothing (every sample within ``silence`` of 0: the law's silence code) for 3.75 s; no
    trace of any party's tone anywhere."""
    assert len(samples) >= periods * PERIOD_SAMPLES
    want = amplitude(COMFORT_TONE.level)
    for k in range(periods):
        on = on_window(samples, k)
        got = level(on, TONE_HZ)
        assert abs(db(got / want)) < 0.3, f"period {k}: {got:.0f} vs {want:.0f}"
        for f in OTHERS:
            assert level(on, f) <= ABSENT, f"period {k}: {f} Hz leaked into the hold tone"
        offs = off_windows(samples, k)
        assert len(offs) >= 18
        for w in offs:
            assert int(np.abs(w.astype(np.int32)).max()) <= silence
            assert level(w, TONE_HZ) < 1 and all(level(w, f) < 1 for f in OTHERS)


def envelope(samples: NDArray[np.int16]) -> list[bool]:
    """Per 20 ms frame: does it carry the tone (peak above the silence code)?"""
    frames = samples[: len(samples) // FRAME * FRAME].reshape(-1, FRAME).astype(np.int32)
    return [bool(x) for x in np.abs(frames).max(axis=1) > 8]


# ---------------------------------------------------------------------------- the tone itself


def test_the_tone_level_is_dbm0_as_g711_defines_it() -> None:
    """amplitude(0 dBm0) is the peak of G.711's digital milliwatt (Tables 5 and 6: the 1 kHz
    0 dBm0 reference sequences), to within G.711's own 0.03 dB between the laws."""
    for codes, law, tolerance in (
        (b"\x1e\x0b\x0b\x1e\x9e\x8b\x8b\x9e", PCMU, 0.1),
        (b"\x34\x21\x21\x34\xb4\xa1\xa1\xb4", PCMA, 0.02),
    ):
        x = g711.decode(codes, law).astype(np.float64)
        peak = math.sqrt(2 * float(np.mean(x * x)))  # the sine's peak from its power
        assert abs(db(amplitude(0.0) / peak)) < tolerance, (law, peak)
    assert amplitude(FULL_SCALE_DBM0) == 32768
    assert round(amplitude(-20.0)) == 2283


@pytest.mark.parametrize("law", [PCMU, PCMA])
def test_the_comfort_tone_pattern(law: int) -> None:
    """One 4 s period per law: 0.25 s of 425 Hz at -20 dBm0 rising and falling without a click,
    then the law's silence code."""
    p = pattern(COMFORT_TONE, law)
    assert len(p) == PERIOD_SAMPLES == 200 * FRAME
    x = g711.decode(p, law)
    assert_comfort_tone(x, 1, silence=8)
    assert p[ON_SAMPLES:] == bytes([g711.SILENCE_BYTE[law]]) * (PERIOD_SAMPLES - ON_SAMPLES)
    ramp = round(COMFORT_TONE.ramp * RATE)
    top = amplitude(COMFORT_TONE.level)
    edges = np.abs(np.concatenate([x[:4], x[ON_SAMPLES - 4 : ON_SAMPLES]]).astype(np.int32))
    assert edges.max() < 0.05 * top  # it starts and ends near zero: no click
    assert np.abs(x[ramp : ON_SAMPLES - ramp].astype(np.int32)).max() > 0.95 * top


def test_hold_tone_settings_are_checked() -> None:
    for bad in (
        {"period": 4.01},  # not whole 20 ms frames
        {"on": 0.0},
        {"on": 5.0},
        {"freq": 4000.0},
        {"level": 4.0},
        {"ramp": 0.2},
    ):
        with pytest.raises(ValueError):
            HoldTone(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- in the mixer


@pytest.mark.parametrize("law", [PCMU, PCMA])
def test_a_held_party_hears_only_the_comfort_tone_and_is_heard_by_nobody(law: int) -> None:
    """Consult in a 3-way mixer: the caller is held with the tone while dispatcher and
    counselor talk. Two whole periods (8 s): the caller gets the tone in its own law and
    nothing of the others; they hear each other and not the caller, who keeps talking."""
    call, caller, dispatcher, counselor = three_way((law, PCMA, PCMU))
    call.mixer.set_mode(caller, hold_tone=True)
    call.run(2 * PERIOD_FRAMES + 5)
    held = call.audio(caller)
    assert {pkt[1] & 0x7F for pkt in call.heard[caller]} == {law}
    assert_comfort_tone(held, 2, silence=8 if law == PCMA else 0)
    expected = envelope(g711.decode(pattern(COMFORT_TONE, law), law))
    assert envelope(held)[: 2 * PERIOD_FRAMES] == expected * 2  # the beep from the first frame
    assert sum(expected) == 13  # 0.25 s: 12 frames and a half
    assert_hears(call.audio(dispatcher, 5, 45), {COUNSELOR_HZ}, {CALLER_HZ, DISPATCHER_HZ})
    assert_hears(call.audio(counselor, 5, 45), {DISPATCHER_HZ}, {CALLER_HZ, COUNSELOR_HZ})
    assert caller.stats().audio_in == 2 * PERIOD_FRAMES + 5  # it was talking all along


def test_leaving_hold_switches_the_same_stream_to_the_mix_at_the_next_tick() -> None:
    """The consult becomes a conference: from the tick after ``hold_tone=False`` the caller
    gets exactly the mix of the other two, in the same RTP stream (one SSRC, consecutive
    sequence numbers and timestamps, one marker bit: the first packet), and is heard again."""
    call, caller, dispatcher, counselor = three_way((PCMU, PCMA, PCMU))
    call.mixer.set_mode(caller, hold_tone=True)
    call.run(30)
    call.mixer.set_mode(caller, hold_tone=False)
    call.run(45)
    held = call.audio(caller, 0, 30)
    assert level(held[:SPAN], TONE_HZ) > 0.9 * amplitude(COMFORT_TONE.level)
    d = g711.decode(b"".join(call.frame(dispatcher, k) for k in range(29, 74)), PCMA)
    c = g711.decode(b"".join(call.frame(counselor, k) for k in range(29, 74)), PCMU)
    mix = np.clip(d.astype(np.int32) + c, -32768, 32767).astype(np.int16)
    assert b"".join(pkt[12:] for pkt in call.heard[caller][30:75]) == g711.encode(mix, PCMU)
    heads = [struct.unpack_from("!BBHII", pkt) for pkt in call.heard[caller]]
    assert {h[4] for h in heads} == {caller.ssrc}
    assert all((b[2] - a[2]) & 0xFFFF == 1 for a, b in itertools.pairwise(heads))
    assert all((b[3] - a[3]) & 0xFFFFFFFF == FRAME for a, b in itertools.pairwise(heads))
    assert [h[1] >> 7 for h in heads] == [1] + [0] * 74
    assert_hears(call.audio(counselor, 35, 75), {CALLER_HZ, DISPATCHER_HZ}, {COUNSELOR_HZ})
    assert_hears(call.audio(dispatcher, 35, 75), {CALLER_HZ, COUNSELOR_HZ}, {DISPATCHER_HZ})


def test_a_caller_alone_and_held_hears_the_tone_then_the_conference() -> None:
    """How the call layer uses it: during the consult the caller is alone in a conference,
    held (dispatcher and counselor are bridged directly); the consult becomes a conference:
    the other two join and the caller leaves hold."""
    call = Call()
    caller = call.join("caller", CALLER_HZ, PCMA, hold_tone=True)
    call.run(PERIOD_FRAMES + 20)
    assert_comfort_tone(call.audio(caller, 0, PERIOD_FRAMES), 1, silence=8)
    assert envelope(call.audio(caller, PERIOD_FRAMES))[:13] == [True] * 13  # the next beep
    dispatcher = call.join("dispatcher", DISPATCHER_HZ, PCMA)
    counselor = call.join("counselor", COUNSELOR_HZ, PCMU)
    call.mixer.set_mode(caller, hold_tone=False)
    call.run(45)
    first = PERIOD_FRAMES + 20
    assert_hears(
        call.audio(caller, first + 5, first + 45), {DISPATCHER_HZ, COUNSELOR_HZ}, {CALLER_HZ}
    )
    assert_hears(call.audio(dispatcher, 5, 45), {CALLER_HZ, COUNSELOR_HZ}, {DISPATCHER_HZ})
    assert_hears(call.audio(counselor, 5, 45), {CALLER_HZ, DISPATCHER_HZ}, {COUNSELOR_HZ})
    seqs = [struct.unpack_from("!H", pkt, 2)[0] for pkt in call.heard[caller]]
    assert len(seqs) == first + 45
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))


def test_each_hold_starts_with_the_beep_and_silence_mode_stays_silent() -> None:
    call = Call()
    caller = call.join("caller", CALLER_HZ, PCMU, hold_tone=True)
    other = call.join("other", DISPATCHER_HZ, PCMU)
    call.run(20)  # 400 ms held: the beep and the start of the pause
    call.mixer.set_mode(caller, hold_tone=False, speak=False, listen=False)  # silent hold
    call.run(20)
    call.mixer.set_mode(caller, hold_tone=True)  # the tone again: from its start
    call.run(20)
    call.mixer.set_mode(caller, hold_tone=True)  # already held: no restart
    call.run(5)
    got = envelope(call.audio(caller))
    assert got[:20] == [True] * 13 + [False] * 7
    assert got[20:40] == [False] * 20
    assert set(call.audio(caller, 20, 40).tolist()) == {0}
    assert got[40:65] == [True] * 13 + [False] * 12
    assert_hears(call.audio(other, 5, 65), set(), set(OTHERS))  # the caller was never heard
    # once the tone is off, the caller's own speak / listen apply again
    call.mixer.set_mode(caller, hold_tone=False, speak=True, listen=True)
    call.run(45)
    assert_hears(call.audio(caller, 70, 110), {DISPATCHER_HZ}, {CALLER_HZ})
    assert_hears(call.audio(other, 70, 110), {CALLER_HZ}, {DISPATCHER_HZ})


def test_no_telephone_events_to_or_from_a_held_party() -> None:
    call = Call()
    caller = call.join("caller", CALLER_HZ, event_pt=101, hold_tone=True)
    dispatcher = call.join("dispatcher", DISPATCHER_HZ, event_pt=101)
    for _, pkt in sipp_capture("dtmf_2833_1.pcap"):
        call.got(call.mixer.receive(dispatcher, pkt, call.now))
        call.got(call.mixer.receive(caller, pkt, call.now))
    assert call.events[caller] == [] and call.events[dispatcher] == []
    assert caller.stats().events_in == dispatcher.stats().events_in == 10


def test_the_hold_tone_is_configurable() -> None:
    """A different tone for the mixer (the US 440 Hz, 0.5 s on a 1 s cycle, -15 dBm0)."""
    tone = HoldTone(freq=440.0, on=0.5, period=1.0, level=-15.0)
    call = Call()
    call.mixer = Mixer(comfort_tone=tone)
    caller = call.join("caller", 0.0, PCMU, hold_tone=True)
    call.run(100)
    x = call.audio(caller)
    for k in range(2):
        beep = x[k * RATE + 200 : k * RATE + 200 + SPAN]
        assert abs(db(level(beep, 440.0) / amplitude(-15.0))) < 0.3
        assert set(x[k * RATE + 4000 : (k + 1) * RATE].tolist()) == {0}
