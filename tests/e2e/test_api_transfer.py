"""End to end: a cold transfer started through the HTTP hook, with SIPp on every side.

SIPp's built-in ``uac`` is the 911 caller (it hangs up after ``-d``), the repo's ``uas-basic-call``
the dispatcher position and the 988 destinations. The transfer goes through the real HTTP API
with the bearer token; the test checks the JSON views, the failover order, and who got what.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from telephony.daemon import Daemon
from tests.e2e.harness import TOKEN, Ports
from tests.peers.sipp import free_port, sipp_binary, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]


async def _builtin_uac(
    tmp: Path, ports: Ports, user: str, hold_ms: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sipp_binary(),
        "-sn",
        "uac",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-s",
        user,
        "-m",
        "1",
        "-d",
        str(hold_ms),
        "-nostdin",
        "-timeout",
        "30s",
        "-timeout_error",
        f"127.0.0.1:{ports.sip}",
        cwd=tmp,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _connected_call(daemon: Daemon, timeout: float = 5.0) -> str:
    assert daemon.core is not None
    for _ in range(int(timeout / 0.05)):
        for call in daemon.core.calls.values():
            if call.state == "connected":
                return call.id
        await asyncio.sleep(0.05)
    raise AssertionError("no connected call")


async def _api(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(
        method, url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        return resp.status, await resp.json()


async def test_api_transfer_fails_over_to_backup(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    disp = await start_sipp("uas-basic-call", workdir=tmp_path, local_port=ports.disp1, calls=1)
    backup = await start_sipp("uas-basic-call", workdir=tmp_path, local_port=ports.backup, calls=1)
    await asyncio.sleep(0.3)
    caller = await _builtin_uac(tmp_path, ports, "disp-1", hold_ms=4000)
    call_id = await _connected_call(daemon)
    base = f"http://127.0.0.1:{daemon.http_port}"
    async with aiohttp.ClientSession() as s:
        status, view = await _api(s, "GET", f"{base}/v1/calls/{call_id}")
        assert status == 200 and view["state"] == "connected" and view["position"] == "disp-1"
        status, t = await _api(
            s, "POST", f"{base}/v1/calls/{call_id}/transfers", {"mode": "cold", "triage_level": 1}
        )
        assert status == 202, t
        # nothing listens on the primary's port: the INVITE fails (ICMP port unreachable is a
        # transport error, or it rings out after the test rules' 3 s) and the backup answers
        for _ in range(120):
            status, t = await _api(s, "GET", f"{base}/v1/transfers/{t['id']}")
            if t["state"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.05)
        assert t["state"] == "completed", t
        events = [(e["event"], e["destination"]) for e in t["timeline"]]
        assert ("trying", "988-primary") in events
        assert ("trying", "988-backup") in events
        assert events.index(("trying", "988-primary")) < events.index(("trying", "988-backup"))
        status, body = await _api(s, "POST", f"{base}/v1/transfers/{t['id']}/cancel")
        assert status == 409 and body["error"]["status"] == 409
    _, err = await asyncio.wait_for(caller.communicate(), 30)
    assert caller.returncode == 0, err.decode()[-2000:]
    assert (await disp.wait(20)).count("SuccessfulCall(C)") == 1  # got our BYE
    assert (await backup.wait(20)).count("SuccessfulCall(C)") == 1  # got the caller's BYE
