"""``handoffctl events`` and ``handoffctl report`` as real processes (``python -m telephony``)
against a real redis-server, with the records written by the real :class:`Recorder`.

events: ``--follow`` prints the events recorded after it started, in order, one JSON object per
line equal to the stream entry, with the caller's number never in clear; SIGTERM and SIGINT end
it with status 0; ``--start 0 --count N`` and the one-shot mode (no ``--follow``) print history
and exit; two consumers of one group share the events, each delivered once and acknowledged,
and the group remembers where it was across runs; a Redis restart is ridden out (said on
stderr); an unreachable Redis at start is one line and status 1.
report: ``--format csv`` / ``json`` print exactly what the report library computes from the same
Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from telephony.config import Config, load_config
from telephony.recording.events import RecordEvent
from telephony.recording.report import compute, load, parse_range, render
from telephony.recording.store import Recorder, caller_hash
from tests.peers.redis import RedisServer
from tests.peers.sipp import free_port

REPO = Path(__file__).resolve().parents[2]
P = "cad:"  # records.key_prefix of the config below
NUMBER = "+18055550123"
WHERE = "<gml:pos>34.4208 -119.6982</gml:pos>"
KEY = b"cli-events-hash-key"
T0 = (int(time.time()) - 3600) * 1000  # an hour ago: inside every retention and range below
WAIT = 15.0  # seconds: the most any single step below may take


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest_asyncio.fixture
async def r(server: RedisServer) -> AsyncIterator[Any]:
    client: Any = aioredis.Redis.from_url(server.url, decode_responses=True)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


def write_config(tmp_path: Path, url: str) -> Path:
    """A handoffd config naming the test Redis, the key prefix ``cad:`` and hashed numbers."""
    cfg = tmp_path / "handoffd.yaml"
    cfg.write_text(
        "trunks:\n  psap-a:\n    allow: [127.0.0.1]\n    psap_id: vcso\n"
        f"rules: {REPO / 'routing_rules'}\n"
        f"redis:\n  url: {url}\n"
        "records:\n"
        f'  key_prefix: "{P}"\n'
        "  store_caller_number: false\n"
        "  store_location: false\n"
        "  answer_interval: 30\n"
        f"  spool:\n    dir: {tmp_path / 'spool'}\n",
        encoding="utf-8",
    )
    return cfg


@pytest_asyncio.fixture
async def recorder(tmp_path: Path, server: RedisServer, r: Any) -> AsyncIterator[Recorder]:
    """The daemon's writer, configured from the same file the CLI reads."""
    cfg: Config = load_config(write_config(tmp_path, server.url))
    rec = Recorder(cfg, redis_url=cfg.redis_url, hash_key=KEY)
    await rec.start()
    try:
        yield rec
    finally:
        await rec.stop(5)


