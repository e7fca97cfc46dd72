"""End to end with the issue's SIPp scenarios: a 911 caller with every metadata header, a
PIDF-LO body and G.711 audio; dispatchers that answer or REFER; 988 lines that answer (checking
the headers that must and must not arrive), are busy, unavailable or ring forever.

Each SIPp exits 0 only when every check of its scenario held (see sipp_scenarios/README.md).
Audio reaching 988 is proven by the relay: ``uas-988-answer`` runs with ``-rtp_echo``, so the
988 leg's relay endpoint receives packets back only if the caller's audio got there.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from telephony.call.b2bua import Call
from telephony.daemon import Daemon
from telephony.media.relay import LegEndpoint
from tests.e2e.harness import Ports, settled
from tests.peers.sipp import SCENARIOS, SippResult, SippRun, free_port, media_port, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]
DATA = SCENARIOS / "data"


async def _caller(
    tmp: Path, ports: Ports, csv: str, hold_ms: int, scenario: str = "uac-911-caller"
) -> SippRun:
    return await start_sipp(
        scenario,
        workdir=tmp,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=1,
        timeout_s=40,
        extra=("-inf", str(DATA / csv), "-d", str(hold_ms), "-mp", media_port()),
    )


async def _uas(tmp: Path, name: str, port: int, *extra: str) -> SippRun:
    return await start_sipp(name, workdir=tmp, local_port=port, calls=1, timeout_s=40, extra=extra)


def _ok(res: SippResult, what: str) -> None:
    assert res.returncode == 0, f"{what}: {res.stdout[-1500:]}{res.stderr[-1500:]}"


async def _watch_988_audio(daemon: Daemon, seen: list[int]) -> None:
    """Record the most RTP packets the 988 leg's relay endpoint received, while calls last."""
    assert daemon.core is not None
    while True:
        for call in list(daemon.core.calls.values()):
            leg = call.destination
            if isinstance(call, Call) and leg is not None and isinstance(leg.media, LegEndpoint):
                seen.append(leg.media.rtp_packets_in)
        await asyncio.sleep(0.05)


