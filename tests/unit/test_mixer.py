"""The conference mixer in memory (fake clock): who hears whom, measured as audio.

Every party speaks its own tone (caller 440 Hz, dispatcher 1000 Hz, counselor 1800 Hz) as G.711;
each party's mixed output is decoded and the tones are measured with a single-bin DFT (what a
Goertzel filter computes) over windows that hold whole cycles of every tone, so a tone that is
there reads at its amplitude and one that is not reads ~0. Real captures from SIPp's
``/usr/share/sip-tester`` (Debian ``sip-tester``) supply a 30 ms A-law stream with real arrival
jitter and RFC 4733 DTMF packets.

The audio helpers here (:func:`tone`, :func:`level`, :func:`sipp_capture`) are shared with
tests/integration/test_conference_audio.py.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from telephony.media import g711
from telephony.media.g711 import PCMA, PCMU
from telephony.media.jitter import JitterBuffer
from telephony.media.mixer import Mixer, Outgoing
from telephony.media.party import Party
from telephony.media.rtp import FRAME, PERIOD, RATE, parse_rtp

CALLER_HZ, DISPATCHER_HZ, COUNSELOR_HZ = 440.0, 1000.0, 1800.0
AMP = 6000
WINDOW = 800  # 100 ms: whole cycles of 440, 1000 and 1800 Hz (10 Hz bins)
PRESENT = 0.9 * AMP  # a tone that is there reads at ~AMP (G.711 noise is ~1 %)
# One that is not there reads ~0, up to ~1 % of AMP: G.711's quantisation error of a periodic mix
# is itself periodic, a line spectrum on the mix's common fundamental (440 + 1800 Hz: every 40 Hz,
# and 1000 Hz is one of those lines). Measured worst case 61 (1 %); own audio would read ~AMP.
ABSENT = 0.02 * AMP
SIPP_PCAPS = Path("/usr/share/sip-tester")
NUMBERED = -1.0  # "frequency" of a party whose frames are distinct noise, one pattern per frame

# ---------------------------------------------------------------------------- audio helpers


def tone(freq: float, start: int, n: int = FRAME, amp: float = AMP) -> NDArray[np.int16]:
    """``n`` samples of a sine at ``freq`` from sample index ``start`` (phase-continuous)."""
    t = np.arange(start, start + n, dtype=np.float64)
    return np.round(amp * np.sin(2 * np.pi * freq * t / RATE)).astype(np.int16)


def level(samples: NDArray[np.int16], freq: float) -> float:
    """Amplitude of the ``freq`` component (single-bin DFT, i.e. a Goertzel filter's output)."""
    n = len(samples)
    t = np.arange(n)
    x = samples.astype(np.float64)
    return float(2 * abs(np.dot(x, np.exp(-2j * np.pi * freq * t / RATE))) / n)


def decode_packets(packets: Iterable[bytes]) -> NDArray[np.int16]:
    """Decode the G.711 payloads of RTP packets, in order, into one sample stream."""
    out = []
    for pkt in packets:
        h = parse_rtp(pkt)
        assert h is not None
        out.append(g711.decode(pkt[h.start : h.end], h.payload_type))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def sipp_capture(name: str) -> list[tuple[float, bytes]]:
    """(capture time, RTP datagram) of every packet of a SIPp pcap (Ethernet/IPv4/UDP)."""
    path = SIPP_PCAPS / name
    if not path.exists():
        pytest.fail(f"{path} missing: install Debian's sip-tester (make test does)")
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4  # classic pcap, microseconds
    assert struct.unpack_from("<I", data, 20)[0] == 1  # Ethernet
    off, out = 24, []
    while off < len(data):
        sec, usec, incl, _ = struct.unpack_from("<IIII", data, off)
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        assert frame[12:14] == b"\x08\x00" and frame[23] == 17  # IPv4, UDP
        udp = 14 + (frame[14] & 0x0F) * 4
        out.append((sec + usec / 1e6, frame[udp + 8 :]))
    return out


def rtp(
    pt: int, seq: int, ts: int, payload: bytes, ssrc: int = 0x5EED, marker: bool = False
) -> bytes:
    return (
        struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc
        )
        + payload
    )


# ---------------------------------------------------------------------------- harness


