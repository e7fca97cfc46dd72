"""End to end: a pyVoIP 1.6.8 phone registers with handoffd as a position and answers a 911 call.

pyVoIP is the softphone library the customer's design card names (GPLv3: the ``interop``
dependency group, tests/peers/pyvoip.py). Over real UDP sockets on 127.0.0.1, with a real
handoffd (:class:`~telephony.daemon.Daemon`) whose position disp-3 has digest auth and no
``uri``, these tests prove:

- with ``registrar.require_qop: false`` and ``qualify_interval: 0`` (and the default algorithms,
  SHA-256 and MD5) pyVoIP registers: handoffd holds one binding whose contact is pyVoIP's and
  whose source is pyVoIP's SIP socket; a 911 caller (SIPp ``uac-911-caller``) on the PSAP trunk
  dialling the position's number reaches pyVoIP, which answers; SIPp's call succeeds; RTP flows
  both ways through handoffd's relay (pyVoIP sends to the relay endpoint the offer named and
  decodes the caller's audio; the relay counts pyVoIP's packets in and the caller's out); the
  caller's BYE ends pyVoIP's call; when the phone stops it unregisters (``Expires: 0``) and the
  binding is gone;
- pyVoIP refreshes its registration 5 s before it expires (asked for 7 s here): handoffd keeps
  one binding, same contact and source, and moves its expiry;
- pyVoIP ignores the expiry handoffd grants: with ``max_expires`` below what it asks for, its
  binding lapses between refreshes;
- when the caller abandons while pyVoIP rings, pyVoIP answers the cancelled INVITE anyway (one
  second late, no 487) and handoffd ends that answer with a BYE;
- pyVoIP stopped during a call leaves its binding behind (it takes the 200 to its BYE for the
  answer to its unregistering REGISTER), and the next call rings the phone that is gone;
- when pyVoIP hangs up (its BYE copies the INVITE's Via, handoffd's own), handoffd ends the
  dispatcher leg and the caller gets a BYE;
- with the default ``require_qop: true`` pyVoIP is refused (403, ``qop required``: it answers
  the challenge in the RFC 2069 form), gives up after three tries (status FAILED), and handoffd
  holds no binding: a call to the position gets 480;
- with qualify on, pyVoIP never answers the OPTIONS (it cannot parse them), so its contact turns
  unreachable and the position gets no calls (480): why it needs ``qualify_interval: 0``;
- with ``accept_multipart: true`` on its position (SDP + PIDF-LO) pyVoIP drops the INVITE (it
  cannot parse a body with a blank line in it): no 180, no answer, the position rings out; so
  pyVoIP positions keep the default ``accept_multipart: false``;
- nothing under ``telephony/`` imports pyVoIP (GPLv3).

docs/decisions/0003-pyvoip.md records what pyVoIP could and could not do. The SIP and RTP ports
of pyVoIP and SIPp are picked outside handoffd's media range, which handoffd binds only as calls
come (a SIPp whose ``-mp`` port is taken exits before its first INVITE).
"""

from __future__ import annotations

import ast
import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from telephony.call.b2bua import Call
from telephony.call.registrar import Reach
from telephony.config import load_config
from telephony.daemon import Daemon
from telephony.media.relay import LegEndpoint
from telephony.sip.transaction import Endpoint
from tests.e2e.harness import Ports, write_setup
from tests.peers.pyvoip import VERSION, PhoneStatus, PyVoipPhone, SeenCall
from tests.peers.redis import RedisServer
from tests.peers.sipp import SippResult, SippRun, free_port, free_udp_range, start_sipp

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.sipp,
    # pyVoIP's RTP sender thread warns when hang-up closes its socket under it (RTPClient.stop
    # does not wait for the thread); the warnings filters are process-wide, so under the
    # suite's "error" that warning would kill the thread instead
    pytest.mark.filterwarnings("ignore:RTP Packet failed to send:RuntimeWarning"),
]

