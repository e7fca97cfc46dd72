"""The observer hands record events on in batches, in order, after the SIP handler.

Real calls on the in-memory network of test_b2bua; the observer is attached to that controller
on a running event loop, its Redis writer replaced by a list (what ``Recorder.submit`` would be
given). Checked: each event is frozen when it is reported, nothing is handed on inside the
handler, everything is handed on in order within ``FLUSH_AFTER`` (at once when ``FLUSH_EVERY``
are waiting), the metrics count them, and ``stop`` hands on what is still waiting.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from telephony.io.stack import SipStack
from telephony.media import PortAllocator, Relay
from telephony.observe import FLUSH_AFTER, FLUSH_EVERY, Observer
from telephony.recording.events import RecordEvent
from tests.unit.test_b2bua import World


def observed(tmp_path: Path) -> tuple[World, Observer, list[RecordEvent]]:
    w = World(tmp_path)
    obs = Observer(w.core.config, redis_url="redis://127.0.0.1:1/0")
    handed: list[RecordEvent] = []
    obs.recorder.submit = handed.append  # type: ignore[method-assign]
    stack = SipStack(lambda _ev: None)
    obs.attach(w.core, stack, Relay(PortAllocator("127.0.0.1", 20000, 20009)))
    return w, obs, handed


def offered(obs: Observer) -> float:
    samples = [s for m in obs.metrics.registry.collect() for s in m.samples]
    return sum(s.value for s in samples if s.name == "handoff_calls_offered_total")


@pytest.mark.asyncio
async def test_events_are_frozen_at_once_and_handed_on_in_order_after_the_handler(
    tmp_path: Path,
) -> None:
    w, obs, handed = observed(tmp_path)
    reported: list[str] = []
    hook = w.core.on_record
    assert hook is not None

    def spy(name: str, call: Any, fields: dict[str, Any]) -> None:
        reported.append(name)
        hook(name, call, fields)
        assert handed == []  # never inside the SIP handler

    w.core.on_record = spy
    call_id = w.connect()
    assert reported == ["call offered", "answered by dispatcher"]
    assert handed == [] and offered(obs) == 0
    await asyncio.sleep(FLUSH_AFTER * 3)
    assert [e.kind for e in handed] == ["call_offered", "answered_by_dispatcher"]
    assert {e.call_id for e in handed} == {call_id}
    ids = [int(e.id.rsplit("-", 1)[1]) for e in handed]
    assert ids == sorted(ids)
    assert offered(obs) == 1
    # the snapshot was taken when reported, not when handed on 20 ms later
    call = w.core.calls[call_id]
    assert abs(handed[0].at_ms - call.created_at * 1000) < 1


@pytest.mark.asyncio
async def test_a_full_batch_is_handed_on_without_waiting(tmp_path: Path) -> None:
    w, obs, handed = observed(tmp_path)
    w.connect()
    call = next(iter(w.core.calls.values()))
    assert obs._loop is not None
    for _ in range(FLUSH_EVERY):
        obs.on_record("call offered", call, {})
    assert len(handed) == 0
    await asyncio.sleep(0)  # one loop turn, far less than FLUSH_AFTER
    assert len(handed) == FLUSH_EVERY + 2


@pytest.mark.asyncio
async def test_stop_hands_on_what_is_still_waiting(tmp_path: Path) -> None:
    w, obs, handed = observed(tmp_path)
    w.connect()
    assert handed == []
    await obs.stop(0.1)
    assert [e.kind for e in handed] == ["call_offered", "answered_by_dispatcher"]


def test_without_an_event_loop_events_are_handed_on_at_once(tmp_path: Path) -> None:
    w, _obs, handed = observed(tmp_path)  # attached outside any loop (a test driving the core)
    w.connect()
    assert [e.kind for e in handed] == ["call_offered", "answered_by_dispatcher"]
