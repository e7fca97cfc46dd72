"""The collector policy (telephony/collector.py) and the fact it rests on: a call, basic or
transferred, leaves no reference cycles behind, so reference counting frees all of it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from telephony.collector import (
    FULL_IDLE_S,
    FULL_MAX_S,
    QUIET_AFTER,
    SAMPLE_EVERY,
    YOUNG,
    Collector,
)
from tests.unit.test_b2bua import HANDOFFD, World


@pytest.fixture
def collector() -> Iterator[Collector]:
    """The policy installed in this test process, and automatic collection back afterwards."""
    enabled = gc.isenabled()
    c = Collector()
    c.install()
    try:
        yield c
    finally:
        c.uninstall()
        (gc.enable if enabled else gc.disable)()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_a_young_pass_runs_when_due_and_freezes_its_survivors(collector: Collector) -> None:
    assert not gc.isenabled()  # no automatic passes: the daemon's loop asks, between callbacks
    gc.collect(0)
    gc.freeze()
    assert not collector.young()  # nothing new: not due
    kept = [Node() for _ in range(YOUNG)]
    before = gc.get_freeze_count()
    assert collector.young()
    assert gc.get_freeze_count() >= before + len(kept)
    assert gc.get_count()[0] < 10 and collector.young_passes == 1


def test_quiet_after_empty_passes_sampled_and_back_on_the_first_cycle(
    collector: Collector,
) -> None:
    """After QUIET_AFTER passes that found nothing, due ticks only freeze, one in SAMPLE_EVERY
    still collects; a sample that finds a cycle brings back a pass at every due tick."""
    keep: list[list[Node]] = []
    gc.collect(0)  # whatever the test run left in the young generation is not this test's

    def due() -> None:
        keep.append([Node() for _ in range(YOUNG)])  # survivors: the pass finds no garbage

    for _ in range(QUIET_AFTER):
        due()
        assert collector.young()
    assert collector.young_passes == QUIET_AFTER and collector.freezes == 0
    for _ in range(SAMPLE_EVERY - 1):  # quiet: freezes only
        due()
        assert collector.young()
    assert collector.young_passes == QUIET_AFTER and collector.freezes == SAMPLE_EVERY - 1
    # the sample: a pass again, and this one finds a cycle
    due()
    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert collector.young()
    assert collector.young_passes == QUIET_AFTER + 1
    for _ in range(3):  # not quiet any more: every due tick collects
        due()
        assert collector.young()
    assert collector.young_passes == QUIET_AFTER + 4 and collector.freezes == SAMPLE_EVERY - 1


def test_a_cycle_that_got_frozen_is_found_by_the_full_pass(collector: Collector) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect(0)  # survives a young pass ...
    gc.freeze()  # ... and is frozen, as Collector.young does
    del a, b  # now garbage that only a full pass can find
    assert gc.collect(0) == 0
    assert collector.maintain(FULL_IDLE_S - 1, idle=True) is None  # not due yet
    assert collector.maintain(FULL_IDLE_S, idle=False) is None  # due only when idle ...
    found = collector.maintain(FULL_IDLE_S, idle=True)
    assert found is not None and found >= 2
    assert collector.full_passes == 1 and collector.last_full == FULL_IDLE_S
    assert gc.get_freeze_count() > 1000  # everything alive is frozen again
    # ... or when it has waited FULL_MAX_S, calls or not
    assert collector.maintain(FULL_IDLE_S + FULL_MAX_S, idle=False) == 0


def _reset(w: World) -> None:
    for peer in (w.caller, w.disp1, w.primary, w.backup):
        peer.dialog = None
        peer.invites.clear()
        peer.requests.clear()
        peer.responses.clear()


def _one_call(w: World, transfer: bool) -> None:
    call_id = w.connect()
    if transfer:
        w.core.cold.start_transfer(call_id, now=w.net.now)
        w.net.advance(2.0)
        counselor = w.primary if w.primary.dialog is not None else w.backup
        counselor.in_dialog("BYE", HANDOFFD)
    else:
        w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(40.0)  # past every wait state (32 s)
    assert not w.core.calls
    _reset(w)


@pytest.mark.parametrize("transfer", [False, True], ids=["basic", "cold-transfer"])
def test_a_call_leaves_no_reference_cycles(tmp_path: Path, transfer: bool) -> None:
    """What the policy rests on. Warm-up first: the ended calls kept for the API (256) rotate,
    caches fill; then 40 more calls must leave nothing for the cycle collector."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        w = World(tmp_path)
        for _ in range(270):
            _one_call(w, transfer)
        gc.collect()
        for _ in range(40):
            _one_call(w, transfer)
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()


def test_drive_runs_the_young_pass_from_the_loop_until_stopped(collector: Collector) -> None:
    async def scenario() -> tuple[int, int]:
        collector.drive(asyncio.get_running_loop(), idle=lambda: False)
        kept = [Node() for _ in range(2 * YOUNG)]
        await asyncio.sleep(0.2)  # a few YOUNG_EVERY periods
        ran = collector.young_passes
        collector.stop()
        kept += [Node() for _ in range(2 * YOUNG)]
        await asyncio.sleep(0.2)
        return ran, collector.young_passes

    ran, after_stop = asyncio.run(scenario())
    assert ran >= 1 and after_stop == ran