class Call:
    """A mixer driven tick by tick with a fake clock; records what each party receives."""

    def __init__(self, **mixer_args: int) -> None:
        self.mixer = Mixer(rng=random.Random(7), **mixer_args)
        self.freq: dict[Party, float] = {}
        self.heard: dict[Party, list[bytes]] = {}
        self.events: dict[Party, list[bytes]] = {}
        self.order: dict[Party, list[bytes]] = {}  # audio and events as emitted
        self.k = 0  # tick number
        self.now = 1000.0

    def join(self, label: str, freq: float, codec: int = PCMU, **kw: int | bool | None) -> Party:
        p = self.mixer.join(codec=codec, label=label, **kw)  # type: ignore[arg-type]
        self.freq[p] = freq
        self.heard[p], self.events[p], self.order[p] = [], [], []
        return p

    def frame(self, p: Party, k: int) -> bytes:
        """Party ``p``'s encoded frame ``k``: its tone, or numbered noise (``NUMBERED``)."""
        if self.freq[p] == NUMBERED:
            noise = np.random.default_rng(k).integers(-3000, 3000, FRAME).astype(np.int16)
            return g711.encode(noise, p.codec)
        return g711.encode(tone(self.freq[p], k * FRAME), p.codec)

    def send(self, p: Party, k: int, *, ts_base: int = 0, ssrc: int = 0x5EED) -> None:
        self.got(
            self.mixer.receive(
                p, rtp(p.codec, k, ts_base + k * FRAME, self.frame(p, k), ssrc), self.now
            )
        )

    def got(self, out: Sequence[Outgoing]) -> None:
        for party, pkt in out:
            self.events[party].append(pkt)
            self.order[party].append(pkt)

    def tick(self) -> list[Outgoing]:
        out = self.mixer.tick(self.now)
        for party, pkt in out:
            self.heard[party].append(pkt)
            self.order[party].append(pkt)
        self.now += PERIOD
        self.k += 1
        return out

    def run(self, ticks: int, speakers: Iterable[Party] | None = None) -> None:
        """Each speaker sends frame k, then tick k; ``ticks`` times."""
        who = list(self.freq if speakers is None else speakers)
        for _ in range(ticks):
            for p in who:
                self.send(p, self.k)
            self.tick()

    def audio(self, p: Party, first: int = 0, last: int | None = None) -> NDArray[np.int16]:
        """What ``p`` heard in ticks ``first`` .. ``last`` (exclusive), decoded."""
        return decode_packets(self.heard[p][first:last])


def levels(samples: NDArray[np.int16]) -> dict[float, float]:
    """Each tone's amplitude, the worst (lowest for present, highest for absent) over the
    100 ms windows of ``samples``."""
    assert len(samples) >= WINDOW and len(samples) % WINDOW == 0
    per = [
        {f: level(samples[i : i + WINDOW], f) for f in (CALLER_HZ, DISPATCHER_HZ, COUNSELOR_HZ)}
        for i in range(0, len(samples), WINDOW)
    ]
    return {
        f: (min if max(w[f] for w in per) > AMP / 2 else max)(w[f] for w in per) for f in per[0]
    }


def assert_hears(samples: NDArray[np.int16], present: set[float], absent: set[float]) -> None:
    got = levels(samples)
    for f in present:
        assert got[f] >= PRESENT, f"{f} Hz missing: {got}"
    for f in absent:
        assert got[f] <= ABSENT, f"{f} Hz should not be heard: {got}"


def three_way(
    codecs: tuple[int, int, int] = (PCMU, PCMU, PCMU),
) -> tuple[Call, Party, Party, Party]:
    call = Call()
    caller = call.join("caller", CALLER_HZ, codecs[0])
    dispatcher = call.join("dispatcher", DISPATCHER_HZ, codecs[1])
    counselor = call.join("counselor", COUNSELOR_HZ, codecs[2])
    return call, caller, dispatcher, counselor


# ---------------------------------------------------------------------------- who hears whom


@pytest.mark.parametrize(
    "codecs",
    [(PCMU, PCMU, PCMU), (PCMA, PCMA, PCMA), (PCMU, PCMA, PCMU), (PCMA, PCMU, PCMA)],
    ids=["pcmu", "pcma", "u-a-u", "a-u-a"],
)
def test_each_receiver_hears_the_other_two_and_never_itself(codecs: tuple[int, int, int]) -> None:
    call, caller, dispatcher, counselor = three_way(codecs)
    call.run(45)
    # tick 0 is the jitter buffers filling; from tick 1 on the mix is steady: 40 frames = 8 windows
    assert_hears(call.audio(caller, 5, 45), {DISPATCHER_HZ, COUNSELOR_HZ}, {CALLER_HZ})
    assert_hears(call.audio(dispatcher, 5, 45), {CALLER_HZ, COUNSELOR_HZ}, {DISPATCHER_HZ})
    assert_hears(call.audio(counselor, 5, 45), {CALLER_HZ, DISPATCHER_HZ}, {COUNSELOR_HZ})
    for p in (caller, dispatcher, counselor):  # each gets its own codec (PCMU↔PCMA transcoding)
        assert {pkt[1] & 0x7F for pkt in call.heard[p]} == {p.codec}


