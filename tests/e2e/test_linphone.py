"""End to end with a real linphone-daemon as the dispatcher's softphone (issue 5, trigger 1).

Position disp-1 (the harness's ``sip:disp1@127.0.0.1:<ports.disp1>``) is a linphone-daemon
(tests/peers/linphone.py) on that port, a static position: nothing registers. The 911 caller is
SIPp ``uac-911-caller`` calling through a real handoffd. linphone answers only when the test
says so (``answer <id>`` on its command socket), as a dispatcher picks up.

What is proven, each from the real peer's own record:

- test 1: linphone's events (incoming, streams running, then the end of the call when the caller
  hangs up); handoffd's call ``connected`` to disp-1; RTP both ways through the dispatcher leg's
  relay endpoint (the caller's pcap out to linphone, linphone's tone in from it); linphone's own
  RTP statistics (in its log) counting the packets it received; SIPp's caller exit status 0.
- test 2 (attended transfer, what docs/softphones.md records linphone sending): the caller on
  hold, linphone's consult call to ``sip:988@<handoffd>`` routed to a SIPp 988 line, then
  ``call-transfer`` (REFER with Replaces on the caller's dialog); handoffd bridges caller and 988,
  ends both linphone calls and records the consult transfer completed (trigger ``attended``: the
  consult INVITE started it, the REFER completed it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import pytest
import pytest_asyncio

from telephony.call.b2bua import Call
from telephony.daemon import Daemon
from telephony.media.relay import LegEndpoint
from tests.e2e.harness import Ports, settled
from tests.peers.linphone import Linphone, SipMessage, write_tone_wav
from tests.peers.sipp import SCENARIOS, SippResult, SippRun, free_port, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]
DATA = SCENARIOS / "data"


@pytest_asyncio.fixture
async def phone(tmp_path: Path, ports: Ports) -> AsyncIterator[Linphone]:
    """linphone-daemon as position disp-1; it does not answer by itself."""
    lp = Linphone(tmp_path / "linphone", user="disp1", sip_port=ports.disp1)
    await lp.start()
    try:
        yield lp
    finally:
        await lp.stop()


def _ok(res: SippResult, what: str) -> None:
    assert res.returncode == 0, f"{what}: {res.stdout[-1500:]}{res.stderr[-1500:]}"


async def _caller(tmp: Path, ports: Ports, hold_ms: int) -> SippRun:
    return await start_sipp(
        "uac-911-caller",
        workdir=tmp,
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


def _media(leg: object) -> LegEndpoint | None:
    media = getattr(leg, "media", None)
    return media if isinstance(media, LegEndpoint) else None


async def _watch_dispatcher(daemon: Daemon, seen: dict[str, int]) -> None:
    """The most RTP packets the dispatcher leg's relay endpoint received from the phone
    (``in``) and sent to it (``out``), while calls last."""
    assert daemon.core is not None
    while True:
        for call in list(daemon.core.calls.values()):
            ep = _media(call.dispatcher) if isinstance(call, Call) else None
            if ep is not None:
                seen["in"] = max(seen["in"], ep.rtp_packets_in)
                seen["out"] = max(seen["out"], ep.rtp_packets_out)
        await asyncio.sleep(0.05)


async def _connected(daemon: Daemon, timeout: float = 10.0) -> Call:
    assert daemon.core is not None
    for _ in range(int(timeout / 0.05)):
        for call in daemon.core.calls.values():
            if call.state == "connected":
                return call
        await asyncio.sleep(0.05)
    raise AssertionError("no connected call")


def _tag(header: str | None) -> str:
    assert header is not None and ";tag=" in header, header
    return header.split(";tag=", 1)[1].split(";", 1)[0]


def _check_attended_transfer_trace(trace: list[SipMessage], handoffd: str, refer_on: str) -> None:
    """What linphone's log shows it did: an INVITE to 988 through handoffd (the consult call),
    one REFER on the ``refer_on`` dialog (``caller``: handoffd's call to the phone; ``consult``:
    the phone's call to 988) whose Refer-To carries Replaces naming the other dialog (from-tag:
    linphone's tag there, to-tag: handoffd's), 202 for it, a refer NOTIFY in that dialog with
    sipfrag 200 that linphone answered 200, linphone's BYE on the REFER's dialog (answered 200)
    and handoffd's BYE on the replaced one."""
    summary = "\n".join(map(str, trace))
    assert all(m.peer == handoffd for m in trace), summary
    incoming = [m for m in trace if not m.sent and m.method == "INVITE"]
    assert len(incoming) == 1, summary  # handoffd's call with the 911 caller
    consult = [m for m in trace if m.sent and m.method == "INVITE" and "sip:988@" in m.start_line]
    assert len(consult) == 1, summary

    def final_ok(call_id: str | None, sent: bool) -> SipMessage:
        oks = [
            m
            for m in trace
            if m.sent == sent
            and m.status == 200
            and m.cseq_method == "INVITE"
            and m.header("Call-ID") == call_id
        ]
        assert oks, summary
        return oks[0]

    caller_id, consult_id = incoming[0].header("Call-ID"), consult[0].header("Call-ID")
    tags = {  # dialog -> (linphone's tag, handoffd's tag)
        caller_id: (_tag(final_ok(caller_id, True).header("To")), _tag(incoming[0].header("From"))),
        consult_id: (
            _tag(consult[0].header("From")),
            _tag(final_ok(consult_id, False).header("To")),
        ),
    }
    on, other = (caller_id, consult_id) if refer_on == "caller" else (consult_id, caller_id)
    refers = [m for m in trace if m.sent and m.method == "REFER"]
    assert len(refers) == 1, summary
    refer = refers[0]
    assert refer.header("Call-ID") == on, refer.text
    refer_to = refer.header("Refer-To")
    assert refer_to is not None and "?Replaces=" in refer_to, refer.text
    replaces = unquote(refer_to.split("?Replaces=", 1)[1].rstrip(">"))
    assert replaces == f"{other};from-tag={tags[other][0]};to-tag={tags[other][1]}", refer.text
    assert any(not m.sent and m.status == 202 and m.cseq_method == "REFER" for m in trace), summary
    notifies = [m for m in trace if not m.sent and m.method == "NOTIFY"]
    assert notifies and notifies[-1].body.startswith("SIP/2.0 200"), summary
    for n in notifies:
        assert n.header("Call-ID") == on, n.text
        assert (n.header("Event") or "").startswith("refer"), n.text
        assert (n.header("Content-Type") or "").startswith("message/sipfrag"), n.text
    assert (notifies[-1].header("Subscription-State") or "").startswith("terminated")
    answered = [m for m in trace if m.sent and m.status == 200 and m.cseq_method == "NOTIFY"]
    assert len(answered) == len(notifies), summary
    # each side ends one dialog: the phone the REFER's, handoffd the replaced one; the phone's
    # BYE finds its dialog still there (200, not 481)
    byes = {(m.sent, m.header("Call-ID")) for m in trace if m.method == "BYE"}
    assert byes == {(True, on), (False, other)}, summary
    bye_answers = [m.status for m in trace if m.status and not m.sent and m.cseq_method == "BYE"]
    assert bye_answers == [200], summary


