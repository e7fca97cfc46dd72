"""End to end over TCP: the PSAP trunk sends its 911 call over SIP/TCP, the parties after it
are on UDP. A 911 INVITE with a PIDF-LO is larger than a UDP datagram should be (RFC 3261
§18.1.1: over 1300 bytes goes on a congestion-controlled transport), so many PSAP trunks use
TCP. Everything handoffd sends the caller must go over that transport: the responses on the
caller's own connection, and its in-dialog requests (NOTIFY does not go there, but a BYE does)
to the caller's Contact with ``transport=tcp``.

SIPp plays the caller with ``-t t1`` (one TCP connection) and the other parties over UDP.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from telephony.daemon import Daemon
from tests.e2e.harness import Ports, settled
from tests.peers.sipp import SCENARIOS, SippResult, SippRun, free_port, media_port, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]

DATA = SCENARIOS / "data"


async def _tcp_caller(tmp: Path, ports: Ports, scenario: str, hold_ms: int) -> SippRun:
    return await start_sipp(
        scenario,
        workdir=tmp,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        transport="t1",
        calls=1,
        timeout_s=40,
        extra=("-inf", str(DATA / "911-caller.csv"), "-d", str(hold_ms), "-mp", media_port()),
    )


def _ok(res: SippResult, what: str) -> None:
    assert res.returncode == 0, f"{what}: {res.stdout[-1500:]}{res.stderr[-1500:]}"


async def test_a_911_call_over_tcp_is_transferred_to_988_by_refer(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    """The caller over TCP (its multipart INVITE with PIDF-LO), the position over UDP transfers
    it blind to 988; the caller, bridged to 988, hangs up over its TCP connection."""
    d988 = await start_sipp(
        "uas-988-answer", workdir=tmp_path, local_port=ports.primary, calls=1, timeout_s=40
    )
    disp = await start_sipp(
        "uas-dispatcher-refer",
        workdir=tmp_path,
        local_port=ports.disp1,
        calls=1,
        timeout_s=40,
        extra=("-inf", str(DATA / "refer-988.csv"), "-d", "1000"),
    )
    await asyncio.sleep(0.3)
    res = await (await _tcp_caller(tmp_path, ports, "uac-911-caller", 5000)).wait(40)
    _ok(res, "caller over TCP")
    _ok(await disp.wait(20), "dispatcher")
    _ok(await d988.wait(20), "988")
    assert res.count("CallerBye(C)") == 1 and res.count("FarEndBye(C)") == 0
    call = next(iter((await settled(daemon)).ended.values()))
    assert call.caller.dest.transport == "tcp"
    t = call.transfer
    assert t is not None and t.state.value == "completed" and t.trigger == "refer", t


async def test_the_far_end_hangup_reaches_a_tcp_caller(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    """The position hangs up: handoffd's BYE must reach the caller over TCP (it waits for it;
    a BYE sent over UDP, or not at all, fails its scenario by timeout)."""
    disp = await start_sipp(
        "uas-answer-media",
        workdir=tmp_path,
        local_port=ports.disp1,
        calls=1,
        timeout_s=40,
        extra=("-key", "party", "dispatcher", "-key", "rtp_port", media_port(), "-d", "1500"),
    )
    await asyncio.sleep(0.3)
    res = await (await _tcp_caller(tmp_path, ports, "uac-911-caller-waits", 1000)).wait(40)
    _ok(res, "caller over TCP")
    dres = await disp.wait(20)
    _ok(dres, "dispatcher")
    assert dres.count("HungUp(C)") == 1
    assert res.count("FarEndBye(C)") == 1
    call = next(iter((await settled(daemon)).ended.values()))
    assert call.caller.dest.transport == "tcp"
