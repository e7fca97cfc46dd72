"""End to end, audio: who hears whom through a real handoffd in warm and consult transfers.

SIPp does the signalling of the three parties (``uac-911-caller-media``, ``uas-answer-media`` as
the dispatcher and as the 988 counselor), but each party's SDP names a UDP socket this test owns
(``-key rtp_port``). Each SIPp logs the SDP it gets from handoffd (``-trace_logs``), and the test
sends that party's 20 ms G.711 packets to the relay address found there: the caller a 560 Hz
tone in PCMA, the dispatcher 1000 Hz and the counselor 1800 Hz in PCMU (none a harmonic of
another; the caller's law differs, so the conference has to transcode). What each socket
receives is decoded with the test's own G.711 expansion (``tests/peers/rtp.py``, not the
product's) and measured per 100 ms window with a Goertzel filter at each party's frequency and
at 2600 Hz, where nobody sends (the noise floor).

"hears X": the median window amplitude of X's tone is at least half what X sent and 20 times the
noise floor; "does not hear X": no window reaches 5 % of what X sent (26 dB down; a party
hearing itself would read about 100 %). Audio windows start after a settling time and need
packets flowing (80 % of one every 20 ms). The held caller on consult hears handoffd's comfort
tone (the default ``media.hold_audio: tone``: a 425 Hz beep at the start of every 4 s) and
nothing of dispatcher and counselor; nobody else ever hears 425 Hz.

The HTTP API drives the transfer; the test reads nothing from the daemon object but its HTTP
port. The measurements are taken after the call ends (so no measuring stalls the event loop
the daemon shares), then asserted window by window; the whole table is printed and is in
every failure message.
"""

from __future__ import annotations

import asyncio
import re
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from telephony.daemon import Daemon
from tests.e2e.harness import TOKEN, Ports
from tests.peers.rtp import (
    EXPAND,
    PCMA,
    PCMU,
    TonePhone,
    decode,
    encode,
    goertzel,
    open_phone,
    pace,
    tone,
)
from tests.peers.sipp import SippResult, SippRun, free_port, media_port, start_sipp

CALLER_HZ, DISPATCHER_HZ, COUNSELOR_HZ = 560.0, 1000.0, 1800.0
NOISE_HZ = 2600.0  # nobody sends here: the noise floor
HOLD_HZ = 425.0  # handoffd's comfort tone on consult hold (media.hold_audio: tone, the default)
HOLD_PERIOD = 4.0  # s: one short beep at the start of every period (telephony/media/tones.py)
TONES = (CALLER_HZ, DISPATCHER_HZ, COUNSELOR_HZ)
AMP = 6000.0  # every party sends at this amplitude (about -15 dBFS)
WINDOW = 800  # 100 ms: whole cycles of 560, 1000, 1800 and 2600 Hz (425 is 13.5 bins from 560)
PRESENT = 0.5 * AMP  # median window, of a tone that must be heard
ABSENT = 0.05 * AMP  # every window, of a tone that must not be heard
FLOOR_MARGIN = 20.0  # a heard tone is at least this many times the noise floor
SETTLE = 0.4  # s after a change before a window opens (jitter buffer, relay switch)
MEASURE = 1.2  # s per window
FLOW = 0.8  # share of the 20 ms packets that must arrive in a window
NEVER = 120_000  # ms: a -d pause longer than any run (the party never hangs up itself)
SDP_LINE = re.compile(r"sdp c=IN IP4 ([0-9.]+) m=audio ([0-9]+)(?: a=(sendonly|inactive))?")


# ---------------------------------------------------------------------------- the parties


