"""End to end: a blind transfer from a real baresip softphone (issue 5, trigger 2).

A 911 caller (SIPp ``uac-911-caller``) calls position disp-1 through handoffd; disp-1 is a real
``baresip`` (tests/peers/baresip.py) that answers by itself (``answermode=auto``). The test then
presses the phone's transfer button over ctrl_tcp (``transfer sip:988@<handoffd>``), as a
dispatcher would: baresip sends an in-dialog REFER, handoffd answers 202, runs the cold transfer
to 988 (SIPp ``uas-988-answer`` with ``-rtp_echo``), NOTIFYs the progress as sipfrag, bridges
the caller to 988, and the phone leaves.

What is proven, each from the real peer's own record:
- baresip's SIP trace (``-s``): the REFER with our Refer-To, the 202 for it, the NOTIFYs
  (Event: refer, message/sipfrag) baresip answered 200, the last one ``SIP/2.0 200`` with
  ``Subscription-State: terminated``, and the BYE that ended the phone's call;
- baresip's ctrl_tcp events: the call established, then closed with "Call transfered" (baresip
  1.0.0's wording; it raises that only for a final 2xx sipfrag);
- handoffd: the transfer ``completed`` with trigger ``refer``, timeline in order, the dispatcher
  leg gone, the baresip tone reaching the dispatcher leg before the transfer, the caller's audio
  reaching 988 (packets echoed back into the 988 leg's endpoint) after it;
- SIPp: caller and 988 exit 0 (every check of their scenarios held).

The failure path (every 988 line busy): baresip 1.0.0 hangs up as soon as the final NOTIFY says
486; handoffd takes that BYE (within REFER_BYE_GRACE of the failure) as the phone giving up, not
the dispatcher ending the 911 call, and calls the positions again (docs/softphones.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from telephony.call.b2bua import Call
from telephony.daemon import Daemon
from telephony.media.relay import LegEndpoint
from tests.e2e.harness import Ports, settled
from tests.peers.baresip import Baresip, TracedMessage
from tests.peers.sipp import SCENARIOS, SippResult, SippRun, free_port, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]
DATA = SCENARIOS / "data"


@pytest_asyncio.fixture
async def phone(tmp_path: Path, ports: Ports) -> AsyncIterator[Baresip]:
    """baresip as position disp-1 (the harness's ``sip:disp1@127.0.0.1:<ports.disp1>``)."""
    b = Baresip(tmp_path / "baresip", user="disp1", sip_port=ports.disp1)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


def _ok(res: SippResult, what: str) -> None:
    assert res.returncode == 0, f"{what}: {res.stdout[-1500:]}{res.stderr[-1500:]}"


def _packets_in(leg: object) -> int:
    media = getattr(leg, "media", None)
    return media.rtp_packets_in if isinstance(media, LegEndpoint) else 0


async def _watch_audio(daemon: Daemon, disp: list[int], d988: list[int]) -> None:
    """Record the RTP packets the dispatcher and 988 legs' endpoints received, while calls last."""
    assert daemon.core is not None
    while True:
        for call in list(daemon.core.calls.values()):
            if isinstance(call, Call):
                if call.dispatcher is not None:
                    disp.append(_packets_in(call.dispatcher))
                if call.destination is not None:
                    d988.append(_packets_in(call.destination))
        await asyncio.sleep(0.05)


async def _connected(daemon: Daemon, timeout: float = 10.0) -> Call:
    assert daemon.core is not None
    for _ in range(int(timeout / 0.05)):
        for call in daemon.core.calls.values():
            if call.state == "connected":
                return call
        await asyncio.sleep(0.05)
    raise AssertionError("no connected call")


def _trace_text(trace: list[TracedMessage]) -> str:
    return "\n".join(f"{'>' if m.sent else '<'} {m.start_line}" for m in trace)


def _notify_statuses(trace: list[TracedMessage]) -> list[int]:
    """The sipfrag status of every NOTIFY baresip received, after checking each is a refer
    NOTIFY carrying a sipfrag that baresip answered 200."""
    notifies = [m for m in trace if not m.sent and m.method == "NOTIFY"]
    oks = [m for m in trace if m.sent and m.status == 200 and m.cseq_method == "NOTIFY"]
    assert len(oks) == len(notifies), _trace_text(trace)
    statuses = []
    for n in notifies:
        assert (n.header("Event") or "").startswith("refer"), n.text
        assert (n.header("Content-Type") or "").startswith("message/sipfrag"), n.text
        assert n.body.startswith("SIP/2.0 "), n.text
        statuses.append(int(n.body.split()[1]))
    if notifies:
        state = notifies[-1].header("Subscription-State") or ""
        assert state.startswith("terminated"), notifies[-1].text
    return statuses


def _refer_accepted(trace: list[TracedMessage], target: str) -> None:
    """baresip sent one REFER to ``target`` and got 202 for it."""
    summary = _trace_text(trace)
    refers = [m for m in trace if m.sent and m.method == "REFER"]
    assert len(refers) == 1, summary
    refer_to = refers[0].header("Refer-To") or refers[0].header("r")
    assert refer_to is not None and target in refer_to, refer_to
    assert any(not m.sent and m.status == 202 and m.cseq_method == "REFER" for m in trace), summary


async def _call_and_transfer(
    tmp_path: Path, daemon: Daemon, ports: Ports, phone: Baresip, hold_ms: int
) -> tuple[SippRun, Call, dict[str, Any]]:
    """The 911 caller calls disp-1, baresip answers, then blind-transfers to 988."""
    assert phone.control is not None
    caller = await start_sipp(
        "uac-911-caller",
        workdir=tmp_path,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=1,
        timeout_s=40,
        extra=(
            "-inf",
            str(DATA / "911-caller.csv"),
            "-d",
            str(hold_ms),
            "-mp",
            str(free_port() & ~1),
        ),
    )
    try:
        established = await phone.control.wait_event("CALL_ESTABLISHED", 20)
        assert established["direction"] == "incoming"
        call = await _connected(daemon)
        assert call.position is not None and call.position.name == "disp-1"
        await asyncio.sleep(1.0)  # the dispatcher talks to the caller, then presses transfer
        res = await phone.control.command("transfer", f"sip:988@127.0.0.1:{ports.sip}")
        assert res["ok"], res
    except BaseException:
        caller.kill()
        await caller.wait(5)
        raise
    return caller, call, established


async def test_baresip_blind_transfer_to_988(
    tmp_path: Path, daemon: Daemon, ports: Ports, phone: Baresip
) -> None:
    assert phone.control is not None
    ctl = phone.control
    d988 = await start_sipp(
        "uas-988-answer",
        workdir=tmp_path,
        local_port=ports.primary,
        calls=1,
        timeout_s=40,
        extra=("-rtp_echo", "-mp", str(free_port() & ~1)),
    )
    await asyncio.sleep(0.3)
    disp_seen: list[int] = []
    d988_seen: list[int] = []
    watcher = asyncio.create_task(_watch_audio(daemon, disp_seen, d988_seen))
    try:
        caller, call, established = await _call_and_transfer(
            tmp_path, daemon, ports, phone, hold_ms=8000
        )
        closed = await ctl.wait_event("CALL_CLOSED", 15)
        assert closed["param"] == "Call transfered", (closed, phone.log()[-3000:])
        assert closed["id"] == established["id"]
        listed = await ctl.command("listcalls")
        assert "Active calls (0)" in listed["data"], listed
        cres = await caller.wait(40)
    finally:
        watcher.cancel()
    r988 = await d988.wait(20)
    _ok(cres, "caller")
    _ok(r988, "988")
    assert cres.count("CallerBye(C)") == 1  # the caller stayed up, bridged, until it hung up
    assert cres.count("FarEndBye(C)") == 0
    assert r988.count("Bye(C)") == 1

    # handoffd's side: a completed REFER transfer, the phone's leg gone, audio both ways
    ended = (await settled(daemon)).ended[call.id]
    t = ended.transfer
    assert t is not None and t.state.value == "completed" and t.trigger == "refer", t
    events = [e.event for e in t.timeline]
    assert events[0] == "requested" and events[-1] == "complete", events
    assert events.index("answered") < events.index("complete"), events
    disp_legs = [leg for leg in ended.legs if leg.role == "dispatcher"]
    assert len(disp_legs) == 1 and not disp_legs[0].alive, disp_legs
    assert max(disp_seen, default=0) > 10, "baresip's tone never reached the dispatcher leg"
    assert max(d988_seen, default=0) > 10, "no caller audio came back from the 988 side"

    # baresip's side, from its SIP trace: REFER, 202, NOTIFY 100/180/200, then its own BYE
    assert await phone.stop() == 0, phone.log()[-3000:]  # stopping flushes its log
    trace = phone.sip_trace()
    summary = _trace_text(trace)
    _refer_accepted(trace, f"sip:988@127.0.0.1:{ports.sip}")
    assert _notify_statuses(trace) == [100, 180, 200], summary
    last_notify = max(i for i, m in enumerate(trace) if m.method == "NOTIFY")
    byes = [i for i, m in enumerate(trace) if m.method == "BYE"]
    assert len(byes) == 1 and trace[byes[0]].sent and byes[0] > last_notify, summary
    assert any(
        not m.sent and m.status == 200 and m.cseq_method == "BYE" for m in trace[byes[0] :]
    ), summary


async def test_baresip_failed_blind_transfer_keeps_the_caller(
    tmp_path: Path, daemon: Daemon, ports: Ports, phone: Baresip
) -> None:
    """Every 988 line busy: the final NOTIFY says 486 and the caller must stay (design: a 911
    caller is never left alone). baresip 1.0.0 answers that NOTIFY and then hangs up (it ends
    the call on TRANSFER_FAILED; baresip 2.0 keeps it, RFC 5589), so the caller must go back to
    a position (here the same phone rings again and auto-answers), not be hung up."""
    assert phone.control is not None
    ctl = phone.control
    busy1 = await start_sipp("uas-988-busy", workdir=tmp_path, local_port=ports.primary)
    busy2 = await start_sipp("uas-988-busy", workdir=tmp_path, local_port=ports.backup)
    await asyncio.sleep(0.3)
    caller, call, _established = await _call_and_transfer(
        tmp_path, daemon, ports, phone, hold_ms=8000
    )
    failed = await ctl.wait_event(("TRANSFER_FAILED", "CALL_TRANSFER_FAILED"), 15)
    assert failed["param"].startswith("486"), failed
    cres = await caller.wait(40)
    _ok(cres, "caller")
    _ok(await busy1.wait(10), "busy 988 primary")
    _ok(await busy2.wait(10), "busy 988 backup")
    t = (await settled(daemon)).ended[call.id].transfer
    assert t is not None and t.state.value == "failed" and t.trigger == "refer", t
    assert await phone.stop() == 0, phone.log()[-3000:]  # stopping flushes its log
    trace = phone.sip_trace()
    _refer_accepted(trace, f"sip:988@127.0.0.1:{ports.sip}")
    assert _notify_statuses(trace)[-1] == 486, _trace_text(trace)
    # the design's invariant: the caller was never hung up on, and a dispatcher took it back
    assert cres.count("FarEndBye(C)") == 0, _trace_text(trace)
    assert cres.count("CallerBye(C)") == 1
    assert ctl.event_types().count("CALL_ESTABLISHED") == 2, ctl.event_types()