def test_the_mix_is_exactly_the_others_sum_delayed_one_frame() -> None:
    call, caller, dispatcher, counselor = three_way((PCMA, PCMA, PCMU))
    call.run(12)
    d = g711.decode(b"".join(call.frame(dispatcher, k) for k in range(11)), PCMA).astype(np.int32)
    c = g711.decode(b"".join(call.frame(counselor, k) for k in range(11)), PCMU).astype(np.int32)
    expected = g711.encode(np.clip(d + c, -32768, 32767).astype(np.int16), PCMA)
    heard = b"".join(pkt[12:] for pkt in call.heard[caller][1:12])
    assert heard == expected  # bit-exact: decode, add, saturate, encode
    assert call.heard[caller][0][12:] == b"\xd5" * FRAME  # tick 0: still buffering (silence)


def test_outgoing_rtp_headers_are_the_mixers_own_streams() -> None:
    call, *parties = three_way((PCMU, PCMA, PCMU))
    call.run(30)
    ssrcs = set()
    for p in parties:
        heads = [struct.unpack_from("!BBHII", pkt) for pkt in call.heard[p]]
        assert all(len(pkt) == 12 + FRAME for pkt in call.heard[p])
        assert {h[0] for h in heads} == {0x80}  # V=2, no padding/extension/CSRC
        assert [h[1] >> 7 for h in heads] == [1] + [0] * 29  # marker on the first packet only
        assert {h[4] for h in heads} == {p.ssrc}
        ssrcs.add(p.ssrc)
        seqs, tss = [h[2] for h in heads], [h[3] for h in heads]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        assert all((b - a) & 0xFFFFFFFF == FRAME for a, b in itertools.pairwise(tss))
    assert len(ssrcs) == 3 and 0x5EED not in ssrcs  # not the senders' SSRC


def test_a_party_that_leaves_is_gone_and_the_other_two_still_hear_each_other() -> None:
    call, caller, dispatcher, counselor = three_way()
    call.run(20)
    call.mixer.leave(dispatcher)  # the dispatcher drops after the introduction
    del call.freq[dispatcher]
    sent_to_dispatcher = len(call.heard[dispatcher])
    call.run(45)
    assert len(call.heard[dispatcher]) == sent_to_dispatcher  # nothing more for the dispatcher
    assert_hears(call.audio(caller, 25, 65), {COUNSELOR_HZ}, {CALLER_HZ, DISPATCHER_HZ})
    assert_hears(call.audio(counselor, 25, 65), {CALLER_HZ}, {COUNSELOR_HZ, DISPATCHER_HZ})
    # the remaining streams carry on: same SSRC, no gap, no new marker
    seqs = [struct.unpack_from("!H", pkt, 2)[0] for pkt in call.heard[caller]]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert [pkt[1] >> 7 for pkt in call.heard[caller]].count(1) == 1
    assert call.mixer.stats().parties == 2


def test_the_counselor_joining_later_hears_both_and_is_heard_by_both() -> None:
    call = Call()
    caller = call.join("caller", CALLER_HZ)
    dispatcher = call.join("dispatcher", DISPATCHER_HZ, PCMA)
    call.run(25)
    assert_hears(call.audio(caller, 5, 25), {DISPATCHER_HZ}, {CALLER_HZ, COUNSELOR_HZ})
    counselor = call.join("counselor", COUNSELOR_HZ, PCMA)
    call.run(45)
    for p, own in ((caller, CALLER_HZ), (dispatcher, DISPATCHER_HZ), (counselor, COUNSELOR_HZ)):
        others = {CALLER_HZ, DISPATCHER_HZ, COUNSELOR_HZ} - {own}
        assert_hears(
            call.audio(p, 30, 70) if p is not counselor else call.audio(p, 5, 45), others, {own}
        )


def test_consult_hold_mutes_the_caller_both_ways_and_keeps_its_stream_alive() -> None:
    call, caller, dispatcher, counselor = three_way()
    call.mixer.set_mode(caller, speak=False, listen=False)
    call.run(45)
    assert_hears(call.audio(dispatcher, 5, 45), {COUNSELOR_HZ}, {CALLER_HZ, DISPATCHER_HZ})
    assert_hears(call.audio(counselor, 5, 45), {DISPATCHER_HZ}, {CALLER_HZ, COUNSELOR_HZ})
    assert len(call.heard[caller]) == 45  # packets keep coming ...
    assert set(call.audio(caller).tolist()) == {0}  # ... with silence
    call.mixer.set_mode(caller, speak=True, listen=True)  # "conference": all three
    call.run(45)
    assert_hears(call.audio(caller, 50, 90), {DISPATCHER_HZ, COUNSELOR_HZ}, {CALLER_HZ})
    assert_hears(call.audio(counselor, 50, 90), {CALLER_HZ, DISPATCHER_HZ}, {COUNSELOR_HZ})


