"""End to end: SIPp softphones REGISTER with digest auth against a real handoffd and get the calls.

Proves, over real UDP sockets with SIPp 3.6.1 as the phone (sipp_scenarios/uac-register.xml):

- a phone registering as position disp-3 (no ``uri`` in the config) with the right password is
  challenged (401), then accepted (200 listing the contact with ``;expires=``); a 911 caller's
  INVITE (uac-911-caller) then reaches a SIPp UAS on the REGISTER's source port, although the
  Contact names a port nobody listens on (the NAT case), and the call completes on both sides;
- a phone whose 200 also names that private port still gets the ACK and the BYE at the
  REGISTER's source (handoffd's requests follow the registration's flow, not the Contact);
- a wrong password, and an unknown user, get 403 and leave no binding;
- a too brief expiry gets 423 with Min-Expires, another position's address-of-record 403, an
  unknown one 404;
- the binding expires on handoffd's clock, after which a call to the position gets 480;
- a registered phone that goes away is found out by qualify (OPTIONS unanswered) and calls to a
  position that also has a ``uri`` go there instead.

SIPp 3.6.1 answers only the first challenge and only MD5 (docs/registrar.md), so the registrar
offers MD5 alone here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from telephony.call.registrar import Reach
from telephony.config import load_config
from telephony.daemon import Daemon
from telephony.sip.transaction import Endpoint
from tests.e2e.harness import Ports, settled, write_setup
from tests.peers.redis import RedisServer
from tests.peers.sipp import SCENARIOS, SippResult, free_port, media_port, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]

PASSWORD = "disp3-s3cret"


def positions(disp4: int) -> str:
    """disp-3 registers only (no uri); disp-4 registers as user 1004 and has a uri too."""
    return f"""  disp-3:
    numbers: ["2003"]
    auth: {{password: {PASSWORD}}}
  disp-4:
    uri: sip:disp4@127.0.0.1:{disp4}
    auth: {{username: "1004", password: four-s3cret}}
