"""What the call layer reports becomes flat, frozen record events with the right fields.

The in-memory network of test_b2bua (real transaction layers, scripted peers, fake clock) runs
real calls; every ``on_record`` report is frozen with :func:`from_call` at once, as the daemon
does, and the events are checked against what happened.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from telephony.call.b2bua import Call
from telephony.recording.events import KINDS, EventIds, RecordEvent, from_call
from tests.unit.test_b2bua import HANDOFFD, World

WALL = 1_700_000_000.0  # World's wall_offset


def recording(w: World) -> list[RecordEvent]:
    events: list[RecordEvent] = []
    ids = EventIds("test", 1)

    def hook(name: str, call: Call, fields: dict[str, Any]) -> None:
        events.append(from_call(name, call, fields, event_id=ids(), wall=w.core.wall))

    w.core.on_record = hook
    return events


def test_a_transfer_with_failover_is_recorded_step_by_step(tmp_path: Path) -> None:
    w = World(tmp_path, primary=486)
    events = recording(w)
    call_id = w.connect()
    offered = events[0]
    w.net.advance(1.0)
    t = w.core.cold.start_transfer(call_id, triage=1, reason="caller asked", now=w.net.now)
    requested_at = w.net.now + WALL
    w.net.advance(2.0)
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["call_offered", "answered_by_dispatcher"]
    assert kinds[2:] == [
        "transfer_requested",
        "destination_trying",
        "failover",
        "destination_trying",
        "destination_ringing",
        "destination_answered",
        "completed",
        "dispatcher_left",  # our BYE to the dispatcher's phone was answered
    ]
    assert offered.transfer_id is None and offered.mode is None  # nothing to do with a transfer
    assert offered.call_offered_ms == offered.at_ms
    assert all(e.call_id == call_id and e.psap == "psap-a" and e.trunk == "psap-a" for e in events)
    assert {e.emergency_call_id for e in events} == {"urn:emergency:uid:callid:abc:psap.example"}
    assert {e.incident_id for e in events} == {"urn:emergency:uid:incidentid:inc-1:psap.example"}
    assert {e.caller_number for e in events} == {"+18055550123"}  # PHI: the writer decides
    for e in events[2:]:
        assert e.transfer_id == t.id and e.trigger == "api" and e.mode == "cold"
        assert e.triage_level == 1 and e.position == "disp-1"
        assert e.transfer_requested_ms == int(requested_at * 1000)
        assert e.call_offered_ms == offered.at_ms
    failover = events[4]
    assert failover.destination == "988-primary" and failover.sip_status == 486
    answered = events[7]
    assert answered.destination == "988-backup"
    assert answered.at_ms >= answered.transfer_requested_ms  # type: ignore[operator]
    assert len({e.id for e in events}) == len(events)  # ids are unique


def test_abandonment_carries_its_phase(tmp_path: Path) -> None:
    w = World(tmp_path, primary="ring")
    events = recording(w)
    call_id = w.connect()
    w.core.cold.start_transfer(call_id, now=w.net.now)
    w.net.advance(0.5)
    w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(0.5)
    abandoned = [e for e in events if e.kind == "abandoned"]
    assert len(abandoned) == 1
    assert abandoned[0].phase == "while ringing"  # the primary rings forever
    assert events[-1].kind == "call_ended"


def test_every_call_layer_report_name_is_a_kind() -> None:
    assert len(KINDS) == len(set(KINDS))
    with pytest.raises(KeyError):
        from_call("no such event", None, {}, event_id="x", wall=0)  # type: ignore[arg-type]


def test_events_are_frozen_and_fields_omit_empty_values() -> None:
    ev = RecordEvent("e1", "call_offered", 1, "c1", "psap-a", "psap-a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.kind = "failed"  # type: ignore[misc]
    assert ev.fields() == {
        "id": "e1",
        "kind": "call_offered",
        "at_ms": 1,
        "call_id": "c1",
        "psap": "psap-a",
        "trunk": "psap-a",
    }


def test_event_ids_differ_across_instances_and_restarts() -> None:
    a, b = EventIds(), EventIds()
    assert a() != b()
    fixed = EventIds("host.1", 42)
    assert [fixed(), fixed()] == ["host.1-42-1", "host.1-42-2"]