class Events:
    """Events of calls and transfers as the call layer reports them (PHI included)."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: Any, call: str, dt: int, **extra: Any) -> RecordEvent:
        self.seq += 1
        return RecordEvent(
            id=f"cli-1-{self.seq}",
            kind=kind,
            at_ms=T0 + dt,
            call_id=call,
            psap="vcso",
            trunk="psap-a",
            incident_id=f"INC-{call}",
            caller_number=NUMBER,
            location=WHERE,
            call_offered_ms=T0,
            **extra,
        )


def transfer_events(e: Events, call: str, tid: str, outcome: str) -> list[RecordEvent]:
    """One call offered, answered, transferred: completed (answered after 20 s), failed (503)
    or abandoned while ringing."""
    t: dict[str, Any] = {"transfer_id": tid, "trigger": "refer", "mode": "warm"}
    t |= {"triage_level": 2, "position": "disp-1", "transfer_requested_ms": T0 + 2000}
    d = {"destination": "988-primary"}
    evs = [
        e("call_offered", call, 0),
        e("answered_by_dispatcher", call, 1000, position="disp-1"),
        e("transfer_requested", call, 2000, **d, **t),
        e("destination_ringing", call, 3000, **d, **t),
    ]
    if outcome == "completed":
        evs += [
            e("destination_answered", call, 22000, **d, **t),
            e("completed", call, 25000, **d, **t),
        ]
    elif outcome == "failed":
        evs.append(e("failed", call, 4000, sip_status=503, reason="down", **d, **t))
    else:
        evs.append(e("abandoned", call, 9000, phase="while ringing", **d, **t))
    return [*evs, e("call_ended", call, 60000, **t)]


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {WAIT} s: {what}")


async def record(rec: Recorder, r: Any, events: list[RecordEvent]) -> None:
    """Submit ``events`` and wait until all are in the stream."""
    before = int(await r.xlen(f"{P}events"))
    for ev in events:
        rec.submit(ev)

    async def there() -> bool:
        return int(await r.xlen(f"{P}events")) >= before + len(events)

    await until(there, f"{len(events)} more events in the stream")


# ----------------------------------------------------------------------------- processes


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as in a terminal, even when pytest was started with
    SIGINT ignored (a background job of a non-interactive shell)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Ctl:
    """One ``python -m telephony ARGS`` process (the ``handoffctl`` console script's module)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> Ctl:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "telephony",
            *args,
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_default_sigint,
        )
        return cls(proc)

    async def ready(self) -> str:
        """Its first stderr line, which says it is following (signals are handled from then on
        and, with the default ``--start $``, every later event will be printed)."""
        assert self.proc.stderr is not None
        line = (await asyncio.wait_for(self.proc.stderr.readline(), WAIT)).decode()
        assert line.startswith("handoffctl events: following "), line
        return line

    async def lines(self, n: int) -> list[str]:
        """The next ``n`` stdout lines (raw)."""
        assert self.proc.stdout is not None
        out: list[str] = []
        for _ in range(n):
            line = await asyncio.wait_for(self.proc.stdout.readline(), WAIT)
            assert line.endswith(b"\n"), f"stdout ended after {len(out)} of {n} lines"
            out.append(line.decode("utf-8"))
        return out

    async def finish(self) -> tuple[int, str, str]:
        """Wait for it to exit by itself: (status, rest of stdout, rest of stderr)."""
        out, err = await asyncio.wait_for(self.proc.communicate(), WAIT)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()

    async def stop(self, sig: int) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        return await self.finish()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.communicate()


StartCtl = Callable[..., Awaitable[Ctl]]


@pytest_asyncio.fixture
async def ctl() -> AsyncIterator[StartCtl]:
    """Starts ``handoffctl`` processes; kills whatever a failed test left running."""
    started: list[Ctl] = []

    async def start(*args: str) -> Ctl:
        c = await Ctl.start(*args)
        started.append(c)
        return c

    try:
        yield start
    finally:
        for c in started:
            await c.kill()


def stream_id(sid: str) -> tuple[int, int]:
    ms, seq = sid.split("-")
    return int(ms), int(seq)


def assert_no_phi(raw: str, obj: dict[str, str]) -> None:
    """The caller's number and location never appear; the keyed hash stands in for the number."""
    assert NUMBER not in raw and NUMBER.lstrip("+") not in raw and "gml:pos" not in raw
    assert "caller_number" not in obj and "location" not in obj
    assert obj["caller_hash"] == caller_hash(NUMBER, KEY)


# --------------------------------------------------------------------------------- events