"""


NO_QUALIFY = "  algorithms: [MD5]\n  min_expires: 1\n  qualify_interval: 0\n"


@asynccontextmanager
async def handoffd(
    root: Path, ports: Ports, redis: RedisServer, registrar: str, disp4: int = 9
) -> AsyncIterator[Daemon]:
    path = write_setup(
        root / "etc",
        ports,
        redis_url=redis.url,
        positions=positions(disp4),
        registrar=registrar,
    )
    d = Daemon(load_config(path))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


def _ok(res: SippResult, what: str) -> None:
    assert res.returncode == 0, f"{what}: {res.stdout[-1500:]}{res.stderr[-1500:]}"


async def register(
    root: Path,
    ports: Ports,
    *,
    phone_port: int,
    contact: str,
    user: str = "disp-3",
    aor: str = "disp-3",
    password: str = PASSWORD,
    expires: int = 600,
) -> SippResult:
    """One uac-register run from ``phone_port``; its own directory keeps its files apart."""
    work = root / f"register-{phone_port}-{expires}-{password}"
    work.mkdir(parents=True, exist_ok=True)
    inf = work / "register.csv"
    inf.write_text(f"SEQUENTIAL\n{aor};{expires};{contact}\n")
    run = await start_sipp(
        "uac-register",
        workdir=work,
        local_port=phone_port,
        remote=f"127.0.0.1:{ports.sip}",
        timeout_s=10,
        extra=("-inf", str(inf), "-au", user, "-ap", password),
    )
    return await run.wait(20)


async def call_911(root: Path, ports: Ports, user: str, *, hold_ms: int = 1000) -> SippResult:
    work = root / f"caller-{user}-{free_port()}"
    work.mkdir(parents=True)
    inf = work / "caller.csv"
    inf.write_text(f"SEQUENTIAL\n{user};1;cpe-reg-0001\n")
    run = await start_sipp(
        "uac-911-caller",
        workdir=work,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        timeout_s=30,
        extra=("-inf", str(inf), "-d", str(hold_ms), "-mp", media_port()),
    )
    return await run.wait(40)


async def phone_answers_911(
    root: Path, ports: Ports, phone_port: int, what: str
) -> tuple[SippResult, SippResult]:
    """The registered phone (uas-dispatcher on ``phone_port``, where it registered from) and a
    911 call to its position (2003): both must end well; returns (caller, phone)."""
    work = root / "phone"
    work.mkdir()
    phone = await start_sipp(
        "uas-dispatcher", workdir=work, local_port=phone_port, calls=1, timeout_s=30
    )
    await asyncio.sleep(0.3)
    caller = await call_911(root, ports, "2003")
    answered = await phone.wait(30)
    _ok(caller, "caller")
    _ok(answered, what)
    return caller, answered


async def test_registered_phone_receives_the_911_call_at_its_register_source(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    async with handoffd(tmp_path, ports, redis_server, NO_QUALIFY) as d:
        assert d.core is not None
        phone_port, nat_port = free_port(), free_port()
        res = await register(
            tmp_path, ports, phone_port=phone_port, contact=f"127.0.0.1:{nat_port}"
        )
        _ok(res, "register")
        assert res.count("Challenged(C)") == 1 and res.count("Registered(C)") == 1
        [b] = d.core.registrar.machine.bindings("disp-3")
        assert b.contact == f"sip:disp-3@127.0.0.1:{nat_port}"
        assert b.source == Endpoint("udp", "127.0.0.1", phone_port)
        scraped = d.observer.metrics.render().decode()
        assert 'handoff_registered_contacts{position="disp-3",state="reachable"} 1.0' in scraped
        assert 'handoff_registered_contacts{position="disp-4",state="reachable"} 0.0' in scraped
        # the phone now listens where it registered from (same socket a real phone keeps)
        caller, answered = await phone_answers_911(tmp_path, ports, phone_port, "registered phone")
        assert caller.count("SuccessfulCall(C)") == 1
        assert answered.count("SuccessfulCall(C)") == 1 and answered.count("Bye(C)") == 1
        [call] = (await settled(d)).ended.values()
        assert call.position is not None and call.position.name == "disp-3"
        disp = next(leg for leg in call.legs if leg.role == "dispatcher")
        assert str(disp.invite.uri) == f"sip:disp-3@127.0.0.1:{nat_port}"
        assert disp.dest == Endpoint("udp", "127.0.0.1", phone_port)


async def test_a_phone_behind_nat_gets_the_ack_and_the_bye_at_its_register_source(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    """The phone's REGISTER and its 200 to the INVITE both give a Contact on a port nobody
    listens on (its private address behind NAT). handoffd must send the ACK for that 200 and the
    BYE when the caller hangs up to where the REGISTER came from: the phone (uas-dispatcher,
    its Contact lines rewritten in a copy) fails its call if either never arrives."""
    async with handoffd(tmp_path, ports, redis_server, NO_QUALIFY) as d:
        assert d.core is not None
        phone_port, nat_port = free_port(), free_port()
        _ok(
            await register(tmp_path, ports, phone_port=phone_port, contact=f"127.0.0.1:{nat_port}"),
            "register",
        )
        work = tmp_path / "phone"
        work.mkdir()
        scenario = (SCENARIOS / "uas-dispatcher.xml").read_text()
        private = f"<sip:dispatcher@127.0.0.1:{nat_port};"
        natted = scenario.replace("<sip:dispatcher@[local_ip]:[local_port];", private)
        assert natted.count(private) >= 2  # the 180 and the 200
        (work / "uas-dispatcher-nat.xml").write_text(natted)
        phone = await start_sipp(
            str(work / "uas-dispatcher-nat"), workdir=work, local_port=phone_port, timeout_s=30
        )
        await asyncio.sleep(0.3)
        caller = await call_911(tmp_path, ports, "2003")
        answered = await phone.wait(30)
        _ok(caller, "caller")
        _ok(answered, "phone behind NAT")
        assert answered.count("SuccessfulCall(C)") == 1 and answered.count("Bye(C)") == 1
        [call] = (await settled(d)).ended.values()
        disp = next(leg for leg in call.legs if leg.role == "dispatcher")
        assert disp.dialog is not None
        assert (
            str(disp.dialog.remote_target) == f"sip:dispatcher@127.0.0.1:{nat_port};transport=UDP"
        )
        assert disp.flow == Endpoint("udp", "127.0.0.1", phone_port)


async def test_wrong_password_is_403_and_binds_nothing(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    async with handoffd(tmp_path, ports, redis_server, NO_QUALIFY) as d:
        assert d.core is not None
        port = free_port()
        res = await register(
            tmp_path, ports, phone_port=port, contact=f"127.0.0.1:{port}", password="guess"
        )
        _ok(res, "register")
        assert res.count("Challenged(C)") == 1 and res.count("Forbidden(C)") == 1
        assert res.count("Registered(C)") == 0
        unknown = await register(
            tmp_path, ports, phone_port=port, contact=f"127.0.0.1:{port}", user="nobody"
        )
        assert unknown.count("Forbidden(C)") == 1  # the same answer for an unknown user
        assert d.core.registrar.machine.bindings("disp-3") == []
        caller = await call_911(tmp_path, ports, "disp-3")
        assert caller.count("Status480(C)") == 1  # still nobody to ring


async def test_too_brief_and_foreign_address_of_record(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    registrar = "  algorithms: [MD5]\n  min_expires: 30\n  qualify_interval: 0\n"
    async with handoffd(tmp_path, ports, redis_server, registrar) as d:
        assert d.core is not None
        port = free_port()
        brief = await register(
            tmp_path, ports, phone_port=port, contact=f"127.0.0.1:{port}", expires=5
        )
        _ok(brief, "too brief")
        assert brief.count("TooBrief(C)") == 1
        foreign = await register(
            tmp_path, ports, phone_port=port, contact=f"127.0.0.1:{port}", aor="disp-4"
        )
        assert foreign.count("Forbidden(C)") == 1
        unknown = await register(
            tmp_path, ports, phone_port=port, contact=f"127.0.0.1:{port}", aor="disp-9"
        )
        assert unknown.count("NotFound(C)") == 1
        assert d.core.registrar.machine.bindings("disp-3") == []


async def test_the_binding_expires_and_then_the_position_is_unavailable(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    async with handoffd(tmp_path, ports, redis_server, NO_QUALIFY) as d:
        assert d.core is not None
        port = free_port()
        res = await register(
            tmp_path, ports, phone_port=port, contact=f"127.0.0.1:{port}", expires=2
        )
        _ok(res, "register")
        assert len(d.core.registrar.machine.bindings("disp-3")) == 1
        await asyncio.sleep(2.3)
        assert d.core.registrar.machine.bindings("disp-3") == []  # the daemon's timer ran
        caller = await call_911(tmp_path, ports, "disp-3")
        assert caller.count("Status480(C)") == 1


async def test_qualify_finds_a_vanished_phone_and_calls_go_to_the_uri(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    registrar = "  algorithms: [MD5]\n  qualify_interval: 0.5\n  qualify_timeout: 0.3\n"
    async with handoffd(tmp_path, ports, redis_server, registrar, disp4=ports.disp2) as d:
        assert d.core is not None
        port = free_port()
        res = await register(
            tmp_path,
            ports,
            phone_port=port,
            contact=f"127.0.0.1:{port}",
            user="1004",
            aor="1004",
            password="four-s3cret",
        )
        _ok(res, "register")
        assert res.count("Registered(C)") == 1
        [b] = d.core.registrar.machine.bindings("disp-4")
        assert b.state is Reach.REACHABLE
        await asyncio.sleep(1.2)  # SIPp has exited: the OPTIONS to its port go unanswered
        [b] = d.core.registrar.machine.bindings("disp-4")
        assert b.state is Reach.UNREACHABLE
        work = tmp_path / "desk"
        work.mkdir()
        desk = await start_sipp(
            "uas-dispatcher", workdir=work, local_port=ports.disp2, calls=1, timeout_s=30
        )
        await asyncio.sleep(0.3)
        caller = await call_911(tmp_path, ports, "disp-4")
        _ok(caller, "caller")
        _ok(await desk.wait(30), "the configured uri")


async def test_a_restart_keeps_the_registrations_in_redis(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    """A phone registers, handoffd stops and a new one starts on the same Redis: the new one
    knows the phone at once (no REGISTER in between) and its 911 call reaches it at the
    REGISTER's source. Then the phone unregisters and the stored binding goes too."""
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    key = "handoff:registrations:disp-3"
    phone_port, nat_port = free_port(), free_port()
    try:
        async with handoffd(tmp_path, ports, redis_server, NO_QUALIFY):
            res = await register(
                tmp_path, ports, phone_port=phone_port, contact=f"127.0.0.1:{nat_port}"
            )
            _ok(res, "register")
            await _until(lambda: r.exists(key), "the binding stored")
        stored = json.loads(await r.get(key))
        assert [(b["contact"], b["source"]) for b in stored] == [
            (f"<sip:disp-3@127.0.0.1:{nat_port}>", ["udp", "127.0.0.1", phone_port])
        ]
        assert 0 < await r.pttl(key) <= 600_000  # expires with the binding

        async with handoffd(tmp_path, ports, redis_server, NO_QUALIFY) as d:
            assert d.core is not None and d.bindings is not None
            store = d.bindings
            await _until(lambda: store.restored == 1, "the binding restored")
            [b] = d.core.registrar.machine.bindings("disp-3")
            assert b.source == Endpoint("udp", "127.0.0.1", phone_port)
            _, answered = await phone_answers_911(
                tmp_path, ports, phone_port, "the phone registered before the restart"
            )
            assert answered.count("SuccessfulCall(C)") == 1
            [call] = (await settled(d)).ended.values()
            assert call.position is not None and call.position.name == "disp-3"

            res = await register(
                tmp_path, ports, phone_port=phone_port, contact=f"127.0.0.1:{nat_port}", expires=0
            )
            # 200 with no Contact left: uac-register counts it Registered, then fails its check
            # that the 200 lists the contact with ;expires= (right for a registration only)
            assert res.count("Registered(C)") == 1, res.stdout[-1500:]
            assert not d.core.registrar.machine.bindings("disp-3")

            async def gone() -> bool:
                return not await r.exists(key)

            await _until(gone, "the stored binding removed")
    finally:
        await r.aclose()