def test_a_party_with_nothing_to_say_adds_silence() -> None:
    call, caller, dispatcher, counselor = three_way()
    call.run(45, speakers=[caller])  # only the caller sends anything
    assert_hears(call.audio(dispatcher, 5, 45), {CALLER_HZ}, {DISPATCHER_HZ, COUNSELOR_HZ})
    assert_hears(call.audio(counselor, 5, 45), {CALLER_HZ}, {DISPATCHER_HZ, COUNSELOR_HZ})
    assert set(call.audio(caller).tolist()) == {0}  # nobody else spoke: exact silence
    assert dispatcher.stats().packets_in == 0


# ---------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("talkers", [2, 4, 6])
@pytest.mark.parametrize("codec", [PCMU, PCMA])
def test_sums_beyond_int16_saturate_instead_of_wrapping(talkers: int, codec: int) -> None:
    """Up to four other talkers the encode table saturates by itself; with more the sums are
    clipped first: either way full-scale talkers give the listener full scale, same sign."""
    call = Call()
    loud = [call.join(f"loud{i}", 0.0, PCMU) for i in range(talkers)]
    listener = call.join("listener", 0.0, codec)
    top = 32124 if codec == PCMU else 32256  # the law's largest magnitude
    for sign, code in ((1, 0x80), (-1, 0x00)):  # μ-law ±32124 from every talker
        call.heard[listener].clear()
        for k in range(3):
            for p in loud:
                call.mixer.receive(p, rtp(PCMU, k, k * FRAME, bytes([code]) * FRAME), call.now)
            call.tick()
        heard = call.audio(listener, 1, 3)
        assert set(heard.tolist()) == {sign * top}, (talkers, sign)
        for p in loud[:1]:  # a loud one hears the other talkers: clipped too, when 2 or more
            others = (talkers - 1) * 32124
            want = sign * min(others, 32767)
            got = set(call.audio(p, -2).tolist())
            assert got == set(g711.decode(g711.encode(np.array([want], np.int16), PCMU), PCMU))
        for p in loud:
            p.jitter_buffer.reset()


def test_full_scale_talkers_clip_at_the_listener_and_never_flip_sign() -> None:
    call = Call()
    loud = [call.join(f"loud{i}", DISPATCHER_HZ) for i in range(2)]
    listener = call.join("listener", 0.0, PCMA)
    for k in range(20):
        for p in loud:  # both in phase at full scale: the sum is twice what int16 holds
            full = tone(DISPATCHER_HZ, k * FRAME, amp=32767)
            call.got(
                call.mixer.receive(p, rtp(PCMU, k, k * FRAME, g711.encode(full, PCMU)), call.now)
            )
        call.tick()
    heard = call.audio(listener, 1, 20).astype(np.int32)
    source = g711.decode(g711.encode(tone(DISPATCHER_HZ, 0, 19 * FRAME, 32767), PCMU), PCMU)
    twice = 2 * source.astype(np.int32)
    assert heard.max() == 32256 and heard.min() == -32256  # A-law's largest magnitude
    clipped = np.abs(twice) > 32767
    assert clipped.mean() > 0.5  # most of the wave was over full scale ...
    assert (np.sign(heard[clipped]) == np.sign(twice[clipped])).all()  # ... and kept its sign
    assert (np.abs(heard[clipped]) == 32256).all()
    assert level(heard[:WINDOW], DISPATCHER_HZ) > 32256  # squared off: louder than a sine
    # each loud party hears only the other one, which fits: no clipping there
    for p in loud:
        assert np.abs(call.audio(p, 1, 20).astype(np.int32)).max() <= 32767


# ---------------------------------------------------------------------------- jitter allowance


def one_talker(codec: int = PCMU, **mixer_args: int) -> tuple[Call, Party, Party]:
    call = Call(**mixer_args)
    talker = call.join("talker", NUMBERED, codec)
    listener = call.join("listener", 0.0, codec)
    return call, talker, listener


def frames_heard(call: Call, p: Party) -> list[bytes]:
    return [pkt[12:] for pkt in call.heard[p]]


def test_reordered_packets_are_played_in_order() -> None:
    call, talker, listener = one_talker(PCMA)
    order = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10]  # every pair swapped on the way
    for k in order:
        call.send(talker, k)
        call.tick()
    played = frames_heard(call, listener)
    assert played[0] == g711.alaw_encode(np.zeros(FRAME, np.int16))  # filling
    assert played[1:12] == [call.frame(talker, k) for k in range(11)]  # bit-exact, in order
    st_ = talker.stats()
    assert (st_.late, st_.holes, st_.duplicates, st_.lost) == (0, 0, 0, 0)