@pytest.mark.asyncio
async def test_follow_prints_new_events_in_order_without_phi_and_sigterm_exits_0(
    tmp_path: Path, r: Any, recorder: Recorder, ctl: StartCtl
) -> None:
    e = Events()
    old = transfer_events(e, "c0", "t0", "failed")
    await record(recorder, r, old)  # before the follower starts: not printed ("$")

    follower = await ctl("events", "--follow", "--config", str(tmp_path / "handoffd.yaml"))
    said = await follower.ready()
    assert f"{P}events" in said and "from $" in said
    new = transfer_events(e, "c1", "t1", "completed") + transfer_events(e, "c2", "t2", "failed")
    await record(recorder, r, new)

    raw = await follower.lines(len(new))
    got = [json.loads(line) for line in raw]
    assert [g["id"] for g in got] == [ev.id for ev in new]  # these, in order, once each
    assert [g["kind"] for g in got] == [ev.kind for ev in new]
    ids = [stream_id(g["stream_id"]) for g in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # each line is the stream entry, field for field, plus its stream id
    entries = await r.xrange(f"{P}events", min=got[0]["stream_id"])
    assert got == [{"stream_id": sid, **fields} for sid, fields in entries]
    for line, obj in zip(raw, got, strict=True):
        assert_no_phi(line, obj)
    answered = got[4]
    assert (answered["kind"], answered["transfer_id"], answered["at_ms"]) == (
        "destination_answered",
        "t1",
        str(T0 + 22000),
    )

    status, rest, err = await follower.stop(signal.SIGTERM)
    assert status == 0
    assert rest == ""  # nothing but the events on stdout
    assert err == ""  # no traceback, no complaint


@pytest.mark.asyncio
async def test_history_count_and_one_shot_mode(
    tmp_path: Path,
    server: RedisServer,
    r: Any,
    recorder: Recorder,
    ctl: StartCtl,
) -> None:
    e = Events()
    evs = transfer_events(e, "c1", "t1", "completed")  # 7 events
    await record(recorder, r, evs)
    cfg = str(tmp_path / "handoffd.yaml")

    # --start 0 --count 3: the first three ever recorded, then it exits by itself
    first = await ctl("events", "--follow", "--config", cfg, "--start", "0", "--count", "3")
    assert "from 0" in await first.ready()
    status, out, err = await first.finish()
    assert status == 0 and err == ""
    got = [json.loads(line) for line in out.splitlines()]
    assert [g["id"] for g in got] == [ev.id for ev in evs[:3]]

    # no --follow: the last --count events, oldest first, then exit (no status line)
    last = await ctl("events", "--config", cfg, "--count", "2")
    status, out, err = await last.finish()
    assert (status, err) == (0, "")
    assert [json.loads(x)["id"] for x in out.splitlines()] == [ev.id for ev in evs[-2:]]

    # no --follow, --start ID: what came after that entry (a CAD catching up), then exit;
    # --redis-url overrides the config's (the same server here, reached by another URL form)
    after = got[2]["stream_id"]
    url = f"redis://localhost:{server.port}/0"
    rest = await ctl("events", "--config", cfg, "--redis-url", url, "--start", after)
    status, out, err = await rest.finish()
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert [json.loads(x)["id"] for x in lines] == [ev.id for ev in evs[3:]]
    for line in lines:
        assert_no_phi(line, json.loads(line))


@pytest.mark.asyncio
async def test_two_consumers_of_a_group_share_the_events_once_each(
    tmp_path: Path, r: Any, recorder: Recorder, ctl: StartCtl
) -> None:
    cfg = str(tmp_path / "handoffd.yaml")
    group = ("events", "--follow", "--config", cfg, "--group", "cad")
    one = await ctl(*group, "--consumer", "cad-1")
    two = await ctl(*group, "--consumer", "cad-2")
    for c, name in ((one, "cad-1"), (two, "cad-2")):
        assert f"as consumer {name} of group cad" in await c.ready()

    e = Events()
    evs = [ev for i in range(5) for ev in transfer_events(e, f"c{i}", f"t{i}", "completed")]
    got: dict[str, list[dict[str, str]]] = {"cad-1": [], "cad-2": []}

    async def pump(c: Ctl, name: str) -> None:
        assert c.proc.stdout is not None
        while line := await c.proc.stdout.readline():
            obj = json.loads(line)
            assert_no_phi(line.decode(), obj)
            got[name].append(obj)

    pumps = [asyncio.create_task(pump(one, "cad-1")), asyncio.create_task(pump(two, "cad-2"))]
    # one at a time, so that both readers are blocked in XREADGROUP when an entry arrives: Redis
    # serves blocked readers first come, first served, so the events are spread over both
    for ev in evs:
        await record(recorder, r, [ev])
        await asyncio.sleep(0.02)

    async def all_printed() -> bool:
        return sum(len(v) for v in got.values()) >= len(evs)

    await until(all_printed, f"{len(evs)} events printed by the two consumers")
    await asyncio.sleep(0.5)  # time for a duplicate delivery to show up, if there were one
    for p in pumps:
        p.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)

    printed = [g["id"] for v in got.values() for g in v]
    assert sorted(printed) == sorted(ev.id for ev in evs)  # every event, once in all
    print(f"group split: cad-1 {len(got['cad-1'])}, cad-2 {len(got['cad-2'])} of {len(evs)}")
    assert got["cad-1"] and got["cad-2"]  # shared, not all to one
    for v in got.values():  # each consumer's share in stream order
        ids = [stream_id(g["stream_id"]) for g in v]
        assert ids == sorted(ids)
    assert (await r.xpending(f"{P}events", "cad"))["pending"] == 0  # all acknowledged
    consumers = {c["name"]: c for c in await r.xinfo_consumers(f"{P}events", "cad")}
    assert set(consumers) == {"cad-1", "cad-2"}

    # Ctrl-C (SIGINT) and SIGTERM: both a clean exit
    for c, sig in ((one, signal.SIGINT), (two, signal.SIGTERM)):
        status, rest, err = await c.stop(sig)
        assert (status, rest, err) == (0, "", "")

    # events recorded while no consumer runs are waiting for the group's next reader
    later = transfer_events(e, "c9", "t9", "abandoned")[:3]
    await record(recorder, r, later)
    back = await ctl(*group, "--consumer", "cad-1", "--count", "3")
    await back.ready()
    status, out, err = await back.finish()
    assert (status, err) == (0, "")
    assert [json.loads(x)["id"] for x in out.splitlines()] == [ev.id for ev in later]
    assert (await r.xpending(f"{P}events", "cad"))["pending"] == 0