async def _until(check: Callable[[], Any], what: str, limit: float = 5.0) -> None:
    """Wait until ``check()`` (a value or an awaitable) is true, at most ``limit`` seconds."""
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        value = check()
        if await value if asyncio.iscoroutine(value) else value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {limit} s: {what}")


async def test_registrations_made_while_redis_is_down_are_stored_when_it_returns(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    """Redis is stopped (for real) before handoffd starts: the phone still registers and gets its
    calls' routing; once redis-server runs again the binding is written without a new REGISTER."""
    redis_server.stop()
    async with handoffd(tmp_path, ports, redis_server, NO_QUALIFY) as d:
        assert d.core is not None and d.bindings is not None
        phone_port = free_port()
        res = await register(tmp_path, ports, phone_port=phone_port, contact="127.0.0.1:5999")
        _ok(res, "register while Redis is down")
        assert len(d.core.registrar.machine.bindings("disp-3")) == 1
        await asyncio.sleep(0.5)
        assert d.bindings.written == 0
        redis_server.start()
        r = aioredis.from_url(redis_server.url, decode_responses=True)
        try:
            await _until(lambda: r.exists("handoff:registrations:disp-3"), "stored after", 10.0)
            [item] = json.loads(await r.get("handoff:registrations:disp-3"))
            assert item["source"] == ["udp", "127.0.0.1", phone_port]
        finally:
            await r.aclose()


async def test_a_stored_binding_that_expired_while_handoffd_was_down_is_not_restored(
    tmp_path: Path, ports: Ports, redis_server: RedisServer
) -> None:
    """Keys are written to expire with their bindings, but a key left by hand (or a clock
    step) may outlive them: what expired before the start is dropped, and the key with it."""
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    key = "handoff:registrations:disp-3"
    now_ms = int(time.time() * 1000)
    stale = {
        "contact": "<sip:disp-3@127.0.0.1:5999>",
        "source": ["udp", "127.0.0.1", 5999],
        "call_id": "old",
        "cseq": 2,
        "q": 1.0,
        "expires_ms": now_ms - 60_000,
    }
    live = {**stale, "contact": "<sip:disp-3@127.0.0.1:5998>", "expires_ms": now_ms + 600_000}
    try:
        await r.set(key, json.dumps([stale, live]))
        async with handoffd(tmp_path, ports, redis_server, NO_QUALIFY) as d:
            assert d.core is not None and d.bindings is not None
            store = d.bindings
            await _until(lambda: store.written >= 1, "restored and rewritten")
            [b] = d.core.registrar.machine.bindings("disp-3")
            assert b.contact == "sip:disp-3@127.0.0.1:5998" and store.restored == 1
            [item] = json.loads(await r.get(key))
            assert item["contact"] == "<sip:disp-3@127.0.0.1:5998>"
    finally:
        await r.aclose()