def test_a_packet_too_late_is_dropped_and_its_frame_is_silence() -> None:
    call, talker, listener = one_talker(PCMA)
    for k in range(14):
        if k != 5:
            call.send(talker, k)
        if k == 9:
            call.send(talker, 5)  # four frames late: its turn (tick 6) has passed
        call.tick()
    played = frames_heard(call, listener)
    silence = g711.alaw_encode(np.zeros(FRAME, np.int16))
    assert played[1:14] == [silence if k == 5 else call.frame(talker, k) for k in range(13)]
    st_ = talker.stats()
    assert (st_.late, st_.holes, st_.underruns) == (1, 1, 0)


def test_duplicates_are_dropped() -> None:
    call, talker, listener = one_talker(PCMA)
    for k in range(10):
        call.send(talker, k)
        call.send(talker, k)
        call.tick()
    assert frames_heard(call, listener)[1:10] == [call.frame(talker, k) for k in range(9)]
    assert talker.stats().duplicates == 10


def test_a_burst_after_a_stall_is_cut_to_the_capacity() -> None:
    call, talker, listener = one_talker(PCMA)
    for k in range(10):
        call.send(talker, k)
        call.tick()
    for _ in range(8):  # the network holds frames 10..17 back
        call.tick()
    for k in range(10, 18):  # and delivers them at once
        call.send(talker, k)
    jb = talker.jitter_buffer
    assert jb.buffered <= 3 * FRAME
    assert talker.stats().overflows >= 1
    assert talker.stats().underruns == 1  # it ran dry during the stall
    for k in range(18, 30):
        call.send(talker, k)
        call.tick()
    played = frames_heard(call, listener)
    sent = {call.frame(talker, k): k for k in range(30)}
    tail = [sent[f] for f in played[-10:]]
    assert tail == list(range(tail[0], tail[0] + 10))  # in order, no gaps
    assert 29 - tail[-1] <= 3  # at most 3 frames (60 ms) behind the newest audio


def test_a_silent_gap_rebuffers_and_resumes() -> None:
    call, talker, listener = one_talker(PCMA)
    for k in range(40):
        if not 10 <= k < 20:  # silence suppression: nothing for 200 ms, timestamps jump on
            call.send(talker, k)
        call.tick()
    played = frames_heard(call, listener)
    silence = g711.alaw_encode(np.zeros(FRAME, np.int16))
    assert played[1:11] == [call.frame(talker, k) for k in range(10)]
    resumed = played.index(call.frame(talker, 20))
    assert played[11:resumed] == [silence] * (resumed - 11)
    assert played[resumed:] == [
        call.frame(talker, k) for k in range(20, 20 + len(played) - resumed)
    ]
    assert resumed - 20 <= 2  # back to the normal one-frame delay (+1 to refill)
    assert talker.stats().underruns == 1 and talker.stats().late == 0


@pytest.mark.parametrize("ts_base", [0xFFFFFFFF - 5 * FRAME + 1, 0x7FFFFFFF - 3 * FRAME])
def test_timestamps_and_sequence_numbers_wrap(ts_base: int) -> None:
    call, talker, listener = one_talker(PCMA)
    for k in range(20):
        call.got(
            call.mixer.receive(
                talker, rtp(PCMA, 0xFFF8 + k, ts_base + k * FRAME, call.frame(talker, k)), call.now
            )
        )
        call.tick()
    assert frames_heard(call, listener)[1:20] == [call.frame(talker, k) for k in range(19)]
    st_ = talker.stats()
    assert (st_.late, st_.restarts, st_.lost, st_.holes) == (0, 0, 0, 0)


def test_a_new_ssrc_or_a_jump_back_restarts_the_stream() -> None:
    call, talker, listener = one_talker(PCMA)
    for k in range(10):
        call.send(talker, k)
        call.tick()
    for k in range(10, 20):  # re-INVITE: the phone restarted its stream (new SSRC, new clock)
        call.send(talker, k, ts_base=-3_000_000, ssrc=0xABC)
        call.tick()
    for k in range(20, 30):  # same SSRC, timestamps 2 s back
        call.send(talker, k, ts_base=-3_000_000 - 2 * RATE, ssrc=0xABC)
        call.tick()
    played = frames_heard(call, listener)
    assert call.frame(talker, 17) in played and call.frame(talker, 27) in played
    assert talker.stats().restarts == 2 and talker.stats().late == 0