async def test_linphone_position_answers_and_caller_hangs_up(
    tmp_path: Path, daemon: Daemon, ports: Ports, phone: Linphone
) -> None:
    ctl = phone.control
    assert ctl is not None and daemon.core is not None
    tone = write_tone_wav(tmp_path / "tone.wav", 700)
    seen = {"in": 0, "out": 0}
    watcher = asyncio.create_task(_watch_dispatcher(daemon, seen))
    caller = await _caller(tmp_path, ports, hold_ms=5000)
    try:
        incoming = await ctl.wait_event("IncomingReceived", timeout=10)
        cid = incoming.call_id
        assert cid is not None
        await asyncio.sleep(0.5)  # it rings a moment, then the dispatcher picks up
        await ctl.answer(cid)
        await ctl.wait_event("StreamsRunning", cid)
        call = await _connected(daemon)
        assert call.position is not None and call.position.name == "disp-1"
        await ctl.play(cid, tone)  # linphone has no microphone: the tone is its voice
        await ctl.wait_event("End", cid, timeout=20)  # the caller hung up after its pause
        await ctl.wait_event("Released", cid)
        assert await ctl.call_state(cid) is None
        res = await caller.wait(30)
    finally:
        watcher.cancel()
        caller.kill()
    _ok(res, "caller")
    assert res.count("CallerBye(C)") == 1, res.stats
    assert ctl.states(cid) == [
        "IncomingReceived",
        "Connected",
        "StreamsRunning",
        "End",
        "Released",
    ], ctl.summary()
    assert seen["out"] > 50, f"caller audio relayed to linphone: {seen}"
    assert seen["in"] > 50, f"linphone's tone into its leg: {seen}"
    ended = (await settled(daemon)).ended[call.id]
    assert ended.state == "ended" and ended.transfer is None

    await phone.stop()  # flushes linphone's log, where each ended stream left its statistics
    stats = phone.rtp_stats()  # [(sent, received)], one stream: this call
    assert len(stats) == 1, stats
    sent, received = stats[0]
    # what the relay sent linphone arrived there, and what linphone sent arrived at the relay
    # (the watcher samples every 50 ms, so its counts may trail the final ones a little)
    assert received >= 0.9 * seen["out"], (stats, seen)
    assert seen["in"] >= 0.9 * sent, (stats, seen)


