"""Interop with a real peer: SIPp calls our UAS, and our UAC calls SIPp.

Each test starts ``sipp`` (Debian sip-tester) on free 127.0.0.1 ports with a call count, so it
stops by itself, and requires every call to succeed. A missing sipp binary fails the test: the
README's test command installs it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from telephony.io.stack import SipStack
from telephony.sip.transaction import Endpoint, TimerConfig
from tests.peers.sipp import free_port, start_sipp
from tests.peers.ua import MiniUac, MiniUas

CALLS = 20


async def _uas_stack(transport: str) -> tuple[SipStack, MiniUas]:
    stack = SipStack(lambda ev: None, TimerConfig())
    local = await stack.listen(transport, "127.0.0.1", 0)
    uas = MiniUas(stack, local)
    stack.handler = uas.handle
    return stack, uas


@pytest.mark.asyncio
@pytest.mark.parametrize("transport,sipp_transport", [("udp", "u1"), ("tcp", "t1")])
async def test_sipp_uac_calls_our_uas(tmp_path: Path, transport: str, sipp_transport: str) -> None:
    stack, uas = await _uas_stack(transport)
    try:
        target = f"{uas.local.host}:{uas.local.port}"
        run = await start_sipp(
            "uac-basic-call",
            workdir=tmp_path,
            local_port=free_port(),
            remote=target,
            calls=CALLS,
            rate=20,
            transport=sipp_transport,
        )
        result = await run.wait(timeout=60)
    finally:
        await stack.close()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.count("SuccessfulCall(C)") == CALLS
    assert result.count("FailedCall(C)") == 0
    assert uas.invites == CALLS
    assert uas.acks == CALLS
    assert uas.byes == CALLS
    assert uas.unknown_dialog == 0
    assert uas.ack_timeouts == 0
    assert not uas.pending_2xx  # every 2xx retransmitter was stopped by its ACK
    assert len(uas.dialogs) == 0  # every dialog ended by the caller's BYE


@pytest.mark.asyncio
async def test_our_uac_calls_sipp_uas(tmp_path: Path) -> None:
    sipp_port = free_port()
    run = await start_sipp(
        "uas-basic-call", workdir=tmp_path, local_port=sipp_port, calls=CALLS, timeout_s=60
    )
    stack = SipStack(lambda ev: None, TimerConfig())
    try:
        local = await stack.listen("udp", "127.0.0.1", 0)
        uac = MiniUac(stack, local)
        stack.handler = uac.handle
        await asyncio.sleep(0.3)  # let sipp bind its socket
        dest = Endpoint("udp", "127.0.0.1", sipp_port)
        results = []
        for _ in range(CALLS // 5):
            results += await asyncio.gather(*(uac.call(dest, hold=0.05) for _ in range(5)))
        result = await run.wait(timeout=60)
    finally:
        run.kill()
        await stack.close()
    assert [r.invite_status for r in results] == [200] * CALLS
    assert [r.bye_status for r in results] == [200] * CALLS
    assert uac.provisional >= CALLS  # SIPp's 180 for every call
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.count("SuccessfulCall(C)") == CALLS
    assert result.count("FailedCall(C)") == 0