PASSWORD = "disp3-s3cret"
POSITIONS = f"""  disp-3:
    numbers: ["2003"]
    auth: {{password: {PASSWORD}}}
"""
#: what pyVoIP needs (docs/decisions/0003-pyvoip.md); min_expires 1 for the refresh test
FOR_PYVOIP = "  require_qop: false\n  qualify_interval: 0\n  min_expires: 1\n"


def _ok(res: SippResult, what: str) -> None:
    assert res.returncode == 0, f"{what}: {res.stdout[-1500:]}{res.stderr[-1500:]}"


@asynccontextmanager
async def handoffd(
    root: Path,
    ports: Ports,
    redis: RedisServer,
    registrar: str,
    *,
    positions: str = POSITIONS,
    ring_timeout: float = 5.0,
) -> AsyncIterator[Daemon]:
    path = write_setup(
        root / "etc",
        ports,
        redis_url=redis.url,
        positions=positions,
        registrar=registrar,
        position_ring_timeout=ring_timeout,
    )
    d = Daemon(load_config(path))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@asynccontextmanager
async def pyvoip(
    ports: Ports, *, expires: int | None = None, hangup_after: float | None = None
) -> AsyncIterator[PyVoipPhone]:
    """A pyVoIP phone registering as disp-3; stopped (unregistered, threads joined) at the end."""
    phone = PyVoipPhone(
        port=ports.sip,
        username="disp-3",
        password=PASSWORD,
        sip_port=udp_port(ports),
        avoid=media_range(ports),
        expires=expires,
        hangup_after=hangup_after,
    )
    try:
        await phone.start()
        yield phone
    finally:
        await phone.stop()


def media_range(ports: Ports) -> range:
    """handoffd's media ports (harness.write_setup: 200 from ``ports.media``)."""
    return range(ports.media, ports.media + 200)


def udp_port(ports: Ports) -> int:
    """A free UDP port for a SIP party, outside handoffd's media ports."""
    return free_udp_range(1, avoid=media_range(ports))


def sipp_media(ports: Ports) -> str:
    """A ``-mp`` for SIPp: SIPp 3.6.1 binds that port (audio) and the one two above (video);
    four ports from an even one, all free and outside handoffd's media ports."""
    return str(free_udp_range(4, even=True, avoid=media_range(ports)))


async def call_911(root: Path, ports: Ports, number: str, *, hold_ms: int) -> SippResult:
    work = root / f"caller-{free_port()}"
    work.mkdir(parents=True)
    inf = work / "caller.csv"
    inf.write_text(f"SEQUENTIAL\n{number};1;cpe-pyvoip-0001\n")
    run = await start_sipp(
        "uac-911-caller",
        workdir=work,
        local_port=udp_port(ports),
        remote=f"127.0.0.1:{ports.sip}",
        timeout_s=30,
        extra=("-inf", str(inf), "-d", str(hold_ms), "-mp", sipp_media(ports)),
    )
    return await run.wait(40)


async def _first_call(phone: PyVoipPhone, caller: SippRun) -> list[SeenCall]:
    """The phone's first call; when none comes, the failure shows what the SIPp caller saw."""
    try:
        return await phone.wait_calls(1)
    except AssertionError as err:
        caller.kill()
        res = await caller.wait(5)
        raise AssertionError(f"{err}; caller: {res.stats} {res.stdout[-2000:]}") from None


async def _ended(d: Daemon, before: Collection[str] = ()) -> Call:
    """The one call that ended since ``before`` (call ids), once handoffd is done with it: a SIPp
    party may exit before handoffd has read its last message."""
    assert d.core is not None
    core = d.core
    await _eventually(lambda: len(set(core.ended) - set(before)) == 1 and not core.calls)
    [call] = [c for cid, c in core.ended.items() if cid not in before]
    return call


async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    assert check()