async def test_refer_transfer_carries_metadata_and_audio(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    d988 = await _uas(tmp_path, "uas-988-answer", ports.primary, "-rtp_echo", "-mp", media_port())
    disp = await _uas(
        tmp_path,
        "uas-dispatcher-refer",
        ports.disp1,
        "-inf",
        str(DATA / "refer-988.csv"),
        "-d",
        "1500",
    )
    await asyncio.sleep(0.3)
    seen: list[int] = []
    watcher = asyncio.create_task(_watch_988_audio(daemon, seen))
    try:
        caller = await _caller(tmp_path, ports, "911-caller.csv", hold_ms=7000)
        res = await caller.wait(40)
    finally:
        watcher.cancel()
    dres, r988 = await disp.wait(20), await d988.wait(20)
    _ok(res, "caller")
    _ok(dres, "dispatcher")
    _ok(r988, "988")
    assert dres.count("TransferOk(C)") == 1
    assert max(seen, default=0) > 10, "no caller audio came back from the 988 side"
    call = next(iter((await settled(daemon)).ended.values()))
    t = call.transfer
    assert t is not None and t.state.value == "completed" and t.trigger == "refer"
    assert t.triage_level == 1  # from the caller's X-Triage-Level header
    assert call.meta.emergency_call_id is not None


async def test_cpe_invite_to_988_fails_over_busy_to_backup(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    busy = await _uas(tmp_path, "uas-988-busy", ports.primary)
    d988 = await _uas(tmp_path, "uas-988-answer", ports.backup)
    await asyncio.sleep(0.3)
    res = await (await _caller(tmp_path, ports, "911-to-988.csv", hold_ms=1500)).wait(30)
    _ok(res, "caller")
    _ok(await busy.wait(10), "busy 988")
    _ok(await d988.wait(10), "backup 988")
    t = next(iter((await settled(daemon)).ended.values())).transfer
    assert t is not None and t.trigger == "invite" and t.state.value == "completed"
    assert [
        (e.event, e.destination, e.sip_status) for e in t.timeline if e.event == "attempt failed"
    ] == [("attempt failed", "988-primary", 486)]


async def test_cpe_invite_whole_chain_failing_gets_final_status(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    down = await _uas(tmp_path, "uas-988-unavailable", ports.primary)
    busy = await _uas(tmp_path, "uas-988-busy", ports.backup)
    await asyncio.sleep(0.3)
    res = await (await _caller(tmp_path, ports, "911-to-988.csv", hold_ms=1000)).wait(30)
    assert res.count("Status486(C)") == 1, res.stdout[-1500:]  # the last destination's status
    _ok(await down.wait(10), "unavailable 988")
    _ok(await busy.wait(10), "busy 988")


async def test_refer_to_ringing_line_fails_over_within_ring_timeout_and_recalls_on_failure(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    ring = await _uas(tmp_path, "uas-988-ring-forever", ports.primary)
    busy = await _uas(tmp_path, "uas-988-busy", ports.backup)
    disp = await _uas(
        tmp_path,
        "uas-dispatcher-refer",
        ports.disp1,
        "-inf",
        str(DATA / "refer-988.csv"),
        "-d",
        "1000",
    )
    await asyncio.sleep(0.3)
    caller = await _caller(tmp_path, ports, "911-caller.csv", hold_ms=9000)
    res, dres = await caller.wait(40), await disp.wait(30)
    _ok(res, "caller")  # the caller was never dropped: it hung up itself after its pause
    _ok(dres, "dispatcher")
    assert (
        dres.count("TransferFailed(C)") == 1
    )  # final NOTIFY carried the failure; caller came back
    _ok(await ring.wait(10), "ringing 988 (saw our CANCEL)")
    _ok(await busy.wait(10), "busy 988")
    t = next(iter((await settled(daemon)).ended.values())).transfer
    assert t is not None and t.state.value == "failed"
    times = {e.event: e.at for e in t.timeline}
    first_try = next(e.at for e in t.timeline if e.event == "trying")
    failover = next(e.at for e in t.timeline if e.event == "attempt failed")
    assert 2.9 <= failover - first_try <= 3.6  # the primary's ring timeout (3 s in the test rules)
    assert "exhausted" in times


async def test_refer_to_a_number_no_rule_allows_is_notify_403_and_nothing_is_dialled(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    """Issue 5, bad input: the dispatcher's phone blind-transfers to 5551234, which is neither
    the trunk's transfer number nor named by a rule (the test rules have a catch-all to 988):
    202, then a final NOTIFY whose sipfrag is 403; no transfer is started (nothing listens on
    the 988 ports, and none is needed), and the caller stays with the dispatcher until it
    hangs up itself."""
    messages = tmp_path / "dispatcher-messages.log"
    disp = await _uas(
        tmp_path,
        "uas-dispatcher-refer",
        ports.disp1,
        "-inf",
        str(DATA / "refer-other.csv"),
        "-d",
        "800",
        "-trace_msg",
        "-message_file",
        str(messages),
    )
    await asyncio.sleep(0.3)
    caller = await _caller(tmp_path, ports, "911-caller.csv", hold_ms=3000)
    res, dres = await caller.wait(30), await disp.wait(30)
    _ok(res, "caller")  # never dropped: it hung up itself after its pause
    _ok(dres, "dispatcher")
    assert dres.count("TransferFailed(C)") == 1 and dres.count("TransferOk(C)") == 0
    log = messages.read_text(errors="replace")
    assert re.search(r"^REFER sip:", log, re.M) and "Refer-To: <sip:5551234@" in log
    assert re.search(r"^SIP/2\.0 202 ", log, re.M), log[-3000:]
    frags = re.findall(r"^SIP/2\.0 ([1-6]\d\d) no routing rule", log, re.M)
    assert frags == ["403"], log[-3000:]
    core = await settled(daemon)
    assert not core.transfers  # nothing was dialled
    ended = list(core.ended.values())
    assert len(ended) == 1 and ended[0].transfer is None