def test_30ms_pcma_from_a_real_capture_is_reframed_bit_exact() -> None:
    """SIPp's g711a.pcap: 236 A-law packets of 240 samples (30 ms) with the capture's real
    arrival jitter (25-35 ms apart). Delivered at their capture times, cut into 20 ms ticks:
    a PCMA listener gets the same bytes, a PCMU listener their transcoding."""
    capture = sipp_capture("g711a.pcap")
    call = Call()
    talker = call.join("trunk", 0.0, PCMA)
    alaw = call.join("pcma", 0.0, PCMA)
    ulaw = call.join("pcmu", 0.0, PCMU)
    t0 = capture[0][0]
    i = 0
    for tick in range(int((capture[-1][0] - t0) / PERIOD) + 2):
        while i < len(capture) and capture[i][0] - t0 <= tick * PERIOD:
            arrival = 1000.0 + capture[i][0] - t0
            call.got(call.mixer.receive(talker, capture[i][1], arrival))
            i += 1
        call.tick()
    sent = b"".join(pkt[12:] for _, pkt in capture)
    got_a = b"".join(frames_heard(call, alaw))
    got_u = b"".join(frames_heard(call, ulaw))
    # the capture opens with silence (0xD5) too: align on its first non-silent byte
    start = _first_sound(got_a) - _first_sound(sent)
    assert start == 2 * FRAME  # two ticks of filling (the first two packets came 30 ms apart)
    assert got_a[:start] == b"\xd5" * start
    assert got_a[start:] == sent[: len(got_a) - start]
    assert len(got_a) - start >= len(sent) - 3 * FRAME  # all but the tail still buffered
    assert got_u[start:] == g711.transcode(sent[: len(got_u) - start], PCMA, PCMU)
    st_ = talker.stats()
    assert (st_.audio_in, st_.late, st_.underruns, st_.holes, st_.lost) == (236, 0, 0, 0, 0)
    assert 0.0002 < st_.jitter < 0.005  # the capture's arrival jitter, RFC 3550 estimate


def _first_sound(alaw: bytes) -> int:
    return next(i for i, b in enumerate(alaw) if b not in (0xD5, 0x55))


# ---------------------------------------------------------------------------- telephone events


def test_telephone_events_are_forwarded_not_mixed() -> None:
    """SIPp's RFC 4733 DTMF packets ('1' then '#', PT 101) from the dispatcher: each other
    party gets every packet at once, in its own stream (its SSRC, its sequence numbers, its
    event payload type, one timestamp per event), and none of it in the audio."""
    call = Call()
    caller = call.join("caller", CALLER_HZ, PCMU, event_pt=101)
    dispatcher = call.join("dispatcher", DISPATCHER_HZ, PCMA, event_pt=101)
    counselor = call.join("counselor", COUNSELOR_HZ, PCMU, event_pt=96)
    monitor = call.join("no-events", 0.0, PCMU)  # negotiated no telephone-event
    del call.freq[monitor]
    one, pound = sipp_capture("dtmf_2833_1.pcap"), sipp_capture("dtmf_2833_pound.pcap")
    digits = one + pound
    starts = {10: one, 25: pound}  # tick at which each digit's first packet arrives
    for k in range(40):
        for first, packets in starts.items():  # deliver at the capture's own pacing
            for t, pkt in packets:
                if first + round((t - packets[0][0]) / PERIOD) == k:
                    before = {p: len(call.events[p]) for p in (caller, counselor)}
                    call.got(call.mixer.receive(dispatcher, pkt, call.now))
                    after = {p: len(call.events[p]) - before[p] for p in before}
                    assert after == {caller: 1, counselor: 1}  # forwarded at once
        call.run(1, speakers=[caller, counselor])
    assert call.events[dispatcher] == [] and call.events[monitor] == []
    sent_payloads = [pkt[12:] for _, pkt in digits]
    for p, pt in ((caller, 101), (counselor, 96)):
        got = call.events[p]
        assert [pkt[12:] for pkt in got] == sent_payloads  # payload untouched
        heads = [struct.unpack_from("!BBHII", pkt) for pkt in got]
        assert {h[1] & 0x7F for h in heads} == {pt}
        assert [h[1] >> 7 for h in heads] == [pkt[1] >> 7 for _, pkt in digits]  # marker kept
        assert {h[4] for h in heads} == {p.ssrc}
        assert len({h[3] for h in heads[:10]}) == 1 and len({h[3] for h in heads[10:]}) == 1
        # one sequence space with the audio: consecutive, the end packet's copies repeated
        seqs = [struct.unpack_from("!H", pkt, 2)[0] for pkt in call.order[p]]
        steps = [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)]
        assert set(steps) == {0, 1} and steps.count(0) == 4  # 2 repeats of each end packet
        # the event timestamp is the receiving stream's clock where the event began
        audio_ts = [struct.unpack_from("!I", pkt, 4)[0] for pkt in call.heard[p]]
        assert audio_ts.index(heads[0][3]) == 10 and audio_ts.index(heads[10][3]) == 25
    assert dispatcher.stats().events_in == 20 and caller.stats().events_out == 20
    # not mixed: the dispatcher sent no audio, so caller and counselor hear only each other
    assert_hears(call.audio(caller, 5, 25), {COUNSELOR_HZ}, {CALLER_HZ, DISPATCHER_HZ})
    assert set(call.audio(monitor, 0, 1).tolist()) == {0}