@pytest.mark.asyncio
async def test_follow_rides_out_a_redis_restart(
    tmp_path: Path, server: RedisServer, r: Any, recorder: Recorder, ctl: StartCtl
) -> None:
    cfg = str(tmp_path / "handoffd.yaml")
    tail = await ctl("events", "--follow", "--config", cfg)
    grp = await ctl("events", "--follow", "--config", cfg, "--group", "cad", "--consumer", "c-1")
    for c in (tail, grp):
        await c.ready()
    e = Events()
    evs = transfer_events(e, "c1", "t1", "completed")
    await record(recorder, r, evs[:2])
    for c in (tail, grp):
        assert [json.loads(x)["id"] for x in await c.lines(2)] == [ev.id for ev in evs[:2]]

    server.stop()  # no persistence: the stream and the group are gone when it comes back
    for c in (tail, grp):
        assert c.proc.stderr is not None
        line = (await asyncio.wait_for(c.proc.stderr.readline(), WAIT)).decode()
        assert line.startswith(f"handoffctl events: lost Redis at 127.0.0.1:{server.port} (")
        assert line.endswith("); retrying every 1 s\n")
    server.start()
    for c in (tail, grp):  # the group is back (made again) before "is back" is said
        assert c.proc.stderr is not None
        line = (await asyncio.wait_for(c.proc.stderr.readline(), WAIT)).decode()
        assert line == f"handoffctl events: Redis at 127.0.0.1:{server.port} is back\n"

    fresh: Any = aioredis.Redis.from_url(server.url, decode_responses=True)  # r's socket died
    try:
        await record(recorder, fresh, evs[2:5])
    finally:
        await fresh.aclose()
    for c in (tail, grp):
        assert [json.loads(x)["id"] for x in await c.lines(3)] == [ev.id for ev in evs[2:5]]
        assert await c.stop(signal.SIGTERM) == (0, "", "")


@pytest.mark.asyncio
async def test_unreachable_redis_is_one_line_and_status_1(tmp_path: Path, ctl: StartCtl) -> None:
    port = free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    for mode in (["--follow"], ["--follow", "--group", "g", "--consumer", "c"], []):
        c = await ctl("events", *mode, "--redis-url", url)
        t = time.monotonic()
        status, out, err = await c.finish()
        assert time.monotonic() - t < 10
        assert status == 1 and out == ""
        assert err.startswith(
            f"handoffctl events: cannot read handoff:events from Redis at 127.0.0.1:{port}: "
        )
        assert err.count("\n") == 1 and "s3cret" not in err and "Traceback" not in err
    # the config's URL: same
    cfg = write_config(tmp_path, f"redis://127.0.0.1:{port}/0")
    status, out, err = await (await ctl("events", "--follow", "--config", str(cfg))).finish()
    assert status == 1 and err.startswith(f"handoffctl events: cannot read {P}events from Redis")


