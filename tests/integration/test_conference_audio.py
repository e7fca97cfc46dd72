"""A 3-way conference on real UDP sockets (127.0.0.1): relay endpoints + Conference + Mixer.

Three fake phones (plain asyncio datagram sockets) stream G.711 tones in real time, 20 ms
packets: the caller 440 Hz (PCMU), the dispatcher 1000 Hz (PCMA), the 988 counselor 1800 Hz
(PCMU). Each phone's SDP address is set on its leg endpoint, exactly as the call layer does.
What each phone receives is decoded and measured (single-bin DFT, see tests/unit/test_mixer.py):
it must hear the other two and never itself; after the dispatcher leaves, caller and counselor
still hear each other; before and after the conference, the relay passes packets through
byte for byte. The same scenario runs on asyncio's loop and on uvloop (what the daemon uses).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import statistics
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pytest
from numpy.typing import NDArray

from telephony.media import g711
from telephony.media.conference import Conference
from telephony.media.g711 import PCMA, PCMU
from telephony.media.ports import MediaError, PortAllocator
from telephony.media.relay import LegEndpoint, Relay
from telephony.media.rtp import FRAME, PERIOD, parse_rtp
from telephony.media.tones import COMFORT_TONE, amplitude
from tests.unit.test_mixer import (
    ABSENT,
    AMP,
    CALLER_HZ,
    COUNSELOR_HZ,
    DISPATCHER_HZ,
    WINDOW,
    level,
    sipp_capture,
    tone,
)

HOST = "127.0.0.1"
TONES = (CALLER_HZ, DISPATCHER_HZ, COUNSELOR_HZ)
LIMIT = 30.0  # seconds: every test stops by itself


@dataclass
class Phone(asyncio.DatagramProtocol):
    """A softphone's media socket: sends its tone as RTP, records what arrives (with time)."""

    name: str
    freq: float
    codec: int
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    received: list[tuple[float, bytes]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    k: int = 0  # next frame number

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (asyncio's selector datagram transport is not a DatagramTransport subclass in 3.11)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append((asyncio.get_running_loop().time(), data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send_raw(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, (HOST, port))

    def send_frame(self, port: int) -> None:
        payload = g711.encode(tone(self.freq, self.k * FRAME), self.codec)
        header = struct.pack(
            "!BBHII", 0x80, self.codec, self.k & 0xFFFF, (self.k * FRAME) & 0xFFFFFFFF, self.ssrc
        )
        self.send_raw(header + payload, port)
        self.k += 1

    def audio_between(self, t0: float, t1: float) -> NDArray[np.int16]:
        """Decoded G.711 of the audio packets that arrived in [t0, t1), whole 100 ms windows."""
        chunks = []
        for t, pkt in self.received:
            h = parse_rtp(pkt)
            if t0 <= t < t1 and h is not None and h.payload_type in (PCMU, PCMA):
                chunks.append(g711.decode(pkt[h.start : h.end], h.payload_type))
        samples = np.concatenate(chunks)
        return samples[: len(samples) // WINDOW * WINDOW]

    def packets_between(self, t0: float, t1: float) -> list[bytes]:
        return [pkt for t, pkt in self.received if t0 <= t < t1]


async def open_phone(name: str, freq: float, codec: int) -> Phone:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: Phone(name, freq, codec), local_addr=(HOST, 0)
    )
    return proto


def hears(phone: Phone, t0: float, t1: float) -> dict[float, tuple[float, float]]:
    """Per tone: (median, max) amplitude over the 100 ms windows of what ``phone`` got."""
    samples = phone.audio_between(t0, t1)
    assert len(samples) >= 5 * WINDOW, f"{phone.name}: only {len(samples)} samples"
    out = {}
    for f in TONES:
        per = [level(samples[i : i + WINDOW], f) for i in range(0, len(samples), WINDOW)]
        out[f] = (statistics.median(per), max(per))
    return out


def assert_hears(phone: Phone, t0: float, t1: float, present: set[float]) -> None:
    got = hears(phone, t0, t1)
    for f in TONES:
        median, worst = got[f]
        if f in present:  # real time on a shared box: judge the typical window
            assert median >= 0.9 * AMP, f"{phone.name} should hear {f} Hz: {got}"
        else:  # and never any window with audio that must not be there
            assert worst <= ABSENT, f"{phone.name} must not hear {f} Hz: {got}"


async def pace(frames: int, step: Callable[[int], None]) -> None:
    """Call ``step(i)`` every 20 ms, ``frames`` times, on an absolute schedule (no drift)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(frames):
        await asyncio.sleep(max(0.0, t0 + i * PERIOD - loop.time()))
        step(i)


async def until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.005)


@dataclass
class Rig:
    relay: Relay
    phones: dict[str, Phone]
    eps: dict[str, LegEndpoint]
    errors: list[dict[str, Any]]


async def rig() -> Rig:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    base = random.randrange(20000, 31000, 2)
    relay = Relay(PortAllocator(HOST, base, base + 63))
    phones = {
        "caller": await open_phone("caller", CALLER_HZ, PCMU),
        "dispatcher": await open_phone("dispatcher", DISPATCHER_HZ, PCMA),
        "counselor": await open_phone("counselor", COUNSELOR_HZ, PCMU),
    }
    eps = {}
    for name, phone in phones.items():
        ep = await relay.open_endpoint(name)
        ep.set_remote(HOST, phone.port, phone.port)  # the phone's SDP; RTCP on the same socket
        eps[name] = ep
    return Rig(relay, phones, eps, errors)


async def close_rig(r: Rig) -> None:
    for phone in r.phones.values():
        assert phone.transport is not None
        phone.transport.close()
    await r.relay.wait_closed()
    assert r.relay.ports.in_use == 0
    asyncio.get_running_loop().set_exception_handler(None)
    assert r.errors == []


# ---------------------------------------------------------------------------- the scenario


async def warm_handoff_scenario() -> None:
    r = await rig()
    loop = asyncio.get_running_loop()
    caller, dispatcher, counselor = (r.phones[n] for n in ("caller", "dispatcher", "counselor"))
    ep = r.eps
    try:
        # 1. caller <-> dispatcher, plain relay: bytes untouched
        r.relay.bridge(ep["caller"], ep["dispatcher"], "call")
        probe = struct.pack("!BBHII", 0x80, 0x80 | PCMU, 7, 1120, 0xC0FFEE) + b"\x01\x02" * 80
        caller.send_raw(probe, ep["caller"].rtp_port)
        await until(lambda: len(dispatcher.received) == 1)
        assert dispatcher.received[0][1] == probe

        # 2. the counselor answers: three-way conference (the bridge is dissolved by add)
        conf = Conference("call-1")
        conf.add(ep["caller"], codec=PCMU, event_pt=101)
        conf.add(ep["dispatcher"], codec=PCMA, event_pt=101)
        conf.add(ep["counselor"], codec=PCMU, event_pt=96)
        assert ep["caller"].bridge is None and ep["dispatcher"].bridge is None
        ssrc = {name: conf.party(ep[name]).ssrc for name in r.phones}
        with pytest.raises(MediaError, match="conference"):
            r.relay.bridge(ep["caller"], ep["counselor"])
        t_conf = loop.time()
        all3 = (caller, dispatcher, counselor)
        digit = sipp_capture("dtmf_2833_1.pcap")  # RFC 4733 '1' (PT 101), from SIPp

        def talk3(i: int) -> None:
            for phone in all3:
                phone.send_frame(ep[phone.name].rtp_port)
            if 20 <= i < 20 + len(digit):  # the dispatcher presses 1 meanwhile
                dispatcher.send_raw(digit[i - 20][1], ep["dispatcher"].rtp_port)
            if i == 30:  # and the caller's phone sends an RTCP receiver report
                caller.send_raw(
                    struct.pack("!BBHI", 0x80, 201, 1, caller.ssrc), ep["caller"].rtcp_port
                )

        await pace(60, talk3)
        await asyncio.sleep(0.03)  # the dispatcher's last packet reaches the mixer
        t_drop = loop.time()

        # 3. the dispatcher drops: caller and counselor stay mixed
        conf.remove(ep["dispatcher"])
        assert ep["dispatcher"].bridge is None and not ep["dispatcher"].closed

        def talk2(_i: int) -> None:
            for phone in (caller, counselor):
                phone.send_frame(ep[phone.name].rtp_port)

        await pace(50, talk2)
        t_end = loop.time()
        await asyncio.sleep(0.1)

        # who heard whom, in the steady part of each phase (buffers filled, 3+ windows)
        assert_hears(caller, t_conf + 0.1, t_drop, {DISPATCHER_HZ, COUNSELOR_HZ})
        assert_hears(dispatcher, t_conf + 0.1, t_drop, {CALLER_HZ, COUNSELOR_HZ})
        assert_hears(counselor, t_conf + 0.1, t_drop, {CALLER_HZ, DISPATCHER_HZ})
        assert_hears(caller, t_drop + 0.1, t_end, {COUNSELOR_HZ})
        assert_hears(counselor, t_drop + 0.1, t_end, {CALLER_HZ})
        assert dispatcher.packets_between(t_drop + 0.05, t_end + 1) == []

        # each phone got its own codec, in one stream from the mixer (its own SSRC)
        for phone in all3:
            audio = [p for p in phone.packets_between(t_conf, t_drop) if p[1] & 0x7F in (0, 8)]
            assert {p[1] & 0x7F for p in audio} == {phone.codec}
            assert {struct.unpack_from("!I", p, 8)[0] for p in audio} == {ssrc[phone.name]}
        # the DTMF went to caller (PT 101) and counselor (PT 96), payloads untouched, not mixed
        for phone, pt in ((caller, 101), (counselor, 96)):
            events = [p for _, p in phone.received if p[1] & 0x7F == pt]
            assert [p[12:] for p in events] == [p[12:] for _, p in digit]
            assert {struct.unpack_from("!I", p, 8)[0] for p in events} == {ssrc[phone.name]}
        assert not [p for _, p in dispatcher.received if p[1] & 0x7F in (96, 101)]
        # RTCP from a phone in the conference is absorbed, not relayed and not a drop
        assert not [p for phone in all3 for _, p in phone.received if 200 <= p[1] <= 204]
        assert ep["caller"].stats().rtcp_packets_in == 1
        for e in ep.values():
            assert e.stats().dropped == 0

        counters = {n: e.stats() for n, e in ep.items()}
        sent_by_mixer = counters["caller"].rtp_packets_out
        assert sent_by_mixer >= 100  # ~110 ticks, counted like relayed packets
        stats, parties = conf.stats()
        assert stats.parties == 2 and conf.errors == 0
        for name in ("caller", "counselor"):
            # every packet reached the mixer (no loss through the relay); real time on a shared
            # machine may make one arrive after its turn (dropped as late), rarely
            got = parties[name]
            assert got.audio_in + got.late == 110 and got.late <= 3, got
            assert got.restarts == 0 and got.malformed == 0

        # 4. the conference ends: caller <-> counselor bridged, untouched relaying again
        assert set(conf.close()) == {ep["caller"], ep["counselor"]}
        r.relay.bridge(ep["caller"], ep["counselor"], "handed-off")
        await asyncio.sleep(0.05)
        before = len(caller.received)
        probe2 = struct.pack("!BBHII", 0x80, PCMU, 8, 1280, 0xC0FFEE) + b"\x03\x04" * 80
        counselor.send_raw(probe2, ep["counselor"].rtp_port)
        await until(lambda: len(caller.received) > before)
        assert caller.received[-1][1] == probe2
        await asyncio.sleep(0.1)
        assert len(caller.received) == before + 1  # and the mixer sends nothing more
    finally:
        await close_rig(r)


@pytest.mark.asyncio
async def test_warm_handoff_conference_audio_over_udp() -> None:
    async with asyncio.timeout(LIMIT):
        await warm_handoff_scenario()


def test_warm_handoff_conference_audio_over_udp_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    run(uvloop.new_event_loop(), warm_handoff_scenario)


def run(loop: asyncio.AbstractEventLoop, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), LIMIT))
    finally:
        loop.close()


# ---------------------------------------------------------------------------- a leg hangs up


@pytest.mark.asyncio
async def test_a_leg_that_hangs_up_leaves_the_mix_and_the_others_carry_on() -> None:
    async with asyncio.timeout(LIMIT):
        await hang_up_scenario()


async def hang_up_scenario() -> None:
    r = await rig()
    loop = asyncio.get_running_loop()
    caller, dispatcher, counselor = (r.phones[n] for n in ("caller", "dispatcher", "counselor"))
    ep = r.eps
    try:
        conf = Conference("call-2")
        for name, phone in r.phones.items():
            conf.add(ep[name], codec=phone.codec)
        with pytest.raises(MediaError, match="already"):
            conf.add(ep["caller"])

        def talk(phones: tuple[Phone, ...]) -> Callable[[int], None]:
            def step(_i: int) -> None:
                for phone in phones:
                    phone.send_frame(ep[phone.name].rtp_port)

            return step

        await pace(20, talk((caller, dispatcher, counselor)))
        ep["counselor"].close()  # the counselor's leg hung up (BYE): its endpoint closes
        t_gone = loop.time()
        await pace(40, talk((caller, dispatcher)))
        t_end = loop.time()
        await asyncio.sleep(0.05)
        assert conf.endpoints == (ep["caller"], ep["dispatcher"])
        assert_hears(caller, t_gone + 0.1, t_end, {DISPATCHER_HZ})
        assert_hears(dispatcher, t_gone + 0.1, t_end, {CALLER_HZ})
        assert counselor.packets_between(t_gone + 0.05, t_end + 1) == []
        conf.close()
        with pytest.raises(MediaError, match="closed"):
            conf.add(ep["caller"])
        assert conf.errors == 0
    finally:
        await close_rig(r)


# ---------------------------------------------------------------------------- consult hold


def stream(packets: list[bytes]) -> tuple[list[tuple[int, ...]], NDArray[np.int16]]:
    """The RTP headers and the decoded audio of a phone's received audio packets, in order."""
    audio = [p for p in packets if p[1] & 0x7F in (PCMU, PCMA)]
    heads = [struct.unpack_from("!BBHII", p) for p in audio]
    samples = np.concatenate([g711.decode(p[12:], p[1] & 0x7F) for p in audio])
    return heads, samples


async def consult_scenario() -> None:
    """The consult as the call layer runs it: the caller alone in a conference, held with the
    comfort tone, while dispatcher and counselor talk over a plain bridge; then the consult
    becomes a 3-way conference and the caller's same stream carries the mix."""
    r = await rig()
    loop = asyncio.get_running_loop()
    caller, dispatcher, counselor = (r.phones[n] for n in ("caller", "dispatcher", "counselor"))
    ep = r.eps
    try:
        r.relay.bridge(ep["caller"], ep["dispatcher"], "call")
        conf = Conference("call-3")
        conf.add(ep["caller"], codec=PCMU, event_pt=101, hold_tone=True)  # leaves the bridge
        r.relay.bridge(ep["dispatcher"], ep["counselor"], "consult")
        t_hold = loop.time()
        all3 = (caller, dispatcher, counselor)

        def talk(_i: int) -> None:
            for phone in all3:
                phone.send_frame(ep[phone.name].rtp_port)

        await pace(65, talk)  # 1.3 s: the beep (0.25 s) and a second of the pause
        await asyncio.sleep(0.03)
        t_conf = loop.time()
        held = len(caller.received)
        conf.add(ep["dispatcher"], codec=PCMA, event_pt=101)
        conf.add(ep["counselor"], codec=PCMU, event_pt=96)
        conf.set_mode(ep["caller"], hold_tone=False)
        await pace(50, talk)
        t_end = loop.time()
        await asyncio.sleep(0.1)

        # held: the tone, in the caller's law, then silence; nothing of the other two
        heads, x = stream([p for _, p in caller.received[:held]])
        assert len(heads) >= 60
        want = amplitude(COMFORT_TONE.level)
        beep = x[200:1800]  # the steady middle of the first 0.25 s (200 ms: whole cycles)
        assert abs(20 * math.log10(level(beep, COMFORT_TONE.freq) / want)) < 0.3
        for f in TONES:
            assert level(beep, f) <= ABSENT, f"{f} Hz leaked into the hold tone"
        pause = x[2000 : len(x) // 800 * 800]
        assert len(pause) >= 8000 and set(pause.tolist()) == {0}  # exact μ-law silence
        # meanwhile dispatcher and counselor talked to each other, and never heard the caller
        assert_hears(dispatcher, t_hold + 0.1, t_conf, {COUNSELOR_HZ})
        assert_hears(counselor, t_hold + 0.1, t_conf, {DISPATCHER_HZ})

        # the conference: each hears the other two; the caller's stream never broke
        assert_hears(caller, t_conf + 0.1, t_end, {DISPATCHER_HZ, COUNSELOR_HZ})
        assert_hears(dispatcher, t_conf + 0.1, t_end, {CALLER_HZ, COUNSELOR_HZ})
        assert_hears(counselor, t_conf + 0.1, t_end, {CALLER_HZ, DISPATCHER_HZ})
        heads, _ = stream([p for _, p in caller.received])
        assert {h[4] for h in heads} == {conf.party(ep["caller"]).ssrc}
        assert all((b[2] - a[2]) & 0xFFFF == 1 for a, b in itertools.pairwise(heads))
        assert all((b[3] - a[3]) & 0xFFFFFFFF == FRAME for a, b in itertools.pairwise(heads))
        assert sum(h[1] >> 7 for h in heads) == 1  # the marker: its first packet only
        assert conf.errors == 0
        conf.close()
    finally:
        await close_rig(r)


@pytest.mark.asyncio
async def test_a_held_caller_hears_the_comfort_tone_then_the_conference() -> None:
    async with asyncio.timeout(LIMIT):
        await consult_scenario()


def test_a_held_caller_hears_the_comfort_tone_then_the_conference_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    run(uvloop.new_event_loop(), consult_scenario)


# ---------------------------------------------------------------------------- one clock, many


@pytest.mark.asyncio
async def test_conferences_on_one_clock_stay_apart_and_a_broken_one_hurts_no_other() -> None:
    """Two calls mixed on the loop's one clock (one batched tick): no audio crosses between
    them; when one conference's mixer fails on every tick, it counts errors and the other
    carries on without losing a frame."""
    async with asyncio.timeout(LIMIT):
        r1, r2 = await rig(), await rig()
        try:
            confs = []
            for name, r in (("call-4", r1), ("call-5", r2)):
                conf = Conference(name)
                for pname, phone in r.phones.items():
                    conf.add(r.eps[pname], codec=phone.codec)
                confs.append(conf)
            r2.phones["counselor"].freq = 0.0  # call 5: a silent counselor tells them apart

            def talk(_i: int) -> None:
                for r in (r1, r2):
                    for pname, phone in r.phones.items():
                        phone.send_frame(r.eps[pname].rtp_port)

            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await pace(40, talk)
            t1 = loop.time()

            def fail() -> None:
                raise RuntimeError("injected")

            confs[0].mixer._fill = fail  # type: ignore[method-assign]
            ticks_before = confs[0].mixer.ticks
            await pace(30, talk)
            t2 = loop.time()
            await asyncio.sleep(0.05)
            p1, p2 = r1.phones, r2.phones
            assert_hears(p1["caller"], t0 + 0.1, t1, {DISPATCHER_HZ, COUNSELOR_HZ})
            assert_hears(p2["caller"], t0 + 0.1, t2, {DISPATCHER_HZ})
            assert_hears(p2["dispatcher"], t0 + 0.1, t2, {CALLER_HZ})
            assert_hears(p2["counselor"], t0 + 0.1, t2, {CALLER_HZ, DISPATCHER_HZ})
            assert p1["caller"].packets_between(t1 + 0.03, t2) == []  # call 4 broke ...
            failed = confs[0].mixer.ticks - ticks_before
            assert failed >= 10 and confs[0].errors == failed  # each of its ticks, once
            _, parties = confs[1].stats()
            assert confs[1].errors == 0  # ... call 5 did not: every frame of it was played
            for st_ in parties.values():
                assert st_.holes == 0 and st_.late <= 3, st_
            for conf in confs:
                conf.close()
        finally:
            try:
                await close_rig(r1)
            finally:
                await close_rig(r2)
