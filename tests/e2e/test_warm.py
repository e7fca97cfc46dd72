"""End to end: a warm transfer through the HTTP hook, SIPp on every side, the real mixer.

The caller (``uac-911-caller``) plays G.711 A-law from a pcap; the dispatcher (``uas-dispatcher``)
answers; 988 (``uas-988-answer`` with ``-rtp_echo``) sends back whatever it receives. While the
three are in conference, the 988 endpoint receiving packets proves the mixer sent it the mix
(SIPp only echoes what arrives), and the caller's endpoint sending packets proves the mix goes
back to the caller. Then ``complete``: the dispatcher gets our BYE, caller and 988 stay
bridged (plain relay), and the caller's hang-up ends it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from telephony.call.b2bua import Call
from telephony.daemon import Daemon
from telephony.media.relay import LegEndpoint
from tests.e2e.harness import TOKEN, Ports
from tests.peers.sipp import SCENARIOS, SippRun, free_port, media_port, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]
DATA = SCENARIOS / "data"


async def _api(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(
        method, url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        return resp.status, await resp.json()


async def _connected(daemon: Daemon) -> Call:
    assert daemon.core is not None
    for _ in range(200):
        for call in daemon.core.calls.values():
            if call.state == "connected":
                return call
        await asyncio.sleep(0.05)
    raise AssertionError("no connected call")


def _ep(leg: Any) -> LegEndpoint:
    assert leg is not None and isinstance(leg.media, LegEndpoint)
    return leg.media


async def _three_parties(
    tmp: Path, ports: Ports, dispatcher: str, *disp_extra: str
) -> tuple[SippRun, SippRun, SippRun]:
    """988 (answers, echoes RTP), the dispatcher scenario, then the 911 caller (9 s, G.711)."""
    d988 = await start_sipp(
        "uas-988-answer",
        workdir=tmp,
        local_port=ports.primary,
        calls=1,
        timeout_s=40,
        extra=("-rtp_echo", "-mp", media_port()),
    )
    disp = await start_sipp(
        dispatcher, workdir=tmp, local_port=ports.disp1, calls=1, timeout_s=40, extra=disp_extra
    )
    await asyncio.sleep(0.3)
    caller = await start_sipp(
        "uac-911-caller",
        workdir=tmp,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=1,
        timeout_s=40,
        extra=("-inf", str(DATA / "911-caller.csv"), "-d", "9000", "-mp", media_port()),
    )
    return d988, disp, caller


async def test_warm_transfer_conference_then_complete(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    d988, disp, caller = await _three_parties(tmp_path, ports, "uas-dispatcher")
    call = await _connected(daemon)
    base = f"http://127.0.0.1:{daemon.http_port}"
    async with aiohttp.ClientSession() as s:
        status, t = await _api(s, "POST", f"{base}/v1/calls/{call.id}/transfers", {"mode": "warm"})
        assert status == 202 and t["mode"] == "warm", t
        for _ in range(100):
            _, t = await _api(s, "GET", f"{base}/v1/transfers/{t['id']}")
            if t["state"] != "trying" and t["state"] != "ringing":
                break
            await asyncio.sleep(0.05)
        assert t["state"] == "conference", t
        dest, caller_ep = _ep(call.destination), _ep(call.caller)
        before_out = caller_ep.rtp_packets_out
        await asyncio.sleep(1.5)  # three parties mixed for 1.5 s
        assert dest.rtp_packets_out >= 40, "the mixer sends 988 a frame every 20 ms"
        assert dest.rtp_packets_in >= 20, "988 echoed the mix: it reached 988"
        assert caller_ep.rtp_packets_out - before_out >= 40, "the caller hears the conference"
        assert call.dispatcher is not None and call.dispatcher.alive  # the dispatcher stays
        status, t = await _api(s, "POST", f"{base}/v1/transfers/{t['id']}/complete")
        assert status == 200 and t["state"] == "completed", t
        status, body = await _api(s, "POST", f"{base}/v1/transfers/{t['id']}/complete")
        assert status == 409 and "completed" in body["error"]["message"]
        await asyncio.sleep(1.0)
        assert call.bridged is not None  # caller and counselor, relayed untouched again
        assert {id(leg) for leg in call.bridged} == {id(call.caller), id(call.destination)}
        relayed = dest.rtp_packets_in
        await asyncio.sleep(1.0)
        assert dest.rtp_packets_in > relayed, "caller audio still reaches 988 after the handoff"
    res = await caller.wait(40)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    res = await disp.wait(20)
    assert res.returncode == 0 and res.count("Bye(C)") == 1, res.stdout[-1500:]
    res = await d988.wait(20)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]


@pytest.mark.parametrize(
    "scenario",
    [
        # RFC 4733 events (SIPp's pcaps), *0 3.4 s after *8
        "uas-dispatcher-dtmf",
        # a phone in SIP INFO mode: no telephone-event in its SDP, application/dtmf-relay INFO
        "uas-dispatcher-info-dtmf",
    ],
)
async def test_feature_codes_from_the_dispatchers_phone_warm_then_complete(
    tmp_path: Path, daemon: Daemon, ports: Ports, scenario: str
) -> None:
    """The dispatcher keys *8 (warm) then *0 (complete), 1 s after the answer and ~3 s apart,
    as RFC 4733 events or as SIP INFO requests: the same warm transfer and completion."""
    d988, disp, caller = await _three_parties(tmp_path, ports, scenario, "-mp", media_port())
    call = await _connected(daemon)
    seen: list[str] = []
    for _ in range(200):
        t = call.transfer
        if t is not None and (not seen or seen[-1] != t.state.value):
            seen.append(t.state.value)
        if t is not None and t.done:
            break
        await asyncio.sleep(0.05)
    t = call.transfer
    assert t is not None and t.trigger == "dtmf" and t.mode == "warm", seen
    assert "conference" in seen and t.state.value == "completed", seen
    res = await disp.wait(30)
    assert res.returncode == 0 and res.count("Keyed(C)") == 1 and res.count("Bye(C)") == 1, (
        res.stdout[-1500:]
    )
    res = await caller.wait(40)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    res = await d988.wait(20)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