async def test_pyvoip_registers_answers_a_911_call_and_unregisters(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    assert VERSION == "1.6.8"  # the release docs/decisions/0003-pyvoip.md describes
    async with handoffd(tmp_path, ports, redis_server, FOR_PYVOIP) as d:
        assert d.core is not None
        async with pyvoip(ports) as phone:
            await phone.wait_status(PhoneStatus.REGISTERED)
            [b] = d.core.registrar.machine.bindings("disp-3")
            assert b.contact == phone.contact  # sip:disp-3@127.0.0.1:PORT;transport=UDP
            assert b.source == Endpoint("udp", "127.0.0.1", phone.sip_port)
            # pyVoIP asks for 120 s; (now + 120) - now can be 120 plus a rounding error
            assert 100 < b.expires_at - d.core.now <= 120 + 1e-6

            caller = await call_911(tmp_path, ports, "2003", hold_ms=3000)
            _ok(caller, "911 caller")
            assert caller.count("SuccessfulCall(C)") == 1
            assert caller.count("CallerBye(C)") == 1, caller.stats

            [seen] = await phone.wait_calls(1)
            await _eventually(lambda: seen.ended or seen.error is not None)
            assert seen.error is None, seen.error
            assert seen.answered and seen.ended  # it answered, and handoffd's BYE ended it
            # handoffd called the registered contact (Request-URI) at pyVoIP's socket
            assert seen.request_line == f"INVITE {phone.contact} SIP/2.0", seen.request_line
            assert b"+18055550123" in seen.invite  # the caller's identity came along
            assert b";purpose=emergency-CallId" in seen.invite  # and the emergency call id
            assert 8 in seen.codecs and "PCMA" in seen.codecs[8], seen.codecs

            call = await _ended(d)
            assert call.position is not None and call.position.name == "disp-3"
            disp = next(leg for leg in call.legs if leg.role == "dispatcher")
            assert disp.dest == Endpoint("udp", "127.0.0.1", phone.sip_port)
            assert call.ringing_sent and disp.answered  # pyVoIP's 180, then its 200
            # the 200 came from pyVoIP: its Contact and its SDP (pyVoIP's origin, its RTP port)
            assert disp.dialog is not None
            remote = str(disp.dialog.remote_target)
            assert remote == f"sip:disp-3@127.0.0.1:{phone.sip_port}", remote
            assert disp.peer_sdp is not None and disp.peer_sdp.origin.username == "pyVoIP"
            assert disp.peer_sdp.media[0].port == seen.rtp_port
            # RTP both ways through the relay: pyVoIP sends to the relay endpoint of its leg
            # (20 ms packets, silence: it has no microphone) and decodes the caller's speech
            ep = disp.media
            assert isinstance(ep, LegEndpoint)
            assert seen.rtp_target == (ep.host, ep.rtp_port), (seen.rtp_target, ep)
            assert ep.latched_rtp == ("127.0.0.1", seen.rtp_port)
            assert ep.rtp_packets_in > 50, ep.stats()  # ~3 s of pyVoIP's 20 ms packets
            assert ep.rtp_packets_out > 50, ep.stats()  # the caller's pcap, relayed to pyVoIP
            assert seen.audio_frames > 25, seen  # ... and pyVoIP decoded it as audio
            assert not d.core.calls

        # the phone stopped: it unregistered (REGISTER with Expires: 0) and its threads ended
        assert phone.status is PhoneStatus.INACTIVE
        assert d.core.registrar.machine.bindings("disp-3") == []
        assert phone.threads() == []


async def test_pyvoip_refreshes_its_registration(
    tmp_path: Path, ports: Ports, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="telephony.registrar")

    def refreshes() -> list[str]:
        return [m for r in caplog.records if "disp-3 refreshed" in (m := r.getMessage())]

    async with handoffd(tmp_path, ports, redis_server, FOR_PYVOIP) as d:
        assert d.core is not None
        async with pyvoip(ports, expires=7) as phone:  # pyVoIP refreshes at expires - 5 s
            await phone.wait_status(PhoneStatus.REGISTERED)
            [first] = d.core.registrar.machine.bindings("disp-3")
            assert 5 < first.expires_at - d.core.now <= 7
            await _eventually(lambda: len(refreshes()) >= 2, timeout=10)  # at ~2 s and ~4 s
            [now] = d.core.registrar.machine.bindings("disp-3")  # still one binding
            assert now.contact == first.contact and now.source == first.source
            assert now.expires_at > first.expires_at + 3, (first, now)
            assert phone.status is PhoneStatus.REGISTERED
            assert all("for 7 s" in m for m in refreshes()), refreshes()
            # each refresh starts over without credentials: a 401 first, as the first time
            challenged = [r for r in caplog.records if "answered 401" in r.getMessage()]
            assert len(challenged) == len(refreshes()) + 1, [r.getMessage() for r in caplog.records]
        assert d.core.registrar.machine.bindings("disp-3") == []  # unregistered as it stopped


async def test_pyvoip_answers_a_cancelled_call_and_handoffd_ends_it(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    """The caller gives up while pyVoIP rings: handoffd CANCELs; pyVoIP answers the CANCEL but
    sends no 487 and answers the INVITE anyway when its callback runs (1 s after the INVITE).
    handoffd ends that late answer with a BYE: the phone is not left in a call with nobody."""
    async with handoffd(tmp_path, ports, redis_server, FOR_PYVOIP) as d:
        assert d.core is not None
        async with pyvoip(ports) as phone:
            await phone.wait_status(PhoneStatus.REGISTERED)
            work = tmp_path / "caller"
            work.mkdir()
            inf = work / "caller.csv"
            inf.write_text("SEQUENTIAL\n2003;1;cpe-pyvoip-0003\n")
            run = await start_sipp(  # no answer within 250 ms: CANCEL
                "uac-911-caller",
                workdir=work,
                local_port=udp_port(ports),
                remote=f"127.0.0.1:{ports.sip}",
                timeout_s=20,
                extra=("-inf", str(inf), "-recv_timeout", "250", "-mp", sipp_media(ports)),
            )
            caller = await run.wait(30)
            assert caller.count("Abandoned(C)") == 1, caller.stats
            [seen] = await phone.wait_calls(1)
            await _eventually(lambda: seen.ended or seen.error is not None)
            assert seen.error is None, seen.error
            assert seen.answered and seen.ended  # it answered late; handoffd's BYE ended it
            call = await _ended(d)
            disp = next(leg for leg in call.legs if leg.role == "dispatcher")
            assert disp.cancelled and not disp.answered and not disp.alive
            assert not d.core.calls


async def test_pyvoip_stopped_during_a_call_stays_registered(
    tmp_path: Path, ports: Ports, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """pyVoIP stopped during a call hangs up (BYE), then unregisters (REGISTER, Expires: 0) and
    reads the first answer on its socket, handoffd's 200 to the BYE, as the REGISTER's. It never
    answers the REGISTER's 401, so handoffd keeps the binding to a phone that is gone (no
    qualify: pyVoIP cannot be qualified) and the next call to the position goes there."""
    async with handoffd(tmp_path, ports, redis_server, FOR_PYVOIP, ring_timeout=2.0) as d:
        assert d.core is not None
        async with pyvoip(ports) as phone:
            await phone.wait_status(PhoneStatus.REGISTERED)
            work = tmp_path / "caller"
            work.mkdir()
            inf = work / "caller.csv"
            inf.write_text("SEQUENTIAL\n2003;1;cpe-pyvoip-0004\n")
            run = await start_sipp(  # waits for the far end's BYE
                "uac-911-caller-waits",
                workdir=work,
                local_port=udp_port(ports),
                remote=f"127.0.0.1:{ports.sip}",
                timeout_s=20,
                extra=("-inf", str(inf), "-mp", sipp_media(ports)),
            )
            [seen] = await _first_call(phone, run)
            await _eventually(lambda: seen.answered or seen.error is not None)
            await asyncio.sleep(0.5)
            caplog.clear()
            caplog.set_level(logging.DEBUG, logger="telephony.registrar")
            await phone.stop()
            caller = await run.wait(30)
            _ok(caller, "911 caller")
            assert caller.count("FarEndBye(C)") == 1, caller.stats  # its BYE ended the call
        # ... but not its registration: handoffd challenged the unregistering REGISTER and
        # heard nothing more
        logged = [r.getMessage() for r in caplog.records if r.name == "telephony.registrar"]
        assert len(logged) == 1 and "answered 401" in logged[0], logged
        [b] = d.core.registrar.machine.bindings("disp-3")
        assert b.contact == phone.contact
        before = set(d.core.ended)
        caller = await call_911(tmp_path, ports, "2003", hold_ms=500)
        # nobody answers: handoffd gives up after the position's ring_timeout
        assert caller.count("Status408(C)") == 1, f"{caller.stats} {caller.stdout[-1500:]}"
        new = await _ended(d, before)
        disp = next(leg for leg in new.legs if leg.role == "dispatcher")
        assert disp.dest == b.source and not disp.answered  # rang the phone that is gone


async def test_pyvoip_is_refused_when_qop_is_required(
    tmp_path: Path, ports: Ports, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="telephony.registrar")
    async with handoffd(tmp_path, ports, redis_server, "  qualify_interval: 0\n") as d:
        assert d.core is not None
        assert d.core.registrar.machine.digest.require_qop  # the default
        async with pyvoip(ports) as phone:
            await phone.wait_status(PhoneStatus.FAILED)  # three refusals, then it gives up
            assert d.core.registrar.machine.bindings("disp-3") == []
            refused = [
                r.getMessage()
                for r in caplog.records
                if r.name == "telephony.registrar" and "answered 403" in r.getMessage()
            ]
            # three REGISTERs, then the unregistering one (Expires: 0) pyVoIP sends as it stops
            assert len(refused) == 4, refused
            assert all("'disp-3'" in m and "(qop required)" in m for m in refused), refused
            caller = await call_911(tmp_path, ports, "2003", hold_ms=500)
            assert caller.count("Status480(C)") == 1, caller.stats  # nobody to ring
            assert phone.calls == []
        assert phone.threads() == []


async def test_pyvoip_ignores_a_shorter_granted_expiry(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    """pyVoIP refreshes on its own clock (the expiry it asked for, minus 5 s), not the one the
    200 grants: with ``max_expires`` below what it asks, its binding lapses until the refresh,
    and meanwhile the position is unavailable while the phone thinks it is registered."""
    registrar = FOR_PYVOIP + "  max_expires: 2\n  default_expires: 2\n"
    async with handoffd(tmp_path, ports, redis_server, registrar) as d:
        assert d.core is not None
        machine = d.core.registrar.machine
        async with pyvoip(ports, expires=8) as phone:  # granted 2 s, refreshes after 3 s
            await phone.wait_status(PhoneStatus.REGISTERED)
            [b] = machine.bindings("disp-3")
            assert b.expires_at - d.core.now <= 2
            await _eventually(lambda: machine.bindings("disp-3") == [], timeout=3)
            assert phone.status is PhoneStatus.REGISTERED  # the gap: registered, unreachable
            await _eventually(lambda: len(machine.bindings("disp-3")) == 1, timeout=3)


async def test_pyvoip_hangs_up_and_handoffd_ends_the_911_call(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    async with handoffd(tmp_path, ports, redis_server, FOR_PYVOIP) as d:
        assert d.core is not None
        async with pyvoip(ports, hangup_after=1.0) as phone:
            await phone.wait_status(PhoneStatus.REGISTERED)
            work = tmp_path / "caller"
            work.mkdir()
            inf = work / "caller.csv"
            inf.write_text("SEQUENTIAL\n2003;1;cpe-pyvoip-0002\n")
            run = await start_sipp(  # waits for the far end's BYE
                "uac-911-caller-waits",
                workdir=work,
                local_port=udp_port(ports),
                remote=f"127.0.0.1:{ports.sip}",
                timeout_s=20,
                extra=("-inf", str(inf), "-mp", sipp_media(ports)),
            )
            caller = await run.wait(30)
            _ok(caller, "911 caller")
            assert caller.count("FarEndBye(C)") == 1, caller.stats
            [seen] = phone.calls
            await _eventually(lambda: seen.ended or seen.error is not None)
            assert seen.error is None, seen.error
            assert seen.answered and seen.hung_up and seen.ended
            # pyVoIP's BYE (whose Via is a copy of handoffd's INVITE Via) ended the dispatcher
            # leg, and handoffd ended the caller's leg with it
            call = await _ended(d)
            assert call.state == "ended", call.state
            assert all(not leg.alive for leg in call.legs)
            assert not d.core.calls


async def test_pyvoip_never_answers_qualify_options(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    """Why pyVoIP needs ``qualify_interval: 0``: it cannot parse OPTIONS and stays silent, so
    qualify marks its contact unreachable and the position (no ``uri``) gets no calls."""
    registrar = "  require_qop: false\n  qualify_interval: 0.5\n  qualify_timeout: 0.3\n"
    async with handoffd(tmp_path, ports, redis_server, registrar) as d:
        assert d.core is not None
        async with pyvoip(ports) as phone:
            await phone.wait_status(PhoneStatus.REGISTERED)
            machine = d.core.registrar.machine

            def states() -> list[Reach]:
                return [x.state for x in machine.bindings("disp-3")]

            assert states() == [Reach.REACHABLE]
            # an OPTIONS every 0.5 s, each unanswered after 0.3 s
            await _eventually(lambda: states() == [Reach.UNREACHABLE])
            assert phone.status is PhoneStatus.REGISTERED  # pyVoIP itself noticed nothing
            caller = await call_911(tmp_path, ports, "2003", hold_ms=500)
            assert caller.count("Status480(C)") == 1, caller.stats
            assert phone.calls == []


async def test_pyvoip_cannot_take_a_multipart_invite(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    multipart = POSITIONS.replace("    auth:", "    accept_multipart: true\n    auth:")
    async with handoffd(
        tmp_path, ports, redis_server, FOR_PYVOIP, positions=multipart, ring_timeout=2.0
    ) as d:
        assert d.core is not None
        async with pyvoip(ports) as phone:
            await phone.wait_status(PhoneStatus.REGISTERED)
            caller = await call_911(tmp_path, ports, "2003", hold_ms=500)
            assert caller.returncode != 0 and caller.count("SuccessfulCall(C)") == 0
            call = await _ended(d)
            disp = next(leg for leg in call.legs if leg.role == "dispatcher")
            assert b"multipart/mixed" in disp.invite.to_bytes()  # what handoffd sent
            # pyVoIP splits a message once at a blank line; a multipart body has more, so it
            # drops the INVITE (an exception inside its receive thread, which it swallows):
            # not even a 180, our callback never ran, the position rang out
            assert not call.ringing_sent
            assert phone.calls == []
            assert not disp.answered


async def test_telephony_never_imports_pyvoip() -> None:
    """pyVoIP is GPLv3: a test peer only (the ``interop`` group), never part of handoffd."""
    root = Path(__file__).resolve().parents[2] / "telephony"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            found += [
                f"{path.relative_to(root)}: {n}" for n in names if n.lower().startswith("pyvoip")
            ]
    assert any(root.rglob("*.py")) and found == [], found