@pytest.mark.parametrize("refer_on", ["caller", "consult"])
async def test_attended_transfer_from_linphone(
    tmp_path: Path, daemon: Daemon, ports: Ports, phone: Linphone, refer_on: str
) -> None:
    """``call-transfer A B`` (``refer_on="caller"``: REFER on the held caller's dialog, what
    docs/softphones.md records) and ``call-transfer B A`` (REFER on the consult dialog)."""
    ctl = phone.control
    assert ctl is not None and daemon.core is not None
    d988 = await start_sipp(
        "uas-988-answer",
        workdir=tmp_path,
        local_port=ports.primary,
        calls=1,
        timeout_s=40,
        extra=("-rtp_echo", "-mp", str(free_port() & ~1)),
    )
    await asyncio.sleep(0.3)
    caller = await _caller(tmp_path, ports, hold_ms=6000)  # after its last re-INVITE
    try:
        incoming = await ctl.wait_event("IncomingReceived", timeout=10)
        a = incoming.call_id
        assert a is not None
        await ctl.answer(a)
        await ctl.wait_event("StreamsRunning", a)
        call = await _connected(daemon)
        await asyncio.sleep(1.0)  # the dispatcher talks to the caller, then consults 988
        await ctl.pause(a)
        await ctl.wait_event("Paused", a)
        b = await ctl.call(f"sip:988@127.0.0.1:{ports.sip}")
        await ctl.wait_event("StreamsRunning", b, timeout=10)  # counselor answered
        await asyncio.sleep(1.0)  # dispatcher and counselor speak, then: transfer
        await ctl.transfer(*((a, b) if refer_on == "caller" else (b, a)))
        # linphone ends the call it sent the REFER on after the final NOTIFY (sipfrag 200), and
        # the other call when handoffd (the transfer target) ends it (BYE): both must end
        await ctl.wait_event("End", a, timeout=10)
        await ctl.wait_event("End", b, timeout=10)
        # the caller now talks to 988, the dispatcher's phone is idle
        await asyncio.sleep(1.0)
        live = daemon.core.calls.get(call.id)
        assert live is not None and live.state == "transferred", live
        for leg in (live.dispatcher, live.consult):  # both of the phone's legs are over
            assert leg is None or not leg.alive, leg
        assert live.destination is not None
        ep = _media(live.destination)
        assert ep is not None and ep.rtp_packets_in > 10, "caller audio not echoed from 988"
        res, r988 = await caller.wait(40), await d988.wait(20)
    finally:
        caller.kill()
        d988.kill()
    _ok(res, "caller")
    _ok(r988, "988")
    for cid in (a, b):
        assert [ev.state for ev in ctl.events if ev.call_id == cid][-2:] == ["End", "Released"]
    await phone.stop()  # flushes linphone's log: its SIP trace
    _check_attended_transfer_trace(phone.sip_trace(), f"127.0.0.1:{ports.sip}", refer_on)
    t = (await settled(daemon)).ended[call.id].transfer
    # the consult INVITE started the transfer (trigger "attended", telephony/call/attended.py);
    # the REFER with Replaces completed it
    assert t is not None and t.state.value == "completed" and t.trigger == "attended", t
    assert t.mode == "consult", t
