"""The Grafana dashboard against real data: a real Prometheus scrapes a real handoffd (every
second) while SIPp drives calls through it, then every panel query of
config/grafana/dashboards/handoff.json runs through Prometheus's HTTP API, as Grafana would send
it, and must return data; the numbers must be the ones the calls made.

The calls, one after the other:

1. a 911 call the dispatcher answers and the caller ends: no transfer (for the diversion rate);
2. the dispatcher REFERs a caller to 988 and the primary 988 line answers: **completed**;
3. the PSAP's phone system dials 988, the primary is busy (486), the backup unavailable (503):
   **failed**, after a failover;
4. the phone system dials 988, the primary rings and the caller hangs up (CANCEL) after 1.5 s,
   before its 3 s ring timeout: **abandoned** while ringing.

Prometheus also loads config/prometheus/alerts.yml: every rule must evaluate without error and
none may fire on this healthy run. And the live ``/metrics`` passes ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from telephony import __version__
from telephony.daemon import Daemon
from telephony.recording.events import PHASES
from tests.e2e.harness import Ports
from tests.peers.prometheus import (
    ROOT,
    PrometheusServer,
    Sample,
    dashboard,
    expand,
    panel_queries,
    prometheus_binary,
    value,
    variable_defaults,
)
from tests.peers.sipp import SCENARIOS, SippResult, SippRun, free_port, media_port, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]
DATA = SCENARIOS / "data"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"


@pytest_asyncio.fixture
async def prometheus(
    tmp_path: Path, ports: Ports, daemon: Daemon
) -> AsyncIterator[PrometheusServer]:
    prom = PrometheusServer(
        tmp_path / "prometheus", [f"127.0.0.1:{ports.http}"], rule_files=[ALERTS]
    )
    await asyncio.to_thread(prom.start)
    try:
        yield prom
    finally:
        await asyncio.to_thread(prom.stop)


async def _caller(workdir: Path, ports: Ports, csv: str, *extra: str) -> SippRun:
    return await start_sipp(
        "uac-911-caller",
        workdir=workdir,
        local_port=free_port(),
        remote=f"127.0.0.1:{ports.sip}",
        calls=1,
        timeout_s=30,
        extra=("-inf", str(DATA / csv), "-mp", media_port(), *extra),
    )


async def _uas(workdir: Path, name: str, port: int, *extra: str) -> SippRun:
    return await start_sipp(
        name, workdir=workdir, local_port=port, calls=1, timeout_s=30, extra=extra
    )


def _ok(res: SippResult, what: str) -> None:
    assert res.returncode == 0, f"{what}: {res.stdout[-1500:]}{res.stderr[-1500:]}"


def _dir(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


async def _stop(*runs: SippRun) -> None:
    """After a failed step: no SIPp left running into the next test."""
    for run in runs:
        run.kill()
        await run.proc.wait()


async def _no_transfer(tmp: Path, ports: Ports) -> None:
    work = _dir(tmp, "plain")
    disp = await _uas(work, "uas-dispatcher", ports.disp1)
    try:
        await asyncio.sleep(0.2)
        _ok(await (await _caller(work, ports, "911-caller.csv", "-d", "800")).wait(20), "caller")
        _ok(await disp.wait(10), "dispatcher")
    finally:
        await _stop(disp)


async def _completed(tmp: Path, ports: Ports) -> None:
    work = _dir(tmp, "completed")
    d988 = await _uas(work, "uas-988-answer", ports.primary, "-rtp_echo", "-mp", media_port())
    disp = await _uas(
        work, "uas-dispatcher-refer", ports.disp1, "-inf", str(DATA / "refer-988.csv"), "-d", "800"
    )
    try:
        await asyncio.sleep(0.2)
        res = await (await _caller(work, ports, "911-caller.csv", "-d", "2500")).wait(20)
        dres = await disp.wait(10)
        _ok(res, "caller")
        _ok(dres, "dispatcher")
        assert dres.count("TransferOk(C)") == 1
        _ok(await d988.wait(10), "988")
    finally:
        await _stop(d988, disp)


async def _failed(tmp: Path, ports: Ports) -> None:
    work = _dir(tmp, "failed")
    busy = await _uas(work, "uas-988-busy", ports.primary)
    down = await _uas(work, "uas-988-unavailable", ports.backup)
    try:
        await asyncio.sleep(0.2)
        res = await (await _caller(work, ports, "911-to-988.csv", "-d", "500")).wait(20)
        assert res.count("Status503(C)") == 1, res.stdout[-1500:]  # the last destination's
        _ok(await busy.wait(10), "busy 988")
        _ok(await down.wait(10), "unavailable 988")
    finally:
        await _stop(busy, down)


async def _abandoned(tmp: Path, ports: Ports) -> None:
    work = _dir(tmp, "abandoned")
    ring = await _uas(work, "uas-988-ring-forever", ports.primary)
    try:
        await asyncio.sleep(0.2)
        caller = await _caller(work, ports, "911-to-988.csv", "-d", "500", "-recv_timeout", "1500")
        res = await caller.wait(20)
        assert res.count("Abandoned(C)") == 1, res.stdout[-1500:]
        _ok(await ring.wait(10), "ringing 988 (saw the CANCEL)")
    finally:
        await _stop(ring)


def _one(result: list[Sample], what: str) -> float:
    assert len(result) == 1, f"{what}: {result}"
    return value(result[0])


def _by(result: list[Sample], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): value(s) for s in result}


async def test_every_dashboard_panel_shows_the_calls_made(
    tmp_path: Path, daemon: Daemon, ports: Ports, prometheus: PrometheusServer
) -> None:
    started = time.monotonic()
    # the label sets exist at 0 before any call, so rate() sees each first event
    zero = 'handoff_transfers_total{mode="cold", destination="988-primary", outcome="completed"}'
    first = await prometheus.wait_for(zero, bool, 20, "the first scrape of handoffd")
    assert _one(first, zero) == 0

    await _no_transfer(tmp_path, ports)
    await _completed(tmp_path, ports)
    await _failed(tmp_path, ports)
    await _abandoned(tmp_path, ports)
    idle = "handoff_active_calls + handoff_active_transfers"
    await prometheus.wait_for(
        f"sum(handoff_transfers_total) == 3 and on () ({idle}) == 0",
        bool,
        10,
        "a scrape after the last call ended",
    )

    outcomes = await prometheus.aquery("sum by (outcome, destination) (handoff_transfers_total)")
    assert {(s["metric"]["outcome"], s["metric"]["destination"], value(s)) for s in outcomes} >= {
        ("completed", "988-primary", 1),
        ("failed", "988-backup", 1),
        ("abandoned", "988-primary", 1),
    }

    # -- every panel query, variables as Grafana substitutes them: never empty ---------------
    dash = dashboard()
    values = variable_defaults(dash)
    results: dict[tuple[str, str], list[Sample]] = {}
    for q in panel_queries(dash):
        expr = expand(q.expr, values)
        result = await prometheus.aquery(expr)
        assert result, f"panel {q.panel!r} {q.ref} shows nothing: {expr}"
        results[q.panel, q.ref] = result

    def panel(title: str, ref: str = "A") -> list[Sample]:
        return results[title, ref]

    per_minute = _by(panel("Transfers per minute by outcome"), "outcome")
    assert per_minute["completed"] > 0 and per_minute["failed"] > 0
    assert per_minute["abandoned"] > 0 and per_minute["cancelled"] == 0
    assert _one(panel("Transfers per minute by outcome", "B"), "requested") > 0

    title = "Time to 988 answer by destination (p50 / p90 / p99)"
    p50, p90, p99 = (_by(panel(title, ref), "destination") for ref in "ABC")
    # the primary answered at once: inside the first bucket (0.5 s)
    assert 0 < p50["988-primary"] <= p90["988-primary"] <= p99["988-primary"] <= 0.5
    assert math.isnan(p50["988-backup"])  # never answered: no time, not a zero
    assert _one(panel(title, "D"), "interval line") == 60

    phases = _by(panel("Abandoned transfers per minute by phase"), "phase")
    assert set(phases) == set(PHASES)
    assert phases["while ringing"] > 0
    assert all(v == 0 for p, v in phases.items() if p != "while ringing")

    # 3 transfers requested of 4 calls offered
    for title in ("Diversion rate (dashboard range)", "Diversion rate (rolling $window)"):
        assert _one(panel(title), title) == pytest.approx(0.75, abs=0.005)
    # 1 of 3 transfers (completed, failed, abandoned) answered within 60 s
    for title in (
        "Answered within interval (dashboard range)",
        "Answered within interval (rolling $window)",
    ):
        assert _one(panel(title), title) == pytest.approx(1 / 3, abs=0.005)

    handoff = _by(panel("Hand-off time by mode (p50 / p90)"), "mode")
    assert 0 < handoff["cold"] <= 0.5 and math.isnan(handoff["warm"])
    assert _one(panel("Active calls"), "calls") == 0
    assert _one(panel("Active transfers"), "transfers") == 0
    assert _one(panel("Configured answer interval"), "interval") == 60

    health = _by(panel("988 destinations"), "trunk")
    assert health == {"988-primary": 1, "988-backup": 1}  # not probed in this setup: up
    assert _one(panel("Redis (records)"), "redis") == 1
    assert _one(panel("Record spool", "A"), "spool") == 0
    assert _one(panel("Record spool", "B"), "dropped") == 0

    sip = {
        (s["metric"]["direction"], s["metric"]["kind"]): value(s)
        for s in panel("SIP messages per second")
    }
    for key in (("in", "INVITE"), ("in", "REFER"), ("in", "CANCEL"), ("out", "NOTIFY")):
        assert sip.get(key, 0) > 0, (key, sip)
    rtp = _by(panel("RTP packets per second"), "direction")
    assert rtp["in"] > 0 and rtp["out"] > 0, rtp
    assert _by(panel("Routing rule reloads"), "result") == {"ok": 0, "error": 0}
    (build,) = panel("handoffd instances")
    assert build["metric"]["version"] == __version__

    # -- the alerting rules evaluate cleanly on real data, and nothing fires ------------------
    def evaluated(groups: Any) -> bool:
        rules = [r for g in groups["groups"] for r in g["rules"]]
        return bool(rules) and all(r["health"] == "ok" for r in rules)

    deadline = time.monotonic() + 10
    groups = prometheus.api("rules")
    while not evaluated(groups) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        groups = await asyncio.to_thread(prometheus.api, "rules")
    rules = [r for g in groups["groups"] for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), [
        (r["name"], r["health"], r.get("lastError")) for r in rules
    ]
    assert await prometheus.aquery("ALERTS") == []

    # -- what Prometheus scraped passes promtool's lint -------------------------------------
    def scrape() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports.http}/metrics", timeout=5) as r:
            body: bytes = r.read()
            return body

    text = await asyncio.to_thread(scrape)
    lint = await asyncio.to_thread(
        subprocess.run,
        [prometheus_binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert lint.returncode == 0 and lint.stdout == lint.stderr == b"", lint
    assert time.monotonic() - started < 60
