"""End to end: SIPp as the PSAP trunk and as the dispatcher position, a real handoffd between.

Proves the B2BUA's basic call: INVITE from the trunk routed to the position named by the
Request-URI, media anchored (our address in both SDPs), ACK/BYE relayed leg to leg, every call
and media port released at the end; unknown numbers get 404, strangers 403, garbage 400.
"""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest

from telephony.daemon import Daemon
from telephony.media.relay import LegEndpoint
from tests.e2e.harness import Ports, settled
from tests.peers.sipp import free_port, media_port, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]

CALLS = 10


async def test_calls_reach_the_position_and_end_cleanly(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    disp = await start_sipp(
        "uas-basic-call", workdir=tmp_path, local_port=ports.disp1, calls=CALLS, timeout_s=30
    )
    await asyncio.sleep(0.3)
    caller = await start_sipp(
        "uac-basic-call",
        workdir=tmp_path,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=CALLS,
        rate=10,
        service="disp-1",
    )
    res = await caller.wait(60)
    dres = await disp.wait(30)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.count("SuccessfulCall(C)") == CALLS
    assert dres.count("SuccessfulCall(C)") == CALLS, dres.stderr[-2000:]
    core = await settled(daemon)
    assert len(core.ended) == CALLS
    assert all(c.position is not None and c.position.name == "disp-1" for c in core.ended.values())
    stats = daemon.relay.stats()
    assert stats.endpoints == 0  # every media port released


async def test_number_selects_position_and_unknown_gets_404(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    disp = await start_sipp(
        "uas-basic-call", workdir=tmp_path, local_port=ports.disp2, calls=1, timeout_s=20
    )
    await asyncio.sleep(0.3)
    caller = await start_sipp(
        "uac-basic-call",
        workdir=tmp_path,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=1,
        service="2002",
    )
    assert (await caller.wait(30)).count("SuccessfulCall(C)") == 1
    assert (await disp.wait(20)).count("SuccessfulCall(C)") == 1
    unknown = await start_sipp(
        "uac-basic-call",
        workdir=tmp_path,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=1,
        service="5555",
        timeout_s=10,
    )
    res = await unknown.wait(20)
    assert res.count("FailedCall(C)") == 1
    assert "404" in res.stdout + res.stderr or res.count("FailedUnexpectedMessage(C)") == 1


async def test_garbage_gets_400_and_the_daemon_keeps_serving(daemon: Daemon, ports: Ports) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    try:
        garbage = (
            b"INVITE sip:disp-1@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKx\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: banana INVITE\r\n"
            b"Content-Length: 0\r\n\r\n" % sock.getsockname()[1]
        )
        await loop.sock_sendto(sock, garbage, ("127.0.0.1", ports.sip))
        data = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
        assert data.startswith(b"SIP/2.0 400 ")
        options = (
            b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKy1\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
            b"Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n" % sock.getsockname()[1]
        )
        await loop.sock_sendto(sock, options, ("127.0.0.1", ports.sip))
        data = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
        assert data.startswith(b"SIP/2.0 200 ")
        assert b"Allow: " in data and b"REFER" in data
    finally:
        sock.close()


def _mutants(seed: int, count: int) -> list[bytes]:
    """``count`` damaged copies of a 911 INVITE (to an unknown number: nothing is dialled):
    bytes flipped, cut short, lines dropped or doubled, header values replaced by junk."""
    rng = random.Random(seed)
    base = (
        b"INVITE sip:5550000@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:%(port)d;branch=z9hG4bK%(n)d;rport\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:+18055550123@127.0.0.1>;tag=f%(n)d\r\n"
        b"To: <sip:5550000@127.0.0.1>\r\nCall-ID: fuzz%(n)d@caller\r\nCSeq: 1 INVITE\r\n"
        b"Contact: <sip:caller@127.0.0.1:%(port)d>\r\n"
        b"P-Asserted-Identity: <tel:+18055550123>\r\n"
        b"Call-Info: <urn:emergency:uid:callid:%(n)d:psap.example>;purpose=emergency-CallId\r\n"
        b"Content-Type: application/sdp\r\nContent-Length: %(len)d\r\n\r\n%(sdp)s"
    )
    sdp = (
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 7000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    junk = [b"", b"\xff\xfe", b"<", b";;;", b"9" * 40, b"\x00", b"sip:", b'"', b"%zz"]
    out = []
    for n in range(count):
        lines = (base % {b"port": 0, b"n": n, b"len": len(sdp), b"sdp": sdp}).split(b"\r\n")
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            kind = rng.randrange(4)
            if kind == 0:
                lines.pop(i)
            elif kind == 1:
                lines.insert(i, lines[i])
            elif kind == 2 and b": " in lines[i]:
                name, _, _ = lines[i].partition(b": ")
                lines[i] = name + b": " + rng.choice(junk)
            else:
                raw = bytearray(lines[i] or b"x")
                raw[rng.randrange(len(raw))] = rng.randrange(256)
                lines[i] = bytes(raw)
        data = b"\r\n".join(lines)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        out.append(data)
    return out


async def _drain(loop: asyncio.AbstractEventLoop, sock: socket.socket, wait: float) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(loop.sock_recv(sock, 65535), wait))
        except TimeoutError:
            return got


async def test_damaged_invites_are_answered_or_dropped_and_the_daemon_keeps_serving(
    daemon: Daemon, ports: Ports, caplog: pytest.LogCaptureFixture
) -> None:
    """300 damaged 911 INVITEs (fixed seed): no handler raises, what parses is answered (400
    when a value is damaged, 404 for the unknown number, 488 for a damaged offer), and
    OPTIONS still gets 200 afterwards."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    here = f":{port};".encode()
    answers: list[bytes] = []
    try:
        for n, data in enumerate(_mutants(seed=911, count=300)):
            await loop.sock_sendto(sock, data.replace(b":0;", here), ("127.0.0.1", ports.sip))
            if n % 20 == 19:  # read as we go: the answers must not overflow our socket
                answers += await _drain(loop, sock, 0.05)
        answers += await _drain(loop, sock, 0.3)
        options = (
            b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKopt\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
            b"Call-ID: opt-after-fuzz\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n" % port
        )
        await loop.sock_sendto(sock, options, ("127.0.0.1", ports.sip))
        after = await _drain(loop, sock, 1.0)
    finally:
        sock.close()
    assert any(a.startswith(b"SIP/2.0 200 ") and b"opt-after-fuzz" in a for a in after), after
    statuses = {a.split(b" ", 2)[1] for a in answers}
    assert {b"400", b"404", b"488"} <= statuses, statuses  # damage noticed, intact ones routed
    failed = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not failed, [r.getMessage() for r in failed]


async def test_hold_resume_hold_every_reinvite_reaches_the_other_side(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    """SIPp as the caller holds, resumes and holds again (three re-INVITEs in one dialog);
    SIPp as the position must receive all three and each must be answered 200 (any other
    answer fails the caller's scenario). Before the fix the second got 500."""
    disp = await start_sipp(
        "uas-hold-resume", workdir=tmp_path, local_port=ports.disp1, calls=1, timeout_s=30
    )
    await asyncio.sleep(0.3)
    caller = await start_sipp(
        "uac-hold-resume",
        workdir=tmp_path,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=1,
        service="disp-1",
    )
    res = await caller.wait(40)
    dres = await disp.wait(30)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.count("SuccessfulCall(C)") == 1
    assert dres.count("SuccessfulCall(C)") == 1, dres.stdout[-2000:] + dres.stderr[-2000:]
    await settled(daemon)


async def test_a_delayed_offer_911_call_is_answered_and_its_audio_reaches_the_position(
    tmp_path: Path, daemon: Daemon, ports: Ports
) -> None:
    """SIPp as a PSAP trunk sends its INVITE without SDP (delayed offer). The 200 must carry an
    offer, the caller answers in its ACK and plays G.711 to the port offered; then it refreshes
    the session with an offerless UPDATE and an offerless re-INVITE, each answered 200 (any
    other answer fails its scenario). Before, handoffd answered the INVITE 488."""
    disp = await start_sipp(
        "uas-dispatcher", workdir=tmp_path, local_port=ports.disp1, calls=1, timeout_s=30
    )
    await asyncio.sleep(0.3)
    caller = await start_sipp(
        "uac-delayed-offer",
        workdir=tmp_path,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=1,
        service="disp-1",
        extra=("-mp", media_port()),
    )
    assert daemon.core is not None
    core = daemon.core
    seen: list[tuple[int, int]] = []  # (packets in on the caller's leg, out to the position)

    async def watch() -> None:
        while True:
            for call in list(core.calls.values()):
                disp_leg = call.dispatcher
                if isinstance(call.caller.media, LegEndpoint) and disp_leg is not None:
                    assert isinstance(disp_leg.media, LegEndpoint)
                    seen.append((call.caller.media.rtp_packets_in, disp_leg.media.rtp_packets_out))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        res = await caller.wait(40)
        dres = await disp.wait(30)
    finally:
        watcher.cancel()
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.count("SuccessfulCall(C)") == 1
    assert dres.count("SuccessfulCall(C)") == 1, dres.stdout[-2000:] + dres.stderr[-2000:]
    assert dres.count("ReInvite(C)") == 0  # the refreshes stayed on the caller's leg
    # the caller's audio came to the port handoffd offered and went on to the position
    assert max((s[0] for s in seen), default=0) > 20, seen[-3:]
    assert max((s[1] for s in seen), default=0) > 20, seen[-3:]
    core = await settled(daemon)
    [call] = core.ended.values()
    assert call.offer.media[0].formats[:1] == ("8",), call.offer  # the caller's own answer
