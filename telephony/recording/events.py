"""What the records hold: one :class:`RecordEvent` per thing that happened to a call or transfer.

The call layer (``telephony.call``) reports timeline points through ``B2bua.on_record(event,
call, fields)``; :func:`from_call` turns one into a flat, frozen :class:`RecordEvent` at once (the
call object keeps changing). Everything downstream -- the Redis writer and its spool
(:mod:`telephony.recording.store`), the Prometheus metrics (:mod:`telephony.metrics`), the KPI
report -- consumes these events and nothing else. Layout in Redis: docs/records.md.

``id`` is unique across daemon restarts and instances (``<instance>-<boot ms>-<seq>``); the
writer applies each id at most once, so replaying a spool never duplicates.
"""

from __future__ import annotations

import itertools
import os
import socket
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from telephony.sip.headers import valid_text

if TYPE_CHECKING:
    from telephony.call.b2bua import Call

Kind = Literal[
    "call_offered",
    "answered_by_dispatcher",
    "transfer_requested",
    "destination_trying",
    "destination_ringing",
    "destination_answered",
    "failover",
    "dispatcher_left",
    "completed",
    "failed",
    "cancelled",
    "abandoned",
    "returned_to_dispatcher",
    "party_joined",
    "party_left",
    "call_ended",
]
KINDS: tuple[Kind, ...] = (
    "call_offered",
    "answered_by_dispatcher",
    "transfer_requested",
    "destination_trying",
    "destination_ringing",
    "destination_answered",
    "failover",
    "dispatcher_left",
    "completed",
    "failed",
    "cancelled",
    "abandoned",
    "returned_to_dispatcher",
    "party_joined",
    "party_left",
    "call_ended",
)
#: the call layer's event names (``B2bua._record``) to record kinds
KIND_OF: dict[str, Kind] = {k.replace("_", " "): k for k in KINDS}

#: abandonment phases (``phase`` of an ``abandoned`` event)
PHASES = ("before destination ringing", "while ringing", "in conference", "on consult hold")


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """One timeline point. Times are Unix epoch milliseconds (wall clock).

    ``caller_number`` and ``location`` are PHI: they are carried here as received and the writer
    decides (``records.store_caller_number`` / ``store_location``) whether they are stored in
    clear or as a keyed hash. Logs never print them.
    """

    id: str
    kind: Kind
    at_ms: int
    call_id: str
    psap: str
    trunk: str
    transfer_id: str | None = None
    emergency_call_id: str | None = None
    incident_id: str | None = None
    position: str | None = None
    trigger: str | None = None  # invite | refer | api | dtmf
    mode: str | None = None  # cold | warm | consult
    triage_level: int | None = None
    destination: str | None = None  # label of the destination concerned
    sip_status: int | None = None
    reason: str | None = None
    phase: str | None = None  # abandoned only, one of PHASES
    party: str | None = None  # party_joined / party_left: caller, dispatcher or counselor
    transfer_requested_ms: int | None = None  # when this event's transfer was requested
    call_offered_ms: int | None = None  # first ring of this event's call
    caller_number: str | None = None  # PHI
    location: str | None = None  # PHI: Geolocation values and PIDF-LO parts, joined

    def fields(self) -> dict[str, Any]:
        """The non-empty fields, for serialisation (``None`` omitted)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def utf8(text: str) -> bytes:
    """``text`` encoded for storage, each lone surrogate as U+FFFD (see
    :func:`~telephony.sip.headers.valid_text`): the records writer and the spool must write
    valid UTF-8, and strict encoding would raise and stop them."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return valid_text(text).encode("utf-8")


class EventIds:
    """Event ids unique across restarts and instances: ``<instance>-<boot ms>-<seq>``."""

    def __init__(self, instance: str | None = None, boot_ms: int | None = None) -> None:
        host = instance or f"{socket.gethostname()}.{os.getpid()}"
        boot = boot_ms if boot_ms is not None else int.from_bytes(os.urandom(6), "big")
        self._prefix = f"{host}-{boot}-"
        self._seq = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._seq)}"


def from_call(
    name: str,
    call: Call,
    fields: dict[str, Any],
    *,
    event_id: str,
    wall: float,
) -> RecordEvent:
    """Freeze the call layer's report ``name`` about ``call`` into an event at wall-clock
    ``wall`` seconds (``B2bua.wall``). ``fields`` carries sip_status, reason, phase, and the
    destination when it is not the transfer's current one."""
    kind = KIND_OF[name]
    t = call.transfer
    with_transfer = t is not None and kind not in ("call_offered", "answered_by_dispatcher")
    dest = None
    requested = None
    if t is not None and with_transfer:
        d = t.destination
        dest = d.label if d is not None else (t.chain[-1].label if t.chain else None)
        requested = int(t.timeline[0].at * 1000) if t.timeline else None
    meta = call.meta
    parts = [p.body.decode("utf-8", "replace") for p in meta.location_parts]
    location = "\n".join((*meta.geolocation, *parts)) or None
    phase = fields.get("phase")
    if phase == "after answer":
        phase = "in conference"
    return RecordEvent(
        id=event_id,
        kind=kind,
        at_ms=int(wall * 1000),
        call_id=call.id,
        psap=call.trunk.psap_id,
        trunk=call.trunk.name,
        transfer_id=t.id if t is not None and with_transfer else None,
        emergency_call_id=meta.emergency_call_id,
        incident_id=meta.incident_id,
        position=call.position.name if call.position is not None else None,
        trigger=t.trigger if t is not None and with_transfer else None,
        mode=t.mode if t is not None and with_transfer else None,
        triage_level=t.triage_level if t is not None and with_transfer else None,
        destination=fields.get("destination", dest),
        sip_status=fields.get("sip_status"),
        reason=fields.get("reason"),
        phase=phase,
        party=fields.get("party"),
        transfer_requested_ms=requested,
        call_offered_ms=int(call.created_at * 1000),
        caller_number=meta.caller_number,
        location=location,
    )