@dataclass
class Party:
    """A test-owned media socket plus the SIPp run doing its signalling."""

    name: str
    phone: TonePhone
    log: Path
    run: SippRun | None = None

    def refresh(self) -> None:
        """Point the phone at the last SDP handoffd gave this party; send only if sendrecv."""
        if not self.log.exists():
            return
        found = SDP_LINE.findall(self.log.read_text(errors="replace"))
        if not found:
            return
        host, port, direction = found[-1]
        if host != "127.0.0.1":
            pytest.fail(f"{self.name}: handoffd's SDP names {host}, not 127.0.0.1")
        self.phone.target = (host, int(port))
        self.phone.sending = direction == ""  # sendonly/inactive offer: we answered not sending


async def _party(tmp: Path, name: str, freq: float, codec: int) -> Party:
    return Party(name, await open_phone(name, freq, codec, AMP), tmp / name / "sipp.log")


async def _sipp(
    party: Party, scenario: str, sip_port: int, pause_ms: int, handoffd: int | None = None
) -> SippRun:
    """SIPp for ``party`` (calling ``handoffd``'s SIP port if given): its SDP names the party's
    socket, handoffd's SDP goes to its log, it hangs up ``pause_ms`` after the call is set up."""
    workdir = party.log.parent
    workdir.mkdir(parents=True, exist_ok=True)
    return await start_sipp(
        scenario,
        workdir=workdir,
        local_port=sip_port,
        remote=None if handoffd is None else f"127.0.0.1:{handoffd}",
        service="disp-1",
        timeout_s=40,
        extra=(
            *("-key", "rtp_port", str(party.phone.port), "-key", "party", party.name),
            *("-d", str(pause_ms), "-mp", media_port()),
            *("-trace_logs", "-log_file", str(party.log)),
        ),
    )


@asynccontextmanager
async def three_parties(
    tmp: Path, ports: Ports, *, caller_ms: int, dispatcher_ms: int = NEVER
) -> AsyncIterator[tuple[Party, Party, Party]]:
    """Counselor and dispatcher (``uas-answer-media``) listening, then the caller calling
    position disp-1 and hanging up ``caller_ms`` after its ACK (the dispatcher ``dispatcher_ms``
    after answering). While inside, every party's phone sends its tone to the address of the
    last SDP it got (looked up every 100 ms)."""
    caller = await _party(tmp, "caller", CALLER_HZ, PCMA)
    disp = await _party(tmp, "dispatcher", DISPATCHER_HZ, PCMU)
    coun = await _party(tmp, "counselor", COUNSELOR_HZ, PCMU)
    parties = (caller, disp, coun)
    stop = asyncio.Event()

    async def refresh() -> None:
        while not stop.is_set():
            for p in parties:
                p.refresh()
            await asyncio.sleep(0.1)

    tasks = [
        asyncio.create_task(refresh()),
        asyncio.create_task(pace([p.phone for p in parties], stop)),
    ]
    try:
        coun.run = await _sipp(coun, "uas-answer-media", ports.primary, NEVER)
        disp.run = await _sipp(disp, "uas-answer-media", ports.disp1, dispatcher_ms)
        await asyncio.sleep(0.3)
        caller.run = await _sipp(caller, "uac-911-caller-media", free_port(), caller_ms, ports.sip)
        yield parties
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for p in parties:
            p.phone.close()
            if p.run is not None and p.run.proc.returncode is None:
                p.run.kill()
                await p.run.wait(5)


async def finished(party: Party, timeout: float = 20.0) -> SippResult:
    assert party.run is not None
    res = await party.run.wait(timeout)
    assert res.returncode == 0, f"{party.name}: {res.stdout[-1500:]}{res.stderr[-1500:]}"
    return res


# ---------------------------------------------------------------------------- HTTP API