def test_events_of_a_muted_party_are_not_forwarded() -> None:
    call = Call()
    a = call.join("a", CALLER_HZ, event_pt=101)
    b = call.join("b", DISPATCHER_HZ, event_pt=101)
    call.mixer.set_mode(a, speak=False)
    for _, pkt in sipp_capture("dtmf_2833_1.pcap"):
        call.got(call.mixer.receive(a, pkt, call.now))
    assert call.events[b] == [] and a.stats().events_in == 10


def test_events_without_a_configured_event_type_are_unsupported_payload() -> None:
    call, talker, listener = one_talker()
    for _, pkt in sipp_capture("dtmf_2833_1.pcap"):
        assert call.mixer.receive(talker, pkt, call.now) == ()
    assert talker.stats().unsupported == 10 and call.events[listener] == []


# ---------------------------------------------------------------------------- clock


def drain(m: Mixer, now: float) -> list[Outgoing]:
    """What the I/O layer does: handle_timer while a tick is due."""
    out: list[Outgoing] = []
    while (due := m.get_timer()) is not None and due <= now:
        out += m.handle_timer(now)
    return out


def test_handle_timer_runs_due_ticks_catches_up_and_skips_a_stall() -> None:
    call, *_ = three_way()
    m = call.mixer
    assert m.get_timer() is None and m.handle_timer(5.0) == []
    m.start(10.0)
    assert m.get_timer() == pytest.approx(10.02)
    assert m.handle_timer(10.019) == []
    assert len(m.handle_timer(10.02)) == 3
    assert len(m.handle_timer(10.065)) == 3  # late by two ticks: one per call ...
    assert m.get_timer() == pytest.approx(10.06)  # ... the next is due already
    assert len(drain(m, 10.065)) == 3
    ts_before = struct.unpack_from("!I", m.tick(10.07)[0][1], 4)[0]
    out = drain(m, 11.0)  # stalled for ~1 s: 3 ticks of catch-up, the rest skipped
    assert len(out) == 4 * 3  # every tick due from 10.08 to 11.0 was run or skipped:
    assert m.ticks_skipped + 4 == round((11.0 - 10.08) / PERIOD) + 1
    nxt = m.get_timer()
    assert nxt is not None and 11.0 < nxt <= 11.02 + 1e-9
    first_after = m.handle_timer(nxt)[0][1]
    assert [pkt[1] >> 7 for _, pkt in out] == [1, 1, 1] + [0] * 9  # marker after the gap
    assert first_after[1] >> 7 == 0
    jumped = (struct.unpack_from("!I", first_after, 4)[0] - ts_before) & 0xFFFFFFFF
    assert jumped == (5 + m.ticks_skipped) * FRAME  # the timestamps kept real time
    assert m.stats().ticks == 1 + 2 + 1 + 4 + 1


# ---------------------------------------------------------------------------- input checks


def test_parse_rtp_skips_csrcs_extension_and_padding() -> None:
    payload = bytes(range(10))
    base = struct.pack("!BBHII", 0x80, 8, 1, 2, 3)
    assert parse_rtp(base + payload) == (8, False, 1, 2, 3, 12, 22)
    csrc = struct.pack("!BBHII", 0x82, 0x80, 1, 2, 3) + b"\x00" * 8 + payload
    assert parse_rtp(csrc) == (0, True, 1, 2, 3, 20, 30)
    ext = struct.pack("!BBHII", 0x90, 0, 1, 2, 3) + b"\xbe\xde\x00\x01" + b"\x00" * 4 + payload
    assert parse_rtp(ext) == (0, False, 1, 2, 3, 20, 30)
    padded = struct.pack("!BBHII", 0xA0, 0, 1, 2, 3) + payload + b"\x00\x00\x03"
    assert parse_rtp(padded) == (0, False, 1, 2, 3, 12, 22)
    for bad in (
        base[:11],
        b"\x40" + base[1:] + payload,  # version 1
        struct.pack("!BBHII", 0xA0, 0, 1, 2, 3) + payload + b"\x00",  # padding count 0
        struct.pack("!BBHII", 0xA0, 0, 1, 2, 3) + b"\x40",  # more padding than packet
        struct.pack("!BBHII", 0x90, 0, 1, 2, 3) + b"\xbe\xde\x00\x09",  # extension too long
        struct.pack("!BBHII", 0x8F, 0, 1, 2, 3) + b"\x00" * 8,  # CSRCs past the end
    ):
        assert parse_rtp(bad) is None