@pytest_asyncio.fixture
async def silent() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP port that accepts connections and never answers (a hung Redis): (port, set once a
    client connected)."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()
        await reader.read()  # until the client goes away

    srv = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], connected
    finally:
        srv.close()
        for w in held:
            w.close()
        await srv.wait_closed()


@pytest.mark.asyncio
async def test_sigterm_while_connecting_exits_0_at_once(
    silent: tuple[int, asyncio.Event], ctl: StartCtl
) -> None:
    port, connected = silent
    c = await ctl("events", "--follow", "--redis-url", f"redis://127.0.0.1:{port}/0")
    await asyncio.wait_for(connected.wait(), WAIT)
    await asyncio.sleep(0.3)  # well inside the first command, which Redis never answers
    t = time.monotonic()
    assert await c.stop(signal.SIGTERM) == (0, "", "")
    assert time.monotonic() - t < 3  # not the 12 s socket timeout


# --------------------------------------------------------------------------------- report


def _day(ms: int, days: int) -> str:
    return (datetime.fromtimestamp(ms / 1000, UTC) + timedelta(days=days)).date().isoformat()


@pytest.mark.asyncio
async def test_report_process_prints_what_the_library_computes(
    tmp_path: Path,
    server: RedisServer,
    r: Any,
    recorder: Recorder,
    ctl: StartCtl,
) -> None:
    e = Events()
    evs = (
        transfer_events(e, "c1", "t1", "completed")
        + transfer_events(e, "c2", "t2", "failed")
        + transfer_events(e, "c3", "t3", "abandoned")
    )
    await record(recorder, r, evs)
    cfg = str(tmp_path / "handoffd.yaml")
    frm, to = _day(T0, -1), _day(T0, 1)
    base = ["report", "--config", cfg, "--from", frm, "--to", to, "--tz", "UTC"]

    start, end = parse_range(frm, to, "UTC")
    dataset = await load(server.url, P, start, end, None)
    report = compute(dataset, answer_interval=30.0)  # the config's records.answer_interval

    c = await ctl(*base, "--format", "csv")
    assert c.proc.stdout is not None
    raw, err = await asyncio.wait_for(c.proc.communicate(), WAIT)
    assert (c.proc.returncode, err) == (0, b"")
    text = raw.decode("utf-8")  # bytes as written: CRLF line ends kept
    assert text == render(report, dataset.transfers, "csv", tz=UTC)
    rows = text.split("\r\n")
    assert rows[0].startswith("date,transfer_id,call_id,incident_number,")
    body = [row.split(",") for row in rows[1:] if row]
    assert [(row[1], row[13]) for row in body] == [
        ("t1", "completed"),
        ("t2", "failed"),
        ("t3", "abandoned"),
    ]
    assert body[0][24] == "yes"  # answered 20 s after the request, within the config's 30 s
    assert all(row[-1] == "" for row in body)  # hashed numbers: no caller_number column value
    assert NUMBER not in text

    c = await ctl(*base, "--format", "json")
    status, out, err_text = await c.finish()
    assert (status, err_text) == (0, "")
    assert out == render(report, dataset.transfers, "json", tz=UTC)
    totals = json.loads(out)["totals"]
    assert (totals["transfers"], totals["calls_offered"], totals["completed"]) == (3, 3, 1)
    assert (totals["failed"], totals["abandoned"], totals["within"]) == (1, 1, 1)


@pytest.mark.asyncio
async def test_report_interrupted_is_130_and_writes_nothing(
    silent: tuple[int, asyncio.Event], ctl: StartCtl
) -> None:
    port, connected = silent
    url = f"redis://127.0.0.1:{port}/0"
    c = await ctl("report", "--from", "2026-03-01", "--to", "2026-03-31", "--redis-url", url)
    await asyncio.wait_for(connected.wait(), WAIT)
    await asyncio.sleep(0.3)  # waiting for a reply that never comes
    assert await c.stop(signal.SIGINT) == (130, "", "handoffctl report: interrupted\n")