class Api:
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session, self.base = session, f"http://127.0.0.1:{port}"

    async def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            return resp.status, await resp.json()

    async def connected_call(self) -> dict[str, Any]:
        for _ in range(200):
            _, body = await self("GET", "/v1/calls")
            for call in body["calls"]:
                if call["state"] == "connected":
                    return dict(call)
            await asyncio.sleep(0.05)
        raise AssertionError(f"no connected call: {body}")

    async def transfer_until(
        self, transfer_id: str, passing: tuple[str, ...], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The transfer once its state is no longer one of ``passing``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            _, t = await self("GET", f"/v1/transfers/{transfer_id}")
            if t["state"] not in passing or loop.time() > end:
                return dict(t)
            await asyncio.sleep(0.05)


async def ready(*parties: Party, timeout: float = 5.0) -> None:
    """Wait until each party knows where to send (handoffd's SDP reached its SIPp log)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not all(p.phone.target for p in parties):
        assert loop.time() < end, [(p.name, p.log.exists()) for p in parties]
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------- measuring


@dataclass
class Heard:
    """What one party received in one window: per frequency the Goertzel amplitude of every
    100 ms window, the packet count and the payload types."""

    levels: dict[float, list[float]]
    packets: int
    expected: int
    types: set[int]

    def median(self, f: float) -> float:
        return statistics.median(self.levels[f]) if self.levels[f] else 0.0

    def peak(self, f: float) -> float:
        return max(self.levels[f], default=0.0)

    def __str__(self) -> str:
        tones = " ".join(
            f"{f:.0f}Hz={self.median(f):.0f}/{self.peak(f):.0f}"
            for f in (*TONES, NOISE_HZ, HOLD_HZ)
        )
        return (
            f"{self.packets}/{self.expected} pkts pt={sorted(self.types)} "
            f"{len(self.levels[NOISE_HZ])} win: {tones}"
        )


def heard(phone: TonePhone, t0: float, t1: float) -> Heard:
    samples, packets, types = phone.audio_between(t0, t1)
    samples = samples[: len(samples) // WINDOW * WINDOW]
    levels = {
        f: [goertzel(samples[i : i + WINDOW], f) for i in range(0, len(samples), WINDOW)]
        for f in (*TONES, NOISE_HZ, HOLD_HZ)
    }
    return Heard(levels, packets, round((t1 - t0) / 0.02), types)


@dataclass
class Expect:
    """One receiver in one window: tones it must hear, tones it must not, whether audio must
    flow (False: the held caller, whose audio is not specified beyond ``absent``)."""

    party: Party
    present: tuple[float, ...]
    absent: tuple[float, ...]
    flow: bool = True


@dataclass
class Window:
    label: str
    t0: float
    t1: float
    expects: list[Expect]


async def window(label: str, *expects: Expect) -> Window:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(SETTLE)
    t0 = loop.time()
    await asyncio.sleep(MEASURE)
    return Window(label, t0, loop.time(), list(expects))


def verdict(windows: list[Window]) -> None:
    """Measure every window, print the table, then assert each expectation."""
    table: list[str] = [
        "window / receiver: packets, payload types, 100 ms windows, "
        "per tone median/max amplitude (sent at 6000)"
    ]
    results: list[tuple[Window, Expect, Heard]] = []
    for w in windows:
        for e in w.expects:
            h = heard(e.party.phone, w.t0, w.t1)
            results.append((w, e, h))
            table.append(f"{w.label:<28} {e.party.name:<10} {h}")
    text = "\n".join(table)
    print(text)
    for w, e, h in results:
        where = f"[{w.label}] {e.party.name}"
        if e.flow:
            assert h.packets >= FLOW * h.expected, f"{where}: audio stopped\n{text}"
            assert len(h.levels[NOISE_HZ]) >= 5, f"{where}: too little G.711 audio\n{text}"
        floor = h.median(NOISE_HZ)
        if e.party.name != "caller" or w.label != "consulting":  # the hold tone: nobody else
            assert h.peak(HOLD_HZ) <= ABSENT, f"{where} must not hear the hold tone\n{text}"
        for f in e.present:
            assert h.median(f) >= PRESENT and h.median(f) >= FLOOR_MARGIN * floor, (
                f"{where} should hear {f:.0f} Hz\n{text}"
            )
        for f in e.absent:
            assert h.peak(f) <= ABSENT, f"{where} must not hear {f:.0f} Hz\n{text}"


def hears(party: Party, *present: float, flow: bool = True) -> Expect:
    return Expect(party, present, tuple(f for f in TONES if f not in present), flow)


async def handed_over(
    api: Api,
    call: dict[str, Any],
    label: str,
    parties: tuple[Party, Party, Party],
    windows: list[Window],
) -> int:
    """After the dispatcher left: a window where caller and counselor hear only each other, the
    call still ``transferred``; then both hang up as scripted. Returns how many packets the
    departed dispatcher got during that window."""
    caller, disp, coun = parties
    gone = await window(label, hears(caller, COUNSELOR_HZ), hears(coun, CALLER_HZ))
    windows.append(gone)
    _, view = await api("GET", f"/v1/calls/{call['id']}")
    assert view.get("state") == "transferred", f"the caller hung up too soon: {view}"
    res = await finished(caller, 20)
    assert res.count("CallerBye(C)") == 1, res.stats
    res = await finished(coun, 10)
    assert res.count("Bye(C)") == 1, res.stats
    return disp.phone.audio_between(gone.t0, gone.t1)[1]


# ---------------------------------------------------------------------------- tests


def test_own_g711_and_goertzel_against_known_values() -> None:
    """The measuring instruments: G.711 expansion at reference codes, and Goertzel readings."""
    assert [int(v) for v in EXPAND[PCMU][[0xFF, 0x7F, 0x80, 0x00, 0xEF]]] == [
        0,
        0,
        32124,
        -32124,
        132,  # segment 1, mantissa 0: (0x84 << 1) - 0x84
    ]
    assert [int(v) for v in EXPAND[PCMA][[0xD5, 0x55, 0xAA, 0x2A]]] == [8, -8, 32256, -32256]
    x = tone(CALLER_HZ, 0, AMP, WINDOW)
    for pt in (PCMU, PCMA):
        y = decode(encode(x, pt), pt)
        assert int(np.max(np.abs(y.astype(np.int32) - x))) <= 128  # G.711 step at 6000: 256
        assert abs(goertzel(y, CALLER_HZ) - AMP) < 0.01 * AMP
        for f in (DISPATCHER_HZ, COUNSELOR_HZ, NOISE_HZ):
            assert goertzel(y, f) < 0.01 * AMP
    two = tone(DISPATCHER_HZ, 0, AMP, WINDOW) + tone(COUNSELOR_HZ, 0, AMP / 2, WINDOW)
    assert (
        abs(goertzel(two, DISPATCHER_HZ) - AMP) < 1
        and abs(goertzel(two, COUNSELOR_HZ) - AMP / 2) < 1
    )
    assert goertzel(two, CALLER_HZ) < 1


@pytest.mark.asyncio
@pytest.mark.sipp
async def test_warm_conference_then_complete_who_hears_whom(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    """Caller and dispatcher talk; warm transfer: all three mixed, nobody hears itself (and the
    PCMA caller is transcoded for the PCMU parties); ``complete``: the dispatcher gets a BYE,
    caller and counselor keep hearing each other and only each other, even though the
    dispatcher's phone still streams to its old relay address, and nothing goes to it."""
    windows: list[Window] = []
    async with (
        three_parties(tmp_path, ports, caller_ms=8000) as (caller, disp, coun),
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, daemon.http_port)
        call = await api.connected_call()
        await ready(caller, disp)
        windows.append(
            await window(
                "bridged to dispatcher",
                hears(caller, DISPATCHER_HZ),
                hears(disp, CALLER_HZ),
            )
        )

        status, t = await api("POST", f"/v1/calls/{call['id']}/transfers", {"mode": "warm"})
        assert status == 202 and t["mode"] == "warm", t
        t = await api.transfer_until(t["id"], ("trying", "ringing", "answered"))
        assert t["state"] == "conference", t
        await ready(coun)
        windows.append(
            await window(
                "warm conference",
                hears(caller, DISPATCHER_HZ, COUNSELOR_HZ),
                hears(disp, CALLER_HZ, COUNSELOR_HZ),
                hears(coun, CALLER_HZ, DISPATCHER_HZ),
            )
        )

        status, t = await api("POST", f"/v1/transfers/{t['id']}/complete")
        assert status == 200 and t["state"] == "completed", t
        res = await finished(disp, 10)  # handoffd's BYE released the dispatcher
        assert res.count("Bye(C)") == 1 and res.count("HungUp(C)") == 0, res.stats
        disp_after = await handed_over(api, call, "completed", (caller, disp, coun), windows)
    verdict(windows)
    assert disp_after == 0, f"the released dispatcher still got {disp_after} packets"


@pytest.mark.asyncio
@pytest.mark.sipp
async def test_consult_then_conference_then_dispatcher_hangs_up(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    """Consult: dispatcher and counselor hear each other, the held caller hears neither (and is
    not heard); ``conference``: all three; the dispatcher's own BYE (its phone hangs up 6 s
    after answering) completes the handoff: caller and counselor hear each other only (the
    dispatcher's phone still streams to its old relay address), and nothing goes to it."""
    windows: list[Window] = []
    parties = three_parties(tmp_path, ports, caller_ms=15_000, dispatcher_ms=11_000)
    async with parties as (caller, disp, coun), aiohttp.ClientSession() as session:
        api = Api(session, daemon.http_port)
        call = await api.connected_call()
        await ready(caller, disp)
        status, t = await api("POST", f"/v1/calls/{call['id']}/transfers", {"mode": "consult"})
        assert status == 202 and t["mode"] == "consult", t
        t = await api.transfer_until(t["id"], ("trying", "ringing", "answered"))
        assert t["state"] == "consulting", t
        held_from = asyncio.get_running_loop().time() + 0.15  # after the switch
        await ready(coun)
        windows.append(
            await window(
                "consulting",
                # the held caller hears the comfort tone (checked below), not the other two
                Expect(caller, (), (DISPATCHER_HZ, COUNSELOR_HZ)),
                hears(disp, COUNSELOR_HZ),  # not the held caller, not itself
                hears(coun, DISPATCHER_HZ),
            )
        )

        # the held caller: a comfort tone that beeps, with silence between (two beeps)
        await asyncio.sleep(held_from + HOLD_PERIOD + 0.5 - asyncio.get_running_loop().time())
        hold = heard(caller.phone, held_from, held_from + HOLD_PERIOD + 0.5)
        status, t = await api("POST", f"/v1/transfers/{t['id']}/conference")
        assert status == 200 and t["state"] == "conference", t
        windows.append(
            await window(
                "consult -> conference",
                hears(caller, DISPATCHER_HZ, COUNSELOR_HZ),
                hears(disp, CALLER_HZ, COUNSELOR_HZ),
                hears(coun, CALLER_HZ, DISPATCHER_HZ),
            )
        )
        _, t = await api("GET", f"/v1/transfers/{t['id']}")
        assert t["state"] == "conference", f"the dispatcher hung up before the window ended: {t}"

        t = await api.transfer_until(t["id"], ("conference",))
        assert t["state"] == "completed", t
        res = await finished(disp, 10)
        assert res.count("HungUp(C)") == 1 and res.count("Bye(C)") == 0, res.stats
        three = (caller, disp, coun)
        disp_after = await handed_over(api, call, "dispatcher hung up", three, windows)
    verdict(windows)
    assert disp_after == 0, f"the departed dispatcher still got {disp_after} packets"
    print(f"caller on consult hold: {hold}")
    beeping = [lv >= 0.2 * AMP for lv in hold.levels[HOLD_HZ]]
    assert hold.packets >= FLOW * hold.expected, f"hold: the tone stream stopped: {hold}"
    assert 2 <= sum(beeping) <= 8 and beeping.count(False) >= 30, f"no beeps: {hold}"
    assert all(max(hold.levels[f]) <= ABSENT for f in TONES if f != CALLER_HZ), hold
