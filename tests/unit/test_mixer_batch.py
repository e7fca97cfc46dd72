"""``tick_all``: every conference of the shared clock mixed in one set of numpy calls.

It must be exactly ``[m.tick(now) for m in mixers]``: the same bytes for every party, whatever
the conferences hold (any size, both laws, quiet, muted, deaf, held parties, more than five
talkers, empty mixers), and no audio may cross from one conference into another.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from telephony.media import g711
from telephony.media.g711 import PCMA, PCMU
from telephony.media.mixer import _CHUNK, Mixer, tick_all
from telephony.media.rtp import FRAME
from tests.unit.test_mixer import (
    CALLER_HZ,
    COUNSELOR_HZ,
    DISPATCHER_HZ,
    assert_hears,
    decode_packets,
    rtp,
    tone,
)


def build(seed: int) -> tuple[list[Mixer], random.Random]:
    """Mixers of 0 to 7 parties with random laws and modes (the same for the same seed)."""
    rng = random.Random(seed)
    mixers = []
    for i in range(rng.randint(1, 8)):
        m = Mixer(rng=random.Random(seed * 100 + i))
        for _ in range(rng.choice([0, 1, 2, 3, 3, 3, 6, 7])):
            m.join(
                codec=rng.choice([PCMU, PCMA]),
                speak=rng.random() > 0.2,
                listen=rng.random() > 0.2,
                hold_tone=rng.random() < 0.2,
            )
        mixers.append(m)
    return mixers, rng


def feed(mixers: list[Mixer], k: int, rng: random.Random) -> None:
    """Frame ``k`` from every party: loud noise (so sums clip), some frames lost."""
    for m in mixers:
        for j, p in enumerate(m.parties):
            if rng.random() < 0.1:
                continue
            noise = np.random.default_rng(k * 1000 + j).integers(-32768, 32767, FRAME)
            payload = g711.encode(noise.astype(np.int16), p.codec)
            m.receive(p, rtp(p.codec, k, k * FRAME, payload), 1000.0 + k * 0.02)


@pytest.mark.parametrize("seed", range(12))
def test_tick_all_is_exactly_each_mixer_ticking_alone(seed: int) -> None:
    alone, rng_a = build(seed)
    batched, rng_b = build(seed)
    for k in range(30):
        feed(alone, k, rng_a)
        feed(batched, k, rng_b)
        if k == 10:  # modes change mid-call (the consult becomes a conference)
            for ms in (alone, batched):
                for m in ms:
                    for p in m.parties[:1]:
                        m.set_mode(p, hold_tone=not p.hold_tone, speak=True, listen=True)
        want = [[pkt for _, pkt in m.tick(0.0)] for m in alone]
        got = [[pkt for _, pkt in out] for out in tick_all(batched, 0.0)]
        assert got == want, k
        assert [len(o) for o in got] == [len(m.parties) for m in batched]
    assert [m.ticks for m in batched] == [m.ticks for m in alone] == [30] * len(alone)


def test_tick_all_over_many_blocks_is_exactly_each_mixer_alone() -> None:
    """More mixers than one block holds (``_CHUNK``): 150 of 3 parties, 70 of 1, 3 of 6."""

    def many() -> list[Mixer]:
        rng = random.Random(9)
        mixers = []
        for i, n in enumerate([3] * 150 + [1] * 70 + [6] * 3):
            m = Mixer(rng=random.Random(i))
            for _ in range(n):
                m.join(codec=rng.choice([PCMU, PCMA]), hold_tone=n == 1)
            mixers.append(m)
        rng.shuffle(mixers)
        return mixers

    assert len(many()) > 3 * _CHUNK
    alone, batched = many(), many()
    rng_a, rng_b = random.Random(4), random.Random(4)
    for k in range(6):
        feed(alone, k, rng_a)
        feed(batched, k, rng_b)
        want = [[pkt for _, pkt in m.tick(0.0)] for m in alone]
        assert [[pkt for _, pkt in out] for out in tick_all(batched, 0.0)] == want, k


def test_no_audio_crosses_between_conferences_mixed_together() -> None:
    """Two 3-way calls ticked together: each party hears its own call's other two only."""
    calls = []
    for freqs in ((CALLER_HZ, DISPATCHER_HZ, COUNSELOR_HZ), (COUNSELOR_HZ, CALLER_HZ, 0.0)):
        m = Mixer(rng=random.Random(1))
        calls.append((m, [(m.join(codec=PCMA if f == CALLER_HZ else PCMU), f) for f in freqs]))
    heard: dict[object, list[bytes]] = {}
    for k in range(45):
        for m, parties in calls:
            for p, f in parties:
                if f:
                    payload = g711.encode(tone(f, k * FRAME), p.codec)
                    m.receive(p, rtp(p.codec, k, k * FRAME, payload), 0.0)
        for out in tick_all([m for m, _ in calls], 0.0):
            for p, pkt in out:
                heard.setdefault(p, []).append(pkt)
    (_, a), (_, b) = calls
    everyone = {CALLER_HZ, DISPATCHER_HZ, COUNSELOR_HZ}
    for p, f in a:
        assert_hears(decode_packets(heard[p][5:45]), everyone - {f}, {f})
    # call b: COUNSELOR_HZ and CALLER_HZ talk, the third is silent; none hears DISPATCHER_HZ
    (p1, _), (p2, _), (p3, _) = b
    assert_hears(decode_packets(heard[p1][5:45]), {CALLER_HZ}, everyone - {CALLER_HZ})
    assert_hears(decode_packets(heard[p2][5:45]), {COUNSELOR_HZ}, everyone - {COUNSELOR_HZ})
    assert_hears(decode_packets(heard[p3][5:45]), {CALLER_HZ, COUNSELOR_HZ}, {DISPATCHER_HZ})


def test_tick_all_of_nothing() -> None:
    assert tick_all([], 0.0) == []
    empty = Mixer()
    assert tick_all([empty, Mixer()], 0.0) == [[], []]
    assert empty.ticks == 1


def test_a_mixer_that_fails_is_reported_and_the_others_tick_as_usual() -> None:
    """A bug in one conference (here its frame collection raises) costs that conference its
    tick, reported through ``on_error``; every other mixer's packets are what they would be
    alone, before and after the broken one (none loses a frame to the failure)."""
    alone, rng_a = build(0)
    batched, rng_b = build(0)
    broken = Mixer(rng=random.Random(5))
    broken.join()

    def fail() -> None:
        raise RuntimeError("bug")

    broken._fill = fail  # type: ignore[method-assign]
    errors: list[tuple[int, str]] = []
    for k in range(10):
        feed(alone, k, rng_a)
        feed(batched, k, rng_b)
        want = [[pkt for _, pkt in m.tick(0.0)] for m in alone]
        mixers = [*batched[:2], broken, *batched[2:]]
        outs = tick_all(mixers, 0.0, on_error=lambda i, exc: errors.append((i, str(exc))))
        assert outs[2] == []
        assert [[pkt for _, pkt in o] for o in outs[:2] + outs[3:]] == want
    assert errors == [(2, "bug")] * 10
    with pytest.raises(RuntimeError, match="bug"):
        tick_all([broken], 0.0)