def test_what_the_mixer_does_not_mix_is_counted() -> None:
    call, talker, _ = one_talker()
    call.mixer.receive(talker, b"\x80\x00", call.now)
    call.mixer.receive(talker, rtp(13, 1, 0, b"\x40"), call.now)  # comfort noise
    call.mixer.receive(talker, rtp(18, 2, 0, b"\x00" * 10), call.now)  # G.729
    call.mixer.receive(talker, rtp(PCMU, 3, 0, b""), call.now)  # no payload
    st_ = talker.stats()
    assert (st_.packets_in, st_.malformed, st_.comfort_noise, st_.unsupported) == (4, 2, 1, 1)
    assert st_.audio_in == 0


def test_join_refuses_what_it_cannot_do() -> None:
    m = Mixer()
    with pytest.raises(ValueError, match="PCMU"):
        m.join(codec=9)
    with pytest.raises(ValueError, match="telephone-event"):
        m.join(event_pt=8)
    with pytest.raises(ValueError, match="depth"):
        Mixer(depth_frames=4, capacity_frames=3)
    with pytest.raises(ValueError, match="depth"):
        JitterBuffer(0, 480)


def test_losses_and_arrival_jitter_are_measured() -> None:
    call, talker, _ = one_talker()
    rng = random.Random(3)
    for k in range(100):
        if k % 10 != 9:  # 10 % loss
            now = 1000.0 + k * PERIOD + rng.uniform(0, 0.008)
            call.mixer.receive(talker, rtp(PCMU, k, k * FRAME, b"\xff" * FRAME), now)
    st_ = talker.stats()
    assert st_.lost == 9  # the last loss (frame 99) is not known yet
    assert 0.001 < st_.jitter < 0.006


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=60),
            st.tuples(
                st.sampled_from([PCMU, PCMA, 13, 101, 96, 34]),
                st.integers(0, 0xFFFF),
                st.integers(0, 0xFFFFFFFF),
                st.binary(max_size=500),
                st.booleans(),
            ),
            st.just("tick"),
        ),
        max_size=60,
    )
)
def test_any_input_leaves_the_mixer_working(steps: list[object]) -> None:
    """Hostile or broken peers: whatever arrives, the mixer neither raises nor stops sending
    one well-formed frame per party per tick."""
    call = Call()
    a = call.join("a", CALLER_HZ, PCMU, event_pt=101)
    b = call.join("b", DISPATCHER_HZ, PCMA, event_pt=96)
    for step in steps:
        if step == "tick":
            out = call.tick()
            assert [party for party, _ in out] == [a, b]
            assert all(len(pkt) == 12 + FRAME for _, pkt in out)
        elif isinstance(step, bytes):
            call.got(call.mixer.receive(a, step, call.now))
        else:
            assert isinstance(step, tuple)
            pt, seq, ts, payload, marker = step
            call.got(
                call.mixer.push(b, pt, payload, seq=seq, timestamp=ts, now=call.now, marker=marker)
            )
        assert a.jitter_buffer.buffered <= 3 * FRAME + 500
        assert b.jitter_buffer.buffered <= 3 * FRAME + 500


def _rtp_like() -> st.SearchStrategy[bytes]:
    """Datagrams a relay port can receive: random bytes, and RTP headers with any fields
    (version, padding, extension, CSRC count, marker, payload type) over any payload."""
    header = st.tuples(
        st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**32 - 1)
    ).map(lambda f: bytes([f[0], f[1]]) + f[2].to_bytes(2, "big") + f[3].to_bytes(4, "big"))
    ssrc = st.sampled_from((b"\x00\x00\x00\x01", b"\x00\x00\x00\x02", b"\xff\xff\xff\xff"))
    return st.one_of(
        st.binary(max_size=300),
        st.tuples(header, ssrc, st.binary(max_size=400)).map(lambda t: t[0] + t[1] + t[2]),
    )


@settings(max_examples=300, deadline=None)
@given(
    packets=st.lists(st.tuples(st.integers(0, 2), _rtp_like()), max_size=40),
    codecs=st.tuples(st.sampled_from((PCMU, PCMA)), st.sampled_from((PCMU, PCMA))),
)
def test_any_datagrams_leave_the_mixer_ticking_with_well_formed_frames(
    packets: list[tuple[int, bytes]], codecs: tuple[int, int]
) -> None:
    """Whatever arrives on the parties' ports (garbage, RTP with padding, extensions, CSRCs,
    odd payload types or sizes, SSRC changes): nothing raises, and every tick still sends
    each party one 172-byte packet of 160 samples."""
    mixer = Mixer(rng=random.Random(7))
    parties = [
        mixer.join(codec=codecs[0], event_pt=101),
        mixer.join(codec=codecs[1]),
        mixer.join(codec=PCMU, event_pt=101),
    ]
    now = 0.0
    for i, (who, data) in enumerate(packets):
        now = i * 0.005
        mixer.receive(parties[who], data, now)
        if i % 4 == 3:
            out = mixer.tick(now)
            assert len(out) == 3
            assert [p for p, _ in out] == parties
            assert all(len(data) == 12 + 160 for _, data in out)
